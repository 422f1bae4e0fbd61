//! The adaptive in-flight limit: a controller that sizes the limit L from the database's own
//! latency and errors, window by window. Pure: the window's statistics and the state arrive as
//! values; nothing here reads a clock or the host.
//!
//! What it measures, per control window (merged from every worker on the tick, by addition of
//! integers, so the merge is exact): per class, the requests completed and the sum and sum of
//! squares of `log2(latency)` in fixed point ([`log2_q8`]), from which the window's geometric
//! mean latency and its standard error follow; the sum of latencies (Little's law: the mean
//! in flight); upstream errors; the requests refused by the in-flight limit; the peak in flight.
//!
//! The rule ([`Controller::update`]), in order:
//! 1. **Idle** (nothing completed, failed or refused): nothing changes.
//! 2. **Latency**: each class's geometric mean is compared with that class's baseline, weighted
//!    by the window's class mix, so a shift toward a slow class is not read as queueing. The excess
//!    (log2) less twice its standard error is the signal `s`; `gradient = clamp(tolerance / 2^s,
//!    0.5, 1)` (Gradient2's shape, with sampling noise taken out instead of smoothed in). A window
//!    with fewer than `min_samples` completions is not judged: its completions are carried into
//!    the next window's judgement (a low L on a slow database completes few requests a window).
//! 3. **Errors**: more than `error_share` of the window's outcomes upstream errors (and at least
//!    `min_errors`): a cut by `1 - error share`, at most `error_cut` and at least `max_decrease`.
//!    Refusals by surgeguard are never errors.
//! 4. **L**: the smallest of the cuts applies to the concurrency that was reached (L when the
//!    limit binds, else at most `headroom` times the peak in flight), never below `max_decrease`
//!    times it; with no cut, L grows by `max(1, growth x L)` only while the limit binds
//!    (refusals, or the peak in flight at L) and the excess is under `grow_tolerance`; not
//!    binding, L decays toward `headroom x peak in flight` by `idle_decay` or `idle_gap_share`
//!    of the gap a window, whichever is more; always within `[floor, ceiling]`.
//! 5. **Baselines** (one per class, log2 microseconds) learn only from windows where the limit
//!    does not bind and no error cut applies, `min_samples` completions at a time (a rare class
//!    gathers them over several windows): down fast (half the gap, at most halving), up slowly
//!    (`baseline_up_weight` of the gap, at most `baseline_up_max_log2` a window). While the limit
//!    binds they may only fall, and only by what exceeds the noise, so sustained load cannot
//!    raise them.
//! 6. **A cut that did not lower latency** is the evidence that the latency is not ours: if the
//!    window after a cut shows the mean in flight down by a tenth or more and the latency not
//!    down beyond noise, the excess is the database's own (it slowed, or something else loads it);
//!    the baselines rise to the observed latency (at most `intrinsic_raise_max_log2` a window).
//!    No probe ever pins concurrency low to find this out.
//! 7. **Cold start and stale baselines**: a class seen with `min_samples` completions while the
//!    limit binds, and no baseline yet, is assumed to queue like the classes already known (all of
//!    its latency is its baseline if none is). Such a baseline is provisional, and so are baselines
//!    that binding windows undercut by more than 10% beyond noise (the database got faster, or a
//!    raise by rule 6 outlived its cause): each binding window then cuts by `descent_cut` until a
//!    cut stops lowering latency (rule 6: the knee is passed), L reaches its floor, or a window
//!    does not bind; the baselines follow latency down meanwhile.
//! 8. **At the floor** nothing is left to cut, so rule 6 can never fire there: in a binding
//!    window, latency past tolerance at the floor is taken as the database's own, and the
//!    baselines rise to it as in rule 6. Without this, a baseline learned from a few fast
//!    requests (a health check on the class's route) would hold L at its floor for good.
//! 9. **A cut settles**: the requests in flight when L was cut complete over about one latency,
//!    so for the whole windows in that latency (at most [`MAX_SETTLING`]) the window's latency is
//!    still the one that was cut for: it is not acted on (no cut, no growth, rules 6 to 8 wait),
//!    and rule 6 then compares with the cut. Errors still cut. With latency under a window
//!    (20 to 150 ms queries, 200 ms windows) nothing waits.
//!
//! Invariants: L is finite and within `[floor, ceiling]` after every update; every step is
//! within `[max_decrease x min(L, reached), L + max(1, growth x L)]` (reached: `headroom` times
//! the peak in flight when the limit did not bind); a baseline moves at most
//! `intrinsic_raise_max_log2` up (rule 6) or halves down in one window.

use crate::ids::ClassId;

/// Fractional bits of the fixed-point log2 latencies in [`ClassWindow`].
pub const LOG2_FRACTION_BITS: u32 = 8;
const LOG2_ONE: f64 = (1u64 << LOG2_FRACTION_BITS) as f64;

/// `log2(latency_us)` in fixed point with [`LOG2_FRACTION_BITS`] fractional bits (within 0.015
/// of the true value, i.e. 1% of the latency), integers only: cheap on the request path.
/// 0 and 1 microsecond both map to 0.
pub fn log2_q8(latency_us: u64) -> u32 {
    if latency_us <= 1 {
        return 0;
    }
    let exponent = 63 - latency_us.leading_zeros();
    // The mantissa's fraction f in [0, 1), 16 bits.
    let f = ((latency_us << (63 - exponent)) >> 47) & 0xFFFF;
    // log2(1 + f) ~ f + 0.3466 f (1 - f): within 0.005.
    let correction = (f * (0x1_0000 - f)) >> 16;
    let fraction = f + ((correction * 355) >> 10);
    (exponent << LOG2_FRACTION_BITS) + (fraction >> (16 - LOG2_FRACTION_BITS)) as u32
}

/// One class's completed requests in one window. Merges by addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClassWindow {
    /// Requests completed successfully (upstream errors are not latency samples).
    pub completed: u64,
    /// Sum of `log2_q8(latency_us)`.
    pub log2_sum: u64,
    /// Sum of `log2_q8(latency_us)^2`.
    pub log2_sq_sum: u64,
}

impl ClassWindow {
    pub fn record(&mut self, latency_us: u64) {
        let l = u64::from(log2_q8(latency_us));
        self.completed += 1;
        self.log2_sum += l;
        self.log2_sq_sum += l * l;
    }

    pub fn merge(&mut self, other: &ClassWindow) {
        self.completed += other.completed;
        self.log2_sum += other.log2_sum;
        self.log2_sq_sum += other.log2_sq_sum;
    }

    /// The geometric mean, as log2 microseconds.
    fn mean_log2(&self) -> f64 {
        self.log2_sum as f64 / LOG2_ONE / self.completed.max(1) as f64
    }

    /// Sum of squared deviations from the mean, in log2 units squared.
    fn deviations_sq(&self) -> f64 {
        let n = self.completed.max(1) as f64;
        let sum = self.log2_sum as f64 / LOG2_ONE;
        (self.log2_sq_sum as f64 / (LOG2_ONE * LOG2_ONE) - sum * sum / n).max(0.0)
    }
}

/// What the workers saw in one control window, merged. Every field merges by addition except
/// `peak_in_flight` (the maximum).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowStats {
    /// Per class, indexed like `Policy::classes`.
    pub classes: Vec<ClassWindow>,
    /// Sum of the latencies of the completed requests, microseconds (divided by the window's
    /// length: the mean in flight, by Little's law).
    pub latency_us_sum: u64,
    /// Upstream errors: 5xx from the upstream, upstream resets, timeouts. Never surgeguard's own
    /// refusals or other local replies.
    pub errors: u64,
    /// Requests refused by the in-flight limit (any class): demand above what L admits.
    pub refused: u64,
    /// The highest in-flight count an admission saw (including itself).
    pub peak_in_flight: u64,
}

impl WindowStats {
    pub fn with_classes(classes: usize) -> WindowStats {
        WindowStats { classes: vec![ClassWindow::default(); classes], ..WindowStats::default() }
    }

    /// A completed request of `class` (ignored if the class is out of range).
    pub fn record_completed(&mut self, class: ClassId, latency_us: u64) {
        if let Some(c) = self.classes.get_mut(class.index()) {
            c.record(latency_us);
            self.latency_us_sum = self.latency_us_sum.saturating_add(latency_us);
        }
    }

    pub fn record_admitted(&mut self, in_flight: u64) {
        self.peak_in_flight = self.peak_in_flight.max(in_flight);
    }

    pub fn merge(&mut self, other: &WindowStats) {
        if self.classes.len() < other.classes.len() {
            self.classes.resize(other.classes.len(), ClassWindow::default());
        }
        for (mine, theirs) in self.classes.iter_mut().zip(&other.classes) {
            mine.merge(theirs);
        }
        self.latency_us_sum = self.latency_us_sum.saturating_add(other.latency_us_sum);
        self.errors += other.errors;
        self.refused += other.refused;
        self.peak_in_flight = self.peak_in_flight.max(other.peak_in_flight);
    }

    pub fn completed(&self) -> u64 {
        self.classes.iter().map(|c| c.completed).sum()
    }
}

/// The controller's parameters. `ceiling`, `floor`, `tolerance` and `window_ms` are the
/// configuration's; the rest bound the steps (defaults from [`AdaptiveParams::with_ceiling`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveParams {
    /// The most L may be (`concurrency.max_in_flight`).
    pub ceiling: u32,
    /// The least L may be (default: `max(1, ceiling / 50)`).
    pub floor: u32,
    /// Latency up to `tolerance x baseline` is not cut (default 1.25).
    pub tolerance: f64,
    /// L grows (while binding) only with latency up to `grow_tolerance x baseline` (default
    /// 1.08; at most `tolerance`). Between the two, L holds: the band keeps it from hunting.
    pub grow_tolerance: f64,
    /// The control window (default 200 ms).
    pub window_ms: u64,
    /// The most one window may cut: L never below `max_decrease x L` (default 0.5).
    pub max_decrease: f64,
    /// Growth per binding window: `L + max(1, growth x L)` (default 0.1).
    pub growth: f64,
    /// Error share above which L is cut (default 0.05), with at least `min_errors` (default 3).
    pub error_share: f64,
    pub min_errors: u64,
    /// The mildest cut on errors (default 0.9): the cut is `1 - error share`, at most this and at
    /// least `max_decrease`.
    pub error_cut: f64,
    /// Fewer completions than this: no judgement on latency; a class learns its baseline from
    /// at least this many (gathered over windows where the limit does not bind) (default 8).
    pub min_samples: u64,
    /// Not binding: L decays toward `headroom x peak in flight` (default 2.0) by `idle_decay`
    /// a window (default 0.98, i.e. 2%).
    pub headroom: f64,
    pub idle_decay: f64,
    /// Not binding: L also closes at least this share of its gap to the target a window (default
    /// 0.25), so a limit far above the traffic (at a ceiling of 1000) comes down within seconds,
    /// not the minute that 2% a window takes, and a surge finds it near twice the calm peak.
    pub idle_gap_share: f64,
    /// Baselines rise by this share of the gap (default 0.05), at most `baseline_up_max_log2`
    /// a window (default 0.03: 2%).
    pub baseline_up_weight: f64,
    pub baseline_up_max_log2: f64,
    /// Rule 6: the most a baseline rises in one window (default 1.6: about 3x).
    pub intrinsic_raise_max_log2: f64,
    /// Rule 7: the cut per window of a cold-start descent (default 0.8).
    pub descent_cut: f64,
}

impl AdaptiveParams {
    pub fn with_ceiling(ceiling: u32) -> AdaptiveParams {
        AdaptiveParams {
            ceiling: ceiling.max(1),
            floor: (ceiling / 50).max(1),
            tolerance: 1.25,
            grow_tolerance: 1.08,
            window_ms: 200,
            max_decrease: 0.5,
            growth: 0.1,
            error_share: 0.05,
            min_errors: 3,
            error_cut: 0.9,
            min_samples: 8,
            headroom: 2.0,
            idle_decay: 0.98,
            idle_gap_share: 0.25,
            baseline_up_weight: 0.05,
            baseline_up_max_log2: 0.03,
            intrinsic_raise_max_log2: 1.6,
            descent_cut: 0.8,
        }
    }

    fn floor_f(&self) -> f64 {
        f64::from(self.floor.clamp(1, self.ceiling.max(1)))
    }

    fn ceiling_f(&self) -> f64 {
        f64::from(self.ceiling.max(1))
    }
}

/// Why L moved (or did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing completed, failed or was refused.
    Idle,
    /// Latency within the band, or too few samples to judge.
    Held,
    /// Binding with latency well within tolerance.
    Grew,
    /// Not binding: decayed toward the headroom over the peak in flight.
    Decayed,
    /// Latency past tolerance.
    Latency,
    /// Upstream errors past their share.
    Errors,
    /// The cold-start descent (rule 7).
    Descent,
}

/// One update's outcome, for the gauges, the counters and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub cause: Cause,
    /// The baselines were raised because a cut did not lower latency (rule 6).
    pub baseline_raised: bool,
}

/// What the window after a cut is compared with (rule 6 and 7).
#[derive(Debug, Clone, Copy, PartialEq)]
struct CutMark {
    level_log2: f64,
    mean_in_flight: f64,
}

/// The latency part of a window's verdict.
#[derive(Debug, Clone, Copy)]
struct Judgement {
    /// Mix-weighted excess over the baselines, log2.
    excess: f64,
    /// Twice the standard error of the window's mean log2 latency.
    margin: f64,
    /// The window's mean log2 latency (geometric mean), not mix-adjusted.
    level: f64,
}

/// The controller's state: L and the per-class baselines.
#[derive(Debug, Clone, PartialEq)]
pub struct Controller {
    limit: f64,
    /// Per class: log2 microseconds; `None` until the class is first seen.
    baselines: Vec<Option<f64>>,
    /// Per class: completions of windows where the limit did not bind, not yet learned from
    /// (a class learns from `min_samples` at a time).
    pending: Vec<ClassWindow>,
    /// False while the baselines come only from binding windows (rule 7).
    confirmed: bool,
    last_cut: Option<CutMark>,
    /// Windows left after a cut whose completions are still mostly requests admitted before it
    /// (about one latency): their latency cannot show the cut's effect, so it is not acted on.
    settling: u32,
    /// Per class: completions of windows too few to judge (fewer than `min_samples` in all),
    /// carried into the next window's judgement: a low L on a slow database completes only a
    /// few requests a window, and would otherwise never be judged again.
    carried: Vec<ClassWindow>,
}

/// The most windows a cut's settling lasts (its latency measured one latency later).
const MAX_SETTLING: u32 = 4;
/// Words per class in [`Controller::to_words`].
const CLASS_WORDS: usize = 8;
/// How many standard errors of the window's mean are taken as noise.
const NOISE_Z: f64 = 2.0;
/// A drop smaller than this (log2 of 1.05) is no drop.
const MIN_DROP_LOG2: f64 = 0.0704;
/// Rule 6: the mean in flight must fall by this share for a cut to count as one.
const CUT_SHARE: f64 = 0.1;
/// Latency this far (log2 of 1.1) under the baselines, beyond noise, while binding: stale.
const STALE_LOG2: f64 = 0.1375;

impl Controller {
    /// A controller for `classes` classes with L at `initial` (clamped into `[floor, ceiling]`).
    pub fn new(classes: usize, initial: u32, params: &AdaptiveParams) -> Controller {
        Controller {
            limit: within(f64::from(initial), params.floor_f(), params.ceiling_f()),
            baselines: vec![None; classes],
            pending: vec![ClassWindow::default(); classes],
            confirmed: false,
            last_cut: None,
            settling: 0,
            carried: vec![ClassWindow::default(); classes],
        }
    }

    /// L in force: the integer the decision compares with.
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// A class's baseline latency in microseconds (its geometric mean when not binding).
    pub fn baseline_us(&self, class: ClassId) -> Option<f64> {
        self.baselines.get(class.index()).copied().flatten().map(f64::exp2)
    }

    /// Whether the baselines were learned or confirmed (not a cold start under load).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The state as words, for shared storage (read back by [`Controller::from_words`]):
    /// L, flags, the last cut, then per class its baseline, pending and carried completions.
    pub fn to_words(&self) -> Vec<u64> {
        let cut = self.last_cut.unwrap_or(CutMark { level_log2: 0.0, mean_in_flight: 0.0 });
        let flags = u64::from(self.confirmed)
            | u64::from(self.last_cut.is_some()) << 1
            | u64::from(self.settling.min(MAX_SETTLING)) << 8;
        let mut words = vec![self.limit.to_bits(), flags, cut.level_log2.to_bits(), cut.mean_in_flight.to_bits()];
        words.push(self.baselines.len() as u64);
        for ((b, p), c) in self.baselines.iter().zip(&self.pending).zip(&self.carried) {
            words.extend([u64::from(b.is_some()), b.unwrap_or(0.0).to_bits(), p.completed, p.log2_sum, p.log2_sq_sum]);
            words.extend([c.completed, c.log2_sum, c.log2_sq_sum]);
        }
        words
    }

    /// The state [`Controller::to_words`] wrote; `None` if the words are not such a state.
    pub fn from_words(words: &[u64]) -> Option<Controller> {
        let (&[limit, flags, level, mean, classes], rest) = words.split_first_chunk::<5>()?;
        let classes = usize::try_from(classes).ok().filter(|&n| rest.len() == CLASS_WORDS * n)?;
        let limit = f64::from_bits(limit);
        if !limit.is_finite() {
            return None;
        }
        let mut baselines = Vec::with_capacity(classes);
        let mut pending = Vec::with_capacity(classes);
        let mut carried = Vec::with_capacity(classes);
        for c in rest.chunks_exact(CLASS_WORDS) {
            let &[has, base, completed, log2_sum, log2_sq_sum, c_completed, c_log2_sum, c_log2_sq_sum] = c else {
                return None;
            };
            baselines.push((has != 0).then(|| f64::from_bits(base)).filter(|b| b.is_finite()));
            pending.push(ClassWindow { completed, log2_sum, log2_sq_sum });
            carried.push(ClassWindow { completed: c_completed, log2_sum: c_log2_sum, log2_sq_sum: c_log2_sq_sum });
        }
        let last_cut = (flags & 2 != 0)
            .then(|| CutMark { level_log2: f64::from_bits(level), mean_in_flight: f64::from_bits(mean) });
        let settling = ((flags >> 8) & 0xFF) as u32;
        Some(Controller { limit, baselines, pending, confirmed: flags & 1 != 0, last_cut, settling, carried })
    }

    /// The baselines weighted by `window`'s class mix (a geometric mean), in microseconds:
    /// the latency the window's traffic would see unloaded. `None` without completions of a
    /// class with a baseline.
    pub fn mix_baseline_us(&self, window: &WindowStats) -> Option<f64> {
        let (mut n, mut sum) = (0.0, 0.0);
        for (c, b) in window.classes.iter().zip(&self.baselines) {
            if let (Some(b), true) = (b, c.completed > 0) {
                n += c.completed as f64;
                sum += c.completed as f64 * b;
            }
        }
        (n > 0.0).then(|| (sum / n).exp2())
    }

    /// One control window: updates L and the baselines from the window's statistics.
    pub fn update(&mut self, window: &WindowStats, params: &AdaptiveParams) -> Change {
        let from = self.limit();
        let completed = window.completed();
        if completed == 0 && window.errors == 0 && window.refused == 0 {
            self.last_cut = None;
            self.settling = 0;
            self.carried.iter_mut().for_each(|c| *c = ClassWindow::default());
            return Change { from, to: from, cause: Cause::Idle, baseline_raised: false };
        }
        let classes = window.classes.len().max(self.baselines.len());
        self.baselines.resize(classes, None);
        self.pending.resize(classes, ClassWindow::default());
        self.carried.resize(classes, ClassWindow::default());
        // The latency judged: this window's completions and those carried from windows too few
        // to judge.
        let mut sample = window.clone();
        sample.classes.resize(classes, ClassWindow::default());
        for (s, c) in sample.classes.iter_mut().zip(&mut self.carried) {
            s.merge(c);
            *c = ClassWindow::default();
        }
        let judged = sample.completed();
        let binding = window.refused > 0 || window.peak_in_flight >= u64::from(from);
        let window_us = (params.window_ms.max(1) * 1_000) as f64;
        let mean_in_flight = window.latency_us_sum as f64 / window_us;

        // Errors (rule 3).
        let outcomes = completed + window.errors;
        let error_share = window.errors as f64 / outcomes.max(1) as f64;
        let errors_cut = window.errors >= params.min_errors && error_share > params.error_share;
        let error_factor = if errors_cut {
            within(1.0 - error_share, within(params.max_decrease, 0.0, 1.0), within(params.error_cut, 0.0, 1.0))
        } else {
            1.0
        };

        // Latency (rule 2); a class first seen under load gets its baseline (rule 7). Too few
        // completions to judge are carried into the next window. While a cut settles (rule 9)
        // the latency is of requests admitted before it: not judged, and not carried.
        let settling = self.settling > 0;
        self.settling = self.settling.saturating_sub(1);
        let mut judgement = (judged >= params.min_samples && !settling).then(|| self.judge(&sample));
        if judgement.is_none() && !settling {
            self.carried.clone_from(&sample.classes);
        }
        if let (Some(j), true) = (judgement, binding || errors_cut) {
            if self.adopt(&sample, j.excess, params) {
                judgement = Some(self.judge(&sample));
            }
        }
        let mut baseline_raised = false;
        let mut descend = false;
        let tolerance_log2 = params.tolerance.max(1.0).log2();
        if let (Some(j), true) = (judgement, binding) {
            let cut_unanswered = self.last_cut.is_some_and(|cut| {
                mean_in_flight <= (1.0 - CUT_SHARE) * cut.mean_in_flight
                    && cut.level_log2 - j.level <= MIN_DROP_LOG2.max(j.margin)
            });
            // Rule 8: at the floor nothing is left to cut, so no cut can show that the excess is
            // not ours: latency past tolerance there is taken as the database's own.
            let stuck_at_floor = self.limit <= params.floor_f() && j.excess - j.margin > tolerance_log2 && !errors_cut;
            if cut_unanswered || stuck_at_floor {
                // Rule 6: concurrency fell and latency did not: the excess is not queueing.
                baseline_raised = self.raise_to(&sample, params.intrinsic_raise_max_log2);
                self.confirmed = true;
                judgement = Some(self.judge(&sample));
            } else if self.stale(&sample, params.min_samples) {
                // Latency well under the baselines while binding: they are stale (the database
                // got faster, or a raise by rule 6 outlived its cause): measure them again.
                self.confirmed = false;
            }
            if !self.confirmed {
                if self.limit <= params.floor_f() {
                    self.confirmed = true;
                } else {
                    descend = true;
                }
            }
        }

        // L (rule 4).
        let latency_factor = judgement.map_or(1.0, |j| {
            let signal = (j.excess - j.margin).max(0.0);
            (tolerance_log2 - signal).min(0.0).exp2()
        });
        let mut factor = 1.0;
        let mut cause = Cause::Held;
        for (f, c) in [
            (latency_factor, Cause::Latency),
            (error_factor, Cause::Errors),
            (if descend { params.descent_cut } else { 1.0 }, Cause::Descent),
        ] {
            if f < factor {
                factor = f;
                cause = c;
            }
        }
        let floor = params.floor_f();
        let ceiling = params.ceiling_f();
        let old = self.limit;
        let mut limit = old;
        if factor < 1.0 {
            // A cut acts on the concurrency that caused the latency or the errors: while the
            // limit did not bind, L counts for no more than `headroom` times the peak in flight
            // (what the idle decay keeps), since nothing reached it (from a ceiling far above the
            // traffic, cutting L itself would take windows to come down to it).
            let reached = params.headroom.max(1.0) * window.peak_in_flight as f64;
            let base = if binding || reached < 1.0 { old } else { old.min(reached) };
            limit = base * factor.max(within(params.max_decrease, 0.0, 1.0));
        } else if binding {
            let grow_log2 = within(params.grow_tolerance, 1.0, params.tolerance.max(1.0)).log2();
            if judgement.is_some_and(|j| j.excess <= grow_log2) && self.confirmed {
                limit = old + (params.growth.max(0.0) * old).max(1.0);
                cause = Cause::Grew;
            }
        } else {
            let target = (params.headroom * window.peak_in_flight as f64).max(floor);
            if old > target {
                let by_share = old * within(params.idle_decay, 0.0, 1.0);
                let by_gap = old - within(params.idle_gap_share, 0.0, 1.0) * (old - target);
                limit = by_share.min(by_gap).max(target);
                cause = Cause::Decayed;
            }
        }
        self.limit = if limit.is_finite() { within(limit, floor, ceiling) } else { within(old, floor, ceiling) };

        // Baselines (rule 5): under load from the judged sample (a baseline may only fall), else
        // from this window's completions (pending ones gather on their own).
        let loaded = binding || errors_cut;
        self.learn(if loaded && judgement.is_some() { &sample } else { window }, loaded, params);
        if factor < 1.0 {
            // Rule 9: the requests in flight at the cut complete over about one latency; the
            // windows until then show the latency from before the cut.
            self.settling = judgement.map_or(0, |j| settling_windows(j.level, window_us));
        }
        if !settling || self.limit < old {
            self.last_cut =
                judgement.filter(|_| self.limit < old).map(|j| CutMark { level_log2: j.level, mean_in_flight });
        }
        Change { from, to: self.limit(), cause, baseline_raised }
    }

    /// The window's latency against the baselines, mix-weighted (classes without a baseline
    /// are left out of the excess).
    fn judge(&self, window: &WindowStats) -> Judgement {
        let (mut n_known, mut excess_sum) = (0.0, 0.0);
        let (mut n_all, mut level_sum, mut dev_sq) = (0.0, 0.0, 0.0);
        for (c, b) in window.classes.iter().zip(&self.baselines) {
            if c.completed == 0 {
                continue;
            }
            let n = c.completed as f64;
            n_all += n;
            level_sum += n * c.mean_log2();
            dev_sq += c.deviations_sq();
            if let Some(b) = b {
                n_known += n;
                excess_sum += n * (c.mean_log2() - b);
            }
        }
        let excess = if n_known > 0.0 { excess_sum / n_known } else { 0.0 };
        let n_all = n_all.max(1.0);
        let variance = dev_sq / n_all;
        Judgement { excess, margin: NOISE_Z * (variance / n_all).sqrt(), level: level_sum / n_all }
    }

    /// Rule 7: the baselines are stale when the classes measured well enough to tell (at least
    /// `min_samples` completions) run more than 10% under them beyond noise. A rare class is left
    /// out: its baseline can only be re-learned from `min_samples` completions in a window, and a
    /// stale one would otherwise keep the baselines stale for good (a descent every few windows).
    fn stale(&self, sample: &WindowStats, min_samples: u64) -> bool {
        let (mut n, mut excess_sum, mut dev_sq) = (0.0, 0.0, 0.0);
        for (c, b) in sample.classes.iter().zip(&self.baselines) {
            if let (Some(b), true) = (b, c.completed >= min_samples.max(1)) {
                let k = c.completed as f64;
                n += k;
                excess_sum += k * (c.mean_log2() - b);
                dev_sq += c.deviations_sq();
            }
        }
        n > 0.0 && excess_sum / n < -(NOISE_Z * (dev_sq / n / n).sqrt() + STALE_LOG2)
    }

    /// Rule 7: a class seen under load with enough samples and no baseline yet is assumed to
    /// queue like the classes already known (`excess`; 0 when none is). Returns whether any was.
    fn adopt(&mut self, window: &WindowStats, excess: f64, params: &AdaptiveParams) -> bool {
        let mut adopted = false;
        for (c, b) in window.classes.iter().zip(self.baselines.iter_mut()) {
            if b.is_none() && c.completed >= params.min_samples {
                *b = Some(c.mean_log2() - excess);
                adopted = true;
            }
        }
        adopted
    }

    /// Rule 5: learn from the window. Not `loaded` (the limit did not bind, no error cut): the
    /// window's completions join the class's pending ones, learned from once there are
    /// `min_samples`. `loaded`: a baseline may only fall, by what exceeds its class's noise.
    fn learn(&mut self, window: &WindowStats, loaded: bool, params: &AdaptiveParams) {
        for ((c, b), pending) in window.classes.iter().zip(self.baselines.iter_mut()).zip(self.pending.iter_mut()) {
            if loaded {
                let Some(base) = b.as_mut() else { continue };
                if c.completed < params.min_samples {
                    continue;
                }
                let n = c.completed as f64;
                let beyond_noise = c.mean_log2() - *base + NOISE_Z * (c.deviations_sq() / n / n).sqrt();
                if beyond_noise < 0.0 {
                    *base += (0.5 * beyond_noise).max(-1.0);
                }
                continue;
            }
            pending.merge(c);
            if pending.completed < params.min_samples.max(1) {
                continue;
            }
            let observed = pending.mean_log2();
            *pending = ClassWindow::default();
            self.confirmed = true;
            match b.as_mut() {
                None => *b = Some(observed),
                Some(base) if observed < *base => *base += (0.5 * (observed - *base)).max(-1.0),
                Some(base) => {
                    *base += (params.baseline_up_weight * (observed - *base)).min(params.baseline_up_max_log2)
                }
            }
        }
    }

    /// Rule 6: each class seen in the window gets a baseline at its observed latency, rising by at
    /// most `max_log2`. Returns whether any rose.
    fn raise_to(&mut self, window: &WindowStats, max_log2: f64) -> bool {
        let mut raised = false;
        for (c, b) in window.classes.iter().zip(self.baselines.iter_mut()) {
            if let (Some(base), true) = (b.as_mut(), c.completed > 0) {
                let gap = c.mean_log2() - *base;
                if gap > 0.0 {
                    *base += gap.min(max_log2);
                    raised = true;
                }
            }
        }
        raised
    }
}

/// Windows a cut settles for: whole windows in the latency `level_log2` (log2 microseconds),
/// at most [`MAX_SETTLING`]. Latency under a window: none.
fn settling_windows(level_log2: f64, window_us: f64) -> u32 {
    let windows = level_log2.exp2() / window_us.max(1.0);
    if windows.is_finite() && windows >= 1.0 {
        (windows as u32).min(MAX_SETTLING)
    } else {
        0
    }
}

/// `x` within `[lo, hi]` (`hi` if the bounds cross). Not `f64::clamp`: its assertion formats
/// floats, which brings float printing (~20 KB) into the wasm module, and it panics on crossed
/// bounds.
fn within(x: f64, lo: f64, hi: f64) -> f64 {
    x.max(lo).min(hi)
}

/// The highest in-flight count (including the request) a class with `reserve` may reach under
/// limit `limit`: `floor((1 - reserve) x L)`. Class c is admitted iff `in_flight + 1 <=` this.
pub fn class_max(limit: u32, reserve: f64) -> u32 {
    // The epsilon absorbs 0.8 x 200 = 159.99999 (as config does for the static limit).
    ((1.0 - within(reserve, 0.0, 1.0)) * f64::from(limit) + 1e-9).floor() as u32
}

/// [`class_max`] for every class, indexed like `reserves`.
pub fn class_maxima(limit: u32, reserves: &[f64]) -> Vec<u32> {
    reserves.iter().map(|&r| class_max(limit, r)).collect()
}

#[cfg(test)]
#[path = "adaptive_tests.rs"]
mod tests;
