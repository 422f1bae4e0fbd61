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
