//! `ongi-loadtest`: drives a running `ongi serve` on this machine with virtual users.
//!
//! Each virtual user repeatedly sends `POST /api/albums/embedding` with a random
//! album of keys, thinks for a random time after each answer, and stops sending
//! at the end of `--duration-secs`; it then runs the client's analysis calls once
//! for its last album (quality, duplicates and categories in parallel, then score
//! with the categories answer). Only loopback servers are ever contacted (see
//! [`target`]), and only at the checked addresses.
//!
//! One OS thread per virtual user, each request on a fresh connection with
//! ureq's blocking client: the tool measures the server, so it stays simple
//! and predictable.

mod report;
mod target;

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::proc_stats::rss_kb;
use report::{Report, RssReport, RunInfo, Stats};
use target::loopback_target;

/// Most virtual users one run may start.
const MAX_USERS: usize = 1000;
/// Longest run, in seconds.
const MAX_DURATION_SECS: u64 = 6 * 3600;
/// Largest response body read (bytes).
const MAX_RESPONSE_BYTES: u64 = 64 << 20;

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

/// Arguments of `ongi-loadtest`.
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

/// One answer (or transport failure) of one request.
enum Outcome {
    Response { status: u16, body: Vec<u8> },
    Transport(String),
}

struct Client {
    agent: ureq::Agent,
    base: String,
    api_key: Option<String>,
    request_timeout: Duration,
    hard_deadline: Instant,
}

impl Client {
    fn new(
        base: String,
        addrs: Vec<SocketAddr>,
        args: &LoadtestArgs,
        hard_deadline: Instant,
    ) -> Self {
        let agent = ureq::AgentBuilder::new()
            // Connect to the checked addresses only, whatever the URL names.
            .resolver(move |_: &str| Ok(addrs.clone()))
            // A fresh connection per request, as every virtual user of the
            // original's load test opened one.
            .max_idle_connections(0)
            .redirects(0)
            .no_delay(true)
            .build();
        Self {
            agent,
            base,
            api_key: args.api_key.clone(),
            request_timeout: Duration::from_secs(args.request_timeout_secs),
            hard_deadline,
        }
    }

    /// POSTs `body` to `route`; records the outcome in `stats` and returns it.
    fn post(&self, route: &'static str, body: &Value, stats: &Mutex<Stats>) -> Outcome {
        let started = Instant::now();
        let deadline = (started + self.request_timeout).min(self.hard_deadline);
        let outcome = match self.exchange(route, body, deadline) {
            Ok((status, body)) => Outcome::Response { status, body },
            Err(kind) => Outcome::Transport(kind),
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let mut s = lock(stats);
        match &outcome {
            Outcome::Response { status, .. } => s.response(route, *status, micros),
            Outcome::Transport(kind) => s.transport_error(route, kind.clone()),
        }
        outcome
    }

    /// One request. Errors are a short kind: `connect`, `timeout`, `io: …`,
    /// `malformed response`, `response too large`.
    fn exchange(
        &self,
        route: &str,
        body: &Value,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timeout".into());
        }
        let mut request = self
            .agent
            .post(&format!("{}{route}", self.base))
            .timeout(left)
            .set("Content-Type", "application/json")
            .set("Accept", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match request.send_string(&body.to_string()) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(ureq::Error::Transport(t)) => return Err(transport_kind(&t)),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        response
            .into_reader()
            .take(MAX_RESPONSE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| io_kind(&e))?;
        if bytes.len() as u64 > MAX_RESPONSE_BYTES {
            return Err("response too large".into());
        }
        Ok((status, bytes))
    }
}

fn io_kind(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timeout".into(),
        kind => format!("io: {kind}"),
    }
}

fn transport_kind(t: &ureq::Transport) -> String {
    use std::error::Error;
    let io = t.source().and_then(|s| s.downcast_ref::<std::io::Error>());
    match (t.kind(), io) {
        (_, Some(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "timeout".into()
        }
        (ureq::ErrorKind::ConnectionFailed, Some(e)) => format!("connect: {}", e.kind()),
        (ureq::ErrorKind::ConnectionFailed, None) => "connect".into(),
        (ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader, _) => "malformed response".into(),
        (_, Some(e)) => io_kind(e),
        (kind, None) => kind.to_string(),
    }
}

/// The stats behind their lock; a user thread that panicked holding it
/// leaves counts that are still worth reporting.
fn lock(stats: &Mutex<Stats>) -> std::sync::MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
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
    let mut rng =
        fastrand::Rng::with_seed(args.seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Stagger the starts over one think time so that users do not arrive in lockstep.
    let stagger = rng.u64(0..=args.think_ms.1);
    sleep_until(Duration::from_millis(stagger), end);
    let mut last_album: Option<Vec<String>> = None;
    while Instant::now() < end {
        let n = rng.usize(args.min_images..=args.max_images);
        let album: Vec<String> = rng.choose_multiple(keys, n).into_iter().cloned().collect();
        let outcome = client.post(ROUTE_EMBEDDING, &json!({ "images": album }), stats);
        if let Outcome::Response { status: 201, body } = &outcome {
            let failed: Vec<String> = match answer_data(body) {
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect(),
                _ => Vec::new(),
            };
            let mut s = lock(stats);
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
        let think = rng.u64(args.think_ms.0..=args.think_ms.1);
        sleep_until(Duration::from_millis(think), end);
    }
    let Some(album) = last_album else {
        lock(stats).skipped_analysis += 1;
        return;
    };
    if Instant::now() >= client.hard_deadline {
        lock(stats).skipped_analysis += 1;
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
        _ => lock(stats).skipped_analysis += 1,
    }
}

/// Runs the load test and prints the report; exit status 1 when any 5xx or
/// transport error was seen.
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
            rss_kb(Some(pid)).is_some(),
            "--server-pid {pid}: cannot read VmRSS from /proc/{pid}/status"
        );
    }

    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let hard_deadline = end + Duration::from_secs(args.grace_secs);
    let client = Client::new(target.base, target.addrs, &args, hard_deadline);
    let stats = Mutex::new(Stats::new()?);
    let done = Arc::new(AtomicBool::new(false));
    let rss_samples: Mutex<Vec<(f64, u64)>> = Mutex::new(Vec::new());

    if !args.json {
        eprintln!(
            "ongi-loadtest: {} users for {} s against {} ({} keys, {}-{} per request, think {}-{} ms)",
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

    std::thread::scope(|scope| -> Result<()> {
        if let Some(pid) = args.server_pid {
            let (done, rss_samples) = (done.clone(), &rss_samples);
            let sample = move || {
                if let Some(kib) = rss_kb(Some(pid)) {
                    let mut samples = rss_samples.lock().unwrap_or_else(PoisonError::into_inner);
                    samples.push((start.elapsed().as_secs_f64(), kib));
                }
            };
            scope.spawn(move || {
                let mut next = Instant::now();
                while !done.load(Ordering::Relaxed) {
                    sample();
                    next += Duration::from_secs(1);
                    while !done.load(Ordering::Relaxed) && Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                sample();
            });
        }
        let mut users = Vec::with_capacity(args.users);
        for id in 0..args.users {
            let (args, keys, client, stats) = (&args, &keys, &client, &stats);
            let user = std::thread::Builder::new()
                .name(format!("vu-{id}"))
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    virtual_user(id, args, keys, client, end, stats)
                });
            match user {
                Ok(user) => users.push(user),
                Err(e) => {
                    done.store(true, Ordering::Relaxed);
                    bail!("starting virtual user {id}: {e}");
                }
            }
        }
        for user in users {
            let _ = user.join();
        }
        done.store(true, Ordering::Relaxed);
        Ok(())
    })?;

    let stats = stats.into_inner().unwrap_or_else(PoisonError::into_inner);
    let rss = rss_samples
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    let run = RunInfo {
        url: args.url.clone(),
        users: args.users,
        // Embedding requests may not start after the duration: images/s is
        // over the sending window.
        duration_secs: args.duration_secs,
        elapsed_secs: start.elapsed().as_secs_f64(),
        keys: keys.len(),
        images_per_request: [args.min_images, args.max_images],
        think_ms: [args.think_ms.0, args.think_ms.1],
        seed: args.seed,
    };
    let server_rss = args.server_pid.map(|pid| RssReport::new(pid, &rss));
    let report = Report::new(run, &stats, server_rss);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_text();
    }
    Ok(if report.failures() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_think_ranges() {
        assert_eq!(parse_range("3000-5000"), Ok((3000, 5000)));
        assert_eq!(parse_range("100"), Ok((100, 100)));
        assert!(parse_range("5-3").is_err());
        assert!(parse_range("a-3").is_err());
    }

    #[test]
    fn albums_are_seeded_and_distinct() {
        let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let pick = |seed| fastrand::Rng::with_seed(seed).choose_multiple(&keys, 40);
        assert_eq!(pick(7), pick(7));
        assert_ne!(pick(7), pick(8));
        let mut album = pick(7);
        album.sort();
        album.dedup();
        assert_eq!(album.len(), 40);
        assert_eq!(
            fastrand::Rng::with_seed(1)
                .choose_multiple(&keys[..3], 10)
                .len(),
            3
        );
    }
}
