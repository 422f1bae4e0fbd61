//! A real PostgreSQL behind the pool (`DATABASE_URL`), instead of the embedded model.
//!
//! One client per pool slot, opened at start: the pool's accounting stays the same, and each
//! lease runs its query on the connection its slot names, so no two queries share a connection.
//! The schema (`surgeguard_demo_*` tables, created if missing, filled once) is a small catalogue;
//! the queries do real work on it (scans, sorts, a write transaction with a row lock), so query
//! time grows with contention on the real database's CPUs and locks.

use crate::db::Query;
use crate::rng::mix;
use crate::traffic::SEARCH_WORDS;
use tokio_postgres::{Client, NoTls};

const PRODUCTS: i32 = 50_000;
/// Checkouts update the stock of one of these few best sellers: real row-lock contention.
const BEST_SELLERS: u64 = 50;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS surgeguard_demo_products (
    id integer PRIMARY KEY,
    category integer NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    price_cents integer NOT NULL,
    stock integer NOT NULL
);
CREATE TABLE IF NOT EXISTS surgeguard_demo_cart_items (
    id bigserial PRIMARY KEY,
    session integer NOT NULL,
    product integer NOT NULL,
    qty integer NOT NULL,
    added_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS surgeguard_demo_cart_items_session
    ON surgeguard_demo_cart_items (session);
CREATE TABLE IF NOT EXISTS surgeguard_demo_orders (
    id bigserial PRIMARY KEY,
    session integer NOT NULL,
    total_cents bigint NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now()
);
";

const FILL: &str = "
INSERT INTO surgeguard_demo_products
SELECT g, g % 40, 'product ' || g,
       repeat(md5(g::text), 4) || ' ' ||
       (ARRAY['shoes','jacket','lamp','coffee','headphones','backpack',
              'sofa','kettle','watch','tent','keyboard','mug'])[1 + g % 12],
       100 + (g * 7919) % 100000, 1000000000
FROM generate_series(1, 50000) g
ON CONFLICT (id) DO NOTHING;
ANALYZE surgeguard_demo_products;
";

pub struct Postgres {
    clients: Vec<Client>,
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme_end + 3], user, &url[at..])
        }
        _ => url.to_string(),
    }
}

impl Postgres {
    /// Opens `size` connections and prepares the schema. Must run inside the tokio runtime
    /// that will serve the queries (each connection's driver is spawned on it).
    pub async fn connect(url: &str, size: u32) -> Result<Postgres, String> {
        let mut clients = Vec::with_capacity(size as usize);
        for _ in 0..size {
            let (client, connection) = tokio_postgres::connect(url, NoTls)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            clients.push(client);
        }
        let first = clients.first().ok_or_else(|| "the pool needs at least one connection".to_string())?;
        first.batch_execute(SCHEMA).await.map_err(|e| format!("creating the demo schema: {e}"))?;
        let rows: i64 = first
            .query_one("SELECT count(*) FROM surgeguard_demo_products", &[])
            .await
            .and_then(|r| r.try_get(0))
            .map_err(|e| format!("counting products: {e}"))?;
        if rows < i64::from(PRODUCTS) {
            first.batch_execute(FILL).await.map_err(|e| format!("filling the catalogue: {e}"))?;
        }
        Ok(Postgres { clients })
    }

    /// Runs query `q` on the connection of pool slot `slot`.
    pub async fn run(&self, slot: usize, q: Query, arg: u64) -> Result<(), String> {
        let c = self.clients.get(slot).ok_or_else(|| format!("no connection for pool slot {slot}"))?;
        let id = (arg % PRODUCTS as u64) as i32 + 1;
        let session = (arg % 1_000_000) as i32;
        let result = match q {
            Query::Product => c
                .query(
                    "SELECT p.name, p.price_cents, p.stock,
                            (SELECT count(*) FROM surgeguard_demo_products r
                             WHERE r.category = p.category
                               AND r.price_cents BETWEEN p.price_cents - 5000
                                                     AND p.price_cents + 5000) AS related
                     FROM surgeguard_demo_products p WHERE p.id = $1",
                    &[&id],
                )
                .await
                .map(drop),
            Query::Listing => {
                let offset = ((arg % 1000) * 50) as i64;
                c.query(
                    "SELECT id, name, price_cents FROM surgeguard_demo_products
                     ORDER BY price_cents DESC, id LIMIT 50 OFFSET $1",
                    &[&offset],
                )
                .await
                .map(drop)
            }
            Query::Search => {
                let word = SEARCH_WORDS[(arg % SEARCH_WORDS.len() as u64) as usize];
                let pattern = format!("%{word}%");
                c.query(
                    "SELECT id, name, price_cents FROM surgeguard_demo_products
                     WHERE description ILIKE $1 ORDER BY price_cents LIMIT 20",
                    &[&pattern],
                )
                .await
                .map(drop)
            }
            Query::CartRead => c
                .query(
                    "SELECT count(*), coalesce(sum(c.qty * p.price_cents), 0)
                     FROM surgeguard_demo_cart_items c
                     JOIN surgeguard_demo_products p ON p.id = c.product
                     WHERE c.session = $1",
                    &[&session],
                )
                .await
                .map(drop),
            Query::CartWrite => {
                let product = (mix(arg) % PRODUCTS as u64) as i32 + 1;
                c.execute(
                    "INSERT INTO surgeguard_demo_cart_items (session, product, qty)
                     VALUES ($1, $2, 1)",
                    &[&session, &product],
                )
                .await
                .map(drop)
            }
            Query::Checkout => {
                let best_seller = (mix(arg) % BEST_SELLERS) as i32 + 1;
                c.query(
                    "WITH cart AS (
                         SELECT coalesce(sum(c.qty * p.price_cents), 0)::bigint AS total
                         FROM surgeguard_demo_cart_items c
                         JOIN surgeguard_demo_products p ON p.id = c.product
                         WHERE c.session = $1),
                     o AS (INSERT INTO surgeguard_demo_orders (session, total_cents)
                           SELECT $1, total FROM cart RETURNING id),
                     s AS (UPDATE surgeguard_demo_products SET stock = stock - 1
                           WHERE id = $2 RETURNING id)
                     SELECT (SELECT id FROM o), (SELECT count(*) FROM s)",
                    &[&session, &best_seller],
                )
                .await
                .map(drop)
            }
        };
        result.map_err(|e| format!("{} query: {e}", q.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_never_show_the_password() {
        assert_eq!(redact("postgres://shop:s3cret@127.0.0.1:5432/shop"), "postgres://shop:***@127.0.0.1:5432/shop");
        assert_eq!(redact("postgres://127.0.0.1/shop"), "postgres://127.0.0.1/shop");
    }
}
