//! Text embeddings computed once per model: the analysis prompts and search
//! queries go through the text tower the first time and are read back from
//! the feature store after that, so no request runs the text tower twice for
//! the same text.

use std::collections::HashMap;
use std::sync::Arc;

use crate::analysis::normalized;
use crate::encoder::ClipTextEncoder;
use crate::store::{FeatureStore, StoreError};

/// Why a text embedding could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// The text tower failed.
    #[error("text tower: {0}")]
    Encode(String),
    /// The feature store failed.
    #[error("feature store: {0}")]
    Store(#[from] StoreError),
}

/// Name under which a prompt's embedding is cached in the store (per model).
fn prompt_blob(prompt: &str) -> String {
    format!("prompt:v1:{prompt}")
}

/// Name under which a search query's embedding is cached (per model); apart
/// from the prompts so a query can never stand in for one.
fn query_blob(query: &str) -> String {
    format!("query:v1:{query}")
}

fn vector_from_blob(bytes: &[u8]) -> Option<Vec<f32>> {
    (!bytes.is_empty() && bytes.len().is_multiple_of(4)).then(|| {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    })
}

fn vector_to_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The text tower of one model, behind the store's cache.
pub struct TextEmbeddings {
    text: Arc<ClipTextEncoder>,
    store: Arc<dyn FeatureStore>,
    model_id: String,
}

impl TextEmbeddings {
    /// Embeds with `text`, caching in `store` under `model_id`.
    pub fn new(text: Arc<ClipTextEncoder>, store: Arc<dyn FeatureStore>, model_id: String) -> Self {
        Self {
            text,
            store,
            model_id,
        }
    }

    /// The normalised embedding of each prompt: cached ones from the store,
    /// the rest from the text tower in one pass (then cached).
    pub async fn prompts(&self, wanted: &[String]) -> Result<HashMap<String, Vec<f32>>, TextError> {
        let mut prompts = HashMap::new();
        let mut missing = Vec::new();
        for prompt in wanted {
            match self.cached(&prompt_blob(prompt)).await? {
                Some(v) => {
                    prompts.insert(prompt.clone(), v);
                }
                None => missing.push(prompt.as_str()),
            }
        }
        if !missing.is_empty() {
            tracing::info!(prompts = missing.len(), "computing prompt embeddings");
            let rows = self.text.encode(&missing, 64).map_err(TextError::Encode)?;
            for (prompt, row) in missing.iter().zip(rows) {
                let v = self.cache(&prompt_blob(prompt), &row).await?;
                prompts.insert(prompt.to_string(), v);
            }
        }
        Ok(prompts)
    }

    /// The normalised embedding of a search query (from the cache, else from
    /// the text tower on a blocking thread, then cached).
    pub async fn query(&self, query: &str) -> Result<Vec<f32>, TextError> {
        let blob = query_blob(query);
        if let Some(v) = self.cached(&blob).await? {
            return Ok(v);
        }
        let text = self.text.clone();
        let owned = query.to_string();
        let rows = tokio::task::spawn_blocking(move || text.encode(&[owned.as_str()], 1))
            .await
            .map_err(|e| TextError::Encode(e.to_string()))?
            .map_err(TextError::Encode)?;
        let row = rows
            .first()
            .ok_or_else(|| TextError::Encode("the text tower returned no row".into()))?;
        self.cache(&blob, row).await
    }

    /// The vector cached under `blob`, if a valid one is.
    async fn cached(&self, blob: &str) -> Result<Option<Vec<f32>>, TextError> {
        let bytes = self.store.get_blob(&self.model_id, blob).await?;
        Ok(bytes.as_deref().and_then(vector_from_blob))
    }

    /// Normalises a text-tower row and caches it under `blob`.
    async fn cache(&self, blob: &str, row: &[f32]) -> Result<Vec<f32>, TextError> {
        let v = normalized(row);
        self.store
            .put_blob(&self.model_id, blob, &vector_to_blob(&v))
            .await?;
        Ok(v)
    }
}
