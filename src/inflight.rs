//! The in-flight table: how many admitted requests have not yet ended, across all workers.
//!
//! The whole table is one shared value, updated by compare-and-swap, so admission is exact
//! across workers. It holds one entry per VM instance (each Envoy worker runs its own VM):
//! `(instance, count, heartbeat_ns)`. The total in flight is the sum over live entries.
//!
//! Why per instance: if a VM dies (a crash, a reload) its streams will never report their end.
//! Every write by an instance, and a periodic tick, refreshes its heartbeat; an entry whose
//! heartbeat is older than [`LEASE_NS`] belongs to a dead VM and is dropped at the next write,
//! so a restart can inflate the count for at most the lease, never forever.

use crate::config::NS_PER_S;

/// An entry not refreshed for this long belongs to a VM that is gone.
pub const LEASE_NS: u64 = 10 * NS_PER_S;
/// How often each VM refreshes its heartbeat even when idle.
pub const HEARTBEAT_PERIOD_MS: u64 = 1_000;

const ENTRY_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub instance: u32,
    pub count: u32,
    pub heartbeat_ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub entries: Vec<Entry>,
}

impl Table {
    /// Reads a stored table; bytes that do not form a whole entry are ignored.
    pub fn decode(bytes: &[u8]) -> Table {
        let entries = bytes
            .chunks_exact(ENTRY_BYTES)
            .map(|c| {
                let mut instance = [0u8; 4];
                let mut count = [0u8; 4];
                let mut heartbeat = [0u8; 8];
                instance.copy_from_slice(&c[0..4]);
                count.copy_from_slice(&c[4..8]);
                heartbeat.copy_from_slice(&c[8..16]);
                Entry {
                    instance: u32::from_le_bytes(instance),
                    count: u32::from_le_bytes(count),
                    heartbeat_ns: u64::from_le_bytes(heartbeat),
                }
            })
            .collect();
        Table { entries }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * ENTRY_BYTES);
        for e in &self.entries {
            out.extend_from_slice(&e.instance.to_le_bytes());
            out.extend_from_slice(&e.count.to_le_bytes());
            out.extend_from_slice(&e.heartbeat_ns.to_le_bytes());
        }
        out
    }

    fn is_live(e: &Entry, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.heartbeat_ns) <= LEASE_NS
    }

    /// Requests in flight at `now_ns`, counting live instances only.
    pub fn total(&self, now_ns: u64) -> u64 {
        self.entries
            .iter()
            .filter(|e| Self::is_live(e, now_ns))
            .map(|e| u64::from(e.count))
            .sum()
    }

    /// Drops dead instances and refreshes (or creates) this instance's entry.
    fn touch(&mut self, instance: u32, now_ns: u64) -> &mut Entry {
        self.entries
            .retain(|e| e.instance == instance || Self::is_live(e, now_ns));
        let i = match self.entries.iter().position(|e| e.instance == instance) {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    instance,
                    count: 0,
                    heartbeat_ns: now_ns,
                });
                self.entries.len() - 1
            }
        };
        let entry = &mut self.entries[i];
        // A live entry's own count is trusted; a dead one's (same id, older than the lease)
        // cannot be, since its releases may have been dropped with it.
        if !Self::is_live(entry, now_ns) {
            entry.count = 0;
        }
        entry.heartbeat_ns = entry.heartbeat_ns.max(now_ns);
        entry
    }

    /// Takes a slot if `total + 1 <= class_max`; returns whether it did.
    pub fn acquire(&mut self, instance: u32, now_ns: u64, class_max: u32) -> bool {
        if self.total(now_ns) + 1 > u64::from(class_max) {
            return false;
        }
        let entry = self.touch(instance, now_ns);
        entry.count = entry.count.saturating_add(1);
        true
    }

    /// Returns a slot this instance took.
    pub fn release(&mut self, instance: u32, now_ns: u64) {
        let entry = self.touch(instance, now_ns);
        entry.count = entry.count.saturating_sub(1);
    }

    /// Refreshes this instance's heartbeat (periodic, so an idle worker keeps its entry).
    pub fn heartbeat(&mut self, instance: u32, now_ns: u64) {
        self.touch(instance, now_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const T0: u64 = 1_000 * NS_PER_S;

    #[test]
    fn admits_up_to_the_class_maximum_across_instances() {
        let mut t = Table::default();
        assert!(t.acquire(1, T0, 3));
        assert!(t.acquire(2, T0, 3));
        assert!(t.acquire(1, T0, 3));
        assert!(!t.acquire(2, T0, 3));
        assert_eq!(t.total(T0), 3);
    }

    #[test]
    fn release_returns_the_count_to_zero() {
        let mut t = Table::default();
        for _ in 0..5 {
            t.acquire(7, T0, 10);
        }
        for _ in 0..5 {
            t.release(7, T0);
        }
        // Extra releases (a double report) never underflow.
        t.release(7, T0);
        assert_eq!(t.total(T0), 0);
    }

    #[test]
    fn a_dead_instance_stops_counting_after_the_lease() {
        let mut t = Table::default();
        for _ in 0..4 {
            t.acquire(1, T0, 4);
        }
        assert!(!t.acquire(2, T0 + LEASE_NS, 4));
        assert!(t.acquire(2, T0 + LEASE_NS + 1, 4));
        assert_eq!(
            t.entries.len(),
            1,
            "the dead entry is dropped at the next write"
        );
    }

    #[test]
    fn heartbeats_keep_an_idle_instance_alive() {
        let mut t = Table::default();
        t.acquire(1, T0, 4);
        t.heartbeat(1, T0 + LEASE_NS);
        assert_eq!(t.total(T0 + 2 * LEASE_NS - 1), 1);
    }

    #[test]
    fn encoding_round_trips_and_ignores_a_torn_tail() {
        let mut t = Table::default();
        t.acquire(3, T0, 9);
        t.acquire(4, T0 + 1, 9);
        let mut bytes = t.encode();
        assert_eq!(Table::decode(&bytes), t);
        bytes.push(0xff);
        assert_eq!(Table::decode(&bytes), t);
    }
}
