//! `grpc-tool serve`: HTTP/2 cleartext (prior knowledge) straight on the `h2` crate, so each
//! answer's frames are exactly what `x-grpc-reply` asks for (see [`crate::reply`]), including
//! the malformed ones a gRPC server library would never send.
//!
//! Every request is counted and logged on stderr as one line, written before the answer:
//! `request <n>: path=<path> x-grpc-reply=<value> x-grpc-id=<value>` (`-` for a missing
//! header). The harness counts these lines; the same number is in the answer's
//! `x-grpc-tool-request` header.

use crate::reply::{Reply, Shape};
use bytes::{Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderMap, HeaderValue, Request, Response};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// Request bodies beyond this are cut (test messages are a few bytes).
const MAX_BODY: usize = 1 << 20;

/// What all connections share.
#[derive(Debug, Default)]
struct State {
    /// Requests received so far.
    requests: AtomicU64,
    /// Per `x-grpc-id`, requests seen with a `fail-first` reply.
    attempts: Mutex<HashMap<String, u64>>,
}

/// Listens on `listen`, prints `listening on ADDR:PORT` and serves until killed.
pub(crate) async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    // The one line the harness waits for; flushed, since stdout is a pipe there.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {address}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    let state = Arc::new(State::default());
    loop {
        let (socket, peer) = listener
            .accept()
            .await
            .map_err(|e| format!("accept: {e}"))?;
        let _ = socket.set_nodelay(true);
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            if let Err(e) = connection(socket, state).await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

/// One client connection: each stream is answered in its own task while this one drives the
/// connection.
async fn connection(socket: TcpStream, state: Arc<State>) -> Result<(), h2::Error> {
    let mut connection = h2::server::handshake(socket).await?;
    while let Some(stream) = connection.accept().await {
        let (request, respond) = stream?;
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let path = request.uri().path().to_owned();
            if let Err(e) = answer(request, respond, &state).await {
                eprintln!("answering {path}: {e}");
            }
        });
    }
    Ok(())
}

fn header<'a>(request: &'a Request<RecvStream>, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn answer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    state: &State,
) -> Result<(), h2::Error> {
    let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let reply_text = header(&request, "x-grpc-reply").unwrap_or("ok").to_owned();
    let id = header(&request, "x-grpc-id").unwrap_or_default().to_owned();
    // One write per line, so that a reader never sees half of it.
    let line = format!(
        "request {n}: path={} x-grpc-reply={} x-grpc-id={}\n",
        request.uri().path(),
        header(&request, "x-grpc-reply").unwrap_or("-"),
        header(&request, "x-grpc-id").unwrap_or("-"),
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
    let payload = first_message(&read_body(request.into_body()).await?);
    let shape_text = reply_text.split(',').next().unwrap_or_default().to_owned();

    let reply = match Reply::parse(&reply_text) {
        Ok(reply) => reply,
        Err(e) => {
            let headers = grpc_headers(n, Some((3, &format!("bad x-grpc-reply: {e}"))));
            respond.send_response(headers, true)?;
            return Ok(());
        }
    };
    let shape = match &reply.shape {
        Shape::FailFirst { k, code } => {
            let mut attempts = state.attempts.lock().await;
            let seen = attempts.entry(id).or_insert(0);
            *seen += 1;
            if *seen <= *k {
                Shape::TrailersOnly { code: *code }
            } else {
                Shape::Trailers {
                    messages: 1,
                    code: 0,
                }
            }
        }
        other => other.clone(),
    };
    let delay = || tokio::time::sleep(reply.delay);
    tokio::time::sleep(reply.headers_delay).await;

    match shape {
        Shape::Trailers { messages, code } => {
            let mut send = respond.send_response(grpc_headers(n, None), false)?;
            for _ in 0..messages {
                send.send_data(framed(&payload), false)?;
            }
            delay().await;
            let message = reply.grpc_message(code, &shape_text);
            send.send_trailers(status_map(code, message.as_deref()))?;
        }
        Shape::TrailersOnly { code } => {
            delay().await;
            let message = reply.grpc_message(code, &shape_text);
            respond.send_response(
                grpc_headers(n, Some((code, message.as_deref().unwrap_or_default()))),
                true,
            )?;
        }
        Shape::NoStatus => {
            let mut send = respond.send_response(grpc_headers(n, None), false)?;
            send.send_data(framed(&payload), false)?;
            delay().await;
            let mut trailers = HeaderMap::new();
            trailers.insert("x-grpc-tool", HeaderValue::from_static("no-status"));
            send.send_trailers(trailers)?;
        }
        Shape::EndWithoutTrailers => {
            let mut send = respond.send_response(grpc_headers(n, None), false)?;
            delay().await;
            send.send_data(framed(&payload), true)?;
        }
        Shape::Reset => {
            let mut send = respond.send_response(grpc_headers(n, None), false)?;
            delay().await;
            send.send_reset(Reason::INTERNAL_ERROR);
        }
        Shape::ResetBeforeHeaders => {
            delay().await;
            respond.send_reset(Reason::INTERNAL_ERROR);
        }
        Shape::Http { status } => {
            delay().await;
            let mut response = Response::new(());
            if let Ok(status) = http::StatusCode::from_u16(status) {
                *response.status_mut() = status;
            }
            let headers = response.headers_mut();
            headers.insert("content-type", HeaderValue::from_static("text/plain"));
            headers.insert("x-grpc-tool-request", HeaderValue::from(n));
            // No body: a client reads a non-gRPC answer's status from the HTTP status alone.
            respond.send_response(response, true)?;
        }
        Shape::FailFirst { .. } => {}
    }
    Ok(())
}

/// The request body, up to [`MAX_BODY`], giving the flow-control window back as it is read.
async fn read_body(mut body: RecvStream) -> Result<Bytes, h2::Error> {
    let mut all = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if all.len() < MAX_BODY {
            all.extend_from_slice(&chunk);
        }
    }
    Ok(all.freeze())
}

/// The first gRPC message of a body (5-byte prefix: compressed flag, big-endian length), or
/// nothing when the body holds none.
fn first_message(body: &[u8]) -> Bytes {
    let length = body
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .and_then(|l| usize::try_from(l).ok());
    length
        .and_then(|l| body.get(5..5 + l))
        .map(Bytes::copy_from_slice)
        .unwrap_or_default()
}

/// `payload` as one uncompressed gRPC message.
fn framed(payload: &[u8]) -> Bytes {
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(payload);
    frame.freeze()
}

/// `:status 200`, `content-type: application/grpc`, the request number, and for a
/// trailers-only answer its status.
fn grpc_headers(n: u64, status: Option<(u32, &str)>) -> Response<()> {
    let mut response = Response::new(());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("x-grpc-tool-request", HeaderValue::from(n));
    if let Some((code, message)) = status {
        let message = (!message.is_empty()).then_some(message);
        headers.extend(status_map(code, message));
    }
    response
}

/// `grpc-status` and, when given, `grpc-message` (percent-encoded as the gRPC spec says).
fn status_map(code: u32, message: Option<&str>) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert("grpc-status", HeaderValue::from(code));
    if let Some(message) = message
        && let Ok(value) = HeaderValue::from_str(&percent_encode(message))
    {
        map.insert("grpc-message", value);
    }
    map
}

/// The gRPC spec's percent-encoding of `grpc-message`: bytes outside 0x20-0x7E, and `%`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_read_back() {
        let frame = framed(b"ping");
        assert_eq!(&frame[..], b"\0\0\0\0\x04ping");
        assert_eq!(&first_message(&frame)[..], b"ping");
        assert!(first_message(b"\0\0\0\0\x09ping").is_empty());
        assert!(first_message(b"").is_empty());
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("slow 100% é"), "slow 100%25 %C3%A9");
    }
}
