//! `--fleet`: the storefront scaled out to [`REPLICAS`] replicas, each behind its own Envoy, all
//! on one database tier (one pool). The same schedule is replayed twice, dealt round-robin over
//! the Envoys as a load balancer would: with per-Envoy limits (every Envoy runs the main demo's
//! configuration, sized for one replica, so together they admit [`REPLICAS`] times what the
//! database was sized for), then with the same limit fleet-wide (`envoy/fleet/`: every Envoy
//! leases its tokens from `surgeguard-rls`, Limitador over a real Redis).
//!
//! [`run`] is its phases: each arm (`start_arm`, the load, each Envoy's stats and log) gives an
//! [`ArmResult`], `claims` checks them, `summarise` gives the [`FleetSummary`] (the main demo's
//! schema: `db_pool_size`, `runs.<run>.db_peak_in_use`, `runs.<run>.traffic.<kind>`; plus what is
//! the fleet's own), `write` the files, with the main demo's table and report.
//!
//! Invariants: both runs replay the identical schedule against a fresh storefront tier and send
//! each request to the same replica; every Envoy, the storefront, Redis and the rate limit
//! service are owned by handles whose drop stops them, so nothing outlives [`run`], also on
//! error, panic or interruption.

use crate::cli::Options;
use crate::demo::{
    database, envoy_failed, envoy_version, load_failed, load_summary, plan, relative, storefront_config, warm_up,
    DemoDatabase, Monitor, CLIENT_TIMEOUT, FILTER_FLUSH_WAIT, INTERRUPTED,
};
use crate::interrupt::ChildGuard;
use crate::load::{self, Live};
use crate::outcome::{Outcome, Verdict};
use crate::report::{self, escape, Figure, Page};
use crate::schedule::{Arrival, Phase, Plan};
use crate::storefront::{Storefront, StorefrontConfig};
use crate::summary::{self, round1, Claim, LoadSummary, Run, RunSummary, Side};
use crate::table;
use crate::traffic::Kind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use surgeguard_harness::envoy::{Envoy, FilterBlock, Localise, Options as EnvoyOptions};
use surgeguard_harness::output::{write_json, write_outputs};
use surgeguard_harness::rls::{Counters, RateLimitService, Redis};

/// Storefront replicas, and so Envoys.
pub const REPLICAS: usize = 3;
/// Workers per Envoy: three Envoys share the 2 cores of a small machine with the load, the
/// storefront and the rate limit service.
pub const FLEET_ENVOY_WORKERS: u32 = 1;
/// The fleet run's bootstrap, its plugin configuration alone, and the service's limits.
pub const FLEET_CONFIG: &str = "envoy/fleet/envoy.yaml";
pub const FLEET_PLUGIN_CONFIG: &str = "envoy/fleet/storefront.json";
pub const FLEET_LIMITS: &str = "envoy/fleet/limitador-limits.yaml";
/// The rate limit service's port in the shipped bootstrap, pointed at the one started here.
const SHIPPED_RLS_PORT: &str = "port_value: 8081";
/// The lines the filter logs when a fleet limit changes mode (src/host/lease_calls.rs).
const TO_LOCAL_LOG: &str = "local fallback mode:";
const TO_FLEET_LOG: &str = ": fleet mode:";

/// Fleet-wide limits: what the Envoys together admit during the surge may exceed the fleet
/// limit's rate by at most its burst (the bucket starts full) plus this share.
pub const FLEET_LIMIT_SLACK: f64 = 0.1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    PerEnvoy,
    Fleet,
}

impl Arm {
    fn key(self) -> &'static str {
        match self {
            Arm::PerEnvoy => "per_envoy",
            Arm::Fleet => "fleet",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Arm::PerEnvoy => "1/2 per-Envoy limits",
            Arm::Fleet => "2/2 fleet-wide limits",
        }
    }
}

/// The fleet limit of `envoy/fleet/storefront.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetLimit {
    pub name: String,
    pub tokens_per_second: f64,
    pub burst: f64,
    /// Each Envoy's share of the limit while the service is unreachable.
    pub local_share: f64,
}

impl FleetLimit {
    /// The first limit with a `fleet` object in a plugin configuration.
    pub fn from_plugin_config(json: &str) -> Result<FleetLimit, String> {
        let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("{FLEET_PLUGIN_CONFIG}: {e}"))?;
        let limit = v["limits"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l.get("fleet").is_some()))
            .ok_or_else(|| format!("{FLEET_PLUGIN_CONFIG}: no limit with a `fleet` object"))?;
        let num = |x: &serde_json::Value, what: &str| {
            x.as_f64().ok_or_else(|| format!("{FLEET_PLUGIN_CONFIG}: the fleet limit has no numeric {what}"))
        };
        Ok(FleetLimit {
            name: limit["name"].as_str().unwrap_or_default().to_string(),
            tokens_per_second: num(&limit["tokens_per_second"], "tokens_per_second")?,
            burst: num(&limit["burst"], "burst")?,
            local_share: num(&limit["fleet"]["local_share"], "fleet.local_share")?,
        })
    }

    /// The most the fleet may admit in `seconds` (a full bucket, then its rate).
    pub fn allowance(&self, seconds: f64) -> f64 {
        self.burst + self.tokens_per_second * seconds
    }
}

/// What one Envoy of a run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnvoyShare {
    /// Requests the load balancer sent it.
    pub requests: u64,
    /// Of those, not refused by its filter.
    pub admitted: u64,
    pub refused: u64,
    /// Its fleet limit's lease calls by outcome (all 0 without a fleet limit).
    pub lease_calls: u64,
    pub lease_grants: u64,
    pub lease_denials: u64,
    pub lease_failures: u64,
    /// `surgeguard.limit.<limit>.fleet_mode` at the end: 1 fleet, 0 local fallback; `None`
    /// without a fleet limit.
    pub fleet_mode_at_end: Option<u64>,
    /// Mode switches its filter logged: to local fallback, and to fleet mode (the first answer
    /// of the service is one).
    pub switches_to_local: u64,
    pub switches_to_fleet: u64,
}

/// One arm, measured: the run (over all Envoys) and each Envoy's share.
#[derive(Debug, Clone)]
pub struct ArmResult {
    pub run: Run,
    pub envoys: Vec<EnvoyShare>,
    /// The bootstrap every Envoy ran, relative to the repository.
    pub config: String,
}

impl ArmResult {
    /// Requests not refused by the filters (served or failed), per second of `phase`.
    pub fn admitted_per_s(&self, plan: &Plan, phase: Phase) -> f64 {
        let (from, to) = plan.phase_bounds_s(phase);
        let admitted =
            self.run.outcomes.iter().filter(|o| o.label.phase == phase && o.verdict() != Verdict::Refused).count();
        if to > from {
            admitted as f64 / (to - from)
        } else {
            0.0
        }
    }

    /// The fleet's lease calls (0 without a fleet limit) and its mode switches.
    pub fn leases(&self) -> LeaseSummary {
        let sum = |f: fn(&EnvoyShare) -> u64| self.envoys.iter().map(f).sum::<u64>();
        let admitted = sum(|e| e.admitted);
        let calls = sum(|e| e.lease_calls);
        LeaseSummary {
            calls,
            grants: sum(|e| e.lease_grants),
            denials: sum(|e| e.lease_denials),
            failures: sum(|e| e.lease_failures),
            calls_per_admitted: if admitted == 0 { 0.0 } else { round4(calls as f64 / admitted as f64) },
            switches_to_local: sum(|e| e.switches_to_local),
            switches_to_fleet: sum(|e| e.switches_to_fleet),
            envoys_in_fleet_mode_at_end: self.envoys.iter().filter(|e| e.fleet_mode_at_end == Some(1)).count(),
        }
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The fleet's lease calls and mode switches over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseSummary {
    pub calls: u64,
    pub grants: u64,
    pub denials: u64,
    pub failures: u64,
    /// Lease calls per request the fleet admitted: what the service's load is per request.
    pub calls_per_admitted: f64,
    pub switches_to_local: u64,
    pub switches_to_fleet: u64,
    pub envoys_in_fleet_mode_at_end: usize,
}

/// Everything a finished fleet demo measured.
pub struct FleetDemo {
    pub plan: Plan,
    pub pool_size: u32,
    pub limit: FleetLimit,
    pub per_envoy: ArmResult,
    pub fleet: ArmResult,
    pub claims: Vec<Claim>,
    pub summary: FleetSummary,
    /// The side-by-side table and the fleet's lines under it.
    pub table: String,
    pub markdown_table: String,
    pub written: Vec<PathBuf>,
}

/// One arm's processes, running; each stops on drop, the Envoys first.
struct ArmStack {
    envoys: Vec<Envoy>,
    /// Each Envoy's listener, in replica order.
    ports: Vec<u16>,
    storefront: Storefront,
    /// The fleet run's rate limit service and its Redis (stopped after the Envoys).
    _service: Option<(RateLimitService, Redis)>,
    _registered: Vec<ChildGuard>,
}

fn read(path: &str) -> Result<String, String> {
    let p = surgeguard_harness::repo_root().join(path);
    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Redis and the rate limit service with the shipped limits.
fn start_service(progress: bool) -> Result<(RateLimitService, Redis), String> {
    let limits = read(FLEET_LIMITS)?;
    let redis = Redis::start()?;
    let service = RateLimitService::start(Counters::Redis(&redis), &limits)?;
    if progress {
        eprintln!(
            "[{}] Redis pid {} on 127.0.0.1:{}; surgeguard-rls pid {} on 127.0.0.1:{} ({FLEET_LIMITS})",
            Arm::Fleet.label(),
            redis.pid().unwrap_or(0),
            redis.port(),
            service.pid(),
            service.port()
        );
    }
    Ok((service, redis))
}

/// A fresh storefront tier of [`REPLICAS`] replicas on one pool, an Envoy in front of each
/// (started side by side), the service for the fleet run; warmed up.
fn start_arm(o: &Options, arm: Arm, cancel: &AtomicBool) -> Result<ArmStack, String> {
    let storefront = Storefront::start(&StorefrontConfig { replicas: REPLICAS, ..storefront_config(o) })?;
    let mut registered = Vec::new();
    let service = match arm {
        Arm::PerEnvoy => None,
        Arm::Fleet => {
            let (service, redis) = start_service(o.progress)?;
            registered.push(ChildGuard::register(service.pid()));
            registered.extend(redis.pid().map(ChildGuard::register));
            Some((service, redis))
        }
    };
    let config = bootstrap(o, arm);
    let yamls = storefront
        .replica_ports
        .iter()
        .map(|port| {
            let mut localise = Localise { filter: FilterBlock::Marked, ..Localise::local(*port) };
            if let Some((service, _)) = &service {
                localise.replacements.push((SHIPPED_RLS_PORT.into(), format!("port_value: {}", service.port())));
            }
            localise.load(&config)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let envoy_opts = EnvoyOptions {
        concurrency: FLEET_ENVOY_WORKERS,
        log_level: "warning".into(),
        // The filter's mode switches are logged at info.
        extra_args: vec!["--component-log-level".into(), "wasm:info".into()],
        ..EnvoyOptions::default()
    };
    let started: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = yamls.iter().map(|y| scope.spawn(|| Envoy::start(y, &envoy_opts))).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut envoys = Vec::with_capacity(REPLICAS);
    let mut first_error = None;
    for (i, s) in started.into_iter().enumerate() {
        match s {
            Ok(Ok(envoy)) => {
                registered.push(ChildGuard::register(envoy.pid()));
                envoys.push(envoy);
            }
            Ok(Err(e)) => {
                let context = format!("{} Envoy {} ({})", arm.key(), i + 1, relative(&config));
                first_error.get_or_insert(envoy_failed(&context, &e));
            }
            Err(_) => {
                first_error.get_or_insert(format!("{}: starting Envoy {} panicked", arm.key(), i + 1));
            }
        }
    }
    let ports: Vec<u16> = envoys.iter().map(Envoy::listener_port).collect();
    let stack = ArmStack { envoys, ports, storefront, _service: service, _registered: registered };
    if let Some(e) = first_error {
        return Err(e);
    }
    if o.progress {
        let pids: Vec<String> = stack.envoys.iter().map(|e| e.pid().to_string()).collect();
        let ports: Vec<String> = stack.ports.iter().map(u16::to_string).collect();
        let replicas: Vec<String> = stack.storefront.replica_ports.iter().map(u16::to_string).collect();
        eprintln!(
            "[{}] {REPLICAS} Envoys (pids {}) on 127.0.0.1:{{{}}} in front of storefront replicas on 127.0.0.1:{{{}}}, one database pool",
            arm.label(),
            pids.join(", "),
            ports.join(", "),
            replicas.join(", ")
        );
    }
    if cancel.load(Ordering::SeqCst) {
        return Err(INTERRUPTED.into());
    }
    for (i, port) in stack.ports.iter().enumerate() {
        if *port == 0 {
            return Err(format!("{}: Envoy {} reported no listener port", arm.key(), i + 1));
        }
        warm_up(*port).map_err(|e| format!("{} Envoy {}: {e}", arm.key(), i + 1))?;
    }
    Ok(stack)
}

fn bootstrap(o: &Options, arm: Arm) -> PathBuf {
    match arm {
        Arm::PerEnvoy => o.envoy_config.clone(),
        Arm::Fleet => surgeguard_harness::repo_root().join(FLEET_CONFIG),
    }
}

fn run_arm(
    o: &Options,
    arm: Arm,
    plan: &Plan,
    arrivals: &[Arrival],
    limit: &str,
    cancel: &Arc<AtomicBool>,
) -> Result<ArmResult, String> {
    let stack = start_arm(o, arm, cancel)?;
    let live = Arc::new(Live::default());
    let monitor = Monitor::start(
        Arc::clone(stack.storefront.db.pool()),
        Arc::clone(&live),
        arm.label(),
        plan.clone(),
        o.progress,
    );
    let outcomes = load::run_spread(&stack.ports, arrivals, CLIENT_TIMEOUT, &live, cancel);
    let db_in_use = monitor.finish();
    let outcomes = outcomes.map_err(load_failed)?;
    // The filters hand their counters to Envoy on their tick: one more after the last request.
    std::thread::sleep(FILTER_FLUSH_WAIT);
    let mut envoys: Vec<EnvoyShare> = stack.envoys.iter().map(|e| envoy_share(e, limit)).collect();
    let mut filter_counters = BTreeMap::new();
    for e in &stack.envoys {
        for (k, v) in summary::filter_counters(&e.stats()) {
            *filter_counters.entry(k).or_insert(0) += v;
        }
    }
    for (i, o) in &outcomes {
        if let Some(share) = envoys.get_mut(*i) {
            share.requests += 1;
            match o.verdict() {
                Verdict::Refused => share.refused += 1,
                Verdict::Served | Verdict::Failed => share.admitted += 1,
            }
        }
    }
    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    let run =
        Run { key: arm.key(), outcomes, pool: stack.storefront.db.stats(), db_in_use, filter_counters, limit: vec![] };
    Ok(ArmResult { run, envoys, config: relative(&bootstrap(o, arm)) })
}

/// One Envoy's lease counters, mode gauge and logged mode switches.
fn envoy_share(envoy: &Envoy, limit: &str) -> EnvoyShare {
    let stat = |what: &str| envoy.metric(&format!("surgeguard.limit.{limit}.{what}"));
    let stats = envoy.stats();
    let mode = format!("surgeguard.limit.{limit}.fleet_mode");
    let log = envoy.log();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count() as u64;
    EnvoyShare {
        lease_calls: stat("lease_calls"),
        lease_grants: stat("lease_grants"),
        lease_denials: stat("lease_denials"),
        lease_failures: stat("lease_failures"),
        fleet_mode_at_end: stats.get(&format!("wasmcustom.{mode}")).or_else(|| stats.get(&mode)).copied(),
        switches_to_local: count(TO_LOCAL_LOG),
        switches_to_fleet: count(TO_FLEET_LOG),
        ..EnvoyShare::default()
    }
}

/// Runs both arms and writes the outputs into `o.out_dir` (`dist/demo/fleet` by default).
pub fn run(o: &Options, cancel: &Arc<AtomicBool>) -> Result<FleetDemo, String> {
    let limit = FleetLimit::from_plugin_config(&read(FLEET_PLUGIN_CONFIG)?)?;
    let plan = plan(o);
    let arrivals = plan.arrivals();
    let per_envoy = run_arm(o, Arm::PerEnvoy, &plan, &arrivals, &limit.name, cancel)?;
    let fleet = run_arm(o, Arm::Fleet, &plan, &arrivals, &limit.name, cancel)?;
    let claims = claims(&plan, o.pool_size, &limit, &per_envoy, &fleet);
    let summary = summarise(o, &plan, arrivals.len(), &limit, &per_envoy, &fleet, &claims);
    let sides = sides(&per_envoy.run, &fleet.run);
    let table =
        format!("{}{}", table::text(o.pool_size, sides[0], sides[1]), fleet_lines(&plan, &limit, &per_envoy, &fleet));
    let markdown_table = table::markdown(o.pool_size, sides[0], sides[1]);
    let mut d = FleetDemo {
        plan,
        pool_size: o.pool_size,
        limit,
        per_envoy,
        fleet,
        claims,
        summary,
        table,
        markdown_table,
        written: Vec::new(),
    };
    d.written = write(o, &d)?;
    Ok(d)
}

fn sides<'a>(per_envoy: &'a Run, fleet: &'a Run) -> [Side<'a>; 2] {
    [
        Side { label: "per-Envoy limits", short: "per-Envoy", run: per_envoy },
        Side { label: "fleet-wide limits", short: "fleet", run: fleet },
    ]
}

/// Under the table: what the fleet admitted against its limit, and what the leases cost.
fn fleet_lines(plan: &Plan, limit: &FleetLimit, per_envoy: &ArmResult, fleet: &ArmResult) -> String {
    let l = fleet.leases();
    format!(
        "admitted per second in the surge ({REPLICAS} Envoys together; the {} limit is {:.0}/s): per-Envoy {:.0}, fleet {:.0}\n\
         fleet leases: {} calls ({} granted, {} denied, {} failed), {:.3} per admitted request; \
         mode switches: {} to fleet, {} to local fallback; {} of {REPLICAS} Envoys in fleet mode at the end\n",
        limit.name,
        limit.tokens_per_second,
        per_envoy.admitted_per_s(plan, Phase::Surge),
        fleet.admitted_per_s(plan, Phase::Surge),
        l.calls,
        l.grants,
        l.denials,
        l.failures,
        l.calls_per_admitted,
        l.switches_to_fleet,
        l.switches_to_local,
        l.envoys_in_fleet_mode_at_end,
    )
}

/// A filter counter summed over the run's Envoys (0 if absent).
fn counter(run: &Run, name: &str) -> u64 {
    run.filter_counters.get(name).copied().unwrap_or(0)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// What the fleet demo must show, from the measured numbers.
pub fn claims(plan: &Plan, pool_size: u32, limit: &FleetLimit, per_envoy: &ArmResult, fleet: &ArmResult) -> Vec<Claim> {
    let mut out = Vec::new();
    let mut claim =
        |claim: &str, holds: bool, evidence: String| out.push(Claim { claim: claim.into(), holds, evidence });
    let (surge_from, surge_to) = plan.phase_bounds_s(Phase::Surge);
    let surge_s = surge_to - surge_from;
    let rate = limit.tokens_per_second;

    let p = per_envoy.admitted_per_s(plan, Phase::Surge);
    let bucket_refusals = counter(&per_envoy.run, &format!("surgeguard.limit.{}.rate_limited", limit.name));
    let offered_each = per_envoy.run.outcomes.iter().filter(|o| o.label.phase == Phase::Surge).count() as f64
        / surge_s
        / REPLICAS as f64;
    claim(
        "per-Envoy limits let the surge through: no Envoy's storefront bucket refuses",
        bucket_refusals == 0,
        format!(
            "{bucket_refusals} requests refused by the {REPLICAS} buckets of {rate:.0}/s: each Envoy got {offered_each:.0}/s of the surge; together they admitted {p:.0}/s, {:.2}x the limit sized for the database (only their in-flight limits, {} in flight in all, shed anything)",
            p / rate,
            counter(&per_envoy.run, "surgeguard.max_in_flight"),
        ),
    );
    let db = &per_envoy.run.pool;
    claim(
        "per-Envoy limits: the database tier saturates",
        db.peak_in_use >= pool_size,
        format!(
            "peak connections in use {}/{pool_size}; {} requests timed out waiting for one",
            db.peak_in_use, db.wait_timeouts
        ),
    );
    let db = &fleet.run.pool;
    claim(
        "fleet-wide limits: the database tier holds: no request waits out the pool",
        db.peak_in_use <= pool_size && db.wait_timeouts == 0,
        format!(
            "peak connections in use {}/{pool_size}, at most {} requests waiting for one; {} timed out waiting",
            db.peak_in_use, db.peak_waiting, db.wait_timeouts
        ),
    );
    let c = fleet.run.kind(Kind::Checkout);
    claim(
        "fleet-wide limits: checkout is served (>= 99%)",
        c.offered > 0 && c.share(c.served) >= summary::MIN_CHECKOUT_SERVED,
        format!("{} of {} served ({})", c.served, c.offered, pct(c.share(c.served))),
    );
    let admitted = fleet.admitted_per_s(plan, Phase::Surge) * surge_s;
    let allowance = limit.allowance(surge_s);
    claim(
        "fleet-wide limits: the Envoys together admit the limit once, not once each",
        admitted <= allowance * (1.0 + FLEET_LIMIT_SLACK),
        format!(
            "{admitted:.0} requests admitted in the {surge_s:.0} s surge ({:.0}/s, {} of the limit's rate); the limit allows {allowance:.0} ({rate:.0}/s and a burst of {:.0})",
            admitted / surge_s,
            pct(admitted / surge_s / rate),
            limit.burst
        ),
    );
    let l = fleet.leases();
    claim(
        "fleet-wide limits: every Envoy spent tokens leased from the rate limit service",
        l.envoys_in_fleet_mode_at_end == REPLICAS && fleet.envoys.iter().all(|e| e.lease_grants > 0),
        format!(
            "{} lease calls ({} failed), {:.3} per admitted request; {} of {REPLICAS} Envoys in fleet mode at the end, {} switches to local fallback",
            l.calls, l.failures, l.calls_per_admitted, l.envoys_in_fleet_mode_at_end, l.switches_to_local
        ),
    );
    out
}

/// `summary.json` of the fleet demo: the main demo's schema (`db_pool_size`, `runs`), the
/// fleet's own fields beside it.
#[derive(Debug, Clone, Serialize)]
pub struct FleetSummary {
    pub mode: &'static str,
    pub db_pool_size: u32,
    /// By run key: `per_envoy`, `fleet`.
    pub runs: BTreeMap<&'static str, FleetRunSummary>,
    pub fleet: FleetSettings,
    pub load: LoadSummary,
    pub database: DemoDatabase,
    pub envoy: FleetEnvoySummary,
    pub claims: Vec<Claim>,
    pub all_claims_hold: bool,
}

/// One run: the main demo's run summary (its `filter_counters` summed over the Envoys, gauges
/// included: `surgeguard.max_in_flight` is then the fleet's), plus the fleet's own figures.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRunSummary {
    #[serde(flatten)]
    pub run: RunSummary,
    /// The bootstrap every Envoy ran.
    pub config: String,
    /// Requests the Envoys together admitted (served or failed), per second of each phase.
    pub admitted_per_s: BTreeMap<&'static str, f64>,
    pub leases: LeaseSummary,
    /// Each Envoy, in replica order.
    pub envoys: Vec<EnvoyShare>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetSettings {
    pub replicas: usize,
    /// How the load was spread over the Envoys.
    pub balancing: &'static str,
    pub limit: FleetLimit,
    pub plugin_config: &'static str,
    pub rate_limit_service: RateLimitServiceSummary,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimitServiceSummary {
    pub service: &'static str,
    pub counters: &'static str,
    pub limits: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetEnvoySummary {
    pub version: String,
    /// Workers per Envoy.
    pub workers: u32,
    pub count: usize,
}

fn summarise(
    o: &Options,
    plan: &Plan,
    offered: usize,
    limit: &FleetLimit,
    per_envoy: &ArmResult,
    fleet: &ArmResult,
    claims: &[Claim],
) -> FleetSummary {
    let run = |a: &ArmResult| FleetRunSummary {
        run: a.run.summary(plan),
        config: a.config.clone(),
        admitted_per_s: Phase::ALL.iter().map(|p| (p.name(), round1(a.admitted_per_s(plan, *p)))).collect(),
        leases: a.leases(),
        envoys: a.envoys.clone(),
    };
    FleetSummary {
        mode: "fleet",
        db_pool_size: o.pool_size,
        runs: [per_envoy, fleet].into_iter().map(|a| (a.run.key, run(a))).collect(),
        fleet: FleetSettings {
            replicas: REPLICAS,
            balancing: "round robin: request n to Envoy n mod replicas",
            limit: limit.clone(),
            plugin_config: FLEET_PLUGIN_CONFIG,
            rate_limit_service: RateLimitServiceSummary {
                service: "surgeguard-rls (Envoy's ShouldRateLimit over Limitador)",
                counters: "redis",
                limits: FLEET_LIMITS,
            },
        },
        load: load_summary(plan, offered),
        database: database(o),
        envoy: FleetEnvoySummary { version: envoy_version(), workers: FLEET_ENVOY_WORKERS, count: REPLICAS },
        claims: claims.to_vec(),
        all_claims_hold: claims.iter().all(|c| c.holds),
    }
}

/// The report's line on how the runs were made.
fn settings(d: &FleetDemo) -> String {
    let s = &d.summary;
    let backend = if s.database.tier.backend == "model" { "embedded model" } else { "PostgreSQL" };
    format!(
        "{:.0} s per run: {}; {} requests per run, the same in both, dealt round robin over {REPLICAS} Envoys (Envoy {}, {FLEET_ENVOY_WORKERS} worker each), each in front of its own storefront replica. One database tier: {backend}, a pool of {} connections, pool-wait timeout {} ms. Per-Envoy limits: {} on every Envoy. Fleet-wide limits: {FLEET_CONFIG} on every Envoy, leasing from surgeguard-rls over Redis ({FLEET_LIMITS}).",
        d.plan.duration_s,
        d.plan.phases(),
        s.load.plan.offered,
        s.envoy.version,
        d.pool_size,
        s.database.tier.pool_wait_ms,
        d.per_envoy.config,
    )
}

/// The report's own section: per Envoy, what it got, admitted and leased, in both runs.
fn fleet_html(d: &FleetDemo) -> String {
    let mut h = String::from("<h2>The fleet</h2>\n");
    let _ = writeln!(
        h,
        "<p>Admitted per second during the surge, {REPLICAS} Envoys together (the <code>{}</code> limit: {:.0}/s, burst {:.0}): per-Envoy limits <b>{:.0}</b>, fleet-wide limits <b>{:.0}</b>.</p>",
        escape(&d.limit.name),
        d.limit.tokens_per_second,
        d.limit.burst,
        d.per_envoy.admitted_per_s(&d.plan, Phase::Surge),
        d.fleet.admitted_per_s(&d.plan, Phase::Surge),
    );
    h.push_str("<table>\n<tr><th>run</th><th>Envoy</th><th>requests</th><th>admitted</th><th>refused</th><th class=\"sep\">lease calls</th><th>granted</th><th>denied</th><th>failed</th><th>switches to local</th><th>mode at end</th></tr>\n");
    // A non-breaking hyphen: the run column stays one word wide.
    for (label, arm) in [("per&#8209;Envoy", &d.per_envoy), ("fleet", &d.fleet)] {
        for (i, e) in arm.envoys.iter().enumerate() {
            let mode = match e.fleet_mode_at_end {
                Some(1) => "fleet",
                Some(_) => "local fallback",
                None => "-",
            };
            let _ = writeln!(
                h,
                r#"<tr><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="sep">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{mode}</td></tr>"#,
                i + 1,
                e.requests,
                e.admitted,
                e.refused,
                e.lease_calls,
                e.lease_grants,
                e.lease_denials,
                e.lease_failures,
                e.switches_to_local,
            );
        }
    }
    let l = d.fleet.leases();
    let _ = writeln!(
        h,
        "</table>\n<p>With fleet-wide limits each Envoy leases blocks of tokens from the rate limit service and spends them locally, so a request never waits on it: {} lease calls for the whole run, {:.3} per admitted request.</p>",
        l.calls, l.calls_per_admitted
    );
    let _ = writeln!(
        h,
        "<p>The service counts in fixed windows (<code>{FLEET_LIMITS}</code>) and the reserves are kept per window: a class stops once fewer than its reserve's share of the window's tokens are left, until the next window. Under the surge the fleet admitted {} of the limit's rate, and spent each window's tokens at the surge's rate as the window opened: the database panel shows it as one peak of connections in use per window.</p>",
        pct(d.fleet.admitted_per_s(&d.plan, Phase::Surge) / d.limit.tokens_per_second)
    );
    h
}

/// `summary.json`, `report.html`, `report.svg` and `table.md` into `o.out_dir`.
fn write(o: &Options, d: &FleetDemo) -> Result<Vec<PathBuf>, String> {
    let figure = Figure {
        title: report::surge_title(&d.plan, &format!("over {REPLICAS} Envoys with per-Envoy and fleet-wide limits")),
        plan: &d.plan,
        pool_size: d.pool_size,
        knee: d.summary.database.full_speed_queries,
        runs: sides(&d.per_envoy.run, &d.fleet.run),
        incident: None,
    };
    let summary = write_json(&d.summary)?;
    let extra = fleet_html(d);
    let page = Page {
        heading: "surgeguard demo: the storefront scaled out to 3 replicas, per-Envoy and fleet-wide limits",
        settings: &settings(d),
        extra_html: &extra,
    };
    let html = report::html(&figure, &d.claims, &page);
    let svg = report::svg(&figure);
    write_outputs(
        &o.out_dir,
        &[
            ("summary.json", &summary),
            ("report.html", html.as_bytes()),
            ("report.svg", svg.as_bytes()),
            ("table.md", d.markdown_table.as_bytes()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Label;
    use crate::pool::PoolStats;
    use crate::traffic::Mix;
    use std::time::Duration;

    fn shipped(path: &str) -> serde_json::Value {
        serde_json::from_str(&read(path).unwrap()).unwrap()
    }

    #[test]
    fn the_fleet_limit_is_read_from_the_shipped_plugin_config() {
        let limit = FleetLimit::from_plugin_config(&read(FLEET_PLUGIN_CONFIG).unwrap()).unwrap();
        assert_eq!(limit.name, "storefront");
        assert_eq!((limit.tokens_per_second, limit.burst, limit.local_share), (200.0, 200.0, 0.34));
        assert_eq!(limit.allowance(12.0), 2600.0);
        assert!(FleetLimit::from_plugin_config(r#"{"limits": [{"name": "x"}]}"#).is_err());
    }

    #[test]
    fn the_two_runs_differ_only_by_the_limits_fleet_object() {
        let mut fleet = shipped(FLEET_PLUGIN_CONFIG);
        if let Some(limits) = fleet["limits"].as_array_mut() {
            limits.iter_mut().for_each(|l| _ = l.as_object_mut().map(|o| o.remove("fleet")));
        }
        assert_eq!(fleet, shipped("envoy/storefront.json"));
    }

    fn plan() -> Plan {
        Plan { duration_s: 12.0, surge: 5.0, calm_rate_per_s: 60.0, mix: Mix::default(), seed: 1 }
    }

    fn limit() -> FleetLimit {
        FleetLimit { name: "storefront".into(), tokens_per_second: 200.0, burst: 200.0, local_share: 0.34 }
    }

    /// `n` requests of `kind` in the surge (3 s to 9 s of the plan), with `status`.
    fn surge(kind: Kind, n: u64, status: u16) -> Vec<Outcome> {
        (0..n)
            .map(|i| Outcome {
                label: Label { kind, phase: Phase::Surge },
                at: Duration::from_millis(3000 + i % 6000),
                sent_at: Duration::from_millis(3000 + i % 6000),
                status: Some(status),
                surgeguard: (status == 429).then(|| "limit=storefront; class=standard".to_string()),
                latency: Duration::from_millis(50),
            })
            .collect()
    }

    fn arm(
        key: &'static str,
        outcomes: Vec<Outcome>,
        peak: u32,
        counters: &[(&str, u64)],
        envoys: Vec<EnvoyShare>,
    ) -> ArmResult {
        let pool = PoolStats {
            size: 40,
            in_use: 0,
            peak_in_use: peak,
            waiting: 0,
            peak_waiting: 0,
            leases: 0,
            wait_timeouts: 0,
        };
        let filter_counters = counters.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        ArmResult {
            run: Run { key, outcomes, pool, db_in_use: vec![], filter_counters, limit: vec![] },
            envoys,
            config: String::new(),
        }
    }

    fn leasing() -> EnvoyShare {
        EnvoyShare {
            lease_calls: 20,
            lease_grants: 18,
            fleet_mode_at_end: Some(1),
            switches_to_fleet: 1,
            ..EnvoyShare::default()
        }
    }

    /// Per-Envoy: 1500 admitted in the 6 s surge (250/s), the pool saturated, no bucket refusal.
    fn per_envoy() -> ArmResult {
        let mut o = surge(Kind::Browse, 1400, 200);
        o.extend(surge(Kind::Checkout, 100, 200));
        arm("per_envoy", o, 40, &[("surgeguard.max_in_flight", 72)], vec![EnvoyShare::default(); 3])
    }

    /// Fleet: 1000 admitted in the surge (167/s), 800 refused, the pool well under its size.
    fn fleet() -> ArmResult {
        let mut o = surge(Kind::Browse, 900, 200);
        o.extend(surge(Kind::Checkout, 100, 200));
        o.extend(surge(Kind::Bot, 800, 429));
        arm("fleet", o, 25, &[], vec![leasing(); 3])
    }

    #[test]
    fn the_claims_hold_when_per_envoy_limits_let_the_surge_through_and_fleet_limits_hold() {
        let c = claims(&plan(), 40, &limit(), &per_envoy(), &fleet());
        assert!(c.iter().all(|c| c.holds), "{c:#?}");
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn each_claim_fails_when_its_numbers_do_not_show_it() {
        let holds = |p: &ArmResult, f: &ArmResult, i: usize| claims(&plan(), 40, &limit(), p, f)[i].holds;
        let mut refusing = per_envoy();
        refusing.run.filter_counters.insert("surgeguard.limit.storefront.rate_limited".into(), 3);
        assert!(!holds(&refusing, &fleet(), 0));
        let mut calm = per_envoy();
        calm.run.pool.peak_in_use = 39;
        assert!(!holds(&calm, &fleet(), 1));
        let mut full = fleet();
        full.run.pool.peak_in_use = 40;
        assert!(holds(&per_envoy(), &full, 2), "a full pool that nobody waited out holds");
        let mut waited = fleet();
        waited.run.pool.wait_timeouts = 1;
        assert!(!holds(&per_envoy(), &waited, 2));
        let mut lost = fleet();
        lost.run.outcomes.extend(surge(Kind::Checkout, 2, 500));
        assert!(!holds(&per_envoy(), &lost, 3), "100 of 102 is under 99%");
        let mut over = fleet();
        over.run.outcomes.extend(surge(Kind::Browse, 700, 200));
        assert!(!holds(&per_envoy(), &over, 4), "1700 admitted in 6 s is over 200/s and a burst of 200");
        let mut local = fleet();
        local.envoys[1].fleet_mode_at_end = Some(0);
        assert!(!holds(&per_envoy(), &local, 5));
        let mut never_leased = fleet();
        never_leased.envoys[2].lease_grants = 0;
        assert!(!holds(&per_envoy(), &never_leased, 5));
    }

    #[test]
    fn lease_figures_add_up_over_the_envoys() {
        let mut f = fleet();
        for e in &mut f.envoys {
            e.admitted = 100;
        }
        f.envoys[0].switches_to_local = 2;
        let l = f.leases();
        assert_eq!((l.calls, l.grants, l.switches_to_local, l.envoys_in_fleet_mode_at_end), (60, 54, 2, 3));
        assert_eq!(l.calls_per_admitted, 0.2);
        assert_eq!(f.admitted_per_s(&plan(), Phase::Surge), 1000.0 / 6.0);
        assert_eq!(f.admitted_per_s(&plan(), Phase::Calm), 0.0);
    }
}
