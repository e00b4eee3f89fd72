//! `ongi loadtest`: drives a running `ongi serve` on this machine with virtual users.
//!
//! Each virtual user repeatedly sends `POST /api/albums/embedding` with a random
//! album of keys, thinks for a random time after each answer, and stops sending
//! at the end of `--duration-secs`; it then runs the client's analysis calls once
//! for its last album (quality, duplicates and categories in parallel, then score
//! with the categories answer). Only loopback servers are ever contacted: the URL
//! must name `127.0.0.0/8`, `::1` or `localhost` (resolved, every address checked),
//! and the tool connects to the checked addresses only.
//!
//! The HTTP client is a minimal blocking HTTP/1.1 one (one connection per request,
//! `Connection: close`), one OS thread per virtual user: the tool measures the
//! server, so it should stay simple and predictable.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// Most virtual users one run may start.
const MAX_USERS: usize = 1000;
/// Longest run, in seconds.
const MAX_DURATION_SECS: u64 = 6 * 3600;
/// Largest response body read (bytes).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

const ROUTE_EMBEDDING: &str = "/api/albums/embedding";
const ROUTE_QUALITY: &str = "/api/albums/quality";
const ROUTE_DUPLICATES: &str = "/api/albums/duplicates";
const ROUTE_CATEGORIES: &str = "/api/albums/categories";
const ROUTE_SCORE: &str = "/api/albums/score";
const ROUTES: [&str; 5] = [
    ROUTE_EMBEDDING,
    ROUTE_QUALITY,
    ROUTE_DUPLICATES,
    ROUTE_CATEGORIES,
    ROUTE_SCORE,
];

/// Arguments of `ongi loadtest`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("keys").required(true).args(["keys_file", "keys_dir"])))]
pub struct LoadtestArgs {
    /// Base URL of the server; only loopback hosts (127.0.0.0/8, ::1, localhost) are accepted.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Virtual users running at the same time.
    #[arg(long, default_value_t = 30)]
    pub users: usize,
    /// How long the users keep sending embedding requests (seconds).
    #[arg(long, default_value_t = 180)]
    pub duration_secs: u64,
    /// File with one image key per line (empty lines and `#` comments skipped).
    #[arg(long, value_name = "FILE")]
    pub keys_file: Option<PathBuf>,
    /// Directory whose image files (recursively) are the keys, relative to it:
    /// the server's `--images DIR`.
    #[arg(long, value_name = "DIR")]
    pub keys_dir: Option<PathBuf>,
    /// Fewest keys per embedding request.
    #[arg(long, default_value_t = 30)]
    pub min_images: usize,
    /// Most keys per embedding request.
    #[arg(long, default_value_t = 50)]
    pub max_images: usize,
    /// Think time after each answer, `MIN-MAX` milliseconds (or one value).
    #[arg(long, default_value = "3000-5000", value_parser = parse_range)]
    pub think_ms: (u64, u64),
    /// API key sent as `Authorization: Bearer KEY` (the server's `--api-key`).
    #[arg(long, env = "ONGI_LOADTEST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sample this process's resident memory (`/proc/PID/status` VmRSS) every second.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Seed of the album and think-time choices (same seed, same requests).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest wait for one answer (seconds); longer than the server's own
    /// per-request deadline (120 s by default), so that its answer is seen.
    #[arg(long, default_value_t = 180)]
    pub request_timeout_secs: u64,
    /// After the duration, how long in-flight requests and the analysis calls may
    /// still run (seconds); then everything stops.
    #[arg(long, default_value_t = 180)]
    pub grace_secs: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (lo.trim(), hi.trim()),
        None => (s.trim(), s.trim()),
    };
    let lo: u64 = lo.parse().map_err(|_| format!("bad number {lo:?}"))?;
    let hi: u64 = hi.parse().map_err(|_| format!("bad number {hi:?}"))?;
    if lo > hi {
        return Err(format!("{lo} > {hi}"));
    }
    Ok((lo, hi))
}

/// A checked loopback target: the addresses to connect to and the request basics.
#[derive(Debug, Clone)]
struct Target {
    addrs: Vec<SocketAddr>,
    host_header: String,
    base_path: String,
}

/// Accepts only `http://` URLs whose host is a loopback address or `localhost`
/// resolving to loopback addresses only. IP literals are checked without any
/// lookup; no other host name is looked up at all.
fn loopback_target(url: &str) -> Result<Target> {
    let refuse = |why: String| -> anyhow::Error {
        anyhow::anyhow!(
            "refusing to load-test {url:?}: {why}; ongi loadtest only targets loopback servers on this machine \
             (127.0.0.0/8, ::1 or localhost)"
        )
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| refuse("only http:// URLs are supported".into()))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(refuse("user information in the URL is not allowed".into()));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| refuse("unterminated [IPv6] host".into()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| refuse(format!("bad port {after:?}")))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port: u16 = match port {
        None => 80,
        Some(p) => p.parse().map_err(|_| refuse(format!("bad port {p:?}")))?,
    };
    if host.is_empty() {
        return Err(refuse("no host".into()));
    }
    let addrs: Vec<SocketAddr> = if let Ok(ip) = host.parse::<IpAddr>() {
        if !is_loopback(ip) {
            return Err(refuse(format!("{ip} is not a loopback address")));
        }
        vec![SocketAddr::new(ip, port)]
    } else if host.eq_ignore_ascii_case("localhost") {
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| refuse(format!("cannot resolve localhost: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(refuse("localhost resolves to no address".into()));
        }
        if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
            return Err(refuse(format!(
                "localhost resolves to {}, which is not a loopback address",
                bad.ip()
            )));
        }
        addrs
    } else {
        return Err(refuse(format!("host {host:?} is not a loopback address")));
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    Ok(Target {
        addrs,
        host_header: authority.to_string(),
        base_path: path.trim_end_matches('/').to_string(),
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Image keys: the lines of `--keys-file` or the image files under `--keys-dir`.
fn load_keys(args: &LoadtestArgs) -> Result<Vec<String>> {
    let keys: Vec<String> = if let Some(file) = &args.keys_file {
        std::fs::read_to_string(file)
            .with_context(|| format!("reading --keys-file {}", file.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    } else if let Some(dir) = &args.keys_dir {
        list_images(dir)?
    } else {
        bail!("one of --keys-file or --keys-dir is required");
    };
    ensure!(!keys.is_empty(), "no image keys found");
    Ok(keys)
}

fn list_images(dir: &Path) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    for entry in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing --keys-dir {}", dir.display()))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| {
                ["jpg", "jpeg", "png", "webp"]
                    .iter()
                    .any(|x| e.eq_ignore_ascii_case(x))
            });
        if !is_image {
            continue;
        }
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        keys.push(parts.join("/"));
    }
    Ok(keys)
}

/// SplitMix64: small, seedable, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        let mut rng = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// `n` distinct indices below `len` (all of them when `n >= len`), in random order.
    fn sample(&mut self, len: usize, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..len).collect();
        let n = n.min(len);
        for i in 0..n {
            let j = self.range(i as u64, (len - 1) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(n);
        idx
    }
}

/// One answer (or transport failure) of one request.
enum Outcome {
    Response { status: u16, body: Vec<u8> },
    Transport(String),
}

/// Everything measured, shared by the users.
#[derive(Default)]
struct Stats {
    /// Latencies (ms) of completed responses, per route.
    latencies: BTreeMap<&'static str, Vec<f64>>,
    /// Response counts per route and status.
    statuses: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    /// Transport failures per route and kind.
    transport: BTreeMap<&'static str, BTreeMap<String, u64>>,
    embedded_images: u64,
    failed_images: u64,
    failed_keys: Vec<String>,
    skipped_analysis: u64,
}

struct Client {
    target: Target,
    api_key: Option<String>,
    request_timeout: Duration,
    hard_deadline: Instant,
}

impl Client {
    /// POSTs `body` to `route`; records the outcome in `stats` and returns it.
    fn post(&self, route: &'static str, body: &Value, stats: &Mutex<Stats>) -> Outcome {
        let started = Instant::now();
        let deadline = (started + self.request_timeout).min(self.hard_deadline);
        let outcome = match self.exchange(route, body, deadline) {
            Ok((status, body)) => Outcome::Response { status, body },
            Err(kind) => Outcome::Transport(kind),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut s = stats.lock().unwrap();
        match &outcome {
            Outcome::Response { status, .. } => {
                s.latencies.entry(route).or_default().push(ms);
                *s.statuses
                    .entry(route)
                    .or_default()
                    .entry(*status)
                    .or_default() += 1;
            }
            Outcome::Transport(kind) => {
                *s.transport
                    .entry(route)
                    .or_default()
                    .entry(kind.clone())
                    .or_default() += 1;
            }
        }
        outcome
    }

    /// One request on a fresh connection. Errors are a short kind: `connect`,
    /// `timeout`, `io`, `malformed response`.
    fn exchange(
        &self,
        route: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), String> {
        let remaining = |deadline: Instant| -> Result<Duration, String> {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err("timeout".to_string())
            } else {
                Ok(left)
            }
        };
        let io_kind = |e: std::io::Error| -> String {
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
                _ => format!("io: {}", e.kind()),
            }
        };
        let mut stream = None;
        let mut last_err = String::from("connect");
        for addr in &self.target.addrs {
            match TcpStream::connect_timeout(addr, remaining(deadline)?) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = format!("connect: {}", e.kind()),
            }
        }
        let mut stream = stream.ok_or(last_err)?;
        let _ = stream.set_nodelay(true);
        let payload = serde_json::to_vec(body).expect("JSON body");
        let mut head = format!(
            "POST {}{route} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.target.base_path,
            self.target.host_header,
            payload.len()
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(&payload);
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(io_kind)?;
        stream.write_all(&request).map_err(io_kind)?;
        let mut response = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            stream
                .set_read_timeout(Some(remaining(deadline)?))
                .map_err(io_kind)?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&buf[..n]);
                    if response.len() > MAX_RESPONSE_BYTES {
                        return Err("response too large".into());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_kind(e)),
            }
        }
        parse_response(&response).ok_or_else(|| "malformed response".to_string())
    }
}

/// Status and body of a complete HTTP/1.1 response (Content-Length, chunked or to EOF).
fn parse_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_str = std::str::from_utf8(&rest[..end]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[end + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body
    } else if let Some(len) = length {
        rest.get(..len)?.to_vec()
    } else {
        rest.to_vec()
    };
    Some((status, body))
}

/// The `data` of a JSON answer, when the body is `{"data": ...}`.
fn answer_data(body: &[u8]) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    Some(v.get_mut("data")?.take())
}

/// Sleeps for `d`, or until `until` when that comes first.
fn sleep_until(d: Duration, until: Instant) {
    let wake = (Instant::now() + d).min(until);
    let now = Instant::now();
    if wake > now {
        std::thread::sleep(wake - now);
    }
}

/// One virtual user: embedding requests until `end`, then the analysis calls once.
fn virtual_user(
    id: usize,
    args: &LoadtestArgs,
    keys: &[String],
    client: &Client,
    end: Instant,
    stats: &Mutex<Stats>,
) {
    let mut rng = Rng::new(args.seed, id as u64 + 1);
    // Stagger the starts over one think time so that users do not arrive in lockstep.
    let stagger = rng.range(0, args.think_ms.1);
    sleep_until(Duration::from_millis(stagger), end);
    let mut last_album: Option<Vec<String>> = None;
    while Instant::now() < end {
        let n = rng.range(args.min_images as u64, args.max_images as u64) as usize;
        let album: Vec<String> = rng
            .sample(keys.len(), n)
            .into_iter()
            .map(|i| keys[i].clone())
            .collect();
        let outcome = client.post(ROUTE_EMBEDDING, &json!({ "images": album }), stats);
        if let Outcome::Response { status: 201, body } = &outcome {
            let failed: Vec<String> = match answer_data(body) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            let mut s = stats.lock().unwrap();
            s.embedded_images += (album.len() - failed.len().min(album.len())) as u64;
            s.failed_images += failed.len() as u64;
            for key in &failed {
                if s.failed_keys.len() < 20 && !s.failed_keys.contains(key) {
                    s.failed_keys.push(key.clone());
                }
            }
            drop(s);
            // As the app's backend does: photos that failed to embed are
            // left out of the album's analysis (they would answer 428).
            let analysed: Vec<String> = album.into_iter().filter(|k| !failed.contains(k)).collect();
            if !analysed.is_empty() {
                last_album = Some(analysed);
            }
        }
        let think = rng.range(args.think_ms.0, args.think_ms.1);
        sleep_until(Duration::from_millis(think), end);
    }
    let Some(album) = last_album else {
        stats.lock().unwrap().skipped_analysis += 1;
        return;
    };
    if Instant::now() >= client.hard_deadline {
        stats.lock().unwrap().skipped_analysis += 1;
        return;
    }
    let body = json!({ "images": album });
    let categories = std::thread::scope(|scope| {
        let quality = scope.spawn(|| client.post(ROUTE_QUALITY, &body, stats));
        let duplicates = scope.spawn(|| client.post(ROUTE_DUPLICATES, &body, stats));
        let categories = client.post(ROUTE_CATEGORIES, &body, stats);
        let _ = quality.join();
        let _ = duplicates.join();
        categories
    });
    match categories {
        Outcome::Response { status: 201, body } => {
            let data = answer_data(&body).unwrap_or(Value::Null);
            client.post(ROUTE_SCORE, &json!({ "categories": data }), stats);
        }
        _ => stats.lock().unwrap().skipped_analysis += 1,
    }
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs the load test and prints the report; exit status 1 when any 5xx,
/// transport error or failed image was seen.
pub fn run(args: LoadtestArgs) -> Result<ExitCode> {
    // The target is checked before anything else, so a refused URL is never contacted.
    let target = loopback_target(&args.url)?;
    ensure!(
        (1..=MAX_USERS).contains(&args.users),
        "--users must be 1..={MAX_USERS}"
    );
    ensure!(
        (1..=MAX_DURATION_SECS).contains(&args.duration_secs),
        "--duration-secs must be 1..={MAX_DURATION_SECS}"
    );
    ensure!(
        args.min_images >= 1 && args.min_images <= args.max_images,
        "need 1 <= --min-images <= --max-images"
    );
    ensure!(
        args.request_timeout_secs >= 1,
        "--request-timeout-secs must be at least 1"
    );
    let keys = load_keys(&args)?;
    if let Some(pid) = args.server_pid {
        ensure!(
            rss_kib(pid).is_some(),
            "--server-pid {pid}: cannot read VmRSS from /proc/{pid}/status"
        );
    }

    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let hard_deadline = end + Duration::from_secs(args.grace_secs);
    let client = Client {
        target,
        api_key: args.api_key.clone(),
        request_timeout: Duration::from_secs(args.request_timeout_secs),
        hard_deadline,
    };
    let stats = Mutex::new(Stats::default());
    let done = Arc::new(AtomicBool::new(false));
    let rss_samples: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::new());

    if !args.json {
        eprintln!(
            "ongi loadtest: {} users for {} s against {} ({} keys, {}-{} per request, think {}-{} ms)",
            args.users,
            args.duration_secs,
            args.url,
            keys.len(),
            args.min_images,
            args.max_images,
            args.think_ms.0,
            args.think_ms.1
        );
    }

    std::thread::scope(|scope| {
        if let Some(pid) = args.server_pid {
            let done = done.clone();
            let rss_samples = &rss_samples;
            scope.spawn(move || {
                let mut next = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        rss_samples
                            .lock()
                            .unwrap()
                            .push((start.elapsed().as_secs_f64(), kib));
                    }
                    next += Duration::from_secs(1);
                    while !done.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                if let Some(kib) = rss_kib(pid) {
                    rss_samples
                        .lock()
                        .unwrap()
                        .push((start.elapsed().as_secs_f64(), kib));
                }
            });
        }
        let users: Vec<_> = (0..args.users)
            .map(|id| {
                let (args, keys, client, stats) = (&args, &keys, &client, &stats);
                std::thread::Builder::new()
                    .name(format!("vu-{id}"))
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        virtual_user(id, args, keys, client, end, stats)
                    })
                    .expect("spawning a virtual user")
            })
            .collect();
        for user in users {
            let _ = user.join();
        }
        done.store(true, Ordering::Relaxed);
    });
    let elapsed = start.elapsed().as_secs_f64();
    // Embedding requests may not start after `end`; images/s is over the sending window.
    let embedding_window = args.duration_secs as f64;

    let stats = stats.into_inner().unwrap();
    let rss = rss_samples.into_inner().unwrap();
    let report = build_report(&args, keys.len(), elapsed, embedding_window, &stats, &rss);
    if args.json {
        println!("{report}");
    } else {
        print_text(&report);
    }
    // Only the server's own failures fail the run: a photo it reports as
    // undecodable is a correct answer, counted in `failed_images`.
    let bad = report["errors"]["5xx"].as_u64().unwrap_or(0)
        + report["errors"]["transport"].as_u64().unwrap_or(0);
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn build_report(
    args: &LoadtestArgs,
    key_count: usize,
    elapsed: f64,
    embedding_window: f64,
    stats: &Stats,
    rss: &[(f64, u64)],
) -> Value {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut transport: BTreeMap<String, u64> = BTreeMap::new();
    let mut routes = serde_json::Map::new();
    let mut total = 0u64;
    for route in ROUTES {
        let mut lat = stats.latencies.get(route).cloned().unwrap_or_default();
        lat.sort_by(f64::total_cmp);
        let statuses = stats.statuses.get(route).cloned().unwrap_or_default();
        let route_transport: u64 = stats
            .transport
            .get(route)
            .map_or(0, |m| m.values().sum::<u64>());
        for (status, n) in &statuses {
            *by_status.entry(status.to_string()).or_default() += n;
        }
        for (kind, n) in stats.transport.get(route).into_iter().flatten() {
            *transport.entry(kind.clone()).or_default() += n;
        }
        let requests = statuses.values().sum::<u64>() + route_transport;
        total += requests;
        if requests == 0 {
            continue;
        }
        let round = |v: f64| (v * 10.0).round() / 10.0;
        routes.insert(
            format!("POST {route}"),
            json!({
                "requests": requests,
                "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
                "transport_errors": route_transport,
                "p50_ms": round(percentile(&lat, 50.0)),
                "p95_ms": round(percentile(&lat, 95.0)),
                "p99_ms": round(percentile(&lat, 99.0)),
                "max_ms": round(lat.last().copied().unwrap_or(0.0)),
                "mean_ms": round(if lat.is_empty() { 0.0 } else { lat.iter().sum::<f64>() / lat.len() as f64 }),
            }),
        );
    }
    let count_class = |class: char| -> u64 {
        by_status
            .iter()
            .filter(|(s, _)| s.starts_with(class))
            .map(|(_, n)| n)
            .sum()
    };
    let transport_total: u64 = transport.values().sum();
    let mut report = json!({
        "url": args.url,
        "users": args.users,
        "duration_secs": args.duration_secs,
        "elapsed_secs": (elapsed * 10.0).round() / 10.0,
        "keys": key_count,
        "images_per_request": [args.min_images, args.max_images],
        "think_ms": [args.think_ms.0, args.think_ms.1],
        "seed": args.seed,
        "requests": total,
        "responses_by_status": by_status,
        "errors": {
            "4xx": count_class('4'),
            "5xx": count_class('5'),
            "transport": transport_total,
            "transport_by_kind": transport,
        },
        "routes": routes,
        "embedded_images": stats.embedded_images,
        "images_per_sec": ((stats.embedded_images as f64 / embedding_window) * 100.0).round() / 100.0,
        "failed_images": stats.failed_images,
        "failed_keys_sample": stats.failed_keys,
        "analysis_skipped_users": stats.skipped_analysis,
    });
    if let Some(pid) = args.server_pid {
        report["server_rss"] = rss_report(pid, rss);
    }
    report
}

/// Start, peak and end RSS and a growth verdict: the peak of the last third of
/// the samples against the peak of the first third (flat within 10 % or 16 MiB).
fn rss_report(pid: u32, rss: &[(f64, u64)]) -> Value {
    let mib = |kib: u64| (kib as f64 / 1024.0 * 10.0).round() / 10.0;
    if rss.is_empty() {
        return json!({ "pid": pid, "samples": 0 });
    }
    let third = rss.len().div_ceil(3);
    let peak_of = |s: &[(f64, u64)]| s.iter().map(|&(_, k)| k).max().unwrap_or(0);
    let first = peak_of(&rss[..third]);
    let last = peak_of(&rss[rss.len() - third..]);
    let growth_pct = if first == 0 {
        0.0
    } else {
        (last as f64 - first as f64) / first as f64 * 100.0
    };
    let flat = last <= first || last - first <= (first / 10).max(16 * 1024);
    json!({
        "pid": pid,
        "samples": rss.len(),
        "start_mib": mib(rss[0].1),
        "peak_mib": mib(peak_of(rss)),
        "end_mib": mib(rss[rss.len() - 1].1),
        "first_third_peak_mib": mib(first),
        "last_third_peak_mib": mib(last),
        "growth_pct": (growth_pct * 10.0).round() / 10.0,
        "verdict": if flat { "flat" } else { "growing" },
        "series": rss.iter().map(|&(t, k)| json!([(t * 10.0).round() / 10.0, mib(k)])).collect::<Vec<_>>(),
    })
}

fn print_text(r: &Value) {
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    println!(
        "ongi loadtest  {}  users {}  duration {} s  keys {}  images/request {}-{}  think {}-{} ms  seed {}",
        r["url"].as_str().unwrap_or(""),
        u(&r["users"]),
        u(&r["duration_secs"]),
        u(&r["keys"]),
        u(&r["images_per_request"][0]),
        u(&r["images_per_request"][1]),
        u(&r["think_ms"][0]),
        u(&r["think_ms"][1]),
        u(&r["seed"]),
    );
    println!(
        "elapsed            {:.1} s",
        r["elapsed_secs"].as_f64().unwrap_or(0.0)
    );
    println!("requests           {}", u(&r["requests"]));
    let statuses: Vec<String> = r["responses_by_status"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {}", u(v)))
        .collect();
    println!("responses          {}", statuses.join(", "));
    let kinds: Vec<String> = r["errors"]["transport_by_kind"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}: {}", u(v)))
        .collect();
    println!(
        "errors             4xx {}  5xx {}  transport {}{}",
        u(&r["errors"]["4xx"]),
        u(&r["errors"]["5xx"]),
        u(&r["errors"]["transport"]),
        if kinds.is_empty() {
            String::new()
        } else {
            format!(" ({})", kinds.join(", "))
        }
    );
    println!(
        "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "route", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for route in ROUTES.map(|r| format!("POST {r}")) {
        let s = &r["routes"][&route];
        if !s.is_object() {
            continue;
        }
        println!(
            "{:<34} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            route,
            u(&s["requests"]),
            s["p50_ms"].as_f64().unwrap_or(0.0),
            s["p95_ms"].as_f64().unwrap_or(0.0),
            s["p99_ms"].as_f64().unwrap_or(0.0),
            s["max_ms"].as_f64().unwrap_or(0.0),
        );
    }
    println!(
        "embedded images    {}  ({:.2} images/s over the sending window; cached ones included)",
        u(&r["embedded_images"]),
        r["images_per_sec"].as_f64().unwrap_or(0.0)
    );
    println!("failed images      {}", u(&r["failed_images"]));
    if let Some(keys) = r["failed_keys_sample"].as_array().filter(|k| !k.is_empty()) {
        println!("failed keys (some) {}", Value::Array(keys.clone()));
    }
    if u(&r["analysis_skipped_users"]) > 0 {
        println!(
            "analysis skipped   {} users (no successful embedding, or categories failed)",
            u(&r["analysis_skipped_users"])
        );
    }
    let rss = &r["server_rss"];
    if rss.is_object() {
        if u(&rss["samples"]) == 0 {
            println!("server RSS         pid {}: no samples", u(&rss["pid"]));
            return;
        }
        let f = |k: &str| rss[k].as_f64().unwrap_or(0.0);
        println!(
            "server RSS         pid {}: start {:.1} MiB, peak {:.1} MiB, end {:.1} MiB ({} samples)",
            u(&rss["pid"]),
            f("start_mib"),
            f("peak_mib"),
            f("end_mib"),
            u(&rss["samples"])
        );
        println!(
            "RSS growth         first-third peak {:.1} MiB, last-third peak {:.1} MiB ({:+.1} %): {}",
            f("first_third_peak_mib"),
            f("last_third_peak_mib"),
            f("growth_pct"),
            rss["verdict"].as_str().unwrap_or("")
        );
        // About 12 points over the run.
        let series = rss["series"].as_array().cloned().unwrap_or_default();
        let step = series.len().div_ceil(12).max(1);
        let points: Vec<String> = series
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i == series.len() - 1)
            .map(|(_, p)| {
                format!(
                    "{:.0}s {:.0}",
                    p[0].as_f64().unwrap_or(0.0),
                    p[1].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        println!("RSS over time MiB  {}", points.join(" | "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_loopback() {
        for ok in [
            "http://127.0.0.1:8000",
            "http://127.1.2.3:9/base/",
            "http://[::1]:8000",
            "http://localhost:8000",
            "http://LOCALHOST",
        ] {
            loopback_target(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://10.1.2.3:8000",
            "http://example.com",
            "http://0.0.0.0:8000",
            "http://[::]:8000",
            "http://127.0.0.1@example.com:80",
            "https://127.0.0.1:8000",
            "127.0.0.1:8000",
            "http://localhost.example.com",
            "http://127.0.0.1.nip.io",
            "http://2130706433",
        ] {
            let err = loopback_target(bad).expect_err(bad).to_string();
            assert!(err.contains("refusing to load-test"), "{bad}: {err}");
        }
        let t = loopback_target("http://127.0.0.1:8123/prefix/").unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:8123".parse().unwrap()]);
        assert_eq!(t.base_path, "/prefix");
    }

    #[test]
    fn rng_is_deterministic_and_samples_distinct() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7, 1);
            (0..5).map(|_| r.next()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7, 1);
            (0..5).map(|_| r.next()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(7, 2);
        let s = r.sample(100, 40);
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 40);
        assert_eq!(r.sample(3, 10).len(), 3);
        for _ in 0..100 {
            let v = r.range(30, 50);
            assert!((30..=50).contains(&v));
        }
    }

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(raw), Some((201, b"hello".to_vec())));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Some((200, b"abcde".to_vec())));
        assert_eq!(parse_response(b"garbage"), None);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 99.0), 4.0);
        assert_eq!(parse_range("3000-5000"), Ok((3000, 5000)));
        assert_eq!(parse_range("100"), Ok((100, 100)));
        assert!(parse_range("5-3").is_err());
    }
}
