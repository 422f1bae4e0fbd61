//! `--prices`: what one host call of each kind costs Envoy, in CPU nanoseconds, measured with
//! the probe filter (`bench/probe-filter`): one Envoy per kind making `CALLS_PER_REQUEST` calls
//! per request, and one making none; rounds alternate them as the main run does. The price of a
//! kind is `(CPU per request with the calls - CPU per request without) / CALLS_PER_REQUEST`.
//! Multiplied by the host calls the profile counts, it prices a request's host calls.

use crate::arms::{bootstrap, Filter, Ports, Variant, PATH};
use crate::cli::Settings;
use crate::procs::check_interrupted;
use crate::run::{bench_options, measure_throughput, ENVOY_CPU};
use crate::stats::{median, round_to, rounded};
use serde::Serialize;
use std::collections::BTreeMap;
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

/// `host_call_prices` in `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prices {
    pub method: String,
    /// Nanoseconds per call, by kind (`None`: a kind without measurements).
    pub ns_per_call: BTreeMap<&'static str, Option<f64>>,
    pub probe_none_cpu_us_per_request: Option<f64>,
    /// Median Envoy CPU per request of each probe, `none` included.
    pub cpu_us_per_request: BTreeMap<&'static str, Option<f64>>,
}

impl Prices {
    /// From each op's CPU per request over the rounds (in `OPS` order).
    pub fn from_cpu(cpu_us: &[Vec<f64>], rounds: u32) -> Prices {
        let median_of = |k: usize| cpu_us.get(k).and_then(|v| median(v));
        let base = median_of(0).unwrap_or(f64::NAN);
        Prices {
            method: format!("probe filter making {CALLS_PER_REQUEST} calls per request of one kind; (median CPU/request with - without) / {CALLS_PER_REQUEST}; direct_response; {rounds} rounds"),
            ns_per_call: OPS
                .iter()
                .enumerate()
                .skip(1)
                .map(|(k, op)| {
                    let with = median_of(k).unwrap_or(f64::NAN);
                    (*op, rounded(price_ns(with, base, CALLS_PER_REQUEST), 0))
                })
                .collect(),
            probe_none_cpu_us_per_request: rounded(base, 2),
            cpu_us_per_request: OPS.iter().enumerate().map(|(k, op)| (*op, median_of(k).map(|m| round_to(m, 2)))).collect(),
        }
    }
}

/// One probe Envoy per op, warmed up, measured in alternating rounds.
pub fn measure(probe: &Path, s: &Settings) -> Result<Prices, String> {
    let probes = start(probe)?;
    for (_, envoy, url) in &probes {
        measure_throughput(envoy, url, &Settings { duration_s: 1.0, ..s.clone() })?;
    }
    let cpu_us = rounds(&probes, s)?;
    Ok(Prices::from_cpu(&cpu_us, s.rounds))
}

fn start(probe: &Path) -> Result<Vec<(&'static str, Envoy, String)>, String> {
    let mut envoys = Vec::new();
    for op in OPS {
        let config = format!("{op} {CALLS_PER_REQUEST}");
        let filter = Filter::Wasm { module: probe, root_id: "probe", configuration: Some(&config) };
        let yaml = bootstrap(&filter, Variant::DirectResponse, Ports::default(), false);
        let envoy = Envoy::start(&yaml, &bench_options(1, ENVOY_CPU))
            .map_err(|e| format!("probe {op}: {}\n{}", e.message, e.log))?;
        let url = envoy.url(PATH);
        envoys.push((op, envoy, url));
    }
    Ok(envoys)
}

/// Each probe's Envoy CPU per request, one measurement a round, the order rotating.
fn rounds(probes: &[(&'static str, Envoy, String)], s: &Settings) -> Result<Vec<Vec<f64>>, String> {
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); probes.len()];
    for round in 0..s.rounds as usize {
        for i in 0..probes.len() {
            check_interrupted()?;
            let k = (i + round) % probes.len();
            let (op, envoy, url) = &probes[k];
            let t = measure_throughput(envoy, url, s)?;
            eprintln!("    prices round {}/{} {op:<11} {:>6.1} us CPU/req", round + 1, s.rounds, t.cpu_us_per_request);
            cpu[k].push(t.cpu_us_per_request);
        }
    }
    Ok(cpu)
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

    #[test]
    fn each_kind_is_priced_against_the_probe_that_makes_no_call() {
        let mut cpu = vec![vec![25.0, 26.0, 24.0]; OPS.len()];
        cpu[1] = vec![35.0, 35.0, 35.0];
        cpu[7] = Vec::new();
        let p = Prices::from_cpu(&cpu, 3);
        assert_eq!(p.ns_per_call["clock"], Some(500.0));
        assert_eq!(p.ns_per_call["header"], Some(0.0));
        assert_eq!(p.ns_per_call["metric"], None, "no measurement, no price");
        assert!(!p.ns_per_call.contains_key("none"));
        assert_eq!(p.probe_none_cpu_us_per_request, Some(25.0));
        assert_eq!(p.cpu_us_per_request["metric"], None);
        assert!(p.method.ends_with("3 rounds"));
    }
}
