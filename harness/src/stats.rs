//! Envoy's admin `/stats` in its plain format, read once for everyone: the tests, the demo and
//! the benchmark take counters and gauges from here rather than parsing the text themselves.

use std::collections::BTreeMap;

/// Every `name: value` line whose value is an integer (counters and gauges), by name.
/// Histograms (`name: P0(...) ...`) and anything else that is not an integer are left out.
pub fn parse(body: &str) -> BTreeMap<String, u64> {
    body.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_gauges_are_kept_and_histograms_left_out() {
        let body = "cluster.upstream.upstream_rq_total: 12\n\
                    server.uptime: 3\n\
                    http.main.downstream_rq_time: P0(nan,1) P25(nan,2)\n\
                    server.version: 1.40.0/abc\n\
                    not a stat line\n";
        let stats = parse(body);
        assert_eq!(stats.len(), 2);
        assert_eq!(stats["cluster.upstream.upstream_rq_total"], 12);
        assert_eq!(stats["server.uptime"], 3);
    }

    #[test]
    fn an_empty_body_has_no_stats() {
        assert!(parse("").is_empty());
    }
}
