//! Host-side helpers shared by the end-to-end tests, the demo and the benchmark.
//!
//! - [`envoy`]: find and run a real Envoy (with the real `.wasm`, or the native build's `.so`:
//!   [`envoy::Build`]), stopped on drop;
//! - [`upstream`]: an HTTP upstream on 127.0.0.1 that measures its own concurrency;
//! - [`faulty`]: an upstream that resets or stalls the requests that ask it to (the soak);
//! - [`database`]: an upstream whose latency grows with concurrency past a knee, like a
//!   database with a few connections (the adaptive limit's test);
//! - [`server`]: what those three share: a listener served on its own runtime, and the
//!   in-flight count;
//! - [`client`]: the one HTTP client: requests, open-loop load (a schedule), closed-loop load;
//! - [`outcome`]: what happened to one request of a load, and whether it was served, refused
//!   or failed;
//! - [`stats`]: Envoy's `/stats`, parsed once for everyone;
//! - [`output`]: writing a run's outputs (summaries, reports) into a directory;
//! - [`rls`]: a real rate limit service for fleet-wide limits (Redis and `surgeguard-rls`);
//! - [`fleet`]: that service with a limit, the shipped fleet Envoy pointed at it, and where the
//!   service's fixed windows end.
//!
//! Every process and server started here stops when its handle is dropped, also on panic.
//! Ports are never fixed: servers bind port 0 and report what they got.

pub mod client;
pub mod database;
pub mod envoy;
pub mod faulty;
pub mod fleet;
pub mod outcome;
pub mod output;
pub mod rls;
pub mod server;
pub mod stats;
pub mod upstream;

use std::path::PathBuf;

/// The repository root (this crate lives in `harness/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// The filter under test: `SURGEGUARD_WASM`, else `dist/surgeguard.wasm` (built by `./build.sh`).
pub fn wasm_path() -> PathBuf {
    std::env::var_os("SURGEGUARD_WASM").map(PathBuf::from).unwrap_or_else(|| repo_root().join("dist/surgeguard.wasm"))
}

/// The native build under test: `SURGEGUARD_NATIVE`, else `dist/libsurgeguard_native.so` (built
/// by `./build.sh native`).
pub fn native_path() -> PathBuf {
    std::env::var_os("SURGEGUARD_NATIVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("dist/libsurgeguard_native.so"))
}
