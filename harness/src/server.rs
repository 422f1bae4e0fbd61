//! What the test upstreams ([`crate::upstream`], [`crate::faulty`], [`crate::database`]) share:
//! an HTTP/1.1 listener on 127.0.0.1 served on its own runtime and stopped on drop, and the
//! requests-in-flight count each keeps of itself.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A running server; stops on drop.
pub struct Server {
    pub port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Binds a free port and answers every request with `handle`. An `Err` from `handle` closes
    /// the connection without a response (a reset, as Envoy sees it).
    pub fn start<F, Fut, E>(handle: F) -> std::io::Result<Server>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Full<Bytes>>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))?;
        let port = listener.local_addr()?.port();
        let handle = Arc::new(handle);
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let handle = Arc::clone(&handle);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Server { port, runtime: Some(runtime) })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// One request counted in `count` while it lives: counted out however the request ends, also
/// when the client (Envoy) goes away mid-response and the handler's future is dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    /// Counts a request in; also returns the count with it.
    pub fn enter(count: &'a AtomicU64) -> (InFlight<'a>, u64) {
        let now = count.fetch_add(1, Ordering::SeqCst) + 1;
        (InFlight(count), now)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_in_while_it_lives_and_out_when_dropped() {
        let count = AtomicU64::new(0);
        let (first, n) = InFlight::enter(&count);
        assert_eq!(n, 1);
        let (second, n) = InFlight::enter(&count);
        assert_eq!(n, 2);
        drop(first);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        drop(second);
        assert_eq!(count.load(Ordering::SeqCst), 0);
    }
}
