//! The adaptive in-flight limit in shared data: each worker's window of samples merged on the
//! tick, one worker per window running the controller (`adaptive`), and L written into the
//! record, where every decision already reads the in-flight count.
//!
//! Two keys beside the record, neither read on the request path:
//! - `<namespace>/adaptive/window`: the window being gathered, `[start_ns, stats...]`
//!   ([`encode_window`]). Every worker's tick adds its samples to it by compare-and-swap
//!   ([`Admission::merge_window`]); the tick that finds the window over takes it and leaves an
//!   empty one in the same write, so exactly one worker runs each window, as one worker claims a
//!   lease call (`fleet`).
//! - `<namespace>/adaptive/state`: the controller's state ([`Controller::to_words`]) behind a
//!   fingerprint of what it was learned for (classes, reserves, parameters) and the last L that
//!   was logged. A configuration that changes any of these starts a fresh controller at the
//!   ceiling.
//!
//! Samples that reach the window after it was taken count in the next one: every sample is
//! counted once, in the window of the tick that flushed it.

use crate::adaptive::{Change as LimitChange, ClassWindow, Controller, WindowStats};
use crate::config::Adaptive;
use crate::decision::Admission;
use crate::keyhash;
use crate::record::Record;
use crate::store::{read_u64, update, Change, Outcome, SharedStore, StoreError};

/// What one control window did, for the gauges, counters and log line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowRun {
    pub change: LimitChange,
    /// The baselines weighted by the window's class mix, microseconds.
    pub baseline_us: Option<f64>,
    /// L moved by a factor of 2 or more since the last logged value: `(last logged, now)`.
    pub log: Option<(u32, u32)>,
}

/// L has moved this much since the last log line: log again.
const LOG_FACTOR: u32 = 2;

impl Admission {
    /// The adaptive limit's configuration, if the in-flight limit is adaptive.
    pub fn adaptive(&self) -> Option<&Adaptive> {
        self.policy.concurrency.as_ref()?.adaptive.as_ref()
    }

    fn window_key(&self) -> String {
        format!("{}/adaptive/window", self.namespace())
    }

    fn state_key(&self) -> String {
        format!("{}/adaptive/state", self.namespace())
    }

    fn namespace(&self) -> &str {
        self.record_key.strip_suffix("/record").unwrap_or(&self.record_key)
    }

    /// Adds this worker's samples (`local`) to the shared window and takes the window if it is
    /// over at `now_ns`. `Err`: storage failed or stayed contended (keep `local` for the next
    /// tick); `Ok(None)`: merged; `Ok(Some(w))`: this worker runs window `w`
    /// ([`Admission::run_window`]).
    pub fn merge_window(
        &self,
        local: &WindowStats,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<Option<WindowStats>, StoreError> {
        let Some(adaptive) = self.adaptive() else { return Ok(None) };
        let window_ns = adaptive.params.window_ms.saturating_mul(1_000_000);
        let nothing_new = local.is_empty();
        let outcome = update(store, &self.window_key(), |stored| {
            let (start_ns, mut window) =
                stored.as_deref().and_then(decode_window).unwrap_or((now_ns, WindowStats::default()));
            let over = now_ns >= start_ns.saturating_add(window_ns);
            if nothing_new && !over && stored.is_some() {
                return Change::Keep(None);
            }
            window.merge(local);
            if over {
                Change::Write(encode_window(now_ns, &WindowStats::default()), Some(window))
            } else {
                Change::Write(encode_window(start_ns, &window), None)
            }
        });
        match outcome {
            Outcome::Done { value, .. } => Ok(value),
            Outcome::Contended | Outcome::Failed => Err(StoreError),
        }
    }

    /// Runs the controller on a window this worker took: updates its state and writes L into
    /// the record. `None` if storage failed (the window is lost; L holds until the next).
    pub fn run_window(&self, window: &WindowStats, now_ns: u64, store: &dyn SharedStore) -> Option<WindowRun> {
        let adaptive = self.adaptive()?;
        let fingerprint = self.controller_fingerprint(adaptive);
        let run = update(store, &self.state_key(), |stored| {
            let stored = stored.as_deref().map(words).unwrap_or_default();
            let (mut controller, last_logged) = match stored.split_first_chunk::<2>() {
                Some((&[f, logged], rest)) if f == fingerprint => match Controller::from_words(rest) {
                    Some(c) => (c, logged as u32),
                    None => self.fresh_controller(adaptive),
                },
                _ => self.fresh_controller(adaptive),
            };
            let change = controller.update(window, &adaptive.params);
            let to = change.to;
            let moved = to >= last_logged.saturating_mul(LOG_FACTOR) || to.saturating_mul(LOG_FACTOR) <= last_logged;
            let log = moved.then_some((last_logged, to));
            let logged = if moved { to } else { last_logged };
            let mut state = vec![fingerprint, u64::from(logged)];
            state.extend(controller.to_words());
            let run = WindowRun { change, baseline_us: controller.mix_baseline_us(window), log };
            Change::Write(bytes(&state), run)
        })
        .ok()?;
        let limit = run.change.to;
        // Written only when it changed: this write contends with decisions.
        let _ = update(store, &self.record_key, |stored| {
            let mut record = Record::from_bytes(stored.unwrap_or_default());
            if record.adaptive_limit() == Some(limit) {
                return Change::Keep(());
            }
            record.set_adaptive_limit(limit);
            record.prune(now_ns, None);
            Change::Write(record, ())
        });
        Some(run)
    }

    /// L as stored in the record (the ceiling before the first window), for tests and tools.
    pub fn adaptive_limit(&self, store: &dyn SharedStore) -> Option<u32> {
        let adaptive = self.adaptive()?;
        let (bytes, _) = store.load(&self.record_key).ok()?.unzip();
        Some(adaptive.limit(Record::from_bytes(bytes.unwrap_or_default()).adaptive_limit()))
    }

    /// Creates the window key if it was never written (called with `create_record`, before the
    /// workers start, since shared data has no atomic create).
    pub fn create_window(&self, now_ns: u64, store: &dyn SharedStore) -> Result<(), StoreError> {
        if self.adaptive().is_none() {
            return Ok(());
        }
        match update(store, &self.window_key(), |stored| match stored {
            Some(_) => Change::Keep(()),
            None => Change::Write(encode_window(now_ns, &WindowStats::default()), ()),
        }) {
            Outcome::Failed => Err(StoreError),
            Outcome::Done { .. } | Outcome::Contended => Ok(()),
        }
    }

    fn fresh_controller(&self, adaptive: &Adaptive) -> (Controller, u32) {
        let initial = adaptive.limit(None);
        (Controller::new(self.policy.classes.len(), initial, &adaptive.params), initial)
    }

    /// What the controller's state was learned for: the classes with their reserves and the
    /// parameters.
    fn controller_fingerprint(&self, adaptive: &Adaptive) -> u64 {
        // Bits, not text: formatting floats would bring float printing into the module.
        let p = &adaptive.params;
        let mut text = Vec::new();
        for word in [u64::from(p.ceiling), u64::from(p.floor), p.tolerance.to_bits(), p.window_ms] {
            text.extend(word.to_le_bytes());
        }
        for c in &self.policy.classes {
            text.extend(c.reserve.to_bits().to_le_bytes());
            text.extend(c.name.as_bytes());
            text.push(0);
        }
        keyhash::hash(0, 1, &text)
    }
}

impl WindowStats {
    /// Nothing recorded.
    pub fn is_empty(&self) -> bool {
        self.completed() == 0 && self.errors == 0 && self.refused == 0 && self.peak_in_flight == 0
    }
}

/// `[start_ns, latency_us_sum, errors, refused, peak_in_flight, classes, per class: completed,
/// log2_sum, log2_sq_sum]`, little-endian u64s.
pub fn encode_window(start_ns: u64, w: &WindowStats) -> Vec<u8> {
    let mut out = vec![start_ns, w.latency_us_sum, w.errors, w.refused, w.peak_in_flight, w.classes.len() as u64];
    for c in &w.classes {
        out.extend([c.completed, c.log2_sum, c.log2_sq_sum]);
    }
    bytes(&out)
}

/// What [`encode_window`] wrote; `None` if the bytes are not such a window.
pub fn decode_window(bytes: &[u8]) -> Option<(u64, WindowStats)> {
    let w = words(bytes);
    let (&[start_ns, latency_us_sum, errors, refused, peak_in_flight, classes], rest) = w.split_first_chunk::<6>()?;
    if usize::try_from(classes).ok()? * 3 != rest.len() {
        return None;
    }
    let classes = rest
        .chunks_exact(3)
        .filter_map(|c| match *c {
            [completed, log2_sum, log2_sq_sum] => Some(ClassWindow { completed, log2_sum, log2_sq_sum }),
            _ => None,
        })
        .collect();
    Some((start_ns, WindowStats { classes, latency_us_sum, errors, refused, peak_in_flight }))
}

fn words(bytes: &[u8]) -> Vec<u64> {
    (0..bytes.len() / 8).filter_map(|i| read_u64(bytes, 8 * i)).collect()
}

fn bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
