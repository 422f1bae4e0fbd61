//! Who this VM is among the VMs that share one store (each Envoy worker runs its own VM): its
//! instance id in the in-flight table, and the key-hashing seed every VM must agree on.
//!
//! Invariants:
//! - ids from the shared counter are `1..2^31` and distinct for successive callers (each is a
//!   compare-and-swap increment). If storage fails or stays contended, the id is made from the
//!   clock with the top bit set: it never collides with a counter id, and two VMs collide only
//!   if they fall back in the same nanosecond (`now_ns` modulo 2^31).
//! - the seed is made once per Envoy process by the first VM to configure and read by every
//!   other. Envoy's shared data has no atomic create (a write to a key never written always
//!   succeeds), so agreement rests on create-then-read: a VM that finds no seed writes its
//!   proposal and then reads back what is stored, so racing creators all return the last
//!   write once both writes are done. Envoy configures the main thread's VM before it starts
//!   the workers, so in practice the first write has no rival. A VM that cannot reach storage
//!   uses its own proposal: keyed limits then still work, only their slots differ per VM.

use crate::format::process_key;
use crate::store::{read_u64, update, Change, Outcome, SharedStore};

/// The instance counter's key (in this module's format, see `format`).
pub fn instance_counter_key() -> String {
    process_key("instances")
}

/// The seed's key (in this module's format, see `format`).
pub fn seed_key() -> String {
    process_key("seed")
}

/// Ids at or above this come from the clock (see the module docs).
const FALLBACK_ID_BIT: u32 = 1 << 31;

/// A fresh instance id: the shared counter, incremented. Never 0.
pub fn allocate_instance_id(store: &dyn SharedStore, now_ns: u64) -> u32 {
    let allocated = update(store, &instance_counter_key(), |stored| {
        let next = stored.and_then(|b| read_u64(&b, 0)).unwrap_or(0).saturating_add(1);
        Change::Write(next.to_le_bytes(), u32::try_from(next).ok().filter(|&id| id < FALLBACK_ID_BIT))
    });
    match allocated {
        Outcome::Done { value: Some(id), .. } => id,
        Outcome::Done { value: None, .. } | Outcome::Contended | Outcome::Failed => {
            FALLBACK_ID_BIT | (now_ns as u32 & !FALLBACK_ID_BIT)
        }
    }
}

/// The seed every VM of this Envoy process hashes keys with (see the module docs).
pub fn agree_on_seed(store: &dyn SharedStore, now_ns: u64, instance: u32) -> u64 {
    let proposal = now_ns ^ 0x5eed_5eed_0000_0000 ^ (u64::from(instance) << 17);
    let stored_seed = |bytes: &[u8]| read_u64(bytes, 0);
    let key = seed_key();
    let agreed = update(store, &key, |stored| match stored.as_deref().and_then(stored_seed) {
        Some(seed) => Change::Keep(Some(seed)),
        None => Change::Write(proposal.to_le_bytes(), None),
    });
    match agreed {
        Outcome::Done { value: Some(seed), .. } => seed,
        // Created (or tried to): read back what is stored, in case a rival wrote after us.
        Outcome::Done { value: None, .. } | Outcome::Contended | Outcome::Failed => {
            store.load(&key).ok().flatten().and_then(|(bytes, _)| stored_seed(&bytes)).unwrap_or(proposal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{BrokenStore, RacingStore, RivalBetweenReadAndWrite};
    use crate::store::{MemoryStore, StoreError};
    use std::cell::Cell;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T0: u64 = 1_750_000_000_000_000_000;

    #[test]
    fn successive_callers_get_distinct_ids_from_one() {
        let store = MemoryStore::default();
        let ids: Vec<u32> = (0..4).map(|_| allocate_instance_id(&store, T0)).collect();
        assert_eq!(ids, vec![1, 2, 3, 4]);
    }

    #[test]
    fn an_allocation_that_loses_a_race_retries_and_still_gets_a_distinct_id() {
        let store = RacingStore::losing(0);
        assert_eq!(allocate_instance_id(&store, T0), 1);
        store.lose.set(3);
        assert_eq!(allocate_instance_id(&store, T0), 2);
        assert_eq!(allocate_instance_id(&store, T0), 3);
    }

    #[test]
    fn a_rival_allocating_in_between_makes_this_vm_retry_past_its_id() {
        let store = MemoryStore::default();
        assert_eq!(allocate_instance_id(&store, T0), 1);
        // Another VM allocates between this VM's read of the counter and its write.
        let racing = RivalBetweenReadAndWrite::new(&store, |rival| assert_eq!(allocate_instance_id(rival, T0), 2));
        assert_eq!(allocate_instance_id(&racing, T0), 3);
    }

    #[test]
    fn without_storage_the_id_comes_from_the_clock_and_never_from_the_counter_range() {
        let a = allocate_instance_id(&BrokenStore, T0);
        let b = allocate_instance_id(&BrokenStore, T0 + 1);
        assert!(a >= FALLBACK_ID_BIT && b >= FALLBACK_ID_BIT && a != b, "{a} {b}");
        let store = RacingStore::losing(0);
        assert_eq!(allocate_instance_id(&store, T0), 1);
        store.lose.set(u32::MAX);
        assert!(allocate_instance_id(&store, T0) >= FALLBACK_ID_BIT, "endless contention");
    }

    #[test]
    fn the_first_seed_written_is_the_one_every_later_vm_reads() {
        let store = MemoryStore::default();
        let first = agree_on_seed(&store, T0, 1);
        assert_eq!(agree_on_seed(&store, T0 + 5, 2), first);
        assert_eq!(agree_on_seed(&store, T0 + 9, 3), first);
    }

    /// A rival VM creates the seed between this VM's read (nothing there) and its own write.
    struct RivalCreatesSeed<'a> {
        inner: &'a MemoryStore,
        rival_seed: Cell<Option<u64>>,
    }

    impl SharedStore for RivalCreatesSeed<'_> {
        fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.load(key)
        }
        fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
            let written = self.inner.compare_and_swap(key, value, version);
            // The rival's write lands right after ours (no atomic create: it also succeeds).
            if let Some(seed) = self.rival_seed.take() {
                self.inner.compare_and_swap(key, &seed.to_le_bytes(), None)?;
            }
            written
        }
    }

    #[test]
    fn racing_creators_of_the_seed_agree_on_the_last_write_by_reading_it_back() {
        let store = MemoryStore::default();
        let racing = RivalCreatesSeed { inner: &store, rival_seed: Cell::new(Some(7)) };
        assert_eq!(agree_on_seed(&racing, T0, 1), 7);
        assert_eq!(agree_on_seed(&store, T0, 2), 7);
    }

    #[test]
    fn without_storage_a_vm_uses_its_own_proposal() {
        let seed = agree_on_seed(&BrokenStore, T0, 1);
        assert_eq!(seed, agree_on_seed(&BrokenStore, T0, 1));
        assert_ne!(seed, agree_on_seed(&BrokenStore, T0, 2));
    }
}
