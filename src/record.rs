//! The shared record: every unkeyed token bucket and the in-flight table of one plugin, in one
//! compare-and-swap value. One read and one write decide a request that has no keyed limit, and
//! its tokens and in-flight slot are taken atomically (nothing to undo).
//!
//! Layout: a sequence of 24-byte entries `(tag, a, b)`, little-endian u64s, edited in place
//! (no allocation beyond the value itself):
//! - a bucket: `tag` = the limit's state id (top bit 0), `a` = its arrival time (see `bucket`).
//!   A full bucket (`a <= now`) is the same as no entry, so full buckets are dropped at every
//!   write: the record only holds buckets that carry information. A limit whose rate or burst
//!   changed gets a new id (a fresh full bucket); an unchanged one keeps its entry over reloads.
//! - an in-flight entry per VM instance (each Envoy worker runs its own VM): `tag` = top bit 1
//!   and the instance id, `a` = requests it holds in flight, `b` = its heartbeat.
//! - a fleet limit's lease (see `lease`): [`LEASE_ENTRIES`] entries, `tag` = bit 62, the limit's
//!   bucket id shifted left by 3, and the entry's index; `a`, `b` = two words of the lease each.
//!   The five are written and dropped together (consecutive as written), and found by tag.
//! - the adaptive in-flight limit L (see `adaptive`): `tag` = [`ADAPTIVE_LIMIT_TAG`] (bit 61
//!   alone: no bucket id reaches it, and the two top bits are clear), `a` = L. Written by the
//!   worker that runs a control window; read by every decision in the read it already makes.
//!
//! Why per instance: a VM that dies (a crash, a reload) never reports its streams' ends. Every
//! write by an instance, and a periodic tick, refreshes its heartbeat; an entry whose heartbeat
//! is older than [`LEASE_NS`] belongs to a dead VM and is dropped, so a restart can inflate the
//! count for at most the lease, never forever.

use crate::bucket::is_full;
use crate::config::NS_PER_S;
use crate::lease::Lease;
use crate::store::read_u64;

/// An entry not refreshed for this long belongs to a VM that is gone.
pub const LEASE_NS: u64 = 10 * NS_PER_S;
/// How often each VM refreshes its heartbeat (and flushes its counters) even when idle.
pub const HEARTBEAT_PERIOD_MS: u64 = 1_000;

const ENTRY_BYTES: usize = 24;
/// A bucket's arrival time as its entry's `a` holds it. The `test-next-format` build (a stand-in
/// for the next format, see `format`) stores it inverted: the same tags with a meaning this format
/// would misread, and the other way round (a bucket empty for centuries: every request refused).
#[cfg(not(feature = "test-next-format"))]
fn stored_tat(tat_ns: u64) -> u64 {
    tat_ns
}
#[cfg(feature = "test-next-format")]
fn stored_tat(tat_ns: u64) -> u64 {
    !tat_ns
}
const IN_FLIGHT_TAG: u64 = 1 << 63;
const LEASE_TAG: u64 = 1 << 62;
/// The adaptive limit's entry. Bucket ids are below 2^59 and lease tags have bit 62 set, so this
/// value is no other entry's tag.
const ADAPTIVE_LIMIT_TAG: u64 = 1 << 61;
/// Entries one lease takes: two of its words each.
pub const LEASE_ENTRIES: usize = crate::lease::WORDS / 2;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    bytes: Vec<u8>,
}

/// The id a bucket is stored under: a stable hash of the limit's `state_id` with the two top
/// bits clear (they mark in-flight and lease entries) and room to shift it into a lease tag.
pub fn bucket_id(state_id: &str) -> u64 {
    crate::keyhash::hash(0, 0, state_id.as_bytes()) & ((1 << 59) - 1)
}

fn lease_tag(id: u64, entry: usize) -> u64 {
    LEASE_TAG | (id << 3) | entry as u64
}

fn is_lease_tag(tag: u64) -> bool {
    tag & (IN_FLIGHT_TAG | LEASE_TAG) == LEASE_TAG
}

impl Record {
    /// Takes a stored value; a torn tail (not a whole entry) is dropped.
    pub fn from_bytes(mut bytes: Vec<u8>) -> Record {
        bytes.truncate(bytes.len() / ENTRY_BYTES * ENTRY_BYTES);
        Record { bytes }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn entry_count(&self) -> usize {
        self.bytes.len() / ENTRY_BYTES
    }

    fn tag_at(&self, at: usize) -> u64 {
        read_u64(&self.bytes, at).unwrap_or(0)
    }

    /// The entry's two values (`a`, `b`).
    fn values_at(&self, at: usize) -> (u64, u64) {
        (read_u64(&self.bytes, at + 8).unwrap_or(0), read_u64(&self.bytes, at + 16).unwrap_or(0))
    }

    /// The offset of the entry tagged `tag`. Only tags are read while searching: the record is
    /// scanned several times per request.
    fn position(&self, tag: u64) -> Option<usize> {
        (0..self.entry_count()).map(|i| i * ENTRY_BYTES).find(|&at| self.tag_at(at) == tag)
    }

    fn find(&self, tag: u64) -> Option<(usize, u64, u64)> {
        let at = self.position(tag)?;
        let (a, b) = self.values_at(at);
        Some((at, a, b))
    }

    fn write(&mut self, at: usize, tag: u64, a: u64, b: u64) {
        let mut entry = [0u8; ENTRY_BYTES];
        entry[..8].copy_from_slice(&tag.to_le_bytes());
        entry[8..16].copy_from_slice(&a.to_le_bytes());
        entry[16..].copy_from_slice(&b.to_le_bytes());
        if let Some(slot) = self.bytes.get_mut(at..at + ENTRY_BYTES) {
            slot.copy_from_slice(&entry);
        }
    }

    fn put(&mut self, tag: u64, a: u64, b: u64) {
        let at = match self.position(tag) {
            Some(at) => at,
            None => {
                self.bytes.resize(self.bytes.len() + ENTRY_BYTES, 0);
                self.bytes.len() - ENTRY_BYTES
            }
        };
        self.write(at, tag, a, b);
    }

    /// Drops what carries no information at `now_ns`: full buckets and dead instances (except
    /// `keep_instance`, which is being written). A dropped bucket reads as full: if the clock
    /// later steps back by `d`, that bucket holds up to `d` worth of tokens more than it would
    /// have (the one way a backward clock gives tokens; bounded by the step).
    pub fn prune(&mut self, now_ns: u64, keep_instance: Option<u32>) {
        let keep_tag = keep_instance.map(in_flight_tag);
        self.retain(|record, at, tag| {
            if tag & IN_FLIGHT_TAG != 0 {
                Some(tag) == keep_tag || is_live(record.values_at(at).1, now_ns)
            } else {
                // A lease is dropped only with its limit (`retain_leases`), L only by
                // `clear_adaptive_limit`.
                tag & LEASE_TAG != 0
                    || tag == ADAPTIVE_LIMIT_TAG
                    || !is_full(stored_tat(record.values_at(at).0), now_ns)
            }
        });
    }

    /// Keeps the entries `keep(record, offset, tag)` says to, in order.
    fn retain(&mut self, keep: impl Fn(&Record, usize, u64) -> bool) {
        let mut kept = 0;
        for i in 0..self.entry_count() {
            let at = i * ENTRY_BYTES;
            if keep(self, at, self.tag_at(at)) {
                if kept != at {
                    self.bytes.copy_within(at..at + ENTRY_BYTES, kept);
                }
                kept += ENTRY_BYTES;
            }
        }
        self.bytes.truncate(kept);
    }

    /// A bucket's arrival time; 0 (full) if it has no entry.
    pub fn bucket(&self, id: u64) -> u64 {
        self.find(id).map_or(0, |(_, tat, _)| stored_tat(tat))
    }

    pub fn set_bucket(&mut self, id: u64, tat_ns: u64) {
        self.put(id, stored_tat(tat_ns), 0);
    }

    /// A fleet limit's lease; a fresh one (local mode, a call due) if it has none.
    pub fn lease(&self, id: u64) -> Lease {
        let Some(positions) = self.lease_positions(id) else { return Lease::default() };
        let mut words = [0u64; crate::lease::WORDS];
        for (pair, &at) in words.chunks_exact_mut(2).zip(&positions) {
            (pair[0], pair[1]) = self.values_at(at);
        }
        Lease::from_words(&words)
    }

    /// Where each of limit `id`'s lease entries is: the first entry tagged with each index, or
    /// `None` if one is missing. Found by tag, not by adjacency, so a lease reads the same
    /// whatever other entries sit between its own (another layout's bytes) and whatever
    /// `prune` drops from between them.
    fn lease_positions(&self, id: u64) -> Option<[usize; LEASE_ENTRIES]> {
        // `lease_tag(id, 0)` has its 3 low bits clear: entry `e`'s tag is it plus `e`.
        let first_tag = lease_tag(id, 0);
        let mut positions = [usize::MAX; LEASE_ENTRIES];
        let mut missing = LEASE_ENTRIES;
        for (i, stored) in self.bytes.chunks_exact(ENTRY_BYTES).enumerate() {
            let Some(tag) = stored.first_chunk::<8>() else { continue };
            let entry = u64::from_le_bytes(*tag).wrapping_sub(first_tag);
            if entry >= LEASE_ENTRIES as u64 {
                continue;
            }
            if let Some(slot) = positions.get_mut(entry as usize).filter(|slot| **slot == usize::MAX) {
                *slot = i * ENTRY_BYTES;
                missing -= 1;
                if missing == 0 {
                    return Some(positions);
                }
            }
        }
        None
    }

    /// Writes a fleet limit's lease over the stored one if that has all its entries (where
    /// `lease` reads them); else (a torn write, another layout's bytes: entries missing) drops
    /// every entry of it and appends a whole one. Either way no other entry is ever
    /// overwritten.
    pub fn set_lease(&mut self, id: u64, lease: &Lease) {
        let words = lease.to_words();
        let positions = match self.lease_positions(id) {
            Some(positions) => positions,
            None => {
                self.retain(|record, at, _| !record.is_lease_entry_of(id, at));
                let first = self.bytes.len();
                self.bytes.resize(first + LEASE_ENTRIES * ENTRY_BYTES, 0);
                std::array::from_fn(|entry| first + entry * ENTRY_BYTES)
            }
        };
        for (entry, (pair, at)) in words.chunks_exact(2).zip(positions).enumerate() {
            self.write(at, lease_tag(id, entry), pair[0], pair[1]);
        }
    }

    /// Whether the entry at `at` is one of limit `id`'s lease entries (any index, even one a
    /// whole lease never has).
    fn is_lease_entry_of(&self, id: u64, at: usize) -> bool {
        let tag = self.tag_at(at);
        is_lease_tag(tag) && (tag & !LEASE_TAG) >> 3 == id
    }

    /// Drops the leases of limits not in `ids` (a limit removed or changed by a new
    /// configuration); all entries of a lease go together.
    pub fn retain_leases(&mut self, ids: &[u64]) {
        self.retain(|_, _, tag| !is_lease_tag(tag) || ids.contains(&((tag & !LEASE_TAG) >> 3)));
    }

    /// The adaptive limit L, if a control window wrote one.
    pub fn adaptive_limit(&self) -> Option<u32> {
        self.find(ADAPTIVE_LIMIT_TAG).map(|(_, limit, _)| limit.min(u64::from(u32::MAX)) as u32)
    }

    pub fn set_adaptive_limit(&mut self, limit: u32) {
        self.put(ADAPTIVE_LIMIT_TAG, u64::from(limit), 0);
    }

    /// Drops L (a configuration without an adaptive limit); returns whether there was one.
    pub fn clear_adaptive_limit(&mut self) -> bool {
        let Some((at, _, _)) = self.find(ADAPTIVE_LIMIT_TAG) else { return false };
        self.bytes.drain(at..at + ENTRY_BYTES);
        true
    }

    /// Requests in flight at `now_ns`, counting live instances only. Saturating: a value of
    /// another layout or a torn write may hold any counts, and a wrapped sum would admit.
    pub fn in_flight(&self, now_ns: u64) -> u64 {
        let mut total: u64 = 0;
        for i in 0..self.entry_count() {
            let at = i * ENTRY_BYTES;
            if self.tag_at(at) & IN_FLIGHT_TAG != 0 {
                let (count, heartbeat) = self.values_at(at);
                if is_live(heartbeat, now_ns) {
                    // Saturating: a torn or foreign stored record must refuse, not wrap.
                    total = total.saturating_add(count);
                }
            }
        }
        total
    }

    /// This instance's live count (a dead entry's count cannot be trusted: its releases may
    /// have been dropped with it).
    fn own_count(&self, instance: u32, now_ns: u64) -> (u64, u64) {
        match self.find(in_flight_tag(instance)) {
            Some((_, count, heartbeat)) if is_live(heartbeat, now_ns) => (count, heartbeat),
            Some((_, _, heartbeat)) => (0, heartbeat),
            None => (0, 0),
        }
    }

    fn set_own(&mut self, instance: u32, count: u64, heartbeat_ns: u64, now_ns: u64) {
        self.put(in_flight_tag(instance), count, heartbeat_ns.max(now_ns));
    }

    /// Takes a slot if `in_flight + 1 <= class_max`; returns whether it did.
    pub fn acquire(&mut self, instance: u32, now_ns: u64, class_max: u32) -> bool {
        if self.in_flight(now_ns).saturating_add(1) > u64::from(class_max) {
            return false;
        }
        let (count, heartbeat) = self.own_count(instance, now_ns);
        self.set_own(instance, count.saturating_add(1), heartbeat, now_ns);
        true
    }

    /// Returns a slot this instance took; never below zero.
    pub fn release(&mut self, instance: u32, now_ns: u64) {
        let (count, heartbeat) = self.own_count(instance, now_ns);
        self.set_own(instance, count.saturating_sub(1), heartbeat, now_ns);
    }

    /// Refreshes this instance's heartbeat (periodic, so an idle worker keeps its entry).
    pub fn heartbeat(&mut self, instance: u32, now_ns: u64) {
        let (count, heartbeat) = self.own_count(instance, now_ns);
        self.set_own(instance, count, heartbeat, now_ns);
    }
}

/// What is written back (see `store::update`).
impl AsRef<[u8]> for Record {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

fn in_flight_tag(instance: u32) -> u64 {
    IN_FLIGHT_TAG | u64::from(instance)
}

fn is_live(heartbeat_ns: u64, now_ns: u64) -> bool {
    now_ns.saturating_sub(heartbeat_ns) <= LEASE_NS
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T0: u64 = 1_000 * NS_PER_S;

    #[test]
    fn admits_up_to_the_class_maximum_across_instances() {
        let mut r = Record::default();
        assert!(r.acquire(1, T0, 3));
        assert!(r.acquire(2, T0, 3));
        assert!(r.acquire(1, T0, 3));
        assert!(!r.acquire(2, T0, 3));
        assert_eq!(r.in_flight(T0), 3);
    }

    #[test]
    fn release_returns_the_count_to_zero_and_never_below() {
        let mut r = Record::default();
        for _ in 0..5 {
            r.acquire(7, T0, 10);
        }
        for _ in 0..6 {
            r.release(7, T0);
        }
        assert_eq!(r.in_flight(T0), 0);
    }

    #[test]
    fn a_dead_instance_stops_counting_after_the_lease_and_is_pruned() {
        let mut r = Record::default();
        for _ in 0..4 {
            r.acquire(1, T0, 4);
        }
        assert!(!r.acquire(2, T0 + LEASE_NS, 4));
        assert!(r.acquire(2, T0 + LEASE_NS + 1, 4));
        r.prune(T0 + LEASE_NS + 1, Some(2));
        assert_eq!(r.as_bytes().len(), ENTRY_BYTES, "only instance 2 is left");
    }

    #[test]
    fn heartbeats_keep_an_idle_instance_alive() {
        let mut r = Record::default();
        r.acquire(1, T0, 4);
        r.heartbeat(1, T0 + LEASE_NS);
        assert_eq!(r.in_flight(T0 + 2 * LEASE_NS - 1), 1);
    }

    #[test]
    fn full_buckets_are_pruned_and_read_back_as_full() {
        let mut r = Record::default();
        r.set_bucket(11, T0 + 5);
        r.set_bucket(12, T0 - 5);
        r.acquire(3, T0, 9);
        r.prune(T0, None);
        assert_eq!(r.bucket(11), T0 + 5);
        assert_eq!(r.bucket(12), 0);
        assert_eq!(r.as_bytes().len(), 2 * ENTRY_BYTES);
    }

    #[test]
    fn bytes_round_trip_and_a_torn_tail_is_ignored() {
        let mut r = Record::default();
        r.set_bucket(bucket_id("a@1x1"), T0 + 1);
        r.acquire(4, T0, 9);
        let mut bytes = r.as_bytes().to_vec();
        bytes.push(0xff);
        assert_eq!(Record::from_bytes(bytes), r);
    }

    #[test]
    fn a_lease_round_trips_beside_buckets_and_in_flight_entries_and_survives_pruning() {
        let mut r = Record::default();
        r.set_bucket(11, T0 + 5);
        let mut lease = Lease { tokens: 40, fleet_remaining: 900, window_end_ns: T0 + 7, ..Lease::default() };
        r.set_lease(21, &lease);
        r.acquire(3, T0, 9);
        assert_eq!(r.lease(21), lease);
        assert_eq!(r.lease(22), Lease::default(), "another limit has none yet");
        lease.tokens = 39;
        r.set_lease(21, &lease);
        r.prune(T0 + 10 * LEASE_NS, None);
        assert_eq!(r.lease(21), lease);
        assert_eq!(r.as_bytes().len(), LEASE_ENTRIES * ENTRY_BYTES, "the bucket and the dead instance went");
        assert_eq!(r.in_flight(T0), 0);
    }

    #[test]
    fn retaining_leases_drops_only_the_leases_of_other_limits() {
        let mut r = Record::default();
        r.set_lease(21, &Lease { tokens: 1, ..Lease::default() });
        r.set_bucket(11, T0 + 5);
        r.set_lease(22, &Lease { tokens: 2, ..Lease::default() });
        r.retain_leases(&[22]);
        assert_eq!(r.lease(21), Lease::default());
        assert_eq!(r.lease(22).tokens, 2);
        assert_eq!(r.bucket(11), T0 + 5);
    }

    // Found by fuzzing (fuzz/, target `record`): the sum overflowed (a panic in a debug build,
    // a wrapped count that admits in a release one).
    #[test]
    fn counts_that_overflow_the_sum_refuse_instead_of_wrapping() {
        let mut r = Record::default();
        r.put(in_flight_tag(1), u64::MAX - 1, T0);
        r.put(in_flight_tag(2), 3, T0);
        assert_eq!(r.in_flight(T0), u64::MAX);
        assert!(!r.acquire(1, T0, u32::MAX));
        let mut own = Record::default();
        own.put(in_flight_tag(1), u64::MAX, T0);
        assert!(!own.acquire(1, T0, u32::MAX));
        own.release(1, T0);
        assert_eq!(own.in_flight(T0), u64::MAX - 1);
    }

    // Found by reading: `set_lease` wrote its entries from wherever the lease's first entry was,
    // over whatever followed it (another instance's in-flight count, a bucket) or past the end
    // (the lease was lost), when the stored lease was not whole.
    #[test]
    fn setting_a_lease_over_a_torn_one_never_overwrites_other_entries() {
        let lease = Lease { tokens: 40, fleet_remaining: 900, window_end_ns: T0 + 7, ..Lease::default() };
        let mut r = Record::default();
        r.put(lease_tag(21, 0), 5, 6);
        r.acquire(3, T0, 9);
        r.set_bucket(11, T0 + 5);
        r.put(lease_tag(21, 3), 7, 8);
        r.set_lease(21, &lease);
        assert_eq!(r.lease(21), lease);
        assert_eq!(r.in_flight(T0), 1, "the in-flight entry after the torn lease is intact");
        assert_eq!(r.bucket(11), T0 + 5);
        assert_eq!(r.as_bytes().len(), (2 + LEASE_ENTRIES) * ENTRY_BYTES, "the torn entries went");

        let mut at_end = Record::default();
        at_end.acquire(3, T0, 9);
        at_end.put(lease_tag(21, 0), 5, 6);
        at_end.set_lease(21, &lease);
        assert_eq!(at_end.lease(21), lease, "written whole, not cut off at the end");
        assert_eq!(at_end.in_flight(T0), 1);
    }

    // Found by fuzzing (target `record`, input `fuzz/corpus/record/record-pruning-changed-a-lease`): a
    // lease was read only if its entries were adjacent, so pruning a full bucket or a dead
    // instance from between them (another layout's bytes) changed what it read.
    #[test]
    fn a_lease_reads_the_same_whatever_sits_between_its_entries_and_pruning_keeps_it() {
        let lease = Lease { tokens: 40, fleet_remaining: 900, window_end_ns: T0 + 7, ..Lease::default() };
        let words = lease.to_words();
        let mut r = Record::default();
        for (entry, pair) in words.chunks_exact(2).enumerate() {
            r.put(lease_tag(21, entry), pair[0], pair[1]);
            r.set_bucket(100 + entry as u64, T0 - 1);
            r.put(in_flight_tag(entry as u32), 1, T0 - 2 * LEASE_NS);
        }
        assert_eq!(r.lease(21), lease, "found by tag, not by adjacency");
        r.prune(T0, None);
        assert_eq!(r.as_bytes().len(), LEASE_ENTRIES * ENTRY_BYTES, "full buckets and dead instances went");
        assert_eq!(r.lease(21), lease, "pruning changed no lease");

        let next = Lease { tokens: 3, ..lease };
        let mut spread = Record::default();
        spread.put(lease_tag(21, 1), 9, 9);
        spread.set_bucket(11, T0 + 5);
        for (entry, pair) in words.chunks_exact(2).enumerate() {
            spread.put(lease_tag(21, entry), pair[0], pair[1]);
        }
        spread.set_lease(21, &next);
        assert_eq!(spread.lease(21), next, "written where it is read");
        assert_eq!(spread.bucket(11), T0 + 5);
    }

    #[test]
    fn the_adaptive_limit_lives_beside_the_other_entries_survives_pruning_and_can_be_cleared() {
        let mut r = Record::default();
        assert_eq!(r.adaptive_limit(), None);
        r.acquire(3, T0, 9);
        r.set_adaptive_limit(40);
        r.set_bucket(11, T0 + 5);
        r.set_adaptive_limit(37);
        assert_eq!(r.adaptive_limit(), Some(37));
        assert_eq!(r.in_flight(T0), 1, "L is not an in-flight entry");
        assert_eq!(r.find(ADAPTIVE_LIMIT_TAG).map(|(_, limit, _)| limit), Some(37), "one entry, found by its tag");
        r.prune(T0 + 10 * LEASE_NS, None);
        assert_eq!(r.adaptive_limit(), Some(37));
        assert_eq!(r.as_bytes().len(), ENTRY_BYTES, "the bucket and the dead instance went, L stayed");
        assert!(r.clear_adaptive_limit());
        assert_eq!(r.adaptive_limit(), None);
        assert!(!r.clear_adaptive_limit());
        r.retain_leases(&[]);
        assert!(r.as_bytes().is_empty());
    }

    #[test]
    fn bucket_ids_never_look_like_in_flight_entries() {
        for id in ["a", "storefront@2000000x1000", ""] {
            assert_eq!(bucket_id(id) & IN_FLIGHT_TAG, 0);
            assert!(!is_lease_tag(bucket_id(id)));
            assert_ne!(bucket_id(id), ADAPTIVE_LIMIT_TAG);
            assert!(!is_lease_tag(ADAPTIVE_LIMIT_TAG));
        }
    }
}
