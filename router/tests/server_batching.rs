//! Cross-request batching under concurrency: simultaneous requests share
//! inference batches, and every request still gets exactly its own embeddings.

use ongi_test_support::redis as redis_support;
mod support;

use serde_json::json;
use support::{cosine, photo_dir, photo_names, tiny_model, OngiServer};

const REQUESTS: usize = 10;
const PER_REQUEST: usize = 3;

/// Sample value of a histogram bucket line, e.g. `name_bucket{le="1"}`.
fn bucket(text: &str, name: &str, le: &str) -> f64 {
    support::metric_value(text, &format!("{name}_bucket{{le=\"{le}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simultaneous_requests_share_batches_and_get_their_own_embeddings() {
    let redis = redis_support::RedisServer::start();
    let photos = photo_dir();
    let names = photo_names();
    // Each request embeds its own keys (copies of different photos), so a
    // batch above PER_REQUEST images can only have come from several requests.
    let mut requests: Vec<Vec<String>> = Vec::new();
    for r in 0..REQUESTS {
        std::fs::create_dir(photos.path().join(format!("req{r}"))).unwrap();
        let keys = (0..PER_REQUEST)
            .map(|i| {
                let name = &names[(r * PER_REQUEST + i) % names.len()];
                let key = format!("req{r}/{name}");
                std::fs::copy(photos.path().join(name), photos.path().join(&key)).unwrap();
                key
            })
            .collect();
        requests.push(keys);
    }
    let model = tiny_model();
    let server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            &redis.url(),
            "--batch-size",
            "16",
            "--max-batch-wait-ms",
            "200",
            "--decode-workers",
            "2",
        ],
        &[],
    );
    let server = std::sync::Arc::new(server);
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .map(|keys| {
            let server = server.clone();
            tokio::spawn(async move {
                server
                    .post("/api/albums/embedding", &json!({ "images": keys }))
                    .await
            })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            (status, body),
            (201, json!({"message": "success", "data": null}))
        );
    }

    let (_, metrics) = server.get("/metrics").await;
    let batches = support::metric_value(&metrics, "ongi_batch_size_count");
    let total = REQUESTS * PER_REQUEST;
    assert_eq!(
        support::metric_value(&metrics, "ongi_batch_size_sum"),
        total as f64
    );
    // Some batch was larger than one request's share...
    let at_most_share = bucket(&metrics, "ongi_batch_size", "4");
    assert!(
        at_most_share < batches,
        "no batch above {PER_REQUEST} images:\n{metrics}"
    );
    // ...and the worker saw batches mixing several requests.
    let single_request = bucket(&metrics, "ongi_batch_requests", "1");
    let counted = support::metric_value(&metrics, "ongi_batch_requests_count");
    assert!(
        single_request < counted,
        "no batch mixed requests:\n{metrics}"
    );
    println!("{total} images in {batches} batches; {single_request} of {counted} batches held one request");

    // Every stored embedding is the one `ongi embed` computes for that file.
    let keys: Vec<String> = requests.concat();
    let paths: Vec<_> = keys.iter().map(|k| photos.path().join(k)).collect();
    let expected = support::cli_embeddings(&paths);
    let store = ongi_core::store::open_store(&redis.url(), None)
        .await
        .unwrap();
    // The server runs the default decode mode and precision (`auto`: bf16
    // on CPUs with native bf16), whose identity it stores under.
    let model_id = ongi_core::model_id::with_precision(
        &ongi_core::model_id::with_decode_mode(
            &ongi_core::model_id::model_identity(&model).unwrap(),
            ongi_core::preprocess::DecodeMode::default(),
        ),
        ongi_model::Precision::auto(&candle_core::Device::Cpu).0,
    );
    let records = store.get_many(&model_id, &keys).await.unwrap();
    for (key, record) in keys.iter().zip(records) {
        let record = record.unwrap_or_else(|| panic!("no record for {key}"));
        let cli = &expected[photos.path().join(key).to_str().unwrap()];
        let cos = cosine(&record.embedding, cli);
        assert!(cos > 0.999_999, "{key}: cosine {cos} to `ongi embed`");
        assert!(record.width > 0 && record.height > 0);
    }
}
