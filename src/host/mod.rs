//! The only code that calls the proxy. Everything here is thin: fetch what the policy needs,
//! call the core, count, reply.

mod adapters;
mod alloc;
mod http;
mod lease_calls;
mod root;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    // A panic aborts the VM; say why first, at the level operators alert on.
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(proxy_wasm::types::LogLevel::Critical, &format!("surgeguard: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> { Box::new(root::SurgeguardRoot::default()) });
}}
