//! The six arms and two route variants, as Envoy bootstraps.
//!
//! Every arm is the same Envoy listener with the same route; only the HTTP filter in front of
//! the router differs:
//! - `no_filter`: the router alone;
//! - `native_local_ratelimit`: Envoy's `envoy.filters.http.local_ratelimit` with one global
//!   bucket as large as surgeguard's (it admits everything);
//! - `empty_wasm`: the empty Rust proxy-wasm filter (`bench/empty-filter`), the wasm floor;
//! - `surgeguard`: the demo's configuration (`envoy/storefront.json`: classes, rules, a global
//!   bucket, an in-flight limit) as `bench/configs/storefront-admit-all.json`, sized so that
//!   every request is admitted: the arm pays every check and no refusal. The contract's fuller
//!   example (two keyed limits more) is `bench/configs/contract-admit-all.json`, profiled too;
//! - `surgeguard_fleet`: the same module and configuration with its global limit fleet-wide
//!   ([`fleet_configuration`]): tokens leased from a real rate limit service (Redis and
//!   `surgeguard-rls`, whose limit, [`fleet_limits_yaml`], is far above any load), so the arm
//!   shows what leasing costs per request over the local limit;
//! - `surgeguard_native`: the surgeguard arm's configuration in the native build
//!   (`dist/libsurgeguard_native.so`, an Envoy dynamic module over the same core).
//!
//! Variants: `direct_response` (Envoy answers itself: the filter's cost dominates, the worst
//! case) and `upstream` (proxied to a local upstream, as in production).

use serde_json::{json, Value};
use std::path::Path;
use surgeguard_harness::envoy::{bootstrap_yaml, json_string, native_filter_yaml, upstream_cluster_yaml};
use surgeguard_harness::rls::rls_cluster_yaml;

/// The surgeguard arm's plugin configuration.
pub const STOREFRONT_ADMIT_ALL: &str = include_str!("../configs/storefront-admit-all.json");
/// The contract's example configuration, sized the same way (for the request-path profile).
pub const CONTRACT_ADMIT_ALL: &str = include_str!("../configs/contract-admit-all.json");

/// The request every arm serves: an API read from a browser with an API key, so that the
/// storefront configuration evaluates every rule and its limits and takes an in-flight slot.
pub const PATH: &str = "/api/products/42";
pub const HEADERS: [(&str, &str); 2] =
    [("user-agent", "Mozilla/5.0 (surgeguard-bench)"), ("x-api-key", "bench-key-0001")];

/// Tokens per second and burst of the native arm's bucket: the same as surgeguard's limits.
pub const ADMIT_ALL_TOKENS_PER_S: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    NoFilter,
    NativeLocalRatelimit,
    EmptyWasm,
    Surgeguard,
    SurgeguardFleet,
    SurgeguardNative,
}

pub const ARMS: [Arm; 6] = [
    Arm::NoFilter,
    Arm::NativeLocalRatelimit,
    Arm::EmptyWasm,
    Arm::Surgeguard,
    Arm::SurgeguardFleet,
    Arm::SurgeguardNative,
];

impl Arm {
    /// The name in `results.json`.
    pub fn key(self) -> &'static str {
        match self {
            Arm::NoFilter => "no_filter",
            Arm::NativeLocalRatelimit => "native_local_ratelimit",
            Arm::EmptyWasm => "empty_wasm",
            Arm::Surgeguard => "surgeguard",
            Arm::SurgeguardFleet => "surgeguard_fleet",
            Arm::SurgeguardNative => "surgeguard_native",
        }
    }

    /// Whether its Envoy needs the rate limit service's cluster.
    pub fn leases(self) -> bool {
        self == Arm::SurgeguardFleet
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    DirectResponse,
    Upstream,
}

impl Variant {
    pub fn key(self) -> &'static str {
        match self {
            Variant::DirectResponse => "direct_response",
            Variant::Upstream => "upstream",
        }
    }
}

/// The HTTP filter one arm puts before the router.
pub enum Filter<'a> {
    None,
    /// Native local_ratelimit: one bucket of `burst` tokens refilled at `tokens_per_s`.
    NativeBucket {
        tokens_per_s: u64,
        burst: u64,
    },
    /// A wasm module with its plugin configuration (`None`: no configuration).
    Wasm {
        module: &'a Path,
        root_id: &'a str,
        configuration: Option<&'a str>,
    },
    /// surgeguard's native build (an Envoy dynamic module) with its configuration.
    Native {
        module: &'a Path,
        configuration: &'a str,
    },
}

/// What the arms' filters are made of.
pub struct FilterInputs<'a> {
    pub surgeguard: &'a Path,
    pub empty: &'a Path,
    /// The native build's `.so`.
    pub native: &'a Path,
    /// [`fleet_configuration`].
    pub fleet_configuration: &'a str,
}

impl Arm {
    pub fn filter<'a>(self, m: &FilterInputs<'a>) -> Filter<'a> {
        let (surgeguard, empty) = (m.surgeguard, m.empty);
        match self {
            Arm::NoFilter => Filter::None,
            Arm::NativeLocalRatelimit => {
                Filter::NativeBucket { tokens_per_s: ADMIT_ALL_TOKENS_PER_S, burst: ADMIT_ALL_TOKENS_PER_S }
            }
            Arm::EmptyWasm => Filter::Wasm { module: empty, root_id: "empty", configuration: None },
            Arm::Surgeguard => {
                Filter::Wasm { module: surgeguard, root_id: "surgeguard", configuration: Some(STOREFRONT_ADMIT_ALL) }
            }
            Arm::SurgeguardFleet => {
                Filter::Wasm { module: surgeguard, root_id: "surgeguard", configuration: Some(m.fleet_configuration) }
            }
            Arm::SurgeguardNative => Filter::Native { module: m.native, configuration: STOREFRONT_ADMIT_ALL },
        }
    }
}

/// The fleet arm's rate limit service: its Envoy cluster and domain (Limitador's namespace).
pub const FLEET_CLUSTER: &str = "ratelimit";
pub const FLEET_DOMAIN: &str = "surgeguard_bench";
/// One Envoy per arm and variant: should the service fail, each would admit the whole limit
/// (still far above the load), and the fleet-mode check would catch it.
pub const FLEET_LOCAL_SHARE: f64 = 1.0;

/// The surgeguard arm's configuration with its global limit fleet-wide, nothing else changed.
pub fn fleet_configuration() -> Result<String, String> {
    let mut v: Value =
        serde_json::from_str(STOREFRONT_ADMIT_ALL).map_err(|e| format!("storefront configuration: {e}"))?;
    let limits = v["limits"].as_array_mut().ok_or("storefront configuration: no limits")?;
    let mut global = limits.iter_mut().filter(|l| l["key"] == "global");
    let (Some(limit), None) = (global.next(), global.next()) else {
        return Err("storefront configuration: the fleet arm needs exactly one global limit".into());
    };
    limit["fleet"] = json!({ "cluster": FLEET_CLUSTER, "domain": FLEET_DOMAIN, "local_share": FLEET_LOCAL_SHARE });
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
}

/// Limitador's limits file for a configuration's fleet limits, written as the README says: a
/// limit of `tokens_per_second` T and `burst` B is B hits per B / T seconds, for the descriptor
/// surgeguard sends by default (`surgeguard_limit=<name>`).
pub fn fleet_limits_yaml(configuration: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(configuration).map_err(|e| format!("fleet configuration: {e}"))?;
    let mut out = String::new();
    for l in v["limits"].as_array().into_iter().flatten().filter(|l| l.get("fleet").is_some()) {
        let (Some(name), Some(domain), Some(rate), Some(burst)) =
            (l["name"].as_str(), l["fleet"]["domain"].as_str(), l["tokens_per_second"].as_u64(), l["burst"].as_u64())
        else {
            return Err(format!("fleet limit without name, domain, whole tokens_per_second or burst: {l}"));
        };
        if rate == 0 || burst % rate != 0 {
            return Err(format!("fleet limit {name}: burst / tokens_per_second must be whole seconds"));
        }
        out += &format!(
            "- namespace: {domain}\n  max_value: {burst}\n  seconds: {}\n  conditions: [\"descriptors[0].surgeguard_limit == '{name}'\"]\n  variables: []\n",
            burst / rate
        );
    }
    if out.is_empty() {
        return Err("fleet configuration: no fleet limit".into());
    }
    Ok(out)
}

/// Native local_ratelimit refills every 50 ms (its finest interval): tokens per fill.
pub const NATIVE_FILL_INTERVAL_MS: u64 = 50;

fn filter_yaml(f: &Filter) -> String {
    match f {
        Filter::None => String::new(),
        Filter::NativeBucket { tokens_per_s, burst } => {
            let per_fill = (tokens_per_s * NATIVE_FILL_INTERVAL_MS / 1000).max(1);
            format!(
                r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench_local_rate_limit
              token_bucket: {{ max_tokens: {burst}, tokens_per_fill: {per_fill}, fill_interval: 0.{NATIVE_FILL_INTERVAL_MS:03}s }}
              filter_enabled:
                runtime_key: bench_local_rate_limit_enabled
                default_value: {{ numerator: 100, denominator: HUNDRED }}
              filter_enforced:
                runtime_key: bench_local_rate_limit_enforced
                default_value: {{ numerator: 100, denominator: HUNDRED }}
"#
            )
        }
        Filter::Native { module, configuration } => native_filter_yaml(module, configuration),
        Filter::Wasm { module, root_id, configuration } => {
            let configuration = configuration.map_or(String::new(), |json| {
                format!(
                    r#"                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {}
"#,
                    json_string(json)
                )
            });
            format!(
                r#"          - name: {root_id}
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {root_id}
                root_id: {root_id}
                failure_policy: FAIL_CLOSED
                vm_config:
                  vm_id: {root_id}
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {module} }} }}
{configuration}"#,
                module = json_string(&module.display().to_string()),
            )
        }
    }
}

/// Where an arm's clusters point (0: not running).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ports {
    pub upstream: u16,
    pub rate_limit_service: u16,
}

/// A bootstrap: admin and listener on port 0, one route (direct or to the upstream), and the
/// rate limit service's cluster for an arm that leases.
pub fn bootstrap(filter: &Filter, variant: Variant, ports: Ports, leases: bool) -> String {
    let route = match variant {
        Variant::DirectResponse => r#"direct_response: { status: 200, body: { inline_string: "ok\n" } }"#.to_string(),
        Variant::Upstream => "route: { cluster: upstream, timeout: 15s }".to_string(),
    };
    let mut clusters = match variant {
        Variant::DirectResponse => String::new(),
        Variant::Upstream => upstream_cluster_yaml(ports.upstream),
    };
    if leases {
        if clusters.is_empty() {
            clusters = "  clusters:\n".into();
        }
        clusters += &rls_cluster_yaml(FLEET_CLUSTER, ports.rate_limit_service);
    }
    bootstrap_yaml("bench", "", &route, &filter_yaml(filter), &clusters)
}

/// One arm's bootstrap.
pub fn arm_bootstrap(arm: Arm, variant: Variant, m: &FilterInputs, ports: Ports) -> String {
    bootstrap(&arm.filter(m), variant, ports, arm.leases())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arm_has_a_distinct_results_key() {
        let keys: Vec<_> = ARMS.iter().map(|a| a.key()).collect();
        assert_eq!(
            keys,
            [
                "no_filter",
                "native_local_ratelimit",
                "empty_wasm",
                "surgeguard",
                "surgeguard_fleet",
                "surgeguard_native"
            ]
        );
    }

    fn inputs(fleet_configuration: &str) -> FilterInputs<'_> {
        FilterInputs {
            surgeguard: Path::new("/x/s.wasm"),
            empty: Path::new("/x/e.wasm"),
            native: Path::new("/x/libs.so"),
            fleet_configuration,
        }
    }

    #[test]
    fn the_surgeguard_arm_carries_the_storefront_configuration_as_a_string() {
        let y = arm_bootstrap(Arm::Surgeguard, Variant::DirectResponse, &inputs(""), Ports::default());
        assert!(y.contains(r#"filename: "/x/s.wasm""#));
        assert!(y.contains("root_id: surgeguard"));
        assert!(y.contains(r#"value: "{\n  \"mode\": \"enforce\""#));
        assert!(y.contains("direct_response"));
        assert!(!y.contains("clusters:"));
    }

    #[test]
    fn the_native_arm_refills_its_bucket_every_50_ms() {
        let ports = Ports { upstream: 4242, rate_limit_service: 0 };
        let y = bootstrap(&Filter::NativeBucket { tokens_per_s: 500, burst: 1000 }, Variant::Upstream, ports, false);
        assert!(y.contains("token_bucket: { max_tokens: 1000, tokens_per_fill: 25, fill_interval: 0.050s }"));
        assert!(y.contains("port_value: 4242"));
    }

    #[test]
    fn the_native_arm_loads_the_native_build_with_the_surgeguard_arms_configuration() {
        let y = arm_bootstrap(Arm::SurgeguardNative, Variant::DirectResponse, &inputs(""), Ports::default());
        assert!(y.contains("dynamic_modules.v3.DynamicModuleFilter"));
        assert!(y.contains(r#"filename: "/x/libs.so""#) && y.contains("do_not_close: true"));
        assert!(y.contains(r#"value: "{\n  \"mode\": \"enforce\""#));
        assert!(!y.contains("wasm"));
    }

    #[test]
    fn the_empty_arm_has_no_configuration_and_no_filter_arm_only_the_router() {
        let empty = arm_bootstrap(Arm::EmptyWasm, Variant::DirectResponse, &inputs(""), Ports::default());
        assert!(empty.contains("root_id: empty") && !empty.contains("StringValue"));
        let none = arm_bootstrap(Arm::NoFilter, Variant::DirectResponse, &inputs(""), Ports::default());
        assert!(!none.contains("wasm") && !none.contains("local_ratelimit"));
        assert!(none.contains("envoy.filters.http.router"));
    }

    #[test]
    fn the_surgeguard_arm_runs_the_demo_configuration_with_limits_raised() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let demo: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("envoy/storefront.json")).unwrap()).unwrap();
        let arm: serde_json::Value = serde_json::from_str(STOREFRONT_ADMIT_ALL).unwrap();
        for field in ["mode", "classes", "default_class", "rules"] {
            assert_eq!(arm[field], demo[field], "{field}");
        }
        let shape = |v: &serde_json::Value| -> Vec<(serde_json::Value, serde_json::Value)> {
            v["limits"].as_array().unwrap().iter().map(|l| (l["name"].clone(), l["key"].clone())).collect()
        };
        assert_eq!(shape(&arm), shape(&demo));
    }

    #[test]
    fn the_storefront_config_admits_far_more_than_any_run_can_send() {
        let v: serde_json::Value = serde_json::from_str(STOREFRONT_ADMIT_ALL).unwrap();
        for l in v["limits"].as_array().unwrap() {
            assert!(l["tokens_per_second"].as_u64().unwrap() >= ADMIT_ALL_TOKENS_PER_S);
        }
        assert!(v["concurrency"]["max_in_flight"].as_u64().unwrap() >= 10_000);
    }

    #[test]
    fn the_fleet_arm_runs_the_surgeguard_configuration_with_its_global_limit_fleet_wide() {
        let fleet: serde_json::Value = serde_json::from_str(&fleet_configuration().unwrap()).unwrap();
        let mut local: serde_json::Value = serde_json::from_str(STOREFRONT_ADMIT_ALL).unwrap();
        assert_eq!(
            fleet["limits"][0]["fleet"],
            serde_json::json!({"cluster": "ratelimit", "domain": "surgeguard_bench", "local_share": 1.0})
        );
        local["limits"][0]["fleet"] = fleet["limits"][0]["fleet"].clone();
        assert_eq!(fleet, local, "nothing else differs");
    }

    #[test]
    fn the_fleet_arm_reaches_the_service_through_its_own_http2_cluster_in_both_variants() {
        let ports = Ports { upstream: 4242, rate_limit_service: 5353 };
        let inputs = inputs("{\"fleet\": 1}");
        for variant in [Variant::DirectResponse, Variant::Upstream] {
            let y = arm_bootstrap(Arm::SurgeguardFleet, variant, &inputs, ports);
            assert_eq!(y.matches("  clusters:\n").count(), 1, "{y}");
            assert!(
                y.contains("- name: ratelimit")
                    && y.contains("port_value: 5353")
                    && y.contains("http2_protocol_options")
            );
            assert!(y.contains(r#"value: "{\"fleet\": 1}""#));
        }
        let local = arm_bootstrap(Arm::Surgeguard, Variant::Upstream, &inputs, ports);
        assert!(!local.contains("ratelimit"));
    }

    #[test]
    fn the_services_limit_is_the_fleet_limit_and_far_above_any_load() {
        let yaml = fleet_limits_yaml(&fleet_configuration().unwrap()).unwrap();
        assert_eq!(
            yaml,
            "- namespace: surgeguard_bench\n  max_value: 1000000\n  seconds: 1\n  conditions: [\"descriptors[0].surgeguard_limit == 'storefront'\"]\n  variables: []\n"
        );
        assert!(fleet_limits_yaml(STOREFRONT_ADMIT_ALL).is_err(), "a configuration without a fleet limit");
    }
}
