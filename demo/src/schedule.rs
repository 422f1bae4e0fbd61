//! The surge's schedule: when each request arrives and what it is, fixed before a run starts so
//! that both runs (without and with the filter) see exactly the same offered load.
//!
//! Shape: a calm phase at `calm_rate_per_s`, a surge at `surge` times that rate (reached over a
//! short ramp), and a recovery phase back at the calm rate. Arrivals are a Poisson process whose
//! rate follows that shape (open loop: they never wait for responses).
//!
//! Invariants: arrivals are sorted by time, all fall in `[0, duration)`, and the same plan
//! (including its seed) always gives the same arrivals.

use crate::rng::Rng;
use crate::traffic::{request, Kind, Mix};
use serde::Serialize;
use surgeguard_harness::client::Req;

/// The calm phase's share of the duration; the surge takes [`SURGE_SHARE`], recovery the rest.
pub const CALM_SHARE: f64 = 0.25;
pub const SURGE_SHARE: f64 = 0.5;
/// How long the surge takes to reach its full rate.
pub const RAMP_S: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Calm,
    Surge,
    Recovery,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Calm, Phase::Surge, Phase::Recovery];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Calm => "calm",
            Phase::Surge => "surge",
            Phase::Recovery => "recovery",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub duration_s: f64,
    /// The surge's rate as a multiple of the calm rate.
    pub surge: f64,
    pub calm_rate_per_s: f64,
    pub mix: Mix,
    pub seed: u64,
}

/// The plan in the summaries.
#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    pub duration_s: f64,
    pub surge: f64,
    pub calm_rate_per_s: f64,
    pub seed: u64,
    /// Requests the schedule offered.
    pub offered: usize,
    pub phases_s: PhasesSummary,
}

/// Each phase's `[start, end)` in seconds from the start of the run.
#[derive(Debug, Clone, Serialize)]
pub struct PhasesSummary {
    pub calm: [f64; 2],
    pub surge: [f64; 2],
    pub recovery: [f64; 2],
}

/// One request of the schedule.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When it is sent, from the start of the run.
    pub at_us: u64,
    pub kind: Kind,
    pub phase: Phase,
    pub req: Req,
}

impl Plan {
    pub fn surge_start_s(&self) -> f64 {
        self.duration_s * CALM_SHARE
    }

    pub fn surge_end_s(&self) -> f64 {
        self.duration_s * (CALM_SHARE + SURGE_SHARE)
    }

    /// `phase`'s `[start, end)` in seconds from the start of the run.
    pub fn phase_bounds_s(&self, phase: Phase) -> (f64, f64) {
        match phase {
            Phase::Calm => (0.0, self.surge_start_s()),
            Phase::Surge => (self.surge_start_s(), self.surge_end_s()),
            Phase::Recovery => (self.surge_end_s(), self.duration_s),
        }
    }

    /// The plan as the summaries record it, with the number of requests it offered.
    pub fn summary(&self, offered: usize) -> PlanSummary {
        PlanSummary {
            duration_s: self.duration_s,
            surge: self.surge,
            calm_rate_per_s: self.calm_rate_per_s,
            seed: self.seed,
            offered,
            phases_s: PhasesSummary {
                calm: [0.0, self.surge_start_s()],
                surge: [self.surge_start_s(), self.surge_end_s()],
                recovery: [self.surge_end_s(), self.duration_s],
            },
        }
    }

    /// The phases in words: "20 s calm at 10 requests/s, a 10 s surge to 6x, 10 s recovery".
    pub fn phases(&self) -> String {
        format!(
            "{:.0} s calm at {:.0} requests/s, a {:.0} s surge to {}x, {:.0} s recovery",
            self.surge_start_s(),
            self.calm_rate_per_s,
            self.surge_end_s() - self.surge_start_s(),
            self.surge,
            self.duration_s - self.surge_end_s(),
        )
    }

    pub fn phase_at(&self, t_s: f64) -> Phase {
        if t_s < self.surge_start_s() {
            Phase::Calm
        } else if t_s < self.surge_end_s() {
            Phase::Surge
        } else {
            Phase::Recovery
        }
    }

    /// The offered rate at `t_s`.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        match self.phase_at(t_s) {
            Phase::Calm | Phase::Recovery => self.calm_rate_per_s,
            Phase::Surge => {
                let ramp = ((t_s - self.surge_start_s()) / RAMP_S).clamp(0.0, 1.0);
                self.calm_rate_per_s * (1.0 + (self.surge - 1.0) * ramp)
            }
        }
    }

    /// How many requests the plan offers on average in `[from_s, to_s)` (the rate's integral).
    pub fn expected_between(&self, from_s: f64, to_s: f64) -> f64 {
        let steps = 10_000;
        let dt = (to_s - from_s) / steps as f64;
        (0..steps).map(|i| self.rate_at(from_s + (i as f64 + 0.5) * dt) * dt).sum()
    }

    /// Every arrival of the run, sorted by time.
    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut rng = Rng::new(self.seed);
        let mut out = Vec::new();
        let mut t_s = 0.0;
        loop {
            // Thinning-free approximation: the next gap at the current rate; the rate changes
            // slowly compared with the gaps, so the count follows the shape closely.
            t_s += rng.exponential(1.0 / self.rate_at(t_s).max(1e-9));
            if t_s >= self.duration_s {
                return out;
            }
            let kind = self.mix.pick(&mut rng);
            out.push(Arrival {
                at_us: (t_s * 1e6) as u64,
                kind,
                phase: self.phase_at(t_s),
                req: request(kind, &mut rng),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> Plan {
        Plan { duration_s: 24.0, surge: 5.0, calm_rate_per_s: 100.0, mix: Mix::default(), seed: 42 }
    }

    #[test]
    fn phases_split_the_duration_a_quarter_a_half_and_a_quarter() {
        let p = plan();
        assert_eq!(p.phase_at(0.0), Phase::Calm);
        assert_eq!(p.phase_at(5.99), Phase::Calm);
        assert_eq!(p.phase_at(6.0), Phase::Surge);
        assert_eq!(p.phase_at(17.99), Phase::Surge);
        assert_eq!(p.phase_at(18.0), Phase::Recovery);
    }

    #[test]
    fn the_recorded_plan_gives_the_phase_boundaries_in_seconds() {
        let v = serde_json::to_value(plan().summary(1234)).unwrap();
        assert_eq!(v["offered"], 1234);
        assert_eq!(v["phases_s"]["calm"], json!([0.0, 6.0]));
        assert_eq!(v["phases_s"]["surge"], json!([6.0, 18.0]));
        assert_eq!(v["phases_s"]["recovery"], json!([18.0, 24.0]));
    }

    #[test]
    fn the_rate_ramps_up_to_the_surge_and_falls_back_to_calm() {
        let p = plan();
        assert_eq!(p.rate_at(1.0), 100.0);
        assert!((p.rate_at(6.5) - 300.0).abs() < 1e-9, "halfway up the ramp");
        assert_eq!(p.rate_at(10.0), 500.0);
        assert_eq!(p.rate_at(20.0), 100.0);
    }

    #[test]
    fn arrivals_are_sorted_inside_the_run_and_reproducible() {
        let p = plan();
        let a = p.arrivals();
        assert!(a.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        assert!(a.iter().all(|x| x.at_us < 24_000_000));
        let b = p.arrivals();
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.at_us == y.at_us && x.kind == y.kind && x.req.path == y.req.path));
    }

    #[test]
    fn each_phase_offers_what_its_rate_says() {
        let p = plan();
        let a = p.arrivals();
        for phase in Phase::ALL {
            let (from, to) = match phase {
                Phase::Calm => (0.0, p.surge_start_s()),
                Phase::Surge => (p.surge_start_s(), p.surge_end_s()),
                Phase::Recovery => (p.surge_end_s(), p.duration_s),
            };
            let expected = p.expected_between(from, to);
            let got = a.iter().filter(|x| x.phase == phase).count() as f64;
            // Poisson: the standard deviation is sqrt(expected); 4 of them is far out.
            assert!((got - expected).abs() < 4.0 * expected.sqrt(), "{phase:?}: {got} vs {expected}");
        }
        // The surge offers several times the calm load per second.
        let calm_per_s = a.iter().filter(|x| x.phase == Phase::Calm).count() as f64 / 6.0;
        let surge_per_s = a.iter().filter(|x| x.phase == Phase::Surge).count() as f64 / 12.0;
        assert!(surge_per_s > 4.0 * calm_per_s, "{surge_per_s} vs {calm_per_s}");
    }

    #[test]
    fn the_mix_is_the_same_in_every_phase() {
        let a = plan().arrivals();
        for phase in [Phase::Calm, Phase::Surge] {
            let in_phase: Vec<_> = a.iter().filter(|x| x.phase == phase).collect();
            let bots = in_phase.iter().filter(|x| x.kind == Kind::Bot).count() as f64;
            let share = bots / in_phase.len() as f64;
            assert!((share - 0.15).abs() < 0.04, "{phase:?}: {share}");
        }
    }
}
