//! In-process upstream servers with programmable behaviour.
//!
//! An [`Upstream`] answers each request with the next [`Reply`] of its script (the last one
//! repeats; [`Upstream::set_script`] swaps it while running), and records every request it
//! received. Replies can echo the request, serve a
//! document (a JWKS, say), wait, hang, or reset the connection, which is how tests produce
//! real upstream failures for Envoy to see.

use crate::client::{read_body, read_headers};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// How to answer one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status with an empty body.
    Status(u16),
    /// 200 with a JSON body describing the request: `{"method", "path", "headers": {..}}`.
    Echo,
    /// Status, headers and body as given.
    Full {
        /// Status code.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
    /// 200 with this JSON document (e.g. a JWKS).
    Json(String),
    /// 200 with this content type and binary body (a Wasm module, say).
    Bytes(&'static str, Vec<u8>),
    /// Wait, then answer as the inner reply.
    Delay(Duration, Box<Reply>),
    /// Never answer; hold the connection until the upstream is dropped.
    Hang,
    /// Reset the connection (TCP RST) without answering.
    Reset,
}

/// A request the upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// When it had been read in full (the wall clock, which Envoy's filters read too).
    pub at: std::time::SystemTime,
}

impl Received {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

struct Shared {
    /// The script, and the index of the next reply in it.
    script: Mutex<(Vec<Reply>, usize)>,
    received: Mutex<Vec<Received>>,
    stopping: AtomicBool,
}

/// A running upstream server on 127.0.0.1; stopped when dropped.
pub struct Upstream {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("port", &self.port)
            .finish()
    }
}

impl Upstream {
    /// Starts a server answering with `script` in order; the last reply repeats.
    pub fn start(script: Vec<Reply>) -> Self {
        assert!(!script.is_empty(), "an upstream needs at least one reply");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind an upstream port");
        let port = listener.local_addr().expect("upstream address").port();
        let shared = Arc::new(Shared {
            script: Mutex::new((script, 0)),
            received: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        });
        let for_acceptor = shared.clone();
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if for_acceptor.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = for_acceptor.clone();
                thread::spawn(move || serve(stream, &shared));
            }
        });
        Self {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// A server that echoes every request.
    pub fn echo() -> Self {
        Self::start(vec![Reply::Echo])
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// From now on answers with `script` from its start (the last reply repeats): a server
    /// that gets fixed, or breaks, at a moment the test chooses. A request already being
    /// answered keeps its reply.
    pub fn set_script(&self, script: Vec<Reply>) {
        assert!(!script.is_empty(), "an upstream needs at least one reply");
        if let Ok(mut current) = self.shared.script.lock() {
            *current = (script, 0);
        }
    }

    /// How many requests arrived so far.
    pub fn count(&self) -> usize {
        self.shared.received.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut writer = writer;
    loop {
        let Some(request) = read_request(&mut reader) else {
            return;
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let reply = {
            let Ok(mut script) = shared.script.lock() else {
                return;
            };
            let (replies, next) = &mut *script;
            let reply = replies[(*next).min(replies.len() - 1)].clone();
            *next += 1;
            reply
        };
        if let Ok(mut received) = shared.received.lock() {
            received.push(request.clone());
        }
        if !answer(&reply, &request, &mut writer, shared) {
            return;
        }
    }
}

/// Answers one request; false when the connection must end.
fn answer(reply: &Reply, request: &Received, writer: &mut TcpStream, shared: &Shared) -> bool {
    match reply {
        Reply::Status(status) => write_response(writer, *status, &[], b""),
        Reply::Echo => {
            let headers: serde_json::Map<String, serde_json::Value> = request
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), serde_json::Value::String(v.clone())))
                .collect();
            let body = serde_json::json!({
                "method": request.method,
                "path": request.path,
                "headers": headers,
                "body": String::from_utf8_lossy(&request.body),
            });
            write_response(
                writer,
                200,
                &[("content-type".into(), "application/json".into())],
                body.to_string().as_bytes(),
            )
        }
        Reply::Full {
            status,
            headers,
            body,
        } => write_response(writer, *status, headers, body.as_bytes()),
        Reply::Json(body) => write_response(
            writer,
            200,
            &[("content-type".into(), "application/json".into())],
            body.as_bytes(),
        ),
        Reply::Bytes(content_type, body) => write_response(
            writer,
            200,
            &[("content-type".into(), (*content_type).into())],
            body,
        ),
        Reply::Delay(wait, inner) => {
            thread::sleep(*wait);
            answer(inner, request, writer, shared)
        }
        Reply::Hang => {
            while !shared.stopping.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(20));
            }
            false
        }
        Reply::Reset => {
            let socket = socket2::SockRef::from(&*writer);
            let _ = socket.set_linger(Some(Duration::ZERO));
            let _ = writer.shutdown(Shutdown::Both);
            false
        }
    }
}

fn write_response(
    writer: &mut TcpStream,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> bool {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    writer.write_all(head.as_bytes()).is_ok() && writer.write_all(body).is_ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Received> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let headers = read_headers(reader).ok()?;
    let body = read_body(reader, &headers, false).ok()?;
    Some(Received {
        method,
        path,
        headers,
        body,
        at: std::time::SystemTime::now(),
    })
}
