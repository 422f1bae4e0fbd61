//! The fleet arm's side of the run: the rate limit service it leases from (a real Redis and
//! `surgeguard-rls`, started once and stopped when dropped), and what its Envoy's stats say about
//! the leases: whether the limit is in fleet mode, and how often it calls the service.
//!
//! Two counts of calls: the module's `lease_calls` (the figure the floor reads; the module hands its
//! counters to Envoy on its heartbeat, every second, so a reading can be up to a second late)
//! and Envoy's own count of requests to the service's cluster (exact, as a cross-check).

use crate::arms::{fleet_limits_yaml, FLEET_CLUSTER};
use crate::procs::{check_interrupted, sleep};
use crate::stats::{ratio, rounded};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use surgeguard_harness::envoy::Envoy;
use surgeguard_harness::rls::{Counters, RateLimitService, Redis};

/// Redis and the rate limit service, for the run's duration.
pub struct Service {
    // Field order is drop order: the service before its Redis.
    pub rls: RateLimitService,
    pub redis: Redis,
}

impl Service {
    /// Starts Redis, then the service with the limits of `fleet_configuration`.
    pub fn start(fleet_configuration: &str) -> Result<Service, String> {
        let limits = fleet_limits_yaml(fleet_configuration)?;
        let redis = Redis::start()?;
        let rls = RateLimitService::start(Counters::Redis(&redis), &limits)?;
        Ok(Service { rls, redis })
    }
}

/// The limit the fleet arm makes fleet-wide (its configuration's one global limit).
pub const LIMIT: &str = "storefront";

/// What the fleet arm's Envoy reports at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub lease_calls: u64,
    pub lease_grants: u64,
    pub lease_denials: u64,
    pub lease_failures: u64,
    /// The mode gauge: 1 fleet, 0 local fallback.
    pub fleet_mode: u64,
    /// Envoy's requests to the service's cluster.
    pub service_requests: u64,
    pub downstream_requests: u64,
    pub at: Option<Instant>,
}

/// The `/stats` filter that covers a [`Reading`].
pub const STATS_FILTER: &str = r"surgeguard\.limit\.|ratelimit\.upstream_rq_total|http\.bench\.downstream_rq_total";

impl Reading {
    pub fn from_stats(stats: &BTreeMap<String, u64>, at: Option<Instant>) -> Reading {
        let limit =
            |stat: &str| stats.get(&format!("wasmcustom.surgeguard.limit.{LIMIT}.{stat}")).copied().unwrap_or(0);
        let get = |name: &str| stats.get(name).copied().unwrap_or(0);
        Reading {
            lease_calls: limit("lease_calls"),
            lease_grants: limit("lease_grants"),
            lease_denials: limit("lease_denials"),
            lease_failures: limit("lease_failures"),
            fleet_mode: limit("fleet_mode"),
            service_requests: get(&format!("cluster.{FLEET_CLUSTER}.upstream_rq_total")),
            downstream_requests: get("http.bench.downstream_rq_total"),
            at,
        }
    }

    pub fn of(envoy: &Envoy) -> Reading {
        Reading::from_stats(&envoy.stats_matching(STATS_FILTER), Some(Instant::now()))
    }
}

/// Waits until the arm's limit is in fleet mode with a lease granted (its first lease call is
/// made on its first tick; a failed one is probed again every 500 ms).
pub fn wait_for_fleet_mode(envoy: &Envoy, within: Duration) -> Result<Reading, String> {
    let deadline = Instant::now() + within;
    loop {
        check_interrupted()?;
        let r = Reading::of(envoy);
        if r.fleet_mode == 1 && r.lease_grants > 0 {
            return Ok(r);
        }
        if Instant::now() > deadline {
            return Err(format!("the fleet arm's limit is not in fleet mode after {} s: {r:?}", within.as_secs()));
        }
        sleep(Duration::from_millis(100))?;
    }
}

/// One throughput run of the fleet arm, from readings before and after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub lease_calls: u64,
    pub lease_grants: u64,
    pub lease_denials: u64,
    pub lease_failures: u64,
    pub service_requests: u64,
    pub requests: u64,
    pub seconds: f64,
    /// In fleet mode at both readings.
    pub fleet_mode: bool,
}

impl Sample {
    pub fn between(before: &Reading, after: &Reading) -> Sample {
        let seconds = match (before.at, after.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        Sample {
            lease_calls: after.lease_calls.saturating_sub(before.lease_calls),
            lease_grants: after.lease_grants.saturating_sub(before.lease_grants),
            lease_denials: after.lease_denials.saturating_sub(before.lease_denials),
            lease_failures: after.lease_failures.saturating_sub(before.lease_failures),
            service_requests: after.service_requests.saturating_sub(before.service_requests),
            requests: after.downstream_requests.saturating_sub(before.downstream_requests),
            seconds,
            fleet_mode: before.fleet_mode == 1 && after.fleet_mode == 1,
        }
    }
}

/// `fleet` in `results.json`: the fleet arm's leases over its throughput runs (all rounds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetFigures {
    /// `fleet` if the limit was in fleet mode at every reading, else `local` (the figures are
    /// then the local fallback's, not a fleet limit's).
    pub mode: &'static str,
    pub lease_calls_per_s: Option<f64>,
    pub lease_calls_per_request: Option<f64>,
    /// Envoy's own count of requests to the service (exact; `lease_calls` is flushed every second).
    pub service_requests_per_s: Option<f64>,
    pub lease_calls: u64,
    pub lease_grants: u64,
    pub lease_denials: u64,
    pub lease_failures: u64,
    pub requests: u64,
    pub measured_s: Option<f64>,
    pub runs: usize,
}

impl FleetFigures {
    /// `None` without a sample (the arm was not measured).
    pub fn new(samples: &[Sample]) -> Option<FleetFigures> {
        if samples.is_empty() {
            return None;
        }
        let sum = |f: fn(&Sample) -> u64| samples.iter().map(f).sum::<u64>();
        let seconds: f64 = samples.iter().map(|s| s.seconds).sum();
        let (calls, requests) = (sum(|s| s.lease_calls), sum(|s| s.requests));
        let in_fleet_mode = samples.iter().all(|s| s.fleet_mode) && sum(|s| s.lease_grants) > 0;
        Some(FleetFigures {
            mode: if in_fleet_mode { "fleet" } else { "local" },
            lease_calls_per_s: ratio(calls as f64, seconds).and_then(|x| rounded(x, 2)),
            lease_calls_per_request: ratio(calls as f64, requests as f64).and_then(|x| rounded(x, 8)),
            service_requests_per_s: ratio(sum(|s| s.service_requests) as f64, seconds).and_then(|x| rounded(x, 2)),
            lease_calls: calls,
            lease_grants: sum(|s| s.lease_grants),
            lease_denials: sum(|s| s.lease_denials),
            lease_failures: sum(|s| s.lease_failures),
            requests,
            measured_s: rounded(seconds, 2),
            runs: samples.len(),
        })
    }

    pub fn in_fleet_mode(&self) -> bool {
        self.mode == "fleet"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgeguard_harness::stats::parse;

    const STATS: &str = "wasmcustom.surgeguard.limit.storefront.lease_calls: 12
wasmcustom.surgeguard.limit.storefront.lease_grants: 11
wasmcustom.surgeguard.limit.storefront.lease_failures: 1
wasmcustom.surgeguard.limit.storefront.fleet_mode: 1
cluster.ratelimit.upstream_rq_total: 13
http.bench.downstream_rq_total: 5000
";

    #[test]
    fn a_reading_takes_the_limits_lease_counters_and_envoys_own_counts() {
        let r = Reading::from_stats(&parse(STATS), None);
        assert_eq!((r.lease_calls, r.lease_grants, r.lease_denials, r.lease_failures), (12, 11, 0, 1));
        assert_eq!((r.fleet_mode, r.service_requests, r.downstream_requests), (1, 13, 5000));
    }

    fn sample(calls: u64, requests: u64, seconds: f64, fleet_mode: bool) -> Sample {
        Sample {
            lease_calls: calls,
            lease_grants: calls,
            lease_denials: 0,
            lease_failures: 0,
            service_requests: calls + 1,
            requests,
            seconds,
            fleet_mode,
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings_in_fleet_mode_only_if_both_were() {
        let before =
            Reading { lease_calls: 10, lease_grants: 9, fleet_mode: 1, downstream_requests: 100, ..Reading::default() };
        let after = Reading { lease_calls: 14, lease_grants: 13, fleet_mode: 1, downstream_requests: 3100, ..before };
        let s = Sample::between(&before, &after);
        assert_eq!((s.lease_calls, s.lease_grants, s.requests, s.fleet_mode), (4, 4, 3000, true));
        assert!(!Sample::between(&before, &Reading { fleet_mode: 0, ..after }).fleet_mode);
    }

    #[test]
    fn calls_per_second_and_per_request_are_over_every_run_together() {
        let f = FleetFigures::new(&[sample(6, 30_000, 3.0, true), sample(3, 20_000, 3.0, true)]).unwrap();
        assert_eq!((f.mode, f.lease_calls_per_s, f.lease_calls_per_request), ("fleet", Some(1.5), Some(0.00018)));
        assert_eq!((f.service_requests_per_s, f.lease_calls, f.requests, f.runs), (Some(1.83), 9, 50_000, 2));
    }

    #[test]
    fn one_run_out_of_fleet_mode_or_no_grant_makes_the_arm_local() {
        assert_eq!(FleetFigures::new(&[sample(6, 1, 3.0, true), sample(6, 1, 3.0, false)]).unwrap().mode, "local");
        assert_eq!(FleetFigures::new(&[sample(0, 1, 3.0, true)]).unwrap().mode, "local");
        assert!(FleetFigures::new(&[]).is_none());
    }
}
