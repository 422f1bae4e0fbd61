//! The soak's verdict: what was observed, counted against Envoy's own records, and each check
//! with its bound and why.
//!
//! The accounting: Envoy counts every downstream request (`downstream_rq_total`) and logs each
//! in its access log. Envoy answers 503 with the wasm filter's failure details in two cases,
//! told apart by the request's start time against the staged crashes:
//! - the request *arrived* at a dead VM (the crashing request itself, and requests on that
//!   worker until the VM is rebuilt, one backoff later): it started within
//!   [`DEAD_VM_WINDOW_S`] after a crash, and never reached the filter;
//! - the request was *in flight* when its VM died: it started before the crash (at most a
//!   route timeout before), was decided then, and its response met the dead VM.
//!
//! Every other request reaches the filter and is decided exactly once: admitted, refused (429 by
//! a bucket, 503 by the in-flight limit, both with `x-surgeguard`), or admitted unchecked when
//! storage fails (fail-open). No decision is lost to a crash, since nothing is sent in the quiet
//! before one (see `plan`). A dead-VM answer that fits neither case is unexplained.

use crate::configs::{KEYED_LIMIT, MAX_KEYS};
use crate::faults::{Crash, Push};
use crate::plan::Timeline;
use crate::rig::{LOG_SEPARATOR, STAT_PREFIX, WORKERS};
use crate::run::{Drained, Settled};
use serde::Serialize;
use std::collections::BTreeMap;

/// RSS may grow this much past the warm-up's end. Everything the filter keeps is bounded by its
/// configuration and is there by the warm-up's end (every variant in force, a flood past
/// `max_keys`, a VM replaced); what is left grew 0.1 to 0.6 MiB over 1 to 10 minutes (a steady
/// drift of about 0.07 MiB a minute, source not isolated). 8 MiB is far above that, and below what a leak proportional to the
/// faults adds in 10 minutes: 40 KiB per push (200), 0.7 MiB per crash (11), or 100 bytes per
/// request (90,000).
pub const RSS_GROWTH_BOUND_BYTES: u64 = 8 << 20;
/// A request Envoy answers for a dead VM comes at most this long after the crash: the VM is
/// rebuilt on the first request after the 100 ms backoff.
pub const DEAD_VM_WINDOW_S: f64 = 1.0;
/// A request in flight when its VM died started at most this long before the crash (the
/// longest route timeout, the held requests').
pub const IN_FLIGHT_AT_CRASH_S: f64 = 10.0;
/// Envoy's response details for a request its wasm filter could not run on (the VM failed).
const DEAD_VM_DETAILS: &str = "wasm_fail_stream";
/// What Envoy logs when a VM traps; each staged crash logs it once.
pub const TRAP_LOG: &str = "Uncaught RuntimeError: unreachable";

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub value: String,
    pub bound: String,
    pub pass: bool,
}

/// Every request, as Envoy's counters and access log and the filter's counters have it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Accounting {
    /// `http.storefront.downstream_rq_total`.
    pub envoy_requests: u64,
    pub access_log_lines: u64,
    /// Answered by Envoy because the VM was dead when they arrived (never decided).
    pub dead_vm_arrived: u64,
    /// Decided, then answered 503 by Envoy because their VM died while they were in flight.
    pub dead_vm_in_flight: u64,
    /// Answered for a dead VM, but neither of the above.
    pub dead_vm_unexplained: u64,
    pub reached_filter: u64,
    /// The filter's counters, summed over classes.
    pub admitted: u64,
    pub rate_limited: u64,
    pub shed: u64,
    pub shadow: u64,
    pub fail_open: u64,
    /// Envoy's log: 429 and 503 responses carrying `x-surgeguard`.
    pub logged_rate_limited: u64,
    pub logged_shed: u64,
    /// Envoy's log: response flags of the injected faults.
    pub client_aborts: u64,
    pub upstream_resets: u64,
    pub upstream_timeouts: u64,
    pub key_overflow: u64,
    /// Access log lines by status and details, for the report.
    pub by_details: BTreeMap<String, u64>,
}

impl Accounting {
    pub fn decided(&self) -> u64 {
        self.admitted + self.rate_limited + self.shed + self.shadow + self.fail_open
    }
}

fn stat(stats: &BTreeMap<String, u64>, name: &str) -> u64 {
    stats.get(name).copied().unwrap_or(0)
}

/// Sums the filter's class counters of one outcome (`.shed` is not `.shadow_shed`).
fn class_total(stats: &BTreeMap<String, u64>, outcome: &str) -> u64 {
    stats
        .iter()
        .filter(|(k, _)| k.starts_with("wasmcustom.surgeguard.class.") && k.ends_with(&format!(".{outcome}")))
        .map(|(_, v)| v)
        .sum()
}

pub fn account(settled: &Settled, crashes: &[Crash]) -> Accounting {
    let s = &settled.stats;
    let mut a = Accounting {
        envoy_requests: stat(s, &format!("http.{STAT_PREFIX}.downstream_rq_total")),
        admitted: class_total(s, "admitted"),
        rate_limited: class_total(s, "rate_limited"),
        shed: class_total(s, "shed"),
        shadow: class_total(s, "shadow_rate_limited") + class_total(s, "shadow_shed"),
        fail_open: stat(s, "wasmcustom.surgeguard.fail_open"),
        key_overflow: stat(s, &format!("wasmcustom.surgeguard.limit.{KEYED_LIMIT}.key_overflow")),
        ..Accounting::default()
    };
    let staged: Vec<f64> = crashes.iter().filter(|c| c.staged).map(|c| c.unix_s).collect();
    for line in settled.access_log.lines() {
        let f: Vec<&str> = line.split(LOG_SEPARATOR).collect();
        let [start, code, details, flags, surgeguard] = f[..] else { continue };
        a.access_log_lines += 1;
        *a.by_details.entry(format!("{code} {details}")).or_insert(0) += 1;
        let refused = surgeguard != "-";
        match code {
            "429" if refused => a.logged_rate_limited += 1,
            "503" if refused => a.logged_shed += 1,
            _ => {}
        }
        if details == DEAD_VM_DETAILS {
            let t: f64 = start.parse().unwrap_or(0.0);
            // The log's start time has millisecond resolution; the crash's was taken just before.
            if staged.iter().any(|c| t >= c - 0.001 && t <= c + DEAD_VM_WINDOW_S) {
                a.dead_vm_arrived += 1;
            } else if staged.iter().any(|c| t < *c && t >= c - IN_FLIGHT_AT_CRASH_S) {
                a.dead_vm_in_flight += 1;
            } else {
                a.dead_vm_unexplained += 1;
            }
        }
        let has = |flag: &str| flags.split(',').any(|x| x == flag);
        a.client_aborts += u64::from(has("DC"));
        a.upstream_resets += u64::from(has("UC"));
        a.upstream_timeouts += u64::from(has("UT"));
    }
    a.reached_filter = a.envoy_requests.saturating_sub(a.dead_vm_arrived + a.dead_vm_unexplained);
    a
}

/// Envoy's RSS after the warm-up: (at the warm-up's end, the peak after it).
pub fn memory(rss: &[(f64, u64)], timeline: &Timeline) -> Option<(u64, u64)> {
    let warm_up = timeline.warm_up.as_secs_f64();
    let baseline = rss.iter().find(|(t, _)| *t >= warm_up)?.1;
    let peak = rss.iter().filter(|(t, _)| *t >= warm_up).map(|(_, b)| *b).max()?;
    Some((baseline, peak))
}

/// Envoy logs these at `critical` for every configuration the module refuses: once from the
/// main thread, and once per thread that had started building the plugin (the update is then
/// rejected whole and traffic never meets it; see the dead-VM count).
const REFUSED_CONFIG_LOG: &str = "Plugin surgeguard failed to load";
const REFUSED_CONFIG_THREAD_LOG: &str = "Plugin configured to fail closed failed to load";

/// Lines of Envoy's log that say something broke: critical ones, Rust panics, wasm traps.
/// The staged crashes' traps and Envoy's lines for refused configurations are counted apart.
pub struct LogScan {
    pub traps: u64,
    pub refused_config: u64,
    pub refused_config_threads: u64,
    pub unexpected: Vec<String>,
}

pub fn scan_log(log: &str) -> LogScan {
    let mut scan = LogScan { traps: 0, refused_config: 0, refused_config_threads: 0, unexpected: Vec::new() };
    for line in log.lines() {
        if line.contains(&format!("proxy_on_request_headers failed: {TRAP_LOG}")) {
            scan.traps += 1;
        } else if line.contains("[critical][wasm]") && line.ends_with(REFUSED_CONFIG_LOG) {
            scan.refused_config += 1;
        } else if line.contains("[critical][wasm]") && line.ends_with(REFUSED_CONFIG_THREAD_LOG) {
            scan.refused_config_threads += 1;
        } else if line.contains("[critical]") || line.contains("panicked") || line.contains("RuntimeError") {
            scan.unexpected.push(line.to_string());
        }
    }
    scan
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

pub struct Inputs<'a> {
    pub timeline: &'a Timeline,
    pub rss: &'a [(f64, u64)],
    pub drained: &'a Drained,
    pub accounting: &'a Accounting,
    pub settled: &'a Settled,
    pub pushes: &'a [Push],
    pub crashes: &'a [Crash],
    /// The statuses of the requests sent after the load to visit every worker.
    pub visits: &'a [Option<u16>],
    /// What the faulty upstream received.
    pub upstream_requests: u64,
}

pub fn judge(i: &Inputs) -> Vec<Check> {
    let a = i.accounting;
    let s = &i.settled.stats;
    let mut checks = Vec::new();
    let mut check = |name, value: String, bound: String, pass| checks.push(Check { name, value, bound, pass });

    match memory(i.rss, i.timeline) {
        Some((baseline, peak)) => check(
            "Envoy RSS growth after warm-up",
            format!("{} (from {} to a peak of {})", mib(peak.saturating_sub(baseline)), mib(baseline), mib(peak)),
            format!("<= {}", mib(RSS_GROWTH_BOUND_BYTES)),
            peak.saturating_sub(baseline) <= RSS_GROWTH_BOUND_BYTES,
        ),
        None => check("Envoy RSS growth after warm-up", "no sample after the warm-up".into(), String::new(), false),
    }
    let d = i.drained;
    check(
        "in flight back to 0",
        format!(
            "filter {}, Envoy downstream {}, upstream {} ({:.1} s after the load; {} held by a dead VM until then)",
            d.filter_in_flight, d.downstream_active, d.upstream_active, d.after_s, d.held_by_dead_vms
        ),
        "0 within 20 s (a dead VM's entry expires after 10 s)".into(),
        d.is_zero(),
    );
    check(
        "Envoy's access log holds every request",
        format!("{} lines, {} requests", a.access_log_lines, a.envoy_requests),
        "equal".into(),
        a.access_log_lines == a.envoy_requests,
    );
    check(
        "admitted + refused + fail-open = decided = reached the filter",
        format!(
            "{} + {} + {} = {} ; Envoy {} - arrived at a dead VM {} = {}",
            a.admitted,
            a.rate_limited + a.shed,
            a.fail_open,
            a.decided(),
            a.envoy_requests,
            a.dead_vm_arrived + a.dead_vm_unexplained,
            a.reached_filter
        ),
        "equal".into(),
        a.decided() == a.reached_filter && a.shadow == 0,
    );
    let upstream = i.upstream_requests;
    // A client abort can overtake its admitted request on the way to the upstream (how often
    // depends on the machine's load): those, and only those, may be missing upstream.
    let forwarded = a.admitted + a.fail_open;
    check(
        "the upstream received what was admitted",
        format!(
            "{} + {} admitted, {upstream} received ({} missing, {} client aborts)",
            a.admitted,
            a.fail_open,
            forwarded.saturating_sub(upstream),
            a.client_aborts
        ),
        "received <= admitted, and admitted - received <= client aborts: nothing reaches the upstream undecided, every other admission does".into(),
        upstream <= forwarded && forwarded - upstream <= a.client_aborts,
    );
    check(
        "refusals = Envoy's 429/503 with x-surgeguard",
        format!(
            "rate limited {} vs {} logged, shed {} vs {} logged",
            a.rate_limited, a.logged_rate_limited, a.shed, a.logged_shed
        ),
        "equal".into(),
        a.rate_limited == a.logged_rate_limited && a.shed == a.logged_shed,
    );
    let staged = i.crashes.iter().filter(|c| c.staged).count() as u64;
    check(
        "503s Envoy answered for a dead VM",
        format!(
            "{} arrived after a crash, {} were in flight at one (decided), {} unexplained",
            a.dead_vm_arrived, a.dead_vm_in_flight, a.dead_vm_unexplained
        ),
        format!("arrived >= {staged} (the crashing requests), within {DEAD_VM_WINDOW_S} s of a crash; 0 unexplained"),
        a.dead_vm_arrived >= staged && a.dead_vm_unexplained == 0,
    );
    check(
        "fail-open decisions",
        a.fail_open.to_string(),
        "0: Envoy's shared data does not fail, and 16 lost races in a row needs far more contention".into(),
        a.fail_open == 0,
    );
    let invalid = i.pushes.iter().filter(|p| !p.valid).count() as u64;
    let scan = scan_log(&i.settled.envoy_log);
    check(
        "no panic or critical log line",
        format!(
            "{} unexpected; {} traps; {} + {} lines for refused configs",
            scan.unexpected.len(),
            scan.traps,
            scan.refused_config,
            scan.refused_config_threads
        ),
        format!(
            "0 unexpected; traps = staged crashes ({staged}); per invalid push ({invalid}) 1 + at most {} (main + workers)",
            WORKERS + 1
        ),
        scan.unexpected.is_empty()
            && scan.traps == staged
            && scan.refused_config == invalid
            && scan.refused_config_threads <= invalid * u64::from(WORKERS + 1),
    );
    // A request to a dead VM's worker past the backoff rebuilds it (Envoy counts a reload); a
    // configuration push that comes first builds the worker a new VM too, and Envoy counts no
    // reload then. Either way no request may meet a dead VM later than DEAD_VM_WINDOW_S after
    // its crash (see the dead-VM check), the visits after the load included.
    let reloads = stat(s, "wasm.surgeguard.vm_reload_success");
    let visits_answered = i.visits.iter().filter(|v| matches!(v, Some(200 | 429 | 503))).count();
    check(
        "every crashed VM was replaced",
        format!(
            "{staged} staged ({} skipped), {} answered 503; {reloads} replaced on a request; {visits_answered} of {} visits after the load answered, {} by a dead VM",
            i.crashes.len() as u64 - staged,
            i.crashes.iter().filter(|c| c.status == Some(503)).count(),
            i.visits.len(),
            a.dead_vm_unexplained,
        ),
        "staged >= 1, each crashing request 503, reloads <= staged; every visit answered, none by a dead VM".into(),
        staged >= 1
            && reloads <= staged
            && i.crashes.iter().filter(|c| c.staged).all(|c| c.status == Some(503))
            && visits_answered == i.visits.len()
            && a.dead_vm_unexplained == 0,
    );
    let valid = i.pushes.len() as u64 - invalid;
    let refused_ok = i.pushes.iter().filter(|p| !p.valid && !p.accepted).count() as u64;
    let taken_ok = i.pushes.iter().filter(|p| p.valid && p.accepted).count() as u64;
    let rejected = stat(s, "wasmcustom.surgeguard.config_rejected");
    let ecds = |n: &str| stat(s, &format!("extension_config_discovery.http_filter.surgeguard.{n}"));
    check(
        "every refused config counted",
        format!(
            "{invalid} invalid pushed, {refused_ok} refused; config_rejected {rejected}, ECDS update_rejected {}; {valid} valid pushed, {taken_ok} taken",
            ecds("update_rejected")
        ),
        "config_rejected = ECDS rejections = invalid pushes >= 1; every valid push taken".into(),
        invalid >= 1 && refused_ok == invalid && rejected == invalid && ecds("update_rejected") == invalid && taken_ok == valid,
    );
    check(
        "every fault took place",
        format!(
            "client aborts {}, upstream resets {}, upstream timeouts {}, key overflows {} (max_keys {MAX_KEYS})",
            a.client_aborts, a.upstream_resets, a.upstream_timeouts, a.key_overflow
        ),
        "each >= 1".into(),
        a.client_aborts > 0 && a.upstream_resets > 0 && a.upstream_timeouts > 0 && a.key_overflow > 0,
    );
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(unix_s: f64) -> Crash {
        Crash { at_s: 0.0, unix_s, staged: true, status: Some(503) }
    }

    #[test]
    fn dead_vm_answers_are_told_apart_by_when_their_request_started() {
        let stats = [
            ("http.storefront.downstream_rq_total", 8),
            ("wasmcustom.surgeguard.class.critical.admitted", 3),
            ("wasmcustom.surgeguard.class.sheddable.rate_limited", 1),
            ("wasmcustom.surgeguard.class.sheddable.shadow_rate_limited", 0),
            ("wasmcustom.surgeguard.class.standard.shed", 1),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into();
        let access_log = [
            "99.000|200|via_upstream|-|-",
            "99.500|429|-|-|limit=storefront; class=sheddable",
            "99.600|503|-|-|shed=in_flight; class=standard",
            "100.000|503|wasm_fail_stream|-|-", // the crashing request
            "100.300|503|wasm_fail_stream|-|-", // arrived before the VM was rebuilt
            "98.400|503|wasm_fail_stream|-|-",  // in flight at the crash: decided
            "0|0|downstream_remote_disconnect|DC|-",
            "150.000|503|wasm_fail_stream|-|-", // long after: unexplained
        ]
        .join("\n");
        let settled = Settled { stats, access_log, envoy_log: String::new() };
        let a = account(&settled, &[crash(100.0)]);
        assert_eq!((a.dead_vm_arrived, a.dead_vm_in_flight, a.dead_vm_unexplained), (2, 1, 1));
        assert_eq!((a.logged_rate_limited, a.logged_shed, a.rate_limited, a.shed), (1, 1, 1, 1));
        assert_eq!(a.client_aborts, 1);
        assert_eq!(a.reached_filter, 8 - 3, "the arrived and the unexplained never reached the filter");
        assert_eq!(a.decided(), a.reached_filter);
    }

    #[test]
    fn envoys_lines_for_a_refused_configuration_are_not_unexpected() {
        let log = "[t][1][critical][wasm] [source/extensions/common/wasm/wasm.cc:626] Plugin surgeguard failed to load\n\
                   [t][2][critical][wasm] [source/extensions/common/wasm/wasm.cc:479] Plugin configured to fail closed failed to load\n\
                   [t][3][error][wasm] [wasm_vm.cc:38] Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable\n\
                   [t][4][critical][main] something else\n\
                   [t][5][error][wasm] wasm log surgeguard: panicked at src/x.rs:1:1";
        let scan = scan_log(log);
        assert_eq!((scan.refused_config, scan.refused_config_threads, scan.traps), (1, 1, 1));
        assert_eq!(scan.unexpected.len(), 2, "{:?}", scan.unexpected);
    }
}
