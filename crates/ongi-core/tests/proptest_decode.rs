//! Property test (fuzzing) of the decode + preprocess path: mutated fixture photos
//! and malformed-corpus files (bit flips, truncations, insertions, overwrites, with
//! extra weight on the headers) and arbitrary bytes, with and without a valid
//! magic number, never panic; whatever decodes preprocesses to a finite tensor of
//! the configured shape.
//!
//! CI runs a few cases per property (64 by default). Run longer by hand:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release -p ongi-core --test proptest_decode
//! ```

use std::path::PathBuf;
use std::sync::OnceLock;

use ongi_core::features::pixel_features;
use ongi_core::preprocess::{
    decode_for_mode, decode_grey, decode_image_with_limit, preprocess, DecodeMode, PreprocessConfig,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

/// Pixel cap while fuzzing: keeps each case fast (a mutated header can claim a
/// large image); the default cap is exercised by the malformed corpus.
const FUZZ_MAX_PIXELS: u64 = 4_000_000;

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        // Shrinking a decoder crash is useful; do not write regression files into
        // the source tree from CI (failures print the minimal input).
        failure_persistence: None,
        ..Config::default()
    }
}

/// Fixture photos plus the decodable and header-level corpus files (the seeds).
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let mut seeds = Vec::new();
        for dir in ["photos", "malformed"] {
            let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e != "json"))
                // the zlib bombs decode to tens of megapixels: slow seeds, covered by the corpus test
                .filter(|p| !p.to_string_lossy().contains("bomb_png_zlib"))
                .collect();
            paths.sort();
            seeds.extend(paths.into_iter().map(|p| std::fs::read(p).unwrap()));
        }
        assert!(seeds.len() > 50);
        seeds
    })
}

/// One edit of the input bytes; positions are fractions of the length, so they
/// stay valid whatever the seed.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit; `header` puts it in the first 1 KiB, where structure lives.
    FlipBit { pos: f64, bit: u8, header: bool },
    /// Cut the input at a fraction of its length.
    Truncate { at: f64 },
    /// Insert bytes at a position.
    Insert { pos: f64, bytes: Vec<u8> },
    /// Overwrite bytes at a position (markers and lengths: 0xFF, 0x00, ...).
    Overwrite {
        pos: f64,
        bytes: Vec<u8>,
        header: bool,
    },
    /// Duplicate a slice of the input at another position.
    Duplicate { from: f64, len: usize, to: f64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting = prop_oneof![
        Just(0x00u8),
        Just(0xFF),
        Just(0x7F),
        Just(0x80),
        Just(0xD8),
        Just(0xD9),
        Just(0xDA),
        Just(0xC4),
        any::<u8>()
    ];
    prop_oneof![
        4 => (0.0..1.0f64, 0..8u8, any::<bool>())
            .prop_map(|(pos, bit, header)| Mutation::FlipBit { pos, bit, header }),
        1 => (0.0..1.0f64).prop_map(|at| Mutation::Truncate { at }),
        1 => (0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(pos, bytes)| Mutation::Insert { pos, bytes }),
        2 => (0.0..1.0f64, prop::collection::vec(interesting, 1..8), any::<bool>())
            .prop_map(|(pos, bytes, header)| Mutation::Overwrite { pos, bytes, header }),
        1 => (0.0..1.0f64, 1..256usize, 0.0..1.0f64)
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
    ]
}

fn index(pos: f64, len: usize, header: bool) -> usize {
    let span = if header { len.min(1024) } else { len };
    ((pos * span as f64) as usize).min(len.saturating_sub(1))
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    if data.is_empty() {
        return;
    }
    match m {
        Mutation::FlipBit { pos, bit, header } => {
            let i = index(*pos, data.len(), *header);
            data[i] ^= 1 << bit;
        }
        Mutation::Truncate { at } => data.truncate(index(*at, data.len(), false)),
        Mutation::Insert { pos, bytes } => {
            let i = index(*pos, data.len(), false);
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Overwrite { pos, bytes, header } => {
            let i = index(*pos, data.len(), *header);
            for (d, b) in data[i..].iter_mut().zip(bytes) {
                *d = *b;
            }
        }
        Mutation::Duplicate { from, len, to } => {
            let i = index(*from, data.len(), false);
            let slice = data[i..(i + len).min(data.len())].to_vec();
            let j = index(*to, data.len(), false);
            data.splice(j..j, slice);
        }
    }
}

/// Decode (+ preprocess when it decodes) must not panic and must give a sane
/// tensor; the greyscale decode of the pixel features must not panic either,
/// and gives finite features of the same size when it decodes.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(img) = decode_image_with_limit(bytes, FUZZ_MAX_PIXELS) {
        prop_assert!(img.width() > 0 && img.height() > 0);
        prop_assert!(u64::from(img.width()) * u64::from(img.height()) <= FUZZ_MAX_PIXELS);
        let cfg = PreprocessConfig::default();
        let tensor = preprocess(&img, &cfg);
        prop_assert_eq!(tensor.len(), cfg.output_len());
        prop_assert!(tensor.iter().all(|v| v.is_finite()));
    }
    if let Ok(grey) = decode_grey(bytes, FUZZ_MAX_PIXELS, None) {
        let f = pixel_features(&grey);
        prop_assert!(f.laplacian_var.is_finite() && f.laplacian_var >= 0.0);
        prop_assert!(u64::from(f.width) * u64::from(f.height) <= FUZZ_MAX_PIXELS);
    }
    // The serving fast decode, bound low enough that any JPEG of a few blocks
    // takes the one-pass raw-planes path.
    if let Ok(d) = decode_for_mode(bytes, FUZZ_MAX_PIXELS, Some(4.into()), DecodeMode::Fast) {
        prop_assert!(d.image.width() > 0 && d.image.height() > 0);
        if let Some(luma) = &d.luma {
            prop_assert_eq!(luma.dimensions(), (d.width, d.height));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_images_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let seeds = seeds();
        let mut data = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            apply(&mut data, m);
        }
        check(&data)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        magic in prop_oneof![
            Just(&b""[..]),
            Just(&b"\xff\xd8\xff"[..]),
            Just(&b"\xff\xd8\xff\xe1"[..]),
            Just(&b"\x89PNG\r\n\x1a\n"[..]),
            Just(&b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR"[..]),
            Just(&b"RIFF\x00\x01\x00\x00WEBPVP8 "[..]),
            Just(&b"RIFF\x00\x01\x00\x00WEBPVP8L"[..]),
            Just(&b"RIFF\x00\x01\x00\x00WEBPVP8X"[..]),
        ],
        body in prop::collection::vec(any::<u8>(), 0..4096),
    ) {
        let mut data = magic.to_vec();
        data.extend_from_slice(&body);
        check(&data)?;
    }
}
