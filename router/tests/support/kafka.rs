//! Kafka test plumbing: a tansu broker process, topic creation, a job
//! producer and a reader of answers (librdkafka clients, as the backend's).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;

use super::OngiServer;

/// The tansu release the tests were written against (`scripts/test-deps`
/// installs it).
pub const TANSU_VERSION: &str = "0.6.0";

/// Where `scripts/test-deps` installs tansu: `$ONGI_TANSU`, else the
/// versioned folder under the user's cache.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ONGI_TANSU") {
        return PathBuf::from(path);
    }
    ongi_test_support::cache_dir()
        .join("tools")
        .join(format!("tansu-{TANSU_VERSION}"))
        .join("bin/tansu")
}

/// A tansu broker (a Kafka-protocol broker written in Rust) in memory, on
/// a free loopback port; killed on drop.
pub struct Tansu {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tansu {
    pub fn start() -> Self {
        let binary = tansu_binary();
        assert!(
            binary.exists(),
            "tansu is not installed at {}: run scripts/test-deps (it builds tansu {TANSU_VERSION} with cargo install)",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tansu.log");
        let port = super::free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&binary)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let tansu = Self {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen; log:\n{}",
                tansu.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    /// `bootstrap.servers` for clients.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The request and response topics of every task, `partitions` each.
pub async fn create_album_topics(brokers: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let names: Vec<String> = ongi_router::kafka::TASKS
        .iter()
        .flat_map(|(task, _)| ["request", "response"].map(|side| format!("album.ai.{task}.{side}")))
        .collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap();
    for result in results {
        result.unwrap();
    }
}

/// A producer of jobs that accepts values up to 16 MB.
pub fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "16000000")
        .create()
        .unwrap()
}

/// Sends one job to `album.ai.<task>.request`.
pub async fn send(producer: &FutureProducer, task: &str, key: &str, payload: &[u8]) {
    let topic = format!("album.ai.{task}.request");
    producer
        .send(
            FutureRecord::to(&topic).key(key).payload(payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// A `read_committed` reader of every response topic, as the backend reads them.
pub fn reader(brokers: &str) -> StreamConsumer {
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "backend")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let topics: Vec<String> = ongi_router::kafka::TASKS
        .iter()
        .map(|(t, _)| format!("album.ai.{t}.response"))
        .collect();
    reader
        .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
        .unwrap();
    reader
}

/// One answer read: (topic, key, value).
pub type Answer = (String, Option<String>, Value);

/// Answers read until every id in `want` is in (or `within` passes), then
/// two seconds more to catch repeats.
pub async fn read_answers(
    consumer: &StreamConsumer,
    want: &[&str],
    within: Duration,
) -> Vec<Answer> {
    let mut got: Vec<Answer> = Vec::new();
    let deadline = Instant::now() + within;
    let mut settle: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline || settle.is_some_and(|s| now > s) {
            break;
        }
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            let value: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            got.push((m.topic().to_string(), key, value));
        }
        if settle.is_none()
            && want
                .iter()
                .all(|w| got.iter().any(|(_, _, v)| v["taskId"] == *w))
        {
            settle = Some(Instant::now() + Duration::from_secs(2));
        }
    }
    got
}

/// The answers to task `id`.
pub fn by_id(answers: &[Answer], id: &str) -> Vec<Value> {
    answers
        .iter()
        .filter(|(_, _, v)| v["taskId"] == id)
        .map(|(_, _, v)| v.clone())
        .collect()
}

/// The route that answers `task`.
pub fn route_of(task: &str) -> &'static str {
    ongi_router::kafka::TASKS
        .iter()
        .find(|(t, _)| *t == task)
        .map(|(_, r)| *r)
        .unwrap()
}

/// Each task id answered, every answer to it the same: id → that answer.
pub fn answered_once_or_same(answers: &[Answer]) -> BTreeMap<String, Value> {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for (_, _, v) in answers {
        let id = v["taskId"].as_str().unwrap().to_string();
        if let Some(first) = seen.get(&id) {
            assert_eq!(first, v, "task {id} answered twice, differently");
        } else {
            seen.insert(id, v.clone());
        }
    }
    seen
}

/// `ongi serve --kafka BROKERS` (HTTP on too) over `photos` and `store`
/// (a redb file or a Redis URL), with `extra` flags.
pub fn kafka_server(photos: &Path, store: &str, brokers: &str, extra: &[&str]) -> OngiServer {
    let mut args = vec!["--kafka", brokers];
    args.extend(extra);
    OngiServer::start_over(photos, Path::new(store), &args, None)
}

/// Waits until `/health/info` shows every Kafka worker running and
/// connected (the client's statistics arrive every 5 s); the health answer.
pub async fn wait_kafka_healthy(server: &OngiServer) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = server.get("/health/info").await;
        let health: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let workers = health["kafka"].as_array().cloned().unwrap_or_default();
        let ready = status == 200
            && workers.len() == ongi_router::kafka::TASKS.len()
            && workers
                .iter()
                .all(|w| w["state"] == "running" && w["brokers_up"].as_u64() >= Some(1));
        if ready {
            return health;
        }
        assert!(
            Instant::now() < deadline,
            "Kafka workers not healthy: {status} {text}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Distinct small photos `p000.jpg`, `p001.jpg`, … in a new folder.
pub fn distinct_photos(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            let v = (x * 5 + y * 3 + i as u32 * 37) as u8;
            image::Rgb([v, (i * 11) as u8, v.wrapping_mul(3)])
        });
        img.save(dir.path().join(format!("p{i:03}.jpg"))).unwrap();
    }
    dir
}
