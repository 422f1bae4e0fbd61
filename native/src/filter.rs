//! One request: read what the policy needs, decide, count, then continue or reply; the same
//! steps as the wasm build's `host/http.rs`, over the same core. The in-flight slot is released
//! exactly once, when Envoy destroys the stream's filter (after every other hook, however the
//! stream ended). With an adaptive limit, the stream's completion is also its sample: latency
//! (from the admission's clock read) or an upstream error, added to the process's window.

use crate::abi;
use crate::config::{lock, Serving};
use crate::envoy::now_ns;
use crate::store::STORE;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use surgeguard::adaptive::WindowStats;
use surgeguard::classify::{LazyRequest, RequestSource};
use surgeguard::config::{Mode, Policy};
use surgeguard::decision::{Decision, Verdict};
use surgeguard::ids::ClassId;
use surgeguard::metrics::for_each_counter;
use surgeguard::response::refusal;

pub struct StreamFilter {
    serving: Arc<Serving>,
    holds_in_flight_slot: bool,
    /// Adaptive limit only: the class and admission time of a request sent upstream.
    sample: Option<(ClassId, u64)>,
}

impl StreamFilter {
    pub fn new(serving: Arc<Serving>) -> StreamFilter {
        StreamFilter { serving, holds_in_flight_slot: false, sample: None }
    }

    /// `on_http_filter_request_headers`: `abi::CONTINUE` or, after a refusal was sent,
    /// `abi::STOP_ITERATION`.
    pub fn on_request_headers(&mut self, envoy: abi::FilterEnvoyPtr) -> i32 {
        let s = &*self.serving;
        let policy = &s.admission.policy;
        let req = LazyRequest::new(HookRequest { envoy, hook: PhantomData }, &policy.header_names);
        let now = now_ns();
        let decision = s.admission.decide(&req, now, s.instance, &STORE);
        for_each_counter(policy, &decision, |i| s.metrics.bump(i));
        if let Verdict::Admitted { in_flight: Some(total) } = decision.verdict {
            self.holds_in_flight_slot = true;
            s.metrics.set_in_flight(total);
        }
        let shadow = policy.mode == Mode::Shadow;
        if let Some(window) = &s.window {
            if observe(window, &decision, shadow) {
                self.sample = Some((decision.class, now));
            }
        }
        if shadow {
            return abi::CONTINUE;
        }
        match decision.verdict {
            Verdict::Admitted { .. } | Verdict::FailedOpen => abi::CONTINUE,
            Verdict::RateLimited { .. } | Verdict::Shed { .. } => reply_refused(envoy, policy, &decision),
        }
    }

    /// `on_http_filter_stream_complete`: the sample, if the request went upstream. Latency if
    /// the upstream answered below 500, an upstream error if it answered 5xx or Envoy's router
    /// did for it (504 timeout, 503 reset); no response (the client went away first): nothing.
    pub fn on_stream_complete(&mut self, envoy: abi::FilterEnvoyPtr) {
        let (Some((class, admitted_ns)), Some(window)) = (self.sample.take(), &self.serving.window) else { return };
        let mut code = 0u64;
        // SAFETY: `envoy` is this stream's filter during its hook; `code` is writable.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                envoy,
                abi::ATTRIBUTE_RESPONSE_CODE,
                &mut code,
            )
        };
        let latency_us = now_ns().saturating_sub(admitted_ns) / 1_000;
        let mut w = lock(window);
        match (found, code) {
            (false, _) | (true, 0) => {}
            (true, 500..) => w.errors += 1,
            (true, _) => w.record_completed(class, latency_us),
        }
    }
}

impl Drop for StreamFilter {
    // `on_http_filter_destroy`: the stream ended, however it ended.
    fn drop(&mut self) {
        if std::mem::take(&mut self.holds_in_flight_slot) {
            self.serving.release_in_flight_slot();
        }
    }
}

/// Adaptive limit: what the decision tells the controller (the in flight an admission saw; a
/// shed, as demand), and whether the request goes upstream (its end is then a sample). In
/// shadow mode a would-be refusal goes upstream too.
#[inline(never)]
fn observe(window: &Mutex<WindowStats>, decision: &Decision, shadow: bool) -> bool {
    match decision.verdict {
        Verdict::Admitted { in_flight } => {
            lock(window).record_admitted(in_flight.unwrap_or(0));
            true
        }
        Verdict::FailedOpen => true,
        Verdict::Shed { .. } => {
            lock(window).refused += 1;
            shadow
        }
        Verdict::RateLimited { .. } => shadow,
    }
}

// Out of line: most requests are admitted, and the reply's formatting is large.
#[cold]
#[inline(never)]
fn reply_refused(envoy: abi::FilterEnvoyPtr, policy: &Policy, decision: &Decision) -> i32 {
    let Some(reply) = refusal(policy, decision) else { return abi::CONTINUE };
    let mut headers: Vec<abi::ModuleHttpHeader> = reply
        .headers
        .iter()
        .map(|(k, v)| abi::ModuleHttpHeader {
            key_ptr: k.as_ptr().cast(),
            key_length: k.len(),
            value_ptr: v.as_ptr().cast(),
            value_length: v.len(),
        })
        .collect();
    let details: &[u8] = if reply.status == 429 { b"surgeguard_rate_limited" } else { b"surgeguard_shed" };
    // SAFETY: `envoy` is this stream's filter during its hook; every buffer outlives the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_send_response(
            envoy,
            reply.status,
            headers.as_mut_ptr(),
            headers.len(),
            abi::ModuleBuffer::of(reply.body),
            abi::ModuleBuffer::of(details),
        );
    }
    abi::STOP_ITERATION
}

/// A request header's value, borrowed from Envoy for the current hook (no copy).
fn header<'h>(envoy: abi::FilterEnvoyPtr, name: &str) -> Option<&'h [u8]> {
    let mut value = abi::EnvoyBuffer::EMPTY;
    let mut count = 0usize;
    // SAFETY: `envoy` is this stream's filter during its hook; `value` and `count` are writable.
    let found = unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            envoy,
            abi::REQUEST_HEADER,
            abi::ModuleBuffer::of(name.as_bytes()),
            &mut value,
            0,
            &mut count,
        )
    };
    // SAFETY: Envoy keeps the value valid until the end of the hook; `'h` ends with it.
    (found && count > 0 && !value.ptr.is_null()).then(|| unsafe { value.as_bytes() })
}

/// The downstream address with its port, borrowed as a header is.
fn source_address<'h>(envoy: abi::FilterEnvoyPtr) -> &'h [u8] {
    let mut value = abi::EnvoyBuffer::EMPTY;
    // SAFETY: as in `header`.
    let found = unsafe {
        abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
            envoy,
            abi::ATTRIBUTE_SOURCE_ADDRESS,
            &mut value,
        )
    };
    // SAFETY: as in `header`.
    if found {
        unsafe { value.as_bytes() }
    } else {
        &[]
    }
}

/// Envoy's request during one hook, read without copies: a value lives until the hook returns,
/// and so does the `LazyRequest` over it.
struct HookRequest<'h> {
    envoy: abi::FilterEnvoyPtr,
    hook: PhantomData<&'h ()>,
}

impl<'h> RequestSource for HookRequest<'h> {
    type Bytes = &'h [u8];
    fn header(&self, name: &str) -> Option<&'h [u8]> {
        header(self.envoy, name)
    }
    fn source_address(&self) -> &'h [u8] {
        source_address(self.envoy)
    }
}
