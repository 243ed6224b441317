//! A gRPC upstream and a gRPC client for the integration tests, so that what Envoy and the
//! filters do to gRPC traffic is seen from both ends of a real gRPC exchange.
//!
//! ```text
//! grpc-tool serve [--listen 127.0.0.1:0]
//! grpc-tool call --target HOST:PORT --path /pkg.Service/Method [--header K=V]...
//!                [--count N] [--concurrency C] [--connections K] [--streaming]
//!                [--timeout-ms T] [--message TEXT]
//! ```
//!
//! **serve** listens for HTTP/2 cleartext with prior knowledge (what Envoy sends to an
//! `http2_protocol_options` cluster), prints exactly one line, `listening on ADDR:PORT`, and
//! answers any path as the request's `x-grpc-reply` header says ([`reply`] lists the shapes:
//! `ok`, `trailers:<code>`, `trailers-only:<code>`, `stream:<n>:<code>`,
//! `fail-first:<k>:<code>`, `no-status`, `end-without-trailers`, `reset`,
//! `reset-before-headers`, `http:<status>`, with options `delay-ms=<n>`,
//! `headers-delay-ms=<n>` and `message=<text>`).
//! It logs one line per request on stderr, `request <n>: path=... x-grpc-reply=...
//! x-grpc-id=...`, before answering: counting those lines counts the requests.
//!
//! **call** makes `N` calls (default 1) with tonic's client, at most `C` at once (default 1),
//! spread over `K` HTTP/2 connections (default 1), and prints one JSON line per call
//! ([`client`] describes the fields). Each call's deadline is `T` ms (default 10000). The
//! request message is `TEXT`'s bytes (default `ping`). The exit status is 0 whatever the
//! calls' codes; 2 for bad arguments.

mod client;
mod reply;
mod server;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

const USAGE: &str = "usage: grpc-tool serve [--listen 127.0.0.1:0]\n       \
     grpc-tool call --target HOST:PORT --path /pkg.Service/Method [--header K=V]... \
     [--count N] [--concurrency C] [--connections K] [--streaming] [--timeout-ms T] \
     [--message TEXT]";

#[derive(Debug)]
enum Command {
    Serve(SocketAddr),
    Call(client::Options),
}

fn number<T: FromStr>(flag: &str, text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e| format!("{flag} {text}: {e}"))
}

fn command(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    match args.next().as_deref() {
        Some("serve") => {
            let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
            while let Some(arg) = args.next() {
                match arg.as_str() {
                    "--listen" => {
                        let text = args.next().ok_or("--listen needs a value")?;
                        listen = number("--listen", &text)?;
                    }
                    other => return Err(format!("serve: unknown argument {other}")),
                }
            }
            Ok(Command::Serve(listen))
        }
        Some("call") => call_options(args).map(Command::Call),
        Some(other) => Err(format!("unknown command {other}")),
        None => Err("a command is needed".to_owned()),
    }
}

fn call_options(mut args: impl Iterator<Item = String>) -> Result<client::Options, String> {
    let mut target = None;
    let mut path = None;
    let mut options = client::Options {
        target: String::new(),
        path: http::uri::PathAndQuery::from_static("/"),
        headers: Vec::new(),
        count: 1,
        concurrency: 1,
        connections: 1,
        streaming: false,
        timeout: Duration::from_secs(10),
        message: bytes::Bytes::from_static(b"ping"),
    };
    while let Some(arg) = args.next() {
        if arg == "--streaming" {
            options.streaming = true;
            continue;
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--target" => target = Some(value),
            "--path" => path = Some(value),
            "--header" => {
                let (name, text) = value
                    .split_once('=')
                    .ok_or(format!("--header {value}: expected NAME=VALUE"))?;
                let key = tonic::metadata::AsciiMetadataKey::from_str(name)
                    .map_err(|e| format!("--header {value}: name: {e}"))?;
                let text = tonic::metadata::AsciiMetadataValue::from_str(text)
                    .map_err(|e| format!("--header {value}: value: {e}"))?;
                options.headers.push((key, text));
            }
            "--count" => options.count = number(&arg, &value)?,
            "--concurrency" => options.concurrency = number(&arg, &value)?,
            "--connections" => options.connections = number(&arg, &value)?,
            "--timeout-ms" => options.timeout = Duration::from_millis(number(&arg, &value)?),
            "--message" => options.message = bytes::Bytes::from(value.into_bytes()),
            other => return Err(format!("call: unknown argument {other}")),
        }
    }
    options.target = target.ok_or("--target HOST:PORT is required")?;
    let path = path.ok_or("--path /pkg.Service/Method is required")?;
    if !path.starts_with('/') {
        return Err(format!("--path {path}: must start with /"));
    }
    options.path = number("--path", &path)?;
    if options.concurrency == 0 || options.connections == 0 {
        return Err("--concurrency and --connections must be at least 1".to_owned());
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let command = match command(args.into_iter()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("grpc-tool: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Serve(listen) => server::serve(listen).await,
        Command::Call(options) => client::run(options).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc-tool: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Command, String> {
        command(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn serve_flags() {
        let Command::Serve(listen) = parse(&["serve"]).unwrap() else {
            panic!("not serve")
        };
        assert_eq!(listen.to_string(), "127.0.0.1:0");
        let Command::Serve(listen) = parse(&["serve", "--listen", "127.0.0.1:7000"]).unwrap()
        else {
            panic!("not serve")
        };
        assert_eq!(listen.port(), 7000);
        assert!(parse(&["serve", "--port", "1"]).is_err());
    }

    #[test]
    fn call_flags() {
        let Command::Call(o) =
            parse(&["call", "--target", "127.0.0.1:1", "--path", "/a.B/C"]).unwrap()
        else {
            panic!("not call")
        };
        assert_eq!((o.count, o.concurrency, o.connections), (1, 1, 1));
        assert!(!o.streaming);
        assert_eq!(o.timeout, Duration::from_secs(10));
        assert_eq!(o.path.as_str(), "/a.B/C");

        let Command::Call(o) = parse(&[
            "call",
            "--target",
            "127.0.0.1:1",
            "--path",
            "/a.B/C",
            "--header",
            "x-grpc-reply=trailers:14,delay-ms=30",
            "--header",
            "authorization=Bearer a.b.c",
            "--count",
            "50",
            "--concurrency",
            "10",
            "--connections",
            "2",
            "--streaming",
            "--timeout-ms",
            "500",
            "--message",
            "hello",
        ])
        .unwrap() else {
            panic!("not call")
        };
        assert_eq!((o.count, o.concurrency, o.connections), (50, 10, 2));
        assert!(o.streaming);
        assert_eq!(o.timeout, Duration::from_millis(500));
        assert_eq!(o.headers.len(), 2);
        assert_eq!(o.headers[0].1, "trailers:14,delay-ms=30");
        assert_eq!(&o.message[..], b"hello");

        for bad in [
            &["call", "--path", "/a"][..],
            &["call", "--target", "h:1"],
            &["call", "--target", "h:1", "--path", "a"],
            &[
                "call", "--target", "h:1", "--path", "/a", "--header", "novalue",
            ],
            &[
                "call",
                "--target",
                "h:1",
                "--path",
                "/a",
                "--concurrency",
                "0",
            ],
            &["call", "--target", "h:1", "--path", "/a", "--count"],
            &["call", "--target", "h:1", "--path", "/a", "--bogus", "1"],
            &["fly"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
