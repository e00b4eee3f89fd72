//! Starts the real `ongi serve` binary for integration tests and talks HTTP to it.

#![allow(dead_code)] // each test file uses a different subset

pub mod kafka;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Cosine similarity of two embeddings, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt())
}

/// Runs `ongi ARGS...`: exit code, stdout, stderr.
pub fn ongi_run<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ongi"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

/// Runs `ongi ARGS...`, which must succeed; its stdout.
pub fn ongi_stdout<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let (code, stdout, stderr) = ongi_run(args);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

/// `ongi embed --model <tiny model> ARGS...`: each output line's input and
/// embedding.
pub fn cli_embeddings<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> std::collections::HashMap<String, Vec<f32>> {
    let model = tiny_model();
    let args: Vec<std::ffi::OsString> = ["embed".as_ref(), "--model".as_ref(), model.as_os_str()]
        .into_iter()
        .map(std::ffi::OsStr::to_os_string)
        .chain(args.into_iter().map(|a| a.as_ref().to_os_string()))
        .collect();
    String::from_utf8(ongi_stdout(args))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let embedding = serde_json::from_value(v["embedding"].clone()).unwrap();
            (v["input"].as_str().unwrap().to_owned(), embedding)
        })
        .collect()
}

/// `ongi serve` arguments over a copy of the fixture photos, a fresh
/// embedded store and the tiny model, then `extra` flags; the folders live
/// as long as the returned guard.
pub fn serve_args(
    extra: &[&str],
) -> (
    ongi_router::server::ServeArgs,
    (tempfile::TempDir, tempfile::TempDir),
) {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        serve: ongi_router::server::ServeArgs,
    }
    let photos = photo_dir();
    let store = tempfile::tempdir().unwrap();
    let (model, store_file) = (tiny_model(), store.path().join("f.redb"));
    let mut argv = vec![
        "test",
        "--model",
        model.to_str().unwrap(),
        "--images",
        photos.path().to_str().unwrap(),
        "--store",
        store_file.to_str().unwrap(),
    ];
    argv.extend(extra);
    let args = <Args as clap::Parser>::parse_from(argv).serve;
    (args, (photos, store))
}

/// An app built in-process (as `ongi serve` builds it) from [`serve_args`].
pub async fn in_process_app(
    extra: &[&str],
) -> (
    ongi_router::server::App,
    ongi_router::server::ServeArgs,
    (tempfile::TempDir, tempfile::TempDir),
) {
    let (args, dirs) = serve_args(extra);
    let compute = args.pipeline.resolve_compute().unwrap();
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let app = ongi_router::server::app(&args, compute, metrics)
        .await
        .unwrap();
    (app, args, dirs)
}

/// The repository's test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The committed tiny CLIP checkpoint.
pub fn tiny_model() -> PathBuf {
    fixtures().join("tiny-clip")
}

/// The decodable fixture photos (file names), sorted.
pub fn photo_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != "corrupt.jpg")
        .collect();
    names.sort();
    names
}

/// Copies every fixture photo (and the corrupt one) into a fresh directory.
pub fn photo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("photos")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// A running `ongi serve`, stopped (SIGTERM, then kill) on drop.
pub struct OngiServer {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl OngiServer {
    /// Starts `ongi serve --bind 127.0.0.1:PORT ARGS...` with `envs` and waits for `/health/info`.
    pub fn start(args: &[&str], envs: &[(String, String)]) -> Self {
        Self::start_with_fd_limit(args, envs, None)
    }

    /// `ongi serve` with the tiny model over the photos in `photos`, the
    /// embedded store at `store`, then `extra` flags, under `ulimit -n NOFILE`
    /// when given.
    pub fn start_over(photos: &Path, store: &Path, extra: &[&str], nofile: Option<u32>) -> Self {
        let model = tiny_model();
        let mut args = vec![
            "--model",
            model.to_str().unwrap(),
            "--images",
            photos.to_str().unwrap(),
            "--store",
            store.to_str().unwrap(),
        ];
        args.extend(extra);
        Self::start_with_fd_limit(&args, &[], nofile)
    }

    /// Like [`OngiServer::start`], under `ulimit -n NOFILE` (soft and hard) when given.
    pub fn start_with_fd_limit(
        args: &[&str],
        envs: &[(String, String)],
        nofile: Option<u32>,
    ) -> Self {
        let log_dir = tempfile::tempdir().unwrap();
        let log = log_dir.path().join("server.log");
        let port = free_port();
        let mut command = match nofile {
            // The shell sets the limit, then becomes the server (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.args([
                    "-c",
                    &format!("ulimit -n {n} && exec \"$0\" \"$@\""),
                    env!("CARGO_BIN_EXE_ongi"),
                ]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ongi")),
        };
        let child = command
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        let mut server = Self {
            child: Some(child),
            url: format!("http://127.0.0.1:{port}"),
            log,
            _log_dir: log_dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("ongi serve exited with {status}; log:\n{}", self.log());
            }
            if let Ok(resp) = ureq_get(&format!("{}/health/info", self.url)) {
                if resp.0 == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ongi serve did not become ready; log:\n{}", self.log());
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server stopped").id()
    }

    /// The server's resident set size now, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }

    /// Kills the server with SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("server already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("server already stopped");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("ongi serve ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// POSTs a JSON body; returns the status and the parsed body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
        (status, json)
    }

    /// POSTs raw bytes; returns the status and the body text.
    pub async fn post_raw(&self, path: &str, body: &'static [u8]) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// POSTs `body` as JSON with extra request headers; returns the status and the body text.
    pub async fn post_with_headers(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, String) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let resp = request.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// GETs a path; returns the status and the body text.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.url)).await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The value of an unlabelled counter or gauge in `/metrics` (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        metric_value(&text, name)
    }
}

impl Drop for OngiServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Value of the sample line `name value` (or `name{...} value` when `name` includes labels).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Minimal blocking GET over std (readiness polling must not need a runtime).
fn ureq_get(url: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, response))
}
