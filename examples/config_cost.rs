//! What a configuration's size costs: the measurements behind the bounds in `config` (the
//! README's "Bounds" table). For each dimension (classes, rules, limits, header names, string
//! lengths, ...) it builds configurations of growing size and prints, per size:
//! - the JSON's bytes and the native parse + validate + compile time (median of 21 runs);
//! - with `--hostcalls BIN --module WASM`: the module's wasm instructions to configure and per
//!   request, counted by `bench/hostcalls` (the counted profile; no timing noise).
//!
//! ```sh
//! cargo build --release -q --manifest-path bench/hostcalls/Cargo.toml --target-dir target/bench-hostcalls
//! ./build.sh && cargo run --release -q --example config_cost -- \
//!     --hostcalls target/bench-hostcalls/release/hostcalls --module dist/surgeguard.wasm
//! ```
//!
//! Every request is `GET /products/1` with a 4 KiB `user-agent`; rules and matches are built so
//! none holds (each is checked, the worst case for its count), limits so all apply.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// One configuration: the dimension, its size, the JSON.
struct Case {
    dimension: &'static str,
    size: usize,
    json: String,
}

const BASE_CLASSES: &str = r#"{"name": "critical"}, {"name": "standard", "reserve": 0.2}"#;
const ADMIT_ALL: &str = r#"{"name": "all", "tokens_per_second": 1000000, "burst": 1000000}"#;

fn config(classes: &str, rules: &str, limits: &str) -> String {
    format!(
        r#"{{"classes": [{classes}], "rules": [{rules}], "limits": [{limits}], "concurrency": {{"max_in_flight": 1000000}}}}"#
    )
}

fn list(n: usize, item: impl Fn(usize) -> String) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(", ")
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |dimension, size, json| out.push(Case { dimension, size, json });
    for n in [1, 4, 16, 64] {
        let classes = list(n, |i| format!(r#"{{"name": "c{i}", "reserve": 0.1}}"#));
        add("classes", n, config(&classes, "", ADMIT_ALL));
    }
    for n in [0, 4, 16, 64, 128] {
        let rules = list(n, |i| format!(r#"{{"match": {{"path_prefix": "/none{i}/"}}, "class": "critical"}}"#));
        add("rules (path_prefix)", n, config(BASE_CLASSES, &rules, ADMIT_ALL));
    }
    for n in [1, 4, 16] {
        let rules = list(n, |i| {
            format!(r#"{{"match": {{"header": {{"name": "x-h{i}", "exact": "v"}}}}, "class": "critical"}}"#)
        });
        add("rules (a header each, distinct names)", n, config(BASE_CLASSES, &rules, ADMIT_ALL));
    }
    for n in [1, 4, 16, 64] {
        let limits = list(n, |i| format!(r#"{{"name": "g{i}", "tokens_per_second": 1000000, "burst": 1000000}}"#));
        add("limits (global, all apply)", n, config(BASE_CLASSES, "", &limits));
    }
    for n in [1, 2, 4, 8] {
        let limits = list(n, |i| {
            format!(
                r#"{{"name": "k{i}", "key": {{"header": "user-agent"}}, "tokens_per_second": 1000000, "burst": 1000000, "max_keys": 1000}}"#
            )
        });
        add("limits (keyed, all apply)", n, config(BASE_CLASSES, "", &limits));
    }
    for n in [1, 16, 64, 256] {
        // A worst case for `contains`: the value is all `a`, the pattern `a...ab`.
        let needle = format!("{}b", "a".repeat(n - 1));
        let rule = format!(
            r#"{{"match": {{"header": {{"name": "user-agent", "contains": "{needle}"}}}}, "class": "critical"}}"#
        );
        add("header contains (pattern bytes)", n, config(BASE_CLASSES, &rule, ADMIT_ALL));
    }
    for n in [1, 64, 1024] {
        let prefix = format!("/{}", "p".repeat(n - 1));
        let rule = format!(r#"{{"match": {{"path_prefix": "{prefix}"}}, "class": "critical"}}"#);
        add("path_prefix (bytes)", n, config(BASE_CLASSES, &rule, ADMIT_ALL));
    }
    for n in [1, 8, 16] {
        let methods = list(n, |i| format!(r#""M{}""#, "X".repeat(i + 1)));
        let rule = format!(r#"{{"match": {{"methods": [{methods}]}}, "class": "critical"}}"#);
        add("methods in one match", n, config(BASE_CLASSES, &rule, ADMIT_ALL));
    }
    // Every bound at once: the most a configuration may cost.
    let classes = list(64, |i| format!(r#"{{"name": "c{i}", "reserve": 0.1}}"#));
    let methods = list(16, |m| format!(r#""M{}""#, "X".repeat(m)));
    let rules = list(128, |i| {
        let prefix = format!("/{i:04}{}", "p".repeat(1019));
        format!(r#"{{"match": {{"path_prefix": "{prefix}", "methods": [{methods}]}}, "class": "c0"}}"#)
    });
    let limits = list(64, |i| match i {
        0..8 => format!(
            r#"{{"name": "l{i}", "key": {{"header": "x-k{i}"}}, "tokens_per_second": 1000000, "burst": 1000000, "max_keys": 125000}}"#
        ),
        _ => format!(r#"{{"name": "l{i}", "tokens_per_second": 1000000, "burst": 1000000}}"#),
    });
    add("every bound at once", 1, config(&classes, &rules, &limits));
    out
}

/// Median native parse + validate + compile time, microseconds.
fn parse_us(json: &str) -> f64 {
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let parsed = surgeguard::config::parse(json.as_bytes());
            let us = t.elapsed().as_secs_f64() * 1e6;
            std::hint::black_box(parsed.is_ok());
            us
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// (configure, per request) wasm instructions from `bench/hostcalls`.
fn counted(tool: &Path, module: &Path, json: &str, dir: &Path, n: usize) -> Result<(u64, f64, u64, u64), String> {
    let file = dir.join(format!("case-{n}.json"));
    std::fs::write(&file, json).map_err(|e| e.to_string())?;
    let user_agent = format!("user-agent: {}", "a".repeat(4096));
    let out = Command::new(tool)
        .arg(module)
        .args(["--root-id", "surgeguard", "--requests", "50", "--path", "/products/1", "--header", &user_agent])
        .arg("--config")
        .arg(&file)
        .output()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("hostcalls output: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let configure = v["configure"]["wasm_instructions"].as_u64().ok_or("no configure count")?;
    let per_request = v["per_request"]["wasm_instructions_total"].as_f64().ok_or("no per-request count")?;
    let tick = v["per_tick"]["wasm_instructions"].as_u64().ok_or("no tick count")?;
    let tick_calls = v["per_tick"]["host_calls"].as_object().map_or(0, |m| m.values().filter_map(|c| c.as_u64()).sum());
    Ok((configure, per_request, tick, tick_calls))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let profiler = arg("--hostcalls").zip(arg("--module"));
    let dir = std::env::temp_dir().join(format!("surgeguard-config-cost-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    println!("| dimension | size | JSON bytes | native parse µs | configure wasm instr. | per-request wasm instr. | per-tick wasm instr. | per-tick host calls |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (n, case) in cases().into_iter().enumerate() {
        let us = parse_us(&case.json);
        let wasm = match &profiler {
            Some((tool, module)) => match counted(tool, module, &case.json, &dir, n) {
                Ok((configure, per_request, tick, tick_calls)) => {
                    format!("{configure} | {per_request:.0} | {tick} | {tick_calls}")
                }
                Err(e) => format!("({e}) | | |"),
            },
            None => " | | |".to_string(),
        };
        println!("| {} | {} | {} | {us:.1} | {wasm} |", case.dimension, case.size, case.json.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
