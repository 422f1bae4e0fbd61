//! Open-loop load with `oha` (crates.io, installed into `.tools/` by `bench/ensure-tools.sh`):
//! `-q RATE --latency-correction` sends on a fixed schedule and measures each latency from
//! the moment the request was due, so a stalled server cannot hide its stall (no coordinated
//! omission). Parses oha's JSON report.

use crate::procs::{run_to_completion, Pinned};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What one open-loop run reports.
#[derive(Debug, Clone, PartialEq)]
pub struct OhaReport {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Requests that got a response, per second of the whole run.
    pub achieved_rps: f64,
    pub total_s: f64,
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response (connection errors, timeouts), summed over kinds.
    pub errors: u64,
}

impl OhaReport {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn responses(&self) -> u64 {
        self.statuses.values().sum()
    }
}

/// One open-loop run at `rate_per_s` for `duration`.
pub struct OhaRun<'a> {
    pub oha: &'a Path,
    pub url: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub rate_per_s: f64,
    pub duration: Duration,
    /// Connections: enough that `rate x latency` never runs out of them.
    pub connections: u32,
    pub cpu_list: &'a str,
    pub worker_threads: u32,
}

pub fn run(o: &OhaRun) -> Result<OhaReport, String> {
    let mut args: Vec<String> = vec![
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
        "--latency-correction".into(),
        // Requests still running at the deadline are waited for, not counted as aborted.
        "-w".into(),
        "-q".into(),
        format!("{:.0}", o.rate_per_s.max(1.0)),
        "-z".into(),
        format!("{}ms", o.duration.as_millis()),
        "-c".into(),
        o.connections.to_string(),
        "-t".into(),
        "5s".into(),
        "--worker-threads".into(),
        o.worker_threads.to_string(),
    ];
    for (k, v) in o.headers {
        args.push("-H".into());
        args.push(format!("{k}: {v}"));
    }
    args.push(o.url.to_string());
    let program = o.oha.display().to_string();
    let out = run_to_completion(&Pinned::new(o.cpu_list, &program, &args), o.duration + Duration::from_secs(30))?;
    parse(&out).map_err(|e| format!("oha: {e}; it printed:\n{out}"))
}

/// Parses oha's `--output-format json` report (oha 1.x; latencies in seconds).
pub fn parse(text: &str) -> Result<OhaReport, String> {
    // Anything oha printed on stderr comes after the JSON object: read the object only.
    let start = text.find('{').ok_or("no JSON object")?;
    let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter();
    let v: serde_json::Value = stream.next().ok_or("no JSON object")?.map_err(|e| format!("bad JSON: {e}"))?;
    let seconds = |path: &[&str]| -> Result<f64, String> {
        let mut cur = &v;
        for p in path {
            cur = &cur[*p];
        }
        cur.as_f64().ok_or_else(|| format!("no number at {}", path.join(".")))
    };
    let statuses = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, n)| Some((k.parse::<u16>().ok()?, n.as_u64()?))).collect())
        .unwrap_or_default();
    let errors =
        v["errorDistribution"].as_object().map(|m| m.values().filter_map(serde_json::Value::as_u64).sum()).unwrap_or(0);
    Ok(OhaReport {
        p50_us: seconds(&["latencyPercentiles", "p50"])? * 1e6,
        p99_us: seconds(&["latencyPercentiles", "p99"])? * 1e6,
        p999_us: seconds(&["latencyPercentiles", "p99.9"])? * 1e6,
        achieved_rps: seconds(&["summary", "requestsPerSec"])?,
        total_s: seconds(&["summary", "total"])?,
        statuses,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"{"summary":{"successRate":1.0,"total":3.0021,"slowest":0.0101,
      "fastest":0.00009,"average":0.0003,"requestsPerSec":4999.1,"totalData":45000,
      "sizePerRequest":3,"sizePerSec":14990.0},
      "latencyPercentiles":{"p10":0.0001,"p25":0.00015,"p50":0.000212,"p75":0.0003,
        "p90":0.0004,"p95":0.0005,"p99":0.00125,"p99.9":0.0042,"p99.99":0.009},
      "statusCodeDistribution":{"200":14990,"429":10},
      "errorDistribution":{"connection closed":2}}"#;

    #[test]
    fn parses_percentiles_in_microseconds() {
        let r = parse(REPORT).unwrap();
        assert!((r.p50_us - 212.0).abs() < 1e-6);
        assert!((r.p99_us - 1250.0).abs() < 1e-6);
        assert!((r.p999_us - 4200.0).abs() < 1e-6);
        assert!((r.achieved_rps - 4999.1).abs() < 1e-9);
    }

    #[test]
    fn counts_statuses_and_errors() {
        let r = parse(REPORT).unwrap();
        assert_eq!((r.count(200), r.count(429), r.count(503)), (14990, 10, 0));
        assert_eq!((r.responses(), r.errors), (15000, 2));
    }

    #[test]
    fn ignores_what_follows_the_json_object() {
        let text = format!("{REPORT}\nsome warning on stderr\n");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn a_report_without_percentiles_is_an_error() {
        let err = parse(r#"{"summary":{"total":1.0,"requestsPerSec":0.0}}"#).unwrap_err();
        assert!(err.contains("latencyPercentiles.p50"), "{err}");
        assert!(parse("error: connection refused").is_err());
    }
}
