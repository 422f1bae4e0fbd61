//! `--fleet` at reduced scale (12 s of traffic per run instead of 24, same rates, the shipped
//! configs): three Envoys on one database tier, per-Envoy limits then fleet-wide ones leased
//! from a real `surgeguard-rls` over a real Redis. `summary.json` must have the main demo's
//! shape and show what a fleet-wide limit promises; nothing the demo started may outlive it. A watchdog
//! raises the demo's cancel flag if it runs too long, so the test ends either way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_demo::cli::Options;

const KINDS: [&str; 5] = ["checkout", "cart", "browse", "search", "bot"];
/// Two 12 s runs, six Envoy starts, Redis and the service: about 45 s on the 2-core machine.
const WATCHDOG: Duration = Duration::from_secs(180);

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Live (not zombie) child processes of this test process.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> =
            stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
        if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_short_fleet_demo_shows_per_envoy_limits_let_the_surge_through_and_fleet_limits_hold() {
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        duration_s: 12.0,
        fleet: true,
        out_dir: out.path().to_path_buf(),
        progress: false,
        ..Options::default()
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (c, d) = (Arc::clone(&cancel), Arc::clone(&done));
    let watchdog = std::thread::spawn(move || {
        let t0 = Instant::now();
        while !d.load(Ordering::SeqCst) && t0.elapsed() < WATCHDOG {
            std::thread::sleep(Duration::from_millis(100));
        }
        c.store(true, Ordering::SeqCst);
    });
    let t0 = Instant::now();
    let demo = surgeguard_demo::fleet::run(&options, &cancel);
    done.store(true, Ordering::SeqCst);
    watchdog.join().unwrap();
    let demo = demo.unwrap_or_else(|e| panic!("the fleet demo failed after {:.0} s: {e}", t0.elapsed().as_secs_f64()));
    eprintln!("{}\n(two runs in {:.1} s)", demo.table, t0.elapsed().as_secs_f64());

    // Every Envoy, the storefront, Redis and the rate limit service are gone.
    assert!(surgeguard_demo::interrupt::registered().is_empty());
    assert_eq!(children(), Vec::<u32>::new(), "no process the demo started is left");

    let s: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["mode"], "fleet");
    let pool = num(&s["db_pool_size"]);
    assert_eq!(pool, 40.0);
    let per_envoy = &s["runs"]["per_envoy"];
    let fleet = &s["runs"]["fleet"];
    assert_eq!(s["runs"].as_object().unwrap().len(), 2);

    // The main demo's shape: per kind offered = served + refused + failed, percentiles in
    // order, the same offered load in both runs.
    for kind in KINDS {
        let (a, b) = (&per_envoy["traffic"][kind], &fleet["traffic"][kind]);
        for run in [a, b] {
            let total = num(&run["served"]) + num(&run["refused"]) + num(&run["failed"]);
            assert_eq!(num(&run["offered"]), total, "{kind}");
            assert!(num(&run["p50_ms"]) <= num(&run["p99_ms"]), "{kind}");
        }
        assert_eq!(a["offered"], b["offered"], "{kind}: same offered load in both runs");
        assert!(num(&a["offered"]) > 0.0, "{kind}");
    }

    // Three Envoys, the load dealt evenly over them.
    let offered = num(&s["load"]["offered"]);
    for run in [per_envoy, fleet] {
        let envoys = run["envoys"].as_array().unwrap();
        assert_eq!(envoys.len(), 3);
        let requests: Vec<f64> = envoys.iter().map(|e| num(&e["requests"])).collect();
        assert_eq!(requests.iter().sum::<f64>(), offered);
        assert!(requests.iter().all(|r| (r - offered / 3.0).abs() <= 1.0), "round robin: {requests:?}");
    }

    // Per-Envoy limits: no bucket refuses, the database saturates.
    assert_eq!(per_envoy["leases"]["calls"], 0);
    assert_eq!(num(&per_envoy["filter_counters"]["surgeguard.limit.storefront.rate_limited"]), 0.0);
    assert_eq!(num(&per_envoy["db_peak_in_use"]), pool, "the pool saturates");

    // Fleet-wide limits: the database holds (no request waits out the pool), checkout is
    // served, the limit is held fleet-wide with few lease calls, every Envoy in fleet mode.
    assert!(num(&fleet["db_peak_in_use"]) <= pool, "{}", fleet["db_peak_in_use"]);
    assert_eq!(num(&fleet["db_wait_timeouts"]), 0.0);
    let c = &fleet["traffic"]["checkout"];
    assert!(num(&c["served"]) / num(&c["offered"]) >= 0.99, "{c}");
    let limit = &s["fleet"]["limit"];
    let surge_s = 6.0;
    let allowance = num(&limit["burst"]) + num(&limit["tokens_per_second"]) * surge_s;
    assert!(num(&fleet["admitted_per_s"]["surge"]) * surge_s <= 1.1 * allowance, "{}", fleet["admitted_per_s"]);
    assert!(
        num(&per_envoy["admitted_per_s"]["surge"]) > num(&fleet["admitted_per_s"]["surge"]),
        "per-Envoy limits admit more than fleet-wide ones: {} vs {}",
        per_envoy["admitted_per_s"],
        fleet["admitted_per_s"]
    );
    let leases = &fleet["leases"];
    assert!(num(&leases["calls"]) > 0.0);
    assert!(num(&leases["calls_per_admitted"]) < 0.5, "leases, not a call per request: {leases}");
    assert_eq!(leases["envoys_in_fleet_mode_at_end"], 3);
    assert_eq!(s["all_claims_hold"], Value::Bool(true), "the demo's own verdict agrees: {:#}", s["claims"]);

    // The report: the main demo's, with the run names and the fleet's section.
    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    for text in ["<svg", "per-Envoy limits", "fleet-wide limits", "The fleet", "lease calls"] {
        assert!(html.contains(text), "{text}");
    }
    for external in ["<script", " src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "the report fetches nothing: {external}");
    }
}
