//! EXIF orientation of a greyscale plane, as `DynamicImage::apply_orientation`
//! applies it, fast: the quarter turns go through 16 × 16 tile transposes
//! (phones store portrait photos as turned landscape frames, so a 12-MP
//! luma is turned for every portrait shot).

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage};

use crate::tile::{transpose_band, TILE};

/// `img` turned upright by `orientation`; pixel for pixel what
/// `DynamicImage::apply_orientation` gives.
pub(super) fn orient_grey(img: GrayImage, orientation: Orientation) -> GrayImage {
    // Source (x, y) goes to destination (h−1−y or y, w−1−x or x).
    let (flip_y, flip_x) = match orientation {
        Orientation::NoTransforms => return img,
        Orientation::Rotate180 => {
            // Every byte's index from the end: both axes reversed.
            let (w, h) = img.dimensions();
            let mut data = img.into_raw();
            data.reverse();
            return GrayImage::from_raw(w, h, data).unwrap_or_default();
        }
        Orientation::FlipHorizontal | Orientation::FlipVertical => {
            let mut d = DynamicImage::ImageLuma8(img);
            d.apply_orientation(orientation);
            return d.into_luma8();
        }
        Orientation::Rotate90 => (true, false),
        Orientation::Rotate270 => (false, true),
        Orientation::Rotate90FlipH => (false, false),
        Orientation::Rotate270FlipH => (true, true),
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
}
