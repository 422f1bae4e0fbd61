use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const MS: u64 = 1_000_000;
const S: u64 = 1_000 * MS;
const T0: u64 = 1_000 * S;

fn params() -> LeaseParams {
    LeaseParams {
        capacity: 1_000,
        window_ns: 2 * S,
        timeout_ns: 50 * MS,
        refill_period_ns: 250 * MS,
        min_hits: 10,
        max_hits: 250,
        initial_hits: 40,
        probe_period_ns: 500 * MS,
    }
}

impl Lease {
    /// Answers the call in flight.
    fn on_answer_now(&mut self, answer: Answer, params: &LeaseParams, now_ns: u64) -> Switch {
        self.on_answer(answer, self.call_deadline_ns, params, now_ns).expect("the call in flight")
    }
}

fn granted(remaining: u64) -> Answer {
    Answer::Granted { remaining: Some(remaining), until_reset_ns: Some(2 * S) }
}

/// A lease that was granted `hits` with `remaining` left for the fleet.
fn leased(hits: u32, remaining: u64) -> Lease {
    let p = params();
    let mut l = Lease::default();
    l.start_call(&p, T0);
    l.call_hits = hits;
    assert_eq!(l.on_answer_now(granted(remaining), &p, T0), Switch::ToFleet);
    l
}

#[test]
fn a_new_lease_is_local_and_calls_the_service_at_once_one_call_per_envoy() {
    let p = params();
    let mut l = Lease::default();
    assert_eq!(l.mode, Mode::Local);
    assert_eq!(l.start_call(&p, T0), Some(p.initial_hits), "its share of a refill period");
    assert_eq!(l.start_call(&p, T0), None, "a call is in flight");
}

#[test]
fn a_grant_switches_to_fleet_mode_and_its_tokens_are_spent_exactly() {
    let p = params();
    let mut l = leased(100, 900);
    assert_eq!(l.mode, Mode::Fleet);
    for _ in 0..100 {
        assert_eq!(l.take(0, &p, T0 + MS), Ok(()));
    }
    assert_eq!(l.tokens, 0);
    for _ in 0..p.min_hits {
        assert_eq!(l.take(0, &p, T0 + MS), Ok(()), "on credit while the refill is on its way");
    }
    assert_eq!(l.take(0, &p, T0 + MS), Err(Refused { wait_ns: p.refill_period_ns }));
    assert_eq!(l.debt, u64::from(p.min_hits));
}

#[test]
fn the_low_water_mark_claims_one_refill_sized_from_the_observed_rate() {
    let p = params();
    let mut l = leased(100, 900);
    for i in 0..49 {
        l.take(0, &p, T0 + i * MS).unwrap();
    }
    assert_eq!(l.start_call(&p, T0 + 49 * MS), None, "51 left, above half of 100");
    l.take(0, &p, T0 + 49 * MS).unwrap();
    // 50 tokens in 50 ms is 1000/s: two refill periods of it is 500, capped at 250.
    assert_eq!(l.start_call(&p, T0 + 50 * MS), Some(250));
    assert_eq!(l.start_call(&p, T0 + 50 * MS), None);
}

#[test]
fn the_credit_has_reserves_too_so_its_last_share_is_kept_for_the_most_important_class() {
    let p = params(); // min_hits 10, capacity 1000
    let mut l = leased(1, 900);
    l.take(0, &p, T0 + MS).unwrap();
    let sheddable = (0..20).filter(|_| l.take(500, &p, T0 + MS).is_ok()).count();
    assert_eq!(sheddable, 5, "half of the credit for a reserve of half");
    let critical = (0..20).filter(|_| l.take(0, &p, T0 + MS).is_ok()).count();
    assert_eq!(critical, 5, "the rest of it");
    assert_eq!(l.debt, 10);
}

#[test]
fn credit_is_paid_from_the_next_grant() {
    let p = params();
    let mut l = leased(1, 900);
    for _ in 0..4 {
        l.take(0, &p, T0 + MS).unwrap();
    }
    assert_eq!((l.tokens, l.debt), (0, 3));
    l.start_call(&p, T0 + MS).unwrap();
    l.call_hits = 50;
    l.on_answer_now(granted(850), &p, T0 + 2 * MS);
    assert_eq!((l.tokens, l.debt), (47, 0));
}

#[test]
fn a_lease_never_asks_for_more_than_the_fleet_has_left() {
    let p = params();
    let mut l = leased(20, 30);
    for _ in 0..15 {
        l.take(0, &p, T0 + 100 * MS).unwrap();
    }
    assert_eq!(l.start_call(&p, T0 + 100 * MS), Some(30));
}

#[test]
fn a_class_stops_where_its_reserve_of_the_fleet_begins() {
    let p = params();
    // 400 unleased + 100 here = 500 known left; a reserve of 0.5 x 1000 keeps those 500.
    let mut l = leased(100, 400);
    let sheddable_reserve = 500;
    assert!(l.take(sheddable_reserve, &p, T0 + MS).is_err());
    assert_eq!(l.take(0, &p, T0 + MS), Ok(()), "critical still takes");
    let mut l = leased(100, 401);
    assert_eq!(l.take(sheddable_reserve, &p, T0 + MS), Ok(()));
    assert!(l.take(sheddable_reserve, &p, T0 + MS).is_err());
}

#[test]
fn a_refusal_at_the_reserve_waits_for_the_window_to_reset() {
    let p = params();
    let mut l = leased(10, 0);
    assert_eq!(l.take(995, &p, T0 + S / 2), Err(Refused { wait_ns: S + S / 2 }));
}

#[test]
fn unspent_tokens_expire_when_the_window_resets_and_the_fleet_is_full_again() {
    let p = params();
    let mut l = leased(100, 0);
    assert_eq!(l.start_call(&p, T0 + S), None, "nothing left to lease in this window");
    l.take(0, &p, T0 + 2 * S).unwrap();
    assert_eq!((l.tokens, l.debt), (0, 1), "the block expired with the window: on credit");
    assert_eq!(l.fleet_remaining, p.capacity);
    assert!(l.start_call(&p, T0 + 2 * S).is_some());
}

#[test]
fn an_over_limit_answer_keeps_fleet_mode_and_the_next_call_asks_no_more_than_remains() {
    let p = params();
    let mut l = leased(100, 900);
    for _ in 0..100 {
        l.take(0, &p, T0 + 10 * MS).unwrap();
    }
    let hits = l.start_call(&p, T0 + 10 * MS).unwrap();
    assert!(hits > 5);
    let answer = Answer::OverLimit { remaining: Some(5), until_reset_ns: Some(S) };
    assert_eq!(l.on_answer_now(answer, &p, T0 + 11 * MS), Switch::None);
    assert_eq!(l.mode, Mode::Fleet);
    assert_eq!(l.start_call(&p, T0 + 11 * MS), Some(5));
}

#[test]
fn a_failed_call_switches_to_local_mode_drops_the_block_and_probes_later() {
    let p = params();
    let mut l = leased(100, 900);
    l.tokens = 10;
    let hits = l.start_call(&p, T0 + MS);
    assert!(hits.is_some());
    assert_eq!(l.on_answer_now(Answer::Failed, &p, T0 + 2 * MS), Switch::ToLocal);
    assert_eq!((l.mode, l.tokens), (Mode::Local, 0));
    assert_eq!(l.start_call(&p, T0 + 2 * MS + p.probe_period_ns - 1), None);
    assert_eq!(l.start_call(&p, T0 + 2 * MS + p.probe_period_ns), Some(p.initial_hits));
    assert_eq!(l.on_answer_now(granted(500), &p, T0 + 3 * S), Switch::ToFleet);
}

#[test]
fn a_limit_that_never_reached_its_service_reports_its_first_failure_once() {
    let p = params();
    let mut l = Lease::default();
    l.start_call(&p, T0);
    assert_eq!(l.on_answer_now(Answer::Failed, &p, T0), Switch::ToLocal, "logged: the service was never reached");
    l.start_call(&p, T0 + p.probe_period_ns);
    assert_eq!(l.on_answer_now(Answer::Failed, &p, T0 + p.probe_period_ns), Switch::None, "the probes are not");
    let mut expired = Lease::default();
    expired.start_call(&p, T0);
    assert_eq!(expired.expire_call(&p, T0 + p.timeout_ns), Switch::ToLocal, "a first call unanswered too");
}

#[test]
fn a_call_never_answered_fails_at_its_deadline_so_nothing_waits_on_it() {
    let p = params();
    let mut l = leased(100, 900);
    l.tokens = 0;
    l.start_call(&p, T0 + MS).unwrap();
    assert_eq!(l.expire_call(&p, T0 + MS + p.timeout_ns - 1), Switch::None);
    assert_eq!(l.expire_call(&p, T0 + MS + p.timeout_ns), Switch::ToLocal);
    assert_eq!(l.call_deadline_ns, 0, "the claim is released");
}

#[test]
fn a_late_answer_to_a_call_declared_failed_is_ignored() {
    let p = params();
    let mut l = leased(100, 900);
    l.tokens = 0;
    l.start_call(&p, T0 + MS).unwrap();
    let first = l.call_deadline_ns;
    l.expire_call(&p, first);
    l.start_call(&p, first + p.probe_period_ns).unwrap();
    assert_eq!(l.on_answer(granted(500), first, &p, first + p.probe_period_ns + MS), None, "stale");
    assert_eq!((l.mode, l.tokens), (Mode::Local, 0), "the late grant counted nothing");
    assert_eq!(l.on_answer_now(granted(500), &p, first + p.probe_period_ns + MS), Switch::ToFleet);
}

#[test]
fn without_limit_remaining_a_reserve_holds_against_what_this_envoy_was_granted() {
    let p = params();
    let mut l = Lease::default();
    l.start_call(&p, T0);
    l.call_hits = 250;
    l.on_answer_now(Answer::Granted { remaining: None, until_reset_ns: None }, &p, T0);
    // This Envoy alone has taken 250 of 1000: 750 left as far as it knows, with its 250 unspent.
    assert_eq!((l.fleet_remaining, l.tokens), (750, 250));
    assert_eq!(l.window_end_ns, T0 + p.window_ns, "windows of the configured length");
    for _ in 0..250 {
        if l.take(500, &p, T0 + MS).is_err() {
            break;
        }
    }
    assert_eq!(l.tokens, 0, "750 + 250 - 250 >= 500: the sheddable class may spend its block");
    assert!(l.start_call(&p, T0 + MS).is_some());
    l.call_hits = 250;
    l.on_answer_now(Answer::Granted { remaining: None, until_reset_ns: None }, &p, T0 + 2 * MS);
    // 500 granted to it in all: with 250 unspent, sheddable may take 250 more, leaving the 500.
    assert_eq!(l.fleet_remaining, 500);
    let taken = (0..300).filter(|_| l.take(500, &p, T0 + 3 * MS).is_ok()).count();
    assert_eq!(taken, 250);
    assert_eq!(l.window_end_ns, T0 + p.window_ns, "a later answer does not move the window");
}

#[test]
fn an_over_limit_answer_without_remaining_halves_the_next_call() {
    let p = params();
    let mut l = leased(100, 900);
    l.tokens = 0;
    assert!(l.start_call(&p, T0 + MS).is_some());
    l.call_hits = 80;
    l.on_answer_now(Answer::OverLimit { remaining: None, until_reset_ns: None }, &p, T0 + MS);
    assert_eq!(l.fleet_remaining, 40);
    assert!(l.start_call(&p, T0 + 2 * MS).is_some_and(|hits| hits <= 40));
}

#[test]
fn the_stored_words_round_trip() {
    let mut l = leased(123, 456);
    l.start_call(&params(), T0 + 5 * S);
    l.debt = 7;
    assert_eq!(Lease::from_words(&l.to_words()), l);
}

/// A rate limit service with fixed windows, as Limitador counts: a call is granted whole or
/// refused whole, and refused hits are not counted.
struct Service {
    capacity: u64,
    window_ns: u64,
    window: u64,
    counted: u64,
    reports_remaining: bool,
}

impl Service {
    fn call(&mut self, hits: u32, now_ns: u64) -> Answer {
        let window = now_ns / self.window_ns;
        if window != self.window {
            self.window = window;
            self.counted = 0;
        }
        let until_reset_ns = Some((window + 1) * self.window_ns - now_ns);
        let hits = u64::from(hits);
        if self.counted + hits > self.capacity {
            return Answer::OverLimit { remaining: self.report(self.capacity - self.counted), until_reset_ns };
        }
        self.counted += hits;
        Answer::Granted { remaining: self.report(self.capacity - self.counted), until_reset_ns }
    }

    /// `limit_remaining` as this service reports it: not at all, like limitador-server.
    fn report(&self, remaining: u64) -> Option<u64> {
        self.reports_remaining.then_some(remaining)
    }
}

#[test]
fn three_envoys_with_uneven_load_at_five_times_the_limit_admit_the_fleet_limit_and_never_more() {
    three_envoys_at_five_times_the_limit(true);
}

#[test]
fn without_limit_remaining_from_the_service_the_limit_still_holds_fleet_wide() {
    three_envoys_at_five_times_the_limit(false);
}

/// Envoys sharing one simulated service, on a 1 ms clock; an answer arrives 1 ms after its call.
struct SimulatedFleet {
    params: LeaseParams,
    service: Service,
    envoys: Vec<Lease>,
    /// Per Envoy: (when it arrives, the call's deadline, the answer).
    pending: Vec<Option<(u64, u64, Answer)>>,
    calls: u64,
}

impl SimulatedFleet {
    fn new(envoys: usize, reports_remaining: bool) -> SimulatedFleet {
        let params = params();
        let service = Service {
            capacity: params.capacity,
            window_ns: params.window_ns,
            window: 0,
            counted: 0,
            reports_remaining,
        };
        SimulatedFleet {
            params,
            service,
            envoys: vec![Lease::default(); envoys],
            pending: vec![None; envoys],
            calls: 0,
        }
    }

    /// Delivers the answer due at `now_ns` to Envoy `e`.
    fn deliver(&mut self, e: usize, now_ns: u64) {
        if let Some((at, deadline, answer)) = self.pending[e] {
            if at <= now_ns {
                self.envoys[e].on_answer(answer, deadline, &self.params, now_ns);
                self.pending[e] = None;
            }
        }
    }

    /// One request of a class with `reserve_tokens` at Envoy `e`: whether fleet mode admitted it.
    fn request(&mut self, e: usize, reserve_tokens: u64, now_ns: u64) -> bool {
        let lease = &mut self.envoys[e];
        if let Some(hits) = lease.start_call(&self.params, now_ns) {
            self.calls += 1;
            self.pending[e] = Some((now_ns + MS, lease.call_deadline_ns, self.service.call(hits, now_ns)));
        }
        lease.mode == Mode::Fleet && lease.take(reserve_tokens, &self.params, now_ns).is_ok()
    }
}

fn three_envoys_at_five_times_the_limit(reports_remaining: bool) {
    let mut fleet = SimulatedFleet::new(3, reports_remaining);
    let p = fleet.params;
    let shares = [60u64, 30, 10];
    let offered_per_ms = 5 * p.capacity / (p.window_ns / MS); // 5x the fleet limit, per ms
    let windows = 10u64;
    let start = 1_000 * p.window_ns;
    let mut admitted_per_window = vec![0u64; windows as usize];
    for ms in 0..windows * p.window_ns / MS {
        let now = start + ms * MS;
        for (e, share) in shares.iter().enumerate() {
            fleet.deliver(e, now);
            // Integer arrivals: 60/30/10 of 2.5 per ms, spread over the milliseconds.
            let arrivals = (ms + 1) * offered_per_ms * share / 100 - ms * offered_per_ms * share / 100;
            for _ in 0..arrivals {
                if fleet.request(e, 0, now) {
                    admitted_per_window[(ms * MS / p.window_ns) as usize] += 1;
                }
            }
        }
    }
    // The first window includes the start (local mode first); judge the steady ones.
    for (w, &admitted) in admitted_per_window.iter().enumerate().skip(1) {
        let credit = 3 * u64::from(p.min_hits);
        assert!(admitted <= p.capacity + credit, "window {w}: {admitted} admitted");
        assert!(admitted * 100 >= p.capacity * 97, "window {w}: {admitted} admitted, expected within 3%");
    }
    let admitted: u64 = admitted_per_window.iter().sum();
    let calls = fleet.calls;
    eprintln!("admitted per window {admitted_per_window:?}; {calls} calls");
    assert!(calls * 10 < admitted, "{calls} calls for {admitted} admitted requests");
}

#[test]
fn a_sheddable_flood_on_one_envoy_leaves_the_reserve_to_critical_traffic_on_another() {
    let mut fleet = SimulatedFleet::new(2, true);
    let p = fleet.params;
    let (flooded, trickle) = (0, 1);
    let sheddable_reserve = p.capacity / 2;
    let start = 1_000 * p.window_ns;
    let (mut critical_offered, mut critical_admitted) = (0u64, 0u64);
    let windows = 10u64;
    let mut sheddable_per_window = vec![0u64; windows as usize];
    for ms in 0..windows * p.window_ns / MS {
        let now = start + ms * MS;
        fleet.deliver(flooded, now);
        fleet.deliver(trickle, now);
        // 10 sheddable requests per ms on one Envoy (20x the limit); one critical request
        // every 20 ms on the other.
        for _ in 0..10 {
            if fleet.request(flooded, sheddable_reserve, now) {
                sheddable_per_window[(ms * MS / p.window_ns) as usize] += 1;
            }
        }
        if ms % 20 == 0 {
            critical_offered += 1;
            critical_admitted += u64::from(fleet.request(trickle, 0, now));
        }
    }
    eprintln!("critical {critical_admitted} of {critical_offered}; sheddable per window {sheddable_per_window:?}");
    // The trickle's first request arrives before any answer (local mode): the rest must pass.
    assert!(critical_admitted * 100 >= (critical_offered - 1) * 99, "{critical_admitted} of {critical_offered}");
    for (w, &n) in sheddable_per_window.iter().enumerate() {
        // The reserve can be short by what the trickle's Envoy holds unspent (one lease).
        assert!(n <= p.capacity - sheddable_reserve + u64::from(p.max_hits), "window {w}: {n} sheddable");
        assert!(n + u64::from(p.max_hits) >= p.capacity - sheddable_reserve, "window {w}: only {n} sheddable");
    }
}

// Found by fuzzing (fuzz/, target `lease`): the sum overflowed (a panic in a debug build).
#[test]
fn a_stored_lease_with_huge_numbers_still_takes_without_overflowing() {
    let p = params();
    let mut l = Lease {
        mode: Mode::Fleet,
        tokens: u64::MAX,
        fleet_remaining: u64::MAX,
        window_end_ns: T0 + S,
        ..Lease::default()
    };
    assert_eq!(l.take(0, &p, T0), Ok(()));
    assert_eq!(l.tokens, u64::MAX - 1);
}
