//! HTTP handlers: thin wrappers that parse, call the core, and shape the answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ongi_core::embedding::{log_timings, EmbedError};

use super::api::{self, ApiError, EmbeddingResponse, HealthResponse, ImagesRequest};
use super::AppState;

/// Embeds and caches every photo of the album.
#[utoipa::path(
    post,
    path = "/api/albums/embedding",
    request_body = ImagesRequest,
    responses(
        (status = 201, description = "All photos embedded (`data` null), or the keys that failed", body = EmbeddingResponse),
        (status = 400, description = "Empty list or malformed body", body = api::ErrorResponse),
        (status = 500, description = "Feature store failure", body = api::ErrorResponse),
        (status = 503, description = "Inference queue full; see Retry-After", body = api::ErrorResponse),
    )
)]
pub async fn embedding(
    State(app): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ImagesRequest = api::parse_body(&body)?;
    api::check_images(&request.images)?;
    let report = app.embedding.embed(&request.images).await.map_err(|e| match e {
        EmbedError::Busy => ApiError::Busy,
        EmbedError::Store(err) => {
            tracing::error!(error = %err, store = %app.embedding.store().describe(), "feature store failed");
            ApiError::Internal
        }
    })?;
    log_timings(request.images.len(), &report);
    for failure in &report.failed {
        tracing::warn!(key = %failure.key, reason = %failure.reason, "image failed");
    }
    let data =
        (!report.failed.is_empty()).then(|| report.failed.iter().map(|f| f.key.clone()).collect());
    Ok((
        StatusCode::CREATED,
        Json(EmbeddingResponse {
            message: "success".into(),
            data,
        }),
    )
        .into_response())
}

/// Liveness and version.
#[utoipa::path(get, path = "/health/info", responses((status = 200, body = HealthResponse)))]
pub async fn health(State(app): State<Arc<AppState>>) -> Json<HealthResponse> {
    Json(HealthResponse {
        status: "ok".into(),
        message: format!(
            "ongi serving model {} from {}",
            app.embedding.model_id(),
            app.source_description
        ),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
}

/// The OpenAPI description of this API.
pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi_doc())
}
