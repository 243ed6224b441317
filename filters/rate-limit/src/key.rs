//! Which bucket a request counts against: the parts of a rule's `key`, read from the request.

use filter_core::request::RequestView;
use std::net::IpAddr;

/// One part of a rule's key, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address: the peer, or with `trusted_proxies: N`, the N-th address from the
    /// right of `x-forwarded-for`. IPv6 addresses count per network of `ipv6_prefix` bits.
    ClientIp {
        /// Leading bits of an IPv6 address that make up the key.
        ipv6_prefix: u8,
    },
    /// A request header's value (the first, if repeated); absent: the rule does not apply.
    Header(String),
    /// The path, without its query string.
    Path,
    /// The method.
    Method,
    /// Nothing: one bucket for every request the rule matches. (As a descriptor value: the
    /// rule's name.)
    Rule,
    /// A fixed text.
    Literal(String),
    /// The name of the Envoy route the request matched; absent: the rule does not apply.
    Route,
}

/// The bytes of a request's key for a rule named `rule`, every part length-prefixed so that
/// no two different keys read alike; `None` if a part is missing (the rule does not apply).
pub fn material(
    rule: &str,
    parts: &[KeyPart],
    request: &dyn RequestView,
    trusted_proxies: u32,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(64);
    push(&mut out, rule.as_bytes());
    for part in parts {
        match part {
            KeyPart::ClientIp { ipv6_prefix } => {
                let address = client_address(request, trusted_proxies)?;
                match address.parse::<IpAddr>() {
                    Ok(ip) => push(&mut out, &ip_key(ip, *ipv6_prefix)),
                    // Not an address (a proxy wrote junk): the text itself is the key.
                    Err(_) => push(&mut out, address.as_bytes()),
                }
            }
            KeyPart::Header(name) => push(&mut out, request.header(name)?.as_bytes()),
            KeyPart::Path => push(&mut out, request.path_only().as_bytes()),
            KeyPart::Method => push(&mut out, request.method().as_bytes()),
            KeyPart::Rule => {}
            KeyPart::Literal(text) => push(&mut out, text.as_bytes()),
            KeyPart::Route => push(&mut out, request.route_name()?.as_bytes()),
        }
    }
    Some(out)
}

/// The text of one descriptor entry's value for a rule named `rule`, as a rate limit service
/// sees it; `None` if it is missing or empty (the rule does not apply, as Envoy's own
/// descriptor actions skip a descriptor with a missing header).
///
/// A client address is the address text; an IPv6 address outside a whole /128 is its
/// network in CIDR form (`2001:db8:1:2::/64`), so one subscriber's addresses share a value.
pub fn value(
    rule: &str,
    part: &KeyPart,
    request: &dyn RequestView,
    trusted_proxies: u32,
) -> Option<String> {
    let text = match part {
        KeyPart::ClientIp { ipv6_prefix } => {
            let address = client_address(request, trusted_proxies)?;
            match address.parse::<IpAddr>() {
                Ok(ip) => ip_text(ip, *ipv6_prefix),
                Err(_) => address.to_owned(),
            }
        }
        KeyPart::Header(name) => request.header(name)?.to_owned(),
        KeyPart::Path => request.path_only().to_owned(),
        KeyPart::Method => request.method().to_owned(),
        KeyPart::Rule => rule.to_owned(),
        KeyPart::Literal(text) => text.clone(),
        KeyPart::Route => request.route_name()?.to_owned(),
    };
    (!text.is_empty()).then_some(text)
}

/// An address as descriptor text: see [`value`].
fn ip_text(ip: IpAddr, prefix: u8) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None if prefix >= 128 => v6.to_string(),
            None => {
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let network = std::net::Ipv6Addr::from(u128::from(v6) & mask);
                format!("{network}/{prefix}")
            }
        },
    }
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The client's address as text, without a port. With `trusted_proxies` = N > 0 it is the
/// N-th entry from the right of `x-forwarded-for` (every field, in order): the address the
/// outermost trusted proxy saw. A request with fewer entries did not come through the
/// proxies, so its peer address is used (a short header never escapes the limit).
pub fn client_address(request: &dyn RequestView, trusted_proxies: u32) -> Option<&str> {
    if trusted_proxies > 0 {
        let entries: Vec<&str> = request
            .header_values("x-forwarded-for")
            .into_iter()
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let n = usize::try_from(trusted_proxies).unwrap_or(usize::MAX);
        if let Some(entry) = entries
            .len()
            .checked_sub(n)
            .and_then(|i| entries.get(i))
            .filter(|e| !e.is_empty())
        {
            return Some(strip_port(entry));
        }
    }
    request.client_address().map(strip_port)
}

/// `1.2.3.4:80` → `1.2.3.4`; `[::1]:80` → `::1`; a bare address stays as it is.
fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.split_once(':') {
        // Exactly one colon: IPv4 with a port. More: a bare IPv6 address.
        Some((host, port)) if !port.contains(':') => host,
        _ => address,
    }
}

/// An address as key bytes: IPv4 whole (also when written as IPv4-mapped IPv6), IPv6 cut to
/// its first `prefix` bits (one subscriber usually holds a whole /64).
fn ip_key(ip: IpAddr, prefix: u8) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => {
                let bits = u128::from(v6);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                let mut key = (bits & mask).to_be_bytes().to_vec();
                key.push(prefix);
                key
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filter_core::request::Request;

    fn peer(address: &str) -> Request {
        Request::new("GET", "/a?b=1").with_client_address(address)
    }

    #[test]
    fn ports_are_dropped() {
        assert_eq!(client_address(&peer("10.0.0.1:5555"), 0), Some("10.0.0.1"));
        assert_eq!(
            client_address(&peer("[2001:db8::1]:80"), 0),
            Some("2001:db8::1")
        );
        assert_eq!(client_address(&peer("2001:db8::1"), 0), Some("2001:db8::1"));
        assert_eq!(client_address(&Request::new("GET", "/"), 0), None);
    }

    #[test]
    fn trusted_proxies_pick_from_the_right_of_xff() {
        let r = peer("10.0.0.9:1")
            .with_header("x-forwarded-for", "6.6.6.6, 1.1.1.1")
            .with_header("x-forwarded-for", "2.2.2.2");
        // The client forged 6.6.6.6; proxy 1 saw 1.1.1.1, proxy 2 saw 2.2.2.2.
        assert_eq!(client_address(&r, 1), Some("2.2.2.2"));
        assert_eq!(client_address(&r, 2), Some("1.1.1.1"));
        assert_eq!(client_address(&r, 3), Some("6.6.6.6"));
        // Too few entries: the peer.
        assert_eq!(client_address(&r, 4), Some("10.0.0.9"));
        assert_eq!(client_address(&r, 0), Some("10.0.0.9"));
    }

    #[test]
    fn ipv6_counts_per_network() {
        let m = |a: &str| material("r", &[KeyPart::ClientIp { ipv6_prefix: 64 }], &peer(a), 0);
        assert_eq!(m("[2001:db8:1:2::1]:1"), m("[2001:db8:1:2:ffff::9]:2"));
        assert_ne!(m("[2001:db8:1:2::1]:1"), m("[2001:db8:1:3::1]:1"));
        assert_eq!(m("[::ffff:1.2.3.4]:1"), m("1.2.3.4:9"));
        let whole = |a: &str| material("r", &[KeyPart::ClientIp { ipv6_prefix: 128 }], &peer(a), 0);
        assert_ne!(whole("[2001:db8::1]:1"), whole("[2001:db8::2]:1"));
    }

    #[test]
    fn parts_combine_and_a_missing_one_skips_the_rule() {
        let parts = [KeyPart::Header("x-user-id".into()), KeyPart::Method];
        let r = Request::new("GET", "/").with_header("x-user-id", "ab");
        assert!(material("r", &parts, &r, 0).is_some());
        assert_eq!(material("r", &parts, &Request::new("GET", "/"), 0), None);
        // Length prefixes: ("ab", "c") and ("a", "bc") differ.
        let two = [KeyPart::Header("x-a".into()), KeyPart::Header("x-b".into())];
        let r1 = Request::new("GET", "/")
            .with_header("x-a", "ab")
            .with_header("x-b", "c");
        let r2 = Request::new("GET", "/")
            .with_header("x-a", "a")
            .with_header("x-b", "bc");
        assert_ne!(material("r", &two, &r1, 0), material("r", &two, &r2, 0));
        // The rule's name is part of the key.
        assert_ne!(
            material("r", &[KeyPart::Rule], &r1, 0),
            material("s", &[KeyPart::Rule], &r1, 0)
        );
    }

    #[test]
    fn descriptor_values_are_text() {
        let r = peer("[2001:db8:1:2::9]:80")
            .with_header("x-user-id", "alice")
            .with_header("x-empty", "");
        let v = |part: KeyPart| value("r", &part, &r, 0);
        assert_eq!(
            v(KeyPart::ClientIp { ipv6_prefix: 64 }).as_deref(),
            Some("2001:db8:1:2::/64")
        );
        assert_eq!(
            v(KeyPart::ClientIp { ipv6_prefix: 128 }).as_deref(),
            Some("2001:db8:1:2::9")
        );
        assert_eq!(
            value(
                "r",
                &KeyPart::ClientIp { ipv6_prefix: 64 },
                &peer("10.1.2.3:9"),
                0
            )
            .as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(
            v(KeyPart::Header("x-user-id".into())).as_deref(),
            Some("alice")
        );
        assert_eq!(v(KeyPart::Header("x-empty".into())), None);
        assert_eq!(v(KeyPart::Header("x-none".into())), None);
        assert_eq!(v(KeyPart::Path).as_deref(), Some("/a"));
        assert_eq!(v(KeyPart::Method).as_deref(), Some("GET"));
        assert_eq!(v(KeyPart::Rule).as_deref(), Some("r"));
        assert_eq!(v(KeyPart::Literal("api".into())).as_deref(), Some("api"));
        assert_eq!(v(KeyPart::Route), None);
        let routed = Request::new("GET", "/").with_route_name("orders");
        assert_eq!(
            value("r", &KeyPart::Route, &routed, 0).as_deref(),
            Some("orders")
        );
    }

    proptest::proptest! {
        #[test]
        fn hostile_addresses_never_panic(xff in ".{0,60}", peer_text in ".{0,40}", n in 0u32..5, prefix in 0u8..=128) {
            let r = Request::new("GET", "/").with_client_address(peer_text).with_header("x-forwarded-for", xff);
            let _ = material("r", &[KeyPart::ClientIp { ipv6_prefix: prefix }], &r, n);
            let _ = value("r", &KeyPart::ClientIp { ipv6_prefix: prefix }, &r, n);
        }
    }
}
