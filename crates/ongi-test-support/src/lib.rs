//! What ongi's tests share: real servers started on loopback (`redis-server`,
//! `moto_server`, the `ongi` binary itself), the committed fixtures, the data
//! installed beside the repository (real photos, face models), and small
//! numeric helpers. Each test crate uses a different subset.

pub mod face_models;
pub mod fixtures;
pub mod numeric;
pub mod ongi;
pub mod real_photos;
pub mod redis;
pub mod s3;

use std::path::PathBuf;

/// ongi's folder in the user's cache (`$XDG_CACHE_HOME/ongi`, else
/// `~/.cache/ongi`), where `scripts/test-deps` puts what the repository
/// does not hold.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        })
        .join("ongi")
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `Some(dir)` when `present`; otherwise a panic under CI (which must run
/// everything), else a skip line naming what is missing and `None`.
pub fn present_or_skip(dir: PathBuf, present: bool, what: &str, remedy: &str) -> Option<PathBuf> {
    if present {
        return Some(dir);
    }
    let missing = format!("{} holds none; {remedy}", dir.display());
    assert!(std::env::var_os("CI").is_none(), "{what}: {missing}");
    println!("{what}: skipped ({missing})");
    None
}

/// Sends `kill -SIGNAL` (e.g. `"TERM"`, `"STOP"`, `"CONT"`) to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}
