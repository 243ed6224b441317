//! A real rate limit service for global rules: `rls-server` (the `tests/rls-server` crate,
//! Envoy's `RateLimitService` gRPC protocol over the `limitador` crate), with its counters in
//! memory or in Debian's `redis-server`. Both run on 127.0.0.1 (Envoy in Docker runs on the
//! host network) and are killed when dropped.
//!
//! The binaries come from `RLS_SERVER_BIN` and `REDIS_SERVER_BIN`, which the Makefile sets
//! (`make rls-tools` builds and installs them); a missing one fails the test saying so.

use crate::server_process::{ServerProcess, binary};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where a server keeps its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// In the server's memory: exact, this server only.
    Memory,
    /// In the Redis listening on this port of 127.0.0.1: shared by every server on it.
    Redis(u16),
}

/// A running `rls-server`; killed when dropped. Its stderr (one line per request: it runs
/// with `--verbose`) is printed when the test fails.
#[derive(Debug)]
pub struct RlsServer {
    process: ServerProcess,
}

impl RlsServer {
    /// Starts one with these limits (YAML in Limitador's format, see `envoy/rls/limits.yaml`)
    /// on a free port, and waits until it listens.
    pub fn start(limits_yaml: &str, storage: Storage) -> RlsServer {
        Self::start_delayed(limits_yaml, storage, Duration::ZERO)
    }

    /// The same, answering every call `delay` late (a slow service).
    pub fn start_delayed(limits_yaml: &str, storage: Storage, delay: Duration) -> RlsServer {
        let bin = binary(
            "RLS_SERVER_BIN",
            &crate::repo_root().join("target/debug/rls-server"),
            "the rate limit service (rls-server)",
            "make rls-tools",
        );
        let dir = crate::envoy::fresh_dir();
        let limits = dir.join("limits.yaml");
        std::fs::write(&limits, limits_yaml).expect("write the limits file");
        let port = crate::free_port();
        let mut command = Command::new(&bin);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--limits")
            .arg(&limits)
            .arg("--delay-ms")
            .arg(delay.as_millis().to_string())
            .arg("--verbose");
        if let Storage::Redis(redis_port) = storage {
            command
                .arg("--redis")
                .arg(format!("redis://127.0.0.1:{redis_port}"));
        }
        RlsServer {
            process: ServerProcess::start("rls-server", command, dir, port),
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// Kills it (SIGKILL) now, as a crash would; for tests that stop the service mid-burst.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// What it wrote to stderr so far (one line per request).
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Debian's `redis-server` on a free port of 127.0.0.1, without persistence; killed when
/// dropped.
#[derive(Debug)]
pub struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> Redis {
        let bin = binary(
            "REDIS_SERVER_BIN",
            Path::new("/usr/bin/redis-server"),
            "redis-server (Debian, 7 or newer)",
            "make rls-tools",
        );
        let dir = crate::envoy::fresh_dir();
        let log = std::fs::File::create(dir.join("redis.log")).expect("create the redis log");
        let port = crate::free_port();
        let child = Command::new(&bin)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let redis = Redis { child, port, dir };
        for _ in 0..200 {
            if redis.command("PING").is_ok_and(|r| r == "+PONG") {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server did not answer PING on port {port}:\n{}",
            redis.log()
        );
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Removes every key: every rate limit counter starts again from zero.
    pub fn flushall(&self) {
        let reply = self.command("FLUSHALL").expect("send FLUSHALL to redis");
        assert_eq!(reply, "+OK", "FLUSHALL answered {reply}");
    }

    /// Sends one inline command and returns the first line of the reply.
    fn command(&self, command: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if stream.read(&mut byte)? == 0 {
                break;
            }
            reply.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_owned())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- redis log ({}) -----\n{}----- end of redis log -----",
                self.dir.display(),
                self.log()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
