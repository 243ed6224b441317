//! What parsing a typical claims set costs natively: run with
//! `cargo test --release -p jwt-auth --test claims_parse_cost -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    clippy::disallowed_methods,
    reason = "a timing test: it reads the clock, and a panic is how it fails"
)]

use std::hint::black_box;
use std::time::Instant;

/// About 10 claims in about 300 bytes, as an identity provider issues them.
const CLAIMS: &str = r#"{"iss":"https://issuer.example.com/","sub":"user-1234567890","aud":["api://orders","api://billing"],"exp":1767225600,"nbf":1767222000,"iat":1767222000,"jti":"0f8c1d9e-2b7a-4c3e-9f11-5a6b7c8d9e0f","scope":"orders:read orders:write billing:read","email":"alice@example.com","email_verified":true,"tenant":{"id":42,"region":"eu-west-1"}}"#;

fn parse(bytes: &[u8]) -> usize {
    jwt_auth::json::parse_object(bytes, jwt_auth::json::Limits::JWT)
        .unwrap()
        .len()
}

#[test]
#[ignore = "a timing, not a check: run by hand with --release"]
fn cost_of_parsing_a_claims_set() {
    assert_eq!(parse(CLAIMS.as_bytes()), 11);
    const ROUNDS: u32 = 200_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..ROUNDS {
            black_box(parse(black_box(CLAIMS.as_bytes())));
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS));
    }
    println!("{} bytes, best of 5: {best:.3} µs per parse", CLAIMS.len());
}
