//! Keeps the bench's own filters built exactly like surgeguard: the root `Cargo.toml`'s
//! `[profile.release]` is passed to their builds as `CARGO_PROFILE_RELEASE_*` variables, and
//! the `wasm-opt` flags are read from `build.sh`. So when the lead changes either (say
//! `opt-level = "z"`), the empty filter follows and the comparison stays fair.
//!
//! [`cargo_release_build`] builds any of the bench's standalone crates (the filters, the
//! profiler), each into its own target dir under `target/`.

use crate::procs::{run_to_completion, Pinned};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One of the bench's standalone crates, built in release mode.
pub struct CargoBuild<'a> {
    /// Its folder under `bench/`.
    pub dir: &'a str,
    /// `--target`, when not the host.
    pub target: Option<&'a str>,
    /// Extra environment variables (the release profile).
    pub env: Vec<(String, String)>,
}

/// Builds `bench/<dir>` into `target/bench-<dir>`; returns that target dir.
pub fn cargo_release_build(root: &Path, b: &CargoBuild) -> Result<PathBuf, String> {
    let target_dir = root.join(format!("target/bench-{}", b.dir));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args: Vec<String> = vec!["build".into(), "-q".into(), "--release".into()];
    if let Some(t) = b.target {
        args.extend(["--target".into(), t.into()]);
    }
    args.extend([
        "--manifest-path".into(),
        root.join(format!("bench/{}/Cargo.toml", b.dir)).display().to_string(),
        "--target-dir".into(),
        target_dir.display().to_string(),
    ]);
    let mut cmd = Pinned::new("", &cargo, &args);
    cmd.env = b.env.clone();
    run_to_completion(&cmd, Duration::from_secs(600)).map_err(|e| format!("building bench/{}: {e}", b.dir))?;
    Ok(target_dir)
}

/// `[profile.release]` of a Cargo.toml as (KEY, value) pairs for `CARGO_PROFILE_RELEASE_KEY`.
pub fn release_profile_env(cargo_toml: &str) -> Vec<(String, String)> {
    let mut in_section = false;
    let mut out = Vec::new();
    for line in cargo_toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            in_section = line == "[profile.release]";
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let key = k.trim().replace('-', "_").to_ascii_uppercase();
            let value = v.trim().trim_matches('"').to_string();
            if !key.is_empty() && !value.is_empty() {
                out.push((format!("CARGO_PROFILE_RELEASE_{key}"), value));
            }
        }
    }
    out
}

/// The flags `build.sh` gives `wasm-opt` (between `wasm-opt` and the input file), or the ones
/// it used when this was written.
pub fn wasm_opt_flags(build_sh: &str) -> Vec<String> {
    let found = build_sh.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix("wasm-opt ")?;
        let flags: Vec<String> =
            rest.split_whitespace().take_while(|w| w.starts_with('-') && *w != "-o").map(str::to_string).collect();
        (!flags.is_empty()).then_some(flags)
    });
    found.unwrap_or_else(|| {
        ["-all", "-O3", "--strip-debug", "--strip-producers"].iter().map(|s| s.to_string()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_release_profile_and_nothing_else() {
        let toml = r#"
[package]
name = "x"
opt-level = 1

[profile.release]
lto = true
opt-level = "z"   # size
codegen-units = 1
panic = "abort"

[profile.dev]
opt-level = 0
"#;
        assert_eq!(
            release_profile_env(toml),
            vec![
                ("CARGO_PROFILE_RELEASE_LTO".to_string(), "true".to_string()),
                ("CARGO_PROFILE_RELEASE_OPT_LEVEL".into(), "z".into()),
                ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS".into(), "1".into()),
                ("CARGO_PROFILE_RELEASE_PANIC".into(), "abort".into()),
            ]
        );
    }

    #[test]
    fn reads_the_wasm_opt_flags_from_build_sh() {
        let sh = "  if command -v wasm-opt >/dev/null 2>&1; then\n    # comment: wasm-opt -O0\n    wasm-opt -all -Oz --strip-debug \"$out\" -o dist/surgeguard.wasm\n";
        assert_eq!(wasm_opt_flags(sh), vec!["-all", "-Oz", "--strip-debug"]);
        assert_eq!(wasm_opt_flags("no such line")[1], "-O3");
    }
}
