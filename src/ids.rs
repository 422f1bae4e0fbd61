//! Typed indices into a compiled [`Policy`](crate::config::Policy), so a class, a limit and a
//! set of limits cannot be mistaken for one another (or for a count) where they cross modules.
//!
//! Invariants: an id is made only by `config` when it compiles a policy (or by tests), and is in
//! range for that policy. A [`LimitSet`] holds at most [`MAX_LIMITS`](crate::config::MAX_LIMITS)
//! (64) limits, as `config` guarantees; it is one `u64`, so decisions copy it freely.

/// A priority class: its position in `Policy::classes` (most important first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClassId(pub(crate) usize);

/// A limit: its position in `Policy::limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LimitId(pub(crate) usize);

impl ClassId {
    pub fn index(self) -> usize {
        self.0
    }
}

impl LimitId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// A set of limits (bit `i`: limit `i`), iterated lowest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSet(u64);

impl LimitSet {
    pub const EMPTY: LimitSet = LimitSet(0);

    /// Adds `limit`; ids past the 64th are not representable and are ignored (`config` never
    /// makes them).
    pub fn insert(&mut self, limit: LimitId) {
        self.0 |= bit(limit);
    }

    pub fn contains(self, limit: LimitId) -> bool {
        self.0 & bit(limit) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = LimitId> {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let i = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                LimitId(i)
            })
        })
    }
}

impl FromIterator<LimitId> for LimitSet {
    fn from_iter<I: IntoIterator<Item = LimitId>>(ids: I) -> LimitSet {
        let mut set = LimitSet::EMPTY;
        ids.into_iter().for_each(|id| set.insert(id));
        set
    }
}

fn bit(limit: LimitId) -> u64 {
    u32::try_from(limit.0).ok().and_then(|i| 1u64.checked_shl(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_limit_set_iterates_its_limits_lowest_first() {
        let set: LimitSet = [LimitId(63), LimitId(0), LimitId(5)].into_iter().collect();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![LimitId(0), LimitId(5), LimitId(63)]);
        assert!(set.contains(LimitId(5)) && !set.contains(LimitId(4)));
        assert!(LimitSet::EMPTY.is_empty() && LimitSet::EMPTY.iter().next().is_none());
    }

    #[test]
    fn a_limit_past_the_64th_is_ignored_rather_than_wrapped() {
        let mut set = LimitSet::EMPTY;
        set.insert(LimitId(64));
        assert!(set.is_empty() && !set.contains(LimitId(64)));
        assert!(!set.contains(LimitId(0)));
    }
}
