//! surgeguard: token-bucket admission and priority shedding for Envoy, as a proxy-wasm filter.
//!
//! The crate is a pure core that builds and tests natively, plus the host glue (`host`) that
//! exists only in the wasm32-wasip1 module. The core never calls the proxy: time arrives as
//! `now_ns`, shared state through [`store::SharedStore`].
//!
//! - [`config`]: the JSON configuration, parsed, validated and compiled in one place;
//! - [`classify`]: which class a request is;
//! - [`bucket`]: token bucket arithmetic on one `u64`;
//! - [`record`]: unkeyed buckets and the in-flight table in one shared value;
//! - [`keyhash`]: the seeded hash behind storage keys;
//! - [`instance`]: this VM's instance id and the key-hashing seed all VMs agree on;
//! - [`decision`]: what happens to one request;
//! - [`response`], [`metrics`]: what the client and the operator see.

pub mod bucket;
pub mod classify;
pub mod config;
pub mod decision;
pub mod instance;
pub mod json;
pub mod keyhash;
pub mod metrics;
pub mod record;
pub mod response;
pub mod store;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod host;
