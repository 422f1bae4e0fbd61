//! The rate limit service the fleet-wide limits draw leases from, end to end: a real Redis, real
//! `surgeguard-rls` processes (Limitador over Redis), real gRPC calls. Every process is killed
//! when its handle drops, also when an assertion fails.

use std::time::{Duration, Instant};
use surgeguard_harness::client::{request, Req};
use surgeguard_harness::envoy::{bootstrap_yaml, upstream_cluster_yaml, Envoy, Options};
use surgeguard_harness::rls::{rls_cluster_yaml, Answer, Counters, RateLimitService, Redis, Reply};
use surgeguard_harness::upstream::Upstream;

const DOMAIN: &str = "fleet";
const STOREFRONT: &[(&str, &str)] = &[("limit", "storefront")];
/// The services' `--redis-timeout-ms`: above the 50 ms default so a machine busy with other
/// tests does not turn a slow answer into a failure.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// What a failing call may take: the Redis timeout plus a wide margin for a loaded 2-core
/// machine. A bound on hanging, not a speed target.
const FAILS_WITHIN: Duration = Duration::from_secs(1);

/// One limit of `max_value` per `seconds`, read from descriptor 0's `limit` entry.
fn limits(max_value: u64, seconds: u64) -> String {
    format!(
        r#"
- namespace: {DOMAIN}
  max_value: {max_value}
  seconds: {seconds}
  conditions: ["descriptors[0].limit == 'storefront'"]
  variables: []
"#
    )
}

fn start_redis() -> Redis {
    Redis::start().unwrap_or_else(|e| panic!("{e}"))
}

fn start_rls(counters: Counters<'_>, limits_yaml: &str) -> RateLimitService {
    RateLimitService::start_with_timeout(counters, limits_yaml, REDIS_TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn call(rls: &RateLimitService, hits: u32) -> Reply {
    rls.call(DOMAIN, &[STOREFRONT], hits).unwrap_or_else(|e| panic!("{e}"))
}

/// A call that must be answered.
fn take(rls: &RateLimitService, hits: u32) -> Answer {
    match call(rls, hits).result {
        Ok(answer) => answer,
        Err(e) => panic!("taking {hits}: {e:?}\n{}", rls.log()),
    }
}

/// (overall code, the descriptor's code, its limit_remaining).
fn verdict(a: &Answer) -> (&str, &str, u64) {
    (a.overall_code.as_str(), a.statuses[0].code.as_str(), a.statuses[0].limit_remaining)
}

/// Calls until one is answered, for at most `within`; returns how long that took.
fn answered_again(rls: &RateLimitService, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let reply = call(rls, 1);
        if reply.result.is_ok() {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < within, "no answer {within:?} after Redis came back: {reply:?}\n{}", rls.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts the call fails UNAVAILABLE, without hanging, and returns how long it took.
fn fails_fast(rls: &RateLimitService) -> Duration {
    let t0 = Instant::now();
    let reply = call(rls, 1);
    let wall = t0.elapsed();
    match reply.result {
        Err(e) => assert_eq!(e.code, "Unavailable", "{e:?}"),
        Ok(a) => panic!("answered with Redis down: {a:?}"),
    }
    assert!(reply.rpc_time < FAILS_WITHIN, "the call took {:?}", reply.rpc_time);
    // Printed for the record (`--nocapture`): the time the call took, and with the client's start.
    eprintln!("failed call: rpc {:?}, client process {:?}", reply.rpc_time, wall);
    reply.rpc_time
}

#[test]
fn a_lease_of_n_hits_is_granted_and_remaining_goes_down_by_n() {
    let redis = start_redis();
    let rls = start_rls(Counters::Redis(&redis), &limits(100, 60));
    let first = take(&rls, 10);
    assert_eq!(verdict(&first), ("OK", "OK", 90));
    assert_eq!(first.statuses[0].requests_per_unit, Some(100));
    let reset = first.statuses[0].duration_until_reset.unwrap_or_default();
    assert!(reset > Duration::ZERO && reset <= Duration::from_secs(60), "{reset:?}");
    assert_eq!(verdict(&take(&rls, 25)), ("OK", "OK", 65));
}

#[test]
fn past_the_limit_the_answer_is_over_limit_and_denied_hits_are_not_counted() {
    let redis = start_redis();
    let rls = start_rls(Counters::Redis(&redis), &limits(10, 60));
    assert_eq!(verdict(&take(&rls, 8)), ("OK", "OK", 2));
    assert_eq!(verdict(&take(&rls, 5)), ("OVER_LIMIT", "OVER_LIMIT", 2));
    // The refused 5 took nothing: the last 2 are still there.
    assert_eq!(verdict(&take(&rls, 2)), ("OK", "OK", 0));
    assert_eq!(verdict(&take(&rls, 1)), ("OVER_LIMIT", "OVER_LIMIT", 0));
}

#[test]
fn two_services_on_one_redis_share_one_counter() {
    let redis = start_redis();
    let a = start_rls(Counters::Redis(&redis), &limits(100, 60));
    let b = start_rls(Counters::Redis(&redis), &limits(100, 60));
    assert_eq!(verdict(&take(&a, 30)), ("OK", "OK", 70));
    assert_eq!(verdict(&take(&b, 30)), ("OK", "OK", 40));
    assert_eq!(verdict(&take(&a, 50)), ("OVER_LIMIT", "OVER_LIMIT", 40));
    assert_eq!(verdict(&take(&b, 40)), ("OK", "OK", 0));
}

#[test]
fn with_redis_paused_a_call_fails_within_the_timeout_and_works_again_after_resume() {
    let redis = start_redis();
    let rls = start_rls(Counters::Redis(&redis), &limits(100, 60));
    assert_eq!(verdict(&take(&rls, 10)), ("OK", "OK", 90));
    redis.pause().unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..3 {
        fails_fast(&rls);
    }
    redis.resume().unwrap_or_else(|e| panic!("{e}"));
    let after = answered_again(&rls, Duration::from_secs(5));
    eprintln!("answered again {after:?} after resume");
    // Nothing was lost: the one probe that was answered took 1 more.
    assert_eq!(verdict(&take(&rls, 9)), ("OK", "OK", 80));
}

#[test]
fn with_redis_stopped_and_started_again_the_service_recovers_by_itself() {
    let mut redis = start_redis();
    let rls = start_rls(Counters::Redis(&redis), &limits(100, 60));
    assert_eq!(verdict(&take(&rls, 10)), ("OK", "OK", 90));
    redis.stop();
    for _ in 0..3 {
        fails_fast(&rls);
    }
    redis.start_again().unwrap_or_else(|e| panic!("{e}"));
    let after = answered_again(&rls, Duration::from_secs(10));
    eprintln!("answered again {after:?} after Redis restarted");
    // A restarted Redis without persistence starts from a full limit.
    let a = take(&rls, 1);
    assert_eq!(a.overall_code, "OK");
    assert!(a.statuses[0].limit_remaining >= 97, "{a:?}");
}

#[test]
fn in_memory_counters_need_no_redis() {
    let rls = start_rls(Counters::Memory, &limits(5, 1));
    assert_eq!(verdict(&take(&rls, 5)), ("OK", "OK", 0));
    assert_eq!(verdict(&take(&rls, 1)), ("OVER_LIMIT", "OVER_LIMIT", 0));
}

#[test]
fn a_call_matching_no_limit_is_ok_without_a_current_limit() {
    let rls = start_rls(Counters::Memory, &limits(5, 1));
    let reply = rls.call(DOMAIN, &[&[("limit", "elsewhere")]], 1000).unwrap_or_else(|e| panic!("{e}"));
    let answer = reply.result.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(answer.overall_code, "OK");
    assert_eq!(answer.statuses[0].requests_per_unit, None);
}

/// Envoy's own rate limit filter as the client: proves the gRPC API and the cluster snippet
/// against a real Envoy, and that UNAVAILABLE lets Envoy's failure mode decide.
#[test]
fn envoy_s_ratelimit_filter_is_answered_by_the_service_and_fails_open_when_redis_hangs() {
    let redis = start_redis();
    let rls = start_rls(
        Counters::Redis(&redis),
        &format!(
            r#"
- namespace: {DOMAIN}
  max_value: 3
  seconds: 60
  conditions: ["descriptors[0].generic_key == 'storefront'"]
  variables: []
"#
        ),
    );
    let upstream = Upstream::start(Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
    let filter = format!(
        r#"          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: {DOMAIN}
              timeout: 1s
              failure_mode_deny: false
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{ envoy_grpc: {{ cluster_name: rls }} }}
"#
    );
    let route =
        "route: { cluster: upstream, rate_limits: [{ actions: [{ generic_key: { descriptor_value: storefront } }] }] }";
    let clusters = format!("{}{}", upstream_cluster_yaml(upstream.port), rls_cluster_yaml("rls", rls.port()));
    let yaml = bootstrap_yaml("main", "", route, &filter, &clusters);
    let envoy = Envoy::start(&yaml, &Options::default()).unwrap_or_else(|e| panic!("{}\n{}", e.message, e.log));
    let port = envoy.listener_port();
    let status = || request(port, &Req::get("/")).map(|r| r.status).unwrap_or_else(|e| panic!("{e}"));
    let statuses: Vec<u16> = (0..4).map(|_| status()).collect();
    assert_eq!(statuses, vec![200, 200, 200, 429], "{}", rls.log());
    // The service answers UNAVAILABLE within its Redis timeout, before Envoy's 1 s: fail open.
    redis.pause().unwrap_or_else(|e| panic!("{e}"));
    let t0 = Instant::now();
    assert_eq!(status(), 200);
    assert!(t0.elapsed() < FAILS_WITHIN, "{:?}", t0.elapsed());
    redis.resume().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status(), 429);
}
