//! What the server answers, as the request header `x-grpc-reply` says.
//!
//! The value is a shape, optionally followed by comma-separated options:
//!
//! | Shape | Answer |
//! |---|---|
//! | `ok` (also the default, without the header) | headers, the request's message echoed, trailers `grpc-status: 0` |
//! | `trailers:<code>` | headers, no message, trailers `grpc-status: <code>` and `grpc-message` |
//! | `trailers-only:<code>` | one HEADERS frame with END_STREAM: `:status 200`, `content-type`, `grpc-status`, `grpc-message` |
//! | `stream:<n>:<code>` | headers, the message echoed `n` times, trailers with `<code>` |
//! | `fail-first:<k>:<code>` | `trailers-only:<code>` to the first `k` requests carrying the same `x-grpc-id` (requests without one share the empty id), `ok` after |
//! | `no-status` | headers, the message, trailers without `grpc-status` (only `x-grpc-tool: no-status`) |
//! | `end-without-trailers` | headers, then the message in a DATA frame with END_STREAM: no trailers at all |
//! | `reset` | headers, then RST_STREAM(INTERNAL_ERROR) |
//! | `reset-before-headers` | RST_STREAM(INTERNAL_ERROR) before any headers |
//! | `http:<status>` | not gRPC: one HEADERS frame with END_STREAM, `:status <status>`, `content-type: text/plain` |
//!
//! Options: `delay-ms=<n>` waits `n` ms before the end of the answer (before the trailers, the
//! trailers-only headers, the ending DATA frame, the reset, or the plain HTTP answer), for
//! slow-call tests; `headers-delay-ms=<n>` waits `n` ms before anything is sent (response
//! headers included), for timeouts that stop at the response headers; `message=<text>` sets
//! the `grpc-message` (default `grpc-tool <shape>` for a non-zero code, none for 0).
//!
//! Example: `x-grpc-reply: trailers:14,delay-ms=300`.

use std::time::Duration;

/// The answer's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `n` messages then trailers with `code` (`ok` is 1 message and code 0; `trailers:<code>`
    /// is no message).
    Trailers { messages: u32, code: u32 },
    /// One HEADERS frame with END_STREAM carrying `code`.
    TrailersOnly { code: u32 },
    /// `TrailersOnly { code }` for the first `k` requests of an `x-grpc-id`, then `ok`.
    FailFirst { k: u64, code: u32 },
    /// Headers, a message, trailers without `grpc-status`.
    NoStatus,
    /// Headers, a message with END_STREAM, no trailers.
    EndWithoutTrailers,
    /// Headers, then RST_STREAM(INTERNAL_ERROR).
    Reset,
    /// RST_STREAM(INTERNAL_ERROR) before any headers.
    ResetBeforeHeaders,
    /// A plain HTTP answer with this status.
    Http { status: u16 },
}

/// A parsed `x-grpc-reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) shape: Shape,
    /// Waited before the answer ends.
    pub(crate) delay: Duration,
    /// Waited before anything is sent.
    pub(crate) headers_delay: Duration,
    /// `grpc-message`; `None`: the default.
    pub(crate) message: Option<String>,
}

/// Longest `delay-ms` accepted: tests are short, and a typo should not hang one.
const MAX_DELAY_MS: u64 = 60_000;
/// Most messages of a `stream:<n>` answer.
const MAX_MESSAGES: u32 = 10_000;

impl Reply {
    /// Reads a header value; errors say what is wrong, for the `INVALID_ARGUMENT` answer.
    pub(crate) fn parse(value: &str) -> Result<Reply, String> {
        let mut items = value.split(',').map(str::trim);
        let shape_text = items.next().unwrap_or_default();
        let shape = shape(shape_text)?;
        let mut reply = Reply {
            shape,
            delay: Duration::ZERO,
            headers_delay: Duration::ZERO,
            message: None,
        };
        for item in items {
            match item.split_once('=') {
                Some(("delay-ms", ms)) => reply.delay = delay(ms, "delay-ms")?,
                Some(("headers-delay-ms", ms)) => {
                    reply.headers_delay = delay(ms, "headers-delay-ms")?;
                }
                Some(("message", text)) => reply.message = Some(text.to_owned()),
                _ => {
                    return Err(format!(
                        "unknown option {item:?} (delay-ms=N, headers-delay-ms=N, message=TEXT)"
                    ));
                }
            }
        }
        Ok(reply)
    }

    /// The `grpc-message` to send with `code`, if any.
    pub(crate) fn grpc_message(&self, code: u32, shape_text: &str) -> Option<String> {
        match &self.message {
            Some(m) => Some(m.clone()),
            None if code == 0 => None,
            None => Some(format!("grpc-tool {shape_text}")),
        }
    }
}

fn shape(text: &str) -> Result<Shape, String> {
    let mut parts = text.split(':');
    let name = parts.next().unwrap_or_default();
    let args: Vec<&str> = parts.collect();
    let shape = match (name, args.as_slice()) {
        ("ok", []) => Shape::Trailers {
            messages: 1,
            code: 0,
        },
        ("trailers", [code]) => Shape::Trailers {
            messages: 0,
            code: grpc_code(code)?,
        },
        ("trailers-only", [code]) => Shape::TrailersOnly {
            code: grpc_code(code)?,
        },
        ("stream", [n, code]) => {
            let messages = number(n, "stream:<n>")?;
            if messages > MAX_MESSAGES {
                return Err(format!(
                    "stream:{messages}: at most {MAX_MESSAGES} messages"
                ));
            }
            Shape::Trailers {
                messages,
                code: grpc_code(code)?,
            }
        }
        ("fail-first", [k, code]) => Shape::FailFirst {
            k: number(k, "fail-first:<k>")?,
            code: grpc_code(code)?,
        },
        ("no-status", []) => Shape::NoStatus,
        ("end-without-trailers", []) => Shape::EndWithoutTrailers,
        ("reset", []) => Shape::Reset,
        ("reset-before-headers", []) => Shape::ResetBeforeHeaders,
        ("http", [status]) => {
            let status: u16 = number(status, "http:<status>")?;
            if !(200..=599).contains(&status) {
                return Err(format!("http:{status}: a status from 200 to 599"));
            }
            Shape::Http { status }
        }
        _ => {
            return Err(format!(
                "unknown shape {text:?} (ok, trailers:C, trailers-only:C, stream:N:C, \
                 fail-first:K:C, no-status, end-without-trailers, reset, \
                 reset-before-headers, http:S)"
            ));
        }
    };
    Ok(shape)
}

fn delay(text: &str, what: &str) -> Result<Duration, String> {
    let ms: u64 = number(text, what)?;
    if ms > MAX_DELAY_MS {
        return Err(format!("{what}={ms}: at most {MAX_DELAY_MS}"));
    }
    Ok(Duration::from_millis(ms))
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| format!("{what}: {text:?}: {e}"))
}

/// A gRPC status code, 0 to 16 (anything else is no code a client knows).
fn grpc_code(text: &str) -> Result<u32, String> {
    let code: u32 = number(text, "code")?;
    if code > 16 {
        return Err(format!("code {code}: gRPC codes are 0 to 16"));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let parse = |v: &str| Reply::parse(v).unwrap();
        assert_eq!(
            parse("ok").shape,
            Shape::Trailers {
                messages: 1,
                code: 0
            }
        );
        assert_eq!(
            parse("trailers:14").shape,
            Shape::Trailers {
                messages: 0,
                code: 14
            }
        );
        assert_eq!(
            parse("trailers-only:8").shape,
            Shape::TrailersOnly { code: 8 }
        );
        assert_eq!(
            parse("stream:3:0").shape,
            Shape::Trailers {
                messages: 3,
                code: 0
            }
        );
        assert_eq!(
            parse("fail-first:2:14").shape,
            Shape::FailFirst { k: 2, code: 14 }
        );
        assert_eq!(parse("no-status").shape, Shape::NoStatus);
        assert_eq!(
            parse("end-without-trailers").shape,
            Shape::EndWithoutTrailers
        );
        assert_eq!(parse("reset").shape, Shape::Reset);
        assert_eq!(
            parse("reset-before-headers").shape,
            Shape::ResetBeforeHeaders
        );
        assert_eq!(parse("http:503").shape, Shape::Http { status: 503 });
    }

    #[test]
    fn options() {
        let r = Reply::parse("trailers:14, delay-ms=300,message=slow down,headers-delay-ms=50")
            .unwrap();
        assert_eq!(r.delay, Duration::from_millis(300));
        assert_eq!(r.headers_delay, Duration::from_millis(50));
        assert_eq!(r.message.as_deref(), Some("slow down"));
        assert_eq!(r.grpc_message(14, "x"), Some("slow down".to_owned()));
        let r = Reply::parse("trailers:14").unwrap();
        assert_eq!(r.delay, Duration::ZERO);
        assert_eq!(r.headers_delay, Duration::ZERO);
        assert_eq!(
            r.grpc_message(14, "trailers:14"),
            Some("grpc-tool trailers:14".to_owned())
        );
        assert_eq!(Reply::parse("ok").unwrap().grpc_message(0, "ok"), None);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        for (value, says) in [
            ("", "unknown shape"),
            ("okay", "unknown shape"),
            ("ok:1", "unknown shape"),
            ("trailers", "unknown shape"),
            ("trailers:17", "0 to 16"),
            ("trailers:-1", "code"),
            ("stream:x:0", "stream:<n>"),
            ("stream:10001:0", "at most"),
            ("http:99", "200 to 599"),
            ("ok,delay-ms=x", "delay-ms"),
            ("ok,delay-ms=60001", "at most"),
            ("ok,headers-delay-ms=60001", "at most"),
            ("ok,slow", "unknown option"),
        ] {
            let e = Reply::parse(value).unwrap_err();
            assert!(e.contains(says), "{value:?}: {e}");
        }
    }
}
