//! Every answer in the contract's `{"message", "data"}` envelope, including
//! the ones no handler writes: unknown routes (404), wrong methods (405),
//! axum's own rejections, over-long URIs (414), and the automatic answers
//! hyper writes for heads it cannot parse (400, 414, 431; see `conn.rs`).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ongi_core::untrusted::Untrusted;

use super::api::ErrorResponse;

/// Longest request target accepted, in bytes; a longer one gets 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The envelope's `message` for an error status.
pub fn message_for(status: StatusCode) -> String {
    match status {
        StatusCode::BAD_REQUEST => "invalid_request".into(),
        StatusCode::FORBIDDEN => "unauthorized_server".into(),
        StatusCode::PRECONDITION_REQUIRED => "embedding_required".into(),
        StatusCode::INTERNAL_SERVER_ERROR => "internal_server_error".into(),
        other => other
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
            .replace([' ', '-'], "_"),
    }
}

/// `{"message": ..., "data": reason}` for `status` as JSON bytes.
pub fn envelope_bytes(status: StatusCode, reason: &str) -> Vec<u8> {
    let body = ErrorResponse {
        message: message_for(status),
        data: serde_json::Value::String(reason.to_owned()),
    };
    // Serialising a struct of two strings cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// An error answer in the envelope.
pub fn error_response(status: StatusCode, reason: &str) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        envelope_bytes(status, reason),
    )
        .into_response()
}

/// The router's fallback: 404 for a path no route serves.
pub async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("no route {method} {}", Untrusted(uri.path())),
    )
}

/// Outermost middleware: refuses over-long URIs, and wraps any error answer
/// that is not already JSON (axum's plain-text rejections, empty 405s) in
/// the envelope, keeping its status and headers (`Allow`, `Retry-After`).
pub async fn envelope_errors(request: Request, next: Next) -> Response {
    // The request target as sent: origin form is path and query alone.
    let target_len = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        return error_response(
            StatusCode::URI_TOO_LONG,
            &format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        );
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // axum's rejection texts are short; anything longer is cut, not echoed.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let reason = match text.trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        text => text.to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(envelope_bytes(status, &reason)))
}

/// On the `/api/*` routes: a declared body over `--max-body-bytes` is
/// refused from its `Content-Length` alone, before any of it is read (so a
/// client sending `Expect: 100-continue` is never told to go ahead).
pub async fn refuse_oversized_body(
    State(max_body): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > max_body as u64) {
        return error_response(
            StatusCode::BAD_REQUEST,
            &format!("request body is larger than the limit of {max_body} bytes"),
        );
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::{get, post};
    use tower::ServiceExt;

    /// Bare statuses from handlers, extractors, the method router and the
    /// fallback all leave in the envelope; JSON answers and successes pass.
    #[tokio::test]
    async fn bare_error_answers_are_enveloped() {
        let app = axum::Router::new()
            .route("/bare413", get(|| async { StatusCode::PAYLOAD_TOO_LARGE }))
            .route(
                "/text400",
                get(|| async { (StatusCode::BAD_REQUEST, "axum says no") }),
            )
            .route(
                "/json",
                get(|| async { error_response(StatusCode::CONFLICT, "already") }),
            )
            .route("/ok", post(|| async { "fine" }))
            .fallback(not_found)
            .layer(axum::middleware::from_fn(envelope_errors));
        let cases = [
            (
                "GET",
                "/bare413".to_owned(),
                413,
                Some(("payload_too_large", "Payload Too Large")),
            ),
            (
                "GET",
                "/text400".to_owned(),
                400,
                Some(("invalid_request", "axum says no")),
            ),
            (
                "GET",
                "/ok".to_owned(),
                405,
                Some(("method_not_allowed", "Method Not Allowed")),
            ),
            (
                "GET",
                "/nope%1B".to_owned(),
                404,
                Some(("not_found", "no route GET /nope%1B")),
            ),
            (
                "GET",
                format!("/ok?{}", "q".repeat(MAX_URI_BYTES)),
                414,
                None,
            ),
            (
                "GET",
                "/json".to_owned(),
                409,
                Some(("conflict", "already")),
            ),
            ("POST", "/ok".to_owned(), 200, None),
        ];
        for (method, uri, status, expected) in cases {
            let request = Request::builder()
                .method(method)
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{uri:.40}");
            let json = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            if status == 200 {
                assert_eq!(&body[..], b"fine");
                continue;
            }
            assert_eq!(json.unwrap(), "application/json", "{uri:.40}");
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            match expected {
                Some((message, data)) => {
                    assert_eq!(value, serde_json::json!({"message": message, "data": data}))
                }
                None => assert_eq!(
                    value["message"],
                    message_for(StatusCode::from_u16(status).unwrap())
                ),
            }
        }
    }

    #[test]
    fn messages_follow_the_contract_then_the_reason_phrase() {
        assert_eq!(message_for(StatusCode::BAD_REQUEST), "invalid_request");
        assert_eq!(message_for(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(
            message_for(StatusCode::METHOD_NOT_ALLOWED),
            "method_not_allowed"
        );
        assert_eq!(message_for(StatusCode::URI_TOO_LONG), "uri_too_long");
        assert_eq!(
            message_for(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            "request_header_fields_too_large"
        );
        assert_eq!(
            message_for(StatusCode::SERVICE_UNAVAILABLE),
            "service_unavailable"
        );
        let body: serde_json::Value =
            serde_json::from_slice(&envelope_bytes(StatusCode::NOT_FOUND, "no route")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"message": "not_found", "data": "no route"})
        );
    }
}
