//! The storefront upstream: product pages, search, cart and checkout, each needing one query on
//! the database tier; plus `GET /_db` (the pool's connections in use, now and at peak, as JSON)
//! and `GET /healthz` (no database).
//!
//! Scaled out (`replicas` > 1), the storefront runs that many replicas, each on its own port, all
//! on one database tier: one pool, whichever replica a request reaches.
//!
//! Invariants: every page request runs exactly one query through the pool; a request that gets
//! no connection within the pool-wait timeout is answered `500` (the postmortem's failure) and
//! never reaches the database; the server stops when its handle is dropped.

use crate::db::{Backend, Contention, Database, DbError, Query};
use crate::pg::Postgres;
use crate::pool::{Pool, PoolStats};
use crate::rng::mix;
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A page: one query; `arg` picks its row (product, page, search term or session).
    Page {
        query: Query,
        arg: u64,
    },
    DbStats,
    Health,
    NotFound,
    MethodNotAllowed,
}

fn cookie_session(cookie: Option<&str>) -> u64 {
    cookie
        .and_then(|c| c.split(';').filter_map(|kv| kv.trim().strip_prefix("session=")).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn text_arg(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Maps a request to its page and query (pure; the server's routing table).
pub fn route(method: &str, path: &str, query: Option<&str>, cookie: Option<&str>) -> Route {
    let get = method == "GET" || method == "HEAD";
    let session = cookie_session(cookie);
    let page = |q: Query, arg: u64, ok: bool| {
        if ok {
            Route::Page { query: q, arg }
        } else {
            Route::MethodNotAllowed
        }
    };
    match path {
        "/_db" if get => Route::DbStats,
        "/healthz" if get => Route::Health,
        "/_db" | "/healthz" => Route::MethodNotAllowed,
        "/products" => {
            let n = query_param(query, "page").and_then(|p| p.parse().ok());
            page(Query::Listing, n.unwrap_or(1), get)
        }
        "/search" => {
            let q = query_param(query, "q").unwrap_or("");
            page(Query::Search, text_arg(q), get)
        }
        "/cart" => match method {
            "GET" | "HEAD" => Route::Page { query: Query::CartRead, arg: session },
            "POST" | "PUT" | "DELETE" => Route::Page { query: Query::CartWrite, arg: session },
            _ => Route::MethodNotAllowed,
        },
        "/checkout" => page(Query::Checkout, session, method == "POST"),
        _ => match path.strip_prefix("/products/").map(str::parse::<u64>) {
            Some(Ok(id)) => page(Query::Product, id, get),
            _ => Route::NotFound,
        },
    }
}

/// Where the pool's connections go.
#[derive(Debug, Clone)]
pub enum BackendSpec {
    Model(Contention),
    /// A PostgreSQL URL (`postgres://user:password@host/db`).
    Postgres(String),
}

#[derive(Debug, Clone)]
pub struct StorefrontConfig {
    /// 0: any free port.
    pub port: u16,
    pub pool_size: u32,
    pub pool_wait: Duration,
    pub backend: BackendSpec,
    pub worker_threads: usize,
    /// Replicas of the storefront in front of the one database tier, each on its own port (the
    /// first on `port`, the others on free ports).
    pub replicas: usize,
}

impl Default for StorefrontConfig {
    fn default() -> StorefrontConfig {
        StorefrontConfig {
            port: 0,
            pool_size: 40,
            pool_wait: Duration::from_millis(1000),
            backend: BackendSpec::Model(Contention::default()),
            worker_threads: 1,
            replicas: 1,
        }
    }
}

/// A running storefront; stops on drop.
pub struct Storefront {
    /// The first replica's port.
    pub port: u16,
    /// Every replica's port, in order (`port` first).
    pub replica_ports: Vec<u16>,
    pub db: Arc<Database>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// The reply of `GET /_db`.
#[derive(serde::Serialize)]
struct DbStats {
    #[serde(flatten)]
    pool: PoolStats,
    /// `model` or `postgresql`.
    backend: &'static str,
}

async fn handle(db: &Database, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let cookie = req.headers().get(hyper::header::COOKIE).and_then(|v| v.to_str().ok());
    let r = route(req.method().as_str(), req.uri().path(), req.uri().query(), cookie);
    let html = "text/html; charset=utf-8";
    match r {
        Route::Health => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        Route::DbStats => {
            let stats = DbStats { pool: db.stats(), backend: db.backend_name() };
            // Through a Value: keys sorted, as this reply has always had them.
            let v = serde_json::to_value(stats).unwrap_or_default();
            reply(StatusCode::OK, "application/json", format!("{v}\n"))
        }
        Route::NotFound => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        Route::MethodNotAllowed => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into()),
        Route::Page { query, arg } => match db.run(query, arg).await {
            Ok(()) => reply(
                StatusCode::OK,
                html,
                format!("<!doctype html><title>storefront</title><p>{} #{}</p>\n", query.name(), mix(arg) % 100_000),
            ),
            Err(DbError::PoolTimeout { waited_ms }) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("database unavailable: no connection from the pool within {waited_ms} ms\n"),
            ),
            Err(DbError::Query(m)) => {
                reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("database error: {m}\n"))
            }
        },
    }
}

impl Storefront {
    pub fn start(config: &StorefrontConfig) -> Result<Storefront, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name("storefront")
            .enable_all()
            .build()
            .map_err(|e| format!("storefront runtime: {e}"))?;
        let pool = Pool::new(config.pool_size);
        let backend = match &config.backend {
            BackendSpec::Model(c) => Backend::Model(*c),
            BackendSpec::Postgres(url) => {
                Backend::Postgres(runtime.block_on(Postgres::connect(url, config.pool_size))?)
            }
        };
        let db = Arc::new(Database::new(pool, backend, config.pool_wait));
        let mut replica_ports = Vec::with_capacity(config.replicas.max(1));
        for replica in 0..config.replicas.max(1) {
            let port = if replica == 0 { config.port } else { 0 };
            replica_ports.push(serve(&runtime, port, Arc::clone(&db))?);
        }
        Ok(Storefront { port: replica_ports[0], replica_ports, db, runtime: Some(runtime) })
    }
}

/// One replica: a listener on 127.0.0.1:`port` (0: any free port) whose pages run on `db`.
/// Returns the port bound.
fn serve(runtime: &tokio::runtime::Runtime, port: u16, server_db: Arc<Database>) -> Result<u16, String> {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = listener.local_addr().map_err(|e| format!("storefront address: {e}"))?.port();
    runtime.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let db = Arc::clone(&server_db);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let db = Arc::clone(&db);
                    async move { Ok::<_, std::convert::Infallible>(handle(&db, req).await) }
                });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    Ok(port)
}

impl Drop for Storefront {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgeguard_harness::client::{request, requests, Req};

    #[test]
    fn every_page_maps_to_its_query() {
        let page = |m, p, q, c| match route(m, p, q, c) {
            Route::Page { query, arg } => Some((query, arg)),
            _ => None,
        };
        assert_eq!(page("GET", "/products/42", None, None), Some((Query::Product, 42)));
        assert_eq!(page("GET", "/products", Some("page=7"), None), Some((Query::Listing, 7)));
        assert_eq!(page("GET", "/search", Some("q=lamp"), None).map(|p| p.0), Some(Query::Search));
        assert_eq!(page("GET", "/cart", None, Some("a=b; session=9")), Some((Query::CartRead, 9)));
        assert_eq!(page("POST", "/cart", Some("add=3"), Some("session=9")), Some((Query::CartWrite, 9)));
        assert_eq!(page("POST", "/checkout", None, Some("session=5")), Some((Query::Checkout, 5)));
        assert_eq!(route("GET", "/checkout", None, None), Route::MethodNotAllowed);
        assert_eq!(route("GET", "/products/abc", None, None), Route::NotFound);
        assert_eq!(route("GET", "/_db", None, None), Route::DbStats);
        assert_eq!(route("GET", "/healthz", None, None), Route::Health);
    }

    fn start(pool_size: u32, pool_wait_ms: u64) -> Storefront {
        Storefront::start(&StorefrontConfig {
            pool_size,
            pool_wait: Duration::from_millis(pool_wait_ms),
            ..StorefrontConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn pages_are_served_through_the_pool_and_counted() {
        let s = start(4, 1000);
        let out = requests(
            s.port,
            &[Req::get("/products/1"), Req::get("/search?q=mug"), Req::get("/checkout").method("POST")],
        );
        assert!(out.iter().all(|r| r.as_ref().map(|r| r.status) == Ok(200)));
        let stats = request(s.port, &Req::get("/_db")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&stats.body).unwrap();
        assert_eq!(v["pool_size"], 4);
        assert_eq!(v["leases"], 3);
        assert_eq!(v["in_use"], 0);
        assert_eq!(v["peak_in_use"], 1);
        assert_eq!(v["backend"], "model");
    }

    #[test]
    fn a_request_that_gets_no_connection_in_time_fails_with_500() {
        let s = start(1, 20);
        // Hold the only connection, so the page request waits for the pool and times out.
        let pool = Arc::clone(s.db.pool());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let held = rt.block_on(pool.acquire(Duration::from_millis(10))).unwrap();
        let r = request(s.port, &Req::get("/products/3")).unwrap();
        assert_eq!(r.status, 500);
        assert!(String::from_utf8_lossy(&r.body).contains("no connection from the pool"));
        assert_eq!(s.db.stats().wait_timeouts, 1);
        drop(held);
        assert_eq!(request(s.port, &Req::get("/products/3")).unwrap().status, 200);
    }

    #[test]
    fn replicas_serve_on_their_own_ports_from_one_pool() {
        let s =
            Storefront::start(&StorefrontConfig { replicas: 3, pool_size: 5, ..StorefrontConfig::default() }).unwrap();
        assert_eq!(s.replica_ports.len(), 3);
        assert_eq!(s.replica_ports[0], s.port);
        for port in &s.replica_ports {
            assert_eq!(request(*port, &Req::get("/products/1")).unwrap().status, 200);
        }
        let stats = s.db.stats();
        assert_eq!((stats.size, stats.leases), (5, 3), "one pool counted every replica's query");
    }
}
