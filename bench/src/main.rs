//! `./build.sh bench`: surgeguard's cost per request against Envoy with no filter, Envoy's
//! native local_ratelimit and an empty Rust proxy-wasm filter, measured in one interleaved run;
//! plus module size, Envoy start-up time and an accuracy run. Writes `dist/bench/results.json`
//! (schema: the benchmark section of the contract) and `dist/bench/report.md`.
//!
//! Needs: `dist/surgeguard.wasm` (`./build.sh`), an Envoy (`ENVOY_BIN`, as `./build.sh`
//! provides), and wrk, taskset and `.tools/bin/oha` (`bench/ensure-tools.sh`). Every process it
//! starts is stopped when it ends, on error and on Ctrl-C too.

mod accuracy;
mod arms;
mod build_profile;
mod cli;
mod empty_filter;
mod envoy_stats;
mod machine;
mod oha;
mod prices;
mod procs;
mod profile;
mod report;
mod results;
mod run;
mod stats;
mod wrk;

use arms::{Arm, Variant};
use results::{FloorInputs, VariantRun};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    procs::install_signal_flag();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match cli::parse(&args) {
        Ok(Some(s)) => s,
        Ok(None) => {
            print!("{}", cli::USAGE);
            return;
        }
        Err(e) => {
            eprintln!("bench: {e}");
            std::process::exit(2);
        }
    };
    let command = std::iter::once("./build.sh bench".to_string()).chain(args).collect::<Vec<_>>().join(" ");
    if let Err(e) = bench(&settings, &command) {
        eprintln!("bench: {e}");
        std::process::exit(if procs::interrupted() { 130 } else { 1 });
    }
}

fn say(s: &str) {
    eprintln!("==> {s}");
}

/// What the bench needs that it does not build itself.
fn prerequisites(root: &Path) -> Result<(PathBuf, PathBuf), String> {
    let surgeguard = surgeguard_harness::wasm_path();
    if !surgeguard.is_file() {
        return Err(format!("{} is missing: run ./build.sh first (./build.sh bench does)", surgeguard.display()));
    }
    let oha = find_oha(root).unwrap_or_default();
    for (tool, ok) in [("wrk", on_path("wrk")), ("taskset", on_path("taskset")), ("oha", oha.is_file())] {
        if !ok {
            return Err(format!("{tool} is missing: run bench/ensure-tools.sh"));
        }
    }
    Ok((surgeguard, oha))
}

/// oha where `bench/ensure-tools.sh` installs it (the machine's tool cache, as `./build.sh`
/// uses: `$SURGEGUARD_TOOLS`, else `${XDG_CACHE_HOME:-~/.cache}/surgeguard/tools`), else a
/// repository-local `.tools/`, else `PATH`.
fn find_oha(root: &Path) -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let cache = env("SURGEGUARD_TOOLS").or_else(|| {
        env("XDG_CACHE_HOME").or_else(|| env("HOME").map(|h| h.join(".cache"))).map(|c| c.join("surgeguard/tools"))
    });
    let path =
        std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).map(|d| d.join("oha")).find(|f| f.is_file()));
    cache.map(|c| c.join("bin/oha")).into_iter().chain([root.join(".tools/bin/oha")]).find(|p| p.is_file()).or(path)
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file())).unwrap_or(false)
}

fn bench(s: &cli::Settings, command: &str) -> Result<(), String> {
    let started = Instant::now();
    let root = surgeguard_harness::repo_root();
    let out_dir = root.join(&s.out_dir);
    let (surgeguard, oha) = prerequisites(&root)?;
    let envoy_bin = machine::resolve_envoy(&surgeguard_harness::envoy::envoy_bin()?);
    // Before any thread exists: the harness reads ENVOY_BIN for every Envoy it starts.
    std::env::set_var("ENVOY_BIN", &envoy_bin);
    let machine = machine::Machine::describe(&envoy_bin);
    let load_before = machine::load_average();
    say(&format!(
        "machine: {} CPUs, {}, Linux {}, Envoy {} ({}); load average {load_before}",
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        machine.envoy_version,
        envoy_bin.display()
    ));

    say("building the empty filter (bench/empty-filter)");
    let empty = empty_filter::build(&empty_filter::EMPTY, &root, &out_dir)?;
    let modules = run::Modules { surgeguard: surgeguard.clone(), empty: empty.module.clone(), oha };
    let probe = if s.prices {
        say("building the probe filter (bench/probe-filter)");
        Some(empty_filter::build(&empty_filter::PROBE, &root, &out_dir)?)
    } else {
        None
    };
    let module_bytes = file_size(&surgeguard);
    let empty_module_bytes = file_size(&empty.module);
    say(&format!("modules: surgeguard {module_bytes} bytes, empty filter {empty_module_bytes} bytes"));

    let profile = if s.skip_profile {
        Value::Null
    } else {
        say("request-path profile: host calls and wasm instructions per request (bench/hostcalls)");
        let p = profile::profile(&root, &out_dir, &surgeguard, &empty.module)?;
        if let Some(rows) = p["rows"].as_array() {
            for r in rows {
                eprintln!(
                    "    {:<50} {:>7} wasm instructions {:>5} host calls ({} shared-data ops)",
                    r["name"].as_str().unwrap_or(""),
                    r["wasm_instructions"],
                    r["host_calls"],
                    r["shared_data_reads"].as_f64().unwrap_or(0.0) + r["shared_data_writes"].as_f64().unwrap_or(0.0)
                );
            }
        }
        p
    };

    // From here on, this process and every thread it starts (the upstream) stay on the load
    // generator's core; Envoys and load generators are pinned explicitly.
    procs::pin_this_process(&[1])?;

    say(&format!("start-up: {} sample(s) per arm, arms alternating", s.startup_samples));
    let startup = run::startup(&modules, s.startup_samples)?;
    let startup_medians: BTreeMap<&'static str, f64> =
        startup.iter().filter_map(|(k, v)| Some((*k, stats::median(v)?))).collect();
    for (k, v) in &startup_medians {
        eprintln!("    {k:<22} {v:>6.0} ms");
    }

    let variants: Vec<Variant> =
        if s.only_direct { vec![Variant::DirectResponse] } else { vec![Variant::DirectResponse, Variant::Upstream] };
    say(&format!(
        "starting {} Envoys (--concurrency 1, taskset -c {}) and warming them up",
        variants.len() * arms::ARMS.len(),
        run::ENVOY_CPU
    ));
    let runs = {
        let fleet = run::Fleet::start(&modules, &variants)?;
        fleet.warm_up(s)?;
        say(&format!(
            "{} interleaved rounds: throughput (wrk, {} s per arm), then latency (oha, {} s per arm)",
            s.rounds, s.duration_s, s.duration_s
        ));
        run::rounds(&fleet, &variants, s, &modules.oha)?
        // The fleet (every Envoy and the upstream) stops here.
    };

    let prices = if s.prices {
        say("host-call prices: the probe filter, one Envoy per kind of call, rounds alternating");
        let probe = probe.as_ref().ok_or("the probe filter was not built")?;
        let v = prices::measure(&probe.module, s)?;
        eprintln!("    ns per call: {}", v["ns_per_call"]);
        v
    } else {
        Value::Null
    };

    let (acc, acc_native) = if s.skip_accuracy {
        (None, None)
    } else {
        say(&format!(
            "accuracy: {} workers, {}x overload for {} s, surgeguard then native",
            accuracy::WORKERS,
            accuracy::OVERLOAD,
            s.accuracy_s
        ));
        let a = accuracy::AccuracyRun {
            oha: &modules.oha,
            surgeguard: &surgeguard,
            duration: std::time::Duration::from_secs_f64(s.accuracy_s),
        };
        let sg = accuracy::run(&a, "surgeguard")?;
        let native = accuracy::run(&a, "native_local_ratelimit")?;
        for x in [&sg, &native] {
            eprintln!(
                "    {:<22} admitted {} expected {:.0} error {:+.2}% (connections per worker {:?})",
                x.arm, x.admitted, x.expected, x.error_pct, x.connections_per_worker
            );
        }
        (Some(sg), Some(native))
    };

    let results = assemble(Assembly {
        command,
        settings: s,
        machine: &machine,
        runs: &runs,
        startup: &startup,
        startup_medians: &startup_medians,
        accuracy: acc.as_ref(),
        accuracy_native: acc_native.as_ref(),
        module_bytes,
        empty_module_bytes,
        empty_wasm_opt: empty.wasm_opt,
        empty_profile: &empty.profile,
        empty_wasm_opt_flags: &empty.wasm_opt_flags,
        load_before: &load_before,
        profile,
        prices,
        took_s: started.elapsed().as_secs_f64(),
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| format!("{}: {e}", out_dir.display()))?;
    let json_path = out_dir.join("results.json");
    let md_path = out_dir.join("report.md");
    let pretty = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(&json_path, pretty + "\n").map_err(|e| format!("{}: {e}", json_path.display()))?;
    let md = report::markdown(&results);
    std::fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;
    println!("{md}");
    say(&format!(
        "wrote {} and {} in {:.0} s",
        json_path.display(),
        md_path.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

struct Assembly<'a> {
    command: &'a str,
    settings: &'a cli::Settings,
    machine: &'a machine::Machine,
    runs: &'a [VariantRun],
    startup: &'a BTreeMap<&'static str, Vec<f64>>,
    startup_medians: &'a BTreeMap<&'static str, f64>,
    accuracy: Option<&'a accuracy::Accuracy>,
    accuracy_native: Option<&'a accuracy::Accuracy>,
    module_bytes: u64,
    empty_module_bytes: u64,
    empty_wasm_opt: bool,
    empty_profile: &'a [(String, String)],
    empty_wasm_opt_flags: &'a [String],
    load_before: &'a str,
    profile: Value,
    prices: Value,
    took_s: f64,
}

/// `results.json`: the contract's fields at the top (from the direct_response variant, the
/// worst case), every variant in full under `variants`.
fn assemble(a: Assembly) -> Value {
    let mut variants = serde_json::Map::new();
    for run in a.runs {
        variants.insert(run.variant.key().to_string(), results::variant_json(run, a.startup_medians));
    }
    let primary = variants.get(Variant::DirectResponse.key()).cloned().unwrap_or(Value::Null);
    let direct = a.runs.iter().find(|r| r.variant == Variant::DirectResponse);
    let upstream = a.runs.iter().find(|r| r.variant == Variant::Upstream);
    let ratio_vs_empty = |run: Option<&VariantRun>| {
        run.and_then(|r| results::RatioFigure::between(r, Arm::Surgeguard, Arm::EmptyWasm)).map(|r| r.of_medians)
    };
    let startup_over = match (a.startup_medians.get(Arm::Surgeguard.key()), a.startup_medians.get(Arm::NoFilter.key()))
    {
        (Some(s), Some(n)) => Some(s - n),
        _ => None,
    };
    let floors = results::floors(&FloorInputs {
        ratio_vs_empty: ratio_vs_empty(direct),
        cpu_over_empty_us: direct.and_then(|r| results::cpu_over(r, Arm::EmptyWasm)),
        upstream_ratio_vs_empty: ratio_vs_empty(upstream),
        upstream_cpu_over_empty_us: upstream.and_then(|r| results::cpu_over(r, Arm::EmptyWasm)),
        accuracy_error_pct: a.accuracy.map(|x| x.error_pct),
        module_bytes: a.module_bytes,
        startup_over_no_filter_ms: startup_over,
    });
    let foreign: Vec<f64> = a
        .runs
        .iter()
        .flat_map(|r| r.arms.values())
        .flat_map(|s| s.throughput.iter().map(|t| t.foreign_cpu_pct))
        .collect();
    let foreign_load: Vec<f64> = a
        .runs
        .iter()
        .flat_map(|r| r.arms.values())
        .flat_map(|s| s.throughput.iter().map(|t| t.foreign_load_cpu_pct))
        .collect();
    let max = |v: &[f64]| {
        v.iter().copied().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))).map(|v| stats::round_to(v, 1))
    };
    let accuracy_json = a.accuracy.map_or(
        json!({"workers": accuracy::WORKERS, "overload": accuracy::OVERLOAD, "admitted": null, "expected": null, "error_pct": null}),
        accuracy::Accuracy::json,
    );
    json!({
        "arms": primary["arms"],
        "ratios": primary["ratios"],
        "accuracy": accuracy_json,
        "module_bytes": a.module_bytes,
        "primary_variant": Variant::DirectResponse.key(),
        "variants": variants,
        "accuracy_native": a.accuracy_native.map_or(Value::Null, accuracy::Accuracy::json),
        "empty_module_bytes": a.empty_module_bytes,
        "empty_module_wasm_opt": a.empty_wasm_opt,
        "empty_module_build": {
            "release_profile": a.empty_profile.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
            "wasm_opt_flags": a.empty_wasm_opt_flags,
        },
        "startup_ms": a.startup.iter().map(|(k, v)| {
            let s = stats::summarize(v);
            (k.to_string(), json!({
                "median": s.map(|s| stats::round_to(s.median, 1)),
                "min": s.map(|s| stats::round_to(s.min, 1)),
                "max": s.map(|s| stats::round_to(s.max, 1)),
                "samples": v.iter().map(|x| stats::round_to(*x, 1)).collect::<Vec<_>>(),
                "workers": 2,
            }))
        }).collect::<serde_json::Map<_, _>>(),
        "startup_over_no_filter_ms": startup_over.map(|v| stats::round_to(v, 1)),
        "floors": results::floors_json(&floors),
        "profile": a.profile,
        "host_call_prices": a.prices,
        "noise": {
            "load_average_before": a.load_before,
            "load_average_after": machine::load_average(),
            "foreign_cpu_pct_median": stats::median(&foreign).map(|v| stats::round_to(v, 1)),
            "foreign_cpu_pct_max": max(&foreign),
            "foreign_load_cpu_pct_median": stats::median(&foreign_load).map(|v| stats::round_to(v, 1)),
            "foreign_load_cpu_pct_max": max(&foreign_load),
        },
        "settings": {
            "rounds": a.settings.rounds,
            "duration_s": a.settings.duration_s,
            "connections": a.settings.connections,
            "accuracy_s": a.settings.accuracy_s,
            "startup_samples": a.settings.startup_samples,
            "quick": a.settings.quick,
            "envoy_concurrency": 1,
            "envoy_cpu": run::ENVOY_CPU,
            "load_cpu": run::LOAD_CPU,
            "request": format!("GET {} with {}", arms::PATH, arms::HEADERS.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")),
        },
        "machine": {
            "nproc": a.machine.nproc,
            "cpu_model": a.machine.cpu_model,
            "kernel": a.machine.kernel,
            "envoy_version": a.machine.envoy_version,
            "envoy_bin": a.machine.envoy_bin.display().to_string(),
        },
        "command": a.command,
        "finished_at": utc_now(),
        "took_s": stats::round_to(a.took_s, 1),
    })
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
