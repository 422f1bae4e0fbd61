//! An HTTP/1.1 upstream on 127.0.0.1 that counts requests and its own peak concurrency, so tests
//! measure at the upstream what the filter let through.

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
    runtime: Option<tokio::runtime::Runtime>,
}

impl Upstream {
    /// Serves `200 ok` after `delay` to every request.
    pub fn start(delay: Duration) -> std::io::Result<Upstream> {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let stats = Arc::new(UpstreamStats::default());
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))?;
        let port = listener.local_addr()?.port();
        let s = Arc::clone(&stats);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = Arc::clone(&s);
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = Arc::clone(&s);
                        async move {
                            s.requests.fetch_add(1, Ordering::SeqCst);
                            let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            s.peak_in_flight.fetch_max(now, Ordering::SeqCst);
                            let headers =
                                req.headers().iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
                            if let Ok(mut last) = s.last_request.lock() {
                                *last = Some((req.method().to_string(), req.uri().to_string(), headers));
                            }
                            // Counted out even if the client goes away while we wait.
                            let _guard = Decrement(Arc::clone(&s));
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Upstream { port, stats, runtime: Some(runtime) })
    }
}

struct Decrement(Arc<UpstreamStats>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
