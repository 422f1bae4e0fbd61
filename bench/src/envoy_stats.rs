//! What the bench reads from Envoy's stats, over the harness's one `/stats` parser
//! (`Envoy::stats`, `Envoy::stats_matching`): the bench listener's request count and
//! per-worker listener figures.

use std::collections::BTreeMap;
use surgeguard_harness::envoy::Envoy;

/// Requests the bench listener's connection manager has seen (`http.bench.downstream_rq_total`).
pub fn requests_total(envoy: &Envoy) -> Option<u64> {
    envoy.stats_matching("downstream_rq_total").get("http.bench.downstream_rq_total").copied()
}

/// `listener.<addr>.worker_<n>.<stat>` values in worker order.
pub fn per_worker(stats: &BTreeMap<String, u64>, stat: &str) -> Vec<u64> {
    let mut by_worker: BTreeMap<u32, u64> = BTreeMap::new();
    for (k, v) in stats {
        let Some(rest) = k.strip_prefix("listener.") else {
            continue;
        };
        if rest.starts_with("admin") {
            continue;
        }
        let Some((_, after)) = rest.split_once(".worker_") else {
            continue;
        };
        let Some((n, name)) = after.split_once('.') else {
            continue;
        };
        if name == stat {
            if let Ok(n) = n.parse() {
                *by_worker.entry(n).or_default() += v;
            }
        }
    }
    by_worker.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgeguard_harness::stats::parse;

    const STATS: &str = "http.bench.downstream_rq_total: 1234
listener.127.0.0.1_41001.worker_0.downstream_cx_total: 9
listener.127.0.0.1_41001.worker_1.downstream_cx_total: 7
listener.127.0.0.1_41001.worker_1.downstream_cx_active: 7
listener.admin.main_thread.downstream_cx_total: 3
";

    #[test]
    fn per_worker_values_come_in_worker_order_without_the_admin_listener() {
        assert_eq!(per_worker(&parse(STATS), "downstream_cx_total"), vec![9, 7]);
    }
}
