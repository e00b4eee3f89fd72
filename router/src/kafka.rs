//! The Kafka door: album jobs consumed from `<prefix><task>.request` and
//! answered on `<prefix><task>.response`, as the app's backend exchanges them.
//!
//! A job is answered by the same HTTP app the server listens with, called
//! in-process: one pipeline (batcher, store, analysis) and two doors, so a
//! job's `statusCode` and `body` are exactly what the route would answer.
//! Jobs polled together are answered concurrently, so their photos share
//! inference batches as concurrent HTTP requests do.
//!
//! Exactly once (the default): answers are produced in a transaction that
//! also commits the consumed offsets (`send_offsets_to_transaction`), read
//! back by `read_committed` consumers; a failed transaction is aborted and
//! the batch consumed again. With `--kafka-transactions off` the offsets are
//! committed after the answers are acknowledged: at least once.
//!
//! librdkafka (through `rdkafka`) is the client: it implements consumer
//! groups and the transactional producer; its build is vendored.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::http::Request;
use axum::Router;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{json, Map, Value};
use tower::ServiceExt;

/// The album tasks served over Kafka: topic name part and the route that answers.
pub const TASKS: [(&str, &str); 6] = [
    ("embedding", "/api/albums/embedding"),
    ("duplicate", "/api/albums/duplicates"),
    ("quality", "/api/albums/quality"),
    ("category", "/api/albums/categories"),
    ("score", "/api/albums/score"),
    ("people", "/api/albums/people"),
];

/// How long a librdkafka call on the transaction path may block.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest answer body read back from the in-process app.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Exactly-once or at-least-once delivery.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// Kafka flags of `ongi serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`host:port,...`): also serve album jobs from Kafka.
    #[arg(long = "kafka", env = "ONGI_KAFKA_BROKERS")]
    pub brokers: Option<String>,
    /// Prefix of the request and response topics.
    #[arg(long, env = "ONGI_KAFKA_TOPIC_PREFIX", default_value = "album.ai.")]
    pub kafka_topic_prefix: String,
    /// Consumer group of each task, `task=group` (e.g. `embedding=ai-embedding`);
    /// a task not named uses `ongi-<task>`.
    #[arg(long = "kafka-group", env = "ONGI_KAFKA_GROUPS", value_delimiter = ',')]
    pub kafka_groups: Vec<String>,
    /// Client id the brokers see.
    #[arg(long, env = "ONGI_KAFKA_CLIENT_ID", default_value = "ongi")]
    pub kafka_client_id: String,
    /// Transactional, exactly-once answers (`off`: at least once).
    #[arg(
        long,
        env = "ONGI_KAFKA_TRANSACTIONS",
        value_enum,
        default_value = "on"
    )]
    pub kafka_transactions: OnOff,
    /// Further librdkafka settings, `key=value` (e.g. `security.protocol=SASL_SSL`).
    #[arg(
        long = "kafka-option",
        env = "ONGI_KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_options: Vec<String>,
    /// Most jobs answered together from one poll.
    #[arg(long, env = "ONGI_KAFKA_MAX_BATCH", default_value_t = 64)]
    pub kafka_max_batch: usize,
    /// How long to wait for more jobs after the first of a batch, in ms.
    #[arg(long, env = "ONGI_KAFKA_BATCH_WAIT_MS", default_value_t = 20)]
    pub kafka_batch_wait_ms: u64,
}

impl KafkaArgs {
    fn group(&self, task: &str) -> Result<String> {
        for entry in &self.kafka_groups {
            let Some((t, g)) = entry.split_once('=') else {
                bail!("--kafka-group {entry:?}: expected task=group");
            };
            if !TASKS.iter().any(|(name, _)| *name == t) {
                bail!("--kafka-group {entry:?}: unknown task {t:?}");
            }
            if t == task {
                return Ok(g.to_string());
            }
        }
        Ok(format!("ongi-{task}"))
    }

    fn config(&self, brokers: &str) -> Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", brokers)
            .set("client.id", &self.kafka_client_id);
        for option in &self.kafka_options {
            let Some((k, v)) = option.split_once('=') else {
                bail!("--kafka-option {option:?}: expected key=value");
            };
            config.set(k.trim(), v.trim());
        }
        Ok(config)
    }
}

/// The answer message to one job: `{"taskId", "albumId", "statusCode",
/// "body"}`, the body being what `route` answers to the job's fields. A job
/// that is not a JSON object with a string `taskId` and an integer
/// `albumId` gets a 400 (`taskId` "unknown", `albumId` -1 where absent).
pub async fn answer(app: &Router, route: &str, payload: Option<&[u8]>) -> Value {
    let parsed: Result<Map<String, Value>, String> = match payload {
        None => Err("empty message".into()),
        Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the message is not a JSON object".into()),
            Err(e) => Err(format!("the message is not JSON: {e}")),
        },
    };
    let mut fields = match parsed {
        Ok(map) => map,
        Err(reason) => return invalid("unknown".into(), -1, reason),
    };
    let task_id = fields.remove("taskId");
    let album_id = fields.remove("albumId");
    let shown_id = task_id
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_string();
    let shown_album = album_id.as_ref().and_then(Value::as_i64).unwrap_or(-1);
    match (&task_id, &album_id) {
        (Some(Value::String(_)), Some(a)) if a.is_i64() => {}
        (Some(Value::String(_)), _) => {
            return invalid(shown_id, shown_album, "albumId must be an integer".into())
        }
        _ => return invalid(shown_id, shown_album, "taskId must be a string".into()),
    }
    let (status, body) = match call(app, route, Value::Object(fields)).await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, route, "in-process call failed");
            (
                500,
                json!({"message": "internal_server_error", "data": null}),
            )
        }
    };
    json!({"taskId": shown_id, "albumId": shown_album, "statusCode": status, "body": body})
}

fn invalid(task_id: String, album_id: i64, reason: String) -> Value {
    json!({
        "taskId": task_id,
        "albumId": album_id,
        "statusCode": 400,
        "body": {"message": "invalid_request", "data": reason},
    })
}

/// A worker's state, as `/health/info` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Connecting and joining its consumer group.
    Starting,
    /// Consuming and answering.
    Running,
    /// Stopped (shut down, or failed: the log says why).
    Stopped,
}

/// One task's worker, as `/health/info` reports it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TaskHealth {
    /// The task (`embedding`, `duplicate`, ...).
    pub task: &'static str,
    /// Whether it is answering.
    pub state: WorkerState,
    /// Brokers its consumer is connected to (unknown until the client's
    /// first statistics, a few seconds after start).
    pub brokers_up: Option<usize>,
    /// Jobs waiting in its assigned partitions (unknown until known).
    pub lag: Option<i64>,
}

impl TaskHealth {
    /// A worker not started yet: nothing known.
    fn starting(task: &'static str) -> Self {
        Self {
            task,
            state: WorkerState::Starting,
            brokers_up: None,
            lag: None,
        }
    }
}

/// What the Kafka door tells `/health/info`: each worker's state, and the
/// brokers and lag its consumer's statistics last reported.
#[derive(Debug, Default)]
pub struct KafkaHealth {
    tasks: Mutex<BTreeMap<&'static str, TaskHealth>>,
}

impl KafkaHealth {
    /// Every task's worker, `Starting` before the door has started it.
    pub fn tasks(&self) -> Vec<TaskHealth> {
        let known = self.tasks.lock().map(|t| t.clone()).unwrap_or_default();
        TASKS
            .iter()
            .map(|(task, _)| {
                known
                    .get(task)
                    .cloned()
                    .unwrap_or_else(|| TaskHealth::starting(task))
            })
            .collect()
    }

    /// Why the door is not healthy: a stopped worker, or one whose consumer
    /// reaches no broker.
    pub fn problems(&self) -> Vec<String> {
        self.tasks()
            .iter()
            .filter_map(|t| match (t.state, t.brokers_up) {
                (WorkerState::Stopped, _) => Some(format!("Kafka {} worker stopped", t.task)),
                (_, Some(0)) => Some(format!("Kafka {} worker reaches no broker", t.task)),
                _ => None,
            })
            .collect()
    }

    fn update(&self, task: &'static str, change: impl FnOnce(&mut TaskHealth)) {
        if let Ok(mut tasks) = self.tasks.lock() {
            change(
                tasks
                    .entry(task)
                    .or_insert_with(|| TaskHealth::starting(task)),
            );
        }
    }
}

/// The consumer's librdkafka callbacks: statistics become the lag gauge and
/// the health's broker count; client errors go to the log (librdkafka's
/// default prints them through another logger).
struct Observer {
    task: &'static str,
    health: Arc<KafkaHealth>,
}

impl ClientContext for Observer {
    fn stats(&self, statistics: Statistics) {
        // Brokers by node id: the bootstrap entries (id -1) repeat them.
        let mut up = std::collections::BTreeSet::new();
        for broker in statistics.brokers.values() {
            if broker.nodeid >= 0 && broker.state == "UP" {
                up.insert(broker.nodeid);
            }
        }
        // Assigned partitions report their lag; -1 means not yet known.
        let lag = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
            .map(|p| p.consumer_lag)
            .reduce(|a, b| a + b);
        if let Some(lag) = lag {
            metrics::gauge!("ongi_kafka_lag", "task" => self.task).set(lag as f64);
        }
        self.health.update(self.task, |t| {
            t.brokers_up = Some(up.len());
            t.lag = lag;
        });
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(task = self.task, error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for Observer {}

/// POSTs `body` to `route` on the in-process app: (status, answer body).
pub async fn call(app: &Router, route: &str, body: Value) -> Result<(u16, Value)> {
    let body = body.to_string();
    // The length, as an HTTP client sends it: the size limit answers as it
    // does over HTTP.
    let request = Request::post(route)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(Body::from(body))?;
    let response = app.clone().oneshot(request).await?;
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES).await?;
    Ok((status, serde_json::from_slice(&bytes)?))
}

/// Runs one worker per task until `shutdown` resolves (or a worker fails).
/// On shutdown each worker finishes the batch it is answering, so no
/// transaction is left open, and stops before taking another.
pub async fn serve(
    app: Router,
    args: KafkaArgs,
    health: Arc<KafkaHealth>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let brokers = args.brokers.clone().context("--kafka is not set")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for (task, route) in TASKS {
        let worker = Worker::connect(&args, &brokers, task, route, health.clone())?;
        let (app, stop, health) = (app.clone(), stop_rx.clone(), health.clone());
        workers.spawn(async move {
            health.update(task, |t| t.state = WorkerState::Running);
            let result = worker.run(app, stop).await;
            health.update(task, |t| t.state = WorkerState::Stopped);
            if let Err(e) = &result {
                tracing::error!(task, error = %crate::describe(e), "Kafka worker stopped");
            }
            result
        });
    }
    tracing::info!(
        brokers = %brokers,
        prefix = %args.kafka_topic_prefix,
        transactions = ?args.kafka_transactions,
        "Kafka workers started"
    );
    let failed = tokio::select! {
        () = shutdown => None,
        Some(done) = workers.join_next() => Some(done),
    };
    let _ = stop_tx.send(true);
    let mut result = match failed {
        Some(done) => done
            .context("a Kafka worker panicked")?
            .context("a Kafka worker stopped"),
        None => Ok(()),
    };
    while let Some(done) = workers.join_next().await {
        let finished = done
            .context("a Kafka worker panicked")
            .and_then(|r| r.context("a Kafka worker stopped"));
        if result.is_ok() {
            result = finished;
        }
    }
    result
}

/// Whether `e` leaves the transactional producer unusable (fenced, or a
/// fatal idempotence error).
fn is_fatal(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rdkafka::error::KafkaError>(),
            Some(rdkafka::error::KafkaError::Transaction(t)) if t.is_fatal()
        )
    })
}

/// A random 64-bit value (std's randomly keyed hasher; no RNG crate for one id).
fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.finish()
}

/// One task's consumer and producer.
struct Worker {
    task: &'static str,
    route: &'static str,
    response_topic: String,
    consumer: StreamConsumer<Observer>,
    producer: FutureProducer,
    transactional: bool,
    max_batch: usize,
    batch_wait: Duration,
}

impl Worker {
    fn connect(
        args: &KafkaArgs,
        brokers: &str,
        task: &'static str,
        route: &'static str,
        health: Arc<KafkaHealth>,
    ) -> Result<Self> {
        let request_topic = format!("{}{task}.request", args.kafka_topic_prefix);
        let group = args.group(task)?;
        let consumer: StreamConsumer<Observer> = args
            .config(brokers)?
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // Statistics feed the lag metric and the health answer.
            .set("statistics.interval.ms", "5000")
            .create_with_context(Observer { task, health })
            .with_context(|| format!("Kafka consumer for {request_topic}"))?;
        consumer
            .subscribe(&[&request_topic])
            .with_context(|| format!("subscribing to {request_topic}"))?;
        let transactional = args.kafka_transactions == OnOff::On;
        let mut producer_config = args.config(brokers)?;
        producer_config
            .set("acks", "all")
            .set("enable.idempotence", "true");
        if transactional {
            // A unique id per producer: zombie workers are fenced through the
            // consumer group's generation, which the offsets sent with each
            // transaction carry, so ids need not be stable across restarts
            // (and must not collide across hosts).
            producer_config.set(
                "transactional.id",
                format!("{group}-{task}-{:016x}", unique()),
            );
        }
        let producer: FutureProducer = producer_config
            .create()
            .with_context(|| format!("Kafka producer for {task} answers"))?;
        if transactional {
            producer
                .init_transactions(TXN_TIMEOUT)
                .with_context(|| format!("initialising transactions for {task} answers"))?;
        }
        Ok(Self {
            task,
            route,
            response_topic: format!("{}{task}.response", args.kafka_topic_prefix),
            consumer,
            producer,
            transactional,
            max_batch: args.kafka_max_batch.max(1),
            batch_wait: Duration::from_millis(args.kafka_batch_wait_ms),
        })
    }

    async fn run(self, app: Router, mut stop: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        loop {
            // Stop only between batches, never inside a transaction.
            let batch = tokio::select! {
                batch = self.next_batch() => batch?,
                _ = stop.wait_for(|stop| *stop) => return Ok(()),
            };
            let answers = futures_util::future::join_all(
                batch.iter().map(|m| answer(&app, self.route, m.payload())),
            )
            .await;
            metrics::counter!("ongi_kafka_jobs_total", "task" => self.task)
                .increment(batch.len() as u64);
            for a in &answers {
                let status = a["statusCode"].as_u64().unwrap_or(0).to_string();
                metrics::counter!("ongi_kafka_answers_total", "task" => self.task, "status" => status).increment(1);
            }
            if let Err(e) = self.deliver(&batch, &answers).await {
                metrics::counter!("ongi_kafka_aborts_total", "task" => self.task).increment(1);
                if is_fatal(&e) {
                    // Fenced by a newer producer, or otherwise unusable: this
                    // worker's jobs now belong to another member of the group.
                    return Err(e.context(format!("{} answers: fatal producer error", self.task)));
                }
                tracing::warn!(task = self.task, error = %e, "answers not committed; the batch will be consumed again");
                self.rewind(&batch)?;
                // A broker outage fails every attempt: do not spin on it.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// The first message, then whatever else arrives within the batch window.
    async fn next_batch(&self) -> Result<Vec<OwnedMessage>> {
        let first = loop {
            if let Some(message) = self.receive().await? {
                break message;
            }
        };
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + self.batch_wait;
        while batch.len() < self.max_batch {
            match tokio::time::timeout_at(until, self.receive()).await {
                Ok(Ok(Some(message))) => batch.push(message),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// The next message; `None` after a consumer error the client recovers
    /// from (a topic not created yet, a partition moving), which is logged:
    /// only a fatal one stops the worker.
    async fn receive(&self) -> Result<Option<OwnedMessage>> {
        match self.consumer.recv().await {
            Ok(message) => Ok(Some(message.detach())),
            Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                Err(anyhow::Error::new(e).context("Kafka receive"))
            }
            Err(e) => {
                metrics::counter!("ongi_kafka_consumer_errors_total", "task" => self.task)
                    .increment(1);
                tracing::warn!(task = self.task, error = %e, "Kafka receive failed; retrying");
                // The same error repeats until the cause is gone: do not spin.
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(None)
            }
        }
    }

    /// Offsets to commit: one past the last message of each partition.
    fn offsets(&self, batch: &[OwnedMessage]) -> Result<TopicPartitionList> {
        let mut next: HashMap<(String, i32), i64> = HashMap::new();
        for m in batch {
            let e = next
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            list.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        Ok(list)
    }

    async fn deliver(&self, batch: &[OwnedMessage], answers: &[Value]) -> Result<()> {
        let offsets = self.offsets(batch)?;
        if self.transactional {
            tokio::task::block_in_place(|| self.producer.begin_transaction())?;
        }
        let sent = self.send_all(batch, answers).await;
        if self.transactional {
            let committed = sent.and_then(|()| {
                tokio::task::block_in_place(|| {
                    let group = self
                        .consumer
                        .group_metadata()
                        .context("the consumer has no group metadata")?;
                    self.producer
                        .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)?;
                    self.producer.commit_transaction(TXN_TIMEOUT)?;
                    anyhow::Ok(())
                })
            });
            if let Err(e) = committed {
                tokio::task::block_in_place(|| self.producer.abort_transaction(TXN_TIMEOUT))
                    .context("aborting the transaction")?;
                return Err(e);
            }
            Ok(())
        } else {
            sent?;
            self.consumer.commit(&offsets, CommitMode::Sync)?;
            Ok(())
        }
    }

    async fn send_all(&self, batch: &[OwnedMessage], answers: &[Value]) -> Result<()> {
        let payloads: Vec<String> = answers.iter().map(Value::to_string).collect();
        let sends = batch.iter().zip(&payloads).map(|(m, payload)| {
            let mut record = FutureRecord::to(&self.response_topic).payload(payload.as_str());
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            self.producer.send(record, TXN_TIMEOUT)
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(e, _)| e).context("producing an answer")?;
        }
        Ok(())
    }

    /// Consumes the batch again from its first message in each partition.
    fn rewind(&self, batch: &[OwnedMessage]) -> Result<()> {
        let mut first: HashMap<(String, i32), i64> = HashMap::new();
        for m in batch {
            let e = first
                .entry((m.topic().to_string(), m.partition()))
                .or_insert(i64::MAX);
            *e = (*e).min(m.offset());
        }
        for ((topic, partition), offset) in first {
            self.consumer
                .seek(
                    &topic,
                    partition,
                    Offset::Offset(offset),
                    Duration::from_secs(10),
                )
                .with_context(|| format!("rewinding {topic}/{partition}"))?;
        }
        Ok(())
    }
}
