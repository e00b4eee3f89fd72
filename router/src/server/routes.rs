//! HTTP handlers: thin wrappers that parse, call the core, and shape the answer.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ongi_core::analysis::AnalysisError;
use ongi_core::embedding::{log_timings, EmbedError, EmbedReport};
use ongi_core::features::FeatureRecord;
use ongi_core::untrusted::{echo_key, Untrusted};
use serde::Serialize;

use super::api::{
    self, created, ApiError, CategoriesRequest, CategoriesResponse, CategoryImages, CategoryScores,
    DuplicatesResponse, EmbeddingResponse, ErrorResponse, HealthResponse, ImageScore,
    ImagesRequest, PeopleResponse, PersonFaces, QualityResponse, ScoreRequest, ScoreResponse,
    SearchRequest, SearchResponse,
};
use super::limits::{check_image_count, JsonBody};
use super::AppState;

/// Photos a search answers when the request names no `top_k`.
const DEFAULT_TOP_K: usize = 10;

fn embed_error(app: &AppState, err: EmbedError) -> ApiError {
    match err {
        EmbedError::Busy => ApiError::Busy,
        EmbedError::Store(err) => store_error(app, &err),
    }
}

fn store_error(app: &AppState, err: &dyn std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, store = %app.pipeline.store.describe(), "feature store failed");
    ApiError::Internal
}

/// Embeds what the cache lacks of `keys`; the stage times are logged when
/// anything was read.
async fn embed(app: &AppState, keys: &[String]) -> Result<EmbedReport, ApiError> {
    let report = app
        .pipeline
        .embedding
        .embed(keys)
        .await
        .map_err(|e| embed_error(app, e))?;
    if report.embedded > 0 || !report.failed.is_empty() {
        log_timings(keys.len(), &report);
    }
    Ok(report)
}

/// The keys of an `{"images": [...]}` body, checked as [`request_keys`] does.
fn image_keys(app: &AppState, body: &JsonBody) -> Result<Vec<String>, ApiError> {
    let request: ImagesRequest = api::parse_body(body)?;
    request_keys(app, &request.images)
}

/// A request's keys: within the per-request limit, non-empty, repeats dropped.
fn request_keys(app: &AppState, images: &[String]) -> Result<Vec<String>, ApiError> {
    check_image_count(images.len(), app.limits.max_images)?;
    api::unique_images(images)
}

/// The records of `keys` in order, or 428 with the keys that have none.
async fn cached_records(
    app: &AppState,
    keys: &[String],
) -> Result<Vec<(String, FeatureRecord)>, ApiError> {
    let records = app
        .pipeline
        .embedding
        .records(keys)
        .await
        .map_err(|e| embed_error(app, e))?;
    let missing: Vec<String> = keys
        .iter()
        .zip(&records)
        .filter(|(_, r)| r.is_none())
        .map(|(k, _)| k.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::EmbeddingRequired(missing));
    }
    Ok(keys
        .iter()
        .cloned()
        .zip(records.into_iter().flatten())
        .collect())
}

/// What every handler shares.
type Shared = State<Arc<AppState>>;
/// A handler's answer: the contract's envelope either way.
type Answer = Result<Response, ApiError>;

/// An analysis answer (201), its time recorded per route.
fn answered(
    route: &'static str,
    started: Instant,
    images: usize,
    answer: impl Serialize,
) -> Answer {
    let elapsed = started.elapsed();
    metrics::histogram!("ongi_analysis_seconds", "route" => route).record(elapsed.as_secs_f64());
    tracing::info!(route, images, ms = elapsed.as_secs_f64() * 1e3, "analysis");
    Ok(created(answer))
}

// The error answers each route can give (400, 403, 428, 500, 503) are added
// to the OpenAPI document from the route table; an annotation names an error
// only where its route has a reason of its own.

/// Embeds and caches every photo of the album.
#[utoipa::path(post, path = "/api/albums/embedding", request_body = ImagesRequest, responses(
    (status = 201, description = "All photos embedded (`data` null), or the keys that failed", body = EmbeddingResponse),
))]
pub async fn embedding(State(app): Shared, body: JsonBody) -> Answer {
    let keys = image_keys(&app, &body)?;
    let report = embed(&app, &keys).await?;
    for failure in &report.failed {
        tracing::warn!(
            key = %Untrusted(&failure.key),
            reason = %Untrusted(&failure.error.to_string()),
            "image failed"
        );
    }
    let failed = (!report.failed.is_empty())
        .then(|| report.failed.iter().map(|f| echo_key(&f.key)).collect());
    Ok(created(EmbeddingResponse::success(failed)))
}

/// Groups of near-identical photos; photos without a record are embedded first.
#[utoipa::path(post, path = "/api/albums/duplicates", request_body = ImagesRequest, responses(
    (status = 201, description = "Duplicate groups (singletons omitted)", body = DuplicatesResponse),
))]
pub async fn duplicates(State(app): Shared, body: JsonBody) -> Answer {
    let keys = image_keys(&app, &body)?;
    // The original loaded pixels here; ongi embeds only what the cache lacks.
    let report = embed(&app, &keys).await?;
    let started = Instant::now();
    // Photos that could not be embedded cannot be duplicates of anything.
    let present = report.records;
    let groups = app.analyzer.duplicates(&present);
    let answer = DuplicatesResponse::success(groups);
    answered("duplicates", started, present.len(), answer)
}

/// Low-quality photos (Laplacian blur test or CLIP-IQA dual threshold).
#[utoipa::path(post, path = "/api/albums/quality", request_body = ImagesRequest, responses(
    (status = 201, description = "Keys of low-quality photos", body = QualityResponse),
))]
pub async fn quality(State(app): Shared, body: JsonBody) -> Answer {
    let keys = image_keys(&app, &body)?;
    let started = Instant::now();
    let records = cached_records(&app, &keys).await?;
    let answer = QualityResponse::success(app.analyzer.low_quality(&records));
    answered("quality", started, records.len(), answer)
}

/// Persons in the album: the faces found while embedding, clustered.
#[utoipa::path(post, path = "/api/albums/people", request_body = ImagesRequest, responses(
    (status = 201, description = "One entry per person, most faces first", body = PeopleResponse),
    (status = 400, description = "This server has no face models (`--face-model`); or an empty list, malformed body, too many images or body over the size limit", body = api::ErrorResponse),
    (status = 428, description = "`data` lists the keys lacking cached features or faces (embedded before face models were enabled)", body = api::ErrorResponse),
))]
pub async fn people(State(app): Shared, body: JsonBody) -> Answer {
    let keys = image_keys(&app, &body)?;
    if !app.pipeline.embedding.finds_faces() {
        return Err(ApiError::InvalidRequest(
            "people needs face models: this server was started without --face-model".into(),
        ));
    }
    let started = Instant::now();
    let records = cached_records(&app, &keys).await?;
    // Embedded before faces were enabled: their faces are unknown, not absent.
    let faceless: Vec<String> = records
        .iter()
        .filter(|(_, r)| !app.pipeline.embedding.is_complete(r))
        .map(|(k, _)| k.clone())
        .collect();
    if !faceless.is_empty() {
        return Err(ApiError::EmbeddingRequired(faceless));
    }
    let persons = app.analyzer.people(&records);
    let answer = PeopleResponse::success(persons.into_iter().map(PersonFaces::from).collect());
    answered("people", started, records.len(), answer)
}

/// Themed categories by the representative-tag algorithm.
#[utoipa::path(post, path = "/api/albums/categories", request_body = CategoriesRequest, responses(
    (status = 201, description = "Groups; every requested key exactly once", body = CategoriesResponse),
    (status = 400, description = "Empty list, malformed body or unknown concept, too many images or body over the size limit", body = api::ErrorResponse),
))]
pub async fn categories(State(app): Shared, body: JsonBody) -> Answer {
    let request: CategoriesRequest = api::parse_body(&body)?;
    let keys = request_keys(&app, &request.images)?;
    let concepts = request.concepts.unwrap_or_default();
    let started = Instant::now();
    let records = cached_records(&app, &keys).await?;
    let groups = app
        .analyzer
        .categories(&records, &concepts)
        .map_err(|e| match e {
            AnalysisError::Taxonomy(err) => ApiError::InvalidRequest(err.to_string()),
            other => {
                tracing::error!(error = %other, "categories failed");
                ApiError::Internal
            }
        })?;
    let groups = groups
        .into_iter()
        .map(|(category, images)| CategoryImages { category, images });
    let answer = CategoriesResponse::success(groups.collect());
    answered("categories", started, records.len(), answer)
}

/// Highlight score of each photo, per category.
#[utoipa::path(post, path = "/api/albums/score", request_body = ScoreRequest, responses(
    (status = 201, description = "One score per requested image, in request order", body = ScoreResponse),
))]
pub async fn score(State(app): Shared, body: JsonBody) -> Answer {
    let request: ScoreRequest = api::parse_body(&body)?;
    let all: Vec<String> = request
        .categories
        .iter()
        .flat_map(|c| c.images.iter().cloned())
        .collect();
    check_image_count(all.len(), app.limits.max_images)?;
    let keys = api::unique_images(&all)
        .map_err(|_| ApiError::InvalidRequest("categories must hold at least one image".into()))?;
    let started = Instant::now();
    let records = cached_records(&app, &keys).await?;
    let analyzer = &app.analyzer;
    let scores: std::collections::HashMap<&str, f32> = records
        .iter()
        .map(|(k, r)| (k.as_str(), analyzer.score(r)))
        .collect();
    let score_of = |image: &String| ImageScore {
        image: image.clone(),
        score: scores.get(image.as_str()).copied().unwrap_or(0.0),
    };
    let data = request
        .categories
        .iter()
        .map(|c| CategoryScores {
            category: c.category.clone(),
            images: c.images.iter().map(score_of).collect(),
        })
        .collect();
    answered(
        "score",
        started,
        records.len(),
        ScoreResponse::success(data),
    )
}

/// Photos of the album matching a text query, by CLIP similarity.
#[utoipa::path(post, path = "/api/albums/search", request_body = SearchRequest, responses(
    (status = 201, description = "At most `top_k` photos, best first, each requested key at most once", body = SearchResponse),
    (status = 400, description = "Empty image list or query, query too long, `top_k` 0, malformed body, too many images or body over the size limit", body = api::ErrorResponse),
))]
pub async fn search(State(app): Shared, body: JsonBody) -> Answer {
    let request: SearchRequest = api::parse_body(&body)?;
    let keys = request_keys(&app, &request.images)?;
    let query =
        ongi_core::analysis::search_query(&request.query).map_err(ApiError::InvalidRequest)?;
    let top_k = match request.top_k {
        Some(0) => return Err(ApiError::InvalidRequest("top_k must be at least 1".into())),
        Some(k) => k,
        None => DEFAULT_TOP_K,
    };
    let started = Instant::now();
    let records = cached_records(&app, &keys).await?;
    let embedding = app.pipeline.texts.query(query).await.map_err(|e| {
        tracing::error!(error = %e, "search query embedding failed");
        ApiError::Internal
    })?;
    let ranked = ongi_core::analysis::search(&records, &embedding, top_k);
    let ranked = ranked
        .into_iter()
        .map(|(image, score)| ImageScore { image, score });
    let answer = SearchResponse::success(ranked.collect());
    answered("search", started, records.len(), answer)
}

/// Health and version: 200 when the inference worker runs, the feature
/// store answers and (with Kafka) every Kafka worker runs and reaches a
/// broker, else 503 in the error envelope naming what is down (the
/// cause itself is logged, not returned: it can name internal hosts).
#[utoipa::path(get, path = "/health/info", responses(
    (status = 200, body = HealthResponse),
    (status = 503, body = ErrorResponse, description = "the inference worker stopped, the feature store does not answer, or a Kafka worker stopped or reaches no broker")
))]
pub async fn health(State(app): Shared) -> Result<Json<HealthResponse>, ApiError> {
    let mut down = Vec::new();
    if !app.pipeline.embedding.batcher().is_running() {
        tracing::error!("health: the inference worker has stopped");
        down.push("inference worker stopped".to_string());
    }
    if let Err(e) = app.pipeline.store.ping().await {
        tracing::error!(error = %e, "health: the feature store does not answer");
        down.push("feature store unavailable".to_string());
    }
    if let Some(kafka) = &app.kafka {
        down.extend(kafka.problems());
    }
    if !down.is_empty() {
        return Err(ApiError::Unavailable(down.join("; ")));
    }
    Ok(Json(HealthResponse {
        status: "ok".into(),
        message: format!(
            "ongi serving model {} from {}",
            app.pipeline.embedding.model_id(),
            app.pipeline.source_public
        ),
        version: env!("CARGO_PKG_VERSION").into(),
        precision: app.precision.clone(),
        kafka: app.kafka.as_ref().map(|k| k.tasks()),
    }))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(app): Shared) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.prometheus.render(),
    )
}

/// The OpenAPI description of this API.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "This document (OpenAPI 3.1, JSON)", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    Json(super::openapi_doc())
}
