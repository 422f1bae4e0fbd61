//! `--live` at reduced scale (16 s of traffic), through a real Envoy with the real module: the
//! filter's configuration arrives over ECDS, the `storefront` bucket is lowered from 200/s to
//! 100/s halfway through the surge with `scripts/surgeguard-apply`, and the measured numbers must
//! show Envoy taking the update with no restart, the admitted rate falling to the new limit, and
//! no connection dropped. Every process it starts is stopped by its handle, also on failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use surgeguard_demo::cli::Options;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn a_limit_lowered_live_mid_surge_takes_effect_with_no_restart_and_no_dropped_connection() {
    let root = surgeguard_harness::repo_root();
    let shipped = std::fs::read(root.join("envoy/ecds/live/surgeguard.yaml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let options = Options {
        duration_s: 16.0,
        live: true,
        live_rate_per_s: 100.0,
        out_dir: out.path().to_path_buf(),
        progress: false,
        ..Options::default()
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let t0 = std::time::Instant::now();
    let demo = surgeguard_demo::live::run(&options, &cancel).unwrap();
    eprintln!("{}\n(live run in {:.1} s)", demo.table, t0.elapsed().as_secs_f64());
    assert!(!is_running(demo.envoy_pid), "Envoy {} was left running", demo.envoy_pid);
    assert_eq!(
        std::fs::read(root.join("envoy/ecds/live/surgeguard.yaml")).unwrap(),
        shipped,
        "the shipped ECDS resource is never touched"
    );

    let s: Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("summary.json")).unwrap()).unwrap();
    let live = &s["live"];
    eprintln!("{}", serde_json::to_string_pretty(live).unwrap());
    assert_eq!(s["mode"], "live");
    assert_eq!(live["from"]["tokens_per_second"], 200.0);
    assert_eq!(live["to"]["tokens_per_second"], 100.0);

    // Envoy took the update over ECDS, promptly, from the same process.
    assert_eq!(live["accepted"], true, "{live}");
    assert_eq!(num(&live["ecds"]["update_success_after"]), num(&live["ecds"]["update_success_before"]) + 1.0);
    assert_eq!(num(&live["ecds"]["update_rejected"]), 0.0);
    let (due, applied) = (num(&live["due_s"]), num(&live["applied_s"]));
    assert_eq!(due, 8.0, "halfway through the surge (4 to 12 s)");
    assert!(applied >= due && applied < due + 3.0, "applied at {applied} s");
    assert_eq!(live["envoy_restarted"], false);
    let log = live["filter_log"].as_str().unwrap_or_default();
    assert!(log.starts_with("surgeguard: configuration accepted"), "{log}");

    // The admitted rate fell from the old limit to the new one, in the same surge.
    let (before, after) = (&live["before"], &live["after"]);
    assert!(num(&before["to_s"]) - num(&before["from_s"]) >= 2.5, "{before}");
    assert!(num(&after["to_s"]) - num(&after["from_s"]) >= 2.0, "{after}");
    let (b, a) = (num(&before["served_per_s"]), num(&after["served_per_s"]));
    assert!(num(&before["offered_per_s"]) > 250.0 && num(&after["offered_per_s"]) > 250.0, "the surge is on");
    assert!((160.0..=240.0).contains(&b), "before: about the old 200/s: {b}");
    assert!((70.0..=110.0).contains(&a), "after: about the new 100/s: {a}");
    assert!(a < 0.6 * b, "after {a}/s vs before {b}/s");
    assert!(num(&after["refused_per_s"]) > num(&before["refused_per_s"]) + 50.0);
    // Checkout (critical) kept being served after the change.
    let checkout = &after["kinds"]["checkout"];
    assert_eq!(checkout["served"], checkout["offered"], "{checkout}");

    // No connection dropped, no request failed, and Envoy closed none with a request active.
    assert_eq!(num(&live["connection_errors"]), 0.0);
    assert_eq!(num(&live["failed"]), 0.0);
    assert_eq!(num(&s["runs"]["with_filter"]["total"]["failed"]), 0.0);
    assert_eq!(num(&live["downstream_cx_destroy_local_active_rq"]), 0.0);
    assert_eq!(s["all_claims_hold"], Value::Bool(true), "the demo's own verdict agrees: {}", s["claims"]);

    let html = std::fs::read_to_string(out.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("changed live"));
    for external in ["<script", " src=", "href=", "@import", "url("] {
        assert!(!html.contains(external), "the report fetches nothing: {external}");
    }
}
