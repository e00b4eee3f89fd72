//! One JPEG decode for the model and the pixel features: decoding to YCbCr
//! and converting to RGB here must give libjpeg's RGB bit for bit, at full
//! size and DCT-reduced, and the luma it keeps must be OpenCV's greyscale
//! decode at full size.

use std::path::PathBuf;

use ongi_core::preprocess::{
    decode_for_mode, decode_grey, decode_image_scaled, DecodeMode, MinDecodeSize, PreprocessConfig,
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

/// Fast mode decodes a YCbCr or grey JPEG once, at full size into its planes:
/// the luma must be OpenCV's greyscale decode bit for bit, and the colour
/// image, averaged from the planes, must sit on the DCT-reduced decode's grid
/// and stay close to its pixels. Returns the mean |Δ| in levels of one
/// one-pass decode, or `None` when the file took another path.
fn check_fast(bytes: &[u8], name: &str, min: Option<MinDecodeSize>) -> Option<f64> {
    let plain = decode_image_scaled(bytes, DEFAULT_MAX_PIXELS, min).unwrap();
    let mut both = decode_for_mode(bytes, DEFAULT_MAX_PIXELS, min, DecodeMode::Fast).unwrap();
    let luma = both.luma.take();
    assert_eq!(both.scale_denom, plain.scale_denom, "{name}");
    assert_eq!(
        (both.width, both.height),
        (plain.width, plain.height),
        "{name}"
    );
    assert_eq!(both.source_box, plain.source_box, "{name}");
    assert_eq!(both.image.dimensions(), plain.image.dimensions(), "{name}");
    let luma = luma?;
    let grey = decode_grey(bytes, DEFAULT_MAX_PIXELS, None).unwrap();
    assert!(luma == grey, "{name}: fast luma is not OpenCV's grey");
    if plain.scale_denom == 1 {
        assert!(
            both == plain,
            "{name}: full-size fast decode is not libjpeg's"
        );
        return None;
    }
    let diff: u64 = both
        .image
        .as_raw()
        .iter()
        .zip(plain.image.as_raw())
        .map(|(&a, &b)| u64::from(a.abs_diff(b)))
        .sum();
    let mad = diff as f64 / both.image.as_raw().len() as f64;
    // Two low-pass reductions of the same pixels: a box mean against the
    // DCT's own; a few levels apart on average, never a shifted grid.
    assert!(
        mad < 4.0,
        "{name}: mean |Δ| {mad:.2} levels to the DCT-reduced decode"
    );
    Some(mad)
}

#[test]
fn fast_fixture_jpegs_decode_once_at_full_size() {
    let files = jpegs_in(fixtures::photos());
    // Small fixtures: a small bound makes them reduce too, each at 1/2 to 1/8.
    let mut one_pass = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let name = f.display().to_string();
        for edge in [16, 40, 90] {
            let min = Some(MinDecodeSize::from(edge));
            if let Some(mad) = check_fast(&bytes, &name, min) {
                one_pass.push(mad);
            }
        }
        // The default bound leaves them at full size: the exact decode's luma.
        let cfg = PreprocessConfig::default();
        check_fast(&bytes, &name, DecodeMode::Fast.min_decode_size(&cfg));
    }
    let worst = one_pass.iter().copied().fold(0.0, f64::max);
    println!(
        "{} one-pass decodes of {} fixtures, worst mean |Δ| {worst:.2} levels",
        one_pass.len(),
        files.len()
    );
    assert!(one_pass.len() >= 2 * files.len(), "{}", one_pass.len());
    // CMYK is not YCbCr: decoded reduced, without a luma.
    let cmyk = std::fs::read(fixtures::dir().join("malformed").join("cmyk.jpg")).unwrap();
    assert_eq!(check_fast(&cmyk, "cmyk.jpg", Some(16.into())), None);
}

#[test]
fn fast_real_photos_decode_once_at_full_size() {
    let Some(dir) = real_photos::photo_dir() else {
        return;
    };
    let cfg = PreprocessConfig::default();
    let min = DecodeMode::Fast.min_decode_size(&cfg);
    let files = jpegs_in(dir);
    let mut mads = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        if let Some(mad) = check_fast(&bytes, &f.display().to_string(), min) {
            mads.push(mad);
        }
    }
    let worst = mads.iter().copied().fold(0.0, f64::max);
    println!(
        "{} of {} real photos decoded once at full size, worst mean |Δ| {worst:.2} levels",
        mads.len(),
        files.len()
    );
    assert!(mads.len() >= 3, "only {} one-pass decodes", mads.len());
}

/// `jpeg` with an XMP APP1 segment carrying `tiff:Orientation` inserted
/// right after SOI.
fn with_xmp_orientation(jpeg: &[u8], orientation: u8) -> Vec<u8> {
    let mut payload = b"http://ns.adobe.com/xap/1.0/\0".to_vec();
    payload.extend_from_slice(format!(r#"<x tiff:Orientation="{orientation}"/>"#).as_bytes());
    let len = u16::try_from(payload.len() + 2).unwrap();
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn luma_follows_exif_only_when_xmp_turns_the_colour() {
    // The colour follows XMP where EXIF says nothing and the luma (OpenCV's
    // greyscale decode) does not; where EXIF speaks it wins for both, and
    // the exact decode's luma is then its colour's own Y plane.
    let cases = [
        ("landscape_dune.jpg", true),
        ("exif_orientation6_twowings.jpg", false),
        ("exif_orientation3_blinds.jpg", false),
        ("grey_wood.jpg", true),
    ];
    let mut checked = 0;
    for (name, xmp_turns_colour) in cases {
        let original = std::fs::read(fixtures::photos().join(name)).unwrap();
        let bytes = with_xmp_orientation(&original, 8);
        let plain = decode_image_scaled(&original, DEFAULT_MAX_PIXELS, None).unwrap();
        for mode in [DecodeMode::Exact, DecodeMode::Fast] {
            let decoded = decode_for_mode(&bytes, DEFAULT_MAX_PIXELS, None, mode).unwrap();
            let luma = decoded
                .luma
                .as_ref()
                .expect("a YCbCr or grey JPEG keeps its luma");
            let grey = decode_grey(&bytes, DEFAULT_MAX_PIXELS, None).unwrap();
            assert!(*luma == grey, "{name} ({mode}): luma is not OpenCV's grey");
            assert_eq!(
                grey,
                decode_grey(&original, DEFAULT_MAX_PIXELS, None).unwrap(),
                "{name}: OpenCV's grey ignores XMP"
            );
            let (w, h) = plain.image.dimensions();
            let want = if xmp_turns_colour { (h, w) } else { (w, h) };
            assert_eq!(decoded.image.dimensions(), want, "{name} ({mode})");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}
