//! `./build.sh bench`: surgeguard's cost per request against Envoy with no filter, Envoy's
//! native local_ratelimit and an empty Rust proxy-wasm filter, and with its global limit
//! fleet-wide (leased from a real rate limit service), measured in one interleaved run; plus
//! module size, Envoy start-up time and an accuracy run. Writes `dist/bench/results.json`
//! (schema: the benchmark section of the contract) and `dist/bench/report.md`.
//!
//! Needs: `dist/surgeguard.wasm` (`./build.sh`), `dist/libsurgeguard_native.so` (`./build.sh
//! native`), an Envoy (`ENVOY_BIN`, as `./build.sh`
//! provides), wrk, taskset and `.tools/bin/oha` (`bench/ensure-tools.sh`), and redis-server and
//! surgeguard-rls (`REDIS_SERVER_BIN`, `SURGEGUARD_RLS_BIN`: `./build.sh bench` provides them). Every process it
//! starts is stopped when it ends, on error and on Ctrl-C too.

mod accuracy;
mod arms;
mod build_profile;
mod cli;
mod empty_filter;
mod envoy_stats;
mod fleet;
mod machine;
mod oha;
mod prices;
mod procs;
mod profile;
mod report;
mod results;
mod run;
mod stats;
mod summary;
mod wrk;

use accuracy::AccuracyPair;
use arms::Variant;
use prices::Prices;
use profile::Profile;
use results::VariantRun;
use std::path::{Path, PathBuf};
use std::time::Instant;
use summary::{Finish, Measured, Results};
use surgeguard_harness::output::{write_json, write_outputs};

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
fn prerequisites(root: &Path) -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let surgeguard = surgeguard_harness::wasm_path();
    if !surgeguard.is_file() {
        return Err(format!("{} is missing: run ./build.sh first (./build.sh bench does)", surgeguard.display()));
    }
    let native = surgeguard_harness::native_path();
    if !native.is_file() {
        return Err(format!("{} is missing: run ./build.sh native first (./build.sh bench does)", native.display()));
    }
    let oha = find_oha(root).unwrap_or_default();
    for (tool, ok) in [("wrk", on_path("wrk")), ("taskset", on_path("taskset")), ("oha", oha.is_file())] {
        if !ok {
            return Err(format!("{tool} is missing: run bench/ensure-tools.sh"));
        }
    }
    Ok((surgeguard, native, oha))
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

/// The run, phase by phase: each returns what the next ones or the results need.
fn bench(s: &cli::Settings, command: &str) -> Result<(), String> {
    let started = Instant::now();
    let mut setup = prepare(s)?;
    let profile = request_path_profile(s, &setup)?;
    // From here on, this process and every thread it starts (the upstream) stay on the load
    // generator's core; Envoys and load generators are pinned explicitly.
    procs::pin_this_process(&[1])?;
    // Started after pinning, so Redis and the service inherit the load generator's core; they
    // run until the bench ends (dropped last).
    let service = start_rate_limit_service(&setup.modules.fleet_configuration)?;
    setup.modules.rate_limit_service_port = service.rls.port();
    let startup = measure_startup(s, &setup.modules)?;
    let runs = measure_arms(s, &setup.modules)?;
    let prices = measure_prices(s, setup.probe.as_ref())?;
    let accuracy = measure_accuracy(s, &setup.modules)?;
    let results = Results::assemble(
        Measured {
            command,
            settings: s,
            machine: &setup.machine,
            load_average_before: &setup.load_average_before,
            modules: summary::Modules {
                module_bytes: setup.module_bytes,
                empty_module_bytes: setup.empty_module_bytes,
                empty: &setup.empty,
            },
            profile,
            startup: &startup,
            runs: &runs,
            prices,
            accuracy,
        },
        Finish {
            load_average_after: machine::load_average(),
            finished_at: utc_now(),
            took_s: started.elapsed().as_secs_f64(),
        },
    );
    let markdown = report::markdown(&results);
    let written = write(&setup.out_dir, &results, &markdown)?;
    println!("{markdown}");
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    say(&format!("wrote {} in {:.0} s", names.join(" and "), started.elapsed().as_secs_f64()));
    drop(service);
    Ok(())
}

/// Redis and surgeguard-rls, with the fleet arm's limit.
fn start_rate_limit_service(fleet_configuration: &str) -> Result<fleet::Service, String> {
    say("starting Redis and the rate limit service (surgeguard-rls) for the fleet arm");
    let service = fleet::Service::start(fleet_configuration)?;
    eprintln!("    Redis on port {}, surgeguard-rls on port {}", service.redis.port(), service.rls.port());
    Ok(service)
}

/// What the measuring phases share: the machine, the modules, where outputs go.
struct Setup {
    out_dir: PathBuf,
    machine: machine::Machine,
    load_average_before: String,
    modules: run::Modules,
    empty: empty_filter::Built,
    /// The probe filter (`--prices` only).
    probe: Option<empty_filter::Built>,
    module_bytes: u64,
    empty_module_bytes: u64,
}

/// Checks the tools, describes the machine, builds the bench's own filters.
fn prepare(s: &cli::Settings) -> Result<Setup, String> {
    let root = surgeguard_harness::repo_root();
    let out_dir = root.join(&s.out_dir);
    let (surgeguard, native, oha) = prerequisites(&root)?;
    let envoy_bin = machine::resolve_envoy(&surgeguard_harness::envoy::envoy_bin()?);
    // Before any thread exists: the harness reads ENVOY_BIN for every Envoy it starts.
    std::env::set_var("ENVOY_BIN", &envoy_bin);
    let machine = machine::Machine::describe(&envoy_bin);
    let load_average_before = machine::load_average();
    say(&format!(
        "machine: {} CPUs, {}, Linux {}, Envoy {} ({}); load average {load_average_before}",
        machine.nproc,
        machine.cpu_model,
        machine.kernel,
        machine.envoy_version,
        envoy_bin.display()
    ));

    say("building the empty filter (bench/empty-filter)");
    let empty = empty_filter::build(&empty_filter::EMPTY, &root, &out_dir)?;
    let probe = if s.prices {
        say("building the probe filter (bench/probe-filter)");
        Some(empty_filter::build(&empty_filter::PROBE, &root, &out_dir)?)
    } else {
        None
    };
    let module_bytes = file_size(&surgeguard);
    let empty_module_bytes = file_size(&empty.module);
    say(&format!("modules: surgeguard {module_bytes} bytes, empty filter {empty_module_bytes} bytes"));
    let fleet_configuration = arms::fleet_configuration()?;
    let modules = run::Modules {
        surgeguard,
        empty: empty.module.clone(),
        native,
        oha,
        fleet_configuration,
        rate_limit_service_port: 0,
    };
    Ok(Setup { out_dir, machine, load_average_before, modules, empty, probe, module_bytes, empty_module_bytes })
}

/// Host calls and wasm instructions per request, counted in an interpreter (`bench/hostcalls`).
fn request_path_profile(s: &cli::Settings, setup: &Setup) -> Result<Option<Profile>, String> {
    if s.skip_profile {
        return Ok(None);
    }
    say("request-path profile: host calls and wasm instructions per request (bench/hostcalls)");
    let root = surgeguard_harness::repo_root();
    let p = profile::profile(&root, &setup.out_dir, &setup.modules.surgeguard, &setup.modules.empty)?;
    for r in &p.rows {
        let shared_data_ops = r.shared_data_reads.unwrap_or(0.0) + r.shared_data_writes.unwrap_or(0.0);
        eprintln!(
            "    {:<50} {:>7} wasm instructions {:>5} host calls ({shared_data_ops} shared-data ops)",
            r.name,
            shown(r.wasm_instructions),
            shown(r.host_calls),
        );
    }
    Ok(Some(p))
}

/// A figure on the console as `results.json` has it (`null` when absent).
fn shown(x: Option<f64>) -> String {
    serde_json::to_string(&x).unwrap_or_default()
}

/// Envoy's start-up time per arm, arms alternating.
fn measure_startup(s: &cli::Settings, modules: &run::Modules) -> Result<run::Startup, String> {
    say(&format!("start-up: {} sample(s) per arm, arms alternating", s.startup_samples));
    let startup = run::startup(modules, s.startup_samples)?;
    for (k, v) in &startup.medians_ms {
        eprintln!("    {k:<22} {v:>6.0} ms");
    }
    Ok(startup)
}

/// The interleaved rounds: every (variant, arm) Envoy alive, measured in turn.
fn measure_arms(s: &cli::Settings, modules: &run::Modules) -> Result<Vec<VariantRun>, String> {
    let variants: Vec<Variant> =
        if s.only_direct { vec![Variant::DirectResponse] } else { vec![Variant::DirectResponse, Variant::Upstream] };
    say(&format!(
        "starting {} Envoys (--concurrency 1, taskset -c {}) and warming them up",
        variants.len() * arms::ARMS.len(),
        run::ENVOY_CPU
    ));
    let envoys = run::Envoys::start(modules, &variants)?;
    envoys.warm_up(s)?;
    say(&format!(
        "{} interleaved rounds: throughput (wrk, {} s per arm), then latency (oha, {} s per arm)",
        s.rounds, s.duration_s, s.duration_s
    ));
    run::rounds(&envoys, &variants, s, &modules.oha)
    // Every Envoy and the upstream stop here.
}

/// `--prices`: the CPU price of each kind of host call, from the probe filter.
fn measure_prices(s: &cli::Settings, probe: Option<&empty_filter::Built>) -> Result<Option<Prices>, String> {
    if !s.prices {
        return Ok(None);
    }
    say("host-call prices: the probe filter, one Envoy per kind of call, rounds alternating");
    let probe = probe.ok_or("the probe filter was not built")?;
    let prices = prices::measure(&probe.module, s)?;
    eprintln!("    ns per call: {}", serde_json::to_string(&prices.ns_per_call).unwrap_or_default());
    Ok(Some(prices))
}

/// The same bucket in surgeguard and in Envoy's native filter, 2 workers, overloaded.
fn measure_accuracy(s: &cli::Settings, modules: &run::Modules) -> Result<Option<AccuracyPair>, String> {
    if s.skip_accuracy {
        return Ok(None);
    }
    say(&format!(
        "accuracy: {} workers, {}x overload for {} s, surgeguard then native",
        accuracy::WORKERS,
        accuracy::OVERLOAD,
        s.accuracy_s
    ));
    let pair = accuracy::run_both(&accuracy::AccuracyRun {
        oha: &modules.oha,
        surgeguard: &modules.surgeguard,
        duration: std::time::Duration::from_secs_f64(s.accuracy_s),
    })?;
    for x in [&pair.surgeguard, &pair.native] {
        eprintln!(
            "    {:<22} admitted {} expected {:.0} error {:+.2}% (connections per worker {:?})",
            x.arm, x.admitted, x.expected, x.error_pct, x.connections_per_worker
        );
    }
    Ok(Some(pair))
}

/// `results.json` and `report.md` into `out_dir`.
fn write(out_dir: &Path, results: &Results, markdown: &str) -> Result<Vec<PathBuf>, String> {
    let json = write_json(results)?;
    write_outputs(out_dir, &[("results.json", &json), ("report.md", markdown.as_bytes())])
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
