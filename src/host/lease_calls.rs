//! The fleet limits' lease calls to the rate limit service, over Envoy's gRPC client.
//!
//! Calls are made from the root context's tick, never from a request: a gRPC call belongs to the
//! context that makes it, and Envoy cancels a stream's calls when the stream ends. Which worker
//! calls is settled in shared data (`fleet`), so an Envoy makes one call at a time per limit.
//! Envoy answers each call once, in `on_grpc_call_response`, with the message or an error status
//! (its own timeout is the call's deadline). A call Envoy never answers (a cluster with no healthy
//! host can queue it forever) is declared failed at its deadline by whichever worker ticks first,
//! and cancelled here a second later.

use super::adapters::HostStore;
use super::root::ConfigInForce;
use crate::fleet::{answer_from, mode_gauge, Applied, LeaseCall};
use crate::ids::LimitId;
use crate::lease::{Answer, Mode, Switch};
use crate::metrics::{lease_counter, LeaseOutcome};
use crate::rls;
use proxy_wasm::hostcalls;
use proxy_wasm::types::BufferType;
use std::rc::Rc;
use std::time::Duration;

/// How long past its deadline an unanswered call is kept before it is cancelled: Envoy's own
/// timeout answers it at the deadline, so only a call Envoy lost is still here by then.
const CANCEL_GRACE_NS: u64 = 1_000_000_000;

/// The calls this VM made that Envoy has not answered yet, with their tokens.
///
/// A `Vec`: only a few calls (about one per fleet limit) are ever pending, and std's `HashMap`
/// would bring its random seeding (and the WASI error table its failure message formats) into
/// the module: ~10 KB.
#[derive(Default)]
pub struct LeaseCalls {
    pending: Vec<(u32, Pending)>,
}

struct Pending {
    config: Rc<ConfigInForce>,
    limit: LimitId,
    deadline_ns: u64,
}

impl LeaseCalls {
    /// Claims and makes the calls that are due; reports calls that passed their deadline.
    pub fn tick(&mut self, config: &Rc<ConfigInForce>, now_ns: u64) {
        self.cancel_lost(now_ns);
        if config.admission.fleet_limits().next().is_none() {
            return;
        }
        let Some(tick) = config.admission.lease_calls_due(now_ns, &HostStore) else { return };
        for (limit, switch) in tick.switches {
            count(config, limit, LeaseOutcome::Failure);
            report(config, limit, switch, "a lease call passed its deadline unanswered");
        }
        for call in tick.calls {
            self.dispatch(config, call, now_ns);
        }
    }

    fn dispatch(&mut self, config: &Rc<ConfigInForce>, call: LeaseCall, now_ns: u64) {
        let Some(fleet) = config.admission.policy.limit(call.limit).and_then(|l| l.fleet.as_ref()) else { return };
        count(config, call.limit, LeaseOutcome::Call);
        let timeout = Duration::from_nanos(fleet.lease.timeout_ns);
        match hostcalls::dispatch_grpc_call(
            &fleet.cluster,
            rls::SERVICE,
            rls::METHOD,
            Vec::new(),
            Some(&call.message),
            timeout,
        ) {
            Ok(token) => {
                let pending = Pending { config: Rc::clone(config), limit: call.limit, deadline_ns: call.deadline_ns };
                self.pending.retain(|(t, _)| *t != token);
                self.pending.push((token, pending));
            }
            // Envoy refused to make it (no such cluster, say): the call failed, now.
            Err(status) => {
                count(config, call.limit, LeaseOutcome::Failure);
                let applied = config.admission.apply_lease_answer(
                    call.limit,
                    call.deadline_ns,
                    Answer::Failed,
                    now_ns,
                    &HostStore,
                );
                if let Applied::Switched(switch) = applied {
                    let why = format!("Envoy refused the call to cluster {} ({status:?})", fleet.cluster);
                    report(config, call.limit, switch, &why);
                }
            }
        }
    }

    /// Envoy's answer to call `token`: the message (`status_code` 0) or a gRPC error status.
    pub fn answered(&mut self, token: u32, status_code: u32, message_bytes: usize, now_ns: u64) {
        let Some(i) = self.pending.iter().position(|(t, _)| *t == token) else { return };
        let (_, call) = self.pending.swap_remove(i);
        let message = match status_code {
            0 => hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, message_bytes)
                .ok()
                .flatten()
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let answer = answer_from(status_code, &message);
        let outcome = match answer {
            Answer::Granted { .. } => LeaseOutcome::Grant,
            Answer::OverLimit { .. } => LeaseOutcome::Denial,
            Answer::Failed => LeaseOutcome::Failure,
        };
        let switch =
            match call.config.admission.apply_lease_answer(call.limit, call.deadline_ns, answer, now_ns, &HostStore) {
                // Counted when the tick declared it failed at its deadline (Envoy's own timeout
                // answers at that same deadline).
                Applied::Stale => return,
                Applied::StorageFailed => Switch::None,
                Applied::Switched(switch) => switch,
            };
        count(&call.config, call.limit, outcome);
        let why = match answer {
            Answer::Failed if status_code != 0 => format!("the rate limit service failed (gRPC status {status_code})"),
            Answer::Failed => "the rate limit service's answer could not be read".to_string(),
            _ => "the rate limit service answered".to_string(),
        };
        report(&call.config, call.limit, switch, &why);
    }

    /// Cancels calls Envoy has not answered well past their deadline.
    fn cancel_lost(&mut self, now_ns: u64) {
        self.pending.retain(|(token, call)| {
            let lost = now_ns >= call.deadline_ns.saturating_add(CANCEL_GRACE_NS);
            if lost {
                let _ = hostcalls::cancel_grpc_call(*token);
            }
            !lost
        });
    }
}

fn count(config: &ConfigInForce, limit: LimitId, outcome: LeaseOutcome) {
    if let Some(i) = lease_counter(&config.admission.policy, limit, outcome) {
        config.metrics.bump(i);
    }
}

/// A mode switch: its log line and the limit's gauge.
fn report(config: &ConfigInForce, limit: LimitId, switch: Switch, why: &str) {
    let policy = &config.admission.policy;
    let name = policy.limit(limit).map_or("", |l| l.name.as_str());
    let ordinal = policy.limits.iter().take(limit.index()).filter(|l| l.fleet.is_some()).count();
    match switch {
        Switch::None => {}
        Switch::ToLocal => {
            config.metrics.set_fleet_mode(ordinal, mode_gauge(Mode::Local));
            log::warn!("surgeguard: limit {name}: local fallback mode: {why}");
        }
        Switch::ToFleet => {
            config.metrics.set_fleet_mode(ordinal, mode_gauge(Mode::Fleet));
            log::info!("surgeguard: limit {name}: fleet mode: {why}");
        }
    }
}
