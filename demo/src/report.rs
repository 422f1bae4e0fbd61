//! The report: an SVG figure of two runs (database connections in use over time, both runs, with
//! the adaptive limit L dotted for a run that has one and the database's own slowdown as a band;
//! then per traffic kind, served / refused / failed per second, the two runs side by side: without
//! and with the filter, the static and the adaptive limit, per-Envoy and fleet-wide limits; same
//! scale per row) and a self-contained HTML page around it (no scripts, nothing fetched).
//!
//! Invariant: the figure is drawn only from the measured runs; every row of a kind shares one
//! y scale, so the two runs compare at a glance.

use crate::incident::Incident;
use crate::outcome::Verdict;
use crate::schedule::Plan;
use crate::summary::{Claim, Side, Stats, BIN_S, DB_SAMPLE_MS};
use crate::traffic::Kind;
use std::fmt::Write;

pub(crate) const W: f64 = 1000.0;
pub(crate) const LEFT: f64 = 56.0;
const GAP: f64 = 44.0;
pub(crate) const PANEL_H: f64 = 110.0;
const ROW_H: f64 = 158.0;
const DB_H: f64 = 150.0;
/// The band of the database's own slowdown.
const SLOW: &str = "#8e24aa";
pub(crate) const TOP: f64 = 66.0;

pub(crate) const SERVED: &str = "#2e7d32";
pub(crate) const REFUSED: &str = "#ef8c00";
pub(crate) const FAILED: &str = "#c62828";
/// The first run's colour in the database panel (the unprotected or less protected run).
const FIRST: &str = "#c62828";
pub(crate) const WITH: &str = "#1565c0";

/// What the figure shows: two runs side by side, the first drawn red, the second blue.
pub struct Figure<'a> {
    /// The figure's heading.
    pub title: String,
    pub plan: &'a Plan,
    pub pool_size: u32,
    /// The modelled database's full-speed concurrency, when the model runs.
    pub knee: Option<u32>,
    pub runs: [Side<'a>; 2],
    /// When the database itself was slow (a band on every panel), if it was.
    pub incident: Option<Incident>,
}

/// The page around the figure: its heading, the line on how the runs were made, and what only
/// this page has (already HTML: a section of its own, or nothing).
pub struct Page<'a> {
    pub heading: &'a str,
    pub settings: &'a str,
    pub extra_html: &'a str,
}

/// The main demo's figure heading.
pub fn surge_title(plan: &Plan, how: &str) -> String {
    format!("The postmortem's surge ({}x for {:.0} s), {how}", plan.surge, plan.surge_end_s() - plan.surge_start_s())
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The smallest of 1, 2, 2.5, 5 x 10^k that is >= `v` (1 for nothing to show).
pub fn nice_ceil(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag * (1.0 + 1e-9) {
            return m * mag;
        }
    }
    10.0 * mag
}

pub(crate) struct Panel {
    pub(crate) x: f64,
    pub(crate) y: f64,
    pub(crate) w: f64,
    pub(crate) h: f64,
    pub(crate) x_max_s: f64,
    pub(crate) y_max: f64,
}

impl Panel {
    pub(crate) fn px(&self, t_s: f64) -> f64 {
        self.x + (t_s / self.x_max_s).clamp(0.0, 1.0) * self.w
    }

    pub(crate) fn py(&self, v: f64) -> f64 {
        self.y + self.h - (v / self.y_max).clamp(0.0, 1.0) * self.h
    }

    pub(crate) fn frame(&self, svg: &mut String, title: &str, plan: &Plan, y_unit: &str) {
        let (x0, x1) = (self.px(plan.surge_start_s()), self.px(plan.surge_end_s()));
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" class="t">{}</text>
<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#f1f1f1"/>
<text x="{:.1}" y="{:.1}" class="s" text-anchor="middle">surge</text>"##,
            self.x,
            self.y - 6.0,
            escape(title),
            self.y,
            x1 - x0,
            self.h,
            (x0 + x1) / 2.0,
            self.y + 11.0,
        );
        for frac in [0.0, 0.5, 1.0] {
            let v = self.y_max * frac;
            let y = self.py(v);
            let label = if self.y_max >= 10.0 || v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") };
            let _ = writeln!(
                svg,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{label}</text>"##,
                self.x,
                self.x + self.w,
                self.x - 4.0,
                y + 3.5,
            );
        }
        if !y_unit.is_empty() {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" class="a" text-anchor="end">{}</text>"##,
                self.x + self.w,
                self.y - 6.0,
                escape(y_unit)
            );
        }
        let step = nice_ceil(self.x_max_s / 8.0).max(1.0);
        let mut t = 0.0;
        while t <= self.x_max_s + 1e-9 {
            let x = self.px(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" class="a" text-anchor="middle">{t:.0} s</text>"##,
                self.y + self.h,
                self.y + self.h + 4.0,
                self.y + self.h + 15.0,
            );
            t += step;
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#bbb"/>"##,
            self.x, self.y, self.w, self.h
        );
    }

    /// A tinted band from `from_s` to `to_s`, labelled at its top.
    pub(crate) fn band(&self, svg: &mut String, from_s: f64, to_s: f64, label: &str) {
        let (x0, x1) = (self.px(from_s), self.px(to_s));
        let _ = writeln!(
            svg,
            r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{SLOW}" fill-opacity="0.08"/>
<text x="{:.1}" y="{:.1}" class="s" text-anchor="middle">{}</text>"##,
            self.y,
            x1 - x0,
            self.h,
            (x0 + x1) / 2.0,
            self.y + 22.0,
            escape(label),
        );
    }

    pub(crate) fn line(&self, svg: &mut String, points: &[(f64, f64)], color: &str, dash: Option<&str>) {
        let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", self.px(*t), self.py(*v))).collect();
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>"#,
            pts.join(" ")
        );
    }
}

pub(crate) fn per_second(counts: &[u64]) -> Vec<(f64, f64)> {
    counts.iter().enumerate().map(|(i, c)| ((i as f64 + 0.5) * BIN_S as f64, *c as f64 / BIN_S as f64)).collect()
}

pub(crate) fn db_points(samples: &[u32]) -> Vec<(f64, f64)> {
    samples.iter().enumerate().map(|(i, n)| ((i + 1) as f64 * DB_SAMPLE_MS as f64 / 1000.0, f64::from(*n))).collect()
}

pub(crate) fn legend(svg: &mut String, x: f64, y: f64, items: &[(&str, &str, Option<&str>)]) {
    let mut x = x;
    for (label, color, dash) in items {
        let dash = dash.map_or(String::new(), |d| format!(r#" stroke-dasharray="{d}""#));
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2.5"{dash}/><text x="{:.1}" y="{:.1}" class="a">{}</text>"#,
            x + 18.0,
            x + 22.0,
            y + 3.5,
            escape(label)
        );
        x += 30.0 + 6.2 * label.len() as f64;
    }
}

/// The figure as a standalone SVG document.
pub fn svg(f: &Figure) -> String {
    let d = f.plan.duration_s;
    let kinds_top = TOP + DB_H + 80.0;
    let height = kinds_top + ROW_H * Kind::ALL.len() as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif">
<style>.t{{font-size:13px;font-weight:600;fill:#222}}.a{{font-size:10.5px;fill:#555}}.s{{font-size:10px;fill:#888}}.h{{font-size:16px;font-weight:700;fill:#111}}.c{{font-size:14px;font-weight:700;fill:#111}}</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="{LEFT}" y="24" class="h">{title}</text>
"##,
        title = escape(&f.title),
    );
    let db = Panel {
        x: LEFT,
        y: TOP,
        w: W - LEFT - 20.0,
        h: DB_H - 30.0,
        x_max_s: d,
        y_max: nice_ceil(f64::from(f.pool_size) * 1.15),
    };
    let [a, b] = f.runs;
    let with_limit = [a, b].iter().any(|s| !s.run.limit.is_empty());
    let db_title = if with_limit {
        "Database connections in use (the most in each 100 ms) and the adaptive limit L"
    } else {
        "Database connections in use (the most in each 100 ms)"
    };
    db.frame(&mut svg, db_title, f.plan, "connections");
    let slow_label = |i: &Incident| format!("database {}x slower", i.slowdown);
    if let Some(i) = &f.incident {
        db.band(&mut svg, i.from_s, i.until_s, &slow_label(i));
    }
    let mut items = vec![(a.label, FIRST, None), (b.label, WITH, None), ("pool size", "#555", Some("6 4"))];
    if with_limit {
        items.push(("L, the adaptive limit", WITH, Some("2 2")));
    }
    legend(&mut svg, if with_limit { LEFT + 300.0 } else { LEFT + 440.0 }, TOP - 10.0, &items);
    let pool = f64::from(f.pool_size);
    db.line(&mut svg, &[(0.0, pool), (d, pool)], "#555", Some("6 4"));
    if let Some(knee) = f.knee {
        let k = f64::from(knee);
        db.line(&mut svg, &[(0.0, k), (d, k)], "#999", Some("2 3"));
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="s">the database runs {knee} queries at full speed</text>"#,
            db.x + 4.0,
            db.py(k) - 3.0
        );
    }
    db.line(&mut svg, &db_points(&a.run.db_in_use), FIRST, None);
    db.line(&mut svg, &db_points(&b.run.db_in_use), WITH, None);
    for (side, color) in [(a, FIRST), (b, WITH)] {
        if !side.run.limit.is_empty() {
            db.line(&mut svg, &db_points(&side.run.limit), color, Some("2 2"));
        }
    }

    let col_w = (W - LEFT - 20.0 - GAP) / 2.0;
    let runs = [(a.label, a.run), (b.label, b.run)];
    for (col, (label, _)) in runs.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="c" text-anchor="middle">{}</text>"#,
            LEFT + col as f64 * (col_w + GAP) + col_w / 2.0,
            kinds_top - 50.0,
            escape(label)
        );
    }
    legend(
        &mut svg,
        LEFT,
        kinds_top - 30.0,
        &[("served", SERVED, None), ("refused by the filter", REFUSED, None), ("failed", FAILED, None)],
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" class="a" text-anchor="end">requests per second, by the second they were sent</text>"#,
        W - 20.0,
        kinds_top - 26.5
    );
    for (row, kind) in Kind::ALL.iter().enumerate() {
        let y = kinds_top + ROW_H * row as f64;
        let series: Vec<Vec<Vec<(f64, f64)>>> = runs
            .iter()
            .map(|(_, r)| Verdict::ALL.iter().map(|v| per_second(&r.timeline(*kind, *v, d))).collect())
            .collect();
        let y_max = nice_ceil(series.iter().flatten().flatten().map(|(_, v)| *v).fold(0.0, f64::max));
        for (col, (_, run)) in runs.iter().enumerate() {
            let p = Panel { x: LEFT + col as f64 * (col_w + GAP), y, w: col_w, h: PANEL_H, x_max_s: d, y_max };
            let s: Stats = run.kind(*kind);
            let title = format!("{}: {} served, {} refused, {} failed", kind.name(), s.served, s.refused, s.failed);
            p.frame(&mut svg, &title, f.plan, "");
            if let Some(i) = &f.incident {
                p.band(&mut svg, i.from_s, i.until_s, &slow_label(i));
            }
            for (v, pts) in Verdict::ALL.iter().zip(&series[col]) {
                let color = match v {
                    Verdict::Served => SERVED,
                    Verdict::Refused => REFUSED,
                    Verdict::Failed => FAILED,
                };
                p.line(&mut svg, pts, color, None);
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The HTML page: claims, the table, the figure, how to read them.
/// One `<li>` per claim, marked as holding or not.
pub fn claims_html(h: &mut String, claims: &[Claim]) {
    for c in claims {
        let (class, mark) = if c.holds { ("ok", "✔") } else { ("no", "✘ does not hold:") };
        let _ = writeln!(
            h,
            r#"<li><span class="{class}">{mark}</span> {} — {}</li>"#,
            escape(&c.claim),
            escape(&c.evidence)
        );
    }
}

/// Per kind (then all), offered and each run's served, refused, failed and percentiles; then the
/// database's peak connections in use.
pub fn kinds_table(h: &mut String, pool_size: u32, a: Side, b: Side) {
    h.push_str("<table>\n");
    let _ = write!(
        h,
        r#"<tr><th></th><th></th><th class="sep" colspan="5">{}</th><th class="sep" colspan="5">{}</th></tr>"#,
        escape(a.label),
        escape(b.label)
    );
    h.push_str("\n<tr><th>kind</th><th>offered</th>");
    for _ in 0..2 {
        h.push_str(r#"<th class="sep">served</th><th>refused</th><th>failed</th><th>p50 ms</th><th>p99 ms</th>"#);
    }
    h.push_str("</tr>\n");
    let rows = Kind::ALL.iter().map(|k| (k.name(), a.run.kind(*k), b.run.kind(*k))).chain(std::iter::once((
        "all",
        a.run.all(),
        b.run.all(),
    )));
    for (name, a, b) in rows {
        let _ = write!(h, "<tr><td>{name}</td><td>{}</td>", a.offered);
        for s in [a, b] {
            let _ = write!(
                h,
                r#"<td class="sep">{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td>"#,
                s.served, s.refused, s.failed, s.p50_ms, s.p99_ms
            );
        }
        h.push_str("</tr>\n");
    }
    let _ = writeln!(
        h,
        "</table>\n<p>Database connections in use at peak (pool of {pool_size}): {} <b>{}</b>, {} <b>{}</b>.</p>",
        escape(a.label),
        a.run.pool.peak_in_use,
        escape(b.label),
        b.run.pool.peak_in_use
    );
}

pub fn html(f: &Figure, claims: &[Claim], page: &Page) -> String {
    let [a, b] = f.runs;
    let mut h = String::from(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>surgeguard demo report</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:1em 0}
th,td{padding:3px 9px;text-align:right;border-bottom:1px solid #e4e4e4}
th{background:#f6f6f6}td:first-child,th:first-child{text-align:left}
.sep{border-left:2px solid #bbb}.ok{color:#2e7d32}.no{color:#c62828;font-weight:700}
code{background:#f3f3f3;padding:0 3px}svg{max-width:100%;height:auto}
</style></head><body>
"#,
    );
    let _ = writeln!(h, "<h1>{}</h1>", escape(page.heading));
    let _ = writeln!(h, "<p>{}</p>", escape(page.settings));
    h.push_str("<h2>What the runs show</h2>\n<ul>\n");
    claims_html(&mut h, claims);
    h.push_str("</ul>\n<h2>Per traffic kind</h2>\n");
    kinds_table(&mut h, f.pool_size, a, b);
    h.push_str(page.extra_html);
    h.push_str("<h2>Over time</h2>\n");
    h.push_str(&svg(f));
    h.push_str(
        r#"<h2>How to read this</h2>
<ul>
<li><b>served</b>: 2xx. <b>refused</b>: 429 or 503 from surgeguard (it names its cause in <code>x-surgeguard</code>). <b>failed</b>: anything else — mostly 500 from the storefront when no database connection came free within the pool-wait timeout, and client timeouts.</li>
<li>Latency counts from the moment a request was due (open-loop load), for every request of the kind whatever its outcome; a refusal is fast, a failure is usually the pool-wait timeout.</li>
<li>Every run replays the same schedule of requests: the same offered load, request for request.</li>
<li>The curves count requests by the second they were sent; the grey band is the surge, the tinted band the time the database itself was slower.</li>
</ul>
</body></html>
"#,
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_round_up_to_1_2_2_5_or_5() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(1.0), 1.0);
        assert_eq!(nice_ceil(1.1), 2.0);
        assert_eq!(nice_ceil(46.0), 50.0);
        assert_eq!(nice_ceil(240.0), 250.0);
        assert_eq!(nice_ceil(251.0), 500.0);
        assert_eq!(nice_ceil(501.0), 1000.0);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
