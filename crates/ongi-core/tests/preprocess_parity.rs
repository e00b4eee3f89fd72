//! Parity of `decode_image` + `preprocess` with transformers' PIL `CLIPImageProcessor`.
//!
//! References: `tests/fixtures/pixels*.reference.safetensors`, one f32 `[3, S, S]`
//! tensor per photo (named `"photos/<file>"`), made by `scripts/make_fixtures.py`
//! with PIL open → `exif_transpose` → `convert("RGB")` → `CLIPImageProcessorPil`.
//! Run with `--nocapture` to see the per-photo differences; set
//! `ONGI_DECODE_PARITY_DIR` to also compare decoded pixels with PIL on photos
//! outside the repository (see `decoded_pixels_match_pil_dumps`).

use std::path::PathBuf;

use ongi_test_support::fixtures::dir as fixtures;

use ongi_core::preprocess::{
    decode_image, decode_image_with_limit, load_and_preprocess, DecodeMode, PreprocessConfig,
    PreprocessError, DEFAULT_MAX_PIXELS,
};
use safetensors::{Dtype, SafeTensors};

/// Every format: PNG and WebP through `image` and JPEG through libjpeg-turbo (the
/// decoder PIL uses, configured like PIL) decode to PIL's pixels, and the resize is a
/// bit-exact port of Pillow's, so the only room left is f32 rounding in
/// rescale/normalise, which is reproduced operation for operation. 1e-5 is far below
/// one u8 level (≈ 0.0146 after normalisation); in practice the values are identical.
const MAX_ABS: f32 = 1e-5;

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
        // The exact decode, explicitly: bit parity is its promise, not fast's.
        let got = load_and_preprocess(&bytes, cfg, DecodeMode::Exact)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
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

        let tolerance = format!("max ≤ {MAX_ABS:e}");
        let ok = max <= MAX_ABS;
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
    // Cut the lossless photos at many points: each cut must give Ok (some decoders
    // tolerate missing trailing data) or Err, never a panic.
    let dir = fixtures().join("photos");
    for file in ["rgb_garden.png", "lossless_freshflower.webp"] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        for cut in (0..bytes.len()).step_by(bytes.len() / 23 + 1) {
            let _ = decode_image(&bytes[..cut]);
        }
    }
}

fn read_photo(file: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("photos").join(file)).unwrap()
}

/// Asserts `bytes` fail to decode as JPEG data (not as an unrecognised format).
fn assert_jpeg_decode_error(what: &str, bytes: &[u8]) -> String {
    match decode_image(bytes) {
        Err(PreprocessError::Decode { format, reason }) if format == "JPEG" => reason,
        other => panic!(
            "{what}: expected a JPEG decode error, got {:?}",
            other.map(|img| img.dimensions())
        ),
    }
}

/// Offset of the first `marker` (0xFF, `marker`) in `bytes`.
fn find_marker(bytes: &[u8], marker: u8) -> usize {
    bytes
        .windows(2)
        .position(|w| w == [0xFF, marker])
        .unwrap_or_else(|| panic!("no marker FF{marker:02X}"))
}

#[test]
fn truncated_jpegs_are_errors_at_every_cut() {
    // PIL raises "image file is truncated" for a JPEG cut anywhere, even just inside
    // its EOI marker; libjpeg would warn and paint the rest grey. We follow PIL.
    for file in [
        "landscape_dune.jpg",
        "landscape_storm_progressive.jpg",
        "landscape_meadow_444.jpg",
        "grey_wood.jpg",
        "exif_orientation6_twowings.jpg",
    ] {
        let bytes = read_photo(file);
        let n = bytes.len();
        let mut cuts: Vec<usize> = (3..n).step_by(n / 97 + 1).collect();
        cuts.extend([n - 1, n - 2, n - 3, n - 100]);
        for cut in cuts {
            assert_jpeg_decode_error(&format!("{file} cut at {cut}/{n}"), &bytes[..cut]);
        }
        let reason = assert_jpeg_decode_error(file, &bytes[..n / 2]);
        println!("{file} cut in half: {reason}");
        assert!(decode_image(&bytes).is_ok(), "{file} whole");
    }
}

#[test]
fn corrupt_huffman_table_is_an_error() {
    for file in ["landscape_dune.jpg", "landscape_storm_progressive.jpg"] {
        let bytes = read_photo(file);
        let dht = find_marker(&bytes, 0xC4);
        // DHT: FF C4, length (2), class/id (1), 16 code-length counts, symbols.
        // All counts 0xFF: far more codes than 16-bit code lengths allow.
        let mut counts = bytes.clone();
        counts[dht + 5..dht + 21].fill(0xFF);
        let reason = assert_jpeg_decode_error(&format!("{file} DHT counts"), &counts);
        println!("{file} bad DHT counts: {reason}");
        // Counts that over-subscribe the code space (3 codes of length 1).
        let mut oversubscribed = bytes.clone();
        oversubscribed[dht + 5] = 3;
        assert_jpeg_decode_error(&format!("{file} DHT oversubscribed"), &oversubscribed);
    }
}

#[test]
fn corrupt_entropy_data_is_an_error() {
    // A deliberate difference from PIL, which returns libjpeg's partly grey pixels
    // when scan data ends early: we refuse the photo rather than embed that.
    let bytes = read_photo("landscape_dune.jpg");
    let sos = find_marker(&bytes, 0xDA);
    let mid = (sos + bytes.len()) / 2;
    // Scan data cut short by EOI ("premature end of data segment").
    let mut early_eoi = bytes[..mid].to_vec();
    early_eoi.extend_from_slice(&[0xFF, 0xD9]);
    let reason = assert_jpeg_decode_error("early EOI", &early_eoi);
    println!("early EOI: {reason}");
    // A restart marker in a scan that declared no restart interval.
    let mut stray_rst = bytes[..mid].to_vec();
    stray_rst.extend_from_slice(&[0xFF, 0xD0]);
    stray_rst.extend_from_slice(&bytes[mid..]);
    let reason = assert_jpeg_decode_error("stray RST", &stray_rst);
    println!("stray RST: {reason}");

    // Bits that are no valid Huffman code are NOT always detectable: libjpeg-turbo's
    // fast Huffman path decodes them as 0 without a warning, and the damage shows up
    // only as "extraneous bytes" before EOI, which intact camera files produce too
    // (tolerated, as in PIL). Such a photo decodes to garbage, as in PIL.
    let mut ones = bytes.clone();
    for pair in ones[mid..mid + 64].chunks_exact_mut(2) {
        pair.copy_from_slice(&[0xFF, 0x00]);
    }
    println!(
        "runs of 1-bits mid-scan: {:?}",
        decode_image(&ones).map(|img| img.dimensions())
    );
}

#[test]
fn stray_bytes_around_markers_are_tolerated_like_pil() {
    // Stray bytes before a marker are common in camera files and harmless; PIL
    // decodes them (libjpeg warns "extraneous bytes"), and so do we. Bytes after
    // EOI are never read.
    let bytes = read_photo("landscape_dune.jpg");
    let want = decode_image(&bytes).unwrap();
    let mut stray = bytes[..bytes.len() - 2].to_vec();
    stray.extend_from_slice(&[0x12, 0x34, 0xFF, 0xD9]);
    assert_eq!(decode_image(&stray).unwrap(), want);
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"trailing garbage");
    assert_eq!(decode_image(&trailing).unwrap(), want);
}

#[test]
fn mutated_jpegs_never_panic() {
    // Seeded byte mutations all over the file, headers included: Ok or Err, never a
    // panic or an abort.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for file in ["landscape_dune.jpg", "landscape_storm_progressive.jpg"] {
        let bytes = read_photo(file);
        for _ in 0..150 {
            let mut mutated = bytes.clone();
            // Mostly the first 1 KiB (markers, tables), sometimes anywhere.
            let span = if next() % 2 == 0 { 1024 } else { bytes.len() };
            for _ in 0..1 + next() % 4 {
                let at = (next() % span as u64) as usize;
                mutated[at] = next() as u8;
            }
            let _ = decode_image(&mutated);
        }
    }
}

/// `bytes` with the JPEG frame header (SOF0/SOF2) declaring `width` × `height`.
fn with_jpeg_size(bytes: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let sof = bytes
        .windows(2)
        .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
        .expect("SOF marker");
    // FF Cn, length (2), precision (1), height (2), width (2).
    out[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    out[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    out
}

/// CRC-32 (IEEE), for patching PNG chunks.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `bytes` (a PNG) with its IHDR declaring `width` × `height`.
fn with_png_size(bytes: &[u8], width: u32, height: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    // Signature (8), IHDR length (4), "IHDR" at 12, data at 16..29, CRC at 29..33.
    assert_eq!(&out[12..16], b"IHDR");
    out[16..20].copy_from_slice(&width.to_be_bytes());
    out[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

#[test]
fn decompression_bombs_are_refused_from_the_header() {
    let started = std::time::Instant::now();
    // JPEG dimensions are 16-bit, so 65535 × 65535 (4.3 G pixels, 12.9 GB as RGB)
    // is the most a JPEG header can claim.
    for file in ["landscape_dune.jpg", "landscape_storm_progressive.jpg"] {
        // Refused by libjpeg itself (its JPEG_MAX_DIMENSION is 65500).
        let reason =
            assert_jpeg_decode_error(file, &with_jpeg_size(&read_photo(file), 65535, 65535));
        println!("{file} as 65535x65535: {reason}");
        let reason =
            assert_jpeg_decode_error(file, &with_jpeg_size(&read_photo(file), 65000, 65000));
        println!("{file} as 65000x65000: {reason}");
        assert!(reason.contains("more than the limit"), "{reason}");
    }
    let png = read_photo("rgb_garden.png");
    let bomb = with_png_size(&png, 100_000, 100_000);
    match decode_image(&bomb) {
        Err(PreprocessError::Decode { format, reason }) if format == "PNG" => {
            println!("PNG as 100000x100000: {reason}");
            assert!(reason.contains("more than the limit"), "{reason}");
        }
        other => panic!("PNG bomb: {other:?}"),
    }
    // Refused from the header: no time spent decoding (or allocating) 10^10 pixels.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The cap is width × height, inclusive, the same for every format.
    for file in [
        "landscape_dune.jpg",
        "rgb_garden.png",
        "lossless_freshflower.webp",
    ] {
        let bytes = read_photo(file);
        let img = decode_image(&bytes).unwrap();
        let pixels = u64::from(img.width()) * u64::from(img.height());
        assert!(pixels <= DEFAULT_MAX_PIXELS);
        assert_eq!(decode_image_with_limit(&bytes, pixels).unwrap(), img);
        let err = decode_image_with_limit(&bytes, pixels - 1).unwrap_err();
        assert!(
            err.to_string().contains("more than the limit"),
            "{file}: {err}"
        );
    }
}

/// Optional: `ONGI_DECODE_PARITY_DIR=DIR` compares `decode_image` with PIL on every
/// image `X` in DIR that has a `X.pil.rgb` next to it (u32 LE width, u32 LE height,
/// then the RGB bytes of `ImageOps.exif_transpose(Image.open(X)).convert("RGB")`).
/// Useful for photos too large or too many to commit. To make the dumps:
///
/// ```python
/// import glob, struct, sys; from PIL import Image, ImageOps
/// for p in glob.glob(sys.argv[1] + "/*.jpg"):
///     im = ImageOps.exif_transpose(Image.open(p)).convert("RGB")
///     open(p + ".pil.rgb", "wb").write(struct.pack("<II", *im.size) + im.tobytes())
/// ```
#[test]
fn decoded_pixels_match_pil_dumps() {
    let Some(dir) = std::env::var_os("ONGI_DECODE_PARITY_DIR") else {
        println!("ONGI_DECODE_PARITY_DIR not set; skipped");
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".pil.rgb"))
        .collect();
    files.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for path in files {
        let dump_path = PathBuf::from(format!("{}.pil.rgb", path.display()));
        let Ok(dump) = std::fs::read(&dump_path) else {
            continue;
        };
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (w, h) = (
            u32::from_le_bytes(dump[0..4].try_into().unwrap()),
            u32::from_le_bytes(dump[4..8].try_into().unwrap()),
        );
        let img = match decode_image(&std::fs::read(&path).unwrap()) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        checked += 1;
        if img.dimensions() != (w, h) {
            failures.push(format!("{name}: {:?}, PIL {w}x{h}", img.dimensions()));
            continue;
        }
        let differing = img
            .as_raw()
            .iter()
            .zip(&dump[8..])
            .filter(|(a, b)| a != b)
            .count();
        println!("{name:<40} {w:>5}x{h:<5} {differing} values differ");
        if differing != 0 {
            failures.push(format!("{name}: {differing} values differ"));
        }
    }
    println!("{checked} images checked against PIL");
    assert!(failures.is_empty(), "{failures:#?}");
}
