//! Which class a request belongs to, and whether a `match` holds. Allocation-free.

use crate::config::{HeaderTest, Matcher, Policy};
use crate::ids::ClassId;

/// What the core reads of a request. The host implements it lazily (an attribute is fetched
/// the first time a rule or limit reads it); [`Request`] is the plain version for tests and tools.
pub trait RequestView {
    fn method(&self) -> &[u8];
    /// `:path` without its query string.
    fn path(&self) -> &[u8];
    /// The value of [`Policy::header_names`]`[slot]`; `None` if absent.
    fn header(&self, slot: usize) -> Option<&[u8]>;
    /// The downstream address without its port, as Envoy reports it.
    fn client_ip(&self) -> &[u8];
}

/// Cuts the query string off a `:path`.
pub fn strip_query(path: &[u8]) -> &[u8] {
    match path.iter().position(|&b| b == b'?') {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    }
}

/// The downstream address without its port, as hosts report it: `1.2.3.4:5678` -> `1.2.3.4`,
/// `[::1]:80` -> `::1`; an address without a port is returned as it is.
pub fn address_without_port(addr: &[u8]) -> &[u8] {
    let mut ip = addr;
    if let Some(colon) = addr.iter().rposition(|&b| b == b':') {
        let is_bracketed_v6 = addr.first() == Some(&b'[');
        let is_v4 = addr.iter().filter(|&&b| b == b':').count() == 1;
        if is_bracketed_v6 || is_v4 {
            ip = addr.get(..colon).unwrap_or(addr);
        }
    }
    match ip {
        [b'[', inner @ .., b']'] => inner,
        _ => ip,
    }
}

/// A request given as values.
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a [u8],
    /// Without its query string (see [`Request::new`]).
    pub path: &'a [u8],
    /// Values of [`Policy::header_names`], in order; `None` for an absent header.
    pub headers: &'a [Option<Vec<u8>>],
    pub client_ip: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn new(method: &'a [u8], path: &'a [u8], headers: &'a [Option<Vec<u8>>], client_ip: &'a [u8]) -> Request<'a> {
        Request { method, path: strip_query(path), headers, client_ip }
    }
}

impl RequestView for Request<'_> {
    fn method(&self) -> &[u8] {
        self.method
    }
    fn path(&self) -> &[u8] {
        self.path
    }
    fn header(&self, slot: usize) -> Option<&[u8]> {
        self.headers.get(slot).and_then(|h| h.as_deref())
    }
    fn client_ip(&self) -> &[u8] {
        self.client_ip
    }
}

/// The first rule whose match holds gives the class; none: the default class.
pub fn classify(policy: &Policy, req: &dyn RequestView) -> ClassId {
    policy.rules.iter().find(|r| matches(&r.matcher, req)).map_or(policy.default_class, |r| r.class)
}

pub fn matches(m: &Matcher, req: &dyn RequestView) -> bool {
    if let Some(prefix) = &m.path_prefix {
        if !req.path().starts_with(prefix) {
            return false;
        }
    }
    if let Some(exact) = &m.path {
        if req.path() != exact.as_slice() {
            return false;
        }
    }
    if let Some(methods) = &m.methods {
        let method = req.method();
        if !methods.iter().any(|x| x.as_slice() == method) {
            return false;
        }
    }
    if let Some(h) = &m.header {
        let value = req.header(h.slot);
        let holds = match (&h.test, value) {
            (HeaderTest::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (HeaderTest::Exact(x), Some(v)) => eq(v, x, h.ignore_case),
            (HeaderTest::Prefix(x), Some(v)) => {
                v.len() >= x.len() && v.get(..x.len()).is_some_and(|p| eq(p, x, h.ignore_case))
            }
            (HeaderTest::Contains(x), Some(v)) => contains(v, x, h.ignore_case),
        };
        if !holds {
            return false;
        }
    }
    true
}

/// `pattern` is already lower-case when `ignore_case` is set (see `config`).
fn eq(value: &[u8], pattern: &[u8], ignore_case: bool) -> bool {
    if ignore_case {
        value.eq_ignore_ascii_case(pattern)
    } else {
        value == pattern
    }
}

fn contains(value: &[u8], pattern: &[u8], ignore_case: bool) -> bool {
    let Some((&first, rest)) = pattern.split_first() else { return true };
    let Some(last_start) = value.len().checked_sub(pattern.len()) else { return false };
    // Compare the rest only where the first byte matches: most positions fail at once.
    (0..=last_start).any(|i| {
        let starts =
            value.get(i).is_some_and(|&b| if ignore_case { b.to_ascii_lowercase() == first } else { b == first });
        starts && value.get(i + 1..i + pattern.len()).is_some_and(|w| eq(w, rest, ignore_case))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_downstream_address_loses_its_port_and_brackets() {
        assert_eq!(address_without_port(b"10.1.2.3:5678"), b"10.1.2.3");
        assert_eq!(address_without_port(b"[2001:db8::1]:80"), b"2001:db8::1");
        assert_eq!(address_without_port(b"2001:db8::1"), b"2001:db8::1");
        assert_eq!(address_without_port(b"10.1.2.3"), b"10.1.2.3");
        assert_eq!(address_without_port(b""), b"");
    }

    const STOREFRONT: &str = r#"{
      "classes": [{"name": "critical"}, {"name": "standard", "reserve": 0.2}, {"name": "sheddable", "reserve": 0.5}],
      "default_class": "standard",
      "rules": [
        {"match": {"header": {"name": "User-Agent", "contains": "bot", "ignore_case": true}}, "class": "sheddable"},
        {"match": {"path_prefix": "/checkout"}, "class": "critical"},
        {"match": {"path_prefix": "/cart", "methods": ["POST", "PUT", "DELETE"]}, "class": "critical"},
        {"match": {"path": "/search"}, "class": "sheddable"}
      ]}"#;

    fn class_of(method: &str, path: &str, user_agent: Option<&[u8]>) -> String {
        let policy = parse(STOREFRONT.as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"));
        let headers = vec![user_agent.map(|u| u.to_vec())];
        let req = Request::new(method.as_bytes(), path.as_bytes(), &headers, b"");
        policy.classes[classify(&policy, &req).index()].name.clone()
    }

    #[test]
    fn rules_apply_in_order_and_the_first_match_wins() {
        assert_eq!(class_of("POST", "/checkout", Some(b"Mozilla")), "critical");
        assert_eq!(class_of("POST", "/checkout", Some(b"GoodBot/1.0")), "sheddable");
    }

    #[test]
    fn methods_narrow_a_path_rule() {
        assert_eq!(class_of("POST", "/cart", None), "critical");
        assert_eq!(class_of("GET", "/cart", None), "standard");
    }

    #[test]
    fn the_query_string_is_not_part_of_the_path() {
        assert_eq!(class_of("GET", "/search?q=shoes", None), "sheddable");
        assert_eq!(class_of("GET", "/search/shoes", None), "standard");
    }

    #[test]
    fn no_rule_gives_the_default_class() {
        assert_eq!(class_of("GET", "/products/42", Some(b"Mozilla")), "standard");
    }

    #[test]
    fn strange_requests_are_classified_without_panicking() {
        assert_eq!(class_of("", "", None), "standard");
        assert_eq!(class_of("GET", "?", Some(&[0xff, 0xfe, b'b', b'o', b't'])), "sheddable");
        assert_eq!(class_of("GET", "/checkout", Some(&[0xc3, 0x28])), "critical");
    }

    #[test]
    fn header_present_and_prefix_tests() {
        let cfg = r#"{"classes": [{"name": "a"}, {"name": "b"}],
          "rules": [{"match": {"header": {"name": "x-api-key", "present": true}}, "class": "a"},
                    {"match": {"header": {"name": "x-tier", "prefix": "gold"}}, "class": "a"}]}"#;
        let policy = parse(cfg.as_bytes()).unwrap_or_else(|e| unreachable!("{e:?}"));
        let class = |key: Option<&[u8]>, tier: Option<&[u8]>| {
            let headers = vec![key.map(|v| v.to_vec()), tier.map(|v| v.to_vec())];
            let req = Request { headers: &headers, ..Request::default() };
            policy.classes[classify(&policy, &req).index()].name.clone()
        };
        assert_eq!(class(Some(b""), None), "a");
        assert_eq!(class(None, Some(b"golden")), "a");
        assert_eq!(class(None, Some(b"GOLD")), "b");
        assert_eq!(class(None, Some(b"go")), "b");
        assert_eq!(class(None, None), "b");
    }
}
