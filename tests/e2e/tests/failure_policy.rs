//! What Envoy does when a wasm module fails at run time, for each `failure_policy`.
//!
//! surgeguard itself is written not to crash (no panics on the request path, storage failures
//! fail open inside the module), so the crash is staged with a tiny proxy-wasm module built
//! below, byte by byte: it refuses every request with 429 (an always-on limiter, so one can see
//! whether it is still in the path) and traps (`unreachable`) on the 2nd request of each VM.
//! One worker, so one VM handles every request in order:
//!   request 1: 429 from the module; request 2: the VM crashes and that request gets 503
//!   (under every policy); then, per policy:
//! - FAIL_CLOSED: every later request gets 503 from Envoy, forever (until a config change);
//! - FAIL_OPEN:   every later request skips the filter and reaches the upstream: protection off;
//! - FAIL_RELOAD: a fresh VM replaces the crashed one on a later request (at most once per
//!   `reload_config.backoff.base_interval`); requests in between get 503.

use std::time::Duration;
use surgeguard_harness::client::{self, Req};
use surgeguard_harness::envoy::{Bootstrap, Envoy, Options};
use surgeguard_harness::upstream::Upstream;

// --- A minimal proxy-wasm (ABI 0.2.1) module, assembled by hand ---------------------------------

fn leb_u32(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn leb_i32(mut v: i32, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

fn name(s: &str, out: &mut Vec<u8>) {
    leb_u32(s.len() as u32, out);
    out.extend_from_slice(s.as_bytes());
}

fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
    out.push(id);
    leb_u32(body.len() as u32, out);
    out.extend(body);
}

/// A vector of already-encoded items.
fn vector(items: Vec<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    leb_u32(items.len() as u32, &mut out);
    for i in items {
        out.extend(i);
    }
    out
}

fn func_type(params: usize, results: usize) -> Vec<u8> {
    let mut t = vec![0x60];
    leb_u32(params as u32, &mut t);
    t.extend(std::iter::repeat_n(0x7f, params)); // i32
    leb_u32(results as u32, &mut t);
    t.extend(std::iter::repeat_n(0x7f, results));
    t
}

fn body(instructions: Vec<u8>) -> Vec<u8> {
    let mut b = vec![0x00]; // no locals
    b.extend(instructions);
    b.push(0x0b); // end
    let mut out = Vec::new();
    leb_u32(b.len() as u32, &mut out);
    out.extend(b);
    out
}

fn i32_const(v: i32) -> Vec<u8> {
    let mut out = vec![0x41];
    leb_i32(v, &mut out);
    out
}

/// Refuses every request with 429 "denied"; traps on the `crash_on`-th request of its VM.
fn crasher_module(crash_on: i32) -> Vec<u8> {
    const BODY_AT: i32 = 16;
    const BODY: &[u8] = b"denied";
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 send_local_response (8 x i32 -> i32), 1 () -> (), 2 (i32) -> i32,
    // 3 (i32, i32) -> (), 4 (i32, i32) -> i32, 5 (i32, i32, i32) -> i32.
    section(
        1,
        vector(vec![
            func_type(8, 1),
            func_type(0, 0),
            func_type(1, 1),
            func_type(2, 0),
            func_type(2, 1),
            func_type(3, 1),
        ]),
        &mut m,
    );
    let mut import = Vec::new();
    name("env", &mut import);
    name("proxy_send_local_response", &mut import);
    import.extend([0x00, 0x00]); // a function of type 0
    section(2, vector(vec![import]), &mut m);
    // Functions 1..=6 (0 is the import): abi marker, allocate, context_create, vm_start,
    // configure, request_headers.
    section(3, vector(vec![vec![1], vec![2], vec![3], vec![4], vec![4], vec![5]]), &mut m);
    section(5, vector(vec![vec![0x00, 0x01]]), &mut m); // one memory, 1 page
    let mut global = vec![0x7f, 0x01]; // mutable i32: requests seen by this VM
    global.extend(i32_const(0));
    global.push(0x0b);
    section(6, vector(vec![global]), &mut m);
    let export = |n: &str, kind: u8, index: u32| {
        let mut e = Vec::new();
        name(n, &mut e);
        e.push(kind);
        leb_u32(index, &mut e);
        e
    };
    section(
        7,
        vector(vec![
            export("memory", 0x02, 0),
            export("proxy_abi_version_0_2_1", 0x00, 1),
            export("proxy_on_memory_allocate", 0x00, 2),
            export("proxy_on_context_create", 0x00, 3),
            export("proxy_on_vm_start", 0x00, 4),
            export("proxy_on_configure", 0x00, 5),
            export("proxy_on_request_headers", 0x00, 6),
        ]),
        &mut m,
    );
    let mut on_request_headers = Vec::new();
    // seen += 1; if seen == crash_on { unreachable }
    on_request_headers.extend([0x23, 0x00]);
    on_request_headers.extend(i32_const(1));
    on_request_headers.extend([0x6a, 0x24, 0x00, 0x23, 0x00]);
    on_request_headers.extend(i32_const(crash_on));
    on_request_headers.extend([0x46, 0x04, 0x40, 0x00, 0x0b]);
    // send_local_response(429, details 0/0, body, headers 0/0, grpc_status -1); pause.
    for v in [429, 0, 0, BODY_AT, BODY.len() as i32, 0, 0, -1] {
        on_request_headers.extend(i32_const(v));
    }
    on_request_headers.extend([0x10, 0x00, 0x1a]); // call 0; drop
    on_request_headers.extend(i32_const(1)); // Action::Pause
    section(
        10,
        vector(vec![
            body(vec![]),
            body(i32_const(4096)), // allocations: never asked for; a fixed spare area
            body(vec![]),
            body(i32_const(1)),
            body(i32_const(1)),
            body(on_request_headers),
        ]),
        &mut m,
    );
    let mut data = vec![0x00];
    data.extend(i32_const(BODY_AT));
    data.push(0x0b);
    leb_u32(BODY.len() as u32, &mut data);
    data.extend_from_slice(BODY);
    section(11, vector(vec![data]), &mut m);
    m
}

// --- The runs -----------------------------------------------------------------------------------

struct Run {
    envoy: Envoy,
    upstream: Upstream,
    port: u16,
    _dir: tempfile::TempDir,
}

fn start(policy: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("crasher.wasm");
    std::fs::write(&wasm, crasher_module(2)).expect("write module");
    let upstream = Upstream::start(Duration::ZERO).expect("upstream starts");
    let mut bootstrap = Bootstrap::new(upstream.port, Some("{}"));
    bootstrap.wasm = wasm;
    bootstrap.failure_policy = policy.to_string();
    // With FAIL_RELOAD the harness adds the shipped configs' backoff (one reload per 100 ms).
    let yaml = bootstrap.yaml();
    assert_eq!(yaml.contains("base_interval: 0.1s"), policy == "FAIL_RELOAD");
    let opts = Options { concurrency: 1, ..Options::default() };
    let envoy = Envoy::start(&yaml, &opts).unwrap_or_else(|e| panic!("envoy did not start: {}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    assert_ne!(port, 0);
    Run { envoy, upstream, port, _dir: dir }
}

fn status(run: &Run) -> u16 {
    match client::request(run.port, &Req::get("/products/1")) {
        Ok(r) => r.status,
        Err(e) => panic!("no response: {e}\n--- envoy log ---\n{}", run.envoy.log()),
    }
}

/// Request 1 is refused by the module (so it is loaded and in the path), request 2 crashes it.
/// Under every policy the request that was being handled when the VM died gets 503.
fn crash(run: &Run) {
    assert_eq!(status(run), 429, "the module answers before it crashes");
    assert_eq!(status(run), 503, "the request in hand when the VM dies");
    let log = run.envoy.log();
    assert!(
        log.contains("Function: proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"),
        "Envoy logs the VM's crash (a Rust panic in the module looks the same):\n{log}"
    );
}

#[test]
fn fail_closed_answers_503_to_every_request_after_a_crash() {
    let run = start("FAIL_CLOSED");
    crash(&run);
    for _ in 0..5 {
        assert_eq!(status(&run), 503, "the VM stays dead: every request refused");
    }
    assert_eq!(run.upstream.stats.requests(), 0, "nothing reached the upstream");
}

#[test]
fn fail_open_lets_every_request_through_unprotected_after_a_crash() {
    let run = start("FAIL_OPEN");
    crash(&run);
    for _ in 0..5 {
        assert_eq!(status(&run), 200, "the filter is skipped: the upstream answers");
    }
    assert!(run.upstream.stats.requests() >= 5, "traffic reaches the upstream unchecked");
}

#[test]
fn fail_reload_puts_a_fresh_vm_back_in_the_path_after_a_crash() {
    let run = start("FAIL_RELOAD");
    crash(&run);
    // Past the backoff, the next request builds a new VM: the limiter answers again (429),
    // and the one after crashes that VM in turn; it is replaced again.
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(status(&run), 429, "round {round}: a fresh VM refuses again");
        assert_ne!(status(&run), 200, "round {round}: the crashing request is not let through");
    }
    assert_eq!(run.upstream.stats.requests(), 0, "the limiter never dropped out of the path");
    let reloads = run.envoy.stats().get("wasm.surgeguard.vm_reload_success").copied();
    assert!(reloads >= Some(3), "Envoy counts each reload: {reloads:?}");
}
