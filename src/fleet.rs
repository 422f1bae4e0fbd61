//! Fleet-wide limits in shared data: the lease calls a tick finds due, and the rate limit
//! service's answers, applied to the record by compare-and-swap. The lease logic itself is pure
//! (`lease`); this is where it meets storage, the same way for every worker of an Envoy.
//!
//! Every worker's tick asks [`Admission::lease_calls_due`]; the compare-and-swap lets exactly
//! one of them claim a due call, so the service sees one call per Envoy, not one per worker.
//! The answer comes back to the worker that made the call ([`Admission::apply_lease_answer`]).

use crate::config::Fleet;
use crate::decision::Admission;
use crate::ids::LimitId;
use crate::lease::{Answer, Lease, Mode, Switch};
use crate::record::Record;
use crate::rls;
use crate::store::{update, Change, SharedStore};

/// A call to make now: the encoded `RateLimitRequest` for `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseCall {
    pub limit: LimitId,
    pub hits: u32,
    pub message: Vec<u8>,
    /// The call's deadline, which also identifies it: its answer must name it.
    pub deadline_ns: u64,
}

/// What applying an answer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The lease took it; the mode switch it caused, if any.
    Switched(Switch),
    /// It answers a call already declared failed at its deadline (and counted then): ignored.
    Stale,
    /// Storage failed: the call will expire at its deadline.
    StorageFailed,
}

/// What one tick found: calls this worker claimed, and limits whose mode changed (a call that
/// passed its deadline unanswered switches its limit to local mode).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseTick {
    pub calls: Vec<LeaseCall>,
    pub switches: Vec<(LimitId, Switch)>,
}

impl Admission {
    /// The fleet limits, with their ids.
    pub fn fleet_limits(&self) -> impl Iterator<Item = (LimitId, &Fleet)> {
        self.policy.limits_by_id().filter_map(|(id, l)| Some((id, l.fleet.as_ref()?)))
    }

    /// Where a limit's lease is kept in the record.
    pub(crate) fn lease_id(&self, limit: LimitId) -> u64 {
        self.record_bucket_ids.get(limit.index()).copied().unwrap_or(0)
    }

    /// Expires calls past their deadline and claims the calls that are due; `None` if storage
    /// failed or stayed contended (the next tick tries again).
    pub fn lease_calls_due(&self, now_ns: u64, store: &dyn SharedStore) -> Option<LeaseTick> {
        if self.fleet_limits().next().is_none() {
            return Some(LeaseTick::default());
        }
        update(store, &self.record_key, |stored| {
            let mut record = Record::from_bytes(stored.unwrap_or_default());
            let mut tick = LeaseTick::default();
            let mut changed = false;
            for (limit, fleet) in self.fleet_limits() {
                let id = self.lease_id(limit);
                let mut lease = record.lease(id);
                let before = lease;
                let switch = lease.expire_call(&fleet.lease, now_ns);
                if switch != Switch::None {
                    tick.switches.push((limit, switch));
                }
                if let Some(hits) = lease.start_call(&fleet.lease, now_ns) {
                    let deadline_ns = lease.call_deadline_ns;
                    tick.calls.push(LeaseCall { limit, hits, message: encode(fleet, hits), deadline_ns });
                }
                if lease != before {
                    record.set_lease(id, &lease);
                    changed = true;
                }
            }
            if changed {
                Change::Write(record, tick)
            } else {
                Change::Keep(tick)
            }
        })
        .ok()
    }

    /// Applies the service's answer to the call `limit` claimed with `call_deadline_ns`.
    pub fn apply_lease_answer(
        &self,
        limit: LimitId,
        call_deadline_ns: u64,
        answer: Answer,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Applied {
        let Some(fleet) = self.policy.limit(limit).and_then(|l| l.fleet.as_ref()) else { return Applied::Stale };
        let id = self.lease_id(limit);
        update(store, &self.record_key, |stored| {
            let mut record = Record::from_bytes(stored.unwrap_or_default());
            let mut lease = record.lease(id);
            match lease.on_answer(answer, call_deadline_ns, &fleet.lease, now_ns) {
                None => Change::Keep(Applied::Stale),
                Some(switch) => {
                    record.set_lease(id, &lease);
                    Change::Write(record, Applied::Switched(switch))
                }
            }
        })
        .ok()
        .unwrap_or(Applied::StorageFailed)
    }

    /// Each fleet limit's lease as stored (for gauges, tests and tools).
    pub fn leases(&self, store: &dyn SharedStore) -> Vec<(LimitId, Lease)> {
        let (bytes, _) = store.load(&self.record_key).ok().flatten().unzip();
        let record = Record::from_bytes(bytes.unwrap_or_default());
        self.fleet_limits().map(|(limit, _)| (limit, record.lease(self.lease_id(limit)))).collect()
    }
}

/// Reads a `ShouldRateLimit` reply: gRPC status `grpc_status` (0 is OK) and its message.
pub fn answer_from(grpc_status: u32, message: &[u8]) -> Answer {
    if grpc_status != 0 {
        return Answer::Failed;
    }
    match rls::decode_response(message) {
        Ok(r) => {
            // One descriptor per call: its status says what is left; without one, nothing known.
            let status = r.statuses.first();
            // Without a status (limitador-server sends none) what is left is unknown; a status
            // is taken at its word, limit_remaining 0 included.
            let remaining = status.map(|s| u64::from(s.limit_remaining));
            let until_reset_ns = status.and_then(|s| s.until_reset_ns);
            match r.overall_code {
                rls::Code::Ok => Answer::Granted { remaining, until_reset_ns },
                rls::Code::OverLimit => Answer::OverLimit { remaining, until_reset_ns },
                rls::Code::Unknown => Answer::Failed,
            }
        }
        Err(rls::DecodeError) => Answer::Failed,
    }
}

/// The mode a limit is in, as its gauge shows it: 1 fleet, 0 local.
pub fn mode_gauge(mode: Mode) -> u64 {
    u64::from(mode == Mode::Fleet)
}

fn encode(fleet: &Fleet, hits: u32) -> Vec<u8> {
    let entries: Vec<(&str, &str)> = fleet.descriptor.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    rls::encode_request(&fleet.domain, &entries, hits)
}

#[cfg(test)]
#[path = "fleet_tests.rs"]
mod tests;
