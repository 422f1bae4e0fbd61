//! surgeguard as an Envoy dynamic module (`envoy.extensions.filters.http.dynamic_modules.v3`):
//! the same core as the wasm filter (`surgeguard`: configuration, classification, buckets,
//! in-flight table, decision, responses, metric names) behind a second thin host.
//!
//! - [`abi`]: the ABI's types and the callbacks used, from Envoy's C header;
//! - [`envoy`]: safe wrappers (pointers, logging, clock);
//! - [`store`]: the core's `SharedStore` in process memory, shared by every worker;
//! - [`config`]: one filter configuration (refused whole when bad), its heartbeat;
//! - [`filter`]: one request;
//! - [`fleet`]: fleet limits' lease calls (gRPC on Envoy's HTTP callouts);
//! - [`metrics`]: counters and gauges, defined with the configuration.
//!
//! Every hook Envoy calls is below. Each catches a panic (the crate is built with
//! `panic = "unwind"`, profile `native`) and fails open: a panic in a native module would
//! otherwise take Envoy down with it.

mod abi;
mod config;
mod envoy;
mod filter;
mod fleet;
mod metrics;
mod store;

use abi::{EnvoyBuffer, FilterConfigEnvoyPtr, FilterEnvoyPtr};
use config::FilterConfig;
use filter::StreamFilter;
use std::ffi::c_void;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs a hook; a panic is logged (by the panic hook) and answered with `fallback`.
fn guard<T>(fallback: T, hook: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(hook)).unwrap_or(fallback)
}

/// # Safety
/// `ptr` must be null or come from `Box::into_raw` of a `T` not yet reclaimed, used by one
/// thread at a time (a stream's filter).
unsafe fn borrow<'a, T>(ptr: *const c_void) -> Option<&'a mut T> {
    // SAFETY: the caller vouches for the pointer (it is one this module handed to Envoy).
    unsafe { ptr.cast::<T>().cast_mut().as_mut() }
}

/// # Safety
/// `ptr` must be null or a configuration from `..._config_new` not yet destroyed. Shared: every
/// worker reads it at once.
unsafe fn config<'a>(ptr: *const c_void) -> Option<&'a FilterConfig> {
    // SAFETY: as above; only shared references are made.
    unsafe { ptr.cast::<FilterConfig>().as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard(std::ptr::null(), || {
        let _ = log::set_logger(&envoy::EnvoyLogger);
        log::set_max_level(log::LevelFilter::Info);
        std::panic::set_hook(Box::new(|info| {
            envoy::log(abi::LOG_CRITICAL, &format!("surgeguard: panic (contained, request let through): {info}"));
        }));
        abi::ABI_VERSION.as_ptr().cast()
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: FilterConfigEnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers are valid during this hook.
        let (name, json) = unsafe { (name.as_bytes(), config.as_bytes()) };
        let name = String::from_utf8_lossy(name);
        match FilterConfig::new(envoy::ConfigPtr(config_envoy), &name, json) {
            Some(c) => Box::into_raw(Box::new(c)).cast_const().cast(),
            None => std::ptr::null(),
        }
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    guard((), || {
        if !config.is_null() {
            // SAFETY: `config` came from `Box::into_raw` in `..._config_new`; Envoy destroys it once.
            drop(unsafe { Box::from_raw(config.cast::<FilterConfig>().cast_mut()) });
        }
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *const c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *const c_void {
    guard(std::ptr::null(), || {
        // SAFETY: `config` is ours and alive while Envoy creates streams with it.
        match unsafe { self::config(config) } {
            Some(c) => {
                Box::into_raw(Box::new(StreamFilter::new(std::sync::Arc::clone(&c.serving)))).cast_const().cast()
            }
            None => std::ptr::null(),
        }
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
    _end_of_stream: bool,
) -> i32 {
    guard(abi::CONTINUE, || {
        // SAFETY: `filter` is ours and alive until `..._filter_destroy`.
        match unsafe { borrow::<StreamFilter>(filter) } {
            Some(f) => f.on_request_headers(filter_envoy),
            None => abi::CONTINUE,
        }
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *const c_void) {
    guard((), || {
        if !filter.is_null() {
            // SAFETY: `filter` came from `Box::into_raw` in `..._filter_new`; destroyed once.
            drop(unsafe { Box::from_raw(filter.cast::<StreamFilter>().cast_mut()) });
        }
    })
}

/// # Safety
/// Called by Envoy only, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter: *const c_void,
) {
    guard((), || {
        // SAFETY: `filter` is ours and alive until `..._filter_destroy`, which comes after.
        if let Some(f) = unsafe { borrow::<StreamFilter>(filter) } {
            f.on_stream_complete(filter_envoy);
        }
    })
}

/// The tick thread's wake-up (fleet limits): make the lease calls that are due.
///
/// # Safety
/// Called by Envoy only, on the main thread, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: FilterConfigEnvoyPtr,
    config: *const c_void,
    _event_id: u64,
) {
    guard((), || {
        // SAFETY: `config` is ours and alive until `..._config_destroy`.
        if let Some(c) = unsafe { self::config(config) } {
            config::lock(&c.lease_calls).tick(c.envoy, &c.serving, envoy::now_ns());
        }
    })
}

/// A lease call's answer.
///
/// # Safety
/// Called by Envoy only, on the main thread, with the pointers the ABI promises.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: FilterConfigEnvoyPtr,
    config: *const c_void,
    callout_id: u64,
    result: i32,
    headers: *const abi::EnvoyHttpHeader,
    headers_length: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_length: usize,
) {
    guard((), || {
        // SAFETY: `config` is ours and alive until `..._config_destroy`.
        let Some(c) = (unsafe { self::config(config) }) else { return };
        // SAFETY: Envoy's arrays, valid during this hook (null when empty).
        let (headers, chunks) = unsafe { (slice(headers, headers_length), slice(body_chunks, body_chunks_length)) };
        let headers: Vec<(&[u8], &[u8])> = headers
            .iter()
            .map(|h| {
                let (k, v) = (
                    EnvoyBuffer { ptr: h.key_ptr, length: h.key_length },
                    EnvoyBuffer { ptr: h.value_ptr, length: h.value_length },
                );
                // SAFETY: as above.
                unsafe { (k.as_bytes(), v.as_bytes()) }
            })
            .collect();
        // SAFETY: as above.
        let body: Vec<u8> = chunks.iter().flat_map(|b| unsafe { b.as_bytes() }.iter().copied()).collect();
        let (status, message) = fleet::grpc_answer(result, &headers, &body);
        config::lock(&c.lease_calls).answered(&c.serving, callout_id, status, message, envoy::now_ns());
    })
}

/// # Safety
/// `ptr` must be null or point to `length` values valid for `'a`.
unsafe fn slice<'a, T>(ptr: *const T, length: usize) -> &'a [T] {
    if ptr.is_null() || length == 0 {
        return &[];
    }
    // SAFETY: the caller vouches for ptr/length.
    unsafe { std::slice::from_raw_parts(ptr, length) }
}

// The hooks Envoy requires but surgeguard has nothing to do in: continue.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> i32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: FilterEnvoyPtr, _: *const c_void) -> i32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> i32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: bool,
) -> i32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: FilterEnvoyPtr, _: *const c_void) -> i32 {
    abi::CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: FilterEnvoyPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: i32,
    _: *mut c_void,
    _: usize,
    _: *mut c_void,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *mut c_void,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *const c_void,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: *mut c_void,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: FilterEnvoyPtr,
    _: *const c_void,
    _: u64,
    _: i32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterEnvoyPtr,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterEnvoyPtr,
    _: *const c_void,
) {
}

#[cfg(test)]
mod tests {
    use super::guard;

    #[test]
    fn a_panicking_hook_answers_its_fallback_instead_of_unwinding_into_envoy() {
        std::panic::set_hook(Box::new(|_| {}));
        let answered = guard(7, || -> i32 { panic!("a bug") });
        let _ = std::panic::take_hook();
        assert_eq!(answered, 7);
        assert_eq!(guard(7, || 1), 1);
    }
}
