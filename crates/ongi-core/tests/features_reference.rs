//! Pins `phash` and `laplacian_variance` to the reference implementations the
//! original server used, on synthetic images every tool can rebuild exactly:
//!
//! - pHash: `imagehash.phash(Image.fromarray(img))` 4.3.2 with Pillow 11.3;
//! - Laplacian: `cv2.cvtColor(img, COLOR_RGB2GRAY)`, `cv2.resize(...,
//!   INTER_AREA)` to a 300 px long side, `cv2.Laplacian(g, CV_64F).var()`
//!   with opencv-python-headless 4.14.
//!
//! The sizes exercise every OpenCV area path (integer 2× and 3× reduction,
//! fractional reduction, enlargement) and Pillow's Lanczos in both
//! directions. Values were produced with this numpy generator:
//!
//! ```python
//! y, x = np.mgrid[0:h, 0:w]
//! img = np.stack([(x*x + 3*y) % 256, (5*x + y*y) % 256, ((x ^ y) * 7) % 256], -1).astype(np.uint8)
//! ```

use image::{Rgb, RgbImage};
use ongi_core::features::{hamming, laplacian_variance, phash, pixel_features};

fn synth(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        Rgb([
            ((x * x + 3 * y) % 256) as u8,
            ((5 * x + y * y) % 256) as u8,
            (((x ^ y) * 7) % 256) as u8,
        ])
    })
}

/// (width, height, imagehash pHash, OpenCV Laplacian variance).
const REFERENCE: &[(u32, u32, u64, f64)] = &[
    (640, 480, 0x8056_7653_79fd_6a18, 6108.7757434862015),
    (600, 400, 0x827f_0747_787f_282a, 9282.382423819723),
    (900, 600, 0xc555_1455_407a_eb77, 6382.335075462222),
    (200, 133, 0xa07f_0065_aa7d_40ff, 5210.387047195556),
    // Pillow 13 reorders the two resampling passes for images taller than
    // wide and gets 0x847f37ff25a55004 here (2 bits apart); earlier Pillow
    // releases, which the original server ran, agree with this value.
    (97, 301, 0x847f_37fb_a5a5_5004, 9641.306781321666),
    (1000, 37, 0xa27f_5510_152a_2b7f, 6011.052809090907),
    (32, 32, 0x860e_352e_625d_d79c, 306.56426666666664),
];

#[test]
fn phash_matches_imagehash_bit_for_bit() {
    for &(w, h, expected, _) in REFERENCE {
        let got = phash(&synth(w, h));
        assert_eq!(
            got,
            expected,
            "{w}x{h}: got {got:016x}, want {expected:016x} ({} bits apart)",
            hamming(got, expected)
        );
    }
}

#[test]
fn laplacian_variance_matches_opencv() {
    for &(w, h, _, expected) in REFERENCE {
        let got = f64::from(laplacian_variance(&synth(w, h)));
        // Only the final f32 rounding separates the two.
        assert!(
            (got - expected).abs() <= 1e-6 * expected,
            "{w}x{h}: got {got}, want {expected}"
        );
    }
}

#[test]
fn pixel_features_bundles_the_same_values() {
    let img = synth(640, 480);
    let f = pixel_features(&img);
    assert_eq!((f.width, f.height), (640, 480));
    assert_eq!(f.phash, phash(&img));
    assert_eq!(f.laplacian_var, laplacian_variance(&img));
}
