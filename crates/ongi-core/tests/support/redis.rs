//! A real `redis-server` for integration tests, on a free loopback port in a
//! temporary directory (never a system service, never a mock).
//!
//! Include by path: `#[path = "support/redis.rs"] mod redis_support;` from
//! `crates/ongi-core/tests`, or
//! `#[path = "../../crates/ongi-core/tests/support/redis.rs"]` from elsewhere.
//! `redis-server` must be on PATH (`apt-get install redis-server`); without it
//! the test fails with that instruction.

#![allow(dead_code)] // each test crate uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct RedisServer {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = spawn_redis(dir.path(), port);
        let server = Self { child, port, dir };
        server.wait_ready();
        server
    }

    /// Starts a fresh server on the same port (after [`RedisServer::kill`]).
    pub fn restart(&mut self) {
        self.child = spawn_redis(self.dir.path(), self.port);
        self.wait_ready();
    }

    /// The server's process id (to pause it with SIGSTOP in fault tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the server (it can be started again with [`RedisServer::restart`]).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if ping(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
        panic!(
            "redis-server on port {} did not answer PING within 10 s; log:\n{log}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_redis(dir: &Path, port: u16) -> Child {
    let log = std::fs::File::create(dir.join("redis.log")).unwrap();
    let result = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "redis-server is not on PATH: the Redis store tests need a real server; \
             install it (Debian/Ubuntu: `apt-get install -y redis-server`)"
        ),
        Err(e) => panic!("cannot start redis-server: {e}"),
    }
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Raw RESP `PING`, so readiness does not depend on the code under test.
pub fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}
