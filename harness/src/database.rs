//! An upstream that behaves like a database with `connections` connections: a request's
//! service time is `service_time` while at most `connections` are in flight, and grows past
//! that as `service_time x (n / connections)^1.5` (thrashing: throughput falls past the knee,
//! so the best limit is `connections`). Past `pool` in flight it fails at once with 503 (the
//! pool is exhausted). The service time can be changed while it runs (the database slows).

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    runtime: Option<tokio::runtime::Runtime>,
}

impl Database {
    pub fn start(connections: u64, pool: u64, service_time: Duration) -> std::io::Result<Database> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let stats = Arc::new(DatabaseStats::default());
        stats.service_time_us.store(service_time.as_micros() as u64, Ordering::SeqCst);
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))?;
        let port = listener.local_addr()?.port();
        let s = Arc::clone(&stats);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let s = Arc::clone(&s);
                        async move { Ok::<_, std::convert::Infallible>(serve(&s, connections, pool).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Database { port, stats, runtime: Some(runtime) })
    }

    /// The database slows (or recovers): the service time of requests that start from now.
    pub fn set_service_time(&self, service_time: Duration) {
        self.stats.service_time_us.store(service_time.as_micros() as u64, Ordering::SeqCst);
    }
}

async fn serve(s: &Arc<DatabaseStats>, connections: u64, pool: u64) -> Response<Full<Bytes>> {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = Leave(Arc::clone(s));
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

struct Leave(Arc<DatabaseStats>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
