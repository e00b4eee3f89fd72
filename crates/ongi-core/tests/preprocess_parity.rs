//! Parity of `decode_image` + `preprocess` with transformers' PIL `CLIPImageProcessor`.
//!
//! References: `tests/fixtures/pixels*.reference.safetensors`, one f32 `[3, S, S]`
//! tensor per photo (named `"photos/<file>"`), made by `scripts/make_fixtures.py`
//! with PIL open → `exif_transpose` → `convert("RGB")` → `CLIPImageProcessorPil`.
//! Run with `--nocapture` to see the per-photo differences.

use std::path::{Path, PathBuf};

use ongi_core::preprocess::{decode_image, preprocess, PreprocessConfig, PreprocessError};
use safetensors::{Dtype, SafeTensors};

/// Lossless formats (PNG, WebP): the decoded pixels are identical to PIL's and the
/// resize is a bit-exact port of Pillow's, so the only room left is f32 rounding in
/// rescale/normalise, which is reproduced operation for operation. 1e-5 is far below
/// one u8 level (≈ 0.0146 after normalisation); in practice the values are identical.
const LOSSLESS_MAX_ABS: f32 = 1e-5;

/// JPEG: `image` (zune-jpeg) and libjpeg-turbo (PIL) use different IDCT and chroma
/// upsampling, so a few percent of pixels differ by a few levels before the resize
/// (SPEC §5; measured cost on the embeddings: cosine ≥ 0.9999965). The mean absolute
/// difference stays far below one level (≈ 0.0146); the maximum is reported only.
const JPEG_MEAN_ABS: f32 = 0.01;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn to_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Compares every photo of `reference_file` against our pipeline with `cfg`.
fn check_reference(reference_file: &str, cfg: &PreprocessConfig) {
    let dir = fixtures();
    let data = std::fs::read(dir.join(reference_file)).unwrap();
    let tensors = SafeTensors::deserialize(&data).unwrap();
    let mut names = tensors.names();
    names.sort();
    assert!(!names.is_empty(), "{reference_file} holds no tensors");

    let side = cfg.crop_height as usize;
    // One table per reference, printed in one piece (tests run in parallel), before
    // any assertion so a failure still shows every photo.
    let mut table = format!(
        "{reference_file}:\n  {:<42} {:>10} {:>10} {:>9}  tolerance\n",
        "photo", "max |Δ|", "mean |Δ|", "bit-eq %"
    );
    let mut failures = Vec::new();
    for name in names {
        let view = tensors.tensor(name).unwrap();
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        assert_eq!(view.shape(), &[3, side, side], "{name}");
        let want = to_f32(view.data());

        let bytes = std::fs::read(dir.join(name)).unwrap();
        let img = decode_image(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = preprocess(&img, cfg);
        assert_eq!(got.len(), want.len(), "{name}");

        let diffs: Vec<f32> = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let same = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() == b.to_bits())
            .count();
        let same_pct = 100.0 * same as f64 / got.len() as f64;

        let lower = name.to_ascii_lowercase();
        let is_jpeg = lower.ends_with(".jpg") || lower.ends_with(".jpeg");
        let (tolerance, ok) = if is_jpeg {
            (format!("mean ≤ {JPEG_MEAN_ABS}"), mean <= JPEG_MEAN_ABS)
        } else {
            (
                format!("max ≤ {LOSSLESS_MAX_ABS:e}"),
                max <= LOSSLESS_MAX_ABS,
            )
        };
        table.push_str(&format!(
            "  {name:<42} {max:>10.3e} {mean:>10.3e} {same_pct:>9.3}  {tolerance}\n"
        ));
        if !ok {
            failures.push(format!(
                "{name}: max {max}, mean {mean}, allowed {tolerance}"
            ));
        }
    }
    println!("{table}");
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn pixels_224_match_transformers() {
    let cfg = PreprocessConfig::from_model_dir(&fixtures().join("tiny-clip")).unwrap();
    // The tiny model's processor is CLIP ViT-B/32's, which is also our default.
    assert_eq!(cfg, PreprocessConfig::default());
    check_reference("pixels.reference.safetensors", &cfg);
}

#[test]
fn pixels_64_match_transformers() {
    let cfg = PreprocessConfig::from_model_dir(&fixtures().join("tiny-clip-gelu")).unwrap();
    assert_eq!(
        (cfg.shortest_edge, cfg.crop_height, cfg.crop_width),
        (64, 64, 64)
    );
    check_reference("pixels64.reference.safetensors", &cfg);
}

#[test]
fn every_decodable_photo_has_a_reference() {
    let dir = fixtures();
    let data = std::fs::read(dir.join("pixels.reference.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&data).unwrap();
    let names = tensors.names();
    for entry in std::fs::read_dir(dir.join("photos")).unwrap() {
        let file = entry.unwrap().file_name().into_string().unwrap();
        if file == "corrupt.jpg" {
            continue;
        }
        let key = format!("photos/{file}");
        assert!(
            names.contains(&key.as_str()),
            "{key} has no reference tensor"
        );
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Orientation 6 stores the upright 640x400 photo as 400x640 pixels.
    let bytes = std::fs::read(fixtures().join("photos/exif_orientation6_twowings.jpg")).unwrap();
    let img = decode_image(&bytes).unwrap();
    assert_eq!(img.dimensions(), (640, 400));
}

#[test]
fn corrupt_empty_and_random_inputs_are_errors() {
    let corrupt = std::fs::read(fixtures().join("photos/corrupt.jpg")).unwrap();
    let err = decode_image(&corrupt).unwrap_err();
    println!("corrupt.jpg: {err}");
    assert!(matches!(err, PreprocessError::Decode { .. }), "{err:?}");

    let err = decode_image(&[]).unwrap_err();
    println!("empty: {err}");
    assert!(
        matches!(err, PreprocessError::UnrecognizedFormat { len: 0 }),
        "{err:?}"
    );

    // Deterministic pseudo-random bytes (xorshift), with and without a JPEG/PNG magic.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut noise = vec![0u8; 4096];
    for b in &mut noise {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = state as u8;
    }
    let err = decode_image(&noise).unwrap_err();
    println!("random: {err}");
    for magic in [
        &b"\xff\xd8\xff\xe0"[..],
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBPVP8 ",
    ] {
        let mut bytes = magic.to_vec();
        bytes.extend_from_slice(&noise);
        let err = decode_image(&bytes).unwrap_err();
        println!("random with magic {magic:?}: {err}");
    }

    // A recognised but unsupported format names itself.
    let err = decode_image(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap_err();
    assert!(
        matches!(err, PreprocessError::UnsupportedFormat { .. }),
        "{err:?}"
    );
}

#[test]
fn truncated_photos_never_panic() {
    // Cut every lossless photo and one JPEG at many points: each cut must give Ok
    // (some decoders tolerate missing trailing data) or Err, never a panic.
    let dir = fixtures().join("photos");
    for file in [
        "rgb_garden.png",
        "lossless_freshflower.webp",
        "landscape_storm_progressive.jpg",
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        for cut in (0..bytes.len()).step_by(bytes.len() / 23 + 1) {
            let _ = decode_image(&bytes[..cut]);
        }
    }
}
