//! `dist/bench/report.md`: the command, the machine, the tables. Rendered from the
//! [`Results`] that `results.json` is written from, so the two never disagree; each section
//! is one function.

use crate::accuracy::{AccuracySummary, BURST, OVERLOAD, RATE_PER_S};
use crate::arms::ARMS;
use crate::results::{RatioDetail, VariantResults};
use crate::summary::Results;
use serde::Serialize;
use std::fmt::Write;

/// A figure with `digits` decimals; `–` when not measured.
fn n(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

/// A difference with its sign, 2 decimals.
fn signed(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{x:+.2}"),
        None => "–".into(),
    }
}

fn ratio(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{x:.3}x"),
        None => "–".into(),
    }
}

/// A value written as `results.json` writes it (`1.0`, `[9,7]`, `null`).
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

pub fn markdown(r: &Results) -> String {
    [header(r), throughput(r), accuracy(r), size_and_startup(r), profile(r), prices(r), floors(r)].concat()
}

/// The command, the machine, the method and the noise.
fn header(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let s = &r.settings;
    let _ = writeln!(out, "# surgeguard benchmark\n");
    let _ = writeln!(out, "- command: `{}`", r.command);
    let _ = writeln!(out, "- finished: {} (took {} s)", r.finished_at, n(Some(r.took_s), 0));
    let _ = writeln!(
        out,
        "- machine: {} CPUs, {}, Linux {}, Envoy {} (`{}`)",
        m.nproc,
        m.cpu_model,
        m.kernel,
        m.envoy_version,
        m.envoy_bin.display(),
    );
    let _ = writeln!(
        out,
        "- method: Envoy `--concurrency 1` pinned to core 0 (`taskset -c 0`); load on core 1: `wrk -t1 -c{}` for {} s per arm (throughput), \
         then `oha -q RATE --latency-correction -c 16` for {} s per arm (latency, open loop at 50% of no_filter's median); \
         {} rounds, arms alternating (order rotated every round); medians over rounds; spread = (max − min) / median. \
         Envoy CPU = user + system time of the Envoy process from /proc over the run / requests it served. \
         Every arm serves `GET /api/products/42` with a user-agent and an x-api-key; surgeguard runs the storefront configuration \
         (`bench/configs/storefront-admit-all.json`: the demo's `envoy/storefront.json` (3 classes, 4 rules, a global bucket, an in-flight limit) sized so everything is admitted); \
         surgeguard_fleet runs the same with its global limit fleet-wide, leasing from a real rate limit service (Redis and surgeguard-rls, its limit far above the load); \
         surgeguard_native runs the same configuration in the native build (`dist/libsurgeguard_native.so`, an Envoy dynamic module).",
        s.connections,
        json(&s.duration_s),
        json(&s.duration_s),
        s.rounds,
    );
    let noise = &r.noise;
    let _ = writeln!(
        out,
        "- noise (the machine is shared): load average {} before, {} after; CPU used by others (other processes, and interrupt work charged to no process) during the throughput runs, on the Envoy core: median {}%, max {}%; on the load core: median {}%, max {}%.\n",
        noise.load_average_before,
        noise.load_average_after,
        n(noise.foreign_cpu_pct_median, 1),
        n(noise.foreign_cpu_pct_max, 1),
        n(noise.foreign_load_cpu_pct_median, 1),
        n(noise.foreign_load_cpu_pct_max, 1),
    );
    out
}

/// One table per variant.
fn throughput(r: &Results) -> String {
    let mut out = String::from("## Throughput, CPU and latency\n\n");
    if let Some(v) = r.variants.get("direct_response") {
        out += &variant_table(
            "direct_response (Envoy answers itself: the filter's cost dominates; the headline figures)",
            v,
        );
    }
    if let Some(v) = r.variants.get("upstream") {
        out += &variant_table("upstream (proxied to a local upstream on the load generator's core)", v);
    }
    out
}

/// The per-variant table: one row per arm, then the ratios in a sentence.
fn variant_table(title: &str, v: &VariantResults) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {title}\n");
    let _ = writeln!(
        out,
        "| arm | req/s (median) | req/s min–max (spread) | Envoy CPU µs/req (median, min–max) | of which user µs | p50 µs | p99 µs | p99.9 µs | open-loop load, % of the arm's max | req/s vs no_filter |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = v.arms.get("no_filter").and_then(|a| a.rps_median);
    for arm in ARMS {
        let Some(a) = v.arms.get(arm.key()) else {
            continue;
        };
        let vs = match (a.rps_median, base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.3}x", x / b),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {}–{} ({}%) | {} ({}–{}) | {} | {} | {} | {} | {}% | {} |",
            arm.key(),
            n(a.rps_median, 0),
            n(a.rps_min, 0),
            n(a.rps_max, 0),
            n(a.rps_spread_pct, 1),
            n(a.cpu_us_per_request, 2),
            n(a.cpu_us_per_request_min, 2),
            n(a.cpu_us_per_request_max, 2),
            n(a.user_us_per_request, 2),
            n(a.p50_us, 0),
            n(a.p99_us, 0),
            n(a.p999_us, 0),
            n(a.latency_load_pct, 0),
            vs,
        );
    }
    let (ratios, details) = (&v.ratios, &v.ratio_details);
    // "**0.750x** [0.700–0.800]": of medians, then the per-round range.
    let clause = |headline: Option<f64>, detail: &Option<RatioDetail>| {
        let d = detail.as_ref();
        format!(
            "**{}** [{}–{}]",
            ratio(headline),
            n(d.and_then(|d| d.per_round_min), 3),
            n(d.and_then(|d| d.per_round_max), 3)
        )
    };
    let _ = writeln!(
        out,
        "\nsurgeguard throughput ratios (of medians; per-round range in brackets): vs empty_wasm {}, vs native {}, vs no_filter {}. \
         Envoy CPU per request over empty_wasm: **{} µs** (user space: {} µs), over native: {} µs, over no_filter: {} µs. \
         Latency measured open-loop at {} req/s (50% of no_filter's median).\n",
        clause(ratios.surgeguard_vs_empty_wasm, &details.surgeguard_vs_empty_wasm),
        clause(ratios.surgeguard_vs_native, &details.surgeguard_vs_native),
        clause(ratios.surgeguard_vs_no_filter, &details.surgeguard_vs_no_filter),
        n(v.cpu_us_over.surgeguard_vs_empty_wasm, 2),
        n(v.user_us_over.surgeguard_vs_empty_wasm, 2),
        n(v.cpu_us_over.surgeguard_vs_native, 2),
        n(v.cpu_us_over.surgeguard_vs_no_filter, 2),
        n(v.latency_rate_rps, 0),
    );
    out += &fleet_sentence(v);
    out += &native_sentence(v);
    out
}

/// The native build against the other arms.
fn native_sentence(v: &VariantResults) -> String {
    let (r, d) = (&v.ratios, &v.ratio_details);
    let range = |x: &Option<RatioDetail>| {
        let x = x.as_ref();
        format!("[{}–{}]", n(x.and_then(|d| d.per_round_min), 3), n(x.and_then(|d| d.per_round_max), 3))
    };
    format!(
        "surgeguard_native (the same configuration as an Envoy dynamic module): throughput vs no_filter **{}** {}, \
         vs native local_ratelimit **{}** {}, vs empty_wasm {} {}, vs surgeguard (wasm) **{}** {}; \
         Envoy CPU per request over no_filter **{} µs**, over native local_ratelimit {} µs, over surgeguard (wasm) {} µs.\n\n",
        ratio(r.surgeguard_native_vs_no_filter),
        range(&d.surgeguard_native_vs_no_filter),
        ratio(r.surgeguard_native_vs_native),
        range(&d.surgeguard_native_vs_native),
        ratio(r.surgeguard_native_vs_empty_wasm),
        range(&d.surgeguard_native_vs_empty_wasm),
        ratio(r.surgeguard_native_vs_surgeguard),
        range(&d.surgeguard_native_vs_surgeguard),
        signed(v.cpu_us_over.surgeguard_native_vs_no_filter),
        signed(v.cpu_us_over.surgeguard_native_vs_native),
        signed(v.cpu_us_over.surgeguard_native_vs_surgeguard),
    )
}

/// The fleet arm against the surgeguard arm, and its calls to the rate limit service.
fn fleet_sentence(v: &VariantResults) -> String {
    let Some(f) = &v.fleet else {
        return String::new();
    };
    let warning = if f.in_fleet_mode() {
        ""
    } else {
        " **Not in fleet mode throughout: these are the local fallback's figures.**"
    };
    format!(
        "surgeguard_fleet (global limit leased from the rate limit service) vs surgeguard: throughput **{}** [{}–{}], \
         Envoy CPU per request **{} µs** (user space: {} µs); mode {}; **{} lease calls/s** ({} per request; \
         Envoy's requests to the service: {}/s), {} grants, {} denials, {} failures over {} s of throughput runs.{warning}\n\n",
        ratio(v.ratios.surgeguard_fleet_vs_surgeguard),
        n(v.ratio_details.surgeguard_fleet_vs_surgeguard.as_ref().and_then(|d| d.per_round_min), 3),
        n(v.ratio_details.surgeguard_fleet_vs_surgeguard.as_ref().and_then(|d| d.per_round_max), 3),
        signed(v.cpu_us_over.surgeguard_fleet_vs_surgeguard),
        signed(v.user_us_over.surgeguard_fleet_vs_surgeguard),
        f.mode,
        n(f.lease_calls_per_s, 2),
        json(&f.lease_calls_per_request),
        n(f.service_requests_per_s, 2),
        f.lease_grants,
        f.lease_denials,
        f.lease_failures,
        n(f.measured_s, 1),
    )
}

/// Both accuracy runs in one table, and the bucket they ran against.
fn accuracy(r: &Results) -> String {
    let mut out = String::from("## Accuracy (2 workers, 5x overload)\n\n");
    let _ = writeln!(out, "| filter | duration s | offered req/s | admitted | expected (burst + rate × elapsed) | error | connections per worker | filter's own count | fail-open |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|---:|---:|");
    let runs: [(&str, Option<&AccuracySummary>); 2] =
        [("surgeguard", r.accuracy.measured()), ("native local_ratelimit", r.accuracy_native.as_ref())];
    for (name, a) in runs {
        let Some(a) = a else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {}% | {} | {} | {} |",
            n(Some(a.elapsed_s), 1),
            n(Some(a.offered_rps), 0),
            a.admitted,
            n(Some(a.expected), 0),
            n(Some(a.error_pct), 2),
            json(&a.connections_per_worker),
            json(&a.filter_admitted),
            a.fail_open.map_or("–".to_string(), |v| v.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\nBucket: {RATE_PER_S} tokens/s, burst {BURST} (the contract's storefront limit); the load is `oha -q {}` on `/checkout`.\n",
        RATE_PER_S * OVERLOAD,
    );
    out
}

/// Module sizes, and Envoy's start-up per arm.
fn size_and_startup(r: &Results) -> String {
    let mut out = String::from("## Module size and start-up\n\n");
    let _ = writeln!(
        out,
        "surgeguard.wasm: **{} bytes** ({} KiB); the empty filter, same SDK, profile and wasm-opt: {} bytes.\n",
        r.module_bytes,
        n(Some(r.module_bytes as f64 / 1024.0), 1),
        r.empty_module_bytes,
    );
    let _ = writeln!(out, "| arm | Envoy start-up to /ready, ms (median; 2 workers) | samples |");
    let _ = writeln!(out, "|---|---:|---|");
    for arm in ARMS {
        let st = r.startup_ms.get(arm.key());
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            arm.key(),
            n(st.and_then(|s| s.median), 0),
            json(&st.map(|s| &s.samples))
        );
    }
    out
}

/// The request-path profile (counted, not timed), when it ran.
fn profile(r: &Results) -> String {
    let Some(p) = &r.profile else {
        return String::new();
    };
    let mut out = String::from("\n## Request path profile (counted, not timed)\n\n");
    let _ = writeln!(
        out,
        "Per request, steady state, from `bench/hostcalls` (the module in the wasmi interpreter against a recording host). \
         The storefront configuration is built up one feature at a time: each row's cost over the row above is that feature's.\n"
    );
    let _ = writeln!(out, "| module / configuration | callbacks into the module | wasm instructions | of which on_request_headers | at stream end (log, done, delete) | host calls | shared-data reads + writes | host→module allocations |");
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &p.rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} + {} | {} |",
            row.name,
            n(row.callbacks_into_module, 0),
            n(row.wasm_instructions, 0),
            n(row.wasm_instructions_on_request_headers, 0),
            n(Some(row.wasm_instructions_at_stream_end), 0),
            n(row.host_calls, 0),
            n(row.shared_data_reads, 0),
            n(row.shared_data_writes, 0),
            n(row.host_to_module_allocations, 0),
        );
    }
    if let Some(m) = p.surgeguard.per_request["host_calls"].as_object() {
        let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(out, "\nsurgeguard's host calls per request: {}.", list.join(", "));
    }
    if let Some(m) = p.surgeguard_fleet.costs.per_request["host_calls"].as_object() {
        let list: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            out,
            "\nWith the global limit fleet-wide (its first lease granted by the profiler before the requests; the limit in fleet mode): {}. \
             Lease calls are made on the root's tick (every 20 ms with a fleet limit), not per request.",
            list.join(", ")
        );
    }
    out
}

/// `--prices`: nanoseconds per host call, when measured.
fn prices(r: &Results) -> String {
    let Some(p) = &r.host_call_prices else {
        return String::new();
    };
    let mut out = String::from("\n## Host-call prices (`--prices`)\n\n");
    let _ = writeln!(out, "Envoy CPU per call, from the probe filter ({}):\n", p.method);
    let _ = writeln!(out, "| call | ns per call |");
    let _ = writeln!(out, "|---|---:|");
    for (k, v) in &p.ns_per_call {
        let _ = writeln!(out, "| {k} | {} |", n(*v, 0));
    }
    out
}

/// The performance floors and whether the build meets them.
fn floors(r: &Results) -> String {
    let mut out = String::from("\n## Performance floors, current build\n\n");
    let _ = writeln!(out, "| floor | target | now | met |");
    let _ = writeln!(out, "|---|---|---:|---|");
    for f in &r.floors {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {} {} | {met} |", f.name, f.target, n(f.value, 3), f.unit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::{direct_run, results, startup};

    #[test]
    fn the_report_names_the_command_and_every_measured_arm() {
        let mut run = direct_run([20_000.0, 18_000.0, 16_000.0, 12_000.0, 10_000.0]);
        run.arms.remove("empty_wasm");
        let md = markdown(&results(&[run], &startup()));
        assert!(md.contains("`./build.sh bench --quick`"));
        assert!(md.contains("| no_filter | 20000 |"));
        assert!(md.contains("| surgeguard | 12000 |"));
        assert!(!md.contains("| empty_wasm | 1"), "unmeasured arms are left out");
        assert!(md.contains("vs native **0.667x** [0.667–0.667]"));
        assert!(md.contains("| surgeguard | 410 | [400.0,420.0] |"), "start-up samples as results.json has them");
        assert!(md.contains("| surgeguard_fleet | 10000 |"));
        assert!(md.contains("surgeguard.wasm: **170754 bytes**"), "size is reported");
        assert!(!md.contains("| module size"), "but no longer judged");
        assert!(md.contains(
            "| fleet arm: Envoy CPU per request over the surgeguard arm (direct_response) | <= +1 us | 16.667 us | **no** |"
        ));
        assert!(md.contains("vs surgeguard: throughput **0.833x** [0.833–0.833], Envoy CPU per request **+16.67 µs**"));
        assert!(md.contains("mode fleet; **1.00 lease calls/s** (0.0001 per request;"));
    }

    #[test]
    fn sections_that_did_not_run_are_left_out_but_their_tables_keep_their_place() {
        let md = markdown(&results(&[direct_run([1.0; 5])], &startup()));
        let headings: Vec<&str> = md.lines().filter(|l| l.starts_with('#')).collect();
        assert_eq!(
            headings,
            [
                "# surgeguard benchmark",
                "## Throughput, CPU and latency",
                "### direct_response (Envoy answers itself: the filter's cost dominates; the headline figures)",
                "## Accuracy (2 workers, 5x overload)",
                "## Module size and start-up",
                "## Performance floors, current build",
            ]
        );
        assert!(md.contains("- method: Envoy `--concurrency 1` pinned to core 0 (`taskset -c 0`); load on core 1: `wrk -t1 -c32` for 3.0 s per arm"));
    }
}
