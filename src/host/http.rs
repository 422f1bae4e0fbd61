//! One request: fetch what the policy reads, decide, count, then continue or reply.
//! The in-flight slot is released exactly once, when the stream ends in any way.

use super::adapters::{now_ns, HostStore};
use super::root::Active;
use crate::classify::Request;
use crate::config::Mode;
use crate::decision::Verdict;
use crate::metrics::counters_for;
use crate::response::refusal;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use std::rc::Rc;

pub struct RequestFilter {
    active: Rc<Active>,
    holds_in_flight_slot: bool,
}

impl RequestFilter {
    pub fn new(active: Rc<Active>) -> RequestFilter {
        RequestFilter {
            active,
            holds_in_flight_slot: false,
        }
    }

    fn release_in_flight_slot(&mut self) {
        if std::mem::take(&mut self.holds_in_flight_slot) {
            let a = &self.active;
            if let Some(total) = a.guard.release(a.instance, now_ns(), &HostStore) {
                a.metrics.set_in_flight(total);
            }
        }
    }
}

fn header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
        .ok()
        .flatten()
}

/// The downstream address without its port: `1.2.3.4:5678` -> `1.2.3.4`, `[::1]:80` -> `::1`.
fn client_ip() -> Vec<u8> {
    let mut addr = hostcalls::get_property(vec!["source", "address"])
        .ok()
        .flatten()
        .unwrap_or_default();
    if let Some(colon) = addr.iter().rposition(|&b| b == b':') {
        let is_bracketed_v6 = addr.first() == Some(&b'[');
        let is_v4 = addr.iter().filter(|&&b| b == b':').count() == 1;
        if is_bracketed_v6 || is_v4 {
            addr.truncate(colon);
        }
    }
    if addr.first() == Some(&b'[') && addr.last() == Some(&b']') {
        addr = addr
            .get(1..addr.len() - 1)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
    }
    addr
}

impl Context for RequestFilter {}

impl HttpContext for RequestFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let active = Rc::clone(&self.active);
        let policy = &active.guard.policy;
        let method = if policy.needs_method {
            header(":method").unwrap_or_default()
        } else {
            Vec::new()
        };
        let path = if policy.needs_path {
            header(":path").unwrap_or_default()
        } else {
            Vec::new()
        };
        let headers: Vec<Option<Vec<u8>>> = policy.header_names.iter().map(|n| header(n)).collect();
        let client_ip = if policy.needs_client_ip {
            client_ip()
        } else {
            Vec::new()
        };
        let req = Request {
            method: &method,
            path: &path,
            headers: &headers,
            client_ip: &client_ip,
        };

        let decision = active
            .guard
            .decide(&req, now_ns(), active.instance, &HostStore);
        for i in counters_for(policy, &decision) {
            active.metrics.bump(i);
        }
        if let Verdict::Admitted {
            in_flight: Some(total),
        } = decision.verdict
        {
            self.holds_in_flight_slot = true;
            active.metrics.set_in_flight(total);
        }
        if policy.mode == Mode::Shadow {
            return Action::Continue;
        }
        let Some(reply) = refusal(policy, &decision) else {
            return Action::Continue;
        };
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        match hostcalls::send_http_response(reply.status, headers, Some(reply.body)) {
            Ok(()) => Action::Pause,
            // The host could not reply: let the request through rather than hang it.
            Err(_) => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        self.release_in_flight_slot();
    }
}

impl Drop for RequestFilter {
    // A stream destroyed without its log callback (should not happen) still frees its slot.
    fn drop(&mut self) {
        self.release_in_flight_slot();
    }
}
