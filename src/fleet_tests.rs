use super::*;
use crate::classify::Request;
use crate::config::{parse, NS_PER_S};
use crate::decision::{Decision, Verdict};
use crate::store::tests::BrokenStore;
use crate::store::MemoryStore;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const T0: u64 = 1_750_000_000 * NS_PER_S;
const MS: u64 = 1_000_000;

/// 1000 tokens per 2 s across the fleet; each Envoy admits a tenth of that on its own.
const FLEET: &str = r#"{
  "classes": [{"name": "critical"}, {"name": "sheddable", "reserve": 0.5}],
  "rules": [{"match": {"path_prefix": "/checkout"}, "class": "critical"}],
  "limits": [{"name": "db", "tokens_per_second": 500, "burst": 1000,
              "fleet": {"cluster": "ratelimit", "domain": "shop", "local_share": 0.01}}]}"#;

fn admission() -> Admission {
    Admission::new(parse(FLEET.as_bytes()).unwrap_or_else(|e| panic!("{e:?}")), "test", 7)
}

fn decide(a: &Admission, path: &str, now: u64, store: &dyn SharedStore) -> Decision {
    let headers: Vec<Option<Vec<u8>>> = vec![None; a.policy.header_names.len()];
    a.decide(&Request::new(b"GET", path.as_bytes(), &headers, b"10.0.0.1"), now, 1, store)
}

fn admitted_of(a: &Admission, path: &str, n: usize, now: u64, store: &dyn SharedStore) -> usize {
    (0..n).filter(|_| matches!(decide(a, path, now, store).verdict, Verdict::Admitted { .. })).count()
}

/// Answers the one call due now with a grant of its hits, `remaining` left for the fleet.
fn grant(a: &Admission, remaining: u64, now: u64, store: &dyn SharedStore) -> u32 {
    let tick = a.lease_calls_due(now, store).unwrap();
    let call = tick.calls.first().unwrap_or_else(|| panic!("no call due: {tick:?}"));
    let answer = Answer::Granted { remaining: Some(remaining), until_reset_ns: Some(2 * NS_PER_S) };
    assert!(matches!(
        a.apply_lease_answer(call.limit, call.deadline_ns, answer, now + MS, store),
        Applied::Switched(_)
    ));
    call.hits
}

#[test]
fn before_the_service_answers_a_fleet_limit_admits_its_local_share_with_priorities() {
    let a = admission();
    let store = MemoryStore::default();
    // Local share: 10 tokens; sheddable keeps half of them for critical.
    assert_eq!(admitted_of(&a, "/browse", 20, T0, &store), 5);
    assert_eq!(admitted_of(&a, "/checkout", 20, T0, &store), 5);
}

#[test]
fn one_worker_claims_the_due_call_and_the_message_is_the_configured_request() {
    let a = admission();
    let store = MemoryStore::default();
    let first = a.lease_calls_due(T0, &store).unwrap();
    assert_eq!(first.calls.len(), 1);
    let call = &first.calls[0];
    assert_eq!(call.message, rls::encode_request("shop", &[("surgeguard_limit", "db")], call.hits));
    assert_eq!(a.lease_calls_due(T0, &store).unwrap().calls, vec![], "another worker's tick finds it claimed");
}

#[test]
fn a_granted_lease_is_spent_exactly_then_refilled_by_one_call() {
    let a = admission();
    let store = MemoryStore::default();
    let hits = grant(&a, 900, T0, &store) as usize;
    let credit = a.fleet_limits().next().unwrap().1.lease.min_hits as usize;
    assert_eq!(a.leases(&store)[0].1.mode, Mode::Fleet);
    assert_eq!(admitted_of(&a, "/checkout", hits + credit + 5, T0 + 2 * MS, &store), hits + credit);
    assert_eq!(a.lease_calls_due(T0 + 3 * MS, &store).unwrap().calls.len(), 1);
}

#[test]
fn in_fleet_mode_sheddable_stops_at_its_reserve_of_the_fleet_and_critical_goes_on() {
    let a = admission();
    let store = MemoryStore::default();
    // 495 left unleased + a first lease of 10 here: sheddable may take while 500 would remain.
    let hits = grant(&a, 495, T0, &store);
    assert_eq!(hits, 10, "a first lease is the smallest");
    assert_eq!(admitted_of(&a, "/browse", 50, T0 + 2 * MS, &store), 5);
    assert_eq!(admitted_of(&a, "/checkout", 5, T0 + 2 * MS, &store), 5);
}

#[test]
fn a_call_left_unanswered_past_its_deadline_switches_the_limit_to_local_mode() {
    let a = admission();
    let store = MemoryStore::default();
    grant(&a, 900, T0, &store);
    // Spend down to the low-water mark, then the refill call is never answered.
    while a.lease_calls_due(T0 + 2 * MS, &store).unwrap().calls.is_empty() {
        decide(&a, "/checkout", T0 + 2 * MS, &store);
    }
    let timeout = a.fleet_limits().next().unwrap().1.lease.timeout_ns;
    let tick = a.lease_calls_due(T0 + 2 * MS + timeout, &store).unwrap();
    assert_eq!(tick.switches, vec![(LimitId(0), Switch::ToLocal)]);
    assert_eq!(a.leases(&store)[0].1.mode, Mode::Local);
    assert_eq!(admitted_of(&a, "/checkout", 20, T0 + 2 * MS + timeout, &store), 10, "the local share");
}

#[test]
fn a_failed_call_falls_back_and_a_later_probe_returns_to_fleet_mode() {
    let a = admission();
    let store = MemoryStore::default();
    let tick = a.lease_calls_due(T0, &store).unwrap();
    let call = &tick.calls[0];
    let failed = a.apply_lease_answer(call.limit, call.deadline_ns, Answer::Failed, T0 + MS, &store);
    assert_eq!(failed, Applied::Switched(Switch::ToLocal), "local already, but its first failure is reported");
    assert!(a.lease_calls_due(T0 + 2 * MS, &store).unwrap().calls.is_empty(), "no probe before its time");
    assert!(grant(&a, 900, T0 + 600 * MS, &store) > 0);
    assert_eq!(a.leases(&store)[0].1.mode, Mode::Fleet);
}

#[test]
fn an_answer_to_a_call_already_declared_failed_is_stale_and_changes_nothing() {
    let a = admission();
    let store = MemoryStore::default();
    grant(&a, 900, T0, &store);
    while a.lease_calls_due(T0 + 2 * MS, &store).unwrap().calls.is_empty() {
        decide(&a, "/checkout", T0 + 2 * MS, &store);
    }
    let deadline = a.leases(&store)[0].1.call_deadline_ns;
    assert_eq!(a.lease_calls_due(deadline, &store).unwrap().switches, vec![(LimitId(0), Switch::ToLocal)]);
    let before = a.leases(&store);
    // Envoy's own timeout answers the same call at the same deadline.
    assert_eq!(a.apply_lease_answer(LimitId(0), deadline, Answer::Failed, deadline, &store), Applied::Stale);
    assert_eq!(a.leases(&store), before);
}

#[test]
fn a_broken_store_claims_no_call_and_a_decision_fails_open() {
    let a = admission();
    assert_eq!(a.lease_calls_due(T0, &BrokenStore), None);
    assert_eq!(decide(&a, "/checkout", T0, &BrokenStore).verdict, Verdict::FailedOpen);
}

#[test]
fn each_lease_counter_and_gauge_names_its_own_limit() {
    use crate::metrics::{counter_names, fleet_mode_gauge_names, lease_counter, LeaseOutcome};
    let json = FLEET.replace(r#""limits": ["#, r#""limits": [{"name": "local", "tokens_per_second": 1, "burst": 1},"#);
    let p = parse(json.as_bytes()).unwrap();
    let names = counter_names(&p);
    for (outcome, name) in [
        (LeaseOutcome::Call, "lease_calls"),
        (LeaseOutcome::Grant, "lease_grants"),
        (LeaseOutcome::Denial, "lease_denials"),
        (LeaseOutcome::Failure, "lease_failures"),
    ] {
        let i = lease_counter(&p, LimitId(1), outcome).unwrap();
        assert_eq!(names[i], format!("surgeguard.limit.db.{name}"));
        assert_eq!(lease_counter(&p, LimitId(0), outcome), None, "not a fleet limit");
    }
    assert_eq!(fleet_mode_gauge_names(&p), vec!["surgeguard.limit.db.fleet_mode"]);
}

#[test]
fn answers_are_read_from_the_grpc_status_and_the_message() {
    let ok = {
        // overall OK; one status: OK, limit_remaining 42
        vec![0x08, 1, 0x12, 4, 0x08, 1, 0x18, 42]
    };
    assert_eq!(answer_from(0, &ok), Answer::Granted { remaining: Some(42), until_reset_ns: None });
    // limitador-server's answer: a code and no statuses.
    assert_eq!(answer_from(0, &[0x08, 1]), Answer::Granted { remaining: None, until_reset_ns: None });
    let over = vec![0x08, 2, 0x12, 4, 0x08, 2, 0x18, 3];
    assert_eq!(answer_from(0, &over), Answer::OverLimit { remaining: Some(3), until_reset_ns: None });
    assert_eq!(answer_from(14, &ok), Answer::Failed, "UNAVAILABLE");
    assert_eq!(answer_from(0, &[0x12, 9]), Answer::Failed, "undecodable");
    assert_eq!(answer_from(0, &[]), Answer::Failed, "no code");
}

#[test]
fn a_new_configuration_drops_the_leases_of_limits_it_no_longer_has() {
    let a = admission();
    let store = MemoryStore::default();
    a.create_record(&store).unwrap();
    grant(&a, 900, T0, &store);
    let changed = FLEET.replace("\"burst\": 1000", "\"burst\": 2000");
    let b = Admission::new(parse(changed.as_bytes()).unwrap(), "test", 7);
    b.create_record(&store).unwrap();
    assert_eq!(a.leases(&store)[0].1, Lease::default(), "the old limit's lease is gone");
}
