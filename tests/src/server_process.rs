//! A test server run as a child process (`rls-server`, `grpc-tool serve`, `prometheus`):
//! started on a free port of 127.0.0.1, ready once it prints `listening on 127.0.0.1:PORT` (or,
//! for a server we did not write, once a probe says so), its stderr kept in a log file that is
//! printed when the test fails, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// A binary from an environment variable the Makefile sets, else its usual place; fails the
/// test, naming what is missing and the make target that provides it, when it is not there.
#[track_caller]
pub(crate) fn binary(var: &str, usual: &Path, what: &str, make_target: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or_else(|| usual.to_path_buf(), PathBuf::from);
    assert!(
        path.is_file(),
        "{what} is missing: {} does not exist (from {var}, or its default when unset); \
         `{make_target}` builds or installs it",
        path.display()
    );
    path
}

/// A running server process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
    name: &'static str,
}

impl ServerProcess {
    /// Runs `command` (told to listen on 127.0.0.1:`port`) with its stderr in `dir/<name>.log`,
    /// and waits until it says it listens.
    pub fn start(name: &'static str, mut command: Command, dir: PathBuf, port: u16) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("cannot create the {name} log: {e}"));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("the server's stdout");
        let mut server = ServerProcess {
            child,
            port,
            dir,
            name,
        };
        // Read in a thread so that a stuck start cannot hang the test.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(READY_DEADLINE).unwrap_or_default();
        let expected = format!("listening on 127.0.0.1:{port}");
        if line.trim_end() != expected {
            server.kill();
            panic!(
                "{name} did not start (expected `{expected}` on stdout, got {line:?}):\n{}",
                server.log()
            );
        }
        server
    }

    /// Runs `command` (told to listen on 127.0.0.1:`port`) with its stdout and stderr in
    /// `dir/<name>.log`, and waits until `ready(port)` answers true: for servers that announce
    /// nothing on stdout but have a readiness endpoint. Fails the test (printing the log) if the
    /// process exits first or is not ready in time.
    pub fn start_probed(
        name: &'static str,
        mut command: Command,
        dir: PathBuf,
        port: u16,
        ready: impl Fn(u16) -> bool,
    ) -> Self {
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("cannot create the {name} log: {e}"));
        let stdout = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot share the {name} log: {e}"));
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = ServerProcess {
            child,
            port,
            dir,
            name,
        };
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            // Panicking drops `server`, which prints its log.
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{name} exited ({status}) before it was ready");
            }
            if ready(port) {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "{name} was not ready on port {port} after {READY_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills it (SIGKILL) now, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log ({}) -----\n{}----- end of {} log -----",
                self.name,
                self.dir.display(),
                self.log(),
                self.name
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
