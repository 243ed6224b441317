//! Real gRPC at both ends of Envoy: `grpc-tool` (the `tests/grpc-tool` crate) as the upstream
//! ([`GrpcServer`]: HTTP/2 cleartext, every answer's shape chosen per request by the
//! `x-grpc-reply` header) and as the client ([`GrpcCall`]: tonic's own client, which judges
//! each answer as a real gRPC client does, plus what came on the wire).
//!
//! The binary comes from `GRPC_TOOL_BIN`, which the Makefile sets (`make rls-tools` builds
//! it); a missing one fails the test saying so.
//!
//! Reply shapes (`x-grpc-reply`, see `tests/grpc-tool/src/reply.rs`): `ok` (the default),
//! `trailers:<code>`, `trailers-only:<code>`, `stream:<n>:<code>`, `fail-first:<k>:<code>`
//! (per `x-grpc-id`), `no-status`, `end-without-trailers`, `reset`, `reset-before-headers`,
//! `http:<status>`; options `,delay-ms=<n>` (before the answer ends), `,headers-delay-ms=<n>`
//! (before anything is sent) and `,message=<text>`. Every answer from the server carries
//! `x-grpc-tool-request: <n>` in its headers (none in a reset before headers), so an answer
//! without it was made by Envoy or a filter.

use crate::server_process::ServerProcess;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// gRPC status codes (`google.rpc.Code`).
pub mod code {
    /// Not an error.
    pub const OK: u32 = 0;
    /// `CANCELLED`.
    pub const CANCELLED: u32 = 1;
    /// `UNKNOWN`: also what a client makes of an answer without a final status.
    pub const UNKNOWN: u32 = 2;
    /// `INVALID_ARGUMENT`.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// `DEADLINE_EXCEEDED`.
    pub const DEADLINE_EXCEEDED: u32 = 4;
    /// `NOT_FOUND`.
    pub const NOT_FOUND: u32 = 5;
    /// `PERMISSION_DENIED`.
    pub const PERMISSION_DENIED: u32 = 7;
    /// `RESOURCE_EXHAUSTED`.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// `UNIMPLEMENTED`.
    pub const UNIMPLEMENTED: u32 = 12;
    /// `INTERNAL`.
    pub const INTERNAL: u32 = 13;
    /// `UNAVAILABLE`.
    pub const UNAVAILABLE: u32 = 14;
    /// `UNAUTHENTICATED`.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// The request header that chooses the server's answer.
pub const REPLY_HEADER: &str = "x-grpc-reply";
/// The request header `fail-first:<k>:<code>` counts attempts by.
pub const ID_HEADER: &str = "x-grpc-id";

fn tool() -> PathBuf {
    crate::server_process::binary(
        "GRPC_TOOL_BIN",
        &crate::repo_root().join("target/debug/grpc-tool"),
        "the gRPC test tool (grpc-tool)",
        "make rls-tools",
    )
}

/// A running `grpc-tool serve` on a free port of 127.0.0.1; killed when dropped. Its log (one
/// line per request) is printed when the test fails.
#[derive(Debug)]
pub struct GrpcServer {
    process: ServerProcess,
}

impl GrpcServer {
    /// Starts one and waits until it listens.
    pub fn start() -> GrpcServer {
        let port = crate::free_port();
        let mut command = Command::new(tool());
        command
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"));
        GrpcServer {
            process: ServerProcess::start("grpc-server", command, crate::envoy::fresh_dir(), port),
        }
    }

    /// The port it listens on, on 127.0.0.1 (HTTP/2 cleartext only: see
    /// [`crate::envoy_config::TestEnvoyConfig::upstream_http2`]).
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// Requests received so far (each is logged before it is answered, so a call that has
    /// ended is counted).
    pub fn requests(&self) -> usize {
        self.request_lines().count()
    }

    /// Requests received so far carrying `x-grpc-id: id`.
    pub fn requests_with_id(&self, id: &str) -> usize {
        let needle = format!(" {ID_HEADER}={id}");
        self.request_lines()
            .filter(|line| line.ends_with(&needle))
            .count()
    }

    fn request_lines(&self) -> impl Iterator<Item = String> {
        self.log()
            .lines()
            .filter(|line| line.starts_with("request "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// Kills it (SIGKILL) now, as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Its stderr so far: `request <n>: path=<path> x-grpc-reply=<v> x-grpc-id=<v>` per
    /// request (`-` for a missing header), and any connection errors.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// What one call ended with, as tonic's client saw it and as the wire showed it.
#[derive(Debug, Clone, PartialEq)]
pub struct GrpcOutcome {
    /// The call's number, from 0 (outcomes are returned in this order).
    pub index: usize,
    /// The status code tonic gives the application ([`code`]).
    pub code: u32,
    /// The status message tonic gives the application (`grpc-message`, decoded, or tonic's
    /// own words for a malformed answer).
    pub message: String,
    /// A transport error's source chain, when the status came from one.
    pub detail: Option<String>,
    /// Messages received.
    pub messages: usize,
    /// The response's HTTP status; `None` when no response head came.
    pub http_status: Option<u16>,
    /// The response headers as received (lower-case names; values in order). Empty when no
    /// response head came.
    pub headers: BTreeMap<String, Vec<String>>,
    /// The trailers as received; `None` when none came (a trailers-only answer, a reset, or
    /// a stream ended on a DATA frame).
    pub trailers: Option<BTreeMap<String, Vec<String>>>,
    /// From sending to the final status.
    pub elapsed: Duration,
}

impl GrpcOutcome {
    /// The first value of a response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        first(&self.headers, name)
    }

    /// The first value of a trailer.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref().and_then(|t| first(t, name))
    }

    /// Whether the answer was trailers-only: `grpc-status` in the headers, no trailers.
    pub fn is_trailers_only(&self) -> bool {
        self.header("grpc-status").is_some() && self.trailers.is_none()
    }

    /// What makes this answer not a valid gRPC answer with a final status, if anything:
    /// HTTP status 200, exactly one `content-type` of `application/grpc` (or `+proto` and
    /// the like), exactly one `grpc-status` (in the headers of a trailers-only answer, else in
    /// the trailers), a code from 0 to 16, and the code tonic reports being the one sent.
    pub fn protocol_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.http_status != Some(200) {
            problems.push(format!("HTTP status {:?}, not 200", self.http_status));
        }
        let content_types = self
            .headers
            .get("content-type")
            .cloned()
            .unwrap_or_default();
        if content_types.len() != 1
            || !content_types
                .first()
                .is_some_and(|t| t.starts_with("application/grpc"))
        {
            problems.push(format!(
                "content-type {content_types:?}, not one application/grpc"
            ));
        }
        let in_headers = self.headers.get("grpc-status").cloned().unwrap_or_default();
        let in_trailers = self
            .trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status").cloned())
            .unwrap_or_default();
        let statuses: Vec<&String> = in_headers.iter().chain(&in_trailers).collect();
        match statuses.as_slice() {
            [one] => match one.parse::<u32>() {
                Ok(sent) if sent <= 16 => {
                    if sent != self.code {
                        problems.push(format!(
                            "grpc-status {sent} sent, but the client reports {}",
                            self.code
                        ));
                    }
                }
                _ => problems.push(format!("grpc-status {one:?} is no gRPC code")),
            },
            other => problems.push(format!("grpc-status sent {} times", other.len())),
        }
        if !in_headers.is_empty() && self.trailers.is_some() {
            problems.push("grpc-status in the headers, and trailers after them".to_owned());
        }
        problems
    }

    /// Fails the test unless [`GrpcOutcome::protocol_problems`] finds nothing.
    #[track_caller]
    pub fn assert_valid_grpc(&self) {
        let problems = self.protocol_problems();
        assert!(
            problems.is_empty(),
            "not a valid gRPC answer: {}\n{self:#?}",
            problems.join("; ")
        );
    }

    fn from_json(line: &str) -> GrpcOutcome {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("grpc-tool call printed {line:?}: {e}"));
        let map = |v: &serde_json::Value| -> BTreeMap<String, Vec<String>> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(name, values)| {
                            let values = values
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|x| x.as_str().unwrap_or_default().to_owned())
                                        .collect()
                                })
                                .unwrap_or_default();
                            (name.clone(), values)
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        let number = |name: &str| {
            v[name]
                .as_u64()
                .unwrap_or_else(|| panic!("grpc-tool call printed no {name}: {line}"))
        };
        GrpcOutcome {
            index: usize::try_from(number("index")).expect("index"),
            code: u32::try_from(number("code")).expect("code"),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            detail: v["detail"].as_str().map(str::to_owned),
            messages: usize::try_from(number("messages")).expect("messages"),
            http_status: v["http_status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok()),
            headers: map(&v["headers"]),
            trailers: (!v["trailers"].is_null()).then(|| map(&v["trailers"])),
            elapsed: Duration::from_secs_f64(v["elapsed_ms"].as_f64().unwrap_or_default() / 1000.0),
        }
    }
}

fn first<'a>(map: &'a BTreeMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    map.get(name)
        .and_then(|values| values.first())
        .map(String::as_str)
}

/// The codes of `outcomes`, in call order.
pub fn codes(outcomes: &[GrpcOutcome]) -> Vec<u32> {
    outcomes.iter().map(|o| o.code).collect()
}

/// How many of `outcomes` ended with each code.
pub fn count_by_code(outcomes: &[GrpcOutcome]) -> BTreeMap<u32, usize> {
    let mut counts = BTreeMap::new();
    for o in outcomes {
        *counts.entry(o.code).or_insert(0) += 1;
    }
    counts
}

/// One or many gRPC calls made by one `grpc-tool call` process (tonic's client), to
/// 127.0.0.1:`target_port` over HTTP/2 cleartext.
#[derive(Debug, Clone)]
pub struct GrpcCall {
    target_port: u16,
    path: String,
    headers: Vec<(String, String)>,
    count: usize,
    concurrency: usize,
    connections: usize,
    streaming: bool,
    timeout: Duration,
    message: Option<String>,
}

impl GrpcCall {
    /// One unary call of `path` (`/package.Service/Method`), with a 10 s deadline.
    pub fn new(target_port: u16, path: &str) -> Self {
        GrpcCall {
            target_port,
            path: path.to_owned(),
            headers: Vec::new(),
            count: 1,
            concurrency: 1,
            connections: 1,
            streaming: false,
            timeout: Duration::from_secs(10),
            message: None,
        }
    }

    /// Adds request metadata (ASCII).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Asks the [`GrpcServer`] for this answer (`x-grpc-reply`).
    pub fn reply(self, shape: &str) -> Self {
        self.header(REPLY_HEADER, shape)
    }

    /// Sets `x-grpc-id` (what `fail-first` counts attempts by).
    pub fn id(self, id: &str) -> Self {
        self.header(ID_HEADER, id)
    }

    /// Makes `n` calls instead of one.
    pub fn count(mut self, n: usize) -> Self {
        self.count = n;
        self
    }

    /// At most `c` calls in flight at once (default 1: one after another).
    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = c;
        self
    }

    /// Spreads the calls over `k` HTTP/2 connections (call `i` on connection `i % k`), so
    /// that they can reach more than one Envoy worker. Default 1.
    pub fn connections(mut self, k: usize) -> Self {
        self.connections = k;
        self
    }

    /// Server streaming instead of unary: every message is read until the final status.
    pub fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Each call's own deadline (enforced by the client, not sent as `grpc-timeout`); a call
    /// past it ends with `DEADLINE_EXCEEDED`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request message's bytes (default `ping`; the server echoes it).
    pub fn message(mut self, text: &str) -> Self {
        self.message = Some(text.to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(tool());
        cmd.arg("call")
            .arg("--target")
            .arg(format!("127.0.0.1:{}", self.target_port))
            .arg("--path")
            .arg(&self.path)
            .arg("--count")
            .arg(self.count.to_string())
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--connections")
            .arg(self.connections.to_string())
            .arg("--timeout-ms")
            .arg(self.timeout.as_millis().to_string());
        for (name, value) in &self.headers {
            cmd.arg("--header").arg(format!("{name}={value}"));
        }
        if self.streaming {
            cmd.arg("--streaming");
        }
        if let Some(message) = &self.message {
            cmd.arg("--message").arg(message);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the calls in the background; [`RunningCalls::wait`] collects them.
    pub fn spawn(&self) -> RunningCalls {
        let child = self
            .command()
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start grpc-tool call: {e}"));
        RunningCalls {
            child: Some(child),
            expected: self.count,
        }
    }

    /// Makes the calls and returns their outcomes in call order.
    pub fn run(&self) -> Vec<GrpcOutcome> {
        self.spawn().wait()
    }

    /// Makes the one call and returns its outcome.
    #[track_caller]
    pub fn run_one(&self) -> GrpcOutcome {
        assert_eq!(
            self.count, 1,
            "run_one makes one call; use run for {}",
            self.count
        );
        self.run().remove(0)
    }
}

/// Calls started by [`GrpcCall::spawn`]; killed if dropped before [`RunningCalls::wait`].
#[derive(Debug)]
pub struct RunningCalls {
    child: Option<Child>,
    expected: usize,
}

impl RunningCalls {
    /// Waits for every call to end and returns the outcomes in call order.
    pub fn wait(mut self) -> Vec<GrpcOutcome> {
        let child = self.child.take().expect("not yet waited for");
        let output = child.wait_with_output().expect("wait for grpc-tool call");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "grpc-tool call failed ({}):\n{stderr}\n{stdout}",
            output.status
        );
        let mut outcomes: Vec<GrpcOutcome> = stdout.lines().map(GrpcOutcome::from_json).collect();
        outcomes.sort_by_key(|o| o.index);
        assert_eq!(
            outcomes.len(),
            self.expected,
            "grpc-tool call printed {} outcomes for {} calls:\n{stderr}\n{stdout}",
            outcomes.len(),
            self.expected
        );
        outcomes
    }
}

impl Drop for RunningCalls {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One unary call of `path` to 127.0.0.1:`target_port` with these metadata headers.
pub fn grpc_call(target_port: u16, path: &str, headers: &[(&str, &str)]) -> GrpcOutcome {
    headers
        .iter()
        .fold(GrpcCall::new(target_port, path), |call, (n, v)| {
            call.header(n, v)
        })
        .run_one()
}
