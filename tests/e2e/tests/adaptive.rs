//! The adaptive in-flight limit in a real Envoy (2 workers) in front of a database-like upstream
//! (8 connections: latency grows with concurrency past 8; its pool fails past 32). The only
//! number configured is a ceiling far above the knee: the limit finds the knee itself, falls
//! when the database slows, and comes back to where it had settled when the database recovers;
//! checkout is served throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use surgeguard_e2e::client::{open_loop, Load, Req};
use surgeguard_harness::database::Database;
use surgeguard_harness::envoy::{Bootstrap, Envoy, Options, METRIC_PREFIXES};
use surgeguard_harness::outcome::Outcome;

/// The database's connections: the knee.
const CONNECTIONS: u64 = 8;
const POOL: u64 = 32;
const SERVICE: Duration = Duration::from_millis(40);
const CEILING: u64 = 400;

/// One sample every 100 ms: L, the database's in-flight peak since the last sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    limit: u64,
    db_peak: u64,
}

struct Phase {
    name: &'static str,
    outcomes: Vec<Outcome>,
    samples: Vec<Sample>,
}

impl Phase {
    fn served_pct(&self, label: &str) -> f64 {
        let all = self.outcomes.iter().filter(|o| o.label == label).count().max(1);
        let ok = self.outcomes.iter().filter(|o| o.label == label && o.status == Some(200)).count();
        100.0 * ok as f64 / all as f64
    }
    /// Samples in the last `share` of the phase.
    fn tail(&self, share: f64) -> &[Sample] {
        let skip = ((1.0 - share) * self.samples.len() as f64) as usize;
        self.samples.get(skip..).unwrap_or(&[])
    }
    fn limits(&self, share: f64) -> (u64, u64) {
        let t = self.tail(share);
        (t.iter().map(|s| s.limit).min().unwrap_or(0), t.iter().map(|s| s.limit).max().unwrap_or(0))
    }
    fn db_peak(&self, share: f64) -> u64 {
        self.tail(share).iter().map(|s| s.db_peak).max().unwrap_or(0)
    }
    /// The median of L over the last `share` of the phase.
    fn median_limit(&self, share: f64) -> u64 {
        let mut l: Vec<u64> = self.tail(share).iter().map(|s| s.limit).collect();
        l.sort_unstable();
        l.get(l.len() / 2).copied().unwrap_or(0)
    }
}

/// Open-loop load at `rate_per_s`: one checkout (critical) in 20, the rest browse.
fn load(port: u16, rate_per_s: f64, duration: Duration) -> Vec<Outcome> {
    open_loop(Load {
        port,
        rate_per_s,
        duration,
        make: Arc::new(
            |n| if n % 20 == 0 { (Req::get("/checkout"), "checkout") } else { (Req::get("/browse"), "browse") },
        ),
        timeout: Duration::from_secs(10),
        local_address: None,
    })
}

fn run_phase(
    name: &'static str,
    envoy: &Envoy,
    port: u16,
    samples: &Arc<Mutex<Vec<Sample>>>,
    rate: f64,
    secs: u64,
) -> Phase {
    let _ = envoy;
    let from = samples.lock().unwrap().len();
    let outcomes = load(port, rate, Duration::from_secs(secs));
    let samples = samples.lock().unwrap()[from..].to_vec();
    let phase = Phase { name, outcomes, samples };
    let (lo, hi) = phase.limits(0.5);
    eprintln!(
        "{:<8} L over its second half {lo}..{hi}; database peak in flight {} (second half {}); checkout {:.1}% served, browse {:.1}%; L trace {:?}",
        phase.name,
        phase.db_peak(1.0),
        phase.db_peak(0.5),
        phase.served_pct("checkout"),
        phase.served_pct("browse"),
        phase.samples.iter().step_by(5).map(|s| s.limit).collect::<Vec<_>>(),
    );
    phase
}

#[test]
fn the_limit_finds_the_knee_falls_when_the_database_slows_and_comes_back_when_it_recovers() {
    let db = Database::start(CONNECTIONS, POOL, SERVICE).unwrap();
    let config = format!(
        r#"{{"classes": [{{"name": "critical"}}, {{"name": "browse", "reserve": 0.25}}],
            "rules": [{{"match": {{"path_prefix": "/checkout"}}, "class": "critical"}}],
            "concurrency": {{"max_in_flight": {CEILING}, "adaptive": {{}}}}}}"#
    );
    let envoy = Envoy::start(&Bootstrap::new(db.port, Some(&config)).yaml(), &Options::default())
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    assert_eq!(envoy.metric("surgeguard.adaptive.limit"), CEILING, "L starts at the ceiling");

    // A sampler: L (the gauge) and the database's peak concurrency, every 100 ms.
    let samples = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, stats) = (Arc::clone(&samples), Arc::clone(&stop), Arc::clone(&db.stats));
        let admin = envoy.admin_port;
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                let limit = surgeguard_harness::client::request(admin, &Req::get("/stats?filter=adaptive.limit"))
                    .ok()
                    .and_then(|r| {
                        let stats = surgeguard_harness::stats::parse(&String::from_utf8_lossy(&r.body));
                        METRIC_PREFIXES
                            .iter()
                            .find_map(|p| stats.get(&format!("{p}surgeguard.adaptive.limit")).copied())
                    })
                    .unwrap_or(0);
                let sample = Sample { limit, db_peak: stats.take_peak_in_flight() };
                samples.lock().unwrap().push(sample);
            }
        })
    };

    // Calm (about a third of the database's capacity of 200/s), then a surge at 1.5x capacity.
    let calm = run_phase("calm", &envoy, port, &samples, 70.0, 4);
    let surge = run_phase("surge", &envoy, port, &samples, 300.0, 12);
    db.set_service_time(SERVICE * 3);
    let slow = run_phase("slow", &envoy, port, &samples, 300.0, 10);
    db.set_service_time(SERVICE);
    let restored = run_phase("restored", &envoy, port, &samples, 300.0, 10);
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let last = samples.lock().unwrap().last().copied();
    eprintln!(
        "L median over the last 40%: surge {}, slow {}, restored {}",
        surge.median_limit(0.4),
        slow.median_limit(0.4),
        restored.median_limit(0.4)
    );
    eprintln!(
        "last sample {last:?}; decreases {}, increases {}, baseline {} us, pool exhausted {} times",
        envoy.metric("surgeguard.adaptive.decreases"),
        envoy.metric("surgeguard.adaptive.increases"),
        envoy.metric("surgeguard.adaptive.baseline_us"),
        db.stats.exhausted()
    );

    // Calm: nothing refused, L not cut.
    assert_eq!(calm.served_pct("browse"), 100.0);
    // Surge: L settled near the knee with no operator-sized number (browse may use 3/4 of L).
    let (lo, hi) = surge.limits(0.4);
    assert!(lo >= CONNECTIONS / 2 && hi <= 4 * CONNECTIONS, "L settled at {lo}..{hi}, knee {CONNECTIONS}");
    assert!(surge.db_peak(0.4) <= 2 * CONNECTIONS, "database peak {} once settled", surge.db_peak(0.4));
    // Calm left L near twice the traffic in flight, so the surge meets it within a window or two;
    // the first second may still admit past the knee (L acts once per window), so checkout is
    // held to 95% in this phase, and served from then on.
    assert!(surge.served_pct("checkout") >= 95.0, "checkout {:.1}%", surge.served_pct("checkout"));
    // The database slows: L does not climb (it falls when the surge left it above the knee; a
    // connection-bound database keeps its knee in connections, so L may already be there), and
    // the database stays below its pool.
    let (slow_lo, _) = slow.limits(1.0);
    assert!(slow_lo <= lo, "L went from {lo} to {slow_lo} while the database was slow");
    assert!(slow.db_peak(0.5) < POOL, "database peak {} while slow", slow.db_peak(0.5));
    assert!(slow.served_pct("checkout") >= 90.0, "checkout {:.1}% while slow", slow.served_pct("checkout"));
    // Restored: L comes back to where the surge had settled it (within 30%), so the database is
    // used as before it slowed.
    let settled = surge.median_limit(0.4);
    let back = restored.median_limit(0.4);
    assert!(
        back.abs_diff(settled) * 10 <= 3 * settled,
        "L settled at {settled} in the surge and at {back} after the database recovered"
    );
    assert!(restored.served_pct("checkout") >= 95.0);
    assert!(envoy.metric("surgeguard.adaptive.decreases") > 0);
    assert!(envoy.metric("surgeguard.adaptive.increases") > 0);
}

#[test]
fn in_shadow_mode_the_limit_is_computed_and_would_be_sheds_counted_but_nothing_is_refused() {
    let db = Database::start(CONNECTIONS, POOL, SERVICE).unwrap();
    let config = format!(
        r#"{{"mode": "shadow",
            "classes": [{{"name": "critical"}}, {{"name": "browse", "reserve": 0.25}}],
            "rules": [{{"match": {{"path_prefix": "/checkout"}}, "class": "critical"}}],
            "concurrency": {{"max_in_flight": {CEILING}, "adaptive": {{}}}}}}"#
    );
    let envoy = Envoy::start(&Bootstrap::new(db.port, Some(&config)).yaml(), &Options::default())
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    let _calm = load(port, 70.0, Duration::from_secs(3));
    // Past the database's capacity (200/s): its latency climbs, and in shadow nothing holds it.
    let surge = load(port, 300.0, Duration::from_secs(8));
    let limit = envoy.metric("surgeguard.adaptive.limit");
    let would_be_sheds = envoy.metric("surgeguard.class.browse.shadow_shed");
    eprintln!(
        "shadow: L {limit}, would-be sheds {would_be_sheds}, decreases {}; statuses {:?}",
        envoy.metric("surgeguard.adaptive.decreases"),
        surge.iter().fold(std::collections::BTreeMap::new(), |mut m, o| {
            *m.entry(o.status).or_insert(0) += 1;
            m
        })
    );
    assert!(limit < CEILING / 4, "L was computed and followed the latency: {limit}");
    assert!(envoy.metric("surgeguard.adaptive.decreases") > 0);
    assert!(would_be_sheds > 0, "sheds the limit would have made are counted");
    assert_eq!(envoy.metric("surgeguard.class.browse.shed"), 0, "nothing is refused");
    assert_eq!(envoy.metric("surgeguard.class.critical.shed"), 0, "nothing is refused");
    let admitted =
        envoy.metric("surgeguard.class.browse.admitted") + envoy.metric("surgeguard.class.critical.admitted");
    assert!(admitted > 0);
}
