//! The one HTTP client of the tests, the demo and the benchmark: single requests, open-loop load
//! (a schedule of arrivals) and closed-loop load.
//!
//! Open loop: every arrival is sent at its time on its own task, whatever the server does, so a
//! slow server cannot slow the offered load down. Invariants: one outcome per arrival sent, in
//! schedule order; requests go only to 127.0.0.1; a cancelled load aborts every request still in
//! flight before returning.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::outcome::{classify, Outcome, Verdict};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One request to send: method, path (with query), headers.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// `Some`: the client gives up after this long and closes the connection mid-request (a
    /// user who navigates away); the request then ends in the error "aborted".
    pub abort_after: Option<Duration>,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req { method: "GET".into(), path: path.into(), headers: Vec::new(), abort_after: None }
    }
    pub fn abort_after(mut self, after: Duration) -> Req {
        self.abort_after = Some(after);
        self
    }
    pub fn method(mut self, m: &str) -> Req {
        self.method = m.into();
        self
    }
    pub fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client(local_address: Option<IpAddr>) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_local_address(local_address);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector)
}

async fn send(c: &HttpClient, port: u16, req: &Req, timeout: Duration) -> Result<Response, String> {
    let mut b =
        hyper::Request::builder().method(req.method.as_str()).uri(format!("http://127.0.0.1:{port}{}", req.path));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let request = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let fut = async {
        let resp = c.request(request).await.map_err(|e| with_causes(&e))?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).to_string()))
            .collect();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
        Ok(Response { status, headers, body })
    };
    match req.abort_after.filter(|a| *a < timeout) {
        // Dropping the pending request closes its connection: hyper cannot reuse one mid-response.
        Some(after) => tokio::time::timeout(after, fut).await.map_err(|_| "aborted".to_string())?,
        None => tokio::time::timeout(timeout, fut).await.map_err(|_| "timeout".to_string())?,
    }
}

/// An error and its causes, "a: b: c" (hyper's own message is only "client error (SendRequest)").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => unreachable!("cannot start a tokio runtime: {e}"),
    }
}

/// One blocking request to 127.0.0.1:`port`.
pub fn request(port: u16, req: &Req) -> Result<Response, String> {
    runtime().block_on(async { send(&client(None), port, req, Duration::from_secs(10)).await })
}

/// Several requests, one after another, on kept-alive connections.
pub fn requests(port: u16, reqs: &[Req]) -> Vec<Result<Response, String>> {
    requests_from(port, None, reqs)
}

/// Like [`requests`], from a chosen local address (e.g. 127.0.0.2, to be another client IP).
pub fn requests_from(port: u16, local_address: Option<IpAddr>, reqs: &[Req]) -> Vec<Result<Response, String>> {
    runtime().block_on(async {
        let c = client(local_address);
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(send(&c, port, r, Duration::from_secs(10)).await);
        }
        out
    })
}

/// What open-loop load sends, and how fast.
pub struct Load {
    pub port: u16,
    pub rate_per_s: f64,
    pub duration: Duration,
    /// The n-th request (n from 0): what to send and a label to report it under.
    pub make: Arc<dyn Fn(u64) -> (Req, &'static str) + Send + Sync>,
    pub timeout: Duration,
    pub local_address: Option<IpAddr>,
}

/// Sends `rate_per_s` requests per second for `duration`, evenly spaced, each on its own task
/// (so slow responses never delay later arrivals), and waits for all of them.
pub fn open_loop(load: Load) -> Vec<Outcome> {
    let total = (load.rate_per_s * load.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / load.rate_per_s);
    let make = Arc::clone(&load.make);
    let arrivals = (0..total).map(move |n| {
        let (req, label) = make(n);
        (interval.mul_f64(n as f64), req, label)
    });
    let target = Target { port: load.port, local_address: load.local_address, timeout: load.timeout };
    match run_schedule(&target, arrivals, &Arc::new(()), None) {
        Ok(outcomes) => outcomes,
        Err(e) => unreachable!("open-loop load without a cancel flag: {e:?}"),
    }
}

/// Where a load goes and how long each request may take.
#[derive(Debug, Clone)]
pub struct Target {
    /// On 127.0.0.1.
    pub port: u16,
    /// The client's own address (e.g. 127.0.0.2, to be another client IP); `None`: any.
    pub local_address: Option<IpAddr>,
    /// A request with no response after this long gets no status (a failure).
    pub timeout: Duration,
}

/// Watches a load as it runs, from any thread: progress counters, or another thread acting at a
/// scheduled moment. Every method does nothing unless implemented.
pub trait Observer: Send + Sync + 'static {
    /// Time 0 of the schedule, as the load starts.
    fn started(&self, _start: Instant) {}
    /// One more request went out.
    fn sent(&self) {}
    /// One request ended with this verdict.
    fn answered(&self, _verdict: Verdict) {}
}

/// No one watches.
impl Observer for () {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The cancel flag was raised (Ctrl-C): requests still in flight were aborted.
    Interrupted,
    /// The load's runtime could not start.
    Setup(String),
}

/// Sends each arrival `(when, from the start; what; label)`, given in time order, at its time on
/// its own task, and returns every outcome in schedule order. `cancel`, checked before each
/// arrival and every 50 ms while the last ones are answered, stops the load at once.
pub fn run_schedule<L, O>(
    target: &Target,
    arrivals: impl IntoIterator<Item = (Duration, Req, L)>,
    observer: &Arc<O>,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<Outcome<L>>, LoadError>
where
    L: Send + 'static,
    O: Observer,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()
        .map_err(|e| LoadError::Setup(format!("load runtime: {e}")))?;
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
    runtime.block_on(async {
        let c = client(target.local_address);
        let start = Instant::now();
        observer.started(start);
        let mut tasks = tokio::task::JoinSet::new();
        let mut count = 0;
        for (i, (at, req, label)) in arrivals.into_iter().enumerate() {
            let due = start + at;
            tokio::time::sleep_until(due.into()).await;
            if cancelled() {
                tasks.abort_all();
                return Err(LoadError::Interrupted);
            }
            let (c, observer) = (c.clone(), Arc::clone(observer));
            let (port, timeout) = (target.port, target.timeout);
            observer.sent();
            count = i + 1;
            tasks.spawn(async move {
                let t0 = Instant::now();
                let r = send(&c, port, &req, timeout).await;
                let outcome = Outcome {
                    label,
                    at,
                    sent_at: t0.saturating_duration_since(start),
                    status: r.as_ref().ok().map(|r| r.status),
                    latency: t0.elapsed(),
                    surgeguard: r.ok().and_then(|r| r.header("x-surgeguard").map(str::to_string)),
                };
                observer.answered(outcome.verdict());
                (i, outcome)
            });
        }
        let mut out: Vec<Option<Outcome<L>>> = std::iter::repeat_with(|| None).take(count).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    Some(Ok((i, o))) => {
                        if let Some(slot) = out.get_mut(i) {
                            *slot = Some(o);
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = tick.tick() => {
                    if cancelled() {
                        tasks.abort_all();
                        return Err(LoadError::Interrupted);
                    }
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    })
}

/// Sends `total` requests over `connections` concurrent workers, each sending its next request
/// when the previous one is answered (closed loop: as fast as the server allows). Returns the
/// count of responses by status (0: no response).
pub fn closed_loop(
    port: u16,
    total: u64,
    connections: u64,
    make: Arc<dyn Fn(u64) -> Req + Send + Sync>,
) -> std::collections::BTreeMap<u16, u64> {
    runtime().block_on(async move {
        let c = client(None);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (c, next, make) = (c.clone(), Arc::clone(&next), Arc::clone(&make));
            tasks.push(tokio::spawn(async move {
                let mut counts = std::collections::BTreeMap::new();
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n >= total {
                        return counts;
                    }
                    let status = match send(&c, port, &make(n), Duration::from_secs(10)).await {
                        Ok(r) => r.status,
                        Err(e) => {
                            // Why a request got no answer (status 0) is in the test's output.
                            if counts.get(&0).copied().unwrap_or(0) < 3 {
                                eprintln!("closed_loop: request {n} got no answer: {e}");
                            }
                            0
                        }
                    };
                    *counts.entry(status).or_insert(0u64) += 1;
                }
            }));
        }
        let mut all = std::collections::BTreeMap::new();
        for t in tasks {
            if let Ok(counts) = t.await {
                for (k, v) in counts {
                    *all.entry(k).or_insert(0) += v;
                }
            }
        }
        all
    })
}

/// Writes raw bytes to 127.0.0.1:`port` and returns the status of the reply (`None`: the
/// connection closed without one). For requests no HTTP client would send.
pub fn raw_request(port: u16, bytes: &[u8]) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(bytes).ok()?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).ok()?;
    let head = String::from_utf8_lossy(buf.get(..n)?).to_string();
    head.split_whitespace().nth(1)?.parse().ok()
}
