//! The Prometheus rules in ops/prometheus/ pass `promtool check rules` and their unit tests
//! (`promtool test rules`), and every metric the rules and the Grafana dashboard read is one a
//! real Envoy exports on /stats/prometheus: the shipped ECDS config (with its stats_tags), and
//! the shipped fleet config envoy/fleet/envoy.yaml for the fleet limits' metrics.

use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
use surgeguard_harness::client::{self, Req};
use surgeguard_harness::envoy::{Envoy, Localise, Options};
use surgeguard_harness::fleet;
use surgeguard_harness::repo_root;
use surgeguard_harness::upstream::Upstream;

fn promtool(args: &[&str]) -> String {
    let out =
        Command::new("promtool").args(args).current_dir(repo_root().join("ops/prometheus")).output().unwrap_or_else(
            |e| panic!("cannot run promtool ({e}): ./build.sh test installs it (Debian package prometheus)"),
        );
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_rules_pass_promtool_check() {
    let out = promtool(&["check", "rules", "surgeguard.rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_rules_pass_their_promtool_unit_tests() {
    let out = promtool(&["test", "rules", "surgeguard.rules.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Names of exported series (`surgeguard_...`, `envoy_...`) that a PromQL text mentions;
/// recording-rule names (`surgeguard:...`) are not exported series and are skipped.
fn metric_names(promql: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = promql.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if (i == 0 || !word(bytes[i - 1]))
            && (promql[i..].starts_with("surgeguard_") || promql[i..].starts_with("envoy_"))
        {
            let end = (i..bytes.len()).find(|&j| !word(bytes[j])).unwrap_or(bytes.len());
            let name = &promql[i..end];
            if !name.contains(':') {
                out.insert(name.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("ops/prometheus/surgeguard.rules.yml")).expect("rules");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    let mut out = Vec::new();
    for group in doc["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            out.push(rule["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("ops/grafana/surgeguard.json")).expect("dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "surgeguard");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(out.len() >= 10, "the dashboard's queries: {out:?}");
    out
}

/// /stats/prometheus of the shipped ECDS Envoy running the shipped example configuration.
fn real_prometheus_output() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = dir.path().join("live");
    std::fs::create_dir(&live).expect("live dir");
    let root = repo_root();
    let resource =
        Localise::module().load(&root.join("envoy/ecds/live/surgeguard.yaml")).unwrap_or_else(|e| panic!("{e}"));
    // With the adaptive limit on, so its metrics are exported too (docs/adaptive.md).
    let resource = resource.replace(r#""max_in_flight": 96 }"#, r#""max_in_flight": 96, "adaptive": {} }"#);
    assert!(resource.contains(r#""adaptive": {}"#), "the example's concurrency changed");
    std::fs::write(live.join("surgeguard.yaml"), resource).expect("resource");
    let upstream = Upstream::start(Duration::ZERO).expect("upstream");
    let bootstrap = Localise::ecds(upstream.port, &live)
        .load(&root.join("envoy/ecds/envoy.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let envoy = Envoy::start(&bootstrap, &Options::default())
        .unwrap_or_else(|e| panic!("envoy did not start: {}\n{}", e.message, e.log));
    let r = client::request(envoy.listener_port(), &Req::get("/checkout")).expect("a request");
    assert_eq!(r.status, 200);
    // Counters reach the admin output at Envoy's next stats flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = envoy.admin_get("/stats/prometheus").map(|(_, body)| body).expect("/stats/prometheus");
        if body.contains(r#"surgeguard_class_admitted{class="critical"} 1"#) || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// /stats/prometheus of the shipped fleet Envoy (envoy/fleet/envoy.yaml) with no rate limit
/// service to reach: its limit is in local mode, and every fleet metric exists.
fn real_fleet_prometheus_output() -> String {
    let upstream = Upstream::start(Duration::ZERO).expect("upstream");
    // A port nothing listens on: lease calls fail, the limit stays in local mode.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    let envoy = fleet::start_envoy(upstream.port, closed, None, 2).unwrap_or_else(|e| panic!("{e}"));
    let r = client::request(envoy.listener_port(), &Req::get("/checkout")).expect("a request");
    assert_eq!(r.status, 200, "served with the local share");
    // The first lease failure reaches the admin output at the next counter flush.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let body = envoy.admin_get("/stats/prometheus").map(|(_, body)| body).expect("/stats/prometheus");
        let failed = body
            .lines()
            .any(|l| l.starts_with(r#"surgeguard_limit_lease_failures{limit="storefront"} "#) && !l.ends_with(" 0"));
        if failed || std::time::Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exported_names(exported: &str) -> BTreeSet<&str> {
    exported
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect()
}

#[test]
fn every_metric_the_rules_and_the_dashboard_read_is_exported_by_a_real_envoy() {
    let exported = real_prometheus_output();
    let fleet_exported = real_fleet_prometheus_output();
    let mut names = exported_names(&exported);
    names.extend(exported_names(&fleet_exported));
    // The stats_tags of envoy/ecds/envoy.yaml turn class and limit into labels.
    for series in [
        r#"surgeguard_class_admitted{class="critical"} 1"#,
        r#"surgeguard_class_shed{class="sheddable"} 0"#,
        r#"surgeguard_limit_rate_limited{limit="per_client"} 0"#,
        "surgeguard_in_flight{} ",
        "surgeguard_max_in_flight{} ",
        "surgeguard_config_rejected{} 0",
    ] {
        assert!(exported.contains(series), "expected `{series}` in /stats/prometheus:\n{exported}");
    }
    assert!(!names.contains("surgeguard_class_critical_admitted"), "class is a label, not a name");
    // The fleet config's stats_tags do the same for a fleet limit's gauge and lease counters.
    for series in [
        r#"surgeguard_limit_fleet_mode{limit="storefront"} 0"#,
        r#"surgeguard_limit_lease_calls{limit="storefront"} "#,
        r#"surgeguard_limit_lease_grants{limit="storefront"} 0"#,
        r#"surgeguard_limit_lease_denials{limit="storefront"} 0"#,
        r#"surgeguard_limit_lease_failures{limit="storefront"} "#,
    ] {
        assert!(fleet_exported.contains(series), "expected `{series}` in the fleet Envoy's output:\n{fleet_exported}");
    }

    let mut read = BTreeSet::new();
    for expr in rule_exprs().iter().chain(dashboard_exprs().iter()) {
        read.extend(metric_names(expr));
    }
    assert!(read.len() >= 12, "metrics read: {read:?}");
    let missing: Vec<&String> = read.iter().filter(|n| !names.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "read but not exported: {missing:?}\nexported: {names:?}");
}
