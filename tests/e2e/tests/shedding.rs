//! Priority shedding in a real Envoy with 2 workers: reserves keep capacity for critical
//! traffic, and the in-flight limit holds at the upstream and never leaks.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};
use surgeguard_e2e::client::{self, open_loop, Load, Req};
use surgeguard_e2e::Stack;

#[test]
fn a_sheddable_flood_leaves_critical_traffic_its_reserved_share() {
    const RATE_PER_S: f64 = 200.0;
    const BURST: f64 = 200.0;
    const RESERVE: f64 = 0.5;
    let stack = Stack::start(&format!(
        r#"{{"classes": [{{"name": "critical"}}, {{"name": "sheddable", "reserve": {RESERVE}}}],
            "rules": [{{"match": {{"path_prefix": "/checkout"}}, "class": "critical"}}],
            "limits": [{{"name": "storefront", "tokens_per_second": {RATE_PER_S}, "burst": {BURST}}}]}}"#
    ));
    // ~1500 req/s of search with ~20 req/s of checkout mixed in (every 76th request).
    let duration = Duration::from_secs(5);
    let outcomes = open_loop(Load {
        port: stack.port,
        rate_per_s: 1520.0,
        duration,
        make: Arc::new(|n| {
            if n % 76 == 0 {
                (Req::get("/checkout").method("POST"), "critical")
            } else {
                (Req::get(&format!("/search?q={n}")), "sheddable")
            }
        }),
        timeout: Duration::from_secs(10),
        local_address: None,
    });
    let count =
        |label: &str, status: u16| outcomes.iter().filter(|o| o.label == label && o.status == Some(status)).count();
    let critical_total = outcomes.iter().filter(|o| o.label == "critical").count();
    let critical_pct = 100.0 * count("critical", 200) as f64 / critical_total as f64;
    let sheddable_admitted = count("sheddable", 200) as f64;
    // Sheddable may only take while half the burst remains: at most its half plus the refill.
    let sheddable_bound = (1.0 - RESERVE) * BURST + RATE_PER_S * duration.as_secs_f64();
    eprintln!(
        "critical admitted {critical_pct:.1}% of {critical_total}; sheddable admitted {sheddable_admitted} (bound {sheddable_bound}), refused {}",
        count("sheddable", 429)
    );
    assert!(critical_total >= 90);
    assert!(critical_pct >= 99.0, "critical admitted {critical_pct:.1}%");
    assert!(sheddable_admitted <= sheddable_bound, "{sheddable_admitted} > {sheddable_bound}");
    assert!(count("sheddable", 429) > 4_000, "the flood was shed");
    assert_eq!(
        stack.wait_metric("surgeguard.class.sheddable.rate_limited", count("sheddable", 429) as u64),
        count("sheddable", 429) as u64
    );
}

const MAX_IN_FLIGHT: u64 = 10;

fn in_flight_stack() -> Stack {
    Stack::start_with(
        Some(&format!(
            r#"{{"classes": [{{"name": "critical"}}, {{"name": "sheddable", "reserve": 0.5}}],
                "default_class": "critical",
                "rules": [{{"match": {{"path_prefix": "/search"}}, "class": "sheddable"}}],
                "concurrency": {{"max_in_flight": {MAX_IN_FLIGHT}}}}}"#
        )),
        Duration::from_millis(200),
        2,
    )
}

fn wait_in_flight_zero(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while stack.metric("surgeguard.in_flight") != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stack.metric("surgeguard.in_flight"), 0, "the in-flight count returns to zero");
}

#[test]
fn the_upstream_never_sees_more_than_max_in_flight_and_sheds_get_503() {
    let stack = in_flight_stack();
    let outcomes = open_loop(Load {
        port: stack.port,
        rate_per_s: 200.0,
        duration: Duration::from_secs(3),
        make: Arc::new(|n| {
            if n % 2 == 0 {
                (Req::get("/checkout"), "critical")
            } else {
                (Req::get("/search"), "sheddable")
            }
        }),
        timeout: Duration::from_secs(10),
        local_address: None,
    });
    let peak = stack.upstream.stats.peak_in_flight();
    let shed: Vec<_> = outcomes.iter().filter(|o| o.status == Some(503)).collect();
    eprintln!("peak at upstream {peak} (max {MAX_IN_FLIGHT}); shed {} of {}", shed.len(), outcomes.len());
    assert!(peak <= MAX_IN_FLIGHT, "upstream saw {peak} at once");
    assert!(peak >= MAX_IN_FLIGHT - 1, "the limit was reached (peak {peak})");
    assert!(!shed.is_empty());
    assert!(shed.iter().all(|o| o.surgeguard.as_deref().is_some_and(|h| h.starts_with("shed=in_flight; class="))));
    // Sheddable may only fill half: critical got the larger share.
    let ok = |l: &str| outcomes.iter().filter(|o| o.label == l && o.status == Some(200)).count();
    assert!(ok("critical") > ok("sheddable"), "critical {} sheddable {}", ok("critical"), ok("sheddable"));
    wait_in_flight_zero(&stack);
}

#[test]
fn aborted_clients_do_not_leak_in_flight_slots() {
    let stack = in_flight_stack();
    // Three rounds of MAX_IN_FLIGHT clients that send a request and hang up mid-flight.
    for _ in 0..3 {
        let mut sockets = Vec::new();
        for i in 0..MAX_IN_FLIGHT {
            let mut s = TcpStream::connect(("127.0.0.1", stack.port)).unwrap();
            write!(s, "GET /checkout/{i} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            sockets.push(s);
        }
        std::thread::sleep(Duration::from_millis(50));
        drop(sockets);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_in_flight_zero(&stack);
    // All slots are free again: MAX_IN_FLIGHT concurrent critical requests all pass.
    let outcomes = open_loop(Load {
        port: stack.port,
        rate_per_s: 1000.0,
        duration: Duration::from_millis(MAX_IN_FLIGHT),
        make: Arc::new(|_| (Req::get("/checkout"), "critical")),
        timeout: Duration::from_secs(10),
        local_address: None,
    });
    assert_eq!(outcomes.iter().filter(|o| o.status == Some(200)).count(), MAX_IN_FLIGHT as usize);
    // Upstream resets (route timeout shorter than the upstream) release too.
    wait_in_flight_zero(&stack);
    assert_eq!(client::request(stack.port, &Req::get("/checkout")).unwrap().status, 200);
    wait_in_flight_zero(&stack);
}

#[test]
fn streams_ended_by_a_route_timeout_release_their_slots() {
    // The upstream takes 400 ms; the route gives up after 100 ms (504 from Envoy's router).
    let upstream = surgeguard_harness::upstream::Upstream::start(Duration::from_millis(400)).unwrap();
    let mut bootstrap = surgeguard_harness::envoy::Bootstrap::new(
        upstream.port,
        Some(&format!(r#"{{"concurrency": {{"max_in_flight": {MAX_IN_FLIGHT}}}}}"#)),
    );
    bootstrap.route_timeout = "0.1s".into();
    let envoy = surgeguard_harness::envoy::Envoy::start(&bootstrap.yaml(), &Default::default())
        .unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    for _ in 0..3 {
        let outcomes = open_loop(Load {
            port,
            rate_per_s: 1000.0,
            duration: Duration::from_millis(MAX_IN_FLIGHT),
            make: Arc::new(|_| (Req::get("/slow"), "timeout")),
            timeout: Duration::from_secs(10),
            local_address: None,
        });
        // Every one of the MAX_IN_FLIGHT concurrent requests was admitted (the slots of the
        // round before were freed) and timed out at the route.
        assert!(
            outcomes.iter().all(|o| o.status == Some(504)),
            "{:?}",
            outcomes.iter().map(|o| o.status).collect::<Vec<_>>()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while envoy.metric("surgeguard.in_flight") != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(envoy.metric("surgeguard.in_flight"), 0);
    assert_eq!(envoy.metric("surgeguard.class.default.shed"), 0, "no slot leaked into a shed");
}
