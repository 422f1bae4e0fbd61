//! The database tier behind the storefront: the connection pool plus either the embedded model
//! of a database (default) or a real PostgreSQL (`DATABASE_URL`).
//!
//! The model: the database runs `knee` queries at full speed (its cores); past that, every query
//! in flight shares them (processor sharing, time x in_use / knee) and they also get in each
//! other's way (locks, cache: `thrash_per_conn` more time per connection past the knee). So past
//! the knee, more connections in use mean *less* throughput: the postmortem's bottleneck.
//!
//! The database can also slow down by itself ([`Database::set_slowdown`]): every query then takes
//! that many times longer (with PostgreSQL, the connection is held that much longer after the
//! query), whatever the load. The postmortem's first signal was the database's latency.
//!
//! Invariants: a query holds one pool connection for its whole duration; a request that gets no
//! connection within the pool-wait timeout fails without running its query.

use crate::pg::Postgres;
use crate::pool::{AcquireError, Pool, PoolStats};
use crate::rng::{mix, unit_of};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The storefront's queries, one per page type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `GET /products/{id}`: one product with stock and related items.
    Product,
    /// `GET /products?page=N`: a page of the catalogue, sorted.
    Listing,
    /// `GET /search?q=`: a text search over the catalogue.
    Search,
    /// `GET /cart`: the session's cart.
    CartRead,
    /// `POST /cart`: add an item.
    CartWrite,
    /// `POST /checkout`: order, payment record, stock update, in one transaction.
    Checkout,
}

impl Query {
    /// Time the query takes on an idle database, in the model.
    pub fn base_ms(self) -> f64 {
        match self {
            Query::Product => 50.0,
            Query::Listing => 80.0,
            Query::Search => 150.0,
            Query::CartRead => 30.0,
            Query::CartWrite => 60.0,
            Query::Checkout => 100.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Query::Product => "product",
            Query::Listing => "listing",
            Query::Search => "search",
            Query::CartRead => "cart_read",
            Query::CartWrite => "cart_write",
            Query::Checkout => "checkout",
        }
    }
}

/// How query time grows with connections in use (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Contention {
    /// Queries the database runs at full speed at once.
    pub knee: u32,
    /// Extra time per query for each connection in use past the knee, as a fraction.
    pub thrash_per_conn: f64,
    /// Random spread of query time: each query takes base x (1 +- jitter/2).
    pub jitter: f64,
}

impl Default for Contention {
    fn default() -> Contention {
        Contention { knee: 16, thrash_per_conn: 0.02, jitter: 0.4 }
    }
}

impl Contention {
    /// How many times slower than on an idle database a query runs with `in_use` connections.
    pub fn slowdown(&self, in_use: u32) -> f64 {
        let knee = self.knee.max(1);
        if in_use <= knee {
            return 1.0;
        }
        let past = f64::from(in_use - knee);
        f64::from(in_use) / f64::from(knee) * (1.0 + self.thrash_per_conn * past)
    }

    /// How long the `n`-th query of kind `q` takes with `in_use` connections in use.
    pub fn query_ms(&self, q: Query, in_use: u32, n: u64) -> f64 {
        let spread = 1.0 + self.jitter * (unit_of(mix(n)) - 0.5);
        q.base_ms() * self.slowdown(in_use) * spread
    }
}

pub enum Backend {
    Model(Contention),
    Postgres(Postgres),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbError {
    /// No connection within the pool-wait timeout: the postmortem's failure.
    PoolTimeout { waited_ms: u64 },
    /// The query itself failed (real PostgreSQL only), or the pool is broken.
    Query(String),
}

/// The database tier: a pool and what runs on its connections.
pub struct Database {
    pool: Arc<Pool>,
    backend: Backend,
    pool_wait: Duration,
    queries: AtomicU64,
    /// How many times slower than normal every query runs, in thousandths (1000: normal).
    slowdown_milli: AtomicU64,
}

impl Database {
    pub fn new(pool: Arc<Pool>, backend: Backend, pool_wait: Duration) -> Database {
        Database { pool, backend, pool_wait, queries: AtomicU64::new(0), slowdown_milli: AtomicU64::new(1000) }
    }

    /// From now on every query takes `factor` (>= 1) times as long; 1 restores full speed.
    pub fn set_slowdown(&self, factor: f64) {
        self.slowdown_milli.store((factor.max(1.0) * 1000.0).round() as u64, Ordering::Relaxed);
    }

    pub fn slowdown(&self) -> f64 {
        self.slowdown_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn stats(&self) -> PoolStats {
        self.pool.stats()
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Model(_) => "model",
            Backend::Postgres(_) => "postgresql",
        }
    }

    /// Runs one query on a pooled connection; `arg` picks the row (product, page, session...).
    pub async fn run(&self, q: Query, arg: u64) -> Result<(), DbError> {
        let lease = self.pool.acquire(self.pool_wait).await.map_err(|e| match e {
            AcquireError::Timeout { waited_ms } => DbError::PoolTimeout { waited_ms },
            AcquireError::Broken(m) => DbError::Query(m),
        })?;
        let slowdown = self.slowdown();
        match &self.backend {
            Backend::Model(c) => {
                let n = self.queries.fetch_add(1, Ordering::Relaxed);
                let ms = c.query_ms(q, lease.in_use_at_start(), n) * slowdown;
                tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
                Ok(())
            }
            Backend::Postgres(pg) => {
                let start = std::time::Instant::now();
                let result = pg.run(lease.slot(), q, arg).await.map_err(DbError::Query);
                if slowdown > 1.0 {
                    tokio::time::sleep(start.elapsed().mul_f64(slowdown - 1.0)).await;
                }
                result
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_run_at_full_speed_up_to_the_knee() {
        let c = Contention::default();
        for n in 0..=16 {
            assert_eq!(c.slowdown(n), 1.0);
        }
    }

    #[test]
    fn past_the_knee_queries_slow_down_faster_than_connections_grow() {
        let c = Contention::default();
        let mut last = 1.0;
        for n in 17..=40 {
            let s = c.slowdown(n);
            assert!(s > last, "slowdown grows: {n}");
            // Throughput (in_use / time) falls: more connections serve fewer queries.
            assert!(f64::from(n) / s < f64::from(n - 1) / last, "throughput falls at {n}");
            last = s;
        }
        assert!((c.slowdown(40) - 2.5 * 1.48).abs() < 1e-9);
    }

    #[test]
    fn jitter_spreads_query_time_evenly_around_the_base() {
        let c = Contention::default();
        let times: Vec<f64> = (0..10_000).map(|n| c.query_ms(Query::Checkout, 1, n)).collect();
        assert!(times.iter().all(|t| (80.0..=120.0).contains(t)));
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        assert!((mean - 100.0).abs() < 1.0, "mean {mean}");
    }

    #[test]
    fn a_query_times_out_when_the_pool_stays_full() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let pool = Pool::new(1);
            let db = Database::new(Arc::clone(&pool), Backend::Model(Contention::default()), Duration::from_millis(30));
            let _held = pool.acquire(Duration::from_millis(10)).await.unwrap();
            assert_eq!(db.run(Query::Product, 1).await, Err(DbError::PoolTimeout { waited_ms: 30 }));
        });
    }

    #[test]
    fn a_slowed_database_takes_that_many_times_longer_until_restored() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = Database::new(Pool::new(1), Backend::Model(Contention::default()), Duration::from_millis(100));
            db.set_slowdown(3.0);
            let t0 = std::time::Instant::now();
            db.run(Query::CartRead, 1).await.unwrap();
            assert!(t0.elapsed() >= Duration::from_millis(72), "30 ms +- 20%, times 3: {:?}", t0.elapsed());
            db.set_slowdown(1.0);
            assert_eq!(db.slowdown(), 1.0);
            db.set_slowdown(0.5);
            assert_eq!(db.slowdown(), 1.0, "never faster than full speed");
        });
    }

    #[test]
    fn a_query_holds_its_connection_for_its_duration() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let pool = Pool::new(2);
            let db = Arc::new(Database::new(
                Arc::clone(&pool),
                Backend::Model(Contention::default()),
                Duration::from_millis(100),
            ));
            let d = Arc::clone(&db);
            let t0 = std::time::Instant::now();
            let q = tokio::spawn(async move { d.run(Query::CartRead, 1).await });
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(pool.stats().in_use, 1);
            assert_eq!(q.await.unwrap(), Ok(()));
            assert!(t0.elapsed() >= Duration::from_millis(24), "30 ms +- 20%");
            assert_eq!(pool.stats().in_use, 0);
        });
    }
}
