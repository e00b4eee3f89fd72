//! Faults around `ongi serve`, end to end with the real binary: Redis going away
//! and coming back (a real `redis-server`, killed and restarted on the same
//! port), SIGTERM with requests in flight, and SIGKILL in the middle of writes to
//! the embedded store.

use std::path::Path;
use std::time::{Duration, Instant};

use ongi_test_support::fixtures::{photo_dir, photo_names};
use ongi_test_support::ongi::{post_json, OngiServer};
use ongi_test_support::redis::RedisServer;
use serde_json::{json, Value};

/// Namespace of the records, fixed so the test can read the store afterwards.
const MODEL_ID: &str = "faults-test";

/// `ongi serve` over `photos` and `store` with the faults tests' model id
/// and one compute thread, then `extra` flags.
fn start(photos: &Path, store: &str, extra: &[&str]) -> OngiServer {
    let mut args = vec!["--model-id", MODEL_ID, "--threads", "1"];
    args.extend(extra);
    OngiServer::start_over(photos, Path::new(store), &args, None)
}

fn redb_path(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("features.redb")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Redis killed under a running server: requests fail fast with 500 and a log
/// line naming the feature store; Redis restarted on the same port: the same
/// server serves again (no restart) and re-embeds the photos Redis forgot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers_without_restart() {
    let mut redis = RedisServer::start();
    let photos = photo_dir();
    let names = photo_names();
    let (first, second) = (&names[..3], &names[3..6]);
    let server = start(photos.path(), &redis.url(), &[]);

    let (status, body) = server
        .try_post("/api/albums/embedding", &json!({ "images": first }))
        .await
        .unwrap();
    assert_eq!((status, &body["data"]), (201, &Value::Null), "{body}");
    assert_eq!(server.metric("ongi_images_embedded_total").await, 3.0);

    redis.kill();
    for images in [first, second] {
        let started = Instant::now();
        let (status, body) = server
            .try_post("/api/albums/embedding", &json!({ "images": images }))
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(
            (status, &body),
            (
                500,
                &json!({"message": "internal_server_error", "data": null})
            ),
            "log:\n{}",
            server.log()
        );
        assert!(
            took < Duration::from_secs(5),
            "500 took {took:?}; log:\n{}",
            server.log()
        );
    }
    // The analysis routes read the store too.
    let (status, _) = server
        .try_post("/api/albums/quality", &json!({ "images": first }))
        .await
        .unwrap();
    assert_eq!(status, 500);
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("feature store failed") && l.contains("redis")),
        "no log line naming the feature store; log:\n{log}"
    );
    // The server lives on, and its health says the store is down (503 in
    // the error envelope) instead of "ok".
    let health = reqwest::get(format!("http://127.0.0.1:{}/health/info", server.port))
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!(
        body,
        json!({"message": "service_unavailable", "data": "feature store unavailable"})
    );

    // Same port, empty data set: the server reconnects by itself.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let (status, body) = server
            .try_post("/api/albums/embedding", &json!({ "images": first }))
            .await
            .unwrap();
        if status == 201 {
            break body;
        }
        assert_eq!(status, 500, "{body}");
        assert!(
            Instant::now() < deadline,
            "no recovery within 30 s of Redis coming back; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(body["data"], Value::Null, "{body}");
    assert_eq!(server.health_status(), Some(200), "healthy again");
    // Redis had no persistence: the three photos were embedded again ...
    assert_eq!(server.metric("ongi_images_embedded_total").await, 6.0);
    // ... and written to the new Redis: the analysis route finds them.
    let (status, body) = server
        .try_post("/api/albums/quality", &json!({ "images": first }))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
}

/// SIGTERM while requests wait in the batcher: every one of them is answered
/// 201, new connections are refused, the process exits 0, and the embedded store
/// holds every record afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_keeps_every_record() {
    let photos = photo_dir();
    let names = photo_names();
    let store_dir = tempfile::tempdir().unwrap();
    let store = redb_path(&store_dir);
    // Batches wait up to 1.5 s to fill 64 images: requests sit in the queue.
    let mut server = start(
        photos.path(),
        &store,
        &["--max-batch-wait-ms", "1500", "--batch-size", "64"],
    );

    let mut requests = Vec::new();
    for chunk in names.chunks(3) {
        let (url, body) = (server.url.clone(), json!({ "images": chunk }));
        requests.push(tokio::spawn(async move {
            post_json(&url, "/api/albums/embedding", &body).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.running());
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Still draining the queued requests, but no longer accepting.
    assert!(
        server.running(),
        "exited before answering; log:\n{}",
        server.log()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err(),
        "a new connection was accepted after SIGTERM; log:\n{}",
        server.log()
    );

    for request in requests {
        let (status, body) = request.await.unwrap().unwrap_or_else(|e| {
            panic!(
                "in-flight request dropped by shutdown: {e}; log:\n{}",
                server.log()
            )
        });
        assert_eq!(
            (status, &body),
            (201, &json!({"message": "success", "data": null})),
            "log:\n{}",
            server.log()
        );
    }
    let status = server.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );

    let store = ongi_core::store::open_store(&store, None).await.unwrap();
    let records = store.get_many(MODEL_ID, &names).await.unwrap();
    let missing: Vec<&String> = names
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "records missing after SIGTERM: {missing:?}"
    );
}

/// SIGKILL in the middle of embedding requests, several times over the same
/// store file: the next server always opens it and answers, and every record
/// in it reads back (present or absent, never an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_never_corrupts_the_embedded_store() {
    let photos = photo_dir();
    let base = photo_names();
    // Many distinct keys, so that every round has writes to interrupt.
    let mut keys = Vec::new();
    for copy in 0..12 {
        for name in &base {
            let key = format!("c{copy:02}_{name}");
            std::fs::copy(photos.path().join(name), photos.path().join(&key)).unwrap();
            keys.push(key);
        }
    }
    let store_dir = tempfile::tempdir().unwrap();
    let store = redb_path(&store_dir);

    for round in 0..4u64 {
        let mut server = start(photos.path(), &store, &["--batch-size", "4"]);
        let mut requests = Vec::new();
        for (i, chunk) in keys.chunks(8).enumerate() {
            let (url, body) = (server.url.clone(), json!({ "images": chunk }));
            requests.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10 * i as u64)).await;
                post_json(&url, "/api/albums/embedding", &body).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(250 + 150 * round)).await;
        server.signal("KILL");
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(!status.success());
        let (mut answered, mut cut) = (0, 0);
        for request in requests {
            // Answered before the kill (201) or cut off by it: both fine.
            match request.await.unwrap() {
                Ok((status, body)) => {
                    assert_eq!(status, 201, "{body}");
                    answered += 1;
                }
                Err(_) => cut += 1,
            }
        }
        eprintln!("round {round}: {answered} requests answered, {cut} cut off by SIGKILL");

        // The next server opens the same file and answers.
        let server = start(photos.path(), &store, &[]);
        let probe = &keys[..2];
        let (status, body) = server
            .try_post("/api/albums/embedding", &json!({ "images": probe }))
            .await
            .unwrap();
        assert_eq!(
            (status, &body["data"]),
            (201, &Value::Null),
            "round {round}: {body}; log:\n{}",
            server.log()
        );
        drop(server); // SIGKILL again, outside a write this time
    }

    let store = ongi_core::store::open_store(&store, None).await.unwrap();
    let records = store.get_many(MODEL_ID, &keys).await.unwrap();
    let present = records.iter().flatten().count();
    assert!(present >= 2, "only {present} records survived");
    for record in records.iter().flatten() {
        assert!(record.embedding.iter().all(|v| v.is_finite()));
    }
}

/// Peak resident set (`VmHWM`) of a process, in bytes.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// The whole malformed corpus (`tests/fixtures/malformed`) in one embedding
/// request: 201, and `data` lists exactly the files the manifest expects to
/// fail; the server's peak RSS stays bounded (two decode workers, a 64 MP zlib
/// bomb among the files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_corpus_fails_per_image_through_the_server() {
    let corpus = ongi_test_support::fixtures::dir().join("malformed");
    let manifest: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(corpus.join("manifest.json")).unwrap())
            .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let server = start(&corpus, &redb_path(&store_dir), &["--decode-workers", "2"]);
    let keys: Vec<&str> = manifest
        .iter()
        .map(|e| e["file"].as_str().unwrap())
        .collect();
    let (status, body) = server
        .try_post("/api/albums/embedding", &json!({ "images": keys }))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}; log:\n{}", server.log());
    let mut failed: Vec<String> = match &body["data"] {
        Value::Null => Vec::new(),
        data => serde_json::from_value(data.clone()).unwrap(),
    };
    failed.sort();
    let mut want: Vec<String> = manifest
        .iter()
        .filter(|e| {
            // known divergences from PIL are reported, not asserted, in the corpus test
            let expected = e["expected"].as_str().unwrap();
            let divergent = e["known_divergence"].is_string() && expected == "ok";
            expected == "error" || (divergent && failed.iter().any(|f| f == &e["file"]))
        })
        .map(|e| e["file"].as_str().unwrap().to_owned())
        .collect();
    want.sort();
    assert_eq!(failed, want, "log:\n{}", server.log());
    let embedded = server.metric("ongi_images_embedded_total").await;
    assert_eq!(embedded as usize, keys.len() - want.len());
    let peak = peak_rss_bytes(server.pid());
    eprintln!("server peak RSS over the corpus: {} MiB", peak >> 20);
    assert!(peak < 1536 << 20, "server peak RSS {} MiB", peak >> 20);
}

/// Redis hung (SIGSTOP: the socket stays open, nothing answers): requests still
/// fail within the store's deadline, and the server serves again once Redis
/// continues (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_fails_within_the_deadline_and_recovers() {
    let redis = RedisServer::start();
    let photos = photo_dir();
    let names = photo_names();
    let server = start(photos.path(), &redis.url(), &[]);
    let (status, body) = server
        .try_post("/api/albums/embedding", &json!({ "images": &names[..2] }))
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");

    redis.signal("STOP");
    let started = Instant::now();
    let result = server
        .try_post("/api/albums/embedding", &json!({ "images": &names[2..4] }))
        .await;
    let took = started.elapsed();
    redis.signal("CONT");
    eprintln!("hung Redis: answered in {took:?}");
    let (status, body) = result.unwrap();
    assert_eq!(status, 500, "{body}; log:\n{}", server.log());
    assert!(
        took < Duration::from_secs(5),
        "500 took {took:?} against a hung Redis; log:\n{}",
        server.log()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = server
            .try_post("/api/albums/embedding", &json!({ "images": &names[2..4] }))
            .await
            .unwrap();
        if status == 201 {
            assert_eq!(body["data"], Value::Null, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no recovery within 30 s of SIGCONT; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGTERM while a client has sent half a request body and stalls: shutdown must
/// still finish within a bounded grace period (issue 6: "finishes in-flight
/// ones (bounded by a grace period)"): `--shutdown-grace-secs` bounds the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_client_exits_within_a_grace_period() {
    use std::io::Write;
    let photos = photo_dir();
    let store_dir = tempfile::tempdir().unwrap();
    let mut server = start(
        photos.path(),
        &redb_path(&store_dir),
        &["--shutdown-grace-secs", "2"],
    );
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stalled
        .write_all(
            b"POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"images\"",
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.signal("TERM");
    let signalled = std::time::Instant::now();
    let status = server.wait_exit(Duration::from_secs(60));
    assert!(
        signalled.elapsed() < Duration::from_secs(15),
        "took {:?}",
        signalled.elapsed()
    );
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        server.log()
    );
    drop(stalled);
}
