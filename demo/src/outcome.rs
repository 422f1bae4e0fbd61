//! What happened to one request of a run: the harness's [`Outcome`](surgeguard_harness::outcome::Outcome)
//! labelled with the demo's own traffic kind and phase. How a request counts (served, refused,
//! failed) is the harness's [`Verdict`], the same as the end-to-end tests'.

use crate::schedule::Phase;
use crate::traffic::Kind;

pub use surgeguard_harness::outcome::{classify, Verdict};

/// What the demo knows of a request besides its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    pub kind: Kind,
    pub phase: Phase,
}

/// One request of a run.
pub type Outcome = surgeguard_harness::outcome::Outcome<Label>;

/// When it was scheduled, in microseconds from the start of the run.
pub fn at_us(o: &Outcome) -> u64 {
    o.at.as_micros() as u64
}

/// From the scheduled time to the end of the response (or the error), in microseconds.
pub fn latency_us(o: &Outcome) -> u64 {
    o.latency_from_schedule().as_micros() as u64
}
