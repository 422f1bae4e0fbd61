//! A real rate limit service for fleet-wide limits: Redis (Debian's `redis-server`) and
//! `surgeguard-rls` (rls/: Envoy's `ShouldRateLimit` over Limitador), both stopped on drop.
//!
//! Which binaries: `REDIS_SERVER_BIN`, else `redis-server` on PATH or in /usr/bin; and
//! `SURGEGUARD_RLS_BIN`, else `surgeguard-rls` in the machine-wide tools cache where
//! `./build.sh` builds it. Neither is ever fetched here: `./build.sh test` installs both.
//!
//! The service is reached through its own `call` subcommand, so this crate needs no gRPC stack.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn redis_server_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("REDIS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    on_path("redis-server").or_else(|| Some(PathBuf::from("/usr/bin/redis-server")).filter(|p| p.is_file())).ok_or_else(
        || "no redis-server found: run ./build.sh test (it installs Debian's) or set REDIS_SERVER_BIN".into(),
    )
}

pub fn rls_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("SURGEGUARD_RLS_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = tools_root().join("bin/surgeguard-rls");
    if bin.is_file() {
        return Ok(bin);
    }
    Err(format!("no {} : run ./build.sh test (it builds rls/ there) or set SURGEGUARD_RLS_BIN", bin.display()))
}

/// The machine-wide tools cache, as `./build.sh` computes it.
pub fn tools_root() -> PathBuf {
    if let Some(p) = std::env::var_os("SURGEGUARD_TOOLS") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("surgeguard/tools")
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// Sends `signal` (`STOP`, `CONT`, ...) to `pid`.
fn signal(pid: u32, signal: &str) -> Result<(), String> {
    let status = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("kill -{signal} {pid}: {s}")),
        Err(e) => Err(format!("kill -{signal} {pid}: {e}")),
    }
}

fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A port that was free a moment ago (Redis cannot bind port 0): a race with another process is
/// possible, so callers retry on a bind failure.
fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|e| format!("finding a free port: {e}"))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| format!("finding a free port: {e}"))
}

/// A Redis on 127.0.0.1 without persistence, in a temporary directory; killed on drop.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Result<Redis, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let mut redis = Redis { child: None, port: 0, dir };
        let mut last_error = String::new();
        for _ in 0..5 {
            redis.port = free_port()?;
            match redis.start_again() {
                Ok(()) => return Ok(redis),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start in 5 attempts: {last_error}"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes Redis (SIGSTOP): connections stay open, nothing answers. A real hang, not a refusal.
    pub fn pause(&self) -> Result<(), String> {
        signal(self.pid().ok_or("redis is stopped")?, "STOP")
    }

    pub fn resume(&self) -> Result<(), String> {
        signal(self.pid().ok_or("redis is stopped")?, "CONT")
    }

    /// Kills Redis: its connections are reset and its counters lost.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Starts Redis (again) on the same port and waits until it answers PING.
    pub fn start_again(&mut self) -> Result<(), String> {
        stop_child(&mut self.child);
        let bin = redis_server_bin()?;
        let log = self.dir.path().join("redis.log");
        // Readiness is read from this start's log (below): start it empty.
        fs::write(&log, "").map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                let said = fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited ({status}) on port {}: {said}", self.port));
            }
            // Its own log, not only PING: another test's Redis may have taken the port first.
            let ready = fs::read_to_string(&log).is_ok_and(|l| l.contains("Ready to accept connections"));
            if ready && ping(self.port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                stop_child(&mut self.child);
                return Err(format!("redis-server not answering PING on port {} after 10 s", self.port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL works on a paused (SIGSTOPped) process too.
        stop_child(&mut self.child);
    }
}

fn ping(port: u16) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// Where the service keeps its counters.
#[derive(Clone, Copy)]
pub enum Counters<'a> {
    Redis(&'a Redis),
    Memory,
}

/// A running `surgeguard-rls`; killed on drop.
pub struct RateLimitService {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl RateLimitService {
    /// The default `--redis-timeout-ms` of the binary.
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

    /// Starts the service on a free port with `limits_yaml` (Limitador's limits file format).
    pub fn start(counters: Counters<'_>, limits_yaml: &str) -> Result<RateLimitService, String> {
        RateLimitService::start_with_timeout(counters, limits_yaml, RateLimitService::DEFAULT_REDIS_TIMEOUT)
    }

    pub fn start_with_timeout(
        counters: Counters<'_>,
        limits_yaml: &str,
        redis_timeout: Duration,
    ) -> Result<RateLimitService, String> {
        let bin = rls_bin()?;
        let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        let limits = dir.path().join("limits.yaml");
        fs::write(&limits, limits_yaml).map_err(|e| format!("write limits: {e}"))?;
        let log_path = dir.path().join("rls.log");
        let log = fs::File::create(&log_path).map_err(|e| format!("log: {e}"))?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0", "--limits"]).arg(&limits);
        match counters {
            Counters::Redis(redis) => cmd.args(["--redis", &redis.url()]),
            Counters::Memory => cmd.arg("--memory"),
        };
        cmd.args(["--redis-timeout-ms", &redis_timeout.as_millis().to_string()]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let port = match child.stdout.take().map(first_line) {
            Some(rx) => rx.recv_timeout(Duration::from_secs(30)).ok().and_then(|line| listening_port(&line)),
            None => None,
        };
        let mut service = RateLimitService { child, port: port.unwrap_or(0), dir };
        if service.port == 0 {
            service.stop();
            return Err(format!("surgeguard-rls did not report its address: {}", service.log()));
        }
        Ok(service)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes the service (SIGSTOP): its clients see a hang, not a refusal.
    pub fn pause(&self) -> Result<(), String> {
        signal(self.child.id(), "STOP")
    }

    pub fn resume(&self) -> Result<(), String> {
        signal(self.child.id(), "CONT")
    }

    /// What it wrote on stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rls.log")).unwrap_or_default()
    }

    /// One `ShouldRateLimit` call taking `hits`, through `surgeguard-rls call`. `descriptors`:
    /// each a list of (key, value) entries. `Err` only if the call could not be made at all.
    pub fn call(&self, domain: &str, descriptors: &[&[(&str, &str)]], hits: u32) -> Result<Reply, String> {
        call(self.port, domain, descriptors, hits)
    }

    /// Stops the service; also done on drop.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the first line of `out` on a thread (so a silent child cannot block the caller), then
/// keeps draining it so the child never blocks on a full pipe.
fn first_line(out: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    rx
}

fn listening_port(line: &str) -> Option<u16> {
    line.strip_prefix("listening ")?.rsplit(':').next()?.trim().parse().ok()
}

/// The answer of one call, or the gRPC error it got, with the time the call took.
#[derive(Debug, Clone)]
pub struct Reply {
    /// From sending the request to the answer or error (the connection made beforehand).
    pub rpc_time: Duration,
    pub result: Result<Answer, GrpcError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `OK` or `OVER_LIMIT`.
    pub overall_code: String,
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DescriptorStatus {
    pub code: String,
    pub limit_remaining: u64,
    pub duration_until_reset: Option<Duration>,
    /// `requests_per_unit` of the limit that set this status; `None`: no limit applies.
    pub requests_per_unit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GrpcError {
    /// tonic's name of the status code, e.g. `Unavailable`.
    pub code: String,
    pub message: String,
}

/// One call to the service on `port` (see [`RateLimitService::call`]).
pub fn call(port: u16, domain: &str, descriptors: &[&[(&str, &str)]], hits: u32) -> Result<Reply, String> {
    let bin = rls_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["call", "--addr", &format!("127.0.0.1:{port}"), "--domain", domain, "--hits", &hits.to_string()]);
    for d in descriptors {
        let entries: Vec<String> = d.iter().map(|(k, v)| format!("{k}={v}")).collect();
        cmd.args(["--descriptor", &entries.join(",")]);
    }
    let out = cmd.output().map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_reply(text.trim())
        .ok_or_else(|| format!("surgeguard-rls call: {} {text} {}", out.status, String::from_utf8_lossy(&out.stderr)))
}

fn parse_reply(line: &str) -> Option<Reply> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let rpc_time = Duration::from_secs_f64(v["rpc_ms"].as_f64()? / 1000.0);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    if let Some(e) = v.get("error") {
        return Some(Reply {
            rpc_time,
            result: Err(GrpcError { code: text(&e["code"]), message: text(&e["message"]) }),
        });
    }
    let answer = v.get("answer")?;
    let statuses = answer["statuses"]
        .as_array()?
        .iter()
        .map(|s| DescriptorStatus {
            code: text(&s["code"]),
            limit_remaining: s["limit_remaining"].as_u64().unwrap_or(0),
            duration_until_reset: s["duration_until_reset_ms"].as_u64().map(Duration::from_millis),
            requests_per_unit: s["current_limit"]["requests_per_unit"].as_u64(),
        })
        .collect();
    Some(Reply { rpc_time, result: Ok(Answer { overall_code: text(&answer["overall_code"]), statuses }) })
}

/// A `clusters:` list item (under `static_resources.clusters`, indented as there) for the rate
/// limit service on 127.0.0.1:`port`: gRPC needs HTTP/2 to the upstream.
pub fn rls_cluster_yaml(name: &str, port: u16) -> String {
    format!(
        r#"  - name: {name}
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {{}}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_port_is_read_from_the_first_line() {
        assert_eq!(listening_port("listening 127.0.0.1:43121"), Some(43121));
        assert_eq!(listening_port("something else"), None);
    }

    #[test]
    fn a_reply_is_parsed_from_the_call_json() {
        let ok = parse_reply(
            r#"{"rpc_ms":1.5,"answer":{"overall_code":"OK","statuses":[{"code":"OK","limit_remaining":6,"duration_until_reset_ms":59000,"current_limit":{"name":"x","requests_per_unit":10,"unit":"MINUTE"}}]}}"#,
        )
        .unwrap();
        let answer = ok.result.unwrap();
        assert_eq!(answer.overall_code, "OK");
        assert_eq!(answer.statuses[0].limit_remaining, 6);
        assert_eq!(answer.statuses[0].requests_per_unit, Some(10));
        assert_eq!(answer.statuses[0].duration_until_reset, Some(Duration::from_secs(59)));
        let err = parse_reply(r#"{"rpc_ms":50.2,"error":{"code":"Unavailable","message":"m"}}"#).unwrap();
        assert_eq!(err.result.unwrap_err().code, "Unavailable");
        assert!(err.rpc_time >= Duration::from_millis(50));
    }
}
