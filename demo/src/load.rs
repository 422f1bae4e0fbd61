//! The demo's load: its schedule of arrivals sent open-loop by the harness's client
//! ([`surgeguard_harness::client::run_schedule`]), watched by the progress line's counters.
//! In front of several Envoys ([`run_spread`]) the arrivals are dealt round-robin, as a load
//! balancer would, each Envoy's share sent by its own client at the same scheduled times.

use crate::outcome::{Label, Outcome, Verdict};
use crate::schedule::Arrival;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_harness::client::{run_schedule, Observer, Target};

pub use surgeguard_harness::client::LoadError;

/// Counters the progress line reads while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    /// Indexed by [`Verdict::index`].
    pub verdicts: [AtomicU64; 3],
    /// When the schedule's time 0 was (set as the load starts), so other threads can act at a
    /// scheduled moment (the live change of `--live`).
    pub started: std::sync::OnceLock<Instant>,
}

impl Live {
    pub fn count(&self, v: Verdict) -> u64 {
        self.verdicts[v.index()].load(Ordering::Relaxed)
    }
}

impl Observer for Live {
    fn started(&self, start: Instant) {
        let _ = self.started.set(start);
    }

    fn sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self, verdict: Verdict) {
        self.verdicts[verdict.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the schedule against 127.0.0.1:`port` and returns every outcome, in schedule order.
pub fn run(
    port: u16,
    arrivals: &[Arrival],
    timeout: Duration,
    live: &Arc<Live>,
    cancel: &Arc<AtomicBool>,
) -> Result<Vec<Outcome>, LoadError> {
    let target = Target { port, local_address: None, timeout };
    let schedule = arrivals
        .iter()
        .map(|a| (Duration::from_micros(a.at_us), a.req.clone(), Label { kind: a.kind, phase: a.phase }));
    run_schedule(&target, schedule, live, Some(cancel))
}

/// Runs the schedule against several Envoys (127.0.0.1:`ports[i]`): arrival `n` goes to
/// `ports[n % ports.len()]`, each port's share on its own thread and client, all from the same
/// time 0 (within the few microseconds the threads take to start). Returns every outcome in
/// schedule order, with the port index each went to.
pub fn run_spread(
    ports: &[u16],
    arrivals: &[Arrival],
    timeout: Duration,
    live: &Arc<Live>,
    cancel: &Arc<AtomicBool>,
) -> Result<Vec<(usize, Outcome)>, LoadError> {
    if ports.is_empty() {
        return Err(LoadError::Setup("no Envoy to send the load to".into()));
    }
    let n = ports.len();
    let shares: Vec<Vec<Arrival>> = (0..n).map(|i| arrivals.iter().skip(i).step_by(n).cloned().collect()).collect();
    let results: Vec<Result<Vec<Outcome>, LoadError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = shares
            .iter()
            .zip(ports)
            .map(|(share, port)| scope.spawn(move || run(*port, share, timeout, live, cancel)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(LoadError::Setup("a load thread panicked".into()))))
            .collect()
    });
    let mut per_port = Vec::with_capacity(n);
    for r in results {
        per_port.push(r?.into_iter());
    }
    // Deal them back: arrival k is the (k / n)-th of port k % n.
    let mut out = Vec::with_capacity(arrivals.len());
    for k in 0..arrivals.len() {
        match per_port.get_mut(k % n).and_then(Iterator::next) {
            Some(o) => out.push((k % n, o)),
            None => return Err(LoadError::Setup(format!("no outcome for arrival {k}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::at_us;
    use crate::schedule::Plan;
    use crate::storefront::{Storefront, StorefrontConfig};
    use crate::traffic::Mix;

    #[test]
    fn every_arrival_gets_an_outcome_at_its_time() {
        let s = Storefront::start(&StorefrontConfig::default()).unwrap();
        let plan = Plan { duration_s: 1.0, surge: 2.0, calm_rate_per_s: 100.0, mix: Mix::default(), seed: 1 };
        let arrivals = plan.arrivals();
        let live = Arc::new(Live::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let out = run(s.port, &arrivals, Duration::from_secs(5), &live, &cancel).unwrap();
        assert!(t0.elapsed() >= Duration::from_micros(arrivals.last().unwrap().at_us));
        assert_eq!(out.len(), arrivals.len());
        assert!(out.iter().zip(&arrivals).all(|(o, a)| at_us(o) == a.at_us && o.label.kind == a.kind));
        // Straight to the storefront (no filter): everything is served.
        assert!(out.iter().all(|o| o.verdict() == Verdict::Served), "{out:?}");
        assert_eq!(live.count(Verdict::Served), arrivals.len() as u64);
        assert_eq!(live.sent.load(Ordering::Relaxed), arrivals.len() as u64);
    }

    #[test]
    fn a_spread_load_deals_arrivals_round_robin_and_keeps_their_order() {
        let s = Storefront::start(&StorefrontConfig { replicas: 3, ..StorefrontConfig::default() }).unwrap();
        let plan = Plan { duration_s: 1.0, surge: 2.0, calm_rate_per_s: 60.0, mix: Mix::default(), seed: 2 };
        let arrivals = plan.arrivals();
        let live = Arc::new(Live::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let out = run_spread(&s.replica_ports, &arrivals, Duration::from_secs(5), &live, &cancel).unwrap();
        assert_eq!(out.len(), arrivals.len());
        for (k, ((port, o), a)) in out.iter().zip(&arrivals).enumerate() {
            assert_eq!(*port, k % 3);
            assert_eq!((at_us(o), o.label.kind), (a.at_us, a.kind));
            assert_eq!(o.verdict(), Verdict::Served);
        }
        assert_eq!(s.db.stats().leases, arrivals.len() as u64);
    }

    #[test]
    fn a_cancelled_run_stops_at_once() {
        let plan = Plan { duration_s: 30.0, surge: 1.0, calm_rate_per_s: 10.0, mix: Mix::default(), seed: 1 };
        let arrivals = plan.arrivals();
        let live = Arc::new(Live::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&cancel);
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::SeqCst);
        });
        let t0 = Instant::now();
        // Port 9 (discard) on loopback: nothing listens, every request fails fast.
        let r = run(9, &arrivals, Duration::from_secs(1), &live, &cancel);
        stopper.join().unwrap();
        assert_eq!(r, Err(LoadError::Interrupted));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
