//! The Envoy configurations of the two runs, both made from the shipped `envoy/demo.yaml`: the
//! "with" run uses it as shipped (pointed at this machine by the harness), the "without" run is
//! the same file with the surgeguard filter's block removed, so the two differ only by the filter.
//!
//! Invariant: the block removed is exactly the lines from [`FILTER_BEGIN`] to [`FILTER_END`];
//! a config without both markers, in that order, is an error (never silently unfiltered).

use std::path::Path;

pub const FILTER_BEGIN: &str = "# -- surgeguard filter: begin";
pub const FILTER_END: &str = "# -- surgeguard filter: end";

/// `yaml` without the lines between the filter markers (inclusive).
pub fn without_filter(yaml: &str) -> Result<String, String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let begin = lines.iter().position(|l| l.trim() == FILTER_BEGIN);
    let end = lines.iter().position(|l| l.trim() == FILTER_END);
    let (Some(begin), Some(end)) = (begin, end) else {
        return Err(format!("expected the lines `{FILTER_BEGIN}` and `{FILTER_END}` around the surgeguard filter"));
    };
    if end <= begin {
        return Err(format!("`{FILTER_END}` comes before `{FILTER_BEGIN}`"));
    }
    let mut out: Vec<&str> = lines[..begin].to_vec();
    out.extend_from_slice(&lines[end + 1..]);
    Ok(out.join("\n") + "\n")
}

/// The shipped config at `path`, pointed at the storefront on `upstream_port`, with or without
/// the filter.
pub fn load(path: &Path, upstream_port: u16, with_filter: bool) -> Result<String, String> {
    let yaml = surgeguard_harness::envoy::load_shipped(path, upstream_port)?;
    if with_filter {
        // Checked here too, so a config that lost its markers fails both runs, not just one.
        without_filter(&yaml)?;
        Ok(yaml)
    } else {
        without_filter(&yaml)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_the_filter_keeps_everything_else() {
        let yaml =
            "a:\n  # -- surgeguard filter: begin\n  - wasm\n  - more wasm\n  # -- surgeguard filter: end\n  - router\n";
        assert_eq!(without_filter(yaml).unwrap(), "a:\n  - router\n");
    }

    #[test]
    fn a_config_without_markers_is_refused() {
        assert!(without_filter("a: b\n").is_err());
        assert!(without_filter("# -- surgeguard filter: end\n# -- surgeguard filter: begin\n").is_err());
    }

    #[test]
    fn the_shipped_demo_config_loses_only_its_wasm_filter() {
        let path = surgeguard_harness::repo_root().join("envoy/demo.yaml");
        let with = load(&path, 4321, true).unwrap();
        let without = load(&path, 4321, false).unwrap();
        assert!(with.contains("filters.http.wasm.v3.Wasm"));
        assert!(!without.contains("filters.http.wasm"));
        assert!(!without.contains("surgeguard.wasm"));
        for y in [&with, &without] {
            assert!(y.contains("port_value: 4321"));
            assert!(y.contains("envoy.filters.http.router"));
            assert!(y.contains("max_requests: 100000"));
        }
    }
}
