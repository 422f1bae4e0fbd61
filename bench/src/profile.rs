//! The request-path profile: host calls, shared-data operations, guest allocations made by the
//! host, and wasm instructions per request, counted by `bench/hostcalls` (the module run in the
//! wasmi interpreter against a recording host). Counts, not times: the same module and
//! configuration always give the same figures, whatever the machine's noise.
//!
//! Besides the empty filter and surgeguard's storefront configuration, it profiles the
//! storefront configuration built up one feature at a time (an ablation), so the cost of each
//! feature (classification, each limit, the in-flight limit) reads as a difference of rows.

use crate::arms::{CONTRACT_ADMIT_ALL, HEADERS, PATH, STOREFRONT_ADMIT_ALL};
use crate::procs::{run_to_completion, Pinned};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Builds the profiler (a standalone crate, its own target dir under `target/`).
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let target_dir = root.join("target/bench-hostcalls");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args: Vec<String> = vec![
        "build".into(),
        "-q".into(),
        "--release".into(),
        "--manifest-path".into(),
        root.join("bench/hostcalls/Cargo.toml").display().to_string(),
        "--target-dir".into(),
        target_dir.display().to_string(),
    ];
    run_to_completion(&Pinned::new("", &cargo, &args), Duration::from_secs(600))
        .map_err(|e| format!("building bench/hostcalls: {e}"))?;
    Ok(target_dir.join("release/hostcalls"))
}

/// The contract's example configuration built up feature by feature, then the demo's
/// configuration that the surgeguard arm runs: (name, configuration).
pub fn ablation() -> Result<Vec<(&'static str, Value)>, String> {
    let full: Value = serde_json::from_str(CONTRACT_ADMIT_ALL).map_err(|e| format!("contract configuration: {e}"))?;
    let demo: Value =
        serde_json::from_str(STOREFRONT_ADMIT_ALL).map_err(|e| format!("storefront configuration: {e}"))?;
    let limits = full["limits"].as_array().cloned().unwrap_or_default();
    let with = |n_limits: usize, in_flight: bool, rules: bool| {
        let mut c = full.clone();
        if let Some(o) = c.as_object_mut() {
            o.insert("limits".into(), Value::Array(limits.iter().take(n_limits).cloned().collect()));
            if !in_flight {
                o.remove("concurrency");
            }
            if !rules {
                o.remove("rules");
            }
        }
        c
    };
    Ok(vec![
        ("classes only (no rules, limits, in-flight)", with(0, false, false)),
        ("+ 4 rules (classification)", with(0, false, true)),
        ("+ global limit", with(1, false, true)),
        ("+ client_ip limit", with(2, false, true)),
        ("+ x-api-key limit", with(3, false, true)),
        ("+ in-flight limit (the contract's example)", with(3, true, true)),
        ("the demo's configuration (the surgeguard arm)", demo),
    ])
}

fn run_one(tool: &Path, module: &Path, root_id: &str, config: Option<&Path>) -> Result<Value, String> {
    let mut args: Vec<String> = vec![
        module.display().to_string(),
        "--root-id".into(),
        root_id.into(),
        "--requests".into(),
        "200".into(),
        "--path".into(),
        PATH.into(),
    ];
    for (k, v) in HEADERS {
        args.push("--header".into());
        args.push(format!("{k}: {v}"));
    }
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    let out = run_to_completion(&Pinned::new("", &tool.display().to_string(), &args), Duration::from_secs(120))?;
    serde_json::from_str(&out).map_err(|e| format!("hostcalls output: {e}"))
}

/// The callbacks Envoy makes when a stream ends (a module may export any of them).
const STREAM_END_CALLBACKS: [&str; 3] = ["proxy_on_log", "proxy_on_done", "proxy_on_delete"];

/// The summary row of one profiled module/configuration.
pub fn row(name: &str, v: &Value) -> Value {
    let p = &v["per_request"];
    let at_stream_end: f64 = STREAM_END_CALLBACKS.iter().filter_map(|cb| p["wasm_instructions"][cb].as_f64()).sum();
    json!({
        "name": name,
        "wasm_instructions": p["wasm_instructions_total"],
        "callbacks_into_module": p["callbacks_into_module"],
        "wasm_instructions_on_request_headers": p["wasm_instructions"]["proxy_on_request_headers"],
        "wasm_instructions_at_stream_end": at_stream_end,
        "host_calls": p["host_calls_total"],
        "shared_data_reads": p["shared_data_reads"],
        "shared_data_writes": p["shared_data_writes"],
        "host_to_module_allocations": p["host_allocations"],
        "host_calls_by_name": p["host_calls"],
    })
}

/// Profiles the empty filter, surgeguard, and the ablation; returns the `profile` object.
pub fn profile(root: &Path, out_dir: &Path, surgeguard: &Path, empty: &Path) -> Result<Value, String> {
    let tool = build(root)?;
    let dir = out_dir.join("profile");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let empty_v = run_one(&tool, empty, "empty", None)?;
    let mut rows = vec![row("empty_wasm", &empty_v)];
    let mut full = Value::Null;
    for (i, (name, config)) in ablation()?.into_iter().enumerate() {
        let path = dir.join(format!("ablation-{i}.json"));
        std::fs::write(&path, config.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
        let v = run_one(&tool, surgeguard, "surgeguard", Some(&path))?;
        rows.push(row(name, &v));
        full = v;
    }
    Ok(json!({
        "method": "bench/hostcalls: the module in the wasmi interpreter against a recording host; steady-state averages over 200 requests (after a first request that creates the shared state); wasm instructions = wasmi fuel",
        "rows": rows,
        "surgeguard": {
            "per_request": full["per_request"],
            "first_request": full["first_request"],
            "per_tick": full["per_tick"],
            "configure": full["configure"],
        },
        "empty_wasm": { "per_request": empty_v["per_request"] },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablation_adds_one_feature_per_row_and_ends_at_the_storefront_configuration() {
        let rows = ablation().unwrap();
        let limits: Vec<usize> = rows.iter().map(|(_, c)| c["limits"].as_array().map_or(0, Vec::len)).collect();
        assert_eq!(limits, vec![0, 0, 1, 2, 3, 3, 1]);
        assert!(rows[0].1.get("rules").is_none());
        assert!(rows[1].1.get("rules").is_some());
        let contract: Value = serde_json::from_str(CONTRACT_ADMIT_ALL).unwrap();
        assert_eq!(rows[5].1, contract);
        let demo: Value = serde_json::from_str(STOREFRONT_ADMIT_ALL).unwrap();
        assert_eq!(rows.last().unwrap().1, demo);
    }

    #[test]
    fn a_row_reads_the_per_request_figures() {
        let v = json!({"per_request": {"wasm_instructions_total": 63091.0, "host_calls_total": 17.0,
            "shared_data_reads": 5.0, "shared_data_writes": 5.0, "host_allocations": 10.0,
            "callbacks_into_module": 3.0,
            "wasm_instructions": {"proxy_on_request_headers": 53263.0, "proxy_on_log": 6173.0, "proxy_on_delete": 741.0},
            "host_calls": {"proxy_get_shared_data": 5.0}}});
        let r = row("surgeguard", &v);
        assert_eq!(r["wasm_instructions"], 63091.0);
        assert_eq!(r["callbacks_into_module"], 3.0);
        assert_eq!(r["wasm_instructions_at_stream_end"], 6914.0);
        assert_eq!(r["host_calls"], 17.0);
        assert_eq!(r["host_to_module_allocations"], 10.0);
    }
}
