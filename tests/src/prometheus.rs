//! A real Prometheus (Debian's `prometheus`) scraping Envoys' `/stats/prometheus` every second,
//! queried in PromQL over its HTTP API: what an operator's dashboards and alerts would see.
//!
//! It runs on a free port of 127.0.0.1 with its store in a fresh folder, so it never meets a
//! system Prometheus. The binary comes from `PROMETHEUS_BIN`, which the Makefile sets (`make
//! prometheus` installs it); a missing one fails the test saying so.
//!
//! Prometheus starts scraping about five seconds after it starts (it applies new targets at
//! most every five seconds), so start it before the Envoys it scrapes, on admin ports chosen
//! up front ([`crate::envoy_config::TestEnvoyConfig::admin_port`]): the wait then overlaps
//! their start and the test's traffic.

use crate::client;
use crate::server_process::ServerProcess;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The scrape job every target belongs to.
pub const JOB: &str = "envoy";

/// A series' labels, `__name__` included when the query keeps it.
pub type Labels = BTreeMap<String, String>;

/// An Envoy admin API to scrape, and labels Prometheus adds to each of its series.
#[derive(Debug, Clone)]
pub struct Target {
    /// The admin API's port on 127.0.0.1.
    pub admin_port: u16,
    /// Target labels, e.g. `layout="gateway"`.
    pub labels: Vec<(String, String)>,
}

impl Target {
    /// The admin API on `admin_port`, its series labelled with `labels`.
    pub fn new(admin_port: u16, labels: &[(&str, &str)]) -> Self {
        Self {
            admin_port,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// A running Prometheus; killed when dropped (its log printed if the test is failing).
#[derive(Debug)]
pub struct PrometheusServer {
    process: ServerProcess,
    targets: usize,
}

impl PrometheusServer {
    /// Starts one scraping each target's `/stats/prometheus` every second, and waits until it
    /// is ready (`/-/ready`).
    pub fn start(targets: &[Target]) -> PrometheusServer {
        let bin = crate::server_process::binary(
            "PROMETHEUS_BIN",
            Path::new("/usr/bin/prometheus"),
            "prometheus (Debian)",
            "make prometheus",
        );
        let dir = crate::envoy::fresh_dir();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets)).expect("write the Prometheus config");
        let port = crate::free_port();
        let mut command = Command::new(&bin);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let ready = |port| {
            client::get("/-/ready")
                .timeout(Duration::from_secs(2))
                .try_send(port)
                .is_ok_and(|r| r.status == 200)
        };
        PrometheusServer {
            process: ServerProcess::start_probed("prometheus", command, dir, port, ready),
            targets: targets.len(),
        }
    }

    /// Its HTTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.process.port()
    }

    /// The answer to an instant PromQL query now, sorted by labels: each series' labels and
    /// value. Fails the test if Prometheus refuses the query or answers other than a vector.
    pub fn query(&self, promql: &str) -> Vec<(Labels, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encoded(promql));
        let response = client::get(&path).send(self.port());
        let doc = response.json();
        assert!(
            response.status == 200 && doc["status"] == "success",
            "Prometheus refused {promql:?}: {} {}",
            response.status,
            response.text()
        );
        assert_eq!(
            doc["data"]["resultType"], "vector",
            "{promql:?} is not a vector: {doc}"
        );
        let mut series: Vec<(Labels, f64)> = doc["data"]["result"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                // [ <evaluation time>, "<value>" ]
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no value in {s} (query {promql:?})"));
                (labels, value)
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    /// [`PrometheusServer::query`], its series [`keyed`] by the labels named in `by`.
    pub fn query_by(&self, promql: &str, by: &[&str]) -> BTreeMap<String, f64> {
        keyed(&self.query(promql), by)
    }

    /// The answers to `queries` once the values Envoy reports have settled: equal in two
    /// scrapes in a row of every target, the first of them begun at least [`STATS_LAG`] after
    /// `traffic_ended` (our filters hand metric changes to Envoy about once a second). Fails
    /// the test if they have not settled within 20 s.
    ///
    /// [`STATS_LAG`]: crate::envoy::STATS_LAG
    pub fn settled(&self, traffic_ended: SystemTime, queries: &[&str]) -> Vec<Vec<(Labels, f64)>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut after = seconds(traffic_ended + crate::envoy::STATS_LAG);
        let mut previous: Option<Vec<Vec<(Labels, f64)>>> = None;
        loop {
            after = self.wait_for_scrape_after(after, deadline);
            let answers: Vec<Vec<(Labels, f64)>> = queries.iter().map(|q| self.query(q)).collect();
            if previous.as_ref() == Some(&answers) {
                return answers;
            }
            assert!(
                Instant::now() < deadline,
                "the answers did not settle within 20 s; last: {answers:?}"
            );
            previous = Some(answers);
        }
    }

    /// Waits until every target's last scrape began after `after` (Unix seconds) and
    /// succeeded; returns the latest such scrape's start.
    fn wait_for_scrape_after(&self, after: f64, deadline: Instant) -> f64 {
        let promql = format!("timestamp(up{{job=\"{JOB}\"}} == 1) > {after:.3}");
        loop {
            let fresh = self.query(&promql);
            if fresh.len() == self.targets {
                return fresh.iter().map(|(_, t)| *t).fold(after, f64::max);
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has not scraped every target since {after:.3}: {:?}",
                self.query(&format!("timestamp(up{{job=\"{JOB}\"}})"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// Series that differ only in the labels named in `by`, each as those labels' values (joined
/// by `/` when there are several) and its value: `{"failure": 2.0, "success": 2.0}` for the
/// answer to `sum by (outcome) (...)` with `by = ["outcome"]`.
pub fn keyed(series: &[(Labels, f64)], by: &[&str]) -> BTreeMap<String, f64> {
    series
        .iter()
        .map(|(labels, value)| {
            let key: Vec<&str> = by
                .iter()
                .map(|l| labels.get(*l).map_or("", String::as_str))
                .collect();
            (key.join("/"), *value)
        })
        .collect()
}

/// Seconds since the Unix epoch, as Prometheus writes timestamps.
fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The configuration: one job scraping every target's `/stats/prometheus` each second.
fn scrape_config(targets: &[Target]) -> String {
    // A timeout under the interval, so that a slow scrape never overlaps the next.
    let mut config = format!(
        "global: {{ scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s }}\n\
         scrape_configs:\n\
         - job_name: {JOB}\n  metrics_path: /stats/prometheus\n  static_configs:\n"
    );
    for target in targets {
        let labels: Vec<String> = target
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {}", serde_json::Value::String(v.clone())))
            .collect();
        let _ = writeln!(
            config,
            "  - {{ targets: [\"127.0.0.1:{}\"], labels: {{ {} }} }}",
            target.admin_port,
            labels.join(", ")
        );
    }
    config
}

/// `text` with every byte but the URL-unreserved ones percent-encoded, for a query string.
fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_is_percent_encoded_for_a_query_string() {
        assert_eq!(
            percent_encoded(r#"sum by (outcome) (x{breaker="a b"}) > 1.5"#),
            "sum%20by%20%28outcome%29%20%28x%7Bbreaker%3D%22a%20b%22%7D%29%20%3E%201.5"
        );
    }

    #[test]
    fn the_scrape_config_lists_each_target_with_its_labels() {
        let config = scrape_config(&[
            Target::new(20001, &[("layout", "separate")]),
            Target::new(20002, &[("layout", "gateway")]),
        ]);
        assert!(config.contains("scrape_interval: 1s"), "{config}");
        assert!(
            config.contains("metrics_path: /stats/prometheus"),
            "{config}"
        );
        assert!(
            config
                .contains(r#"- { targets: ["127.0.0.1:20001"], labels: { layout: "separate" } }"#),
            "{config}"
        );
        assert!(
            config.contains(r#"- { targets: ["127.0.0.1:20002"], labels: { layout: "gateway" } }"#),
            "{config}"
        );
    }
}
