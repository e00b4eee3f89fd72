//! Image sources: where photo bytes come from.
//!
//! A server reads every photo through one [`ImageSource`], configured once
//! from a spec string (keys are object keys in S3/GCS or paths relative to
//! the local image root):
//!
//! | spec | backend |
//! |---|---|
//! | `/srv/photos`, `./photos`, `file:///srv/photos` | local directory, read beneath its open descriptor |
//! | `s3://bucket[/prefix]` | Amazon S3 or an S3-compatible server, standard `AWS_*` environment |
//! | `gs://bucket[/prefix]` | Google Cloud Storage, standard `GOOGLE_*` environment |
//!
//! Keys come from clients and are treated as hostile: [`validate_key`] rejects
//! anything that is not a plain relative path before any backend sees it, and
//! the local backend additionally refuses symlinks that lead out of the root,
//! special files (FIFOs, devices, sockets) and, by default, files with more
//! than one hard link.
//! Every failure is a [`SourceError`] for that one image; nothing here panics
//! on client input.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientConfigKey, ObjectStore, ObjectStoreExt, RetryConfig};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Longest accepted key, in bytes (S3's own limit is 1024 bytes as well).
pub const MAX_KEY_BYTES: usize = 1024;

/// Per-image limits applied by [`ImageSource::fetch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Largest accepted object, in bytes (default 50 MiB).
    pub max_bytes: u64,
    /// Deadline for one whole fetch, retries and body included (default 30 s).
    pub timeout: Duration,
    /// Retries after a transient remote error (default 2; 0 disables them).
    pub retries: u32,
    /// Local directory only: read a regular file that has more than one hard
    /// link (default false). A hard link inside the root can name a file
    /// anywhere else on the same file system, and nothing about the link
    /// shows where the other names are, so such files are refused unless the
    /// operator says every link in the root is trusted.
    pub allow_hard_links: bool,
}

impl Default for SourceLimits {
    fn default() -> Self {
        Self {
            max_bytes: 50 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            retries: 2,
            allow_hard_links: false,
        }
    }
}

/// Why an image source could not be built or an image could not be fetched.
///
/// Per-image variants carry messages meant to be returned to the client as
/// the reason that one image failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The key is not an acceptable object key (the reason says why); nothing was read.
    #[error("invalid image key: {0}")]
    InvalidKey(String),
    /// No object under this key.
    #[error("image not found: {0}")]
    NotFound(String),
    /// The object is over [`SourceLimits::max_bytes`].
    #[error("image too large: {size} bytes or more, limit is {limit} bytes")]
    TooLarge {
        /// The object's size, or the bytes seen so far when the read was cut off.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The fetch did not finish within [`SourceLimits::timeout`].
    #[error("timed out fetching the image")]
    Timeout,
    /// A local file with several hard links, refused unless
    /// [`SourceLimits::allow_hard_links`] is set.
    #[error(
        "image refused: the file has {links} hard links, so it may be a file outside the image root"
    )]
    HardLinked {
        /// The file's link count.
        links: u64,
    },
    /// Any other storage failure, with its cause.
    #[error("image storage error: {0}")]
    Backend(String),
    /// The source spec, an option or a limit is unusable (raised when building).
    #[error("invalid image source: {0}")]
    InvalidSpec(String),
}

/// Checks that `key` is a plain relative object key; shared by all sources.
///
/// Accepted: non-empty, at most [`MAX_KEY_BYTES`] bytes, no control
/// characters (NUL included), no backslash, no leading `/`, and no empty,
/// `.` or `..` segments. These rules make a key mean the same object on every
/// backend and keep it lexically inside a local root.
pub fn validate_key(key: &str) -> Result<(), SourceError> {
    let invalid = |reason: &str| Err(SourceError::InvalidKey(reason.to_owned()));
    if key.is_empty() {
        return invalid("key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(SourceError::InvalidKey(format!(
            "key is {} bytes, longer than the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return invalid("key contains a NUL byte");
    }
    if key.chars().any(char::is_control) {
        return invalid("key contains a control character");
    }
    // A backslash is a separator on Windows and an escape elsewhere; no
    // legitimate photo key needs one, and allowing it invites `..\..\x`.
    if key.contains('\\') {
        return invalid("key contains a backslash");
    }
    if key.starts_with('/') {
        return invalid("key is an absolute path");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("key has an empty path segment"),
            "." | ".." => return invalid("key has a '.' or '..' path segment"),
            _ => {}
        }
    }
    Ok(())
}

/// Reads photo bytes by object key from one configured source.
///
/// Cheap to clone; clones share the underlying client and connection pool.
#[derive(Clone)]
pub struct ImageSource {
    backend: Backend,
    limits: SourceLimits,
    description: String,
    public_description: String,
}

// By hand rather than derived: the stores' own Debug output includes their
// credential providers, which have no business in logs.
impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageSource")
            .field("source", &self.description)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What [`ImageSource::fetch`] must do besides asking the store.
#[derive(Clone)]
enum Backend {
    /// Local directory: `root` is canonical (symlinks resolved) and `dir` is
    /// the root held open, so every file is opened relative to it.
    Local { root: PathBuf, dir: Arc<OwnedFd> },
    /// S3 or GCS: the key checks are all that is needed.
    Remote(Arc<dyn ObjectStore>),
}

/// A parsed source spec.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Local(PathBuf),
    S3 {
        bucket: String,
        prefix: Option<String>,
    },
    Gcs {
        bucket: String,
        prefix: Option<String>,
    },
}

impl ImageSource {
    /// `spec`: a local directory path (or file:// URL), `s3://bucket[/prefix]`, or `gs://bucket[/prefix]`.
    ///
    /// S3 reads the standard AWS environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
    /// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, ...); GCS reads
    /// `GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT`,
    /// `GOOGLE_SERVICE_ACCOUNT_KEY`, ... A local directory must exist.
    pub fn from_spec(spec: &str, limits: SourceLimits) -> Result<Self, SourceError> {
        Self::from_spec_with_options(spec, limits, &[] as &[(&str, &str)])
    }

    /// Like [`ImageSource::from_spec`], with explicit settings layered over the environment.
    ///
    /// `options` are object_store configuration keys, in the environment's
    /// spelling or without its prefix (`aws_endpoint` or `endpoint`,
    /// `aws_allow_http`, `aws_access_key_id`, `google_service_account`, ...;
    /// case-insensitive) and win over the environment. The bucket always
    /// comes from the spec. A local directory accepts no options. This lets
    /// tests point a source at a private server without touching the
    /// process environment, which parallel tests share.
    pub fn from_spec_with_options<K: AsRef<str>, V: AsRef<str>>(
        spec: &str,
        limits: SourceLimits,
        options: &[(K, V)],
    ) -> Result<Self, SourceError> {
        check_limits(&limits)?;
        match parse_spec(spec)? {
            Spec::Local(dir) => {
                if !options.is_empty() {
                    return Err(SourceError::InvalidSpec(
                        "a local directory source takes no options".to_owned(),
                    ));
                }
                Self::local(&dir, limits)
            }
            Spec::S3 { bucket, prefix } => {
                let mut builder = AmazonS3Builder::from_env();
                for (key, value) in options {
                    let key = key.as_ref();
                    let parsed: AmazonS3ConfigKey =
                        key.to_ascii_lowercase().parse().map_err(|_| {
                            SourceError::InvalidSpec(format!("unknown S3 option '{key}'"))
                        })?;
                    builder = builder.with_config(parsed, value.as_ref());
                }
                let builder = builder
                    .with_bucket_name(&bucket)
                    .with_retry(retry_config(&limits))
                    .with_config(
                        AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                        duration_config(limits.timeout),
                    );
                let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
                let store = builder
                    .build()
                    .map_err(|e| SourceError::InvalidSpec(format!("S3: {e}")))?;
                let public = url_description("s3", &bucket, prefix.as_deref());
                let description = match endpoint {
                    Some(endpoint) => format!("{public} at {}", redact_url(&endpoint)),
                    None => public.clone(),
                };
                Ok(Self::remote(store, prefix, limits, description, public))
            }
            Spec::Gcs { bucket, prefix } => {
                let mut builder = GoogleCloudStorageBuilder::from_env();
                for (key, value) in options {
                    let key = key.as_ref();
                    let parsed: GoogleConfigKey =
                        key.to_ascii_lowercase().parse().map_err(|_| {
                            SourceError::InvalidSpec(format!("unknown GCS option '{key}'"))
                        })?;
                    builder = builder.with_config(parsed, value.as_ref());
                }
                let store = builder
                    .with_bucket_name(&bucket)
                    .with_retry(retry_config(&limits))
                    .with_config(
                        GoogleConfigKey::Client(ClientConfigKey::Timeout),
                        duration_config(limits.timeout),
                    )
                    .build()
                    .map_err(|e| SourceError::InvalidSpec(format!("GCS: {e}")))?;
                let description = url_description("gs", &bucket, prefix.as_deref());
                Ok(Self::remote(
                    store,
                    prefix,
                    limits,
                    description.clone(),
                    description,
                ))
            }
        }
    }

    fn local(dir: &FsPath, limits: SourceLimits) -> Result<Self, SourceError> {
        let root = std::fs::canonicalize(dir).map_err(|e| {
            SourceError::InvalidSpec(format!("image directory {}: {e}", dir.display()))
        })?;
        if !root.is_dir() {
            return Err(SourceError::InvalidSpec(format!(
                "{} is not a directory",
                dir.display()
            )));
        }
        let dir = rustix::fs::open(
            &root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SourceError::InvalidSpec(format!("image directory {}: {e}", dir.display())))?;
        Ok(Self {
            description: format!("local directory {}", root.display()),
            public_description: "a local directory".to_owned(),
            backend: Backend::Local {
                root,
                dir: Arc::new(dir),
            },
            limits,
        })
    }

    fn remote<S: ObjectStore>(
        store: S,
        prefix: Option<String>,
        limits: SourceLimits,
        description: String,
        public_description: String,
    ) -> Self {
        let store: Arc<dyn ObjectStore> = match prefix {
            Some(prefix) => Arc::new(PrefixStore::new(store, prefix)),
            None => Arc::new(store),
        };
        Self {
            backend: Backend::Remote(store),
            limits,
            description,
            public_description,
        }
    }

    /// Fetches one object; bounded retries on transient errors; a per-fetch timeout.
    ///
    /// The key is checked with [`validate_key`] first. Retries are
    /// object_store's own (remote backends only: connection errors, 5xx,
    /// timeouts of idempotent requests), at most [`SourceLimits::retries`];
    /// [`SourceLimits::timeout`] bounds the whole call, retries included.
    /// Runs on a Tokio runtime with the time driver enabled (`#[tokio::main]`
    /// and `#[tokio::test]` enable it).
    pub async fn fetch(&self, key: &str) -> Result<Bytes, SourceError> {
        validate_key(key)?;
        match tokio::time::timeout(self.limits.timeout, self.fetch_unbounded(key)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(SourceError::Timeout),
        }
    }

    /// A human-readable description of the source for logs (no credentials).
    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// What a client may be told about the source: the bucket, never a local
    /// path or an endpoint.
    pub fn public_description(&self) -> String {
        self.public_description.clone()
    }

    /// The limits this source enforces.
    pub fn limits(&self) -> &SourceLimits {
        &self.limits
    }

    async fn fetch_unbounded(&self, key: &str) -> Result<Bytes, SourceError> {
        let store = match &self.backend {
            Backend::Local { root, dir } => {
                let (root, dir, key) = (root.clone(), dir.clone(), key.to_owned());
                let limits = self.limits;
                // canonicalize, open, fstat and read are blocking syscalls.
                return tokio::task::spawn_blocking(move || read_local(&root, &dir, &key, &limits))
                    .await
                    .map_err(|e| SourceError::Backend(format!("local read task failed: {e}")))?;
            }
            Backend::Remote(store) => store,
        };
        let location =
            ObjectPath::parse(key).map_err(|e| SourceError::InvalidKey(e.to_string()))?;
        let result = store
            .get(&location)
            .await
            .map_err(|e| self.store_error(e, key))?;
        // The size comes with the response metadata (the HTTP
        // Content-Length), so an oversized object is refused before any of
        // its body is read.
        let limit = self.limits.max_bytes;
        let size = result.meta.size;
        if size > limit {
            return Err(SourceError::TooLarge { size, limit });
        }
        // Still cap the read itself: a server can send more than it announced.
        let mut body = result.into_stream();
        let mut buf = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.store_error(e, key))?;
            let total = (buf.len() as u64).saturating_add(chunk.len() as u64);
            if total > limit {
                return Err(SourceError::TooLarge { size: total, limit });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }

    /// Maps an object_store error to the per-image error a client sees.
    fn store_error(&self, error: object_store::Error, key: &str) -> SourceError {
        match error {
            object_store::Error::NotFound { .. } => SourceError::NotFound(key.to_owned()),
            object_store::Error::InvalidPath { source } => {
                SourceError::InvalidKey(source.to_string())
            }
            other if is_timeout(&other) => SourceError::Timeout,
            other => SourceError::Backend(other.to_string()),
        }
    }
}

/// Whether an object_store error was caused by an HTTP timeout.
fn is_timeout(error: &object_store::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<HttpError>() {
            if http.kind() == HttpErrorKind::Timeout {
                return true;
            }
        }
        cause = current.source();
    }
    false
}

/// Reads `key` from the local image root, refusing anything outside it and
/// anything that is not a regular file.
///
/// A key is lexically inside the root ([`validate_key`]), but a symlink in
/// the root (left by whoever fills the photo directory, or planted by a
/// compromised uploader) could still point at `/etc/shadow`, and someone with
/// write access could swap a checked file for a FIFO, on which a plain
/// `open` blocks forever. So:
///
/// 1. the real path of `root/key` is computed (every symlink resolved) and
///    must lie under the canonical root; symlinks that stay inside are fine;
/// 2. that symlink-free relative path is opened beneath the held-open root
///    with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `O_NONBLOCK` and
///    `O_NOFOLLOW`: a link swapped into any component after step 1 fails the
///    open instead of being followed, and a FIFO opens without waiting for
///    a writer (kernels without `openat2` fall back to `openat` with
///    `O_NOFOLLOW`, which guards the last component);
/// 3. the *opened* descriptor is checked with `fstat`: it must be a regular
///    file, and one with a single link unless hard links are allowed;
/// 4. at most `max_bytes + 1` bytes are read, so a file growing meanwhile
///    cannot push past the limit.
fn read_local(
    root: &FsPath,
    dir: &OwnedFd,
    key: &str,
    limits: &SourceLimits,
) -> Result<Bytes, SourceError> {
    let not_found = || SourceError::NotFound(key.to_owned());
    let io_error = |error: std::io::Error| match error.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory => not_found(),
        // std's io errors carry no path, so the message is safe to return.
        _ => SourceError::Backend(error.to_string()),
    };
    let real = std::fs::canonicalize(root.join(key)).map_err(io_error)?;
    // `Path::starts_with` compares whole components: `/photos2` is not under `/photos`.
    let relative = real
        .strip_prefix(root)
        .map_err(|_| SourceError::InvalidKey("key resolves outside the image root".to_owned()))?;
    let file = open_beneath(dir, relative).map_err(|errno| match errno {
        Errno::NOENT | Errno::NOTDIR => not_found(),
        // ENXIO: a socket; ELOOP/EXDEV: a link appeared after the check.
        Errno::NXIO => not_found(),
        Errno::LOOP | Errno::XDEV => {
            SourceError::Backend("the file changed while it was being opened".to_owned())
        }
        other => SourceError::Backend(std::io::Error::from(other).to_string()),
    })?;
    let stat = rustix::fs::fstat(&file)
        .map_err(|e| SourceError::Backend(std::io::Error::from(e).to_string()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(not_found());
    }
    // nlink_t is u64 on 64-bit Linux and u32 elsewhere.
    #[allow(clippy::useless_conversion)]
    let links = u64::from(stat.st_nlink);
    if links > 1 && !limits.allow_hard_links {
        return Err(SourceError::HardLinked { links });
    }
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    let limit = limits.max_bytes;
    if size > limit {
        return Err(SourceError::TooLarge { size, limit });
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    std::fs::File::from(file)
        .take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io_error)?;
    let total = buf.len() as u64;
    if total > limit {
        return Err(SourceError::TooLarge { size: total, limit });
    }
    Ok(Bytes::from(buf))
}

/// Opens a symlink-free `relative` path beneath `dir` without following any
/// link and without blocking on a FIFO.
fn open_beneath(dir: &OwnedFd, relative: &FsPath) -> Result<OwnedFd, Errno> {
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // An empty relative path is the root itself, which is not a file.
    let relative = if relative.as_os_str().is_empty() {
        FsPath::new(".")
    } else {
        relative
    };
    match rustix::fs::openat2(
        dir,
        relative,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    ) {
        // Kernels before 5.6, and sandboxes that filter the call.
        Err(Errno::NOSYS | Errno::PERM) => rustix::fs::openat(dir, relative, flags, Mode::empty()),
        other => other,
    }
}

fn check_limits(limits: &SourceLimits) -> Result<(), SourceError> {
    if limits.max_bytes == 0 {
        return Err(SourceError::InvalidSpec(
            "max_bytes must be positive".to_owned(),
        ));
    }
    if limits.timeout.is_zero() {
        return Err(SourceError::InvalidSpec(
            "timeout must be positive".to_owned(),
        ));
    }
    Ok(())
}

/// object_store's retry policy for remote stores, bounded by the limits.
fn retry_config(limits: &SourceLimits) -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            // Waiting longer than a couple of seconds between attempts only
            // burns the per-fetch deadline.
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: limits.retries as usize,
        retry_timeout: limits.timeout,
    }
}

/// A duration in the humantime form object_store's config keys parse.
fn duration_config(duration: Duration) -> String {
    format!("{}ms", duration.as_millis().max(1))
}

fn url_description(scheme: &str, bucket: &str, prefix: Option<&str>) -> String {
    match prefix {
        Some(prefix) => format!("{scheme}://{bucket}/{prefix}"),
        None => format!("{scheme}://{bucket}"),
    }
}

/// Drops any user:password part of an endpoint URL before it is logged.
fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut parsed) => {
            // Both setters only fail for URLs that cannot have credentials.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => "<unparsable endpoint>".to_owned(),
    }
}

fn parse_spec(spec: &str) -> Result<Spec, SourceError> {
    if spec.is_empty() {
        return Err(SourceError::InvalidSpec("empty source spec".to_owned()));
    }
    if let Some(rest) = spec.strip_prefix("s3://") {
        let (bucket, prefix) = bucket_and_prefix(rest, spec)?;
        return Ok(Spec::S3 { bucket, prefix });
    }
    if let Some(rest) = spec.strip_prefix("gs://") {
        let (bucket, prefix) = bucket_and_prefix(rest, spec)?;
        return Ok(Spec::Gcs { bucket, prefix });
    }
    if spec.starts_with("file://") {
        let url = url::Url::parse(spec)
            .map_err(|e| SourceError::InvalidSpec(format!("'{spec}': {e}")))?;
        let path = url
            .to_file_path()
            .map_err(|()| SourceError::InvalidSpec(format!("'{spec}' is not a local file URL")))?;
        return Ok(Spec::Local(path));
    }
    if let Some((scheme, _)) = spec.split_once("://") {
        let looks_like_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if looks_like_scheme {
            return Err(SourceError::InvalidSpec(format!(
                "unsupported source '{scheme}://' (use a directory, file://, s3:// or gs://)"
            )));
        }
    }
    Ok(Spec::Local(PathBuf::from(spec)))
}

/// Splits `bucket[/prefix]`; the prefix obeys the key rules, minus a trailing `/`.
fn bucket_and_prefix(rest: &str, spec: &str) -> Result<(String, Option<String>), SourceError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (1..=222).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !bucket_ok {
        return Err(SourceError::InvalidSpec(format!(
            "'{spec}': bucket name must be 1-222 letters, digits, '-', '.' or '_'"
        )));
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return Ok((bucket.to_owned(), None));
    }
    validate_key(prefix).map_err(|e| match e {
        SourceError::InvalidKey(reason) => {
            SourceError::InvalidSpec(format!("'{spec}': prefix: {reason}"))
        }
        other => other,
    })?;
    Ok((bucket.to_owned(), Some(prefix.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(bucket: &str, prefix: Option<&str>) -> (String, Option<String>) {
        (bucket.to_owned(), prefix.map(str::to_owned))
    }

    #[test]
    fn parses_cloud_specs() {
        for (spec, (bucket, prefix)) in [
            ("gs://photos", remote("photos", None)),
            ("gs://photos/", remote("photos", None)),
            ("gs://photos/albums", remote("photos", Some("albums"))),
            (
                "gs://my_bucket.v2/a/b/",
                remote("my_bucket.v2", Some("a/b")),
            ),
        ] {
            assert_eq!(
                parse_spec(spec).unwrap(),
                Spec::Gcs { bucket, prefix },
                "{spec}"
            );
        }
        assert_eq!(
            parse_spec("s3://photos/albums/2024").unwrap(),
            Spec::S3 {
                bucket: "photos".into(),
                prefix: Some("albums/2024".into())
            }
        );
    }

    #[test]
    fn parses_local_specs() {
        assert_eq!(
            parse_spec("/srv/photos").unwrap(),
            Spec::Local("/srv/photos".into())
        );
        assert_eq!(parse_spec("photos").unwrap(), Spec::Local("photos".into()));
        assert_eq!(
            parse_spec("file:///srv/my%20photos").unwrap(),
            Spec::Local("/srv/my photos".into())
        );
    }

    #[test]
    fn rejects_bad_specs() {
        for spec in [
            "",
            "gs://",
            "gs:///prefix",
            "s3://bucket/../x",
            "s3://bucket//x",
            "s3://user:pw@bucket",
            "gs://bucket?x=1",
            "http://example.com/photos",
            "azure://container",
            "file://remote-host/photos",
        ] {
            assert!(
                matches!(parse_spec(spec), Err(SourceError::InvalidSpec(_))),
                "{spec:?} should be rejected"
            );
        }
    }

    #[test]
    fn redacts_endpoint_credentials() {
        assert_eq!(
            redact_url("http://user:secret@127.0.0.1:9000"),
            "http://127.0.0.1:9000/"
        );
    }
}
