//! EXIF orientation of decoded planes and images, as
//! `DynamicImage::apply_orientation` applies it, fast: phones store portrait
//! photos as turned landscape frames, so a 12-MP luma (and, decoding
//! exactly, a 12-MP colour image) is turned for every portrait shot, and
//! the `image` crate's quarter turns write pixel by pixel a whole row apart.

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::tile::{transpose_band, TILE};

/// `img` turned upright by `orientation`; pixel for pixel what
/// `DynamicImage::apply_orientation` gives.
pub(super) fn orient_grey(img: GrayImage, orientation: Orientation) -> GrayImage {
    let Some((flip_y, flip_x)) = quarter_turn(orientation) else {
        return match orientation {
            Orientation::NoTransforms => img,
            Orientation::Rotate180 => {
                // Every byte's index from the end: both axes reversed.
                let (w, h) = img.dimensions();
                let mut data = img.into_raw();
                data.reverse();
                GrayImage::from_raw(w, h, data).unwrap_or_default()
            }
            _ => {
                let mut d = DynamicImage::ImageLuma8(img);
                d.apply_orientation(orientation);
                d.into_luma8()
            }
        };
    };
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    // The destination is `h` wide and `w` high; every byte is written below.
    let mut dst = SPARE.with(|spare| std::mem::take(&mut *spare.borrow_mut()));
    if dst.len() != w * h {
        dst.clear();
        dst.resize(w * h, 0);
    }
    let dx = |y: usize| if flip_y { h - 1 - y } else { y };
    let dy = |x: usize| if flip_x { w - 1 - x } else { x };
    let (tw, th) = (w - w % TILE, h - h % TILE);
    for ty in (0..th).step_by(TILE) {
        // Rows read bottom-up when the destination runs right to left, so
        // that each transposed column is stored in increasing order.
        let rows = std::array::from_fn(|r| w * if flip_y { ty + TILE - 1 - r } else { ty + r });
        let x0 = dx(if flip_y { ty + TILE - 1 } else { ty });
        transpose_band(src, &rows, tw, &mut dst, |c| dy(c) * h + x0);
    }
    // The ragged right columns and bottom rows, pixel by pixel.
    for y in 0..h {
        let xs = if y < th { tw } else { 0 };
        for x in xs..w {
            dst[dy(x) * h + dx(y)] = src[y * w + x];
        }
    }
    // The source's buffer is the next turn's destination.
    let src = img.into_raw();
    if src.len() <= MAX_SPARE {
        SPARE.with(|spare| *spare.borrow_mut() = src);
    }
    // `dst` holds exactly h × w bytes.
    GrayImage::from_raw(h as u32, w as u32, dst).unwrap_or_default()
}

/// `img` turned upright by `orientation`; pixel for pixel what
/// `DynamicImage::apply_orientation` gives. A quarter turn splits the
/// pixels into three planes, turns each with [`orient_grey`]'s byte
/// transposes and interleaves them again: moving 3-byte pixels one by one a
/// whole row apart took ~23 ms on a 12-MP photo (the `image` crate: ~43 ms),
/// the planes ~10 ms. The other orientations are the crate's.
pub(super) fn orient_rgb(img: RgbImage, orientation: Orientation) -> RgbImage {
    if quarter_turn(orientation).is_none() {
        if orientation == Orientation::NoTransforms {
            return img;
        }
        let mut d = DynamicImage::ImageRgb8(img);
        d.apply_orientation(orientation);
        return d.into_rgb8();
    }
    let (w, h) = img.dimensions();
    let [a, b, c] = upright_planes(img.as_raw(), w, h, orientation);
    let mut dst = img.into_raw();
    merge_planes([&a, &b, &c], &mut dst);
    // `dst` holds the same w × h pixels, now h wide.
    RgbImage::from_raw(h, w, dst).unwrap_or_default()
}

/// The three planes of `w × h` interleaved 3-byte pixels, each turned by
/// the quarter turn `orientation` (so `h` wide and `w` high).
fn upright_planes(data: &[u8], w: u32, h: u32, orientation: Orientation) -> [Vec<u8>; 3] {
    let n = w as usize * h as usize;
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    split_planes(data, &mut planes);
    planes.map(|plane| match GrayImage::from_raw(w, h, plane) {
        Some(plane) => orient_grey(plane, orientation).into_raw(),
        // `plane` is exactly w × h bytes, so this is never taken.
        None => Vec::new(),
    })
}

/// Interleaved YCbCr pixels (`w × h`, as libjpeg writes them) converted
/// to RGB as libjpeg converts them and turned upright by `orientation`,
/// with their Y plane turned the same way; `None` if `data` is not `w × h`
/// pixels. A quarter turn splits the planes, turns each with
/// [`orient_grey`]'s byte transposes and converts the upright planes,
/// instead of turning 3-byte pixels one by one.
pub(super) fn ycc_to_upright_rgb(
    mut data: Vec<u8>,
    w: u32,
    h: u32,
    orientation: Orientation,
) -> Option<(RgbImage, GrayImage)> {
    let n = w as usize * h as usize;
    if data.len() != n * 3 {
        return None;
    }
    if quarter_turn(orientation).is_none() {
        let y = GrayImage::from_raw(w, h, data.iter().step_by(3).copied().collect())?;
        super::ycc::ycc_to_rgb_in_place(&mut data);
        let rgb = RgbImage::from_raw(w, h, data)?;
        return Some((orient_rgb(rgb, orientation), orient_grey(y, orientation)));
    }
    let [y, cb, cr] = upright_planes(&data, w, h, orientation);
    drop(data);
    let rgb = RgbImage::from_raw(h, w, super::ycc::ycc_planes_to_rgb(&y, &cb, &cr))?;
    Some((rgb, GrayImage::from_raw(h, w, y)?))
}

/// The three bytes of every pixel of `data` into three planes.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn split_planes(data: &[u8], planes: &mut [Vec<u8>; 3]) {
    let [a, b, c] = planes;
    for (((px, a), b), c) in data.chunks_exact(3).zip(a).zip(b).zip(c) {
        (*a, *b, *c) = (px[0], px[1], px[2]);
    }
}

/// Three planes of equal length interleaved into 3-byte pixels of `dst`.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn merge_planes(planes: [&[u8]; 3], dst: &mut [u8]) {
    let [a, b, c] = planes;
    for (((px, a), b), c) in dst.chunks_exact_mut(3).zip(a).zip(b).zip(c) {
        px.copy_from_slice(&[*a, *b, *c]);
    }
}

/// For the four orientations that transpose the image, whether the
/// destination runs right to left (`flip_y`: source row `y` becomes column
/// `h − 1 − y`, else `y`) and bottom to top (`flip_x`: source column `x`
/// becomes row `w − 1 − x`, else `x`); `None` for the others.
fn quarter_turn(orientation: Orientation) -> Option<(bool, bool)> {
    match orientation {
        Orientation::Rotate90 => Some((true, false)),
        Orientation::Rotate270 => Some((false, true)),
        Orientation::Rotate90FlipH => Some((false, false)),
        Orientation::Rotate270FlipH => Some((true, true)),
        Orientation::NoTransforms
        | Orientation::Rotate180
        | Orientation::FlipHorizontal
        | Orientation::FlipVertical => None,
    }
}

/// The largest buffer a thread keeps between turns (a 32-MP photo's luma).
const MAX_SPARE: usize = 32 << 20;

thread_local! {
    /// Each decode thread's spare plane: turning a 12-MP luma into a fresh
    /// 12-MB buffer every photo cost more in page faults than the turn itself.
    static SPARE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_orientation_matches_the_image_crate() {
        let mut checked = 0;
        for (w, h) in [
            (37, 53),
            (16, 16),
            (33, 17),
            (1, 5),
            (64, 48),
            (5, 1),
            (48, 70),
        ] {
            let data: Vec<u8> = (0..w * h).map(|i| (i * 31 % 253) as u8).collect();
            let img = GrayImage::from_raw(w, h, data).unwrap();
            for o in 1..=8u8 {
                let o = Orientation::from_exif(o).unwrap();
                let mut want = DynamicImage::ImageLuma8(img.clone());
                want.apply_orientation(o);
                let got = orient_grey(img.clone(), o);
                assert!(got == want.into_luma8(), "{w}x{h} {o:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 56);
    }

    #[test]
    fn every_colour_orientation_matches_the_image_crate() {
        let mut checked = 0;
        for (w, h) in [(37, 53), (32, 32), (65, 33), (1, 5), (5, 1), (70, 48)] {
            let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 31 % 253) as u8).collect();
            let img = RgbImage::from_raw(w, h, data).unwrap();
            for o in 1..=8u8 {
                let o = Orientation::from_exif(o).unwrap();
                let mut want = DynamicImage::ImageRgb8(img.clone());
                want.apply_orientation(o);
                let got = orient_rgb(img.clone(), o);
                assert!(got == want.into_rgb8(), "{w}x{h} {o:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 48);
    }

    #[test]
    fn ycc_turned_as_planes_is_converted_then_turned() {
        let mut checked = 0;
        for (w, h) in [(37, 53), (32, 32), (65, 33), (1, 5), (70, 48)] {
            let data: Vec<u8> = (0..w * h * 3).map(|i| (i * 29 % 251) as u8).collect();
            let mut rgb = data.clone();
            super::super::ycc::ycc_to_rgb_in_place(&mut rgb);
            let rgb = RgbImage::from_raw(w, h, rgb).unwrap();
            let y: Vec<u8> = data.iter().step_by(3).copied().collect();
            let y = GrayImage::from_raw(w, h, y).unwrap();
            for o in 1..=8u8 {
                let o = Orientation::from_exif(o).unwrap();
                let mut want = DynamicImage::ImageRgb8(rgb.clone());
                want.apply_orientation(o);
                let mut want_y = DynamicImage::ImageLuma8(y.clone());
                want_y.apply_orientation(o);
                let (got, got_y) = ycc_to_upright_rgb(data.clone(), w, h, o).unwrap();
                assert!(got == want.into_rgb8(), "{w}x{h} {o:?}");
                assert!(got_y == want_y.into_luma8(), "Y plane, {w}x{h} {o:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, 40);
        assert!(ycc_to_upright_rgb(vec![0; 5], 1, 2, Orientation::Rotate90).is_none());
    }
}
