//! The demo end to end: one schedule of requests, replayed three times through a real Envoy in
//! front of a fresh storefront (without the filter; with surgeguard as shipped, whose in-flight
//! limit is sized by hand; with surgeguard's in-flight limit adaptive and no sized number),
//! measured, and written out as `summary.json`, `report.html`, `report.svg` and
//! `report-adaptive.svg` (its two figures alone) and `table.md`. In every run the database
//! itself slows down for the second half of the surge ([`Incident`]).
//!
//! [`run`] is its phases: each arm (`start_arm`, the load, Envoy's stats) gives a [`Run`], the
//! claims are checked, `summarise` gives the [`DemoSummary`], `write` the files.
//!
//! Invariants: every run replays the identical schedule, and the identical slowdown, against an
//! identical fresh storefront; the runs differ only by the filter's block in the Envoy config
//! (absent; as shipped; its `concurrency` line replaced by [`ADAPTIVE_CONCURRENCY`]); every
//! Envoy, storefront and thread the demo starts is stopped before `run` returns, also on error,
//! panic or interruption (each is owned by a handle whose drop stops it).

use crate::cli::Options;
use crate::db::Contention;
use crate::gauge::LimitSampler;
use crate::incident::{self, Incident};
use crate::interrupt::ChildGuard;
use crate::load::{self, Live};
use crate::outcome::Verdict;
use crate::pool::Pool;
use crate::report::{self, Figure, Page};
use crate::schedule::{Arrival, Phase, Plan};
use crate::storefront::{BackendSpec, Storefront, StorefrontConfig};
use crate::summary::{
    self, round1, Claim, DatabaseSummary, EnvoySummary, LimitFigures, LoadSummary, Run, RunSummary, Runs, Side,
    DB_SAMPLE_MS,
};
use crate::table;
use crate::traffic::{Kind, Mix, BROWSER_UA};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use surgeguard_harness::client::{requests, Req};
use surgeguard_harness::envoy::{Envoy, FilterBlock, Localise, Options as EnvoyOptions, StartError};
use surgeguard_harness::output::{write_json, write_outputs};

/// A request with no response after this long counts as failed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
pub const ENVOY_WORKERS: u32 = 2;
/// Longer than the filter's tick (1 s), on which it flushes its metrics to Envoy.
pub const FILTER_FLUSH_WAIT: Duration = Duration::from_millis(1500);
pub const INTERRUPTED: &str = "interrupted";
/// The adaptive run's in-flight limit: a ceiling far above anything the database could take
/// (not sized from it; Envoy's own default circuit breaker is 1024), and every adaptive
/// setting at its default. It replaces the shipped config's `"concurrency"` line.
pub const ADAPTIVE_CONCURRENCY: &str = r#""concurrency": { "max_in_flight": 1000, "adaptive": {} }"#;

/// Everything a finished demo measured.
pub struct Demo {
    pub plan: Plan,
    pub pool_size: u32,
    pub without: Run,
    pub with: Run,
    pub adaptive: Run,
    pub incident: Incident,
    pub claims: Vec<Claim>,
    pub summary: DemoSummary,
    pub table: String,
    pub markdown_table: String,
    pub written: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    Without,
    With,
    Adaptive,
}

impl Arm {
    fn key(self) -> &'static str {
        match self {
            Arm::Without => "without_filter",
            Arm::With => "with_filter",
            Arm::Adaptive => "adaptive",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Arm::Without => "1/3 without surgeguard",
            Arm::With => "2/3 with surgeguard",
            Arm::Adaptive => "3/3 adaptive limit",
        }
    }
}

/// `yaml` with the plugin configuration's `"concurrency"` line replaced by
/// [`ADAPTIVE_CONCURRENCY`]; an error unless there is exactly one such line and it holds the
/// whole object.
pub fn adaptive_config(yaml: &str) -> Result<String, String> {
    let at: Vec<usize> = yaml
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("\"concurrency\":"))
        .map(|(i, _)| i)
        .collect();
    let [line] = at[..] else {
        return Err(format!("expected one `\"concurrency\":` line in the plugin configuration, found {}", at.len()));
    };
    let lines: Vec<&str> = yaml.lines().collect();
    let text = lines[line];
    let indent = &text[..text.len() - text.trim_start().len()];
    let body = text.trim().trim_end_matches(',');
    if body.matches('{').count() != body.matches('}').count() {
        return Err(format!("the `\"concurrency\"` object must be on one line: {}", text.trim()));
    }
    let comma = if text.trim_end().ends_with(',') { "," } else { "" };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out[line] = format!("{indent}{ADAPTIVE_CONCURRENCY}{comma}");
    Ok(out.join("\n") + "\n")
}

pub fn plan(o: &Options) -> Plan {
    Plan {
        duration_s: o.duration_s,
        surge: o.surge,
        calm_rate_per_s: o.calm_rate_per_s,
        mix: Mix::default(),
        seed: o.seed,
    }
}

pub(crate) fn storefront_config(o: &Options) -> StorefrontConfig {
    StorefrontConfig {
        port: 0,
        pool_size: o.pool_size,
        pool_wait: Duration::from_millis(o.pool_wait_ms),
        backend: match &o.database_url {
            Some(url) => BackendSpec::Postgres(url.clone()),
            None => BackendSpec::Model(Contention::default()),
        },
        worker_threads: if o.database_url.is_some() { 2 } else { 1 },
        replicas: 1,
    }
}

/// Samples the pool every [`DB_SAMPLE_MS`] and draws the progress line; stops on drop.
pub(crate) struct Monitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<u32>>>,
}

impl Monitor {
    pub(crate) fn start(pool: Arc<Pool>, live: Arc<Live>, label: &'static str, plan: Plan, show: bool) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let tty = std::io::stderr().is_terminal();
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut last_line = Instant::now();
            for k in 1u32.. {
                let due = start + Duration::from_millis(DB_SAMPLE_MS) * k;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                samples.push(pool.take_window_peak());
                let done = flag.load(Ordering::SeqCst);
                if show && (tty || last_line.elapsed() >= Duration::from_secs(5) || done) {
                    last_line = Instant::now();
                    let t = start.elapsed().as_secs_f64();
                    let phase = if t < plan.duration_s { plan.phase_at(t).name() } else { "draining" };
                    let s = pool.stats();
                    let line = format!(
                        "[{label}] {t:5.1}/{:.0} s {phase:<8} sent {:>5}  served {:>5}  refused {:>5}  failed {:>5}  db {:>3}/{} in use",
                        plan.duration_s,
                        live.sent.load(Ordering::Relaxed),
                        live.count(Verdict::Served),
                        live.count(Verdict::Refused),
                        live.count(Verdict::Failed),
                        s.in_use,
                        s.size,
                    );
                    if tty {
                        eprint!("\r{line}\x1b[K");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if done {
                    break;
                }
            }
            if show && tty {
                eprintln!();
            }
            samples
        });
        Monitor { stop, handle: Some(handle) }
    }

    pub(crate) fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One arm's processes, running: the storefront, and Envoy in front of it (both stop on drop).
struct ArmStack {
    storefront: Storefront,
    envoy: Envoy,
    /// Envoy's listener.
    port: u16,
    _registered: ChildGuard,
}

fn run_arm(
    o: &Options,
    arm: Arm,
    plan: &Plan,
    arrivals: &[Arrival],
    incident: Incident,
    cancel: &Arc<AtomicBool>,
) -> Result<Run, String> {
    let stack = start_arm(o, arm, cancel)?;
    let live = Arc::new(Live::default());
    let slowdown = incident::Driver::start(Arc::clone(&stack.storefront.db), incident, Arc::clone(&live));
    let limit = (arm == Arm::Adaptive).then(|| LimitSampler::start(stack.envoy.admin_port));
    let monitor = Monitor::start(
        Arc::clone(stack.storefront.db.pool()),
        Arc::clone(&live),
        arm.label(),
        plan.clone(),
        o.progress,
    );
    let outcomes = load::run(stack.port, arrivals, CLIENT_TIMEOUT, &live, cancel);
    let db_in_use = monitor.finish();
    let limit = limit.map(LimitSampler::finish).unwrap_or_default();
    drop(slowdown);
    let outcomes = outcomes.map_err(load_failed)?;
    if arm != Arm::Without {
        // The filter hands its counters and gauge to Envoy on its 1 s tick: let every worker
        // flush once more after the last request ended.
        std::thread::sleep(FILTER_FLUSH_WAIT);
    }
    let filter_counters = summary::filter_counters(&stack.envoy.stats());
    Ok(Run { key: arm.key(), outcomes, pool: stack.storefront.db.stats(), db_in_use, filter_counters, limit })
}

/// A fresh storefront and an Envoy in front of it (the shipped config, with or without the
/// filter), warmed up.
fn start_arm(o: &Options, arm: Arm, cancel: &AtomicBool) -> Result<ArmStack, String> {
    let storefront = Storefront::start(&storefront_config(o))?;
    let filter = if arm == Arm::Without { FilterBlock::Removed } else { FilterBlock::Marked };
    let yaml = Localise { filter, ..Localise::local(storefront.port) }.load(&o.envoy_config)?;
    let yaml = if arm == Arm::Adaptive {
        adaptive_config(&yaml).map_err(|e| format!("{}: {e}", o.envoy_config.display()))?
    } else {
        yaml
    };
    let envoy_opts =
        EnvoyOptions { concurrency: ENVOY_WORKERS, log_level: "warning".into(), ..EnvoyOptions::default() };
    let envoy = Envoy::start(&yaml, &envoy_opts)
        .map_err(|e| envoy_failed(&format!("{} ({})", arm.key(), o.envoy_config.display()), &e))?;
    let registered = ChildGuard::register(envoy.pid());
    if o.progress {
        eprintln!(
            "[{}] Envoy pid {} on 127.0.0.1:{} in front of the storefront on 127.0.0.1:{}",
            arm.label(),
            envoy.pid(),
            envoy.listener_port(),
            storefront.port
        );
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(INTERRUPTED.into());
    }
    let port = envoy.listener_port();
    if port == 0 {
        return Err(format!("{}: Envoy reported no listener port", arm.key()));
    }
    warm_up(port).map_err(|e| format!("{}: {e}", arm.key()))?;
    Ok(ArmStack { storefront, envoy, port, _registered: registered })
}

/// Envoy did not start: what it said last, under `context`.
pub(crate) fn envoy_failed(context: &str, e: &StartError) -> String {
    let tail: Vec<&str> = e.log.lines().rev().take(15).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{context}: {}\n{}", e.message, tail.join("\n"))
}

/// A few requests through Envoy before the load, so connections and the wasm VMs are ready.
/// They are product pages, one query each, like the load's: an adaptive limit learns its
/// baselines from what the upstream answers, and a page that skips the database (a health check
/// on the same route) would teach it a latency no real request has.
pub(crate) fn warm_up(port: u16) -> Result<(), String> {
    let pages: Vec<Req> =
        (1..=8).map(|n| Req::get(&format!("/products/{n}")).header("user-agent", BROWSER_UA)).collect();
    let warm = requests(port, &pages);
    match warm.iter().find(|r| r.as_ref().map(|r| r.status) != Ok(200)) {
        Some(bad) => Err(format!("warm-up through Envoy failed: {bad:?}")),
        None => Ok(()),
    }
}

pub(crate) fn load_failed(e: load::LoadError) -> String {
    match e {
        load::LoadError::Interrupted => INTERRUPTED.to_string(),
        load::LoadError::Setup(m) => m,
    }
}

pub(crate) fn envoy_version() -> String {
    surgeguard_harness::envoy::envoy_bin()
        .ok()
        .and_then(|bin| std::process::Command::new(bin).arg("--version").output().ok())
        .map(|out| String::from_utf8_lossy(&out.stdout).to_string())
        .and_then(|s| {
            s.split(['/', ' '])
                .find(|w| w.starts_with("1.") && w.chars().filter(|c| *c == '.').count() == 2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn relative(p: &Path) -> String {
    let root = surgeguard_harness::repo_root();
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}

/// Runs the three arms and writes the outputs into `o.out_dir`.
pub fn run(o: &Options, cancel: &Arc<AtomicBool>) -> Result<Demo, String> {
    let plan = plan(o);
    let incident = Incident::in_surge(&plan);
    let arrivals = plan.arrivals();
    let without = run_arm(o, Arm::Without, &plan, &arrivals, incident, cancel)?;
    let with = run_arm(o, Arm::With, &plan, &arrivals, incident, cancel)?;
    let adaptive = run_arm(o, Arm::Adaptive, &plan, &arrivals, incident, cancel)?;
    let runs = Runs { without: &without, with: &with, adaptive: &adaptive };
    let claims = summary::claims(o.pool_size, &plan, &incident, runs);
    let summary = summarise(o, &plan, &incident, arrivals.len(), runs, &claims);
    let [a, b] = sides(&without, &with);
    let [s, d] = adaptive_sides(&with, &adaptive);
    let limit_line = summary.adaptive.limit.map(|l| l.describe(&incident)).unwrap_or_default();
    let goodput = goodput_line(&summary.adaptive);
    let mut demo = Demo {
        table: format!(
            "{}\n{}{limit_line}\n{goodput}\n",
            table::text(o.pool_size, a, b),
            table::text(o.pool_size, s, d)
        ),
        markdown_table: format!(
            "{}\n{}\n{limit_line}; {goodput}.\n",
            table::markdown(o.pool_size, a, b),
            table::markdown(o.pool_size, s, d)
        ),
        plan,
        pool_size: o.pool_size,
        without,
        with,
        adaptive,
        incident,
        claims,
        summary,
        written: Vec::new(),
    };
    demo.written = write(o, &demo)?;
    Ok(demo)
}

fn goodput_line(a: &AdaptiveSummary) -> String {
    format!(
        "goodput during the surge: {:.1} requests/s served with the adaptive limit, {:.1} with the static one ({:.2}x)",
        a.goodput_per_s.adaptive,
        a.goodput_per_s.static_limit,
        a.goodput_per_s.adaptive / a.goodput_per_s.static_limit.max(1e-9)
    )
}

/// The first two runs as the main table and figure name them.
fn sides<'a>(without: &'a Run, with: &'a Run) -> [Side<'a>; 2] {
    [
        Side { label: "without surgeguard", short: "without", run: without },
        Side { label: "with surgeguard", short: "with", run: with },
    ]
}

/// The static and the adaptive run, as the second table and figure name them.
fn adaptive_sides<'a>(with: &'a Run, adaptive: &'a Run) -> [Side<'a>; 2] {
    [
        Side { label: "surgeguard, static limit", short: "static", run: with },
        Side { label: "surgeguard, adaptive limit", short: "adaptive", run: adaptive },
    ]
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub db_pool_size: u32,
    /// By run key: `without_filter`, `with_filter`.
    pub runs: BTreeMap<&'static str, RunSummary>,
    pub load: LoadSummary,
    pub database: DemoDatabase,
    pub envoy: EnvoySummary,
    pub adaptive: AdaptiveSummary,
    pub claims: Vec<Claim>,
    pub all_claims_hold: bool,
}

/// The adaptive run against the static one.
#[derive(Debug, Clone, Serialize)]
pub struct AdaptiveSummary {
    /// The plugin configuration's `concurrency` in the adaptive run.
    pub concurrency: serde_json::Value,
    /// When the database was slow, and how much.
    pub database_slowed: Incident,
    pub goodput_per_s: Goodput,
    /// How L moved (`null` if it was never sampled).
    pub limit: Option<LimitFigures>,
}

/// Requests sent during the surge and served, per second of the surge.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Goodput {
    #[serde(rename = "static")]
    pub static_limit: f64,
    pub adaptive: f64,
}

/// The database tier, with the embedded model's parameters (`null` for PostgreSQL).
#[derive(Debug, Clone, Serialize)]
pub struct DemoDatabase {
    #[serde(flatten)]
    pub tier: DatabaseSummary,
    pub full_speed_queries: Option<u32>,
    pub thrash_per_conn: Option<f64>,
}

/// The database tier as the summaries record it.
pub(crate) fn database(o: &Options) -> DemoDatabase {
    let model = o.database_url.is_none().then(Contention::default);
    DemoDatabase {
        tier: DatabaseSummary {
            backend: if model.is_some() { "model" } else { "postgresql" },
            pool_wait_ms: o.pool_wait_ms,
        },
        full_speed_queries: model.map(|m| m.knee),
        thrash_per_conn: model.map(|m| m.thrash_per_conn),
    }
}

/// The load as the summaries record it: the plan, the traffic mix, the client's timeout.
pub(crate) fn load_summary(plan: &Plan, offered: usize) -> LoadSummary {
    LoadSummary {
        plan: plan.summary(offered),
        mix: Some(Kind::ALL.iter().map(|k| (k.name(), plan.mix.share(*k))).collect()),
        client_timeout_ms: CLIENT_TIMEOUT.as_millis() as u64,
    }
}

fn summarise(
    o: &Options,
    plan: &Plan,
    incident: &Incident,
    offered: usize,
    runs: Runs,
    claims: &[Claim],
) -> DemoSummary {
    let concurrency = serde_json::from_str::<serde_json::Value>(&format!("{{{ADAPTIVE_CONCURRENCY}}}"))
        .map(|v| v["concurrency"].clone())
        .unwrap_or_default();
    DemoSummary {
        db_pool_size: o.pool_size,
        runs: [runs.without, runs.with, runs.adaptive].into_iter().map(|r| (r.key, r.summary(plan))).collect(),
        load: load_summary(plan, offered),
        database: database(o),
        envoy: EnvoySummary { version: envoy_version(), workers: ENVOY_WORKERS, config: relative(&o.envoy_config) },
        adaptive: AdaptiveSummary {
            concurrency,
            database_slowed: *incident,
            goodput_per_s: Goodput {
                static_limit: round1(runs.with.served_per_s(plan, Phase::Surge)),
                adaptive: round1(runs.adaptive.served_per_s(plan, Phase::Surge)),
            },
            limit: LimitFigures::of(runs.adaptive, plan, incident),
        },
        claims: claims.to_vec(),
        all_claims_hold: claims.iter().all(|c| c.holds),
    }
}

/// The report's line on how the runs were made.
fn settings(d: &Demo) -> String {
    let s = &d.summary;
    let backend = if s.database.tier.backend == "model" { "embedded model" } else { "PostgreSQL" };
    format!(
        "{:.0} s per run: {}, {}; {} requests per run, the same in every run. Database tier: {backend}, a pool of {} connections, pool-wait timeout {} ms. Envoy {}, {ENVOY_WORKERS} workers, {} (the adaptive run with {ADAPTIVE_CONCURRENCY}).",
        d.plan.duration_s,
        d.plan.phases(),
        d.incident.describe(),
        s.load.plan.offered,
        d.pool_size,
        s.database.tier.pool_wait_ms,
        s.envoy.version,
        s.envoy.config,
    )
}

/// `summary.json`, `report.html`, `report.svg`, `report-adaptive.svg` and `table.md` into
/// `o.out_dir`.
fn write(o: &Options, d: &Demo) -> Result<Vec<PathBuf>, String> {
    let figure = Figure {
        title: report::surge_title(&d.plan, "through Envoy without and with surgeguard"),
        plan: &d.plan,
        pool_size: d.pool_size,
        knee: d.summary.database.full_speed_queries,
        runs: sides(&d.without, &d.with),
        incident: Some(d.incident),
    };
    let adaptive_figure = Figure {
        title: report::surge_title(&d.plan, "with the static in-flight limit and with the adaptive one"),
        runs: adaptive_sides(&d.with, &d.adaptive),
        ..figure
    };
    let summary = write_json(&d.summary)?;
    let page = Page {
        heading: "surgeguard demo: the postmortem's surge, without and with the filter",
        settings: &settings(d),
        extra_html: &adaptive_html(d, &adaptive_figure),
    };
    let html = report::html(&figure, &d.claims, &page);
    let svg = report::svg(&figure);
    let adaptive_svg = report::svg(&adaptive_figure);
    write_outputs(
        &o.out_dir,
        &[
            ("summary.json", &summary),
            ("report.html", html.as_bytes()),
            ("report.svg", svg.as_bytes()),
            ("report-adaptive.svg", adaptive_svg.as_bytes()),
            ("table.md", d.markdown_table.as_bytes()),
        ],
    )
}

/// The report's section on the adaptive run: what it was, its table and its figure.
fn adaptive_html(d: &Demo, figure: &Figure) -> String {
    let a = &d.summary.adaptive;
    let mut h = String::from("<h2>The static limit against the adaptive one</h2>\n");
    h.push_str(&format!(
        "<p>The static run's in-flight limit (24, with reserves) was sized by hand from the database's pool and query time. The adaptive run replaces it with <code>{}</code>: no number sized from the database; the limit L follows the database's latency. {}. {}. In the figure, L is dotted (above the panel's scale it is drawn at its top edge).</p>\n",
        report::escape(ADAPTIVE_CONCURRENCY),
        report::escape(&a.limit.map(|l| l.describe(&d.incident)).unwrap_or_else(|| "L was not sampled".into())),
        report::escape(&goodput_line(a)),
    ));
    let [s, ad] = figure.runs;
    report::kinds_table(&mut h, d.pool_size, s, ad);
    h.push_str(&report::svg(figure));
    h
}
