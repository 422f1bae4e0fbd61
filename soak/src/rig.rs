//! What the soak runs against: the faulty upstream and a real Envoy with 4 workers, set up as
//! an operator runs surgeguard with live tuning: the shipped ECDS bootstrap (`envoy/ecds/`,
//! `FAIL_RELOAD` with its 100 ms backoff) pointed at a watched directory of its own, every
//! configuration applied with `scripts/surgeguard-apply`. The changes to the shipped bootstrap,
//! made by the harness's [`Localise`] (so a shipped file that changed shape fails loudly):
//! route timeouts (the upstream's stalls end in Envoy's 504 after 1 s; the requests held across
//! a crash, under [`HELD_PREFIX`], may take 10 s), and an access log, Envoy's own
//! record of every request (status, why, and the filter's `x-surgeguard` header), which the
//! checks count against.

use crate::crash::with_crash_on_many_headers;
use std::path::{Path, PathBuf};
use std::process::Command;
use surgeguard_harness::envoy::{json_string, Envoy, Localise, Options};
use surgeguard_harness::faulty::FaultyUpstream;
use surgeguard_harness::repo_root;

pub const WORKERS: u32 = 4;
pub const BOOTSTRAP: &str = "envoy/ecds/envoy.yaml";
pub const TEMPLATE: &str = "envoy/ecds/surgeguard.template.yaml";
pub const HELPER: &str = "scripts/surgeguard-apply";
pub const SHIPPED_CONFIG: &str = "envoy/storefront.json";
/// Envoy's route timeout: a stalled request is answered 504 after this.
pub const ROUTE_TIMEOUT: &str = "1s";
/// Paths under this have a longer route timeout: the requests held across a crash.
pub const HELD_PREFIX: &str = "/held/";
const HELD_TIMEOUT: &str = "10s";
/// The listener's `stat_prefix` in the shipped bootstrap.
pub const STAT_PREFIX: &str = "storefront";
/// One access log line per request (start as Unix seconds, status, why, flags, the filter's
/// header): these fields, separated by [`LOG_SEPARATOR`].
const LOG_FORMAT: &str =
    "%START_TIME(%s.%3f)%|%RESPONSE_CODE%|%RESPONSE_CODE_DETAILS%|%RESPONSE_FLAGS%|%RESP(X-SURGEGUARD)%";
pub const LOG_SEPARATOR: char = '|';

pub struct Rig {
    // Field order is drop order: Envoy stops before its upstream and its files go.
    pub envoy: Envoy,
    pub upstream: FaultyUpstream,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

impl Rig {
    /// Writes the crashing module and the first configuration, starts the upstream and Envoy.
    pub fn start(initial_config: &str) -> Result<Rig, String> {
        let dir = tempfile::Builder::new().prefix("surgeguard-soak-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let wasm = surgeguard_harness::wasm_path();
        let module = std::fs::read(&wasm).map_err(|e| format!("{}: {e} (run ./build.sh)", wasm.display()))?;
        let crashing = dir.path().join("surgeguard-crash-on-demand.wasm");
        std::fs::write(&crashing, with_crash_on_many_headers(&module)?).map_err(|e| format!("write module: {e}"))?;
        let module_line = |path: &Path| format!("filename: {}", json_string(&path.display().to_string()));
        let template = Localise {
            replacements: vec![("filename: dist/surgeguard.wasm".into(), module_line(&crashing))],
            ..Localise::default()
        }
        .load(&repo_root().join(TEMPLATE))?;
        std::fs::write(dir.path().join("template.yaml"), template).map_err(|e| format!("template: {e}"))?;
        std::fs::create_dir(dir.path().join("live")).map_err(|e| format!("live dir: {e}"))?;
        let rig_dir = RigDir(dir.path().to_path_buf());
        // Envoy reads the resource at start-up: it must be there first.
        let first = rig_dir.apply(initial_config, "initial", None)?;
        if !first.accepted {
            return Err(format!("{HELPER} on the first configuration failed:\n{}", first.output));
        }
        let upstream = FaultyUpstream::start().map_err(|e| format!("upstream: {e}"))?;
        let yaml = bootstrap(&dir.path().join("live"), upstream.port, &access_log_path(dir.path()))?;
        let opts = Options { concurrency: WORKERS, ..Options::default() };
        let envoy = Envoy::start(&yaml, &opts).map_err(|e| format!("envoy: {}\n{}", e.message, e.log))?;
        let port = envoy.listener_port();
        if port == 0 {
            return Err(format!("envoy has no listener port\n{}", envoy.log()));
        }
        Ok(Rig { envoy, upstream, port, dir })
    }

    pub fn files(&self) -> RigDir {
        RigDir(self.dir.path().to_path_buf())
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(access_log_path(self.dir.path())).unwrap_or_default()
    }
}

fn access_log_path(dir: &Path) -> PathBuf {
    dir.join("access.log")
}

/// The shipped ECDS bootstrap, localised, with the route timeout and the access log.
fn bootstrap(live_dir: &Path, upstream_port: u16, access_log: &Path) -> Result<String, String> {
    let mut localise = Localise::ecds(upstream_port, live_dir);
    localise.replacements.push((
        "- match: { prefix: \"/\" }\n                route: { cluster: storefront }".into(),
        format!(
            "- match: {{ prefix: \"{HELD_PREFIX}\" }}\n                route: {{ cluster: storefront, timeout: {HELD_TIMEOUT} }}\n              \
             - match: {{ prefix: \"/\" }}\n                route: {{ cluster: storefront, timeout: {ROUTE_TIMEOUT} }}"
        ),
    ));
    localise.replacements.push((
        format!("stat_prefix: {STAT_PREFIX}\n"),
        format!(
            r#"stat_prefix: {STAT_PREFIX}
          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format: {{ text_format_source: {{ inline_string: "{LOG_FORMAT}\n" }} }}
"#,
            path = json_string(&access_log.display().to_string()),
        ),
    ));
    localise.load(&repo_root().join(BOOTSTRAP))
}

/// The rig's files: the resource template, the watched directory, the pushed configurations.
pub struct RigDir(PathBuf);

/// What `scripts/surgeguard-apply` said about one push.
#[derive(Debug, Clone)]
pub struct Applied {
    /// It exited 0: Envoy took the configuration (with `admin_port`), or it was rendered.
    pub accepted: bool,
    pub output: String,
}

impl RigDir {
    /// `scripts/surgeguard-apply` on `json`, bypassing its validation (`SURGEGUARD_CHECK=true`),
    /// as a hand edit would, so that the module in Envoy is what refuses a bad one. With
    /// `admin_port` it waits for Envoy's verdict.
    pub fn apply(&self, json: &str, name: &str, admin_port: Option<u16>) -> Result<Applied, String> {
        let config = self.0.join(format!("{name}.json"));
        std::fs::write(&config, json).map_err(|e| format!("{}: {e}", config.display()))?;
        let mut cmd = Command::new(repo_root().join(HELPER));
        cmd.arg("--template")
            .arg(self.0.join("template.yaml"))
            .arg("--resource")
            .arg(self.0.join("live/surgeguard.yaml"))
            .env("SURGEGUARD_CHECK", "true");
        if let Some(port) = admin_port {
            cmd.args(["--admin", &format!("127.0.0.1:{port}")]);
        }
        let out = cmd.arg(&config).current_dir(repo_root()).output().map_err(|e| format!("{HELPER}: {e}"))?;
        let output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok(Applied { accepted: out.status.success(), output })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_bootstrap_gets_a_route_timeout_and_an_access_log() {
        let yaml = bootstrap(Path::new("/tmp/x/live"), 4321, Path::new("/tmp/x/access.log")).unwrap();
        assert!(yaml.contains("route: { cluster: storefront, timeout: 1s }"));
        assert!(yaml
            .contains("- match: { prefix: \"/held/\" }\n                route: { cluster: storefront, timeout: 10s }"));
        assert!(yaml.contains("path: \"/tmp/x/access.log\""));
        assert!(yaml.contains("%RESP(X-SURGEGUARD)%"));
        assert!(yaml.contains("port_value: 4321") && yaml.contains("/tmp/x/live"));
    }
}
