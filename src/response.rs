//! What a refused request gets back: status, headers and a short body.
//!
//! Rate limited: `429` with `retry-after`, the IETF RateLimit headers
//! (draft-ietf-httpapi-ratelimit-headers-11) and `x-surgeguard: limit=<name>; class=<class>`.
//! Shed: `503` with `retry-after` and `x-surgeguard: shed=in_flight; class=<class>`.

use crate::config::Policy;
use crate::decision::{Decision, Verdict};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: &'static [u8],
}

/// The reply for a refusal, or `None` if the request is admitted.
pub fn refusal(policy: &Policy, decision: &Decision) -> Option<Refusal> {
    let class = policy.class(decision.class).map_or("", |c| c.name.as_str());
    match decision.verdict {
        Verdict::RateLimited { limit, retry_after_s } => {
            let limit = policy.limit(limit)?;
            Some(Refusal {
                status: 429,
                headers: vec![
                    ("retry-after", retry_after_s.to_string()),
                    ("ratelimit-policy", limit.policy_header.clone()),
                    // r: whole tokens the class may still take (0: refused); t: seconds until r >= 1.
                    ("ratelimit", format!("\"{}\";r=0;t={retry_after_s}", limit.name)),
                    ("x-surgeguard", format!("limit={}; class={class}", limit.name)),
                ],
                body: b"rate limited\n",
            })
        }
        Verdict::Shed { retry_after_s } => Some(Refusal {
            status: 503,
            headers: vec![
                ("retry-after", retry_after_s.to_string()),
                ("x-surgeguard", format!("shed=in_flight; class={class}")),
            ],
            body: b"overloaded, shed\n",
        }),
        Verdict::Admitted { .. } | Verdict::FailedOpen => None,
    }
}
