//! The adaptive limit L over time: the filter's gauge `surgeguard.adaptive.limit`, read from
//! Envoy's admin every [`DB_SAMPLE_MS`] (as the database's connections in use are sampled), so
//! the report can draw one against the other.
//!
//! Invariant: one sample per [`DB_SAMPLE_MS`] from [`LimitSampler::start`]; a read that fails
//! repeats the previous sample (0 before the first), so the samples stay on the clock.

use crate::summary::DB_SAMPLE_MS;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use surgeguard_harness::client::{request, Req};

/// The gauge as Envoy names it in `/stats`.
pub const LIMIT_STAT: &str = "wasmcustom.surgeguard.adaptive.limit";

/// Samples L until [`LimitSampler::finish`] (or drop).
pub struct LimitSampler {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Vec<u32>>>,
}

/// L as Envoy's admin at `admin_port` reports it now.
pub fn read_limit(admin_port: u16) -> Option<u32> {
    let r = request(admin_port, &Req::get("/stats?filter=surgeguard.adaptive.limit")).ok()?;
    let stats = surgeguard_harness::stats::parse(&String::from_utf8_lossy(&r.body));
    stats.get(LIMIT_STAT).and_then(|v| u32::try_from(*v).ok())
}

impl LimitSampler {
    pub fn start(admin_port: u16) -> LimitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let start = Instant::now();
            let mut samples = Vec::new();
            let mut last = 0;
            for k in 1u32.. {
                let due = start + Duration::from_millis(DB_SAMPLE_MS) * k;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                last = read_limit(admin_port).unwrap_or(last);
                samples.push(last);
                if flag.load(Ordering::SeqCst) {
                    break;
                }
            }
            samples
        });
        LimitSampler { stop, handle: Some(handle) }
    }

    pub fn finish(mut self) -> Vec<u32> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }
}

impl Drop for LimitSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
