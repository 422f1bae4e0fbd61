//! `dist/bench/report.md`: the command, the machine, the tables. Built from `results.json`'s
//! value, so the two never disagree.

use crate::arms::ARMS;
use serde_json::Value;
use std::fmt::Write;

fn n(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

fn ratio(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.3}x"),
        None => "–".into(),
    }
}

/// The per-variant table: one row per arm.
fn variant_table(out: &mut String, title: &str, v: &Value) {
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "| arm | req/s (median) | req/s min–max (spread) | Envoy CPU µs/req (median, min–max) | of which user µs | p50 µs | p99 µs | p99.9 µs | open-loop load, % of the arm's max | req/s vs no_filter |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = v["arms"]["no_filter"]["rps_median"].as_f64();
    for arm in ARMS {
        let a = &v["arms"][arm.key()];
        if a.is_null() {
            continue;
        }
        let vs = match (a["rps_median"].as_f64(), base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.3}x", x / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}–{} ({}%) | {} ({}–{}) | {} | {} | {} | {} | {}% | {} |",
            arm.key(),
            n(&a["rps_median"], 0),
            n(&a["rps_min"], 0),
            n(&a["rps_max"], 0),
            n(&a["rps_spread_pct"], 1),
            n(&a["cpu_us_per_request"], 2),
            n(&a["cpu_us_per_request_min"], 2),
            n(&a["cpu_us_per_request_max"], 2),
            n(&a["user_us_per_request"], 2),
            n(&a["p50_us"], 0),
            n(&a["p99_us"], 0),
            n(&a["p999_us"], 0),
            n(&a["latency_load_pct"], 0),
            vs,
        );
    }
    let r = &v["ratio_details"];
    let _ = writeln!(
        out,
        "\nsurgeguard throughput ratios (of medians; per-round range in brackets): vs empty_wasm **{}** [{}–{}], vs native **{}** [{}–{}], vs no_filter **{}** [{}–{}]. \
         Envoy CPU per request over empty_wasm: **{} µs** (user space: {} µs), over native: {} µs, over no_filter: {} µs. \
         Latency measured open-loop at {} req/s (50% of no_filter's median).\n",
        ratio(&v["ratios"]["surgeguard_vs_empty_wasm"]),
        n(&r["surgeguard_vs_empty_wasm"]["per_round_min"], 3),
        n(&r["surgeguard_vs_empty_wasm"]["per_round_max"], 3),
        ratio(&v["ratios"]["surgeguard_vs_native"]),
        n(&r["surgeguard_vs_native"]["per_round_min"], 3),
        n(&r["surgeguard_vs_native"]["per_round_max"], 3),
        ratio(&v["ratios"]["surgeguard_vs_no_filter"]),
        n(&r["surgeguard_vs_no_filter"]["per_round_min"], 3),
        n(&r["surgeguard_vs_no_filter"]["per_round_max"], 3),
        n(&v["cpu_us_over"]["surgeguard_vs_empty_wasm"], 2),
        n(&v["user_us_over"]["surgeguard_vs_empty_wasm"], 2),
        n(&v["cpu_us_over"]["surgeguard_vs_native"], 2),
        n(&v["cpu_us_over"]["surgeguard_vs_no_filter"], 2),
        n(&v["latency_rate_rps"], 0),
    );
}

pub fn markdown(r: &Value) -> String {
    let mut out = String::new();
    let m = &r["machine"];
    let s = &r["settings"];
    let _ = writeln!(out, "# surgeguard benchmark\n");
    let _ = writeln!(out, "- command: `{}`", r["command"].as_str().unwrap_or(""));
    let _ = writeln!(out, "- finished: {} (took {} s)", r["finished_at"].as_str().unwrap_or(""), n(&r["took_s"], 0));
    let _ = writeln!(
        out,
        "- machine: {} CPUs, {}, Linux {}, Envoy {} (`{}`)",
        m["nproc"],
        m["cpu_model"].as_str().unwrap_or(""),
        m["kernel"].as_str().unwrap_or(""),
        m["envoy_version"].as_str().unwrap_or(""),
        m["envoy_bin"].as_str().unwrap_or(""),
    );
    let _ = writeln!(
        out,
        "- method: Envoy `--concurrency 1` pinned to core 0 (`taskset -c 0`); load on core 1: `wrk -t1 -c{}` for {} s per arm (throughput), \
         then `oha -q RATE --latency-correction -c 16` for {} s per arm (latency, open loop at 50% of no_filter's median); \
         {} rounds, arms alternating (order rotated every round); medians over rounds; spread = (max − min) / median. \
         Envoy CPU = user + system time of the Envoy process from /proc over the run / requests it served. \
         Every arm serves `GET /api/products/42` with a user-agent and an x-api-key; surgeguard runs the storefront configuration \
         (`bench/configs/storefront-admit-all.json`: the demo's `envoy/storefront.json` (3 classes, 4 rules, a global bucket, an in-flight limit) sized so everything is admitted).",
        s["connections"], s["duration_s"], s["duration_s"], s["rounds"],
    );
    let _ = writeln!(
        out,
        "- noise (the machine is shared): load average {} before, {} after; CPU used by others (other processes, and interrupt work charged to no process) during the throughput runs, on the Envoy core: median {}%, max {}%; on the load core: median {}%, max {}%.\n",
        r["noise"]["load_average_before"].as_str().unwrap_or(""),
        r["noise"]["load_average_after"].as_str().unwrap_or(""),
        n(&r["noise"]["foreign_cpu_pct_median"], 1),
        n(&r["noise"]["foreign_cpu_pct_max"], 1),
        n(&r["noise"]["foreign_load_cpu_pct_median"], 1),
        n(&r["noise"]["foreign_load_cpu_pct_max"], 1),
    );

    let _ = writeln!(out, "## Throughput, CPU and latency\n");
    variant_table(
        &mut out,
        "direct_response (Envoy answers itself: the filter's cost dominates; the headline figures)",
        &r["variants"]["direct_response"],
    );
    if !r["variants"]["upstream"].is_null() {
        variant_table(
            &mut out,
            "upstream (proxied to a local upstream on the load generator's core)",
            &r["variants"]["upstream"],
        );
    }

    let _ = writeln!(out, "## Accuracy (2 workers, 5x overload)\n");
    let _ = writeln!(out, "| filter | duration s | offered req/s | admitted | expected (burst + rate × elapsed) | error | connections per worker | filter's own count | fail-open |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    for (name, a) in [("surgeguard", &r["accuracy"]), ("native local_ratelimit", &r["accuracy_native"])] {
        if a.is_null() || a["admitted"].is_null() {
            continue;
        }
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {}% | {} | {} | {} |",
            n(&a["elapsed_s"], 1),
            n(&a["offered_rps"], 0),
            a["admitted"],
            n(&a["expected"], 0),
            n(&a["error_pct"], 2),
            a["connections_per_worker"],
            a["filter_admitted"],
            if a["fail_open"].is_null() { "–".to_string() } else { a["fail_open"].to_string() },
        );
    }
    let _ = writeln!(
        out,
        "\nBucket: {} tokens/s, burst {} (the contract's storefront limit); the load is `oha -q {}` on `/checkout`.\n",
        r["accuracy"]["tokens_per_second"],
        r["accuracy"]["burst"],
        r["accuracy"]["tokens_per_second"].as_u64().unwrap_or(0) * r["accuracy"]["overload"].as_u64().unwrap_or(0),
    );

    let _ = writeln!(out, "## Module size and start-up\n");
    let _ = writeln!(
        out,
        "surgeguard.wasm: **{} bytes** ({} KiB); the empty filter, same SDK, profile and wasm-opt: {} bytes.\n",
        r["module_bytes"],
        n(&Value::from(r["module_bytes"].as_f64().unwrap_or(0.0) / 1024.0), 1),
        r["empty_module_bytes"],
    );
    let _ = writeln!(out, "| arm | Envoy start-up to /ready, ms (median; 2 workers) | samples |");
    let _ = writeln!(out, "|---|---:|---|");
    for arm in ARMS {
        let st = &r["startup_ms"][arm.key()];
        let _ = writeln!(out, "| {} | {} | {} |", arm.key(), n(&st["median"], 0), st["samples"]);
    }

    if let Some(rows) = r["profile"]["rows"].as_array() {
        let _ = writeln!(out, "\n## Request path profile (counted, not timed)\n");
        let _ = writeln!(
            out,
            "Per request, steady state, from `bench/hostcalls` (the module in the wasmi interpreter against a recording host). \
             The storefront configuration is built up one feature at a time: each row's cost over the row above is that feature's.\n"
        );
        let _ = writeln!(out, "| module / configuration | callbacks into the module | wasm instructions | of which on_request_headers | at stream end (log, done, delete) | host calls | shared-data reads + writes | host→module allocations |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} + {} | {} |",
                row["name"].as_str().unwrap_or(""),
                n(&row["callbacks_into_module"], 0),
                n(&row["wasm_instructions"], 0),
                n(&row["wasm_instructions_on_request_headers"], 0),
                n(&row["wasm_instructions_at_stream_end"], 0),
                n(&row["host_calls"], 0),
                n(&row["shared_data_reads"], 0),
                n(&row["shared_data_writes"], 0),
                n(&row["host_to_module_allocations"], 0),
            );
        }
        let by_name = &r["profile"]["surgeguard"]["per_request"]["host_calls"];
        if let Some(m) = by_name.as_object() {
            let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(out, "\nsurgeguard's host calls per request: {}.", list.join(", "));
        }
    }

    if let Some(p) = r["host_call_prices"]["ns_per_call"].as_object() {
        let _ = writeln!(out, "\n## Host-call prices (`--prices`)\n");
        let _ = writeln!(
            out,
            "Envoy CPU per call, from the probe filter ({}):\n",
            r["host_call_prices"]["method"].as_str().unwrap_or("")
        );
        let _ = writeln!(out, "| call | ns per call |");
        let _ = writeln!(out, "|---|---:|");
        for (k, v) in p {
            let _ = writeln!(out, "| {k} | {} |", n(v, 0));
        }
    }

    let _ = writeln!(out, "\n## Floors (issue 5), current build\n");
    let _ = writeln!(out, "| floor | target | now | met |");
    let _ = writeln!(out, "|---|---|---:|---|");
    if let Some(floors) = r["floors"].as_array() {
        for f in floors {
            let met = match f["met"].as_bool() {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {met} |",
                f["floor"].as_str().unwrap_or(""),
                f["target"].as_str().unwrap_or(""),
                n(&f["value"], 3),
                f["unit"].as_str().unwrap_or(""),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_report_names_the_command_and_every_measured_arm() {
        let arm = json!({"rps_median": 20000.0, "rps_min": 19000.0, "rps_max": 21000.0, "rps_spread_pct": 10.0,
                         "cpu_us_per_request": 48.1, "p50_us": 200.0, "p99_us": 900.0, "p999_us": 2000.0});
        let r = json!({
            "command": "./build.sh bench --quick",
            "machine": {"nproc": 2, "cpu_model": "AMD EPYC", "kernel": "6.1", "envoy_version": "1.40.0"},
            "settings": {"rounds": 2, "duration_s": 1.0, "connections": 32},
            "variants": {"direct_response": {"arms": {"no_filter": arm, "surgeguard": arm},
                         "ratios": {"surgeguard_vs_no_filter": 1.0}}},
            "accuracy": {"admitted": 6001, "expected": 6000.0, "error_pct": 0.0167},
            "module_bytes": 241585,
            "floors": [{"floor": "module size", "target": "<= 100 KiB", "value": 241585.0, "unit": "bytes", "met": false}],
        });
        let md = markdown(&r);
        assert!(md.contains("`./build.sh bench --quick`"));
        assert!(md.contains("| no_filter | 20000 |"));
        assert!(md.contains("| surgeguard | 20000 |"));
        assert!(!md.contains("| empty_wasm | 2"), "unmeasured arms are left out");
        assert!(md.contains("| surgeguard | – | – | 6001 | 6000 | 0.02% |"));
        assert!(md.contains("| module size | <= 100 KiB | 241585.000 bytes | **no** |"));
    }
}
