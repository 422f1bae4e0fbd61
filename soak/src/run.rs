//! One soak, in phases that each return what the next needs: [`load_with_faults`] (the load
//! and, beside it, the pushes, the crashes and the memory samples), [`visit_every_worker`] (so
//! that the last crash's VM is rebuilt), [`drain`] (wait until nothing is in flight),
//! [`settle`] (wait until Envoy's counters and its access log have everything), then the checks
//! (`checks`) judge what was observed.

use crate::faults::{crash_vms, push_configs, sample_rss, Crash, LoadWatch, Push};
use crate::plan::{Label, Timeline};
use crate::rig::{Rig, STAT_PREFIX};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_harness::client::{run_schedule, Outcome, Target};

/// A request with no response after this long is a failure.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the end may wait for in flight to reach 0: a dead VM's entry expires after 10 s
/// without a heartbeat (`record::LEASE_NS`), and the survivors' next heartbeat (every second)
/// drops it.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Each worker hands its counts to Envoy on its tick (every second), and Envoy flushes its
/// access log every second: waiting this long after the last request sees both complete.
pub const FLUSH_WAIT: Duration = Duration::from_millis(2_500);

pub const IN_FLIGHT_GAUGE: &str = "wasmcustom.surgeguard.in_flight";

/// What happened while the load ran.
pub struct Loaded {
    pub outcomes: Vec<Outcome<Label>>,
    pub pushes: Vec<Push>,
    pub crashes: Vec<Crash>,
    /// (seconds from the start of the load, Envoy's resident bytes).
    pub rss: Vec<(f64, u64)>,
    pub load_s: f64,
}

pub fn load_with_faults(rig: &Rig, timeline: &Timeline, seed: u64, shipped_config: &str) -> Result<Loaded, String> {
    let arrivals = timeline.arrivals(seed);
    let watch = Arc::new(LoadWatch::new());
    let stop = Arc::new(AtomicBool::new(false));
    let target = Target { port: rig.port, local_address: None, timeout: CLIENT_TIMEOUT };
    let t0 = Instant::now();
    std::thread::scope(|scope| {
        let pusher = {
            let (files, watch, stop) = (rig.files(), Arc::clone(&watch), Arc::clone(&stop));
            let (admin, shipped) = (rig.envoy.admin_port, shipped_config.to_string());
            scope.spawn(move || push_configs(files, admin, shipped, watch, stop))
        };
        let crasher = {
            let (watch, stop, at) = (Arc::clone(&watch), Arc::clone(&stop), timeline.crashes.clone());
            scope.spawn(move || crash_vms(rig.port, at, watch, stop))
        };
        let sampler = {
            let (watch, stop) = (Arc::clone(&watch), Arc::clone(&stop));
            scope.spawn(move || sample_rss(|| rig.envoy.rss_bytes(), watch, stop))
        };
        let outcomes = run_schedule(&target, arrivals, &watch, None);
        stop.store(true, Ordering::SeqCst);
        let pushes = pusher.join().map_err(|_| "the config pusher panicked".to_string())?;
        let crashes = crasher.join().map_err(|_| "the crasher panicked".to_string())?;
        let rss = sampler.join().map_err(|_| "the sampler panicked".to_string())?;
        let outcomes = outcomes.map_err(|e| format!("load: {e:?}"))?;
        Ok(Loaded { outcomes, pushes, crashes, rss, load_s: t0.elapsed().as_secs_f64() })
    })
}

/// Requests on fresh connections after the load, so that every worker serves again.
pub const VISITS: usize = 32;

/// A dead VM is rebuilt only when a request comes to its worker, and the last crash may leave a
/// worker the load's kept-alive connections never reach. Envoy's workers take connections as
/// the kernel spreads them, so [`VISITS`] connections miss a given one of 4 workers with
/// probability (3/4)^32, about 1 in 10,000. Returns the statuses (`None`: no response).
pub fn visit_every_worker(rig: &Rig) -> Vec<Option<u16>> {
    let request = format!(
        "GET /products/1 HTTP/1.1\r\nHost: storefront\r\nuser-agent: {}\r\nConnection: close\r\n\r\n",
        surgeguard_demo::traffic::BROWSER_UA
    );
    (0..VISITS).map(|_| surgeguard_harness::client::raw_request(rig.port, request.as_bytes())).collect()
}

/// In flight at the end, as the filter and Envoy count it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Drained {
    /// The filter's gauge `surgeguard.in_flight`.
    pub filter_in_flight: u64,
    /// Envoy's downstream requests still open.
    pub downstream_active: u64,
    /// Envoy's upstream requests still open.
    pub upstream_active: u64,
    /// How long after the load they took to get there.
    pub after_s: f64,
    /// The filter's count once Envoy had nothing open: slots of requests whose VM died with
    /// them in flight (the last crash's), given back only when that VM's entry expires.
    pub held_by_dead_vms: u64,
}

impl Drained {
    pub fn is_zero(&self) -> bool {
        self.filter_in_flight == 0 && self.downstream_active == 0 && self.upstream_active == 0
    }
}

/// Waits until nothing is in flight (at most [`DRAIN_LIMIT`]) and says where it stopped.
pub fn drain(rig: &Rig) -> Drained {
    let t0 = Instant::now();
    let mut held_by_dead_vms = 0;
    loop {
        let stats = rig.envoy.stats();
        let get = |name: &str| stats.get(name).copied().unwrap_or(0);
        let mut d = Drained {
            filter_in_flight: get(IN_FLIGHT_GAUGE),
            downstream_active: get(&format!("http.{STAT_PREFIX}.downstream_rq_active")),
            upstream_active: get("cluster.storefront.upstream_rq_active"),
            after_s: t0.elapsed().as_secs_f64(),
            held_by_dead_vms,
        };
        if d.downstream_active == 0 && d.upstream_active == 0 {
            held_by_dead_vms = held_by_dead_vms.max(d.filter_in_flight);
            d.held_by_dead_vms = held_by_dead_vms;
        }
        if d.is_zero() || t0.elapsed() > DRAIN_LIMIT {
            return d;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Envoy's counters and access log once both hold every request (or after 10 s more).
pub struct Settled {
    pub stats: BTreeMap<String, u64>,
    pub access_log: String,
    pub envoy_log: String,
}

pub fn settle(rig: &Rig) -> Settled {
    std::thread::sleep(FLUSH_WAIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = rig.envoy.stats();
        let access_log = rig.access_log();
        let requests = stats.get(&format!("http.{STAT_PREFIX}.downstream_rq_total")).copied().unwrap_or(0);
        if access_log.lines().count() as u64 >= requests || Instant::now() > deadline {
            return Settled { stats, access_log, envoy_log: rig.envoy.log() };
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
