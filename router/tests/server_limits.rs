//! Authentication and request limits of `ongi serve`, end to end: the real
//! binary, the tiny fixture model, real photos, hostile bodies and files.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{photo_dir, photo_names, tiny_model, OngiServer};

fn store_path(dir: &tempfile::TempDir) -> String {
    dir.path()
        .join("features.redb")
        .to_str()
        .unwrap()
        .to_owned()
}

fn body(images: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({ "images": images })).unwrap()
}

fn parse(status: u16, text: &str) -> (u16, Value) {
    let value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("answered {status} with non-JSON {text:?}: {e}"));
    (status, value)
}

/// Starts a server over a fresh copy of the photos with `extra` flags.
fn start(
    photos: &tempfile::TempDir,
    store: &tempfile::TempDir,
    extra: &[&str],
    envs: &[(String, String)],
) -> OngiServer {
    let model = tiny_model();
    let mut args = vec![
        "--model",
        model.to_str().unwrap(),
        "--images",
        photos.path().to_str().unwrap(),
    ];
    let store = store_path(store);
    args.extend(["--store", store.as_str()]);
    args.extend(extra);
    OngiServer::start(&args, envs)
}

const UNAUTHORIZED: &str = r#"{"message":"unauthorized_server","data":null}"#;

/// Missing, wrong and right keys in both header forms, two keys at once
/// (rotation, from the comma-separated environment variable), and the open routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_authentication() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(
        &photos,
        &store,
        &[],
        &[("ONGI_API_KEY".into(), "old-key-1234, new-key-5678".into())],
    );
    let names = photo_names();
    let one = body(&names[..1]);
    let path = "/api/albums/embedding";

    let refused: &[&[(&str, &str)]] = &[
        &[],
        &[("authorization", "Bearer wrong-key")],
        &[("authorization", "Bearer old-key-123")],
        &[("authorization", "Bearer old-key-12345")],
        &[("authorization", "old-key-1234")],
        &[("authorization", "Basic old-key-1234")],
        &[("x-api-key", "")],
        &[("x-api-key", "new-key-567")],
        &[("x-api-key", "old-key-1234,new-key-5678")],
    ];
    for headers in refused {
        let (status, text) = server.post_with_headers(path, one.clone(), headers).await;
        assert_eq!((status, text.as_str()), (403, UNAUTHORIZED), "{headers:?}");
    }
    // every /api route is behind the key, malformed bodies included
    for route in [
        "/api/albums/duplicates",
        "/api/albums/quality",
        "/api/albums/categories",
        "/api/albums/score",
        "/api/albums/people",
    ] {
        let (status, text) = server
            .post_with_headers(route, b"not json".to_vec(), &[])
            .await;
        assert_eq!((status, text.as_str()), (403, UNAUTHORIZED), "{route}");
    }
    assert_eq!(server.metric("ongi_images_embedded_total").await, 0.0);

    // both keys of the rotation work, in both header forms
    for headers in [
        [("authorization", "Bearer old-key-1234")],
        [("authorization", "bearer new-key-5678")],
        [("x-api-key", "old-key-1234")],
        [("x-api-key", "new-key-5678")],
    ] {
        let (status, text) = server.post_with_headers(path, one.clone(), &headers).await;
        let (status, json) = parse(status, &text);
        assert_eq!(
            (status, json),
            (201, json!({"message": "success", "data": null})),
            "{headers:?}; log:\n{}",
            server.log()
        );
    }
    let (status, text) = server
        .post_with_headers(
            "/api/albums/quality",
            one.clone(),
            &[("x-api-key", "new-key-5678")],
        )
        .await;
    assert_eq!(status, 201, "{text}");

    // health, metrics and the OpenAPI document stay open
    for open in ["/health/info", "/metrics", "/openapi.json"] {
        let (status, _) = server.get(open).await;
        assert_eq!(status, 200, "{open}");
    }
    assert!(server.metric("ongi_unauthorized_requests_total").await >= 13.0);
    assert!(
        !server.log().contains("old-key-1234"),
        "a key leaked into the log"
    );
}

/// The repeatable flag form of `--api-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_flag_repeats() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let server = start(
        &photos,
        &store,
        &["--api-key", "first-key", "--api-key", "second-key"],
        &[],
    );
    let one = body(&photo_names()[..1]);
    let path = "/api/albums/embedding";
    for (key, expected) in [("first-key", 201), ("second-key", 201), ("third-key", 403)] {
        let (status, _) = server
            .post_with_headers(path, one.clone(), &[("x-api-key", key)])
            .await;
        assert_eq!(status, expected, "{key}");
    }
}

/// A tiny PNG whose header claims `width` × `height` RGB pixels.
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend(data);
        out.extend(&typed);
        out.extend(crc32(&typed).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // a tiny zlib stream: an empty stored block
    chunk(
        &mut out,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
        ],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A real JPEG with its frame header rewritten to claim `width` × `height`.
fn jpeg_bomb(original: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = original.to_vec();
    assert_eq!(&out[..2], b"\xFF\xD8");
    let mut i = 2;
    loop {
        assert_eq!(out[i], 0xFF, "not at a marker");
        let marker = out[i + 1];
        let len = usize::from(u16::from_be_bytes([out[i + 2], out[i + 3]]));
        if (0xC0..=0xC2).contains(&marker) {
            out[i + 5..i + 7].copy_from_slice(&height.to_be_bytes());
            out[i + 7..i + 9].copy_from_slice(&width.to_be_bytes());
            return out;
        }
        i += 2 + len;
    }
}

/// Body size, images per request, key length, bytes per image and decoded
/// pixels per image: each a clear 400 or a per-image entry in `data`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_image_limits() {
    let photos = photo_dir();
    let dune = std::fs::read(photos.path().join("landscape_dune.jpg")).unwrap();
    std::fs::write(photos.path().join("bomb.png"), png_bomb(100_000, 100_000)).unwrap();
    std::fs::write(
        photos.path().join("bomb.jpg"),
        jpeg_bomb(&dune, 65_000, 65_000),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let server = start(
        &photos,
        &store,
        &["--max-body-bytes", "4096", "--max-image-bytes", "100000"],
        &[("ONGI_MAX_IMAGES".into(), "5".into())],
    );
    let path = "/api/albums/embedding";
    let invalid = |status: u16, text: &str, needle: &str| {
        let (status, json) = parse(status, text);
        assert_eq!(status, 400, "{json}");
        assert_eq!(json["message"], "invalid_request", "{json}");
        let reason = json["data"].as_str().unwrap();
        assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
    };

    // a body over --max-body-bytes: the contract's 400 envelope, not axum's 413
    let names: Vec<String> = (0..300).map(|i| format!("photo-{i:04}.jpg")).collect();
    let big = body(&names);
    assert!(big.len() > 4096 && big.len() < 16 * 1024);
    let (status, text) = server.post_with_headers(path, big, &[]).await;
    invalid(status, &text, "larger than the limit of 4096 bytes");
    // on every /api route
    let big_score =
        serde_json::to_vec(&json!({"categories": [{"category": "x", "images": names}]})).unwrap();
    let (status, text) = server
        .post_with_headers("/api/albums/score", big_score, &[])
        .await;
    invalid(status, &text, "larger than the limit");

    // more keys than --max-images (ONGI_MAX_IMAGES=5), on each route
    let six: Vec<String> = photo_names().into_iter().take(6).collect();
    for route in [
        path,
        "/api/albums/duplicates",
        "/api/albums/quality",
        "/api/albums/categories",
    ] {
        let (status, text) = server.post_with_headers(route, body(&six), &[]).await;
        invalid(
            status,
            &text,
            "too many images: 6 in one request, the limit is 5",
        );
    }
    let score = json!({"categories": [
        {"category": "a", "images": &six[..3]},
        {"category": "b", "images": &six[3..]},
    ]});
    let (status, text) = server
        .post_with_headers(
            "/api/albums/score",
            serde_json::to_vec(&score).unwrap(),
            &[],
        )
        .await;
    invalid(status, &text, "too many images");
    assert_eq!(server.metric("ongi_images_embedded_total").await, 0.0);

    // a 2000-character key, photos over --max-image-bytes (rgb_garden.png is
    // 111,995 bytes, rgba_aqua.png 132,540) and two decompression bombs: each
    // fails alone, the good photo is embedded
    let long_key = format!("{}.jpg", "a".repeat(1996));
    let keys = vec![
        "grey_wood.jpg".to_string(),
        long_key.clone(),
        "rgb_garden.png".into(),
        "rgba_aqua.png".into(),
        "bomb.png".into(),
    ];
    let started = Instant::now();
    let (status, text) = server.post_with_headers(path, body(&keys), &[]).await;
    let (status, json) = parse(status, &text);
    assert_eq!(status, 201, "{json}");
    assert_eq!(json["message"], "success");
    // the over-long key is echoed cut to 1024 bytes and marked with `…`
    let mut expected: Vec<String> = keys[1..].to_vec();
    expected[0] = format!("{}…", &long_key[..1024]);
    assert_eq!(json["data"], json!(expected), "log:\n{}", server.log());
    let (status, text) = server
        .post_with_headers(path, body(&["bomb.jpg".to_string()]), &[])
        .await;
    assert_eq!(
        parse(status, &text),
        (201, json!({"message": "success", "data": ["bomb.jpg"]}))
    );
    // refused from the header, before a 30 GB buffer could exist
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = server.log();
    assert!(
        log.contains("more than the limit of 100000000"),
        "log:\n{log}"
    );
    assert!(log.contains("limit is 100000 bytes"), "log:\n{log}");
    assert_eq!(server.metric("ongi_images_embedded_total").await, 1.0);

    // the server is still healthy
    let (status, _) = server.get("/health/info").await;
    assert_eq!(status, 200);
}

/// With a deadline shorter than the batcher's wait, every photo not yet
/// embedded fails with "deadline exceeded" while cached photos still count as
/// done; the request answers 201 and the queue is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_deadline_fails_unfinished_images() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let names = photo_names();
    let (cached, fresh) = names.split_at(2);

    // cache two photos with the default deadline
    let mut first = start(&photos, &store, &[], &[]);
    let (status, text) = first
        .post_with_headers("/api/albums/embedding", body(cached), &[])
        .await;
    assert_eq!(
        parse(status, &text),
        (201, json!({"message": "success", "data": null}))
    );
    assert!(first.stop().success());

    // 1 ms deadline; the batcher waits 500 ms for a batch of 64 to fill
    let server = start(
        &photos,
        &store,
        &[
            "--request-timeout-secs",
            "0.001",
            "--max-batch-wait-ms",
            "500",
            "--batch-size",
            "64",
        ],
        &[],
    );
    for _ in 0..2 {
        let (status, text) = server
            .post_with_headers("/api/albums/embedding", body(&names), &[])
            .await;
        let (status, json) = parse(status, &text);
        assert_eq!(status, 201, "{json}");
        assert_eq!(json["data"], json!(fresh), "log:\n{}", server.log());
    }
    assert!(server.log().contains("deadline exceeded"));
    assert_eq!(
        server.metric("ongi_images_deadline_exceeded_total").await,
        2.0 * fresh.len() as f64
    );
    // the dropped images gave their queue slots back (the batch may still be running)
    let released = Instant::now() + Duration::from_secs(10);
    while server.metric("ongi_queue_depth").await != 0.0 {
        assert!(Instant::now() < released, "queue slots leaked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
