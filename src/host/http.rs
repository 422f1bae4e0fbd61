//! One request: fetch what the policy reads, decide, count, then continue or reply.
//! The in-flight slot is released exactly once, when the stream ends in any way. With an
//! adaptive limit, the stream's end is also its sample: latency (the release's clock read minus
//! the admission's) or an upstream error, added to this VM's window (handed over on the tick).

use super::adapters::{now_ns, HostStore};
use super::root::ConfigInForce;
use crate::classify::{address_without_port, strip_query, RequestView};
use crate::config::{Mode, Policy};
use crate::decision::{Decision, Verdict};
use crate::ids::ClassId;
use crate::metrics::for_each_counter;
use crate::response::refusal;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::cell::OnceCell;
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

fn header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name).ok().flatten()
}

/// The downstream address without its port (see `classify::address_without_port`).
fn client_ip() -> Vec<u8> {
    let addr = hostcalls::get_property(vec!["source", "address"]).ok().flatten().unwrap_or_default();
    address_without_port(&addr).to_vec()
}

/// The request as the core reads it: each attribute is fetched from Envoy the first time a
/// rule or limit needs it (a rule whose path test fails never fetches `:method`), then kept.
struct HostRequest<'p> {
    header_names: &'p [String],
    method: OnceCell<Vec<u8>>,
    path: OnceCell<Vec<u8>>,
    headers: Vec<OnceCell<Option<Vec<u8>>>>,
    client_ip: OnceCell<Vec<u8>>,
}

impl<'p> HostRequest<'p> {
    fn new(header_names: &'p [String]) -> HostRequest<'p> {
        HostRequest {
            header_names,
            method: OnceCell::new(),
            path: OnceCell::new(),
            headers: header_names.iter().map(|_| OnceCell::new()).collect(),
            client_ip: OnceCell::new(),
        }
    }
}

impl RequestView for HostRequest<'_> {
    fn method(&self) -> &[u8] {
        self.method.get_or_init(|| header(":method").unwrap_or_default())
    }
    fn path(&self) -> &[u8] {
        strip_query(self.path.get_or_init(|| header(":path").unwrap_or_default()))
    }
    fn header(&self, slot: usize) -> Option<&[u8]> {
        let name = self.header_names.get(slot)?;
        self.headers.get(slot)?.get_or_init(|| header(name)).as_deref()
    }
    fn client_ip(&self) -> &[u8] {
        self.client_ip.get_or_init(client_ip)
    }
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let policy = &config.admission.policy;
        let req = HostRequest::new(&policy.header_names);
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
