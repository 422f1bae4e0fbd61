//! `config`: arbitrary bytes as a plugin configuration.
//!
//! - never panics;
//! - refused: at least one error, each rendering as one line `<path>: <message>[, got <value>]`
//!   with a non-empty path (Envoy logs one line per problem);
//! - accepted: the compiled policy keeps the invariants `surgeguard::config` documents, and the
//!   configuration re-rendered as JSON compiles to the same policy.

use surgeguard::config::{
    self, HeaderTest, KeySource, Matcher, Policy, MAX_BURST, MAX_IN_FLIGHT, MAX_LIMITS, MAX_MAX_KEYS,
    MAX_TOKENS_PER_SECOND, MAX_WINDOW_S,
};
use surgeguard::json;

pub fn check(data: &[u8]) {
    check_bytes(data);
}

/// Also the check of `config_structured`, on the JSON it generates.
pub fn check_bytes(data: &[u8]) {
    match config::parse(data) {
        Ok(policy) => {
            check_policy(&policy);
            check_rerendered(data, &policy);
        }
        Err(errors) => check_errors(&errors),
    }
}

fn check_errors(errors: &[config::ConfigError]) {
    assert!(!errors.is_empty(), "a refusal names at least one problem");
    for e in errors {
        let line = e.to_string();
        assert!(!e.path.is_empty(), "an error without a path: {line:?}");
        assert!(!e.message.is_empty(), "an error without a message: {line:?}");
        assert!(line.starts_with(&format!("{}: ", e.path)), "not `<path>: <message>`: {line:?}");
        assert!(!line.contains(['\n', '\r']), "one problem spans several log lines: {line:?}");
    }
}

fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_matcher(m: &Matcher, policy: &Policy) {
    for p in [&m.path_prefix, &m.path].into_iter().flatten() {
        assert!(p.first() == Some(&b'/') && !p.contains(&b'?'), "a path match the request path can never be");
    }
    if let Some(methods) = &m.methods {
        assert!(!methods.is_empty());
    }
    if let Some(h) = &m.header {
        assert!(h.slot < policy.header_names.len(), "header slot out of range");
        if h.ignore_case {
            let value = match &h.test {
                HeaderTest::Exact(v) | HeaderTest::Prefix(v) => Some(v.as_slice()),
                HeaderTest::Contains(n) => Some(n.pattern()),
                HeaderTest::Present(_) => None,
            };
            if let Some(v) = value {
                assert!(!v.iter().any(u8::is_ascii_uppercase), "ignore_case compares lower-case values");
            }
        }
    }
}

/// The invariants of `surgeguard::config`'s module doc.
pub fn check_policy(p: &Policy) {
    let n_classes = p.classes.len();
    assert!(n_classes >= 1);
    for (i, c) in p.classes.iter().enumerate() {
        assert!(is_name(&c.name), "class name {:?}", c.name);
        assert!(!p.classes[..i].iter().any(|d| d.name == c.name), "duplicate class {:?}", c.name);
        assert!((0.0..=1.0).contains(&c.reserve));
    }
    assert!(p.default_class.index() < n_classes);
    for r in &p.rules {
        assert!(r.class.index() < n_classes);
        check_matcher(&r.matcher, p);
    }
    for (i, h) in p.header_names.iter().enumerate() {
        assert!(!h.is_empty() && !h.bytes().any(|b| b.is_ascii_uppercase()), "header name {h:?}");
        assert!(!p.header_names[..i].contains(h), "header {h:?} fetched twice");
    }
    assert!(p.limits.len() <= MAX_LIMITS);
    for (i, l) in p.limits.iter().enumerate() {
        assert!(is_name(&l.name), "limit name {:?}", l.name);
        assert!(!p.limits[..i].iter().any(|m| m.name == l.name), "duplicate limit {:?}", l.name);
        assert!(l.tokens_per_second > 0.0 && l.tokens_per_second <= MAX_TOKENS_PER_SECOND);
        assert!((1..=MAX_BURST).contains(&l.burst));
        assert!(l.burst as f64 / l.tokens_per_second <= MAX_WINDOW_S);
        assert!((1..=MAX_MAX_KEYS).contains(&u64::from(l.max_keys)));
        assert!(l.ns_per_token >= 1);
        // A fleet limit's bucket is its local fallback: `local_share` of the limit.
        let bucket_burst = l.fleet.as_ref().map_or(l.burst, |f| ((l.burst as f64 * f.local_share) as u64).max(1));
        // The bucket's whole span stays far from u64::MAX, so `bucket` arithmetic cannot wrap.
        let span_ns = u128::from(bucket_burst) * u128::from(l.ns_per_token);
        assert!(span_ns < 1 << 61, "burst x ns_per_token = {span_ns}");
        assert_eq!(l.class_tolerance_ns.len(), n_classes);
        for (c, &t) in p.classes.iter().zip(&l.class_tolerance_ns) {
            assert!(u128::from(t) <= span_ns, "a tolerance past the whole bucket");
            if c.reserve == 0.0 {
                assert!(u128::from(t) + u128::from(l.ns_per_token) > span_ns, "reserve 0 must reach the full burst");
            }
        }
        assert!(l.window_s >= 1);
        assert_eq!(l.policy_header, format!("\"{}\";q={};w={}", l.name, l.burst, l.window_s));
        if let KeySource::Header(slot) = l.key {
            assert!(slot < p.header_names.len());
        }
        if let Some(m) = &l.matcher {
            check_matcher(m, p);
        }
        if let Some(f) = &l.fleet {
            assert_eq!(l.key, KeySource::Global, "a fleet limit is global");
            assert!(f.local_share > 0.0 && f.local_share <= 1.0);
            assert!(!f.cluster.is_empty() && !f.domain.is_empty() && !f.descriptor.is_empty());
            let lp = &f.lease;
            assert_eq!(lp.capacity, l.burst);
            assert!(lp.window_ns >= 1 && lp.timeout_ns >= 1 && lp.refill_period_ns >= 1);
            assert!(1 <= lp.min_hits && lp.min_hits <= lp.max_hits && u64::from(lp.max_hits) <= l.burst);
            assert!(1 <= lp.initial_hits && lp.initial_hits <= lp.max_hits);
            assert_eq!(f.class_reserve_tokens.len(), n_classes);
            assert!(f.class_reserve_tokens.iter().all(|&t| t <= l.burst));
        }
    }
    if let Some(c) = &p.concurrency {
        assert!((1..=MAX_IN_FLIGHT).contains(&u64::from(c.max_in_flight)));
        assert!((1..=3600).contains(&c.retry_after_s));
        assert_eq!(c.class_max_in_flight.len(), n_classes);
        for (class, &max) in p.classes.iter().zip(&c.class_max_in_flight) {
            assert!(max <= c.max_in_flight);
            // in_flight + 1 <= (1 - reserve) x max_in_flight, within float rounding.
            assert!(f64::from(max) <= (1.0 - class.reserve) * f64::from(c.max_in_flight) + 1e-6);
        }
    }
}

/// Rendering the accepted JSON again (keys sorted, compact) changes nothing that matters.
fn check_rerendered(data: &[u8], policy: &Policy) {
    let Ok(text) = std::str::from_utf8(data) else { panic!("accepted bytes that are not UTF-8") };
    let rendered = if text.trim().is_empty() {
        "{}".to_string()
    } else {
        match json::parse(text) {
            Ok(v) => v.to_json(),
            Err(e) => panic!("accepted a document the JSON reader refuses: {e}"),
        }
    };
    match config::parse(rendered.as_bytes()) {
        Ok(again) => assert_eq!(&again, policy, "re-rendered as {rendered}"),
        Err(errors) => panic!("re-rendered {rendered} is refused: {errors:?}"),
    }
}
