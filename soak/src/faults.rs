//! The faults injected beside the load, each on its own thread, and the memory sampler:
//! configuration pushes over ECDS every [`PUSH_PERIOD`] (every third one invalid), a VM crash at
//! each of the timeline's crash moments, and Envoy's RSS every [`SAMPLE_PERIOD`].
//!
//! Invariants: a thread stops within a sleep slice of the stop flag; a crash is staged only if
//! the load really sent nothing in the quiet before it (the client may fall behind its
//! schedule), else it is recorded as skipped, never staged with decisions still unflushed.

use crate::configs;
use crate::crash::CRASH_HEADERS;
use crate::plan::CRASH_QUIET;
use crate::rig::RigDir;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use surgeguard_harness::client::{raw_request, Observer};

pub const PUSH_PERIOD: Duration = Duration::from_secs(3);
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(2);

/// Watches the load: when it started and when it last sent a request.
pub struct LoadWatch {
    start: Mutex<Option<Instant>>,
    /// Nanoseconds from the start to the last request sent (`u64::MAX`: none yet).
    last_sent_ns: AtomicU64,
}

impl LoadWatch {
    pub fn new() -> LoadWatch {
        LoadWatch { start: Mutex::new(None), last_sent_ns: AtomicU64::new(u64::MAX) }
    }

    pub fn start(&self) -> Option<Instant> {
        self.start.lock().ok().and_then(|s| *s)
    }

    /// Since the start, when the last request went out.
    fn last_sent(&self) -> Option<Duration> {
        match self.last_sent_ns.load(Ordering::SeqCst) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Waits until the load has started, or `stop`.
    fn wait_start(&self, stop: &AtomicBool) -> Option<Instant> {
        while !stop.load(Ordering::SeqCst) {
            if let Some(s) = self.start() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Observer for LoadWatch {
    fn started(&self, start: Instant) {
        if let Ok(mut s) = self.start.lock() {
            *s = Some(start);
        }
    }
    fn sent(&self) {
        if let Some(start) = self.start() {
            self.last_sent_ns.store(start.elapsed().as_nanos() as u64, Ordering::SeqCst);
        }
    }
}

/// Sleeps until `start + at`, in slices; false if `stop` was raised first.
fn sleep_until(start: Instant, at: Duration, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let now = start.elapsed();
        if now >= at {
            return true;
        }
        std::thread::sleep((at - now).min(Duration::from_millis(50)));
    }
}

/// One configuration push and Envoy's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Push {
    pub at_s: f64,
    pub valid: bool,
    /// Envoy took it (the helper saw `update_success` rise).
    pub accepted: bool,
    #[serde(skip)]
    pub output: String,
}

/// Pushes configurations until `stop`: valid variants in turn, every third push an invalid one.
pub fn push_configs(
    files: RigDir,
    admin_port: u16,
    shipped: String,
    watch: Arc<LoadWatch>,
    stop: Arc<AtomicBool>,
) -> Vec<Push> {
    let mut pushes = Vec::new();
    let Some(start) = watch.wait_start(&stop) else { return pushes };
    let (mut valid_n, mut invalid_n) = (1, 0);
    for n in 1.. {
        if !sleep_until(start, PUSH_PERIOD * n, &stop) {
            break;
        }
        let valid = n % 3 != 0;
        let json = if valid {
            valid_n += 1;
            configs::valid(&shipped, valid_n - 1)
        } else {
            invalid_n += 1;
            configs::invalid(&shipped, invalid_n - 1)
        };
        let at_s = start.elapsed().as_secs_f64();
        let applied = json.and_then(|j| files.apply(&j, &format!("push-{n}"), Some(admin_port)));
        let (accepted, output) = match applied {
            Ok(a) => (a.accepted, a.output),
            Err(e) => (false, e),
        };
        pushes.push(Push { at_s, valid, accepted, output });
    }
    pushes
}

/// One staged crash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Crash {
    pub at_s: f64,
    /// The same moment as Unix seconds (the access log's clock).
    pub unix_s: f64,
    /// Staged (the load was quiet before it), or skipped.
    pub staged: bool,
    /// Envoy's answer to the crashing request (503: the VM died with it in hand).
    pub status: Option<u16>,
}

/// At each moment in `at`: a request with more than [`CRASH_HEADERS`] headers, which the
/// module's added function traps on (see `crash`).
pub fn crash_vms(port: u16, at: Vec<Duration>, watch: Arc<LoadWatch>, stop: Arc<AtomicBool>) -> Vec<Crash> {
    let mut crashes = Vec::new();
    let Some(start) = watch.wait_start(&stop) else { return crashes };
    let mut request = b"GET /crash HTTP/1.1\r\nHost: storefront\r\n".to_vec();
    for i in 0..CRASH_HEADERS + 8 {
        request.extend(format!("x-crash-{i}: 1\r\n").bytes());
    }
    request.extend(b"\r\n");
    for t in at {
        if !sleep_until(start, t, &stop) {
            break;
        }
        let at_s = start.elapsed().as_secs_f64();
        let unix_s = unix_now_s();
        // Decisions reach Envoy's counters on each worker's next tick (every second).
        let quiet = watch.last_sent().is_none_or(|last| last + CRASH_QUIET.mul_f64(0.8) <= start.elapsed());
        if !quiet {
            crashes.push(Crash { at_s, unix_s, staged: false, status: None });
            continue;
        }
        let status = raw_request(port, &request);
        crashes.push(Crash { at_s, unix_s, staged: true, status });
    }
    crashes
}

/// Envoy's resident memory over time: (seconds from the start of the load, bytes).
pub fn sample_rss(read: impl Fn() -> u64, watch: Arc<LoadWatch>, stop: Arc<AtomicBool>) -> Vec<(f64, u64)> {
    let mut samples = Vec::new();
    let Some(start) = watch.wait_start(&stop) else { return samples };
    for n in 0.. {
        if !sleep_until(start, SAMPLE_PERIOD * n, &stop) {
            break;
        }
        samples.push((start.elapsed().as_secs_f64(), read()));
    }
    samples
}

fn unix_now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
