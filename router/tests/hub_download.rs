//! `--model org/name[@revision]` end to end against a local stand-in for the
//! Hugging Face hub: a loopback HTTP server started by the test that serves
//! the tiny fixture model in the hub's URL layout
//! (`/{org}/{name}/resolve/{revision}/{file}`, with the `ETag`,
//! `X-Repo-Commit` and `Content-Range` headers the hub sends), reached
//! through `HF_ENDPOINT`.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use support::{fixtures, tiny_model};

const REPO: &str = "test-org/tiny-clip";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// What the stand-in hub saw.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    authorization: Mutex<Vec<String>>,
}

/// Serves `files` for `REPO` at revision `main` until dropped.
struct Hub {
    url: String,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Hub {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        serve(stream, &files, &seen2);
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        Self { url, seen, stop }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Answers one request, then closes the connection.
fn serve(stream: TcpStream, files: &HashMap<String, Vec<u8>>, seen: &Seen) {
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    let mut range_end = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or(("", ""));
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "range" => {
                let spec = value.trim_start_matches("bytes=");
                let (a, b) = spec.split_once('-').unwrap();
                range_start = a.parse::<usize>().ok();
                range_end = b.parse::<usize>().ok();
            }
            "authorization" => seen.authorization.lock().unwrap().push(value.to_string()),
            _ => {}
        }
    }
    let prefix = format!("/{REPO}/resolve/main/");
    let body = path.strip_prefix(&prefix).and_then(|f| files.get(f));
    let mut out = stream;
    let Some(body) = body else {
        let _ = out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let start = range_start.unwrap_or(0).min(body.len());
    let end = range_end.map_or(body.len(), |e| (e + 1).min(body.len()));
    let part = &body[start..end.max(start)];
    // A stable per-content ETag, as the hub's (a hash of the bytes).
    let etag = format!("{:016x}{:08x}", fnv(body), body.len());
    let head = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\n\
         ETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        part.len(),
        start,
        start + part.len().saturating_sub(1),
        body.len()
    );
    let _ = out.write_all(head.as_bytes());
    let _ = out.write_all(part);
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `ongi embed --model MODEL PHOTO` with `envs`; (exit code, stdout, stderr).
fn embed(model: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let photo = fixtures().join("photos/landscape_dune.jpg");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ongi"));
    cmd.args(["embed", "--model", model]).arg(photo);
    for var in ["HF_ENDPOINT", "HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE"] {
        cmd.env_remove(var);
    }
    cmd.envs(envs.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn a_hub_model_downloads_once_then_runs_offline_and_bad_revisions_are_clear() {
    let dir = tiny_model();
    let files: HashMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    assert!(
        files.len() >= 4,
        "fixture model incomplete: {:?}",
        files.keys()
    );
    let hub = Hub::start(files);
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();

    // The same photo through the local directory: what the hub model must give.
    let (code, local, err) = embed(dir.to_str().unwrap(), &[]);
    assert_eq!(code, 0, "{err}");

    // First run: downloads into HF_HOME/hub, sending HF_TOKEN, and embeds.
    let env = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HOME", home_s),
        ("HF_TOKEN", "test-token"),
    ];
    let (code, out, err) = embed(REPO, &env);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out, local,
        "the hub model embeds differently from the local one"
    );
    let snapshot = home.path().join(format!(
        "hub/models--test-org--tiny-clip/snapshots/{COMMIT}"
    ));
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        assert!(
            snapshot.join(f).exists(),
            "{f} not in {}",
            snapshot.display()
        );
    }
    assert!(hub.seen.requests.load(Ordering::Relaxed) > 0);
    let auth = hub.seen.authorization.lock().unwrap().clone();
    assert!(
        !auth.is_empty() && auth.iter().all(|a| a == "Bearer test-token"),
        "{auth:?}"
    );

    // Second run, offline: from the cache, without one request to the hub.
    let before = hub.seen.requests.load(Ordering::Relaxed);
    let offline = [
        ("HF_ENDPOINT", hub.url.as_str()),
        ("HF_HOME", home_s),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let (code, out, err) = embed(REPO, &offline);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, local);
    assert_eq!(
        hub.seen.requests.load(Ordering::Relaxed),
        before,
        "offline run reached the hub"
    );

    // A revision the hub does not have: a clear error naming it.
    let (code, _, err) = embed(&format!("{REPO}@no-such-rev"), &env);
    assert_ne!(code, 0);
    assert!(
        err.contains("no revision no-such-rev") && err.contains("404"),
        "{err}"
    );

    // Offline and not cached: says so, and how to fix it.
    let (code, _, err) = embed("test-org/not-cached", &offline);
    assert_ne!(code, 0);
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("not in the Hugging Face cache"),
        "{err}"
    );

    // Neither a directory nor a hub id.
    let (code, _, err) = embed("/no/such/dir", &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no such directory"), "{err}");
}
