//! The malformed-image corpus (`tests/fixtures/malformed/`, written by
//! `scripts/make_malformed_corpus.py`): every file goes through
//! [`decode_image`] (and [`preprocess`] when it decodes) and must give the outcome
//! its manifest expects — a per-image error, or an image of PIL's size and
//! colours that preprocesses to a finite tensor of the configured shape — never a
//! panic, and never more memory than the limits allow (peak RSS of this process,
//! `VmHWM`, stays under 1 GiB with a 64 MP zlib bomb in the corpus).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use ongi_core::preprocess::{
    decode_for_mode, decode_grey, decode_image, preprocess, DecodeMode, PreprocessConfig,
    DEFAULT_MAX_PIXELS,
};
use serde_json::Value;

/// Peak resident set size of this process allowed over the whole corpus.
const MAX_PEAK_RSS_BYTES: u64 = 1 << 30;

/// Largest difference of a channel mean (0..255) from PIL's. JPEG and PNG decode
/// bit-exactly; lossy WebP decoders may differ by a level here and there.
const MEAN_TOLERANCE: f64 = 1.0;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/malformed")
}

/// `VmHWM` (peak resident set) of this process, in bytes.
fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn every_malformed_file_yields_its_expected_outcome() {
    let dir = corpus_dir();
    let manifest: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    assert!(manifest.len() >= 50, "corpus has {} files", manifest.len());
    let cfg = PreprocessConfig::default();
    let mut failures = Vec::new();
    let mut divergences = Vec::new();

    for entry in &manifest {
        let name = entry["file"].as_str().unwrap();
        let expected = entry["expected"].as_str().unwrap();
        let bytes = std::fs::read(dir.join(name)).unwrap();
        // Known, reported differences from PIL: printed, not failed.
        let problems = match entry["known_divergence"].as_str() {
            Some(_) => &mut divergences,
            None => &mut failures,
        };
        let result = catch_unwind(AssertUnwindSafe(|| {
            decode_image(&bytes).map(|img| {
                let tensor = preprocess(&img, &cfg);
                (img, tensor)
            })
        }));
        // The pixel features' greyscale decode of the same bytes must not panic
        // and must accept whatever the colour decode accepts.
        let grey = catch_unwind(AssertUnwindSafe(|| {
            decode_grey(&bytes, DEFAULT_MAX_PIXELS, None)
        }));
        // Nor the serving fast decode's one full-size pass into planes.
        let planes = catch_unwind(AssertUnwindSafe(|| {
            decode_for_mode(&bytes, DEFAULT_MAX_PIXELS, Some(4.into()), DecodeMode::Fast)
        }));
        match (&planes, &result) {
            (Err(_), _) => problems.push(format!("{name}: fast serving decode PANICKED")),
            // Whatever the colour decode refuses, the one-pass decode refuses.
            (Ok(Ok(_)), Ok(Err(e))) => problems.push(format!(
                "{name}: fast serving decode accepted what the colour decode refused ({e})"
            )),
            (Ok(Err(e)), Ok(Ok(_))) => problems.push(format!(
                "{name}: fast serving decode refused what the colour decode accepted ({e})"
            )),
            _ => {}
        }
        match (&result, &grey) {
            (_, Err(_)) => problems.push(format!("{name}: greyscale decode PANICKED")),
            (Ok(Ok((img, _))), Ok(Err(e))) => problems.push(format!(
                "{name}: greyscale decode failed ({e}), colour decoded {}x{}",
                img.width(),
                img.height()
            )),
            (Ok(Ok((img, _))), Ok(Ok(g))) if g.dimensions() != img.dimensions() => {
                problems.push(format!(
                    "{name}: greyscale {:?} vs colour {:?}",
                    g.dimensions(),
                    img.dimensions()
                ))
            }
            _ => {}
        }
        match (expected, result) {
            (_, Err(_)) => problems.push(format!("{name}: PANICKED (expected {expected})")),
            ("error", Ok(Err(_))) => {}
            ("error", Ok(Ok((img, _)))) => problems.push(format!(
                "{name}: decoded to {}x{}, expected an error ({})",
                img.width(),
                img.height(),
                entry["note"]
                    .as_str()
                    .or(entry["pil_reason"].as_str())
                    .unwrap_or("")
            )),
            ("ok", Ok(Err(e))) => problems.push(format!("{name}: error {e}, expected ok")),
            ("ok", Ok(Ok((img, tensor)))) => {
                let want = (
                    entry["width"].as_u64().unwrap() as u32,
                    entry["height"].as_u64().unwrap() as u32,
                );
                if (img.width(), img.height()) != want {
                    problems.push(format!(
                        "{name}: size {}x{}, PIL's is {}x{}",
                        img.width(),
                        img.height(),
                        want.0,
                        want.1
                    ));
                }
                // Whole image, then the top-left quadrant (a wrong orientation keeps the mean).
                let (qw, qh) = ((img.width() / 2).max(1), (img.height() / 2).max(1));
                for (field, w, h) in [("mean", img.width(), img.height()), ("tl_mean", qw, qh)] {
                    let n = f64::from(w) * f64::from(h);
                    for c in 0..3 {
                        let mut sum = 0.0;
                        for y in 0..h {
                            for x in 0..w {
                                sum += f64::from(img.get_pixel(x, y).0[c]);
                            }
                        }
                        let pil = entry[field][c].as_f64().unwrap();
                        if (sum / n - pil).abs() > MEAN_TOLERANCE {
                            problems.push(format!(
                                "{name}: channel {c} {field} {:.3}, PIL's is {pil:.3}",
                                sum / n
                            ));
                        }
                    }
                }
                if tensor.len() != cfg.output_len() {
                    problems.push(format!(
                        "{name}: tensor of {} values, expected {}",
                        tensor.len(),
                        cfg.output_len()
                    ));
                }
                if !tensor.iter().all(|v| v.is_finite()) {
                    problems.push(format!("{name}: non-finite tensor values"));
                }
            }
            (other, _) => panic!("{name}: unknown expected outcome {other:?}"),
        }
    }

    for d in &divergences {
        eprintln!("known divergence from PIL: {d}");
    }
    let peak = peak_rss_bytes();
    eprintln!("{} files, peak RSS {} MiB", manifest.len(), peak >> 20);
    assert!(
        peak < MAX_PEAK_RSS_BYTES,
        "peak RSS {} MiB over the corpus (limit {} MiB)",
        peak >> 20,
        MAX_PEAK_RSS_BYTES >> 20
    );
    assert!(
        failures.is_empty(),
        "{} of {} files disagree with the manifest:\n{}",
        failures.len(),
        manifest.len(),
        failures.join("\n")
    );
}
