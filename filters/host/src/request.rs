//! The request and response as a filter sees them, read from Envoy header by header when first
//! asked for.
//!
//! A filter needs two or three headers of a request; reading every header in one call costs
//! several times more (Envoy serialises the whole map, the SDK allocates two strings per
//! header). Each header is read once and remembered for the rest of the callback.

use filter_core::request::{RequestView, ResponseView};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::cell::OnceCell;

/// How many distinct headers are remembered one by one; past that, the whole map is read.
const SLOTS: usize = 8;

/// Headers Envoy keeps inline and joins with commas when a request repeats them, so their one
/// value is all of them (the Envoy suite sends two `authorization` fields and sees the 400).
const JOINED_BY_ENVOY: &[&str] = &["authorization"];

/// Values read from Envoy by name, each once, remembered for the rest of the callback.
#[derive(Default)]
struct Remembered {
    slots: [OnceCell<(String, Option<String>)>; SLOTS],
}

impl Remembered {
    /// The value of `name`, read with `read` the first time; `None` when every slot holds
    /// another name already.
    fn get(&self, name: &str, read: impl FnOnce(&str) -> Option<String>) -> Option<Option<&str>> {
        let mut read = Some(read);
        for slot in &self.slots {
            let (slot_name, value) = slot.get_or_init(|| {
                let value = read.take().and_then(|read| read(name));
                (name.to_owned(), value)
            });
            if slot_name == name {
                return Some(value.as_deref());
            }
        }
        None
    }
}

/// One of Envoy's header maps, read lazily.
struct LazyHeaders {
    map: MapType,
    read: Remembered,
    all: OnceCell<Vec<(String, String)>>,
}

impl LazyHeaders {
    fn new(map: MapType) -> Self {
        Self {
            map,
            read: Remembered::default(),
            all: OnceCell::new(),
        }
    }

    fn read_one(&self, name: &str) -> Option<String> {
        // A failed read (impossible inside the map's own callback) reads as absent.
        hostcalls::get_map_value(self.map, name).ok().flatten()
    }

    fn all(&self) -> &[(String, String)] {
        self.all
            .get_or_init(|| hostcalls::get_map(self.map).unwrap_or_default())
    }

    fn header(&self, name: &str) -> Option<&str> {
        match self.read.get(name, |name| self.read_one(name)) {
            Some(value) => value,
            // More distinct headers than slots: the whole map, read once.
            None => self
                .all()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// Every value needs the whole map (Envoy's single read returns only the first), except
    /// for headers Envoy joins itself.
    fn values(&self, name: &str) -> Vec<&str> {
        if JOINED_BY_ENVOY.contains(&name) {
            return self.header(name).into_iter().collect();
        }
        self.all()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub(crate) struct HostRequest {
    headers: LazyHeaders,
    method: OnceCell<String>,
    path: OnceCell<String>,
    client_address: OnceCell<Option<String>>,
    cluster: OnceCell<Option<String>>,
    route_name: OnceCell<Option<String>>,
    /// Filter-state values asked for.
    filter_state: Remembered,
}

impl Default for HostRequest {
    fn default() -> Self {
        Self {
            headers: LazyHeaders::new(MapType::HttpRequestHeaders),
            method: OnceCell::new(),
            path: OnceCell::new(),
            client_address: OnceCell::new(),
            cluster: OnceCell::new(),
            route_name: OnceCell::new(),
            filter_state: Remembered::default(),
        }
    }
}

impl RequestView for HostRequest {
    fn method(&self) -> &str {
        self.method
            .get_or_init(|| self.headers.read_one(":method").unwrap_or_default())
    }

    fn path(&self) -> &str {
        self.path
            .get_or_init(|| self.headers.read_one(":path").unwrap_or_default())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }

    fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.values(name)
    }

    fn client_address(&self) -> Option<&str> {
        self.client_address
            .get_or_init(|| property(&["source", "address"]))
            .as_deref()
    }

    fn cluster(&self) -> Option<&str> {
        self.cluster
            .get_or_init(|| property(&["xds", "cluster_name"]))
            .as_deref()
    }

    fn route_name(&self) -> Option<&str> {
        self.route_name
            .get_or_init(|| property(&["xds", "route_name"]))
            .as_deref()
    }

    fn filter_state(&self, name: &str) -> Option<&str> {
        // Envoy finds a name it does not know as a property in the filter state `wasm.<name>`.
        // (Past SLOTS distinct names, which no filter here reads, it answers None.)
        self.filter_state
            .get(name, |name| property(&[name]))
            .flatten()
    }
}

/// A string property of the stream, if Envoy has it.
fn property(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

pub(crate) struct HostResponse {
    headers: LazyHeaders,
    code_details: OnceCell<Option<String>>,
    attempts: OnceCell<Option<u64>>,
    flags: OnceCell<Option<u64>>,
    /// The filter reading it, for the host-gap log line.
    filter: &'static str,
}

impl HostResponse {
    /// The response of the current stream, as the filter `filter` reads it.
    pub(crate) fn new(filter: &'static str) -> Self {
        Self::of(MapType::HttpResponseHeaders, filter)
    }

    /// The response's trailers, read as headers (their `status` is `None`).
    pub(crate) fn trailers(filter: &'static str) -> Self {
        Self::of(MapType::HttpResponseTrailers, filter)
    }

    fn of(map: MapType, filter: &'static str) -> Self {
        Self {
            headers: LazyHeaders::new(map),
            code_details: OnceCell::new(),
            attempts: OnceCell::new(),
            flags: OnceCell::new(),
            filter,
        }
    }
}

/// An integer property (Envoy sends 8 bytes, little-endian).
fn u64_property(path: &[&str]) -> Option<u64> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .and_then(|bytes| Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)))
}

/// A stream property that every Envoy this project is tested with (1.36 to 1.40) reports, but
/// an older Envoy or another host might not. Without it a filter keeps working, less
/// precisely, and says so once per VM. (The check sits where the property is read, so a
/// module whose filters never read it carries none of this.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostGap {
    /// `response.code_details`, which tells Envoy's own replies (connect failure, timeout,
    /// reset) from the upstream's.
    CodeDetails,
    /// `upstream.request_attempt_count`, which counts the router's retries.
    AttemptCount,
}

impl HostGap {
    fn bit(self) -> u8 {
        match self {
            HostGap::CodeDetails => 1,
            HostGap::AttemptCount => 2,
        }
    }

    /// What a filter does without the property.
    fn consequence(self) -> &'static str {
        match self {
            HostGap::CodeDetails => {
                "this host does not report response.code_details (Envoy 1.36 to 1.40 do): \
                 Envoy's own replies (connect failures, timeouts, resets) are told from the \
                 upstream's by status alone"
            }
            HostGap::AttemptCount => {
                "this host does not report upstream.request_attempt_count (Envoy 1.36 to 1.40 \
                 do): the router's retries are not counted, so the retry budget cannot limit \
                 them"
            }
        }
    }
}

/// A response with a status but no details: the host does not report them. (The status is
/// read only when the details are missing: nothing extra per request on a supported Envoy.)
fn lacks_details(status: impl FnOnce() -> Option<u16>, details: Option<&str>) -> bool {
    details.is_none() && status().is_some()
}

/// An upstream's response without an attempt count: the host does not report it. (Envoy's
/// own replies may rightly have none: no attempt was made. The details are read only when the
/// count is missing.)
fn lacks_attempts<'a>(details: impl FnOnce() -> Option<&'a str>, attempts: Option<u64>) -> bool {
    attempts.is_none() && details() == Some("via_upstream")
}

thread_local! {
    /// The gaps this VM has reported (a bit each).
    static REPORTED_GAPS: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Logs a gap, the first time this VM meets it.
fn report_gap(filter: &str, gap: HostGap) {
    let reported = REPORTED_GAPS.with(std::cell::Cell::get);
    if reported & gap.bit() == 0 {
        REPORTED_GAPS.with(|r| r.set(reported | gap.bit()));
        log::warn!("{filter}: {}", gap.consequence());
    }
}

impl ResponseView for HostResponse {
    fn status(&self) -> Option<u16> {
        self.headers.header(":status")?.parse().ok()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.header(name)
    }

    fn code_details(&self) -> Option<&str> {
        self.code_details
            .get_or_init(|| {
                let details = property(&["response", "code_details"]);
                if lacks_details(|| self.status(), details.as_deref()) {
                    report_gap(self.filter, HostGap::CodeDetails);
                }
                details
            })
            .as_deref()
    }

    fn attempts(&self) -> Option<u64> {
        *self.attempts.get_or_init(|| {
            let attempts = u64_property(&["upstream", "request_attempt_count"]);
            if lacks_attempts(|| self.code_details(), attempts) {
                report_gap(self.filter, HostGap::AttemptCount);
            }
            attempts
        })
    }

    fn response_flags(&self) -> Option<u64> {
        *self
            .flags
            .get_or_init(|| u64_property(&["response", "flags"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_without_details_shows_the_host_lacks_them() {
        assert!(lacks_details(|| Some(503), None));
        assert!(!lacks_details(|| Some(200), Some("via_upstream")));
        assert!(!lacks_details(|| None, None));
    }

    #[test]
    fn only_an_upstream_response_without_attempts_shows_the_host_lacks_them() {
        assert!(lacks_attempts(|| Some("via_upstream"), None));
        assert!(!lacks_attempts(|| Some("via_upstream"), Some(1)));
        // Envoy's own replies (a filter's 429, a failed connection) may have no attempt.
        assert!(!lacks_attempts(|| Some("wasm"), None));
        assert!(!lacks_attempts(|| None, None));
    }
}
