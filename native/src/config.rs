//! One filter configuration: compiled from the JSON Envoy passes to
//! `on_http_filter_config_new` (refused whole, each problem logged as the wasm build and
//! `surgeguard-check` report it), with its metrics, its hold on the store, and, with an
//! in-flight limit, the tick that keeps the process's in-flight entry alive and runs the
//! adaptive limit's control windows.
//!
//! Fleet limits lease their tokens from the main thread (`fleet`): the tick thread wakes it
//! through the configuration's scheduler.
//!
//! The process is one instance of the in-flight table (`record`): every worker shares this
//! memory, and a crash takes all of them, so no entry can outlive its streams. The heartbeat
//! still runs (the record drops an entry not refreshed for `record::LEASE_NS`, e.g. while a
//! few long requests are all that is in flight). The tick runs on a thread of its own: it
//! touches the store, and Envoy only through its thread-safe metric and log callbacks; it stops
//! when the configuration goes. With an adaptive limit, every worker adds its samples to one
//! window in this process's memory, which the tick hands to the core's shared window as the
//! wasm build's workers do theirs.

use crate::envoy::{log, now_ns, ConfigPtr};
use crate::fleet::LeaseCalls;
use crate::metrics::Metrics;
use crate::store::{Lease, STORE};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use surgeguard::adaptive::WindowStats;
use surgeguard::decision::Admission;
use surgeguard::instance::{agree_on_seed, allocate_instance_id};
use surgeguard::record::HEARTBEAT_PERIOD_MS;

/// What serving one configuration needs; shared by its streams on every worker.
pub struct Serving {
    pub admission: Admission,
    pub metrics: Metrics,
    /// This process's id in the in-flight table.
    pub instance: u32,
    /// Releases the store refused when their streams ended; the heartbeat applies them.
    pub late_releases: AtomicU64,
    /// With an adaptive limit: the samples of every worker since the last tick.
    pub window: Option<Mutex<WindowStats>>,
}

/// A configuration in force. Fields drop in order: the tick thread stops (joined) before its
/// scheduler is deleted, and both before the store lets go of the namespace.
pub struct FilterConfig {
    pub serving: Arc<Serving>,
    pub envoy: ConfigPtr,
    /// Fleet limits' calls in flight (main thread only).
    pub lease_calls: Mutex<LeaseCalls>,
    _ticker: Option<Ticker>,
    _scheduler: Option<Scheduler>,
    _registered: Registered,
    _lease: Lease,
}

/// The process's instance id, allocated once (see the module docs).
fn process_instance() -> u32 {
    static INSTANCE: OnceLock<u32> = OnceLock::new();
    *INSTANCE.get_or_init(|| allocate_instance_id(&STORE, now_ns()))
}

impl FilterConfig {
    /// Compiles `json` for the filter `name`; `None` (refused) after logging every problem.
    pub fn new(envoy: ConfigPtr, name: &str, json: &[u8]) -> Option<FilterConfig> {
        let policy = match surgeguard::config::parse(json) {
            Ok(p) => p,
            Err(errors) => {
                for e in &errors {
                    log(crate::abi::LOG_ERROR, &format!("surgeguard: configuration refused: {e}"));
                }
                Registered::rejected(name);
                return None;
            }
        };
        let namespace = format!("surgeguard/{name}");
        let configured_at_ns = now_ns();
        let instance = process_instance();
        let seed = agree_on_seed(&STORE, configured_at_ns, instance);
        let admission = Admission::new(policy, &namespace, seed);
        let lease = STORE.hold(&namespace, admission.slot_prefixes().to_vec());
        // Failing here is not fatal: a decision that finds no record still works.
        let _ = admission.create_record(&STORE);
        let _ = admission.create_window(configured_at_ns, &STORE);
        let adaptive_start = admission
            .adaptive()
            .map(|a| (admission.adaptive_limit(&STORE).unwrap_or(a.params.ceiling), a.params.floor));
        let metrics = Metrics::define(envoy, &admission.policy, adaptive_start);
        let policy = &admission.policy;
        log(
            crate::abi::LOG_INFO,
            &format!(
                "surgeguard: configuration accepted: mode {:?}, {} classes, {} rules, {} limits, in-flight limit {} (native build)",
                policy.mode,
                policy.classes.len(),
                policy.rules.len(),
                policy.limits.len(),
                policy.concurrency.as_ref().map_or("none".to_string(), |c| c.max_in_flight.to_string()),
            ),
        );
        let with_fleet = admission.fleet_limits().next().is_some();
        // The tick: every heartbeat period, twice a control window with an adaptive limit, and
        // often enough to ask for a lease's refill in time with a fleet limit.
        let mut tick_ms = if with_fleet { FLEET_TICK_MS } else { HEARTBEAT_PERIOD_MS };
        if let Some(a) = admission.adaptive() {
            tick_ms = tick_ms.min((a.params.window_ms / 2).max(FLEET_TICK_MS));
        }
        let window = admission.adaptive().map(|_| Mutex::new(WindowStats::with_classes(policy.classes.len())));
        let with_tick = policy.concurrency.is_some() || with_fleet;
        let serving = Arc::new(Serving { admission, metrics, instance, late_releases: AtomicU64::new(0), window });
        let scheduler = with_fleet.then(|| Scheduler::new(envoy)).flatten();
        let wake = scheduler.as_ref().map(|s| s.0);
        let ticker = with_tick.then(|| Ticker::start(Arc::clone(&serving), tick_ms, wake));
        let registered = Registered::new(name, Arc::clone(&serving));
        Some(FilterConfig {
            serving,
            envoy,
            lease_calls: Mutex::new(LeaseCalls::default()),
            _ticker: ticker,
            _scheduler: scheduler,
            _registered: registered,
            _lease: lease,
        })
    }
}

impl Serving {
    /// Releases a stream's in-flight slot; never dropped (the heartbeat applies a refused one).
    pub fn release_in_flight_slot(&self) {
        match self.admission.release(self.instance, now_ns(), &STORE) {
            Some(total) => self.metrics.set_in_flight(total),
            None => {
                self.late_releases.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands the workers' samples to the shared window; runs the controller if this tick took
    /// the window. Samples the store refused stay for the next tick.
    fn control_tick(&self, now: u64) {
        let Some(window) = &self.window else { return };
        let classes = self.admission.policy.classes.len();
        let local = std::mem::replace(&mut *lock(window), WindowStats::with_classes(classes));
        match self.admission.merge_window(&local, now, &STORE) {
            Err(_) => lock(window).merge(&local),
            Ok(None) => {}
            Ok(Some(taken)) => {
                let Some(run) = self.admission.run_window(&taken, now, &STORE) else { return };
                let change = run.change;
                self.metrics.record_window(change.from, change.to, run.baseline_us);
                if let Some((logged, to)) = run.log {
                    log(
                        crate::abi::LOG_WARN,
                        &format!(
                            "surgeguard: adaptive in-flight limit {to} (was {logged} at the last report; {:?}{}; baseline {} us)",
                            change.cause,
                            if change.baseline_raised { ", baselines raised: the upstream itself slowed" } else { "" },
                            run.baseline_us.map_or("unknown".to_string(), |b| (b as u64).to_string()),
                        ),
                    );
                }
            }
        }
    }

    fn heartbeat(&self) {
        let late = self.late_releases.swap(0, Ordering::Relaxed);
        match self.admission.heartbeat(self.instance, now_ns(), late, &STORE) {
            Some(total) => self.metrics.set_in_flight(total),
            None => {
                self.late_releases.fetch_add(late, Ordering::Relaxed);
            }
        }
    }
}

/// The tick with a fleet limit, and the shortest (as the wasm build's).
const FLEET_TICK_MS: u64 = 20;

/// The configuration's scheduler: an event committed to it runs
/// `on_http_filter_config_scheduled` on the main thread. Deleted on drop.
struct Scheduler(SchedulerPtr);

/// Envoy's scheduler, committed to from the tick thread (the ABI allows any thread).
#[derive(Clone, Copy)]
struct SchedulerPtr(*mut std::ffi::c_void);

// SAFETY: see the type's docs; only `commit` is called off the main thread.
unsafe impl Send for SchedulerPtr {}

impl SchedulerPtr {
    fn commit(self) {
        // SAFETY: the scheduler is deleted only after the tick thread has stopped.
        unsafe { crate::abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, 0) }
    }
}

impl Scheduler {
    fn new(envoy: ConfigPtr) -> Option<Scheduler> {
        // SAFETY: main thread, in `on_http_filter_config_new`.
        let ptr = unsafe { crate::abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(envoy.0) };
        (!ptr.is_null()).then_some(Scheduler(SchedulerPtr(ptr)))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: created by `new`, deleted once; the tick thread is already joined.
        unsafe { crate::abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0 .0) }
    }
}

/// A mutex's value; a poisoned one (a panic while held, contained) is taken over.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tick thread; stopped and joined on drop.
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// `wake`: with a fleet limit, the scheduler each tick commits to (lease calls are made on
    /// the main thread).
    fn start(serving: Arc<Serving>, tick_ms: u64, wake: Option<SchedulerPtr>) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let period = Duration::from_millis(tick_ms);
        let ticks_per_heartbeat = (HEARTBEAT_PERIOD_MS / tick_ms.max(1)).max(1);
        let thread = std::thread::Builder::new()
            .name("surgeguard-tick".into())
            .spawn(move || {
                for tick in 1u64.. {
                    match stopped.recv_timeout(period) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Some(scheduler) = wake {
                        scheduler.commit();
                    }
                    // A panic here would end the tick, not Envoy; keep ticking.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        serving.control_tick(now_ns());
                        if tick % ticks_per_heartbeat == 0 {
                            serving.heartbeat();
                        }
                    }));
                }
            })
            .ok();
        if thread.is_none() {
            log(crate::abi::LOG_WARN, "surgeguard: no tick thread: in-flight entries refresh only on requests");
        }
        Ticker { stop: Some(stop), thread }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The configurations in force, by filter name: a refused update is counted
/// (`surgeguard.config_rejected`) on the one that keeps running.
static IN_FORCE: Mutex<Vec<(u64, String, Arc<Serving>)>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Registered {
    id: u64,
}

impl Registered {
    fn new(name: &str, serving: Arc<Serving>) -> Registered {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        lock(&IN_FORCE).push((id, name.to_string(), serving));
        Registered { id }
    }

    /// Counts a refused configuration for `name` on the newest one in force, if any (with a
    /// static bootstrap there is none: Envoy does not start).
    fn rejected(name: &str) {
        let in_force = lock(&IN_FORCE);
        if let Some((_, _, serving)) = in_force.iter().rev().find(|(_, n, _)| n == name) {
            serving.metrics.config_rejected();
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&IN_FORCE).retain(|(id, _, _)| *id != self.id);
    }
}
