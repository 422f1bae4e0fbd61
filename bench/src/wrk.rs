//! Closed-loop throughput with `wrk` (Debian's), pinned to the load generator's core, and the
//! parsing of its text report.

use crate::procs::{run_to_completion, Pinned};
use std::time::Duration;

/// What one wrk run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    pub duration_s: f64,
    pub requests_per_s: f64,
    /// Responses that were not 2xx or 3xx (an arm that refuses would show here).
    pub non_2xx: u64,
    /// connect + read + write + timeout errors.
    pub socket_errors: u64,
}

/// One wrk run: `threads` threads, `connections` connections, for `duration`.
pub struct WrkRun<'a> {
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub connections: u32,
    pub duration: Duration,
    pub cpu_list: &'a str,
}

pub fn run(w: &WrkRun) -> Result<WrkReport, String> {
    let mut args: Vec<String> = vec![
        "-t1".into(),
        format!("-c{}", w.connections),
        format!("-d{}s", w.duration.as_secs_f64().round().max(1.0)),
        "--timeout".into(),
        "5s".into(),
    ];
    for (k, v) in w.headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    args.push(w.url.to_string());
    let out = run_to_completion(&Pinned::new(w.cpu_list, "wrk", &args), w.duration + Duration::from_secs(30))?;
    parse(&out).map_err(|e| format!("wrk: {e}; it printed:\n{out}"))
}

/// Parses wrk's text report (wrk 4.x).
pub fn parse(text: &str) -> Result<WrkReport, String> {
    let mut requests = None;
    let mut duration_s = None;
    let mut requests_per_s = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests_per_s = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = rest.trim().parse().map_err(|_| format!("bad line `{line}`"))?;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 12"
            socket_errors =
                rest.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum();
        } else if let Some((count, rest)) = line.split_once(" requests in ") {
            // "19282 requests in 3.04s, 2.19MB read"
            requests = count.trim().parse::<u64>().ok();
            duration_s = rest.split(',').next().and_then(|d| parse_duration_s(d.trim()));
        }
    }
    match (requests, duration_s, requests_per_s) {
        (Some(requests), Some(duration_s), Some(requests_per_s)) => {
            Ok(WrkReport { requests, duration_s, requests_per_s, non_2xx, socket_errors })
        }
        _ => Err("no `N requests in T` and `Requests/sec:` lines".into()),
    }
}

/// wrk durations: `3.04s`, `1.00m`, `850.00ms`, `12.00us`.
fn parse_duration_s(s: &str) -> Option<f64> {
    let units = [("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)];
    units.iter().find_map(|(suffix, factor)| s.strip_suffix(suffix)?.parse::<f64>().ok().map(|x| x * factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 3s test @ http://127.0.0.1:19000/api/products/42
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.91ms   21.08ms 148.83ms   91.84%
    Req/Sec     9.38k     3.17k   16.31k    68.97%
  28349 requests in 3.22s, 3.22MB read
Requests/sec:   8795.20
Transfer/sec:      1.00MB
";

    const WITH_ERRORS: &str = "Running 1m test @ http://127.0.0.1:1/
  1 threads and 8 connections
  1200000 requests in 1.00m, 137.33MB read
  Socket errors: connect 0, read 3, write 0, timeout 12
  Non-2xx or 3xx responses: 4500
Requests/sec:  19995.12
Transfer/sec:      2.29MB
";

    #[test]
    fn parses_requests_duration_and_rate() {
        let r = parse(CLEAN).unwrap();
        assert_eq!(r.requests, 28349);
        assert!((r.duration_s - 3.22).abs() < 1e-9);
        assert!((r.requests_per_s - 8795.20).abs() < 1e-9);
        assert_eq!((r.non_2xx, r.socket_errors), (0, 0));
    }

    #[test]
    fn parses_errors_refusals_and_minutes() {
        let r = parse(WITH_ERRORS).unwrap();
        assert_eq!(r.requests, 1_200_000);
        assert!((r.duration_s - 60.0).abs() < 1e-9);
        assert_eq!((r.non_2xx, r.socket_errors), (4500, 15));
    }

    #[test]
    fn a_failed_run_is_an_error_not_zero() {
        assert!(parse("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_s("850.00ms"), Some(0.85));
        assert_eq!(parse_duration_s("2.00m"), Some(120.0));
        assert_eq!(parse_duration_s("12.00us"), Some(12e-6));
        assert_eq!(parse_duration_s("fast"), None);
    }
}
