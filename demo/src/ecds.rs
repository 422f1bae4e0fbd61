//! The ECDS set-up of `--live`, as an operator has it: a temporary copy of `envoy/ecds/` (the
//! shipped bootstrap watching a directory of its own, the resource template pointed at the
//! module under test), `scripts/surgeguard-apply` run against it, and what Envoy says about an
//! update (its ECDS counters, the filter's log line).
//!
//! Invariants: the shipped `envoy/ecds/` files are only read, never written; a helper started
//! here is stopped and reaped by its `HelperGuard`, also on interruption.

use crate::interrupt::ChildGuard;
use crate::live::{BOOTSTRAP, HELPER, TEMPLATE};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use surgeguard_harness::envoy::{Envoy, Localise};
use surgeguard_harness::output::write_outputs;
use surgeguard_harness::repo_root;

/// Envoy's stats of the filter's ECDS subscription start with this.
pub(crate) const ECDS_PREFIX: &str = "extension_config_discovery.http_filter.surgeguard.";
/// The filter logs this for every configuration it takes.
const ACCEPTED_LOG: &str = "surgeguard: configuration accepted";

/// The shipped ECDS bootstrap pointed at this machine: free ports, the storefront, `live_dir`.
pub fn bootstrap(shipped: &str, live_dir: &Path, upstream_port: u16) -> Result<String, String> {
    Localise::ecds(upstream_port, live_dir).apply(shipped, BOOTSTRAP)
}

/// A temporary copy of the ECDS set-up: `template.yaml` (module under test), `live/`.
pub(crate) struct EcdsDir {
    pub(crate) dir: tempfile::TempDir,
}

impl EcdsDir {
    pub(crate) fn create() -> Result<EcdsDir, String> {
        let dir = tempfile::Builder::new().prefix("surgeguard-live-").tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let template = Localise::module().load(&repo_root().join(TEMPLATE))?;
        write_outputs(dir.path(), &[("template.yaml", template.as_bytes())])?;
        std::fs::create_dir(dir.path().join("live")).map_err(|e| format!("live dir: {e}"))?;
        Ok(EcdsDir { dir })
    }

    pub(crate) fn live_dir(&self) -> PathBuf {
        self.dir.path().join("live")
    }

    /// `scripts/surgeguard-apply` on `config` into this directory (not started: the caller
    /// waits for it); `admin_port` makes it wait for Envoy's verdict.
    pub(crate) fn apply(
        &self,
        config: &Path,
        admin_port: Option<u16>,
        checker: Option<&Path>,
    ) -> Result<Child, String> {
        let mut cmd = Command::new(repo_root().join(HELPER));
        cmd.arg("--template")
            .arg(self.dir.path().join("template.yaml"))
            .arg("--resource")
            .arg(self.live_dir().join("surgeguard.yaml"));
        if let Some(port) = admin_port {
            cmd.args(["--admin", &format!("127.0.0.1:{port}")]);
        }
        if let Some(c) = checker {
            cmd.env("SURGEGUARD_CHECK", c);
        }
        let log = self.dir.path().join(format!("apply-{}.log", admin_port.is_some()));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.arg(config)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{HELPER}: {e}"))
    }

    pub(crate) fn apply_log(&self, with_admin: bool) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("apply-{with_admin}.log"))).unwrap_or_default()
    }
}

/// The validator binary `./build.sh check` builds, once it is built (the first apply builds it):
/// the mid-run apply then validates with it directly (the helper's `SURGEGUARD_CHECK`) instead of
/// asking cargo again while the load runs. `None`: the helper's default (or the user's own
/// `SURGEGUARD_CHECK`).
pub(crate) fn prebuilt_checker() -> Option<PathBuf> {
    if std::env::var_os("SURGEGUARD_CHECK").is_some() {
        return None;
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        candidates.push(dir.join("surgeguard-check"));
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release/surgeguard-check"));
    }
    candidates.push(repo_root().join("target/release/surgeguard-check"));
    candidates.into_iter().find(|c| c.is_file())
}

/// Envoy's ECDS counters for the filter: (update_success, update_rejected, update_failure).
pub(crate) fn ecds_counters(envoy: &Envoy) -> (u64, u64, u64) {
    let stats = envoy.stats_matching("extension_config_discovery");
    let get = |name: &str| stats.get(&format!("{ECDS_PREFIX}{name}")).copied().unwrap_or(0);
    (get("update_success"), get("update_rejected"), get("update_failure"))
}

pub(crate) fn accepted_lines(log: &str) -> Vec<String> {
    log.lines().filter_map(|l| l.find(ACCEPTED_LOG).map(|i| l[i..].trim().to_string())).collect()
}

/// Stops the helper if it is still running (on interruption), then reaps it.
pub(crate) struct HelperGuard(pub(crate) Option<Child>, pub(crate) Option<ChildGuard>);

impl Drop for HelperGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        self.1.take();
    }
}
