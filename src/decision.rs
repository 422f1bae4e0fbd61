//! What happens to one request: classify, check every limit that applies and the in-flight
//! limit, then take tokens and a slot only if all admit.
//!
//! Exactness across workers: all state lives in shared storage and changes only by
//! compare-and-swap against the version that was read. Unkeyed buckets and the in-flight table
//! share one value (`record`), so a request without keyed limits is decided by one read and
//! one write, atomically. A keyed limit's bucket lives in its own slot (`locate`); those are
//! written first, the record last. If any write finds its value changed by another worker, the
//! slot writes already made are undone (`bucket::give_back` commutes with other takes, so the
//! state is as if they never happened) and the decision is retried on fresh reads, at most
//! [`MAX_ATTEMPTS`] times. Past that, or if the host refuses a storage call, the request is
//! admitted without taking anything (fail open) and counted.

use crate::bucket::{ceil_seconds, give_back, is_full, Bucket};
use crate::classify::{classify, matches, RequestView};
use crate::config::{KeySource, Limit, Mode, Policy};
use crate::keyhash;
use crate::record::{bucket_id, Record};
use crate::store::{read_u64, SharedStore, StoreError};

pub const MAX_ATTEMPTS: usize = 16;

/// The verdict on one request, and what the counters need to know. Limit sets are bitsets
/// (bit `i`: limit `i`; a policy has at most 64 limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub class: usize,
    pub verdict: Verdict,
    /// Limits whose `match` held.
    pub applied: u64,
    /// Limits that refused (only when rate limited).
    pub refused: u64,
    /// Keyed limits whose key found no slot of its own and used the overflow bucket.
    pub overflowed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted. `in_flight`: the total in flight including this request, if it holds an
    /// in-flight slot that must be released when its stream ends.
    Admitted { in_flight: Option<u64> },
    /// Refused by a token bucket: the one that would make the request wait longest.
    RateLimited { limit: usize, retry_after_s: u64 },
    /// Refused by the in-flight limit.
    Shed { retry_after_s: u64 },
    /// Storage failed or stayed contended: admitted without taking anything.
    FailedOpen,
}

impl Verdict {
    pub fn is_refusal(&self) -> bool {
        matches!(self, Verdict::RateLimited { .. } | Verdict::Shed { .. })
    }
}

/// The limits in a bitset, lowest first.
pub fn bits(mut set: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (set != 0).then(|| {
            let i = set.trailing_zeros() as usize;
            set &= set - 1;
            i
        })
    })
}

/// A compiled policy plus where its state lives in shared storage.
#[derive(Debug, Clone)]
pub struct Guard {
    pub policy: Policy,
    record_key: String,
    /// Per limit: its bucket's id in the record (unkeyed) or its slots' key prefix (keyed).
    bucket_ids: Vec<u64>,
    slot_prefixes: Vec<String>,
    /// Mixed into key hashing so slot positions cannot be predicted from outside.
    seed: u64,
}

/// A keyed limit's bucket, read for a decision: where it lives, what it held, what it will hold.
struct Cell {
    limit: usize,
    store_key: String,
    version: Option<u32>,
    key_fingerprint: u64,
    tat_ns: u64,
    new_tat_ns: u64,
}

/// Fingerprints 0 (overflow bucket) and u64::MAX (empty slot) are never a key's.
const EMPTY_SLOT: u64 = u64::MAX;

impl Guard {
    /// `namespace` separates plugins sharing one VM; `seed` must be the same on every worker.
    pub fn new(policy: Policy, namespace: &str, seed: u64) -> Guard {
        let bucket_ids = policy.limits.iter().map(|l| bucket_id(&l.state_id)).collect();
        let slot_prefixes = policy.limits.iter().map(|l| format!("{namespace}/slots/{}/", l.state_id)).collect();
        Guard { policy, record_key: format!("{namespace}/record"), bucket_ids, slot_prefixes, seed }
    }

    pub fn mode(&self) -> Mode {
        self.policy.mode
    }

    /// Decides one request at `now_ns`. In shadow mode the caller lets a refusal through; the
    /// decision is the same, and a refusal takes nothing either way.
    pub fn decide(&self, req: &dyn RequestView, now_ns: u64, instance: u32, store: &dyn SharedStore) -> Decision {
        let class = classify(&self.policy, req);
        let mut applied = 0u64;
        for (i, l) in self.policy.limits.iter().enumerate() {
            if l.matcher.as_ref().is_none_or(|m| matches(m, req)) {
                applied |= 1 << i;
            }
        }
        let mut decision = Decision { class, verdict: Verdict::FailedOpen, applied, refused: 0, overflowed: 0 };
        for _ in 0..MAX_ATTEMPTS {
            match self.attempt(&mut decision, req, now_ns, instance, store) {
                Ok(Some(verdict)) => {
                    decision.verdict = verdict;
                    return decision;
                }
                Ok(None) => continue,
                Err(StoreError) => break,
            }
        }
        Decision { verdict: Verdict::FailedOpen, refused: 0, ..decision }
    }

    /// One try: `Ok(None)` if another worker changed something we read (retry).
    fn attempt(
        &self,
        d: &mut Decision,
        req: &dyn RequestView,
        now_ns: u64,
        instance: u32,
        store: &dyn SharedStore,
    ) -> Result<Option<Verdict>, StoreError> {
        let concurrency = self.policy.concurrency.as_ref();
        let unkeyed_applied = bits(d.applied).any(|i| self.limit(i).is_some_and(|l| l.key == KeySource::Global));
        let mut record = None;
        if unkeyed_applied || concurrency.is_some() {
            let loaded = store.load(&self.record_key)?;
            let (bytes, version) = loaded.unzip();
            record = Some((Record::from_bytes(bytes.unwrap_or_default()), version));
        }

        // Evaluate every bucket on this snapshot; a refusal writes nothing.
        let mut cells: Vec<Cell> = Vec::new();
        let mut worst: Option<(usize, u64)> = None;
        d.refused = 0;
        d.overflowed = 0;
        for i in bits(d.applied) {
            let Some(limit) = self.limit(i) else { continue };
            let bucket = bucket_for(limit, d.class);
            let id = self.bucket_ids.get(i).copied().unwrap_or(0);
            let (tat_ns, cell) = match (&limit.key, &record) {
                (KeySource::Global, Some((rec, _))) => (rec.bucket(id), None),
                (KeySource::Global, None) => continue,
                _ => {
                    let (cell, overflow) = self.locate(i, limit, req, now_ns, store)?;
                    if overflow {
                        d.overflowed |= 1 << i;
                    }
                    (cell.tat_ns, Some(cell))
                }
            };
            match bucket.take(tat_ns, now_ns) {
                Ok(t) => match (cell, &mut record) {
                    (Some(mut cell), _) => {
                        cell.new_tat_ns = t.new_tat_ns;
                        cells.push(cell);
                    }
                    (None, Some((rec, _))) => rec.set_bucket(id, t.new_tat_ns),
                    (None, None) => {}
                },
                Err(r) => {
                    d.refused |= 1 << i;
                    let retry_after_s = r.wait_ns.map_or(limit.window_s, ceil_seconds);
                    if worst.is_none_or(|(_, w)| retry_after_s > w) {
                        worst = Some((i, retry_after_s));
                    }
                }
            }
        }
        if let Some((limit, retry_after_s)) = worst {
            return Ok(Some(Verdict::RateLimited { limit, retry_after_s }));
        }
        if let (Some(c), Some((rec, _))) = (concurrency, &mut record) {
            let class_max = c.class_max_in_flight.get(d.class).copied().unwrap_or(0);
            if !rec.acquire(instance, now_ns, class_max) {
                return Ok(Some(Verdict::Shed { retry_after_s: c.retry_after_s }));
            }
        }

        // Commit: keyed slots, then the record; undo the slots on a lost race.
        for (n, cell) in cells.iter().enumerate() {
            let value = encode_slot(cell.key_fingerprint, cell.new_tat_ns);
            if !store.compare_and_swap(&cell.store_key, &value, cell.version)? {
                self.undo(cells.get(..n).unwrap_or(&[]), store);
                return Ok(None);
            }
        }
        let mut in_flight = None;
        if let Some((mut rec, version)) = record {
            rec.prune(now_ns, Some(instance));
            if !store.compare_and_swap(&self.record_key, rec.as_bytes(), version)? {
                self.undo(&cells, store);
                return Ok(None);
            }
            in_flight = concurrency.map(|_| rec.in_flight(now_ns));
        }
        Ok(Some(Verdict::Admitted { in_flight }))
    }

    fn limit(&self, i: usize) -> Option<&Limit> {
        self.policy.limits.get(i)
    }

    /// Finds the slot a keyed request draws from; `true` if it is the overflow bucket.
    fn locate(
        &self,
        i: usize,
        limit: &Limit,
        req: &dyn RequestView,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<(Cell, bool), StoreError> {
        let key_bytes = match limit.key {
            KeySource::ClientIp => Some(req.client_ip()),
            KeySource::Header(slot) => req.header(slot),
            KeySource::Global => None,
        };
        // Absent and present-but-empty keys hash apart (domain bit 0).
        let domain = ((i as u64) << 1) | u64::from(key_bytes.is_some());
        let fingerprint = keyhash::hash(self.seed, domain, key_bytes.unwrap_or_default()).clamp(1, EMPTY_SLOT - 1);
        let n = u64::from(limit.max_keys.max(1));
        let first = fingerprint % n;
        let second = fingerprint.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) % n;

        let a = self.load_slot(i, Some(first), store)?;
        if a.key_fingerprint == fingerprint {
            return Ok((a, false));
        }
        let b = if second != first { Some(self.load_slot(i, Some(second), store)?) } else { None };
        if let Some(b) = b.as_ref().filter(|b| b.key_fingerprint == fingerprint) {
            return Ok((Cell { store_key: b.store_key.clone(), ..*b }, false));
        }
        // Not stored yet: claim a slot that is empty or whose bucket is full again (dropping a
        // full bucket loses nothing). A slot holding a partly used bucket is never taken.
        for candidate in std::iter::once(a).chain(b) {
            if candidate.key_fingerprint == EMPTY_SLOT || is_full(candidate.tat_ns, now_ns) {
                return Ok((Cell { key_fingerprint: fingerprint, tat_ns: 0, ..candidate }, false));
            }
        }
        // Both slots hold live buckets of other keys: share the limit's overflow bucket.
        Ok((self.load_slot(i, None, store)?, true))
    }

    /// Reads slot `slot` of limit `i` (`None`: its overflow bucket).
    fn load_slot(&self, i: usize, slot: Option<u64>, store: &dyn SharedStore) -> Result<Cell, StoreError> {
        let prefix = self.slot_prefixes.get(i).map_or("", String::as_str);
        let mut store_key = String::with_capacity(prefix.len() + 20);
        store_key.push_str(prefix);
        match slot {
            Some(n) => push_decimal(&mut store_key, n),
            None => store_key.push_str("overflow"),
        }
        let loaded = store.load(&store_key)?;
        let (key_fingerprint, tat_ns, version) = match &loaded {
            Some((bytes, version)) => {
                (read_u64(bytes, 0).unwrap_or(0), read_u64(bytes, 8).unwrap_or(0), Some(*version))
            }
            None => (if slot.is_some() { EMPTY_SLOT } else { 0 }, 0, None),
        };
        Ok(Cell { limit: i, store_key, version, key_fingerprint, tat_ns, new_tat_ns: 0 })
    }

    fn undo(&self, committed: &[Cell], store: &dyn SharedStore) {
        for cell in committed {
            let Some(limit) = self.limit(cell.limit) else { continue };
            for _ in 0..MAX_ATTEMPTS {
                let Ok(Some((bytes, version))) = store.load(&cell.store_key) else { break };
                // The slot was taken over only if our bucket had refilled: nothing to undo.
                if read_u64(&bytes, 0) != Some(cell.key_fingerprint) {
                    break;
                }
                let tat_ns = give_back(read_u64(&bytes, 8).unwrap_or(0), limit.ns_per_token);
                if let Ok(true) | Err(_) =
                    store.compare_and_swap(&cell.store_key, &encode_slot(cell.key_fingerprint, tat_ns), Some(version))
                {
                    break;
                }
            }
        }
    }

    /// Releases the in-flight slot a request took. Returns the new total, or `None` if storage
    /// failed (the slot then stays counted until this VM's entry expires; see `record`).
    pub fn release(&self, instance: u32, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        self.update_record(store, now_ns, instance, |r| r.release(instance, now_ns))
    }

    /// Refreshes this VM's heartbeat and applies `late_releases`, releases that could not be
    /// written when their streams ended (so a contended or failing store never leaks a slot).
    /// Returns the total in flight, or `None` if nothing was written (retry next time).
    pub fn heartbeat(&self, instance: u32, now_ns: u64, late_releases: u64, store: &dyn SharedStore) -> Option<u64> {
        self.policy.concurrency.as_ref()?;
        self.update_record(store, now_ns, instance, |r| {
            for _ in 0..late_releases {
                r.release(instance, now_ns);
            }
            r.heartbeat(instance, now_ns);
        })
    }

    /// Creates the record if it was never written. Envoy's shared data has no atomic create (a
    /// write to a missing key always succeeds), so two workers making their first decisions at
    /// once could each write the record over the other's take. Called when a configuration is
    /// accepted (first on the main thread, before workers start), so every decision finds the
    /// record and writes it by compare-and-swap.
    pub fn create_record(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        if store.load(&self.record_key)?.is_none() {
            store.compare_and_swap(&self.record_key, &[], None)?;
        }
        Ok(())
    }

    /// Requests in flight now, as stored (a read, for tests and tools).
    pub fn in_flight(&self, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        let (bytes, _) = store.load(&self.record_key).ok()?.unzip();
        Some(Record::from_bytes(bytes.unwrap_or_default()).in_flight(now_ns))
    }

    fn update_record(
        &self,
        store: &dyn SharedStore,
        now_ns: u64,
        instance: u32,
        change: impl Fn(&mut Record),
    ) -> Option<u64> {
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, version) = store.load(&self.record_key).ok()?.unzip();
            let mut rec = Record::from_bytes(bytes.unwrap_or_default());
            change(&mut rec);
            rec.prune(now_ns, Some(instance));
            if store.compare_and_swap(&self.record_key, rec.as_bytes(), version).ok()? {
                return Some(rec.in_flight(now_ns));
            }
        }
        None
    }
}

fn bucket_for(limit: &Limit, class: usize) -> Bucket {
    Bucket { ns_per_token: limit.ns_per_token, tolerance_ns: limit.class_tolerance_ns.get(class).copied().unwrap_or(0) }
}

/// A stored slot: the owning key's fingerprint and its bucket's arrival time.
fn encode_slot(key_fingerprint: u64, tat_ns: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&key_fingerprint.to_le_bytes());
    out[8..].copy_from_slice(&tat_ns.to_le_bytes());
    out
}

/// Appends `n` in decimal (no `fmt` on the request path).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(char::from(d));
    }
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
