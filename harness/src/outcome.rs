//! What happened to one request sent by the load, and how it counts (the contract's words):
//!
//! `served` = 2xx; `refused` = 429 or 503 carrying the filter's `x-surgeguard` header (an
//! upstream never sends that header, so its own errors can never be counted as refusals);
//! `failed` = everything else: 5xx from an exhausted upstream, other statuses, connection errors
//! and client timeouts.

use std::time::Duration;

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

    /// Its position in [`Verdict::ALL`], for counters kept in an array.
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

/// One request of a load. `L` labels it (a class name in the tests, a traffic kind and phase in
/// the demo).
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<L = &'static str> {
    pub label: L,
    /// When the request was scheduled, from the start of the load.
    pub at: Duration,
    /// When it was actually sent, from the start of the load (later than `at` if the client
    /// fell behind, e.g. on a loaded machine).
    pub sent_at: Duration,
    /// `None`: no response (connection error or timeout).
    pub status: Option<u16>,
    /// From sending to the end of the response (or the error).
    pub latency: Duration,
    /// The response's `x-surgeguard` header, if any (names the cause of a refusal).
    pub surgeguard: Option<String>,
}

impl<L> Outcome<L> {
    pub fn verdict(&self) -> Verdict {
        classify(self.status, self.surgeguard.is_some())
    }

    /// From the scheduled time to the end of the response: what the user waited, so a client
    /// that falls behind cannot hide latency.
    pub fn latency_from_schedule(&self) -> Duration {
        self.sent_at.saturating_sub(self.at) + self.latency
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
        // The upstream's own errors and Envoy's are failures, whatever the status.
        assert_eq!(classify(Some(503), false), Verdict::Failed);
        assert_eq!(classify(Some(429), false), Verdict::Failed);
        assert_eq!(classify(Some(500), false), Verdict::Failed);
        assert_eq!(classify(Some(500), true), Verdict::Failed);
        assert_eq!(classify(Some(404), false), Verdict::Failed);
        assert_eq!(classify(None, false), Verdict::Failed);
    }

    #[test]
    fn latency_from_schedule_includes_the_time_the_client_fell_behind() {
        let o = Outcome {
            label: "x",
            at: Duration::from_millis(100),
            sent_at: Duration::from_millis(130),
            status: Some(200),
            latency: Duration::from_millis(20),
            surgeguard: None,
        };
        assert_eq!(o.latency_from_schedule(), Duration::from_millis(50));
        assert_eq!(o.verdict(), Verdict::Served);
    }
}
