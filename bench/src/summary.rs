//! `results.json` as one typed value, [`Results`], assembled from what the phases of a run
//! returned. Its field names are the file's keys (the contract's `arms`, `ratios`, `accuracy`,
//! `module_bytes` first, from the direct_response variant, the worst case; every variant in
//! full under `variants`; the fleet arm's leases under `fleet`). `report.md` is rendered from the same value, so the two never
//! disagree.

use crate::accuracy::{AccuracyField, AccuracyPair, AccuracySummary};
use crate::arms::{Arm, Variant, HEADERS, PATH};
use crate::cli::Settings;
use crate::empty_filter::Built;
use crate::fleet::FleetFigures;
use crate::machine::Machine;
use crate::prices::Prices;
use crate::profile::Profile;
use crate::results::{
    cpu_over, floors, ArmSummary, Comparisons, Floor, FloorInputs, RatioFigure, Throughput, VariantResults, VariantRun,
};
use crate::run::{Startup, ENVOY_CPU, LOAD_CPU, STARTUP_WORKERS};
use crate::stats::{round_to, summarize};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Results {
    pub arms: Option<BTreeMap<&'static str, ArmSummary>>,
    pub ratios: Option<Comparisons<Option<f64>>>,
    pub accuracy: AccuracyField,
    pub module_bytes: u64,
    pub primary_variant: &'static str,
    /// The fleet arm's leases in the primary variant (each variant's under `variants`).
    pub fleet: Option<FleetFigures>,
    pub variants: BTreeMap<&'static str, VariantResults>,
    pub accuracy_native: Option<AccuracySummary>,
    pub empty_module_bytes: u64,
    pub empty_module_wasm_opt: bool,
    pub empty_module_build: ModuleBuild,
    pub startup_ms: BTreeMap<&'static str, StartupFigures>,
    pub startup_over_no_filter_ms: Option<f64>,
    pub floors: Vec<Floor>,
    pub profile: Option<Profile>,
    pub host_call_prices: Option<Prices>,
    pub noise: Noise,
    pub settings: SettingsEcho,
    pub machine: Machine,
    pub command: String,
    pub finished_at: String,
    pub took_s: f64,
}

/// How the empty filter was built (the same as surgeguard).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModuleBuild {
    /// `CARGO_PROFILE_RELEASE_KEY=value`.
    pub release_profile: Vec<String>,
    pub wasm_opt_flags: Vec<String>,
}

/// One arm's start-up times, ms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StartupFigures {
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub samples: Vec<f64>,
    pub workers: u32,
}

/// What else ran on the machine during the throughput runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Noise {
    pub load_average_before: String,
    pub load_average_after: String,
    pub foreign_cpu_pct_median: Option<f64>,
    pub foreign_cpu_pct_max: Option<f64>,
    pub foreign_load_cpu_pct_median: Option<f64>,
    pub foreign_load_cpu_pct_max: Option<f64>,
}

/// The settings the run used, and the fixed parts of its method.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SettingsEcho {
    pub rounds: u32,
    pub duration_s: f64,
    pub connections: u32,
    pub accuracy_s: f64,
    pub startup_samples: u32,
    pub quick: bool,
    pub envoy_concurrency: u32,
    pub envoy_cpu: &'static str,
    pub load_cpu: &'static str,
    pub request: String,
}

/// The modules the run compared.
pub struct Modules<'a> {
    pub module_bytes: u64,
    pub empty_module_bytes: u64,
    pub empty: &'a Built,
}

/// Everything the phases of one run returned.
pub struct Measured<'a> {
    pub command: &'a str,
    pub settings: &'a Settings,
    pub machine: &'a Machine,
    pub load_average_before: &'a str,
    pub modules: Modules<'a>,
    pub profile: Option<Profile>,
    pub startup: &'a Startup,
    pub runs: &'a [VariantRun],
    pub prices: Option<Prices>,
    pub accuracy: Option<AccuracyPair>,
}

/// What is known only when the run ends.
pub struct Finish {
    pub load_average_after: String,
    pub finished_at: String,
    pub took_s: f64,
}

impl Results {
    pub fn assemble(m: Measured, finish: Finish) -> Results {
        let variants: BTreeMap<&'static str, VariantResults> =
            m.runs.iter().map(|run| (run.variant.key(), VariantResults::new(run, &m.startup.medians_ms))).collect();
        let primary = variants.get(Variant::DirectResponse.key());
        let startup_over = startup_over_no_filter_ms(m.startup);
        let accuracy = m.accuracy.as_ref();
        Results {
            arms: primary.map(|p| p.arms.clone()),
            ratios: primary.map(|p| p.ratios.clone()),
            accuracy: AccuracyField::new(accuracy.map(|a| &a.surgeguard)),
            module_bytes: m.modules.module_bytes,
            primary_variant: Variant::DirectResponse.key(),
            fleet: primary.and_then(|p| p.fleet.clone()),
            floors: floors(&floor_inputs(m.runs, accuracy.map(|a| a.surgeguard.error_pct), startup_over)),
            variants,
            accuracy_native: accuracy.map(|a| AccuracySummary::new(&a.native)),
            empty_module_bytes: m.modules.empty_module_bytes,
            empty_module_wasm_opt: m.modules.empty.wasm_opt,
            empty_module_build: ModuleBuild {
                release_profile: m.modules.empty.profile.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                wasm_opt_flags: m.modules.empty.wasm_opt_flags.clone(),
            },
            startup_ms: m.startup.samples_ms.iter().map(|(k, v)| (*k, StartupFigures::new(v))).collect(),
            startup_over_no_filter_ms: startup_over.map(|v| round_to(v, 1)),
            profile: m.profile,
            host_call_prices: m.prices,
            noise: Noise::new(m.runs, m.load_average_before, finish.load_average_after),
            settings: SettingsEcho::new(m.settings),
            machine: m.machine.clone(),
            command: m.command.to_string(),
            finished_at: finish.finished_at,
            took_s: round_to(finish.took_s, 1),
        }
    }
}

fn startup_over_no_filter_ms(startup: &Startup) -> Option<f64> {
    let median = |arm: Arm| startup.medians_ms.get(arm.key()).copied();
    Some(median(Arm::Surgeguard)? - median(Arm::NoFilter)?)
}

/// The floors' figures: throughput and CPU over the empty filter in each variant, accuracy,
/// start-up, and the fleet arm's CPU over the surgeguard arm (only if it was leasing throughout).
fn floor_inputs(
    runs: &[VariantRun],
    accuracy_error_pct: Option<f64>,
    startup_over_no_filter_ms: Option<f64>,
) -> FloorInputs {
    let run = |v: Variant| runs.iter().find(|r| r.variant == v);
    let ratio_vs_empty =
        |v| run(v).and_then(|r| RatioFigure::between(r, Arm::Surgeguard, Arm::EmptyWasm)).map(|r| r.of_medians);
    let cpu_over_empty = |v| run(v).and_then(|r| cpu_over(r, Arm::Surgeguard, Arm::EmptyWasm));
    let direct = run(Variant::DirectResponse);
    let leasing = direct
        .and_then(|r| r.series(Arm::SurgeguardFleet))
        .and_then(|s| FleetFigures::new(&s.leases))
        .is_some_and(|f| f.in_fleet_mode());
    FloorInputs {
        ratio_vs_empty: ratio_vs_empty(Variant::DirectResponse),
        cpu_over_empty_us: cpu_over_empty(Variant::DirectResponse),
        upstream_ratio_vs_empty: ratio_vs_empty(Variant::Upstream),
        upstream_cpu_over_empty_us: cpu_over_empty(Variant::Upstream),
        accuracy_error_pct,
        startup_over_no_filter_ms,
        fleet_cpu_over_surgeguard_us: direct
            .filter(|_| leasing)
            .and_then(|r| cpu_over(r, Arm::SurgeguardFleet, Arm::Surgeguard)),
        native_cpu_over_no_filter_us: direct.and_then(|r| cpu_over(r, Arm::SurgeguardNative, Arm::NoFilter)),
        native_ratio_vs_local_ratelimit: direct
            .and_then(|r| RatioFigure::between(r, Arm::SurgeguardNative, Arm::NativeLocalRatelimit))
            .map(|r| r.of_medians),
    }
}

impl StartupFigures {
    fn new(samples_ms: &[f64]) -> StartupFigures {
        let s = summarize(samples_ms);
        StartupFigures {
            median: s.map(|s| round_to(s.median, 1)),
            min: s.map(|s| round_to(s.min, 1)),
            max: s.map(|s| round_to(s.max, 1)),
            samples: samples_ms.iter().map(|x| round_to(*x, 1)).collect(),
            workers: STARTUP_WORKERS,
        }
    }
}

impl Noise {
    fn new(runs: &[VariantRun], before: &str, after: String) -> Noise {
        // One figure over every throughput measurement of every arm and variant.
        let every = |pick: fn(&Throughput) -> f64| {
            let all: Vec<f64> =
                runs.iter().flat_map(|r| r.arms.values()).flat_map(|s| s.throughput.iter().map(pick)).collect();
            summarize(&all)
        };
        let (envoy_core, load_core) = (every(|t| t.foreign_cpu_pct), every(|t| t.foreign_load_cpu_pct));
        Noise {
            load_average_before: before.to_string(),
            load_average_after: after,
            foreign_cpu_pct_median: envoy_core.map(|s| round_to(s.median, 1)),
            foreign_cpu_pct_max: envoy_core.map(|s| round_to(s.max, 1)),
            foreign_load_cpu_pct_median: load_core.map(|s| round_to(s.median, 1)),
            foreign_load_cpu_pct_max: load_core.map(|s| round_to(s.max, 1)),
        }
    }
}

impl SettingsEcho {
    fn new(s: &Settings) -> SettingsEcho {
        let headers: Vec<String> = HEADERS.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        SettingsEcho {
            rounds: s.rounds,
            duration_s: s.duration_s,
            connections: s.connections,
            accuracy_s: s.accuracy_s,
            startup_samples: s.startup_samples,
            quick: s.quick,
            envoy_concurrency: 1,
            envoy_cpu: ENVOY_CPU,
            load_cpu: LOAD_CPU,
            request: format!("GET {PATH} with {}", headers.join(", ")),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::results::{Latency, Series};
    use std::path::PathBuf;

    /// A run of the direct_response variant where every arm served `rps` in each round; the
    /// fleet arm leasing throughout, 3 calls per run.
    pub fn direct_run(rps: [f64; 5]) -> VariantRun {
        let mut run = VariantRun::new(Variant::DirectResponse);
        for (arm, r) in crate::arms::ARMS.iter().zip(rps) {
            let t = Throughput {
                rps: r,
                cpu_us_per_request: 1e6 / r,
                user_us_per_request: 5e5 / r,
                foreign_cpu_pct: 1.0,
                foreign_load_cpu_pct: 2.0,
                failures: 0,
            };
            let l = Latency { p50_us: 200.0, p99_us: 900.0, p999_us: 2000.0, achieved_rps: r / 2.0, failures: 0 };
            let leases = if arm.leases() { vec![lease_sample(true); 2] } else { Vec::new() };
            run.arms.insert(arm.key(), Series { throughput: vec![t, t], latency: vec![l, l], leases });
        }
        run
    }

    pub fn lease_sample(fleet_mode: bool) -> crate::fleet::Sample {
        crate::fleet::Sample {
            lease_calls: 3,
            lease_grants: 3,
            lease_denials: 0,
            lease_failures: 0,
            service_requests: 3,
            requests: 30_000,
            seconds: 3.0,
            fleet_mode,
        }
    }

    pub fn results(runs: &[VariantRun], startup: &Startup) -> Results {
        let machine = Machine {
            nproc: 2,
            cpu_model: "AMD EPYC".into(),
            kernel: "6.1".into(),
            envoy_version: "1.40.0".into(),
            envoy_bin: PathBuf::from("/usr/bin/envoy"),
        };
        let empty = Built {
            module: PathBuf::from("dist/bench/empty_filter.wasm"),
            wasm_opt: true,
            profile: vec![("CARGO_PROFILE_RELEASE_LTO".into(), "true".into())],
            wasm_opt_flags: vec!["-O3".into()],
        };
        let settings = Settings { rounds: 2, ..Settings::default() };
        Results::assemble(
            Measured {
                command: "./build.sh bench --quick",
                settings: &settings,
                machine: &machine,
                load_average_before: "0.10 0.20 0.30",
                modules: Modules { module_bytes: 170_754, empty_module_bytes: 94_282, empty: &empty },
                profile: None,
                startup,
                runs,
                prices: None,
                accuracy: None,
            },
            Finish {
                load_average_after: "1.00 0.50 0.40".into(),
                finished_at: "2025-01-01T00:00:00Z".into(),
                took_s: 61.23,
            },
        )
    }

    pub fn startup() -> Startup {
        Startup {
            samples_ms: BTreeMap::from([("no_filter", vec![300.0, 310.0]), ("surgeguard", vec![400.0, 420.0])]),
            medians_ms: BTreeMap::from([("no_filter", 305.0), ("surgeguard", 410.0)]),
        }
    }

    #[test]
    fn results_json_has_the_contract_keys_at_the_top_from_the_direct_response_variant() {
        let r = results(&[direct_run([20_000.0, 18_000.0, 16_000.0, 12_000.0, 10_000.0])], &startup());
        let v = serde_json::to_value(&r).unwrap();
        for key in ["arms", "ratios", "accuracy", "module_bytes"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["arms"], v["variants"]["direct_response"]["arms"]);
        assert_eq!(v["ratios"]["surgeguard_vs_empty_wasm"], 0.75);
        assert_eq!(v["arms"]["no_filter"]["rps_median"], 20_000.0);
        assert_eq!(v["module_bytes"], 170_754);
        assert_eq!(v["startup_over_no_filter_ms"], 105.0);
        assert_eq!(v["startup_ms"]["surgeguard"]["samples"], serde_json::json!([400.0, 420.0]));
        assert_eq!(v["took_s"], 61.2);
    }

    #[test]
    fn the_fleet_arm_has_its_arm_object_its_ratio_its_cpu_difference_and_its_leases() {
        let r = results(&[direct_run([20_000.0, 18_000.0, 16_000.0, 12_000.0, 10_000.0])], &startup());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["arms"]["surgeguard_fleet"]["rps_median"], 10_000.0);
        assert_eq!(v["ratios"]["surgeguard_fleet_vs_surgeguard"], 0.8333);
        // 100 us per request against 83.33 us.
        assert_eq!(v["variants"]["direct_response"]["cpu_us_over"]["surgeguard_fleet_vs_surgeguard"], 16.67);
        assert_eq!(v["fleet"]["mode"], "fleet");
        assert_eq!(v["fleet"]["lease_calls_per_s"], 1.0);
        assert_eq!(v["fleet"]["lease_calls_per_request"], 0.0001);
        assert_eq!(v["fleet"], v["variants"]["direct_response"]["fleet"]);
        let floor = r.floors.iter().find(|f| f.name.starts_with("fleet arm")).unwrap();
        assert_eq!((floor.value, floor.met), (Some(16.6667), Some(false)));
    }

    #[test]
    fn the_fleet_floor_is_not_judged_when_the_arm_fell_back_to_its_local_share() {
        let mut run = direct_run([1.0; 5]);
        if let Some(s) = run.arms.get_mut("surgeguard_fleet") {
            s.leases[1] = lease_sample(false);
        }
        let r = results(&[run], &startup());
        assert_eq!(r.fleet.as_ref().map(|f| f.mode), Some("local"));
        let floor = r.floors.iter().find(|f| f.name.starts_with("fleet arm")).unwrap();
        assert_eq!((floor.value, floor.met), (None, None));
    }

    #[test]
    fn without_an_accuracy_run_the_contract_figures_are_null_and_the_setup_stays() {
        let v = serde_json::to_value(results(&[direct_run([1.0; 5])], &startup())).unwrap();
        assert_eq!(
            v["accuracy"],
            serde_json::json!({"workers": 2, "overload": 5, "admitted": null, "expected": null, "error_pct": null})
        );
        assert!(v["accuracy_native"].is_null());
        assert!(v["profile"].is_null() && v["host_call_prices"].is_null());
    }

    #[test]
    fn noise_is_summarized_over_every_throughput_measurement() {
        let r = results(&[direct_run([1.0; 5])], &startup());
        assert_eq!(r.noise.foreign_cpu_pct_median, Some(1.0));
        assert_eq!(r.noise.foreign_load_cpu_pct_max, Some(2.0));
        assert_eq!(r.noise.load_average_after, "1.00 0.50 0.40");
    }
}
