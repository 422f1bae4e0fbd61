//! The four arms and two route variants, as Envoy bootstraps.
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
//!   example (two keyed limits more) is `bench/configs/contract-admit-all.json`, profiled too.
//!
//! Variants: `direct_response` (Envoy answers itself: the filter's cost dominates, the worst
//! case) and `upstream` (proxied to a local upstream, as in production).

use std::path::Path;
use surgeguard_harness::envoy::{bootstrap_yaml, json_string, upstream_cluster_yaml};

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
}

pub const ARMS: [Arm; 4] = [Arm::NoFilter, Arm::NativeLocalRatelimit, Arm::EmptyWasm, Arm::Surgeguard];

impl Arm {
    /// The name in `results.json`.
    pub fn key(self) -> &'static str {
        match self {
            Arm::NoFilter => "no_filter",
            Arm::NativeLocalRatelimit => "native_local_ratelimit",
            Arm::EmptyWasm => "empty_wasm",
            Arm::Surgeguard => "surgeguard",
        }
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
}

impl Arm {
    pub fn filter<'a>(self, surgeguard: &'a Path, empty: &'a Path) -> Filter<'a> {
        match self {
            Arm::NoFilter => Filter::None,
            Arm::NativeLocalRatelimit => {
                Filter::NativeBucket { tokens_per_s: ADMIT_ALL_TOKENS_PER_S, burst: ADMIT_ALL_TOKENS_PER_S }
            }
            Arm::EmptyWasm => Filter::Wasm { module: empty, root_id: "empty", configuration: None },
            Arm::Surgeguard => {
                Filter::Wasm { module: surgeguard, root_id: "surgeguard", configuration: Some(STOREFRONT_ADMIT_ALL) }
            }
        }
    }
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

/// A bootstrap: admin and listener on port 0, one route (direct or to `upstream_port`).
pub fn bootstrap(filter: &Filter, variant: Variant, upstream_port: u16) -> String {
    let route = match variant {
        Variant::DirectResponse => r#"direct_response: { status: 200, body: { inline_string: "ok\n" } }"#.to_string(),
        Variant::Upstream => "route: { cluster: upstream, timeout: 15s }".to_string(),
    };
    let clusters = match variant {
        Variant::DirectResponse => String::new(),
        Variant::Upstream => upstream_cluster_yaml(upstream_port),
    };
    bootstrap_yaml("bench", "", &route, &filter_yaml(filter), &clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arm_has_a_distinct_results_key() {
        let keys: Vec<_> = ARMS.iter().map(|a| a.key()).collect();
        assert_eq!(keys, ["no_filter", "native_local_ratelimit", "empty_wasm", "surgeguard"]);
    }

    #[test]
    fn the_surgeguard_arm_carries_the_storefront_configuration_as_a_string() {
        let y = bootstrap(
            &Arm::Surgeguard.filter(Path::new("/x/s.wasm"), Path::new("/x/e.wasm")),
            Variant::DirectResponse,
            0,
        );
        assert!(y.contains(r#"filename: "/x/s.wasm""#));
        assert!(y.contains("root_id: surgeguard"));
        assert!(y.contains(r#"value: "{\n  \"mode\": \"enforce\""#));
        assert!(y.contains("direct_response"));
        assert!(!y.contains("clusters:"));
    }

    #[test]
    fn the_native_arm_refills_its_bucket_every_50_ms() {
        let y = bootstrap(&Filter::NativeBucket { tokens_per_s: 500, burst: 1000 }, Variant::Upstream, 4242);
        assert!(y.contains("token_bucket: { max_tokens: 1000, tokens_per_fill: 25, fill_interval: 0.050s }"));
        assert!(y.contains("port_value: 4242"));
    }

    #[test]
    fn the_empty_arm_has_no_configuration_and_no_filter_arm_only_the_router() {
        let empty = bootstrap(&Arm::EmptyWasm.filter(Path::new("s"), Path::new("e")), Variant::DirectResponse, 0);
        assert!(empty.contains("root_id: empty") && !empty.contains("StringValue"));
        let none = bootstrap(&Filter::None, Variant::DirectResponse, 0);
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
}
