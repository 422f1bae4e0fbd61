//! Small safe wrappers over the ABI: Envoy's pointers, logging, the clock.

use crate::abi;

/// Envoy's filter configuration (`DynamicModuleHttpFilterConfig`). Envoy keeps it alive until
/// after `on_http_filter_config_destroy`, and its metric calls are safe from any thread (stats
/// are atomic), so it may be shared with the workers.
#[derive(Clone, Copy)]
pub struct ConfigPtr(pub abi::FilterConfigEnvoyPtr);

// SAFETY: see the type's docs; this module calls only thread-safe metric callbacks through it
// off the main thread.
unsafe impl Send for ConfigPtr {}
// SAFETY: as above.
unsafe impl Sync for ConfigPtr {}

/// Logs through Envoy (under its `dynamic_modules` logger).
pub fn log(level: i32, message: &str) {
    // SAFETY: the buffer is valid for the call; Envoy copies it.
    unsafe { abi::envoy_dynamic_module_callback_log(level, abi::ModuleBuffer::of(message.as_bytes())) }
}

/// `log` records (the core's) to Envoy's log.
pub struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => abi::LOG_ERROR,
            log::Level::Warn => abi::LOG_WARN,
            _ => abi::LOG_INFO,
        };
        log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Wall-clock nanoseconds, as the wasm build reads from the proxy (the bucket arithmetic
/// tolerates steps backwards).
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
