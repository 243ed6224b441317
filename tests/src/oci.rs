//! What `make dist` ships, and the way a mesh gets it: a local OCI registry (Debian's
//! `docker-registry`), a registry client (`skopeo`), and the rules Istio's image fetcher
//! applies to find `plugin.wasm` in what it pulls.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The modules `make dist` ships.
pub const DIST_MODULES: [&str; 5] = [
    "jwt_auth",
    "rate_limit",
    "circuit_breaker",
    "retry_policy",
    "gateway",
];

/// The `dist/` folder; fails the test, saying how to make it, if it is missing.
pub fn dist_dir() -> PathBuf {
    let dir = crate::repo_root().join("dist");
    assert!(
        dir.join("SHA256SUMS").is_file(),
        "{} has no SHA256SUMS: run `make dist`",
        dir.display()
    );
    dir
}

/// The sha256 `dist/SHA256SUMS` lists for a file of `dist/` (`jwt_auth.wasm`, `images/x.tar`).
pub fn listed_sha256(file: &str) -> String {
    let sums = std::fs::read_to_string(dist_dir().join("SHA256SUMS")).expect("read SHA256SUMS");
    sums.lines()
        .find_map(|line| {
            let (sum, name) = line.split_once("  ")?;
            (name == file).then(|| sum.to_owned())
        })
        .unwrap_or_else(|| panic!("dist/SHA256SUMS does not list {file}:\n{sums}"))
}

/// Lower-case hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs a command to completion; fails the test with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (is it installed? `make dist-tools`)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{shown} failed:\n{text}");
    text
}

/// A Distribution registry (Debian's `docker-registry`) on loopback, storing in a fresh
/// folder; stopped and removed when dropped.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Registry {
    /// Starts one on a free port and waits until it answers `/v2/`.
    pub fn start() -> Registry {
        let dir = crate::envoy::fresh_dir();
        let port = crate::free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.join("storage").display()
            ),
        )
        .expect("write the registry configuration");
        let log = std::fs::File::create(dir.join("registry.log")).expect("create the registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start docker-registry: {e} (`make dist-tools` installs it)")
            });
        let registry = Registry { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = crate::client::get("/v2/")
                .timeout(Duration::from_secs(1))
                .try_send(port);
            if answer.is_ok_and(|r| r.status == 200) {
                return registry;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not answer /v2/ on port {port}:\n{}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The manifest format an image is pushed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Docker's image manifest v2 schema 2, as `docker push` writes it.
    Docker,
    /// An OCI image manifest, as buildah and `skopeo --format oci` write it.
    Oci,
}

impl Format {
    /// The media type of the layer holding `plugin.wasm` in this format (gzipped tar both).
    pub fn layer_type(self) -> &'static str {
        match self {
            Format::Docker => DOCKER_LAYER,
            Format::Oci => OCI_LAYER,
        }
    }
}

/// Pushes the `docker save` tarball at `archive` to `reference` (`host/repo:tag`) with skopeo.
pub fn push(archive: &Path, reference: &str, format: Format) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
    if format == Format::Oci {
        cmd.args(["--format", "oci"]);
    }
    cmd.arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("docker://{reference}"));
    run(&mut cmd);
}

/// Pulls `reference` with skopeo into a `dir:` layout (manifest.json and blobs named by
/// their digest) in a fresh folder, and returns the folder.
pub fn pull(reference: &str, into: &Path) -> PulledImage {
    let _ = std::fs::remove_dir_all(into);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("dir:{}", into.display())));
    PulledImage {
        dir: into.to_owned(),
    }
}

/// An image as a registry served it: its manifest and blobs.
#[derive(Debug)]
pub struct PulledImage {
    dir: PathBuf,
}

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";

impl PulledImage {
    /// The manifest as served.
    pub fn manifest(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("manifest.json")).expect("manifest.json");
        serde_json::from_str(&text).expect("the manifest is JSON")
    }

    /// The media types of the layers, in order.
    pub fn layer_types(&self) -> Vec<String> {
        self.manifest()["layers"]
            .as_array()
            .map(|layers| {
                layers
                    .iter()
                    .map(|l| l["mediaType"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A blob by its digest (`sha256:<hex>`), after checking the content has that digest.
    fn blob(&self, digest: &str) -> Result<Vec<u8>, String> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("unsupported digest {digest}"))?;
        let bytes = std::fs::read(self.dir.join(hex)).map_err(|e| format!("blob {hex}: {e}"))?;
        let actual = sha256_hex(&bytes);
        if actual != hex {
            return Err(format!("blob {hex} has sha256 {actual}"));
        }
        Ok(bytes)
    }

    /// `plugin.wasm` as Istio's fetcher finds it (istio/istio `pkg/wasm/imagefetcher.go`): a
    /// Docker manifest's last layer must be a gzipped Docker layer; otherwise the "compat"
    /// variant's last layer must be a gzipped OCI layer; otherwise the "oci" variant needs
    /// exactly two layers, one of them the raw module. In the tar layers the first entry
    /// whose base name is `plugin.wasm` is the module.
    pub fn plugin_as_istio_finds_it(&self) -> Result<Vec<u8>, String> {
        let manifest = self.manifest();
        let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
        let last = layers.last().ok_or("the image has no layer")?;
        let last_type = last["mediaType"].as_str().unwrap_or_default();
        let last_digest = last["digest"].as_str().unwrap_or_default();
        if manifest["mediaType"] == DOCKER_MANIFEST {
            if last_type != DOCKER_LAYER {
                return Err(format!("Docker image whose last layer is {last_type}"));
            }
            return plugin_in_layer(&self.blob(last_digest)?);
        }
        if last_type == OCI_LAYER {
            return plugin_in_layer(&self.blob(last_digest)?);
        }
        if layers.len() == 2
            && let Some(wasm) = layers.iter().find(|l| l["mediaType"] == WASM_LAYER)
        {
            return self.blob(wasm["digest"].as_str().unwrap_or_default());
        }
        Err(format!(
            "neither compat variant nor two-layer oci variant: layers {:?}",
            self.layer_types()
        ))
    }
}

/// The first `plugin.wasm` (by base name) in a gzipped tar layer.
fn plugin_in_layer(gzipped: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    let entries = archive
        .entries()
        .map_err(|e| format!("the layer is not tar+gzip: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        if path.file_name().is_some_and(|n| n == "plugin.wasm") {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("cannot read plugin.wasm: {e}"))?;
            return Ok(bytes);
        }
    }
    Err("plugin.wasm not found in the layer".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An image folder as `skopeo copy dir:` writes it, from (media type, blob) layers.
    fn image(manifest_type: &str, layers: &[(&str, Vec<u8>)]) -> PulledImage {
        let dir = crate::envoy::scratch_dir();
        let mut listed = Vec::new();
        for (media_type, blob) in layers {
            let hex = sha256_hex(blob);
            std::fs::write(dir.join(&hex), blob).unwrap();
            listed.push(serde_json::json!({
                "mediaType": media_type, "digest": format!("sha256:{hex}"), "size": blob.len()
            }));
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": manifest_type, "layers": listed
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
        PulledImage { dir }
    }

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, content) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(content.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *content).unwrap();
        }
        let tar = builder.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        gz.finish().unwrap()
    }

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn the_compat_layouts_yield_plugin_wasm_wherever_it_sits_in_the_layer() {
        let layer = tar_gz(&[("etc/readme", b"x"), ("plugin.wasm", MODULE)]);
        let docker = image(DOCKER_MANIFEST, &[(DOCKER_LAYER, layer.clone())]);
        assert_eq!(docker.plugin_as_istio_finds_it().unwrap(), MODULE);
        let nested = tar_gz(&[("some/dir/plugin.wasm", MODULE)]);
        let oci = image(OCI_MANIFEST, &[(OCI_LAYER, nested)]);
        assert_eq!(oci.plugin_as_istio_finds_it().unwrap(), MODULE);
    }

    #[test]
    fn a_single_raw_wasm_layer_is_refused_as_istio_refuses_it() {
        // The layout that broke Higress's users (higress#4528).
        let raw = image(OCI_MANIFEST, &[(WASM_LAYER, MODULE.to_vec())]);
        let why = raw.plugin_as_istio_finds_it().unwrap_err();
        assert!(why.contains("neither compat"), "{why}");
        // The two-layer "oci" variant is accepted.
        let config = b"{}".to_vec();
        let two = image(
            OCI_MANIFEST,
            &[
                ("application/vnd.module.wasm.config.v1+json", config),
                (WASM_LAYER, MODULE.to_vec()),
            ],
        );
        assert_eq!(two.plugin_as_istio_finds_it().unwrap(), MODULE);
    }

    #[test]
    fn wrong_layer_types_missing_modules_and_corrupt_blobs_are_refused() {
        let layer = tar_gz(&[("plugin.wasm", MODULE)]);
        let mixed = image(DOCKER_MANIFEST, &[(OCI_LAYER, layer.clone())]);
        assert!(mixed.plugin_as_istio_finds_it().is_err());
        let elsewhere = image(
            DOCKER_MANIFEST,
            &[(DOCKER_LAYER, tar_gz(&[("module.wasm", MODULE)]))],
        );
        assert!(
            elsewhere
                .plugin_as_istio_finds_it()
                .unwrap_err()
                .contains("not found")
        );
        let corrupt = image(DOCKER_MANIFEST, &[(DOCKER_LAYER, layer.clone())]);
        std::fs::write(corrupt.dir.join(sha256_hex(&layer)), b"tampered").unwrap();
        assert!(
            corrupt
                .plugin_as_istio_finds_it()
                .unwrap_err()
                .contains("has sha256")
        );
    }
}
