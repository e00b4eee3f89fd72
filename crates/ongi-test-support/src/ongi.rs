//! The real `ongi` binary: one-shot commands, and `ongi serve` as a child
//! process the tests talk HTTP to and signal at will.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::fixtures;

/// The `ongi` binary of the test's own build: `$ONGI_BIN`, else `ongi` in
/// the target folder above the test executable (`target/<profile>/deps/…`),
/// where cargo builds the package's binary before its integration tests.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ONGI_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps");
    let ongi = profile.join(format!("ongi{}", std::env::consts::EXE_SUFFIX));
    assert!(
        ongi.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (or `cargo build -p ongi` first), which builds it",
        ongi.display()
    );
    ongi
}

/// Runs `ongi ARGS...`: exit code, stdout, stderr.
pub fn run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> (i32, Vec<u8>, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

/// Runs `ongi ARGS...`, which must succeed; its stdout.
pub fn stdout<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Vec<u8> {
    let (code, stdout, stderr) = run(args);
    assert_eq!(code, 0, "{stderr}");
    stdout
}

/// `ongi embed --model <tiny model> ARGS...`: each output line's input and
/// embedding.
pub fn cli_embeddings<S: AsRef<OsStr>>(
    args: impl IntoIterator<Item = S>,
) -> HashMap<String, Vec<f32>> {
    let model = fixtures::tiny_model();
    let args: Vec<OsString> = ["embed".as_ref(), "--model".as_ref(), model.as_os_str()]
        .into_iter()
        .map(OsStr::to_os_string)
        .chain(args.into_iter().map(|a| a.as_ref().to_os_string()))
        .collect();
    String::from_utf8(stdout(args))
        .unwrap()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let embedding = serde_json::from_value(v["embedding"].clone()).unwrap();
            (v["input"].as_str().unwrap().to_owned(), embedding)
        })
        .collect()
}

/// Status of a blocking `GET`, or `None` when nobody answers (readiness
/// polls must not need an async runtime).
pub fn get_status(url: &str) -> Option<u16> {
    match ureq::get(url).timeout(Duration::from_secs(2)).call() {
        Ok(response) => Some(response.status()),
        Err(ureq::Error::Status(status, _)) => Some(status),
        Err(_) => None,
    }
}

/// A running `ongi serve`, stopped (SIGKILL) on drop.
pub struct OngiServer {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    /// The loopback port it listens on.
    pub port: u16,
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
        Self::start_model_over(&fixtures::tiny_model(), photos, store, extra, nofile)
    }

    /// [`OngiServer::start_over`] with the model directory `model`.
    pub fn start_model_over(
        model: &Path,
        photos: &Path,
        store: &Path,
        extra: &[&str],
        nofile: Option<u32>,
    ) -> Self {
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
        let port = crate::free_port();
        let ongi = binary();
        let mut command = match nofile {
            // The shell sets the limit, then becomes the server (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")])
                    .arg(&ongi);
                c
            }
            None => Command::new(&ongi),
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
            port,
            log,
            _log_dir: log_dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if !self.running() {
                let status = self.wait_exit(Duration::ZERO);
                panic!("ongi serve exited with {status}; log:\n{}", self.log());
            }
            if self.health_status() == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("ongi serve did not become ready; log:\n{}", self.log());
    }

    /// Status of `GET /health/info`, or `None` when nobody answers.
    pub fn health_status(&self) -> Option<u16> {
        get_status(&format!("{}/health/info", self.url))
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server stopped").id()
    }

    /// Sends `kill -SIGNAL` (e.g. `"TERM"`, `"STOP"`) to the server.
    pub fn signal(&self, signal: &str) {
        crate::signal(self.pid(), signal);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Waits up to `within` for the process to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("server already reaped");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ongi serve still running after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    /// Sends SIGTERM and waits (30 s at most, then kills) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() {
            if Instant::now() > deadline {
                self.kill();
                panic!("ongi serve ignored SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_exit(Duration::ZERO)
    }

    /// [`post_json`] to this server.
    pub async fn try_post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, serde_json::Value), reqwest::Error> {
        post_json(&self.url, path, body).await
    }

    /// POSTs a JSON body; returns the status and the parsed body.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        self.try_post(path, body)
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}; log:\n{}", self.log()))
    }

    /// POSTs raw bytes; returns the status and the body text.
    pub async fn post_raw(&self, path: &str, body: &'static [u8]) -> (u16, String) {
        self.post_with_headers(path, body.to_vec(), &[]).await
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

/// POSTs a JSON body to `url` + `path`, with a 60 s timeout; the status and
/// the parsed body, or the transport error (a server that is down or
/// stalled). Free of the server handle so spawned tasks can call it.
pub async fn post_json(
    url: &str,
    path: &str,
    body: &serde_json::Value,
) -> Result<(u16, serde_json::Value), reqwest::Error> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?
        .post(format!("{url}{path}"))
        .json(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered {status} with non-JSON {text:?}: {e}"));
    Ok((status, json))
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
