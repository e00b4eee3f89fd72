//! Slow-client soak: 300 slow connections against a real `ongi serve`
//! (under `ulimit -n 256`, so the connection cap is below the attackers'
//! number) for `ONGI_SOAK_SECS` seconds (default 60), while a normal client
//! embeds new photos and analyses the album. Reports failed normal requests
//! (must be 0), their latency, RSS before and after, and shutdown time.
//!
//! The slow clients are of three kinds, each reconnecting as soon as the
//! server closes it: a head sent one byte every 2 s, a body sent one byte
//! every 2 s, and a keep-alive connection left idle after one request.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{photo_dir, photo_names, OngiServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLOW_CLIENTS: usize = 300;

async fn slow_client(kind: usize, target: String, stop: Arc<AtomicBool>, closed: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = tokio::net::TcpStream::connect(&target).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut buf = [0u8; 4096];
        let drip: &[u8] = match kind {
            0 => b"GET /health/info HTTP/1.1\r\nHost: soak\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            1 => b"POST /api/albums/embedding HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000\r\n\r\n{\"images\": [\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            _ => b"GET /health/info HTTP/1.1\r\nHost: soak\r\n\r\n",
        };
        if kind == 2 {
            let _ = s.write_all(drip).await;
            // read the answer, then stay silent until the server closes
            let _ = s.read(&mut buf).await;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
                {
                    break;
                }
            }
        } else {
            let head_len = if kind == 1 { 70 } else { 0 };
            let _ = s.write_all(&drip[..head_len]).await;
            for byte in &drip[head_len..] {
                if stop.load(Ordering::Relaxed) || s.write_all(&[*byte]).await.is_err() {
                    break;
                }
                // closed by the server while we waited?
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
                {
                    break;
                }
            }
        }
        closed.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_slow_connections_do_not_fail_a_normal_client() {
    let secs: u64 = std::env::var("ONGI_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let mut server = OngiServer::start_over(
        photos.path(),
        &store.path().join("features.redb"),
        &[],
        Some(256),
    );
    let names = photo_names();
    let (status, _) = server
        .post("/api/albums/embedding", &json!({ "images": names }))
        .await;
    assert_eq!(status, 201);
    let rss_before = server.rss_bytes();

    // the same client alone first: its normal latency on this machine
    let baseline_client = reqwest::Client::new();
    let mut baseline = NormalClient::new(&server.url, photos.path(), names.clone());
    baseline.prefix = "base";
    baseline.run(&baseline_client, Duration::from_secs(5)).await;
    assert!(baseline.failed.is_empty(), "{:?}", baseline.failed);

    let target = server.url.trim_start_matches("http://").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicU64::new(0));
    let slow: Vec<_> = (0..SLOW_CLIENTS)
        .map(|i| {
            tokio::spawn(slow_client(
                i % 3,
                target.clone(),
                stop.clone(),
                closed.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut normal = NormalClient::new(&server.url, photos.path(), names.clone());
    normal.run(&client, Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for task in slow {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server.rss_bytes();
    let metrics = server.get("/metrics").await.1;
    let evicted = support::metric_value(
        &metrics,
        "ongi_connections_closed_total{reason=\"evicted\"}",
    );
    let timed_out = ["header_timeout", "body_timeout", "idle_timeout"]
        .iter()
        .map(|r| {
            support::metric_value(
                &metrics,
                &format!("ongi_connections_closed_total{{reason=\"{r}\"}}"),
            )
        })
        .sum::<f64>();

    let shutdown_started = Instant::now();
    let status = server.stop();
    let shutdown = shutdown_started.elapsed();

    let (b50, b99, bmax) = baseline.percentiles();
    let (p50, p99, pmax) = normal.percentiles();
    let (requests, round, failed) = (normal.requests, normal.rounds, &normal.failed);
    println!(
        "slow-client soak: {SLOW_CLIENTS} slow connections for {secs} s under ulimit -n 256; \
         {} slow connections closed by the server ({evicted} evicted, {timed_out} timed out)",
        closed.load(Ordering::Relaxed)
    );
    println!(
        "normal client alone (5 s): {} requests, latency p50 {b50:.1?}, p99 {b99:.1?}, max {bmax:.1?}",
        baseline.requests
    );
    println!(
        "normal client under the slow connections: {requests} requests ({round} rounds of embed + duplicates + \
         quality + categories + health), {} failed; latency p50 {p50:.1?}, p99 {p99:.1?}, max {pmax:.1?}",
        failed.len()
    );
    println!(
        "RSS before {:.1} MB, after {:.1} MB; SIGTERM to exit {shutdown:.2?}",
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6
    );
    assert!(requests > 0 && round > 0);
    // far below the 10 s header timeout: no normal request waited for a slow one to time out
    assert!(
        pmax < Duration::from_secs(5),
        "slowest normal request {pmax:?}"
    );
    assert!(failed.is_empty(), "failed normal requests: {failed:#?}");
    assert!(status.success(), "{status}");
    assert!(
        shutdown < Duration::from_secs(2),
        "shutdown took {shutdown:?}"
    );
    assert!(
        closed.load(Ordering::Relaxed) > 0,
        "no slow connection was ever closed"
    );
}

/// The well-behaved client: each round adds a new photo to the album, embeds
/// it and asks for duplicates, quality, categories and health.
struct NormalClient {
    url: String,
    root: std::path::PathBuf,
    names: Vec<String>,
    album: Vec<String>,
    prefix: &'static str,
    requests: u64,
    rounds: usize,
    failed: Vec<String>,
    latencies: Vec<Duration>,
}

impl NormalClient {
    fn new(url: &str, root: &std::path::Path, names: Vec<String>) -> Self {
        Self {
            url: url.to_owned(),
            root: root.to_owned(),
            album: names.clone(),
            names,
            prefix: "soak",
            requests: 0,
            rounds: 0,
            failed: Vec::new(),
            latencies: Vec::new(),
        }
    }

    async fn call(&mut self, request: reqwest::RequestBuilder, what: &str, expected: u16) {
        let t = Instant::now();
        self.requests += 1;
        match request.send().await {
            Ok(resp) if resp.status().as_u16() == expected => {
                let _ = resp.bytes().await;
                self.latencies.push(t.elapsed());
            }
            Ok(resp) => self.failed.push(format!("{what}: {}", resp.status())),
            Err(e) => self.failed.push(format!("{what}: {e}")),
        }
    }

    async fn run(&mut self, client: &reqwest::Client, duration: Duration) {
        let started = Instant::now();
        while started.elapsed() < duration {
            // a new photo each round, so every embedding request embeds something
            let fresh = format!("{}-{}.jpg", self.prefix, self.rounds);
            let source = self.root.join(&self.names[self.rounds % self.names.len()]);
            std::fs::copy(source, self.root.join(&fresh)).unwrap();
            self.album.push(fresh);
            self.rounds += 1;
            let images = json!({ "images": self.album });
            for path in [
                "/api/albums/embedding",
                "/api/albums/duplicates",
                "/api/albums/quality",
                "/api/albums/categories",
            ] {
                let request = client.post(format!("{}{path}", self.url)).json(&images);
                self.call(request, path, 201).await;
            }
            let request = client.get(format!("{}/health/info", self.url));
            self.call(request, "health", 200).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn percentiles(&mut self) -> (Duration, Duration, Duration) {
        self.latencies.sort();
        let l = &self.latencies;
        let p = |q: f64| l[((l.len() - 1) as f64 * q) as usize];
        (p(0.5), p(0.99), p(1.0))
    }
}
