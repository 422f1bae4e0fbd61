//! The accuracy run: Envoy with 2 workers, one global bucket, offered 5x its rate for 10 s.
//! A bucket that is exact across workers admits `burst + rate x elapsed` (it starts full);
//! anything else is the error, in percent of that.
//!
//! The same bucket is given to surgeguard (`tokens_per_second`, `burst`) and to Envoy's native
//! local_ratelimit (`max_tokens`, refilled every 50 ms), both on a direct_response route.

use crate::arms::{bootstrap, Filter, Ports, Variant};
use crate::envoy_stats::per_worker;
use crate::oha::{self, OhaReport, OhaRun};
use crate::stats::round_to;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use surgeguard_harness::envoy::{Envoy, Options};

/// The contract's storefront limit: 500 tokens/s, burst 1000.
pub const RATE_PER_S: u64 = 500;
pub const BURST: u64 = 1000;
pub const OVERLOAD: u64 = 5;
pub const WORKERS: u32 = 2;
const OFFERED_RPS: f64 = (RATE_PER_S * OVERLOAD) as f64;

/// The admitted count an exact bucket gives over `elapsed_s` of overload.
pub fn expected_admitted(burst: u64, rate_per_s: u64, elapsed_s: f64) -> f64 {
    burst as f64 + rate_per_s as f64 * elapsed_s
}

/// The time over which `sent` requests were offered at `rate_per_s` on a fixed schedule
/// (the first at 0, the last at `(sent - 1) / rate`): the window the bucket is judged on.
pub fn offered_span_s(sent: u64, rate_per_s: f64) -> f64 {
    if rate_per_s <= 0.0 {
        return 0.0;
    }
    sent.saturating_sub(1) as f64 / rate_per_s
}

/// Signed error of `admitted` against `expected`, in percent (positive: too many admitted).
pub fn error_pct(admitted: u64, expected: f64) -> f64 {
    if expected <= 0.0 {
        return 0.0;
    }
    (admitted as f64 - expected) / expected * 100.0
}

/// The surgeguard configuration of the accuracy run: one class (no reserve), one bucket.
pub fn surgeguard_config(rate_per_s: u64, burst: u64) -> String {
    format!(
        r#"{{"classes": [{{"name": "all"}}], "limits": [{{"name": "storefront", "key": "global", "tokens_per_second": {rate_per_s}, "burst": {burst}}}]}}"#
    )
}

/// One arm's accuracy result.
#[derive(Debug, Clone)]
pub struct Accuracy {
    pub arm: &'static str,
    pub admitted: u64,
    pub refused: u64,
    pub other: u64,
    pub expected: f64,
    pub error_pct: f64,
    pub offered_rps: f64,
    /// First to last request sent (see [`offered_span_s`]).
    pub elapsed_s: f64,
    pub duration_s: f64,
    /// Downstream connections each Envoy worker accepted: both must be > 0 for the run to
    /// test exactness across workers.
    pub connections_per_worker: Vec<u64>,
    /// What the filter itself counted as admitted (its stats), as a cross-check.
    pub filter_admitted: Option<u64>,
    /// surgeguard only: requests admitted without a decision because shared data stayed
    /// contended or failed (`surgeguard.fail_open`).
    pub fail_open: Option<u64>,
}

/// One arm's accuracy as `results.json` shows it (`accuracy`, `accuracy_native`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccuracySummary {
    pub workers: u32,
    pub overload: u64,
    pub tokens_per_second: u64,
    pub burst: u64,
    pub elapsed_s: f64,
    pub duration_s: f64,
    pub offered_rps: f64,
    pub admitted: u64,
    pub refused: u64,
    pub other_responses_or_errors: u64,
    pub expected: f64,
    pub error_pct: f64,
    pub connections_per_worker: Vec<u64>,
    pub filter_admitted: Option<u64>,
    pub fail_open: Option<u64>,
}

impl AccuracySummary {
    pub fn new(a: &Accuracy) -> AccuracySummary {
        AccuracySummary {
            workers: WORKERS,
            overload: OVERLOAD,
            tokens_per_second: RATE_PER_S,
            burst: BURST,
            elapsed_s: round_to(a.elapsed_s, 3),
            duration_s: round_to(a.duration_s, 3),
            offered_rps: round_to(a.offered_rps, 1),
            admitted: a.admitted,
            refused: a.refused,
            other_responses_or_errors: a.other,
            expected: round_to(a.expected, 1),
            error_pct: round_to(a.error_pct, 3),
            connections_per_worker: a.connections_per_worker.clone(),
            filter_admitted: a.filter_admitted,
            fail_open: a.fail_open,
        }
    }
}

/// The contract's `accuracy`: the surgeguard run, or (`--skip-accuracy`) the setup with the
/// contract's figures `null`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AccuracyField {
    Measured(AccuracySummary),
    NotMeasured { workers: u32, overload: u64, admitted: Option<u64>, expected: Option<f64>, error_pct: Option<f64> },
}

impl AccuracyField {
    pub fn new(surgeguard: Option<&Accuracy>) -> AccuracyField {
        match surgeguard {
            Some(a) => AccuracyField::Measured(AccuracySummary::new(a)),
            None => AccuracyField::NotMeasured {
                workers: WORKERS,
                overload: OVERLOAD,
                admitted: None,
                expected: None,
                error_pct: None,
            },
        }
    }

    pub fn measured(&self) -> Option<&AccuracySummary> {
        match self {
            AccuracyField::Measured(a) => Some(a),
            AccuracyField::NotMeasured { .. } => None,
        }
    }
}

/// Both accuracy runs: the same bucket in surgeguard and in Envoy's native filter.
pub struct AccuracyPair {
    pub surgeguard: Accuracy,
    pub native: Accuracy,
}

pub struct AccuracyRun<'a> {
    pub oha: &'a Path,
    pub surgeguard: &'a Path,
    pub duration: Duration,
}

/// Runs both arms on the same bucket, surgeguard first.
pub fn run_both(a: &AccuracyRun) -> Result<AccuracyPair, String> {
    Ok(AccuracyPair { surgeguard: run(a, "surgeguard")?, native: run(a, "native_local_ratelimit")? })
}

/// Runs the accuracy arm `which` ("surgeguard" or "native_local_ratelimit").
pub fn run(a: &AccuracyRun, which: &'static str) -> Result<Accuracy, String> {
    let envoy = start(a, which)?;
    let report = overload(a, &envoy).map_err(|e| format!("accuracy ({which}): {e}"))?;
    // surgeguard hands its counters to Envoy on its tick (every second): wait for one.
    crate::procs::sleep(Duration::from_millis(1500))?;
    let stats = envoy.stats();
    Ok(Accuracy::judge(which, &report, &stats, a.duration))
}

/// Envoy with `WORKERS` workers on both cores and the bucket in front of a direct_response.
fn start(a: &AccuracyRun, which: &str) -> Result<Envoy, String> {
    let config = surgeguard_config(RATE_PER_S, BURST);
    let filter = if which == "surgeguard" {
        Filter::Wasm { module: a.surgeguard, root_id: "surgeguard", configuration: Some(&config) }
    } else {
        Filter::NativeBucket { tokens_per_s: RATE_PER_S, burst: BURST }
    };
    let yaml = bootstrap(&filter, Variant::DirectResponse, Ports::default(), false);
    let opts = Options {
        concurrency: WORKERS,
        cpu_list: Some("0,1".into()),
        log_level: "warn".into(),
        extra_args: Vec::new(),
    };
    Envoy::start(&yaml, &opts).map_err(|e| format!("accuracy ({which}): {}\n{}", e.message, e.log))
}

/// `OVERLOAD` times the bucket's rate, open loop, for the run's duration.
fn overload(a: &AccuracyRun, envoy: &Envoy) -> Result<OhaReport, String> {
    // No warm-up: the bucket must start full at the first request.
    oha::run(&OhaRun {
        oha: a.oha,
        url: &envoy.url("/checkout"),
        headers: &[],
        rate_per_s: OFFERED_RPS,
        duration: a.duration,
        connections: 16,
        cpu_list: "0,1",
        worker_threads: 2,
    })
}

impl Accuracy {
    /// The arm's result from what oha saw and what Envoy counted.
    fn judge(which: &'static str, report: &OhaReport, stats: &BTreeMap<String, u64>, duration: Duration) -> Accuracy {
        let admitted = report.count(200);
        let refused = report.count(429);
        let elapsed_s = offered_span_s(report.responses() + report.errors, OFFERED_RPS);
        let expected = expected_admitted(BURST, RATE_PER_S, elapsed_s);
        let stat = |name: &str| stats.get(name).copied();
        let (filter_admitted, fail_open) = if which == "surgeguard" {
            (
                stat("wasmcustom.surgeguard.class.all.admitted"),
                Some(stat("wasmcustom.surgeguard.fail_open").unwrap_or(0)),
            )
        } else {
            (stat("bench_local_rate_limit.http_local_rate_limit.ok"), None)
        };
        Accuracy {
            arm: which,
            admitted,
            refused,
            other: report.responses() - admitted - refused + report.errors,
            expected,
            error_pct: error_pct(admitted, expected),
            offered_rps: report.achieved_rps,
            elapsed_s,
            duration_s: duration.as_secs_f64(),
            connections_per_worker: per_worker(stats, "downstream_cx_total"),
            filter_admitted,
            fail_open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_bucket_admits_burst_plus_rate_times_elapsed() {
        assert_eq!(expected_admitted(1000, 500, 10.0), 6000.0);
        assert_eq!(expected_admitted(1, 20, 0.5), 11.0);
    }

    #[test]
    fn the_window_runs_from_the_first_request_to_the_last() {
        assert_eq!(offered_span_s(25_001, 2500.0), 10.0);
        assert_eq!(offered_span_s(1, 2500.0), 0.0);
        assert_eq!(offered_span_s(0, 2500.0), 0.0);
    }

    #[test]
    fn error_is_signed_percent_of_expected() {
        assert_eq!(error_pct(6060, 6000.0), 1.0);
        assert_eq!(error_pct(5940, 6000.0), -1.0);
        assert_eq!(error_pct(6000, 6000.0), 0.0);
        assert_eq!(error_pct(5, 0.0), 0.0);
    }

    fn oha_saw(statuses: &[(u16, u64)], errors: u64) -> OhaReport {
        OhaReport {
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            achieved_rps: 2500.0,
            total_s: 10.0,
            statuses: statuses.iter().copied().collect(),
            errors,
        }
    }

    #[test]
    fn a_run_is_judged_on_what_oha_saw_and_cross_checked_with_the_filters_own_count() {
        let report = oha_saw(&[(200, 6006), (429, 18990), (503, 4)], 1);
        let stats = BTreeMap::from([
            ("wasmcustom.surgeguard.class.all.admitted".to_string(), 6006),
            ("listener.127.0.0.1_41001.worker_0.downstream_cx_total".to_string(), 9),
            ("listener.127.0.0.1_41001.worker_1.downstream_cx_total".to_string(), 7),
        ]);
        let a = Accuracy::judge("surgeguard", &report, &stats, Duration::from_secs(10));
        assert_eq!((a.admitted, a.refused, a.other), (6006, 18990, 5));
        // 25001 requests sent at 2500/s: 10 s from the first to the last.
        assert_eq!((a.elapsed_s, a.expected), (10.0, 6000.0));
        assert!((a.error_pct - 0.1).abs() < 1e-9);
        assert_eq!(a.connections_per_worker, vec![9, 7]);
        assert_eq!((a.filter_admitted, a.fail_open), (Some(6006), Some(0)));
        let native = Accuracy::judge("native_local_ratelimit", &report, &stats, Duration::from_secs(10));
        assert_eq!((native.filter_admitted, native.fail_open), (None, None));
    }

    #[test]
    fn the_surgeguard_config_is_valid_json_with_one_unreserved_class() {
        let v: serde_json::Value = serde_json::from_str(&surgeguard_config(500, 1000)).unwrap();
        assert_eq!(v["classes"].as_array().unwrap().len(), 1);
        assert_eq!(v["limits"][0]["tokens_per_second"], 500);
        assert_eq!(v["limits"][0]["burst"], 1000);
    }
}
