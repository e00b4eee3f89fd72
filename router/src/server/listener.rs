//! The accept loop of `ongi serve`: connection timeouts and a connection
//! cap that sheds the least useful connection first, plus a shutdown that
//! closes idle and half-sent connections at once.
//!
//! Written here rather than taken from `axum::serve`, which gives hyper no
//! timer and no limits: a few hundred clients that each send one byte hold
//! every file descriptor, and no maintained crate evicts by phase. When the
//! cap is reached, the connection that has spent longest waiting for a head
//! or a body (then, failing that, for its next request) is closed to make
//! room, once it has waited at least 200 ms, so clients that send whole requests keep being served while
//! slow ones are pushed out; only when every connection is processing a real
//! request is the newcomer turned away, with a 503 in the envelope.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use tokio::net::{TcpListener, TcpStream};

use super::conn::{self, ConnLimits, ConnState, Phase};

/// Connection settings; every flag also reads an `ONGI_*` variable.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnArgs {
    /// Time a client has to send a complete request head, from the connection
    /// (or its previous request's first byte) on; then it is closed.
    #[arg(long, env = "ONGI_HEADER_TIMEOUT_SECS", default_value_t = 10.0)]
    pub header_timeout_secs: f64,
    /// Time a client has to send a whole request body, from the end of its head.
    #[arg(long, env = "ONGI_BODY_TIMEOUT_SECS", default_value_t = 30.0)]
    pub body_timeout_secs: f64,
    /// A keep-alive connection with no request, or whose client stops reading
    /// the answer, is closed after this many seconds without a byte moving.
    #[arg(long, env = "ONGI_IDLE_TIMEOUT_SECS", default_value_t = 60.0)]
    pub idle_timeout_secs: f64,
    /// Most connections open at once (lowered to fit the open-file limit);
    /// past it, the connection waiting longest for its client is closed, or
    /// the newcomer gets 503 when every connection is busy.
    #[arg(long, env = "ONGI_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; a larger
    /// one gets 431.
    #[arg(long, env = "ONGI_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
}

fn secs(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("--{name} must be a positive number of seconds"))
}

/// File descriptors kept for everything but client sockets: the listener,
/// the store, Redis, photo files being read, logs; plus the closed
/// connections still lingering (see `conn::linger_close`).
const RESERVED_FDS: u64 = 64 + conn::MAX_LINGERING as u64;

impl ConnArgs {
    /// The validated per-connection limits.
    pub fn limits(&self) -> Result<ConnLimits> {
        if self.max_header_bytes < 1024 {
            anyhow::bail!("--max-header-bytes must be at least 1024");
        }
        Ok(ConnLimits {
            header_timeout: secs("header-timeout-secs", self.header_timeout_secs)?,
            body_timeout: secs("body-timeout-secs", self.body_timeout_secs)?,
            idle_timeout: secs("idle-timeout-secs", self.idle_timeout_secs)?,
            max_header_bytes: self.max_header_bytes,
        })
    }

    /// The connection cap: `--max-connections`, lowered so that the open-file
    /// limit (raised to its hard maximum first) keeps [`RESERVED_FDS`] spare.
    pub fn connection_cap(&self) -> Result<usize> {
        if self.max_connections == 0 {
            anyhow::bail!("--max-connections must be at least 1");
        }
        let available = raise_fd_limit().saturating_sub(RESERVED_FDS);
        let cap = self
            .max_connections
            .min(usize::try_from(available).unwrap_or(usize::MAX));
        if cap == 0 {
            anyhow::bail!(
                "the open-file limit leaves no room for connections (need more than {RESERVED_FDS}); raise `ulimit -n`"
            );
        }
        if cap < self.max_connections {
            tracing::warn!(
                max_connections = self.max_connections,
                cap,
                "connection cap lowered to fit the open-file limit"
            );
        }
        Ok(cap)
    }
}

/// Raises the soft open-file limit to the hard one; returns the soft limit now in force.
fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), maximum) = (limit.current, limit.maximum) else {
        return u64::MAX;
    };
    // Some kernels refuse an unlimited soft value; a million is plenty.
    let wanted = maximum.unwrap_or(1 << 20).min(1 << 20);
    if wanted > current
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(wanted),
                maximum,
            },
        )
        .is_ok()
    {
        return wanted;
    }
    current
}

/// A connection is evicted only once it has waited this long in its phase.
/// Clients that reconnect as soon as they are evicted could otherwise keep
/// the accept loop evicting as fast as the CPU allows; this bounds evictions
/// to `cap / 0.2 s`, while a client that sends whole requests still gets in
/// within a fraction of a second.
const MIN_EVICTABLE_MS: u64 = 200;

enum Eviction {
    Evicted,
    /// The oldest evictable connection will be old enough after this long.
    TooYoung(Duration),
    /// Every connection is processing a request.
    AllBusy,
}

/// The open connections, by id, and the evicted ones not yet closed.
struct Registry {
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Evicted connections whose tasks have not closed them yet: they still
    /// hold a descriptor, so they count against the cap.
    closing: AtomicU64,
    /// Signalled whenever a connection's task ends.
    released: tokio::sync::Notify,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // A panic while holding this lock leaves the map intact.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections holding a descriptor: open ones and evicted ones not yet closed.
    fn holding(&self) -> usize {
        self.lock().len() + usize::try_from(self.closing.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// Called by a connection's task when it ends.
    fn release(&self, id: u64) {
        if self.lock().remove(&id).is_none() {
            // evicted: it was counted in `closing` until now
            self.closing.fetch_sub(1, Ordering::AcqRel);
        }
        self.released.notify_waiters();
    }

    /// Closes the connection least likely to be a client about to send a
    /// whole request: one still waiting for a head or a body, the
    /// longest-waiting first; idle keep-alive connections (whose client may
    /// be sending its next request this very moment) only when there is no
    /// such connection. The chosen one must have waited at least
    /// [`MIN_EVICTABLE_MS`]; a younger one is waited for, not passed over.
    fn evict_one(&self) -> Eviction {
        let mut conns = self.lock();
        let mut oldest: Option<(u8, u64, u64, u64)> = None;
        for (id, c) in conns.iter() {
            let (class, since) = match c.phase() {
                Phase::Head(since) | Phase::Body(since) => (0, since),
                Phase::Idle(since) => (1, since),
                Phase::Processing => continue,
            };
            if oldest.is_none_or(|o| (class, since) < (o.0, o.1)) {
                oldest = Some((class, since, *id, c.now()));
            }
        }
        let Some((_, since, id, now)) = oldest else {
            return Eviction::AllBusy;
        };
        let age = now.saturating_sub(since);
        if age < MIN_EVICTABLE_MS {
            return Eviction::TooYoung(Duration::from_millis(MIN_EVICTABLE_MS - age));
        }
        if let Some(conn) = conns.remove(&id) {
            self.closing.fetch_add(1, Ordering::AcqRel);
            conn.evict();
            metrics::counter!("ongi_connections_closed_total", "reason" => "evicted").increment(1);
        }
        Eviction::Evicted
    }

    /// Waits (at most `within`) for some connection's task to end.
    async fn wait_release(&self, within: Duration) {
        let released = self.released.notified();
        let _ = tokio::time::timeout(within, released).await;
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then closes idle
/// and half-sent connections, lets requests in progress finish for up to
/// `grace`, and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    cap: usize,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let epoch = Instant::now();
    let limits = Arc::new(limits);
    let registry = Arc::new(Registry {
        conns: Mutex::new(HashMap::new()),
        closing: AtomicU64::new(0),
        released: tokio::sync::Notify::new(),
    });
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let trimmer = tokio::spawn(trim_after_bursts(registry.clone()));
    let next_id = AtomicU64::new(0);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    'accept: loop {
        // Make room before accepting, so that a newcomer waits in the
        // kernel's backlog rather than on one of our descriptors.
        let mut full = false;
        while registry.holding() >= cap {
            let wait = match registry.evict_one() {
                Eviction::Evicted => Duration::from_millis(50),
                Eviction::TooYoung(wait) => wait,
                Eviction::AllBusy => {
                    full = true;
                    break;
                }
            };
            tokio::select! {
                () = &mut shutdown => break 'accept,
                () = registry.wait_release(wait) => {}
            }
        }
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors despite the cap (another part of the
                    // process holds many): make room, then retry shortly.
                    if matches!(err.raw_os_error(), Some(code) if code == rustix::io::Errno::MFILE.raw_os_error() || code == rustix::io::Errno::NFILE.raw_os_error()) {
                        let _ = registry.evict_one();
                    }
                    accept_errors.record(&err);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if full {
            shed(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState::new(epoch));
        registry.lock().insert(id, conn.clone());
        metrics::gauge!("ongi_connections_open").increment(1.0);
        let (router, limits, stopped, registry) = (
            router.clone(),
            limits.clone(),
            stopped.clone(),
            registry.clone(),
        );
        tokio::spawn(async move {
            let reason = conn::serve(stream, router, conn, limits, stopped).await;
            registry.release(id);
            metrics::gauge!("ongi_connections_open").decrement(1.0);
            if reason != "evicted" {
                metrics::counter!("ongi_connections_closed_total", "reason" => reason).increment(1);
            }
        });
    }
    drop(listener);
    trimmer.abort();
    let _ = stop.send(true);
    let open = registry.lock().len();
    tracing::info!(
        open_connections = open,
        "stopped accepting; closing idle connections, finishing requests in progress"
    );
    let deadline = tokio::time::Instant::now() + grace;
    while registry.holding() > 0 {
        tokio::select! {
            () = registry.wait_release(Duration::from_millis(50)) => {}
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(
                    grace_secs = grace.as_secs_f64(),
                    open_connections = registry.holding(),
                    "grace period over: dropping connections still open"
                );
                break;
            }
        }
    }
}

/// Gives memory freed by a burst of connections back to the system.
///
/// Each connection holds read and write buffers and a task; after a flood of
/// a thousand connections closes, glibc's allocator keeps the freed pages in
/// its arenas, and the process stays tens of MB larger than before. So every
/// 2 s, if at least 64 connections were open at some point since the last
/// look and at most half of that peak remain, the free pages are returned
/// (`malloc_trim`; a no-op with other allocators).
async fn trim_after_bursts(registry: Arc<Registry>) {
    let mut peak = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut since_trim = Instant::now();
    loop {
        tick.tick().await;
        let open = registry.holding();
        peak = peak.max(open);
        if since_trim.elapsed() >= Duration::from_secs(2) && peak >= 64 && open <= peak / 2 {
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
            since_trim = Instant::now();
            peak = open;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has
    // no preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// Turns a connection away when the server is full of requests in progress:
/// a 503 in the envelope, written without waiting (a fresh socket's send
/// buffer always has room for it), then the socket is closed.
fn shed(stream: TcpStream) {
    const BODY: &str =
        r#"{"message":"service_unavailable","data":"too many connections; retry later"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(response.as_bytes());
    conn::linger_close(stream);
    metrics::counter!("ongi_connections_closed_total", "reason" => "shed").increment(1);
}

/// Logs accept failures at most once a second, with how many there were.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
    since_logged: u64,
}

impl AcceptErrors {
    fn record(&mut self, err: &std::io::Error) {
        metrics::counter!("ongi_accept_errors_total").increment(1);
        self.since_logged += 1;
        if self
            .last_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %err, count = self.since_logged, "accepting connections failed");
            self.last_logged = Some(Instant::now());
            self.since_logged = 0;
        }
    }
}
