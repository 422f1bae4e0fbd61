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
    pub fn define(config: ConfigPtr, policy: &Policy) -> Metrics {
        let counters = surgeguard::metrics::counter_names(policy).iter().map(|n| define(config, n, false)).collect();
        let max_in_flight = policy.concurrency.as_ref().map(|c| c.max_in_flight);
        let metrics = Metrics {
            config,
            counters,
            in_flight: max_in_flight.and_then(|_| define(config, surgeguard::metrics::IN_FLIGHT_GAUGE, true)),
            config_rejected: define(config, surgeguard::metrics::CONFIG_REJECTED, false),
        };
        if let Some(max) = max_in_flight {
            if let Some(id) = define(config, surgeguard::metrics::MAX_IN_FLIGHT_GAUGE, true) {
                metrics.set_gauge(id, u64::from(max));
            }
        }
        metrics
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
