//! Property test (fuzzing) of request parsing, against the real `ongi serve`:
//! arbitrary bytes, arbitrary JSON values and request-shaped JSON with hostile
//! keys, POSTed to every `/api/*` route with and without a JSON content type. The
//! answer is always a JSON body with status 201, 400 or 428 (never 5xx, never a
//! dropped connection) and the server stays up and exits cleanly afterwards.
//!
//! CI runs 64 cases per property. Run longer by hand:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test -p ongi --test server_fuzz -- --nocapture
//! ```

mod support;

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use support::{photo_dir, photo_names, tiny_model, OngiServer};

const ROUTES: &[&str] = &[
    "/api/albums/embedding",
    "/api/albums/duplicates",
    "/api/albums/quality",
    "/api/albums/categories",
    "/api/albums/score",
    "/api/albums/people",
];

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Image keys: real photos, the corrupt one, hostile paths and arbitrary strings.
fn key() -> impl Strategy<Value = String> {
    let names = photo_names();
    prop_oneof![
        3 => prop::sample::select(names),
        1 => Just("corrupt.jpg".to_owned()),
        1 => prop::sample::select(vec![
            "../../etc/passwd".to_owned(),
            "/etc/passwd".to_owned(),
            "a\0b.jpg".to_owned(),
            "dir\\..\\x.jpg".to_owned(),
            "./rgb_garden.png".to_owned(),
            "missing.jpg".to_owned(),
            "".to_owned(),
            "x".repeat(1025),
            "\u{202e}gpj.jpg".to_owned(),
        ]),
        2 => any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        key().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("images".to_owned()),
                    Just("concepts".to_owned()),
                    Just("categories".to_owned()),
                    Just("category".to_owned()),
                    any::<String>(),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like the real requests, with hostile content.
fn request_json() -> impl Strategy<Value = Value> {
    let keys = || prop::collection::vec(key(), 0..12);
    let concept = prop_oneof![
        prop::sample::select(vec!["travel", "여행", "trip", "food", "pets", "TRAVEL"])
            .prop_map(str::to_owned),
        any::<String>(),
    ];
    prop_oneof![
        keys().prop_map(|k| json!({ "images": k })),
        (
            keys(),
            prop::option::of(prop::collection::vec(concept, 0..4))
        )
            .prop_map(|(k, c)| json!({ "images": k, "concepts": c })),
        prop::collection::vec((any::<String>(), keys()), 0..4).prop_map(|cats| {
            let cats: Vec<Value> = cats
                .into_iter()
                .map(|(c, k)| json!({ "category": c, "images": k }))
                .collect();
            json!({ "categories": cats })
        }),
        (keys(), json_value()).prop_map(|(k, extra)| json!({ "images": k, "extra": extra })),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    route: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn case(body: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Case> {
    (
        prop::sample::select(ROUTES),
        prop::sample::select(vec![
            Some("application/json"),
            None,
            Some("text/plain"),
            Some("application/json; charset=latin1"),
        ]),
        body,
    )
        .prop_map(|(route, content_type, body)| Case {
            route,
            content_type,
            body,
        })
}

fn send(
    rt: &tokio::runtime::Runtime,
    server: &OngiServer,
    case: &Case,
) -> Result<(), TestCaseError> {
    let (status, text) = rt.block_on(async {
        let mut request = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
            .post(format!("{}{}", server.url, case.route))
            .body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        let resp = request.send().await.map_err(|e| {
            TestCaseError::fail(format!(
                "connection failed: {e}; log tail:\n{}",
                tail(server)
            ))
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| TestCaseError::fail(format!("body cut off: {e}")))?;
        Ok::<_, TestCaseError>((status, text))
    })?;
    prop_assert!(
        matches!(status, 201 | 400 | 428),
        "{} answered {status}: {text}; log tail:\n{}",
        case.route,
        tail(server)
    );
    let body: Value = serde_json::from_str(&text)
        .map_err(|e| TestCaseError::fail(format!("non-JSON answer {text:?}: {e}")))?;
    prop_assert!(body["message"].is_string(), "{text}");
    Ok(())
}

fn tail(server: &OngiServer) -> String {
    let log = server.log();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn arbitrary_request_bodies_never_5xx_or_crash() {
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let store_path = store.path().join("features.redb");
    let model = tiny_model();
    let mut server = OngiServer::start(
        &[
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.path().to_str().unwrap(),
            "--store",
            store_path.to_str().unwrap(),
            "--threads",
            "1",
        ],
        &[],
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let bodies: [(&str, BoxedStrategy<Vec<u8>>); 3] = [
        (
            "arbitrary bytes",
            prop::collection::vec(any::<u8>(), 0..2048).boxed(),
        ),
        (
            "arbitrary JSON",
            json_value()
                .prop_map(|v| serde_json::to_vec(&v).unwrap())
                .boxed(),
        ),
        (
            "request-shaped JSON",
            request_json()
                .prop_map(|v| serde_json::to_vec(&v).unwrap())
                .boxed(),
        ),
    ];
    for (what, body) in bodies {
        let mut runner = TestRunner::new(config());
        let started = std::time::Instant::now();
        if let Err(e) = runner.run(&case(body), |c| send(&rt, &server, &c)) {
            panic!("{what}: {e}");
        }
        eprintln!(
            "{what}: {} cases passed in {:.1?}",
            config().cases,
            started.elapsed()
        );
    }

    let (status, _) = rt.block_on(server.get("/health/info"));
    assert_eq!(status, 200);
    let exit = server.stop();
    assert!(exit.success(), "exit status {exit}; log:\n{}", server.log());
}
