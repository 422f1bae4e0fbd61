//! The `--live` report: one run over time with the moment the limit changed marked on every plot
//! (all traffic with the bucket's rate as a step, database connections in use, then each traffic
//! kind), and a self-contained HTML page around it (no scripts, nothing fetched).

use crate::live::{Change, Window, LIMIT};
use crate::outcome::Verdict;
use crate::report::{
    claims_html, db_points, escape, legend, nice_ceil, per_second, Panel, FAILED, LEFT, PANEL_H, REFUSED, SERVED, TOP,
    W, WITH,
};
use crate::schedule::Plan;
use crate::summary::{Claim, Run};
use crate::traffic::Kind;
use std::fmt::Write;

const CHANGE: &str = "#6a1b9a";
const ROW_H: f64 = 150.0;

pub struct LiveFigure<'a> {
    pub plan: &'a Plan,
    pub pool_size: u32,
    pub run: &'a Run,
    pub change: &'a Change,
    pub before: &'a Window,
    pub after: &'a Window,
}

/// Every kind's per-second counts of `v`, summed.
fn all_kinds(run: &Run, v: Verdict, duration_s: f64) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for kind in Kind::ALL {
        let t = run.timeline(kind, v, duration_s);
        if out.is_empty() {
            out = t;
        } else {
            out.iter_mut().zip(t).for_each(|(a, b)| *a += b);
        }
    }
    out
}

fn marker(svg: &mut String, p: &Panel, t_s: f64, label: &str) {
    let x = p.px(t_s);
    let _ = writeln!(
        svg,
        r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{CHANGE}" stroke-width="1.5" stroke-dasharray="4 3"/>"#,
        p.y,
        p.y + p.h
    );
    if !label.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" class="s" fill="{CHANGE}">{}</text>"#,
            x + 4.0,
            p.y + 24.0,
            escape(label)
        );
    }
}

pub fn svg(f: &LiveFigure) -> String {
    let d = f.plan.duration_s;
    let applied = f.change.applied_s.unwrap_or(f.change.helper_done_s);
    let full_w = W - LEFT - 20.0;
    let all_h = PANEL_H + 40.0;
    let db_top = TOP + all_h + 50.0;
    let kinds_top = db_top + PANEL_H + 60.0;
    let height = kinds_top + ROW_H * Kind::ALL.len().div_ceil(2) as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif">
<style>.t{{font-size:13px;font-weight:600;fill:#222}}.a{{font-size:10.5px;fill:#555}}.s{{font-size:10px;fill:#888}}.h{{font-size:16px;font-weight:700;fill:#111}}.c{{font-size:14px;font-weight:700;fill:#111}}</style>
<rect width="100%" height="100%" fill="#fff"/>
<text x="{LEFT}" y="24" class="h">A limit changed live, mid-surge: the {LIMIT} bucket {}/s → {}/s at {applied:.1} s (ECDS, no restart)</text>
"##,
        f.change.from_rate, f.change.to_rate
    );
    // All traffic, with the bucket's rate.
    let served = per_second(&all_kinds(f.run, Verdict::Served, d));
    let refused = per_second(&all_kinds(f.run, Verdict::Refused, d));
    let failed = per_second(&all_kinds(f.run, Verdict::Failed, d));
    let peak = [&served, &refused, &failed].iter().flat_map(|s| s.iter().map(|(_, v)| *v)).fold(0.0, f64::max);
    let top = Panel {
        x: LEFT,
        y: TOP,
        w: full_w,
        h: all_h,
        x_max_s: d,
        y_max: nice_ceil(peak.max(f.change.from_rate).max(f.change.to_rate) * 1.1),
    };
    top.frame(&mut svg, "All traffic, requests per second (by the second they were sent)", f.plan, "");
    legend(
        &mut svg,
        LEFT + 560.0,
        TOP - 10.0,
        &[
            ("served", SERVED, None),
            ("refused", REFUSED, None),
            ("failed", FAILED, None),
            ("bucket rate", "#555", Some("6 4")),
        ],
    );
    top.line(
        &mut svg,
        &[(0.0, f.change.from_rate), (applied, f.change.from_rate), (applied, f.change.to_rate), (d, f.change.to_rate)],
        "#555",
        Some("6 4"),
    );
    for (pts, color) in [(&served, SERVED), (&refused, REFUSED), (&failed, FAILED)] {
        top.line(&mut svg, pts, color, None);
    }
    marker(&mut svg, &top, applied, &format!("changed live: {}/s → {}/s", f.change.from_rate, f.change.to_rate));
    for (w, label) in [(f.before, "before"), (f.after, "after")] {
        let (x0, x1) = (top.px(w.from_s), top.px(w.to_s));
        let y = top.y + top.h - 4.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{x0:.1}" x2="{x1:.1}" y1="{y:.1}" y2="{y:.1}" stroke="{CHANGE}" stroke-width="3"/><text x="{:.1}" y="{:.1}" class="s" text-anchor="middle" fill="{CHANGE}">{label}: {:.0} served/s</text>"#,
            (x0 + x1) / 2.0,
            y - 5.0,
            w.rate(w.all.served)
        );
    }
    // Database connections in use.
    let db = Panel {
        x: LEFT,
        y: db_top,
        w: full_w,
        h: PANEL_H,
        x_max_s: d,
        y_max: nice_ceil(f64::from(f.pool_size) * 1.15),
    };
    db.frame(&mut svg, "Database connections in use (the most in each 100 ms)", f.plan, "connections");
    let pool = f64::from(f.pool_size);
    db.line(&mut svg, &[(0.0, pool), (d, pool)], "#555", Some("6 4"));
    db.line(&mut svg, &db_points(&f.run.db_in_use), WITH, None);
    marker(&mut svg, &db, applied, "");
    // Per kind.
    let col_w = (full_w - 44.0) / 2.0;
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let (row, col) = (i / 2, i % 2);
        let series: Vec<Vec<(f64, f64)>> =
            Verdict::ALL.iter().map(|v| per_second(&f.run.timeline(*kind, *v, d))).collect();
        let y_max = nice_ceil(series.iter().flatten().map(|(_, v)| *v).fold(0.0, f64::max));
        let p = Panel {
            x: LEFT + col as f64 * (col_w + 44.0),
            y: kinds_top + ROW_H * row as f64,
            w: col_w,
            h: PANEL_H,
            x_max_s: d,
            y_max,
        };
        let (b, a) = (&f.before.kinds[i].1, &f.after.kinds[i].1);
        let title = format!(
            "{}: served {:.0}/s before, {:.0}/s after",
            kind.name(),
            f.before.rate(b.served),
            f.after.rate(a.served)
        );
        p.frame(&mut svg, &title, f.plan, "");
        for (v, pts) in Verdict::ALL.iter().zip(&series) {
            let color = match v {
                Verdict::Served => SERVED,
                Verdict::Refused => REFUSED,
                Verdict::Failed => FAILED,
            };
            p.line(&mut svg, pts, color, None);
        }
        marker(&mut svg, &p, applied, "");
    }
    svg.push_str("</svg>\n");
    svg
}

pub fn html(f: &LiveFigure, claims: &[Claim], settings: &str, table: &str) -> String {
    let mut h = String::from(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>surgeguard demo report: a limit changed live</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1040px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12.5px}
.ok{color:#2e7d32}.no{color:#c62828;font-weight:700}
code{background:#f3f3f3;padding:0 3px}svg{max-width:100%;height:auto}
</style></head><body>
<h1>surgeguard demo: a limit changed live, mid-surge</h1>
"#,
    );
    let _ = writeln!(h, "<p>{}</p>", escape(settings));
    let c = f.change;
    let _ = writeln!(
        h,
        "<p><b>The change</b>: {} — helper started at {:.2} s, Envoy counted the update (<code>extension_config_discovery.http_filter.surgeguard.update_success</code> {} → {}) at {} s.{}</p>",
        escape(&c.what()),
        c.started_s,
        c.update_success_before,
        c.update_success_after,
        c.applied_s.map_or("-".into(), |t| format!("{t:.2}")),
        c.filter_log.as_ref().map_or(String::new(), |l| format!(" The filter logged: <code>{}</code>", escape(l)))
    );
    h.push_str("<h2>What the run shows</h2>\n<ul>\n");
    claims_html(&mut h, claims);
    h.push_str("</ul>\n<h2>Before and after the change, per second</h2>\n");
    let _ = writeln!(h, "<pre>{}</pre>", escape(table));
    h.push_str(
        "<p>“Before” runs from the surge's full rate to the moment the helper started; “after” from one second after Envoy took the update (a changed limit starts from a full bucket) to the end of the surge.</p>\n<h2>Over time</h2>\n",
    );
    h.push_str(&svg(f));
    h.push_str(
        r#"<h2>How to read this</h2>
<ul>
<li><b>served</b>: 2xx. <b>refused</b>: 429 or 503 from surgeguard (it names its cause in <code>x-surgeguard</code>). <b>failed</b>: anything else, including connection errors and client timeouts.</li>
<li>The dashed purple line is when Envoy took the new configuration; the grey band is the surge; the dashed grey step is the <code>storefront</code> bucket's rate.</li>
</ul>
</body></html>
"#,
    );
    h
}
