//! The Kafka door through the `ongi` binary against tansu, a Kafka-protocol
//! broker in its own process. tansu has no transaction commit (`EndTxn`),
//! so these run with `--kafka-transactions off`: every job is answered at
//! least once, and a repeated answer is the same answer (jobs are
//! idempotent per `taskId`). The transactional path, and workers killed
//! mid-run, are tested against librdkafka's mock cluster (`kafka_mock.rs`):
//! tansu 0.6 keeps a crashed member's partitions assigned to it.

use ongi_test_support::face_models;
mod support;

use std::time::Duration;

use serde_json::json;
use support::kafka::{
    answered_once_or_same, by_id, kafka_server, read_answers, route_of, send, wait_kafka_healthy,
    Tansu,
};
use support::{photo_dir, photo_names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_album_flow_is_answered_as_the_routes_answer() {
    let tansu = Tansu::start();
    let brokers = tansu.brokers();
    support::kafka::create_album_topics(&brokers, 2).await;
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let store_file = store.path().join("f.redb");
    // With face models, the album gains a photo of three faces and its copy,
    // so the people answer has persons in it.
    let faces = face_models::model_dir();
    let face_photos: Vec<String> = match &faces {
        Some(dir) => ["sample1.jpg", "sample1-copy.jpg"]
            .into_iter()
            .map(|name| {
                std::fs::copy(dir.join("samples/sample1.jpg"), photos.path().join(name)).unwrap();
                name.to_string()
            })
            .collect(),
        None => Vec::new(),
    };
    let mut flags = vec!["--kafka-transactions", "off"];
    let model_flag = faces.as_ref().map(|d| d.to_str().unwrap().to_string());
    if let Some(dir) = &model_flag {
        flags.extend(["--face-model", dir.as_str()]);
    }
    let server = kafka_server(
        photos.path(),
        store_file.to_str().unwrap(),
        &brokers,
        &flags,
    );
    let health = wait_kafka_healthy(&server).await;
    assert_eq!(health["status"], "ok", "{health}");
    let producer = support::kafka::producer(&brokers);
    let reader = support::kafka::reader(&brokers);

    // Embedding first: the album is every photo plus a corrupt one.
    let mut images = photo_names();
    images.extend(face_photos.iter().cloned());
    images.push("corrupt.jpg".into());
    let job = json!({"taskId": "e1", "albumId": 7, "images": images});
    send(
        &producer,
        "embedding",
        "album-7",
        job.to_string().as_bytes(),
    )
    .await;
    let got = read_answers(&reader, &["e1"], Duration::from_secs(60)).await;
    let e1 = by_id(&got, "e1");
    assert!(
        !e1.is_empty(),
        "no embedding answer; server log:\n{}",
        server.log()
    );
    let (status, body) = server
        .post(route_of("embedding"), &json!({"images": images}))
        .await;
    assert_eq!(
        e1[0],
        json!({"taskId": "e1", "albumId": 7, "statusCode": status, "body": body})
    );
    assert_eq!(e1[0]["body"]["data"], json!(["corrupt.jpg"]));
    let (_, key, _) = got.iter().find(|(_, _, v)| v["taskId"] == "e1").unwrap();
    assert_eq!(key.as_deref(), Some("album-7"), "the key passes through");

    // What the backend sends after a 201 embedding answer, then score
    // after category.
    let good = photo_names();
    let fields = [
        ("quality", "q1", json!({"images": good})),
        (
            "category",
            "c1",
            json!({"images": good, "concepts": ["travel", "food"]}),
        ),
        ("duplicate", "d1", json!({"images": good})),
        (
            "people",
            "p1",
            json!({"images": good.iter().chain(&face_photos).collect::<Vec<_>>()}),
        ),
    ];
    for (task, id, body) in &fields {
        let mut job = body.clone();
        job["taskId"] = json!(id);
        job["albumId"] = json!(7);
        send(&producer, task, "album-7", job.to_string().as_bytes()).await;
    }
    let got = read_answers(&reader, &["q1", "c1", "d1", "p1"], Duration::from_secs(60)).await;
    let answers = answered_once_or_same(&got);
    let mut checked = 0;
    for (task, id, body) in &fields {
        let (status, expected) = server.post(route_of(task), body).await;
        assert_eq!(
            answers.get(*id),
            Some(&json!({"taskId": id, "albumId": 7, "statusCode": status, "body": expected})),
            "{task}"
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
    assert_eq!(answers["q1"]["statusCode"], 201);
    assert_eq!(answers["c1"]["statusCode"], 201);
    assert_eq!(answers["d1"]["statusCode"], 201);
    if faces.is_some() {
        assert_eq!(answers["p1"]["statusCode"], 201, "{}", answers["p1"]);
        assert_eq!(
            answers["p1"]["body"]["data"].as_array().unwrap().len(),
            3,
            "{}",
            answers["p1"]
        );
    } else {
        // No face models: people is refused with the reason.
        assert_eq!(answers["p1"]["statusCode"], 400, "{}", answers["p1"]);
    }
    let categories = answers["c1"]["body"]["data"].clone();
    assert!(!categories.as_array().unwrap().is_empty(), "{categories}");
    let job = json!({"taskId": "s1", "albumId": 7, "categories": categories});
    send(&producer, "score", "album-7", job.to_string().as_bytes()).await;
    let got = read_answers(&reader, &["s1"], Duration::from_secs(60)).await;
    let (status, expected) = server
        .post(route_of("score"), &json!({"categories": categories}))
        .await;
    assert_eq!(
        answered_once_or_same(&got).get("s1"),
        Some(&json!({"taskId": "s1", "albumId": 7, "statusCode": status, "body": expected}))
    );
    assert_eq!(status, 201);

    // A 428, as the backend sees it before it re-requests the embedding.
    let job = json!({"taskId": "q2", "albumId": 8, "images": ["never-embedded.jpg"]});
    send(&producer, "quality", "album-8", job.to_string().as_bytes()).await;
    let got = read_answers(&reader, &["q2"], Duration::from_secs(60)).await;
    assert_eq!(
        answered_once_or_same(&got)["q2"]["statusCode"],
        428,
        "{got:?}"
    );

    // Malformed jobs: each answered 400, and the worker goes on consuming.
    let huge = json!({"taskId": "big", "albumId": 9, "images": ["x".repeat(10 << 20)]}).to_string();
    assert!(huge.len() > 10 << 20);
    let bad: [(&str, Vec<u8>); 5] = [
        ("not JSON", b"{not json".to_vec()),
        ("not an object", b"[1, 2]".to_vec()),
        (
            "no taskId",
            json!({"albumId": 1, "images": ["a.jpg"]})
                .to_string()
                .into_bytes(),
        ),
        (
            "albumId a string",
            json!({"taskId": "w", "albumId": "one", "images": ["a.jpg"]})
                .to_string()
                .into_bytes(),
        ),
        ("10 MB", huge.into_bytes()),
    ];
    for (what, payload) in &bad {
        send(&producer, "quality", what, payload).await;
    }
    let after = json!({"taskId": "after", "albumId": 1, "images": good});
    send(&producer, "quality", "after", after.to_string().as_bytes()).await;
    let got = read_answers(&reader, &["w", "big", "after"], Duration::from_secs(60)).await;
    let mut rejected = 0;
    for (what, _) in &bad {
        let answer = got
            .iter()
            .find(|(_, key, _)| key.as_deref() == Some(*what))
            .unwrap_or_else(|| panic!("{what}: no answer; server log:\n{}", server.log()));
        assert_eq!(answer.2["statusCode"], 400, "{what}: {}", answer.2);
        assert_eq!(answer.2["body"]["message"], "invalid_request", "{what}");
        rejected += 1;
    }
    assert_eq!(rejected, bad.len());
    let by_key = |k: &str| {
        got.iter()
            .find(|(_, key, _)| key.as_deref() == Some(k))
            .unwrap()
            .2
            .clone()
    };
    assert_eq!(by_key("no taskId")["taskId"], "unknown");
    assert_eq!(by_key("not JSON")["albumId"], -1);
    assert!(
        by_key("10 MB")["body"]["data"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"),
        "{}",
        by_key("10 MB")
    );
    assert_eq!(by_key("after")["statusCode"], 201);

    let metrics = server.get("/metrics").await.1;
    let answered = support::metric_value(
        &metrics,
        "ongi_kafka_answers_total{task=\"quality\",status=\"400\"}",
    );
    assert_eq!(answered, bad.len() as f64, "{metrics}");
    assert!(
        metrics.contains("ongi_kafka_lag{task=\"embedding\"}"),
        "{metrics}"
    );
    drop(tansu);
}
