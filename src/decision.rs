//! What happens to one request: classify, check every limit that applies and the in-flight
//! limit, then take tokens and a slot only if all admit.
//!
//! Exactness across workers: every bucket and the in-flight table live in shared storage and
//! are changed only by compare-and-swap against the version that was read. A decision is made
//! on a snapshot; the commit writes each bucket, then the in-flight table. If any write finds
//! its value changed by another worker, the writes already made are undone (`bucket::give_back`
//! commutes with other takes, so the state is as if they never happened) and the whole decision
//! is retried on fresh reads, at most [`MAX_ATTEMPTS`] times. Past that, or if the host refuses
//! a storage call, the request is admitted without taking anything (fail open) and counted.

use crate::bucket::{ceil_seconds, give_back, is_full, Bucket};
use crate::classify::{classify, matches, Request};
use crate::config::{KeySource, Limit, Mode, Policy};
use crate::inflight::Table;
use crate::store::{read_u64, SharedStore, StoreError};
use std::hash::{Hash, Hasher};

pub const MAX_ATTEMPTS: usize = 16;

/// The verdict on one request, and what the counters need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub class: usize,
    pub verdict: Verdict,
    /// Every limit that applied to the request, with its own answer.
    pub limits: Vec<LimitOutcome>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOutcome {
    pub limit: usize,
    pub admitted: bool,
    /// The key found no slot of its own and shared the limit's overflow bucket.
    pub overflow: bool,
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

/// A compiled policy plus where its state lives in shared storage.
#[derive(Debug, Clone)]
pub struct Guard {
    pub policy: Policy,
    /// Storage key prefix of each limit (the bucket itself for a global limit).
    limit_keys: Vec<String>,
    in_flight_key: String,
    /// Mixed into key hashing so slot positions cannot be predicted from outside.
    seed: u64,
}

/// One bucket read for a decision: where it lives, what it held, what it will hold.
struct Cell {
    limit: usize,
    store_key: String,
    version: Option<u32>,
    key_fingerprint: u64,
    tat_ns: u64,
    new_tat_ns: u64,
    admits: bool,
    overflow: bool,
}

impl Guard {
    /// `namespace` separates plugins sharing one VM; `seed` must be the same on every worker.
    pub fn new(policy: Policy, namespace: &str, seed: u64) -> Guard {
        let limit_keys = policy
            .limits
            .iter()
            .map(|l| format!("{namespace}/limit/{}", l.state_id))
            .collect();
        Guard {
            policy,
            limit_keys,
            in_flight_key: format!("{namespace}/in_flight"),
            seed,
        }
    }

    pub fn in_flight_key(&self) -> &str {
        &self.in_flight_key
    }

    pub fn mode(&self) -> Mode {
        self.policy.mode
    }

    /// Decides one request at `now_ns`. In shadow mode the caller lets a refusal through; the
    /// decision is the same, and a refusal takes nothing either way.
    pub fn decide(
        &self,
        req: &Request,
        now_ns: u64,
        instance: u32,
        store: &dyn SharedStore,
    ) -> Decision {
        let class = classify(&self.policy, req);
        let applicable: Vec<usize> = self
            .policy
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.matcher.as_ref().is_none_or(|m| matches(m, req)))
            .map(|(i, _)| i)
            .collect();
        for _ in 0..MAX_ATTEMPTS {
            match self.attempt(class, req, &applicable, now_ns, instance, store) {
                Ok(Attempt::Done(verdict, cells)) => {
                    // Counted per limit: on admission every limit that applied; on a rate
                    // limit only the limits that refused (the others took nothing).
                    let limits = cells
                        .iter()
                        .filter(|c| !c.admits || !verdict.is_refusal())
                        .map(|c| LimitOutcome {
                            limit: c.limit,
                            admitted: c.admits,
                            overflow: c.overflow,
                        })
                        .collect();
                    return Decision {
                        class,
                        verdict,
                        limits,
                    };
                }
                Ok(Attempt::Conflict) => continue,
                Err(StoreError) => break,
            }
        }
        Decision {
            class,
            verdict: Verdict::FailedOpen,
            limits: Vec::new(),
        }
    }

    fn attempt(
        &self,
        class: usize,
        req: &Request,
        applicable: &[usize],
        now_ns: u64,
        instance: u32,
        store: &dyn SharedStore,
    ) -> Result<Attempt, StoreError> {
        // Snapshot and evaluate every bucket; a refusal writes nothing.
        let mut cells = Vec::with_capacity(applicable.len());
        let mut worst: Option<(usize, u64)> = None;
        for &i in applicable {
            let Some(limit) = self.policy.limits.get(i) else {
                continue;
            };
            let mut cell = self.locate(i, limit, req, now_ns, store)?;
            match bucket_for(limit, class).take(cell.tat_ns, now_ns) {
                Ok(t) => {
                    cell.new_tat_ns = t.new_tat_ns;
                    cell.admits = true;
                }
                Err(r) => {
                    let retry_after_s = r.wait_ns.map_or(limit.window_s, ceil_seconds);
                    if worst.is_none_or(|(_, w)| retry_after_s > w) {
                        worst = Some((i, retry_after_s));
                    }
                }
            }
            cells.push(cell);
        }
        if let Some((limit, retry_after_s)) = worst {
            return Ok(Attempt::Done(
                Verdict::RateLimited {
                    limit,
                    retry_after_s,
                },
                cells,
            ));
        }
        let mut in_flight: Option<(Table, Option<u32>)> = None;
        if let Some(c) = &self.policy.concurrency {
            let (bytes, version) = store.load(&self.in_flight_key)?.unzip();
            let mut table = Table::decode(bytes.as_deref().unwrap_or(&[]));
            let class_max = c.class_max_in_flight.get(class).copied().unwrap_or(0);
            if !table.acquire(instance, now_ns, class_max) {
                return Ok(Attempt::Done(
                    Verdict::Shed {
                        retry_after_s: c.retry_after_s,
                    },
                    Vec::new(),
                ));
            }
            in_flight = Some((table, version));
        }

        // Commit: buckets, then the in-flight table; undo on a lost race.
        for (n, cell) in cells.iter().enumerate() {
            let value = encode_cell(cell.key_fingerprint, cell.new_tat_ns);
            if !store.compare_and_swap(&cell.store_key, &value, cell.version)? {
                self.undo(cells.get(..n).unwrap_or(&[]), store);
                return Ok(Attempt::Conflict);
            }
        }
        let mut total = None;
        if let Some((table, version)) = in_flight {
            if !store.compare_and_swap(&self.in_flight_key, &table.encode(), version)? {
                self.undo(&cells, store);
                return Ok(Attempt::Conflict);
            }
            total = Some(table.total(now_ns));
        }
        Ok(Attempt::Done(Verdict::Admitted { in_flight: total }, cells))
    }

    /// Finds the bucket a request draws from: the global one, or its key's slot.
    fn locate(
        &self,
        i: usize,
        limit: &Limit,
        req: &Request,
        now_ns: u64,
        store: &dyn SharedStore,
    ) -> Result<Cell, StoreError> {
        let prefix = self.limit_keys.get(i).map_or("", String::as_str);
        let key_bytes = match limit.key {
            KeySource::Global => return load_cell(i, prefix.to_string(), 0, false, store),
            KeySource::ClientIp => Some(req.client_ip),
            KeySource::Header(slot) => req.header(slot),
        };
        let fingerprint = self.fingerprint(i, key_bytes);
        let [first, second] = slots(fingerprint, limit.max_keys);
        let a = load_cell(i, format!("{prefix}/{first}"), fingerprint, false, store)?;
        if a.key_fingerprint == fingerprint {
            return Ok(a);
        }
        let b = if second != first {
            Some(load_cell(
                i,
                format!("{prefix}/{second}"),
                fingerprint,
                false,
                store,
            )?)
        } else {
            None
        };
        if let Some(b) = b.as_ref().filter(|b| b.key_fingerprint == fingerprint) {
            return Ok(Cell {
                store_key: b.store_key.clone(),
                ..*b
            });
        }
        // Not stored yet: claim a slot that is empty or whose bucket is full again (dropping
        // a full bucket loses nothing). A slot holding a partly used bucket is never taken.
        for candidate in std::iter::once(a).chain(b) {
            if candidate.version.is_none() || is_full(candidate.tat_ns, now_ns) {
                return Ok(Cell {
                    key_fingerprint: fingerprint,
                    tat_ns: 0,
                    ..candidate
                });
            }
        }
        // Both slots hold live buckets of other keys: share the limit's overflow bucket.
        load_cell(i, format!("{prefix}/overflow"), 0, true, store)
    }

    fn fingerprint(&self, limit: usize, key: Option<&[u8]>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.seed, limit, key).hash(&mut h);
        // 0 marks an unkeyed bucket and u64::MAX an empty slot.
        h.finish().clamp(1, u64::MAX - 1)
    }

    fn undo(&self, committed: &[Cell], store: &dyn SharedStore) {
        for cell in committed {
            let Some(limit) = self.policy.limits.get(cell.limit) else {
                continue;
            };
            for _ in 0..MAX_ATTEMPTS {
                let Ok(current) = load_cell(
                    cell.limit,
                    cell.store_key.clone(),
                    cell.key_fingerprint,
                    cell.overflow,
                    store,
                ) else {
                    break;
                };
                // The slot was taken over only if our bucket had refilled: nothing to undo.
                if current.key_fingerprint != cell.key_fingerprint {
                    break;
                }
                let value = encode_cell(
                    cell.key_fingerprint,
                    give_back(current.tat_ns, limit.ns_per_token),
                );
                if let Ok(true) | Err(_) =
                    store.compare_and_swap(&cell.store_key, &value, current.version)
                {
                    break;
                }
            }
        }
    }

    /// Releases the in-flight slot a request took. Returns the new total, or `None` if storage
    /// failed (the slot then stays counted until this VM's entry expires; see `inflight`).
    pub fn release(&self, instance: u32, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        self.update_in_flight(store, |t| t.release(instance, now_ns))
            .map(|t| t.total(now_ns))
    }

    /// Refreshes this VM's heartbeat in the in-flight table; returns the total in flight.
    pub fn heartbeat(&self, instance: u32, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        self.policy.concurrency.as_ref()?;
        self.update_in_flight(store, |t| t.heartbeat(instance, now_ns))
            .map(|t| t.total(now_ns))
    }

    /// Requests in flight now, as stored (a read, for the gauge).
    pub fn in_flight(&self, now_ns: u64, store: &dyn SharedStore) -> Option<u64> {
        let (bytes, _) = store.load(&self.in_flight_key).ok()?.unzip();
        Some(Table::decode(bytes.as_deref().unwrap_or(&[])).total(now_ns))
    }

    fn update_in_flight(
        &self,
        store: &dyn SharedStore,
        change: impl Fn(&mut Table),
    ) -> Option<Table> {
        for _ in 0..MAX_ATTEMPTS {
            let (bytes, version) = store.load(&self.in_flight_key).ok()?.unzip();
            let mut table = Table::decode(bytes.as_deref().unwrap_or(&[]));
            change(&mut table);
            if store
                .compare_and_swap(&self.in_flight_key, &table.encode(), version)
                .ok()?
            {
                return Some(table);
            }
        }
        None
    }
}

enum Attempt {
    Done(Verdict, Vec<Cell>),
    Conflict,
}

fn bucket_for(limit: &Limit, class: usize) -> Bucket {
    Bucket {
        ns_per_token: limit.ns_per_token,
        tolerance_ns: limit.class_tolerance_ns.get(class).copied().unwrap_or(0),
    }
}

/// The two slots a key may live in (two choices keep slots usable until the table is nearly full).
fn slots(fingerprint: u64, max_keys: u32) -> [u64; 2] {
    let n = u64::from(max_keys.max(1));
    [
        fingerprint % n,
        fingerprint
            .rotate_left(32)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            % n,
    ]
}

/// A stored bucket: the owning key's fingerprint (0 for unkeyed) and its arrival time.
fn encode_cell(key_fingerprint: u64, tat_ns: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&key_fingerprint.to_le_bytes());
    out[8..].copy_from_slice(&tat_ns.to_le_bytes());
    out
}

fn load_cell(
    limit: usize,
    store_key: String,
    expect_fp: u64,
    overflow: bool,
    store: &dyn SharedStore,
) -> Result<Cell, StoreError> {
    let loaded = store.load(&store_key)?;
    let (key_fingerprint, tat_ns, version) = match &loaded {
        Some((bytes, version)) => (
            read_u64(bytes, 0).unwrap_or(expect_fp),
            read_u64(bytes, 8).unwrap_or(0),
            Some(*version),
        ),
        None => (if expect_fp == 0 { 0 } else { u64::MAX }, 0, None),
    };
    Ok(Cell {
        limit,
        store_key,
        version,
        key_fingerprint,
        tat_ns,
        new_tat_ns: 0,
        admits: false,
        overflow,
    })
}

#[cfg(test)]
#[path = "decision_tests.rs"]
mod tests;
