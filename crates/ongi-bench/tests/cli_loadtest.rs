//! `ongi-loadtest` against the real server on the tiny fixture model (a few
//! seconds), and its loopback-only guard.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ongi_test_support::fixtures::{photo_dir, tiny_model};
use ongi_test_support::ongi::OngiServer;
use serde_json::Value;

fn loadtest(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ongi-loadtest"))
        .args(args)
        .output()
        .expect("running ongi-loadtest")
}

#[test]
fn loadtest_drives_the_server_and_reports() {
    // The corrupt fixture stays among the keys: the server reports it as a
    // failed image, which is a correct answer, not a failed run.
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let store_path = store.path().join("features.redb");
    let server = OngiServer::start(
        &[
            "--model",
            tiny_model().to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            store_path.to_str().unwrap(),
        ],
        &[],
    );
    let pid = server.pid();
    let started = Instant::now();
    let out = loadtest(&[
        "--url",
        &server.url,
        "--users",
        "3",
        "--duration-secs",
        "3",
        "--think-ms",
        "100-200",
        "--min-images",
        "3",
        "--max-images",
        "13",
        "--keys-dir",
        photos.path().to_str().unwrap(),
        "--server-pid",
        &pid.to_string(),
        "--seed",
        "1",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "run not bounded"
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["errors"]["5xx"], 0, "{report}");
    assert_eq!(report["errors"]["transport"], 0, "{report}");
    assert!(
        report["failed_images"].as_u64().unwrap() > 0,
        "corrupt.jpg was never sent: {report}"
    );
    assert!(report["embedded_images"].as_u64().unwrap() > 0, "{report}");
    assert!(report["images_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    for route in ["embedding", "quality", "duplicates", "categories", "score"] {
        let r = &report["routes"][format!("POST /api/albums/{route}")];
        assert!(r["requests"].as_u64().unwrap_or(0) > 0, "{route}: {report}");
        for p in ["p50_ms", "p95_ms", "p99_ms"] {
            assert!(r[p].as_f64().is_some(), "{route} {p}: {report}");
        }
    }
    // Every user ran the analysis once: 3 requests on each analysis route.
    assert_eq!(report["routes"]["POST /api/albums/score"]["requests"], 3);
    let rss = &report["server_rss"];
    assert!(rss["peak_mib"].as_f64().unwrap() > 0.0, "{report}");
    assert!(rss["samples"].as_u64().unwrap() >= 2, "{report}");
    assert!(rss["verdict"].is_string(), "{report}");
}

#[test]
fn loadtest_refuses_non_loopback_urls() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "a.jpg\n").unwrap();
    for url in [
        "http://10.1.2.3:8000",
        "http://example.com",
        "http://0.0.0.0:8000",
        "http://127.0.0.1@example.com/",
    ] {
        let started = Instant::now();
        let out = loadtest(&[
            "--url",
            url,
            "--keys-file",
            keys.path().to_str().unwrap(),
            "--duration-secs",
            "1",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url}: accepted");
        assert!(
            stderr.contains("refusing to load-test") && stderr.contains("loopback"),
            "{url}: {stderr}"
        );
        // Refused before any connection attempt (10.1.2.3 would hang on connect).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: slow refusal"
        );
        assert!(out.stdout.is_empty(), "{url}: printed a report");
    }
}
