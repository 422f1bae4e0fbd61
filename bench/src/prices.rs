//! `--prices`: what one host call of each kind costs Envoy, in CPU nanoseconds, measured with
//! the probe filter (`bench/probe-filter`): one Envoy per kind making `CALLS_PER_REQUEST` calls
//! per request, and one making none; rounds alternate them as the main run does. The price of a
//! kind is `(CPU per request with the calls - CPU per request without) / CALLS_PER_REQUEST`.
//! Multiplied by the host calls the profile counts, it prices a request's host calls.

use crate::arms::{bootstrap, Filter, Variant, PATH};
use crate::cli::Settings;
use crate::procs::check_interrupted;
use crate::run::{bench_options, measure_throughput, ENVOY_CPU};
use crate::stats::{median, round_to};
use serde_json::{json, Value};
use std::path::Path;
use surgeguard_harness::envoy::Envoy;

pub const CALLS_PER_REQUEST: u32 = 20;

/// The probe's operations (its configuration's `OP`), `none` first.
pub const OPS: [&str; 8] =
    ["none", "clock", "header", "header_pairs", "property", "shared_get", "shared_cas", "metric"];

/// Nanoseconds per call from CPU microseconds per request with and without the calls.
pub fn price_ns(cpu_us_with: f64, cpu_us_without: f64, calls: u32) -> f64 {
    (cpu_us_with - cpu_us_without) * 1000.0 / f64::from(calls.max(1))
}

pub fn measure(probe: &Path, s: &Settings) -> Result<Value, String> {
    let mut envoys = Vec::new();
    for op in OPS {
        let config = format!("{op} {CALLS_PER_REQUEST}");
        let filter = Filter::Wasm { module: probe, root_id: "probe", configuration: Some(&config) };
        let yaml = bootstrap(&filter, Variant::DirectResponse, 0);
        let envoy = Envoy::start(&yaml, &bench_options(1, ENVOY_CPU))
            .map_err(|e| format!("probe {op}: {}\n{}", e.message, e.log))?;
        let url = format!("http://127.0.0.1:{}{PATH}", envoy.listener_port());
        envoys.push((op, envoy, url));
    }
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); OPS.len()];
    for (_, envoy, url) in &envoys {
        measure_throughput(envoy, url, &Settings { duration_s: 1.0, ..s.clone() })?;
    }
    for round in 0..s.rounds as usize {
        for i in 0..OPS.len() {
            check_interrupted()?;
            let k = (i + round) % OPS.len();
            let (op, envoy, url) = &envoys[k];
            let t = measure_throughput(envoy, url, s)?;
            eprintln!("    prices round {}/{} {op:<11} {:>6.1} us CPU/req", round + 1, s.rounds, t.cpu_us_per_request);
            cpu[k].push(t.cpu_us_per_request);
        }
    }
    let base = median(&cpu[0]).unwrap_or(f64::NAN);
    let mut prices = serde_json::Map::new();
    for (k, op) in OPS.iter().enumerate().skip(1) {
        let with = median(&cpu[k]).unwrap_or(f64::NAN);
        prices.insert(op.to_string(), json!(round_to(price_ns(with, base, CALLS_PER_REQUEST), 0)));
    }
    Ok(json!({
        "method": format!("probe filter making {CALLS_PER_REQUEST} calls per request of one kind; (median CPU/request with - without) / {CALLS_PER_REQUEST}; direct_response; {} rounds", s.rounds),
        "ns_per_call": prices,
        "probe_none_cpu_us_per_request": round_to(base, 2),
        "cpu_us_per_request": OPS.iter().zip(&cpu).map(|(op, v)| (op.to_string(), json!(median(v).map(|m| round_to(m, 2))))).collect::<serde_json::Map<_, _>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_price_is_the_cpu_difference_per_call_in_nanoseconds() {
        // 20 calls adding 10 us per request: 500 ns a call.
        assert_eq!(price_ns(35.0, 25.0, 20), 500.0);
        assert_eq!(price_ns(25.0, 25.0, 20), 0.0);
    }

    #[test]
    fn the_baseline_comes_first() {
        assert_eq!(OPS[0], "none");
    }
}
