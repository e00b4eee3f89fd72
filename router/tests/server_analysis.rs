//! The analysis routes of `ongi serve` on real photos: duplicates, quality,
//! categories, score, 428 for missing records, and answers from the cache
//! alone after the source files are gone.

mod support;

use std::path::Path;

use image::imageops::FilterType;
use serde_json::json;
use support::{fixtures, tiny_model, OngiServer};

/// Sharp, distinct originals (Laplacian variance well above 80 at 300 px).
const ORIGINALS: [&str; 5] = [
    "landscape_dune.jpg",
    "landscape_ladybird.jpg",
    "landscape_meadow_444.jpg",
    "rgb_garden.png",
    "landscape_storm_progressive.jpg",
];

fn save_jpeg(img: &image::DynamicImage, path: &Path, quality: u8) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc =
        image::codecs::jpeg::JpegEncoder::new_with_quality(std::io::BufWriter::new(file), quality);
    enc.encode_image(&img.to_rgb8()).unwrap();
}

/// The album: the originals, near-copies of the dune photo (re-encoded,
/// resized: duplicates; cropped by 2.5 % a side: 12 bits away under the
/// original's OpenCV hash, so not a duplicate there or here) and heavily
/// blurred copies of three originals.
fn album() -> (tempfile::TempDir, Vec<String>, Vec<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    for name in ORIGINALS {
        std::fs::copy(fixtures().join("photos").join(name), dir.path().join(name)).unwrap();
    }
    let dune = image::open(fixtures().join("photos/landscape_dune.jpg")).unwrap();
    save_jpeg(&dune, &dir.path().join("dune_reencoded.jpg"), 60);
    save_jpeg(
        &dune.resize(320, 320, FilterType::Triangle),
        &dir.path().join("dune_resized.jpg"),
        90,
    );
    let (w, h) = (dune.width(), dune.height());
    let crop = dune.crop_imm(w / 40, h / 40, w - w / 20, h - h / 20);
    crop.save(dir.path().join("dune_cropped.png")).unwrap();
    let copies = vec![
        "landscape_dune.jpg".to_string(),
        "dune_reencoded.jpg".into(),
        "dune_resized.jpg".into(),
    ];
    let mut blurred = Vec::new();
    for name in &ORIGINALS[1..4] {
        let img = image::open(fixtures().join("photos").join(name)).unwrap();
        let key = format!("blurred_{}.jpg", name.split('.').next().unwrap());
        save_jpeg(&img.blur(8.0), &dir.path().join(&key), 90);
        blurred.push(key);
    }
    let all: Vec<String> = ORIGINALS
        .iter()
        .map(|s| s.to_string())
        .chain(copies[1..].iter().cloned())
        .chain(["dune_cropped.png".to_string()])
        .chain(blurred.iter().cloned())
        .collect();
    (dir, all, copies, blurred)
}

fn start(photos: &Path, store: &Path, config: &Path) -> OngiServer {
    OngiServer::start(
        &[
            "--model",
            tiny_model().to_str().unwrap(),
            "--images",
            photos.to_str().unwrap(),
            "--store",
            store.join("features.redb").to_str().unwrap(),
            "--analysis-config",
            config.to_str().unwrap(),
        ],
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_routes_on_real_photos() {
    let (photos, all, copies, blurred) = album();
    let store = tempfile::tempdir().unwrap();
    // The tiny model's weights are random, so its CLIP-IQA verdicts mean
    // nothing: switch that test off to observe the Laplacian test alone.
    let config = store.path().join("analysis.json");
    std::fs::write(
        &config,
        r#"{"quality": {"laplacian_threshold": 80.0, "sharp_threshold": 0.0, "combined_threshold": 0.0}}"#,
    )
    .unwrap();
    let server = start(photos.path(), store.path(), &config);

    // 428 before anything is embedded, with exactly the missing keys
    let (status, body) = server
        .post(
            "/api/albums/quality",
            &json!({ "images": ["landscape_dune.jpg", "dune_resized.jpg"] }),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            428,
            json!({"message": "embedding_required", "data": ["landscape_dune.jpg", "dune_resized.jpg"]})
        )
    );

    // duplicates embeds on demand; near-copies group, distinct photos do not
    let dup_keys: Vec<String> = all
        .iter()
        .filter(|k| !blurred.contains(k))
        .cloned()
        .collect();
    let (status, body) = server
        .post("/api/albums/duplicates", &json!({ "images": dup_keys }))
        .await;
    assert_eq!(status, 201, "{body}");
    let groups: Vec<Vec<String>> = serde_json::from_value(body["data"].clone()).unwrap();
    assert_eq!(groups, vec![copies.clone()], "log:\n{}", server.log());

    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": all }))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!(null)));
    let embedded = server.metric("ongi_images_embedded_total").await;
    assert_eq!(embedded, all.len() as f64);

    // The source is gone: every analysis must come from the cache alone.
    for key in &all {
        std::fs::remove_file(photos.path().join(key)).unwrap();
    }

    // blurred copies are low quality, their sharp originals are not
    let (status, body) = server
        .post("/api/albums/quality", &json!({ "images": all }))
        .await;
    assert_eq!(status, 201, "{body}");
    let low: Vec<String> = serde_json::from_value(body["data"].clone()).unwrap();
    assert_eq!(low, blurred);

    let (status, body) = server
        .post("/api/albums/duplicates", &json!({ "images": dup_keys }))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!([copies])));

    // categories: every requested key exactly once
    let (status, body) = server
        .post(
            "/api/albums/categories",
            &json!({ "images": all, "concepts": ["travel", "가족"] }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let groups = body["data"].as_array().unwrap().clone();
    let mut seen: Vec<String> = groups
        .iter()
        .flat_map(|g| {
            g["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    let mut expected = all.clone();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(groups
        .iter()
        .all(|g| !g["category"].as_str().unwrap().is_empty()));

    // unknown concept: 400 naming it
    let (status, body) = server
        .post(
            "/api/albums/categories",
            &json!({ "images": all, "concepts": ["skydiving"] }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["data"].as_str().unwrap().contains("skydiving"),
        "{body}"
    );

    // score: one finite score per requested key, per category, in order
    let (status, body) = server
        .post("/api/albums/score", &json!({ "categories": groups }))
        .await;
    assert_eq!(status, 201, "{body}");
    let scored = body["data"].as_array().unwrap();
    assert_eq!(scored.len(), groups.len());
    for (category, request) in scored.iter().zip(&groups) {
        assert_eq!(category["category"], request["category"]);
        let keys: Vec<&str> = category["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["image"].as_str().unwrap())
            .collect();
        let requested: Vec<&str> = request["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, requested);
        for s in category["images"].as_array().unwrap() {
            assert!(s["score"].as_f64().unwrap().is_finite());
        }
    }

    // missing records: 428 with exactly the missing keys, on every cache-only route
    let with_missing = json!([
        "landscape_dune.jpg",
        "never-embedded.jpg",
        "dune_resized.jpg",
        "also-missing.png"
    ]);
    let missing = json!({"message": "embedding_required", "data": ["never-embedded.jpg", "also-missing.png"]});
    for (route, body) in [
        ("/api/albums/quality", json!({ "images": with_missing })),
        ("/api/albums/categories", json!({ "images": with_missing })),
        (
            "/api/albums/score",
            json!({ "categories": [{"category": "x", "images": with_missing}] }),
        ),
    ] {
        assert_eq!(
            server.post(route, &body).await,
            (428, missing.clone()),
            "{route}"
        );
    }

    // nothing was decoded again after the embedding step
    assert_eq!(server.metric("ongi_images_embedded_total").await, embedded);
}
