//! Builds the bench's own filters (`bench/empty-filter`, `bench/probe-filter`: standalone
//! crates) exactly as `./build.sh` builds surgeguard: release profile (lto, opt-level 3,
//! codegen-units 1, panic abort), wasm32-wasip1, then
//! `wasm-opt -all -O3 --strip-debug --strip-producers`.

use crate::build_profile::{cargo_release_build, release_profile_env, wasm_opt_flags, CargoBuild};
use crate::procs::{run_to_completion, Pinned};
use std::path::{Path, PathBuf};
use std::time::Duration;
use surgeguard_harness::output::write_outputs;

/// One of the bench's filter crates: its folder under `bench/` and its library name.
pub struct Crate {
    pub dir: &'static str,
    pub lib: &'static str,
}

pub const EMPTY: Crate = Crate { dir: "empty-filter", lib: "surgeguard_bench_empty_filter" };
pub const PROBE: Crate = Crate { dir: "probe-filter", lib: "surgeguard_bench_probe_filter" };

/// A built module, and whether wasm-opt ran on it.
pub struct Built {
    pub module: PathBuf,
    pub wasm_opt: bool,
    /// The release profile it was built with (`CARGO_PROFILE_RELEASE_*`, from the root crate).
    pub profile: Vec<(String, String)>,
    pub wasm_opt_flags: Vec<String>,
}

/// Builds the crate like `./build.sh` builds surgeguard and writes the module into `out_dir`.
pub fn build(c: &Crate, root: &Path, out_dir: &Path) -> Result<Built, String> {
    // The root crate's release profile, so a change there (e.g. opt-level) applies here too.
    let root_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let profile = release_profile_env(&root_toml);
    let target_dir =
        cargo_release_build(root, &CargoBuild { dir: c.dir, target: Some("wasm32-wasip1"), env: profile.clone() })?;
    let raw = target_dir.join(format!("wasm32-wasip1/release/{}.wasm", c.lib));
    let optimised = target_dir.join(format!("wasm32-wasip1/release/{}.opt.wasm", c.lib));
    let build_sh = std::fs::read_to_string(root.join("build.sh")).unwrap_or_default();
    let wasm_opt_flags = wasm_opt_flags(&build_sh);
    let mut opt_args = wasm_opt_flags.clone();
    opt_args.extend([raw.display().to_string(), "-o".into(), optimised.display().to_string()]);
    let wasm_opt = run_to_completion(&Pinned::new("", "wasm-opt", &opt_args), Duration::from_secs(120)).is_ok();
    // Like ./build.sh: without wasm-opt the module ships unoptimised (and so does surgeguard).
    let built = if wasm_opt { &optimised } else { &raw };
    let bytes = std::fs::read(built).map_err(|e| format!("{}: {e}", built.display()))?;
    let name = format!("{}.wasm", c.dir.replace('-', "_"));
    write_outputs(out_dir, &[(&name, &bytes)])?;
    Ok(Built { module: out_dir.join(name), wasm_opt, profile, wasm_opt_flags })
}
