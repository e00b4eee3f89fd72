//! Embedded backend: one redb file.
//!
//! Two tables, both keyed by `(model, name)` tuples so models never collide
//! and keys need no escaping:
//!
//! - `features_v1`: image key → feature record;
//! - `blobs_v1`: blob name → opaque bytes.
//!
//! Each value is an 8-byte little-endian expiry (Unix milliseconds, 0 =
//! never) followed by the payload ([`FeatureRecord::encode`](crate::features::FeatureRecord::encode) for records).
//! Expiry is lazy: an expired entry reads as absent but stays in the file
//! until it is overwritten or [`RedbStore::purge_expired`] runs.
//!
//! Every `put_many` / `put_blob` is one write transaction committed with
//! redb's default immediate durability (fsync before `commit` returns), so a
//! returned `Ok` survives a crash and nothing is ever left to flush. redb calls block on file I/O, so they
//! run under `spawn_blocking`, off the async workers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{expiry_millis, now_millis, FeatureStore, StoreError};

/// `(model, image key)` → expiry + encoded record.
const RECORDS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("features_v1");
/// `(model, blob name)` → expiry + bytes.
const BLOBS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("blobs_v1");

/// The store spec of [`RedbStore::in_memory`].
pub const MEMORY_SPEC: &str = ":memory:";

/// Length of the expiry prefix of every stored value.
const EXPIRY_LEN: usize = 8;

/// Feature store in a single redb file (see the module docs for the layout).
pub struct RedbStore {
    db: Arc<Database>,
    path: PathBuf,
    ttl: Option<Duration>,
}

impl RedbStore {
    /// Opens (creating if needed) the database file at `path`; `ttl` makes
    /// entries written through this handle expire that long after writing.
    ///
    /// Fails if another process (or another handle in this one) has the file
    /// open: redb takes an exclusive lock.
    pub async fn open(path: impl AsRef<Path>, ttl: Option<Duration>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let p = path.clone();
        let db = tokio::task::spawn_blocking(move || open_blocking(&p)).await??;
        Ok(Self {
            db: Arc::new(db),
            path,
            ttl,
        })
    }

    /// A store in memory only, gone with the process: for one-shot commands
    /// whose inputs are files that may change between runs.
    pub fn in_memory(ttl: Option<Duration>) -> Result<Self, StoreError> {
        let path = PathBuf::from(MEMORY_SPEC);
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| redb_err(&path, e))?;
        create_tables(&db, &path)?;
        Ok(Self {
            db: Arc::new(db),
            path,
            ttl,
        })
    }

    /// Deletes every expired entry now, returning how many were removed.
    /// Reads already ignore expired entries; this only reclaims space.
    pub async fn purge_expired(&self) -> Result<u64, StoreError> {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let now = now_millis();
            let mut removed = 0u64;
            let txn = db.begin_write().map_err(|e| redb_err(&path, e))?;
            for table in [RECORDS, BLOBS] {
                let mut t = txn.open_table(table).map_err(|e| redb_err(&path, e))?;
                t.retain(|_, v| {
                    let keep = !is_expired(v, now);
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(|e| redb_err(&path, e))?;
            }
            txn.commit().map_err(|e| redb_err(&path, e))?;
            Ok(removed)
        })
        .await?
    }

    /// Runs a blocking closure against the database on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&db, &path)).await?
    }

    /// Writes `(key, payload)` pairs to `table` under `model` in one transaction.
    async fn put_raw(
        &self,
        table: TableDefinition<'static, (&'static str, &'static str), &'static [u8]>,
        model: &str,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let model = model.to_owned();
        let expiry = expiry_millis(self.ttl);
        self.blocking(move |db, path| {
            let txn = db.begin_write().map_err(|e| redb_err(path, e))?;
            {
                let mut t = txn.open_table(table).map_err(|e| redb_err(path, e))?;
                let mut value = Vec::new();
                for (key, payload) in &entries {
                    value.clear();
                    value.extend_from_slice(&expiry.to_le_bytes());
                    value.extend_from_slice(payload);
                    t.insert((model.as_str(), key.as_str()), value.as_slice())
                        .map_err(|e| redb_err(path, e))?;
                }
            }
            txn.commit().map_err(|e| redb_err(path, e))
        })
        .await
    }

    /// Reads payloads for `keys` from `table` under `model` in one read
    /// transaction; expired entries come back as `None`.
    async fn get_raw(
        &self,
        table: TableDefinition<'static, (&'static str, &'static str), &'static [u8]>,
        model: &str,
        keys: Vec<String>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let model = model.to_owned();
        self.blocking(move |db, path| {
            let now = now_millis();
            let txn = db.begin_read().map_err(|e| redb_err(path, e))?;
            let t = txn.open_table(table).map_err(|e| redb_err(path, e))?;
            keys.iter()
                .map(|key| {
                    let guard = t
                        .get((model.as_str(), key.as_str()))
                        .map_err(|e| redb_err(path, e))?;
                    Ok(guard.and_then(|g| {
                        let v = g.value();
                        if is_expired(v, now) {
                            None
                        } else {
                            v.get(EXPIRY_LEN..).map(<[u8]>::to_vec)
                        }
                    }))
                })
                .collect()
        })
        .await
    }
}

/// Creates or opens the file and makes sure both tables exist, so later read
/// transactions never see "table does not exist".
fn open_blocking(path: &Path) -> Result<Database, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    let damaged = |detail: String| StoreError::Damaged {
        path: path.display().to_string(),
        detail,
    };
    // redb reports most damage as `Corrupted`, but some damaged files make it
    // panic while reading them; either way the answer is the same.
    let opened = quiet_panics(|| {
        let db = Database::create(path).map_err(|e| redb_err(path, e))?;
        create_tables(&db, path)?;
        Ok(db)
    });
    match opened {
        Ok(Err(StoreError::Redb {
            source: redb::Error::Corrupted(detail),
            ..
        })) => Err(damaged(detail)),
        // "Not a redb database: magic number mismatch" and the like.
        Ok(Err(StoreError::Redb {
            source: redb::Error::Io(err),
            ..
        })) if err.kind() == std::io::ErrorKind::InvalidData => Err(damaged(err.to_string())),
        Ok(result) => result,
        Err(panic) => Err(damaged(panic_message(panic.as_ref()))),
    }
}

fn create_tables(db: &Database, path: &Path) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(|e| redb_err(path, e))?;
    txn.open_table(RECORDS).map_err(|e| redb_err(path, e))?;
    txn.open_table(BLOBS).map_err(|e| redb_err(path, e))?;
    txn.commit().map_err(|e| redb_err(path, e))
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic without the panic hook's report (which would
/// show the user a backtrace note for what is a damaged file). Panics on
/// other threads are reported as usual.
fn quiet_panics<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    result
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "the store library failed while reading it".to_owned())
}

/// Whether a stored value's expiry prefix lies in the past. A value too short
/// to hold the prefix counts as expired (it cannot be a valid entry).
fn is_expired(value: &[u8], now: u64) -> bool {
    match value.get(..EXPIRY_LEN) {
        Some(prefix) => {
            let mut b = [0u8; EXPIRY_LEN];
            b.copy_from_slice(prefix);
            let expiry = u64::from_le_bytes(b);
            expiry != 0 && expiry <= now
        }
        None => true,
    }
}

/// Wraps any redb error with the file it concerns.
fn redb_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Redb {
        path: path.display().to_string(),
        source: e.into(),
    }
}

#[async_trait::async_trait]
impl FeatureStore for RedbStore {
    async fn get_encoded(
        &self,
        model: &str,
        keys: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.get_raw(RECORDS, model, keys.to_vec()).await
    }

    async fn put_encoded(
        &self,
        model: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.put_raw(RECORDS, model, records.to_vec()).await
    }

    async fn get_blob(&self, model: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut raw = self.get_raw(BLOBS, model, vec![name.to_owned()]).await?;
        Ok(raw.pop().flatten())
    }

    async fn put_blob(&self, model: &str, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.put_raw(BLOBS, model, vec![(name.to_owned(), bytes.to_vec())])
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.get_raw(BLOBS, "", vec![String::new()])
            .await
            .map(|_| ())
    }

    fn describe(&self) -> String {
        format!("redb:{}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quiet_panics_become_errors_with_their_message() {
        let caught = super::quiet_panics(|| -> u8 { panic!("page 7 is unreadable") });
        let payload = caught.unwrap_err();
        assert_eq!(
            super::panic_message(payload.as_ref()),
            "page 7 is unreadable"
        );
        assert_eq!(super::quiet_panics(|| 5).unwrap(), 5);
    }
}
