//! The request-path profile: host calls, shared-data operations, guest allocations made by the
//! host, and wasm instructions per request, counted by `bench/hostcalls` (the module run in the
//! wasmi interpreter against a recording host). Counts, not times: the same module and
//! configuration always give the same figures, whatever the machine's noise.
//!
//! Besides the empty filter and surgeguard's storefront configuration, it profiles the
//! storefront configuration built up one feature at a time (an ablation), so the cost of each
//! feature (classification, each limit, the in-flight limit) reads as a difference of rows.
//! Then the fleet arm's configuration (the demo's with its global limit fleet-wide), its lease
//! granted by the profiler before the requests, so the row is a limit in fleet mode; last, the
//! demo's configuration with its in-flight limit adaptive.

use crate::arms::{fleet_configuration, CONTRACT_ADMIT_ALL, HEADERS, PATH, STOREFRONT_ADMIT_ALL};
use crate::build_profile::{cargo_release_build, CargoBuild};
use crate::procs::{run_to_completion, Pinned};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use surgeguard_harness::output::write_outputs;

/// Builds the profiler (a standalone crate, its own target dir under `target/`).
pub fn build(root: &Path) -> Result<PathBuf, String> {
    let target_dir = cargo_release_build(root, &CargoBuild { dir: "hostcalls", target: None, env: Vec::new() })?;
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

/// The adaptive row's name.
pub const ADAPTIVE_ROW: &str = "the demo's configuration, its in-flight limit adaptive (`\"adaptive\": {}`)";

/// The demo's configuration with `"adaptive": {}` in its `concurrency`: the same requests, the
/// in-flight limit adaptive (its samples taken at each stream's end, merged on the tick).
pub fn adaptive_configuration() -> Result<Value, String> {
    let mut c: Value =
        serde_json::from_str(STOREFRONT_ADMIT_ALL).map_err(|e| format!("storefront configuration: {e}"))?;
    let concurrency = c["concurrency"].as_object_mut().ok_or("storefront configuration: no concurrency")?;
    concurrency.insert("adaptive".into(), Value::Object(serde_json::Map::new()));
    Ok(c)
}

/// The fleet row's name.
pub const FLEET_ROW: &str = "the demo's configuration, its global limit fleet-wide (the surgeguard_fleet arm)";

/// How the profiler runs one module.
#[derive(Clone, Copy)]
enum Leases {
    /// No lease is answered (configurations without a fleet limit make no call).
    Unanswered,
    /// Lease calls made on the first tick are granted, before the requests.
    Granted,
}

fn run_one(tool: &Path, module: &Path, root_id: &str, config: Option<&Path>, leases: Leases) -> Result<Value, String> {
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
    if let Leases::Granted = leases {
        args.push("--grant-leases".into());
    }
    let out = run_to_completion(&Pinned::new("", &tool.display().to_string(), &args), Duration::from_secs(120))?;
    serde_json::from_str(&out).map_err(|e| format!("hostcalls output: {e}"))
}

/// The callbacks Envoy makes when a stream ends (a module may export any of them).
const STREAM_END_CALLBACKS: [&str; 3] = ["proxy_on_log", "proxy_on_done", "proxy_on_delete"];

/// `profile` in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    pub method: &'static str,
    pub rows: Vec<ProfileRow>,
    pub surgeguard: SurgeguardCosts,
    /// The fleet row's figures, and the lease granted before its requests.
    pub surgeguard_fleet: FleetCosts,
    /// The adaptive row's figures (its samples are merged on the tick: `per_tick`).
    pub surgeguard_adaptive: SurgeguardCosts,
    pub empty_wasm: EmptyCosts,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetCosts {
    pub costs: SurgeguardCosts,
    pub leases_at_start: Value,
    pub metrics_after: Value,
}

/// Checks that the fleet row ran in fleet mode (its lease granted, its mode gauge at 1).
pub fn check_fleet_mode(v: &Value) -> Result<(), String> {
    let granted = v["leases_at_start"]["calls_granted"].as_array().map_or(0, Vec::len);
    let mode = v["metrics_after"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.ends_with(".fleet_mode")))
        .and_then(|(_, v)| v.as_i64());
    match (granted, mode) {
        (1.., Some(1)) => Ok(()),
        _ => Err(format!(
            "the fleet row did not run in fleet mode ({granted} lease calls granted, mode gauge {mode:?}); module log: {}",
            v["module_log"]
        )),
    }
}

impl SurgeguardCosts {
    fn of(v: &Value) -> SurgeguardCosts {
        SurgeguardCosts {
            per_request: v["per_request"].clone(),
            first_request: v["first_request"].clone(),
            per_tick: v["per_tick"].clone(),
            configure: v["configure"].clone(),
        }
    }
}

/// What `bench/hostcalls` reports for the surgeguard arm's configuration, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SurgeguardCosts {
    pub per_request: Value,
    pub first_request: Value,
    pub per_tick: Value,
    pub configure: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmptyCosts {
    pub per_request: Value,
}

/// The summary row of one profiled module/configuration: per request, steady state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileRow {
    pub name: String,
    pub wasm_instructions: Option<f64>,
    pub callbacks_into_module: Option<f64>,
    pub wasm_instructions_on_request_headers: Option<f64>,
    pub wasm_instructions_at_stream_end: f64,
    pub host_calls: Option<f64>,
    pub shared_data_reads: Option<f64>,
    pub shared_data_writes: Option<f64>,
    pub host_to_module_allocations: Option<f64>,
    pub host_calls_by_name: Value,
}

/// The row of one `bench/hostcalls` report.
pub fn row(name: &str, v: &Value) -> ProfileRow {
    let p = &v["per_request"];
    ProfileRow {
        name: name.to_string(),
        wasm_instructions: p["wasm_instructions_total"].as_f64(),
        callbacks_into_module: p["callbacks_into_module"].as_f64(),
        wasm_instructions_on_request_headers: p["wasm_instructions"]["proxy_on_request_headers"].as_f64(),
        wasm_instructions_at_stream_end: STREAM_END_CALLBACKS
            .iter()
            .filter_map(|cb| p["wasm_instructions"][cb].as_f64())
            .sum(),
        host_calls: p["host_calls_total"].as_f64(),
        shared_data_reads: p["shared_data_reads"].as_f64(),
        shared_data_writes: p["shared_data_writes"].as_f64(),
        host_to_module_allocations: p["host_allocations"].as_f64(),
        host_calls_by_name: p["host_calls"].clone(),
    }
}

/// Profiles the empty filter, surgeguard, and the ablation (whose configurations it writes
/// into `out_dir/profile/` for the profiler to read).
pub fn profile(root: &Path, out_dir: &Path, surgeguard: &Path, empty: &Path) -> Result<Profile, String> {
    let tool = build(root)?;
    let ablation = ablation()?;
    let mut files: Vec<(String, Vec<u8>)> = ablation
        .iter()
        .enumerate()
        .map(|(i, (_, config))| (format!("ablation-{i}.json"), config.to_string().into_bytes()))
        .collect();
    files.push(("fleet.json".into(), fleet_configuration()?.into_bytes()));
    files.push(("adaptive.json".into(), adaptive_configuration()?.to_string().into_bytes()));
    let named: Vec<(&str, &[u8])> = files.iter().map(|(n, b)| (n.as_str(), b.as_slice())).collect();
    let mut paths = write_outputs(&out_dir.join("profile"), &named)?;
    let adaptive_path = paths.pop().ok_or("no adaptive configuration written")?;
    let fleet_path = paths.pop().ok_or("no fleet configuration written")?;
    let empty_v = run_one(&tool, empty, "empty", None, Leases::Unanswered)?;
    let mut rows = vec![row("empty_wasm", &empty_v)];
    let mut full = Value::Null;
    for ((name, _), path) in ablation.iter().zip(&paths) {
        let v = run_one(&tool, surgeguard, "surgeguard", Some(path), Leases::Unanswered)?;
        rows.push(row(name, &v));
        full = v;
    }
    let fleet = run_one(&tool, surgeguard, "surgeguard", Some(&fleet_path), Leases::Granted)?;
    check_fleet_mode(&fleet)?;
    rows.push(row(FLEET_ROW, &fleet));
    let adaptive = run_one(&tool, surgeguard, "surgeguard", Some(&adaptive_path), Leases::Unanswered)?;
    rows.push(row(ADAPTIVE_ROW, &adaptive));
    Ok(Profile {
        method: "bench/hostcalls: the module in the wasmi interpreter against a recording host; steady-state averages over 200 requests (after a first request that creates the shared state); wasm instructions = wasmi fuel",
        rows,
        surgeguard: SurgeguardCosts::of(&full),
        surgeguard_fleet: FleetCosts {
            costs: SurgeguardCosts::of(&fleet),
            leases_at_start: fleet["leases_at_start"].clone(),
            metrics_after: fleet["metrics_after"].clone(),
        },
        surgeguard_adaptive: SurgeguardCosts::of(&adaptive),
        empty_wasm: EmptyCosts { per_request: empty_v["per_request"].clone() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
    fn the_adaptive_row_is_the_demo_configuration_with_only_adaptive_added() {
        let mut adaptive = adaptive_configuration().unwrap();
        assert_eq!(adaptive["concurrency"]["adaptive"], json!({}));
        adaptive["concurrency"].as_object_mut().unwrap().remove("adaptive");
        let demo: Value = serde_json::from_str(STOREFRONT_ADMIT_ALL).unwrap();
        assert_eq!(adaptive, demo);
    }

    #[test]
    fn a_row_reads_the_per_request_figures() {
        let v = json!({"per_request": {"wasm_instructions_total": 63091.0, "host_calls_total": 17.0,
            "shared_data_reads": 5.0, "shared_data_writes": 5.0, "host_allocations": 10.0,
            "callbacks_into_module": 3.0,
            "wasm_instructions": {"proxy_on_request_headers": 53263.0, "proxy_on_log": 6173.0, "proxy_on_delete": 741.0},
            "host_calls": {"proxy_get_shared_data": 5.0}}});
        let r = row("surgeguard", &v);
        assert_eq!(r.wasm_instructions, Some(63091.0));
        assert_eq!(r.callbacks_into_module, Some(3.0));
        assert_eq!(r.wasm_instructions_at_stream_end, 6914.0);
        assert_eq!(r.host_calls, Some(17.0));
        assert_eq!(r.host_to_module_allocations, Some(10.0));
        assert_eq!(r.host_calls_by_name["proxy_get_shared_data"], 5.0);
    }

    #[test]
    fn the_fleet_row_counts_only_with_its_lease_granted_and_its_limit_in_fleet_mode() {
        let granted = json!({"leases_at_start": {"calls_granted": [{"cluster": "ratelimit"}]},
            "metrics_after": {"surgeguard.limit.storefront.fleet_mode": 1, "surgeguard.max_in_flight": 9}});
        assert_eq!(check_fleet_mode(&granted), Ok(()));
        let local = json!({"leases_at_start": {"calls_granted": [{"cluster": "ratelimit"}]},
            "metrics_after": {"surgeguard.limit.storefront.fleet_mode": 0}});
        assert!(check_fleet_mode(&local).unwrap_err().contains("mode gauge Some(0)"));
        let no_call = json!({"leases_at_start": {"calls_granted": []}, "metrics_after": {}});
        assert!(check_fleet_mode(&no_call).is_err());
    }
}
