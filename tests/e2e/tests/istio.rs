//! Every Istio manifest shipped in envoy/istio/ parses and is a kind Istio accepts. A WasmPlugin's
//! pluginConfig is the example JSON beside it, valid for the module's own validator both as
//! written and as Istio delivers it (pluginConfig is a protobuf Struct: every number a double).
//! A ServiceEntry (the rate limit service of a fleet-wide limit) yields the cluster a fleet
//! limit's `fleet.cluster` names.

use serde_json::Value;
use std::path::{Path, PathBuf};
use surgeguard_harness::repo_root;

fn istio_dir() -> PathBuf {
    repo_root().join("envoy/istio")
}

fn files(ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(istio_dir())
        .expect("envoy/istio/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

/// Every YAML document of every manifest, as JSON values, with the file it came from.
fn manifests() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for path in files("yaml") {
        let text = std::fs::read_to_string(&path).expect("read");
        // Documents are separated by `---` lines (kubectl apply -f accepts such files).
        for doc in text.split("\n---\n").filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.starts_with('#'))) {
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let json = serde_json::to_value(yaml).expect("YAML as JSON");
            out.push((path.clone(), json));
        }
    }
    out
}

/// What istiod hands Envoy: a Struct's numbers are doubles, so 250 arrives as 250.0.
fn as_struct_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map(Value::from).unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.iter().map(as_struct_numbers).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), as_struct_numbers(v))).collect()),
        other => other.clone(),
    }
}

fn validate(what: &str, config: &Value) {
    let bytes = serde_json::to_vec(config).expect("serialize");
    if let Err(errors) = surgeguard::config::parse(&bytes) {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{what}: refused:\n{}", lines.join("\n"));
    }
}

/// The manifests of one kind.
fn of_kind(kind: &str) -> Vec<(PathBuf, Value)> {
    manifests().into_iter().filter(|(_, m)| m["kind"] == kind).collect()
}

fn name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()
}

#[test]
fn ships_a_wasmplugin_for_a_sidecar_and_for_an_ingress_gateway() {
    let all = of_kind("WasmPlugin");
    let selectors: Vec<&Value> = all.iter().map(|(_, m)| &m["spec"]["selector"]["matchLabels"]).collect();
    assert!(selectors.iter().any(|s| s["istio"] == "ingressgateway"), "one selects the ingress gateway: {selectors:?}");
    assert!(
        all.iter().any(|(_, m)| m["spec"]["match"][0]["mode"] == "SERVER"
            && m["spec"]["selector"]["matchLabels"]["istio"].is_null()),
        "one selects an application's sidecar, inbound traffic"
    );
}

#[test]
fn every_manifest_is_a_wasmplugin_or_a_serviceentry() {
    let all = manifests();
    assert!(!all.is_empty(), "no manifest in envoy/istio/");
    for (path, m) in &all {
        let kind = m["kind"].as_str().unwrap_or_default();
        assert!(["WasmPlugin", "ServiceEntry"].contains(&kind), "{}: unexpected kind {kind}", name(path));
    }
}

#[test]
fn every_serviceentry_is_one_istio_accepts() {
    for (path, m) in &of_kind("ServiceEntry") {
        let f = name(path);
        assert_eq!(m["apiVersion"], "networking.istio.io/v1", "{f}");
        assert!(m["metadata"]["name"].is_string() && m["metadata"]["namespace"].is_string(), "{f}");
        assert!(m["spec"]["hosts"].as_array().is_some_and(|h| !h.is_empty()), "{f}: hosts");
        assert!(m["spec"]["ports"].as_array().is_some_and(|p| !p.is_empty()), "{f}: ports");
    }
}

/// The Envoy clusters Istio builds for a ServiceEntry: `outbound|<port>||<host>`, and whether it
/// speaks HTTP/2 (gRPC needs it).
fn clusters_of(entry: &Value) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for host in entry["spec"]["hosts"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        for port in entry["spec"]["ports"].as_array().into_iter().flatten() {
            let http2 = ["GRPC", "HTTP2", "GRPC-WEB"].contains(&port["protocol"].as_str().unwrap_or_default());
            out.push((format!("outbound|{}||{host}", port["number"]), http2));
        }
    }
    out
}

#[test]
fn the_cluster_a_fleet_limit_names_is_the_one_the_shipped_serviceentry_yields() {
    let entries = of_kind("ServiceEntry");
    assert!(!entries.is_empty(), "a ServiceEntry for the rate limit service");
    let yielded: Vec<(String, bool)> = entries.iter().flat_map(|(_, m)| clusters_of(m)).collect();
    let mut named = 0;
    for example in files("json") {
        let json: Value = serde_json::from_slice(&std::fs::read(&example).expect("read")).expect("JSON");
        for cluster in json["limits"].as_array().into_iter().flatten().filter_map(|l| l["fleet"]["cluster"].as_str()) {
            named += 1;
            assert!(
                yielded.contains(&(cluster.to_string(), true)),
                "{}: fleet.cluster {cluster} is not an HTTP/2 cluster of a shipped ServiceEntry: {yielded:?}",
                name(&example)
            );
        }
    }
    assert!(named > 0, "sidecar-fleet.json names a cluster");
}

#[test]
fn every_wasmplugin_is_one_istio_accepts() {
    let all = of_kind("WasmPlugin");
    assert!(!all.is_empty(), "no WasmPlugin in envoy/istio/");
    for (path, m) in &all {
        let f = name(path);
        assert_eq!(m["apiVersion"], "extensions.istio.io/v1alpha1", "{f}");
        assert_eq!(m["kind"], "WasmPlugin", "{f}");
        assert!(m["metadata"]["name"].is_string() && m["metadata"]["namespace"].is_string(), "{f}");
        let spec = &m["spec"];
        let url = spec["url"].as_str().unwrap_or_default();
        assert!(url.starts_with("oci://"), "{f}: the image scripts/oci.sh pushes: {url}");
        assert_eq!(spec["phase"], "AUTHZ", "{f}: the documented phase");
        assert_eq!(spec["failStrategy"], "FAIL_RELOAD", "{f}: the documented failure strategy");
        assert!(
            ["IfNotPresent", "Always"].contains(&spec["imagePullPolicy"].as_str().unwrap_or_default()),
            "{f}: imagePullPolicy"
        );
        // The CRD's schema: only known fields under spec.
        const SPEC_FIELDS: &[&str] = &[
            "selector",
            "targetRefs",
            "url",
            "sha256",
            "imagePullPolicy",
            "imagePullSecret",
            "pluginConfig",
            "pluginName",
            "phase",
            "priority",
            "failStrategy",
            "vmConfig",
            "match",
            "type",
        ];
        for key in spec.as_object().expect("spec").keys() {
            assert!(SPEC_FIELDS.contains(&key.as_str()), "{f}: unknown spec field {key}");
        }
        let config = &spec["pluginConfig"];
        validate(&format!("{f} pluginConfig"), config);
        validate(&format!("{f} pluginConfig as Istio delivers it"), &as_struct_numbers(config));
    }
}

#[test]
fn every_plugin_config_is_its_example_json_word_for_word() {
    let all = of_kind("WasmPlugin");
    let examples = files("json");
    assert!(!examples.is_empty(), "no example JSON in envoy/istio/");
    for example in &examples {
        let bytes = std::fs::read(example).expect("read");
        surgeguard::config::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e:?}", name(example)));
        let json: Value = serde_json::from_slice(&bytes).expect("JSON");
        assert!(
            all.iter().any(|(_, m)| m["spec"]["pluginConfig"] == json),
            "{} is the pluginConfig of a shipped WasmPlugin",
            name(example)
        );
    }
    for (path, m) in &all {
        assert!(
            examples.iter().any(|e| {
                let json: Value = serde_json::from_slice(&std::fs::read(e).expect("read")).expect("JSON");
                m["spec"]["pluginConfig"] == json
            }),
            "{}: pluginConfig equals one of the example JSON files",
            name(path)
        );
    }
}
