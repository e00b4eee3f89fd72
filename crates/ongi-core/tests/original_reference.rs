//! Differential tests against the original server's algorithms.
//!
//! `scripts/make_original_reference.py` runs the original's duplicate, blur,
//! category, quality and score algorithms with the libraries it uses (OpenCV's
//! `img_hash` and `imdecode`, scikit-learn's DBSCAN, numpy) and commits what
//! they answer under `tests/fixtures/original/`. Here ongi answers the same
//! questions on the same inputs and must agree exactly (scores within 1e-6).

use ongi_test_support::real_photos;

use std::path::Path;

use image::{GrayImage, Luma};
use ongi_core::analysis::categories::{categorize, CategoriesConfig};
use ongi_core::analysis::quality::{iqa_passes, positive_share, IqaScores, QualityConfig};
use ongi_core::analysis::score::ScoreHead;
use ongi_core::analysis::{duplicate_groups, normalized, DuplicatesConfig};
use ongi_core::features::{hamming, laplacian_variance, phash, pixel_features};
use ongi_core::preprocess::{
    decode_for_mode, decode_grey, feature_grey, DecodeMode, PreprocessConfig, DEFAULT_MAX_PIXELS,
};
use ongi_test_support::fixtures::dir as fixtures;
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = fixtures().join("original").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// OpenCV's 8 hash bytes, as the reference writes them.
fn hash_hex(h: u64) -> String {
    h.to_le_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks one photo's grey decode, hash and blur measure against the reference.
fn check_pixels(label: &str, grey: &GrayImage, want: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let size = [
        want["width"].as_u64().unwrap(),
        want["height"].as_u64().unwrap(),
    ];
    if [u64::from(grey.width()), u64::from(grey.height())] != size {
        errors.push(format!(
            "{label}: size {}x{} vs {size:?}",
            grey.width(),
            grey.height()
        ));
        return errors;
    }
    let got = hash_hex(phash(grey));
    let expected = want["phash"].as_str().unwrap();
    if got != expected {
        let bits = hamming(
            u64::from_str_radix(&got, 16).unwrap(),
            u64::from_str_radix(expected, 16).unwrap(),
        );
        errors.push(format!("{label}: phash {got} vs {expected} ({bits} bits)"));
    }
    let var = f64::from(laplacian_variance(grey));
    let want_var = want["laplacian_var"].as_f64().unwrap();
    if (var - want_var).abs() > 1e-6 * want_var.max(1.0) {
        errors.push(format!("{label}: laplacian {var} vs {want_var}"));
    }
    let blurry =
        !ongi_core::analysis::quality::laplacian_passes(var as f32, &QualityConfig::default());
    if blurry != want["blurry"].as_bool().unwrap() {
        errors.push(format!("{label}: blurry {blurry} vs {}", want["blurry"]));
    }
    errors
}

/// The grey pixels the server computes the features on in `mode`.
fn server_grey(bytes: &[u8], mode: DecodeMode) -> GrayImage {
    let cfg = PreprocessConfig::default();
    let min = mode.min_decode_size(&cfg);
    let mut decoded = decode_for_mode(bytes, DEFAULT_MAX_PIXELS, min, mode).unwrap();
    feature_grey(bytes, DEFAULT_MAX_PIXELS, &mut decoded).unwrap()
}

fn blurry(var: f32) -> bool {
    !ongi_core::analysis::quality::laplacian_passes(var, &QualityConfig::default())
}

fn named_duplicate_groups(hashes: &[u64], names: &[String]) -> Vec<Vec<String>> {
    duplicate_groups(hashes, &[], &DuplicatesConfig::default())
        .into_iter()
        .map(|g| g.into_iter().map(|i| names[i].clone()).collect())
        .collect()
}

/// Every photo of a reference set: OpenCV's grey, hash and blur measure, and
/// the exact and fast pipelines', must be the original's; then the duplicate
/// groups. The reduced pipeline computes the features on its reduced decode's
/// luma: its duplicate groups and blur verdicts must still be the original's,
/// and how far its hashes and blur measures moved is printed.
fn check_photo_set(base: &Path, set: &Value) -> usize {
    let photos = set["photos"].as_array().unwrap();
    let mut errors = Vec::new();
    let (mut hashes, mut fast_hashes, mut names) = (Vec::new(), Vec::new(), Vec::new());
    let (mut reduced, mut bits_moved, mut worst_blur_change) = (0, 0, 0.0f64);
    for want in photos {
        let file = want["file"].as_str().unwrap();
        let bytes = std::fs::read(base.join(file)).unwrap();
        let alone = decode_grey(&bytes, DEFAULT_MAX_PIXELS, None).unwrap();
        errors.extend(check_pixels(file, &alone, want));
        for mode in [DecodeMode::Exact, DecodeMode::Fast] {
            let grey = server_grey(&bytes, mode);
            assert!(grey == alone, "{file}: the {mode} pipeline's grey differs");
        }
        let fast = server_grey(&bytes, DecodeMode::Reduced);
        let (fast_hash, fast_var) = (phash(&fast), laplacian_variance(&fast));
        if fast.dimensions() != alone.dimensions() {
            reduced += 1;
        }
        bits_moved += hamming(fast_hash, phash(&alone));
        let var = f64::from(laplacian_variance(&alone));
        worst_blur_change = worst_blur_change.max((f64::from(fast_var) - var).abs() / var.max(1.0));
        if blurry(fast_var) != want["blurry"].as_bool().unwrap() {
            errors.push(format!(
                "{file}: reduced pipeline's blur verdict flips (variance {fast_var} vs {var})"
            ));
        }
        hashes.push(phash(&alone));
        fast_hashes.push(fast_hash);
        names.push(file.to_string());
    }
    assert!(
        errors.is_empty(),
        "{} of {} photos differ:\n{}",
        errors.len(),
        photos.len(),
        errors.join("\n")
    );
    let want: Vec<Vec<String>> = serde_json::from_value(set["duplicates"].clone()).unwrap();
    assert_eq!(
        named_duplicate_groups(&hashes, &names),
        want,
        "duplicate groups"
    );
    assert_eq!(
        named_duplicate_groups(&fast_hashes, &names),
        want,
        "the reduced pipeline's duplicate groups"
    );
    let pairs: usize = want.iter().map(|g| g.len() * (g.len() - 1) / 2).sum();
    println!(
        "{} photos: hashes, blur verdicts and {} duplicate groups ({pairs} pairs, Jaccard 1.0) as the original",
        photos.len(),
        want.len()
    );
    println!(
        "reduced pipeline: {reduced} photos decoded reduced; the same groups and blur verdicts; \
         {bits_moved} hash bits moved in all, blur variance moved by at most {:.1} %",
        100.0 * worst_blur_change
    );
    photos.len()
}

#[test]
fn fixture_photos_and_edited_copies_match_the_original() {
    let pixels = load("pixels.json");
    let n = check_photo_set(&fixtures(), &pixels["fixtures"]);
    assert!(n >= 40, "only {n} photos in the reference");
}

#[test]
fn large_real_photos_match_the_original() {
    let Some(dir) = real_photos::photo_dir() else {
        return;
    };
    let pixels = load("pixels.json");
    let present = real_photos::jpegs(&dir);
    for p in pixels["mate"]["photos"].as_array().unwrap() {
        let file = dir.join(p["file"].as_str().unwrap());
        assert!(
            present.contains(&file),
            "{} is not in {}",
            file.display(),
            dir.display()
        );
    }
    let n = check_photo_set(&dir, &pixels["mate"]);
    assert!(n >= 16, "only {n} real photos in the reference");
}

/// The pattern the reference builds with numpy.
fn synth(w: u32, h: u32) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        Luma([(((x * x + 3 * y) ^ (5 * x + y * y)) % 256) as u8])
    })
}

#[test]
fn synthetic_patterns_match_the_original() {
    let pixels = load("pixels.json");
    let cases = pixels["synthetic"].as_array().unwrap();
    let errors: Vec<String> = cases
        .iter()
        .flat_map(|c| {
            let (w, h) = (
                c["size"][0].as_u64().unwrap() as u32,
                c["size"][1].as_u64().unwrap() as u32,
            );
            check_pixels(&format!("{w}x{h}"), &synth(w, h), c)
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert!(cases.len() >= 10);
    let f = pixel_features(&synth(640, 480));
    assert_eq!(
        (f.width, f.height, f.phash),
        (640, 480, phash(&synth(640, 480)))
    );
}

fn matrix(v: &Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn categories_match_the_original() {
    let album = load("album.json");
    let tags: Vec<String> = serde_json::from_value(album["tags"].clone()).unwrap();
    let sims = matrix(&album["sims"]);
    // ongi's similarities (normalised image · mean of normalised prompts) equal
    // the original's mean of per-prompt cosines to float rounding.
    let prompts: Vec<Vec<Vec<f32>>> = serde_json::from_value(album["tag_prompts"].clone()).unwrap();
    let embeddings = matrix(&album["embeddings"]);
    for (i, e) in embeddings.iter().enumerate() {
        let e = normalized(e);
        for (t, tp) in prompts.iter().enumerate() {
            let mut mean = vec![0.0f32; e.len()];
            for p in tp {
                for (m, x) in mean.iter_mut().zip(p) {
                    *m += x / tp.len() as f32;
                }
            }
            let s = dot(&e, &mean);
            assert!(
                (s - sims[i][t]).abs() < 1e-6,
                "sim {i},{t}: {s} vs {}",
                sims[i][t]
            );
        }
    }
    let want = named_groups(&album["categories"]);
    assert_eq!(
        categories_of(&sims, &tags, &[], &CategoriesConfig::default()),
        want
    );
    assert!(want.len() >= 3 && embeddings.len() >= 50);
}

/// The original's optional steps, which its pipeline leaves off: the 0.21
/// threshold of its functions' defaults, tag boosts and parent refinement.
#[test]
fn categories_with_boosts_and_parents_match_the_original() {
    let album = load("album.json");
    let tags: Vec<String> = serde_json::from_value(album["tags"].clone()).unwrap();
    let sims = matrix(&album["sims"]);
    let options = &album["category_options"];
    let cfg = CategoriesConfig {
        min_similarity: options["min_similarity"].as_f64().unwrap(),
        tag_boosts: serde_json::from_value(options["tag_boosts"].clone()).unwrap(),
        parents: serde_json::from_value(options["parents"].clone()).unwrap(),
        ..CategoriesConfig::default()
    };
    let concepts: Vec<String> = serde_json::from_value(options["concepts"].clone()).unwrap();
    let want = named_groups(&album["categories_with_options"]);
    assert_eq!(categories_of(&sims, &tags, &concepts, &cfg), want);
    assert!(want.len() >= 3);
    // Without the boosts and parents the answer differs: they were exercised.
    let plain = CategoriesConfig {
        min_similarity: cfg.min_similarity,
        ..CategoriesConfig::default()
    };
    assert_ne!(categories_of(&sims, &tags, &concepts, &plain), want);
}

fn categories_of(
    sims: &[Vec<f32>],
    tags: &[String],
    concepts: &[String],
    cfg: &CategoriesConfig,
) -> Vec<(String, Vec<usize>)> {
    categorize(sims, tags, concepts, cfg)
        .into_iter()
        .map(|g| {
            let name = g
                .tag
                .map_or_else(|| cfg.other_name.clone(), |t| tags[t].clone());
            (name, g.images)
        })
        .collect()
}

fn named_groups(v: &Value) -> Vec<(String, Vec<usize>)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let images = serde_json::from_value(c["images"].clone()).unwrap();
            (c["category"].as_str().unwrap().to_string(), images)
        })
        .collect()
}

#[test]
fn quality_matches_the_original() {
    let album = load("album.json");
    let embeddings = matrix(&album["embeddings"]);
    let fields: Vec<String> = serde_json::from_value(album["quality_fields"].clone()).unwrap();
    let text: Vec<Vec<Vec<f32>>> = serde_json::from_value(album["quality_text"].clone()).unwrap();
    let want_low: Vec<usize> = serde_json::from_value(album["low_quality"].clone()).unwrap();
    let mut low = Vec::new();
    for (i, e) in embeddings.iter().enumerate() {
        let e = normalized(e);
        let share = |field: &str| {
            let f = fields.iter().position(|x| x == field).unwrap();
            let got = positive_share(dot(&e, &text[f][0]), dot(&e, &text[f][1]));
            let want = album["quality_scores"][field][i].as_f64().unwrap() as f32;
            assert!((got - want).abs() < 1e-6, "{field} {i}: {got} vs {want}");
            got
        };
        let scores = IqaScores {
            good: share("good"),
            sharp: share("sharp"),
            clean: 0.5,
            contrast: 0.5,
        };
        if !iqa_passes(&scores, &QualityConfig::default()) {
            low.push(i);
        }
    }
    assert_eq!(low, want_low);
    assert!(!want_low.is_empty() && want_low.len() < embeddings.len());
}

#[test]
fn scores_match_the_original() {
    let album = load("album.json");
    let weight: Vec<f32> = serde_json::from_value(album["score_weight"].clone()).unwrap();
    let bias = album["score_bias"].as_f64().unwrap() as f32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("head.safetensors");
    let w_bytes: Vec<u8> = weight.iter().flat_map(|v| v.to_le_bytes()).collect();
    let b_bytes = bias.to_le_bytes().to_vec();
    let tensors = [
        (
            "fc.weight",
            safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![1, weight.len()],
                &w_bytes,
            )
            .unwrap(),
        ),
        (
            "fc.bias",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &b_bytes)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(tensors, None, &path).unwrap();
    let head = ScoreHead::from_file(&path).unwrap();
    let embeddings = matrix(&album["embeddings"]);
    let want: Vec<f32> = serde_json::from_value(album["scores"].clone()).unwrap();
    for (i, e) in embeddings.iter().enumerate() {
        let got = head.score(&normalized(e));
        assert!(
            (got - want[i]).abs() < 1e-6,
            "score {i}: {got} vs {}",
            want[i]
        );
    }
    assert_eq!(want.len(), embeddings.len());
}
