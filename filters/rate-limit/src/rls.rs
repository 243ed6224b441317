//! Envoy's rate limit service protocol (`envoy.service.ratelimit.v3.RateLimitService`), the
//! messages this filter sends and reads.
//!
//! The messages are written out from Envoy's `.proto` files (`envoy/service/ratelimit/v3/
//! rls.proto`, `envoy/extensions/common/ratelimit/v3/ratelimit.proto`) with the field numbers
//! and types of the originals, keeping only the fields this filter uses: protobuf readers skip
//! the fields they do not know, so a service sending more is read correctly. The integration
//! tests encode and decode them against the `envoy-types` crate's generated types.

use prost::Message as _;

/// The service, as gRPC names it.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
/// The one method.
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitRequest {
    /// The namespace the service reads its limits from.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// One per rule.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// How much each descriptor counts; 0 reads as 1.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

/// `RateLimitDescriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitDescriptor {
    /// The key/value pairs, in order.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    /// This descriptor's own addend, over the request's (`google.protobuf.UInt64Value`).
    #[prost(message, optional, tag = "3")]
    pub hits_addend: Option<UInt64Value>,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    /// The descriptor key, e.g. `user`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value for this request.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `google.protobuf.UInt64Value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UInt64Value {
    /// The value.
    #[prost(uint64, tag = "1")]
    pub value: u64,
}

/// `RateLimitResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimitResponse {
    /// `Code`: 0 unknown, 1 OK, 2 over limit.
    #[prost(int32, tag = "1")]
    pub overall_code: i32,
    /// One per descriptor of the request, in order (a service may send none).
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    /// Header fields for the response (`config.core.v3.HeaderValue`).
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    /// Header fields for the request on its way upstream.
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
}

/// `RateLimitResponse.Code`: the request is within every limit.
pub const CODE_OK: i32 = 1;
/// `RateLimitResponse.Code`: the request is over some limit.
pub const CODE_OVER_LIMIT: i32 = 2;

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DescriptorStatus {
    /// `Code`, for this descriptor.
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The limit that applied.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// What is left of it.
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// When its window resets (`google.protobuf.Duration`).
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RateLimit {
    /// The limit's name, if the service gives one.
    #[prost(string, tag = "3")]
    pub name: String,
    /// Requests per unit.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `Unit`: 0 unknown, 1 second, 2 minute, 3 hour, 4 day, 5 month, 6 year, 7 week.
    #[prost(int32, tag = "2")]
    pub unit: i32,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Duration {
    /// Whole seconds.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds on top.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// `config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// The name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value as text.
    #[prost(string, tag = "2")]
    pub value: String,
    /// The value as bytes, which newer senders may use instead of `value`.
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

impl HeaderValue {
    /// The header field as a name and a value, if both are valid to send on.
    pub fn field(&self) -> Option<(String, String)> {
        let value = if self.value.is_empty() && !self.raw_value.is_empty() {
            std::str::from_utf8(&self.raw_value).ok()?
        } else {
            self.value.as_str()
        };
        let name = self.key.to_ascii_lowercase();
        let name_ok = !name.is_empty()
            && !name.starts_with(':')
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        let value_ok = value
            .bytes()
            .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        (name_ok && value_ok).then(|| (name, value.to_owned()))
    }
}

/// The length of a `Unit` in seconds, if it has a fixed one (a month or year does not).
pub fn unit_seconds(unit: i32) -> Option<u64> {
    match unit {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3_600),
        4 => Some(86_400),
        7 => Some(604_800),
        _ => None,
    }
}

impl RateLimitRequest {
    /// The request as sent.
    pub fn encode(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl RateLimitResponse {
    /// Reads an answer; `None` if it is not a valid message.
    pub fn decode_from(bytes: &[u8]) -> Option<Self> {
        Self::decode(bytes).ok()
    }
}

impl Duration {
    /// As a standard duration; `None` if negative or out of range.
    pub fn to_std(&self) -> Option<std::time::Duration> {
        let seconds = u64::try_from(self.seconds).ok()?;
        let nanos = u32::try_from(self.nanos)
            .ok()
            .filter(|n| *n < 1_000_000_000)?;
        Some(std::time::Duration::new(seconds, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_encodes_as_envoy_s_native_filter_would() {
        let request = RateLimitRequest {
            domain: "d".to_owned(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".to_owned(),
                    value: "v".to_owned(),
                }],
                hits_addend: None,
            }],
            hits_addend: 0,
        };
        // domain(1) "d"; descriptors(2) { entries(1) { key(1) "k", value(2) "v" } }
        assert_eq!(
            request.encode(),
            [
                0x0a, 1, b'd', 0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v'
            ]
        );
    }

    #[test]
    fn an_answer_with_unknown_fields_still_reads() {
        // overall_code 2, then field 6 (dynamic_metadata, not modelled) as an empty message.
        let answer = RateLimitResponse::decode_from(&[0x08, 2, 0x32, 0]).map(|r| r.overall_code);
        assert_eq!(answer, Some(CODE_OVER_LIMIT));
        assert_eq!(RateLimitResponse::decode_from(&[0x08]), None);
    }

    #[test]
    fn header_fields_that_cannot_be_sent_are_dropped() {
        let field = |key: &str, value: &str| HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        };
        assert_eq!(
            field("X-Quota", "7").field(),
            Some(("x-quota".to_owned(), "7".to_owned()))
        );
        assert_eq!(field(":status", "200").field(), None);
        assert_eq!(field("bad name", "1").field(), None);
        assert_eq!(field("x", "a\r\nb").field(), None);
        let raw = HeaderValue {
            key: "x".to_owned(),
            value: String::new(),
            raw_value: b"r".to_vec(),
        };
        assert_eq!(raw.field(), Some(("x".to_owned(), "r".to_owned())));
    }
}
