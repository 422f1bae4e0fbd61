//! `--live`: one run with surgeguard whose configuration arrives over ECDS, and a limit changed
//! halfway through the surge, the way an operator changes it during an incident.
//!
//! Set-up: a temporary copy of `envoy/ecds/` (the shipped bootstrap pointed at this machine and at
//! a watched directory of its own, the shipped resource template pointed at the module under
//! test). The first configuration is `envoy/storefront.json`, rendered into the watched directory
//! by `scripts/surgeguard-apply` before Envoy starts. Halfway through the surge the same helper
//! applies the same JSON with the `storefront` bucket's `tokens_per_second` and `burst` set to
//! `--live-rate`: it validates the file, renders the resource and renames it into the watched
//! directory, and Envoy picks it up with no restart. (The ECDS set-up itself: [`crate::ecds`].)
//!
//! [`run`] is its phases, each returning what the next needs: `prepare` (schedule, the two
//! configurations), `render_initial`, `start` (storefront, Envoy), `surge_and_change`, `scrape`
//! (Envoy's stats), `judge` (windows, claims), `summarise` ([`LiveSummary`]), `write`.
//!
//! Invariants: the shipped `envoy/ecds/` files are only read, never written; the change is the
//! only difference between the two configurations; every process started here (Envoy, the helper)
//! is stopped before [`run`] returns, also on error or interruption; "applied" is when Envoy's own
//! ECDS counter `update_success` went up, never when the helper was started.

use crate::cli::Options;
use crate::demo::{self, Monitor, CLIENT_TIMEOUT, ENVOY_WORKERS, FILTER_FLUSH_WAIT, INTERRUPTED};
use crate::ecds::{accepted_lines, bootstrap, ecds_counters, prebuilt_checker, EcdsDir, HelperGuard, ECDS_PREFIX};
use crate::interrupt::ChildGuard;
use crate::load::{self, Live};
use crate::outcome::{at_us, Outcome, Verdict};
use crate::schedule::{Arrival, Plan, RAMP_S};
use crate::storefront::Storefront;
use crate::summary::{Claim, DatabaseSummary, EnvoySummary, LoadSummary, Run, RunSummary, Stats};
use crate::traffic::Kind;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_harness::envoy::{Envoy, Options as EnvoyOptions};
use surgeguard_harness::output::{write_json, write_outputs};
use surgeguard_harness::repo_root;

/// The limit `--live` changes: the global bucket of `envoy/storefront.json`.
pub const LIMIT: &str = "storefront";
/// The first configuration, as shipped.
pub const INITIAL_CONFIG: &str = "envoy/storefront.json";
pub const BOOTSTRAP: &str = "envoy/ecds/envoy.yaml";
pub const TEMPLATE: &str = "envoy/ecds/surgeguard.template.yaml";
pub const HELPER: &str = "scripts/surgeguard-apply";
/// Left out of the "after" window: a changed limit starts from a full bucket (its burst).
pub const SETTLE_S: f64 = 1.0;

/// The live change and what Envoy said about it. Times are seconds from the start of the load.
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub from_rate: f64,
    pub from_burst: f64,
    pub to_rate: f64,
    pub to_burst: f64,
    /// When the change was scheduled (halfway through the surge).
    pub due_s: f64,
    /// When `scripts/surgeguard-apply` started (validation, rendering, rename).
    pub started_s: f64,
    /// When Envoy's `update_success` counter went up.
    pub applied_s: Option<f64>,
    /// When the helper exited.
    pub helper_done_s: f64,
    pub helper_ok: bool,
    pub helper_output: String,
    pub update_success_before: u64,
    pub update_success_after: u64,
    pub update_rejected: u64,
    pub update_failure: u64,
    /// The filter's own log line for the new configuration (from Envoy's log).
    pub filter_log: Option<String>,
}

impl Change {
    pub fn accepted(&self) -> bool {
        self.helper_ok
            && self.applied_s.is_some()
            && self.update_success_after == self.update_success_before + 1
            && self.update_rejected == 0
            && self.update_failure == 0
    }

    pub fn what(&self) -> String {
        format!(
            "limits[{LIMIT}]: tokens_per_second {} -> {}, burst {} -> {}",
            self.from_rate, self.to_rate, self.from_burst, self.to_burst
        )
    }

    fn lowered(&self) -> bool {
        self.to_rate < self.from_rate
    }
}

/// Rates in a window of scheduled time, per kind and in total.
#[derive(Debug, Clone)]
pub struct Window {
    pub from_s: f64,
    pub to_s: f64,
    pub kinds: Vec<(Kind, Stats)>,
    pub all: Stats,
}

impl Window {
    pub fn of(outcomes: &[Outcome], from_s: f64, to_s: f64) -> Window {
        let inside = |o: &&Outcome| {
            let t = at_us(o) as f64 / 1e6;
            t >= from_s && t < to_s
        };
        let kinds = Kind::ALL
            .iter()
            .map(|k| (*k, Stats::of(outcomes.iter().filter(inside).filter(|o| o.label.kind == *k))))
            .collect();
        Window { from_s, to_s, kinds, all: Stats::of(outcomes.iter().filter(inside)) }
    }

    pub fn seconds(&self) -> f64 {
        (self.to_s - self.from_s).max(1e-9)
    }

    /// `count` per second of this window.
    pub fn rate(&self, count: u64) -> f64 {
        count as f64 / self.seconds()
    }

    fn rates(&self, s: &Stats) -> Rates {
        let r = |n: u64| (self.rate(n) * 10.0).round() / 10.0;
        Rates {
            offered_per_s: r(s.offered),
            served_per_s: r(s.served),
            refused_per_s: r(s.refused),
            failed_per_s: r(s.failed),
            offered: s.offered,
            served: s.served,
            refused: s.refused,
            failed: s.failed,
        }
    }

    pub fn summary(&self) -> WindowSummary {
        WindowSummary {
            all: self.rates(&self.all),
            from_s: (self.from_s * 100.0).round() / 100.0,
            to_s: (self.to_s * 100.0).round() / 100.0,
            kinds: self.kinds.iter().map(|(k, s)| (k.name(), self.rates(s))).collect(),
        }
    }
}

/// A window's counts and rates (per second, to 0.1) in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Rates {
    pub offered_per_s: f64,
    pub served_per_s: f64,
    pub refused_per_s: f64,
    pub failed_per_s: f64,
    pub offered: u64,
    pub served: u64,
    pub refused: u64,
    pub failed: u64,
}

/// A window in the summary: in total, its bounds (seconds, to 0.01), per kind name.
#[derive(Debug, Clone, Serialize)]
pub struct WindowSummary {
    #[serde(flatten)]
    pub all: Rates,
    pub from_s: f64,
    pub to_s: f64,
    pub kinds: BTreeMap<&'static str, Rates>,
}

/// Everything a finished `--live` run measured.
pub struct LiveDemo {
    pub plan: Plan,
    pub pool_size: u32,
    pub run: Run,
    pub change: Change,
    pub before: Window,
    pub after: Window,
    pub connection_errors: u64,
    pub envoy_pid: u32,
    pub claims: Vec<Claim>,
    pub summary: LiveSummary,
    pub table: String,
    pub written: Vec<PathBuf>,
}

/// `summary.json` of `--live`.
#[derive(Debug, Clone, Serialize)]
pub struct LiveSummary {
    /// `live`.
    pub mode: &'static str,
    pub db_pool_size: u32,
    /// By run key: `with_filter` only.
    pub runs: BTreeMap<&'static str, RunSummary>,
    pub live: ChangeSummary,
    pub load: LoadSummary,
    pub database: DatabaseSummary,
    pub envoy: LiveEnvoySummary,
    pub claims: Vec<Claim>,
    pub all_claims_hold: bool,
}

/// The live change in the summary; times in seconds from the start of the load, to 0.01.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeSummary {
    pub what: String,
    pub limit: &'static str,
    pub from: Bucket,
    pub to: Bucket,
    pub how: String,
    pub due_s: f64,
    pub started_s: f64,
    pub applied_s: Option<f64>,
    pub helper_done_s: f64,
    pub accepted: bool,
    pub ecds: EcdsCounters,
    pub filter_log: Option<String>,
    pub helper_output: String,
    pub envoy_pid: u32,
    pub envoy_restarted: bool,
    pub envoy_uptime_s: u64,
    pub connection_errors: u64,
    pub failed: u64,
    pub downstream_cx_destroy_local_active_rq: u64,
    pub before: WindowSummary,
    pub after: WindowSummary,
}

/// The changed bucket's settings.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub tokens_per_second: f64,
    pub burst: f64,
}

/// Envoy's ECDS counters for the filter around the change.
#[derive(Debug, Clone, Serialize)]
pub struct EcdsCounters {
    pub update_success_before: u64,
    pub update_success_after: u64,
    pub update_rejected: u64,
    pub update_failure: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveEnvoySummary {
    #[serde(flatten)]
    pub envoy: EnvoySummary,
    /// The first plugin configuration.
    pub plugin_config: &'static str,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `json` with the `storefront` limit's `tokens_per_second` and `burst` set to `rate` (burst
/// rounded up to a whole token): `(new json, old rate, old burst, new burst)`.
pub fn changed_config(json: &str, rate: f64) -> Result<(String, f64, f64, f64), String> {
    let mut v: Value = serde_json::from_str(json).map_err(|e| format!("{INITIAL_CONFIG}: {e}"))?;
    let limit = v["limits"]
        .as_array_mut()
        .and_then(|l| l.iter_mut().find(|l| l["name"] == LIMIT))
        .ok_or_else(|| format!("{INITIAL_CONFIG}: no limit named `{LIMIT}`"))?;
    let old_rate = limit["tokens_per_second"].as_f64().ok_or("tokens_per_second: not a number")?;
    let old_burst = limit["burst"].as_f64().ok_or("burst: not a number")?;
    if (old_rate - rate).abs() < 1e-9 {
        return Err(format!("--live-rate: the `{LIMIT}` bucket already runs at {old_rate}/s; give another rate"));
    }
    let burst = rate.ceil().max(1.0);
    limit["tokens_per_second"] = if rate.fract() == 0.0 { json!(rate as u64) } else { json!(rate) };
    limit["burst"] = json!(burst as u64);
    let text = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())? + "\n";
    Ok((text, old_rate, old_burst, burst))
}

fn say(line: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("\r{line}\x1b[K");
    } else {
        eprintln!("{line}");
    }
}

/// The updater: at `change.due_s` after the load started, applies `update` with the helper and
/// watches Envoy's counters until the helper is done.
fn change_live(
    ecds: &EcdsDir,
    envoy: &Envoy,
    update: &Path,
    live: &Live,
    cancel: &AtomicBool,
    mut change: Change,
) -> Result<Change, String> {
    let start = loop {
        if let Some(s) = live.started.get() {
            break *s;
        }
        if cancel.load(Ordering::SeqCst) {
            return Err(INTERRUPTED.into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let due = start + Duration::from_secs_f64(change.due_s);
    while Instant::now() < due {
        if cancel.load(Ordering::SeqCst) {
            return Err(INTERRUPTED.into());
        }
        std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
    }
    let since = |t: Instant| t.duration_since(start).as_secs_f64();
    let (success_before, _, _) = ecds_counters(envoy);
    let logged_before = accepted_lines(&envoy.log()).len();
    change.update_success_before = success_before;
    change.started_s = since(Instant::now());
    say(&format!(
        "[live] {:5.2} s  scripts/surgeguard-apply: {} (validate, render, rename into the watched directory)",
        change.started_s,
        change.what()
    ));
    let checker = prebuilt_checker();
    let child = ecds.apply(update, Some(envoy.admin_port), checker.as_deref())?;
    let registered = ChildGuard::register(child.id());
    let mut helper = HelperGuard(Some(child), Some(registered));
    let status = loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(INTERRUPTED.into());
        }
        if change.applied_s.is_none() {
            let (success, _, _) = ecds_counters(envoy);
            if success > success_before {
                change.applied_s = Some(since(Instant::now()));
            }
        }
        let done = helper.0.as_mut().map(|c| c.try_wait());
        match done {
            Some(Ok(Some(status))) => break status,
            Some(Ok(None)) => std::thread::sleep(Duration::from_millis(20)),
            Some(Err(e)) => return Err(format!("{HELPER}: {e}")),
            None => return Err(format!("{HELPER}: lost")),
        }
    };
    change.helper_done_s = since(Instant::now());
    change.helper_ok = status.success();
    change.helper_output = ecds.apply_log(true).trim().to_string();
    let (success, rejected, failure) = ecds_counters(envoy);
    if change.applied_s.is_none() && success > success_before {
        change.applied_s = Some(change.helper_done_s);
    }
    (change.update_success_after, change.update_rejected, change.update_failure) = (success, rejected, failure);
    // The filter logs its new configuration from every VM (main thread and workers).
    let deadline = Instant::now() + Duration::from_secs(2);
    while change.helper_ok && Instant::now() < deadline {
        let lines = accepted_lines(&envoy.log());
        if lines.len() > logged_before {
            change.filter_log = lines.into_iter().nth(logged_before);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if change.accepted() {
        say(&format!(
            "[live] {:5.2} s  Envoy accepted it over ECDS, no restart ({ECDS_PREFIX}update_success {} -> {}); the filter logged: {}",
            change.applied_s.unwrap_or(change.helper_done_s),
            change.update_success_before,
            change.update_success_after,
            change.filter_log.as_deref().unwrap_or("(no log line)")
        ));
    } else {
        say(&format!(
            "[live] {:5.2} s  the update was NOT applied (update_success {} -> {}, rejected {rejected}, failure {failure}):\n{}",
            change.helper_done_s, change.update_success_before, success, change.helper_output
        ));
    }
    Ok(change)
}

/// Runs the live demo and writes its outputs into `o.out_dir`.
pub fn run(o: &Options, cancel: &Arc<AtomicBool>) -> Result<LiveDemo, String> {
    let prepared = prepare(o)?;
    render_initial(&prepared, o.progress, cancel)?;
    let stack = start(o, &prepared.ecds, cancel)?;
    let surge = surge_and_change(o, &stack, &prepared, cancel)?;
    let scraped = scrape(&stack.envoy);
    let run = Run {
        key: "with_filter",
        outcomes: surge.outcomes,
        pool: stack.storefront.db.stats(),
        db_in_use: surge.db_in_use,
        filter_counters: scraped.filter_counters.clone(),
        limit: vec![],
    };
    let envoy_pid = stack.envoy.pid();
    let judged = judge(&prepared.plan, &run, &surge.change, &scraped, envoy_pid);
    let summary = summarise(o, &prepared, &run, &surge.change, &judged, &scraped, envoy_pid);
    let mut demo = LiveDemo {
        plan: prepared.plan,
        pool_size: o.pool_size,
        envoy_pid,
        run,
        change: surge.change,
        before: judged.before,
        after: judged.after,
        connection_errors: judged.connection_errors,
        claims: judged.claims,
        summary,
        table: judged.table,
        written: Vec::new(),
    };
    demo.written = write(o, &demo)?;
    Ok(demo)
}

/// What a run needs before anything starts: the schedule, the two configurations (written into
/// a temporary copy of the ECDS set-up), the change to make.
struct Prepared {
    plan: Plan,
    arrivals: Vec<Arrival>,
    ecds: EcdsDir,
    /// `envoy/storefront.json` as shipped.
    initial: PathBuf,
    /// The same with the changed bucket.
    update: PathBuf,
    /// The change, before it is made.
    change: Change,
}

fn prepare(o: &Options) -> Result<Prepared, String> {
    let plan = demo::plan(o);
    let arrivals = plan.arrivals();
    let initial_json = read(&repo_root().join(INITIAL_CONFIG))?;
    let (update_json, from_rate, from_burst, to_burst) = changed_config(&initial_json, o.live_rate_per_s)?;
    let ecds = EcdsDir::create()?;
    let written = write_outputs(
        ecds.dir.path(),
        &[("storefront.json", initial_json.as_bytes()), ("storefront-live.json", update_json.as_bytes())],
    )?;
    let [initial, update] = <[PathBuf; 2]>::try_from(written).map_err(|_| "live: the configurations went missing")?;
    let change = Change {
        from_rate,
        from_burst,
        to_rate: o.live_rate_per_s,
        to_burst,
        due_s: (plan.surge_start_s() + plan.surge_end_s()) / 2.0,
        ..Change::default()
    };
    Ok(Prepared { plan, arrivals, ecds, initial, update, change })
}

/// Envoy reads the resource at start-up: render it first (this also builds the validator).
fn render_initial(p: &Prepared, progress: bool, cancel: &AtomicBool) -> Result<(), String> {
    if progress {
        eprintln!("[live] {HELPER} {INITIAL_CONFIG} into a temporary copy of envoy/ecds/live/");
    }
    let child = p.ecds.apply(&p.initial, None, None)?;
    let registered = ChildGuard::register(child.id());
    let mut helper = HelperGuard(Some(child), Some(registered));
    let status = loop {
        if cancel.load(Ordering::SeqCst) {
            return Err(INTERRUPTED.into());
        }
        match helper.0.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(s))) => break s,
            Some(Ok(None)) => std::thread::sleep(Duration::from_millis(50)),
            _ => return Err(format!("{HELPER}: lost")),
        }
    };
    drop(helper);
    if !status.success() {
        return Err(format!("{HELPER} {INITIAL_CONFIG} failed:\n{}", p.ecds.apply_log(false)));
    }
    Ok(())
}

/// The storefront, and Envoy in front of it with surgeguard from ECDS, warmed up (both stop on
/// drop).
struct LiveStack {
    storefront: Storefront,
    envoy: Envoy,
    /// Envoy's listener.
    port: u16,
    _registered: ChildGuard,
}

fn start(o: &Options, ecds: &EcdsDir, cancel: &AtomicBool) -> Result<LiveStack, String> {
    let storefront = Storefront::start(&demo::storefront_config(o))?;
    let yaml = bootstrap(&read(&repo_root().join(BOOTSTRAP))?, &ecds.live_dir(), storefront.port)?;
    let envoy_opts = EnvoyOptions {
        concurrency: ENVOY_WORKERS,
        log_level: "warning".into(),
        // The filter's "configuration accepted" line.
        extra_args: vec!["--component-log-level".into(), "wasm:info".into()],
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&yaml, &envoy_opts).map_err(|e| demo::envoy_failed(&format!("live ({BOOTSTRAP})"), &e))?;
    let registered = ChildGuard::register(envoy.pid());
    let port = envoy.listener_port();
    if port == 0 {
        return Err("live: Envoy reported no listener port".into());
    }
    if o.progress {
        eprintln!(
            "[live] Envoy pid {} on 127.0.0.1:{port} in front of the storefront on 127.0.0.1:{}, surgeguard from ECDS ({})",
            envoy.pid(),
            storefront.port,
            ecds.live_dir().join("surgeguard.yaml").display()
        );
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(INTERRUPTED.into());
    }
    demo::warm_up(port).map_err(|e| format!("live: {e}"))?;
    Ok(LiveStack { storefront, envoy, port, _registered: registered })
}

/// The surge, with the change applied halfway through it.
struct Surge {
    outcomes: Vec<Outcome>,
    db_in_use: Vec<u32>,
    change: Change,
}

fn surge_and_change(o: &Options, stack: &LiveStack, p: &Prepared, cancel: &Arc<AtomicBool>) -> Result<Surge, String> {
    let live = Arc::new(Live::default());
    let monitor = Monitor::start(
        Arc::clone(stack.storefront.db.pool()),
        Arc::clone(&live),
        "live: surgeguard over ECDS",
        p.plan.clone(),
        o.progress,
    );
    let change = p.change.clone();
    let (outcomes, change) = std::thread::scope(|s| {
        let updater = s.spawn(|| change_live(&p.ecds, &stack.envoy, &p.update, &live, cancel, change));
        let outcomes = load::run(stack.port, &p.arrivals, CLIENT_TIMEOUT, &live, cancel);
        let change = updater.join().unwrap_or_else(|_| Err("live: the updater panicked".into()));
        (outcomes, change)
    });
    let db_in_use = monitor.finish();
    let outcomes = outcomes.map_err(demo::load_failed)?;
    Ok(Surge { outcomes, db_in_use, change: change? })
}

/// What Envoy says after the load, once the filter has flushed its counters.
struct Scraped {
    /// The same Envoy process still runs (not restarted, not a zombie).
    envoy_alive: bool,
    uptime_s: u64,
    /// Connections Envoy closed with a request active.
    cx_dropped: u64,
    filter_counters: BTreeMap<String, u64>,
}

fn scrape(envoy: &Envoy) -> Scraped {
    std::thread::sleep(FILTER_FLUSH_WAIT);
    let stats = envoy.stats();
    let envoy_alive = std::fs::read_to_string(format!("/proc/{}/stat", envoy.pid()))
        .map(|s| !s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z')))
        .unwrap_or(false);
    Scraped {
        envoy_alive,
        uptime_s: stats.get("server.uptime").copied().unwrap_or(0),
        cx_dropped: stats.get("http.storefront.downstream_cx_destroy_local_active_rq").copied().unwrap_or(0),
        filter_counters: crate::summary::filter_counters(&stats),
    }
}

/// The windows before and after the change, and the claims checked against them.
struct Judged {
    before: Window,
    after: Window,
    connection_errors: u64,
    claims: Vec<Claim>,
    table: String,
}

fn judge(plan: &Plan, run: &Run, change: &Change, scraped: &Scraped, envoy_pid: u32) -> Judged {
    let before = Window::of(&run.outcomes, plan.surge_start_s() + RAMP_S, change.started_s);
    let after_from = change.applied_s.unwrap_or(change.helper_done_s) + SETTLE_S;
    let after = Window::of(&run.outcomes, after_from, plan.surge_end_s().max(after_from));
    let connection_errors = run.outcomes.iter().filter(|o| o.status.is_none()).count() as u64;
    let claims =
        claims(run, change, &before, &after, connection_errors, scraped.cx_dropped, scraped.envoy_alive, envoy_pid);
    let table = table(change, &before, &after);
    Judged { before, after, connection_errors, claims, table }
}

fn summarise(
    o: &Options,
    p: &Prepared,
    run: &Run,
    change: &Change,
    judged: &Judged,
    scraped: &Scraped,
    envoy_pid: u32,
) -> LiveSummary {
    let r2 = |x: f64| (x * 100.0).round() / 100.0;
    let live = ChangeSummary {
        what: change.what(),
        limit: LIMIT,
        from: Bucket { tokens_per_second: change.from_rate, burst: change.from_burst },
        to: Bucket { tokens_per_second: change.to_rate, burst: change.to_burst },
        how: format!("{HELPER} (validate, render, rename into the directory Envoy watches; ECDS)"),
        due_s: r2(change.due_s),
        started_s: r2(change.started_s),
        applied_s: change.applied_s.map(r2),
        helper_done_s: r2(change.helper_done_s),
        accepted: change.accepted(),
        ecds: EcdsCounters {
            update_success_before: change.update_success_before,
            update_success_after: change.update_success_after,
            update_rejected: change.update_rejected,
            update_failure: change.update_failure,
        },
        filter_log: change.filter_log.clone(),
        helper_output: change.helper_output.clone(),
        envoy_pid,
        envoy_restarted: !scraped.envoy_alive,
        envoy_uptime_s: scraped.uptime_s,
        connection_errors: judged.connection_errors,
        failed: run.all().failed,
        downstream_cx_destroy_local_active_rq: scraped.cx_dropped,
        before: judged.before.summary(),
        after: judged.after.summary(),
    };
    LiveSummary {
        mode: "live",
        db_pool_size: o.pool_size,
        runs: BTreeMap::from([(run.key, run.summary(&p.plan))]),
        live,
        load: LoadSummary {
            plan: p.plan.summary(p.arrivals.len()),
            mix: None,
            client_timeout_ms: CLIENT_TIMEOUT.as_millis() as u64,
        },
        database: DatabaseSummary {
            backend: if o.database_url.is_none() { "model" } else { "postgresql" },
            pool_wait_ms: o.pool_wait_ms,
        },
        envoy: LiveEnvoySummary {
            envoy: EnvoySummary { version: demo::envoy_version(), workers: ENVOY_WORKERS, config: BOOTSTRAP.into() },
            plugin_config: INITIAL_CONFIG,
        },
        claims: judged.claims.clone(),
        all_claims_hold: judged.claims.iter().all(|c| c.holds),
    }
}

/// The report's line on how the run was made.
fn settings(d: &LiveDemo) -> String {
    let s = &d.summary;
    format!(
        "One run with surgeguard configured over ECDS: {:.0} s of traffic ({}; {} requests). The first configuration is {INITIAL_CONFIG}; at {:.1} s, halfway through the surge, {HELPER} changed {}. Database tier: {}, a pool of {} connections. Envoy {}, {ENVOY_WORKERS} workers, {BOOTSTRAP} (a temporary copy).",
        d.plan.duration_s,
        d.plan.phases(),
        s.load.plan.offered,
        d.change.due_s,
        d.change.what(),
        if s.database.backend == "model" { "embedded model" } else { "PostgreSQL" },
        d.pool_size,
        s.envoy.envoy.version,
    )
}

/// `summary.json`, `report.html` and `report.svg` into `o.out_dir`.
fn write(o: &Options, d: &LiveDemo) -> Result<Vec<PathBuf>, String> {
    let figure = crate::live_report::LiveFigure {
        plan: &d.plan,
        pool_size: d.pool_size,
        run: &d.run,
        change: &d.change,
        before: &d.before,
        after: &d.after,
    };
    let summary = write_json(&d.summary)?;
    let html = crate::live_report::html(&figure, &d.claims, &settings(d), &d.table);
    let svg = crate::live_report::svg(&figure);
    write_outputs(
        &o.out_dir,
        &[("summary.json", &summary), ("report.html", html.as_bytes()), ("report.svg", svg.as_bytes())],
    )
}

/// A lowered limit must bring the admitted rate down to it (and at least this far below the
/// rate before); a raised one must lift it at least this far.
pub const MIN_CHANGE: f64 = 0.2;
/// A lowered limit: the admitted rate after may exceed the new limit by at most this share
/// (requests scheduled in a second are admitted a few milliseconds later).
pub const OVER_LIMIT_SLACK: f64 = 0.1;

#[allow(clippy::too_many_arguments)]
pub fn claims(
    run: &Run,
    change: &Change,
    before: &Window,
    after: &Window,
    connection_errors: u64,
    cx_dropped: u64,
    envoy_alive: bool,
    envoy_pid: u32,
) -> Vec<Claim> {
    let mut out = Vec::new();
    let mut claim =
        |claim: &str, holds: bool, evidence: String| out.push(Claim { claim: claim.into(), holds, evidence });
    claim(
        "Envoy accepted the change over ECDS, with no restart",
        change.accepted() && envoy_alive,
        format!(
            "update_success {} -> {}, rejected {}, failure {}; applied at {} s; the same Envoy process (pid {envoy_pid}, still running, hot restart disabled) served the whole run",
            change.update_success_before,
            change.update_success_after,
            change.update_rejected,
            change.update_failure,
            change.applied_s.map_or("-".into(), |t| format!("{t:.2}")),
        ),
    );
    let (b, a) = (before.rate(before.all.served), after.rate(after.all.served));
    let holds = if change.lowered() {
        a <= change.to_rate * (1.0 + OVER_LIMIT_SLACK) && a <= b * (1.0 - MIN_CHANGE)
    } else {
        a >= b * (1.0 + MIN_CHANGE)
    };
    claim(
        if change.lowered() {
            "the lowered limit took effect at once: the admitted rate fell to it"
        } else {
            "the raised limit took effect at once: the admitted rate rose"
        },
        after.all.offered > 0 && before.all.offered > 0 && holds,
        format!(
            "served {b:.0}/s before ({:.1}-{:.1} s, limit {}/s), {a:.0}/s after ({:.1}-{:.1} s, limit {}/s); offered {:.0}/s and {:.0}/s",
            before.from_s,
            before.to_s,
            change.from_rate,
            after.from_s,
            after.to_s,
            change.to_rate,
            before.rate(before.all.offered),
            after.rate(after.all.offered),
        ),
    );
    let all = run.all();
    claim(
        "no connection was dropped and no request failed",
        all.failed == 0 && connection_errors == 0 && cx_dropped == 0,
        format!(
            "{} failed of {} requests ({connection_errors} connection errors or timeouts); Envoy closed {cx_dropped} connections with a request active",
            all.failed, all.offered
        ),
    );
    let c = run.kind(Kind::Checkout);
    claim(
        "checkout is served before and after the change (>= 99%)",
        c.offered > 0 && c.share(c.served) >= crate::summary::MIN_CHECKOUT_SERVED,
        format!("{} of {} served", c.served, c.offered),
    );
    out
}

/// Per kind, rates before and after the change.
pub fn table(change: &Change, before: &Window, after: &Window) -> String {
    let mut out = String::new();
    let head = |w: &Window, label: &str, rate: f64| format!("{label}: {:.1}-{:.1} s at {rate}/s", w.from_s, w.to_s);
    let col = 34;
    out.push_str(&format!(
        "{:<10} │ {:^col$} │ {:^col$}\n",
        "",
        head(before, "before", change.from_rate),
        head(after, "after", change.to_rate)
    ));
    let cells = "offered   served  refused   failed";
    out.push_str(&format!("{:<10} │ {cells} │ {cells}\n", "per second"));
    let rule = format!("{}\n", "─".repeat(10 + 2 * (col + 3) + 1));
    out.push_str(&rule);
    let row = |w: &Window, s: &Stats| {
        format!(
            "{:>7.1} {:>8.1} {:>8.1} {:>8.1}",
            w.rate(s.offered),
            w.rate(s.count(Verdict::Served)),
            w.rate(s.refused),
            w.rate(s.failed)
        )
    };
    for (i, kind) in Kind::ALL.iter().enumerate() {
        let (b, a) = (&before.kinds[i].1, &after.kinds[i].1);
        out.push_str(&format!("{:<10} │ {} │ {}\n", kind.name(), row(before, b), row(after, a)));
    }
    out.push_str(&rule);
    out.push_str(&format!("{:<10} │ {} │ {}\n", "all", row(before, &before.all), row(after, &after.all)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_touches_only_the_storefront_bucket() {
        let shipped = std::fs::read_to_string(repo_root().join(INITIAL_CONFIG)).unwrap();
        let (text, rate, burst, new_burst) = changed_config(&shipped, 100.0).unwrap();
        assert_eq!((rate, burst, new_burst), (200.0, 200.0, 100.0));
        let mut a: Value = serde_json::from_str(&shipped).unwrap();
        let b: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(b["limits"][0]["tokens_per_second"], 100);
        assert_eq!(b["limits"][0]["burst"], 100);
        a["limits"][0]["tokens_per_second"] = json!(100);
        a["limits"][0]["burst"] = json!(100);
        assert_eq!(a, b, "nothing else changed");
        assert!(changed_config(&shipped, 200.0).unwrap_err().contains("already"));
        let (text, _, _, burst) = changed_config(&shipped, 12.5).unwrap();
        assert_eq!(burst, 13.0);
        assert!(text.contains("12.5"));
    }

    #[test]
    fn the_bootstrap_watches_its_own_directory() {
        let shipped = std::fs::read_to_string(repo_root().join(BOOTSTRAP)).unwrap();
        let yaml = bootstrap(&shipped, Path::new("/tmp/x/live"), 4321).unwrap();
        assert!(!yaml.contains("envoy/ecds/live"));
        assert!(yaml.contains("path: /tmp/x/live/surgeguard.yaml"));
        assert!(yaml.contains("watched_directory: { path: /tmp/x/live }"));
        assert!(yaml.contains("port_value: 4321") && !yaml.contains("port_value: 10000"));
    }

    #[test]
    fn windows_count_by_scheduled_time() {
        let o = |at_s: f64, status: u16| Outcome {
            label: crate::outcome::Label { kind: Kind::Browse, phase: crate::schedule::Phase::Surge },
            at: Duration::from_micros((at_s * 1e6) as u64),
            sent_at: Duration::from_micros((at_s * 1e6) as u64),
            status: Some(status),
            surgeguard: (status == 429).then(|| "limit=storefront; class=standard".into()),
            latency: Duration::from_millis(1),
        };
        let outcomes = [o(0.5, 200), o(1.0, 200), o(1.5, 429), o(2.9, 200), o(3.0, 200)];
        let w = Window::of(&outcomes, 1.0, 3.0);
        assert_eq!((w.all.offered, w.all.served, w.all.refused), (3, 2, 1));
        assert_eq!(w.rate(w.all.served), 1.0);
    }
}
