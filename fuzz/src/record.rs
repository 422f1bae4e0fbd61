//! `record`: a stored record value from arbitrary bytes (another version's layout, a torn
//! write), then any sequence of its operations at arbitrary times.
//!
//! - never panics or overflows (the fuzz build has debug assertions on);
//! - the value stays whole entries;
//! - `acquire` admits only if the count stays within the class maximum, and adds exactly one;
//!   `release` removes at most one and never goes below zero; `heartbeat` and `prune` change no
//!   live count;
//! - what `set_bucket`/`set_lease` wrote reads back; `prune` keeps every bucket that is not
//!   full and every lease; `retain_leases` drops exactly the other limits' leases.

use arbitrary::{Arbitrary, Unstructured};
use surgeguard::bucket::is_full;
use surgeguard::lease::{Lease, WORDS};
use surgeguard::record::{bucket_id, Record};

const ENTRY_BYTES: usize = 24;

#[derive(Debug, Arbitrary)]
enum Id {
    Known(u8),
    Raw(u64),
}

impl Id {
    /// A bucket id as `record::bucket_id` makes them.
    fn get(&self) -> u64 {
        match self {
            Id::Known(i) => bucket_id(&format!("limit{}@1000x{}", i % 4, i / 4 % 4)),
            Id::Raw(raw) => raw & ((1 << 59) - 1),
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    Forward(u64),
    Back(u64),
    Bucket(Id),
    SetBucket(Id, u64),
    Acquire { instance: u32, class_max: u32 },
    Release(u32),
    Heartbeat(u32),
    Lease(Id),
    SetLease(Id, [u64; WORDS]),
    Prune(Option<u32>),
    RetainLeases(Vec<Id>),
}

/// Instance ids: mostly a few, so operations meet the same entries.
fn instance(raw: u32) -> u32 {
    if raw < 1 << 31 {
        raw % 4
    } else {
        raw
    }
}

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(initial) = Vec::<u8>::arbitrary(&mut u) else { return };
    let Ok(mut now) = u64::arbitrary(&mut u) else { return };
    let mut r = Record::from_bytes(initial);
    let mut ids: Vec<u64> = Vec::new();
    // `arbitrary` keeps giving defaults once the input runs out: stop there.
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        apply(&mut r, &mut now, op, &mut ids);
        assert_eq!(r.as_bytes().len() % ENTRY_BYTES, 0, "a record is whole entries");
    }
}

fn apply(r: &mut Record, now: &mut u64, op: Op, ids: &mut Vec<u64>) {
    let before = r.in_flight(*now);
    match op {
        Op::Forward(step) => *now = now.saturating_add(step % (100 * 1_000_000_000)),
        Op::Back(step) => *now = now.saturating_sub(step % (100 * 1_000_000_000)),
        Op::Bucket(id) => {
            let _ = r.bucket(id.get());
        }
        Op::SetBucket(id, tat) => {
            let id = id.get();
            r.set_bucket(id, tat);
            assert_eq!(r.bucket(id), tat, "a bucket reads back what was written");
            ids.push(id);
        }
        Op::Acquire { instance: i, class_max } => {
            let admitted = r.acquire(instance(i), *now, class_max);
            let after = r.in_flight(*now);
            if admitted {
                assert!(before < u64::from(class_max), "admitted at {before} of {class_max}");
                assert_eq!(after, before + 1, "an admission takes exactly one slot");
            } else {
                assert!(before.saturating_add(1) > u64::from(class_max), "refused at {before} of {class_max}");
                assert_eq!(after, before, "a refusal takes nothing");
            }
        }
        Op::Release(i) => {
            r.release(instance(i), *now);
            let after = r.in_flight(*now);
            assert!(after <= before && after >= before.saturating_sub(1), "release: {before} -> {after}");
        }
        Op::Heartbeat(i) => {
            r.heartbeat(instance(i), *now);
            assert_eq!(r.in_flight(*now), before, "a heartbeat changes no live count");
        }
        Op::Lease(id) => {
            let _ = r.lease(id.get());
        }
        Op::SetLease(id, words) => {
            let id = id.get();
            let lease = Lease::from_words(&words);
            r.set_lease(id, &lease);
            assert_eq!(r.lease(id), lease, "a lease reads back what was written");
            ids.push(id);
        }
        Op::Prune(keep) => {
            let buckets: Vec<u64> = ids.iter().map(|&id| r.bucket(id)).collect();
            let leases: Vec<Lease> = ids.iter().map(|&id| r.lease(id)).collect();
            r.prune(*now, keep.map(instance));
            assert_eq!(r.in_flight(*now), before, "pruning drops only dead instances");
            for ((&id, &tat), lease) in ids.iter().zip(&buckets).zip(&leases) {
                if !is_full(tat, *now) {
                    assert_eq!(r.bucket(id), tat, "pruning dropped a bucket that was not full");
                }
                assert_eq!(r.lease(id), *lease, "pruning changed a lease");
            }
        }
        Op::RetainLeases(keep) => {
            let keep: Vec<u64> = keep.iter().map(Id::get).collect();
            let leases: Vec<Lease> = ids.iter().map(|&id| r.lease(id)).collect();
            r.retain_leases(&keep);
            assert_eq!(r.in_flight(*now), before);
            for (&id, lease) in ids.iter().zip(&leases) {
                let expected = if keep.contains(&id) { *lease } else { Lease::default() };
                assert_eq!(r.lease(id), expected, "retain_leases({keep:?}) on lease {id}");
            }
        }
    }
}
