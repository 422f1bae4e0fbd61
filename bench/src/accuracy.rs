//! The accuracy run: Envoy with 2 workers, one global bucket, offered 5x its rate for 10 s.
//! A bucket that is exact across workers admits `burst + rate x elapsed` (it starts full);
//! anything else is the error, in percent of that.
//!
//! The same bucket is given to surgeguard (`tokens_per_second`, `burst`) and to Envoy's native
//! local_ratelimit (`max_tokens`, refilled every 50 ms), both on a direct_response route.

use crate::arms::{bootstrap, Filter, Variant};
use crate::oha::{self, OhaRun};
use crate::stats::round_to;
use std::path::Path;
use std::time::Duration;
use surgeguard_harness::envoy::{Envoy, Options};

/// The contract's storefront limit: 500 tokens/s, burst 1000.
pub const RATE_PER_S: u64 = 500;
pub const BURST: u64 = 1000;
pub const OVERLOAD: u64 = 5;
pub const WORKERS: u32 = 2;

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

impl Accuracy {
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "workers": WORKERS,
            "overload": OVERLOAD,
            "tokens_per_second": RATE_PER_S,
            "burst": BURST,
            "elapsed_s": round_to(self.elapsed_s, 3),
            "duration_s": round_to(self.duration_s, 3),
            "offered_rps": round_to(self.offered_rps, 1),
            "admitted": self.admitted,
            "refused": self.refused,
            "other_responses_or_errors": self.other,
            "expected": round_to(self.expected, 1),
            "error_pct": round_to(self.error_pct, 3),
            "connections_per_worker": self.connections_per_worker,
            "filter_admitted": self.filter_admitted,
            "fail_open": self.fail_open,
        })
    }
}

pub struct AccuracyRun<'a> {
    pub oha: &'a Path,
    pub surgeguard: &'a Path,
    pub duration: Duration,
}

/// Runs the accuracy arm `which` ("surgeguard" or "native_local_ratelimit").
pub fn run(a: &AccuracyRun, which: &'static str) -> Result<Accuracy, String> {
    let config = surgeguard_config(RATE_PER_S, BURST);
    let filter = if which == "surgeguard" {
        Filter::Wasm { module: a.surgeguard, root_id: "surgeguard", configuration: Some(&config) }
    } else {
        Filter::NativeBucket { tokens_per_s: RATE_PER_S, burst: BURST }
    };
    let yaml = bootstrap(&filter, Variant::DirectResponse, 0);
    let opts = Options {
        concurrency: WORKERS,
        cpu_list: Some("0,1".into()),
        log_level: "warn".into(),
        extra_args: Vec::new(),
    };
    let envoy = Envoy::start(&yaml, &opts).map_err(|e| format!("accuracy ({which}): {}\n{}", e.message, e.log))?;
    let port = envoy.listener_port();
    let url = format!("http://127.0.0.1:{port}/checkout");
    let offered = (RATE_PER_S * OVERLOAD) as f64;
    // No warm-up: the bucket must start full at the first request.
    let report = oha::run(&OhaRun {
        oha: a.oha,
        url: &url,
        headers: &[],
        rate_per_s: offered,
        duration: a.duration,
        connections: 16,
        cpu_list: "0,1",
        worker_threads: 2,
    })
    .map_err(|e| format!("accuracy ({which}): {e}"))?;
    let admitted = report.count(200);
    let refused = report.count(429);
    let other = report.responses() - admitted - refused + report.errors;
    let elapsed_s = offered_span_s(report.responses() + report.errors, offered);
    let expected = expected_admitted(BURST, RATE_PER_S, elapsed_s);
    // surgeguard hands its counters to Envoy on its tick (every second): wait for one.
    crate::procs::sleep(Duration::from_millis(1500))?;
    let stats = crate::envoy_stats::all(&envoy);
    let connections_per_worker = crate::envoy_stats::per_worker(&stats, "downstream_cx_total");
    let (filter_admitted, fail_open) = if which == "surgeguard" {
        (
            crate::envoy_stats::get(&stats, "wasmcustom.surgeguard.class.all.admitted"),
            Some(crate::envoy_stats::get(&stats, "wasmcustom.surgeguard.fail_open").unwrap_or(0)),
        )
    } else {
        (crate::envoy_stats::get(&stats, "bench_local_rate_limit.http_local_rate_limit.ok"), None)
    };
    Ok(Accuracy {
        arm: which,
        admitted,
        refused,
        other,
        expected,
        error_pct: error_pct(admitted, expected),
        offered_rps: report.achieved_rps,
        elapsed_s,
        duration_s: a.duration.as_secs_f64(),
        connections_per_worker,
        filter_admitted,
        fail_open,
    })
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

    #[test]
    fn the_surgeguard_config_is_valid_json_with_one_unreserved_class() {
        let v: serde_json::Value = serde_json::from_str(&surgeguard_config(500, 1000)).unwrap();
        assert_eq!(v["classes"].as_array().unwrap().len(), 1);
        assert_eq!(v["limits"][0]["tokens_per_second"], 500);
        assert_eq!(v["limits"][0]["burst"], 1000);
    }
}
