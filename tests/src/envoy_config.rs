//! Envoy configurations for tests, and the shipped examples adapted to run side by side.

use crate::free_port;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

/// How a [`TestEnvoyConfig`] puts its filters into Envoy: the same scenario runs against the
/// separate filter modules and against the combined one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// One Envoy filter entry per filter module.
    #[default]
    SeparateFilters,
    /// One `gateway.wasm` entry whose configuration holds each filter's as a member.
    GatewayModule,
}

/// Where Envoy gets a filter entry's module from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Code {
    /// The module built in this tree (`target/wasm32-wasip1/release/<name>.wasm`).
    Built,
    /// This file.
    File(PathBuf),
    /// Fetched over HTTP through a cluster, and checked against a sha256 (`vm_config.code.remote`).
    Remote {
        /// The URL Envoy fetches.
        uri: String,
        /// The cluster the fetch goes through.
        cluster: String,
        /// The sha256 Envoy checks, in hex.
        sha256: String,
    },
}

/// One Wasm filter entry: the module's name, its JSON configuration, where its code comes from.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    config: String,
    code: Code,
}

/// An Envoy configuration for a test: one listener named `gateway` on a free port, a chain of
/// Wasm filters laid out as [`Layout`] says, and a route to a cluster named `upstream` (the
/// test's in-process server).
#[derive(Debug, Clone)]
pub struct TestEnvoyConfig {
    upstream_port: u16,
    filters: Vec<Entry>,
    layout: Layout,
    route_timeout: String,
    clusters: Vec<(String, u16)>,
    direct_response: bool,
    request_headers: Vec<(String, String)>,
    internal_clients: bool,
    grpc_clusters: Vec<(String, u16)>,
    native_filters: Vec<String>,
    route_rate_limits: Option<String>,
    upstream_max_retries: Option<u32>,
    upstream_http2: bool,
    access_log: bool,
    admin_port: u16,
}

impl TestEnvoyConfig {
    /// A configuration in front of `127.0.0.1:upstream_port`, with separate filter entries.
    pub fn new(upstream_port: u16) -> Self {
        Self {
            upstream_port,
            filters: Vec::new(),
            layout: Layout::SeparateFilters,
            route_timeout: "15s".to_owned(),
            clusters: Vec::new(),
            direct_response: false,
            request_headers: Vec::new(),
            internal_clients: false,
            grpc_clusters: Vec::new(),
            native_filters: Vec::new(),
            route_rate_limits: None,
            upstream_max_retries: None,
            upstream_http2: false,
            access_log: false,
            admin_port: 0,
        }
    }

    /// Prints the access log the examples print ([`crate::access_log::FORMAT`]) to Envoy's
    /// stdout, which [`crate::envoy::Envoy::log`] captures: read it with
    /// [`crate::access_log::wait_for`].
    pub fn access_log(mut self) -> Self {
        self.access_log = true;
        self
    }

    /// Puts the admin API on this port of 127.0.0.1 instead of one Envoy picks, for a client
    /// that must know it before Envoy starts (a Prometheus scraping it from its first second).
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin_port = port;
        self
    }

    /// Lays the filters out as `layout` says.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// Treats the test client (127.0.0.1) as internal, so Envoy keeps the `x-envoy-*` headers
    /// it sends instead of stripping them: what a mesh sidecar sees from its neighbours.
    pub fn internal_clients(mut self) -> Self {
        self.internal_clients = true;
        self
    }

    /// Has the route add this header to requests it sends upstream; the value may use Envoy's
    /// formatter, e.g. `%FILTER_STATE(wasm.x:PLAIN)%` to show what a filter left for later ones.
    pub fn route_request_header(mut self, name: &str, value: &str) -> Self {
        self.request_headers
            .push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers every request with Envoy's own `200 ok` instead of routing it upstream (for
    /// tests that send more requests than the test upstream should serve).
    pub fn direct_response(mut self) -> Self {
        self.direct_response = true;
        self
    }

    /// Appends the module `name` (`rate_limit`, ...) with this JSON configuration.
    pub fn filter(self, name: &str, config_json: &str) -> Self {
        self.filter_from(name, config_json, Code::Built)
    }

    /// Appends the module `name` with this JSON configuration, loaded from `code`.
    pub fn filter_from(mut self, name: &str, config_json: &str, code: Code) -> Self {
        self.filters.push(Entry {
            name: name.to_owned(),
            config: config_json.to_owned(),
            code,
        });
        self
    }

    /// Adds a cluster `name` reaching `127.0.0.1:port` (a key server, say).
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.push((name.to_owned(), port));
        self
    }

    /// Adds an HTTP/2 cluster `name` reaching `127.0.0.1:port`: a gRPC service such as a rate
    /// limit service.
    pub fn grpc_cluster(mut self, name: &str, port: u16) -> Self {
        self.grpc_clusters.push((name.to_owned(), port));
        self
    }

    /// Speaks HTTP/2 (cleartext, prior knowledge) to the `upstream` cluster, as a gRPC
    /// upstream needs (a [`crate::grpc::GrpcServer`]); the default is HTTP/1.1.
    pub fn upstream_http2(mut self) -> Self {
        self.upstream_http2 = true;
        self
    }

    /// Puts a native Envoy HTTP filter before the Wasm ones: `yaml` is one list item of
    /// `http_filters` (`name:` and `typed_config:`), indented as a top-level YAML document.
    pub fn native_filter(mut self, yaml: &str) -> Self {
        self.native_filters.push(yaml.to_owned());
        self
    }

    /// The route's `rate_limits` (for Envoy's native `ratelimit` filter), as a YAML flow list.
    pub fn route_rate_limits(mut self, flow_yaml: &str) -> Self {
        self.route_rate_limits = Some(flow_yaml.to_owned());
        self
    }

    /// Raises the `upstream` cluster's cap on concurrent retries (its circuit breaker's
    /// `max_retries`, 3 by default), so that a test's own retry limit is the one that binds.
    pub fn upstream_max_retries(mut self, max_retries: u32) -> Self {
        self.upstream_max_retries = Some(max_retries);
        self
    }

    /// The route timeout (Envoy's default is 15 s).
    pub fn route_timeout(mut self, timeout: &str) -> Self {
        self.route_timeout = timeout.to_owned();
        self
    }

    /// The filter entries: one per filter, or in [`Layout::GatewayModule`] one `gateway`
    /// entry whose configuration holds each filter's as a member.
    fn entries(&self) -> Vec<Entry> {
        if self.layout == Layout::SeparateFilters {
            return self.filters.clone();
        }
        assert!(
            self.filters.iter().all(|f| f.code == Code::Built),
            "only built modules combine into gateway.wasm"
        );
        let names: Vec<&str> = self.filters.iter().map(|f| f.name.as_str()).collect();
        let in_order: Vec<&str> = crate::wasm::FILTERS
            .into_iter()
            .filter(|f| names.contains(f))
            .collect();
        assert_eq!(
            names, in_order,
            "only the four filters, each at most once and in the gateway's order, combine"
        );
        let members: Vec<String> = self
            .filters
            .iter()
            .map(|f| format!("{}: {}", quoted(&f.name), f.config))
            .collect();
        vec![Entry {
            name: "gateway".to_owned(),
            config: format!("{{{}}}", members.join(", ")),
            code: Code::Built,
        }]
    }

    /// The configuration as Envoy YAML.
    pub fn render(&self) -> String {
        let mut filters = String::new();
        for native in &self.native_filters {
            for (i, line) in native.trim().lines().enumerate() {
                let lead = if i == 0 { "- " } else { "  " };
                let _ = write!(filters, "\n          {lead}{line}");
            }
        }
        for (i, Entry { name, config, code }) in self.entries().iter().enumerate() {
            let code = match code {
                Code::Built => format!(
                    "{{ local: {{ filename: {} }} }}",
                    crate::wasm::module(name).display()
                ),
                Code::File(path) => format!("{{ local: {{ filename: {} }} }}", path.display()),
                // The first fetch of a static listener's module runs before its cluster is
                // up, so without retries it always fails.
                Code::Remote {
                    uri,
                    cluster,
                    sha256,
                } => format!(
                    "{{ remote: {{ http_uri: {{ uri: {}, cluster: {}, timeout: 5s }}, \
                     sha256: {}, retry_policy: {{ num_retries: 3, \
                     retry_back_off: {{ base_interval: 0.2s, max_interval: 1s }} }} }} }}",
                    quoted(uri),
                    quoted(cluster),
                    quoted(sha256)
                ),
            };
            // Each entry its own vm_id, so two entries of one module never share a VM.
            let _ = write!(
                filters,
                r#"
          - name: {name}-{i}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {config}
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: {name}-{i}
                  runtime: envoy.wasm.runtime.v8
                  code: {code}"#,
                config = quoted(config),
            );
        }
        let mut clusters = String::new();
        let plain = self.clusters.iter().map(|(name, port)| (name, port, ""));
        let grpc = self
            .grpc_clusters
            .iter()
            .map(|(name, port)| (name, port, HTTP2));
        for (name, port, options) in plain.chain(grpc) {
            let _ = write!(
                clusters,
                r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s{options}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}"#
            );
        }
        let stats_config = stats_config();
        format!(
            r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
{stats_config}
static_resources:
  listeners:
  - name: gateway
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          normalize_path: true
          merge_slashes: true{internal}{access_log}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {action}{route_headers}
          http_filters:{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s{upstream_thresholds}{upstream_options}
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}{clusters}
"#,
            action = if self.direct_response {
                "direct_response: { status: 200, body: { inline_string: ok } }".to_owned()
            } else {
                let rate_limits = match &self.route_rate_limits {
                    Some(list) => format!(", rate_limits: {list}"),
                    None => String::new(),
                };
                format!(
                    "route: {{ cluster: upstream, timeout: {}{rate_limits} }}",
                    self.route_timeout
                )
            },
            internal = if self.internal_clients {
                "\n          use_remote_address: true\n          internal_address_config: \
                 { cidr_ranges: [{ address_prefix: 127.0.0.1, prefix_len: 32 }] }"
                    .to_owned()
            } else {
                String::new()
            },
            route_headers = if self.request_headers.is_empty() {
                String::new()
            } else {
                let items: Vec<String> = self
                    .request_headers
                    .iter()
                    .map(|(n, v)| {
                        format!(
                            "{{ header: {{ key: {}, value: {} }} }}",
                            quoted(n),
                            quoted(v)
                        )
                    })
                    .collect();
                format!(
                    "\n                request_headers_to_add: [{}]",
                    items.join(", ")
                )
            },
            access_log = if self.access_log {
                format!(
                    "\n          access_log:\n          - name: envoy.access_loggers.stdout\n            \
                     typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.\
                     access_loggers.stream.v3.StdoutAccessLog\n              log_format: \
                     {{ text_format_source: {{ inline_string: {} }} }}",
                    quoted(crate::access_log::FORMAT)
                )
            } else {
                String::new()
            },
            port = self.upstream_port,
            upstream_thresholds = match self.upstream_max_retries {
                Some(n) =>
                    format!("\n    circuit_breakers: {{ thresholds: [{{ max_retries: {n} }}] }}"),
                None => String::new(),
            },
            upstream_options = if self.upstream_http2 { HTTP2 } else { "" },
            admin_port = self.admin_port,
        )
    }
}

/// A cluster's options for HTTP/2 to its hosts, which gRPC needs.
const HTTP2: &str = "
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: { http2_protocol_options: {} }";

/// A string as a JSON string literal, which YAML reads as the same string.
fn quoted(text: &str) -> serde_json::Value {
    serde_json::Value::String(text.to_owned())
}

/// The `stats_config` block that turns our filters' stat names into labelled Prometheus series
/// (one `stats_tags` entry per label, in the form Istio's `extraStatTags` also uses), as every
/// example configuration carries it.
pub fn stats_config() -> String {
    let mut block = String::from("stats_config:\n  stats_tags:");
    for label in filter_core::metrics::LABELS {
        block.push_str(&format!(
            "\n  - {{ tag_name: {label}, regex: \"({label}=\\\\.=(.*?);\\\\.;)\" }}"
        ));
    }
    block
}

/// Every example configuration shipped in `envoy/`.
pub fn examples() -> Vec<PathBuf> {
    yaml_files(&crate::repo_root().join("envoy"))
}

/// The `.yaml` files of a folder (not below it), sorted.
pub fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// An example from `envoy/`, adapted to run beside other Envoys: every port it names is
/// replaced by a free one (consistently, so a cluster still reaches the listener it named),
/// and module paths relative to the repository become absolute.
pub fn example(file_name: &str) -> String {
    let path = crate::repo_root().join("envoy").join(file_name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    adapt_example(&text)
}

/// See [`example`].
pub fn adapt_example(text: &str) -> String {
    adapt(text, false)
}

/// Like [`adapt_example`], but ports that are free keep their number (for `make run`, so the
/// printed URLs match the example).
pub fn adapt_example_keeping_free_ports(text: &str) -> String {
    adapt(text, true)
}

/// Like [`adapt_example`], but each `(from, to)` of `fixed` maps port `from` to `to` (a
/// service the test started itself).
pub fn adapt_example_with_ports(text: &str, fixed: &[(u16, u16)]) -> String {
    adapt_seeded(text, false, fixed)
}

fn adapt(text: &str, keep_free_ports: bool) -> String {
    adapt_seeded(text, keep_free_ports, &[])
}

fn adapt_seeded(text: &str, keep_free_ports: bool, fixed: &[(u16, u16)]) -> String {
    let mut ports: BTreeMap<String, u16> = fixed
        .iter()
        .map(|(from, to)| (from.to_string(), *to))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        out.push_str(&remap_port(line, &mut ports, keep_free_ports));
    }
    let modules = format!("{}/", crate::wasm::module_dir().display());
    out.replace("target/wasm32-wasip1/release/", &modules)
}

fn remap_port(line: &str, ports: &mut BTreeMap<String, u16>, keep_free_ports: bool) -> String {
    const KEY: &str = "port_value:";
    let Some(at) = line.find(KEY) else {
        return line.to_owned();
    };
    let (before, rest) = line.split_at(at + KEY.len());
    let digits_start = rest.len() - rest.trim_start().len();
    let digits: String = rest[digits_start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if digits.is_empty() || digits == "0" {
        return line.to_owned();
    }
    let port = *ports.entry(digits.clone()).or_insert_with(|| {
        let original: u16 = digits.parse().unwrap_or(0);
        let free = std::net::TcpListener::bind(("127.0.0.1", original)).is_ok();
        if keep_free_ports && original != 0 && free {
            original
        } else {
            free_port()
        }
    });
    let after = &rest[digits_start + digits.len()..];
    format!("{before} {port}{after}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_the_gateway_module_layout_the_filters_become_members_of_one_entry() {
        let config = TestEnvoyConfig::new(1)
            .filter("rate_limit", r#"{"rules": []}"#)
            .filter("retry_policy", "{}");
        let combined = config.clone().layout(Layout::GatewayModule).render();
        assert_eq!(combined.matches("envoy.wasm.runtime.v8").count(), 1);
        assert!(combined.contains("gateway.wasm"), "{combined}");
        assert!(
            combined
                .contains(r#"value: "{\"rate_limit\": {\"rules\": []}, \"retry_policy\": {}}""#),
            "{combined}"
        );
        // Separate filters (the default): one entry per module.
        assert_eq!(config.render().matches("envoy.wasm.runtime.v8").count(), 2);
        assert_eq!(
            config
                .layout(Layout::SeparateFilters)
                .render()
                .matches("envoy.wasm.runtime.v8")
                .count(),
            2
        );
    }

    #[test]
    fn ports_are_remapped_consistently() {
        let text = "a: { port_value: 10001 }\nb:\n  port_value: 10001\nc: { port_value: 9901 }\nd: { port_value: 0 }\n";
        let out = adapt_example(text);
        let numbers: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("port_value:"))
            .map(|l| {
                l.split("port_value:")
                    .nth(1)
                    .unwrap()
                    .trim()
                    .trim_end_matches(" }")
                    .trim()
            })
            .collect();
        assert_eq!(numbers[0], numbers[1]);
        assert_ne!(numbers[0], numbers[2]);
        assert_ne!(numbers[0], "10001");
        assert_eq!(numbers[3], "0");
    }
}
