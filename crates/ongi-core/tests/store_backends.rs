//! The feature-store behaviour suite, run against both backends: the embedded
//! redb file and a real `redis-server` started for each test on a free
//! loopback port (never a system service, never a mock).
//!
//! `redis-server` must be on PATH (`apt-get install redis-server`); without
//! it the Redis tests fail with that instruction rather than pass silently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ongi_core::features::FeatureRecord;
use ongi_core::store::{open_store, FeatureStore, RedbStore, StoreError};

use ongi_test_support::free_port;
use ongi_test_support::redis as redis_support;
use redis_support::RedisServer;

// ---------------------------------------------------------------------------
// Harnesses
// ---------------------------------------------------------------------------

/// A store under test plus whatever keeps its backend alive.
struct Harness {
    store: Arc<dyn FeatureStore>,
    _dir: Option<tempfile::TempDir>,
    _redis: Option<RedisServer>,
}

async fn redb_harness(ttl: Option<Duration>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("features.redb");
    let store = open_store(path.to_str().unwrap(), ttl).await.unwrap();
    Harness {
        store,
        _dir: Some(dir),
        _redis: None,
    }
}

async fn memory_harness(ttl: Option<Duration>) -> Harness {
    let store = open_store(ongi_core::store::MEMORY_SPEC, ttl)
        .await
        .unwrap();
    assert!(
        store.describe().contains(":memory:"),
        "{}",
        store.describe()
    );
    Harness {
        store,
        _dir: None,
        _redis: None,
    }
}

async fn redis_harness(ttl: Option<Duration>) -> Harness {
    let server = RedisServer::start();
    let store = open_store(&server.url(), ttl).await.unwrap();
    Harness {
        store,
        _dir: None,
        _redis: Some(server),
    }
}

fn record(seed: u32, dim: usize) -> FeatureRecord {
    FeatureRecord {
        embedding: (0..dim)
            .map(|i| (seed as f32 + 1.0) * (i as f32 - 3.5) / 7.0)
            .collect(),
        phash: u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        laplacian_var: 10.0 * seed as f32 + 0.25,
        width: 4000 + seed,
        height: 3000 + seed,
        faces: None,
    }
}

fn keys(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// The suite (backend-agnostic)
// ---------------------------------------------------------------------------

async fn missing_is_none(store: &dyn FeatureStore) {
    let got = store
        .get_many("m", &keys(&["a.jpg", "b.jpg"]))
        .await
        .unwrap();
    assert_eq!(got, vec![None, None]);
    assert_eq!(store.get_blob("m", "prompts").await.unwrap(), None);
    assert!(store.get_many("m", &[]).await.unwrap().is_empty());
    store.put_many("m", &[]).await.unwrap();
}

async fn roundtrip_preserves_order_and_bytes(store: &dyn FeatureStore) {
    let mut odd = record(7, 512);
    // Values whose bits must survive exactly (signed zero, subnormal, NaN payload).
    odd.embedding[0] = -0.0;
    odd.embedding[1] = f32::from_bits(1);
    odd.embedding[2] = f32::from_bits(0x7fc0_1234);
    let recs = vec![
        ("a.jpg".to_owned(), record(1, 512)),
        ("dir/b c.jpg".to_owned(), record(2, 512)),
        ("x:y/é.png".to_owned(), odd.clone()),
    ];
    store.put_many("clip", &recs).await.unwrap();
    let want = keys(&["x:y/é.png", "missing", "a.jpg", "dir/b c.jpg", "a.jpg"]);
    let got = store.get_many("clip", &want).await.unwrap();
    assert_eq!(got.len(), 5);
    assert_eq!(got[0].as_ref().unwrap().encode(), odd.encode());
    assert!(got[1].is_none());
    assert_eq!(got[2].as_ref(), Some(&record(1, 512)));
    assert_eq!(got[3].as_ref(), Some(&record(2, 512)));
    assert_eq!(got[4].as_ref(), Some(&record(1, 512)));

    // Overwrite replaces.
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(9, 512))])
        .await
        .unwrap();
    let got = store.get_many("clip", &keys(&["a.jpg"])).await.unwrap();
    assert_eq!(got[0].as_ref(), Some(&record(9, 512)));
}

async fn large_batch(store: &dyn FeatureStore) {
    let recs: Vec<(String, FeatureRecord)> = (0..1000)
        .map(|i| (format!("album/{i:04}.jpg"), record(i, 512)))
        .collect();
    store.put_many("clip", &recs).await.unwrap();
    let ks: Vec<String> = recs.iter().rev().map(|(k, _)| k.clone()).collect();
    let got = store.get_many("clip", &ks).await.unwrap();
    for (g, (_, r)) in got.iter().zip(recs.iter().rev()) {
        assert_eq!(g.as_ref(), Some(r));
    }
}

async fn models_are_isolated(store: &dyn FeatureStore) {
    store
        .put_many("vit-b32", &[("a.jpg".to_owned(), record(1, 512))])
        .await
        .unwrap();
    store
        .put_many("vit-l14", &[("a.jpg".to_owned(), record(2, 768))])
        .await
        .unwrap();
    // Model identities that differ only around ':' must not alias either.
    store
        .put_many("m:x", &[("y".to_owned(), record(3, 4))])
        .await
        .unwrap();
    let k = keys(&["a.jpg"]);
    assert_eq!(
        store.get_many("vit-b32", &k).await.unwrap()[0],
        Some(record(1, 512))
    );
    assert_eq!(
        store.get_many("vit-l14", &k).await.unwrap()[0],
        Some(record(2, 768))
    );
    assert_eq!(store.get_many("other", &k).await.unwrap()[0], None);
    assert_eq!(store.get_many("m", &keys(&["x:y"])).await.unwrap()[0], None);
    assert_eq!(
        store.get_many("m:x", &keys(&["y"])).await.unwrap()[0],
        Some(record(3, 4))
    );
    // Blobs and records live in separate namespaces.
    assert_eq!(store.get_blob("vit-b32", "a.jpg").await.unwrap(), None);
}

async fn blobs(store: &dyn FeatureStore) {
    let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    store.put_blob("clip", "prompts/v1", &bytes).await.unwrap();
    assert_eq!(
        store.get_blob("clip", "prompts/v1").await.unwrap(),
        Some(bytes.clone())
    );
    assert_eq!(store.get_blob("other", "prompts/v1").await.unwrap(), None);
    store.put_blob("clip", "prompts/v1", b"new").await.unwrap();
    assert_eq!(
        store.get_blob("clip", "prompts/v1").await.unwrap(),
        Some(b"new".to_vec())
    );
    store.put_blob("clip", "empty", b"").await.unwrap();
    assert_eq!(store.get_blob("clip", "empty").await.unwrap(), Some(vec![]));
    // A blob name never reads as a record.
    assert_eq!(
        store
            .get_many("clip", &keys(&["prompts/v1"]))
            .await
            .unwrap()[0],
        None
    );
}

async fn ttl_expiry(store: &dyn FeatureStore) {
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(1, 8))])
        .await
        .unwrap();
    store.put_blob("clip", "b", b"blob").await.unwrap();
    let k = keys(&["a.jpg"]);
    assert_eq!(
        store.get_many("clip", &k).await.unwrap()[0],
        Some(record(1, 8))
    );
    assert_eq!(
        store.get_blob("clip", "b").await.unwrap(),
        Some(b"blob".to_vec())
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(store.get_many("clip", &k).await.unwrap()[0], None);
    assert_eq!(store.get_blob("clip", "b").await.unwrap(), None);
    // Writing again revives the entry with a fresh TTL.
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(2, 8))])
        .await
        .unwrap();
    assert_eq!(
        store.get_many("clip", &k).await.unwrap()[0],
        Some(record(2, 8))
    );
}

/// A fresh store answers its health ping.
async fn ping_answers(store: &dyn FeatureStore) {
    store.ping().await.unwrap();
}

/// Runs each named suite function, and the TTL test, against one backend.
macro_rules! suite {
    ($backend:ident, $harness:ident: $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let h = super::$harness(None).await;
                    super::$name(h.store.as_ref()).await;
                }
            )*
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ttl_expiry() {
                let h = super::$harness(Some(std::time::Duration::from_secs(1))).await;
                super::ttl_expiry(h.store.as_ref()).await;
            }
        }
    };
}

/// Runs each named suite function against every backend.
macro_rules! every_backend {
    ($($name:ident),* $(,)?) => {
        suite!(redb_backend, redb_harness: $($name),*);
        suite!(memory_backend, memory_harness: $($name),*);
        suite!(redis_backend, redis_harness: $($name),*);
    };
}

every_backend!(
    ping_answers,
    missing_is_none,
    roundtrip_preserves_order_and_bytes,
    large_batch,
    models_are_isolated,
    blobs,
);

// ---------------------------------------------------------------------------
// Embedded backend specifics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet is created.
    let path = dir.path().join("nested/cache/features.redb");
    let spec = path.to_str().unwrap().to_owned();
    {
        let store = open_store(&spec, None).await.unwrap();
        assert_eq!(store.describe(), format!("redb:{spec}"));
        store
            .put_many("clip", &[("a.jpg".to_owned(), record(1, 512))])
            .await
            .unwrap();
        store.put_blob("clip", "p", b"prompt-cache").await.unwrap();
        // No flush: a returned put is durable.
    }
    let store = open_store(&spec, None).await.unwrap();
    let got = store.get_many("clip", &keys(&["a.jpg"])).await.unwrap();
    assert_eq!(got[0], Some(record(1, 512)));
    assert_eq!(
        store.get_blob("clip", "p").await.unwrap(),
        Some(b"prompt-cache".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_second_open_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("f.redb");
    let _first = RedbStore::open(&spec, None).await.unwrap();
    let second = RedbStore::open(&spec, None).await;
    assert!(matches!(second, Err(StoreError::Redb { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_purge_removes_only_expired() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.redb");
    {
        let short = RedbStore::open(&path, Some(Duration::from_millis(200)))
            .await
            .unwrap();
        short
            .put_many("m", &[("old".to_owned(), record(1, 4))])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let store = RedbStore::open(&path, None).await.unwrap();
    store
        .put_many("m", &[("new".to_owned(), record(2, 4))])
        .await
        .unwrap();
    assert_eq!(store.purge_expired().await.unwrap(), 1);
    let got = store.get_many("m", &keys(&["old", "new"])).await.unwrap();
    assert_eq!(got, vec![None, Some(record(2, 4))]);
}

#[tokio::test]
async fn empty_spec_is_rejected() {
    assert!(matches!(
        open_store("  ", None).await,
        Err(StoreError::InvalidSpec { .. })
    ));
}

// ---------------------------------------------------------------------------
// Redis backend specifics
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_undecodable_value_reads_as_missing() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), None).await.unwrap();
    assert_eq!(
        store.describe(),
        format!("redis://127.0.0.1:{}/0", server.port)
    );
    // Documented layout: ongi:v1:{model}:{key}.
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("ongi:v1:clip:bad.jpg")
        .arg(b"\x09garbage".as_slice())
        .query_async(&mut conn)
        .await
        .unwrap();
    store
        .put_many("clip", &[("good.jpg".to_owned(), record(1, 8))])
        .await
        .unwrap();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("ongi:v1:clip:good.jpg")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, Some(record(1, 8).encode()));
    let got = store
        .get_many("clip", &keys(&["bad.jpg", "good.jpg"]))
        .await
        .unwrap();
    assert_eq!(got, vec![None, Some(record(1, 8))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ttl_is_set_on_the_server() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), Some(Duration::from_secs(100)))
        .await
        .unwrap();
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(1, 8))])
        .await
        .unwrap();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("ongi:v1:clip:a.jpg")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((90_000..=100_000).contains(&pttl), "PTTL {pttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_fast_and_recovers() {
    let mut server = RedisServer::start();
    let store = open_store(&server.url(), None).await.unwrap();
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(1, 8))])
        .await
        .unwrap();

    server.kill();
    let k = keys(&["a.jpg"]);
    for _ in 0..3 {
        let t = Instant::now();
        let res = store.get_many("clip", &k).await;
        assert!(res.is_err(), "a dead Redis must be an error, got {res:?}");
        assert!(
            t.elapsed() < Duration::from_secs(4),
            "failing took {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert!(store
            .put_many("clip", &[("b.jpg".to_owned(), record(2, 8))])
            .await
            .is_err());
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    // A fresh (empty) server on the same port: the store reconnects by itself.
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store
            .put_many("clip", &[("c.jpg".to_owned(), record(3, 8))])
            .await
        {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not reconnected yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not reconnect within 15 s: {e}"),
        }
    }
    let got = store
        .get_many("clip", &keys(&["c.jpg", "a.jpg"]))
        .await
        .unwrap();
    assert_eq!(got, vec![Some(record(3, 8)), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_at_open_fails_within_seconds() {
    let port = free_port();
    let t = Instant::now();
    let res = open_store(&format!("redis://127.0.0.1:{port}/0"), None).await;
    let err = match res {
        Err(e) => e,
        Ok(_) => panic!("nothing listens on port {port}"),
    };
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
}

#[tokio::test]
async fn redis_credentials_never_reach_errors_or_descriptions() {
    let port = free_port();
    let res = open_store(&format!("redis://user:s3cret@127.0.0.1:{port}/2"), None).await;
    let Err(err) = res else {
        panic!("nothing listens on port {port}")
    };
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}/2")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_server_times_out_instead_of_hanging() {
    let server = RedisServer::start();
    let store = open_store(&server.url(), None).await.unwrap();
    store
        .put_many("clip", &[("a.jpg".to_owned(), record(1, 8))])
        .await
        .unwrap();
    // A stopped process keeps its socket open but never answers.
    server.signal("STOP");
    let t = Instant::now();
    let res = store.get_many("clip", &keys(&["a.jpg"])).await;
    let waited = t.elapsed();
    server.signal("CONT");
    assert!(res.is_err(), "a hung Redis must be an error, got {res:?}");
    assert!(waited < Duration::from_secs(4), "waited {waited:?}");

    // Once the server answers again, calls succeed (possibly after a reconnect).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.get_many("clip", &keys(&["a.jpg"])).await {
            Ok(got) => {
                assert_eq!(got, vec![Some(record(1, 8))]);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not recovered yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("store did not recover within 15 s: {e}"),
        }
    }
}
