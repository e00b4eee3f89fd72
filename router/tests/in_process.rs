//! The HTTP app driven in-process (no socket, no child process) through
//! `tower::ServiceExt::oneshot`: the contract's error answers and the
//! documents, as the library builds them for `ongi serve`.

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let body = match body {
        Some(v) => {
            request = request.header("content-type", "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let response = app
        .clone()
        .oneshot(request.body(body).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_answers_the_contract_in_process() {
    let (app, _, _dirs) = support::in_process_app(&["--api-key", "k1"]).await;
    let app = app.http;

    // The OpenAPI document lists every album route.
    let (status, doc) = call(&app, "GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for route in [
        "embedding",
        "duplicates",
        "quality",
        "categories",
        "score",
        "search",
        "people",
    ] {
        let path = format!("/api/albums/{route}");
        assert!(paths.contains(&&path), "{path} missing from {paths:?}");
    }

    // 403 without the key, in the envelope.
    let images = json!({"images": ["landscape_dune.jpg"]});
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/quality",
        None,
        Some(images.clone()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::FORBIDDEN,
            json!({"message": "unauthorized_server", "data": null})
        )
    );

    // 428 naming the keys without features.
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/quality",
        Some("k1"),
        Some(images.clone()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::PRECONDITION_REQUIRED,
            json!({"message": "embedding_required", "data": ["landscape_dune.jpg"]})
        )
    );

    // People needs face models this server does not have: 400 saying so.
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/people",
        Some("k1"),
        Some(images.clone()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"message": "invalid_request", "data": "people needs face models: this server was started without --face-model"})
        )
    );

    // 400 with the reason, naming the field.
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/search",
        Some("k1"),
        Some(json!({"images": ["a"], "query": "q", "top_k": "ten"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["message"], "invalid_request");
    assert!(
        body["data"]
            .as_str()
            .unwrap()
            .contains("top_k: invalid type"),
        "{body}"
    );
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/embedding",
        Some("k1"),
        Some(json!({"images": []})),
    )
    .await;
    assert_eq!(
        (status, body["data"].clone()),
        (StatusCode::BAD_REQUEST, json!("images must not be empty"))
    );

    // Embedding then an analysis route, in-process.
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/embedding",
        Some("k1"),
        Some(images.clone()),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::CREATED,
            json!({"message": "success", "data": null})
        )
    );
    let (status, body) = call(
        &app,
        "POST",
        "/api/albums/quality",
        Some("k1"),
        Some(images),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Health reports the precision; unknown paths get the envelope.
    let (status, body) = call(&app, "GET", "/health/info", None, None).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    assert!(
        body["precision"].as_str().is_some_and(|p| !p.is_empty()),
        "{body}"
    );
    let (status, body) = call(&app, "GET", "/nope", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["message"].is_string(), "{body}");
}

/// Each photo's failure says what kind it is, for callers that act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_failures_are_typed() {
    use ongi_core::embedding::ImageError;
    let (args, _dirs) = support::serve_args(&[]);
    let compute = args.pipeline.resolve_compute().unwrap();
    let options = args.pipeline.options(&args.images, &compute, None).unwrap();
    let pipeline = ongi_router::pipeline::open(&args.pipeline.model, options, &compute)
        .await
        .unwrap();
    let keys = ["corrupt.jpg", "no-such-photo.jpg", "landscape_dune.jpg"].map(String::from);
    let report = pipeline.embedding.embed(&keys).await.unwrap();
    assert_eq!(report.embedded, 1);
    let kinds: Vec<(&str, &ImageError)> = report
        .failed
        .iter()
        .map(|f| (f.key.as_str(), &f.error))
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(
        matches!(kinds[0], ("corrupt.jpg", ImageError::Decode(_))),
        "{kinds:?}"
    );
    assert!(
        matches!(kinds[1], ("no-such-photo.jpg", ImageError::Load(_))),
        "{kinds:?}"
    );
}
