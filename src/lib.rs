//! surgeguard: token-bucket admission and priority shedding for Envoy, as a proxy-wasm filter.
//!
//! The crate is a pure core that builds and tests natively, plus the host glue (`host`) that
//! exists only in the wasm32-wasip1 module. The core never calls the proxy: time arrives as
//! `now_ns`, shared state through [`store::SharedStore`].
//!
//! - [`config`]: the JSON configuration, parsed, validated and compiled in one place;
//! - [`ids`]: typed indices into a compiled policy (`ClassId`, `LimitId`, `LimitSet`);
//! - [`classify`]: which class a request is;
//! - [`bucket`]: token bucket arithmetic on one `u64`;
//! - [`format`]: the shared state's format version, carried by every shared-data key;
//! - [`store`]: the shared storage trait and its one read-modify-write primitive (`update`,
//!   `retry`, one retry bound);
//! - [`record`]: unkeyed buckets and the in-flight table in one shared value;
//! - [`keyhash`]: the seeded hash behind storage keys;
//! - [`instance`]: this VM's instance id and the key-hashing seed all VMs agree on;
//! - [`decision`]: what happens to one request, step by step (`Admission`);
//! - [`response`], [`metrics`]: what the client and the operator see;
//! - [`lease`]: fleet-wide limits: tokens leased from a rate limit service in blocks and spent
//!   locally; [`rls`]: that service's messages; [`fleet`]: leases in shared data (the tick's
//!   calls, the answers);
//! - [`adaptive`]: the adaptive in-flight limit's controller: L from the database's latency and
//!   errors, window by window, and the per-class maxima it gives; [`control`]: the workers'
//!   windows merged in shared data, one worker per window running the controller, L written
//!   into the record.
//!
//! A new mechanism (an adaptive in-flight limit) gets its own module here, pure and on time
//! passed in, keeping its shared state through `store::update`; its host glue goes beside
//! `host/http.rs`.

pub mod adaptive;
pub mod bucket;
pub mod classify;
pub mod config;
pub mod control;
pub mod decision;
pub mod fleet;
pub mod format;
pub mod ids;
pub mod instance;
pub mod json;
pub mod keyhash;
pub mod lease;
pub mod metrics;
pub mod record;
pub mod response;
pub mod rls;
pub mod store;

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod host;
