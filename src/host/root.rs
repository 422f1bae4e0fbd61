//! The root context: one per plugin per worker VM. It compiles the configuration (refusing a
//! bad one whole), owns the metric ids, keeps this VM's in-flight entry alive, and makes the
//! fleet limits' lease calls (the gRPC glue is in `lease_calls`). With an adaptive in-flight
//! limit, its tick also hands this VM's samples to the shared window and, when it takes a
//! window, runs the controller (`control`).

use super::adapters::{define, now_ns, HostStore, Metrics};
use super::http::RequestFilter;
use super::lease_calls::LeaseCalls;
use crate::adaptive::WindowStats;
use crate::decision::Admission;
use crate::instance::{agree_on_seed, allocate_instance_id};
use crate::record::HEARTBEAT_PERIOD_MS;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// The configuration in force and what serving it needs; shared by this plugin's requests.
pub struct ConfigInForce {
    pub admission: Admission,
    pub metrics: Metrics,
    pub instance: u32,
    /// Releases that storage refused when their streams ended; applied on the next tick.
    pub late_releases: Cell<u64>,
    /// With an adaptive limit: this VM's samples since its last tick (see `http`).
    pub window: Option<RefCell<WindowStats>>,
}

#[derive(Default)]
pub struct SurgeguardRoot {
    in_force: Option<Rc<ConfigInForce>>,
    config_rejected: Option<u32>,
    lease_calls: LeaseCalls,
    /// Ticks since the configuration was accepted: the heartbeat runs every
    /// `ticks_per_heartbeat` of them.
    ticks: u64,
    ticks_per_heartbeat: u64,
}

/// With a fleet limit the tick also claims lease calls, so it runs this often: a refill is due
/// at most this long before it is asked for (one shared-data read per tick and worker).
const FLEET_TICK_MS: u64 = 20;

thread_local! {
    /// This VM's id in the in-flight table; 0 until allocated. A restarted VM gets a new one.
    static INSTANCE: Cell<u32> = const { Cell::new(0) };
}

/// This VM's instance id, allocated once (see `instance`).
fn instance_id(now_ns: u64) -> u32 {
    let current = INSTANCE.with(Cell::get);
    if current != 0 {
        return current;
    }
    let id = allocate_instance_id(&HostStore, now_ns);
    INSTANCE.with(|c| c.set(id));
    id
}

fn plugin_name() -> String {
    hostcalls::get_property(vec!["plugin_name"])
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// Says so when another module version's shared state is in this process (an upgrade or a
/// rollback under the same `vm_id`): this module leaves it alone (see `format`).
fn log_other_formats() {
    let others = crate::format::other_formats_present(&HostStore);
    if !others.is_empty() {
        log::info!(
            "surgeguard: shared data format {}; state of format {others:?} (another module version) is left alone",
            crate::format::FORMAT_VERSION
        );
    }
}

impl Context for SurgeguardRoot {
    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.lease_calls.answered(token_id, status_code, response_size, now_ns());
    }
}

impl Drop for SurgeguardRoot {
    // The plugin is going away (a reload or shutdown; Envoy deletes its root context): hand over
    // what was counted. Here rather than in `on_done`, which the module does not export
    // (src/host/exports.txt): Envoy would otherwise call it for every request too.
    fn drop(&mut self) {
        if let Some(c) = &self.in_force {
            c.metrics.flush();
        }
    }
}

impl RootContext for SurgeguardRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        if self.config_rejected.is_none() {
            self.config_rejected = define(MetricType::Counter, crate::metrics::CONFIG_REJECTED);
        }
        let bytes =
            hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX).ok().flatten().unwrap_or_default();
        let policy = match crate::config::parse(&bytes) {
            Ok(p) => p,
            Err(errors) => {
                for e in &errors {
                    log::error!("surgeguard: configuration refused: {e}");
                }
                if let Some(id) = self.config_rejected {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                // Refusing keeps the previous configuration (over xDS) or stops start-up.
                return false;
            }
        };
        let namespace = crate::format::namespace(&plugin_name());
        let configured_at_ns = now_ns();
        let instance = instance_id(configured_at_ns);
        let seed = agree_on_seed(&HostStore, configured_at_ns, instance);
        if self.in_force.is_none() {
            log_other_formats();
        }
        let admission = Admission::new(policy, &namespace, seed);
        // Failing here is not fatal: a decision that finds no record still works (see there).
        let _ = admission.create_record(&HostStore);
        let _ = admission.create_window(configured_at_ns, &HostStore);
        let policy = &admission.policy;
        let names = crate::metrics::counter_names(policy);
        let fleet_gauges = crate::metrics::fleet_mode_gauge_names(policy);
        let adaptive_start = admission
            .adaptive()
            .map(|a| (admission.adaptive_limit(&HostStore).unwrap_or(a.params.ceiling), a.params.floor));
        let max_in_flight = policy.concurrency.as_ref().map(|c| c.max_in_flight);
        let metrics = Metrics::new(&names, &fleet_gauges, max_in_flight, adaptive_start);
        // The tick flushes counters and, with an in-flight limit, keeps this VM's entry alive;
        // with a fleet limit it also claims lease calls, and with an adaptive limit it hands over
        // samples twice a control window, so it runs more often.
        let mut tick_ms = if fleet_gauges.is_empty() { HEARTBEAT_PERIOD_MS } else { FLEET_TICK_MS };
        if let Some(a) = admission.adaptive() {
            tick_ms = tick_ms.min((a.params.window_ms / 2).max(FLEET_TICK_MS));
        }
        self.ticks = 0;
        self.ticks_per_heartbeat = (HEARTBEAT_PERIOD_MS / tick_ms).max(1);
        let _ = hostcalls::set_tick_period(Duration::from_millis(tick_ms));
        log::info!(
            "surgeguard: configuration accepted: mode {:?}, {} classes, {} rules, {} limits, in-flight limit {}{}",
            policy.mode,
            policy.classes.len(),
            policy.rules.len(),
            policy.limits.len(),
            policy.concurrency.as_ref().map_or("none".to_string(), |c| c.max_in_flight.to_string()),
            admission.adaptive().map_or(String::new(), |a| format!(
                " (adaptive: ceiling, floor {}, window {} ms)",
                a.params.floor, a.params.window_ms
            )),
        );
        let window = admission.adaptive().map(|_| RefCell::new(WindowStats::with_classes(policy.classes.len())));
        let in_force = ConfigInForce { admission, metrics, instance, late_releases: Cell::new(0), window };
        if let Some(previous) = self.in_force.replace(Rc::new(in_force)) {
            previous.metrics.flush();
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(c) = self.in_force.clone() else { return };
        let now = now_ns();
        self.lease_calls.tick(&c, now);
        control_tick(&c, now);
        self.ticks += 1;
        if !self.ticks.is_multiple_of(self.ticks_per_heartbeat.max(1)) {
            return;
        }
        if let Some(total) = c.admission.heartbeat(c.instance, now, c.late_releases.get(), &HostStore) {
            c.late_releases.set(0);
            c.metrics.set_in_flight(total);
        }
        c.metrics.flush();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Without an accepted configuration there is no root to serve; Envoy never gets here
        // then, since a refused configuration stops the filter from being installed.
        let in_force = self.in_force.clone()?;
        Some(Box::new(RequestFilter::new(in_force)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Hands this VM's samples to the shared window; runs the controller if this tick took the
/// window. Samples storage refused stay here for the next tick.
fn control_tick(c: &ConfigInForce, now: u64) {
    let Some(window) = &c.window else { return };
    let classes = c.admission.policy.classes.len();
    let local = window.replace(WindowStats::with_classes(classes));
    match c.admission.merge_window(&local, now, &HostStore) {
        Err(_) => window.borrow_mut().merge(&local),
        Ok(None) => {}
        Ok(Some(taken)) => {
            let Some(run) = c.admission.run_window(&taken, now, &HostStore) else { return };
            let change = run.change;
            c.metrics.record_window(change.from, change.to, run.baseline_us);
            if let Some((logged, to)) = run.log {
                log::warn!(
                    "surgeguard: adaptive in-flight limit {to} (was {logged} at the last report; {:?}{}; baseline {} us)",
                    change.cause,
                    if change.baseline_raised { ", baselines raised: the upstream itself slowed" } else { "" },
                    run.baseline_us.map_or("unknown".to_string(), |b| (b as u64).to_string()),
                );
            }
        }
    }
}
