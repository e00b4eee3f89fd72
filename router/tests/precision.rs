//! bf16 and int8 against f32: embeddings of real photos per image, and the
//! album answers of the server at each precision.
//!
//! The low-precision kernels run on every CPU (the portable and AVX2 ones
//! where the CPU lacks AMX, AVX512-BF16 or VNNI), so these bars are checked
//! on every machine; which kernel ran is printed.

use ongi_test_support::real_photos;
mod support;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use ongi_core::preprocess::{load_and_preprocess, DecodeMode, PreprocessConfig};
use ongi_model::{ClipModel, Precision};
use serde_json::json;
use support::{cosine, fixtures, photo_names, tiny_model, OngiServer};

const MIN_BF16_COSINE: f64 = 0.9995;
const MIN_INT8_COSINE: f64 = 0.995;

/// The fixture photos and, where installed, the real photos.
fn photos() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = photo_names()
        .iter()
        .map(|n| fixtures().join("photos").join(n))
        .collect();
    if let Some(dir) = real_photos::photo_dir() {
        out.extend(real_photos::jpegs(&dir));
    }
    out
}

/// Per-image worst cosine of bf16 and int8 to f32 for `model_dir`, over
/// `photos` in batches of 8 (the server's path: fast decode, fused forward).
fn check(name: &str, model_dir: &Path, photos: &[PathBuf]) {
    let config = PreprocessConfig::from_model_dir(model_dir).unwrap();
    let load = |p| ClipModel::load(model_dir, &Device::Cpu, p).unwrap();
    let models = [
        load(Precision::F32),
        load(Precision::Bf16),
        load(Precision::Int8),
    ];
    let size = models[0].image_size();
    let mut worst = [f64::INFINITY; 2];
    let mut checked = 0;
    for chunk in photos.chunks(8) {
        let mut flat = Vec::new();
        for path in chunk {
            let bytes = std::fs::read(path).unwrap();
            flat.extend(load_and_preprocess(&bytes, &config, DecodeMode::Fast).unwrap());
        }
        let batch = Tensor::from_vec(flat, (chunk.len(), 3, size, size), &Device::Cpu).unwrap();
        let embed = |m: &ClipModel| m.image_features(&batch).unwrap().to_vec2::<f32>().unwrap();
        let f32s = embed(&models[0]);
        for (i, (model, bar)) in [(&models[1], MIN_BF16_COSINE), (&models[2], MIN_INT8_COSINE)]
            .into_iter()
            .enumerate()
        {
            for (path, (got, want)) in chunk.iter().zip(embed(model).iter().zip(&f32s)) {
                let c = cosine(got, want);
                assert!(
                    c >= bar,
                    "{name} {}: {} cosine {c:.6} < {bar}",
                    model.precision(),
                    path.display()
                );
                worst[i] = worst[i].min(c);
            }
        }
        checked += chunk.len();
    }
    println!(
        "{name}: {checked} photos; worst cosine to f32: bf16 {:.6} ({}), int8 {:.6} ({})",
        worst[0],
        Precision::Bf16.cpu_kernel(),
        worst[1],
        Precision::Int8.cpu_kernel()
    );
    assert!(checked > 0, "no photo was checked");
}

#[test]
fn tiny_clip_low_precision_embeddings_stay_close_to_f32() {
    check("tiny-clip", &tiny_model(), &photos());
}

/// The full ViT-B/32 shape (random weights) where `ONGI_PARITY_DIR` holds it.
#[test]
fn vit_b32_low_precision_embeddings_stay_close_to_f32() {
    let Some(dir) = std::env::var_os("ONGI_PARITY_DIR") else {
        println!("SKIPPED vit-b32-random: set ONGI_PARITY_DIR (make_fixtures.py --full writes it)");
        return;
    };
    let model = PathBuf::from(dir).join("vit-b32-random");
    check("vit-b32-random", &model, &photos());
}

/// The four analysis answers of a server at `dtype` over `keys`.
async fn answers(photos: &Path, keys: &[String], dtype: &str) -> serde_json::Value {
    let store = tempfile::tempdir().unwrap();
    let store_path = store.path().join("features.redb");
    let server = OngiServer::start_over(photos, &store_path, &["--dtype", dtype], None);
    let (status, health) = server.get("/health/info").await;
    assert_eq!(status, 200);
    assert!(
        health.contains(&format!("\"precision\":\"{dtype}")),
        "{health}"
    );
    let mut out = serde_json::Map::new();
    for (route, body) in [
        ("embedding", json!({ "images": keys })),
        ("duplicates", json!({ "images": keys })),
        ("quality", json!({ "images": keys })),
        (
            "categories",
            json!({ "images": keys, "concepts": ["travel", "가족"] }),
        ),
    ] {
        let (status, body) = server.post(&format!("/api/albums/{route}"), &body).await;
        assert_eq!(status, 201, "{dtype} {route}: {body}");
        out.insert(route.to_string(), body);
    }
    let categories = out["categories"]["data"].clone();
    let (status, body) = server
        .post("/api/albums/score", &json!({ "categories": categories }))
        .await;
    assert_eq!(status, 201, "{dtype} score: {body}");
    // Scores are floats of the embeddings: the ranking is the answer.
    let ranked: Vec<Vec<String>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut s: Vec<(f64, String)> = c["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| {
                    (
                        i["score"].as_f64().unwrap(),
                        i["image"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            s.sort_by(|a, b| b.0.total_cmp(&a.0));
            s.into_iter().map(|(_, k)| k).collect()
        })
        .collect();
    out.insert("score ranking".into(), json!(ranked));
    serde_json::Value::Object(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn album_answers_are_the_same_at_f32_and_bf16() {
    // The fixture photos plus a re-encoded copy, so duplicates has a group.
    let dir = support::photo_dir();
    std::fs::remove_file(dir.path().join("corrupt.jpg")).unwrap();
    let dune = image::open(dir.path().join("landscape_dune.jpg")).unwrap();
    dune.to_rgb8()
        .save_with_format(dir.path().join("dune_copy.png"), image::ImageFormat::Png)
        .unwrap();
    let mut keys = photo_names();
    keys.push("dune_copy.png".into());
    let f32s = answers(dir.path(), &keys, "f32").await;
    let bf16 = answers(dir.path(), &keys, "bf16").await;
    for route in ["duplicates", "quality", "categories", "score ranking"] {
        assert_eq!(
            f32s[route], bf16[route],
            "{route} differs between f32 and bf16"
        );
    }
    let groups = f32s["duplicates"]["data"].as_array().unwrap();
    assert!(!groups.is_empty(), "the album has a duplicate group");
    println!(
        "{} photos: duplicates, quality, categories and score ranking identical at f32 and bf16 ({})",
        keys.len(),
        Precision::Bf16.cpu_kernel()
    );
}
