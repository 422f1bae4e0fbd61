//! Token buckets in a real Envoy with 2 workers: exact across workers, the contract's 429,
//! shadow mode, and a bad configuration refusing to start.

use std::sync::Arc;
use std::time::Duration;
use surgeguard_e2e::client::{self, open_loop, Load, Req};
use surgeguard_e2e::Stack;
use surgeguard_harness::envoy::{Bootstrap, Envoy, Options};

const RATE_PER_S: f64 = 200.0;
const BURST: f64 = 100.0;

fn global_limit(mode: &str) -> String {
    format!(
        r#"{{"mode": "{mode}", "limits": [{{"name": "storefront", "tokens_per_second": {RATE_PER_S}, "burst": {BURST}}}]}}"#
    )
}

/// 5x overload for 5 s; returns (admitted, expected = burst + rate x span, all outcomes).
fn overload(stack: &Stack) -> (f64, f64, Vec<client::Outcome>) {
    let outcomes = open_loop(Load {
        port: stack.port,
        rate_per_s: 5.0 * RATE_PER_S,
        duration: Duration::from_secs(5),
        make: Arc::new(|n| (Req::get(&format!("/products/{n}")), "browse")),
        timeout: Duration::from_secs(10),
        local_address: None,
    });
    // The window is the one the requests were really sent in (a loaded client runs late).
    let first = outcomes.iter().map(|o| o.sent_at).min().unwrap_or_default();
    let last = outcomes.iter().map(|o| o.sent_at).max().unwrap_or_default();
    let expected = BURST + RATE_PER_S * (last - first).as_secs_f64();
    let admitted = outcomes.iter().filter(|o| o.status == Some(200)).count() as f64;
    (admitted, expected, outcomes)
}

#[test]
fn admitted_stays_within_two_percent_of_burst_plus_rate_times_time_across_two_workers() {
    let stack = Stack::start(&global_limit("enforce"));
    let (admitted, expected, outcomes) = overload(&stack);
    let refused = outcomes.iter().filter(|o| o.status == Some(429)).count();
    let failed = outcomes.len() - admitted as usize - refused;
    let error_pct = 100.0 * (admitted - expected).abs() / expected;
    let late_ms = outcomes.iter().map(|o| (o.sent_at.saturating_sub(o.at)).as_millis()).max().unwrap_or(0);
    eprintln!("admitted {admitted} expected {expected:.0} error {error_pct:.2}% refused {refused} failed {failed}; client at most {late_ms} ms late");
    assert_eq!(failed, 0, "every request got an answer");
    assert!(error_pct < 2.0, "admitted {admitted} vs expected {expected:.0}: {error_pct:.2}% off");
    assert_eq!(stack.upstream.stats.requests(), admitted as u64, "what was admitted reached the upstream");
    assert_eq!(stack.wait_metric("surgeguard.limit.storefront.admitted", admitted as u64), admitted as u64);
    assert_eq!(stack.wait_metric("surgeguard.limit.storefront.rate_limited", refused as u64), refused as u64);
    assert_eq!(stack.wait_metric("surgeguard.class.default.rate_limited", refused as u64), refused as u64);
}

#[test]
fn a_refusal_carries_every_contract_header_and_admitted_requests_arrive_unchanged() {
    let stack = Stack::start(
        r#"{"classes": [{"name": "critical"}, {"name": "standard", "reserve": 0.2}],
            "rules": [{"match": {"path_prefix": "/checkout"}, "class": "critical"}],
            "limits": [{"name": "storefront", "tokens_per_second": 0.5, "burst": 5}]}"#,
    );
    let first = client::request(
        stack.port,
        &Req::get("/cart?id=7").header("x-custom", "kept as is").header("user-agent", "e2e"),
    )
    .expect("first request answered");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-surgeguard"), None, "admitted responses are not marked");
    let seen = stack.upstream.stats.last_request.lock().unwrap().clone().expect("upstream saw it");
    assert_eq!((seen.0.as_str(), seen.1.as_str()), ("GET", "/cart?id=7"));
    assert!(seen.2.iter().any(|(k, v)| k == "x-custom" && v == b"kept as is"));

    // Standard may use 4 of the 5 tokens (reserve 0.2): 3 more pass, then 429.
    let replies = client::requests(stack.port, &vec![Req::get("/products/1"); 4]);
    let statuses: Vec<u16> = replies.iter().map(|r| r.as_ref().map_or(0, |r| r.status)).collect();
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let refused = replies[3].as_ref().unwrap();
    assert_eq!(refused.header("x-surgeguard"), Some("limit=storefront; class=standard"));
    assert_eq!(refused.header("ratelimit-policy"), Some("\"storefront\";q=5;w=10"));
    let retry_after: u64 = refused.header("retry-after").and_then(|v| v.parse().ok()).expect("retry-after");
    assert!((1..=2).contains(&retry_after), "one token at 0.5/s is at most 2 s away, got {retry_after}");
    assert_eq!(refused.header("ratelimit"), Some(format!("\"storefront\";r=0;t={retry_after}").as_str()));

    // The reserved token is still there for critical.
    let checkout = client::request(stack.port, &Req::get("/checkout").method("POST")).unwrap();
    assert_eq!(checkout.status, 200);
    assert_eq!(client::request(stack.port, &Req::get("/checkout")).unwrap().status, 429);
}

#[test]
fn shadow_mode_lets_everything_through_and_counts_what_it_would_refuse() {
    let stack = Stack::start(&global_limit("shadow"));
    let (_, expected, outcomes) = overload(&stack);
    assert!(outcomes.iter().all(|o| o.status == Some(200)), "shadow mode never refuses");
    let total = outcomes.len() as u64;
    let would_admit = stack.wait_metric("surgeguard.class.default.admitted", 0).max(1);
    let would_refuse = stack.metric("surgeguard.class.default.shadow_rate_limited");
    assert_eq!(would_admit + would_refuse, total);
    let error_pct = 100.0 * (would_admit as f64 - expected).abs() / expected;
    assert!(error_pct < 2.0, "shadow admits as enforce would: {would_admit} vs {expected:.0}");
    assert_eq!(stack.metric("surgeguard.limit.storefront.shadow_rate_limited"), would_refuse);
    assert_eq!(stack.metric("surgeguard.class.default.rate_limited"), 0);
}

#[test]
fn a_bad_configuration_stops_envoy_from_starting_and_the_log_names_the_field() {
    let bad = r#"{"limits": [{"name": "a", "tokens_per_second": 10, "burst": 0}, {"name": "b", "tokens_per_secnd": 1, "burst": 1}]}"#;
    let yaml = Bootstrap::new(1, Some(bad)).yaml();
    let err = match Envoy::start(&yaml, &Options::default()) {
        Ok(_) => panic!("Envoy started with a refused configuration"),
        Err(e) => e,
    };
    for line in ["limits[0].burst: must be >= 1, got 0", "limits[1].tokens_per_secnd: unknown field"] {
        assert!(err.log.contains(line), "log lacks `{line}`:\n{}", err.log);
    }
}

#[test]
fn strange_requests_are_decided_without_crashing_the_filter() {
    let stack = Stack::start(
        r#"{"rules": [{"match": {"header": {"name": "user-agent", "contains": "bot"}}, "class": "default"}],
            "limits": [{"name": "per_key", "key": {"header": "x-api-key"}, "tokens_per_second": 100, "burst": 100}]}"#,
    );
    let odd: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfebot\xc3\x28\r\nX-Api-Key: \x80\x81\r\n\r\n",
        b"GET /?a=\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ];
    for bytes in odd {
        let status = client::raw_request(stack.port, bytes);
        assert!(status.is_some(), "a reply for {:?}", String::from_utf8_lossy(bytes));
    }
    // The VM is alive and still decides.
    assert_eq!(client::request(stack.port, &Req::get("/")).unwrap().status, 200);
    assert!(!stack.envoy.log().contains("panic"), "{}", stack.envoy.log());
}
