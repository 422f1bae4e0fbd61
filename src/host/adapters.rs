//! Adapters from the proxy's host calls to the core's traits: clock, shared data, metrics.
//! No host call here can panic: failures become `StoreError` or are ignored where harmless.

use crate::store::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};
use std::cell::{Cell, RefCell};

/// Wall-clock nanoseconds from the proxy (the bucket arithmetic tolerates steps backwards).
///
/// The ABI call itself rather than the SDK's `get_current_time`, which goes through
/// `SystemTime` only for us to convert back: about 200 wasm instructions per call, twice per
/// request (bench/hostcalls).
pub fn now_ns() -> u64 {
    extern "C" {
        fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    }
    const WASM_RESULT_OK: u32 = 0;
    let mut t: u64 = 0;
    // SAFETY: the host writes 8 bytes to a valid, aligned, exclusively borrowed u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        WASM_RESULT_OK => t,
        _ => 0,
    }
}

/// Envoy's shared data: one map per `vm_id`, shared by every worker.
pub struct HostStore;

impl SharedStore for HostStore {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            // An empty value comes back without bytes but with its version: it exists.
            Ok((bytes, Some(version))) => Ok(Some((bytes.unwrap_or_default(), version))),
            Ok((_, None)) => Ok(None),
            Err(_) => Err(StoreError),
        }
    }

    fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
        match hostcalls::set_shared_data(key, Some(value), version) {
            Ok(()) => Ok(true),
            Err(Status::CasMismatch) => Ok(false),
            Err(_) => Err(StoreError),
        }
    }
}

/// Metric ids, defined once per configuration, and counts not yet handed to Envoy.
///
/// Counting is per VM and flushed on the root's tick (every second): one host call per counter
/// per second instead of several per request. Counts are exact, at most a second late. An id of
/// `None` (the host refused to define it) makes that counter a no-op rather than a failure.
#[derive(Default)]
pub struct Metrics {
    counters: Vec<Option<u32>>,
    pending: RefCell<Vec<u64>>,
    in_flight: Option<u32>,
    /// The last in-flight total this VM saw; written to the gauge on the tick.
    in_flight_total: Cell<Option<u64>>,
    /// Per fleet limit, in limit order: its mode gauge.
    fleet_modes: Vec<Option<u32>>,
    adaptive: Option<AdaptiveMetrics>,
}

/// The adaptive limit's metrics, written by the worker that runs a control window.
struct AdaptiveMetrics {
    limit: Option<u32>,
    baseline_us: Option<u32>,
    decreases: Option<u32>,
    increases: Option<u32>,
}

pub fn define(kind: MetricType, name: &str) -> Option<u32> {
    hostcalls::define_metric(kind, name).ok()
}

impl Metrics {
    /// `adaptive`: L before the first control window and the floor, with an adaptive limit.
    pub fn new(
        counter_names: &[String],
        fleet_mode_gauges: &[String],
        max_in_flight: Option<u32>,
        adaptive: Option<(u32, u32)>,
    ) -> Metrics {
        let with_in_flight = max_in_flight.is_some();
        if let Some(max) = max_in_flight {
            if let Some(id) = define(MetricType::Gauge, crate::metrics::MAX_IN_FLIGHT_GAUGE) {
                let _ = hostcalls::record_metric(id, u64::from(max));
            }
        }
        Metrics {
            counters: counter_names.iter().map(|n| define(MetricType::Counter, n)).collect(),
            pending: RefCell::new(vec![0; counter_names.len()]),
            in_flight: if with_in_flight { define(MetricType::Gauge, crate::metrics::IN_FLIGHT_GAUGE) } else { None },
            in_flight_total: Cell::new(None),
            // Every fleet limit starts in local mode (0) until the service answers.
            fleet_modes: fleet_mode_gauges.iter().map(|n| define(MetricType::Gauge, n)).collect(),
            adaptive: adaptive.map(|(start, floor)| {
                if let Some(id) = define(MetricType::Gauge, crate::metrics::ADAPTIVE_FLOOR_GAUGE) {
                    let _ = hostcalls::record_metric(id, u64::from(floor));
                }
                let m = AdaptiveMetrics {
                    limit: define(MetricType::Gauge, crate::metrics::ADAPTIVE_LIMIT_GAUGE),
                    baseline_us: define(MetricType::Gauge, crate::metrics::ADAPTIVE_BASELINE_GAUGE),
                    decreases: define(MetricType::Counter, crate::metrics::ADAPTIVE_DECREASES),
                    increases: define(MetricType::Counter, crate::metrics::ADAPTIVE_INCREASES),
                };
                if let Some(id) = m.limit {
                    let _ = hostcalls::record_metric(id, u64::from(start));
                }
                m
            }),
        }
    }

    /// A control window's outcome: L, the baseline, and whether L went down or up. At once:
    /// once per window, on one worker.
    pub fn record_window(&self, from: u32, to: u32, baseline_us: Option<f64>) {
        let Some(m) = &self.adaptive else { return };
        if let Some(id) = m.limit {
            let _ = hostcalls::record_metric(id, u64::from(to));
        }
        if let (Some(id), Some(b)) = (m.baseline_us, baseline_us) {
            let _ = hostcalls::record_metric(id, b as u64);
        }
        let counter = match to.cmp(&from) {
            std::cmp::Ordering::Less => m.decreases,
            std::cmp::Ordering::Greater => m.increases,
            std::cmp::Ordering::Equal => None,
        };
        if let Some(id) = counter {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    /// Sets the mode gauge of the `ordinal`-th fleet limit (1 fleet, 0 local), at once: a mode
    /// change is rare and operators alert on it.
    pub fn set_fleet_mode(&self, ordinal: usize, gauge_value: u64) {
        if let Some(Some(id)) = self.fleet_modes.get(ordinal) {
            let _ = hostcalls::record_metric(*id, gauge_value);
        }
    }

    pub fn bump(&self, index: usize) {
        if let Some(n) = self.pending.borrow_mut().get_mut(index) {
            *n += 1;
        }
    }

    pub fn set_in_flight(&self, total: u64) {
        self.in_flight_total.set(Some(total));
    }

    /// Hands the pending counts and the gauge to Envoy.
    pub fn flush(&self) {
        for (i, n) in self.pending.borrow_mut().iter_mut().enumerate() {
            if *n > 0 {
                if let Some(Some(id)) = self.counters.get(i) {
                    let _ = hostcalls::increment_metric(*id, *n as i64);
                }
                *n = 0;
            }
        }
        if let (Some(id), Some(total)) = (self.in_flight, self.in_flight_total.take()) {
            let _ = hostcalls::record_metric(id, total);
        }
    }
}
