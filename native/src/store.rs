//! The core's `SharedStore` in process memory: every Envoy worker runs in this one process, so
//! one map behind a mutex is shared by all of them. Each `load` and `compare_and_swap` holds the
//! lock for its whole duration, so the store is linearizable and the core's compare-and-swap
//! loops are exact exactly as over Envoy's shared data (versions start at 1 and change on every
//! write, as there).
//!
//! Leak-proof across reloads: keys live under a namespace per filter (`surgeguard/<filter
//! name>/...`, see `config`). Every configuration in force holds a [`Lease`] on its namespace;
//! when the last one goes (the filter was removed), its keys are dropped. A reload keeps the
//! namespace held (Envoy creates the new configuration before it destroys the old one), so
//! unchanged buckets and requests in flight carry over, as in the wasm build. Keys of a limit
//! that changed (its state id changes with its rate or burst) are dropped at once: a new
//! configuration drops the slots no configuration in force still uses.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use surgeguard::store::{SharedStore, StoreError};

#[derive(Default)]
struct Map {
    values: HashMap<String, (Vec<u8>, u32)>,
    version: u32,
    /// Per namespace: the keyed-slot prefixes of each configuration in force, by lease id.
    holders: HashMap<String, Vec<(u64, Vec<String>)>>,
    next_lease: u64,
}

impl Map {
    /// Drops the keys of `namespace` that no configuration in force uses: all of them when
    /// none is left, else the slots of limits none of them has.
    fn collect(&mut self, namespace: &str) {
        let prefix = format!("{namespace}/");
        let slots = format!("{namespace}/slots/");
        match self.holders.get(namespace) {
            None => self.values.retain(|k, _| !k.starts_with(&prefix)),
            Some(held) => {
                let used: HashSet<&str> = held.iter().flat_map(|(_, p)| p.iter().map(String::as_str)).collect();
                self.values.retain(|k, _| !k.starts_with(&slots) || used.iter().any(|p| k.starts_with(p)));
            }
        }
    }
}

/// The process's store: one for every configuration and worker.
pub struct ProcessStore {
    map: Mutex<Option<Map>>,
}

pub static STORE: ProcessStore = ProcessStore { map: Mutex::new(None) };

impl ProcessStore {
    /// The map. A poisoned lock (a panic while it was held, contained by the hook) is taken
    /// over: every write replaces a whole value, so none is half-written.
    fn with<T>(&self, f: impl FnOnce(&mut Map) -> T) -> T {
        let mut guard: MutexGuard<'_, Option<Map>> = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        f(guard.get_or_insert_with(Map::default))
    }

    /// A configuration comes into force under `namespace`, its keyed limits' slots under
    /// `slot_prefixes`. Drops the slots of limits no configuration in force has any more.
    pub fn hold(&self, namespace: &str, slot_prefixes: Vec<String>) -> Lease {
        let id = self.with(|m| {
            m.next_lease += 1;
            let id = m.next_lease;
            m.holders.entry(namespace.to_string()).or_default().push((id, slot_prefixes));
            m.collect(namespace);
            id
        });
        Lease { namespace: namespace.to_string(), id }
    }
}

/// A configuration's hold on its namespace (see the module docs).
pub struct Lease {
    namespace: String,
    id: u64,
}

impl Drop for Lease {
    fn drop(&mut self) {
        STORE.with(|m| {
            if let Some(held) = m.holders.get_mut(&self.namespace) {
                held.retain(|(id, _)| *id != self.id);
                if held.is_empty() {
                    m.holders.remove(&self.namespace);
                }
            }
            m.collect(&self.namespace);
        });
    }
}

impl SharedStore for ProcessStore {
    fn load(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.with(|m| m.values.get(key).cloned()))
    }

    fn compare_and_swap(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<bool, StoreError> {
        Ok(self.with(|m| {
            if let (Some(expected), Some((_, current))) = (version, m.values.get(key)) {
                if expected != *current {
                    return false;
                }
            }
            m.version = m.version.wrapping_add(1).max(1);
            let v = m.version;
            match m.values.get_mut(key) {
                Some(slot) => {
                    slot.0.clear();
                    slot.0.extend_from_slice(value);
                    slot.1 = v;
                }
                None => {
                    m.values.insert(key.to_string(), (value.to_vec(), v));
                }
            }
            true
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use surgeguard::store::{read_u64, update, Change, Outcome};

    fn put(store: &ProcessStore, key: &str) {
        assert_eq!(store.compare_and_swap(key, b"x", None), Ok(true));
    }

    #[test]
    fn a_write_against_a_stale_version_is_refused_and_every_write_changes_the_version() {
        let store = ProcessStore { map: Mutex::new(None) };
        assert_eq!(store.load("k"), Ok(None));
        put(&store, "k");
        let (_, v1) = store.load("k").unwrap().unwrap();
        assert_eq!(store.compare_and_swap("k", b"y", Some(v1)), Ok(true));
        let (value, v2) = store.load("k").unwrap().unwrap();
        assert_eq!((value.as_slice(), v2 != v1), (&b"y"[..], true));
        assert_eq!(store.compare_and_swap("k", b"z", Some(v1)), Ok(false), "v1 is stale");
        assert_eq!(store.load("k").unwrap().unwrap().0, b"y");
    }

    #[test]
    fn concurrent_increments_lose_nothing_and_count_nothing_twice() {
        let store = ProcessStore { map: Mutex::new(None) };
        let increment = |store: &ProcessStore| {
            update(store, "n", |bytes| {
                let n = bytes.and_then(|b| read_u64(&b, 0)).unwrap_or(0) + 1;
                Change::Write(n.to_le_bytes(), n)
            })
        };
        increment(&store);
        // Tighter than any Envoy worker: an increment that stays contended past the retry
        // bound writes nothing (the caller fails open); every one that settles counts once.
        let settled: u64 = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..2_000).filter(|_| matches!(increment(&store), Outcome::Done { .. })).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap() as u64).sum()
        });
        assert!(settled > 4_000, "most settle: {settled}");
        assert_eq!(read_u64(&store.load("n").unwrap().unwrap().0, 0), Some(1 + settled));
    }

    #[test]
    fn a_namespace_keeps_its_keys_while_a_configuration_holds_it_and_loses_them_with_the_last() {
        let old = STORE.hold("surgeguard/t1", vec!["surgeguard/t1/slots/a/".into()]);
        put(&STORE, "surgeguard/t1/record");
        put(&STORE, "surgeguard/t1/slots/a/7");
        put(&STORE, "surgeguard/t1x/record");
        // A reload: the new configuration comes first, the old one goes after.
        let new = STORE.hold("surgeguard/t1", vec!["surgeguard/t1/slots/a/".into()]);
        drop(old);
        assert!(STORE.load("surgeguard/t1/record").unwrap().is_some(), "the record carries over");
        assert!(STORE.load("surgeguard/t1/slots/a/7").unwrap().is_some(), "so does an unchanged limit's slot");
        drop(new);
        assert_eq!(STORE.load("surgeguard/t1/record"), Ok(None));
        assert_eq!(STORE.load("surgeguard/t1/slots/a/7"), Ok(None));
        assert!(STORE.load("surgeguard/t1x/record").unwrap().is_some(), "another namespace is untouched");
    }

    #[test]
    fn the_slots_of_a_limit_no_configuration_has_are_dropped() {
        let old = STORE.hold("surgeguard/t2", vec!["surgeguard/t2/slots/a/".into()]);
        put(&STORE, "surgeguard/t2/slots/a/1");
        // The limit changed (a new state id): both configurations in force, both kept.
        let new = STORE.hold("surgeguard/t2", vec!["surgeguard/t2/slots/b/".into()]);
        put(&STORE, "surgeguard/t2/slots/b/1");
        assert!(STORE.load("surgeguard/t2/slots/a/1").unwrap().is_some(), "the old one still serves");
        drop(old);
        assert_eq!(STORE.load("surgeguard/t2/slots/a/1"), Ok(None), "no configuration has limit a");
        assert!(STORE.load("surgeguard/t2/slots/b/1").unwrap().is_some());
        drop(new);
    }
}
