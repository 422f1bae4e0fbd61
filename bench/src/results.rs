//! The measurements of one run, their summaries (medians over rounds, spread), the ratios
//! between arms, the performance targets (floors), and each variant's part of `results.json`.
//!
//! Ratios are throughput ratios: `rps(a) / rps(b)` from the medians over rounds of one
//! interleaved run. Each round's paired ratio is kept too (`per_round`), so the spread of a
//! ratio is visible, not only the spread of each arm.

use crate::arms::{Arm, Variant, ARMS};
use crate::fleet::FleetFigures;
use crate::stats::{median, paired_ratios, ratio, round_to, rounded, summarize, Summary};
use serde::Serialize;
use std::collections::BTreeMap;

/// One closed-loop (wrk) measurement of one arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub rps: f64,
    /// Envoy's CPU time (all threads, user + system, from /proc) per request it served.
    pub cpu_us_per_request: f64,
    /// The user-space part of `cpu_us_per_request` (V8, the filter, Envoy's code); the rest is
    /// the kernel (sockets), which also grows when a slower arm batches less per wake-up.
    pub user_us_per_request: f64,
    /// CPU time other processes took on the Envoy core during the run, in % of the run.
    pub foreign_cpu_pct: f64,
    /// The same on the load generator's core (besides wrk and this process's upstream).
    pub foreign_load_cpu_pct: f64,
    /// Non-2xx responses and socket errors: must stay 0 (every arm admits everything).
    pub failures: u64,
}

/// One open-loop (oha) measurement of one arm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub achieved_rps: f64,
    pub failures: u64,
}

/// Every round's measurements of one arm in one variant.
#[derive(Debug, Clone, Default)]
pub struct Series {
    pub throughput: Vec<Throughput>,
    pub latency: Vec<Latency>,
    /// An arm that leases: its leases over each throughput run.
    pub leases: Vec<crate::fleet::Sample>,
}

/// One route variant: its arms' series and the open-loop rate used for latency.
#[derive(Debug, Clone)]
pub struct VariantRun {
    pub variant: Variant,
    pub arms: BTreeMap<&'static str, Series>,
    pub latency_rate_rps: f64,
}

impl VariantRun {
    pub fn new(variant: Variant) -> VariantRun {
        VariantRun { variant, arms: ARMS.iter().map(|a| (a.key(), Series::default())).collect(), latency_rate_rps: 0.0 }
    }

    pub fn series(&self, arm: Arm) -> Option<&Series> {
        self.arms.get(arm.key())
    }

    pub fn rps_samples(&self, arm: Arm) -> Vec<f64> {
        self.series(arm).map(|s| s.throughput.iter().map(|t| t.rps).collect()).unwrap_or_default()
    }
}

/// The summarized figures of one arm.
#[derive(Debug, Clone, Copy)]
pub struct ArmFigures {
    pub rps: Summary,
    pub cpu_us_per_request: Summary,
    pub user_us_per_request: Summary,
    pub p50_us: f64,
    pub p99_us: Summary,
    pub p999_us: f64,
    pub latency_achieved_rps: f64,
    pub foreign_cpu_pct: f64,
    pub foreign_load_cpu_pct: f64,
    pub failures: u64,
}

pub fn figures(s: &Series) -> Option<ArmFigures> {
    let pick = |f: fn(&Throughput) -> f64| s.throughput.iter().map(f).collect::<Vec<_>>();
    let lat = |f: fn(&Latency) -> f64| s.latency.iter().map(f).collect::<Vec<_>>();
    let nan_summary = Summary { median: f64::NAN, min: f64::NAN, max: f64::NAN, spread_pct: f64::NAN, samples: 0 };
    Some(ArmFigures {
        rps: summarize(&pick(|t| t.rps))?,
        cpu_us_per_request: summarize(&pick(|t| t.cpu_us_per_request))?,
        user_us_per_request: summarize(&pick(|t| t.user_us_per_request))?,
        p50_us: median(&lat(|l| l.p50_us)).unwrap_or(f64::NAN),
        p99_us: summarize(&lat(|l| l.p99_us)).unwrap_or(nan_summary),
        p999_us: median(&lat(|l| l.p999_us)).unwrap_or(f64::NAN),
        latency_achieved_rps: median(&lat(|l| l.achieved_rps)).unwrap_or(f64::NAN),
        foreign_cpu_pct: median(&pick(|t| t.foreign_cpu_pct)).unwrap_or(f64::NAN),
        foreign_load_cpu_pct: median(&pick(|t| t.foreign_load_cpu_pct)).unwrap_or(f64::NAN),
        failures: s.throughput.iter().map(|t| t.failures).sum::<u64>()
            + s.latency.iter().map(|l| l.failures).sum::<u64>(),
    })
}

/// A throughput ratio: of the medians, and per round (paired) with its range.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioFigure {
    pub of_medians: f64,
    pub per_round: Vec<f64>,
}

impl RatioFigure {
    pub fn between(run: &VariantRun, a: Arm, b: Arm) -> Option<RatioFigure> {
        let (xa, xb) = (run.rps_samples(a), run.rps_samples(b));
        Some(RatioFigure { of_medians: ratio(median(&xa)?, median(&xb)?)?, per_round: paired_ratios(&xa, &xb) })
    }
}

/// One figure for each pair of arms compared, under the names `results.json` uses: surgeguard
/// against each other arm, the fleet arm against surgeguard (what leasing costs), and the
/// native build against no filter, native local_ratelimit, empty wasm and the wasm build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparisons<T> {
    pub surgeguard_vs_empty_wasm: T,
    pub surgeguard_vs_native: T,
    pub surgeguard_vs_no_filter: T,
    pub surgeguard_fleet_vs_surgeguard: T,
    pub surgeguard_native_vs_no_filter: T,
    pub surgeguard_native_vs_native: T,
    pub surgeguard_native_vs_empty_wasm: T,
    pub surgeguard_native_vs_surgeguard: T,
}

impl<T> Comparisons<T> {
    /// `figure(arm, base)` for each pair.
    pub fn of(mut figure: impl FnMut(Arm, Arm) -> T) -> Comparisons<T> {
        Comparisons {
            surgeguard_vs_empty_wasm: figure(Arm::Surgeguard, Arm::EmptyWasm),
            surgeguard_vs_native: figure(Arm::Surgeguard, Arm::NativeLocalRatelimit),
            surgeguard_vs_no_filter: figure(Arm::Surgeguard, Arm::NoFilter),
            surgeguard_fleet_vs_surgeguard: figure(Arm::SurgeguardFleet, Arm::Surgeguard),
            surgeguard_native_vs_no_filter: figure(Arm::SurgeguardNative, Arm::NoFilter),
            surgeguard_native_vs_native: figure(Arm::SurgeguardNative, Arm::NativeLocalRatelimit),
            surgeguard_native_vs_empty_wasm: figure(Arm::SurgeguardNative, Arm::EmptyWasm),
            surgeguard_native_vs_surgeguard: figure(Arm::SurgeguardNative, Arm::Surgeguard),
        }
    }

    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Comparisons<U> {
        Comparisons {
            surgeguard_vs_empty_wasm: f(&self.surgeguard_vs_empty_wasm),
            surgeguard_vs_native: f(&self.surgeguard_vs_native),
            surgeguard_vs_no_filter: f(&self.surgeguard_vs_no_filter),
            surgeguard_fleet_vs_surgeguard: f(&self.surgeguard_fleet_vs_surgeguard),
            surgeguard_native_vs_no_filter: f(&self.surgeguard_native_vs_no_filter),
            surgeguard_native_vs_native: f(&self.surgeguard_native_vs_native),
            surgeguard_native_vs_empty_wasm: f(&self.surgeguard_native_vs_empty_wasm),
            surgeguard_native_vs_surgeguard: f(&self.surgeguard_native_vs_surgeguard),
        }
    }
}

/// Throughput ratios of each pair.
pub fn ratios(run: &VariantRun) -> Comparisons<Option<RatioFigure>> {
    Comparisons::of(|arm, base| RatioFigure::between(run, arm, base))
}

/// `arm`'s Envoy CPU per request minus `base`'s, in microseconds (medians).
pub fn cpu_over(run: &VariantRun, arm: Arm, base: Arm) -> Option<f64> {
    let f = |a: Arm| run.series(a).and_then(figures).map(|f| f.cpu_us_per_request.median);
    Some(f(arm)? - f(base)?)
}

/// The same for user-space CPU only.
pub fn user_over(run: &VariantRun, arm: Arm, base: Arm) -> Option<f64> {
    let f = |a: Arm| run.series(a).and_then(figures).map(|f| f.user_us_per_request.median);
    Some(f(arm)? - f(base)?)
}

/// One performance floor and where the current build stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Floor {
    #[serde(rename = "floor")]
    pub name: &'static str,
    pub target: &'static str,
    /// The figure, rounded to 4 decimals; `None`: not measured.
    pub value: Option<f64>,
    pub unit: &'static str,
    /// Judged on the figure before rounding.
    pub met: Option<bool>,
}

/// The figures the performance floors are set on. Throughput and CPU per variant: direct_response is the
/// worst case (the headline), upstream the production shape. Module size is reported, not
/// judged (its target was retired).
pub struct FloorInputs {
    pub ratio_vs_empty: Option<f64>,
    pub cpu_over_empty_us: Option<f64>,
    pub upstream_ratio_vs_empty: Option<f64>,
    pub upstream_cpu_over_empty_us: Option<f64>,
    pub accuracy_error_pct: Option<f64>,
    pub startup_over_no_filter_ms: Option<f64>,
    /// The fleet arm's CPU per request over the surgeguard arm (direct_response); `None` unless
    /// its limit was in fleet mode throughout.
    pub fleet_cpu_over_surgeguard_us: Option<f64>,
    /// The native build's Envoy CPU per request over no filter (direct_response).
    pub native_cpu_over_no_filter_us: Option<f64>,
    /// The native build's throughput over native local_ratelimit's (direct_response).
    pub native_ratio_vs_local_ratelimit: Option<f64>,
}

pub fn floors(i: &FloorInputs) -> Vec<Floor> {
    let floor = |name, target, value: Option<f64>, unit, ok: fn(f64) -> bool| Floor {
        name,
        target,
        value: value.and_then(|v| rounded(v, 4)),
        unit,
        met: value.map(ok),
    };
    vec![
        floor("throughput vs empty wasm (direct_response)", ">= 0.90x", i.ratio_vs_empty, "x", |v| v >= 0.90),
        floor("Envoy CPU per request over empty wasm (direct_response)", "<= +5 us", i.cpu_over_empty_us, "us", |v| {
            v <= 5.0
        }),
        floor("throughput vs empty wasm (upstream)", ">= 0.90x", i.upstream_ratio_vs_empty, "x", |v| v >= 0.90),
        floor(
            "Envoy CPU per request over empty wasm (upstream)",
            "<= +5 us",
            i.upstream_cpu_over_empty_us,
            "us",
            |v| v <= 5.0,
        ),
        floor("accuracy error (2 workers, 5x overload)", "< 1%", i.accuracy_error_pct, "%", |v| v.abs() < 1.0),
        floor("Envoy start-up over no filter", "<= +150 ms", i.startup_over_no_filter_ms, "ms", |v| v <= 150.0),
        floor(
            "fleet arm: Envoy CPU per request over the surgeguard arm (direct_response)",
            "<= +1 us",
            i.fleet_cpu_over_surgeguard_us,
            "us",
            |v| v <= 1.0,
        ),
        floor(
            "native build: Envoy CPU per request over no filter (direct_response)",
            "<= +1.5 us",
            i.native_cpu_over_no_filter_us,
            "us",
            |v| v <= 1.5,
        ),
        floor(
            "native build: throughput vs native local_ratelimit (direct_response)",
            ">= 0.95x",
            i.native_ratio_vs_local_ratelimit,
            "x",
            |v| v >= 0.95,
        ),
    ]
}

/// The contract's per-arm object (`rps_median`, `cpu_us_per_request`, `p99_us`), plus spread
/// and the other percentiles. `None` (`null`): not measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmSummary {
    pub rps_median: Option<f64>,
    pub cpu_us_per_request: Option<f64>,
    pub p99_us: Option<f64>,
    pub p50_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub rps_min: Option<f64>,
    pub rps_max: Option<f64>,
    pub rps_spread_pct: Option<f64>,
    pub cpu_us_per_request_min: Option<f64>,
    pub cpu_us_per_request_max: Option<f64>,
    pub cpu_spread_pct: Option<f64>,
    pub user_us_per_request: Option<f64>,
    pub system_us_per_request: Option<f64>,
    pub p99_spread_pct: Option<f64>,
    pub latency_achieved_rps: Option<f64>,
    /// The open-loop rate as a share of this arm's own closed-loop maximum: near 100%,
    /// latency is queueing, not service time.
    pub latency_load_pct: Option<f64>,
    pub foreign_cpu_pct_on_envoy_core: Option<f64>,
    pub foreign_cpu_pct_on_load_core: Option<f64>,
    pub failures: u64,
    pub rounds: usize,
    pub startup_ms: Option<f64>,
}

impl ArmSummary {
    pub fn new(f: &ArmFigures, startup_ms: Option<f64>) -> ArmSummary {
        ArmSummary {
            rps_median: rounded(f.rps.median, 0),
            cpu_us_per_request: rounded(f.cpu_us_per_request.median, 2),
            p99_us: rounded(f.p99_us.median, 0),
            p50_us: rounded(f.p50_us, 0),
            p999_us: rounded(f.p999_us, 0),
            rps_min: rounded(f.rps.min, 0),
            rps_max: rounded(f.rps.max, 0),
            rps_spread_pct: rounded(f.rps.spread_pct, 1),
            cpu_us_per_request_min: rounded(f.cpu_us_per_request.min, 2),
            cpu_us_per_request_max: rounded(f.cpu_us_per_request.max, 2),
            cpu_spread_pct: rounded(f.cpu_us_per_request.spread_pct, 1),
            user_us_per_request: rounded(f.user_us_per_request.median, 2),
            system_us_per_request: rounded(f.cpu_us_per_request.median - f.user_us_per_request.median, 2),
            p99_spread_pct: rounded(f.p99_us.spread_pct, 1),
            latency_achieved_rps: rounded(f.latency_achieved_rps, 0),
            latency_load_pct: rounded(f.latency_achieved_rps / f.rps.median * 100.0, 0),
            foreign_cpu_pct_on_envoy_core: rounded(f.foreign_cpu_pct, 1),
            foreign_cpu_pct_on_load_core: rounded(f.foreign_load_cpu_pct, 1),
            failures: f.failures,
            rounds: f.rps.samples,
            startup_ms: startup_ms.and_then(|v| rounded(v, 1)),
        }
    }
}

/// A ratio as `ratio_details` shows it: of the medians, and each round's with their range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RatioDetail {
    pub of_medians: f64,
    pub per_round: Vec<f64>,
    pub per_round_median: Option<f64>,
    pub per_round_min: Option<f64>,
    pub per_round_max: Option<f64>,
}

impl RatioDetail {
    pub fn new(r: &RatioFigure) -> RatioDetail {
        let s = summarize(&r.per_round);
        RatioDetail {
            of_medians: round_to(r.of_medians, 4),
            per_round: r.per_round.iter().map(|x| round_to(*x, 4)).collect(),
            per_round_median: s.map(|s| round_to(s.median, 4)),
            per_round_min: s.map(|s| round_to(s.min, 4)),
            per_round_max: s.map(|s| round_to(s.max, 4)),
        }
    }
}

/// One variant in `results.json`: `arms` and `ratios` in the contract's shape, and the details.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VariantResults {
    pub arms: BTreeMap<&'static str, ArmSummary>,
    pub ratios: Comparisons<Option<f64>>,
    pub ratio_details: Comparisons<Option<RatioDetail>>,
    pub cpu_us_over: Comparisons<Option<f64>>,
    pub user_us_over: Comparisons<Option<f64>>,
    pub latency_rate_rps: Option<f64>,
    /// The fleet arm's leases, when it ran.
    pub fleet: Option<FleetFigures>,
}

impl VariantResults {
    pub fn new(run: &VariantRun, startup_ms: &BTreeMap<&'static str, f64>) -> VariantResults {
        let arms = ARMS
            .iter()
            .filter_map(|arm| {
                let f = run.series(*arm).and_then(figures)?;
                Some((arm.key(), ArmSummary::new(&f, startup_ms.get(arm.key()).copied())))
            })
            .collect();
        let ratios = ratios(run);
        VariantResults {
            arms,
            ratios: ratios.map(|r| r.as_ref().and_then(|r| rounded(r.of_medians, 4))),
            ratio_details: ratios.map(|r| r.as_ref().map(RatioDetail::new)),
            cpu_us_over: Comparisons::of(|arm, base| cpu_over(run, arm, base).and_then(|v| rounded(v, 2))),
            user_us_over: Comparisons::of(|arm, base| user_over(run, arm, base).and_then(|v| rounded(v, 2))),
            latency_rate_rps: rounded(run.latency_rate_rps, 0),
            fleet: run.series(Arm::SurgeguardFleet).and_then(|s| FleetFigures::new(&s.leases)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(rps: [[f64; 3]; 5]) -> VariantRun {
        let mut run = VariantRun::new(Variant::DirectResponse);
        for (arm, series) in ARMS.iter().zip(rps) {
            let s = run.arms.get_mut(arm.key()).unwrap();
            for r in series {
                s.throughput.push(Throughput {
                    rps: r,
                    cpu_us_per_request: 1e6 / r,
                    user_us_per_request: 5e5 / r,
                    foreign_cpu_pct: 0.0,
                    foreign_load_cpu_pct: 0.0,
                    failures: 0,
                });
            }
        }
        run
    }

    #[test]
    fn ratios_are_surgeguard_throughput_over_each_other_arm_from_medians() {
        // no_filter, native, empty, surgeguard, surgeguard_fleet
        let run = run_with([
            [20_000.0, 19_000.0, 21_000.0],
            [18_000.0, 18_500.0, 17_000.0],
            [16_000.0, 15_000.0, 17_000.0],
            [12_000.0, 12_500.0, 11_000.0],
            [11_000.0, 12_500.0, 12_000.0],
        ]);
        let r = ratios(&run);
        assert_eq!(r.surgeguard_vs_no_filter.unwrap().of_medians, 12_000.0 / 20_000.0);
        assert_eq!(r.surgeguard_vs_native.unwrap().of_medians, 12_000.0 / 18_000.0);
        let e = r.surgeguard_vs_empty_wasm.unwrap();
        assert_eq!(e.of_medians, 0.75);
        assert_eq!(e.per_round, vec![0.75, 12_500.0 / 15_000.0, 11_000.0 / 17_000.0]);
        let fleet = r.surgeguard_fleet_vs_surgeguard.unwrap();
        assert_eq!(fleet.of_medians, 1.0);
        assert_eq!(fleet.per_round, vec![11_000.0 / 12_000.0, 1.0, 12_000.0 / 11_000.0]);
    }

    #[test]
    fn cpu_over_is_the_difference_of_the_median_cpu_per_request() {
        let run = run_with([[1e6; 3], [1e6; 3], [500_000.0; 3], [250_000.0; 3], [200_000.0; 3]]);
        // 4 us per request against 2 us: +2 us.
        assert_eq!(cpu_over(&run, Arm::Surgeguard, Arm::EmptyWasm), Some(2.0));
        // The fleet arm: 5 us against surgeguard's 4 us.
        assert_eq!(cpu_over(&run, Arm::SurgeguardFleet, Arm::Surgeguard), Some(1.0));
    }

    #[test]
    fn an_arm_without_measurements_gives_no_ratio() {
        let mut run = run_with([[1.0; 3]; 5]);
        run.arms.insert("empty_wasm", Series::default());
        assert!(ratios(&run).surgeguard_vs_empty_wasm.is_none());
    }

    #[test]
    fn floors_compare_each_figure_with_its_target() {
        let f = floors(&FloorInputs {
            ratio_vs_empty: Some(0.85),
            cpu_over_empty_us: Some(4.9),
            upstream_ratio_vs_empty: Some(0.93),
            upstream_cpu_over_empty_us: None,
            accuracy_error_pct: Some(-1.2),
            startup_over_no_filter_ms: None,
            fleet_cpu_over_surgeguard_us: Some(1.2),
            native_cpu_over_no_filter_us: Some(1.4),
            native_ratio_vs_local_ratelimit: Some(0.94),
        });
        let met: Vec<_> = f.iter().map(|f| f.met).collect();
        assert_eq!(
            met,
            vec![Some(false), Some(true), Some(true), None, Some(false), None, Some(false), Some(true), Some(false)]
        );
        assert!(!f.iter().any(|f| f.name.contains("module size")), "a retired target");
        let fleet = &f[6];
        assert_eq!((fleet.target, fleet.value, fleet.unit), ("<= +1 us", Some(1.2), "us"));
        let native = &f[7..];
        assert_eq!((native[0].target, native[0].value), ("<= +1.5 us", Some(1.4)));
        assert_eq!((native[1].target, native[1].value), (">= 0.95x", Some(0.94)));
    }

    #[test]
    fn the_arm_object_has_the_contract_fields() {
        let run = run_with([[10_000.0; 3]; 5]);
        let f = figures(run.series(Arm::Surgeguard).unwrap()).unwrap();
        let v = serde_json::to_value(ArmSummary::new(&f, Some(812.34))).unwrap();
        assert_eq!(v["rps_median"], 10_000.0);
        assert_eq!(v["cpu_us_per_request"], 100.0);
        assert!(v["p99_us"].is_null(), "no latency rounds: no p99");
        assert_eq!(v["startup_ms"], 812.3);
        assert_eq!(v["rounds"], 3);
    }
}
