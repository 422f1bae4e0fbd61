//! The soak (`./build.sh soak [--minutes N]`): a storefront's mixed load through a real Envoy
//! with 4 workers running `dist/surgeguard.wasm`, while faults are injected (client aborts,
//! upstream resets and timeouts, floods of API keys, configuration pushes over ECDS valid and
//! invalid, VM crashes under `FAIL_RELOAD`), then checked against Envoy's own records. Prints
//! the table, writes `dist/soak/summary.json` and `dist/soak/report.md`, exits 1 if a check
//! fails. What each check means: docs/operations.md, "soak: what it checks".

mod checks;
mod cli;
mod configs;
mod crash;
mod faults;
mod plan;
mod report;
mod rig;
mod run;

use plan::Timeline;
use report::Summary;
use std::process::ExitCode;
use surgeguard_harness::output::{write_json, write_outputs};
use surgeguard_harness::repo_root;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match cli::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match soak(&options, &args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the soak; `Ok(passed)`.
fn soak(o: &cli::Options, args: &[String]) -> Result<bool, String> {
    let shipped = std::fs::read_to_string(repo_root().join(rig::SHIPPED_CONFIG))
        .map_err(|e| format!("{}: {e}", rig::SHIPPED_CONFIG))?;
    let timeline = Timeline::new(o.duration);
    let rig = rig::Rig::start(&configs::valid(&shipped, 0)?)?;
    eprintln!(
        "[soak] {:.0} s of load through Envoy ({} workers, admin 127.0.0.1:{}); crashes at {:?} s",
        o.duration.as_secs_f64(),
        rig::WORKERS,
        rig.envoy.admin_port,
        timeline.crashes.iter().map(|d| d.as_secs()).collect::<Vec<_>>()
    );
    let loaded = run::load_with_faults(&rig, &timeline, o.seed, &shipped)?;
    eprintln!("[soak] load done after {:.0} s; waiting for in flight to drain", loaded.load_s);
    let visits = run::visit_every_worker(&rig);
    let drained = run::drain(&rig);
    let settled = run::settle(&rig);
    let accounting = checks::account(&settled, &loaded.crashes);
    let checks = checks::judge(&checks::Inputs {
        timeline: &timeline,
        rss: &loaded.rss,
        drained: &drained,
        accounting: &accounting,
        settled: &settled,
        pushes: &loaded.pushes,
        crashes: &loaded.crashes,
        visits: &visits,
        upstream_requests: rig.upstream.stats.requests(),
    });
    let passed = checks.iter().all(|c| c.pass);
    let summary = Summary {
        command: format!("./build.sh soak {}", args.join(" ")).trim().to_string(),
        passed,
        checks,
        seed: o.seed,
        envoy_workers: rig::WORKERS,
        load_s: loaded.load_s,
        timeline: (&timeline).into(),
        accounting,
        drained,
        client: report::client_counts(&loaded.outcomes),
        upstream: rig.upstream.stats.as_ref().into(),
        pushes: loaded.pushes,
        crashes: loaded.crashes,
        rss: loaded.rss,
    };
    println!("{}", report::table(&summary.checks));
    let dir = repo_root().join("dist/soak");
    let json = write_json(&summary)?;
    let md = report::markdown(&summary);
    let written = write_outputs(
        &dir,
        &[
            ("summary.json", &json),
            ("report.md", md.as_bytes()),
            ("envoy.log", settled.envoy_log.as_bytes()),
            ("access.log", settled.access_log.as_bytes()),
            ("envoy-stats.txt", stats_text(&settled.stats).as_bytes()),
        ],
    )?;
    eprintln!("[soak] wrote {}", written.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    for p in summary.pushes.iter().filter(|p| p.accepted != p.valid) {
        eprintln!("[soak] push at {:.1} s (valid: {}) got the wrong verdict:\n{}", p.at_s, p.valid, p.output);
    }
    Ok(passed)
}

/// Envoy's counters and gauges at the end, one `name: value` a line.
fn stats_text(stats: &std::collections::BTreeMap<String, u64>) -> String {
    stats.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}
