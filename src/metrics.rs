//! Every counter surgeguard exports, declared once, and which of them one decision bumps.
//!
//! Names (Envoy shows them under its wasm prefix, e.g. `wasmcustom.surgeguard.*`):
//! - `surgeguard.class.<class>.{admitted,rate_limited,shed,shadow_rate_limited,shadow_shed}`
//! - `surgeguard.limit.<limit>.{admitted,rate_limited,shadow_rate_limited,key_overflow}`
//! - `surgeguard.fail_open`, `surgeguard.config_rejected` (counters)
//! - `surgeguard.in_flight`, `surgeguard.max_in_flight` (gauges)
//! - with `concurrency.adaptive`: `surgeguard.adaptive.limit`, `surgeguard.adaptive.baseline_us`
//!   and `surgeguard.adaptive.floor` (gauges: L, its floor, and the baselines weighted by the last window's class mix), and
//!   `surgeguard.adaptive.decreases`, `surgeguard.adaptive.increases` (counters: windows that cut
//!   or raised L)
//! - per fleet limit: `surgeguard.limit.<limit>.{lease_calls,lease_grants,lease_denials,lease_failures}`
//!   (counters) and `surgeguard.limit.<limit>.fleet_mode` (gauge: 1 fleet, 0 local fallback)

use crate::config::{Mode, Policy};
use crate::decision::{Decision, Verdict};
use crate::ids::LimitId;

pub const CLASS_OUTCOMES: [&str; 5] = ["admitted", "rate_limited", "shed", "shadow_rate_limited", "shadow_shed"];
pub const LIMIT_OUTCOMES: [&str; 4] = ["admitted", "rate_limited", "shadow_rate_limited", "key_overflow"];
/// What happened to a fleet limit's lease calls, in the order of [`LEASE_OUTCOMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// A call was made.
    Call,
    /// The service granted the hits asked for.
    Grant,
    /// The service answered OVER_LIMIT.
    Denial,
    /// An error status, an undecodable answer, a timeout, or a call Envoy refused to make.
    Failure,
}
pub const LEASE_OUTCOMES: [&str; 4] = ["lease_calls", "lease_grants", "lease_denials", "lease_failures"];
pub const FAIL_OPEN: &str = "surgeguard.fail_open";
pub const CONFIG_REJECTED: &str = "surgeguard.config_rejected";
pub const IN_FLIGHT_GAUGE: &str = "surgeguard.in_flight";
/// The configured `concurrency.max_in_flight`, so alerts compare against the real limit.
pub const MAX_IN_FLIGHT_GAUGE: &str = "surgeguard.max_in_flight";
/// The adaptive limit L in force.
pub const ADAPTIVE_LIMIT_GAUGE: &str = "surgeguard.adaptive.limit";
/// Its floor (`concurrency.adaptive.floor`), so alerts compare against it.
pub const ADAPTIVE_FLOOR_GAUGE: &str = "surgeguard.adaptive.floor";
/// The latency baselines, weighted by the last window's class mix, in microseconds.
pub const ADAPTIVE_BASELINE_GAUGE: &str = "surgeguard.adaptive.baseline_us";
/// Control windows that lowered L, and that raised it.
pub const ADAPTIVE_DECREASES: &str = "surgeguard.adaptive.decreases";
pub const ADAPTIVE_INCREASES: &str = "surgeguard.adaptive.increases";

const ADMITTED: usize = 0;
const RATE_LIMITED: usize = 1;
const SHED: usize = 2;
const SHADOW_RATE_LIMITED_CLASS: usize = 3;
const SHADOW_SHED: usize = 4;
const SHADOW_RATE_LIMITED_LIMIT: usize = 2;
const KEY_OVERFLOW: usize = 3;

/// The per-policy counters, in a fixed order: classes x outcomes, limits x outcomes, fail_open.
pub fn counter_names(policy: &Policy) -> Vec<String> {
    let mut names = Vec::new();
    for c in &policy.classes {
        names.extend(CLASS_OUTCOMES.iter().map(|o| format!("surgeguard.class.{}.{o}", c.name)));
    }
    for l in &policy.limits {
        names.extend(LIMIT_OUTCOMES.iter().map(|o| format!("surgeguard.limit.{}.{o}", l.name)));
    }
    names.push(FAIL_OPEN.to_string());
    for l in policy.limits.iter().filter(|l| l.fleet.is_some()) {
        names.extend(LEASE_OUTCOMES.iter().map(|o| format!("surgeguard.limit.{}.{o}", l.name)));
    }
    names
}

/// The index (into [`counter_names`]) of a fleet limit's lease counter; `None` for a limit
/// that is not fleet-wide.
pub fn lease_counter(policy: &Policy, limit: LimitId, outcome: LeaseOutcome) -> Option<usize> {
    let fleet_base = policy.classes.len() * CLASS_OUTCOMES.len() + policy.limits.len() * LIMIT_OUTCOMES.len() + 1;
    policy.limit(limit)?.fleet.as_ref()?;
    let ordinal = policy.limits.iter().take(limit.index()).filter(|l| l.fleet.is_some()).count();
    Some(fleet_base + ordinal * LEASE_OUTCOMES.len() + outcome as usize)
}

/// The gauge of each fleet limit's mode, in limit order.
pub fn fleet_mode_gauge_names(policy: &Policy) -> Vec<String> {
    policy
        .limits
        .iter()
        .filter(|l| l.fleet.is_some())
        .map(|l| format!("surgeguard.limit.{}.fleet_mode", l.name))
        .collect()
}

/// Calls `bump` with the index (into [`counter_names`]) of every counter one decision adds 1 to.
pub fn for_each_counter(policy: &Policy, decision: &Decision, mut bump: impl FnMut(usize)) {
    let shadow = policy.mode == Mode::Shadow;
    let class_base = decision.class.index() * CLASS_OUTCOMES.len();
    let limits_base = policy.classes.len() * CLASS_OUTCOMES.len();
    let limit_base = |l: LimitId| limits_base + l.index() * LIMIT_OUTCOMES.len();
    let fail_open = limits_base + policy.limits.len() * LIMIT_OUTCOMES.len();
    let refused_outcome = if shadow { SHADOW_RATE_LIMITED_LIMIT } else { RATE_LIMITED };
    match decision.verdict {
        Verdict::Admitted { .. } => {
            bump(class_base + ADMITTED);
            decision.applied.iter().for_each(|l| bump(limit_base(l) + ADMITTED));
        }
        Verdict::RateLimited { .. } => {
            bump(class_base + if shadow { SHADOW_RATE_LIMITED_CLASS } else { RATE_LIMITED });
            decision.refused.iter().for_each(|l| bump(limit_base(l) + refused_outcome));
        }
        Verdict::Shed { .. } => bump(class_base + if shadow { SHADOW_SHED } else { SHED }),
        Verdict::FailedOpen => bump(fail_open),
    }
    decision.overflowed.iter().for_each(|l| bump(limit_base(l) + KEY_OVERFLOW));
}
