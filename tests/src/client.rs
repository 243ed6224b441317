//! A small HTTP/1.1 client: one connection per request, everything that came back kept; or a
//! [`Connection`] kept open for many requests, for tests that send thousands.
//!
//! Written by hand rather than taken from a crate so that tests can send exactly the bytes
//! they mean (repeated headers, odd casing, hostile values) and see exactly what Envoy sent.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Duration,
}

/// `GET path`.
pub fn get(path: &str) -> Request {
    Request::new("GET", path)
}

impl Request {
    /// A request with no headers (a `host` header is added when sent, unless one is given).
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(15),
        }
    }

    /// Adds a header (repeat the call to repeat the header).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body (a `content-length` is sent with it).
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// How long to wait for the whole response.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request to `127.0.0.1:port`; panics (failing the test) if no response comes.
    pub fn send(&self, port: u16) -> Response {
        self.try_send(port)
            .unwrap_or_else(|e| panic!("{} {} on port {port}: {e}", self.method, self.path))
    }

    /// Sends the request to `127.0.0.1:port`.
    pub fn try_send(&self, port: u16) -> std::io::Result<Response> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        stream.write_all(&self.encode(true))?;
        read_response(&mut BufReader::new(stream))
    }

    /// The request's bytes; `close` asks the server to close the connection after it.
    fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            head.push_str("host: gateway.test\r\n");
        }
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !self.body.is_empty() {
            head.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Runs `send` on `n` threads released at the same instant (each thread its own connection),
/// and returns what each got back, in thread order.
pub fn all_at_once<T: Send>(n: usize, send: impl Fn() -> T + Sync) -> Vec<T> {
    let start = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    send()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("a client thread panicked"))
            })
            .collect()
    })
}

/// Sends one request per id in `ids`, each carrying `header: client-<id>`, over four
/// kept-alive connections: a flood of distinct rate-limit keys. Fails on any answer but 200.
pub fn send_distinct_keys(port: u16, header: &str, ids: std::ops::Range<u32>) {
    let chunk = ids.len().div_ceil(4) as u32;
    std::thread::scope(|scope| {
        for t in 0..4u32 {
            let from = ids.start + t * chunk;
            let to = (from + chunk).min(ids.end);
            scope.spawn(move || {
                let mut connection = Connection::open(port).expect("connect");
                for id in from..to {
                    let request = get("/").header(header, &format!("client-{id}"));
                    let response = connection.send(&request).expect("response");
                    assert_eq!(response.status, 200, "{}", response.text());
                }
            });
        }
    });
}

/// A connection kept open (HTTP/1.1 keep-alive) for one request after another.
#[derive(Debug)]
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to `127.0.0.1:port`.
    pub fn open(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends `request` and reads its response.
    pub fn send(&mut self, request: &Request) -> std::io::Result<Response> {
        self.reader.get_mut().write_all(&request.encode(false))?;
        read_response(&mut self.reader)
    }
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header pairs in arrival order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

/// Reads one HTTP/1.1 response (status line, headers, body by length, chunks or EOF).
pub fn read_response(reader: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
    let headers = read_headers(reader)?;
    let bodiless = status == 204 || status == 304;
    let body = read_body(reader, &headers, !bodiless)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Reads a message body framed by `transfer-encoding: chunked` or `content-length`; without
/// either, to the end of the connection if `to_eof`, else none (a request has no body then).
pub fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    to_eof: bool,
) -> std::io::Result<Vec<u8>> {
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return read_chunked(reader);
    }
    let mut body = Vec::new();
    if let Some(length) = find("content-length") {
        let length: usize = length.trim().parse().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "bad content-length")
        })?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if to_eof {
        reader.read_to_end(&mut body)?;
    }
    Ok(body)
}

/// Reads header lines up to the blank line; names are lower-cased.
pub fn read_headers(reader: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed inside the headers",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok(headers);
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
}

/// Reads a chunked body and its trailers.
pub fn read_chunked(reader: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size_text, 16).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad chunk size {size_line:?}"),
            )
        })?;
        if size == 0 {
            read_headers(reader)?;
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
    }
}
