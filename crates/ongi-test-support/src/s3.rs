//! A real S3-protocol server for integration tests: `moto` in server mode.
//!
//! ```ignore
//! let server = s3::MotoServer::start(); // fails the test, with an install hint, if moto is missing
//! server.create_bucket("photos");
//! server.put_object("photos", "albums/a.jpg", &jpeg_bytes);
//!
//! // In-process: explicit options, no process-environment mutation.
//! let source = ImageSource::from_spec_with_options("s3://photos/albums", limits, &server.options())?;
//! // A child process (e.g. `ongi serve --images s3://photos/albums`):
//! Command::new(ongi).envs(server.env());
//! ```
//!
//! Each [`MotoServer`] is a private `moto_server` process on a loopback port
//! chosen by the OS (`-p 0`, port read back from its log, so parallel tests
//! never race for a port). It accepts any credentials; objects live in its
//! memory. Dropping the handle kills the process.
//!
//! Install: `python3 -m pip install 'moto[server]'`. Set `ONGI_MOTO_SERVER`
//! to use a `moto_server` executable that is not on `PATH`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Region the dummy credentials are scoped to.
pub const REGION: &str = "us-east-1";
/// Dummy access key; moto accepts any.
pub const ACCESS_KEY_ID: &str = "ongi-test";
/// Dummy secret key; moto accepts any.
pub const SECRET_ACCESS_KEY: &str = "ongi-test-secret";

const INSTALL_HINT: &str = "moto_server is needed for the S3 tests: install it with \
     `python3 -m pip install 'moto[server]'` (or set ONGI_MOTO_SERVER to its path)";

/// How long moto gets to start (a cold Python import takes a few seconds).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running moto S3 server, killed on drop.
pub struct MotoServer {
    child: Child,
    port: u16,
}

impl MotoServer {
    /// Starts a server and waits until it answers; panics (failing the test) if it cannot.
    pub fn start() -> Self {
        match Self::try_start() {
            Ok(server) => server,
            Err(message) => panic!("{message}"),
        }
    }

    /// Starts a server and waits until it answers.
    pub fn try_start() -> Result<Self, String> {
        let program = std::env::var("ONGI_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run `{program}`: {e}. {INSTALL_HINT}"))?;

        // Werkzeug logs " * Running on http://127.0.0.1:PORT" once it listens,
        // then one line per request: keep draining stderr for the server's
        // whole life so it never blocks on a full pipe.
        let (port_tx, port_rx) = mpsc::channel();
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            return Err("moto_server stderr was not captured".into());
        };
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(port) = parse_port(&line) {
                        sent = port_tx.send(Ok(port)).is_ok();
                    } else {
                        log.push(line);
                    }
                }
            }
            if !sent {
                let _ = port_tx.send(Err(log.join("\n")));
            }
        });

        let mut server = match port_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(port)) => Self { child, port },
            Ok(Err(log)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "moto_server exited before listening:\n{log}\n{INSTALL_HINT}"
                ));
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "moto_server did not start within {START_TIMEOUT:?}"
                ));
            }
        };
        server.wait_until_ready()?;
        Ok(server)
    }

    fn wait_until_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // ListBuckets: any HTTP answer means the S3 API is up.
            match self.request("GET", "/", &[]) {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(format!("moto_server never answered: {error}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("moto_server exited with {status}"));
            }
        }
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The endpoint URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings for `ImageSource::from_spec_with_options` (object_store config keys).
    pub fn options(&self) -> Vec<(String, String)> {
        self.env()
            .into_iter()
            .map(|(key, value)| (key.to_ascii_lowercase(), value))
            .collect()
    }

    /// The standard AWS environment pointing at this server, for `Command::envs`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_DEFAULT_REGION", REGION.to_owned()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// Creates a bucket (path-style `PUT /bucket`); panics on failure.
    pub fn create_bucket(&self, bucket: &str) {
        self.expect_ok("PUT", &format!("/{bucket}"), &[]);
    }

    /// Uploads one object (path-style `PUT /bucket/key`); panics on failure.
    pub fn put_object(&self, bucket: &str, key: &str, body: &[u8]) {
        self.expect_ok("PUT", &self.object_path(bucket, key), body);
    }

    fn expect_ok(&self, method: &str, path: &str, body: &[u8]) {
        match self.request(method, path, body) {
            Ok((status, _)) if (200..300).contains(&status) => {}
            Ok((status, response)) => panic!(
                "{method} {path} on moto answered {status}: {}",
                String::from_utf8_lossy(&response)
            ),
            Err(error) => panic!("{method} {path} on moto failed: {error}"),
        }
    }

    /// One request on the server; its status and body (any status is an answer).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), String> {
        let answer = ureq::request(method, &format!("{}{path}", self.endpoint()))
            .timeout(Duration::from_secs(30))
            .set("content-type", "application/octet-stream")
            .send_bytes(body);
        let response = match answer {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => return Err(error.to_string()),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        Ok((status, bytes))
    }

    /// The path of `key` in `bucket`, percent-encoded, `/` kept as separators.
    fn object_path(&self, bucket: &str, key: &str) -> String {
        let mut url = url::Url::parse(&self.endpoint()).expect("loopback URL");
        url.path_segments_mut()
            .expect("http URL")
            .push(bucket)
            .extend(key.split('/'));
        url.path().to_owned()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts PORT from Werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn parse_port(line: &str) -> Option<u16> {
    let rest = line.split("Running on http://").nth(1)?;
    let port = rest.split(':').nth(1)?;
    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
