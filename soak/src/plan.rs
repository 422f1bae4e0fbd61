//! The soak's timeline and its offered load, made in advance from a seed (the same seed gives
//! the same run): the storefront's mix (the demo's kinds, through `envoy/storefront.json`'s
//! classes) at a base rate with a surge every minute, client aborts, requests the upstream
//! resets or stalls, floods of distinct API keys, and the moments the VM is crashed, each after
//! a few long requests that the dying VM may hold in flight.
//!
//! Invariants: no request is scheduled in the [`CRASH_QUIET`] before a crash, so every worker
//! has flushed its counters (its tick runs every second) when one of them dies and the dead VM
//! takes no uncounted decision with it; the warm-up holds a flood and a crash, so the state the
//! soak builds up (keyed slots, a replaced VM) is there before the memory baseline is taken.

use crate::configs::KEY_HEADER;
use crate::rig::HELD_PREFIX;
use std::time::Duration;
use surgeguard_demo::rng::Rng;
use surgeguard_demo::traffic::{self, Kind, Mix};
use surgeguard_harness::client::Req;
use surgeguard_harness::faulty::{DELAY_HEADER, FAULT_HEADER};

/// Requests per second outside surges and floods.
pub const BASE_RATE_PER_S: f64 = 100.0;
/// A surge: this many times the base rate, for [`SURGE`], once a minute.
pub const SURGE_FACTOR: f64 = 3.0;
pub const SURGE: Duration = Duration::from_secs(10);
/// A flood of API keys: this many requests per second, for [`FLOOD`], every [`FLOOD_PERIOD`].
pub const FLOOD_RATE_PER_S: f64 = 150.0;
pub const FLOOD: Duration = Duration::from_secs(5);
pub const FLOOD_PERIOD: Duration = Duration::from_secs(30);
/// Of the flood, the share sent with a key never seen before (the rest reuse a few hot keys,
/// which the keyed limit then refuses).
pub const FLOOD_NEW_KEY_SHARE: f64 = 0.8;
/// Shares of the storefront requests that end in each fault.
pub const ABORT_SHARE: f64 = 0.02;
pub const RESET_SHARE: f64 = 0.02;
pub const STALL_SHARE: f64 = 0.01;
/// An aborting client gives up after this long, on a request the upstream answers later.
pub const ABORT_AFTER: Duration = Duration::from_millis(50);
const ABORTED_REQUEST_DELAY_MS: u64 = 400;
/// No request in this long before a crash (see the module docs)...
pub const CRASH_QUIET: Duration = Duration::from_millis(1_500);
/// ...nor in this long after its scheduled moment, the crasher's leeway to send it.
pub const CRASH_SLACK: Duration = Duration::from_millis(100);
/// A crash every this long after the warm-up's, and one [`LAST_CRASH_BEFORE_END`] before the end.
pub const CRASH_PERIOD: Duration = Duration::from_secs(60);
/// The last crash: its VM's in-flight entry is still there when the load ends, so the end waits
/// for it to expire (the only way a dead VM's slots are ever given back).
pub const LAST_CRASH_BEFORE_END: Duration = Duration::from_secs(4);
/// Before each crash's quiet, this many requests the upstream answers after [`HELD_DELAY_MS`]:
/// spread over Envoy's workers by their connections, some are in flight on the VM that dies.
pub const HELD_REQUESTS: u64 = 16;
pub const HELD_DELAY_MS: u64 = 3_000;
pub const HELD_KIND: &str = "held";

/// What a request is meant to meet on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    None,
    /// The client closes the connection before the response.
    Abort,
    /// The upstream closes the connection without a response.
    Reset,
    /// The upstream never answers; Envoy's route timeout does.
    Stall,
}

/// A request's label: its kind (the demo's, or `api` for the flood) and its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Label {
    pub kind: &'static str,
    pub fault: Fault,
}

pub const API_KIND: &str = "api";

/// When things happen, from the start of the load.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub duration: Duration,
    /// The memory baseline is taken here.
    pub warm_up: Duration,
    pub crashes: Vec<Duration>,
    pub floods: Vec<Duration>,
    pub surges: Vec<Duration>,
}

impl Timeline {
    /// A quarter of the run warms up, at least 15 s and at most a minute.
    pub fn new(duration: Duration) -> Timeline {
        let warm_up = duration.mul_f64(0.25).clamp(Duration::from_secs(15), Duration::from_secs(60));
        let every = |first: Duration, period: Duration| {
            std::iter::successors(Some(first), move |t| Some(*t + period)).take_while(move |t| *t < duration)
        };
        let last = duration.saturating_sub(LAST_CRASH_BEFORE_END);
        let mut crashes = vec![warm_up.saturating_sub(Duration::from_secs(5))];
        crashes
            .extend(every(warm_up + Duration::from_secs(25), CRASH_PERIOD).filter(|t| *t + CRASH_PERIOD / 4 <= last));
        crashes.push(last);
        Timeline {
            duration,
            warm_up,
            crashes,
            floods: every(Duration::from_secs(3), FLOOD_PERIOD).collect(),
            surges: every(Duration::from_secs(20), Duration::from_secs(60)).collect(),
        }
    }

    fn within(starts: &[Duration], length: Duration, t: Duration) -> bool {
        starts.iter().any(|s| t >= *s && t < *s + length)
    }

    fn quiet(&self, t: Duration) -> bool {
        self.crashes.iter().any(|c| t < *c + CRASH_SLACK && t + CRASH_QUIET >= *c)
    }

    /// Every arrival of the run, in time order: (when, what, label).
    pub fn arrivals(&self, seed: u64) -> Vec<(Duration, Req, Label)> {
        let mut rng = Rng::new(seed);
        let mix = Mix::default();
        let mut out = Vec::new();
        // The storefront: Poisson arrivals at the base rate, times the surge factor in a surge.
        let mut t = 0.0;
        loop {
            let now = Duration::from_secs_f64(t);
            if now >= self.duration {
                break;
            }
            let rate = BASE_RATE_PER_S * if Self::within(&self.surges, SURGE, now) { SURGE_FACTOR } else { 1.0 };
            if !self.quiet(now) {
                let (req, label) = storefront_request(mix.pick(&mut rng), &mut rng);
                out.push((now, req, label));
            }
            t += rng.exponential(1.0 / rate);
        }
        // The floods: evenly spaced, mostly new keys.
        let mut new_keys = 0u64;
        for start in &self.floods {
            let n = (FLOOD_RATE_PER_S * FLOOD.as_secs_f64()) as u64;
            for i in 0..n {
                let at = *start + FLOOD.mul_f64(i as f64 / n as f64);
                if at >= self.duration || self.quiet(at) {
                    continue;
                }
                let key = if rng.unit() < FLOOD_NEW_KEY_SHARE {
                    new_keys += 1;
                    format!("flood-{new_keys}")
                } else {
                    format!("hot-{}", rng.below(5))
                };
                let req = Req::get(&format!("/api/items/{}", rng.below(1000))).header(KEY_HEADER, &key);
                out.push((at, req, Label { kind: API_KIND, fault: Fault::None }));
            }
        }
        // The held requests, just before each crash's quiet.
        for c in &self.crashes {
            let at = c.saturating_sub(CRASH_QUIET + Duration::from_millis(100));
            for i in 0..HELD_REQUESTS {
                let req =
                    Req::get(&format!("{HELD_PREFIX}products/{i}")).header(DELAY_HEADER, &HELD_DELAY_MS.to_string());
                out.push((at, req, Label { kind: HELD_KIND, fault: Fault::None }));
            }
        }
        out.sort_by_key(|(at, _, _)| *at);
        out
    }
}

/// A storefront request of `kind` (the demo's), with its fault and the upstream's service time.
fn storefront_request(kind: Kind, rng: &mut Rng) -> (Req, Label) {
    let req = traffic::request(kind, rng);
    let u = rng.unit();
    let (req, fault) = if u < ABORT_SHARE {
        (req.header(DELAY_HEADER, &ABORTED_REQUEST_DELAY_MS.to_string()).abort_after(ABORT_AFTER), Fault::Abort)
    } else if u < ABORT_SHARE + RESET_SHARE {
        (req.header(FAULT_HEADER, "reset"), Fault::Reset)
    } else if u < ABORT_SHARE + RESET_SHARE + STALL_SHARE {
        (req.header(FAULT_HEADER, "stall"), Fault::Stall)
    } else {
        // Listing pages and checkouts are the heavier queries.
        let base_ms = match kind {
            Kind::Bot => 30,
            Kind::Checkout => 20,
            _ => 5,
        };
        (req.header(DELAY_HEADER, &(base_ms + rng.below(10)).to_string()), Fault::None)
    };
    (req, Label { kind: kind.name(), fault })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_warm_up_holds_a_crash_and_a_flood_and_nothing_is_sent_just_before_a_crash() {
        let t = Timeline::new(Duration::from_secs(60));
        assert_eq!(t.warm_up, Duration::from_secs(15));
        assert!(t.crashes[0] < t.warm_up && t.floods[0] + FLOOD < t.warm_up);
        assert_eq!(t.crashes, [10, 40, 56].map(Duration::from_secs), "warm-up, periodic, last");
        let arrivals = t.arrivals(1);
        for c in &t.crashes {
            let quiet = |at: Duration| at + CRASH_QUIET >= *c && at < *c + CRASH_SLACK;
            assert!(arrivals.iter().all(|(at, _, _)| !quiet(*at)), "quiet around {c:?}");
        }
        assert!(arrivals.windows(2).all(|w| w[0].0 <= w[1].0), "in time order");
    }

    #[test]
    fn every_fault_and_kind_is_in_the_load_in_about_its_share() {
        let arrivals = Timeline::new(Duration::from_secs(60)).arrivals(2);
        let count = |f: Fault| arrivals.iter().filter(|a| a.2.fault == f).count() as f64;
        let storefront = arrivals.iter().filter(|a| a.2.kind != API_KIND).count() as f64;
        assert!(storefront > 5_000.0, "{storefront}");
        for (fault, share) in [(Fault::Abort, ABORT_SHARE), (Fault::Reset, RESET_SHARE), (Fault::Stall, STALL_SHARE)] {
            let got = count(fault) / storefront;
            assert!((got - share).abs() < share / 2.0, "{fault:?}: {got}");
        }
        let keys: std::collections::BTreeSet<&str> = arrivals
            .iter()
            .flat_map(|a| a.1.headers.iter().filter(|h| h.0 == KEY_HEADER).map(|h| h.1.as_str()))
            .collect();
        assert!(keys.len() as u64 > crate::configs::MAX_KEYS, "the flood offers more keys than the bound");
    }

    #[test]
    fn a_long_run_crashes_once_a_minute_after_its_warm_up() {
        let t = Timeline::new(Duration::from_secs(600));
        assert_eq!(t.warm_up, Duration::from_secs(60));
        assert_eq!(t.crashes.len(), 1 + 9 + 1, "{:?}", t.crashes);
        assert_eq!(t.crashes.last(), Some(&Duration::from_secs(596)));
    }
}
