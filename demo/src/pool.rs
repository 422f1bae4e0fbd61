//! The database tier's connection pool: a fixed number of connections, a wait for a free one
//! bounded by the pool-wait timeout, and exact accounting of connections in use.
//!
//! Invariants:
//! - connections in use never exceed the pool size: `in_use` is raised only by a holder of one
//!   of the pool's `size` semaphore permits and lowered before that permit is returned;
//! - each lease owns one connection slot (`0..size`) that no other lease holds at the same time;
//! - waiting ends with a lease or, after the timeout, an error (FIFO: the semaphore is fair);
//! - `peak_in_use` is the most connections ever in use at once; `take_window_peak` returns the
//!   most since the previous call (the sampler's windows).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Pool {
    size: u32,
    permits: Arc<Semaphore>,
    free_slots: Mutex<Vec<usize>>,
    in_use: AtomicU32,
    peak_in_use: AtomicU32,
    window_peak: AtomicU32,
    waiting: AtomicU32,
    peak_waiting: AtomicU32,
    leases: AtomicU64,
    wait_timeouts: AtomicU64,
}

/// What the storefront reports about its pool (`GET /_db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    #[serde(rename = "pool_size")]
    pub size: u32,
    pub in_use: u32,
    pub peak_in_use: u32,
    pub waiting: u32,
    pub peak_waiting: u32,
    pub leases: u64,
    pub wait_timeouts: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireError {
    /// No connection came free within the pool-wait timeout.
    Timeout { waited_ms: u64 },
    /// The pool's bookkeeping failed (a poisoned lock): a bug, reported rather than hidden.
    Broken(String),
}

/// One connection, held until dropped.
pub struct Lease {
    pool: Arc<Pool>,
    slot: usize,
    in_use_at_start: u32,
    // Dropped after `Drop::drop` ran, so `in_use` is lowered before the permit is returned.
    _permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Which of the pool's connections this is (`0..size`).
    pub fn slot(&self) -> usize {
        self.slot
    }

    /// Connections in use (this one included) when it was taken.
    pub fn in_use_at_start(&self) -> u32 {
        self.in_use_at_start
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free_slots.lock() {
            free.push(self.slot);
        }
        self.pool.in_use.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Lowers the waiting count when the wait ends in any way (also if the request goes away).
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    pub fn new(size: u32) -> Arc<Pool> {
        Arc::new(Pool {
            size,
            permits: Arc::new(Semaphore::new(size as usize)),
            free_slots: Mutex::new((0..size as usize).rev().collect()),
            in_use: AtomicU32::new(0),
            peak_in_use: AtomicU32::new(0),
            window_peak: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            peak_waiting: AtomicU32::new(0),
            leases: AtomicU64::new(0),
            wait_timeouts: AtomicU64::new(0),
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    /// Waits at most `wait` for a free connection.
    pub async fn acquire(self: &Arc<Self>, wait: Duration) -> Result<Lease, AcquireError> {
        let now_waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_waiting.fetch_max(now_waiting, Ordering::SeqCst);
        let waiting = Waiting(&self.waiting);
        let permit = tokio::time::timeout(wait, Arc::clone(&self.permits).acquire_owned()).await;
        drop(waiting);
        let permit = match permit {
            Err(_) => {
                self.wait_timeouts.fetch_add(1, Ordering::SeqCst);
                return Err(AcquireError::Timeout { waited_ms: wait.as_millis() as u64 });
            }
            Ok(Err(closed)) => return Err(AcquireError::Broken(closed.to_string())),
            Ok(Ok(p)) => p,
        };
        let slot = self
            .free_slots
            .lock()
            .map_err(|e| AcquireError::Broken(format!("pool slots: {e}")))?
            .pop()
            .ok_or_else(|| AcquireError::Broken("a permit without a free slot".into()))?;
        let n = self.in_use.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_use.fetch_max(n, Ordering::SeqCst);
        self.window_peak.fetch_max(n, Ordering::SeqCst);
        self.leases.fetch_add(1, Ordering::SeqCst);
        Ok(Lease { pool: Arc::clone(self), slot, in_use_at_start: n, _permit: permit })
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.size,
            in_use: self.in_use.load(Ordering::SeqCst),
            peak_in_use: self.peak_in_use.load(Ordering::SeqCst),
            waiting: self.waiting.load(Ordering::SeqCst),
            peak_waiting: self.peak_waiting.load(Ordering::SeqCst),
            leases: self.leases.load(Ordering::SeqCst),
            wait_timeouts: self.wait_timeouts.load(Ordering::SeqCst),
        }
    }

    /// The most connections in use since the previous call; the next window starts from the
    /// connections in use now.
    pub fn take_window_peak(&self) -> u32 {
        let peak = self.window_peak.swap(0, Ordering::SeqCst);
        self.window_peak.fetch_max(self.in_use.load(Ordering::SeqCst), Ordering::SeqCst);
        peak
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    #[test]
    fn leases_are_counted_in_and_out() {
        runtime().block_on(async {
            let pool = Pool::new(3);
            let a = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let b = pool.acquire(Duration::from_millis(10)).await.unwrap();
            assert_eq!((a.in_use_at_start(), b.in_use_at_start()), (1, 2));
            assert_ne!(a.slot(), b.slot());
            assert_eq!(pool.stats().in_use, 2);
            drop(a);
            assert_eq!(pool.stats().in_use, 1);
            drop(b);
            let s = pool.stats();
            assert_eq!((s.in_use, s.peak_in_use, s.leases), (0, 2, 2));
        });
    }

    #[test]
    fn a_full_pool_makes_the_next_request_wait_then_time_out() {
        runtime().block_on(async {
            let pool = Pool::new(2);
            let _a = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let _b = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let t0 = std::time::Instant::now();
            let err = pool.acquire(Duration::from_millis(50)).await.err();
            assert_eq!(err, Some(AcquireError::Timeout { waited_ms: 50 }));
            assert!(t0.elapsed() >= Duration::from_millis(50));
            let s = pool.stats();
            assert_eq!((s.wait_timeouts, s.waiting, s.peak_waiting), (1, 0, 1));
        });
    }

    #[test]
    fn a_connection_returned_while_waiting_is_handed_to_the_waiter() {
        runtime().block_on(async {
            let pool = Pool::new(1);
            let a = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let p = Arc::clone(&pool);
            let waiter =
                tokio::spawn(async move { p.acquire(Duration::from_secs(5)).await.map(|l| l.in_use_at_start()) });
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(pool.stats().waiting, 1);
            drop(a);
            assert_eq!(waiter.await.unwrap(), Ok(1));
        });
    }

    #[test]
    fn many_concurrent_requests_never_hold_more_than_the_pool() {
        runtime().block_on(async {
            let pool = Pool::new(8);
            let mut tasks = Vec::new();
            for _ in 0..200 {
                let p = Arc::clone(&pool);
                tasks.push(tokio::spawn(async move {
                    let lease = p.acquire(Duration::from_secs(10)).await.unwrap();
                    let in_use = p.stats().in_use;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    (lease.slot(), in_use)
                }));
            }
            for t in tasks {
                let (slot, in_use) = t.await.unwrap();
                assert!(slot < 8);
                assert!(in_use <= 8);
            }
            let s = pool.stats();
            assert_eq!((s.in_use, s.peak_in_use, s.leases), (0, 8, 200));
        });
    }

    #[test]
    fn the_window_peak_resets_to_what_is_in_use_now() {
        runtime().block_on(async {
            let pool = Pool::new(4);
            let a = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let b = pool.acquire(Duration::from_millis(10)).await.unwrap();
            let c = pool.acquire(Duration::from_millis(10)).await.unwrap();
            drop((b, c));
            assert_eq!(pool.take_window_peak(), 3);
            assert_eq!(pool.take_window_peak(), 1, "one still in use");
            drop(a);
            assert_eq!(pool.take_window_peak(), 1);
            assert_eq!(pool.take_window_peak(), 0);
        });
    }
}
