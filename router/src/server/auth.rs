//! API-key authentication of the `/api/*` routes.
//!
//! With one or more keys configured (`--api-key`, `ONGI_API_KEY`), every
//! `/api/*` request must carry `Authorization: Bearer KEY` or `X-API-Key: KEY`
//! for one of them; anything else is answered 403 `unauthorized_server`
//! before the body is read. Several keys are accepted at once so that a key
//! can be rotated without downtime.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;

/// One configured API key; its `Debug` output never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl FromStr for ApiKey {
    type Err = String;

    /// Accepts a non-empty key of visible ASCII characters (what an HTTP
    /// header can carry unchanged); surrounding whitespace is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.trim();
        if key.is_empty() {
            return Err("an API key must not be empty".into());
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("an API key may hold only visible ASCII characters (no spaces)".into());
        }
        Ok(Self(key.to_owned()))
    }
}

/// The accepted keys; empty means authentication is off.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    /// The keys from the command line (duplicates dropped).
    pub fn new(keys: &[ApiKey]) -> Self {
        let mut unique: Vec<ApiKey> = Vec::new();
        for key in keys {
            if !unique.contains(key) {
                unique.push(key.clone());
            }
        }
        Self { keys: unique }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Number of accepted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether `candidate` is one of the keys. Every key is compared, each in
    /// constant time, so the time taken does not depend on which key (if any)
    /// matched or on how much of it matched.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let mut matched = 0u8;
        for key in &self.keys {
            matched |= u8::from(constant_time_eq(key.0.as_bytes(), candidate));
        }
        matched != 0
    }

    /// Whether the request's headers carry an accepted key.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| bearer_token(v.as_bytes()));
        let api_key = headers
            .get_all("x-api-key")
            .iter()
            .map(|v| trim_ascii(v.as_bytes()));
        let mut ok = false;
        for candidate in bearer.chain(api_key) {
            ok |= self.accepts(candidate);
        }
        ok
    }
}

/// The keys in `path`: one per line; blank lines and lines starting with `#`
/// are skipped. A file readable by other users is accepted with a warning.
pub fn read_key_file(path: &std::path::Path) -> anyhow::Result<Vec<ApiKey>> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API key file {}", path.display()))?;
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.parse::<ApiKey>().map_err(|reason| {
            anyhow::anyhow!(
                "API key file {} line {}: {reason}",
                path.display(),
                number + 1
            )
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        anyhow::bail!("the API key file {} holds no key", path.display());
    }
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the API key file is readable by other users; `chmod 600` it"
            );
        }
    }
    Ok(keys)
}

/// The token of `Bearer TOKEN` (scheme case-insensitive), if that is the header's form.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = trim_ascii(value);
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.first()?.is_ascii_whitespace() {
        return None;
    }
    Some(trim_ascii(rest))
}

fn trim_ascii(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !first.is_ascii_whitespace() {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !last.is_ascii_whitespace() {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Compares a secret with a candidate without data-dependent branches or
/// early exits: the loop always runs over the whole secret (its length is the
/// only thing the timing depends on), differences are OR-accumulated, and a
/// length mismatch is folded into the result instead of returning early.
/// `black_box` keeps the optimiser from turning the accumulation into an
/// early-exit comparison.
fn constant_time_eq(secret: &[u8], candidate: &[u8]) -> bool {
    let mut diff = (secret.len() ^ candidate.len()) as u64;
    for (i, &s) in secret.iter().enumerate() {
        // A candidate shorter than the secret is padded with bytes that never match.
        let c = candidate.get(i).copied().unwrap_or(!s);
        diff = std::hint::black_box(diff | u64::from(s ^ c));
    }
    diff == 0
}

/// Middleware on the `/api/*` routes: 403 `unauthorized_server` unless the
/// request carries an accepted key.
pub async fn require_api_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    if keys.authorizes(request.headers()) {
        return next.run(request).await;
    }
    metrics::counter!("ongi_unauthorized_requests_total").increment(1);
    tracing::info!(
        path = %ongi_core::untrusted::Untrusted(request.uri().path()),
        key_present = request.headers().contains_key(header::AUTHORIZATION)
            || request.headers().contains_key("x-api-key"),
        "request refused: missing or wrong API key"
    );
    ApiError::Unauthorized.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys(list: &[&str]) -> ApiKeys {
        ApiKeys::new(&list.iter().map(|k| k.parse().unwrap()).collect::<Vec<_>>())
    }

    #[test]
    fn constant_time_eq_matches_only_equal_bytes() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secre"));
        assert!(!constant_time_eq(b"secret", b"secrets"));
        assert!(!constant_time_eq(b"secret", b""));
        // a candidate byte equal to the padding must not help a short candidate
        assert!(!constant_time_eq(b"\x00", b""));
    }

    #[test]
    fn keys_parse_and_rotate() {
        assert!("".parse::<ApiKey>().is_err());
        assert!("has space".parse::<ApiKey>().is_err());
        assert_eq!(
            format!("{:?}", "k1".parse::<ApiKey>().unwrap()),
            "ApiKey(<redacted>)"
        );
        let k = keys(&["old-key", "new-key", "old-key"]);
        assert_eq!(k.len(), 2);
        assert!(k.accepts(b"old-key") && k.accepts(b"new-key"));
        assert!(!k.accepts(b"other") && !k.accepts(b""));
        assert!(!ApiKeys::default().enabled());
    }

    #[test]
    fn headers_are_read_in_both_forms() {
        let k = keys(&["abc123"]);
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            h
        };
        assert!(k.authorizes(&with("authorization", "Bearer abc123")));
        assert!(k.authorizes(&with("authorization", "bearer  abc123 ")));
        assert!(k.authorizes(&with("x-api-key", "abc123")));
        assert!(!k.authorizes(&with("authorization", "abc123")));
        assert!(!k.authorizes(&with("authorization", "Basic abc123")));
        assert!(!k.authorizes(&with("authorization", "Bearerabc123")));
        assert!(!k.authorizes(&with("x-api-key", "abc124")));
        assert!(!k.authorizes(&HeaderMap::new()));
    }
}
