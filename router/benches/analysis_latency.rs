//! Latency of the analysis routes for a 1,000-photo album already in the store.
//!
//! `cargo bench -p ongi --bench analysis_latency` (release build). The model
//! is `ONGI_BENCH_MODEL` (default: the tiny fixture; use a ViT-B/32-shaped
//! directory for 512-d embeddings). The album's feature records are written
//! straight into the store — the routes only ever read records, so synthetic
//! records with the model's dimension and clusters of near-duplicates exercise
//! exactly the code a real album does — then the real server is started on it
//! and each route is timed over HTTP on loopback.

use ongi_test_support::ongi::OngiServer;
use ongi_test_support::{face_models, fixtures};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ongi_core::features::{FaceRecord, FeatureRecord};
use serde_json::json;

const PHOTOS: usize = 1000;
/// Distinct people across the album; each photo holds 0–3 of them.
const PERSONS: usize = 200;
const RUNS: usize = 30;

/// xorshift64*: deterministic and dependency-free; quality is irrelevant here.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn album(dim: usize) -> Vec<(String, FeatureRecord)> {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    // 128-d face descriptors: one random direction per person, each face of
    // theirs that direction plus noise (about 0.02 cosine distance apart).
    let persons: Vec<Vec<f32>> = (0..PERSONS)
        .map(|_| ongi_core::analysis::normalized(&(0..128).map(|_| rng.unit()).collect::<Vec<_>>()))
        .collect();
    let mut out = Vec::with_capacity(PHOTOS);
    let mut base = (0u64, vec![0.0f32; dim]);
    for i in 0..PHOTOS {
        // bursts of 5 near-identical shots, like a phone album
        if i % 5 == 0 {
            base = (rng.next(), (0..dim).map(|_| rng.unit()).collect());
        }
        let phash = base.0 ^ (1u64 << (rng.next() % 64)) ^ (1u64 << (rng.next() % 64));
        let embedding = base.1.iter().map(|x| x + 0.05 * rng.unit()).collect();
        let record = FeatureRecord {
            embedding,
            phash,
            laplacian_var: 20.0 + 400.0 * (rng.unit() + 1.0),
            width: 4032,
            height: 3024,
            faces: Some(
                (0..rng.next() % 4)
                    .map(|f| FaceRecord {
                        score: 0.9,
                        bbox: [100 + 400 * f as i32, 100, 400 + 400 * f as i32, 500],
                        landmarks: vec![[0.0, 0.0]; 68],
                        embedding: persons[(rng.next() % PERSONS as u64) as usize]
                            .iter()
                            .map(|x| x + 0.012 * rng.unit())
                            .collect(),
                    })
                    .collect(),
            ),
        };
        out.push((format!("album/photo_{i:04}.jpg"), record));
    }
    out
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let model =
        std::env::var_os("ONGI_BENCH_MODEL").map_or_else(fixtures::tiny_model, PathBuf::from);
    let dim = ongi_model::config::ClipConfig::from_model_dir(&model)
        .expect("model config")
        .projection_dim;
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("features.redb");
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    let records = album(dim);
    let keys: Vec<String> = records.iter().map(|(k, _)| k.clone()).collect();
    // An explicit identity: the records are synthetic, whatever the decode
    // mode and precision the server runs.
    let model_id = "analysis-latency-bench";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = ongi_core::store::open_store(store_path.to_str().unwrap(), None)
            .await
            .unwrap();
        store.put_many(model_id, &records).await.unwrap();
    });
    let faces = face_models::model_dir().map(|d| d.to_str().unwrap().to_string());
    let mut args = vec!["--model-id", model_id];
    if let Some(dir) = &faces {
        args.extend(["--face-model", dir.as_str()]);
    }
    let server = OngiServer::start_model_over(&model, &photos, &store_path, &args, None);
    runtime.block_on(async {
        let (status, body) = server.post("/api/albums/categories", &json!({ "images": keys })).await;
        assert_eq!(status, 201, "{body}");
        let categories = body["data"].clone();
        let mut routes = vec![
            ("duplicates", json!({ "images": keys })),
            ("quality", json!({ "images": keys })),
            ("categories", json!({ "images": keys, "concepts": ["travel", "family"] })),
            ("score", json!({ "categories": categories })),
        ];
        if faces.is_some() {
            routes.push(("people", json!({ "images": keys })));
        }
        let face_count: usize = records.iter().map(|(_, r)| r.faces.as_ref().map_or(0, Vec::len)).sum();
        println!("{face_count} faces of {PERSONS} people in the album");
        println!("model {} ({dim}-d), {PHOTOS} photos in the store, {RUNS} runs per route, release build", model.display());
        println!("{:<12} {:>9} {:>9} {:>9}", "route", "p50 ms", "p95 ms", "max ms");
        for (route, body) in routes {
            let path = format!("/api/albums/{route}");
            let (status, answer) = server.post(&path, &body).await; // warm-up
            assert_eq!(status, 201, "{route}: {answer}");
            if route == "people" {
                let persons = answer["data"].as_array().unwrap();
                println!("people: {} persons found", persons.len());
                assert!(persons.len() >= PERSONS / 2, "{} persons", persons.len());
            }
            let mut times = Vec::with_capacity(RUNS);
            for _ in 0..RUNS {
                let t = Instant::now();
                let (status, _) = server.post(&path, &body).await;
                times.push(t.elapsed());
                assert_eq!(status, 201);
            }
            times.sort();
            println!(
                "{route:<12} {:>9.2} {:>9.2} {:>9.2}",
                percentile(&times, 0.5),
                percentile(&times, 0.95),
                percentile(&times, 1.0)
            );
        }
        assert_eq!(server.metric("ongi_images_embedded_total").await, 0.0, "analysis must not embed");
    });
}
