//! Envoy's `ShouldRateLimit` messages to Limitador and back, the way limitador-server's Envoy RLS
//! front-end maps them, so a Limitador limits file works here unchanged:
//!
//! - the request's `domain` is the Limitador namespace;
//! - descriptor `i` is the CEL map `descriptors[i]`, one key per entry: a limit's conditions and
//!   variables read it (`descriptors[0]['client'] == 'storefront'`, `descriptors[0].user`);
//! - `hits_addend` is the delta counted, 0 meaning 1 (Envoy's API: "not set" is 1).
//!
//! The answer goes further than limitador-server's (which sends no statuses): one status per
//! descriptor, from the most restrictive counter that refers to that descriptor, with
//! `limit_remaining` and `duration_until_reset`, because clients size their leases from them.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_response::{Code, DescriptorStatus, RateLimit};
use envoy_types::pb::envoy::service::ratelimit::v3::{RateLimitRequest, RateLimitResponse};
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use limitador::counter::Counter;
use limitador::limit::{Context, Limit};
use std::collections::{BTreeSet, HashMap};

/// One `ShouldRateLimit` call, ready for Limitador.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub namespace: String,
    /// Descriptor `i`'s entries, key to value (a repeated key keeps its last value).
    pub descriptors: Vec<HashMap<String, String>>,
    /// How many hits to count on every limit that applies.
    pub hits: u64,
}

impl Call {
    /// Reads a request; a request Limitador cannot answer faithfully is refused with the reason.
    pub fn from_request(req: &RateLimitRequest) -> Result<Call, String> {
        if req.domain.is_empty() {
            return Err("domain: must not be empty (it names the Limitador namespace)".into());
        }
        if req.descriptors.iter().any(|d| d.is_negative_hits) {
            return Err("descriptors[].is_negative_hits: refunds are not supported by Limitador".into());
        }
        Ok(Call {
            namespace: req.domain.clone(),
            descriptors: req
                .descriptors
                .iter()
                .map(|d| d.entries.iter().map(|e| (e.key.clone(), e.value.clone())).collect())
                .collect(),
            hits: hits(req.hits_addend, &req.descriptors)?,
        })
    }

    /// The CEL context Limitador evaluates conditions and variables in. It holds at least
    /// `descriptors_read` descriptors (see [`descriptors_read`]), the missing ones empty: a limit
    /// that reads a descriptor the call lacks then does not apply, where an index out of bounds
    /// would make Limitador panic.
    pub fn context(&self, descriptors_read: usize) -> Context<'static> {
        let mut descriptors = self.descriptors.clone();
        if descriptors.len() < descriptors_read {
            descriptors.resize_with(descriptors_read, HashMap::new);
        }
        let mut ctx = Context::default();
        ctx.list_binding("descriptors".to_string(), descriptors);
        ctx
    }
}

/// The delta to count. A descriptor's own `hits_addend` overrides the request's (Envoy's API), but
/// Limitador counts one delta per call, so descriptors that set it must agree.
fn hits(request_hits: u32, descriptors: &[RateLimitDescriptor]) -> Result<u64, String> {
    let overrides: BTreeSet<u64> = descriptors.iter().filter_map(|d| d.hits_addend.as_ref().map(|h| h.value)).collect();
    let hits = match overrides.len() {
        0 => u64::from(request_hits),
        1 => overrides.first().copied().unwrap_or(0),
        _ => return Err(format!("descriptors[].hits_addend: must be equal in one call, got {overrides:?}")),
    };
    Ok(hits.max(1))
}

/// Which descriptors a limit reads: the indices `i` of every `descriptors[i]` in its conditions
/// and variables. Empty: it reads none, so it applies to the call as a whole.
pub fn descriptor_indices(limit: &Limit) -> BTreeSet<usize> {
    let sources = limit.conditions().into_iter().chain(limit.variables());
    sources.flat_map(|s| indices_in(&s)).collect()
}

/// Per namespace, how many descriptors its limits read (1 + the highest index read).
pub fn descriptors_read<'a>(limits: impl IntoIterator<Item = &'a Limit>) -> HashMap<String, usize> {
    let mut read = HashMap::new();
    for limit in limits {
        let needed = descriptor_indices(limit).last().map_or(0, |i| i + 1);
        let entry = read.entry(limit.namespace().as_ref().to_string()).or_insert(0);
        *entry = needed.max(*entry);
    }
    read
}

fn indices_in(source: &str) -> Vec<usize> {
    const PREFIX: &str = "descriptors[";
    let mut found = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(PREFIX) {
        rest = &rest[at + PREFIX.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if rest[digits.len()..].starts_with(']') {
            if let Ok(i) = digits.parse() {
                found.push(i);
            }
        }
    }
    found
}

/// The answer to `call` given Limitador's verdict (`limited`) and the counters that applied.
///
/// Limitador reports, per counter, what remains after this call: `delta` already taken when the
/// call was admitted, nothing taken when it was refused (refused hits are not counted).
pub fn response(call: &Call, limited: bool, counters: &[Counter]) -> RateLimitResponse {
    let statuses = (0..call.descriptors.len()).map(|i| descriptor_status(i, call.hits, limited, counters)).collect();
    RateLimitResponse {
        overall_code: if limited { Code::OverLimit } else { Code::Ok }.into(),
        statuses,
        ..Default::default()
    }
}

/// Descriptor `index`'s status: its most restrictive counter (least remaining). No counter refers
/// to it: OK with no `current_limit` (no limit applies to it).
fn descriptor_status(index: usize, hits: u64, limited: bool, counters: &[Counter]) -> DescriptorStatus {
    let tightest = counters
        .iter()
        .filter(|c| {
            let indices = descriptor_indices(c.limit());
            indices.is_empty() || indices.contains(&index)
        })
        .min_by_key(|c| c.remaining().unwrap_or(c.max_value()));
    let Some(counter) = tightest else {
        return DescriptorStatus { code: Code::Ok.into(), ..Default::default() };
    };
    let remaining = counter.remaining().unwrap_or(counter.max_value());
    // Refused calls leave `remaining` as it was: this descriptor refused it if `hits` did not fit.
    let over = limited && remaining < hits;
    DescriptorStatus {
        code: if over { Code::OverLimit } else { Code::Ok }.into(),
        current_limit: Some(rate_limit(counter.limit())),
        limit_remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        duration_until_reset: counter.expires_in().map(|d| ProtoDuration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        }),
        ..Default::default()
    }
}

/// Envoy's units are whole calendar units; another window is reported as UNKNOWN, with its
/// length in the name.
fn rate_limit(limit: &Limit) -> RateLimit {
    let unit = match limit.seconds() {
        1 => Unit::Second,
        60 => Unit::Minute,
        3600 => Unit::Hour,
        86_400 => Unit::Day,
        604_800 => Unit::Week,
        _ => Unit::Unknown,
    };
    let window = format!("{} per {}s", limit.max_value(), limit.seconds());
    RateLimit {
        name: limit.name().map_or(window.clone(), |n| format!("{n} ({window})")),
        requests_per_unit: u32::try_from(limit.max_value()).unwrap_or(u32::MAX),
        unit: unit.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::google::protobuf::UInt64Value;
    use limitador::RateLimiter;

    fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
        RateLimitDescriptor {
            entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
            ..Default::default()
        }
    }

    fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits_addend: u32) -> RateLimitRequest {
        RateLimitRequest { domain: domain.into(), descriptors, hits_addend }
    }

    fn limits(yaml: &str) -> Vec<Limit> {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// What the server does, on the in-memory storage.
    fn answer(limiter: &RateLimiter, req: &RateLimitRequest) -> RateLimitResponse {
        let call = Call::from_request(req).unwrap();
        let ns = call.namespace.as_str().into();
        let read = descriptors_read(&limiter.get_limits(&ns)).get(&call.namespace).copied().unwrap_or(0);
        let result = limiter.check_rate_limited_and_update(&ns, &call.context(read), call.hits);
        let result = result.unwrap();
        response(&call, result.limited, &result.counters)
    }

    fn limiter(yaml: &str) -> RateLimiter {
        let limiter = RateLimiter::new(1000);
        limiter.configure_with(limits(yaml)).unwrap();
        limiter
    }

    const PER_CLIENT: &str = r#"
- namespace: fleet
  max_value: 10
  seconds: 60
  conditions: ["descriptors[0].limit == 'storefront'"]
  variables: ["descriptors[0].client"]
"#;

    #[test]
    fn the_domain_is_the_namespace_and_each_descriptor_is_a_cel_map() {
        let req = request("fleet", vec![descriptor(&[("limit", "storefront"), ("client", "a")])], 3);
        let call = Call::from_request(&req).unwrap();
        assert_eq!(call.namespace, "fleet");
        assert_eq!(call.descriptors[0]["client"], "a");
        assert_eq!(call.hits, 3);
    }

    #[test]
    fn an_absent_or_zero_hits_addend_counts_one() {
        let req = request("fleet", vec![descriptor(&[("limit", "storefront")])], 0);
        assert_eq!(Call::from_request(&req).unwrap().hits, 1);
    }

    #[test]
    fn a_descriptor_hits_addend_overrides_the_request_and_disagreeing_ones_are_refused() {
        let mut d = descriptor(&[("limit", "storefront")]);
        d.hits_addend = Some(UInt64Value { value: 7 });
        assert_eq!(Call::from_request(&request("fleet", vec![d.clone()], 2)).unwrap().hits, 7);
        let mut other = d.clone();
        other.hits_addend = Some(UInt64Value { value: 8 });
        assert!(Call::from_request(&request("fleet", vec![d, other], 2)).unwrap_err().contains("hits_addend"));
    }

    #[test]
    fn an_empty_domain_and_negative_hits_are_refused() {
        assert!(Call::from_request(&request("", vec![], 1)).is_err());
        let mut d = descriptor(&[("limit", "storefront")]);
        d.is_negative_hits = true;
        assert!(Call::from_request(&request("fleet", vec![d], 1)).is_err());
    }

    #[test]
    fn a_limit_refers_to_the_descriptors_its_conditions_and_variables_index() {
        let l = &limits(
            r#"
- namespace: n
  max_value: 1
  seconds: 1
  conditions: ["descriptors[0].a == '1'", "descriptors[2]['b'] == '2'"]
  variables: ["descriptors[10].c"]
- namespace: n
  max_value: 1
  seconds: 1
  conditions: []
  variables: []
"#,
        );
        let by_max: Vec<BTreeSet<usize>> = l.iter().map(descriptor_indices).collect();
        assert!(by_max.contains(&BTreeSet::from([0, 2, 10])));
        assert!(by_max.contains(&BTreeSet::new()));
    }

    #[test]
    fn a_lease_of_n_hits_takes_n_and_reports_what_remains_with_the_window() {
        let limiter = limiter(PER_CLIENT);
        let req = request("fleet", vec![descriptor(&[("limit", "storefront"), ("client", "a")])], 4);
        let resp = answer(&limiter, &req);
        assert_eq!(resp.overall_code, i32::from(Code::Ok));
        let status = &resp.statuses[0];
        assert_eq!(status.code, i32::from(Code::Ok));
        assert_eq!(status.limit_remaining, 6);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!((limit.requests_per_unit, limit.unit), (10, i32::from(Unit::Minute)));
        let reset = status.duration_until_reset.as_ref().unwrap();
        assert!(reset.seconds <= 60 && (reset.seconds > 0 || reset.nanos > 0), "{reset:?}");
    }

    #[test]
    fn a_lease_larger_than_what_remains_is_refused_and_takes_nothing() {
        let limiter = limiter(PER_CLIENT);
        let req = |hits| request("fleet", vec![descriptor(&[("limit", "storefront"), ("client", "a")])], hits);
        answer(&limiter, &req(8));
        let refused = answer(&limiter, &req(3));
        assert_eq!(refused.overall_code, i32::from(Code::OverLimit));
        assert_eq!(refused.statuses[0].code, i32::from(Code::OverLimit));
        assert_eq!(refused.statuses[0].limit_remaining, 2);
        // The remaining 2 can still be leased: the refusal took nothing.
        let last = answer(&limiter, &req(2));
        assert_eq!((last.overall_code, last.statuses[0].limit_remaining), (i32::from(Code::Ok), 0));
    }

    #[test]
    fn each_variable_value_has_its_own_counter() {
        let limiter = limiter(PER_CLIENT);
        let req = |client| request("fleet", vec![descriptor(&[("limit", "storefront"), ("client", client)])], 10);
        assert_eq!(answer(&limiter, &req("a")).overall_code, i32::from(Code::Ok));
        assert_eq!(answer(&limiter, &req("b")).overall_code, i32::from(Code::Ok));
        assert_eq!(answer(&limiter, &req("a")).overall_code, i32::from(Code::OverLimit));
    }

    #[test]
    fn a_descriptor_no_limit_reads_is_ok_without_a_current_limit() {
        let limiter = limiter(PER_CLIENT);
        let req = request(
            "fleet",
            vec![descriptor(&[("limit", "other")]), descriptor(&[("limit", "storefront"), ("client", "a")])],
            1,
        );
        let resp = answer(&limiter, &req);
        // The limit reads descriptors[0], which does not match: nothing applies at all.
        assert_eq!(resp.overall_code, i32::from(Code::Ok));
        assert_eq!(resp.statuses.len(), 2);
        assert!(resp.statuses.iter().all(|s| s.current_limit.is_none() && s.code == i32::from(Code::Ok)));
    }

    #[test]
    fn a_call_with_fewer_descriptors_than_a_limit_reads_is_not_limited_by_it() {
        let limiter = limiter(
            r#"
- namespace: fleet
  max_value: 1
  seconds: 60
  conditions: ["descriptors[1].limit == 'b'"]
  variables: ["descriptors[2].client"]
"#,
        );
        let req = request("fleet", vec![descriptor(&[("limit", "b")])], 5);
        let resp = answer(&limiter, &req);
        assert_eq!(resp.overall_code, i32::from(Code::Ok));
        assert_eq!(resp.statuses.len(), 1);
    }

    #[test]
    fn only_the_descriptor_whose_limit_is_exhausted_is_over_limit() {
        let limiter = limiter(
            r#"
- namespace: fleet
  max_value: 5
  seconds: 1
  conditions: ["descriptors[0].limit == 'a'"]
  variables: []
- namespace: fleet
  max_value: 100
  seconds: 10
  conditions: ["descriptors[1].limit == 'b'"]
  variables: []
"#,
        );
        let req = request("fleet", vec![descriptor(&[("limit", "a")]), descriptor(&[("limit", "b")])], 6);
        let resp = answer(&limiter, &req);
        assert_eq!(resp.overall_code, i32::from(Code::OverLimit));
        let codes: Vec<i32> = resp.statuses.iter().map(|s| s.code).collect();
        assert_eq!(codes, vec![i32::from(Code::OverLimit), i32::from(Code::Ok)]);
        assert_eq!(resp.statuses[1].limit_remaining, 100);
        let b = resp.statuses[1].current_limit.as_ref().unwrap();
        assert_eq!((b.unit, b.name.as_str()), (i32::from(Unit::Unknown), "100 per 10s"));
    }
}
