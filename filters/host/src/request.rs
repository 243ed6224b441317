//! The request as a filter sees it, read from Envoy header by header when first asked for.
//!
//! A filter needs two or three headers of a request; reading every header in one call costs
//! several times more (Envoy serialises the whole map, the SDK allocates two strings per
//! header). Each header is read once and remembered for the rest of the callback.

use filter_core::request::RequestView;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::cell::OnceCell;

/// How many distinct headers are remembered one by one; past that, the whole map is read.
const SLOTS: usize = 8;

/// Headers Envoy keeps inline and joins with commas when a request repeats them, so their one
/// value is all of them (the Envoy suite sends two `authorization` fields and sees the 400).
const JOINED_BY_ENVOY: &[&str] = &["authorization"];

#[derive(Default)]
pub(crate) struct HostRequest {
    method: OnceCell<String>,
    path: OnceCell<String>,
    read: [OnceCell<(String, Option<String>)>; SLOTS],
    client_address: OnceCell<Option<String>>,
    all: OnceCell<Vec<(String, String)>>,
}

impl HostRequest {
    fn read(name: &str) -> Option<String> {
        // A failed read (impossible in the request-headers callback) reads as absent.
        hostcalls::get_map_value(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn all(&self) -> &[(String, String)] {
        self.all
            .get_or_init(|| hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default())
    }
}

impl RequestView for HostRequest {
    fn method(&self) -> &str {
        self.method
            .get_or_init(|| Self::read(":method").unwrap_or_default())
    }

    fn path(&self) -> &str {
        self.path
            .get_or_init(|| Self::read(":path").unwrap_or_default())
    }

    fn header(&self, name: &str) -> Option<&str> {
        for slot in &self.read {
            match slot.get() {
                Some((read_name, value)) if read_name == name => return value.as_deref(),
                Some(_) => {}
                None => {
                    let (_, value) = slot.get_or_init(|| (name.to_owned(), Self::read(name)));
                    return value.as_deref();
                }
            }
        }
        self.all()
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn client_address(&self) -> Option<&str> {
        self.client_address
            .get_or_init(|| {
                hostcalls::get_property(vec!["source", "address"])
                    .ok()
                    .flatten()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
            })
            .as_deref()
    }

    /// Every value needs the whole map (Envoy's single read returns only the first), except
    /// for headers Envoy joins itself.
    fn header_values(&self, name: &str) -> Vec<&str> {
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
