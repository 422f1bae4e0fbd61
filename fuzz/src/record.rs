//! `record`: a stored record value from arbitrary bytes, or from entries with well-formed tags
//! and arbitrary values (another format's layout under the same tags, a torn write: a lease's
//! entries missing, repeated or out of order), then any sequence of its operations at arbitrary
//! times.
//!
//! - never panics or overflows (the fuzz build has debug assertions on);
//! - the value stays whole entries;
//! - `acquire` admits only if the count stays within the class maximum, and adds exactly one;
//!   `release` removes at most one and never goes below zero; `heartbeat` and `prune` change no
//!   live count;
//! - what `set_bucket`/`set_lease` wrote reads back; `set_lease` changes no in-flight count and
//!   no bucket; `prune` keeps every bucket that is not full and every lease; `retain_leases`
//!   drops exactly the other limits' leases.

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

/// The stored value the operations start from.
#[derive(Debug, Arbitrary)]
enum Initial {
    Bytes(Vec<u8>),
    Entries(Vec<Entry>),
}

/// One 24-byte entry with a tag of a kind the record uses and arbitrary values.
#[derive(Debug, Arbitrary)]
struct Entry {
    tag: Tag,
    a: u64,
    b: u64,
}

#[derive(Debug, Arbitrary)]
enum Tag {
    InFlight(u32),
    Bucket(Id),
    /// A lease's entry `index` (a whole lease has 0 to 4, in order).
    Lease(Id, u8),
    Adaptive,
    Raw(u64),
}

impl Tag {
    /// The tag as `record` lays it out (its module docs).
    fn get(&self) -> u64 {
        match self {
            Tag::InFlight(i) => 1 << 63 | u64::from(instance(*i)),
            Tag::Bucket(id) => id.get(),
            Tag::Lease(id, index) => 1 << 62 | id.get() << 3 | u64::from(index % 8),
            Tag::Adaptive => 1 << 61,
            Tag::Raw(raw) => *raw,
        }
    }
}

impl Initial {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Initial::Bytes(bytes) => bytes.clone(),
            Initial::Entries(entries) => {
                entries.iter().flat_map(|e| [e.tag.get(), e.a, e.b]).flat_map(u64::to_le_bytes).collect()
            }
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
    let Ok(initial) = Initial::arbitrary(&mut u) else { return };
    let Ok(now) = u64::arbitrary(&mut u) else { return };
    let mut ops = Vec::new();
    // `arbitrary` keeps giving defaults once the input runs out: stop there.
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        ops.push(op);
    }
    run(&initial.bytes(), now, ops);
}

/// Applies `ops` to the record stored as `initial`, from `now`, checking after each.
fn run(initial: &[u8], mut now: u64, ops: Vec<Op>) {
    let mut r = Record::from_bytes(initial.to_vec());
    let mut ids: Vec<u64> = Vec::new();
    for op in ops {
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
            let buckets: Vec<u64> = ids.iter().map(|&id| r.bucket(id)).collect();
            r.set_lease(id, &lease);
            assert_eq!(r.lease(id), lease, "a lease reads back what was written");
            assert_eq!(r.in_flight(*now), before, "a lease write changes no in-flight count");
            for (&other, &tat) in ids.iter().zip(&buckets) {
                assert_eq!(r.bucket(other), tat, "a lease write changed bucket {other}");
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_750_000_000_000_000_000;

    /// Another format's record under the same tags (here: buckets' arrival times inverted, as the
    /// upgrade test's next-format build writes them, and a lease cut after its first entry
    /// followed by live in-flight entries), then every operation on it.
    #[test]
    fn a_foreign_record_with_a_torn_lease_keeps_every_property() {
        let entries = vec![
            Entry { tag: Tag::Bucket(Id::Known(1)), a: !(T0 + 5), b: 0 },
            Entry { tag: Tag::Lease(Id::Known(2), 0), a: 40, b: u64::MAX },
            Entry { tag: Tag::InFlight(1), a: 3, b: T0 },
            Entry { tag: Tag::InFlight(2), a: u64::MAX, b: !T0 },
            Entry { tag: Tag::Lease(Id::Known(2), 3), a: 7, b: 8 },
            Entry { tag: Tag::Adaptive, a: u64::MAX, b: 0 },
        ];
        let initial = Initial::Entries(entries).bytes();
        let ops = vec![
            Op::SetBucket(Id::Known(3), T0 + 9),
            Op::SetLease(Id::Known(2), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
            Op::Acquire { instance: 1, class_max: 5 },
            Op::Release(2),
            Op::Lease(Id::Known(2)),
            Op::Bucket(Id::Known(1)),
            Op::Forward(20_000_000_000),
            Op::Prune(Some(1)),
            Op::RetainLeases(vec![Id::Known(2)]),
            Op::Acquire { instance: 3, class_max: 1 },
        ];
        run(&initial, T0, ops);
    }
}
