//! Envoy's counters through its admin interface, parsed from the plain `/stats` format.

use std::collections::BTreeMap;
use surgeguard_harness::envoy::Envoy;

/// Every stat whose name contains `filter` (Envoy's substring/regex filter), by name.
pub fn filtered(envoy: &Envoy, filter: &str) -> BTreeMap<String, u64> {
    let body = envoy.admin_get(&format!("/stats?filter={filter}")).map(|(_, b)| b).unwrap_or_default();
    parse(&body)
}

pub fn all(envoy: &Envoy) -> BTreeMap<String, u64> {
    parse(&envoy.admin_get("/stats").map(|(_, b)| b).unwrap_or_default())
}

/// `name: value` lines with an integer value (histograms are left out).
pub fn parse(body: &str) -> BTreeMap<String, u64> {
    body.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

pub fn get(stats: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
    stats.get(name).copied()
}

/// Requests the bench listener's connection manager has seen (`http.bench.downstream_rq_total`).
pub fn requests_total(envoy: &Envoy) -> Option<u64> {
    get(&filtered(envoy, "downstream_rq_total"), "http.bench.downstream_rq_total")
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

    const STATS: &str = "http.bench.downstream_rq_total: 1234
listener.127.0.0.1_41001.worker_0.downstream_cx_total: 9
listener.127.0.0.1_41001.worker_1.downstream_cx_total: 7
listener.127.0.0.1_41001.worker_1.downstream_cx_active: 7
listener.admin.main_thread.downstream_cx_total: 3
http.bench.downstream_rq_time: P0(nan,0.0) P25(nan,0.0)
wasmcustom.surgeguard.class.all.admitted: 6000
";

    #[test]
    fn parses_counters_and_skips_histograms() {
        let s = parse(STATS);
        assert_eq!(get(&s, "http.bench.downstream_rq_total"), Some(1234));
        assert_eq!(get(&s, "wasmcustom.surgeguard.class.all.admitted"), Some(6000));
        assert_eq!(get(&s, "http.bench.downstream_rq_time"), None);
    }

    #[test]
    fn per_worker_values_come_in_worker_order_without_the_admin_listener() {
        assert_eq!(per_worker(&parse(STATS), "downstream_cx_total"), vec![9, 7]);
    }
}
