//! An HTTP/1.1 upstream on 127.0.0.1 that counts requests and its own peak concurrency, so tests
//! measure at the upstream what the filter let through.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::{InFlight, Server};

/// A request as the upstream received it: method, path and headers.
pub type ReceivedRequest = (String, String, Vec<(String, Vec<u8>)>);

#[derive(Default, Debug)]
pub struct UpstreamStats {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// The last request seen.
    pub last_request: Mutex<Option<ReceivedRequest>>,
}

impl UpstreamStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
    pub fn peak_in_flight(&self) -> u64 {
        self.peak_in_flight.load(Ordering::SeqCst)
    }
}

/// A running upstream; stops on drop.
pub struct Upstream {
    pub port: u16,
    pub stats: Arc<UpstreamStats>,
    _server: Server,
}

impl Upstream {
    /// Serves `200 ok` after `delay` to every request.
    pub fn start(delay: Duration) -> std::io::Result<Upstream> {
        let stats = Arc::new(UpstreamStats::default());
        let s = Arc::clone(&stats);
        let server = Server::start(move |req: Request<Incoming>| {
            let s = Arc::clone(&s);
            async move {
                s.requests.fetch_add(1, Ordering::SeqCst);
                // Counted out even if the client goes away while we wait.
                let (_in_flight, now) = InFlight::enter(&s.in_flight);
                s.peak_in_flight.fetch_max(now, Ordering::SeqCst);
                let headers = req.headers().iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
                if let Ok(mut last) = s.last_request.lock() {
                    *last = Some((req.method().to_string(), req.uri().to_string(), headers));
                }
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
            }
        })?;
        Ok(Upstream { port: server.port, stats, _server: server })
    }
}
