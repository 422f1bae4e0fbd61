//! The few parts of Envoy's dynamic module ABI this module uses, written from Envoy's C header
//! `source/extensions/dynamic_modules/abi/abi.h` (ABI `v0.2.0`, Envoy 1.40). Only what is
//! called or implemented here; a test (`tests/e2e/tests/native_module.rs`) checks that every
//! `envoy_dynamic_module_callback_*` this library imports is exported by the pinned Envoy.
//!
//! C enums are passed as `i32` (their C type on the platforms Envoy supports).

use std::ffi::c_void;
use std::os::raw::c_char;

/// The ABI version this module was written against; Envoy logs "matched" when it is its own.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: EnvoyBuffer = EnvoyBuffer { ptr: std::ptr::null(), length: 0 };

    /// The bytes, valid for as long as Envoy says (until the end of the current hook).
    ///
    /// # Safety
    /// `ptr` must point to `length` readable bytes for the returned lifetime (or be null).
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: the caller vouches for ptr/length (Envoy's contract for the current hook).
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.length) }
    }
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by this module.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const c_char,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr().cast(), length: bytes.len() }
    }
}

/// `envoy_dynamic_module_type_module_http_header`.
#[repr(C)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header`: a header owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const c_char,
    pub key_length: usize,
    pub value_ptr: *const c_char,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
pub const CALLOUT_INIT_SUCCESS: i32 = 0;
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_SUCCESS: i32 = 0;

/// `envoy_dynamic_module_type_http_header_type_RequestHeader`.
pub const REQUEST_HEADER: i32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_INFO: i32 = 2;
pub const LOG_WARN: i32 = 3;
pub const LOG_ERROR: i32 = 4;
pub const LOG_CRITICAL: i32 = 5;

/// `envoy_dynamic_module_type_metrics_result_Success`.
pub const METRICS_SUCCESS: i32 = 0;

/// `envoy_dynamic_module_type_attribute_id_ResponseCode`: `response.code`.
pub const ATTRIBUTE_RESPONSE_CODE: i32 = 15;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress`: `source.address`, `ip:port`.
pub const ATTRIBUTE_SOURCE_ADDRESS: i32 = 24;

/// `..._on_http_filter_request_headers_status_Continue` and `_StopIteration`; `Continue` (0) is
/// also the value of every other `_status_Continue` this module returns.
pub const CONTINUE: i32 = 0;
pub const STOP_ITERATION: i32 = 1;

pub type FilterConfigEnvoyPtr = *mut c_void;
pub type FilterEnvoyPtr = *mut c_void;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: i32, message: ModuleBuffer);

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: i32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: i32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterEnvoyPtr,
        attribute_id: i32,
        result: *mut u64,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: FilterConfigEnvoyPtr) -> *mut c_void;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);

    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: FilterConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut ModuleHttpHeader,
        headers_length: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> i32;

    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoyPtr,
        status_code: u32,
        headers: *mut ModuleHttpHeader,
        headers_length: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
}
