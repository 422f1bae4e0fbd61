//! Every example we ship is valid: each plugin configuration in `envoy/` (JSON files, Envoy and
//! Istio YAML, the native build's Envoy, Envoy Gateway and Istio examples) and in the README
//! passes the module's own parser, `envoy/minimal.yaml` and `envoy/native/envoy.yaml` run in a
//! real Envoy as shipped, and so does `envoy/fleet/envoy.yaml` against a real rate limit service
//! given the shipped `envoy/fleet/limitador-limits.yaml`.

use std::path::{Path, PathBuf};
use surgeguard_e2e::client::{self, Req};
use surgeguard_harness::envoy::{json_string, load_shipped, Envoy, Localise, Options};
use surgeguard_harness::fleet;
use surgeguard_harness::upstream::Upstream;
use surgeguard_harness::{native_path, repo_root};

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

/// A protobuf `Any` holding the configuration: a StringValue's string, or a Struct as JSON.
fn any_value(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v.get("value") {
        Some(serde_yaml::Value::String(s)) => out.push(s.clone()),
        Some(other) => out.push(serde_json::to_string(other).unwrap()),
        None => {}
    }
}

/// Plugin configurations embedded in a YAML value: Envoy Wasm filter `configuration` and
/// dynamic module `filter_config` (StringValue or Struct), Istio `WasmPlugin.spec.pluginConfig`
/// and Envoy Gateway `EnvoyExtensionPolicy.spec.dynamicModule[].config`.
fn embedded_configs(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            let type_is = |suffix: &str| m.get("@type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with(suffix));
            if type_is("filters.http.dynamic_modules.v3.DynamicModuleFilter") {
                if let Some(cfg) = m.get("filter_config") {
                    any_value(cfg, out);
                }
            }
            if m.get("kind").and_then(|k| k.as_str()) == Some("EnvoyExtensionPolicy") {
                let modules = m.get("spec").and_then(|s| s.get("dynamicModule")).and_then(|d| d.as_sequence());
                for config in modules.into_iter().flatten().filter_map(|d| d.get("config")) {
                    out.push(serde_json::to_string(config).unwrap());
                }
            }
            let is_wasm =
                m.get("@type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"));
            if is_wasm {
                if let Some(cfg) = m.get("config").and_then(|c| c.get("configuration")) {
                    any_value(cfg, out);
                }
            }
            if m.get("kind").and_then(|k| k.as_str()) == Some("WasmPlugin") {
                if let Some(pc) = m.get("spec").and_then(|s| s.get("pluginConfig")) {
                    out.push(serde_json::to_string(pc).unwrap());
                }
            }
            for (_, child) in m {
                embedded_configs(child, out);
            }
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|c| embedded_configs(c, out)),
        _ => {}
    }
}

fn assert_valid(origin: &str, json: &str) {
    if let Err(errors) = surgeguard::config::parse(json.as_bytes()) {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("{origin}: refused:\n{}", lines.join("\n"));
    }
}

#[test]
fn every_json_example_is_a_valid_plugin_configuration() {
    let mut files = Vec::new();
    files_under(&repo_root().join("envoy"), "json", &mut files);
    assert!(files.iter().any(|f| f.ends_with("envoy/fleet/storefront.json")), "the walk reaches envoy/fleet/");
    for f in &files {
        assert_valid(&f.display().to_string(), &std::fs::read_to_string(f).unwrap());
    }
}

#[test]
fn every_yaml_example_embeds_valid_plugin_configurations() {
    let mut files = Vec::new();
    files_under(&repo_root().join("envoy"), "yaml", &mut files);
    assert!(files.iter().any(|f| f.ends_with("envoy/fleet/envoy.yaml")), "the walk reaches envoy/fleet/");
    // Templates hold a placeholder where a tool puts the JSON; their rendered output is checked.
    for f in files.iter().filter(|f| !f.to_string_lossy().contains(".template.")) {
        let text = std::fs::read_to_string(f).unwrap();
        let mut configs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
            embedded_configs(&v, &mut configs);
        }
        let mentions_filter = text.contains("surgeguard.wasm")
            || text.contains("kind: WasmPlugin")
            || text.contains("libsurgeguard_native.so");
        let inline =
            ["configuration:", "pluginConfig:", "filter_config:", "dynamicModule:"].iter().any(|k| text.contains(k));
        if mentions_filter && inline {
            assert!(!configs.is_empty(), "{}: no plugin configuration found", f.display());
        }
        for c in &configs {
            assert_valid(&f.display().to_string(), c);
        }
    }
}

use serde::Deserialize as _;

#[test]
fn the_readme_configuration_example_is_valid() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks: Vec<&str> = readme.split("```json").skip(1).filter_map(|b| b.split("```").next()).collect();
    assert!(!blocks.is_empty(), "README has a JSON example");
    for b in blocks {
        assert_valid("README.md", b);
    }
}

#[test]
fn the_minimal_envoy_config_runs_as_shipped_and_limits() {
    let upstream = Upstream::start(std::time::Duration::ZERO).unwrap();
    let yaml = load_shipped(&repo_root().join("envoy/minimal.yaml"), upstream.port).unwrap();
    let envoy = Envoy::start(&yaml, &Options::default()).unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    // Standard may take 160 of the 200 tokens at once (reserve 0.2); checkout the rest.
    let replies = client::requests(port, &vec![Req::get("/products/1"); 200]);
    let ok = replies.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 200)).count();
    let limited = replies.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 429)).count();
    assert!(limited > 0 && (160..200).contains(&ok), "ok {ok} limited {limited}");
    assert_eq!(client::request(port, &Req::get("/checkout")).unwrap().status, 200);
}

#[test]
fn every_native_example_embeds_its_configuration_and_loads_the_native_build() {
    let dir = repo_root().join("envoy/native");
    for (file, configs) in [("envoy.yaml", 1), ("envoy-gateway.yaml", 1), ("istio-envoyfilter.yaml", 1)] {
        let path = dir.join(file);
        assert_eq!(configs_in(&path).len(), configs, "{}", path.display());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("libsurgeguard_native.so"), "{file}");
        assert!(text.contains("do_not_close: true") || text.contains("doNotClose: true"), "{file}: never unloaded");
        assert!(text.contains("1.40"), "{file}: states the Envoy minor it is pinned to");
    }
}

#[test]
fn the_native_envoy_config_runs_as_shipped_and_limits() {
    let upstream = Upstream::start(std::time::Duration::ZERO).unwrap();
    let module = (
        "filename: dist/libsurgeguard_native.so".to_string(),
        format!("filename: {}", json_string(&native_path().display().to_string())),
    );
    let localise = Localise { upstream_port: Some(upstream.port), replacements: vec![module], ..Localise::default() };
    let yaml = localise.load(&repo_root().join("envoy/native/envoy.yaml")).unwrap();
    let envoy = Envoy::start(&yaml, &Options::default()).unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    assert!(envoy.log().contains("Dynamic module ABI version v0.2.0 matched"), "{}", envoy.log());
    let port = envoy.listener_port();
    // As envoy/minimal.yaml: standard may take 160 of the 200 tokens at once; checkout the rest.
    let replies = client::requests(port, &vec![Req::get("/products/1"); 200]);
    let ok = replies.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 200)).count();
    let limited = replies.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 429)).count();
    assert!(limited > 0 && (160..200).contains(&ok), "ok {ok} limited {limited}");
    assert_eq!(client::request(port, &Req::get("/checkout")).unwrap().status, 200);
    let admitted = envoy.stats().get("dynamicmodulescustom.surgeguard.class.standard.admitted").copied();
    assert_eq!(admitted, Some(ok as u64));
}

/// The plugin configurations embedded in a shipped YAML file.
fn configs_in(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut configs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        embedded_configs(&serde_yaml::Value::deserialize(doc).unwrap(), &mut configs);
    }
    configs
}

#[test]
fn the_fleet_example_s_envoy_config_service_limits_and_plugin_configuration_agree() {
    let dir = repo_root().join("envoy/fleet");
    let json = std::fs::read_to_string(dir.join("storefront.json")).unwrap();
    assert_eq!(
        configs_in(&dir.join("envoy.yaml")),
        vec![json.clone()],
        "envoy.yaml embeds storefront.json word for word"
    );
    let config: serde_json::Value = serde_json::from_str(&json).unwrap();
    let limit = &config["limits"][0];
    let (name, fleet) = (limit["name"].as_str().unwrap(), &limit["fleet"]);
    let (rate, burst) = (limit["tokens_per_second"].as_f64().unwrap(), limit["burst"].as_u64().unwrap());
    let domain = fleet["domain"].as_str().unwrap();
    let yaml = std::fs::read_to_string(dir.join("envoy.yaml")).unwrap();
    assert!(yaml.contains(&format!("- name: {}\n", fleet["cluster"].as_str().unwrap())), "the cluster it names");
    // Limitador: `burst` hits per `burst / tokens_per_second` seconds, for the default descriptor.
    let limits: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("limitador-limits.yaml")).unwrap()).unwrap();
    let l = &limits[0];
    assert_eq!(l["namespace"].as_str(), Some(domain));
    assert_eq!(l["max_value"].as_u64(), Some(burst));
    assert_eq!(l["seconds"].as_f64(), Some(burst as f64 / rate));
    let condition = format!("descriptors[0].surgeguard_limit == '{name}'");
    assert_eq!(l["conditions"][0].as_str(), Some(condition.as_str()));
    // envoyproxy/ratelimit: the same limit, in its whole units.
    let rl: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("ratelimit-config.yaml")).unwrap()).unwrap();
    assert_eq!(rl["domain"].as_str(), Some(domain));
    let d = &rl["descriptors"][0];
    assert_eq!((d["key"].as_str(), d["value"].as_str()), (Some("surgeguard_limit"), Some(name)));
    assert_eq!(d["rate_limit"]["requests_per_unit"].as_u64(), Some(burst));
    assert_eq!((d["rate_limit"]["unit"].as_str(), burst as f64 / rate), (Some("second"), 1.0));
}

#[test]
fn the_fleet_envoy_config_runs_as_shipped_against_a_real_rate_limit_service() {
    let limits = std::fs::read_to_string(repo_root().join("envoy/fleet/limitador-limits.yaml")).unwrap();
    let service =
        fleet::Service::start(&limits, std::time::Duration::from_millis(250)).unwrap_or_else(|e| panic!("{e}"));
    let upstream = Upstream::start(std::time::Duration::ZERO).unwrap();
    let envoy = fleet::start_envoy(upstream.port, service.port(), None, 2).unwrap_or_else(|e| panic!("{e}"));
    let mode = || envoy.stats().get("wasmcustom.surgeguard.limit.storefront.fleet_mode").copied();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mode() != Some(1) {
        assert!(std::time::Instant::now() < deadline, "no lease granted:\n{}\n{}", envoy.log(), service.rls.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // 400 browse requests at once are more than a window's 200 (standard may take 140 of them).
    let replies = client::requests(envoy.listener_port(), &vec![Req::get("/products/1"); 400]);
    let ok = replies.iter().filter(|r| r.as_ref().is_ok_and(|r| r.status == 200)).count();
    let limited =
        replies.iter().flatten().filter(|r| r.header("x-surgeguard") == Some("limit=storefront; class=standard"));
    let limited = limited.count();
    assert!(ok >= 100 && limited > 0 && ok + limited == 400, "ok {ok} limited {limited}");
    assert!(envoy.log().contains("limit storefront: fleet mode: the rate limit service answered"), "{}", envoy.log());
}
