//! The fuzz targets' checks: each takes the raw input libFuzzer hands a target and asserts
//! what must hold for it (a failed assertion is a crash to libFuzzer). They live here, not in
//! the targets, so `cargo test` replays the checked-in corpus through the same code on stable.
//!
//! Structured targets read their input with `arbitrary`: any bytes are a valid input, and a
//! short input is a short sequence of operations.

pub mod config;
pub mod config_structured;
pub mod decision;
pub mod lease;
pub mod policy;
pub mod record;
pub mod rls_response;

/// A target's check: panics (a crash, to libFuzzer) if a property does not hold.
pub type Check = fn(&[u8]);

/// Every target by name, as `cargo fuzz list` and `corpus/<name>/` spell it.
pub const TARGETS: &[(&str, Check)] = &[
    ("config", config::check),
    ("config_structured", config_structured::check),
    ("rls_response", rls_response::check),
    ("record", record::check),
    ("decision", decision::check),
    ("lease", lease::check),
];
