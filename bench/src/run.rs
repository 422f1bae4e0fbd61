//! The interleaved run: one Envoy per (variant, arm), all alive for the whole run, measured in
//! rounds where the arms alternate (the order rotates every round, so no arm always goes first
//! or last). Envoy: `--concurrency 1`, pinned to core 0. Load generator (and the upstream): core 1.
//!
//! Phases: start-up times (Envoys started and stopped one by one, arms alternating), throughput
//! rounds (wrk, closed loop), latency rounds (oha, open loop at 50% of the no-filter arm's
//! median throughput of the same variant), then the accuracy runs (2 workers, both cores).
//! The fleet arm's Envoys lease from one rate limit service, alive for the whole run; each of its
//! throughput runs also reads its lease counters before and after (outside the CPU window).

use crate::arms::{arm_bootstrap, Arm, FilterInputs, Ports, Variant, ARMS, HEADERS, PATH};
use crate::cli::Settings;
use crate::envoy_stats;
use crate::fleet;
use crate::machine::{cpu_busy_us, process_cpu_us};
use crate::oha::{self, OhaRun};
use crate::procs::{check_interrupted, sleep};
use crate::results::{Latency, Throughput, VariantRun};
use crate::stats::median;
use crate::wrk::{self, WrkRun};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use surgeguard_harness::envoy::{Envoy, Options};
use surgeguard_harness::upstream::Upstream;

pub const ENVOY_CPU: &str = "0";
pub const ENVOY_CORE: usize = 0;
pub const LOAD_CPU: &str = "1";
pub const LOAD_CORE: usize = 1;
/// Open-loop connections: far more than `rate x latency` ever needs.
const OHA_CONNECTIONS: u32 = 16;

pub struct Modules {
    pub surgeguard: PathBuf,
    pub empty: PathBuf,
    /// The native build (`dist/libsurgeguard_native.so`).
    pub native: PathBuf,
    pub oha: PathBuf,
    /// The fleet arm's plugin configuration (`arms::fleet_configuration`).
    pub fleet_configuration: String,
    /// The rate limit service the fleet arm leases from (0 until it runs).
    pub rate_limit_service_port: u16,
}

pub fn bench_options(concurrency: u32, cpu_list: &str) -> Options {
    Options { concurrency, cpu_list: Some(cpu_list.into()), log_level: "warn".into(), extra_args: Vec::new() }
}

fn start(arm: Arm, variant: Variant, m: &Modules, upstream_port: u16, opts: &Options) -> Result<Envoy, String> {
    let inputs = FilterInputs {
        surgeguard: &m.surgeguard,
        empty: &m.empty,
        native: &m.native,
        fleet_configuration: &m.fleet_configuration,
    };
    let ports = Ports { upstream: upstream_port, rate_limit_service: m.rate_limit_service_port };
    let yaml = arm_bootstrap(arm, variant, &inputs, ports);
    Envoy::start(&yaml, opts)
        .map_err(|e| format!("{} ({}): {}\n--- envoy log ---\n{}", arm.key(), variant.key(), e.message, e.log))
}

/// `ARMS` rotated by `round`.
pub fn order(round: usize) -> Vec<Arm> {
    (0..ARMS.len()).map(|i| ARMS[(i + round) % ARMS.len()]).collect()
}

/// Envoy workers during the start-up samples (both cores).
pub const STARTUP_WORKERS: u32 = 2;

/// Start-up samples in ms per arm, and their medians.
pub struct Startup {
    pub samples_ms: BTreeMap<&'static str, Vec<f64>>,
    pub medians_ms: BTreeMap<&'static str, f64>,
}

/// Start-up times in ms per arm: time from spawning Envoy to its admin `/ready` (harness
/// polls every 20 ms), with `STARTUP_WORKERS` workers on both cores, direct_response variant.
pub fn startup(m: &Modules, samples: u32) -> Result<Startup, String> {
    let mut samples_ms: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for round in 0..samples as usize {
        for arm in order(round) {
            check_interrupted()?;
            let mut envoy = start(arm, Variant::DirectResponse, m, 0, &bench_options(STARTUP_WORKERS, "0,1"))?;
            samples_ms.entry(arm.key()).or_default().push(envoy.started_in.as_secs_f64() * 1e3);
            envoy.stop();
        }
    }
    let medians_ms = samples_ms.iter().filter_map(|(k, v)| Some((*k, median(v)?))).collect();
    Ok(Startup { samples_ms, medians_ms })
}

/// One Envoy of the run and the URL the load goes to.
struct Member {
    variant: Variant,
    arm: Arm,
    envoy: Envoy,
    url: String,
}

/// Every (variant, arm) Envoy, started once and stopped on drop (with the upstream).
pub struct Envoys {
    members: Vec<Member>,
    _upstream: Option<Upstream>,
}

/// How long the fleet arm may take to reach fleet mode after its warm-up.
const FLEET_MODE_WITHIN: Duration = Duration::from_secs(5);

impl Envoys {
    pub fn start(m: &Modules, variants: &[Variant]) -> Result<Envoys, String> {
        let upstream = if variants.contains(&Variant::Upstream) {
            Some(Upstream::start(Duration::ZERO).map_err(|e| format!("upstream: {e}"))?)
        } else {
            None
        };
        let upstream_port = upstream.as_ref().map_or(0, |u| u.port);
        let mut members = Vec::new();
        for &variant in variants {
            for arm in ARMS {
                check_interrupted()?;
                let envoy = start(arm, variant, m, upstream_port, &bench_options(1, ENVOY_CPU))?;
                let url = envoy.url(PATH);
                members.push(Member { variant, arm, envoy, url });
            }
        }
        Ok(Envoys { members, _upstream: upstream })
    }

    fn member(&self, variant: Variant, arm: Arm) -> Result<&Member, String> {
        self.members
            .iter()
            .find(|x| x.variant == variant && x.arm == arm)
            .ok_or_else(|| format!("no Envoy for {} / {}", variant.key(), arm.key()))
    }

    /// Sends every Envoy `seconds` of load first: connections, V8's optimising tier and the
    /// filters' shared state all reach their steady state before anything is measured.
    pub fn warm_up(&self, s: &Settings) -> Result<(), String> {
        for x in &self.members {
            let w = wrk::run(&wrk_run(&x.url, s, Duration::from_secs(1)))?;
            if w.requests == 0 {
                return Err(format!("{} ({}): no request served during warm-up", x.arm.key(), x.variant.key()));
            }
        }
        // Measuring the fleet arm only means something if its limit is leasing.
        for x in self.members.iter().filter(|x| x.arm.leases()) {
            fleet::wait_for_fleet_mode(&x.envoy, FLEET_MODE_WITHIN)
                .map_err(|e| format!("{} ({}): {e}", x.arm.key(), x.variant.key()))?;
        }
        Ok(())
    }

    /// One closed-loop measurement of one arm, and for an arm that leases, its leases over it.
    pub fn throughput(
        &self,
        variant: Variant,
        arm: Arm,
        s: &Settings,
    ) -> Result<(Throughput, Option<fleet::Sample>), String> {
        let x = self.member(variant, arm)?;
        if !arm.leases() {
            return Ok((measure_throughput(&x.envoy, &x.url, s)?, None));
        }
        // Read outside measure_throughput's CPU window: the admin calls are not the filter's.
        let before = fleet::Reading::of(&x.envoy);
        let t = measure_throughput(&x.envoy, &x.url, s)?;
        let after = fleet::Reading::of(&x.envoy);
        Ok((t, Some(fleet::Sample::between(&before, &after))))
    }

    /// One open-loop measurement of one arm at `rate_per_s`.
    pub fn latency(
        &self,
        variant: Variant,
        arm: Arm,
        rate_per_s: f64,
        s: &Settings,
        oha: &Path,
    ) -> Result<Latency, String> {
        let x = self.member(variant, arm)?;
        let r = oha::run(&OhaRun {
            oha,
            url: &x.url,
            headers: &HEADERS,
            rate_per_s,
            duration: Duration::from_secs_f64(s.duration_s),
            connections: OHA_CONNECTIONS,
            cpu_list: LOAD_CPU,
            worker_threads: 1,
        })?;
        Ok(Latency {
            p50_us: r.p50_us,
            p99_us: r.p99_us,
            p999_us: r.p999_us,
            achieved_rps: r.achieved_rps,
            failures: r.responses() - r.count(200) + r.errors,
        })
    }
}

/// One closed-loop (wrk) run against `envoy`: its throughput, and Envoy's CPU time per request
/// it served (from /proc and its own request counter) with the CPU others took on its core.
pub fn measure_throughput(envoy: &Envoy, url: &str, s: &Settings) -> Result<Throughput, String> {
    let pid = envoy.pid().to_string();
    let rq0 = envoy_stats::requests_total(envoy).unwrap_or(0);
    let (user0, sys0) = process_cpu_us(&pid, false);
    let core0 = cpu_busy_us(ENVOY_CORE).unwrap_or(0);
    let load0 = cpu_busy_us(LOAD_CORE).unwrap_or(0);
    let (me0, mes0) = process_cpu_us("self", false);
    let (kids0, kidss0) = process_cpu_us("self", true);
    let t0 = Instant::now();
    let w = wrk::run(&wrk_run(url, s, Duration::from_secs_f64(s.duration_s)))?;
    let wall_us = t0.elapsed().as_secs_f64() * 1e6;
    let (user1, sys1) = process_cpu_us(&pid, false);
    let user_us = user1.saturating_sub(user0) as f64;
    let cpu_us = user_us + sys1.saturating_sub(sys0) as f64;
    let core_us = cpu_busy_us(ENVOY_CORE).unwrap_or(0).saturating_sub(core0) as f64;
    // Ours on the load core: this process (the upstream) and its children (wrk).
    let (me1, mes1) = process_cpu_us("self", false);
    let (kids1, kidss1) = process_cpu_us("self", true);
    let ours_us = (me1 + mes1 + kids1 + kidss1).saturating_sub(me0 + mes0 + kids0 + kidss0) as f64;
    let load_us = cpu_busy_us(LOAD_CORE).unwrap_or(0).saturating_sub(load0) as f64;
    let served = envoy_stats::requests_total(envoy).unwrap_or(0).saturating_sub(rq0).max(1) as f64;
    Ok(Throughput {
        rps: w.requests_per_s,
        cpu_us_per_request: cpu_us / served,
        user_us_per_request: user_us / served,
        foreign_cpu_pct: ((core_us - cpu_us).max(0.0) / wall_us * 100.0).min(100.0),
        foreign_load_cpu_pct: ((load_us - ours_us).max(0.0) / wall_us * 100.0).min(100.0),
        failures: w.non_2xx + w.socket_errors,
    })
}

pub fn wrk_run<'a>(url: &'a str, s: &Settings, duration: Duration) -> WrkRun<'a> {
    WrkRun { url, headers: &HEADERS, connections: s.connections, duration, cpu_list: LOAD_CPU }
}

/// Progress on stderr: one line per measurement.
fn progress(phase: &str, round: usize, s: &Settings, variant: Variant, arm: Arm, what: &str) {
    eprintln!("    {phase} round {}/{} {:<15} {:<22} {what}", round + 1, s.rounds, variant.key(), arm.key());
}

/// Throughput rounds then latency rounds, arms alternating within each round.
pub fn rounds(envoys: &Envoys, variants: &[Variant], s: &Settings, oha: &Path) -> Result<Vec<VariantRun>, String> {
    let mut runs: Vec<VariantRun> = variants.iter().map(|&v| VariantRun::new(v)).collect();
    for round in 0..s.rounds as usize {
        for run in runs.iter_mut() {
            for arm in order(round) {
                check_interrupted()?;
                let (t, leases) = envoys.throughput(run.variant, arm, s)?;
                let leased = leases.map_or(String::new(), |l| {
                    format!(
                        "  {} lease calls in {:.1} s, mode {}",
                        l.lease_calls,
                        l.seconds,
                        if l.fleet_mode { "fleet" } else { "LOCAL" }
                    )
                });
                progress(
                    "throughput",
                    round,
                    s,
                    run.variant,
                    arm,
                    &format!(
                        "{:>8.0} req/s {:>6.1} us CPU/req ({:.1} user)  others on Envoy core {:.0}%, on load core {:.0}%{leased}",
                        t.rps, t.cpu_us_per_request, t.user_us_per_request, t.foreign_cpu_pct, t.foreign_load_cpu_pct
                    ),
                );
                if let Some(series) = run.arms.get_mut(arm.key()) {
                    series.throughput.push(t);
                    series.leases.extend(leases);
                }
            }
        }
    }
    for run in runs.iter_mut() {
        let no_filter = median(&run.rps_samples(Arm::NoFilter)).unwrap_or(0.0);
        run.latency_rate_rps = (no_filter * 0.5).round().max(1.0);
    }
    for round in 0..s.rounds as usize {
        for run in runs.iter_mut() {
            for arm in order(round) {
                check_interrupted()?;
                let l = envoys.latency(run.variant, arm, run.latency_rate_rps, s, oha)?;
                progress(
                    "latency   ",
                    round,
                    s,
                    run.variant,
                    arm,
                    &format!(
                        "p50 {:>6.0} us  p99 {:>7.0} us  p99.9 {:>7.0} us at {:.0} req/s",
                        l.p50_us, l.p99_us, l.p999_us, l.achieved_rps
                    ),
                );
                if let Some(series) = run.arms.get_mut(arm.key()) {
                    series.latency.push(l);
                }
            }
        }
        // A short pause between rounds lets lingering connections close.
        sleep(Duration::from_millis(100))?;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arm_takes_every_position_over_as_many_rounds_as_arms() {
        for pos in 0..ARMS.len() {
            let mut seen: Vec<_> = (0..ARMS.len()).map(|r| order(r)[pos].key()).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), ARMS.len());
        }
        assert_eq!(order(0), ARMS.to_vec());
    }
}
