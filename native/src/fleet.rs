//! The fleet limits' lease calls to the rate limit service: the wasm build's `host/lease_calls.rs`
//! over this ABI. The ABI has no gRPC client, so a call is a gRPC unary call framed by hand on
//! Envoy's HTTP callout (HTTP/2 to the service's cluster, as Envoy's gRPC client would send it).
//!
//! Calls are made on the main thread: the tick thread commits an event to the configuration's
//! scheduler, and Envoy runs [`LeaseCalls::tick`] from `on_http_filter_config_scheduled`; each
//! answer comes back once, in `on_http_filter_config_http_callout_done`. The callout's own
//! timeout is the call's deadline, so Envoy answers every call; one it lost anyway is declared
//! failed at its deadline by the core (`lease_calls_due`) and forgotten here a second later.
//!
//! What the answer carries: a callout hands over the response's headers and body, not its
//! trailers, where a gRPC server puts `grpc-status` after a message. So: a `grpc-status` header
//! (a trailers-only error) is the call's status; otherwise a `200` whose body is one whole,
//! uncompressed gRPC message is an answer (decoded and checked by the core), anything else a
//! failure.

use crate::abi;
use crate::config::Serving;
use crate::envoy::{log, ConfigPtr};
use crate::store::STORE;
use std::sync::Arc;
use surgeguard::fleet::{answer_from, mode_gauge, Applied, LeaseCall};
use surgeguard::ids::LimitId;
use surgeguard::lease::{Answer, Mode, Switch};
use surgeguard::metrics::{lease_counter, LeaseOutcome};
use surgeguard::rls;

/// How long past its deadline an unanswered call is kept (see the module docs).
const FORGET_GRACE_NS: u64 = 1_000_000_000;
/// The gRPC status a failure without one is reported as (UNAVAILABLE).
const GRPC_UNAVAILABLE: u32 = 14;

/// The calls made and not answered yet, by callout id.
#[derive(Default)]
pub struct LeaseCalls {
    pending: Vec<(u64, LimitId, u64)>,
}

impl LeaseCalls {
    /// Claims and makes the calls that are due (main thread).
    pub fn tick(&mut self, envoy: ConfigPtr, serving: &Arc<Serving>, now_ns: u64) {
        self.pending.retain(|&(_, _, deadline_ns)| now_ns < deadline_ns.saturating_add(FORGET_GRACE_NS));
        let Some(tick) = serving.admission.lease_calls_due(now_ns, &STORE) else { return };
        for (limit, switch) in tick.switches {
            count(serving, limit, LeaseOutcome::Failure);
            report(serving, limit, switch, "a lease call passed its deadline unanswered");
        }
        for call in tick.calls {
            self.dispatch(envoy, serving, call, now_ns);
        }
    }

    fn dispatch(&mut self, envoy: ConfigPtr, serving: &Serving, call: LeaseCall, now_ns: u64) {
        let Some(fleet) = serving.admission.policy.limit(call.limit).and_then(|l| l.fleet.as_ref()) else { return };
        count(serving, call.limit, LeaseOutcome::Call);
        let path = format!("/{}/{}", rls::SERVICE, rls::METHOD);
        let headers: [(&str, &str); 5] = [
            (":method", "POST"),
            (":path", &path),
            ("host", &fleet.cluster),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        let mut headers: Vec<abi::ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| abi::ModuleHttpHeader {
                key_ptr: k.as_ptr().cast(),
                key_length: k.len(),
                value_ptr: v.as_ptr().cast(),
                value_length: v.len(),
            })
            .collect();
        let body = grpc_frame(&call.message);
        let timeout_ms = fleet.lease.timeout_ns.div_ceil(1_000_000).max(1);
        let mut id = 0u64;
        // SAFETY: main thread, Envoy's configuration alive; every buffer outlives the call.
        let init = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                envoy.0,
                &mut id,
                abi::ModuleBuffer::of(fleet.cluster.as_bytes()),
                headers.as_mut_ptr(),
                headers.len(),
                abi::ModuleBuffer::of(&body),
                timeout_ms,
            )
        };
        if init == abi::CALLOUT_INIT_SUCCESS {
            self.pending.push((id, call.limit, call.deadline_ns));
            return;
        }
        // Envoy refused to make it (no such cluster, say): the call failed, now.
        count(serving, call.limit, LeaseOutcome::Failure);
        let applied =
            serving.admission.apply_lease_answer(call.limit, call.deadline_ns, Answer::Failed, now_ns, &STORE);
        if let Applied::Switched(switch) = applied {
            let why = format!("Envoy refused the call to cluster {} (callout result {init})", fleet.cluster);
            report(serving, call.limit, switch, &why);
        }
    }

    /// Envoy's answer to callout `id` (main thread): `status` is the gRPC status the response
    /// carries (see the module docs), `message` its message.
    pub fn answered(&mut self, serving: &Serving, id: u64, status: u32, message: &[u8], now_ns: u64) {
        let Some(i) = self.pending.iter().position(|&(p, _, _)| p == id) else { return };
        let (_, limit, deadline_ns) = self.pending.swap_remove(i);
        let answer = answer_from(status, message);
        let outcome = match answer {
            Answer::Granted { .. } => LeaseOutcome::Grant,
            Answer::OverLimit { .. } => LeaseOutcome::Denial,
            Answer::Failed => LeaseOutcome::Failure,
        };
        let switch = match serving.admission.apply_lease_answer(limit, deadline_ns, answer, now_ns, &STORE) {
            // Counted when the tick declared it failed at its deadline.
            Applied::Stale => return,
            Applied::StorageFailed => Switch::None,
            Applied::Switched(switch) => switch,
        };
        count(serving, limit, outcome);
        let why = match answer {
            Answer::Failed if status != 0 => format!("the rate limit service failed (gRPC status {status})"),
            Answer::Failed => "the rate limit service's answer could not be read".to_string(),
            _ => "the rate limit service answered".to_string(),
        };
        report(serving, limit, switch, &why);
    }
}

/// A gRPC message on the wire: uncompressed flag, big-endian length, message.
fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A callout's response as a gRPC unary answer: `(status, message)` (see the module docs).
pub fn grpc_answer<'b>(result: i32, headers: &[(&[u8], &[u8])], body: &'b [u8]) -> (u32, &'b [u8]) {
    let header = |name: &[u8]| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
    let number = |v: &[u8]| std::str::from_utf8(v).ok().and_then(|s| s.trim().parse::<u32>().ok());
    if result != abi::CALLOUT_SUCCESS || header(b":status").and_then(number) != Some(200) {
        return (GRPC_UNAVAILABLE, &[]);
    }
    if let Some(status) = header(b"grpc-status") {
        let status = number(status).unwrap_or(GRPC_UNAVAILABLE);
        if status != 0 {
            return (status, &[]);
        }
    }
    let whole = match body {
        [0, a, b, c, d, message @ ..] if message.len() == u32::from_be_bytes([*a, *b, *c, *d]) as usize => message,
        _ => return (GRPC_UNAVAILABLE, &[]),
    };
    (0, whole)
}

fn count(serving: &Serving, limit: LimitId, outcome: LeaseOutcome) {
    if let Some(i) = lease_counter(&serving.admission.policy, limit, outcome) {
        serving.metrics.bump(i);
    }
}

/// A mode switch: its log line and the limit's gauge.
fn report(serving: &Serving, limit: LimitId, switch: Switch, why: &str) {
    let policy = &serving.admission.policy;
    let name = policy.limit(limit).map_or("", |l| l.name.as_str());
    let ordinal = policy.limits.iter().take(limit.index()).filter(|l| l.fleet.is_some()).count();
    match switch {
        Switch::None => {}
        Switch::ToLocal => {
            serving.metrics.set_fleet_mode(ordinal, mode_gauge(Mode::Local));
            log(abi::LOG_WARN, &format!("surgeguard: limit {name}: local fallback mode: {why}"));
        }
        Switch::ToFleet => {
            serving.metrics.set_fleet_mode(ordinal, mode_gauge(Mode::Fleet));
            log(abi::LOG_INFO, &format!("surgeguard: limit {name}: fleet mode: {why}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: [(&[u8], &[u8]); 2] = [(b":status", b"200"), (b"content-type", b"application/grpc")];

    #[test]
    fn a_whole_message_in_a_200_is_an_answer() {
        let body = grpc_frame(b"hello");
        assert_eq!(body, b"\0\0\0\0\x05hello");
        assert_eq!(grpc_answer(abi::CALLOUT_SUCCESS, &OK, &body), (0, &b"hello"[..]));
    }

    #[test]
    fn an_error_status_a_truncated_message_or_a_failed_callout_is_a_failure() {
        let status = [(&b":status"[..], &b"200"[..]), (&b"grpc-status"[..], &b"8"[..])];
        assert_eq!(grpc_answer(abi::CALLOUT_SUCCESS, &status, &[]), (8, &[][..]));
        let body = grpc_frame(b"hello");
        assert_eq!(grpc_answer(abi::CALLOUT_SUCCESS, &OK, &body[..6]).0, GRPC_UNAVAILABLE);
        assert_eq!(grpc_answer(abi::CALLOUT_SUCCESS, &OK, &[1, 0, 0, 0, 0]).0, GRPC_UNAVAILABLE, "compressed");
        assert_eq!(grpc_answer(1, &OK, &body).0, GRPC_UNAVAILABLE);
        assert_eq!(grpc_answer(abi::CALLOUT_SUCCESS, &[(b":status", b"503")], &body).0, GRPC_UNAVAILABLE);
    }
}
