//! One request: fetch what the policy reads, decide, count, then continue or reply.
//! The in-flight slot is released exactly once, when the stream ends in any way. With an
//! adaptive limit, the stream's end is also its sample: latency (the release's clock read minus
//! the admission's) or an upstream error, added to this VM's window (handed over on the tick).

use super::adapters::{now_ns, HostStore};
use super::root::ConfigInForce;
use crate::classify::{LazyRequest, RequestSource};
use crate::config::{Mode, Policy};
use crate::decision::{Decision, Verdict};
use crate::ids::ClassId;
use crate::metrics::for_each_counter;
use crate::response::refusal;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;

pub struct RequestFilter {
    config: Rc<ConfigInForce>,
    holds_in_flight_slot: bool,
    /// Adaptive limit only: the class and admission time of a request sent upstream.
    sample: Option<(ClassId, u64)>,
}

impl RequestFilter {
    pub fn new(config: Rc<ConfigInForce>) -> RequestFilter {
        RequestFilter { config, holds_in_flight_slot: false, sample: None }
    }

    fn release_in_flight_slot(&mut self, now: u64) {
        let c = &self.config;
        match c.admission.release(c.instance, now, &HostStore) {
            Some(total) => c.metrics.set_in_flight(total),
            // Never dropped: the root's next tick applies it.
            None => c.late_releases.set(c.late_releases.get() + 1),
        }
    }

    /// Adaptive limit: what the decision tells the controller (the in flight an admission saw;
    /// a refusal by the in-flight limit, as demand), and whether the request goes upstream (its
    /// end is then a sample). In shadow mode a would-be refusal goes upstream too.
    #[inline(never)]
    fn observe(&mut self, decision: &Decision, shadow: bool, now: u64) {
        let Some(window) = &self.config.window else { return };
        let upstream = match decision.verdict {
            Verdict::Admitted { in_flight } => {
                window.borrow_mut().record_admitted(in_flight.unwrap_or(0));
                true
            }
            Verdict::FailedOpen => true,
            Verdict::Shed { .. } => {
                window.borrow_mut().refused += 1;
                shadow
            }
            Verdict::RateLimited { .. } => shadow,
        };
        if upstream {
            self.sample = Some((decision.class, now));
        }
    }
}

/// The stream's end as a sample: latency if the upstream answered below 500, an upstream error
/// if it answered 5xx or Envoy's router did for it (504 timeout, 503 reset or connection
/// failure). No response (the client went away first): nothing. One host call, adaptive only.
#[inline(never)]
fn record_sample(config: &ConfigInForce, class: ClassId, admitted_ns: u64, now: u64) {
    let Some(window) = &config.window else { return };
    let code = hostcalls::get_property(vec!["response", "code"])
        .ok()
        .flatten()
        .and_then(|b| crate::store::read_u64(&b, 0))
        .unwrap_or(0);
    let mut w = window.borrow_mut();
    match code {
        0 => {}
        500.. => w.errors += 1,
        _ => w.record_completed(class, now.saturating_sub(admitted_ns) / 1_000),
    }
}

/// Envoy's request, read through proxy-wasm (each value copied into the VM).
struct ProxyWasmRequest;

impl RequestSource for ProxyWasmRequest {
    type Bytes = Vec<u8>;
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
    }
    fn source_address(&self) -> Vec<u8> {
        hostcalls::get_property(vec!["source", "address"]).ok().flatten().unwrap_or_default()
    }
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let policy = &config.admission.policy;
        let req = LazyRequest::new(ProxyWasmRequest, &policy.header_names);
        let now = now_ns();
        let decision = config.admission.decide(&req, now, config.instance, &HostStore);
        for_each_counter(policy, &decision, |i| config.metrics.bump(i));
        if let Verdict::Admitted { in_flight: Some(total) } = decision.verdict {
            self.holds_in_flight_slot = true;
            config.metrics.set_in_flight(total);
        }
        let shadow = policy.mode == Mode::Shadow;
        if config.window.is_some() {
            self.observe(&decision, shadow, now);
        }
        if shadow {
            return Action::Continue;
        }
        match decision.verdict {
            Verdict::Admitted { .. } | Verdict::FailedOpen => Action::Continue,
            Verdict::RateLimited { .. } | Verdict::Shed { .. } => reply_refused(policy, &decision),
        }
    }
}

// Out of line: most requests are admitted, and the reply's formatting is large.
#[cold]
#[inline(never)]
fn reply_refused(policy: &Policy, decision: &Decision) -> Action {
    let Some(reply) = refusal(policy, decision) else {
        return Action::Continue;
    };
    let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    match hostcalls::send_http_response(reply.status, headers, Some(reply.body)) {
        Ok(()) => Action::Pause,
        // The host could not reply: let the request through rather than hang it.
        Err(_) => Action::Continue,
    }
}

impl Drop for RequestFilter {
    // The stream ended, however it ended (complete, reset, timed out, answered locally): Envoy
    // deletes its context (`proxy_on_delete`). Released here rather than in `on_log`, which the
    // module does not export (src/host/exports.txt), so a request costs one entry into the VM less.
    fn drop(&mut self) {
        let holds = std::mem::take(&mut self.holds_in_flight_slot);
        if !holds && self.sample.is_none() {
            return;
        }
        let now = now_ns();
        if holds {
            self.release_in_flight_slot(now);
        }
        if let Some((class, admitted_ns)) = self.sample.take() {
            record_sample(&self.config, class, admitted_ns, now);
        }
    }
}
