//! Open-loop load: every request of the schedule is sent at its time on its own task, whatever
//! the server does, so a slow server cannot slow the offered load down (no coordinated
//! omission: latency counts from the scheduled time).
//!
//! Invariants: one outcome per arrival sent; requests go only to 127.0.0.1; a cancelled run
//! aborts every request still in flight before returning.

use crate::outcome::{classify, Outcome, Verdict};
use crate::schedule::Arrival;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_harness::client::Req;

/// Counters the progress line reads while a run goes on.
#[derive(Debug, Default)]
pub struct Live {
    pub sent: AtomicU64,
    /// Indexed by [`Verdict::index`].
    pub verdicts: [AtomicU64; 3],
    /// When the schedule's time 0 was (set as the load starts), so other threads can act at a
    /// scheduled moment (the live change of `--live`).
    pub started: std::sync::OnceLock<Instant>,
}

impl Live {
    pub fn count(&self, v: Verdict) -> u64 {
        self.verdicts[v.index()].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadError {
    /// The cancel flag was raised (Ctrl-C): requests still in flight were aborted.
    Interrupted,
    /// The load's runtime could not start.
    Setup(String),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector)
}

/// Sends one request; `(status, x-surgeguard)` or `None` on error or timeout.
async fn send(c: &HttpClient, port: u16, req: &Req, timeout: Duration) -> Option<(u16, Option<String>)> {
    let mut b =
        hyper::Request::builder().method(req.method.as_str()).uri(format!("http://127.0.0.1:{port}{}", req.path));
    for (k, v) in &req.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    let request = b.body(Empty::<Bytes>::new()).ok()?;
    let exchange = async {
        let resp = c.request(request).await.ok()?;
        let status = resp.status().as_u16();
        let surgeguard = resp.headers().get("x-surgeguard").map(|v| String::from_utf8_lossy(v.as_bytes()).to_string());
        resp.into_body().collect().await.ok()?;
        Some((status, surgeguard))
    };
    tokio::time::timeout(timeout, exchange).await.ok().flatten()
}

/// Runs the schedule against 127.0.0.1:`port` and returns every outcome, in schedule order.
pub fn run(
    port: u16,
    arrivals: &[Arrival],
    timeout: Duration,
    live: &Arc<Live>,
    cancel: &Arc<AtomicBool>,
) -> Result<Vec<Outcome>, LoadError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()
        .map_err(|e| LoadError::Setup(format!("load runtime: {e}")))?;
    runtime.block_on(async {
        let c = client();
        let start = Instant::now();
        let _ = live.started.set(start);
        let mut tasks = tokio::task::JoinSet::new();
        for (i, a) in arrivals.iter().enumerate() {
            let due = start + Duration::from_micros(a.at_us);
            tokio::time::sleep_until(due.into()).await;
            if cancel.load(Ordering::SeqCst) {
                tasks.abort_all();
                return Err(LoadError::Interrupted);
            }
            let (c, live) = (c.clone(), Arc::clone(live));
            let (req, kind, phase, at_us) = (a.req.clone(), a.kind, a.phase, a.at_us);
            live.sent.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(async move {
                let r = send(&c, port, &req, timeout).await;
                let (status, surgeguard) = r.map_or((None, None), |(s, h)| (Some(s), h));
                live.verdicts[classify(status, surgeguard.is_some()).index()].fetch_add(1, Ordering::Relaxed);
                (i, Outcome { kind, phase, at_us, status, surgeguard, latency_us: due.elapsed().as_micros() as u64 })
            });
        }
        let mut out: Vec<Option<Outcome>> = vec![None; arrivals.len()];
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
                    if cancel.load(Ordering::SeqCst) {
                        tasks.abort_all();
                        return Err(LoadError::Interrupted);
                    }
                }
            }
        }
        Ok(out.into_iter().flatten().collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Plan;
    use crate::storefront::{Storefront, StorefrontConfig};
    use crate::traffic::Mix;

    #[test]
    fn every_arrival_gets_an_outcome_at_its_time() {
        let s = Storefront::start(&StorefrontConfig::default()).unwrap();
        let plan = Plan { duration_s: 1.0, surge: 2.0, calm_rate_per_s: 100.0, mix: Mix::default(), seed: 1 };
        let arrivals = plan.arrivals();
        let live = Arc::new(Live::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let out = run(s.port, &arrivals, Duration::from_secs(5), &live, &cancel).unwrap();
        assert!(t0.elapsed() >= Duration::from_micros(arrivals.last().unwrap().at_us));
        assert_eq!(out.len(), arrivals.len());
        assert!(out.iter().zip(&arrivals).all(|(o, a)| o.at_us == a.at_us && o.kind == a.kind));
        // Straight to the storefront (no filter): everything is served.
        assert!(out.iter().all(|o| o.verdict() == Verdict::Served), "{out:?}");
        assert_eq!(live.count(Verdict::Served), arrivals.len() as u64);
        assert_eq!(live.sent.load(Ordering::Relaxed), arrivals.len() as u64);
    }

    #[test]
    fn a_cancelled_run_stops_at_once() {
        let plan = Plan { duration_s: 30.0, surge: 1.0, calm_rate_per_s: 10.0, mix: Mix::default(), seed: 1 };
        let arrivals = plan.arrivals();
        let live = Arc::new(Live::default());
        let cancel = Arc::new(AtomicBool::new(false));
        let c = Arc::clone(&cancel);
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::SeqCst);
        });
        let t0 = Instant::now();
        // Port 9 (discard) on loopback: nothing listens, every request fails fast.
        let r = run(9, &arrivals, Duration::from_secs(1), &live, &cancel);
        stopper.join().unwrap();
        assert_eq!(r, Err(LoadError::Interrupted));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
