//! `decision`: requests with arbitrary attributes (method, path with invalid UTF-8 and query
//! strings, header values, client address) from several workers, their stream ends, heartbeats
//! and fleet lease calls, at arbitrary times, against one of a fixed set of policies or one
//! built from the input (`policy`), and `store::MemoryStore`.
//!
//! - never panics or overflows; never fails open (this store neither fails nor races);
//! - a refusal (rate limited or shed, enforce or shadow) writes nothing;
//! - an admission holds an in-flight slot iff there is an in-flight limit, and the count it
//!   reaches is within its class's maximum;
//! - per bucket (a global limit, a key's own bucket, a limit's overflow bucket), any run of
//!   admissions between `t_i` and `t_j` numbers at most `burst + (t_j - t_i) / ns_per_token`
//!   while the clock does not step back (a step back restarts the count: a full bucket's entry
//!   is dropped, and a clock behind it then sees it full), from any stored state;
//! - the same, but for the totals, when the store starts with arbitrary bytes in the record and
//!   the keyed limits' slots (another version's layout, a torn write).

use arbitrary::{Arbitrary, Unstructured};
use std::cell::Cell;
use std::collections::HashMap;
use surgeguard::classify::Request;
use surgeguard::config::{self, KeySource, NS_PER_S};
use surgeguard::decision::{Admission, Verdict};
use surgeguard::fleet::LeaseCall;
use surgeguard::ids::LimitId;
use surgeguard::lease::Answer;
use surgeguard::store::{MemoryStore, SharedStore, StoreError};

use crate::policy::{PolicyShape, METHODS, PATHS, VALUES};

const MS: u64 = 1_000_000;

const POLICIES: &[&str] = &[
    include_str!("../../envoy/storefront.json"),
    // Small numbers, so buckets, keys and slots run out within a short input.
    r#"{
      "classes": [{"name": "critical"}, {"name": "standard", "reserve": 0.3}, {"name": "bulk", "reserve": 0.7}],
      "rules": [
        {"match": {"header": {"name": "user-agent", "contains": "bot", "ignore_case": true}}, "class": "bulk"},
        {"match": {"path_prefix": "/checkout"}, "class": "critical"},
        {"match": {"path": "/cart", "methods": ["POST", "PUT"]}, "class": "critical"}
      ],
      "default_class": "standard",
      "limits": [
        {"name": "all", "tokens_per_second": 3, "burst": 5},
        {"name": "per_ip", "key": "client_ip", "tokens_per_second": 1, "burst": 2, "max_keys": 2},
        {"name": "per_key", "key": {"header": "x-api-key"}, "tokens_per_second": 0.5, "burst": 3, "max_keys": 1,
         "match": {"path_prefix": "/api"}},
        {"name": "search", "tokens_per_second": 100, "burst": 1, "match": {"path_prefix": "/search"}}
      ],
      "concurrency": {"max_in_flight": 4}
    }"#,
    r#"{
      "mode": "shadow",
      "classes": [{"name": "a"}, {"name": "b", "reserve": 0.5}],
      "rules": [{"match": {"header": {"name": "x-tier", "exact": "gold"}}, "class": "a"}],
      "limits": [
        {"name": "g", "tokens_per_second": 2, "burst": 2},
        {"name": "k", "key": {"header": "x-tier"}, "tokens_per_second": 1, "burst": 1, "max_keys": 3}
      ],
      "concurrency": {"max_in_flight": 2}
    }"#,
    r#"{
      "classes": [{"name": "critical"}, {"name": "rest", "reserve": 0.5}],
      "rules": [{"match": {"methods": ["POST"]}, "class": "critical"}],
      "limits": [
        {"name": "fleet", "tokens_per_second": 10, "burst": 20,
         "fleet": {"cluster": "rls", "domain": "d", "local_share": 0.5, "max_lease": 8}},
        {"name": "local", "key": "client_ip", "tokens_per_second": 5, "burst": 5, "max_keys": 4}
      ],
      "concurrency": {"max_in_flight": 3, "retry_after_s": 2}
    }"#,
    r#"{
      "classes": [{"name": "gold"}, {"name": "silver", "reserve": 0.25}, {"name": "bronze", "reserve": 1.0}],
      "rules": [{"match": {"header": {"name": "x-tier", "prefix": "g"}}, "class": "gold"},
                {"match": {"header": {"name": "x-tier", "present": true}}, "class": "silver"}],
      "concurrency": {"max_in_flight": 5}
    }"#,
];

/// A first input byte below this picks one of [`POLICIES`] (an older corpus input keeps its
/// meaning: a multiple of their number); from it up, a policy built from the input.
const FIXED_PICKS: u8 = 200;
const _: () = assert!((FIXED_PICKS as usize).is_multiple_of(POLICIES.len()));

/// A value from a short list most of the time, so rules and keys match; any bytes otherwise.
#[derive(Debug, Arbitrary)]
enum Word {
    Known(u8),
    Raw(Vec<u8>),
}

impl Word {
    fn get(&self, known: &[&[u8]]) -> Vec<u8> {
        match self {
            Word::Known(i) => known.get(usize::from(*i) % known.len()).map_or_else(Vec::new, |w| w.to_vec()),
            Word::Raw(bytes) => bytes.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Request {
        method: Word,
        path: Word,
        headers: Vec<Option<Word>>,
        client_ip: Word,
        worker: u8,
    },
    /// A stream ends: releases a slot `worker` holds, if any.
    StreamEnd {
        worker: u8,
    },
    Heartbeat {
        worker: u8,
        late_releases: u8,
    },
    Forward(u32),
    Back(u32),
    LeaseTick,
    LeaseAnswer {
        call: u8,
        answer: ArbAnswer,
    },
}

#[derive(Debug, Arbitrary)]
enum ArbAnswer {
    Granted { remaining: Option<u32>, until_reset_ms: Option<u16> },
    OverLimit { remaining: Option<u32> },
    Failed,
}

impl ArbAnswer {
    fn get(&self) -> Answer {
        match self {
            ArbAnswer::Granted { remaining, until_reset_ms } => Answer::Granted {
                remaining: remaining.map(u64::from),
                until_reset_ns: until_reset_ms.map(|ms| u64::from(ms) * MS),
            },
            ArbAnswer::OverLimit { remaining } => {
                Answer::OverLimit { remaining: remaining.map(u64::from), until_reset_ns: None }
            }
            ArbAnswer::Failed => Answer::Failed,
        }
    }
}

/// `MemoryStore`, counting the writes that landed.
#[derive(Default)]
struct CountingStore {
    inner: MemoryStore,
    writes: Cell<u64>,
}

impl SharedStore for CountingStore {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.inner.load(key)
    }
    fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
        let written = self.inner.compare_and_swap(key, value, version)?;
        self.writes.set(self.writes.get() + u64::from(written));
        Ok(written)
    }
}

/// Which bucket an admission drew from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum BucketKey {
    Global(usize),
    Keyed(usize, Option<Vec<u8>>),
    Overflow(usize),
}

const WORKERS: u8 = 3;

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(which) = u8::arbitrary(&mut u) else { return };
    let json = if which < FIXED_PICKS {
        POLICIES[usize::from(which) % POLICIES.len()].to_string()
    } else {
        let Ok(shape) = PolicyShape::arbitrary(&mut u) else { return };
        shape.json()
    };
    let policy = match config::parse(json.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("a valid policy is refused: {json}\n{e:?}"),
    };
    let g = Admission::new(policy, "fuzz", 7);
    let store = CountingStore::default();
    // What another version or a torn write may have left in shared data: the record, and the
    // keyed limits' slots (`n` past `max_keys` is the overflow bucket).
    let Ok(stored) = Option::<(Vec<u8>, Vec<(u8, u32, Vec<u8>)>)>::arbitrary(&mut u) else { return };
    if let Some((record, slots)) = &stored {
        let _ = store.compare_and_swap("fuzz/record", record, None);
        let keyed: Vec<_> = g.policy.limits.iter().filter(|l| l.key != KeySource::Global).collect();
        for (limit, n, value) in slots {
            let Some(l) = keyed.get(usize::from(*limit) % keyed.len().max(1)) else { break };
            let n = n % (l.max_keys + 1);
            let slot = if n == l.max_keys { "overflow".to_string() } else { n.to_string() };
            let _ = store.compare_and_swap(&format!("fuzz/slots/{}/{slot}", l.state_id), value, None);
        }
    }
    if g.create_record(&store).is_err() {
        panic!("create_record failed on a memory store");
    }
    let Ok(start_s) = u.int_in_range(0..=4_000_000_000u64) else { return };
    let mut now = start_s * NS_PER_S;
    let mut held = [0u64; WORKERS as usize];
    let mut admitted_at: HashMap<BucketKey, Vec<u64>> = HashMap::new();
    let mut calls: Vec<LeaseCall> = Vec::new();
    // The in-flight totals hold only for a clock that never went back (a step back can revive
    // an expired instance's entry) and a store that started empty (no unknown instances).
    let mut check_totals = stored.is_none();
    // `arbitrary` keeps giving defaults once the input runs out: stop there.
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        match op {
            Op::Request { method, path, headers, client_ip, worker } => {
                let worker = worker % WORKERS;
                let (method, path, client_ip) = (method.get(METHODS), path.get(PATHS), client_ip.get(VALUES));
                let headers: Vec<Option<Vec<u8>>> = (0..g.policy.header_names.len())
                    .map(|i| headers.get(i).and_then(|h| h.as_ref()).map(|w| w.get(VALUES)))
                    .collect();
                let req = Request::new(&method, &path, &headers, &client_ip);
                let writes = store.writes.get();
                let d = g.decide(&req, now, u32::from(worker), &store);
                match d.verdict {
                    Verdict::RateLimited { .. } | Verdict::Shed { .. } => {
                        assert_eq!(store.writes.get(), writes, "a refusal wrote to the store: {d:?}");
                    }
                    Verdict::FailedOpen => panic!("failed open on a store that neither fails nor races"),
                    Verdict::Admitted { in_flight } => {
                        match (&g.policy.concurrency, in_flight) {
                            (Some(c), Some(n)) => {
                                assert!(
                                    n <= u64::from(c.class_max(d.class)),
                                    "{n} in flight, class max {}",
                                    c.class_max(d.class)
                                );
                                held[usize::from(worker)] += 1;
                            }
                            (None, None) => {}
                            (c, n) => panic!("in-flight slot {n:?} with concurrency {c:?}"),
                        }
                        for id in d.applied.iter() {
                            let Some(limit) = g.policy.limit(id) else { panic!("applied limit {id:?} out of range") };
                            if limit.fleet.is_some() {
                                continue;
                            }
                            let key = match limit.key {
                                KeySource::Global => BucketKey::Global(id.index()),
                                _ if d.overflowed.contains(id) => BucketKey::Overflow(id.index()),
                                KeySource::ClientIp => BucketKey::Keyed(id.index(), Some(client_ip.clone())),
                                KeySource::Header(slot) => BucketKey::Keyed(id.index(), headers[slot].clone()),
                            };
                            let times = admitted_at.entry(key).or_default();
                            times.push(now);
                            check_bucket_bound(times, limit.burst, limit.ns_per_token, id);
                        }
                    }
                }
            }
            Op::StreamEnd { worker } => {
                let worker = usize::from(worker % WORKERS);
                if held[worker] > 0 {
                    held[worker] -= 1;
                    assert!(g.release(worker as u32, now, &store).is_some(), "a release failed");
                }
            }
            Op::Heartbeat { worker, late_releases } => {
                let worker = usize::from(worker % WORKERS);
                let late = u64::from(late_releases).min(held[worker]);
                held[worker] -= late;
                let _ = g.heartbeat(worker as u32, now, late, &store);
            }
            Op::Forward(step) => now = now.saturating_add(u64::from(step) * (MS / 64)),
            Op::Back(step) => {
                now = now.saturating_sub(u64::from(step) * (MS / 64));
                admitted_at.clear();
                check_totals = false;
            }
            Op::LeaseTick => {
                let Some(tick) = g.lease_calls_due(now, &store) else { panic!("a lease tick failed") };
                calls.extend(tick.calls);
            }
            Op::LeaseAnswer { call, answer } => {
                if let Some(c) = calls.get(usize::from(call) % calls.len().max(1)) {
                    let _ = g.apply_lease_answer(c.limit, c.deadline_ns, answer.get(), now, &store);
                }
            }
        }
        if let (Some(c), true) = (&g.policy.concurrency, check_totals) {
            let Some(n) = g.in_flight(now, &store) else { panic!("in_flight failed") };
            let held_total: u64 = held.iter().sum();
            assert!(n <= held_total, "{n} in flight, {held_total} held");
            assert!(n <= u64::from(c.max_in_flight), "{n} in flight past {}", c.max_in_flight);
        }
    }
}

/// The last admission against every earlier one of the same bucket (see the module doc).
fn check_bucket_bound(times: &[u64], burst: u64, ns_per_token: u64, id: LimitId) {
    let Some((&last, earlier)) = times.split_last() else { return };
    for (i, &first) in earlier.iter().enumerate() {
        let count = (times.len() - i) as u128;
        let bound = u128::from(burst) + u128::from(last.saturating_sub(first) / ns_per_token);
        assert!(count <= bound, "limit {id:?}: {count} admitted in {} ns, bound {bound}", last - first);
    }
}
