//! One HTTP/1.1 connection: what phase it is in, the deadline of that phase,
//! and how it ends (timeout, eviction, shutdown).
//!
//! hyper gives a connection a header-read timeout and nothing else; a client
//! that sends half a body, never reads its answer, or sits idle on a
//! keep-alive connection holds a socket (and a file descriptor) forever, and
//! graceful shutdown waits for all of them. So each connection keeps a small
//! [`ConnState`], updated by its socket wrapper ([`TrackedIo`]), its request
//! bodies ([`TrackedBody`]) and its request handler, from which a watchdog
//! reads the phase:
//!
//! | phase | ends when | deadline |
//! |---|---|---|
//! | head: from the accept, or the first byte of a later request, to a complete request head | the head is parsed | `--header-timeout-secs` |
//! | body: from the head to the last body byte | the handler has the body | `--body-timeout-secs` |
//! | processing: the handler works | the answer is ready | the handlers' own deadlines |
//! | idle: keep-alive between requests, or an answer the client does not read | the next request's first byte | `--idle-timeout-secs` since the last byte moved |
//!
//! On shutdown, connections in any phase but processing are closed at once;
//! a processing one finishes its answer first. When the server is full, the
//! listener evicts the connection that has waited longest outside processing
//! (see `listener.rs`).

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;

use super::envelope::envelope_bytes;

/// The per-connection limits (from `ConnArgs`).
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl ConnLimits {
    /// How often the watchdog looks at a connection: a quarter of the
    /// shortest deadline, within 50 ms – 1 s.
    fn tick(&self) -> Duration {
        let shortest = self
            .header_timeout
            .min(self.body_timeout)
            .min(self.idle_timeout);
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

const NONE: u64 = u64::MAX;

/// Most closed connections that linger at once (their descriptors are kept
/// outside the connection cap).
pub const MAX_LINGERING: usize = 32;

/// What a connection is doing, as the watchdog and the listener see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for (the rest of) a request head since the given time.
    Head(u64),
    /// Receiving a request body since the given time.
    Body(u64),
    /// A handler is working on a complete request.
    Processing,
    /// Nothing moved on the socket since the given time.
    Idle(u64),
}

/// Shared state of one connection. Times are milliseconds on the server's
/// clock ([`ConnState::now`]); every field is an atomic so the socket, the
/// handler and the watchdog update it without locks. A reader may see two
/// fields from slightly different moments; every mix it can see yields a
/// phase whose deadline is no earlier than the true one, so nothing is
/// closed early.
pub struct ConnState {
    epoch: Instant,
    last_io: AtomicU64,
    head_since: AtomicU64,
    service_since: AtomicU64,
    in_service: AtomicUsize,
    body_pending: AtomicUsize,
    /// An answer went out before its request was read to the end: the
    /// client may still be sending when the connection closes.
    unread_input: AtomicBool,
    evict: tokio::sync::Notify,
}

impl ConnState {
    /// A connection accepted now; its first request head is due from now.
    pub fn new(epoch: Instant) -> Self {
        let state = Self {
            epoch,
            last_io: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            service_since: AtomicU64::new(0),
            in_service: AtomicUsize::new(0),
            body_pending: AtomicUsize::new(0),
            unread_input: AtomicBool::new(false),
            evict: tokio::sync::Notify::new(),
        };
        let now = state.now();
        state.last_io.store(now, Ordering::Relaxed);
        state.head_since.store(now, Ordering::Relaxed);
        state
    }

    /// Milliseconds since the server's epoch.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        if self.in_service.load(Ordering::Acquire) > 0 {
            if self.body_pending.load(Ordering::Acquire) > 0 {
                Phase::Body(self.service_since.load(Ordering::Relaxed))
            } else {
                Phase::Processing
            }
        } else {
            match self.head_since.load(Ordering::Relaxed) {
                NONE => Phase::Idle(self.last_io.load(Ordering::Relaxed)),
                since => Phase::Head(since),
            }
        }
    }

    /// Why the connection must close now, if its phase is past its deadline.
    pub fn expired(&self, now: u64, limits: &ConnLimits) -> Option<&'static str> {
        let over = |since: u64, limit: Duration| {
            now.saturating_sub(since) > u64::try_from(limit.as_millis()).unwrap_or(NONE)
        };
        match self.phase() {
            Phase::Head(since) if over(since, limits.header_timeout) => Some("header_timeout"),
            Phase::Body(since) if over(since, limits.body_timeout) => Some("body_timeout"),
            Phase::Idle(since) if over(since, limits.idle_timeout) => Some("idle_timeout"),
            _ => None,
        }
    }

    /// Asks the connection's task to close the connection now.
    pub fn evict(&self) {
        self.evict.notify_one();
    }

    fn on_read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        // The first byte after an idle spell starts the next request's head.
        if self.in_service.load(Ordering::Acquire) == 0 {
            let _ =
                self.head_since
                    .compare_exchange(NONE, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    fn begin_request(self: &Arc<Self>, body_done: bool) -> RequestTrack {
        if !body_done {
            self.body_pending.fetch_add(1, Ordering::AcqRel);
        }
        self.service_since.store(self.now(), Ordering::Relaxed);
        self.in_service.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        RequestTrack {
            conn: self.clone(),
            body_done: AtomicBool::new(body_done),
        }
    }
}

/// One request in the handler: ends (and settles the counters) on drop, so
/// a request whose connection is dropped mid-way is accounted for too.
struct RequestTrack {
    conn: Arc<ConnState>,
    body_done: AtomicBool,
}

impl RequestTrack {
    fn finish_body(&self) {
        if !self.body_done.swap(true, Ordering::AcqRel) {
            self.conn.body_pending.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn body_complete(&self) -> bool {
        self.body_done.load(Ordering::Acquire)
    }
}

impl Drop for RequestTrack {
    fn drop(&mut self) {
        self.finish_body();
        self.conn.on_write();
        self.conn.in_service.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body that tells its [`RequestTrack`] when the last byte is in.
struct TrackedBody {
    inner: Incoming,
    track: Arc<RequestTrack>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            None => self.track.finish_body(),
            Some(Ok(_)) if self.inner.is_end_stream() => self.track.finish_body(),
            _ => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs one request through the router, tracking its phase. An answer sent
/// before the body was read (403, an oversized `Content-Length`) closes the
/// connection, and says so with `Connection: close`: the unread body would
/// otherwise be taken for the next request, and a client reusing the
/// connection would find it gone.
async fn handle(
    router: Router,
    conn: Arc<ConnState>,
    request: Request<Incoming>,
) -> Response<Body> {
    let track = Arc::new(conn.begin_request(request.body().is_end_stream()));
    let request = request.map(|inner| {
        Body::new(TrackedBody {
            inner,
            track: track.clone(),
        })
    });
    let Ok(mut response) = router.oneshot(request).await;
    if !track.body_complete() {
        conn.unread_input.store(true, Ordering::Relaxed);
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Serves one accepted connection until it ends, times out, is evicted, or
/// the server shuts down (`shutdown` turns true).
pub async fn serve(
    stream: TcpStream,
    router: Router,
    conn: Arc<ConnState>,
    limits: Arc<ConnLimits>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> &'static str {
    let io = TokioIo::new(TrackedIo::new(stream, conn.clone()));
    let service_conn = conn.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let (router, conn) = (router.clone(), service_conn.clone());
        async move { Ok::<_, Infallible>(handle(router, conn, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // The watchdog enforces every deadline; hyper's own header timer
        // would only race it.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 1024)
        .writev(false);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                return match result {
                    Ok(()) => "closed",
                    Err(err) if err.is_timeout() => "header_timeout",
                    Err(_) => "error",
                };
            }
            _ = tick.tick() => {
                if let Some(reason) = conn.expired(conn.now(), &limits) {
                    return reason;
                }
            }
            () = conn.evict.notified() => return "evicted",
            changed = shutdown.wait_for(|stop| *stop), if !draining => {
                // A closed channel means the listener is gone: shut down too.
                let _ = changed;
                if conn.phase() != Phase::Processing {
                    return "shutdown";
                }
                // Finish this answer, then close.
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// The socket of one connection: records when bytes move, and puts hyper's
/// own answers to unparsable heads into the envelope.
///
/// hyper answers a head it cannot parse (400), an over-long one (431) or an
/// over-long URI (414) by itself, with an empty body and no hook to change
/// it. Those answers are recognisable on the wire: the only responses with
/// an error status and `content-length: 0`, since every answer the router
/// writes for an error carries a JSON body. Such a write is replaced by the
/// same status with the envelope as its body.
///
/// When it closes with input possibly still arriving (such an answer, or one
/// sent before the body was read), the socket is handed to [`linger_close`]
/// so that closing does not reset the connection under the answer.
pub struct TrackedIo {
    /// Always `Some` until dropped.
    inner: Option<TcpStream>,
    conn: Arc<ConnState>,
    replacement: Option<Replacement>,
}

struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// The length of the buffer hyper asked to write, reported once all of
    /// `bytes` is out.
    consumed: usize,
}

impl TrackedIo {
    fn new(inner: TcpStream, conn: Arc<ConnState>) -> Self {
        Self {
            inner: Some(inner),
            conn,
            replacement: None,
        }
    }

    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl Drop for TrackedIo {
    fn drop(&mut self) {
        if let Some(stream) = self.inner.take() {
            if self.conn.unread_input.load(Ordering::Relaxed) {
                linger_close(stream);
            }
        }
    }
}

/// Closes a socket the client may still be writing to without losing what
/// was already written to it: closing with unread input makes the kernel
/// send a reset, which can destroy the answer before the client reads it.
/// So the write side is shut first and input is read and dropped until the
/// client closes, for at most 1 s and 1 MiB; at most [`MAX_LINGERING`]
/// sockets linger at once (past that, one closes at once), so lingering
/// cannot pile up.
pub fn linger_close(stream: TcpStream) {
    static LINGERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_LINGERING);
    let Ok(permit) = LINGERING.try_acquire() else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _permit = permit;
        let mut stream = stream;
        let _ = stream.shutdown().await;
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0usize;
        let drain = async {
            while let Ok(n) = stream.read(&mut buf).await {
                total += n;
                if n == 0 || total > 1 << 20 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    });
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = this.stream()?.poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_read();
        }
        result
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacement.is_none() {
            if let Some(bytes) = enveloped_automatic_answer(buf) {
                // hyper closes after its own answers, whatever is still unread.
                this.conn.unread_input.store(true, Ordering::Relaxed);
                this.replacement = Some(Replacement {
                    bytes,
                    written: 0,
                    consumed: buf.len(),
                });
            }
        }
        if let Some(rep) = &mut this.replacement {
            while rep.written < rep.bytes.len() {
                let Some(inner) = this.inner.as_mut() else {
                    return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
                };
                let n = ready!(Pin::new(inner).poll_write(cx, &rep.bytes[rep.written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                rep.written += n;
                this.conn.on_write();
            }
            let consumed = rep.consumed;
            this.replacement = None;
            return Poll::Ready(Ok(consumed));
        }
        let result = this.stream()?.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.conn.on_write();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream()?.poll_shutdown(cx)
    }
}

/// If `buf` is one of hyper's automatic error answers (a whole head with an
/// error status and `content-length: 0`), the same answer with the envelope.
fn enveloped_automatic_answer(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let code: u16 = std::str::from_utf8(head.get(..3)?).ok()?.parse().ok()?;
    let status = StatusCode::from_u16(code).ok()?;
    if !status.is_client_error() {
        return None;
    }
    let text = String::from_utf8_lossy(buf).to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") || text.contains("\r\ncontent-type:") {
        return None;
    }
    let reason = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "the request head is larger than the limit",
        StatusCode::URI_TOO_LONG => "the request target is too long",
        _ => "malformed HTTP request",
    };
    let body = envelope_bytes(status, reason);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let original = std::str::from_utf8(buf).ok()?;
    let date = original
        .split("\r\n")
        .find(|l| l.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("date:")));
    if let Some(date) = date {
        out.push_str(date);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnLimits {
        ConnLimits {
            header_timeout: Duration::from_millis(100),
            body_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            max_header_bytes: 16 * 1024,
        }
    }

    #[test]
    fn phases_follow_the_request_and_expire_by_their_own_deadline() {
        let conn = Arc::new(ConnState::new(Instant::now()));
        let t0 = conn.now();
        assert_eq!(conn.phase(), Phase::Head(t0));
        assert_eq!(conn.expired(t0 + 100, &limits()), None);
        assert_eq!(conn.expired(t0 + 101, &limits()), Some("header_timeout"));

        let track = conn.begin_request(false);
        let Phase::Body(since) = conn.phase() else {
            panic!("{:?}", conn.phase())
        };
        assert_eq!(conn.expired(since + 200, &limits()), None);
        assert_eq!(conn.expired(since + 201, &limits()), Some("body_timeout"));
        track.finish_body();
        assert_eq!(conn.phase(), Phase::Processing);
        assert_eq!(conn.expired(since + 1_000_000, &limits()), None);
        drop(track);
        let Phase::Idle(idle) = conn.phase() else {
            panic!("{:?}", conn.phase())
        };
        assert_eq!(conn.expired(idle + 300, &limits()), None);
        assert_eq!(conn.expired(idle + 301, &limits()), Some("idle_timeout"));
        // the next request's first byte starts a head
        conn.on_read();
        assert!(matches!(conn.phase(), Phase::Head(_)));
        // a request without a body goes straight to processing
        let track = conn.begin_request(true);
        assert_eq!(conn.phase(), Phase::Processing);
        drop(track);
        assert!(matches!(conn.phase(), Phase::Idle(_)));
    }

    #[test]
    fn a_dropped_request_settles_its_counters() {
        let conn = Arc::new(ConnState::new(Instant::now()));
        let track = conn.begin_request(false);
        drop(track);
        assert_eq!(conn.in_service.load(Ordering::Relaxed), 0);
        assert_eq!(conn.body_pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn hypers_automatic_answers_get_the_envelope() {
        let raw = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 00:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(enveloped_automatic_answer(raw).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("connection: close"));
        assert!(head.contains("date: Wed, 02 Dec 2026 00:00:00 GMT"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["message"], "request_header_fields_too_large");

        let bad = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let out = String::from_utf8(enveloped_automatic_answer(bad).unwrap()).unwrap();
        assert!(out.ends_with(r#"{"message":"invalid_request","data":"malformed HTTP request"}"#));

        // the router's own answers pass untouched
        for own in [
            &b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{\"message\":\"x\"}",
        ] {
            assert_eq!(enveloped_automatic_answer(own), None);
        }
    }
}
