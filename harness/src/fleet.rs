//! Fleet-wide limits end to end: Redis and `surgeguard-rls` with one Limitador limit, the shipped
//! `envoy/fleet/envoy.yaml` pointed at them (any plugin configuration in place of the shipped
//! one), and where the service's fixed windows begin and end, read from the service itself.
//!
//! Limitador counts fixed windows: a counter is created by the first hit after the last one
//! expired and lives `seconds`. So a fleet's windows follow one another (its Envoys renew their
//! leases as a window ends) but are not aligned to the wall clock: a test learns where they are
//! from `duration_until_reset`, asking more hits than the limit holds, which counts nothing.

use crate::envoy::{json_string, with_native_filter, Build, Envoy, Localise, Options};
use crate::rls::{self, Counters, RateLimitService, Redis};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The shipped fleet bootstrap.
pub fn shipped_bootstrap() -> PathBuf {
    crate::repo_root().join("envoy/fleet/envoy.yaml")
}

/// The shipped plugin configuration that bootstrap embeds word for word.
pub fn shipped_plugin_config() -> PathBuf {
    crate::repo_root().join("envoy/fleet/storefront.json")
}

/// The indentation of the plugin configuration inside the bootstrap's `value: |` block.
const CONFIG_INDENT: usize = 20;

fn indented(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| if l.is_empty() { String::new() } else { format!("{pad}{l}") }).collect::<Vec<_>>().join("\n")
}

/// `envoy/fleet/envoy.yaml` on this machine: free listener and admin ports, the upstream at
/// `upstream_port`, the rate limit service at `rls_port` (shipped: 8081), the module under test
/// (the native build's filter in the wasm filter's place with `SURGEGUARD_BUILD=native`), and
/// `plugin_json` (`None`: the shipped envoy/fleet/storefront.json) as its configuration.
pub fn bootstrap(upstream_port: u16, rls_port: u16, plugin_json: Option<&str>) -> Result<String, String> {
    let mut localise = Localise::local(upstream_port);
    localise.replacements.push(("port_value: 8081".into(), format!("port_value: {rls_port}")));
    if let Some(json) = plugin_json {
        let path = shipped_plugin_config();
        let shipped = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // One line: a block scalar keeps it as written, whatever the JSON's own layout.
        let one_line = json.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        localise.replacements.push((indented(shipped.trim_end(), CONFIG_INDENT), indented(&one_line, CONFIG_INDENT)));
    }
    let yaml = localise.load(&shipped_bootstrap())?;
    if Build::from_env() == Build::Wasm {
        return Ok(yaml);
    }
    let json = match plugin_json {
        Some(json) => json.to_string(),
        None => std::fs::read_to_string(shipped_plugin_config()).map_err(|e| e.to_string())?,
    };
    with_native_filter(&yaml, &crate::native_path(), &json)
}

/// One Envoy of the fleet (see [`bootstrap`]) with `workers` workers.
pub fn start_envoy(
    upstream_port: u16,
    rls_port: u16,
    plugin_json: Option<&str>,
    workers: u32,
) -> Result<Envoy, String> {
    let yaml = bootstrap(upstream_port, rls_port, plugin_json)?;
    let opts = Options { concurrency: workers, ..Options::default() };
    Envoy::start(&yaml, &opts).map_err(|e| format!("envoy did not start: {}\n--- envoy log ---\n{}", e.message, e.log))
}

/// Limitador's limit for a surgeguard fleet limit named `limit` (default descriptor
/// `surgeguard_limit=<limit>`): `max_value` hits per `seconds`, in namespace `domain`.
pub fn limitador_limit(domain: &str, limit: &str, max_value: u64, seconds: u64) -> String {
    format!(
        r#"- namespace: {domain}
  max_value: {max_value}
  seconds: {seconds}
  conditions: ["descriptors[0].surgeguard_limit == '{limit}'"]
  variables: []
"#
    )
}

/// A plugin configuration's fleet link as JSON (`"fleet": {...}`'s value).
pub fn fleet_json(cluster: &str, domain: &str, local_share: f64, timeout_ms: u64) -> String {
    format!(
        r#"{{"cluster": {}, "domain": {}, "local_share": {local_share}, "timeout_ms": {timeout_ms}}}"#,
        json_string(cluster),
        json_string(domain)
    )
}

/// The rate limit service of a fleet: Redis and `surgeguard-rls` over it; both stop on drop.
pub struct Service {
    // Field order: the service stops before its Redis.
    pub rls: RateLimitService,
    pub redis: Redis,
}

impl Service {
    /// Redis, then the service with `limits_yaml`; a call waits on Redis at most `redis_timeout`.
    pub fn start(limits_yaml: &str, redis_timeout: Duration) -> Result<Service, String> {
        let redis = Redis::start()?;
        let rls = RateLimitService::start_with_timeout(Counters::Redis(&redis), limits_yaml, redis_timeout)?;
        Ok(Service { rls, redis })
    }

    pub fn port(&self) -> u16 {
        self.rls.port()
    }
}

/// One reading of the service's current window for a descriptor: it ends between `end_lo` and
/// `end_hi` (the call's start and end plus `duration_until_reset`), with `remaining` unleased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowReading {
    pub end_lo: Instant,
    pub end_hi: Instant,
    pub remaining: u64,
}

/// Reads the window of `descriptor` in `domain` without taking anything: asks `capacity + 1`
/// hits, which the service refuses and does not count. `None`: no answer, or no window (no
/// counter), or one with nothing used yet (a refused call may report a fresh window).
pub fn read_window(port: u16, domain: &str, descriptor: &[(&str, &str)], capacity: u64) -> Option<WindowReading> {
    let hits = u32::try_from(capacity + 1).unwrap_or(u32::MAX);
    let t0 = Instant::now();
    let reply = rls::call(port, domain, &[descriptor], hits).ok()?;
    let t1 = Instant::now();
    let status = reply.result.ok()?.statuses.into_iter().next()?;
    let until_reset = status.duration_until_reset?;
    if status.limit_remaining >= capacity {
        return None;
    }
    Some(WindowReading { end_lo: t0 + until_reset, end_hi: t1 + until_reset, remaining: status.limit_remaining })
}

/// Reads the window every `period` on a thread, until [`WindowSampler::finish`].
pub struct WindowSampler {
    stop: Arc<AtomicBool>,
    readings: Arc<Mutex<Vec<WindowReading>>>,
    thread: Option<JoinHandle<()>>,
}

impl WindowSampler {
    pub fn start(port: u16, domain: &str, descriptor: &[(&str, &str)], capacity: u64, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let readings = Arc::new(Mutex::new(Vec::new()));
        let (domain, owned): (String, Vec<(String, String)>) =
            (domain.to_string(), descriptor.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let (s, r) = (Arc::clone(&stop), Arc::clone(&readings));
        let thread = std::thread::spawn(move || {
            let descriptor: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            while !s.load(Ordering::SeqCst) {
                if let Some(reading) = read_window(port, &domain, &descriptor, capacity) {
                    if let Ok(mut all) = r.lock() {
                        all.push(reading);
                    }
                }
                std::thread::sleep(period);
            }
        });
        WindowSampler { stop, readings, thread: Some(thread) }
    }

    /// Stops sampling; the window ends seen (see [`window_ends`]).
    pub fn finish(mut self, window: Duration) -> Vec<WindowEnd> {
        self.halt();
        let readings = self.readings.lock().map(|r| r.clone()).unwrap_or_default();
        window_ends(&readings, window)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WindowSampler {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Where one window ended: between `lo` and `hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowEnd {
    pub lo: Instant,
    pub hi: Instant,
}

/// The distinct window ends among `readings`, in time order: readings of one window (their ends
/// less than half a `window` apart) narrow its end to what they all allow.
pub fn window_ends(readings: &[WindowReading], window: Duration) -> Vec<WindowEnd> {
    let mut sorted: Vec<WindowReading> = readings.to_vec();
    sorted.sort_by_key(|r| r.end_lo);
    let mut out: Vec<WindowEnd> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.end_lo.saturating_duration_since(last.lo) < window / 2 => {
                // Every reading's interval holds the true end; keep their intersection (or, if
                // clocks disagree by a hair, their union).
                let (lo, hi) = (last.lo.max(r.end_lo), last.hi.min(r.end_hi));
                *last =
                    if lo <= hi { WindowEnd { lo, hi } } else { WindowEnd { lo: last.lo, hi: last.hi.max(r.end_hi) } };
            }
            _ => out.push(WindowEnd { lo: r.end_lo, hi: r.end_hi }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_of_one_window_narrow_its_end_and_windows_stay_apart() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let reading = |lo: u64, hi: u64| WindowReading { end_lo: t + ms(lo), end_hi: t + ms(hi), remaining: 1 };
        let ends = window_ends(&[reading(1010, 1030), reading(995, 1020), reading(2040, 2050)], ms(1000));
        assert_eq!(
            ends,
            vec![WindowEnd { lo: t + ms(1010), hi: t + ms(1020) }, WindowEnd { lo: t + ms(2040), hi: t + ms(2050) }]
        );
    }

    #[test]
    fn the_shipped_fleet_bootstrap_is_pointed_at_the_service_and_takes_a_test_configuration() {
        let shipped = bootstrap(4321, 4322, None).unwrap();
        assert!(shipped.contains("port_value: 4322") && !shipped.contains("port_value: 8081"));
        assert!(shipped.contains("\"local_share\": 0.34"));
        let json = r#"{"limits": [{"name": "x", "tokens_per_second": 1, "burst": 1}]}"#;
        let custom = bootstrap(4321, 4322, Some(json)).unwrap();
        assert!(custom.contains(&format!("{}{json}", " ".repeat(CONFIG_INDENT))));
        assert!(!custom.contains("\"local_share\": 0.34"));
    }
}
