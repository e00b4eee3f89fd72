//! A real `redis-server` for integration tests, on a free loopback port in a
//! temporary directory (never a system service, never a mock).
//!
//! `redis-server` must be on PATH (`apt-get install redis-server`); without it
//! the test fails with that instruction.

use std::io::{Read, Write};
use std::net::TcpStream;
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
        let port = crate::free_port();
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

    /// Sends `kill -SIGNAL` (e.g. `"STOP"` to hang it, `"CONT"` to resume).
    pub fn signal(&self, signal: &str) {
        crate::signal(self.pid(), signal);
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
