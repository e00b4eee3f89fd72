//! The Kafka door against librdkafka's own mock cluster (a real Kafka-protocol
//! broker inside the test process, with the transactional protocol): the
//! backend's message flow for an album, each answer equal to the HTTP
//! route's, malformed jobs answered 400, and every job answered exactly once
//! as a `read_committed` reader sees it.

mod support;

use ongi_test_support::redis as redis_support;

use std::time::Duration;

use rdkafka::consumer::StreamConsumer;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureProducer;
use serde_json::{json, Value};

use support::kafka::{by_id, route_of, Answer};
use support::photo_names;

/// Answers (committed only, as this broker shows them) until `want` are in.
async fn read_answers(consumer: &StreamConsumer, want: &[&str]) -> Vec<Answer> {
    support::kafka::read_answers(consumer, want, Duration::from_secs(90)).await
}

/// What the HTTP route answers to `body`: (status, body).
async fn http_answer(app: &axum::Router, route: &str, body: &Value) -> (u64, Value) {
    let (status, body) = ongi_router::kafka::call(app, route, body.clone())
        .await
        .unwrap();
    (u64::from(status), body)
}

/// Three mock brokers holding every album topic, `partitions` each.
fn mock_cluster(
    partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(3).unwrap();
    for (task, _) in ongi_router::kafka::TASKS {
        for side in ["request", "response"] {
            cluster
                .create_topic(&format!("album.ai.{task}.{side}"), partitions, 1)
                .unwrap();
        }
    }
    cluster
}

/// A mock cluster with the album topics, the app, its Kafka door running,
/// a producer of jobs and a `read_committed` reader of answers.
struct Harness {
    app: ongi_router::server::App,
    producer: FutureProducer,
    reader: StreamConsumer,
    stop: tokio::sync::oneshot::Sender<()>,
    door: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    /// Last: fields drop in order, and clients closing against a cluster
    /// already gone wait out their session timeouts.
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl Harness {
    async fn start() -> Self {
        let cluster = mock_cluster(2);
        let brokers = cluster.bootstrap_servers();
        let (app, args, dirs) = support::in_process_app(&["--kafka", &brokers]).await;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let door = tokio::spawn(ongi_router::kafka::serve(
            app.internal.clone(),
            args.kafka.clone(),
            app.kafka.clone().unwrap(),
            async {
                let _ = stop_rx.await;
            },
        ));
        let producer = support::kafka::producer(&brokers);
        let reader = support::kafka::reader(&brokers);
        Self {
            cluster,
            app,
            producer,
            reader,
            stop,
            door,
            _dirs: dirs,
        }
    }

    async fn send(&self, task: &str, key: &str, payload: String) {
        support::kafka::send(&self.producer, task, key, payload.as_bytes()).await;
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.door.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn album_jobs_are_answered_once_as_the_routes_answer() {
    let h = Harness::start().await;
    let (app, reader) = (&h.app, &h.reader);
    let send = |task: &'static str, key: &'static str, payload: String| h.send(task, key, payload);

    // The album: every fixture photo plus the corrupt one.
    let mut images = photo_names();
    images.push("corrupt.jpg".into());
    send(
        "embedding",
        "album-1",
        json!({"taskId": "t1", "albumId": 1, "images": images}).to_string(),
    )
    .await;
    // Malformed jobs: each still answered.
    send("embedding", "m1", "not json".into()).await;
    send(
        "embedding",
        "m2",
        json!({"albumId": 2, "images": ["a.jpg"]}).to_string(),
    )
    .await;
    send(
        "embedding",
        "m3",
        json!({"taskId": "t3", "albumId": "three", "images": []}).to_string(),
    )
    .await;
    send(
        "embedding",
        "m4",
        json!({"taskId": "t4", "albumId": 4, "images": []}).to_string(),
    )
    .await;
    let first = read_answers(reader, &["t1", "t3", "t4"]).await;
    let t1 = by_id(&first, "t1");
    assert_eq!(t1.len(), 1, "t1 answered {} times: {first:?}", t1.len());
    assert_eq!(
        t1[0],
        json!({"taskId": "t1", "albumId": 1, "statusCode": 201, "body": {"message": "success", "data": ["corrupt.jpg"]}})
    );
    let (_, key, _) = first.iter().find(|(_, _, v)| v["taskId"] == "t1").unwrap();
    assert_eq!(key.as_deref(), Some("album-1"), "the key passes through");
    let unknown = by_id(&first, "unknown");
    assert_eq!(unknown.len(), 2, "{first:?}");
    assert!(unknown
        .iter()
        .all(|v| v["statusCode"] == 400 && v["body"]["message"] == "invalid_request"));
    assert!(unknown.iter().any(|v| v["albumId"] == 2), "{unknown:?}");
    assert_eq!(by_id(&first, "t3")[0]["statusCode"], 400);
    assert_eq!(
        by_id(&first, "t4")[0]["body"],
        json!({"message": "invalid_request", "data": "images must not be empty"})
    );

    // The backend's next jobs, each answered as its route answers.
    let good: Vec<String> = photo_names();
    let jobs = [
        ("quality", "t5", json!({"images": good})),
        ("duplicate", "t6", json!({"images": good})),
        (
            "category",
            "t7",
            json!({"images": good, "concepts": ["travel"]}),
        ),
        ("people", "t9", json!({"images": good})),
    ];
    for (task, id, fields) in &jobs {
        let mut message = fields.clone();
        message["taskId"] = json!(id);
        message["albumId"] = json!(1);
        send(task, "album-1", message.to_string()).await;
    }
    let second = read_answers(reader, &["t5", "t6", "t7", "t9"]).await;
    for (task, id, fields) in &jobs {
        let (status, body) = http_answer(&app.http, route_of(task), fields).await;
        let answers = by_id(&second, id);
        assert_eq!(answers.len(), 1, "{id} answered {} times", answers.len());
        assert_eq!(
            answers[0],
            json!({"taskId": id, "albumId": 1, "statusCode": status, "body": body}),
            "{task}"
        );
        // No face model here: people is refused with the reason.
        let expected = if *task == "people" { 400 } else { 201 };
        assert_eq!(status, expected, "{task}: {body}");
    }
    // category → score, as the backend chains them.
    let categories = by_id(&second, "t7")[0]["body"]["data"].clone();
    send(
        "score",
        "album-1",
        json!({"taskId": "t8", "albumId": 1, "categories": categories}).to_string(),
    )
    .await;
    let third = read_answers(reader, &["t8"]).await;
    let (status, body) = http_answer(
        &app.http,
        "/api/albums/score",
        &json!({"categories": categories}),
    )
    .await;
    assert_eq!(
        by_id(&third, "t8"),
        vec![json!({"taskId": "t8", "albumId": 1, "statusCode": status, "body": body})]
    );

    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_transaction_is_aborted_and_its_jobs_answered_once() {
    // This test's process-wide recorder: the worker counts its aborts there.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let h = Harness::start().await;
    let one = json!(["landscape_dune.jpg"]);
    h.send(
        "embedding",
        "a",
        json!({"taskId": "warm", "albumId": 1, "images": one}).to_string(),
    )
    .await;
    assert_eq!(
        by_id(&read_answers(&h.reader, &["warm"]).await, "warm").len(),
        1
    );

    // The next transaction cannot add its offsets (an error that leaves the
    // transaction abortable, not the producer fenced): it must be aborted,
    // and the job consumed and answered again.
    h.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::AddOffsetsToTxn,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    h.send(
        "quality",
        "a",
        json!({"taskId": "q", "albumId": 1, "images": one}).to_string(),
    )
    .await;
    let answers = read_answers(&h.reader, &["q"]).await;
    // librdkafka's mock broker answers Fetch with no aborted transactions
    // and the end offset as the last stable one, so a read_committed reader
    // sees the aborted answer here too (Apache Kafka hides it): the aborted
    // answer and the committed one, the same, is what this broker can show.
    let q = by_id(&answers, "q");
    assert_eq!(q.len(), 2, "{answers:?}");
    assert_eq!(q[0], q[1]);
    assert_eq!(q[0]["statusCode"], 201, "{q:?}");
    let text = metrics.render();
    let aborts = text
        .lines()
        .find(|l| l.starts_with("ongi_kafka_aborts_total{task=\"quality\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(aborts, Some(1.0), "{text}");
    // (The mock broker accepts the offsets sent with a transaction but does
    // not store them, so what the retry committed cannot be read back here.)
    h.stop().await;
}

/// Two `ongi serve` processes in one consumer group over one Redis store;
/// one is SIGKILLed mid-run. Every job is answered, the same answer each
/// time it is answered, and the survivor's album answer uses photos only
/// the killed worker embedded.
async fn one_of_two_workers_killed(transactions: &str) {
    const JOBS: usize = 200;
    let cluster = mock_cluster(4);
    let brokers = cluster.bootstrap_servers();
    let redis = redis_support::RedisServer::start();
    let photos = support::kafka::distinct_photos(JOBS);
    // Small batches, and a short session so the group drops the killed
    // member within seconds.
    let flags = [
        "--kafka-transactions",
        transactions,
        "--kafka-max-batch",
        "2",
        "--kafka-option",
        "session.timeout.ms=6000,heartbeat.interval.ms=1000",
    ];
    let start = || support::kafka::kafka_server(photos.path(), &redis.url(), &brokers, &flags);
    let (mut doomed, survivor) = (start(), start());
    support::kafka::wait_kafka_healthy(&doomed).await;
    support::kafka::wait_kafka_healthy(&survivor).await;
    let producer = support::kafka::producer(&brokers);
    let reader = support::kafka::reader(&brokers);

    let ids: Vec<String> = (0..JOBS).map(|i| format!("job-{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let job = json!({"taskId": id, "albumId": i, "images": [format!("p{i:03}.jpg")]});
        support::kafka::send(&producer, "embedding", id, job.to_string().as_bytes()).await;
    }
    // Kill one worker once it has embedded some photos: mid-run.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let embedded_by_doomed = loop {
        let n = doomed.metric("ongi_images_embedded_total").await;
        if n >= 5.0 {
            break n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first worker embedded nothing; log:\n{}",
            doomed.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    doomed.kill();
    let want: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = support::kafka::read_answers(&reader, &want, Duration::from_secs(120)).await;
    let answers = support::kafka::answered_once_or_same(&got);
    let lost: Vec<&&str> = want
        .iter()
        .filter(|id| !answers.contains_key(**id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} jobs never answered: {lost:?}; survivor log:\n{}",
        lost.len(),
        survivor.log()
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            answers[id],
            json!({"taskId": id, "albumId": i, "statusCode": 201, "body": {"message": "success", "data": null}})
        );
    }
    let embedded_by_survivor = survivor.metric("ongi_images_embedded_total").await;
    eprintln!(
        "transactions {transactions}: {} jobs answered, {} answers in all; the killed worker embedded {embedded_by_doomed} photos first, the survivor {embedded_by_survivor}",
        answers.len(),
        got.len()
    );
    assert!(
        embedded_by_survivor < JOBS as f64,
        "the survivor embedded every photo itself ({embedded_by_survivor})"
    );

    // The survivor answers for the whole album from the shared store,
    // photos only the killed worker embedded included, embedding nothing.
    let album: Vec<String> = (0..JOBS).map(|i| format!("p{i:03}.jpg")).collect();
    let job = json!({"taskId": "album", "albumId": 1, "images": album});
    support::kafka::send(&producer, "quality", "album", job.to_string().as_bytes()).await;
    let got = support::kafka::read_answers(&reader, &["album"], Duration::from_secs(60)).await;
    let (status, body) = survivor
        .post(route_of("quality"), &json!({"images": album}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        support::kafka::answered_once_or_same(&got).get("album"),
        Some(&json!({"taskId": "album", "albumId": 1, "statusCode": 201, "body": body}))
    );
    assert_eq!(
        survivor.metric("ongi_images_embedded_total").await,
        embedded_by_survivor,
        "the album answer embeds nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_no_job_at_least_once() {
    one_of_two_workers_killed("off").await;
}

/// With transactions on, the same: no job lost. (Whether each is answered
/// exactly once across the crash this broker cannot show: it neither
/// stores the offsets committed with a transaction nor hides the killed
/// worker's open transaction from `read_committed` readers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_no_job_with_transactions() {
    one_of_two_workers_killed("on").await;
}

/// `GET /health/info` on the in-process app: (status, body).
async fn health(app: &axum::Router) -> (u16, Value) {
    use tower::ServiceExt;
    let request = axum::http::Request::get("/health/info")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Polls the health answer until `ok` holds for it (the client's
/// statistics come every 5 s).
async fn health_until(app: &axum::Router, what: &str, ok: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let (status, body) = health(app).await;
        if ok(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_outage_shows_in_health_and_is_survived() {
    let h = Harness::start().await;
    let healthy = health_until(&h.app.http, "workers up", |status, body| {
        status == 200
            && body["kafka"].as_array().is_some_and(|w| {
                w.iter()
                    .all(|w| w["state"] == "running" && w["brokers_up"].as_u64() >= Some(1))
            })
    })
    .await;
    assert_eq!(
        healthy["kafka"].as_array().unwrap().len(),
        ongi_router::kafka::TASKS.len()
    );
    for broker in 1..=3 {
        h.cluster.broker_down(broker).unwrap();
    }
    let down = health_until(&h.app.http, "outage reported", |status, _| status == 503).await;
    assert_eq!(down["message"], "service_unavailable", "{down}");
    assert!(
        down["data"]
            .as_str()
            .unwrap()
            .contains("Kafka embedding worker reaches no broker"),
        "{down}"
    );
    for broker in 1..=3 {
        h.cluster.broker_up(broker).unwrap();
    }
    health_until(&h.app.http, "reconnected", |status, _| status == 200).await;
    // The workers consume again after the outage.
    let job = json!({"taskId": "after", "albumId": 1, "images": ["landscape_dune.jpg"]});
    h.send("embedding", "a", job.to_string()).await;
    let answers = read_answers(&h.reader, &["after"]).await;
    assert_eq!(
        by_id(&answers, "after")[0]["statusCode"],
        201,
        "{answers:?}"
    );
    h.stop().await;
}

/// A worker whose producer is fenced (a newer producer took over its
/// transactions, as when a zombie of a restarted worker wakes up) stops,
/// health says so, and the door returns the error that stops the server,
/// instead of going on answering jobs that now belong to another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_worker_stops_instead_of_answering() {
    let mut h = Harness::start().await;
    h.cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::AddPartitionsToTxn,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 3],
    );
    let job = json!({"taskId": "z", "albumId": 1, "images": ["landscape_dune.jpg"]});
    h.send("quality", "z", job.to_string()).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), &mut h.door)
        .await
        .expect("the door did not stop after its producer was fenced")
        .unwrap();
    let err = stopped.expect_err("a fenced worker must fail the door");
    let text = format!("{err:#}");
    assert!(text.contains("fatal producer error"), "{text}");
    let (status, body) = health(&h.app.http).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["data"]
            .as_str()
            .unwrap()
            .contains("Kafka quality worker stopped"),
        "{body}"
    );
    // (Its aborted answer would show here: this broker shows aborted
    // records to read_committed readers. None was produced.)
    let answers = support::kafka::read_answers(&h.reader, &["z"], Duration::from_secs(5)).await;
    assert!(
        by_id(&answers, "z").is_empty(),
        "a fenced worker answered: {answers:?}"
    );
}
