//! The server as a process, called through Envoy's gRPC protocol with the generated client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is how a test fails"
)]

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::UInt64Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tonic::transport::Channel;

/// Per user, 3 a minute; per client address, 2 per 10 s (named).
const LIMITS: &str = r#"
- namespace: test
  max_value: 3
  seconds: 60
  conditions: []
  variables: ["descriptors[0].user"]
- namespace: test
  name: per-ip
  max_value: 2
  seconds: 10
  conditions: []
  variables: ["descriptors[0].ip"]
"#;

fn write_limits(yaml: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "limits-{}-{}.yaml",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(limits: &str, redis: Option<u16>) -> Server {
        Self::start_with(limits, redis, &[])
    }

    fn start_with(limits: &str, redis: Option<u16>, args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rls-server"));
        cmd.args(["--listen", "127.0.0.1:0", "--limits"])
            .arg(write_limits(limits))
            .args(args);
        if let Some(port) = redis {
            cmd.arg("--redis").arg(format!("redis://127.0.0.1:{port}"));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.trim_end().parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Server { child, port }
    }

    async fn client(&self) -> RateLimitServiceClient<Channel> {
        RateLimitServiceClient::connect(format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(key, value)| Entry {
                key: (*key).to_owned(),
                value: (*value).to_owned(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors,
        hits_addend: 0,
    }
}

async fn call(
    client: &mut RateLimitServiceClient<Channel>,
    request: RateLimitRequest,
) -> RateLimitResponse {
    client
        .should_rate_limit(request)
        .await
        .unwrap()
        .into_inner()
}

fn code(status: &DescriptorStatus) -> Code {
    Code::try_from(status.code).unwrap()
}

fn overall(response: &RateLimitResponse) -> Code {
    Code::try_from(response.overall_code).unwrap()
}

#[tokio::test]
async fn a_limit_of_3_admits_3_then_says_over_limit_with_statuses() {
    let server = Server::start(LIMITS, None);
    let mut client = server.client().await;
    let alice = || request("test", vec![descriptor(&[("user", "alice")])]);
    for remaining in [2, 1, 0] {
        let response = call(&mut client, alice()).await;
        assert_eq!(overall(&response), Code::Ok);
        let [status] = response.statuses.as_slice() else {
            panic!("one status per descriptor: {response:?}")
        };
        assert_eq!(code(status), Code::Ok);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(limit.requests_per_unit, 3);
        assert_eq!(limit.unit, Unit::Minute as i32);
        assert_eq!(limit.name, "");
        assert_eq!(status.limit_remaining, remaining);
        let reset = status.duration_until_reset.unwrap();
        assert!((1..=60).contains(&reset.seconds), "{reset:?}");
    }
    let response = call(&mut client, alice()).await;
    assert_eq!(overall(&response), Code::OverLimit);
    let status = &response.statuses[0];
    assert_eq!(code(status), Code::OverLimit);
    assert_eq!(status.limit_remaining, 0);
    assert_eq!(status.current_limit.as_ref().unwrap().requests_per_unit, 3);
    assert!(status.duration_until_reset.unwrap().seconds <= 60);

    // Another user has a counter of their own.
    let response = call(
        &mut client,
        request("test", vec![descriptor(&[("user", "bob")])]),
    )
    .await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 2);
}

#[tokio::test]
async fn one_descriptor_over_makes_the_answer_over_limit_with_statuses_in_order() {
    let server = Server::start(LIMITS, None);
    let mut client = server.client().await;
    let both = || {
        request(
            "test",
            vec![
                descriptor(&[("user", "carol")]),
                descriptor(&[("ip", "192.0.2.1")]),
                descriptor(&[("path", "/free")]),
            ],
        )
    };
    for _ in 0..2 {
        assert_eq!(overall(&call(&mut client, both()).await), Code::Ok);
    }
    let response = call(&mut client, both()).await;
    assert_eq!(overall(&response), Code::OverLimit);
    let codes: Vec<Code> = response.statuses.iter().map(code).collect();
    assert_eq!(codes, [Code::Ok, Code::OverLimit, Code::Ok]);

    // The user's descriptor was charged although the address's was over: 3 of 3 used.
    assert_eq!(response.statuses[0].limit_remaining, 0);
    let ip = &response.statuses[1];
    let limit = ip.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.name.as_str(), limit.requests_per_unit, limit.unit),
        ("per-ip", 2, Unit::Unknown as i32),
        "a 10 s window is no Envoy unit"
    );
    assert_eq!(ip.limit_remaining, 0);
    assert!(ip.duration_until_reset.unwrap().seconds <= 10);
    // No limit applies to the path: OK, no limit.
    assert_eq!(response.statuses[2].current_limit, None);
}

#[tokio::test]
async fn hits_addend_from_the_request_or_the_descriptor() {
    let server = Server::start(LIMITS, None);
    let mut client = server.client().await;

    let mut r = request("test", vec![descriptor(&[("user", "dave")])]);
    r.hits_addend = 2;
    let response = call(&mut client, r.clone()).await;
    assert_eq!(response.statuses[0].limit_remaining, 1);
    // 2 more would be 4 of 3: refused, and nothing is charged.
    let response = call(&mut client, r).await;
    assert_eq!(overall(&response), Code::OverLimit);
    assert_eq!(response.statuses[0].limit_remaining, 1);

    // The descriptor's own hits_addend wins over the request's.
    let mut d = descriptor(&[("user", "erin")]);
    d.hits_addend = Some(UInt64Value { value: 3 });
    let mut r = request("test", vec![d]);
    r.hits_addend = 1;
    let response = call(&mut client, r).await;
    assert_eq!(overall(&response), Code::Ok);
    assert_eq!(response.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn an_unknown_domain_is_ok_with_no_limit() {
    let server = Server::start(LIMITS, None);
    let mut client = server.client().await;
    for _ in 0..5 {
        let response = call(
            &mut client,
            request("elsewhere", vec![descriptor(&[("user", "alice")])]),
        )
        .await;
        assert_eq!(overall(&response), Code::Ok);
        assert_eq!(code(&response.statuses[0]), Code::Ok);
        assert_eq!(response.statuses[0].current_limit, None);
    }
}

#[tokio::test]
async fn negative_hits_are_refused_before_anything_is_charged() {
    let server = Server::start(LIMITS, None);
    let mut client = server.client().await;
    let mut refund = descriptor(&[("user", "frank")]);
    refund.is_negative_hits = true;
    let status = client
        .should_rate_limit(request(
            "test",
            vec![descriptor(&[("user", "frank")]), refund],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let response = call(
        &mut client,
        request("test", vec![descriptor(&[("user", "frank")])]),
    )
    .await;
    assert_eq!(response.statuses[0].limit_remaining, 2);
}

#[tokio::test]
async fn delay_ms_makes_every_answer_late() {
    let server = Server::start_with(LIMITS, None, &["--delay-ms", "600"]);
    let mut client = server.client().await;
    let henry = || request("test", vec![descriptor(&[("user", "henry")])]);
    let early = tokio::time::timeout(Duration::from_millis(300), call(&mut client, henry())).await;
    assert!(early.is_err(), "answered within 300 ms: {early:?}");
    let late = tokio::time::timeout(Duration::from_secs(10), call(&mut client, henry())).await;
    assert_eq!(overall(&late.unwrap()), Code::Ok);
}

#[tokio::test]
async fn a_condition_that_is_no_boolean_fails_the_call_not_the_server() {
    let limits = format!(
        "{LIMITS}- namespace: test\n  max_value: 1\n  seconds: 60\n  \
         conditions: [\"descriptors[0].mood\"]\n  variables: []\n"
    );
    let server = Server::start(&limits, None);
    let mut client = server.client().await;
    let status = client
        .should_rate_limit(request("test", vec![descriptor(&[("mood", "sunny")])]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal);
    assert!(
        status.message().contains("`descriptors[0].mood`"),
        "{status:?}"
    );
    // Still serving.
    let response = call(
        &mut client,
        request("test", vec![descriptor(&[("user", "ivan")])]),
    )
    .await;
    assert_eq!(overall(&response), Code::Ok);
}

#[test]
fn a_bad_limits_file_names_the_problem() {
    let path = write_limits(
        "- namespace: test\n  max_value: 3\n  seconds: 60\n  conditions: [\"descriptors[0].user ==\"]\n  variables: []\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_rls-server"))
        .arg("--limits")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "rls-server: limits file {}: [0].conditions",
            path.display()
        )),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_rls-server"))
        .args(["--limits", "/nonexistent/limits.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot read the limits file"),
        "{output:?}"
    );
}

/// Debian's `redis-server` on a free port, without persistence; killed when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Redis {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin}: {e}; `make rls-tools` installs redis-server (Debian)")
            });
        let redis = Redis { child, port };
        for _ in 0..200 {
            if redis.ping() {
                return redis;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer PING on port {port}");
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn two_servers_on_one_redis_share_a_limit() {
    let redis = Redis::start();
    let first = Server::start(LIMITS, Some(redis.port));
    let second = Server::start(LIMITS, Some(redis.port));
    let mut clients = [first.client().await, second.client().await];
    let grace = || request("test", vec![descriptor(&[("user", "grace")])]);

    let mut remaining = Vec::new();
    for server in [0, 1, 0] {
        let response = call(&mut clients[server], grace()).await;
        assert_eq!(overall(&response), Code::Ok);
        remaining.push(response.statuses[0].limit_remaining);
    }
    assert_eq!(remaining, [2, 1, 0]);
    for server in [1, 0] {
        let response = call(&mut clients[server], grace()).await;
        assert_eq!(overall(&response), Code::OverLimit);
        let status = &response.statuses[0];
        assert_eq!(status.limit_remaining, 0);
        let reset = status.duration_until_reset.unwrap();
        assert!((1..=60).contains(&reset.seconds), "{reset:?}");
    }
}
