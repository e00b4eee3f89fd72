//! Redis backend, for several servers sharing one cache.
//!
//! Key layout (values are raw bytes, no JSON):
//!
//! - `ongi:v1:{model}:{key}` → [`FeatureRecord::encode`](crate::features::FeatureRecord::encode) of image `key`;
//! - `ongi:blob:v1:{model}:{name}` → opaque blob bytes.
//!
//! `{model}` is the model identity with `%` written as `%25` and `:` as
//! `%3A`, so that a `:` inside a model identity can never make two
//! (model, key) pairs share a Redis key; `{key}` and `{name}` are verbatim
//! (they are the last component). The second component differs between
//! records (`v1`) and blobs (`blob`), so the two namespaces cannot collide.
//! `v1` is the layout/format version: a future incompatible record format
//! moves to `v2` and never misreads old values.
//!
//! TTLs are Redis's own (`SET … PX ms`), so expiry is exact and eager.
//!
//! The connection is a [`ConnectionManager`]: one multiplexed connection
//! that reconnects by itself after an outage. Every call is bounded by
//! connection/response timeouts and an overall deadline, so a dead or hung
//! Redis turns into a prompt [`StoreError`] instead of a stalled request.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, RedisError};

use super::{FeatureStore, StoreError};

/// Each TCP connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A command whose reply has not arrived after this long fails. Generous
/// enough for an MGET of thousands of 2 KiB records over a LAN.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnection attempts per outage before a call fails (with backoff from
/// 50 ms, capped at 500 ms); the next call starts a fresh reconnection.
const RECONNECT_RETRIES: usize = 2;
/// Hard upper bound on any one store call, whatever the client's retries do.
const CALL_DEADLINE: Duration = Duration::from_secs(3);

/// Feature store on a Redis server (see the module docs for the key layout).
pub struct RedisStore {
    conn: ConnectionManager,
    target: String,
    ttl_ms: Option<u64>,
}

impl RedisStore {
    /// Connects to `url` (`redis://[user:pass@]host:port[/db]` or `rediss://…`
    /// for TLS); `ttl` makes every entry written expire that long after
    /// writing. Fails if the server cannot be reached within a few seconds.
    pub async fn connect(url: &str, ttl: Option<Duration>) -> Result<Self, StoreError> {
        if url.starts_with("rediss://") {
            // object_store's TLS stack enables more than one rustls crypto
            // provider, and rustls then refuses to pick one implicitly;
            // install aws-lc-rs as the process default unless someone
            // already installed one (the error only means "already set").
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = redis::Client::open(url).map_err(|source| StoreError::Redis {
            target: redact(url),
            source,
        })?;
        let info = client.get_connection_info();
        let target = match info.addr() {
            ConnectionAddr::TcpTls { .. } => {
                format!("rediss://{}/{}", info.addr(), info.redis_settings().db())
            }
            _ => format!("redis://{}/{}", info.addr(), info.redis_settings().db()),
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = with_deadline(
            &target,
            "connect",
            ConnectionManager::new_with_config(client, config),
        )
        .await?;
        let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        Ok(Self {
            conn,
            target,
            ttl_ms,
        })
    }

    /// Sets `(redis key, value)` pairs in one pipeline, with the store's TTL.
    async fn set_all(&self, entries: &[(String, &[u8])]) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            let cmd = pipe.cmd("SET").arg(key).arg(*value);
            if let Some(ms) = self.ttl_ms {
                cmd.arg("PX").arg(ms);
            }
            cmd.ignore();
        }
        let mut conn = self.conn.clone();
        with_deadline(&self.target, "SET", pipe.exec_async(&mut conn)).await
    }
}

/// Runs a Redis future under [`CALL_DEADLINE`], mapping both failure kinds.
async fn with_deadline<T>(
    target: &str,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(CALL_DEADLINE, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(StoreError::Redis {
            target: target.to_owned(),
            source,
        }),
        Err(_) => Err(StoreError::Timeout {
            target: target.to_owned(),
            op,
            after: CALL_DEADLINE,
        }),
    }
}

/// The model component of a key: `%` and `:` percent-encoded, nothing else.
fn escape_model(model: &str) -> String {
    model.replace('%', "%25").replace(':', "%3A")
}

/// Redis key of an image's feature record.
fn record_key(model: &str, key: &str) -> String {
    format!("ongi:v1:{}:{key}", escape_model(model))
}

/// Redis key of a blob.
fn blob_key(model: &str, name: &str) -> String {
    format!("ongi:blob:v1:{}:{name}", escape_model(model))
}

/// A URL safe to log: anything between `://` and `@` (credentials) removed.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

#[async_trait::async_trait]
impl FeatureStore for RedisStore {
    async fn get_encoded(
        &self,
        model: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        // MGET with no keys is a Redis error, and there is nothing to fetch.
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rkeys: Vec<String> = keys.iter().map(|k| record_key(model, k)).collect();
        let mut conn = self.conn.clone();
        with_deadline(
            &self.target,
            "MGET",
            redis::cmd("MGET").arg(&rkeys).query_async(&mut conn),
        )
        .await
    }

    async fn put_encoded(
        &self,
        model: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let entries: Vec<(String, &[u8])> = records
            .iter()
            .map(|(k, v)| (record_key(model, k), v.as_slice()))
            .collect();
        self.set_all(&entries).await
    }

    async fn get_blob(&self, model: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn.clone();
        with_deadline(
            &self.target,
            "GET",
            redis::cmd("GET")
                .arg(blob_key(model, name))
                .query_async(&mut conn),
        )
        .await
    }

    async fn put_blob(&self, model: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.set_all(&[(blob_key(model, name), bytes)]).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        with_deadline(
            &self.target,
            "PING",
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map(|_| ())
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_collide_across_models_or_namespaces() {
        assert_eq!(
            record_key("clip-b32", "a/b.jpg"),
            "ongi:v1:clip-b32:a/b.jpg"
        );
        assert_ne!(record_key("a:b", "c"), record_key("a", "b:c"));
        assert_ne!(record_key("a%3Ab", "c"), record_key("a:b", "c"));
        assert_ne!(record_key("blob", "v1:m:n"), blob_key("m", "n"));
        assert_eq!(blob_key("m:x", "n"), "ongi:blob:v1:m%3Ax:n");
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redact("redis://user:pw@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
