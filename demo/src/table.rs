//! The side-by-side table (terminal and Markdown): per traffic kind, what was offered, and for
//! each of two runs (named by the caller: without / with surgeguard, per-Envoy / fleet limits)
//! served, refused, failed, p50 and p99; then the database tier's peak connections.

use crate::summary::{Side, Stats};
use crate::traffic::Kind;

fn row_cells(s: &Stats) -> [String; 5] {
    [
        s.served.to_string(),
        s.refused.to_string(),
        s.failed.to_string(),
        format!("{:.0}", s.p50_ms),
        format!("{:.0}", s.p99_ms),
    ]
}

const HEAD: [&str; 5] = ["served", "refused", "failed", "p50 ms", "p99 ms"];

/// The terminal table.
pub fn text(pool_size: u32, a: Side, b: Side) -> String {
    let w = [7usize, 8, 7, 7, 7];
    let run_width: usize = w.iter().sum::<usize>() + 4;
    let mut out = String::new();
    out.push_str(&format!("{:<10}{:>8} │ {:^run_width$} │ {:^run_width$}\n", "", "", a.label, b.label));
    let head = |out: &mut String| {
        for (h, w) in HEAD.iter().zip(w) {
            out.push_str(&format!("{h:>w$} "));
        }
    };
    out.push_str(&format!("{:<10}{:>8} │", "kind", "offered"));
    head(&mut out);
    out.push('│');
    head(&mut out);
    out.push('\n');
    out.push_str(&format!("{}\n", "─".repeat(18 + 2 * run_width + 6)));
    let rows = rows(a, b);
    for (i, (name, a, b)) in rows.iter().enumerate() {
        if i == rows.len() - 1 {
            out.push_str(&format!("{}\n", "─".repeat(18 + 2 * run_width + 6)));
        }
        out.push_str(&format!("{name:<10}{:>8} │", a.offered));
        for (c, w) in row_cells(a).iter().zip(w) {
            out.push_str(&format!("{c:>w$} "));
        }
        out.push('│');
        for (c, w) in row_cells(b).iter().zip(w) {
            out.push_str(&format!("{c:>w$} "));
        }
        out.push('\n');
    }
    out.push_str(&format!(
        "database connections in use, peak (pool {pool_size}): {} {}, {} {}\n",
        a.short, a.run.pool.peak_in_use, b.short, b.run.pool.peak_in_use
    ));
    out
}

/// Per kind, then `all`: the name and each run's figures.
fn rows(a: Side, b: Side) -> Vec<(&'static str, Stats, Stats)> {
    Kind::ALL
        .iter()
        .map(|k| (k.name(), a.run.kind(*k), b.run.kind(*k)))
        .chain(std::iter::once(("all", a.run.all(), b.run.all())))
        .collect()
}

/// The same table in Markdown (for docs and the README).
pub fn markdown(pool_size: u32, a: Side, b: Side) -> String {
    let mut out = format!(
        "| kind | offered | {}: served | refused | failed | p50 ms | p99 ms | {}: served | refused | failed | p50 ms | p99 ms |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        a.short, b.label
    );
    for (name, a, b) in rows(a, b) {
        out.push_str(&format!(
            "| {name} | {} | {} | {} |\n",
            a.offered,
            row_cells(&a).join(" | "),
            row_cells(&b).join(" | ")
        ));
    }
    out.push_str(&format!(
        "\nDatabase connections in use, peak (pool of {pool_size}): {} {}, {} {}.\n",
        a.short, a.run.pool.peak_in_use, b.label, b.run.pool.peak_in_use
    ));
    out
}
