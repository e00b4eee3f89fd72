//! Hostile clients against the real `ongi serve` on loopback: half-sent
//! requests, connection floods under a small open-file limit, huge heads,
//! log injection, early answers on keep-alive connections, bare error
//! answers, h2c, `Expect: 100-continue`, swapped files, damaged stores.
//!
//! Every wait is bounded; every timing bound is far looser than the server's
//! own timeouts it checks.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{photo_dir, photo_names, tiny_model, OngiServer};

/// Starts a server over a copy of the photos, with `extra` flags.
fn start(
    photos: &tempfile::TempDir,
    store: &tempfile::TempDir,
    extra: &[&str],
    nofile: Option<u32>,
) -> OngiServer {
    let store = store.path().join("features.redb");
    OngiServer::start_over(photos.path(), &store, extra, nofile)
}

fn addr(server: &OngiServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

fn connect(server: &OngiServer) -> TcpStream {
    let stream = TcpStream::connect(addr(server)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (or 30 s pass); returns what
/// it sent and when it closed.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, Instant::now()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (out, Instant::now())
            }
            Err(e) => panic!("connection still open after 30 s ({e}); got {out:?}"),
        }
    }
}

/// One raw HTTP exchange on a fresh connection: the status, the head
/// (lower-cased) and the parsed envelope. Reads one whole answer (by its
/// `Content-Length`), without waiting for the connection to close.
fn raw_exchange(server: &OngiServer, request: &[u8]) -> (u16, String, Value) {
    let mut stream = connect(server);
    // The server may answer (and close) before the whole request is written.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                break (head, bytes[end + 4..end + 4 + length].to_vec());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "closed before a whole answer: {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}; got {:?}", String::from_utf8_lossy(&bytes)),
        }
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "answer {status} is not JSON ({e}): {head} {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, head, value)
}

/// Each kind of half-sent request is closed by its own deadline, and a
/// keep-alive connection is closed once idle; a drip of one byte every
/// 300 ms does not extend the header deadline.
#[test]
fn half_sent_requests_are_closed_by_their_deadlines() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(
        &photos,
        &store,
        &[
            "--header-timeout-secs",
            "1",
            "--body-timeout-secs",
            "2",
            "--idle-timeout-secs",
            "1.5",
        ],
        None,
    );
    let post_head = |extra: &str| {
        format!("POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n")
    };
    let cases: Vec<(&str, String, f64)> = vec![
        ("no bytes", String::new(), 1.0),
        ("partial request line", "GET /heal".into(), 1.0),
        (
            "partial headers",
            "GET /health/info HTTP/1.1\r\nHost: x\r\n".into(),
            1.0,
        ),
        (
            "body cut short",
            post_head("Content-Length: 100\r\n") + "{\"images\"",
            2.0,
        ),
        (
            "chunked body with no end",
            post_head("Transfer-Encoding: chunked\r\n") + "5\r\nhello\r\n",
            2.0,
        ),
    ];
    let started = Instant::now();
    let mut streams: Vec<(&str, TcpStream, f64)> = cases
        .into_iter()
        .map(|(name, bytes, deadline)| {
            let mut s = connect(&server);
            s.write_all(bytes.as_bytes()).unwrap();
            (name, s, deadline)
        })
        .collect();
    // idle keep-alive: one whole request, then silence
    let mut idle = connect(&server);
    idle.write_all(b"GET /health/info HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    streams.push(("idle keep-alive", idle, 1.5));
    // a drip that never completes its head
    let drip = std::thread::spawn({
        let mut s = connect(&server);
        move || {
            let started = Instant::now();
            for byte in b"GET /health/info HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxxxxxx" {
                if s.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            let (_, closed) = read_until_closed(&mut s);
            closed - started
        }
    });
    for (name, mut stream, deadline) in streams {
        let (bytes, closed) = read_until_closed(&mut stream);
        let after = (closed - started).as_secs_f64();
        println!("{name}: closed after {after:.2} s (deadline {deadline} s)");
        assert!(after < deadline + 3.0, "{name}: closed after {after:.2} s");
        if name != "idle keep-alive" {
            // nothing was answered for a request that never arrived whole
            assert!(
                bytes.is_empty() || String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 4"),
                "{name}: {bytes:?}"
            );
        }
    }
    let drip_closed = drip.join().unwrap().as_secs_f64();
    println!("one byte per 300 ms: closed after {drip_closed:.2} s");
    assert!(drip_closed < 4.0, "drip closed after {drip_closed:.2} s");

    // the watchdog names what it closed
    let metrics = blocking_metrics(&server);
    for reason in ["header_timeout", "body_timeout", "idle_timeout"] {
        let line = format!("ongi_connections_closed_total{{reason=\"{reason}\"}}");
        assert!(
            support::metric_value(&metrics, &line) >= 1.0,
            "{line} missing:\n{metrics}"
        );
    }
}

/// SIGTERM with idle, half-sent and slow connections open (and nothing
/// being processed) exits at once, not after `--shutdown-grace-secs`.
#[test]
fn sigterm_closes_idle_and_half_sent_connections_at_once() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let mut server = start(&photos, &store, &["--shutdown-grace-secs", "30"], None);
    let mut held = Vec::new();
    for i in 0..60 {
        let mut s = connect(&server);
        let bytes: &[u8] = match i % 4 {
            0 => b"",
            1 => b"GET /health/info HTTP/1.1\r\nHost",
            2 => b"POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{",
            _ => b"GET /health/info HTTP/1.1\r\nHost: x\r\n\r\n",
        };
        s.write_all(bytes).unwrap();
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = server.stop();
    let took = started.elapsed();
    println!("SIGTERM with 60 idle/half-sent connections: exited in {took:.2?} ({status})");
    assert!(status.success(), "{status}; log:\n{}", server.log());
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

/// Opens `count` connections that each send one byte and hold, then asks
/// for health, embeds a new photo and asks for quality, 20 rounds; returns
/// the slowest answer.
async fn slowest_answer_under_one_byte_attack(
    server: &OngiServer,
    photos: &std::path::Path,
    count: usize,
) -> Duration {
    let target = addr(server);
    let mut attackers = Vec::new();
    for _ in 0..count {
        if let Ok(mut s) = tokio::net::TcpStream::connect(&target).await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"G").await;
            attackers.push(s);
        }
    }
    assert_eq!(attackers.len(), count, "the listener refused connections");
    let names = photo_names();
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        let started = Instant::now();
        let (status, _) = server.get("/health/info").await;
        assert_eq!(status, 200, "health, round {round}");
        if round % 4 == 0 {
            // a photo the store has not seen, so the model really runs
            let fresh = format!("attack-{count}-{round}.jpg");
            std::fs::copy(
                photos.join(&names[round % names.len()]),
                photos.join(&fresh),
            )
            .unwrap();
            let album = json!({ "images": [fresh] });
            let (status, body) = server.post("/api/albums/embedding", &album).await;
            assert_eq!(
                (status, &body),
                (201, &json!({"message": "success", "data": null}))
            );
            let (status, _) = server.post("/api/albums/quality", &album).await;
            assert_eq!(status, 201);
        }
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

/// 300 and then 1,000 clients that each send one byte: health and embedding
/// answers keep coming at once (the slow connections are evicted to make
/// room, not waited for), with the open-file limit the server gets
/// (`ulimit -n 256`, where the cap is below the attackers' number) and a
/// roomy one. Then 1,000 connections each pushing a 400 KB head: each is
/// answered 431 in the envelope (or reset, when too many close at once), and
/// the server's memory returns to within 10 % of where it was. The accept
/// loop never runs out of descriptors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_floods_do_not_starve_real_clients() {
    for nofile in [Some(256), None] {
        slow_client_floods_with(nofile).await;
    }
}

async fn slow_client_floods_with(nofile: Option<u32>) {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(&photos, &store, &[], nofile);
    let limit = nofile.map_or("the default open-file limit".to_owned(), |n| {
        format!("ulimit -n {n}")
    });
    let album = json!({ "images": photo_names() });
    let (status, _) = server.post("/api/albums/embedding", &album).await;
    assert_eq!(status, 201);
    let rss_before = server.rss_bytes();
    let target = addr(&server);

    for count in [300, 1000] {
        let slowest = slowest_answer_under_one_byte_attack(&server, photos.path(), count).await;
        println!("under {count} one-byte connections ({limit}): slowest answer {slowest:.2?}");
        // far below the 10 s header timeout: nobody waited for an attacker to time out
        assert!(slowest < Duration::from_secs(3), "slowest {slowest:?}");
    }

    // 1,000 connections, each pushing 400 KB of header without an end
    let big_head = {
        let mut h = b"GET /health/info HTTP/1.1\r\nHost: x\r\nX-Filler: ".to_vec();
        h.resize(400 * 1024, b'a');
        std::sync::Arc::new(h)
    };
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (target, head) = (target.clone(), big_head.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(&target).await.ok()?;
            let _ = tokio::time::timeout(Duration::from_secs(20), s.write_all(&head)).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer)).await;
            Some(answer)
        }));
    }
    let mut answered_431 = 0;
    for task in tasks {
        if let Some(answer) = task.await.unwrap() {
            let text = String::from_utf8_lossy(&answer);
            if text.starts_with("HTTP/1.1 431") {
                assert!(
                    text.ends_with(r#""message":"request_header_fields_too_large","data":"the request head is larger than the limit"}"#),
                    "{text}"
                );
                answered_431 += 1;
            }
        }
    }
    println!("1,000 connections with 400 KB heads ({limit}): {answered_431} answered 431 in the envelope");
    assert!(answered_431 > 0);
    let (status, _) = server.get("/health/info").await;
    assert_eq!(status, 200);
    // The closed connections' memory is returned within a few seconds (the
    // server gives freed memory back at most every 2 s after a burst).
    let bound = rss_before as f64 * 1.10;
    let flood_over = Instant::now();
    let mut rss_after = server.rss_bytes();
    while rss_after as f64 > bound && flood_over.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rss_after = server.rss_bytes();
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "RSS before the attacks {:.1} MB, after {:.1} MB, {:.1?} after the flood ({limit})",
        mb(rss_before),
        mb(rss_after),
        flood_over.elapsed()
    );
    assert!(
        rss_after as f64 <= bound,
        "RSS grew from {:.1} to {:.1} MB",
        mb(rss_before),
        mb(rss_after)
    );
    let log = server.log();
    assert!(!log.contains("Too many open files"), "log:\n{log}");
}

/// Bare answers get the envelope: unknown routes (the people route too),
/// wrong methods, over-long URIs, over-large heads, unparsable heads.
#[test]
fn every_answer_is_in_the_envelope() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(&photos, &store, &[], None);
    let long_uri = format!(
        "GET /health/info?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(10 * 1024)
    );
    let huge_header = format!(
        "GET /health/info HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "h".repeat(20 * 1024)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "unknown route",
            b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            404,
            "not_found",
        ),
        (
            "no such route",
            b"POST /api/albums/nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            404,
            "not_found",
        ),
        (
            "people without images",
            b"POST /api/albums/people HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            400,
            "invalid_request",
        ),
        (
            "wrong method",
            b"GET /api/albums/embedding HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            405,
            "method_not_allowed",
        ),
        ("over-long URI", long_uri.into_bytes(), 414, "uri_too_long"),
        (
            "over-large head",
            huge_header.into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        (
            "unparsable head",
            b"GET /health/info HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
            400,
            "invalid_request",
        ),
    ];
    for (name, request, status, message) in cases {
        let (got, head, body) = raw_exchange(&server, &request);
        assert_eq!(got, status, "{name}: {head}");
        assert_eq!(body["message"], message, "{name}: {body}");
        assert!(body["data"].is_string(), "{name}: {body}");
        assert!(
            head.contains("content-type: application/json"),
            "{name}: {head}"
        );
        if status == 405 {
            assert!(head.contains("allow: post"), "{name}: {head}");
        }
    }
}

/// h2c is refused (HTTP/1.1 only): the prior-knowledge preface gets no
/// HTTP/2 SETTINGS frame, only a closed connection; an `Upgrade: h2c`
/// request is answered over HTTP/1.1 without switching.
#[test]
fn http2_cleartext_is_refused() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(&photos, &store, &[], None);
    let mut s = connect(&server);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let (bytes, _) = read_until_closed(&mut s);
    // an HTTP/2 server's first frame would be SETTINGS: type 0x04 at byte 3
    assert!(
        bytes.len() < 9 || bytes[3] != 0x04,
        "answered HTTP/2: {bytes:?}"
    );
    let (status, head, _) = raw_exchange(
        &server,
        b"GET /health/info HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("101"), "{head}");
}

/// `Expect: 100-continue` with a declared body over the limit is refused at
/// once, before the client is told to send it; within the limit, the client
/// is told to go ahead.
#[test]
fn expect_continue_over_the_body_limit_is_refused_before_the_body() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(&photos, &store, &["--max-body-bytes", "1000"], None);
    let mut s = connect(&server);
    s.write_all(
        b"POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let (bytes, _) = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(
        text.contains("larger than the limit of 1000 bytes"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    let mut s = connect(&server);
    s.write_all(
        b"POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut first = [0u8; 25];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// A 403 answered before the body is read closes the connection and says so
/// (`Connection: close`), so a keep-alive client opens a new connection for
/// its next request instead of writing into a dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_close_the_connection_explicitly() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let key_file = store.path().join("keys");
    std::fs::write(&key_file, "# rotation\nfirst-key-123\n\nsecond-key-456\n").unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let server = start(
        &photos,
        &store,
        &["--api-key-file", key_file.to_str().unwrap()],
        None,
    );
    let body = format!(r#"{{"images": ["{}"]}}"#, photo_names()[0]);
    let request = format!(
        "POST /api/albums/embedding HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, head, value) = raw_exchange(&server, request.as_bytes());
    assert_eq!(status, 403);
    assert_eq!(
        value,
        json!({"message": "unauthorized_server", "data": null})
    );
    assert!(head.contains("connection: close"), "{head}");

    // one keep-alive client: refused, refused, accepted, all on its pool
    let client = reqwest::Client::new();
    let url = format!("{}/api/albums/embedding", server.url);
    for (key, expected) in [
        ("wrong", 403),
        ("also-wrong", 403),
        ("second-key-456", 201),
        ("first-key-123", 201),
    ] {
        let resp = client
            .post(&url)
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("key {key}: {e}"));
        assert_eq!(resp.status().as_u16(), expected, "key {key}");
    }
    // the key file's keys are not on the command line
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", server.pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains("first-key-123"));
}

/// Keys with newlines, terminal escapes and megabyte lengths: the log holds
/// each on one escaped, capped line, and the answer echoes at most 1 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_text_is_escaped_in_logs_and_capped_in_answers() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(&photos, &store, &["--max-body-bytes", "2000000"], None);
    let forged = "x.jpg\n2026-12-02T00:00:00.000000Z  INFO ongi: FORGED admin logged in";
    let escape = "y.jpg\x1b]0;owned\x07\x1b[2J";
    let huge = "z".repeat(1_000_000);
    let keys = vec![forged.to_owned(), escape.to_owned(), huge.clone()];
    let (status, body) = server
        .post("/api/albums/embedding", &json!({ "images": keys }))
        .await;
    assert_eq!(status, 201, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data[0], forged);
    assert_eq!(data[1], escape);
    let echoed = data[2].as_str().unwrap();
    assert!(
        echoed.len() <= 1024 + 3 && echoed.ends_with('…'),
        "{}",
        echoed.len()
    );
    let log = server.log();
    assert!(!log.contains('\x1b'), "raw ESC in the log");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-12-02T00:00:00.000000Z")),
        "a forged line:\n{log}"
    );
    assert!(log.contains("x.jpg\\n2026-12-02"), "log:\n{log}");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a log line of {longest} bytes");
}

/// A photo swapped for a FIFO (or a symlink out of the root) while requests
/// read it: no request hangs, the secret is never embedded, and SIGTERM
/// still stops the server promptly; a hard link to a file outside the root
/// is refused unless `--allow-hard-links`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_and_hard_linked_files_are_refused() {
    let photos = photo_dir();
    let outside = tempfile::tempdir().unwrap();
    let names = photo_names();
    let secret = outside.path().join("secret.jpg");
    std::fs::copy(photos.path().join(&names[0]), &secret).unwrap();
    std::fs::hard_link(&secret, photos.path().join("linked.jpg")).unwrap();
    let store = tempfile::tempdir().unwrap();
    let mut server = start(&photos, &store, &[], None);
    let (status, body) = server
        .post("/api/albums/embedding", &json!({"images": ["linked.jpg"]}))
        .await;
    assert_eq!((status, body["data"].clone()), (201, json!(["linked.jpg"])));
    assert!(
        server.log().contains("hard links"),
        "log:\n{}",
        server.log()
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, root, good) = (stop.clone(), photos.path().to_owned(), names[1].clone());
        let secret = secret.clone();
        std::thread::spawn(move || {
            let (target, tmp) = (root.join("swap.jpg"), root.join("swap.tmp"));
            let mut swaps = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::fs::copy(root.join(&good), &tmp).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
                let made = std::process::Command::new("mkfifo")
                    .arg(&tmp)
                    .status()
                    .unwrap();
                assert!(made.success());
                std::fs::rename(&tmp, &target).unwrap();
                std::os::unix::fs::symlink(&secret, &tmp).unwrap();
                std::fs::rename(&tmp, &target).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let mut answered = 0;
    let swap = json!({"images": ["swap.jpg"]});
    for _ in 0..100 {
        let request = server.post("/api/albums/embedding", &swap);
        let (status, _) = tokio::time::timeout(Duration::from_secs(30), request)
            .await
            .expect("a request hung on a swapped file");
        assert_eq!(status, 201);
        answered += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    println!("{answered} requests against {swaps} swaps, none hung");
    let started = Instant::now();
    let status = server.stop();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let store2 = tempfile::tempdir().unwrap();
    let server = start(&photos, &store2, &["--allow-hard-links"], None);
    let (status, body) = server
        .post("/api/albums/embedding", &json!({"images": ["linked.jpg"]}))
        .await;
    assert_eq!(
        (status, body),
        (201, json!({"message": "success", "data": null}))
    );
    // health names the kind of source, never its path
    let (_, health) = server.get("/health/info").await;
    assert!(
        !health.contains(photos.path().to_str().unwrap()),
        "{health}"
    );
    assert!(health.contains("a local directory"), "{health}");
}

/// A damaged cache file and a mistyped store URL stop the server with one
/// clear line (exit 2), no panic and no backtrace; `Redis://` is a Redis URL.
#[test]
fn damaged_store_files_and_unknown_schemes_fail_clearly() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let path = store.path().join("features.redb");
    // a real store, then a few KB of garbage written into it
    {
        let mut server = start(&photos, &store, &[], None);
        server.stop();
    }
    let original = std::fs::read(&path).unwrap();
    assert!(original.len() > 20_000, "{} bytes", original.len());
    let model = tiny_model();
    let run = |store: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ongi"))
            .args(["serve", "--bind", "127.0.0.1:0", "--model"])
            .arg(&model)
            .args([
                "--images",
                photos.path().to_str().unwrap(),
                "--store",
                store,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // still running: it opened the store (the garbage hit unused space)
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    // 4 KB of garbage at several places: the header, the region table, pages
    let mut damaged = 0;
    for offset in [0usize, 64, 8192, 16384] {
        let mut bytes = original.clone();
        for (i, b) in bytes[offset..offset + 4096].iter_mut().enumerate() {
            *b = ((offset + i) * 131 % 251) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        let out = run(path.to_str().unwrap());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "offset {offset}: {stderr}");
        assert!(
            !stderr.contains("RUST_BACKTRACE"),
            "offset {offset}: {stderr}"
        );
        if out.status.code() == Some(2) {
            assert!(stderr.contains("is damaged"), "offset {offset}: {stderr}");
            assert!(
                stderr.contains("delete the file"),
                "offset {offset}: {stderr}"
            );
            damaged += 1;
        }
        println!("garbage at {offset}: exit {:?}", out.status.code());
    }
    assert!(
        damaged >= 3,
        "only {damaged} of 4 damaged files were reported"
    );

    for spec in ["redi://localhost:6379/0", "http://cache:6379"] {
        let out = run(spec);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{spec}: {stderr}");
        assert!(stderr.contains("unknown scheme"), "{spec}: {stderr}");
        assert!(!std::path::Path::new(spec).exists());
    }
    // an upper-case scheme is still Redis (nothing listens there: a Redis error, not a file)
    let out = run("Redis://127.0.0.1:1/0");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.to_ascii_lowercase().contains("redis"), "{stderr}");
    assert!(!std::path::Path::new("Redis:").exists());
}

/// `/metrics` over a plain blocking socket.
fn blocking_metrics(server: &OngiServer) -> String {
    let mut s = connect(server);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
