//! Storage shared by every worker, reached through a compare-and-swap shaped trait so the core
//! never calls the host. Envoy's shared data implements it in `host`; tests use [`MemoryStore`].
//!
//! Every read-modify-write of shared state goes through [`retry`]: one retry bound
//! ([`MAX_ATTEMPTS`]) and one place that counts lost races ([`Outcome`]). A change to one key is
//! [`update`] (read, change, compare-and-swap against the version read); a change spanning
//! several keys (a decision with keyed limits, see `decision`) writes them itself and hands each
//! try to [`retry`].
//!
//! Envoy's shared data has no atomic create: a compare-and-swap with version `None` (a key never
//! written) always succeeds, even over a value another worker wrote meanwhile. Callers that
//! create keys say how they stay correct (`decision::Admission::create_record`, `instance`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// Tries of one read-modify-write before giving up as contended (the caller then fails open).
/// Each try that loses has seen another worker's write succeed, so this is only reached under
/// extreme contention.
pub const MAX_ATTEMPTS: u32 = 16;

/// The host refused a storage call; the caller fails open (see `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreError;

pub trait SharedStore {
    /// The value under `key` and its version, or `None` if the key was never written.
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;

    /// Writes `value` if `key` is still at `version` and returns whether it did. `None` writes
    /// unconditionally: Envoy has no atomic create, so it is used only for a key never written.
    fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError>;
}

/// How one try of a read-modify-write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<T> {
    /// Settled: written, or nothing needed writing.
    Done(T),
    /// Another worker wrote something this try read: try again on fresh reads.
    LostRace,
}

impl<T> Attempt<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Attempt<U> {
        match self {
            Attempt::Done(value) => Attempt::Done(f(value)),
            Attempt::LostRace => Attempt::LostRace,
        }
    }
}

/// How a read-modify-write ended, after at most [`MAX_ATTEMPTS`] tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<T> {
    /// Settled after losing `lost_races` races to other workers.
    Done { value: T, lost_races: u32 },
    /// Every try lost a race.
    Contended,
    /// The host refused a storage call.
    Failed,
}

impl<T> Outcome<T> {
    /// The value, if it settled.
    pub fn ok(self) -> Option<T> {
        match self {
            Outcome::Done { value, .. } => Some(value),
            Outcome::Contended | Outcome::Failed => None,
        }
    }
}

/// What an [`update`] does with the value it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<B, T> {
    /// Write `B` (by compare-and-swap against the version read) and return `T` if it lands.
    Write(B, T),
    /// Write nothing and return `T`.
    Keep(T),
}

/// Runs `attempt` until it settles, at most [`MAX_ATTEMPTS`] times; a storage error ends it.
pub fn retry<T>(mut attempt: impl FnMut() -> Result<Attempt<T>, StoreError>) -> Outcome<T> {
    for lost_races in 0..MAX_ATTEMPTS {
        match attempt() {
            Ok(Attempt::Done(value)) => return Outcome::Done { value, lost_races },
            Ok(Attempt::LostRace) => {}
            Err(StoreError) => return Outcome::Failed,
        }
    }
    Outcome::Contended
}

/// Changes the value under `key` by compare-and-swap: `change` gets the stored bytes (`None`:
/// never written) and says what to write, and runs again on fresh bytes after a lost race. The
/// bytes are handed over owned so a change can edit them in place (no copy on the request path).
///
/// A key never written is created by an unconditional write (Envoy has no atomic create), so two
/// workers creating the same key at once can both succeed; see the module docs.
pub fn update<B: AsRef<[u8]>, T>(
    store: &dyn SharedStore,
    key: &str,
    mut change: impl FnMut(Option<Vec<u8>>) -> Change<B, T>,
) -> Outcome<T> {
    retry(|| {
        let (bytes, version) = store.load(key)?.unzip();
        match change(bytes) {
            Change::Keep(value) => Ok(Attempt::Done(value)),
            Change::Write(new, value) => Ok(if store.compare_and_swap(key, new.as_ref(), version)? {
                Attempt::Done(value)
            } else {
                Attempt::LostRace
            }),
        }
    })
}

/// Envoy's semantics in memory: versions start at 1 and change on every write.
#[derive(Default)]
pub struct MemoryStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_version: Cell<u32>,
}

impl MemoryStore {
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SharedStore for MemoryStore {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }

    fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
        let mut map = self.map.borrow_mut();
        if let (Some(expected), Some((_, current))) = (version, map.get(key)) {
            if expected != *current {
                return Ok(false);
            }
        }
        let v = self.next_version.get().wrapping_add(1).max(1);
        self.next_version.set(v);
        map.insert(key.to_string(), (value.to_vec(), v));
        Ok(true)
    }
}

/// Reads a little-endian u64 at `offset`, if there.
pub fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let chunk = bytes.get(offset..offset + 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(chunk);
    Some(u64::from_le_bytes(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// A store where another worker writes between a read and the next compare-and-swap.
    pub(crate) struct RacingStore {
        pub inner: MemoryStore,
        /// Compare-and-swaps left to lose (each loses by a concurrent write of the same value).
        pub lose: Cell<u32>,
    }

    impl RacingStore {
        pub fn losing(races: u32) -> RacingStore {
            RacingStore { inner: MemoryStore::default(), lose: Cell::new(races) }
        }
    }

    impl SharedStore for RacingStore {
        fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.load(key)
        }
        fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
            if self.lose.get() > 0 {
                self.lose.set(self.lose.get() - 1);
                if let Some((current, _)) = self.inner.load(key)? {
                    self.inner.compare_and_swap(key, &current, None)?;
                }
            }
            self.inner.compare_and_swap(key, value, version)
        }
    }

    /// What another worker does to the store.
    type Rival<'a> = Box<dyn FnOnce(&MemoryStore) + 'a>;

    /// Another worker acts (`rival`, once) between this worker's next read and its write.
    pub(crate) struct RivalBetweenReadAndWrite<'a> {
        inner: &'a MemoryStore,
        rival: Cell<Option<Rival<'a>>>,
    }

    impl<'a> RivalBetweenReadAndWrite<'a> {
        pub fn new(inner: &'a MemoryStore, rival: impl FnOnce(&MemoryStore) + 'a) -> RivalBetweenReadAndWrite<'a> {
            RivalBetweenReadAndWrite { inner, rival: Cell::new(Some(Box::new(rival))) }
        }
    }

    impl SharedStore for RivalBetweenReadAndWrite<'_> {
        fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            let loaded = self.inner.load(key);
            if let Some(rival) = self.rival.take() {
                rival(self.inner);
            }
            loaded
        }
        fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
            self.inner.compare_and_swap(key, value, version)
        }
    }

    /// A host that refuses every storage call.
    pub(crate) struct BrokenStore;

    impl SharedStore for BrokenStore {
        fn load(&self, _: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            Err(StoreError)
        }
        fn compare_and_swap(&self, _: &str, _: &[u8], _: Option<u32>) -> Result<bool, StoreError> {
            Err(StoreError)
        }
    }

    fn increment(store: &dyn SharedStore) -> Outcome<u64> {
        update(store, "n", |bytes| {
            let n = bytes.and_then(|b| read_u64(&b, 0)).unwrap_or(0) + 1;
            Change::Write(n.to_le_bytes(), n)
        })
    }

    #[test]
    fn an_update_reads_changes_and_writes_back() {
        let store = MemoryStore::default();
        assert_eq!(increment(&store), Outcome::Done { value: 1, lost_races: 0 });
        assert_eq!(increment(&store), Outcome::Done { value: 2, lost_races: 0 });
    }

    #[test]
    fn an_update_that_loses_a_race_runs_again_on_the_winners_value() {
        let store = RacingStore::losing(0);
        increment(&store);
        store.lose.set(2);
        assert_eq!(increment(&store), Outcome::Done { value: 2, lost_races: 2 });
    }

    #[test]
    fn an_update_that_keeps_the_value_writes_nothing() {
        let store = RacingStore::losing(u32::MAX);
        let kept = update(&store, "n", |_| Change::<[u8; 0], _>::Keep(7));
        assert_eq!(kept, Outcome::Done { value: 7, lost_races: 0 });
        assert!(store.inner.is_empty());
    }

    #[test]
    fn endless_contention_gives_up_after_the_retry_bound() {
        let store = RacingStore::losing(0);
        increment(&store);
        store.lose.set(u32::MAX);
        assert_eq!(increment(&store), Outcome::Contended);
        assert_eq!(u32::MAX - store.lose.get(), MAX_ATTEMPTS);
    }

    #[test]
    fn a_failing_host_ends_the_update_at_once() {
        assert_eq!(increment(&BrokenStore), Outcome::Failed);
        let mut tries = 0;
        let failed: Outcome<()> = retry(|| {
            tries += 1;
            Err(StoreError)
        });
        assert_eq!((failed, tries), (Outcome::Failed, 1));
    }
}
