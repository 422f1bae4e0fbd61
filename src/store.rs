//! Storage shared by every worker, reached through a compare-and-swap shaped trait so the core
//! never calls the host. Envoy's shared data implements it in `host`; tests use [`MemoryStore`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

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
