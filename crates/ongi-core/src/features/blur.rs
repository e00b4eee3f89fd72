//! The blur test's feature: variance of the Laplacian of a 300 px greyscale copy.

use image::GrayImage;

/// Long side of the greyscale copy the blur test runs on.
pub const LAPLACIAN_LONG_SIDE: usize = 300;

/// Variance of the Laplacian, as the original's OpenCV blur test computes it:
///
/// ```python
/// gray = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
/// scale = 300 / max(h, w)
/// gray = cv2.resize(gray, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)
/// cv2.Laplacian(gray, cv2.CV_64F).var()
/// ```
///
/// - `grey` is OpenCV's greyscale decode (`preprocess::decode_grey`);
/// - resized so the long side is 300 px and the other side is truncated, with
///   OpenCV's `INTER_AREA` reproduced; photos already
///   smaller are resized upwards, as the original resizes unconditionally. A side
///   that truncates to 0 (OpenCV raises an error) is kept at 1 px;
/// - 3×3 Laplacian `[[0,1,0],[1,-4,1],[0,1,0]]` (`ksize=1`) with
///   `BORDER_REFLECT_101`, computed exactly in integers;
/// - population variance over all pixels, in f64.
///
/// The "< 80 means blurry" threshold is applied by the analysis code.
pub fn laplacian_variance(grey: &GrayImage) -> f32 {
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    if w == 0 || h == 0 {
        return 0.0;
    }
    let (dw, dh) = laplacian_size(w, h);
    let small = cv_resize_area(grey.as_raw(), w, h, dw, dh);
    laplacian_var_of(&small, dw, dh) as f32
}

/// Target size: `int(side · (300 / long))` for both sides, in f64 as Python
/// computes it (so the long side itself can come out at 299), at least 1.
fn laplacian_size(w: usize, h: usize) -> (usize, usize) {
    let scale = LAPLACIAN_LONG_SIDE as f64 / w.max(h) as f64;
    let side = |s: usize| ((s as f64 * scale) as usize).max(1);
    (side(w), side(h))
}

/// OpenCV's `saturate_cast<uchar>(float)`: round half to even, clamp.
fn cv_saturate_u8(v: f32) -> u8 {
    v.round_ties_even().clamp(0.0, 255.0) as u8
}

/// Resizes an 8-bit greyscale image as OpenCV's `cv::resize(...,
/// INTER_AREA)` does, choosing the same one of its three code paths.
///
/// Hand-written because no Rust crate implements OpenCV's area interpolation
/// for non-integer factors (the `image` crate has no area filter;
/// `fast_image_resize`'s box filter weights differently), and the blur
/// threshold of 80 was tuned on OpenCV's output:
///
/// 1. downscale by integer factors in both axes → `resizeAreaFast` (block
///    mean; for 2×2 OpenCV's SIMD path rounds `(sum + 2) >> 2`, otherwise
///    `sum · (1/area)` rounded half to even);
/// 2. downscale in both axes otherwise → `resizeArea`: each destination pixel
///    is the overlap-weighted mean of the source cells it covers
///    (`computeResizeAreaTab`), accumulated in f32 and rounded;
/// 3. any axis upscaled (photos under 300 px) → OpenCV's bilinear emulation of
///    area mode (weights from `(d+1) − (s+1)/scale`, 11-bit fixed point),
///    with the rounding of OpenCV's SIMD vertical pass.
fn cv_resize_area(src: &[u8], w: usize, h: usize, dw: usize, dh: usize) -> Vec<u8> {
    let inv_scale_x = dw as f64 / w as f64;
    let inv_scale_y = dh as f64 / h as f64;
    let scale_x = 1.0 / inv_scale_x;
    let scale_y = 1.0 / inv_scale_y;
    if scale_x >= 1.0 && scale_y >= 1.0 {
        let iscale_x = scale_x.round();
        let iscale_y = scale_y.round();
        if (scale_x - iscale_x).abs() < f64::EPSILON && (scale_y - iscale_y).abs() < f64::EPSILON {
            return cv_resize_area_fast(src, w, dw, dh, iscale_x as usize, iscale_y as usize);
        }
    }
    let resize = AreaResize {
        src,
        w,
        h,
        dw,
        dh,
        scale_x,
        scale_y,
    };
    if scale_x >= 1.0 && scale_y >= 1.0 {
        cv_resize_area_general(&resize)
    } else {
        cv_resize_area_up(&resize)
    }
}

/// One area resize: `w`×`h` source pixels to `dw`×`dh`, and the source
/// pixels per destination pixel on each axis.
#[derive(Clone, Copy)]
struct AreaResize<'a> {
    src: &'a [u8],
    w: usize,
    h: usize,
    dw: usize,
    dh: usize,
    scale_x: f64,
    scale_y: f64,
}

impl<'a> AreaResize<'a> {
    /// Source, its size, the destination size and the two scales.
    #[allow(clippy::type_complexity)]
    fn parts(&self) -> (&'a [u8], usize, usize, usize, usize, f64, f64) {
        let r = *self;
        (r.src, r.w, r.h, r.dw, r.dh, r.scale_x, r.scale_y)
    }
}

/// `resizeAreaFast`: integer downscale factors, plain block sums.
fn cv_resize_area_fast(
    src: &[u8],
    w: usize,
    dw: usize,
    dh: usize,
    sx: usize,
    sy: usize,
) -> Vec<u8> {
    let area = sx * sy;
    let inv_area = 1.0f32 / area as f32;
    let mut out = Vec::with_capacity(dw * dh);
    for dy in 0..dh {
        for dx in 0..dw {
            let mut sum = 0u32;
            for y in dy * sy..(dy + 1) * sy {
                let row = &src[y * w..(y + 1) * w];
                sum += row[dx * sx..(dx + 1) * sx]
                    .iter()
                    .map(|&p| u32::from(p))
                    .sum::<u32>();
            }
            out.push(if sx == 2 && sy == 2 {
                ((sum + 2) >> 2) as u8
            } else {
                cv_saturate_u8(sum as f32 * inv_area)
            });
        }
    }
    out
}

/// One entry of OpenCV's `DecimateAlpha` table: source index `si`
/// contributes `alpha` to destination index `di`.
#[derive(Clone, Copy)]
struct AreaTap {
    di: usize,
    si: usize,
    alpha: f32,
}

/// OpenCV's `computeResizeAreaTab` for one axis.
fn cv_area_tab(ssize: usize, dsize: usize, scale: f64) -> Vec<AreaTap> {
    let mut tab = Vec::with_capacity(ssize * 2);
    for dx in 0..dsize {
        let fsx1 = dx as f64 * scale;
        let fsx2 = fsx1 + scale;
        let cell_width = scale.min(ssize as f64 - fsx1);
        let mut sx2 = fsx2.floor() as i64;
        sx2 = sx2.min(ssize as i64 - 1);
        let sx1 = (fsx1.ceil() as i64).min(sx2);
        if sx1 as f64 - fsx1 > 1e-3 && sx1 >= 1 {
            tab.push(AreaTap {
                di: dx,
                si: (sx1 - 1) as usize,
                alpha: ((sx1 as f64 - fsx1) / cell_width) as f32,
            });
        }
        for sx in sx1.max(0)..sx2 {
            tab.push(AreaTap {
                di: dx,
                si: sx as usize,
                alpha: (1.0 / cell_width) as f32,
            });
        }
        if fsx2 - sx2 as f64 > 1e-3 && sx2 >= 0 {
            tab.push(AreaTap {
                di: dx,
                si: sx2 as usize,
                alpha: ((fsx2 - sx2 as f64).min(1.0).min(cell_width) / cell_width) as f32,
            });
        }
    }
    tab
}

/// An axis's taps grouped per destination pixel: `(first source index,
/// taps, first tap)` spans, and every tap's weight.
fn area_spans(tab: &[AreaTap]) -> (Vec<(usize, usize, usize)>, Vec<f32>) {
    let mut spans: Vec<(usize, usize, usize)> = Vec::new();
    for (i, t) in tab.iter().enumerate() {
        match spans.last_mut() {
            Some(last) if tab[last.2].di == t.di => last.1 += 1,
            _ => spans.push((t.si, 1, i)),
        }
    }
    (spans, tab.iter().map(|t| t.alpha).collect())
}

/// `resizeArea_<uchar, float>`: overlap-weighted area averaging for
/// non-integer downscale factors, in OpenCV's accumulation order.
fn cv_resize_area_general(resize: &AreaResize<'_>) -> Vec<u8> {
    let (src, w, h, dw, dh, scale_x, scale_y) = resize.parts();
    // OpenCV scatters `xtab` entries into `buf[di]` one by one; a destination
    // pixel's entries are consecutive with consecutive source indices, so
    // grouping them into spans gives the same f32 additions in the same
    // order with contiguous loads.
    let (spans, alphas) = area_spans(&cv_area_tab(w, dw, scale_x));
    let ytab = cv_area_tab(h, dh, scale_y);
    let mut out = vec![0u8; dw * dh];
    let mut sum = vec![0f32; dw];
    let Some(first) = ytab.first() else {
        return out;
    };
    let mut rows = AreaRows::new(src, w, &spans, &alphas);
    let mut prev_dy = first.di;
    for t in &ytab {
        let buf = rows.row(t.si);
        if t.di != prev_dy {
            let dst = &mut out[prev_dy * dw..(prev_dy + 1) * dw];
            for ((d, s), &b) in dst.iter_mut().zip(sum.iter_mut()).zip(buf) {
                *d = cv_saturate_u8(*s);
                *s = t.alpha * b;
            }
            prev_dy = t.di;
        } else {
            for (s, &b) in sum.iter_mut().zip(buf) {
                *s += t.alpha * b;
            }
        }
    }
    let dst = &mut out[prev_dy * dw..(prev_dy + 1) * dw];
    for (d, &s) in dst.iter_mut().zip(&sum) {
        *d = cv_saturate_u8(s);
    }
    out
}

/// Source rows handled together by [`AreaRows`]: one f32 lane each.
const STRIP: usize = crate::tile::TILE;

/// The horizontal pass of `resizeArea` (every destination column's span of
/// one source row, summed in `xtab` order), computed for [`STRIP`]
/// consecutive source rows at once and handed out row by row. The vertical
/// pass asks for rows in non-decreasing order, so each strip is computed
/// once. With rows as vector lanes every lane repeats the scalar code's f32
/// multiplications and additions in the same order, so the sums are the
/// same bit for bit, at a sixteenth of the instructions.
struct AreaRows<'a> {
    src: &'a [u8],
    w: usize,
    spans: &'a [(usize, usize, usize)],
    alphas: &'a [f32],
    /// First source row of the current strip (`usize::MAX` before the first).
    y0: usize,
    /// The strip's pixels, column by column: `cols[x][r]` is row `y0 + r`.
    cols: Vec<[u8; STRIP]>,
    /// The strip's sums, `sums[dx][r]`, and one of its rows laid out flat.
    sums: Vec<[f32; STRIP]>,
    row: Vec<f32>,
}

impl<'a> AreaRows<'a> {
    fn new(src: &'a [u8], w: usize, spans: &'a [(usize, usize, usize)], alphas: &'a [f32]) -> Self {
        Self {
            src,
            w,
            spans,
            alphas,
            y0: usize::MAX,
            cols: vec![[0; STRIP]; w],
            sums: vec![[0.0; STRIP]; spans.len()],
            row: vec![0.0; spans.len()],
        }
    }

    /// The horizontal sums of source row `y`.
    fn row(&mut self, y: usize) -> &[f32] {
        let y0 = y - y % STRIP;
        if y0 != self.y0 {
            let h = self.src.len() / self.w;
            let n = STRIP.min(h - y0);
            transpose_strip(
                &self.src[y0 * self.w..(y0 + n) * self.w],
                self.w,
                &mut self.cols,
            );
            area_strip(&self.cols, self.spans, self.alphas, &mut self.sums);
            self.y0 = y0;
        }
        let r = y - y0;
        for (o, s) in self.row.iter_mut().zip(&self.sums) {
            *o = s[r];
        }
        &self.row
    }
}

/// Every span's products summed per lane: what `resizeArea`'s scalar loop
/// computes for each of the strip's rows.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn area_strip(
    cols: &[[u8; STRIP]],
    spans: &[(usize, usize, usize)],
    alphas: &[f32],
    sums: &mut [[f32; STRIP]],
) {
    for (sum, &(si, n, first)) in sums.iter_mut().zip(spans) {
        let mut acc = [0f32; STRIP];
        for (col, &a) in cols[si..si + n].iter().zip(&alphas[first..first + n]) {
            for (v, &p) in acc.iter_mut().zip(col) {
                *v += f32::from(p) * a;
            }
        }
        *sum = acc;
    }
}

/// Lays `strip` (up to [`STRIP`] rows of `w` pixels) out column by column
/// into `cols` (`w` entries; lanes past the strip's rows are zero).
fn transpose_strip(strip: &[u8], w: usize, cols: &mut [[u8; STRIP]]) {
    let n = strip.len() / w.max(1);
    let mut done = 0;
    if n == STRIP {
        done = transpose_strip_tiles(strip, w, cols);
    }
    for (x, col) in cols.iter_mut().enumerate().take(w).skip(done) {
        for (r, lane) in col.iter_mut().enumerate() {
            *lane = if r < n { strip[r * w + x] } else { 0 };
        }
    }
}

/// [`transpose_strip`] for a full strip, one 16 × 16 tile at a time;
/// returns how many columns it laid out.
fn transpose_strip_tiles(strip: &[u8], w: usize, cols: &mut [[u8; STRIP]]) -> usize {
    let n = w - w % STRIP;
    let rows = std::array::from_fn(|r| r * w);
    crate::tile::transpose_band(strip, &rows, n, cols.as_flattened_mut(), |c| c * STRIP);
    n
}

/// OpenCV's fixed-point scale for bilinear weights (`INTER_RESIZE_COEF_SCALE`).
const CV_COEF_SCALE: f32 = 2048.0;

/// Source index and fixed-point weights `(1 − f, f)` of OpenCV's area-mode
/// bilinear emulation for one axis; `clamp_hi` applies the horizontal pass's
/// edge rule (the vertical pass clamps row indices instead).
fn cv_area_up_axis(
    ssize: usize,
    dsize: usize,
    scale: f64,
    clamp_hi: bool,
) -> Vec<(usize, [i32; 2])> {
    let inv_scale = 1.0 / scale;
    (0..dsize)
        .map(|d| {
            let mut s = (d as f64 * scale).floor() as i64;
            let mut f = ((d as f64 + 1.0) - (s as f64 + 1.0) * inv_scale) as f32;
            f = if f <= 0.0 { 0.0 } else { f - f.floor() };
            if s < 0 {
                s = 0;
                f = 0.0;
            }
            if clamp_hi && s >= ssize as i64 - 1 {
                s = ssize as i64 - 1;
                f = 0.0;
            }
            let c0 = ((1.0 - f) * CV_COEF_SCALE).round_ties_even() as i32;
            let c1 = (f * CV_COEF_SCALE).round_ties_even() as i32;
            (s as usize, [c0, c1])
        })
        .collect()
}

/// `resizeGeneric_` with `HResizeLinear`/`VResizeLinear` in area mode (used
/// when either axis is enlarged): 8-bit fixed point.
fn cv_resize_area_up(resize: &AreaResize<'_>) -> Vec<u8> {
    let (src, w, h, dw, dh, scale_x, scale_y) = resize.parts();
    let xs = cv_area_up_axis(w, dw, scale_x, true);
    let ys = cv_area_up_axis(h, dh, scale_y, false);
    let hrow = |y: usize| -> Vec<i32> {
        let row = &src[y * w..(y + 1) * w];
        xs.iter()
            .map(|&(sx, [a0, a1])| {
                let p0 = i32::from(row[sx]);
                if sx + 1 < w {
                    p0 * a0 + i32::from(row[sx + 1]) * a1
                } else {
                    // OpenCV's right edge uses the full weight on the last pixel.
                    p0 * CV_COEF_SCALE as i32
                }
            })
            .collect()
    };
    let mut out = Vec::with_capacity(dw * dh);
    for &(sy, [b0, b1]) in &ys {
        let r0 = hrow(sy.min(h - 1));
        let r1 = hrow((sy + 1).min(h - 1));
        for (&v0, &v1) in r0.iter().zip(&r1) {
            // OpenCV's SIMD vertical pass (`VResizeLinearVec_32s8u`), not the
            // scalar `FixedPtCast`: drop 4 bits, 16-bit multiply-high by each
            // weight, then round off 2 bits. It rounds differently from the
            // scalar formula on ~10 % of pixels and is what cv2 runs on x86.
            let t0 = ((v0 >> 4) * b0) >> 16;
            let t1 = ((v1 >> 4) * b1) >> 16;
            out.push(((t0 + t1 + 2) >> 2).clamp(0, 255) as u8);
        }
    }
    out
}

/// OpenCV's `BORDER_REFLECT_101` index (`gfedcb|abcdefgh|gfedcba`).
fn reflect101(i: isize, len: usize) -> usize {
    if len == 1 {
        return 0;
    }
    let len = len as isize;
    let mut i = i;
    // The kernel reaches one pixel out, so one reflection always suffices.
    if i < 0 {
        i = -i;
    }
    if i >= len {
        i = 2 * len - 2 - i;
    }
    i.clamp(0, len - 1) as usize
}

/// Population variance of the 4-neighbour Laplacian with reflect-101 borders.
fn laplacian_var_of(img: &[u8], w: usize, h: usize) -> f64 {
    let px =
        |x: isize, y: isize| -> i32 { i32::from(img[reflect101(y, h) * w + reflect101(x, w)]) };
    let n = (w * h) as f64;
    let mut sum = 0f64;
    let mut sum_sq = 0f64;
    let mut values = Vec::with_capacity(w * h);
    for y in 0..h as isize {
        for x in 0..w as isize {
            let v = px(x, y - 1) + px(x - 1, y) + px(x + 1, y) + px(x, y + 1) - 4 * px(x, y);
            values.push(v);
            sum += f64::from(v);
        }
    }
    // Two-pass variance (as numpy's `.var()`), exact enough for ~90k values.
    let mean = sum / n;
    for v in values {
        let d = f64::from(v) - mean;
        sum_sq += d * d;
    }
    sum_sq / n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::test_images::{box_blur, textured};

    #[test]
    fn blurred_copy_has_much_lower_laplacian_variance() {
        let sharp = textured(640, 480);
        let blurred = box_blur(&sharp, 3);
        let vs = laplacian_variance(&sharp);
        let vb = laplacian_variance(&blurred);
        assert!(vs > 10.0 * vb, "sharp {vs} vs blurred {vb}");
    }

    #[test]
    fn laplacian_of_constant_is_zero_and_small_images_work() {
        assert_eq!(
            laplacian_variance(&GrayImage::from_pixel(1000, 10, image::Luma([9]))),
            0.0
        );
        // Upscaled path and degenerate sizes must not panic.
        for (w, h) in [
            (1, 1),
            (1, 7),
            (7, 1),
            (120, 80),
            (300, 300),
            (301, 2),
            (4000, 3),
        ] {
            let v = laplacian_variance(&textured(w, h));
            assert!(v.is_finite() && v >= 0.0, "{w}x{h}: {v}");
        }
        assert_eq!(laplacian_variance(&GrayImage::new(0, 0)), 0.0);
    }

    #[test]
    fn size_truncates_like_python_int() {
        assert_eq!(laplacian_size(640, 427), (300, 200)); // 427 · 0.46875 = 200.16
        assert_eq!(laplacian_size(426, 640), (199, 300)); // 199.69 → 199
        assert_eq!(laplacian_size(4000, 3), (300, 1)); // 0.225 → 0, kept at 1
        assert_eq!(laplacian_size(120, 80), (300, 200));
    }

    #[test]
    fn laplacian_of_known_pattern() {
        // A single bright pixel on black, already 300 wide (no resampling):
        // Laplacian is -4·255 at the pixel and 255 at its 4 neighbours.
        let mut img = GrayImage::new(300, 150);
        img.put_pixel(100, 50, image::Luma([255]));
        let n = 300.0 * 150.0;
        let vals = [-1020.0f64, 255.0, 255.0, 255.0, 255.0];
        let mean: f64 = vals.iter().sum::<f64>() / n;
        let var =
            (vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() + (n - 5.0) * mean * mean) / n;
        let got = f64::from(laplacian_variance(&img));
        assert!((got - var).abs() < 1e-3 * var, "{got} vs {var}");
    }

    /// The horizontal pass as OpenCV's scalar loop runs it: one source row
    /// at a time, each span folded in `xtab` order.
    fn scalar_row_sums(
        src: &[u8],
        w: usize,
        y: usize,
        spans: &[(usize, usize, usize)],
        alphas: &[f32],
    ) -> Vec<f32> {
        let row = &src[y * w..(y + 1) * w];
        spans
            .iter()
            .map(|&(si, n, first)| {
                row[si..si + n]
                    .iter()
                    .zip(&alphas[first..first + n])
                    .fold(0.0f32, |acc, (&p, &a)| acc + f32::from(p) * a)
            })
            .collect()
    }

    #[test]
    fn strip_sums_equal_the_scalar_loop_bit_for_bit() {
        let mut checked = 0usize;
        // Widths and heights off the 16-lane strip and tile sizes, and
        // several non-integer scales.
        for (w, h, dw) in [
            (4000, 3000, 300),
            (1001, 37, 300),
            (333, 17, 250),
            (47, 15, 20),
        ] {
            let img = textured(w, h);
            let (w, h) = (w as usize, h as usize);
            let (spans, alphas) = area_spans(&cv_area_tab(w, dw, w as f64 / dw as f64));
            let mut rows = AreaRows::new(img.as_raw(), w, &spans, &alphas);
            // Rows in the vertical pass's order, some asked for twice.
            for y in (0..h).flat_map(|y| [y, y]) {
                let want = scalar_row_sums(img.as_raw(), w, y, &spans, &alphas);
                let got = rows.row(y);
                assert_eq!(got.len(), want.len());
                for (g, e) in got.iter().zip(&want) {
                    assert_eq!(g.to_bits(), e.to_bits(), "{w}x{h}, row {y}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    #[test]
    fn transposed_strips_hold_every_pixel() {
        for (w, n) in [(37usize, 16usize), (64, 16), (5, 16), (40, 7), (16, 1)] {
            let strip: Vec<u8> = (0..w * n).map(|i| (i * 7 % 251) as u8).collect();
            let mut cols = vec![[9u8; STRIP]; w];
            transpose_strip(&strip, w, &mut cols);
            for (x, col) in cols.iter().enumerate() {
                for (r, &p) in col.iter().enumerate() {
                    let want = if r < n { strip[r * w + x] } else { 0 };
                    assert_eq!(p, want, "w {w}, rows {n}, x {x}, r {r}");
                }
            }
        }
    }

    #[test]
    fn area_resize_matches_hand_computed_values() {
        // 2×2 fast path rounds half up: (1+2+3+4+2)>>2 = 3 (2.5 → 3).
        let src = [1u8, 2, 3, 4];
        assert_eq!(cv_resize_area(&src, 2, 2, 1, 1), vec![3]);
        // 3 → 2 on a row: weights 2/3,1/3 | 1/3,2/3 of cells 1.5 wide.
        let src = [0u8, 90, 180];
        let out = cv_resize_area(&src, 3, 1, 2, 1);
        assert_eq!(out, vec![30, 150]);
    }
}
