//! The pixel features (pHash, Laplacian variance) computed from a fast decode stay
//! faithful to the exact decode's on real photos.
//!
//! Photos: `ONGI_REAL_PHOTOS`, else `/usr/share/backgrounds/mate` (Debian's
//! `mate-backgrounds`, real photos of 1280–5640 px). Absent: skipped, or a failure
//! when `CI` is set. Each JPEG is decoded at every scale libjpeg offers (1, 1/2,
//! 1/4, 1/8) and the table shows how far the features move from the exact ones;
//! the default fast decode ("fast") must stay within [`MAX_LAP_REL`] (or
//! [`LAP_ABS_FLOOR`] for near-flat photos) and [`MAX_PHASH_BITS`]. "before" is the
//! shorter-side-only rule the fast mode had without its long-side bound.

/// Largest relative change of the Laplacian variance (blur threshold 80);
/// measured worst −5.9 % (Elephants 5640 at 1/4, see
/// `FAST_FEATURES_MIN_LONG_SIDE`).
const MAX_LAP_REL: f64 = 0.07;
/// Absolute slack for tiny variances, where 7 % is below rounding noise.
const LAP_ABS_FLOOR: f64 = 1.0;
/// Largest pHash Hamming distance (duplicate grouping compares distances).
const MAX_PHASH_BITS: u32 = 2;

#[path = "support/real_photos.rs"]
mod real_photos;

use ongi_core::features::{self, PixelFeatures};
use ongi_core::preprocess::{
    decode_image_scaled, DecodeMode, PreprocessConfig, DEFAULT_MAX_PIXELS, FAST_SAFETY_FACTOR,
};

/// Relative Laplacian-variance difference `(fast - exact) / exact`.
fn lap_rel(exact: &PixelFeatures, fast: &PixelFeatures) -> f64 {
    (f64::from(fast.laplacian_var) - f64::from(exact.laplacian_var))
        / f64::from(exact.laplacian_var).max(f64::MIN_POSITIVE)
}

#[test]
fn features_at_every_scale_on_real_photos() {
    let Some(dir) = real_photos::photo_dir() else {
        return;
    };
    let photos = real_photos::jpegs(&dir);
    assert!(!photos.is_empty(), "no JPEGs under {}", dir.display());
    let cfg = PreprocessConfig::default();
    let mut failures = Vec::new();
    let mut table = String::from(
        "pixel features vs the exact decode: Laplacian var. rel. diff / pHash bits (long side)\n",
    );
    table.push_str(&format!(
        "  {:<34} {:>10} {:>8} {:>22} {:>22} {:>22} {:>22}\n",
        "photo", "size", "lap", "1/1", "1/2", "1/4", "1/8"
    ));
    for path in &photos {
        let bytes = std::fs::read(path).unwrap();
        let full = decode_image_scaled(&bytes, DEFAULT_MAX_PIXELS, None).unwrap();
        let exact = features::pixel_features(&full.image);
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .display()
            .to_string();
        table.push_str(&format!(
            "  {name:<34} {:>10} {:>8.1}",
            format!("{}x{}", full.width, full.height),
            exact.laplacian_var
        ));
        let short = full.width.min(full.height);
        for d in [1u32, 2, 4, 8] {
            // The smallest decode whose short side is ceil(short / d): exactly 1/d.
            let min_edge = (d > 1).then(|| short.div_ceil(d).into());
            let dec = decode_image_scaled(&bytes, DEFAULT_MAX_PIXELS, min_edge).unwrap();
            if dec.scale_denom != d {
                table.push_str(&format!(" {:>22}", "-"));
                continue;
            }
            let f = features::pixel_features(&dec.image);
            let long = dec.image.width().max(dec.image.height());
            table.push_str(&format!(
                " {:>22}",
                format!(
                    "{:+6.1}% {}b ({long})",
                    100.0 * lap_rel(&exact, &f),
                    features::hamming(exact.phash, f.phash)
                )
            ));
        }
        let before_edge = (f64::from(cfg.shortest_edge) * FAST_SAFETY_FACTOR).ceil() as u32;
        let before = decode_image_scaled(&bytes, DEFAULT_MAX_PIXELS, Some(before_edge.into()))
            .unwrap()
            .scale_denom;
        let fast = decode_image_scaled(
            &bytes,
            DEFAULT_MAX_PIXELS,
            DecodeMode::Fast.min_decode_size(&cfg),
        )
        .unwrap();
        let f = features::pixel_features(&fast.image);
        let (rel, bits) = (lap_rel(&exact, &f), features::hamming(exact.phash, f.phash));
        table.push_str(&format!(
            "  before 1/{before} fast 1/{} {:+.1}% {bits}b\n",
            fast.scale_denom,
            100.0 * rel
        ));
        let abs = (f64::from(f.laplacian_var) - f64::from(exact.laplacian_var)).abs();
        if (rel.abs() > MAX_LAP_REL && abs > LAP_ABS_FLOOR) || bits > MAX_PHASH_BITS {
            failures.push(format!(
                "{name}: 1/{} Laplacian {:+.1}%, pHash {bits} bits",
                fast.scale_denom,
                100.0 * rel
            ));
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{failures:#?}");
}
