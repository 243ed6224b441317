//! `grpc-tool call`: tonic's own client (unary or server streaming) over a raw bytes codec,
//! so every answer is judged as a real gRPC client judges it, plus a record of what came on
//! the wire (HTTP status, headers, trailers) for the checks tonic does not make.
//!
//! One JSON line per call on stdout, in the order calls end:
//!
//! ```text
//! {"index":0,"code":14,"message":"...","detail":null,"messages":0,"http_status":200,
//!  "headers":{"content-type":["application/grpc"],...},"trailers":null,"elapsed_ms":3.1}
//! ```
//!
//! - `code`, `message`: the status tonic gives the application (0 and "" for success); a
//!   malformed answer shows up here (no `grpc-status` on a 200: `Unknown` with "protocol
//!   error: missing grpc-status trailer ..."; a reset stream: `Internal` or `Unknown`). A call
//!   that did not end within `--timeout-ms` is code 4 with a message saying so.
//! - `detail`: the error's source chain, when tonic's status came from a transport error.
//! - `messages`: messages decoded; `http_status`, `headers`: the response head as received
//!   (`null` when none came); `trailers`: the trailers as received (`null` when none came, as
//!   in a trailers-only answer); header values are lists, in the order received.
//! - `elapsed_ms`: from sending to the final status.

use bytes::{Buf, BufMut, Bytes};
use http::HeaderMap;
use http::uri::PathAndQuery;
use http_body::{Frame, SizeHint};
use serde_json::{Map, Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// What `grpc-tool call` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// `HOST:PORT`, reached in HTTP/2 cleartext.
    pub(crate) target: String,
    /// The method path, `/package.Service/Method`.
    pub(crate) path: PathAndQuery,
    /// Request metadata.
    pub(crate) headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Calls to make.
    pub(crate) count: usize,
    /// Calls in flight at once, at most.
    pub(crate) concurrency: usize,
    /// HTTP/2 connections the calls are spread over (call `i` uses connection `i % n`).
    pub(crate) connections: usize,
    /// Server streaming instead of unary.
    pub(crate) streaming: bool,
    /// Each call's own deadline (not sent as `grpc-timeout`).
    pub(crate) timeout: Duration,
    /// The request message's bytes.
    pub(crate) message: Bytes,
}

/// Makes the calls, printing a line as each ends.
pub(crate) async fn run(options: Options) -> Result<(), String> {
    let endpoint = Endpoint::from_shared(format!("http://{}", options.target))
        .map_err(|e| format!("--target {}: {e}", options.target))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    // Lazily connected: a target that refuses connections is each call's failure, reported
    // like any other, not the tool's.
    let channels: Vec<Channel> = (0..options.connections.max(1))
        .map(|_| endpoint.connect_lazy())
        .collect();
    let options = Arc::new(options);
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let mut calls = JoinSet::new();
    for index in 0..options.count {
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .map_err(|e| format!("semaphore: {e}"))?;
        let Some(channel) = channels.get(index % channels.len()).cloned() else {
            return Err("no connection".to_owned());
        };
        let options = Arc::clone(&options);
        calls.spawn(async move {
            let line = one_call(index, channel, &options).await;
            println!("{line}");
            drop(permit);
        });
    }
    while let Some(joined) = calls.join_next().await {
        joined.map_err(|e| format!("a call's task failed: {e}"))?;
    }
    Ok(())
}

/// What the wire showed of one call.
#[derive(Debug, Default)]
struct Record {
    http_status: Option<u16>,
    headers: Option<HeaderMap>,
    trailers: Option<HeaderMap>,
}

async fn one_call(index: usize, channel: Channel, options: &Options) -> Value {
    let record = Arc::new(Mutex::new(Record::default()));
    let messages = Arc::new(AtomicUsize::new(0));
    let mut grpc = tonic::client::Grpc::new(Recording {
        channel,
        record: Arc::clone(&record),
    });
    let codec = RawCodec {
        decoded: Arc::clone(&messages),
    };
    let mut request = tonic::Request::new(options.message.clone());
    for (key, value) in &options.headers {
        request.metadata_mut().append(key.clone(), value.clone());
    }
    let path = options.path.clone();
    #[allow(
        clippy::disallowed_methods,
        reason = "a test tool measuring real calls, not policy code"
    )]
    let started = Instant::now();
    let call = async {
        grpc.ready()
            .await
            .map_err(|e| Status::from_error(Box::new(e)))?;
        if options.streaming {
            let mut stream = grpc
                .server_streaming(request, path, codec)
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        } else {
            grpc.unary(request, path, codec).await.map(drop)
        }
    };
    let status = match tokio::time::timeout(options.timeout, call).await {
        Ok(Ok(())) => Status::new(Code::Ok, ""),
        Ok(Err(status)) => status,
        Err(_) => Status::deadline_exceeded(format!(
            "grpc-tool: no final status within {} ms",
            options.timeout.as_millis()
        )),
    };
    let elapsed = started.elapsed();
    let detail = std::error::Error::source(&status).map(|source| {
        let mut chain = source.to_string();
        let mut next = source.source();
        while let Some(error) = next {
            chain.push_str(": ");
            chain.push_str(&error.to_string());
            next = error.source();
        }
        chain
    });
    let record = record.lock().map(|r| {
        (
            r.http_status,
            r.headers.as_ref().map(header_json),
            r.trailers.as_ref().map(header_json),
        )
    });
    let (http_status, headers, trailers) = record.unwrap_or_default();
    json!({
        "index": index,
        "code": status.code() as i32,
        "message": status.message(),
        "detail": detail,
        "messages": messages.load(Ordering::SeqCst),
        "http_status": http_status,
        "headers": headers,
        "trailers": trailers,
        "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
    })
}

/// Header names to their values (lists, in the order received; non-UTF-8 bytes replaced).
fn header_json(map: &HeaderMap) -> Value {
    let mut object = Map::new();
    for name in map.keys() {
        let values: Vec<Value> = map
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        object.insert(name.as_str().to_owned(), Value::Array(values));
    }
    Value::Object(object)
}

/// The channel, noting each response's head and trailers as they pass.
#[derive(Debug, Clone)]
struct Recording {
    channel: Channel,
    record: Arc<Mutex<Record>>,
}

type Answer = Result<http::Response<Body>, tonic::transport::Error>;

impl tower_service::Service<http::Request<Body>> for Recording {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        tower_service::Service::poll_ready(&mut self.channel, cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let answer = tower_service::Service::call(&mut self.channel, request);
        let record = Arc::clone(&self.record);
        Box::pin(async move {
            let response = answer.await?;
            if let Ok(mut r) = record.lock() {
                r.http_status = Some(response.status().as_u16());
                r.headers = Some(response.headers().clone());
            }
            Ok(response.map(|inner| Body::new(RecordingBody { inner, record })))
        })
    }
}

/// A response body that notes its trailers.
#[derive(Debug)]
struct RecordingBody {
    inner: Body,
    record: Arc<Mutex<Record>>,
}

impl http_body::Body for RecordingBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
            && let Ok(mut r) = this.record.lock()
        {
            r.trailers = Some(trailers.clone());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Messages as raw bytes (no Protocol Buffers): what is sent is the bytes given, what comes
/// back is counted.
#[derive(Debug, Clone)]
struct RawCodec {
    decoded: Arc<AtomicUsize>,
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        self.clone()
    }

    fn decoder(&mut self) -> Self::Decoder {
        self.clone()
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        self.decoded.fetch_add(1, Ordering::SeqCst);
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
