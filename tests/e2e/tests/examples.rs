//! Every example we ship is valid: each plugin configuration in `envoy/` (JSON files, Envoy and
//! Istio YAML) and in the README passes the module's own parser, and `envoy/minimal.yaml`
//! runs in a real Envoy as shipped.

use std::path::{Path, PathBuf};
use surgeguard_e2e::client::{self, Req};
use surgeguard_harness::envoy::{load_shipped, Envoy, Options};
use surgeguard_harness::repo_root;
use surgeguard_harness::upstream::Upstream;

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

/// Plugin configurations embedded in a YAML value: Envoy Wasm filter `configuration`
/// (StringValue or Struct) and Istio `WasmPlugin.spec.pluginConfig`.
fn embedded_configs(v: &serde_yaml::Value, out: &mut Vec<String>) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            let is_wasm =
                m.get("@type").and_then(|t| t.as_str()).is_some_and(|t| t.ends_with("filters.http.wasm.v3.Wasm"));
            if is_wasm {
                if let Some(cfg) = m.get("config").and_then(|c| c.get("configuration")) {
                    match cfg.get("value") {
                        Some(serde_yaml::Value::String(s)) => out.push(s.clone()),
                        Some(other) => out.push(serde_json::to_string(other).unwrap()),
                        None => {}
                    }
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
    for f in &files {
        assert_valid(&f.display().to_string(), &std::fs::read_to_string(f).unwrap());
    }
}

#[test]
fn every_yaml_example_embeds_valid_plugin_configurations() {
    let mut files = Vec::new();
    files_under(&repo_root().join("envoy"), "yaml", &mut files);
    assert!(!files.is_empty());
    // Templates hold a placeholder where a tool puts the JSON; their rendered output is checked.
    for f in files.iter().filter(|f| !f.to_string_lossy().contains(".template.")) {
        let text = std::fs::read_to_string(f).unwrap();
        let mut configs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: not YAML: {e}", f.display()));
            embedded_configs(&v, &mut configs);
        }
        let mentions_filter = text.contains("surgeguard.wasm") || text.contains("kind: WasmPlugin");
        let inline = text.contains("configuration:") || text.contains("pluginConfig:");
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
