//! The embedding side of `ongi serve`, end to end: the real binary, the tiny
//! fixture model, real photos, and each store and source backend for real
//! (redb file, redis-server, moto's S3 server).

use ongi_test_support::redis as redis_support;
use ongi_test_support::s3;
mod support;

use serde_json::json;
use support::{photo_dir, photo_names, tiny_model, OngiServer};

/// The original client's embedding step, then the cache and partial-failure checks.
async fn replay_client_flow(server: &OngiServer, good: &[String]) {
    // health → "ok"
    let (status, body) = server.get("/health/info").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");

    // embedding → 201 success, data null
    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": good }))
        .await;
    assert_eq!(
        (status, &body),
        (201, &json!({"message": "success", "data": null})),
        "log:\n{}",
        server.log()
    );
    let embedded = server.metric("ongi_images_embedded_total").await;
    let hits = server.metric("ongi_cache_hits_total").await;
    assert_eq!(embedded, good.len() as f64);

    // the same keys again: all from the cache, nothing recomputed
    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": good }))
        .await;
    assert_eq!(
        (status, &body),
        (201, &json!({"message": "success", "data": null}))
    );
    assert_eq!(server.metric("ongi_images_embedded_total").await, embedded);
    assert_eq!(
        server.metric("ongi_cache_hits_total").await,
        hits + good.len() as f64
    );

    // good keys mixed with a missing key, a corrupt file and a hostile key:
    // 201 with exactly the bad keys in data
    let mut mixed: Vec<String> = good.iter().take(3).cloned().collect();
    mixed.insert(1, "missing.jpg".into());
    mixed.push("corrupt.jpg".into());
    mixed.push("../outside.jpg".into());
    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": mixed }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "success");
    assert_eq!(
        body["data"],
        json!(["missing.jpg", "corrupt.jpg", "../outside.jpg"])
    );

    // malformed bodies and empty lists: 400 invalid_request
    for bad in [
        &b"{\"images\": []}"[..],
        b"not json",
        b"{\"images\": \"a.jpg\"}",
        b"{}",
    ] {
        let (status, text) = server.post_raw("/api/albums/embedding", bad).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(bad));
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["message"], "invalid_request");
    }
}

fn store_path(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("features.redb")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_source_embedded_store() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            &store_path(&store),
        ],
        &[],
    );
    // Before any request: every metric has its help line, and the counters
    // already read zero.
    let (status, text) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "ongi_images_embedded_total",
        "ongi_cache_hits_total",
        "ongi_cache_misses_total",
        "ongi_images_deadline_exceeded_total",
        "ongi_unauthorized_requests_total",
        "ongi_accept_errors_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
        assert!(
            text.lines().any(|l| l == format!("{name} 0")),
            "{name}:\n{text}"
        );
    }
    replay_client_flow(&server, &photo_names()).await;
    // Histograms show (with their help) from their first sample on.
    let (_, text) = server.get("/metrics").await;
    for name in [
        "ongi_batch_seconds",
        "ongi_batch_size",
        "ongi_stage_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name}:\n{text}");
    }
    let (status, body) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(body.contains("/api/albums/embedding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_a_restart() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--images",
        photos.path().to_str().unwrap(),
        "--store",
        &store_path(&store),
    ];
    let names = photo_names();
    let mut first = OngiServer::start(&args, &[]);
    let (status, _) = first
        .post("/api/albums/embedding", &json!({ "images": names }))
        .await;
    assert_eq!(status, 201);
    assert!(first.stop().success(), "log:\n{}", first.log());

    let second = OngiServer::start(&args, &[]);
    let (status, body) = second
        .post("/api/albums/embedding", &json!({ "images": names }))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!(null)));
    assert_eq!(second.metric("ongi_images_embedded_total").await, 0.0);
    assert_eq!(
        second.metric("ongi_cache_hits_total").await,
        names.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_source_redis_store() {
    let redis = redis_support::RedisServer::start();
    let photos = photo_dir();
    let model = tiny_model();
    let server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            &redis.url(),
        ],
        &[],
    );
    replay_client_flow(&server, &photo_names()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_source() {
    let s3 = s3::MotoServer::start();
    s3.create_bucket("albums");
    let photos = photo_dir();
    for entry in std::fs::read_dir(photos.path()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        s3.put_object(
            "albums",
            &format!("user-1/{name}"),
            &std::fs::read(entry.path()).unwrap(),
        );
    }
    let store = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            "s3://albums/user-1",
            "--store",
            &store_path(&store),
        ],
        &s3.env(),
    );
    replay_client_flow(&server, &photo_names()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_503_with_retry_after() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            &store_path(&store),
            "--queue-capacity",
            "4",
        ],
        &[],
    );
    // More uncached images than the queue can hold: refused at once, nothing embedded.
    let names = photo_names();
    let resp = reqwest::Client::new()
        .post(format!("{}/api/albums/embedding", server.url))
        .json(&json!({ "images": names }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["message"], "service_unavailable");
    assert_eq!(server.metric("ongi_images_embedded_total").await, 0.0);
    // Within capacity it is served.
    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": &names[..4] }))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!(null)));
}
