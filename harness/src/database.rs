//! An upstream that behaves like a database with `connections` connections: a request's
//! service time is `service_time` while at most `connections` are in flight, and grows past
//! that as `service_time x (n / connections)^1.5` (thrashing: throughput falls past the knee,
//! so the best limit is `connections`). Past `pool` in flight it fails at once with 503 (the
//! pool is exhausted). The service time can be changed while it runs (the database slows).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::server::{InFlight, Server};

#[derive(Debug, Default)]
pub struct DatabaseStats {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub peak_in_flight: AtomicU64,
    /// Requests refused because the pool was exhausted.
    pub exhausted: AtomicU64,
    service_time_us: AtomicU64,
}

impl DatabaseStats {
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }
    /// The peak since the last call (and resets it).
    pub fn take_peak_in_flight(&self) -> u64 {
        self.peak_in_flight.swap(self.in_flight(), Ordering::SeqCst)
    }
    pub fn exhausted(&self) -> u64 {
        self.exhausted.load(Ordering::SeqCst)
    }
}

/// A running database upstream; stops on drop.
pub struct Database {
    pub port: u16,
    pub stats: Arc<DatabaseStats>,
    _server: Server,
}

impl Database {
    pub fn start(connections: u64, pool: u64, service_time: Duration) -> std::io::Result<Database> {
        let stats = Arc::new(DatabaseStats::default());
        stats.service_time_us.store(service_time.as_micros() as u64, Ordering::SeqCst);
        let s = Arc::clone(&stats);
        let server = Server::start(move |_req: Request<Incoming>| {
            let s = Arc::clone(&s);
            async move { Ok::<_, std::convert::Infallible>(serve(&s, connections, pool).await) }
        })?;
        Ok(Database { port: server.port, stats, _server: server })
    }

    /// The database slows (or recovers): the service time of requests that start from now.
    pub fn set_service_time(&self, service_time: Duration) {
        self.stats.service_time_us.store(service_time.as_micros() as u64, Ordering::SeqCst);
    }
}

async fn serve(s: &Arc<DatabaseStats>, connections: u64, pool: u64) -> Response<Full<Bytes>> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let (_in_flight, n) = InFlight::enter(&s.in_flight);
    s.peak_in_flight.fetch_max(n, Ordering::SeqCst);
    if n > pool {
        s.exhausted.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"pool exhausted\n")));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    let base_us = s.service_time_us.load(Ordering::SeqCst) as f64;
    let contention = (n as f64 / connections.max(1) as f64).max(1.0).powf(1.5);
    tokio::time::sleep(Duration::from_micros((base_us * contention) as u64)).await;
    Response::new(Full::new(Bytes::from_static(b"ok\n")))
}
