//! The probe: on every request, `N` host calls of one kind, chosen by the plugin configuration
//! `"OP N"`:
//! - `none`: no call (the probe's own floor);
//! - `clock`: `get_current_time`;
//! - `header`: `get_http_request_header(":path")` (Envoy copies the value into the VM through
//!   a call to the module's allocator);
//! - `header_pairs`: `get_http_request_headers()` (every header in one call and one copy);
//! - `property`: `get_property(["source", "address"])`;
//! - `shared_get`: `get_shared_data` of one 16-byte value;
//! - `shared_cas`: a read-modify-write of one 16-byte value (`get_shared_data`, then
//!   `set_shared_data` with the version read), as a token bucket update does;
//! - `metric`: `increment_metric` of one counter.
//!
//! Everything else is as the empty filter: every request continues.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot::default()) });
}}

#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Op {
    #[default]
    None,
    Clock,
    Header,
    HeaderPairs,
    Property,
    SharedGet,
    SharedCas,
    Metric,
}

#[derive(Default)]
struct Plan {
    op: Op,
    n: u32,
    metric: u32,
}

#[derive(Default)]
struct ProbeRoot {
    plan: Rc<Plan>,
}

const KEY: &str = "probe/value";

fn parse(config: &str) -> Option<(Op, u32)> {
    let mut it = config.split_whitespace();
    let op = match it.next()? {
        "none" => Op::None,
        "clock" => Op::Clock,
        "header" => Op::Header,
        "header_pairs" => Op::HeaderPairs,
        "property" => Op::Property,
        "shared_get" => Op::SharedGet,
        "shared_cas" => Op::SharedCas,
        "metric" => Op::Metric,
        _ => return None,
    };
    let n = it.next().map_or(Some(0), |n| n.parse().ok())?;
    Some((op, n))
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let Some((op, n)) = parse(&config) else {
            let _ = hostcalls::log(
                LogLevel::Error,
                &format!("probe: configuration must be \"OP N\", got {config:?}"),
            );
            return false;
        };
        let _ = hostcalls::set_shared_data(KEY, Some(&[0u8; 16]), None);
        let metric = hostcalls::define_metric(MetricType::Counter, "probe.calls").unwrap_or(0);
        self.plan = Rc::new(Plan { op, n, metric });
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ProbeRequest {
            plan: Rc::clone(&self.plan),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ProbeRequest {
    plan: Rc<Plan>,
}

impl Context for ProbeRequest {}

impl HttpContext for ProbeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let plan = Rc::clone(&self.plan);
        let mut sink = 0usize;
        for _ in 0..plan.n {
            sink += match plan.op {
                Op::None => 0,
                Op::Clock => hostcalls::get_current_time().map_or(0, |_| 1),
                Op::Header => self.get_http_request_header(":path").map_or(0, |v| v.len()),
                Op::HeaderPairs => self.get_http_request_headers().len(),
                Op::Property => self
                    .get_property(vec!["source", "address"])
                    .map_or(0, |v| v.len()),
                Op::SharedGet => hostcalls::get_shared_data(KEY)
                    .ok()
                    .and_then(|(v, _)| v)
                    .map_or(0, |v| v.len()),
                Op::SharedCas => {
                    let (value, cas) = hostcalls::get_shared_data(KEY).unwrap_or((None, None));
                    let mut v = value.unwrap_or_default();
                    if let Some(b) = v.first_mut() {
                        *b = b.wrapping_add(1);
                    }
                    hostcalls::set_shared_data(KEY, Some(&v), cas).map_or(0, |_| 1)
                }
                Op::Metric => hostcalls::increment_metric(plan.metric, 1).map_or(0, |_| 1),
            };
        }
        std::hint::black_box(sink);
        Action::Continue
    }
}
