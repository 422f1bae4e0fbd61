//! Which class a request belongs to, and whether a `match` holds. Allocation-free.

use crate::config::{HeaderTest, Matcher, Policy};
use crate::ids::ClassId;
use std::cell::OnceCell;

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

/// Where a host reads a request's attributes: Envoy's header map and its attributes.
pub trait RequestSource {
    /// A value as the host hands it over: owned where the host copies it (proxy-wasm), borrowed
    /// where it does not (a dynamic module, for the length of the hook).
    type Bytes: AsRef<[u8]> + Default;
    /// A request header, pseudo-headers (`:method`, `:path`) included; `None` if absent.
    fn header(&self, name: &str) -> Option<Self::Bytes>;
    /// The downstream address as Envoy reports it, with its port.
    fn source_address(&self) -> Self::Bytes;
}

/// The request as the core reads it over a host: each attribute is fetched the first time a
/// rule or limit needs it (a rule whose path test fails never fetches `:method`), then kept.
/// The one request view of both builds.
pub struct LazyRequest<'n, S: RequestSource> {
    source: S,
    header_names: &'n [String],
    method: OnceCell<S::Bytes>,
    path: OnceCell<S::Bytes>,
    headers: Vec<OnceCell<Option<S::Bytes>>>,
    source_address: OnceCell<S::Bytes>,
}

impl<'n, S: RequestSource> LazyRequest<'n, S> {
    /// `header_names`: the policy's [`Policy::header_names`], read by slot.
    pub fn new(source: S, header_names: &'n [String]) -> LazyRequest<'n, S> {
        LazyRequest {
            source,
            header_names,
            method: OnceCell::new(),
            path: OnceCell::new(),
            headers: header_names.iter().map(|_| OnceCell::new()).collect(),
            source_address: OnceCell::new(),
        }
    }
}

impl<S: RequestSource> RequestView for LazyRequest<'_, S> {
    fn method(&self) -> &[u8] {
        self.method.get_or_init(|| self.source.header(":method").unwrap_or_default()).as_ref()
    }
    fn path(&self) -> &[u8] {
        strip_query(self.path.get_or_init(|| self.source.header(":path").unwrap_or_default()).as_ref())
    }
    fn header(&self, slot: usize) -> Option<&[u8]> {
        let name = self.header_names.get(slot)?;
        self.headers.get(slot)?.get_or_init(|| self.source.header(name)).as_ref().map(AsRef::as_ref)
    }
    fn client_ip(&self) -> &[u8] {
        address_without_port(self.source_address.get_or_init(|| self.source.source_address()).as_ref())
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
            (HeaderTest::Contains(x), Some(v)) => x.found_in(v, h.ignore_case),
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

/// A `contains` pattern with its Knuth-Morris-Pratt table, built once with the configuration:
/// a search reads each byte of the header value once, however the value is built (a naive
/// search costs value length x pattern length: 23.6M wasm instructions for a 4 KiB value that
/// almost matches a 256-byte pattern, and Envoy allows 60 KiB of headers).
#[derive(Debug, Clone, PartialEq)]
pub struct Needle {
    /// Lower-case when the match ignores case (see `config`).
    pattern: Vec<u8>,
    /// `border[i]`: the length of the longest proper prefix of `pattern[..=i]` that is also its
    /// suffix; where to resume after a mismatch at `i + 1`.
    border: Vec<u16>,
}

impl Needle {
    pub fn new(pattern: Vec<u8>) -> Needle {
        let mut border = vec![0u16; pattern.len()];
        let mut k = 0usize;
        for i in 1..pattern.len() {
            while k > 0 && pattern.get(i) != pattern.get(k) {
                k = border.get(k - 1).map_or(0, |&b| usize::from(b));
            }
            if pattern.get(i) == pattern.get(k) {
                k += 1;
            }
            if let Some(b) = border.get_mut(i) {
                *b = u16::try_from(k).unwrap_or(0);
            }
        }
        Needle { pattern, border }
    }

    pub fn pattern(&self) -> &[u8] {
        &self.pattern
    }

    fn found_in(&self, value: &[u8], ignore_case: bool) -> bool {
        let Some(&first) = self.pattern.first() else { return true };
        let fold = |b: u8| if ignore_case { b.to_ascii_lowercase() } else { b };
        let mut bytes = value.iter();
        let mut matched = 0usize;
        loop {
            if matched == 0 {
                // Most bytes start nothing: one comparison each until one could.
                if bytes.by_ref().any(|&b| fold(b) == first) {
                    matched = 1;
                } else {
                    return false;
                }
            } else {
                let Some(&b) = bytes.next() else { return false };
                let b = fold(b);
                while matched > 0 && self.pattern.get(matched) != Some(&b) {
                    matched = self.border.get(matched - 1).map_or(0, |&k| usize::from(k));
                }
                if self.pattern.get(matched) == Some(&b) {
                    matched += 1;
                }
            }
            if matched == self.pattern.len() {
                return true;
            }
        }
    }
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

    #[test]
    fn a_needle_finds_overlapping_and_self_similar_patterns() {
        for (value, pattern, want) in [
            (&b"aaab"[..], &b"aab"[..], true),
            (b"abababc", b"ababc", true),
            (b"abababd", b"ababc", false),
            (b"aabaabaaab", b"aabaaab", true),
            (b"xyz", b"", true),
            (b"", b"a", false),
            (b"ab", b"abc", false),
        ] {
            assert_eq!(Needle::new(pattern.to_vec()).found_in(value, false), want, "{value:?} {pattern:?}");
        }
        assert!(Needle::new(b"bot".to_vec()).found_in(b"GoogleBOT/2.1", true));
        assert!(!Needle::new(b"bot".to_vec()).found_in(b"GoogleBOT/2.1", false));
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod needle_properties {
        use super::*;
        use proptest::prelude::*;

        /// The search a `Needle` replaces: every position, every byte.
        fn naive(value: &[u8], pattern: &[u8], ignore_case: bool) -> bool {
            let fold = |b: &u8| if ignore_case { b.to_ascii_lowercase() } else { *b };
            pattern.is_empty() || value.windows(pattern.len()).any(|w| w.iter().map(fold).eq(pattern.iter().copied()))
        }

        proptest! {
            // A small alphabet makes near-matches, where a wrong border table shows.
            #[test]
            fn a_needle_agrees_with_the_naive_search(
                value in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b'), Just(b'A')], 0..40),
                pattern in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..8),
                ignore_case in any::<bool>(),
            ) {
                let needle = Needle::new(pattern.clone());
                prop_assert_eq!(needle.found_in(&value, ignore_case), naive(&value, &pattern, ignore_case));
            }
        }
    }

    /// A host that counts what it is asked for.
    struct CountingSource {
        headers: Vec<(&'static str, &'static [u8])>,
        fetched: std::cell::RefCell<Vec<String>>,
    }

    impl RequestSource for &CountingSource {
        type Bytes = Vec<u8>;
        fn header(&self, name: &str) -> Option<Vec<u8>> {
            self.fetched.borrow_mut().push(name.to_string());
            self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_vec())
        }
        fn source_address(&self) -> Vec<u8> {
            self.fetched.borrow_mut().push("source.address".to_string());
            b"[::1]:8080".to_vec()
        }
    }

    #[test]
    fn a_lazy_request_fetches_each_attribute_once_and_only_when_read() {
        let source = CountingSource {
            headers: vec![(":method", b"POST"), (":path", b"/checkout?step=2"), ("user-agent", b"curl")],
            fetched: Default::default(),
        };
        let names = vec!["user-agent".to_string(), "x-absent".to_string()];
        let req = LazyRequest::new(&source, &names);
        assert!(source.fetched.borrow().is_empty(), "nothing is fetched before it is read");
        assert_eq!(req.path(), b"/checkout");
        assert_eq!(req.path(), b"/checkout");
        assert_eq!(req.header(1), None);
        assert_eq!(req.header(1), None);
        assert_eq!(req.header(0), Some(&b"curl"[..]));
        assert_eq!(req.header(2), None, "a slot the policy has not");
        assert_eq!(req.client_ip(), b"::1");
        assert_eq!(req.client_ip(), b"::1");
        assert_eq!(*source.fetched.borrow(), [":path", "x-absent", "user-agent", "source.address"]);
        assert_eq!(req.method(), b"POST");
    }
}
