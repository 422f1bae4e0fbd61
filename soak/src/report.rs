//! The soak's outputs: the table on the terminal, `summary.json` and `report.md`.

use crate::checks::{Accounting, Check};
use crate::faults::{Crash, Push};
use crate::plan::{Fault, Label, Timeline};
use crate::run::Drained;
use serde::Serialize;
use std::collections::BTreeMap;
use surgeguard_harness::client::{Outcome, Verdict};

#[derive(Debug, Serialize)]
pub struct TimelineSummary {
    pub duration_s: f64,
    pub warm_up_s: f64,
    pub crashes_s: Vec<f64>,
    pub floods_s: Vec<f64>,
    pub surges_s: Vec<f64>,
}

impl From<&Timeline> for TimelineSummary {
    fn from(t: &Timeline) -> TimelineSummary {
        let secs = |v: &[std::time::Duration]| v.iter().map(|d| d.as_secs_f64()).collect();
        TimelineSummary {
            duration_s: t.duration.as_secs_f64(),
            warm_up_s: t.warm_up.as_secs_f64(),
            crashes_s: secs(&t.crashes),
            floods_s: secs(&t.floods),
            surges_s: secs(&t.surges),
        }
    }
}

/// What the client saw, per kind and fault: served, refused, failed (the harness's verdicts).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ClientCounts {
    pub sent: u64,
    pub served: u64,
    pub refused: u64,
    pub failed: u64,
}

pub fn client_counts(outcomes: &[Outcome<Label>]) -> BTreeMap<String, ClientCounts> {
    let mut out: BTreeMap<String, ClientCounts> = BTreeMap::new();
    for o in outcomes {
        let fault = match o.label.fault {
            Fault::None => String::new(),
            f => format!(
                " ({})",
                serde_json::to_value(f).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            ),
        };
        let c = out.entry(format!("{}{fault}", o.label.kind)).or_default();
        c.sent += 1;
        match o.verdict() {
            Verdict::Served => c.served += 1,
            Verdict::Refused => c.refused += 1,
            Verdict::Failed => c.failed += 1,
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub command: String,
    pub passed: bool,
    pub checks: Vec<Check>,
    pub seed: u64,
    pub envoy_workers: u32,
    pub load_s: f64,
    pub timeline: TimelineSummary,
    pub accounting: Accounting,
    pub drained: Drained,
    pub client: BTreeMap<String, ClientCounts>,
    pub upstream: UpstreamCounts,
    pub pushes: Vec<Push>,
    pub crashes: Vec<Crash>,
    /// (seconds from the start of the load, Envoy's resident bytes).
    pub rss: Vec<(f64, u64)>,
}

/// What the faulty upstream received and did.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamCounts {
    pub requests: u64,
    pub served: u64,
    pub resets: u64,
    pub stalls: u64,
}

impl From<&surgeguard_harness::faulty::FaultyStats> for UpstreamCounts {
    fn from(s: &surgeguard_harness::faulty::FaultyStats) -> UpstreamCounts {
        use std::sync::atomic::Ordering::SeqCst;
        UpstreamCounts {
            requests: s.requests.load(SeqCst),
            served: s.served.load(SeqCst),
            resets: s.resets.load(SeqCst),
            stalls: s.stalls.load(SeqCst),
        }
    }
}

pub fn table(checks: &[Check]) -> String {
    let mut t = String::from("| check | measured | bound | result |\n| --- | --- | --- | --- |\n");
    for c in checks {
        t.push_str(&format!("| {} | {} | {} | {} |\n", c.name, c.value, c.bound, if c.pass { "ok" } else { "FAILED" }));
    }
    t
}

pub fn markdown(s: &Summary) -> String {
    let mut md = format!(
        "# soak\n\n`{}`: {:.0} s of load through Envoy ({} workers), warm-up {:.0} s; {} configuration pushes, {} VM crashes staged.\n\n**{}**\n\n",
        s.command,
        s.load_s,
        s.envoy_workers,
        s.timeline.warm_up_s,
        s.pushes.len(),
        s.crashes.iter().filter(|c| c.staged).count(),
        if s.passed { "Every check passed." } else { "A check FAILED." }
    );
    md.push_str(&table(&s.checks));
    md.push_str("\n## What the client saw\n\n| kind (fault) | sent | served | refused | failed |\n| --- | ---: | ---: | ---: | ---: |\n");
    for (k, c) in &s.client {
        md.push_str(&format!("| {k} | {} | {} | {} | {} |\n", c.sent, c.served, c.refused, c.failed));
    }
    let u = &s.upstream;
    md.push_str(&format!(
        "\nThe upstream received {} requests: served {}, reset {}, stalled {}.\n",
        u.requests, u.served, u.resets, u.stalls
    ));
    md.push_str("\n## Envoy's access log, by status and details\n\n| status details | requests |\n| --- | ---: |\n");
    for (k, n) in &s.accounting.by_details {
        md.push_str(&format!("| {k} | {n} |\n"));
    }
    md
}
