//! `lease`: one fleet limit's lease driven by arbitrary operations: takes with any reserve, the
//! service's calls and answers (late, repeated, for calls long expired), deadlines, and time
//! that goes forward and back.
//!
//! - never panics or overflows (debug assertions on);
//! - at most one call in flight, asking for `min_hits..=max_hits`;
//! - credit stays within `min_hits`, and tokens are never minted: what is spent is at most what
//!   was granted, plus `min_hits` of credit for each time credit was forgiven (the service
//!   failed: the fallback bucket decides then) and once at the start.

use arbitrary::{Arbitrary, Unstructured};
use surgeguard::lease::{Answer, Lease, LeaseParams, WORDS};

const MS: u64 = 1_000_000;

#[derive(Debug, Arbitrary)]
enum Op {
    Forward(u32),
    Back(u32),
    Take {
        reserve: u64,
    },
    StartCall,
    /// Answers the call in flight (or a stale one: `stale` picks an earlier deadline).
    Answer {
        answer: ArbAnswer,
        stale: Option<u8>,
    },
    ExpireCall,
}

#[derive(Debug, Arbitrary)]
enum ArbAnswer {
    Granted { remaining: Option<u32>, until_reset_ms: Option<u32> },
    OverLimit { remaining: Option<u32>, until_reset_ms: Option<u32> },
    Failed,
}

impl ArbAnswer {
    /// As `fleet::answer_from` makes them: `limit_remaining` is a u32 on the wire.
    fn get(&self) -> Answer {
        let reset = |ms: &Option<u32>| ms.map(|ms| u64::from(ms) * MS);
        match self {
            ArbAnswer::Granted { remaining, until_reset_ms } => {
                Answer::Granted { remaining: remaining.map(u64::from), until_reset_ns: reset(until_reset_ms) }
            }
            ArbAnswer::OverLimit { remaining, until_reset_ms } => {
                Answer::OverLimit { remaining: remaining.map(u64::from), until_reset_ns: reset(until_reset_ms) }
            }
            ArbAnswer::Failed => Answer::Failed,
        }
    }
}

/// Parameters within the ranges `config` compiles (see `config::compile_fleet`).
fn params(u: &mut Unstructured) -> arbitrary::Result<LeaseParams> {
    let capacity = u.int_in_range(1..=1_000_000_000u64)?;
    let max_hits = u32::try_from(u.int_in_range(1..=capacity)?).unwrap_or(u32::MAX);
    let min_hits = u.int_in_range(1..=max_hits)?;
    Ok(LeaseParams {
        capacity,
        window_ns: u.int_in_range(1..=1_000_000_000 * 1_000_000_000u64)?,
        timeout_ns: u.int_in_range(1..=5_000)? * MS,
        refill_period_ns: u.int_in_range(10..=10_000)? * MS,
        min_hits,
        max_hits,
        initial_hits: u.int_in_range(1..=max_hits)?,
        probe_period_ns: 500 * MS,
    })
}

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(p) = params(&mut u) else { return };
    let Ok(mut now) = u.int_in_range(0..=1u64 << 62) else { return };
    // A lease as stored: fresh, or any words (another version's layout, a torn write), after
    // which only "never panics" is checked.
    let Ok(stored) = Option::<[u64; WORDS]>::arbitrary(&mut u) else { return };
    let mut lease = stored.map_or_else(Lease::default, |w| Lease::from_words(&w));
    let mut deadlines: Vec<u64> = Vec::new();
    let (mut spent, mut granted, mut forgiven) = (0u128, 0u128, 1u128);
    // `arbitrary` keeps giving defaults once the input runs out: stop there.
    while !u.is_empty() {
        let Ok(op) = Op::arbitrary(&mut u) else { break };
        let before = lease;
        match op {
            Op::Forward(ms) => now = now.saturating_add(u64::from(ms) * MS / 16),
            Op::Back(ms) => now = now.saturating_sub(u64::from(ms) * MS / 16),
            Op::Take { reserve } => {
                if lease.take(reserve, &p, now).is_ok() {
                    spent += 1;
                } else {
                    // A refusal spends nothing; only the window's reset may have dropped tokens.
                    assert!(lease.tokens == before.tokens || lease.tokens == 0);
                    assert_eq!(lease.debt, before.debt);
                }
            }
            Op::StartCall => {
                if let Some(hits) = lease.start_call(&p, now) {
                    assert_eq!(before.call_deadline_ns, 0, "a second call while one is in flight");
                    assert!((1..=p.max_hits).contains(&hits), "asked for {hits}");
                    assert_eq!(lease.call_hits, hits);
                    assert_ne!(lease.call_deadline_ns, 0);
                    deadlines.push(lease.call_deadline_ns);
                }
            }
            Op::Answer { answer, stale } => {
                let deadline = match stale {
                    Some(back) => deadlines.iter().rev().nth(usize::from(back)).copied().unwrap_or(0),
                    None => lease.call_deadline_ns,
                };
                let answer = answer.get();
                lease.on_answer(answer, deadline, &p, now);
                account(&before, &lease, answer, deadline, &mut granted, &mut forgiven);
            }
            Op::ExpireCall => {
                lease.expire_call(&p, now);
                if before.call_deadline_ns != 0 && now >= before.call_deadline_ns {
                    account(&before, &lease, Answer::Failed, before.call_deadline_ns, &mut granted, &mut forgiven);
                } else {
                    assert_eq!(lease, before, "nothing expires before its deadline");
                }
            }
        }
        if stored.is_some() {
            continue;
        }
        assert!(lease.debt <= u64::from(p.min_hits), "credit {} past min_hits {}", lease.debt, p.min_hits);
        assert!(
            spent <= granted + forgiven * u128::from(p.min_hits),
            "spent {spent} of {granted} granted ({forgiven} credits)"
        );
        assert!(u128::from(lease.tokens) <= granted, "tokens minted: {} of {granted} granted", lease.tokens);
    }
}

/// Counts what an answer applied: hits granted, credit forgiven by a failure.
fn account(before: &Lease, after: &Lease, answer: Answer, deadline: u64, granted: &mut u128, forgiven: &mut u128) {
    if deadline == 0 || deadline != before.call_deadline_ns {
        assert_eq!(after, before, "an answer to another call changed the lease");
        return;
    }
    assert_eq!(after.call_deadline_ns, 0, "the answered call is still in flight");
    match answer {
        Answer::Granted { .. } => *granted += u128::from(before.call_hits),
        Answer::OverLimit { .. } => {}
        Answer::Failed => {
            *forgiven += 1;
            assert_eq!((after.tokens, after.debt), (0, 0), "a failure drops the lease");
        }
    }
}
