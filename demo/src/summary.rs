//! The arithmetic of the results: per traffic kind (and per phase) offered, served, refused,
//! failed and latency percentiles; the timeline the plots draw; the claims the demo checks; and
//! a run's part of `summary.json` ([`RunSummary`]: the contract's schema, plus added fields).
//!
//! Invariants: `offered = served + refused + failed` for every kind and phase; percentiles are
//! nearest-rank over every request of the kind, whatever its outcome (a failure's latency is
//! the time the user waited for it); an empty set has percentiles 0.

use crate::incident::Incident;
use crate::outcome::{at_us, latency_us, Label, Outcome, Verdict};
use crate::pool::PoolStats;
use crate::schedule::{Phase, Plan, PlanSummary};
use crate::traffic::Kind;
use serde::Serialize;
use std::collections::BTreeMap;

/// Counts and latency percentiles of a set of requests; serialized as the contract's per-kind
/// object (percentiles to 0.1 ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    pub offered: u64,
    pub served: u64,
    pub refused: u64,
    pub failed: u64,
    #[serde(serialize_with = "serialize_round1")]
    pub p50_ms: f64,
    #[serde(serialize_with = "serialize_round1")]
    pub p99_ms: f64,
}

impl Stats {
    pub fn of<'a>(outcomes: impl Iterator<Item = &'a Outcome>) -> Stats {
        let mut s = Stats::default();
        let mut latencies_us = Vec::new();
        for o in outcomes {
            s.offered += 1;
            match o.verdict() {
                Verdict::Served => s.served += 1,
                Verdict::Refused => s.refused += 1,
                Verdict::Failed => s.failed += 1,
            }
            latencies_us.push(latency_us(o));
        }
        latencies_us.sort_unstable();
        s.p50_ms = percentile_ms(&latencies_us, 0.50);
        s.p99_ms = percentile_ms(&latencies_us, 0.99);
        s
    }

    pub fn count(&self, v: Verdict) -> u64 {
        match v {
            Verdict::Served => self.served,
            Verdict::Refused => self.refused,
            Verdict::Failed => self.failed,
        }
    }

    /// `part` as a share of `offered` (0 when nothing was offered).
    pub fn share(&self, part: u64) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            part as f64 / self.offered as f64
        }
    }
}

/// To one decimal: how the summaries print rates and percentages.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn serialize_round1<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(round1(*x))
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds; 0 for an empty list.
pub fn percentile_ms(sorted_us: &[u64], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

/// One run (without or with the filter), measured.
#[derive(Debug, Clone)]
pub struct Run {
    /// `without_filter` or `with_filter`.
    pub key: &'static str,
    pub outcomes: Vec<Outcome>,
    pub pool: PoolStats,
    /// The most connections in use in each [`DB_SAMPLE_MS`] window, from the start of the load.
    pub db_in_use: Vec<u32>,
    /// The filter's own counters (`surgeguard.*` from Envoy's stats), when it ran.
    pub filter_counters: BTreeMap<String, u64>,
    /// The adaptive limit L in each [`DB_SAMPLE_MS`] window (empty unless the limit is adaptive).
    pub limit: Vec<u32>,
}

/// A run as the table and the report name it: `label` in headings ("with surgeguard"), `short`
/// in running text ("with").
#[derive(Debug, Clone, Copy)]
pub struct Side<'a> {
    pub label: &'a str,
    pub short: &'a str,
    pub run: &'a Run,
}

/// One run in `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub db_peak_in_use: u32,
    pub db_peak_waiting: u32,
    pub db_wait_timeouts: u64,
    pub db_queries: u64,
    pub total: Stats,
    /// By kind name.
    pub traffic: BTreeMap<&'static str, KindSummary>,
    pub filter_counters: BTreeMap<String, u64>,
    pub timeline: Timeline,
}

/// One traffic kind of a run: over the whole run, and per phase (by phase name).
#[derive(Debug, Clone, Serialize)]
pub struct KindSummary {
    #[serde(flatten)]
    pub total: Stats,
    pub phases: BTreeMap<&'static str, Stats>,
}

/// What the plots draw.
#[derive(Debug, Clone, Serialize)]
pub struct Timeline {
    pub bin_s: u64,
    /// Requests per [`BIN_S`] bin, by kind name, then by verdict name.
    pub kinds: BTreeMap<&'static str, BTreeMap<&'static str, Vec<u64>>>,
    pub db_sample_ms: u64,
    /// The most connections in use in each [`DB_SAMPLE_MS`] window.
    pub db_in_use: Vec<u32>,
    /// The adaptive limit L in each [`DB_SAMPLE_MS`] window (only for a run with one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub adaptive_limit: Vec<u32>,
}

pub const DB_SAMPLE_MS: u64 = 100;
pub const BIN_S: u64 = 1;

impl Run {
    pub fn kind(&self, kind: Kind) -> Stats {
        Stats::of(self.outcomes.iter().filter(|o| o.label.kind == kind))
    }

    pub fn kind_in_phase(&self, kind: Kind, phase: Phase) -> Stats {
        Stats::of(self.outcomes.iter().filter(|o| o.label == Label { kind, phase }))
    }

    pub fn all(&self) -> Stats {
        Stats::of(self.outcomes.iter())
    }

    /// Requests of `kind` sent while the database ran at full speed (`slow: false`) or while it
    /// was slow (`slow: true`).
    pub fn kind_by_database(&self, kind: Kind, incident: &Incident, slow: bool) -> Stats {
        Stats::of(
            self.outcomes.iter().filter(|o| o.label.kind == kind && incident.contains(at_us(o) as f64 / 1e6) == slow),
        )
    }

    /// Goodput: requests sent in `phase` and served, per second of the phase.
    pub fn served_per_s(&self, plan: &Plan, phase: Phase) -> f64 {
        let (from, to) = plan.phase_bounds_s(phase);
        let served = self.outcomes.iter().filter(|o| o.label.phase == phase && o.verdict() == Verdict::Served).count();
        if to > from {
            served as f64 / (to - from)
        } else {
            0.0
        }
    }

    /// L's samples taken between `from_s` and `to_s`.
    pub fn limit_between(&self, from_s: f64, to_s: f64) -> &[u32] {
        let at = |t: f64| ((t * 1000.0 / DB_SAMPLE_MS as f64).max(0.0) as usize).min(self.limit.len());
        &self.limit[at(from_s)..at(to_s).max(at(from_s))]
    }

    /// Requests of `kind` with verdict `v`, per [`BIN_S`] second of scheduled time.
    pub fn timeline(&self, kind: Kind, v: Verdict, duration_s: f64) -> Vec<u64> {
        let bins = (duration_s / BIN_S as f64).ceil().max(1.0) as usize;
        let mut out = vec![0u64; bins];
        for o in self.outcomes.iter().filter(|o| o.label.kind == kind && o.verdict() == v) {
            let bin = (at_us(o) / (BIN_S * 1_000_000)) as usize;
            if let Some(c) = out.get_mut(bin.min(bins - 1)) {
                *c += 1;
            }
        }
        out
    }

    pub fn summary(&self, plan: &Plan) -> RunSummary {
        let kind_summary = |kind: Kind| KindSummary {
            total: self.kind(kind),
            phases: Phase::ALL.iter().map(|p| (p.name(), self.kind_in_phase(kind, *p))).collect(),
        };
        let timeline =
            |kind: Kind| Verdict::ALL.iter().map(move |v| (v.name(), self.timeline(kind, *v, plan.duration_s)));
        RunSummary {
            db_peak_in_use: self.pool.peak_in_use,
            db_peak_waiting: self.pool.peak_waiting,
            db_wait_timeouts: self.pool.wait_timeouts,
            db_queries: self.pool.leases,
            total: self.all(),
            traffic: Kind::ALL.iter().map(|k| (k.name(), kind_summary(*k))).collect(),
            filter_counters: self.filter_counters.clone(),
            timeline: Timeline {
                bin_s: BIN_S,
                kinds: Kind::ALL.iter().map(|k| (k.name(), timeline(*k).collect())).collect(),
                db_sample_ms: DB_SAMPLE_MS,
                db_in_use: self.db_in_use.clone(),
                adaptive_limit: self.limit.clone(),
            },
        }
    }
}

/// How L moved over the adaptive run, in `summary.json` and under the table.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LimitFigures {
    /// L as the surge began (the last sample before it).
    pub at_surge_start: u32,
    /// Where L stayed before the database slowed: the median of the second half of that time.
    pub settled: u32,
    /// Seconds from the start of the surge until L stayed within 30% of `settled` (to the
    /// slowdown); `None` if it never did.
    pub settled_after_s: Option<f64>,
    /// The least and the most L was while the database was slow.
    pub slow_min: u32,
    pub slow_max: u32,
    /// The most L was once the database had recovered (the recovery phase).
    pub recovered_max: u32,
}

/// Within this share of where it settles, L counts as settled.
pub const SETTLED_WITHIN: f64 = 0.3;

impl LimitFigures {
    pub fn of(run: &Run, plan: &Plan, incident: &Incident) -> Option<LimitFigures> {
        let surge = plan.surge_start_s();
        let before = run.limit_between(surge, incident.from_s);
        let second_half = run.limit_between((surge + incident.from_s) / 2.0, incident.from_s);
        let mut sorted = second_half.to_vec();
        sorted.sort_unstable();
        let settled = *sorted.get(sorted.len() / 2)?;
        let near = |l: &u32| (f64::from(*l) - f64::from(settled)).abs() <= SETTLED_WITHIN * f64::from(settled);
        // The first sample from which every later one (to the slowdown) is near `settled`.
        let stays_from = before.iter().rposition(|l| !near(l)).map_or(0, |i| i + 1);
        let settled_after_s =
            (stays_from < before.len()).then(|| (stays_from + 1) as f64 * DB_SAMPLE_MS as f64 / 1000.0);
        let slow = run.limit_between(incident.from_s, incident.until_s);
        let recovered = run.limit_between(plan.surge_end_s(), plan.duration_s);
        Some(LimitFigures {
            at_surge_start: run.limit_between(0.0, surge).last().copied().unwrap_or(0),
            settled,
            settled_after_s,
            slow_min: slow.iter().copied().min().unwrap_or(0),
            slow_max: slow.iter().copied().max().unwrap_or(0),
            recovered_max: recovered.iter().copied().max().unwrap_or(0),
        })
    }

    /// One line for the terminal.
    pub fn describe(&self, incident: &Incident) -> String {
        let settled = self.settled_after_s.map_or("did not settle".to_string(), |s| {
            format!("settled at {} within {s:.1} s ({:.0} windows of 200 ms)", self.settled, s / 0.2)
        });
        format!(
            "adaptive limit L: {} as the surge began, {settled}; {}..{} while the database was {}x slower; up to {} after",
            self.at_surge_start, self.slow_min, self.slow_max, incident.slowdown, self.recovered_max
        )
    }
}

/// The load in the summaries: the plan, the mix (the side-by-side demo records it), the client's
/// timeout.
#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    #[serde(flatten)]
    pub plan: PlanSummary,
    /// Each kind's share of the traffic, by kind name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mix: Option<BTreeMap<&'static str, f64>>,
    pub client_timeout_ms: u64,
}

/// The database tier in the summaries.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseSummary {
    /// `model` or `postgresql`.
    pub backend: &'static str,
    pub pool_wait_ms: u64,
}

/// The Envoy of a run in the summaries.
#[derive(Debug, Clone, Serialize)]
pub struct EnvoySummary {
    pub version: String,
    pub workers: u32,
    /// The shipped bootstrap, relative to the repository.
    pub config: String,
}

/// The filter's own counters among Envoy's stats (`surgeguard.*`, named as in the contract,
/// without Envoy's `wasmcustom.` prefix); an ECDS subscription's own stats are Envoy's, not the
/// filter's.
pub fn filter_counters(stats: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    stats
        .iter()
        .filter(|(k, _)| k.contains("surgeguard.") && !k.starts_with("extension_config_discovery"))
        .map(|(k, v)| (k.trim_start_matches("wasmcustom.").to_string(), *v))
        .collect()
}

/// One thing the demo must show, checked against the measured numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Claim {
    pub claim: String,
    pub holds: bool,
    pub evidence: String,
}

/// Without the filter, at least this share of checkouts fails for the run to show the outage.
pub const OUTAGE_MIN_CHECKOUT_FAILED: f64 = 0.05;
/// With the filter, at least this share of checkouts is served.
pub const MIN_CHECKOUT_SERVED: f64 = 0.99;
/// With the filter, checkout p99 over the whole run is at most this multiple of the calm p99.
pub const MAX_CHECKOUT_P99_RATIO: f64 = 2.0;

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// The three runs the main demo compares: no filter, surgeguard with the shipped (static, sized
/// by hand) in-flight limit, and surgeguard with the adaptive limit and no sized number.
#[derive(Debug, Clone, Copy)]
pub struct Runs<'a> {
    pub without: &'a Run,
    pub with: &'a Run,
    pub adaptive: &'a Run,
}

pub fn claims(pool_size: u32, plan: &Plan, incident: &Incident, runs: Runs) -> Vec<Claim> {
    let Runs { without, with, adaptive } = runs;
    let mut out = Vec::new();
    let mut claim =
        |claim: &str, holds: bool, evidence: String| out.push(Claim { claim: claim.into(), holds, evidence });
    claim(
        "without the filter the database tier saturates",
        without.pool.peak_in_use >= pool_size,
        format!(
            "peak connections in use {}/{pool_size}; {} requests timed out waiting for one",
            without.pool.peak_in_use, without.pool.wait_timeouts
        ),
    );
    let c = without.kind(Kind::Checkout);
    claim(
        "without the filter checkout fails",
        c.share(c.failed) >= OUTAGE_MIN_CHECKOUT_FAILED,
        format!("{} of {} checkouts failed ({})", c.failed, c.offered, pct(c.share(c.failed))),
    );
    claim(
        "with surgeguard database connections in use never exceed the pool",
        with.pool.peak_in_use <= pool_size,
        format!(
            "peak connections in use {}/{pool_size}; {} requests timed out waiting for one",
            with.pool.peak_in_use, with.pool.wait_timeouts
        ),
    );
    let c = with.kind(Kind::Checkout);
    claim(
        "with surgeguard checkout is served (>= 99%)",
        c.offered > 0 && c.share(c.served) >= MIN_CHECKOUT_SERVED,
        format!("{} of {} served ({})", c.served, c.offered, pct(c.share(c.served))),
    );
    // While the database itself is slow no filter can keep its latency: the latency claim is
    // about the surge the database could serve.
    let calm = with.kind_in_phase(Kind::Checkout, Phase::Calm);
    let fast = with.kind_by_database(Kind::Checkout, incident, false);
    let slow = with.kind_by_database(Kind::Checkout, incident, true);
    claim(
        "with surgeguard checkout p99 stays within 2x of the calm phase while the database runs at full speed",
        calm.offered > 0 && fast.p99_ms <= MAX_CHECKOUT_P99_RATIO * calm.p99_ms,
        format!(
            "p99 {:.1} ms vs {:.1} ms calm ({:.2}x); {:.1} ms while the database was {}x slower",
            fast.p99_ms,
            calm.p99_ms,
            if calm.p99_ms > 0.0 { fast.p99_ms / calm.p99_ms } else { 0.0 },
            slow.p99_ms,
            incident.slowdown,
        ),
    );
    let refused = with.all().refused;
    let shed_kinds = with.kind(Kind::Bot).refused + with.kind(Kind::Search).refused;
    let share = if refused == 0 { 0.0 } else { shed_kinds as f64 / refused as f64 };
    claim(
        "with surgeguard what is refused is mostly bot and search traffic",
        refused > 0 && share > 0.5,
        format!("{shed_kinds} of {refused} refusals are bot or search ({})", pct(share)),
    );
    claim(
        "with the adaptive limit the database never reaches its pool",
        adaptive.pool.peak_in_use < pool_size && adaptive.pool.wait_timeouts == 0,
        format!(
            "peak connections in use {}/{pool_size}; {} requests timed out waiting for one",
            adaptive.pool.peak_in_use, adaptive.pool.wait_timeouts
        ),
    );
    let c = adaptive.kind(Kind::Checkout);
    claim(
        "with the adaptive limit checkout is served (>= 99%)",
        c.offered > 0 && c.share(c.served) >= MIN_CHECKOUT_SERVED,
        format!("{} of {} served ({})", c.served, c.offered, pct(c.share(c.served))),
    );
    let (a, s) = (adaptive.served_per_s(plan, Phase::Surge), with.served_per_s(plan, Phase::Surge));
    claim(
        "with the adaptive limit the surge's goodput is at least the static limit's",
        a > 0.0 && a >= s,
        format!(
            "{:.1} requests/s served during the surge, against {:.1} with the static limit ({:.2}x)",
            // Rounded as summary.json and the goodput line round them (`{:.1}` alone rounds
            // a half to even).
            (a * 10.0).round() / 10.0,
            (s * 10.0).round() / 10.0,
            a / s.max(1e-9)
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn o(kind: Kind, phase: Phase, status: Option<u16>, sg: bool, latency_ms: u64) -> Outcome {
        Outcome {
            label: Label { kind, phase },
            at: Duration::ZERO,
            sent_at: Duration::ZERO,
            status,
            surgeguard: sg.then(|| "limit=storefront; class=sheddable".to_string()),
            latency: Duration::from_millis(latency_ms),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.50), 50.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&us[..1], 0.99), 1.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
        // 10 values: p99 is the largest, p50 the fifth.
        assert_eq!(percentile_ms(&us[..10], 0.99), 10.0);
        assert_eq!(percentile_ms(&us[..10], 0.50), 5.0);
    }

    #[test]
    fn every_offered_request_is_served_refused_or_failed() {
        let outcomes = [
            o(Kind::Bot, Phase::Surge, Some(429), true, 1),
            o(Kind::Bot, Phase::Surge, Some(503), true, 2),
            o(Kind::Bot, Phase::Calm, Some(200), false, 40),
            o(Kind::Bot, Phase::Surge, Some(500), false, 1000),
            o(Kind::Bot, Phase::Surge, None, false, 5000),
        ];
        let s = Stats::of(outcomes.iter());
        assert_eq!((s.offered, s.served, s.refused, s.failed), (5, 1, 2, 2));
        assert_eq!(s.offered, s.served + s.refused + s.failed);
        assert_eq!(s.p50_ms, 40.0);
        assert_eq!(s.p99_ms, 5000.0);
        assert_eq!(s.share(s.refused), 0.4);
        assert_eq!(Stats::of([].iter()).share(0), 0.0);
    }

    fn run(key: &'static str, peak: u32, outcomes: Vec<Outcome>) -> Run {
        Run {
            key,
            outcomes,
            pool: PoolStats {
                size: 40,
                in_use: 0,
                peak_in_use: peak,
                waiting: 0,
                peak_waiting: 0,
                leases: 0,
                wait_timeouts: 0,
            },
            db_in_use: vec![],
            filter_counters: BTreeMap::new(),
            limit: vec![],
        }
    }

    fn outage() -> Run {
        let mut v: Vec<Outcome> = (0..20).map(|_| o(Kind::Checkout, Phase::Surge, Some(500), false, 1000)).collect();
        v.extend((0..80).map(|_| o(Kind::Checkout, Phase::Surge, Some(200), false, 200)));
        run("without_filter", 40, v)
    }

    fn protected(checkout_calm_ms: u64, checkout_surge_ms: u64, refusals: &[(Kind, u64)]) -> Run {
        let mut v: Vec<Outcome> =
            (0..100).map(|_| o(Kind::Checkout, Phase::Calm, Some(200), false, checkout_calm_ms)).collect();
        v.extend((0..100).map(|_| o(Kind::Checkout, Phase::Surge, Some(200), false, checkout_surge_ms)));
        for (kind, n) in refusals {
            v.extend((0..*n).map(|_| o(*kind, Phase::Surge, Some(429), true, 1)));
        }
        run("with_filter", 18, v)
    }

    fn adaptive() -> Run {
        Run { key: "adaptive", ..protected(60, 100, &[(Kind::Search, 60)]) }
    }

    fn plan() -> Plan {
        Plan { duration_s: 24.0, surge: 5.0, calm_rate_per_s: 10.0, mix: crate::traffic::Mix::default(), seed: 1 }
    }

    /// The database is slow from 12 s to 18 s.
    fn check(without: &Run, with: &Run, adaptive: &Run) -> Vec<Claim> {
        let p = plan();
        claims(40, &p, &Incident::in_surge(&p), Runs { without, with, adaptive })
    }

    #[test]
    fn the_claims_hold_for_an_outage_and_two_protected_runs() {
        let c = check(&outage(), &protected(60, 100, &[(Kind::Bot, 60), (Kind::Browse, 40)]), &adaptive());
        assert!(c.iter().all(|c| c.holds), "{c:#?}");
        assert_eq!(c.len(), 9);
    }

    #[test]
    fn each_claim_fails_when_its_numbers_do_not_show_it() {
        let holds = |c: Vec<Claim>, i: usize| c[i].holds;
        let good = || protected(60, 100, &[(Kind::Search, 60)]);
        let ad = adaptive();
        let calm_outage = run("without_filter", 39, outage().outcomes);
        assert!(!holds(check(&calm_outage, &good(), &ad), 0));
        let no_failures = run("without_filter", 40, vec![o(Kind::Checkout, Phase::Surge, Some(200), false, 10)]);
        assert!(!holds(check(&no_failures, &good(), &ad), 1));
        let mut over = good();
        over.pool.peak_in_use = 41;
        assert!(!holds(check(&outage(), &over, &ad), 2));
        let three_lost = |mut r: Run| {
            r.outcomes.extend((0..3).map(|_| o(Kind::Checkout, Phase::Surge, Some(503), true, 1)));
            r
        };
        assert!(!holds(check(&outage(), &three_lost(good()), &ad), 3), "197/200 is under 99%");
        assert!(!holds(check(&outage(), &protected(60, 130, &[(Kind::Bot, 9)]), &ad), 4));
        assert!(holds(check(&outage(), &protected(60, 120, &[(Kind::Bot, 9)]), &ad), 4));
        assert!(!holds(check(&outage(), &protected(60, 100, &[(Kind::Browse, 9), (Kind::Bot, 8)]), &ad), 5));
        assert!(!holds(check(&outage(), &protected(60, 100, &[]), &ad), 5), "nothing refused");
        let mut full = adaptive();
        full.pool.peak_in_use = 40;
        assert!(!holds(check(&outage(), &good(), &full), 6), "the pool reached");
        let mut waited = adaptive();
        waited.pool.wait_timeouts = 1;
        assert!(!holds(check(&outage(), &good(), &waited), 6), "a request waited out the pool");
        assert!(!holds(check(&outage(), &good(), &three_lost(adaptive())), 7));
        let mut less = adaptive();
        less.outcomes.retain(|o| !(o.label.phase == Phase::Surge && o.verdict() == Verdict::Served));
        less.outcomes.extend((0..99).map(|_| o(Kind::Checkout, Phase::Surge, Some(200), false, 100)));
        assert!(!holds(check(&outage(), &good(), &less), 8), "99 served in the surge against 100");
        assert!(holds(check(&outage(), &good(), &adaptive()), 8), "as many as the static limit");
    }

    #[test]
    fn checkout_latency_while_the_database_is_slow_is_reported_not_held_to_the_calm_p99() {
        let slow_checkouts = |at_s: u64| {
            let mut r = protected(60, 100, &[(Kind::Bot, 9)]);
            for _ in 0..50 {
                let mut slow = o(Kind::Checkout, Phase::Surge, Some(200), false, 300);
                slow.at = Duration::from_secs(at_s);
                r.outcomes.push(slow);
            }
            r
        };
        let c = check(&outage(), &slow_checkouts(14), &adaptive());
        assert!(c[4].holds, "{}", c[4].evidence);
        assert!(c[4].evidence.contains("300.0 ms while the database was 3x slower"), "{}", c[4].evidence);
        assert!(!check(&outage(), &slow_checkouts(8), &adaptive())[4].holds, "the same latency at full speed");
    }

    #[test]
    fn goodput_counts_what_was_sent_in_the_surge_and_served_per_second_of_it() {
        let r = protected(60, 100, &[(Kind::Bot, 9)]);
        assert_eq!(r.served_per_s(&plan(), Phase::Surge), 100.0 / 12.0);
        assert_eq!(r.served_per_s(&plan(), Phase::Calm), 100.0 / 6.0);
    }

    #[test]
    fn the_limit_is_read_by_the_time_of_its_samples() {
        let mut r = protected(60, 100, &[]);
        r.limit = (0..240).collect();
        assert_eq!(r.limit_between(12.0, 12.3), &[120, 121, 122]);
        assert_eq!(r.limit_between(23.9, 30.0), &[239]);
        assert!(r.limit_between(30.0, 40.0).is_empty());
    }

    #[test]
    fn the_timeline_bins_by_scheduled_second() {
        let mut a = o(Kind::Cart, Phase::Calm, Some(200), false, 5);
        a.at = Duration::from_micros(1_500_000);
        let mut b = a.clone();
        b.at = Duration::from_micros(2_999_999);
        let mut c = a.clone();
        c.at = Duration::from_micros(9_000_000); // past the end: counted in the last bin
        let r = run("with_filter", 1, vec![a, b, c]);
        assert_eq!(r.timeline(Kind::Cart, Verdict::Served, 3.0), vec![0, 1, 2]);
        assert_eq!(r.timeline(Kind::Cart, Verdict::Failed, 3.0), vec![0, 0, 0]);
    }

    #[test]
    fn the_json_has_the_contract_keys_for_every_kind() {
        let v = serde_json::to_value(protected(60, 100, &[(Kind::Bot, 3)]).summary(&plan())).unwrap();
        assert_eq!(v["db_peak_in_use"], 18);
        for kind in Kind::ALL {
            let k = &v["traffic"][kind.name()];
            for key in ["offered", "served", "refused", "failed", "p50_ms", "p99_ms"] {
                assert!(k[key].is_number(), "{}.{key}", kind.name());
            }
        }
        assert_eq!(v["traffic"]["bot"]["refused"], 3);
        assert_eq!(v["traffic"]["checkout"]["phases"]["calm"]["p99_ms"], 60.0);
        assert!(v["timeline"].get("adaptive_limit").is_none(), "only a run with an adaptive limit has one");
        let mut a = adaptive();
        a.limit = vec![1000, 500, 24];
        let v = serde_json::to_value(a.summary(&plan())).unwrap();
        assert_eq!(v["timeline"]["adaptive_limit"], serde_json::json!([1000, 500, 24]));
    }
}
