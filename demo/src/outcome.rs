//! What happened to one request, and how the demo counts it.
//!
//! `served` = 2xx; `refused` = 429 or 503 carrying the filter's `x-surgeguard` header (the
//! storefront never sends that header, so its own errors can never be counted as refusals);
//! `failed` = everything else: 5xx from the exhausted database tier, other statuses, connection
//! errors and client timeouts.

use crate::schedule::Phase;
use crate::traffic::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Served,
    Refused,
    Failed,
}

impl Verdict {
    pub const ALL: [Verdict; 3] = [Verdict::Served, Verdict::Refused, Verdict::Failed];

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Served => "served",
            Verdict::Refused => "refused",
            Verdict::Failed => "failed",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Verdict::Served => 0,
            Verdict::Refused => 1,
            Verdict::Failed => 2,
        }
    }
}

/// `status`: `None` when no response came (connection error or timeout).
pub fn classify(status: Option<u16>, has_surgeguard_header: bool) -> Verdict {
    match status {
        Some(200..=299) => Verdict::Served,
        Some(429 | 503) if has_surgeguard_header => Verdict::Refused,
        _ => Verdict::Failed,
    }
}

/// One request of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub kind: Kind,
    pub phase: Phase,
    /// When it was scheduled, from the start of the run.
    pub at_us: u64,
    pub status: Option<u16>,
    /// The response's `x-surgeguard` header, if any (names the cause of a refusal).
    pub surgeguard: Option<String>,
    /// From the scheduled time to the end of the response (or the error), so a generator that
    /// falls behind cannot hide latency.
    pub latency_us: u64,
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        classify(self.status, self.surgeguard.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_only_the_filters_429_and_503() {
        assert_eq!(classify(Some(200), false), Verdict::Served);
        assert_eq!(classify(Some(204), true), Verdict::Served);
        assert_eq!(classify(Some(429), true), Verdict::Refused);
        assert_eq!(classify(Some(503), true), Verdict::Refused);
        // The storefront's own errors and Envoy's are failures, whatever the status.
        assert_eq!(classify(Some(503), false), Verdict::Failed);
        assert_eq!(classify(Some(429), false), Verdict::Failed);
        assert_eq!(classify(Some(500), false), Verdict::Failed);
        assert_eq!(classify(Some(500), true), Verdict::Failed);
        assert_eq!(classify(Some(404), false), Verdict::Failed);
        assert_eq!(classify(None, false), Verdict::Failed);
    }
}
