//! Feature store: where per-photo [`FeatureRecord`]s and small opaque blobs
//! (e.g. cached prompt embeddings) live between requests.
//!
//! One trait, two backends, chosen by [`open_store`]'s spec string:
//!
//! - `redis://host:port/db` or `rediss://…` → [`RedisStore`], for several
//!   servers sharing one cache;
//! - anything else is a file path → [`RedbStore`], an embedded single-file
//!   transactional store (the default); `:memory:` keeps it in memory only.
//!
//! Every entry is keyed by an opaque *model identity* string plus the image
//! key (or blob name), so a server running a different model never reads
//! another model's vectors. With a TTL, entries written from then on expire
//! that long after they were written; expired entries read as absent.

mod embedded;
mod redis_store;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::features::FeatureRecord;

pub use embedded::{RedbStore, MEMORY_SPEC};
pub use redis_store::RedisStore;

/// A feature store failure. Misses are not errors (they are `None`).
#[derive(Debug, Error)]
pub enum StoreError {
    /// The embedded store failed (I/O, corruption, lock held by another process).
    #[error("embedded store {path}: {source}")]
    Redb {
        /// The database file.
        path: String,
        /// What redb reported.
        #[source]
        source: redb::Error,
    },
    /// The embedded store's file is damaged (not a readable database).
    #[error(
        "the feature cache {path} is damaged ({detail}). It holds only cached features, which are \
         recomputed on demand: move or delete the file, or use another store path, and start again"
    )]
    Damaged {
        /// The database file.
        path: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Creating the embedded store's parent directory failed.
    #[error("embedded store {path}: cannot create its directory: {source}")]
    Io {
        /// The database file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A Redis command or connection failed.
    #[error("redis {target}: {source}")]
    Redis {
        /// The server, as [`FeatureStore::describe`] shows it.
        target: String,
        /// What the Redis client reported.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis call did not complete within its deadline (server down or hung).
    #[error("redis {target}: {op} timed out after {after:?}")]
    Timeout {
        /// The server, as [`FeatureStore::describe`] shows it.
        target: String,
        /// The operation that timed out.
        op: &'static str,
        /// The deadline.
        after: Duration,
    },
    /// A blocking store task panicked or was cancelled.
    #[error("embedded store task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The store spec is unusable (e.g. empty, or an unknown URL scheme).
    #[error("invalid store spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The feature cache behind the server; `Arc<dyn FeatureStore>` is shared by
/// every request.
#[async_trait::async_trait]
pub trait FeatureStore: Send + Sync {
    /// The encoded records of `keys` under `model` (None where absent or
    /// expired), in order. Backends store bytes; the record codec is
    /// applied once, above them, by [`FeatureStore::get_many`].
    async fn get_encoded(
        &self,
        model: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Stores encoded records under `model`, replacing any existing ones.
    async fn put_encoded(
        &self,
        model: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError>;

    /// Records for `keys` under `model` (None where absent or expired), in order.
    ///
    /// A stored value that no longer decodes (e.g. written by an incompatible
    /// format version) is logged and reported as absent, so it is recomputed
    /// and overwritten like any other miss.
    async fn get_many(
        &self,
        model: &str,
        keys: &[String],
    ) -> Result<Vec<Option<FeatureRecord>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let raw = self.get_encoded(model, keys).await?;
        Ok(raw
            .iter()
            .zip(keys)
            .map(|(v, key)| v.as_deref().and_then(|b| decode_or_miss(model, key, b)))
            .collect())
    }

    /// Stores records under `model`, replacing any existing ones.
    async fn put_many(
        &self,
        model: &str,
        records: &[(String, FeatureRecord)],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let encoded: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|(k, r)| (k.clone(), r.encode()))
            .collect();
        self.put_encoded(model, &encoded).await
    }

    /// Opaque blobs (e.g. cached prompt embeddings) under a namespace.
    async fn get_blob(&self, model: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stores an opaque blob under `model`, replacing any existing one.
    async fn put_blob(&self, model: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError>;

    /// Checks that the store answers (one cheap read), for health checks.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Short description for logs/health ("redb:/path", "redis://host:port/db").
    fn describe(&self) -> String;
}

/// Opens the store named by `spec`: `redis://…`, `rediss://…`,
/// `redis+unix://…` or `unix://…` (scheme in any case) → Redis; any other
/// `scheme://` is refused; `:memory:` → an embedded store in memory only;
/// anything else → an embedded redb file at that
/// path (created if missing, parent directories included). `ttl` makes
/// entries expire that long after they are written.
///
/// A Redis server that cannot be reached fails here, within a few seconds,
/// rather than on the first request.
pub async fn open_store(
    spec: &str,
    ttl: Option<Duration>,
) -> Result<Arc<dyn FeatureStore>, StoreError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(StoreError::InvalidSpec {
            spec: spec.to_owned(),
            reason: "empty".to_owned(),
        });
    }
    if spec == embedded::MEMORY_SPEC {
        return Ok(Arc::new(RedbStore::in_memory(ttl)?));
    }
    match spec.split_once("://") {
        None => Ok(Arc::new(RedbStore::open(spec, ttl).await?)),
        Some((scheme, rest)) => {
            // URL schemes are case-insensitive; the Redis client wants lower case.
            let scheme = scheme.to_ascii_lowercase();
            if !REDIS_SCHEMES.contains(&scheme.as_str()) {
                return Err(StoreError::InvalidSpec {
                    spec: spec.to_owned(),
                    reason: format!(
                        "unknown scheme '{scheme}://': use a file path for the embedded store, or {}",
                        REDIS_SCHEMES.map(|s| format!("{s}://")).join(", ")
                    ),
                });
            }
            let url = format!("{scheme}://{rest}");
            Ok(Arc::new(RedisStore::connect(&url, ttl).await?))
        }
    }
}

/// The URL schemes the Redis client understands.
const REDIS_SCHEMES: [&str; 4] = ["redis", "rediss", "redis+unix", "unix"];

/// Absolute expiry as milliseconds since the Unix epoch, 0 meaning never;
/// shared by backends that must implement TTLs themselves.
fn expiry_millis(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(ttl) => {
            now_millis().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Decodes a stored record, turning an undecodable one into a logged miss.
fn decode_or_miss(model: &str, key: &str, bytes: &[u8]) -> Option<FeatureRecord> {
    match FeatureRecord::decode(bytes) {
        Ok(rec) => Some(rec),
        Err(err) => {
            tracing::warn!(model, key = %crate::untrusted::Untrusted(key), error = %err, "undecodable feature record, treating as missing");
            None
        }
    }
}
