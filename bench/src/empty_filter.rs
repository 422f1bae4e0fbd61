//! Builds the bench's own filters (`bench/empty-filter`, `bench/probe-filter`: standalone
//! crates) exactly as `./build.sh` builds surgeguard: release profile (lto, opt-level 3,
//! codegen-units 1, panic abort), wasm32-wasip1, then
//! `wasm-opt -all -O3 --strip-debug --strip-producers`.

use crate::build_profile::{release_profile_env, wasm_opt_flags};
use crate::procs::{run_to_completion, Pinned};
use std::path::{Path, PathBuf};
use std::time::Duration;

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

pub fn build(c: &Crate, root: &Path, out_dir: &Path) -> Result<Built, String> {
    let manifest = root.join(format!("bench/{}/Cargo.toml", c.dir));
    let target_dir = root.join(format!("target/bench-{}", c.dir));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args: Vec<String> = vec![
        "build".into(),
        "-q".into(),
        "--release".into(),
        "--target".into(),
        "wasm32-wasip1".into(),
        "--manifest-path".into(),
        manifest.display().to_string(),
        "--target-dir".into(),
        target_dir.display().to_string(),
    ];
    // The root crate's release profile, so a change there (e.g. opt-level) applies here too.
    let root_toml = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let profile = release_profile_env(&root_toml);
    let mut cmd = Pinned::new("", &cargo, &args);
    cmd.env = profile.clone();
    run_to_completion(&cmd, Duration::from_secs(600)).map_err(|e| format!("building bench/{}: {e}", c.dir))?;
    let raw = target_dir.join(format!("wasm32-wasip1/release/{}.wasm", c.lib));
    std::fs::create_dir_all(out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let module = out_dir.join(format!("{}.wasm", c.dir.replace('-', "_")));
    let build_sh = std::fs::read_to_string(root.join("build.sh")).unwrap_or_default();
    let wasm_opt_flags = wasm_opt_flags(&build_sh);
    let mut opt_args = wasm_opt_flags.clone();
    opt_args.extend([raw.display().to_string(), "-o".into(), module.display().to_string()]);
    let wasm_opt = run_to_completion(&Pinned::new("", "wasm-opt", &opt_args), Duration::from_secs(120)).is_ok();
    if !wasm_opt {
        // Like ./build.sh: without wasm-opt the module ships unoptimised (and so does surgeguard).
        std::fs::copy(&raw, &module).map_err(|e| format!("{}: {e}", raw.display()))?;
    }
    Ok(Built { module, wasm_opt, profile, wasm_opt_flags })
}
