//! Token bucket arithmetic, as a generic cell rate algorithm on one `u64`.
//!
//! A bucket's whole state is its theoretical arrival time `tat_ns`: the instant at which the
//! bucket would be full again. Tokens available at `now_ns` are
//! `(now_ns + burst_ns - max(tat_ns, now_ns)) / ns_per_token`; taking one token advances
//! `max(tat_ns, now_ns)` by `ns_per_token`. Consequences the rest of the crate relies on:
//! - refill is implicit (no timer) and the state fits one compare-and-swap value;
//! - a fresh bucket (`tat_ns = 0`) is full; a bucket with `tat_ns <= now_ns` is full, so
//!   dropping it loses nothing;
//! - tokens never exceed `burst`, and a clock that steps backwards only lowers the count:
//!   it can never mint tokens;
//! - a class with reserve `r` may take iff afterwards `tat_ns - now_ns <= tolerance_ns`, where
//!   `tolerance_ns = (1 - r) x burst` tokens of time (computed once in `config`).

use crate::config::NS_PER_S;

/// The bucket parameters one decision needs, borrowed from a compiled limit.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub ns_per_token: u64,
    /// How far ahead of now the arrival time may run after a take, for this request's class.
    pub tolerance_ns: u64,
}

/// A take that the bucket refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Nanoseconds until the same request would be admitted; `None` if this class can never
    /// take from this bucket (its reserve leaves it less than one token).
    pub wait_ns: Option<u64>,
}

/// A take that the bucket admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// The bucket's state after the take.
    pub new_tat_ns: u64,
}

impl Bucket {
    /// Takes one token at `now_ns` from a bucket in state `tat_ns`.
    pub fn take(&self, tat_ns: u64, now_ns: u64) -> Result<Taken, Refused> {
        let new_tat_ns = tat_ns.max(now_ns).saturating_add(self.ns_per_token);
        let ahead_ns = new_tat_ns - now_ns;
        if ahead_ns > self.tolerance_ns {
            let wait_ns = (self.tolerance_ns >= self.ns_per_token).then(|| ahead_ns - self.tolerance_ns);
            return Err(Refused { wait_ns });
        }
        Ok(Taken { new_tat_ns })
    }
}

/// Undoes one take: used only when a later limit of the same request lost a race (see
/// `decision`). The arithmetic commutes with other takes, so the result is the state as if the
/// take had never happened.
pub fn give_back(tat_ns: u64, ns_per_token: u64) -> u64 {
    tat_ns.saturating_sub(ns_per_token)
}

/// True when the bucket holds `burst` tokens again: its state can be dropped.
pub fn is_full(tat_ns: u64, now_ns: u64) -> bool {
    tat_ns <= now_ns
}

/// Whole seconds, rounded up, at least 1: the unit of `retry-after`.
pub fn ceil_seconds(ns: u64) -> u64 {
    ns.div_ceil(NS_PER_S).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MS: u64 = 1_000_000;

    /// 10 tokens/s, burst 5, no reserve.
    fn ten_per_second_burst_five() -> Bucket {
        Bucket { ns_per_token: 100 * MS, tolerance_ns: 500 * MS }
    }

    /// Takes until refused: the state after, and the whole tokens the bucket held.
    pub(super) fn drain(b: &Bucket, mut tat: u64, now: u64) -> (u64, u64) {
        let mut taken = 0;
        while let Ok(t) = b.take(tat, now) {
            tat = t.new_tat_ns;
            taken += 1;
        }
        (tat, taken)
    }

    #[test]
    fn a_fresh_bucket_admits_exactly_burst_at_once() {
        let b = ten_per_second_burst_five();
        let now = 1_700_000_000 * NS_PER_S;
        let (_, taken) = drain(&b, 0, now);
        assert_eq!(taken, 5);
    }

    #[test]
    fn refills_one_token_per_interval_and_no_more() {
        let b = ten_per_second_burst_five();
        let now = 10 * NS_PER_S;
        let (tat, _) = drain(&b, 0, now);
        assert!(b.take(tat, now + 99 * MS).is_err());
        let (_, taken) = drain(&b, tat, now + 100 * MS);
        assert_eq!(taken, 1);
        let (_, taken) = drain(&b, tat, now + 250 * MS);
        assert_eq!(taken, 2);
    }

    #[test]
    fn never_holds_more_than_burst_after_a_long_idle_time() {
        let b = ten_per_second_burst_five();
        let (_, taken) = drain(&b, 5 * NS_PER_S, 5_000 * NS_PER_S);
        assert_eq!(taken, 5);
    }

    #[test]
    fn a_clock_stepping_backwards_mints_no_tokens() {
        let b = ten_per_second_burst_five();
        let now = 100 * NS_PER_S;
        let (tat, _) = drain(&b, 0, now);
        let (_, taken) = drain(&b, tat, now - 30 * NS_PER_S);
        assert_eq!(taken, 0);
    }

    #[test]
    fn refusal_says_when_the_request_would_pass() {
        let b = ten_per_second_burst_five();
        let now = 10 * NS_PER_S;
        let (tat, _) = drain(&b, 0, now);
        let refused = b.take(tat, now).err();
        assert_eq!(refused, Some(Refused { wait_ns: Some(100 * MS) }));
        assert!(b.take(tat, now + 100 * MS).is_ok());
        assert_eq!(ceil_seconds(100 * MS), 1);
        assert_eq!(ceil_seconds(2 * NS_PER_S + 1), 3);
    }

    #[test]
    fn reserve_keeps_tokens_for_more_important_classes() {
        // Burst 10 at 10/s; a class with reserve 0.5 may only take while 5 would remain.
        let reserved = Bucket { ns_per_token: 100 * MS, tolerance_ns: 500 * MS };
        let open = Bucket { ns_per_token: 100 * MS, tolerance_ns: 1_000 * MS };
        let now = 10 * NS_PER_S;
        let (tat, taken) = drain(&reserved, 0, now);
        assert_eq!(taken, 5);
        let (_, taken) = drain(&open, tat, now);
        assert_eq!(taken, 5);
    }

    #[test]
    fn a_class_whose_reserve_leaves_under_one_token_is_never_admitted() {
        let b = Bucket { ns_per_token: 100 * MS, tolerance_ns: 50 * MS };
        assert_eq!(b.take(0, NS_PER_S).err(), Some(Refused { wait_ns: None }));
    }

    #[test]
    fn give_back_restores_the_state_before_the_take() {
        let b = ten_per_second_burst_five();
        let now = 10 * NS_PER_S;
        let t = b.take(now + 200 * MS, now).ok().map(|t| t.new_tat_ns);
        assert_eq!(t.map(|tat| give_back(tat, b.ns_per_token)), Some(now + 200 * MS));
        assert!(is_full(give_back(now + 100 * MS, b.ns_per_token), now));
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties {
    use super::tests::drain;
    use super::*;
    use proptest::prelude::*;

    /// Whole tokens the bucket holds at `now`, counted by taking them.
    fn tokens(b: &Bucket, tat: u64, now: u64) -> u64 {
        drain(b, tat, now).1
    }

    proptest! {
        /// Over any window of length T, admitted <= burst + rate x T, whatever the arrivals.
        #[test]
        fn admitted_never_exceeds_burst_plus_rate_times_window(
            ns_per_token in 1_000u64..2_000_000_000,
            burst in 1u64..200,
            gaps in proptest::collection::vec(0u64..300_000_000, 1..400),
            start in 0u64..4_000_000_000_000_000_000,
        ) {
            let b = Bucket { ns_per_token, tolerance_ns: burst * ns_per_token };
            let mut tat = 0;
            let mut now = start;
            let mut admitted_at = Vec::new();
            for gap in gaps {
                now += gap;
                if let Ok(t) = b.take(tat, now) {
                    tat = t.new_tat_ns;
                    admitted_at.push(now);
                }
            }
            for (i, &from) in admitted_at.iter().enumerate() {
                for (j, &to) in admitted_at.iter().enumerate().skip(i) {
                    let window_ns = to - from;
                    let bound = burst as u128 + window_ns as u128 / ns_per_token as u128;
                    prop_assert!((j - i + 1) as u128 <= bound);
                }
            }
        }

        /// Tokens never exceed burst, however the clock moves, backwards included.
        #[test]
        fn tokens_never_exceed_burst(
            ns_per_token in 1u64..1_000_000_000,
            burst in 1u64..1_000,
            steps in proptest::collection::vec((any::<bool>(), 0u64..10_000_000_000), 1..200),
        ) {
            let b = Bucket { ns_per_token, tolerance_ns: burst * ns_per_token };
            let mut tat = 0;
            let mut now: u64 = 1 << 60;
            for (forward, step) in steps {
                now = if forward { now + step } else { now - step };
                prop_assert!(tokens(&b, tat, now) <= burst);
                if let Ok(t) = b.take(tat, now) {
                    tat = t.new_tat_ns;
                }
            }
        }

        /// A backwards step never lets more through than standing still would.
        #[test]
        fn stepping_back_never_mints(
            ns_per_token in 1_000u64..1_000_000_000,
            burst in 1u64..100,
            used in 0u64..100,
            back in 0u64..100_000_000_000,
        ) {
            let b = Bucket { ns_per_token, tolerance_ns: burst * ns_per_token };
            let now = 1u64 << 62;
            let mut tat = 0;
            for _ in 0..used {
                if let Ok(t) = b.take(tat, now) { tat = t.new_tat_ns; }
            }
            prop_assert!(tokens(&b, tat, now - back) <= tokens(&b, tat, now));
        }
    }
}
