use super::*;
use crate::classify::Request;
use crate::config::{parse, NS_PER_S};
use crate::metrics::{counter_names, for_each_counter};
use crate::response::refusal;
use crate::store::tests::{BrokenStore, RacingStore, RivalBetweenReadAndWrite};
use crate::store::MemoryStore;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const T0: u64 = 1_750_000_000 * NS_PER_S;
const MS: u64 = 1_000_000;

fn admission(json: &str) -> Admission {
    Admission::new(parse(json.as_bytes()).unwrap_or_else(|e| panic!("{e:?}")), "test", 42)
}

fn limits(ids: &[usize]) -> LimitSet {
    ids.iter().map(|&i| LimitId(i)).collect()
}

fn get(path: &str) -> (Vec<u8>, Vec<u8>) {
    (b"GET".to_vec(), path.as_bytes().to_vec())
}

fn decide_path(g: &Admission, path: &str, now: u64, store: &dyn SharedStore) -> Decision {
    let (method, path) = get(path);
    let headers: Vec<Option<Vec<u8>>> = vec![None; g.policy.header_names.len()];
    g.decide(&Request::new(&method, &path, &headers, b"10.0.0.1"), now, 1, store)
}

fn decide_key(g: &Admission, key: Option<&str>, now: u64, store: &dyn SharedStore) -> Decision {
    let headers = vec![key.map(|k| k.as_bytes().to_vec())];
    g.decide(&Request { headers: &headers, ..Request::default() }, now, 1, store)
}

fn admitted(d: &Decision) -> bool {
    matches!(d.verdict, Verdict::Admitted { .. })
}

const TWO_CLASSES: &str = r#"{
  "classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
  "rules": [{"match": {"path_prefix": "/checkout"}, "class": "critical"}],
  "limits": [{"name": "global", "tokens_per_second": 10, "burst": 10}]}"#;

#[test]
fn a_bucket_admits_burst_then_refuses_with_a_retry_time() {
    let g = admission(r#"{"limits": [{"name": "g", "tokens_per_second": 2, "burst": 3}]}"#);
    let store = MemoryStore::default();
    let results: Vec<bool> = (0..4).map(|_| admitted(&decide_path(&g, "/", T0, &store))).collect();
    assert_eq!(results, vec![true, true, true, false]);
    let d = decide_path(&g, "/", T0, &store);
    assert_eq!(d.verdict, Verdict::RateLimited { limit: LimitId(0), retry_after_s: 1 });
    assert!(admitted(&decide_path(&g, "/", T0 + 500 * MS, &store)));
}

#[test]
fn sheddable_traffic_cannot_take_the_reserved_share() {
    let g = admission(TWO_CLASSES);
    let store = MemoryStore::default();
    let shed_admitted = (0..20).filter(|_| admitted(&decide_path(&g, "/search", T0, &store))).count();
    assert_eq!(shed_admitted, 5, "reserve 0.5 of burst 10 leaves 5 for sheddable");
    let critical_admitted = (0..20).filter(|_| admitted(&decide_path(&g, "/checkout", T0, &store))).count();
    assert_eq!(critical_admitted, 5, "the reserved half is still there for critical");
}

#[test]
fn tokens_are_taken_only_when_every_limit_admits() {
    let g = admission(
        r#"{"limits": [{"name": "wide", "tokens_per_second": 1, "burst": 100},
                       {"name": "narrow", "tokens_per_second": 1, "burst": 2, "match": {"path_prefix": "/api"}}]}"#,
    );
    let store = MemoryStore::default();
    for _ in 0..10 {
        decide_path(&g, "/api/x", T0, &store);
    }
    // 2 admitted by both; 8 refused by narrow and taking nothing from wide: 98 remain there.
    let wide_admitted = (0..200).filter(|_| admitted(&decide_path(&g, "/home", T0, &store))).count();
    assert_eq!(wide_admitted, 98);
}

#[test]
fn the_refusal_names_the_limit_that_waits_longest() {
    let g = admission(
        r#"{"limits": [{"name": "fast", "tokens_per_second": 10, "burst": 1},
                       {"name": "slow", "tokens_per_second": 0.1, "burst": 1}]}"#,
    );
    let store = MemoryStore::default();
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    let d = decide_path(&g, "/", T0, &store);
    assert_eq!(d.verdict, Verdict::RateLimited { limit: LimitId(1), retry_after_s: 10 });
    assert_eq!((d.applied, d.refused), (limits(&[0, 1]), limits(&[0, 1])));
}

#[test]
fn in_flight_limit_sheds_past_the_class_maximum_and_release_frees() {
    let g = admission(
        r#"{"classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
            "rules": [{"match": {"path_prefix": "/checkout"}, "class": "critical"}],
            "concurrency": {"max_in_flight": 4, "retry_after_s": 2}}"#,
    );
    let store = MemoryStore::default();
    let v: Vec<Verdict> = (0..3).map(|_| decide_path(&g, "/search", T0, &store).verdict).collect();
    assert_eq!(v[0], Verdict::Admitted { in_flight: Some(1) });
    assert_eq!(v[1], Verdict::Admitted { in_flight: Some(2) });
    assert_eq!(v[2], Verdict::Shed { retry_after_s: 2 });
    assert!(admitted(&decide_path(&g, "/checkout", T0, &store)));
    assert!(admitted(&decide_path(&g, "/checkout", T0, &store)));
    assert_eq!(decide_path(&g, "/checkout", T0, &store).verdict, Verdict::Shed { retry_after_s: 2 });
    for _ in 0..4 {
        g.release(1, T0, &store);
    }
    assert_eq!(g.in_flight(T0, &store), Some(0));
}

#[test]
fn a_shed_request_takes_no_tokens() {
    let g = admission(
        r#"{"limits": [{"name": "g", "tokens_per_second": 1, "burst": 3}], "concurrency": {"max_in_flight": 1}}"#,
    );
    let store = MemoryStore::default();
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    assert!(matches!(decide_path(&g, "/", T0, &store).verdict, Verdict::Shed { .. }));
    assert!(matches!(decide_path(&g, "/", T0, &store).verdict, Verdict::Shed { .. }));
    g.release(1, T0, &store);
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    g.release(1, T0, &store);
    assert!(admitted(&decide_path(&g, "/", T0, &store)), "the two shed requests left the third token");
}

#[test]
fn a_lost_race_is_retried_and_undone_so_each_limit_loses_exactly_one_token() {
    let g = admission(
        r#"{"limits": [{"name": "a", "tokens_per_second": 1, "burst": 5}, {"name": "b", "tokens_per_second": 1, "burst": 5}],
            "concurrency": {"max_in_flight": 10}}"#,
    );
    let store = RacingStore::losing(0);
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    // Lose the next 3 writes: a's first commit, then b's after a succeeded (undo a), ...
    store.lose.set(3);
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    assert_eq!(g.in_flight(T0, &store), Some(2));
    let rest = (0..10).filter(|_| admitted(&decide_path(&g, "/", T0, &store))).count();
    assert_eq!(rest, 3, "5 tokens each: 2 taken, 3 left, none lost or minted by the races");
}

#[test]
fn endless_contention_fails_open_and_takes_nothing() {
    let g = admission(r#"{"limits": [{"name": "a", "tokens_per_second": 1, "burst": 2}]}"#);
    let store = RacingStore::losing(0);
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    store.lose.set(u32::MAX);
    assert_eq!(decide_path(&g, "/", T0, &store).verdict, Verdict::FailedOpen);
    store.lose.set(0);
    assert_eq!((0..5).filter(|_| admitted(&decide_path(&g, "/", T0, &store))).count(), 1);
}

#[test]
fn a_failing_host_store_fails_open() {
    let g = admission(TWO_CLASSES);
    assert_eq!(decide_path(&g, "/", T0, &BrokenStore).verdict, Verdict::FailedOpen);
    assert_eq!(g.release(1, T0, &BrokenStore), None);
}

const PER_KEY: &str = r#"{"limits": [{"name": "k", "key": {"header": "x-api-key"}, "tokens_per_second": 1, "burst": 2, "max_keys": 64}]}"#;

#[test]
fn one_keys_exhaustion_does_not_touch_another_key() {
    let g = admission(PER_KEY);
    let store = MemoryStore::default();
    let a = (0..5).filter(|_| admitted(&decide_key(&g, Some("alice"), T0, &store))).count();
    let b = (0..5).filter(|_| admitted(&decide_key(&g, Some("bob"), T0, &store))).count();
    assert_eq!((a, b), (2, 2));
}

#[test]
fn requests_without_the_key_header_share_one_bucket() {
    let g = admission(PER_KEY);
    let store = MemoryStore::default();
    assert_eq!((0..5).filter(|_| admitted(&decide_key(&g, None, T0, &store))).count(), 2);
    assert!(admitted(&decide_key(&g, Some(""), T0, &store)), "an empty value is a key of its own");
}

#[test]
fn key_storage_stays_bounded_whatever_the_cardinality() {
    let g = admission(PER_KEY);
    let store = MemoryStore::default();
    for i in 0..5_000 {
        decide_key(&g, Some(&format!("attacker-{i}")), T0 + i * MS, &store);
    }
    assert!(store.len() <= 64 + 1, "64 slots and the overflow bucket, got {}", store.len());
}

#[test]
fn a_partly_used_bucket_is_never_evicted_by_new_keys() {
    let g = admission(
        r#"{"limits": [{"name": "k", "key": {"header": "x-api-key"}, "tokens_per_second": 1, "burst": 3, "max_keys": 1}]}"#,
    );
    let store = MemoryStore::default();
    assert!(admitted(&decide_key(&g, Some("legit"), T0, &store)));
    assert!(admitted(&decide_key(&g, Some("legit"), T0, &store)));
    for i in 0..100 {
        let d = decide_key(&g, Some(&format!("rotating-{i}")), T0, &store);
        if i == 0 {
            assert_eq!(d.overflowed, limits(&[0]), "no slot left: the overflow bucket");
        }
    }
    // legit still has exactly its one remaining token: not a fresh full bucket.
    assert_eq!((0..3).filter(|_| admitted(&decide_key(&g, Some("legit"), T0, &store))).count(), 1);
}

#[test]
fn a_refilled_bucket_gives_its_slot_to_a_new_key() {
    let g = admission(
        r#"{"limits": [{"name": "k", "key": {"header": "x-api-key"}, "tokens_per_second": 1, "burst": 1, "max_keys": 1}]}"#,
    );
    let store = MemoryStore::default();
    assert!(admitted(&decide_key(&g, Some("old"), T0, &store)));
    let d = decide_key(&g, Some("new"), T0 + 2 * NS_PER_S, &store);
    assert!(admitted(&d) && d.overflowed.is_empty());
}

#[test]
fn client_ip_keys_isolate_clients() {
    let g = admission(r#"{"limits": [{"name": "ip", "key": "client_ip", "tokens_per_second": 1, "burst": 1}]}"#);
    let store = MemoryStore::default();
    let from = |ip: &[u8]| g.decide(&Request { client_ip: ip, ..Request::default() }, T0, 1, &store);
    assert!(admitted(&from(b"10.0.0.1")));
    assert!(!admitted(&from(b"10.0.0.1")));
    assert!(admitted(&from(b"10.0.0.2")));
}

#[test]
fn counters_follow_the_verdict_and_the_mode() {
    for (mode, refused) in [("enforce", "rate_limited"), ("shadow", "shadow_rate_limited")] {
        let g = admission(&TWO_CLASSES.replace("\"classes\"", &format!("\"mode\": \"{mode}\", \"classes\"")));
        let names = counter_names(&g.policy);
        let store = MemoryStore::default();
        let mut bumped = Vec::new();
        for _ in 0..12 {
            let d = decide_path(&g, "/checkout", T0, &store);
            for_each_counter(&g.policy, &d, |i| bumped.push(names[i].clone()));
        }
        let count = |n: &str| bumped.iter().filter(|b| *b == n).count();
        assert_eq!(count("surgeguard.class.critical.admitted"), 10, "{mode}");
        assert_eq!(count(&format!("surgeguard.class.critical.{refused}")), 2, "{mode}");
        assert_eq!(count("surgeguard.limit.global.admitted"), 10, "{mode}");
        assert_eq!(count(&format!("surgeguard.limit.global.{refused}")), 2, "{mode}");
    }
}

#[test]
fn a_429_carries_every_contract_header() {
    let g = admission(
        r#"{"classes": [{"name": "critical"}, {"name": "standard", "reserve": 0.2}],
            "limits": [{"name": "storefront", "tokens_per_second": 4, "burst": 10}]}"#,
    );
    let store = MemoryStore::default();
    let d = (0..20)
        .map(|_| decide_path(&g, "/", T0, &store))
        .find(|d| matches!(d.verdict, Verdict::RateLimited { .. } | Verdict::Shed { .. }))
        .unwrap();
    let r = refusal(&g.policy, &d).unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(
        r.headers,
        vec![
            ("retry-after", "1".to_string()),
            ("ratelimit-policy", "\"storefront\";q=10;w=3".to_string()),
            ("ratelimit", "\"storefront\";r=0;t=1".to_string()),
            ("x-surgeguard", "limit=storefront; class=standard".to_string()),
        ]
    );
}

#[test]
fn a_503_names_the_in_flight_shed() {
    let g = admission(r#"{"concurrency": {"max_in_flight": 1}}"#);
    let store = MemoryStore::default();
    decide_path(&g, "/", T0, &store);
    let r = refusal(&g.policy, &decide_path(&g, "/", T0, &store)).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers,
        vec![("retry-after", "1".to_string()), ("x-surgeguard", "shed=in_flight; class=default".to_string())]
    );
}

#[test]
fn an_unchanged_limit_keeps_its_state_across_a_reload() {
    let before = admission(r#"{"limits": [{"name": "g", "tokens_per_second": 1, "burst": 2}]}"#);
    let after_same = admission(r#"{"mode": "shadow", "limits": [{"name": "g", "tokens_per_second": 1, "burst": 2}]}"#);
    let after_changed = admission(r#"{"limits": [{"name": "g", "tokens_per_second": 1, "burst": 3}]}"#);
    let store = MemoryStore::default();
    decide_path(&before, "/", T0, &store);
    decide_path(&before, "/", T0, &store);
    assert!(!admitted(&decide_path(&after_same, "/", T0, &store)));
    assert!(admitted(&decide_path(&after_changed, "/", T0, &store)));
}

#[test]
fn a_release_that_could_not_be_written_is_applied_by_the_next_heartbeat() {
    let g = admission(r#"{"concurrency": {"max_in_flight": 2}}"#);
    let store = MemoryStore::default();
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    assert!(admitted(&decide_path(&g, "/", T0, &store)));
    assert_eq!(g.release(1, T0, &BrokenStore), None, "storage refused the release");
    assert!(!admitted(&decide_path(&g, "/", T0, &store)), "the slot is still counted");
    assert_eq!(g.heartbeat(1, T0 + MS, 1, &store), Some(1));
    assert!(admitted(&decide_path(&g, "/", T0 + MS, &store)));
}

/// Worker 2 makes a whole decision between worker 1's read of the record and its write.
fn with_rival_decision<'a>(store: &'a MemoryStore, g: &'a Admission) -> RivalBetweenReadAndWrite<'a> {
    RivalBetweenReadAndWrite::new(store, move |inner| {
        let (method, path) = get("/");
        g.decide(&Request::new(&method, &path, &[], b"10.0.0.2"), T0, 2, inner);
    })
}

#[test]
fn a_record_created_at_configuration_keeps_two_first_decisions_exact() {
    let g = admission(r#"{"concurrency": {"max_in_flight": 10}}"#);
    // Without it, both workers find no record and the later unconditional write wins.
    let store = MemoryStore::default();
    let racing = with_rival_decision(&store, &g);
    assert!(admitted(&decide_path(&g, "/", T0, &racing)));
    assert_eq!(g.in_flight(T0, &store), Some(1), "one of the two slots was written over");
    // With it, the later write is a compare-and-swap that loses, retries and counts both.
    let store = MemoryStore::default();
    g.create_record(&store).unwrap();
    g.create_record(&store).unwrap();
    let racing = with_rival_decision(&store, &g);
    assert!(admitted(&decide_path(&g, "/", T0, &racing)));
    assert_eq!(g.in_flight(T0, &store), Some(2));
}

const ADAPTIVE: &str = r#"{"classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
    "rules": [{"match": {"path_prefix": "/search"}, "class": "sheddable"}], "default_class": "critical",
    "concurrency": {"max_in_flight": 100, "adaptive": {}}}"#;

#[test]
fn an_adaptive_limit_starts_at_the_ceiling_and_the_reserves_apply_to_l_from_the_record() {
    let g = admission(ADAPTIVE);
    let store = MemoryStore::default();
    g.create_record(&store).unwrap();
    let admitted_of = |path: &str, n: usize| (0..n).filter(|_| admitted(&decide_path(&g, path, T0, &store))).count();
    assert_eq!(admitted_of("/search", 60), 50, "no L yet: half the ceiling for sheddable");
    // A control window set L to 10: the same read now admits against it.
    let (bytes, version) = store.load(&g.record_key).unwrap().unwrap();
    let mut record = Record::from_bytes(bytes);
    record.set_adaptive_limit(10);
    assert!(store.compare_and_swap(&g.record_key, record.as_bytes(), Some(version)).unwrap());
    assert_eq!(admitted_of("/checkout", 5), 0, "50 in flight is past L = 10");
    for _ in 0..46 {
        g.release(1, T0, &store);
    }
    assert_eq!(g.in_flight(T0, &store), Some(4));
    assert_eq!(admitted_of("/search", 5), 1, "sheddable up to floor(0.5 x 10) = 5");
    assert_eq!(admitted_of("/checkout", 9), 5, "critical up to L");
    let d = decide_path(&g, "/checkout", T0, &store);
    assert_eq!(d.verdict, Verdict::Shed { retry_after_s: 1 });
}

#[test]
fn a_configuration_without_an_adaptive_limit_drops_l_from_the_record() {
    let store = MemoryStore::default();
    let g = admission(ADAPTIVE);
    g.create_record(&store).unwrap();
    let (bytes, version) = store.load(&g.record_key).unwrap().unwrap();
    let mut record = Record::from_bytes(bytes);
    record.set_adaptive_limit(10);
    assert!(store.compare_and_swap(&g.record_key, record.as_bytes(), Some(version)).unwrap());
    g.create_record(&store).unwrap();
    assert_eq!(g.adaptive_limit(&store), Some(10), "an adaptive configuration keeps it");
    let static_ = admission(&ADAPTIVE.replace(r#", "adaptive": {}"#, ""));
    static_.create_record(&store).unwrap();
    let (bytes, _) = store.load(&g.record_key).unwrap().unwrap();
    assert_eq!(Record::from_bytes(bytes).adaptive_limit(), None);
    assert_eq!(g.adaptive_limit(&store), Some(100), "read back as the ceiling");
}
