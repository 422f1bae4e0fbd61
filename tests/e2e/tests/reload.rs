//! Live tuning through ECDS, end to end: the shipped `envoy/ecds/envoy.yaml` (ports, paths and
//! module rewritten for this machine) in a real Envoy with 2 workers, and every update made the
//! way an operator makes it, with `scripts/surgeguard-apply` (validate, render, rename).
//! Bad updates bypass the helper's validation (SURGEGUARD_CHECK=true), as a hand edit would.
//! With `SURGEGUARD_BUILD=native` the resource is the native build's
//! (`envoy/native/surgeguard.template.yaml`), the rest as shipped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_harness::envoy::{json_string, Build, Envoy, Localise, Options};
use surgeguard_harness::upstream::Upstream;
use surgeguard_harness::{native_path, repo_root};

/// An Envoy fed by ECDS from a watched directory of its own.
struct Live {
    // Field order is drop order: Envoy stops before its upstream and its files go.
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
    dir: tempfile::TempDir,
}

/// The shipped bootstrap pointed at this machine: free ports, `upstream_port`, `live_dir`
/// (and, for the native build, the resource type it accepts).
fn ecds_bootstrap(live_dir: &Path, upstream_port: u16) -> String {
    let mut localise = Localise::ecds(upstream_port, live_dir);
    if Build::from_env() == Build::Native {
        localise.replacements.push((
            "envoy.extensions.filters.http.wasm.v3.Wasm".into(),
            "envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter".into(),
        ));
    }
    localise.load(&repo_root().join("envoy/ecds/envoy.yaml")).unwrap_or_else(|e| panic!("envoy/ecds/envoy.yaml: {e}"))
}

/// The shipped ECDS resource template of the build under test, with its module.
fn template() -> String {
    let (path, localise) = match Build::from_env() {
        Build::Wasm => ("envoy/ecds/surgeguard.template.yaml", Localise::module()),
        Build::Native => {
            let so = format!("filename: {}", json_string(&native_path().display().to_string()));
            let module = ("filename: dist/libsurgeguard_native.so".to_string(), so);
            ("envoy/native/surgeguard.template.yaml", Localise { replacements: vec![module], ..Localise::default() })
        }
    };
    localise.load(&repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

impl Live {
    fn start(initial_json: &str) -> Live {
        Live::start_with(initial_json, Duration::ZERO, true)
    }

    /// `validate: false` lets a refused initial configuration through to Envoy.
    fn start_with(initial_json: &str, upstream_delay: Duration, validate: bool) -> Live {
        let dir = tempfile::tempdir().expect("tempdir");
        // The shipped template, with the module under test.
        std::fs::write(dir.path().join("template.yaml"), template()).expect("write");
        std::fs::create_dir(dir.path().join("live")).expect("live dir");
        // Envoy reads the resource at start-up: it must exist first.
        let (ok, out) = apply(dir.path(), initial_json, validate, None);
        assert!(ok, "the initial configuration applies:\n{out}");
        let upstream = Upstream::start(upstream_delay).expect("upstream starts");
        let yaml = ecds_bootstrap(&dir.path().join("live"), upstream.port);
        let envoy = Envoy::start(&yaml, &Options::default())
            .unwrap_or_else(|e| panic!("envoy did not start: {}\n{}", e.message, e.log));
        let port = envoy.listener_port();
        assert_ne!(port, 0);
        Live { envoy, upstream, port, dir }
    }

    fn resource(&self) -> PathBuf {
        self.dir.path().join("live/surgeguard.yaml")
    }

    /// Runs scripts/surgeguard-apply on `json` against this Envoy: (exit 0?, its output).
    fn apply(&self, json: &str, validate: bool) -> (bool, String) {
        let (ok, out) = apply(self.dir.path(), json, validate, Some(self.envoy.admin_port));
        if ok {
            // Envoy counted the update; its workers pick it up from their event loops.
            std::thread::sleep(Duration::from_millis(100));
        }
        (ok, out)
    }

    fn counter(&self, name: &str) -> u64 {
        self.envoy.stats().get(name).copied().unwrap_or(0)
    }
}

/// scripts/surgeguard-apply with the template and live directory under `dir`; with
/// `admin_port`, it waits for Envoy's verdict. `validate: false` skips its validation.
fn apply(dir: &Path, json: &str, validate: bool, admin_port: Option<u16>) -> (bool, String) {
    let config = dir.join(format!("update-{}.json", unique()));
    std::fs::write(&config, json).expect("write config");
    let mut cmd = Command::new(repo_root().join("scripts/surgeguard-apply"));
    cmd.arg("--template").arg(dir.join("template.yaml")).arg("--resource").arg(dir.join("live/surgeguard.yaml"));
    if let Some(port) = admin_port {
        cmd.args(["--admin", &format!("127.0.0.1:{port}")]);
    }
    if !validate {
        cmd.env("SURGEGUARD_CHECK", "true");
    }
    let out = cmd.arg(&config).output().expect("run scripts/surgeguard-apply");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn unique() -> u64 {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

// --- Raw HTTP/1.1 on one kept-alive connection, so a dropped connection cannot go unnoticed ---

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Conn {
    fn open(port: u16) -> Conn {
        let writer = TcpStream::connect(("127.0.0.1", port)).expect("connect to Envoy");
        writer.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let reader = BufReader::new(writer.try_clone().expect("clone"));
        Conn { writer, reader }
    }

    fn get(&mut self, path: &str) -> Result<Reply, String> {
        write!(self.writer, "GET {path} HTTP/1.1\r\nHost: storefront\r\n\r\n").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line (connection closed?): {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).map_err(|e| e.to_string())?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let reply = Reply { status, headers };
        let length: usize = reply.header("content-length").and_then(|v| v.parse().ok()).ok_or("no content-length")?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok(reply)
    }

    /// Statuses of `n` requests to `path`, in order.
    fn statuses(&mut self, path: &str, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.get(path).expect("a reply on the same connection").status).collect()
    }
}

fn global(burst: u32) -> String {
    // One token per 10 s: nothing refills while a test runs, so counts are exact.
    format!(r#"{{"limits": [{{"name": "storefront", "tokens_per_second": 0.1, "burst": {burst}}}]}}"#)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|&&s| s == status).count()
}

#[test]
fn bad_updates_are_refused_with_the_checkers_messages_and_the_good_config_keeps_enforcing() {
    let live = Live::start(&global(4));
    let mut conn = Conn::open(live.port);
    assert_eq!(conn.statuses("/products", 6), [200, 200, 200, 200, 429, 429]);

    let bad_updates = [
        r#"{"limits": [{"name": "storefront", "tokens_per_second": 0.1, "burst": 4}"#, // bad JSON
        r#"{"limits": [{"name": "storefront", "tokens_per_second": 0.1, "burst": 0}]}"#, // bad value
        r#"{"limits": [{"name": "storefront", "tokens_per_secnd": 50, "burst": 400}]}"#, // typo
    ];
    for (i, bad) in bad_updates.iter().enumerate() {
        let errors = surgeguard::config::parse(bad.as_bytes()).expect_err("a refused configuration");

        // Through the helper: refused by the same validator, nothing written.
        let before = std::fs::read(live.resource()).expect("resource");
        let (ok, out) = live.apply(bad, true);
        assert!(!ok, "the helper refuses update {i}:\n{out}");
        for e in &errors {
            assert!(out.contains(&e.to_string()), "the helper prints `{e}`:\n{out}");
        }
        assert_eq!(std::fs::read(live.resource()).expect("resource"), before, "untouched");

        // Around the helper's validation: Envoy refuses it, with the same messages.
        let (ok, out) = live.apply(bad, false);
        assert!(!ok && out.contains("REJECTED"), "Envoy rejects update {i}:\n{out}");
        let log = live.envoy.log();
        for e in &errors {
            let line = format!("surgeguard: configuration refused: {e}");
            assert!(log.contains(&line), "Envoy's log holds `{line}`:\n{log}");
        }
        assert_eq!(live.envoy.metric("surgeguard.config_rejected"), i as u64 + 1);
        assert_eq!(live.counter("extension_config_discovery.http_filter.surgeguard.update_rejected"), i as u64 + 1);

        // The good configuration still enforces, on the same connection: its drained bucket.
        let reply = conn.get("/products").expect("same connection");
        assert_eq!(reply.status, 429, "still limited after bad update {i}");
        assert_eq!(reply.header("ratelimit-policy"), Some(r#""storefront";q=4;w=40"#));
    }

    // The same bad file renamed in again: Envoy sees the content it last received and counts
    // a success without building anything (the helper says so); the good one still enforces.
    let (ok, out) = live.apply(bad_updates[2], false);
    assert!(ok && out.contains("already had exactly this content"), "{out}");
    assert_eq!(conn.get("/products").expect("same connection").status, 429);

    // A good update applies at once: the changed limit starts from a full bucket of 7.
    let (ok, out) = live.apply(&global(7), true);
    assert!(ok && out.contains("accepted"), "{out}");
    let after = conn.statuses("/products", 9);
    assert_eq!(after, [200, 200, 200, 200, 200, 200, 200, 429, 429], "the new burst of 7");
    let reply = conn.get("/products").expect("same connection");
    assert_eq!(reply.header("ratelimit-policy"), Some(r#""storefront";q=7;w=70"#));
    assert_eq!(live.upstream.stats.requests(), 11, "4 before, 7 after");
}

#[test]
fn an_unchanged_limit_keeps_its_bucket_across_a_reload_and_a_changed_one_takes_effect_at_once() {
    let config = |api_burst: u32| {
        format!(
            r#"{{"limits": [
                {{"name": "browse", "tokens_per_second": 0.1, "burst": 5, "match": {{"path_prefix": "/products"}}}},
                {{"name": "api", "tokens_per_second": 0.1, "burst": {api_burst}, "match": {{"path_prefix": "/api/"}}}}
            ]}}"#
        )
    };
    let live = Live::start(&config(3));
    let mut conn = Conn::open(live.port);
    assert_eq!(count(&conn.statuses("/products", 7), 200), 5, "browse drained");
    assert_eq!(count(&conn.statuses("/api/cart", 5), 200), 3, "api drained");

    let (ok, out) = live.apply(&config(6), true);
    assert!(ok, "{out}");
    // browse is unchanged: its empty bucket survived the reload (a new one would admit 5).
    assert_eq!(conn.statuses("/products", 3), [429, 429, 429], "browse still empty");
    // api changed (burst 3 -> 6): a fresh, full bucket of the new size, at once.
    assert_eq!(count(&conn.statuses("/api/cart", 8), 200), 6, "api: the new burst");
    assert_eq!(live.upstream.stats.requests(), 5 + 3 + 6);
}

#[test]
fn requests_in_flight_stay_counted_across_a_reload() {
    let config = |unrelated_burst: u32| {
        format!(
            r#"{{"limits": [{{"name": "unrelated", "tokens_per_second": 100, "burst": {unrelated_burst},
                 "match": {{"path": "/never"}}}}],
                 "concurrency": {{"max_in_flight": 2}}}}"#
        )
    };
    // The upstream holds each request 4 s: long enough for the reload to land while both are in flight.
    let live = Live::start_with(&config(10), Duration::from_millis(4000), true);
    // Two slow requests fill the in-flight limit.
    let port = live.port;
    let slow: Vec<_> =
        (0..2).map(|_| std::thread::spawn(move || Conn::open(port).get("/slow").map(|r| r.status))).collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while live.upstream.stats.in_flight() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(live.upstream.stats.in_flight(), 2, "two requests in flight");

    let (ok, out) = live.apply(&config(20), true);
    assert!(ok, "{out}");
    // The new configuration still counts the two requests the old one admitted.
    assert_eq!(live.upstream.stats.in_flight(), 2, "both still in flight after the reload");
    let reply = Conn::open(port).get("/third").expect("reply");
    assert_eq!(reply.status, 503, "shed: 2 already in flight");
    assert_eq!(reply.header("x-surgeguard"), Some("shed=in_flight; class=default"));
    for t in slow {
        assert_eq!(t.join().expect("thread").expect("slow reply"), 200);
    }
    // Their ends were counted too (released under the new configuration): room again.
    let deadline = Instant::now() + Duration::from_secs(2);
    while live.envoy.metric("surgeguard.in_flight") != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(Conn::open(port).get("/fourth").expect("reply").status, 200);
}

#[test]
fn reloads_under_load_drop_no_connection_and_fail_no_request() {
    let live = Live::start(r#"{"limits": [{"name": "storefront", "tokens_per_second": 100000, "burst": 100000}]}"#);
    let stop = Arc::new(AtomicBool::new(false));
    // Four kept-alive connections send back to back for the whole test.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (port, stop) = (live.port, Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = Conn::open(port);
                let mut statuses = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match conn.get("/products") {
                        Ok(r) => statuses.push(r.status),
                        Err(e) => return Err(format!("after {} replies: {e}", statuses.len())),
                    }
                }
                Ok(statuses)
            })
        })
        .collect();
    for burst in [100_001, 100_002, 100_003] {
        std::thread::sleep(Duration::from_millis(200));
        let json =
            format!(r#"{{"limits": [{{"name": "storefront", "tokens_per_second": 100000, "burst": {burst}}}]}}"#);
        let (ok, out) = live.apply(&json, true);
        assert!(ok, "{out}");
    }
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        let statuses = c.join().expect("thread").unwrap_or_else(|e| panic!("a connection broke: {e}"));
        assert!(statuses.iter().all(|&s| s == 200), "every request served: {statuses:?}");
        total += statuses.len();
    }
    assert!(total > 100, "load ran throughout: {total} requests");
    assert_eq!(live.counter("extension_config_discovery.http_filter.surgeguard.update_success"), 4);
}

#[test]
fn the_shipped_resource_is_the_example_rendered_by_the_helper() {
    let root = repo_root();
    let example = std::fs::read(root.join("envoy/ecds/surgeguard.json")).expect("example");
    surgeguard::config::parse(&example).expect("the example is valid");
    let out = Command::new(root.join("scripts/surgeguard-apply"))
        .args(["--dry-run", "envoy/ecds/surgeguard.json"])
        .current_dir(&root)
        .output()
        .expect("run scripts/surgeguard-apply");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shipped = std::fs::read(root.join("envoy/ecds/live/surgeguard.yaml")).expect("live resource");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&shipped),
        "envoy/ecds/live/surgeguard.yaml is stale: run scripts/surgeguard-apply envoy/ecds/surgeguard.json"
    );
    // What Envoy hands the module is the example, byte for byte, with the shipped failure policy.
    let doc: serde_yaml::Value = serde_yaml::from_slice(&shipped).expect("YAML");
    let config = &doc["resources"][0]["typed_config"]["config"];
    assert_eq!(config["configuration"]["value"].as_str().map(str::as_bytes), Some(&example[..]));
    assert_eq!(config["failure_policy"].as_str(), Some("FAIL_RELOAD"));
    assert_eq!(doc["resources"][0]["name"].as_str(), Some("surgeguard"));
}

#[test]
fn a_refused_configuration_at_start_up_passes_no_traffic_until_a_good_one_is_applied() {
    // No previous configuration to keep: the filter has none, and Envoy answers 500.
    let live = Live::start_with(r#"{"limits": [{"name": "storefront", "burst": 5}]}"#, Duration::ZERO, false);
    let mut conn = Conn::open(live.port);
    assert_eq!(conn.statuses("/products", 3), [500, 500, 500]);
    assert!(live.envoy.log().contains("surgeguard: configuration refused: limits[0].tokens_per_second: required"));
    assert_eq!(live.upstream.stats.requests(), 0, "nothing passed");
    let (ok, out) = live.apply(&global(2), true);
    assert!(ok, "{out}");
    assert_eq!(conn.statuses("/products", 3), [200, 200, 429], "enforcing from the good file on");
}
