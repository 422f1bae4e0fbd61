//! Policies built from fuzzer input for the `decision` target: the shapes an operator writes
//! (classes with reserves, rules on paths, methods and headers, global and keyed limits with
//! their own matches, fleet limits, an in-flight limit, shadow mode), with small numbers so
//! buckets, keys and slots run out within a short input. Every shape renders to a valid
//! configuration: `decision` treats a refusal as a failure.

use arbitrary::Arbitrary;

/// The request attributes `decision` sends come from these lists most of the time, so rules,
/// matches and keys meet them.
pub const METHODS: &[&[u8]] = &[b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b""];
pub const PATHS: &[&[u8]] =
    &[b"/", b"/checkout", b"/checkout/pay?x=1", b"/cart", b"/cart?x", b"/search?q=bot", b"/api/v1", b"/api?"];
pub const VALUES: &[&[u8]] = &[b"", b"gold", b"GoogleBot/2.1", b"Mozilla", b"k1", b"k2", b"k3", b"10.0.0.1"];

const HEADER_NAMES: &[&str] = &["x-api-key", "user-agent", "x-tier"];
const METHOD_NAMES: &[&str] = &["GET", "POST", "PUT", "DELETE", "HEAD"];
const PATH_TEXTS: &[&str] = &["/", "/checkout", "/cart", "/search", "/api", "/api/v1"];
const VALUE_TEXTS: &[&str] = &["gold", "g", "bot", "Bot", "Mozilla", "k1", "k", "10.0.0.1"];
const RESERVES: &[&str] = &["0", "0.25", "0.3", "0.5", "0.7", "1.0"];
const RATES: &[&str] = &["0.5", "1", "2", "3", "10", "100", "0.001"];

#[derive(Debug, Arbitrary)]
pub struct PolicyShape {
    shadow: bool,
    /// One class per entry (at least one), its reserve picked from [`RESERVES`].
    reserves: Vec<u8>,
    rules: Vec<RuleShape>,
    default_class: u8,
    limits: Vec<LimitShape>,
    /// `max_in_flight` (1 to 8) and `retry_after_s` (1 to 4).
    concurrency: Option<(u8, u8)>,
}

#[derive(Debug, Arbitrary)]
struct RuleShape {
    matcher: MatchShape,
    class: u8,
}

#[derive(Debug, Arbitrary)]
enum MatchShape {
    PathPrefix(u8),
    Path(u8),
    Methods(Vec<u8>),
    Header {
        name: u8,
        test: HeaderTest,
    },
    /// Every condition at once.
    All {
        path_prefix: u8,
        methods: Vec<u8>,
        header: u8,
        test: HeaderTest,
    },
}

#[derive(Debug, Arbitrary)]
enum HeaderTest {
    Present,
    Exact(u8),
    Prefix(u8),
    Contains { value: u8, ignore_case: bool },
}

#[derive(Debug, Arbitrary)]
struct LimitShape {
    key: KeyShape,
    rate: u8,
    /// 1 to 8.
    burst: u8,
    /// 1 to 4.
    max_keys: u8,
    matcher: Option<MatchShape>,
}

#[derive(Debug, Arbitrary)]
enum KeyShape {
    Global,
    /// A global limit shared through the rate limit service.
    Fleet,
    ClientIp,
    Header(u8),
}

/// At most this many of each list: enough for every interaction, small enough to run fast.
const MAX_CLASSES: usize = 4;
const MAX_RULES: usize = 4;
const MAX_LIMITS: usize = 4;

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list.get(usize::from(i) % list.len()).copied().unwrap_or_default()
}

fn methods_json(methods: &[u8]) -> String {
    let names: Vec<String> = methods.iter().take(3).map(|&m| format!("\"{}\"", pick(METHOD_NAMES, m))).collect();
    if names.is_empty() {
        "[\"GET\"]".to_string()
    } else {
        format!("[{}]", names.join(","))
    }
}

fn header_json(name: u8, test: &HeaderTest) -> String {
    let name = pick(HEADER_NAMES, name);
    let test = match test {
        HeaderTest::Present => "\"present\": true".to_string(),
        HeaderTest::Exact(v) => format!("\"exact\": \"{}\"", pick(VALUE_TEXTS, *v)),
        HeaderTest::Prefix(v) => format!("\"prefix\": \"{}\"", pick(VALUE_TEXTS, *v)),
        HeaderTest::Contains { value, ignore_case } => {
            format!("\"contains\": \"{}\", \"ignore_case\": {ignore_case}", pick(VALUE_TEXTS, *value))
        }
    };
    format!("{{\"name\": \"{name}\", {test}}}")
}

impl MatchShape {
    fn json(&self) -> String {
        match self {
            MatchShape::PathPrefix(p) => format!("{{\"path_prefix\": \"{}\"}}", pick(PATH_TEXTS, *p)),
            MatchShape::Path(p) => format!("{{\"path\": \"{}\"}}", pick(PATH_TEXTS, *p)),
            MatchShape::Methods(m) => format!("{{\"methods\": {}}}", methods_json(m)),
            MatchShape::Header { name, test } => format!("{{\"header\": {}}}", header_json(*name, test)),
            MatchShape::All { path_prefix, methods, header, test } => format!(
                "{{\"path_prefix\": \"{}\", \"methods\": {}, \"header\": {}}}",
                pick(PATH_TEXTS, *path_prefix),
                methods_json(methods),
                header_json(*header, test)
            ),
        }
    }
}

impl PolicyShape {
    /// The configuration this shape describes.
    pub fn json(&self) -> String {
        let reserves: Vec<u8> = if self.reserves.is_empty() { vec![0] } else { self.reserves.clone() };
        let classes = reserves.len().min(MAX_CLASSES);
        let class = |i: u8| format!("c{}", usize::from(i) % classes);
        let mut parts = Vec::new();
        parts.push(format!("\"mode\": \"{}\"", if self.shadow { "shadow" } else { "enforce" }));
        let class_list: Vec<String> = reserves
            .iter()
            .take(classes)
            .enumerate()
            .map(|(i, &r)| format!("{{\"name\": \"c{i}\", \"reserve\": {}}}", pick(RESERVES, r)))
            .collect();
        parts.push(format!("\"classes\": [{}]", class_list.join(",")));
        let rules: Vec<String> = self
            .rules
            .iter()
            .take(MAX_RULES)
            .map(|r| format!("{{\"match\": {}, \"class\": \"{}\"}}", r.matcher.json(), class(r.class)))
            .collect();
        parts.push(format!("\"rules\": [{}]", rules.join(",")));
        parts.push(format!("\"default_class\": \"{}\"", class(self.default_class)));
        let limits: Vec<String> = self
            .limits
            .iter()
            .take(MAX_LIMITS)
            .enumerate()
            .map(|(i, l)| {
                let burst = l.burst % 8 + 1;
                let mut fields = vec![
                    format!("\"name\": \"l{i}\""),
                    format!("\"tokens_per_second\": {}", pick(RATES, l.rate)),
                    format!("\"burst\": {burst}"),
                ];
                match l.key {
                    KeyShape::Global => {}
                    // A lease holds at most a burst.
                    KeyShape::Fleet => fields.push(format!(
                        "\"fleet\": {{\"cluster\": \"rls\", \"domain\": \"d\", \"local_share\": 0.5, \"max_lease\": {}}}",
                        burst.div_ceil(2)
                    )),
                    KeyShape::ClientIp => fields.push("\"key\": \"client_ip\"".to_string()),
                    KeyShape::Header(h) => fields.push(format!("\"key\": {{\"header\": \"{}\"}}", pick(HEADER_NAMES, h))),
                }
                if !matches!(l.key, KeyShape::Global | KeyShape::Fleet) {
                    fields.push(format!("\"max_keys\": {}", l.max_keys % 4 + 1));
                }
                if let Some(m) = &l.matcher {
                    fields.push(format!("\"match\": {}", m.json()));
                }
                format!("{{{}}}", fields.join(", "))
            })
            .collect();
        parts.push(format!("\"limits\": [{}]", limits.join(",")));
        if let Some((max, retry)) = self.concurrency {
            parts.push(format!(
                "\"concurrency\": {{\"max_in_flight\": {}, \"retry_after_s\": {}}}",
                max % 8 + 1,
                retry % 4 + 1
            ));
        }
        format!("{{{}}}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbitrary::Unstructured;

    /// Every shape is a configuration surgeguard accepts (else `decision` would report the
    /// generator's mistakes as crashes), over inputs that reach every variant.
    #[test]
    fn every_shape_renders_to_an_accepted_configuration() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut shapes = 0;
        for _ in 0..5_000 {
            let bytes: Vec<u8> = (0..256)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let Ok(shape) = PolicyShape::arbitrary(&mut Unstructured::new(&bytes)) else { continue };
            let json = shape.json();
            if let Err(e) = surgeguard::config::parse(json.as_bytes()) {
                panic!("{json}\nrefused: {e:?}");
            }
            shapes += 1;
        }
        assert!(shapes > 4_000, "only {shapes} shapes built");
    }
}
