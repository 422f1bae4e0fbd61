//! What happens to one request, in steps that each return what the next needs:
//! 1. classify it and find the limits that apply (`decide`);
//! 2. read the record and locate the keyed limits' slots (`read`, `locate_keyed_slot`);
//! 3. take a token from every applicable bucket, in memory (`take_tokens`);
//! 4. take an in-flight slot, in memory (`acquire_in_flight`);
//! 5. write it all (`commit`), undoing the keyed slot writes on a lost race (`undo`).
//!
//! A refusal at step 3 or 4 writes nothing, so tokens and a slot are taken only if all admit.
//!
//! Exactness across workers: all state lives in shared storage and changes only by
//! compare-and-swap against the version that was read. Unkeyed buckets and the in-flight table
//! share one value (`record`), so a request without keyed limits is decided by one read and
//! one write, atomically. A keyed limit's bucket lives in its own slot; those are written
//! first, the record last. If any write finds its value changed by another worker, the slot
//! writes already made are undone (`bucket::give_back` commutes with other takes, so the state
//! is as if they never happened) and the decision is retried on fresh reads by
//! [`store::retry`](crate::store::retry), at most [`MAX_ATTEMPTS`](crate::store::MAX_ATTEMPTS)
//! times. Past that, or if the host refuses a storage call, the request is admitted without
//! taking anything (fail open) and counted.

use crate::bucket::{self, ceil_seconds, give_back, is_full, Bucket};
use crate::classify::{classify, matches, RequestView};
use crate::config::{Fleet, KeySource, Limit, Policy};
use crate::ids::{ClassId, LimitId, LimitSet};
use crate::keyhash;
use crate::lease;
use crate::record::{bucket_id, Record};
use crate::store::{read_u64, retry, update, Attempt, Change, Outcome, SharedStore, StoreError};

/// The verdict on one request, and what the counters need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub class: ClassId,
    pub verdict: Verdict,
    /// Limits whose `match` held.
    pub applied: LimitSet,
    /// Limits that refused (only when rate limited).
    pub refused: LimitSet,
    /// Keyed limits whose key found no slot of its own and used the overflow bucket (empty when
    /// the request failed open: it drew from no bucket).
    pub overflowed: LimitSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted. `in_flight`: the total in flight including this request, if it holds an
    /// in-flight slot that must be released when its stream ends.
    Admitted { in_flight: Option<u64> },
    /// Refused by a token bucket: the one that would make the request wait longest.
    RateLimited { limit: LimitId, retry_after_s: u64 },
    /// Refused by the in-flight limit.
    Shed { retry_after_s: u64 },
    /// Storage failed or stayed contended: admitted without taking anything.
    FailedOpen,
}

/// Admission control for one plugin: its compiled policy plus where its state lives in shared
/// storage.
#[derive(Debug, Clone)]
pub struct Admission {
    pub policy: Policy,
    pub(crate) record_key: String,
    /// Per limit: its bucket's (and a fleet limit's lease's) id in the record (unkeyed limits).
    pub(crate) record_bucket_ids: Vec<u64>,
    /// Per limit: the storage key prefix of its slots (used by keyed limits).
    slot_prefixes: Vec<String>,
    /// Mixed into key hashing so slot positions cannot be predicted from outside.
    seed: u64,
}

/// The record as one attempt read it, and the version its write is checked against.
struct StoredRecord {
    record: Record,
    version: Option<u32>,
}

/// A keyed limit's bucket, read for a decision: where it lives, what it held, what it will hold.
struct KeyedSlot {
    limit: LimitId,
    store_key: String,
    version: Option<u32>,
    key_fingerprint: u64,
    tat_ns: u64,
    new_tat_ns: u64,
}

/// The shared state one attempt read, changed in memory by the steps until `commit` writes it.
struct Snapshot {
    /// Read if an unkeyed limit applies or there is an in-flight limit.
    record: Option<StoredRecord>,
    /// One per applicable keyed limit, in limit order.
    keyed: Vec<KeyedSlot>,
}

/// A step refused the request; nothing is written.
struct Refused {
    verdict: Verdict,
    /// The limits that refused (empty for a shed).
    limits: LimitSet,
}

/// The buckets that refused one request, and the one that would make it wait longest (the
/// first on a tie).
#[derive(Default)]
struct Refusals {
    limits: LimitSet,
    worst: Option<(LimitId, u64)>,
}

impl Refusals {
    // Out of line: most requests are admitted, so the admitting path stays small.
    #[cold]
    #[inline(never)]
    fn add(&mut self, id: LimitId, limit: &Limit, refused: bucket::Refused) {
        self.limits.insert(id);
        let retry_after_s = refused.wait_ns.map_or(limit.window_s, ceil_seconds);
        if self.worst.is_none_or(|(_, w)| retry_after_s > w) {
            self.worst = Some((id, retry_after_s));
        }
    }
}

/// Fingerprints 0 (overflow bucket) and u64::MAX (empty slot) are never a key's.
const EMPTY_SLOT: u64 = u64::MAX;

impl Admission {
    /// `namespace` separates plugins sharing one VM; `seed` must be the same on every worker
    /// (see `instance::agree_on_seed`).
    pub fn new(policy: Policy, namespace: &str, seed: u64) -> Admission {
        let record_bucket_ids = policy.limits.iter().map(|l| bucket_id(&l.state_id)).collect();
        let slot_prefixes = policy.limits.iter().map(|l| format!("{namespace}/slots/{}/", l.state_id)).collect();
        Admission { policy, record_key: format!("{namespace}/record"), record_bucket_ids, slot_prefixes, seed }
    }

    /// Decides one request at `now_ns`. In shadow mode the caller lets a refusal through; the
    /// decision is the same, and a refusal takes nothing either way.
    pub fn decide(&self, req: &dyn RequestView, now_ns: u64, instance: u32, store: &dyn SharedStore) -> Decision {
        let class = classify(&self.policy, req);
        let applied = self.applicable_limits(req);
        match retry(|| self.attempt(class, applied, req, now_ns, instance, store)) {
            Outcome::Done { value, .. } => value,
            Outcome::Contended | Outcome::Failed => Decision {
                class,
                verdict: Verdict::FailedOpen,
                applied,
                refused: LimitSet::EMPTY,
                overflowed: LimitSet::EMPTY,
            },
        }
    }

    /// Per limit, in limit order: the storage key prefix of its keyed slots (a host that can
    /// delete keys drops the slots of limits no configuration has any more).
    pub fn slot_prefixes(&self) -> &[String] {
        &self.slot_prefixes
    }

    fn applicable_limits(&self, req: &dyn RequestView) -> LimitSet {
        self.policy
            .limits_by_id()
            .filter(|(_, l)| l.matcher.as_ref().is_none_or(|m| matches(m, req)))
            .map(|(id, _)| id)
            .collect()
    }

    /// One try on fresh reads: `LostRace` if another worker changed something it read.
    fn attempt(
        &self,
        class: ClassId,
        applied: LimitSet,
        req: &dyn RequestView,
        now_ns: u64,
        instance: u32,
        store: &dyn SharedStore,
    ) -> Result<Attempt<Decision>, StoreError> {
        let (mut snapshot, overflowed) = self.read(applied, req, now_ns, store)?;
        let decision = |verdict, refused| Decision { class, verdict, applied, refused, overflowed };
        let admitted = self
            .take_tokens(class, applied, &mut snapshot, now_ns)
            .and_then(|()| self.acquire_in_flight(class, instance, now_ns, &mut snapshot));
        match admitted {
            Ok(()) => Ok(self
                .commit(snapshot, instance, now_ns, store)?
                .map(|in_flight| decision(Verdict::Admitted { in_flight }, LimitSet::EMPTY))),
            Err(Refused { verdict, limits }) => Ok(Attempt::Done(decision(verdict, limits))),
        }
    }

    /// Reads what the applicable limits and the in-flight limit need; also returns the keyed
    /// limits whose key drew from the overflow bucket.
    fn read(
        &self,
        applied: LimitSet,
        req: &dyn RequestView,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<(Snapshot, LimitSet), StoreError> {
        let unkeyed_applied =
            applied.iter().any(|id| self.policy.limit(id).is_some_and(|l| l.key == KeySource::Global));
        let mut record = None;
        if unkeyed_applied || self.policy.concurrency.is_some() {
            let (bytes, version) = store.load(&self.record_key)?.unzip();
            record = Some(StoredRecord { record: Record::from_bytes(bytes.unwrap_or_default()), version });
        }
        let mut keyed = Vec::new();
        let mut overflowed = LimitSet::EMPTY;
        for id in applied.iter() {
            let Some(limit) = self.policy.limit(id).filter(|l| l.key != KeySource::Global) else { continue };
            let (slot, overflow) = self.locate_keyed_slot(id, limit, req, now_ns, store)?;
            if overflow {
                overflowed.insert(id);
            }
            keyed.push(slot);
        }
        Ok((Snapshot { record, keyed }, overflowed))
    }

    /// Takes one token from every applicable bucket of the snapshot. If any refuses, the
    /// refusal names the one that would make the request wait longest (the first on a tie).
    fn take_tokens(
        &self,
        class: ClassId,
        applied: LimitSet,
        snapshot: &mut Snapshot,
        now_ns: u64,
    ) -> Result<(), Refused> {
        let mut refusals = Refusals::default();
        // A plain loop over ids: an iterator chain here cost ~240 wasm instructions per request.
        for id in applied.iter() {
            let Some(limit) = self.policy.limit(id) else { continue };
            let bucket = Bucket { ns_per_token: limit.ns_per_token, tolerance_ns: limit.tolerance_ns(class) };
            let taken = match limit.key {
                KeySource::Global => {
                    let Some(stored) = snapshot.record.as_mut() else { continue };
                    let bucket_id = self.record_bucket_ids.get(id.index()).copied().unwrap_or(0);
                    match &limit.fleet {
                        Some(fleet) => take_from_fleet(&mut stored.record, bucket_id, fleet, bucket, class, now_ns),
                        None => {
                            let tat_ns = stored.record.bucket(bucket_id);
                            bucket.take(tat_ns, now_ns).map(|t| stored.record.set_bucket(bucket_id, t.new_tat_ns))
                        }
                    }
                }
                KeySource::ClientIp | KeySource::Header(_) => {
                    let Some(slot) = snapshot.keyed.iter_mut().find(|s| s.limit == id) else { continue };
                    bucket.take(slot.tat_ns, now_ns).map(|t| slot.new_tat_ns = t.new_tat_ns)
                }
            };
            if let Err(r) = taken {
                refusals.add(id, limit, r);
            }
        }
        match refusals.worst {
            Some((limit, retry_after_s)) => {
                Err(Refused { verdict: Verdict::RateLimited { limit, retry_after_s }, limits: refusals.limits })
            }
            None => Ok(()),
        }
    }

    /// Takes an in-flight slot for `instance`, if there is an in-flight limit and the class may.
    fn acquire_in_flight(
        &self,
        class: ClassId,
        instance: u32,
        now_ns: u64,
        snapshot: &mut Snapshot,
    ) -> Result<(), Refused> {
        if let (Some(c), Some(stored)) = (&self.policy.concurrency, snapshot.record.as_mut()) {
            // Adaptive: the reserves apply to L, read from the same record.
            let class_max = match &c.adaptive {
                None => c.class_max(class),
                Some(a) => a.class_max(class, a.limit(stored.record.adaptive_limit())),
            };
            if !stored.record.acquire(instance, now_ns, class_max) {
                let verdict = Verdict::Shed { retry_after_s: c.retry_after_s };
                return Err(Refused { verdict, limits: LimitSet::EMPTY });
            }
        }
        Ok(())
    }

    /// Writes the keyed slots, then the record, each by compare-and-swap against the version
    /// read. On a lost race the slots already written are undone. Returns the total in flight
    /// if the request now holds an in-flight slot.
    fn commit(
        &self,
        snapshot: Snapshot,
        instance: u32,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<Attempt<Option<u64>>, StoreError> {
        let Snapshot { record, keyed } = snapshot;
        for (written, slot) in keyed.iter().enumerate() {
            let value = encode_slot(slot.key_fingerprint, slot.new_tat_ns);
            if !store.compare_and_swap(&slot.store_key, &value, slot.version)? {
                self.undo(keyed.get(..written).unwrap_or(&[]), store);
                return Ok(Attempt::LostRace);
            }
        }
        let Some(StoredRecord { mut record, version }) = record else { return Ok(Attempt::Done(None)) };
        record.prune(now_ns, Some(instance));
        if !store.compare_and_swap(&self.record_key, record.as_bytes(), version)? {
            self.undo(&keyed, store);
            return Ok(Attempt::LostRace);
        }
        Ok(Attempt::Done(self.policy.concurrency.as_ref().map(|_| record.in_flight(now_ns))))
    }

    /// Gives back the token each written slot took. Best effort: if storage fails or stays
    /// contended here, that limit loses one token.
    fn undo(&self, written: &[KeyedSlot], store: &dyn SharedStore) {
        for slot in written {
            let Some(limit) = self.policy.limit(slot.limit) else { continue };
            let _ = update(store, &slot.store_key, |stored| {
                // The slot was taken over only if our bucket had refilled: nothing to undo.
                match stored.filter(|bytes| read_u64(bytes, 0) == Some(slot.key_fingerprint)) {
                    Some(bytes) => {
                        let tat_ns = give_back(read_u64(&bytes, 8).unwrap_or(0), limit.ns_per_token);
                        Change::Write(encode_slot(slot.key_fingerprint, tat_ns), ())
                    }
                    None => Change::Keep(()),
                }
            });
        }
    }

    /// Finds the slot a keyed request draws from; `true` if it is the overflow bucket.
    fn locate_keyed_slot(
        &self,
        id: LimitId,
        limit: &Limit,
        req: &dyn RequestView,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<(KeyedSlot, bool), StoreError> {
        let key_bytes = match limit.key {
            KeySource::ClientIp => Some(req.client_ip()),
            KeySource::Header(slot) => req.header(slot),
            KeySource::Global => None,
        };
        // Absent and present-but-empty keys hash apart (domain bit 0).
        let domain = ((id.index() as u64) << 1) | u64::from(key_bytes.is_some());
        let fingerprint = keyhash::hash(self.seed, domain, key_bytes.unwrap_or_default()).clamp(1, EMPTY_SLOT - 1);
        let n = u64::from(limit.max_keys.max(1));
        let first = fingerprint % n;
        let second = fingerprint.rotate_left(32).wrapping_mul(0x9E37_79B9_7F4A_7C15) % n;

        let a = self.load_slot(id, Some(first), store)?;
        if a.key_fingerprint == fingerprint {
            return Ok((a, false));
        }
        let b = match (second != first).then(|| self.load_slot(id, Some(second), store)).transpose()? {
            Some(b) if b.key_fingerprint == fingerprint => return Ok((b, false)),
            b => b,
        };
        // Not stored yet: claim a slot that is empty or whose bucket is full again (dropping a
        // full bucket loses nothing). A slot holding a partly used bucket is never taken.
        for candidate in std::iter::once(a).chain(b) {
            if candidate.key_fingerprint == EMPTY_SLOT || is_full(candidate.tat_ns, now_ns) {
                return Ok((KeyedSlot { key_fingerprint: fingerprint, tat_ns: 0, ..candidate }, false));
            }
        }
        // Both slots hold live buckets of other keys: share the limit's overflow bucket.
        Ok((self.load_slot(id, None, store)?, true))
    }

    /// Reads slot `slot` of limit `id` (`None`: its overflow bucket).
    fn load_slot(&self, id: LimitId, slot: Option<u64>, store: &dyn SharedStore) -> Result<KeyedSlot, StoreError> {
        let prefix = self.slot_prefixes.get(id.index()).map_or("", String::as_str);
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
        Ok(KeyedSlot { limit: id, store_key, version, key_fingerprint, tat_ns, new_tat_ns: 0 })
    }

    /// Releases the in-flight slot a request took. Returns the new total, or `None` if storage
    /// failed (the caller keeps it for the next heartbeat; see `heartbeat`).
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

    /// Creates the record if it was never written, and drops the leases of fleet limits this
    /// configuration no longer has. Creating it matters because Envoy's shared data has no
    /// atomic create (a write to a missing key always succeeds), so two workers making their
    /// first decisions at once could each write the record over the other's take. Called when a configuration is
    /// accepted (first on the main thread, before workers start), so every decision finds the
    /// record and writes it by compare-and-swap.
    pub fn create_record(&self, store: &dyn SharedStore) -> Result<(), StoreError> {
        let fleet_ids: Vec<u64> = self.fleet_limits().map(|(id, _)| self.lease_id(id)).collect();
        let created = update(store, &self.record_key, |stored| match stored {
            Some(bytes) => {
                let mut record = Record::from_bytes(bytes);
                let before = record.as_bytes().len();
                record.retain_leases(&fleet_ids);
                if self.policy.concurrency.as_ref().is_none_or(|c| c.adaptive.is_none()) {
                    // A static limit again: L would only come back stale.
                    record.clear_adaptive_limit();
                }
                if record.as_bytes().len() == before {
                    Change::Keep(())
                } else {
                    Change::Write(record, ())
                }
            }
            None => Change::Write(Record::default(), ()),
        });
        match created {
            Outcome::Failed => Err(StoreError),
            // Contended: another worker wrote it, so it exists.
            Outcome::Done { .. } | Outcome::Contended => Ok(()),
        }
    }

    /// Requests in flight now, as stored (a read, for tests and tools).
    pub fn in_flight(&self, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        let (bytes, _) = store.load(&self.record_key).ok()?.unzip();
        Some(Record::from_bytes(bytes.unwrap_or_default()).in_flight(now_ns))
    }

    /// Changes the record by compare-and-swap, pruning it and refreshing `instance`'s entry;
    /// returns the total in flight after, or `None` if storage failed or stayed contended.
    fn update_record(
        &self,
        store: &dyn SharedStore,
        now_ns: u64,
        instance: u32,
        change: impl Fn(&mut Record),
    ) -> Option<u64> {
        update(store, &self.record_key, |stored| {
            let mut record = Record::from_bytes(stored.unwrap_or_default());
            change(&mut record);
            record.prune(now_ns, Some(instance));
            let in_flight = record.in_flight(now_ns);
            Change::Write(record, in_flight)
        })
        .ok()
    }
}

/// A fleet limit's take: from its lease in fleet mode, else from its local fallback bucket.
fn take_from_fleet(
    record: &mut Record,
    id: u64,
    fleet: &Fleet,
    fallback: Bucket,
    class: ClassId,
    now_ns: u64,
) -> Result<(), bucket::Refused> {
    let mut lease = record.lease(id);
    if lease.mode == lease::Mode::Local {
        let tat_ns = record.bucket(id);
        return fallback.take(tat_ns, now_ns).map(|t| record.set_bucket(id, t.new_tat_ns));
    }
    let taken = lease.take(fleet.reserve_tokens(class), &fleet.lease, now_ns);
    record.set_lease(id, &lease);
    taken.map_err(|r| bucket::Refused { wait_ns: Some(r.wait_ns) })
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
