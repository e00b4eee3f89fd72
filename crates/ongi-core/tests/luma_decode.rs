//! One JPEG decode for the model and the pixel features: decoding to YCbCr
//! and converting to RGB here must give libjpeg's RGB bit for bit, at full
//! size and DCT-reduced, and the luma it keeps must be OpenCV's greyscale
//! decode at full size.

use std::path::PathBuf;

use ongi_core::preprocess::{
    decode_for_mode, decode_grey, decode_image_scaled, DecodeMode, PreprocessConfig,
    DEFAULT_MAX_PIXELS,
};
use ongi_test_support::{fixtures, real_photos};

/// Checks one file in both decode modes; returns how many decodes kept a luma.
fn check(path: &std::path::Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let name = path.display();
    let cfg = PreprocessConfig::default();
    let mut with_luma = 0;
    for mode in [DecodeMode::Exact, DecodeMode::Reduced] {
        let min = mode.min_decode_size(&cfg);
        let plain = decode_image_scaled(&bytes, DEFAULT_MAX_PIXELS, min).unwrap();
        let mut both = decode_for_mode(&bytes, DEFAULT_MAX_PIXELS, min, mode).unwrap();
        assert!(plain.luma.is_none(), "{name}: a luma nobody asked for");
        let Some(luma) = both.luma.take() else {
            assert_eq!(both, plain, "{name} ({mode})");
            continue;
        };
        with_luma += 1;
        assert!(both == plain, "{name} ({mode}): RGB differs from libjpeg's");
        // The colour follows EXIF and XMP orientation, the luma EXIF only; the
        // fixtures carry no XMP, so both are upright alike.
        assert_eq!(
            luma.dimensions(),
            plain.image.dimensions(),
            "{name} ({mode})"
        );
        if plain.scale_denom == 1 {
            let grey = decode_grey(&bytes, DEFAULT_MAX_PIXELS, None).unwrap();
            assert!(luma == grey, "{name} ({mode}): luma is not OpenCV's grey");
        }
    }
    with_luma
}

fn jpegs_in(dir: PathBuf) -> Vec<PathBuf> {
    real_photos::jpegs(&dir)
        .into_iter()
        .filter(|p| !p.ends_with(fixtures::CORRUPT_PHOTO))
        .collect()
}

#[test]
fn fixture_jpegs_decode_once_for_colour_and_luma() {
    let files = jpegs_in(fixtures::photos());
    let lumas: usize = files.iter().map(|f| check(f)).sum();
    // Baseline, progressive, 4:4:4, grey and EXIF-rotated files, each twice.
    assert!(files.len() >= 7, "only {} fixture JPEGs", files.len());
    assert_eq!(
        lumas,
        2 * files.len(),
        "every fixture JPEG is YCbCr or grey"
    );
    // CMYK has no luma to give: the features decode grey on their own.
    assert_eq!(
        check(&fixtures::dir().join("malformed").join("cmyk.jpg")),
        0
    );
}

#[test]
fn real_photos_decode_once_for_colour_and_luma() {
    let Some(dir) = real_photos::photo_dir() else {
        return;
    };
    let files = jpegs_in(dir);
    let lumas: usize = files.iter().map(|f| check(f)).sum();
    assert!(files.len() >= 16, "only {} real photos", files.len());
    assert!(
        lumas >= files.len(),
        "{lumas} lumas for {} photos",
        files.len()
    );
    println!(
        "{} real photos: one decode gives libjpeg's RGB and the luma",
        files.len()
    );
}
