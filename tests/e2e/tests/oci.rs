//! `scripts/oci.sh` packages the module as an OCI image Istio can pull: pushed with skopeo into a
//! local registry (Debian's docker-registry on 127.0.0.1, storage in a temp dir), pulled back,
//! and the module inside is byte for byte the one built.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use surgeguard_harness::{repo_root, wasm_path};

/// A docker-registry process; killed on drop, also when a test fails.
struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("addr").port()
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: registry\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display()
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-registry ({e}): ./build.sh test installs it (Debian package docker-registry)")
            });
        let mut registry = Registry { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(15);
        while http_status(port, "/v2/") != Some(200) {
            let log = std::fs::read_to_string(registry._dir.path().join("registry.log")).unwrap_or_default();
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited ({status}):\n{log}");
            }
            assert!(Instant::now() < deadline, "docker-registry not ready on {port}:\n{log}");
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {what} ({e}): ./build.sh test installs it"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("read")).expect("JSON")
}

fn blob(layout: &Path, digest: &str) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

#[test]
fn the_image_pushed_to_a_registry_pulls_back_with_the_module_byte_for_byte() {
    let registry = Registry::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let reference = format!("127.0.0.1:{}/surgeguard:test", registry.port);

    let pushed = run(
        Command::new(repo_root().join("scripts/oci.sh"))
            .arg(&reference)
            .env("SURGEGUARD_WASM", wasm_path())
            .env("OCI_LAYOUT", tmp.path().join("layout")),
        "scripts/oci.sh",
    );
    let digest = String::from_utf8_lossy(&pushed.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "prints the digest: {digest:?}");

    let pulled = tmp.path().join("pulled");
    run(
        Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{reference}"),
            &format!("oci:{}:test", pulled.display()),
        ]),
        "skopeo",
    );

    // What Istio's fetcher expects of the "compat" variant: an OCI manifest whose single layer
    // is a tar+gzip holding plugin.wasm.
    let index = json(&pulled.join("index.json"));
    assert_eq!(index["manifests"][0]["digest"].as_str(), Some(digest.as_str()), "same manifest");
    let manifest = json(&blob(&pulled, &digest));
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.image.config.v1+json");
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "one layer");
    assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer = blob(&pulled, layers[0]["digest"].as_str().expect("layer digest"));

    let listing = run(Command::new("tar").arg("-tzf").arg(&layer), "tar");
    assert_eq!(String::from_utf8_lossy(&listing.stdout).trim(), "plugin.wasm", "only plugin.wasm");
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).expect("dir");
    run(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&out), "tar");
    let module = std::fs::read(out.join("plugin.wasm")).expect("plugin.wasm");
    assert!(
        module == std::fs::read(wasm_path()).expect("the built module"),
        "the pulled plugin.wasm is the built module, byte for byte"
    );
    let config = json(&blob(&pulled, manifest["config"]["digest"].as_str().expect("config")));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(1));
}

#[test]
fn the_same_module_always_packs_to_the_same_digest() {
    // Reproducible images: a WasmPlugin pinned by digest keeps matching a rebuilt image.
    let tmp = tempfile::tempdir().expect("tempdir");
    let digest = |name: &str| {
        let layout = tmp.path().join(name);
        run(
            Command::new(repo_root().join("scripts/oci.sh"))
                .env("SURGEGUARD_WASM", wasm_path())
                .env("OCI_LAYOUT", &layout),
            "scripts/oci.sh",
        );
        json(&layout.join("index.json"))["manifests"][0]["digest"].clone()
    };
    let first = digest("a");
    std::thread::sleep(Duration::from_millis(1100)); // a different second: no timestamps inside
    assert_eq!(first, digest("b"));
}
