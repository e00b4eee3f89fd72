//! Request and response bodies of the HTTP contract, with their OpenAPI schemas.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"images": [key, ...]}`: the body of the embedding, duplicates and quality routes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesRequest {
    /// Object keys (or paths relative to the local image root).
    pub images: Vec<String>,
}

/// Body of `POST /api/albums/categories`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoriesRequest {
    /// Object keys.
    pub images: Vec<String>,
    /// Album concepts whose sub-categories join the parent categories (e.g. `travel`, `여행`).
    #[serde(default)]
    pub concepts: Option<Vec<String>>,
}

/// A category and its images, in requests and answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryImages {
    /// Category name (Korean).
    pub category: String,
    /// Object keys.
    pub images: Vec<String>,
}

/// Body of `POST /api/albums/score`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScoreRequest {
    /// Categories as `/api/albums/categories` returned them.
    pub categories: Vec<CategoryImages>,
}

/// Body of `POST /api/albums/search`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Object keys to search among (each needs cached features).
    pub images: Vec<String>,
    /// What to look for, in words (e.g. `a dog on the beach`).
    pub query: String,
    /// How many photos to answer at most (default 10).
    #[serde(default)]
    pub top_k: Option<usize>,
}

/// One photo's highlight score.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImageScore {
    /// Object key.
    pub image: String,
    /// Highlight score (higher is better; zero-shot scores lie in [0, 10]).
    pub score: f32,
}

/// Scores of one category's photos, in request order.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryScores {
    /// Category name as requested.
    pub category: String,
    /// One score per requested image.
    pub images: Vec<ImageScore>,
}

/// One person of an album.
#[derive(Debug, Serialize, ToSchema)]
pub struct PersonFaces {
    /// The photo of each of the person's faces, in request order (a key
    /// repeats when one photo holds the person twice).
    pub images: Vec<String>,
    /// The person's first face.
    pub representative_face: RepresentativeFace,
}

/// Where a person's representative face is.
#[derive(Debug, Serialize, ToSchema)]
pub struct RepresentativeFace {
    /// Its photo.
    pub image: String,
    /// `[x1, y1, x2, y2]`, whole pixels of the upright photo.
    pub bbox: [i32; 4],
}

impl From<ongi_core::analysis::people::Person> for PersonFaces {
    fn from(person: ongi_core::analysis::people::Person) -> Self {
        Self {
            images: person.images,
            representative_face: RepresentativeFace {
                image: person.representative_face.image,
                bbox: person.representative_face.bbox,
            },
        }
    }
}

/// A success answer, `{"message": "success", "data": ...}`: one named
/// type per route, so each has its own schema in the OpenAPI document.
macro_rules! success_answers {
    ($($(#[$doc:meta])* $name:ident => $data:ty;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Serialize, ToSchema)]
        pub struct $name {
            /// `success`.
            pub message: String,
            pub data: $data,
        }

        impl $name {
            /// The answer carrying `data`.
            pub fn success(data: $data) -> Self {
                Self { message: "success".into(), data }
            }
        }
    )*};
}

success_answers! {
    /// The answer of `POST /api/albums/embedding`; `data` is `null` when
    /// every image was embedded, else the keys that could not be loaded or decoded.
    EmbeddingResponse => Option<Vec<String>>;
    /// The answer of `POST /api/albums/duplicates`; `data` holds groups of
    /// duplicate keys (singletons omitted).
    DuplicatesResponse => Vec<Vec<String>>;
    /// The answer of `POST /api/albums/quality`; `data` holds the keys of low-quality photos.
    QualityResponse => Vec<String>;
    /// The answer of `POST /api/albums/people`; `data` holds one entry per
    /// person, most faces first.
    PeopleResponse => Vec<PersonFaces>;
    /// The answer of `POST /api/albums/categories`; `data` holds themed
    /// groups, every requested key exactly once.
    CategoriesResponse => Vec<CategoryImages>;
    /// The answer of `POST /api/albums/score`; `data` holds scores per category.
    ScoreResponse => Vec<CategoryScores>;
    /// The answer of `POST /api/albums/search`; `data` holds the
    /// best-matching photos, best first (`score` is the cosine between the
    /// photo's and the query's CLIP embeddings).
    SearchResponse => Vec<ImageScore>;
}

/// Every non-success answer: `{"message": code, "data": details}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// One of `invalid_request`, `unauthorized_server`, `embedding_required`,
    /// `internal_server_error`, `service_unavailable`.
    pub message: String,
    /// The reason (a string), the missing keys (428), or `null`.
    #[schema(value_type = Object, nullable = true)]
    pub data: serde_json::Value,
}

/// `GET /health/info`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: String,
    /// Human-readable summary of what the server runs.
    pub message: String,
    /// ongi's version.
    pub version: String,
    /// The model's precision, why it was chosen (the CPU features) and the
    /// kernels it runs on, e.g. `bf16 (CPU has AMX bf16 tiles (…); kernel amx-bf16)`.
    pub precision: String,
    /// Each Kafka worker (only with `--kafka`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Vec<crate::kafka::TaskHealth>>,
}

/// An error answer of the contract.
#[derive(Debug)]
pub enum ApiError {
    /// 400 `invalid_request` with a reason.
    InvalidRequest(String),
    /// 403 `unauthorized_server`: missing or wrong API key.
    Unauthorized,
    /// 428 `embedding_required` with the keys lacking cached features.
    EmbeddingRequired(Vec<String>),
    /// 500 `internal_server_error` (the cause is logged, not returned).
    Internal,
    /// 503 with `Retry-After`: the inference queue is full.
    Busy,
    /// 503 with `Retry-After`: a part the server needs is not working.
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message, data) = match self {
            ApiError::InvalidRequest(reason) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                serde_json::Value::String(reason),
            ),
            ApiError::Unauthorized => (
                StatusCode::FORBIDDEN,
                "unauthorized_server",
                serde_json::Value::Null,
            ),
            ApiError::EmbeddingRequired(keys) => (
                StatusCode::PRECONDITION_REQUIRED,
                "embedding_required",
                serde_json::Value::from(keys),
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_server_error",
                serde_json::Value::Null,
            ),
            ApiError::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                serde_json::Value::String("the inference queue is full; retry later".into()),
            ),
            ApiError::Unavailable(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                serde_json::Value::String(reason),
            ),
        };
        let mut response = (
            status,
            axum::Json(ErrorResponse {
                message: message.into(),
                data,
            }),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Parses a JSON body into `T`, answering 400 with serde's reason otherwise.
///
/// Bodies are parsed here rather than by axum's `Json` extractor so that every
/// malformed body gets the contract's 400 envelope (axum would answer 415/422
/// in its own format).
/// The reason names the field at fault (`top_k: invalid value ...`).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!("{path}: ")
        };
        ApiError::InvalidRequest(format!("malformed request body: {at}{}", e.inner()))
    })?;
    json.end()
        .map_err(|e| ApiError::InvalidRequest(format!("malformed request body: {e}")))?;
    Ok(value)
}

/// Checks the `images` list of a request and drops repeated keys (first occurrence kept).
pub fn unique_images(images: &[String]) -> Result<Vec<String>, ApiError> {
    if images.is_empty() {
        return Err(ApiError::InvalidRequest("images must not be empty".into()));
    }
    let mut seen = std::collections::HashSet::new();
    Ok(images
        .iter()
        .filter(|k| seen.insert(k.as_str()))
        .cloned()
        .collect())
}

/// A success answer: 201 `{"message": "success", "data": data}`.
pub fn created<T: Serialize>(body: T) -> Response {
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_bodies_are_invalid_requests() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"{\"images\": \"a.jpg\"}",
            b"{\"images\": [1]}",
            b"{\"images\": [], \"x\": 1}",
        ] {
            assert!(
                matches!(
                    parse_body::<ImagesRequest>(body),
                    Err(ApiError::InvalidRequest(_))
                ),
                "{body:?}"
            );
        }
        let reason = |body: &[u8]| match parse_body::<SearchRequest>(body) {
            Err(ApiError::InvalidRequest(reason)) => reason,
            _ => panic!("{body:?} parsed"),
        };
        assert!(reason(b"{\"images\": [1], \"query\": \"q\"}").contains("images[0]: invalid type"));
        assert!(reason(b"{\"images\": [], \"query\": \"q\", \"top_k\": -1}")
            .contains("top_k: invalid value"));
        assert!(reason(b"{\"images\": [], \"query\": \"q\"} x").contains("trailing characters"));
        let ok: ImagesRequest = parse_body(b"{\"images\": [\"a.jpg\"]}").unwrap();
        assert_eq!(ok.images, vec!["a.jpg"]);
        assert!(unique_images(&[]).is_err());
        let keys = vec!["a".to_string(), "b".into(), "a".into()];
        assert_eq!(unique_images(&keys).unwrap(), vec!["a", "b"]);
    }
}
