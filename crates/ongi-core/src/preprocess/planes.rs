//! Box reduction of a JPEG's decoded component planes (libjpeg's raw output):
//! how the fast decode turns one full-size pass into both the full-size luma
//! the pixel features need and the reduced colour image the model needs.
//!
//! Why hand-written: the planes come at their own sampling (chroma often at
//! half the luma's), each reduction must land on the same output grid, and the
//! `image` crate's filters neither take a stride nor reduce by whole boxes.

/// One decoded component: `height` rows of `width` valid samples, `stride`
/// bytes apart (libjpeg pads every row to whole 8×8 blocks).
pub(super) struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
    pub width: usize,
    pub height: usize,
}

/// The largest box side [`box_reduce`] accepts: its column sums are `u16`.
pub(super) const MAX_BOX: usize = 8;

/// Fills `out`, rows of `out_w` samples, with the plane whose sample `(x, y)`
/// is the rounded mean of the `fx × fy` box of `plane` at `(x·fx, y·fy)`,
/// clipped to the plane's valid samples (the last row and column of a
/// picture whose size is not a multiple of the box). `None` when a box side
/// is 0 or over [`MAX_BOX`], the plane is empty, or it is too small for the
/// output grid.
pub(super) fn box_reduce(
    plane: &Plane<'_>,
    fx: usize,
    fy: usize,
    out: &mut [u8],
    out_w: usize,
) -> Option<()> {
    let out_h = out.len().checked_div(out_w)?;
    let (w, h) = (plane.width, plane.height);
    let boxes_fit = (1..=MAX_BOX).contains(&fx) && (1..=MAX_BOX).contains(&fy);
    let covered = out_w > 0
        && out_h > 0
        && (out_w - 1) * fx < w
        && (out_h - 1) * fy < h
        && plane.stride >= w
        && plane.data.len() >= (h - 1) * plane.stride + w
        && out.len() == out_w * out_h;
    if !boxes_fit || !covered {
        return None;
    }
    let mut column = vec![0u16; w];
    // Whole boxes: every box of a row but a clipped last one.
    let whole = (w / fx).min(out_w);
    for (oy, out_row) in out.chunks_exact_mut(out_w).enumerate() {
        let y0 = oy * fy;
        let rows = fy.min(h - y0);
        column.fill(0);
        for y in y0..y0 + rows {
            add_row(
                &mut column,
                &plane.data[y * plane.stride..y * plane.stride + w],
            );
        }
        let n = (rows * fx) as u32;
        let half = n / 2;
        let (head, tail) = out_row.split_at_mut(whole);
        match (fx, n.is_power_of_two()) {
            (1, true) => whole_boxes::<1>(&column, head, half, n.trailing_zeros()),
            (2, true) => whole_boxes::<2>(&column, head, half, n.trailing_zeros()),
            (4, true) => whole_boxes::<4>(&column, head, half, n.trailing_zeros()),
            (8, true) => whole_boxes::<8>(&column, head, half, n.trailing_zeros()),
            _ => {
                for (o, sums) in head.iter_mut().zip(column.chunks_exact(fx)) {
                    let s: u32 = sums.iter().map(|&v| u32::from(v)).sum();
                    *o = ((s + half) / n) as u8;
                }
            }
        }
        for (i, o) in tail.iter_mut().enumerate() {
            let x0 = (whole + i) * fx;
            let sums = &column[x0..(x0 + fx).min(w)];
            let n = (rows * sums.len()) as u32;
            let s: u32 = sums.iter().map(|&v| u32::from(v)).sum();
            *o = ((s + n / 2) / n) as u8;
        }
    }
    Some(())
}

/// Adds one row of samples to the column sums.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn add_row(column: &mut [u16], src: &[u8]) {
    for (sum, &v) in column.iter_mut().zip(src) {
        *sum += u16::from(v);
    }
}

/// The means of whole boxes `FX` columns wide whose sample count is
/// `1 << shift`: a fixed width lets the sums vectorise.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn whole_boxes<const FX: usize>(column: &[u16], out: &mut [u8], half: u32, shift: u32) {
    for (o, sums) in out.iter_mut().zip(column.chunks_exact(FX)) {
        let mut s = 0u32;
        for &v in sums {
            s += u32::from(v);
        }
        *o = ((s + half) >> shift) as u8;
    }
}

/// Interleaves three equally sized planes into `[a, b, c]` pixels.
pub(super) fn interleave3(a: &[u8], b: &[u8], c: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() * 3);
    for ((&a, &b), &c) in a.iter().zip(b).zip(c) {
        out.extend_from_slice(&[a, b, c]);
    }
    out
}

/// The valid `width × height` samples of `plane`, rows packed (moved, not
/// copied, when the rows carry no padding).
pub(super) fn packed_rows(
    mut data: Vec<u8>,
    stride: usize,
    width: usize,
    height: usize,
) -> Vec<u8> {
    if stride == width {
        data.truncate(width * height);
        return data;
    }
    data.chunks(stride)
        .take(height)
        .flat_map(|row| &row[..width.min(row.len())])
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reduction written out box by box, with float means.
    fn naive(p: &Plane<'_>, fx: usize, fy: usize, ow: usize, oh: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for oy in 0..oh {
            for ox in 0..ow {
                let (mut s, mut n) = (0.0f64, 0.0f64);
                for y in oy * fy..((oy + 1) * fy).min(p.height) {
                    for x in ox * fx..((ox + 1) * fx).min(p.width) {
                        s += f64::from(p.data[y * p.stride + x]);
                        n += 1.0;
                    }
                }
                // Round half up, as the integer code does.
                out.push((s / n + 0.5).floor() as u8);
            }
        }
        out
    }

    #[test]
    fn boxes_are_rounded_means_clipped_at_the_edges() {
        let mut checked = 0;
        for (w, h, stride) in [
            (13, 9, 16),
            (16, 16, 16),
            (7, 5, 8),
            (1, 1, 8),
            (33, 17, 40),
        ] {
            let data: Vec<u8> = (0..stride * h).map(|i| (i * 37 % 251) as u8).collect();
            let p = Plane {
                data: &data,
                stride,
                width: w,
                height: h,
            };
            for (fx, fy) in [(1, 1), (2, 2), (4, 4), (8, 8), (2, 4), (3, 3), (4, 2)] {
                let (ow, oh) = (w.div_ceil(fx), h.div_ceil(fy));
                let mut got = vec![0u8; ow * oh];
                box_reduce(&p, fx, fy, &mut got, ow).unwrap();
                assert_eq!(got, naive(&p, fx, fy, ow, oh), "{w}x{h} box {fx}x{fy}");
                checked += got.len();
            }
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn bright_boxes_do_not_overflow() {
        let data = vec![255u8; 64 * 64];
        let p = Plane {
            data: &data,
            stride: 64,
            width: 64,
            height: 64,
        };
        let mut out = [0u8; 64];
        box_reduce(&p, 8, 8, &mut out, 8).unwrap();
        assert!(out.iter().all(|&v| v == 255));
    }

    #[test]
    fn unusable_shapes_are_refused() {
        let data = vec![0u8; 64];
        let p = Plane {
            data: &data,
            stride: 8,
            width: 8,
            height: 8,
        };
        assert!(box_reduce(&p, 0, 1, &mut [0; 64], 8).is_none());
        assert!(box_reduce(&p, 9, 1, &mut [0; 8], 1).is_none());
        // An output grid that would start boxes past the plane.
        assert!(box_reduce(&p, 2, 2, &mut [0; 20], 5).is_none());
        let short = Plane {
            data: &data[..60],
            ..p
        };
        assert!(box_reduce(&short, 1, 1, &mut [0; 64], 8).is_none());
    }

    #[test]
    fn padding_is_dropped_from_packed_rows() {
        let data: Vec<u8> = (0..24).collect();
        assert_eq!(packed_rows(data.clone(), 8, 3, 2), vec![0, 1, 2, 8, 9, 10]);
        assert_eq!(packed_rows(data, 8, 8, 2), (0..16).collect::<Vec<u8>>());
        assert_eq!(
            interleave3(&[1, 2], &[3, 4], &[5, 6]),
            vec![1, 3, 5, 2, 4, 6]
        );
    }
}
