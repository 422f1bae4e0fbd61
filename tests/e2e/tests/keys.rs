//! Per-key buckets in a real Envoy: isolation by header and by client address, and memory that
//! stays bounded under a flood of distinct keys.

use std::net::IpAddr;
use std::sync::Arc;
use surgeguard_e2e::client::{self, Req};
use surgeguard_e2e::Stack;

fn statuses(replies: &[Result<client::Response, String>]) -> Vec<u16> {
    replies.iter().map(|r| r.as_ref().map_or(0, |r| r.status)).collect()
}

#[test]
fn one_api_keys_exhaustion_does_not_affect_another() {
    let stack = Stack::start(
        r#"{"limits": [{"name": "per_api_key", "key": {"header": "x-api-key"}, "tokens_per_second": 0.1, "burst": 3}]}"#,
    );
    let a = client::requests(stack.port, &vec![Req::get("/").header("x-api-key", "alice"); 5]);
    let b = client::requests(stack.port, &vec![Req::get("/").header("x-api-key", "bob"); 3]);
    let none = client::requests(stack.port, &vec![Req::get("/"); 4]);
    assert_eq!(statuses(&a), vec![200, 200, 200, 429, 429]);
    assert_eq!(statuses(&b), vec![200, 200, 200]);
    assert_eq!(statuses(&none), vec![200, 200, 200, 429], "requests without the header share one bucket");
}

#[test]
fn client_ip_buckets_follow_the_downstream_address_not_x_forwarded_for() {
    let stack = Stack::start(
        r#"{"limits": [{"name": "per_client", "key": "client_ip", "tokens_per_second": 0.1, "burst": 2}]}"#,
    );
    let from = |ip: &str, xff: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        statuses(&client::requests_from(stack.port, Some(ip), &vec![Req::get("/").header("x-forwarded-for", xff); 3]))
    };
    assert_eq!(from("127.0.0.2", "1.1.1.1"), vec![200, 200, 429]);
    // A forged X-Forwarded-For does not buy a fresh bucket.
    assert_eq!(from("127.0.0.2", "2.2.2.2"), vec![429, 429, 429]);
    assert_eq!(from("127.0.0.3", "1.1.1.1"), vec![200, 200, 429]);
}

#[test]
fn a_flood_of_200k_distinct_keys_keeps_memory_bounded_and_envoy_responsive() {
    let stack = Stack::start(
        r#"{"limits": [{"name": "per_api_key", "key": {"header": "x-api-key"}, "tokens_per_second": 5, "burst": 10}]}"#,
    );
    // Warm up so the baseline includes Envoy's own steady state.
    client::closed_loop(
        stack.port,
        5_000,
        32,
        Arc::new(|n| Req::get("/").header("x-api-key", &format!("warm-{}", n % 50))),
    );
    let rss_before = stack.envoy.rss_bytes();
    let t0 = std::time::Instant::now();
    let counts = client::closed_loop(
        stack.port,
        200_000,
        64,
        Arc::new(|n| Req::get("/").header("x-api-key", &format!("attacker-{n}"))),
    );
    let rss_after = stack.envoy.rss_bytes();
    let growth_mib = (rss_after.saturating_sub(rss_before)) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "200k keys in {:.1} s: {counts:?}; RSS {} -> {} MiB (+{growth_mib:.1})",
        t0.elapsed().as_secs_f64(),
        rss_before >> 20,
        rss_after >> 20
    );
    assert_eq!(counts.get(&0), None, "every request answered");
    assert!(growth_mib < 64.0, "RSS grew {growth_mib:.1} MiB");
    // Still responsive, and a legitimate key still gets its own full bucket.
    let legit = client::requests(stack.port, &vec![Req::get("/").header("x-api-key", "legit"); 10]);
    assert!(statuses(&legit).iter().filter(|&&s| s == 200).count() >= 1);
}
