use super::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

// ---------------------------------------------------------------------------------------------
// A simulated database and storefront, on simulated time.
//
// The database has `k` connections' worth of capacity: up to k requests run at full speed; past
// k they share it and contention wastes some (each runs at (k/n)^1.5 of full speed, so throughput
// falls as n grows: the knee, and the best limit, is k). Past `queue_bound` requests in it, a new
// one fails at once (the pool is exhausted: an upstream error). Arrivals are Poisson per class;
// admission is the in-flight limit with per-class maxima from L; the controller runs every window.
// ---------------------------------------------------------------------------------------------

/// A tiny deterministic PRNG (splitmix64).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.uniform().ln()
    }

    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }

    /// Log-normal with mean 1 and coefficient of variation `cv`.
    fn unit_lognormal(&mut self, cv: f64) -> f64 {
        let sigma2 = (1.0 + cv * cv).ln();
        (sigma2.sqrt() * self.normal() - sigma2 / 2.0).exp()
    }
}

#[derive(Clone, Copy)]
struct ClassSpec {
    reserve: f64,
    /// Arrivals per second at multiplier 1.
    rate_per_s: f64,
    /// Mean database work per request, milliseconds at full speed.
    work_ms: f64,
}

#[derive(Clone, Copy)]
struct Db {
    k: f64,
    queue_bound: usize,
    /// Multiplies every new request's work (a slowed database).
    slowdown: f64,
    /// Coefficient of variation of the work.
    cv: f64,
    /// Share of requests that fail at once (a failing replica).
    fail_share: f64,
}

const K: f64 = 16.0;
const WINDOW_MS: u64 = 200;

fn db() -> Db {
    Db { k: K, queue_bound: 64, slowdown: 1.0, cv: 0.2, fail_share: 0.0 }
}

fn params() -> AdaptiveParams {
    AdaptiveParams { window_ms: WINDOW_MS, ..AdaptiveParams::with_ceiling(160) }
}

/// The storefront: checkout (critical, 2.5% of calm work), browse, and search (slow, sheddable).
/// Calm: 39% of the database's capacity.
fn storefront() -> Vec<ClassSpec> {
    vec![
        ClassSpec { reserve: 0.0, rate_per_s: 10.0, work_ms: 20.0 },
        ClassSpec { reserve: 0.5, rate_per_s: 400.0, work_ms: 10.0 },
        ClassSpec { reserve: 0.75, rate_per_s: 50.0, work_ms: 40.0 },
    ]
}

/// One class, no reserve, at twice the database's capacity: L is the database's concurrency.
fn one_class_overload() -> Vec<ClassSpec> {
    vec![ClassSpec { reserve: 0.0, rate_per_s: 2.0 * K / 0.020, work_ms: 20.0 }]
}

#[derive(Clone, Copy, Default, Debug)]
struct ClassOutcome {
    arrivals: u64,
    /// Refused by the in-flight limit or failed by the database.
    not_served: u64,
    completed: u64,
    latency_us_sum: f64,
}

impl ClassOutcome {
    fn served_share(&self) -> f64 {
        1.0 - self.not_served as f64 / self.arrivals.max(1) as f64
    }

    fn mean_latency_ms(&self) -> f64 {
        self.latency_us_sum / self.completed.max(1) as f64 / 1_000.0
    }
}

/// One window as the test sees it.
#[derive(Clone, Copy, Debug)]
struct Trace {
    limit: u32,
    mean_in_flight: f64,
    baseline_us: f64,
    cause: Cause,
}

/// What a phase of a run produced.
struct Phase {
    classes: Vec<ClassOutcome>,
    trace: Vec<Trace>,
    errors: u64,
}

impl Phase {
    fn limits(&self) -> Vec<u32> {
        self.trace.iter().map(|t| t.limit).collect()
    }

    /// The first window from which L stays within `[lo, hi]` to the end of the phase.
    fn settled_from(&self, lo: f64, hi: f64) -> Option<usize> {
        let inside = |t: &Trace| (lo..=hi).contains(&f64::from(t.limit));
        let last_outside = self.trace.iter().rposition(|t| !inside(t));
        match last_outside {
            None => Some(0),
            Some(i) if i + 1 < self.trace.len() => Some(i + 1),
            Some(_) => None,
        }
    }

    /// max/min of L over the last `n` windows.
    fn variation(&self, n: usize) -> f64 {
        let tail = &self.trace[self.trace.len().saturating_sub(n)..];
        let max = tail.iter().map(|t| t.limit).max().unwrap_or(0);
        let min = tail.iter().map(|t| t.limit).min().unwrap_or(0).max(1);
        f64::from(max) / f64::from(min)
    }

    fn mean_in_flight(&self, last: usize) -> f64 {
        let tail = &self.trace[self.trace.len().saturating_sub(last)..];
        tail.iter().map(|t| t.mean_in_flight).sum::<f64>() / tail.len().max(1) as f64
    }
}

struct Sim {
    rng: Rng,
    classes: Vec<ClassSpec>,
    db: Db,
    params: AdaptiveParams,
    controller: Controller,
    now_us: f64,
    /// Work done by each request in the database since the start (all progress together).
    virtual_us: f64,
    /// (finish in virtual time as bits, request slot).
    running: BinaryHeap<Reverse<(u64, usize)>>,
    slots: Vec<(usize, f64)>,
    free: Vec<usize>,
    next_arrival_us: Vec<f64>,
    multiplier: Vec<f64>,
    /// Every class's latency reported as the first class's (one pooled baseline).
    pooled: bool,
}

impl Sim {
    fn new(seed: u64, classes: Vec<ClassSpec>, db: Db, initial_limit: u32) -> Sim {
        let params = params();
        let controller = Controller::new(classes.len(), initial_limit, &params);
        let mut sim = Sim {
            rng: Rng(seed),
            multiplier: vec![1.0; classes.len()],
            next_arrival_us: vec![0.0; classes.len()],
            classes,
            db,
            params,
            controller,
            now_us: 0.0,
            virtual_us: 0.0,
            running: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            pooled: false,
        };
        sim.reschedule_all();
        sim
    }

    fn reschedule_all(&mut self) {
        for c in 0..self.classes.len() {
            self.schedule(c);
        }
    }

    fn schedule(&mut self, c: usize) {
        let rate = self.classes[c].rate_per_s * self.multiplier[c];
        self.next_arrival_us[c] =
            if rate > 0.0 { self.now_us + self.rng.exponential(1e6 / rate) } else { f64::INFINITY };
    }

    /// Sets every class's arrival rate to `m` times its calm rate.
    fn surge(&mut self, m: f64) {
        self.multiplier = vec![m; self.classes.len()];
        self.reschedule_all();
    }

    fn set_rates(&mut self, multipliers: &[f64]) {
        self.multiplier = multipliers.to_vec();
        self.reschedule_all();
    }

    fn in_db(&self) -> usize {
        self.running.len()
    }

    fn speed(&self) -> f64 {
        let n = self.in_db() as f64;
        if n <= self.db.k {
            1.0
        } else {
            (self.db.k / n).powf(1.5)
        }
    }

    fn advance_to(&mut self, t_us: f64) {
        self.virtual_us += self.speed() * (t_us - self.now_us);
        self.now_us = t_us;
    }

    /// Runs `windows` control windows.
    fn run(&mut self, windows: usize) -> Phase {
        let n = self.classes.len();
        let mut phase = Phase { classes: vec![ClassOutcome::default(); n], trace: Vec::new(), errors: 0 };
        for _ in 0..windows {
            let end_us = self.now_us + (WINDOW_MS * 1_000) as f64;
            let mut window = WindowStats::with_classes(n);
            let maxima = class_maxima(self.controller.limit(), &self.reserves());
            loop {
                let (c, t_arrival) = self
                    .next_arrival_us
                    .iter()
                    .enumerate()
                    .fold((0, f64::INFINITY), |best, (c, &t)| if t < best.1 { (c, t) } else { best });
                let t_finish = self.running.peek().map_or(f64::INFINITY, |Reverse((v, _))| {
                    self.now_us + (f64::from_bits(*v) - self.virtual_us).max(0.0) / self.speed()
                });
                if end_us <= t_arrival && end_us <= t_finish {
                    self.advance_to(end_us);
                    break;
                }
                if t_finish <= t_arrival {
                    self.advance_to(t_finish);
                    if let Some(Reverse((_, slot))) = self.running.pop() {
                        let (class, start_us) = self.slots[slot];
                        self.free.push(slot);
                        let latency_us = self.now_us - start_us;
                        window.record_completed(ClassId(if self.pooled { 0 } else { class }), latency_us as u64);
                        let o = &mut phase.classes[class];
                        o.completed += 1;
                        o.latency_us_sum += latency_us;
                    }
                    continue;
                }
                self.advance_to(t_arrival);
                self.schedule(c);
                phase.classes[c].arrivals += 1;
                let in_flight = self.in_db() as u64;
                if in_flight + 1 > u64::from(maxima[c]) {
                    window.refused += 1; // surgeguard's refusal: demand, never an error
                    phase.classes[c].not_served += 1;
                    continue;
                }
                window.record_admitted(in_flight + 1);
                if self.in_db() >= self.db.queue_bound || self.rng.uniform() <= self.db.fail_share {
                    window.errors += 1;
                    phase.errors += 1;
                    phase.classes[c].not_served += 1;
                    continue;
                }
                let work_us =
                    self.classes[c].work_ms * 1_000.0 * self.db.slowdown * self.rng.unit_lognormal(self.db.cv);
                let slot = match self.free.pop() {
                    Some(s) => {
                        self.slots[s] = (c, self.now_us);
                        s
                    }
                    None => {
                        self.slots.push((c, self.now_us));
                        self.slots.len() - 1
                    }
                };
                self.running.push(Reverse(((self.virtual_us + work_us).to_bits(), slot)));
            }
            let mean_in_flight = window.latency_us_sum as f64 / (WINDOW_MS * 1_000) as f64;
            let change = self.controller.update(&window, &self.params);
            phase.trace.push(Trace {
                limit: change.to,
                mean_in_flight,
                baseline_us: self.controller.baseline_us(ClassId(0)).unwrap_or(0.0),
                cause: change.cause,
            });
        }
        phase
    }

    fn reserves(&self) -> Vec<f64> {
        self.classes.iter().map(|c| c.reserve).collect()
    }
}

fn within(limit: u32, best: f64, share: f64) -> bool {
    (f64::from(limit) - best).abs() <= share * best
}

// ---------------------------------------------------------------------------------------------
// Pieces.
// ---------------------------------------------------------------------------------------------

#[test]
fn log2_in_fixed_point_is_within_fifteen_thousandths_everywhere() {
    let mut worst: f64 = 0.0;
    let mut x = 2u64;
    while x < 1 << 40 {
        let exact = (x as f64).log2();
        let got = f64::from(log2_q8(x)) / 256.0;
        worst = worst.max((exact - got).abs());
        x = x + x / 7 + 1;
    }
    assert!(worst < 0.015, "worst error {worst}");
    assert_eq!(log2_q8(0), 0);
    assert_eq!(log2_q8(1), 0);
    assert_eq!(log2_q8(1024), 10 * 256);
}

#[test]
fn windows_from_two_workers_merge_exactly_by_addition() {
    let mut a = WindowStats::with_classes(2);
    let mut b = WindowStats::with_classes(2);
    let mut whole = WindowStats::with_classes(2);
    for (i, latency) in [900u64, 15_000, 22_000, 7_000, 130_000].into_iter().enumerate() {
        let class = ClassId(i % 2);
        if i % 3 == 0 { &mut a } else { &mut b }.record_completed(class, latency);
        whole.record_completed(class, latency);
    }
    a.record_admitted(7);
    b.record_admitted(9);
    whole.record_admitted(9);
    a.errors = 1;
    whole.errors = 1;
    b.refused = 4;
    whole.refused = 4;
    a.merge(&b);
    assert_eq!(a, whole);
}

#[test]
fn class_maxima_are_the_floor_of_the_unreserved_share_of_the_limit() {
    assert_eq!(class_maxima(18, &[0.0, 0.5, 0.75]), vec![18, 9, 4]);
    assert_eq!(class_maxima(200, &[0.2]), vec![160], "0.8 x 200 is 160, not 159");
    assert_eq!(class_maxima(3, &[0.0, 0.5, 1.0]), vec![3, 1, 0]);
}

fn steady_window(limit: u32, latency_us: u64, completed: u64, refused: u64, errors: u64) -> WindowStats {
    let mut w = WindowStats::with_classes(1);
    for i in 0..completed {
        // +-10% around the latency, deterministic.
        w.record_completed(ClassId(0), latency_us * (95 + i % 11) / 100);
    }
    w.record_admitted(u64::from(limit));
    w.refused = refused;
    w.errors = errors;
    w
}

/// A controller at `limit` whose baseline is 10 ms, learned while not binding.
fn learned(limit: u32, p: &AdaptiveParams) -> Controller {
    let mut c = Controller::new(1, limit, p);
    let idle_ish = steady_window(limit / 2, 10_000, 100, 0, 0);
    c.update(&idle_ish, p);
    c.limit = f64::from(limit);
    assert!(c.confirmed());
    c
}

#[test]
fn an_idle_window_changes_nothing() {
    let p = params();
    let mut c = learned(40, &p);
    let before = c.clone();
    let change = c.update(&WindowStats::with_classes(1), &p);
    assert_eq!(change, Change { from: 40, to: 40, cause: Cause::Idle, baseline_raised: false });
    assert_eq!(c, before);
}

#[test]
fn without_binding_the_limit_never_grows_and_decays_toward_twice_the_peak() {
    let p = params();
    let mut c = learned(100, &p);
    let mut w = steady_window(10, 10_000, 100, 0, 0);
    w.peak_in_flight = 10;
    let change = c.update(&w, &p);
    assert_eq!((change.to, change.cause), (80, Cause::Decayed), "a quarter of the gap to 20");
    let mut near = learned(21, &p);
    assert_eq!(near.update(&w, &p).to, 20, "2% of L when that is more than a tenth of the gap");
    for _ in 0..500 {
        c.update(&w, &p);
    }
    assert_eq!(c.limit(), 20, "decays to headroom x peak, no lower");
}

#[test]
fn refusals_are_demand_not_errors_the_limit_grows_by_at_most_a_tenth() {
    let p = params();
    let mut c = learned(40, &p);
    let change = c.update(&steady_window(30, 10_000, 100, 500, 0), &p);
    assert_eq!((change.from, change.to, change.cause), (40, 44, Cause::Grew));
    let mut c = learned(3, &p);
    assert_eq!(c.update(&steady_window(2, 10_000, 100, 500, 0), &p).to, 4, "at least +1");
}

#[test]
fn upstream_errors_past_their_share_cut_the_limit_by_their_share_at_least_a_tenth() {
    let p = params();
    let mut c = learned(40, &p);
    let change = c.update(&steady_window(40, 10_000, 100, 0, 10), &p);
    assert_eq!((change.to, change.cause), (36, Cause::Errors), "10 in 110: the mildest cut");
    let change = c.update(&steady_window(40, 10_000, 100, 0, 100), &p);
    assert_eq!((change.to, change.cause), (18, Cause::Errors), "half the outcomes: halved");
    let mut c = learned(40, &p);
    let change = c.update(&steady_window(40, 10_000, 100, 0, 2), &p);
    assert_ne!(change.cause, Cause::Errors, "2 errors in 102 is under the threshold");
}

#[test]
fn latency_past_tolerance_cuts_by_the_gradient_and_never_below_half() {
    let p = params();
    let mut c = learned(40, &p);
    let change = c.update(&steady_window(40, 20_000, 200, 100, 0), &p);
    assert_eq!(change.cause, Cause::Latency);
    // 2x the baseline against a tolerance of 1.25: about 0.625 (a little more: the noise margin).
    assert!((25..=27).contains(&change.to), "{change:?}");
    let mut c = learned(40, &p);
    assert_eq!(c.update(&steady_window(40, 100_000, 200, 100, 0), &p).to, 20);
}

#[test]
fn every_step_is_bounded_whatever_the_window_says() {
    let p = AdaptiveParams { floor: 4, ..params() };
    let mut rng = Rng(7);
    let mut c = Controller::new(3, 160, &p);
    for _ in 0..3_000 {
        let mut w = WindowStats::with_classes(3);
        let n = rng.next_u64() % 300;
        let scale = 1 + rng.next_u64() % 200_000;
        for _ in 0..n {
            let class = ClassId((rng.next_u64() % 3) as usize);
            w.record_completed(class, (scale as f64 * rng.unit_lognormal(1.0)) as u64);
        }
        w.errors = rng.next_u64() % 4 * (rng.next_u64() % 30);
        w.refused = rng.next_u64() % 2 * (rng.next_u64() % 100);
        w.record_admitted(rng.next_u64() % 200);
        let before = c.clone();
        let change = c.update(&w, &p);
        let (from, to) = (f64::from(change.from), f64::from(change.to));
        assert!((4..=160).contains(&change.to), "{change:?}");
        // A cut acts on what was reached: L when binding, else at most twice the peak in flight.
        let peak = w.peak_in_flight as f64;
        let binding = w.refused > 0 || peak >= from;
        let reached = if binding || peak < 1.0 { before.limit } else { before.limit.min(2.0 * peak) };
        let lowest = (0.5 * reached).floor().max(4.0) - 1.0;
        assert!(to >= lowest && to <= from + (0.1 * from).max(1.0) + 1.0, "{change:?}");
        for (b0, b1) in before.baselines.iter().zip(&c.baselines) {
            if let (Some(b0), Some(b1)) = (b0, b1) {
                assert!(b1 - b0 >= -1.0 - 1e-9 && b1 - b0 <= p.intrinsic_raise_max_log2 + 1e-9, "{b0} -> {b1}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The simulated upstream.
// ---------------------------------------------------------------------------------------------

/// Over three seeds: the latest window from which L stays within 30% of k, and the final Ls.
fn converge(initial: u32) -> (Option<usize>, Vec<u32>, Vec<u32>) {
    let mut worst = Some(0);
    let mut finals = Vec::new();
    let mut first_run = Vec::new();
    for seed in 1..=3 {
        let mut sim = Sim::new(seed, one_class_overload(), db(), initial);
        let run = sim.run(150);
        let settled = run.settled_from(0.7 * K, 1.3 * K);
        worst = worst.zip(settled).map(|(a, b)| a.max(b));
        finals.push(run.limits()[run.trace.len() - 1]);
        if seed == 1 {
            first_run = run.limits()[..30].to_vec();
        }
    }
    (worst, finals, first_run)
}

#[test]
fn from_the_ceiling_with_no_baseline_it_converges_near_the_knee() {
    let (settled, finals, first) = converge(160);
    eprintln!("from the ceiling (160, k = {K}): within 30% of k from window {settled:?} (worst of 3 seeds); final L {finals:?}; L (seed 1): {first:?}");
    assert!(settled.is_some_and(|w| w <= 30), "settled from {settled:?}");
}

#[test]
fn from_the_floor_it_converges_near_the_knee() {
    let (settled, finals, first) = converge(1);
    eprintln!("from the floor (3, k = {K}): within 30% of k from window {settled:?} (worst of 3 seeds); final L {finals:?}; L (seed 1): {first:?}");
    assert!(settled.is_some_and(|w| w <= 30), "settled from {settled:?}");
}

#[test]
fn once_converged_the_limit_does_not_oscillate() {
    let mut sim = Sim::new(3, one_class_overload(), db(), 160);
    sim.run(50);
    let run = sim.run(250);
    let variation = run.variation(250);
    let (min, max) = (run.limits().iter().min().copied(), run.limits().iter().max().copied());
    eprintln!("converged, 250 windows (50 s): L in {min:?}..={max:?}, max/min {variation:.2}");
    assert!(variation <= 1.35, "{:?}", run.limits());
}

fn surge(m: f64, seed: u64) -> (Phase, Phase) {
    let mut sim = Sim::new(seed, storefront(), db(), 160);
    let calm = sim.run(100);
    sim.surge(m);
    let surge = sim.run(100);
    (calm, surge)
}

fn check_surge(m: f64, seed: u64) {
    let (calm, surge) = surge(m, seed);
    let critical = surge.classes[0];
    let served: Vec<f64> = surge.classes.iter().map(|c| 100.0 * c.served_share()).collect();
    let latency_ratio = critical.mean_latency_ms() / calm.classes[0].mean_latency_ms();
    let last = surge.limits()[surge.trace.len() - 1];
    eprintln!(
        "{m}x surge: checkout {:.2}% served ({} of {} not), latency {:.1} ms vs {:.1} ms calm ({latency_ratio:.2}x); \
         served by class {served:.1?}; L at surge start {}, final {last}; database mean in flight {:.1} (k = {K}); \
         upstream errors {}",
        served[0],
        critical.not_served,
        critical.arrivals,
        critical.mean_latency_ms(),
        calm.classes[0].mean_latency_ms(),
        calm.limits()[calm.trace.len() - 1],
        surge.mean_in_flight(50),
        surge.errors,
    );
    assert!(critical.served_share() >= 0.99, "checkout served {:.2}%", served[0]);
    assert!(latency_ratio <= 2.0, "checkout latency {latency_ratio:.2}x calm");
    assert!(within(surge.mean_in_flight(50).round() as u32, K, 0.3), "database concurrency at the knee");
}

#[test]
fn a_3x_surge_keeps_checkout_served_and_fast() {
    check_surge(3.0, 11);
}

#[test]
fn a_10x_surge_keeps_checkout_served_and_fast() {
    check_surge(10.0, 12);
}

#[test]
fn a_database_slowed_3x_pulls_the_limit_down_and_it_recovers_when_restored() {
    let mut sim = Sim::new(4, one_class_overload(), db(), 160);
    let before = sim.run(100);
    let l_before = before.limits()[99];
    sim.db.slowdown = 3.0;
    let slow = sim.run(100);
    let l_min = slow.limits().iter().min().copied().unwrap_or(0);
    sim.db.slowdown = 1.0;
    let restored = sim.run(100);
    let recovered = restored.settled_from(0.7 * K, 1.3 * K);
    eprintln!(
        "database 3x slower: L {l_before} -> min {l_min}, L while slow {:?}; restored: within 30% of k from window \
         {recovered:?}, final {}; upstream errors while slow {}",
        &slow.limits()[..30],
        restored.limits()[99],
        slow.errors
    );
    assert!(f64::from(l_min) <= 0.6 * f64::from(l_before), "L follows down");
    assert!(recovered.is_some_and(|w| w <= 30), "{:?}", restored.limits());
    assert_eq!(slow.errors, 0, "the pool is never exhausted");
}

#[test]
fn noisy_latency_never_drives_the_limit_to_the_floor() {
    let mut sim = Sim::new(5, one_class_overload(), Db { cv: 0.5, ..db() }, 160);
    let run = sim.run(300);
    let min_after = run.limits()[30..].iter().min().copied().unwrap_or(0);
    let max_after = run.limits()[30..].iter().max().copied().unwrap_or(0);
    let settled = run.settled_from(0.7 * K, 1.3 * K);
    eprintln!(
        "latency noise cv 0.5: L after window 30 within {min_after}..={max_after} (floor {}), within 30% of k from window {settled:?}, \
         max/min over the last 200 windows {:.2}",
        params().floor,
        run.variation(200)
    );
    assert!(f64::from(min_after) >= 0.6 * K, "{:?}", run.limits());
}

#[test]
fn the_baseline_does_not_creep_up_under_sustained_binding_load() {
    let mut sim = Sim::new(6, storefront(), db(), 160);
    sim.run(100);
    let baseline_calm = sim.controller.baseline_us(ClassId(0)).unwrap_or(0.0);
    sim.surge(5.0);
    let run = sim.run(500);
    let baseline_end = run.trace[499].baseline_us;
    let baseline_max = run.trace.iter().map(|t| t.baseline_us).fold(0.0, f64::max);
    eprintln!(
        "100 s at 5x: checkout baseline {:.1} ms calm, {:.1} ms after (max {:.1} ms); final L {}",
        baseline_calm / 1e3,
        baseline_end / 1e3,
        baseline_max / 1e3,
        run.trace[499].limit
    );
    assert!(baseline_max <= 1.05 * baseline_calm);
}

/// Fast (10 ms) and slow (60 ms) requests, no reserves: calm, then overloaded with 5% slow
/// requests, then with 60% (still about 2x capacity). Returns the mean L before the change and
/// the least L after it.
fn mix_change(pooled: bool) -> (f64, u32, f64, f64) {
    let classes = vec![
        ClassSpec { reserve: 0.0, rate_per_s: 1_000.0, work_ms: 10.0 },
        ClassSpec { reserve: 0.0, rate_per_s: 100.0, work_ms: 60.0 },
    ];
    let mut sim = Sim::new(7, classes, db(), 160);
    sim.pooled = pooled;
    sim.set_rates(&[0.3, 0.3]);
    sim.run(50); // calm: both classes' baselines
    sim.set_rates(&[2.0, 1.0]);
    let before = sim.run(100);
    sim.set_rates(&[0.4, 6.0]);
    let after = sim.run(100);
    let mean = before.limits().iter().map(|&l| f64::from(l)).sum::<f64>() / before.trace.len() as f64;
    let min_after = after.limits().iter().min().copied().unwrap_or(0);
    (mean, min_after, before.mean_in_flight(50), after.mean_in_flight(50))
}

#[test]
fn a_slow_class_growing_its_share_is_not_mistaken_for_queueing() {
    let (mean, min_after, in_flight_before, in_flight_after) = mix_change(false);
    let (pooled_mean, pooled_min, _, _) = mix_change(true);
    eprintln!(
        "slow class 5% -> 60% of requests: mean L {mean:.1} before, min {min_after} after; database mean in flight \
         {in_flight_before:.1} -> {in_flight_after:.1}; with one pooled baseline instead: {pooled_mean:.1} -> min {pooled_min}"
    );
    assert!(f64::from(min_after) >= 0.7 * mean, "per-class baselines: no collapse");
    assert!(f64::from(pooled_min) < 0.7 * pooled_mean, "the test tells: one pooled baseline would collapse");
}

#[test]
fn a_failing_upstream_cuts_the_limit_and_refusals_never_do() {
    let mut sim = Sim::new(8, one_class_overload(), db(), 160);
    let settled = sim.run(100);
    let l_before = settled.limits()[99];
    sim.db.fail_share = 0.2;
    let failing = sim.run(20);
    let l_min = failing.limits().iter().min().copied().unwrap_or(0);
    let error_cuts = failing.trace.iter().filter(|t| t.cause == Cause::Errors).count();
    let latency_cuts = settled.trace[50..].iter().filter(|t| t.cause == Cause::Errors).count();
    eprintln!(
        "20% upstream errors: L {l_before} -> {l_min} in 20 windows ({error_cuts} error cuts); \
         error cuts while only refusing: {latency_cuts}"
    );
    assert!(f64::from(l_min) <= 0.5 * f64::from(l_before));
    assert_eq!(latency_cuts, 0, "refusals are not errors");
}

#[test]
fn a_baseline_learned_from_health_checks_does_not_hold_the_limit_at_its_floor() {
    let mut sim = Sim::new(9, one_class_overload(), db(), 160);
    // The class's first samples are eight health checks through its route: 1 ms, no database.
    let mut checks = WindowStats::with_classes(1);
    for _ in 0..8 {
        checks.record_completed(ClassId(0), 1_000);
    }
    let p = sim.params;
    sim.controller.update(&checks, &p);
    let run = sim.run(150);
    let settled = run.settled_from(0.7 * K, 1.3 * K);
    let floor_windows = run.limits().iter().filter(|&&l| l <= p.floor).count();
    eprintln!(
        "baseline from health checks (1 ms; requests take 20 ms): L {:?}..., {floor_windows} windows at the floor, \
         within 30% of k from window {settled:?}, final {}",
        &run.limits()[..40],
        run.limits()[149]
    );
    assert!(settled.is_some_and(|w| w <= 60), "{:?}", run.limits());
}

#[test]
fn a_sudden_surge_while_the_limit_is_far_above_the_traffic_is_cut_from_what_was_reached() {
    // A ceiling far above the database (1000, floor 20), 400 ms of calm: L is still far above
    // the traffic, and nothing has ever bound when a 10x surge arrives.
    let mut sim = Sim::new(12, storefront(), db(), 160);
    sim.params = AdaptiveParams { ceiling: 1000, floor: 20, ..sim.params };
    sim.controller = Controller::new(3, 1000, &sim.params);
    let calm = sim.run(2);
    sim.surge(10.0);
    let first = sim.run(1);
    let next = sim.run(4);
    let rest = sim.run(45);
    eprintln!(
        "10x surge with L at {} (ceiling 1000): after the first window L {:?} (upstream errors in it {}, checkout {:.1}% \
         served); the next 4 windows L {:?}, upstream errors {}, checkout {:.1}% served; the 9 s after: L {}..{}, \
         checkout {:.2}% served, upstream errors {}",
        calm.limits()[1],
        first.limits(),
        first.errors,
        100.0 * first.classes[0].served_share(),
        next.limits(),
        next.errors,
        100.0 * next.classes[0].served_share(),
        rest.limits().iter().min().copied().unwrap_or(0),
        rest.limits().iter().max().copied().unwrap_or(0),
        100.0 * rest.classes[0].served_share(),
        rest.errors,
    );
    // The first window admits what L let in (up to the queue bound, 64); its cut lands on twice
    // the concurrency reached, not on L, so the next window already binds near the knee.
    assert!(first.limits()[0] <= 65, "cut from twice what was reached: {:?}", first.limits());
    assert!(next.errors <= 10, "the queue bound is reached at most a few times more (cutting L itself: 1,524)");
    assert_eq!(rest.errors, 0);
    assert!(rest.classes[0].served_share() >= 0.99);
}

/// The end-to-end test's setup (tests/e2e/tests/adaptive.rs) on simulated time: a database with
/// 8 connections and 40 ms queries, checkout 1 in 20 (no reserve), browse (reserve 0.25), 1.5x
/// the database's capacity; the database 3x slower, then restored.
fn e2e_setup(seed: u64) -> (Phase, Phase, Phase) {
    let k = 8.0;
    let rate = 300.0;
    let classes = vec![
        ClassSpec { reserve: 0.0, rate_per_s: rate / 20.0, work_ms: 40.0 },
        ClassSpec { reserve: 0.25, rate_per_s: rate * 19.0 / 20.0, work_ms: 40.0 },
    ];
    let mut sim = Sim::new(seed, classes, Db { k, queue_bound: 32, ..db() }, 160);
    sim.set_rates(&[70.0 / rate, 70.0 / rate]);
    sim.run(20); // calm, as in the end-to-end test: 4 s at 70/s
    sim.set_rates(&[1.0, 1.0]);
    let surge = sim.run(60);
    sim.db.slowdown = 3.0;
    let slow = sim.run(50);
    sim.db.slowdown = 1.0;
    let restored = sim.run(50);
    (surge, slow, restored)
}

fn median(v: &[u32]) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0.0, |&m| f64::from(m))
}

#[test]
fn after_the_database_recovers_the_limit_returns_to_where_the_surge_had_settled() {
    for seed in 1..=5 {
        let (surge, slow, restored) = e2e_setup(seed);
        let settled = median(&surge.limits()[40..]);
        let back = restored.settled_from(0.7 * settled, 1.3 * settled);
        let tail = median(&restored.limits()[30..]);
        eprintln!(
            "seed {seed}: L settled at {settled} in the surge, {}..{} while 3x slower, restored: back within 30% from \
             window {back:?}, median of the last 20 windows {tail}; database mean in flight {:.1} / {:.1} / {:.1}",
            slow.limits().iter().min().copied().unwrap_or(0),
            slow.limits().iter().max().copied().unwrap_or(0),
            surge.mean_in_flight(20),
            slow.mean_in_flight(20),
            restored.mean_in_flight(20),
        );
        assert!((tail - settled).abs() <= 0.3 * settled, "seed {seed}: {:?}", restored.limits());
    }
}
