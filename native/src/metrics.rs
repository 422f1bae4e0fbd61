//! surgeguard's metrics in Envoy: defined once per configuration (Envoy refuses definitions
//! after `on_http_filter_config_new`), then counted at once on the worker that decides (Envoy's
//! counters and gauges are atomic; no batching as in the wasm build, where each count costs a
//! copy into the VM). Envoy shows them as `dynamicmodulescustom.<name>` (the names of
//! `surgeguard::metrics`). An id of `None` (Envoy refused to define it) makes that metric a no-op.

use crate::abi;
use crate::envoy::ConfigPtr;
use surgeguard::config::Policy;

pub struct Metrics {
    config: ConfigPtr,
    counters: Vec<Option<usize>>,
    in_flight: Option<usize>,
    config_rejected: Option<usize>,
    /// Per fleet limit, in limit order: its mode gauge (0 local until the service answers).
    fleet_modes: Vec<Option<usize>>,
    adaptive: Option<AdaptiveMetrics>,
}

/// The adaptive limit's metrics, written by the tick that runs a control window.
struct AdaptiveMetrics {
    limit: Option<usize>,
    baseline_us: Option<usize>,
    decreases: Option<usize>,
    increases: Option<usize>,
}

fn define(config: ConfigPtr, name: &str, gauge: bool) -> Option<usize> {
    let mut id = 0usize;
    let name = abi::ModuleBuffer::of(name.as_bytes());
    // SAFETY: `config` is Envoy's configuration being created (main thread); `id` is writable.
    let result = unsafe {
        if gauge {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(
                config.0,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        } else {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                config.0,
                name,
                std::ptr::null_mut(),
                0,
                &mut id,
            )
        }
    };
    (result == abi::METRICS_SUCCESS).then_some(id)
}

impl Metrics {
    /// Defines every metric of `policy` (call from `on_http_filter_config_new` only).
    /// `adaptive`: L before the first control window and the floor, with an adaptive limit.
    pub fn define(config: ConfigPtr, policy: &Policy, adaptive: Option<(u32, u32)>) -> Metrics {
        use surgeguard::metrics as m;
        let counters = m::counter_names(policy).iter().map(|n| define(config, n, false)).collect();
        let max_in_flight = policy.concurrency.as_ref().map(|c| c.max_in_flight);
        let metrics = Metrics {
            config,
            counters,
            in_flight: max_in_flight.and_then(|_| define(config, m::IN_FLIGHT_GAUGE, true)),
            config_rejected: define(config, m::CONFIG_REJECTED, false),
            fleet_modes: m::fleet_mode_gauge_names(policy).iter().map(|n| define(config, n, true)).collect(),
            adaptive: adaptive.map(|_| AdaptiveMetrics {
                limit: define(config, m::ADAPTIVE_LIMIT_GAUGE, true),
                baseline_us: define(config, m::ADAPTIVE_BASELINE_GAUGE, true),
                decreases: define(config, m::ADAPTIVE_DECREASES, false),
                increases: define(config, m::ADAPTIVE_INCREASES, false),
            }),
        };
        if let Some(max) = max_in_flight {
            if let Some(id) = define(config, m::MAX_IN_FLIGHT_GAUGE, true) {
                metrics.set_gauge(id, u64::from(max));
            }
        }
        if let Some((start, floor)) = adaptive {
            if let Some(id) = define(config, m::ADAPTIVE_FLOOR_GAUGE, true) {
                metrics.set_gauge(id, u64::from(floor));
            }
            if let Some(id) = metrics.adaptive.as_ref().and_then(|a| a.limit) {
                metrics.set_gauge(id, u64::from(start));
            }
        }
        metrics
    }

    /// Sets the mode gauge of the `ordinal`-th fleet limit (1 fleet, 0 local).
    pub fn set_fleet_mode(&self, ordinal: usize, value: u64) {
        if let Some(Some(id)) = self.fleet_modes.get(ordinal) {
            self.set_gauge(*id, value);
        }
    }

    /// A control window's outcome: L, the baselines, and whether L went down or up.
    pub fn record_window(&self, from: u32, to: u32, baseline_us: Option<f64>) {
        let Some(a) = &self.adaptive else { return };
        if let Some(id) = a.limit {
            self.set_gauge(id, u64::from(to));
        }
        if let (Some(id), Some(b)) = (a.baseline_us, baseline_us) {
            self.set_gauge(id, b as u64);
        }
        let counter = match to.cmp(&from) {
            std::cmp::Ordering::Less => a.decreases,
            std::cmp::Ordering::Greater => a.increases,
            std::cmp::Ordering::Equal => None,
        };
        if let Some(id) = counter {
            self.add(id, 1);
        }
    }

    fn add(&self, id: usize, n: u64) {
        // SAFETY: the configuration outlives this (Envoy destroys it after ours, see `config`).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.config.0,
                id,
                std::ptr::null_mut(),
                0,
                n,
            );
        }
    }

    fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: as in `add`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(
                self.config.0,
                id,
                std::ptr::null_mut(),
                0,
                value,
            );
        }
    }

    /// Adds 1 to the `index`-th counter of `surgeguard::metrics::counter_names`.
    pub fn bump(&self, index: usize) {
        if let Some(Some(id)) = self.counters.get(index) {
            self.add(*id, 1);
        }
    }

    pub fn set_in_flight(&self, total: u64) {
        if let Some(id) = self.in_flight {
            self.set_gauge(id, total);
        }
    }

    /// A configuration for this filter was refused (counted on the one in force).
    pub fn config_rejected(&self) {
        if let Some(id) = self.config_rejected {
            self.add(id, 1);
        }
    }
}
