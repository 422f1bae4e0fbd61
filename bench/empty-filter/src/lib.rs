//! The empty filter: a root context that hands every request an HTTP context with every
//! callback left at the SDK default (continue). Envoy still creates a context, crosses into the
//! VM for each callback and tears the context down: that is the floor any Rust proxy-wasm
//! filter pays, and the benchmark's `empty_wasm` arm.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EmptyRoot) });
}}

struct EmptyRoot;

impl Context for EmptyRoot {}

impl RootContext for EmptyRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(EmptyRequest))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct EmptyRequest;

impl Context for EmptyRequest {}

impl HttpContext for EmptyRequest {}
