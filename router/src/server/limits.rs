//! Request-level limits of `ongi serve` (body size, images per request) and the
//! body extractor that answers an oversized body with the contract's 400.
//!
//! Per-image limits (bytes, decoded pixels, the per-request deadline) live in
//! the embedding pipeline: see `PipelineArgs`.

use std::ops::Deref;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;

use super::api::ApiError;
use super::AppState;

/// Request limits; every flag also reads an `ONGI_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct LimitArgs {
    /// Largest accepted request body, in bytes; a larger one gets 400 `invalid_request`.
    #[arg(long, env = "ONGI_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most image keys one request may list; more gets 400 `invalid_request`.
    #[arg(long, env = "ONGI_MAX_IMAGES", default_value_t = 1000)]
    pub max_images: usize,
}

impl LimitArgs {
    /// Refuses limits that would make every request fail.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.max_body_bytes == 0 {
            anyhow::bail!("--max-body-bytes must be at least 1");
        }
        if self.max_images == 0 {
            anyhow::bail!("--max-images must be at least 1");
        }
        Ok(())
    }
}

/// A request body read under `--max-body-bytes` (enforced by the router's
/// `DefaultBodyLimit`); any failure to read it, an oversized body included,
/// is answered 400 `invalid_request` in the contract's envelope instead of
/// axum's plain-text 413/400.
pub struct JsonBody(pub Bytes);

impl Deref for JsonBody {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::InvalidRequest(format!(
                    "request body is larger than the limit of {} bytes",
                    state.limits.max_body_bytes
                )))
            }
            Err(rejection) => Err(ApiError::InvalidRequest(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))),
        }
    }
}

/// Checks the number of keys a request lists against `--max-images`.
pub fn check_image_count(count: usize, max: usize) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::InvalidRequest(format!(
            "too many images: {count} in one request, the limit is {max}"
        )));
    }
    Ok(())
}
