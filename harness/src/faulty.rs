//! An HTTP/1.1 upstream on 127.0.0.1 that fails on request: each request says, in the header
//! [`FAULT_HEADER`], what the upstream does with it, so the client knows which requests were
//! meant to fail and every failure can be checked against its cause.
//!
//! - `reset`: the connection is closed without a response (Envoy answers 503, "upstream reset");
//! - `stall`: no response for [`STALL`] (Envoy's route timeout answers 504 first and drops the
//!   upstream request, which ends the stall);
//! - no fault: `200 ok` after [`DELAY_HEADER`] milliseconds (0 without the header).
//!
//! It counts what it received and what it did, and its own requests in flight.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::server::{InFlight, Server};

/// `reset` or `stall`; any other value, or none: served.
pub const FAULT_HEADER: &str = "x-upstream-fault";
/// Milliseconds the upstream takes to answer a served request.
pub const DELAY_HEADER: &str = "x-upstream-delay-ms";
/// How long a stalled request is held: far past any route timeout a test sets.
pub const STALL: Duration = Duration::from_secs(60);
/// The longest delay [`DELAY_HEADER`] may ask for.
const MAX_DELAY_MS: u64 = 10_000;

#[derive(Debug, Default)]
pub struct FaultyStats {
    pub requests: AtomicU64,
    pub served: AtomicU64,
    pub resets: AtomicU64,
    pub stalls: AtomicU64,
    pub in_flight: AtomicU64,
}

impl FaultyStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// A running faulty upstream; stops on drop.
pub struct FaultyUpstream {
    pub port: u16,
    pub stats: Arc<FaultyStats>,
    _server: Server,
}

/// The service's error: hyper closes the connection without writing a response.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset on request")
    }
}

impl std::error::Error for Reset {}

impl FaultyUpstream {
    pub fn start() -> std::io::Result<FaultyUpstream> {
        let stats = Arc::new(FaultyStats::default());
        let s = Arc::clone(&stats);
        let server = Server::start(move |req: Request<Incoming>| {
            let s = Arc::clone(&s);
            async move { serve(&s, &req).await }
        })?;
        Ok(FaultyUpstream { port: server.port, stats, _server: server })
    }
}

async fn serve(s: &Arc<FaultyStats>, req: &Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    // Counted out however the request ends, also when Envoy drops it mid-stall.
    let _in_flight = InFlight::enter(&s.in_flight);
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    match header(FAULT_HEADER).as_deref() {
        Some("reset") => {
            s.resets.fetch_add(1, Ordering::SeqCst);
            Err(Reset)
        }
        Some("stall") => {
            s.stalls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(STALL).await;
            Ok(Response::new(Full::new(Bytes::from_static(b"late\n"))))
        }
        _ => {
            let delay_ms = header(DELAY_HEADER).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0).min(MAX_DELAY_MS);
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            s.served.fetch_add(1, Ordering::SeqCst);
            Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{self, Req};

    #[test]
    fn each_request_gets_the_fault_it_asks_for() {
        let up = FaultyUpstream::start().unwrap();
        let ok = client::request(up.port, &Req::get("/a").header(DELAY_HEADER, "20")).unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"ok\n"[..]));
        let reset = client::request(up.port, &Req::get("/b").header(FAULT_HEADER, "reset"));
        assert!(reset.is_err(), "no response: {reset:?}");
        let stalled = client::request(
            up.port,
            &Req::get("/c").header(FAULT_HEADER, "stall").abort_after(Duration::from_millis(100)),
        );
        assert_eq!(stalled.unwrap_err(), "aborted");
        assert_eq!(up.stats.requests(), 3);
        assert_eq!(up.stats.resets.load(Ordering::SeqCst), 1);
        assert_eq!(up.stats.stalls.load(Ordering::SeqCst), 1);
        // The aborted stall leaves when its connection closes.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while up.stats.in_flight() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(up.stats.in_flight(), 0);
    }
}
