//! The plugin configuration: parse -> validate -> compile, all in this file.
//!
//! Invariants of a compiled [`Policy`]:
//! - every class, rule and limit index is in range; names are unique and safe in metric names;
//! - every number is in the range its field documents, so the arithmetic in `bucket` and
//!   `record` cannot overflow; at most [`MAX_LIMITS`] limits (one [`LimitSet`](crate::ids::LimitSet));
//! - a configuration with any problem compiles to nothing: every problem is reported, each as
//!   `<path>: <message>, got <value>` (or `<path>: unknown field` / `<path>: duplicate field`).
//!
//! The JSON is read by serde_json into a [`json::Value`] (which keeps repeated keys and numbers
//! as written) and walked by hand, so that every problem is found in one pass with its exact
//! path. An object's unknown and repeated fields are reported in document order.

use crate::adaptive::AdaptiveParams;
use crate::classify::Needle;
use crate::ids::{ClassId, LimitId};
use crate::json::{self, Map, Value};
use crate::lease::LeaseParams;
use std::fmt;

/// Default and bounds, kept together so the README reference can be checked against them.
pub const DEFAULT_MAX_KEYS: u64 = 10_000;
pub const MAX_MAX_KEYS: u64 = 1_000_000;
pub const MAX_TOKENS_PER_SECOND: f64 = 1e9;
pub const MAX_BURST: u64 = 1_000_000_000;
/// `burst / tokens_per_second` bound: keeps `burst_ns` well inside u64.
pub const MAX_WINDOW_S: f64 = 1e9;
pub const MAX_IN_FLIGHT: u64 = 1_000_000;
pub const MAX_LIMITS: usize = 64;

/// Size bounds, each chosen from what it costs (measured with `examples/config_cost.rs`; the
/// figures are in the README's "Bounds" table). The whole configuration's bytes: parsing is
/// linear in them (5 to 13 µs per KiB natively).
pub const MAX_CONFIG_BYTES: usize = 256 * 1024;
/// Each class defines 5 counters per worker and costs about 46k wasm instructions to configure.
pub const MAX_CLASSES: usize = 64;
/// A rule that is checked and does not match costs about 460 wasm instructions per request.
pub const MAX_RULES: usize = 128;
/// A keyed limit costs about 10k wasm instructions and 2 to 4 shared-data calls per request it
/// applies to.
pub const MAX_KEYED_LIMITS: usize = 8;
/// `max_keys` summed over every keyed limit: each key's slot holds about 140 bytes of Envoy's
/// shared data, which is never freed.
pub const MAX_TOTAL_KEYS: u64 = 1_000_000;
/// Distinct request headers the rules, matches and keys read: each read is a host call.
pub const MAX_HEADER_NAMES: usize = 16;
pub const MAX_METHODS: usize = 16;
pub const MAX_DESCRIPTOR_ENTRIES: usize = 16;
/// Any string; names are 1 to 64 bytes.
pub const MAX_STRING_BYTES: usize = 1024;
/// A `contains` pattern: its worst case is about (value length x pattern length) steps.
pub const MAX_CONTAINS_BYTES: usize = 256;
pub const DEFAULT_SHED_RETRY_AFTER_S: u64 = 1;
/// `concurrency.adaptive.tolerance` bounds.
pub const MIN_TOLERANCE: f64 = 1.05;
pub const MAX_TOLERANCE: f64 = 4.0;
/// `concurrency.adaptive.window_ms` bounds.
pub const MIN_WINDOW_MS: u64 = 50;
pub const MAX_WINDOW_MS: u64 = 10_000;
pub const NS_PER_S: u64 = 1_000_000_000;
pub const DEFAULT_FLEET_TIMEOUT_MS: u64 = 50;
pub const MAX_FLEET_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FLEET_REFILL_MS: u64 = 250;
/// In local mode, how often a fleet limit tries the service again.
pub const FLEET_PROBE_PERIOD_MS: u64 = 500;
/// The descriptor entry a fleet limit sends when none is configured: `surgeguard_limit=<name>`.
pub const DEFAULT_DESCRIPTOR_KEY: &str = "surgeguard_limit";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    /// The offending value rendered as JSON; `None` for an unknown or missing field.
    pub got: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.got {
            Some(got) => write!(f, "{}: {}, got {}", self.path, self.message, got),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Shadow,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Class {
    pub name: String,
    /// Share of every capacity this class may not use, 0.0 ..= 1.0.
    pub reserve: f64,
}

/// A compiled `match`: every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Matcher {
    pub path_prefix: Option<Vec<u8>>,
    pub path: Option<Vec<u8>>,
    pub methods: Option<Vec<Vec<u8>>>,
    pub header: Option<HeaderMatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Index into [`Policy::header_names`]: the value is fetched once per request.
    pub slot: usize,
    pub test: HeaderTest,
    pub ignore_case: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderTest {
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
    Contains(crate::classify::Needle),
    Present(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub matcher: Matcher,
    pub class: ClassId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Global,
    ClientIp,
    /// Index into [`Policy::header_names`].
    Header(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub name: String,
    pub key: KeySource,
    pub tokens_per_second: f64,
    pub burst: u64,
    pub matcher: Option<Matcher>,
    pub max_keys: u32,
    /// One token's worth of time, rounded to the nanosecond (>= 1).
    pub ns_per_token: u64,
    /// Per class: how far ahead of now the bucket's theoretical arrival time may run after a
    /// take, i.e. `(1 - reserve) x burst` tokens of time. See `bucket`.
    pub class_tolerance_ns: Vec<u64>,
    /// `w` of the IETF headers: `ceil(burst / tokens_per_second)` seconds.
    pub window_s: u64,
    /// The `ratelimit-policy` header value, built once.
    pub policy_header: String,
    /// Identifies the bucket arithmetic; part of the storage key so a changed rate or burst
    /// starts from a fresh full bucket while an unchanged limit keeps its state across reloads.
    pub state_id: String,
    /// Fleet-wide: tokens leased from a rate limit service. The bucket above is then the local
    /// fallback, `local_share` of the fleet limit, used while the service is unreachable.
    pub fleet: Option<Fleet>,
}

/// A fleet-wide limit's link to its rate limit service (see `lease`).
#[derive(Debug, Clone, PartialEq)]
pub struct Fleet {
    /// The Envoy cluster the service is reached through (HTTP/2, gRPC).
    pub cluster: String,
    pub domain: String,
    /// The one descriptor's entries, sent with every lease call.
    pub descriptor: Vec<(String, String)>,
    pub local_share: f64,
    pub lease: LeaseParams,
    /// Per class: the fleet tokens that must remain after a take, `reserve x burst`.
    pub class_reserve_tokens: Vec<u64>,
}

impl Fleet {
    pub fn reserve_tokens(&self, class: ClassId) -> u64 {
        self.class_reserve_tokens.get(class.index()).copied().unwrap_or(u64::MAX)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Concurrency {
    /// The static limit; with `adaptive`, the ceiling of L.
    pub max_in_flight: u32,
    /// Per class: the highest in-flight count (including this request) the class may reach
    /// under the static limit.
    pub class_max_in_flight: Vec<u32>,
    pub retry_after_s: u64,
    /// The adaptive limit (`concurrency.adaptive`); `None`: static.
    pub adaptive: Option<Adaptive>,
}

/// The adaptive in-flight limit: the controller's parameters (ceiling `max_in_flight`) and each
/// class's reserve, applied to L at every decision (`adaptive::class_max`).
#[derive(Debug, Clone, PartialEq)]
pub struct Adaptive {
    pub params: AdaptiveParams,
    /// Per class, indexed like `Policy::classes`.
    pub reserves: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub mode: Mode,
    pub classes: Vec<Class>,
    pub default_class: ClassId,
    pub rules: Vec<Rule>,
    pub limits: Vec<Limit>,
    pub concurrency: Option<Concurrency>,
    /// Lower-case names of the request headers any rule, match or key reads.
    pub header_names: Vec<String>,
}

impl Policy {
    pub fn class(&self, id: ClassId) -> Option<&Class> {
        self.classes.get(id.index())
    }

    pub fn limit(&self, id: LimitId) -> Option<&Limit> {
        self.limits.get(id.index())
    }

    /// Every limit with its id, in order.
    pub fn limits_by_id(&self) -> impl Iterator<Item = (LimitId, &Limit)> {
        self.limits.iter().enumerate().map(|(i, l)| (LimitId(i), l))
    }
}

impl Limit {
    /// How far ahead of now a take by `class` may run the bucket (see `class_tolerance_ns`).
    pub fn tolerance_ns(&self, class: ClassId) -> u64 {
        self.class_tolerance_ns.get(class.index()).copied().unwrap_or(0)
    }
}

impl Concurrency {
    /// The highest in-flight count (including this request) `class` may reach under the
    /// static limit.
    pub fn class_max(&self, class: ClassId) -> u32 {
        self.class_max_in_flight.get(class.index()).copied().unwrap_or(0)
    }
}

impl Adaptive {
    /// L as the decision uses it: the stored value (`None` before the first control window:
    /// the ceiling) within `[floor, ceiling]`, so a reload that narrows the range applies at once.
    pub fn limit(&self, stored: Option<u32>) -> u32 {
        let p = &self.params;
        stored.unwrap_or(p.ceiling).clamp(p.floor.min(p.ceiling), p.ceiling)
    }

    /// The highest in-flight count (including this request) `class` may reach under `limit`.
    pub fn class_max(&self, class: ClassId, limit: u32) -> u32 {
        crate::adaptive::class_max(limit, self.reserves.get(class.index()).copied().unwrap_or(0.0))
    }
}

/// One field of the configuration, as the README's reference table shows it. This table is
/// also what the parser accepts: a field missing here is an unknown field.
#[derive(Debug, Clone, Copy)]
pub struct FieldDoc {
    /// `limits[].burst`; `match.*` fields belong to every `match` (in rules and limits).
    pub path: &'static str,
    pub required: bool,
    pub default: &'static str,
    pub meaning: &'static str,
}

const fn doc(path: &'static str, required: bool, default: &'static str, meaning: &'static str) -> FieldDoc {
    FieldDoc { path, required, default, meaning }
}

pub const REFERENCE: &[FieldDoc] = &[
    doc("mode", false, "\"enforce\"", "`\"enforce\"` refuses; `\"shadow\"` decides and counts the same way but never refuses (a would-be refusal takes no tokens and no slot)."),
    doc("classes", false, "one class `default`", "Priority classes, most important first; 1 to 64."),
    doc("classes[].name", true, "", "Class name (1-64 of `A-Z a-z 0-9 _ -`), used in metrics and `x-surgeguard`."),
    doc("classes[].reserve", false, "0.0", "0.0-1.0: share of every capacity this class may not use. A bucket admits it only if `reserve x burst` tokens remain after the take; the in-flight limit only if `in_flight + 1 <= (1 - reserve) x max_in_flight`."),
    doc("default_class", false, "the last class", "Class of a request no rule matches."),
    doc("rules", false, "[]", "At most 128, checked in order; the first whose `match` holds gives the class."),
    doc("rules[].match", false, "every request", "Conditions, all of which must hold (see `match.*`)."),
    doc("rules[].class", true, "", "Name of a class."),
    doc("match.path_prefix", false, "", "The path (without query string) starts with this; must start with `/`."),
    doc("match.path", false, "", "The path (without query string) is exactly this."),
    doc("match.methods", false, "", "Upper-case methods, e.g. `[\"POST\", \"PUT\"]` (at most 16); one must equal the request's."),
    doc("match.header", false, "", "A request header test: `name` and exactly one of `exact`, `prefix`, `contains`, `present`. A configuration reads at most 16 distinct header names (rules, matches and keys)."),
    doc("match.header.name", true, "", "Header name (case-insensitive)."),
    doc("match.header.exact", false, "", "The value equals this."),
    doc("match.header.prefix", false, "", "The value starts with this."),
    doc("match.header.contains", false, "", "The value contains this (at most 256 bytes)."),
    doc("match.header.present", false, "", "`true`: the header is there; `false`: it is absent."),
    doc("match.header.ignore_case", false, "false", "Compare values ignoring ASCII case."),
    doc("limits", false, "[]", "Token buckets, at most 64 (at most 8 of them keyed); a request must pass every limit whose `match` holds. Tokens are taken only when all admit."),
    doc("limits[].name", true, "", "Limit name (1-64 of `A-Z a-z 0-9 _ -`), unique; used in metrics and headers."),
    doc("limits[].key", false, "\"global\"", "`\"global\"`: one bucket; `\"client_ip\"`: one per downstream address (needs `use_remote_address: true`); `{\"header\": NAME}`: one per header value, requests without it share one."),
    doc("limits[].key.header", true, "", "Header whose value keys the bucket."),
    doc("limits[].tokens_per_second", true, "", "Refill rate, > 0 and <= 1e9."),
    doc("limits[].burst", true, "", "Bucket size, a whole number >= 1; the bucket starts full."),
    doc("limits[].match", false, "every request", "Which requests this limit applies to (see `match.*`)."),
    doc("limits[].max_keys", false, "10000", "Keyed limits only: most buckets held, 1 to 1000000, and at most 1000000 over all keyed limits. A full (refilled) bucket gives up its slot; a new key finding none shares the limit's overflow bucket."),
    doc("limits[].fleet", false, "per Envoy", "Makes a `global` limit fleet-wide: every Envoy leases tokens from a rate limit service (Envoy's `envoy.service.ratelimit.v3` API: Limitador, envoyproxy/ratelimit) and spends them locally. Write the service's limit as `burst` hits per `burst / tokens_per_second` seconds. See docs/operations.md."),
    doc("limits[].fleet.cluster", true, "", "Envoy cluster of the rate limit service (HTTP/2)."),
    doc("limits[].fleet.domain", true, "", "The rate limit service's domain (Limitador's namespace)."),
    doc("limits[].fleet.descriptor", false, "`[{\"key\": \"surgeguard_limit\", \"value\": <name>}]`", "The descriptor's entries (1 to 16) sent with every lease call, matching the limit written in the service."),
    doc("limits[].fleet.descriptor[].key", true, "", "Entry key."),
    doc("limits[].fleet.descriptor[].value", true, "", "Entry value."),
    doc("limits[].fleet.local_share", true, "", "0.0-1.0 (> 0): the share of the limit each Envoy admits on its own while the service is unreachable (priorities still apply); about 1 / the number of Envoys."),
    doc("limits[].fleet.timeout_ms", false, "50", "A lease call not answered by then has failed (1 to 5000): the limit falls back to its local share and tries again every 500 ms. No request ever waits on a call."),
    doc("limits[].fleet.refill_ms", false, "250", "Target time between lease calls under steady load (10 to 10000): a lease holds about twice this much of the observed rate."),
    doc("limits[].fleet.max_lease", false, "burst / 4", "Most tokens one lease call asks for (1 to `burst`)."),
    doc("concurrency", false, "no limit", "The in-flight limit."),
    doc("concurrency.max_in_flight", true, "", "Most requests in flight to the upstream at once, across all workers, 1 to 1000000."),
    doc("concurrency.retry_after_s", false, "1", "`retry-after` of a shed (503) reply, 1 to 3600."),
    doc("concurrency.adaptive", false, "none (static)", "Makes the in-flight limit adaptive: the limit L in force follows the upstream's latency and errors, between `floor` and `max_in_flight` (its ceiling and its start), and the reserves apply to L. `{}` takes every default. See docs/adaptive.md."),
    doc("concurrency.adaptive.floor", false, "max(1, max_in_flight / 50)", "The least L may fall to, 1 to `max_in_flight`."),
    doc("concurrency.adaptive.tolerance", false, "1.25", "Latency up to this many times its baseline is not cut (1.05 to 4.0)."),
    doc("concurrency.adaptive.window_ms", false, "200", "The control window: L moves once per window (50 to 10000)."),
];

/// The paths of [`REFERENCE`] alone, computed at compile time: what the parser needs, so the
/// prose (used only by `surgeguard-check --reference`) stays out of the wasm module.
const FIELD_PATHS: [&str; REFERENCE.len()] = {
    let mut paths = [""; REFERENCE.len()];
    let mut i = 0;
    while i < REFERENCE.len() {
        paths[i] = REFERENCE[i].path;
        i += 1;
    }
    paths
};

fn is_documented(schema: &str, field: &str) -> bool {
    FIELD_PATHS.iter().any(|path| {
        let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
        parent == schema && name == field
    })
}

/// The reference table in Markdown, as the README shows it (`surgeguard-check --reference`).
pub fn reference_markdown() -> String {
    let mut out = String::from("| field | required | default | meaning |\n| --- | --- | --- | --- |\n");
    for d in REFERENCE {
        let required = if d.required { "yes" } else { "no" };
        // A literal default is code; a described one ("the last class") is prose.
        let default = if d.default.is_empty() || d.default.contains(' ') {
            d.default.to_string()
        } else {
            format!("`{}`", d.default)
        };
        out.push_str(&format!("| `{}` | {required} | {default} | {} |\n", d.path, d.meaning));
    }
    out
}

/// Parses, validates and compiles a configuration; all problems or a policy.
pub fn parse(bytes: &[u8]) -> Result<Policy, Vec<ConfigError>> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(vec![ConfigError {
            path: "configuration".into(),
            message: format!("must be at most {MAX_CONFIG_BYTES} bytes"),
            got: Some(format!("{} bytes", bytes.len())),
        }]);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        vec![ConfigError {
            path: "configuration".into(),
            message: format!("must be UTF-8 JSON (invalid byte at offset {})", e.valid_up_to()),
            got: None,
        }]
    })?;
    // An absent configuration is an empty object: its required fields then say what is missing.
    let value: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        json::parse(text).map_err(|e| {
            vec![ConfigError { path: "configuration".into(), message: format!("invalid JSON ({e})"), got: None }]
        })?
    };
    let mut c = Compiler::default();
    let policy = c.policy(&value);
    match policy {
        Some(p) if c.errors.is_empty() => Ok(p),
        _ => Err(c.errors),
    }
}

/// Renders a value for an error message: compact JSON (numbers as written), cut short if long.
fn render(v: &Value) -> String {
    const MAX_CHARS: usize = 80;
    let s = v.to_json();
    if s.chars().count() > MAX_CHARS {
        let cut: String = s.chars().take(MAX_CHARS).collect();
        format!("{cut}...")
    } else {
        s
    }
}

fn field_path(parent: &str, name: &str) -> String {
    // An unknown field's name is the user's text: escaped, a line break in it cannot split the
    // problem's log line (or forge another one); an empty one is shown as `""`.
    let name: std::borrow::Cow<str> = if name.is_empty() {
        "\"\"".into()
    } else if name.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}') {
        name.escape_debug().to_string().into()
    } else {
        name.into()
    };
    if parent.is_empty() {
        name.into_owned()
    } else {
        format!("{parent}.{name}")
    }
}

#[derive(Default)]
struct Compiler {
    errors: Vec<ConfigError>,
    header_names: Vec<String>,
    /// A name past [`MAX_HEADER_NAMES`] was reported.
    header_names_overflowed: bool,
}

impl Compiler {
    fn error(&mut self, path: &str, message: impl Into<String>, got: Option<&Value>) {
        self.errors.push(ConfigError { path: path.to_string(), message: message.into(), got: got.map(render) });
    }

    /// Refuses a list of more than `max` entries (`limits: must hold at most 64 entries, got
    /// 65 entries`); returns whether it is within the bound.
    fn at_most_entries(&mut self, path: &str, list: &[Value], max: usize) -> bool {
        if list.len() <= max {
            return true;
        }
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: format!("must hold at most {max} entries"),
            got: Some(format!("{} entries", list.len())),
        });
        false
    }

    /// Refuses a string of more than `max` bytes; returns whether it is within the bound.
    fn at_most_bytes(&mut self, path: &str, s: &str, max: usize) -> bool {
        if s.len() <= max {
            return true;
        }
        self.errors.push(ConfigError {
            path: path.to_string(),
            message: format!("must be at most {max} bytes"),
            got: Some(format!("{} bytes", s.len())),
        });
        false
    }

    /// Checks that `v` is an object whose fields are all documented in [`REFERENCE`] under
    /// `schema` (the path with indices dropped, e.g. `limits[]`; `match` for every match), each
    /// given once.
    fn object<'v>(&mut self, path: &str, v: &'v Value, schema: &str) -> Option<&'v Map> {
        let Some(map) = v.as_object() else {
            let p = if path.is_empty() { "configuration" } else { path };
            self.error(p, "must be an object", Some(v));
            return None;
        };
        // Keys come in document order, a repeated one as often as it is given: each problem is
        // reported where it first occurs.
        let mut seen: Vec<&str> = Vec::new();
        let mut repeated: Vec<&str> = Vec::new();
        for key in map.keys() {
            if seen.contains(&key) {
                if !repeated.contains(&key) && is_documented(schema, key) {
                    self.error(&field_path(path, key), "duplicate field", None);
                }
                repeated.push(key);
                continue;
            }
            seen.push(key);
            if !is_documented(schema, key) {
                self.error(&field_path(path, key), "unknown field", None);
            }
        }
        Some(map)
    }

    fn string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        let Some(s) = v.as_str() else {
            self.error(path, "must be a string", Some(v));
            return None;
        };
        self.at_most_bytes(path, s, MAX_STRING_BYTES).then_some(s)
    }

    fn non_empty_string<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v str> {
        let s = self.string(path, v)?;
        if s.is_empty() {
            self.error(path, "must not be empty", Some(v));
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, path: &str, v: &Value) -> Option<bool> {
        let b = v.as_bool();
        if b.is_none() {
            self.error(path, "must be true or false", Some(v));
        }
        b
    }

    fn number(&mut self, path: &str, v: &Value) -> Option<f64> {
        let n = v.as_f64();
        if n.is_none() {
            self.error(path, "must be a number", Some(v));
        }
        n
    }

    /// An integer in `min..=max`.
    fn integer(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        let n = self.number(path, v)?;
        if n < min as f64 {
            self.error(path, format!("must be >= {min}"), Some(v));
            return None;
        }
        if n > max as f64 {
            self.error(path, format!("must be <= {max}"), Some(v));
            return None;
        }
        if n.fract() != 0.0 {
            self.error(path, "must be a whole number", Some(v));
            return None;
        }
        Some(n as u64)
    }

    fn array<'v>(&mut self, path: &str, v: &'v Value) -> Option<&'v [Value]> {
        let a = v.as_array();
        if a.is_none() {
            self.error(path, "must be a list", Some(v));
        }
        a
    }

    /// A name used in metric names and headers: letters, digits, `_` and `-`.
    fn name(&mut self, path: &str, v: &Value) -> Option<String> {
        let s = self.non_empty_string(path, v)?;
        let ok = s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            self.error(path, "must be 1 to 64 of A-Z a-z 0-9 _ -", Some(v));
            return None;
        }
        Some(s.to_string())
    }

    fn header_slot(&mut self, path: &str, v: &Value) -> Option<usize> {
        let s = self.non_empty_string(path, v)?;
        let is_token = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b));
        if !is_token || (s.starts_with(':') && s.len() == 1) {
            self.error(path, "must be an HTTP header name", Some(v));
            return None;
        }
        let lower = s.to_ascii_lowercase();
        Some(match self.header_names.iter().position(|h| *h == lower) {
            Some(i) => i,
            None if self.header_names.len() >= MAX_HEADER_NAMES => {
                // Reported at the first name past the bound; the others add nothing.
                if !self.header_names_overflowed {
                    self.header_names_overflowed = true;
                    let message =
                        format!("at most {MAX_HEADER_NAMES} distinct header names may be read (rules, matches, keys)");
                    self.error(path, message, Some(v));
                }
                return None;
            }
            None => {
                self.header_names.push(lower);
                self.header_names.len() - 1
            }
        })
    }

    fn policy(&mut self, v: &Value) -> Option<Policy> {
        let root = self.object("", v, "")?;

        let mode = match root.get("mode") {
            None => Some(Mode::Enforce),
            Some(m) => match m.as_str() {
                Some("enforce") => Some(Mode::Enforce),
                Some("shadow") => Some(Mode::Shadow),
                _ => {
                    self.error("mode", "must be \"enforce\" or \"shadow\"", Some(m));
                    None
                }
            },
        };

        // Names are kept even when a class has another problem, so references to it are
        // still checked (and not reported as unknown).
        let mut class_names = Vec::new();
        let classes = match root.get("classes") {
            None => {
                class_names.push("default".to_string());
                Some(vec![Class { name: "default".into(), reserve: 0.0 }])
            }
            Some(c) => self.classes(c, &mut class_names),
        };

        let default_class = match (root.get("default_class"), classes.as_ref()) {
            (None, Some(cs)) => Some(ClassId(cs.len().saturating_sub(1))),
            (Some(d), Some(_)) => self.class_ref("default_class", d, &class_names),
            (_, None) => None,
        };

        let rules = match root.get("rules") {
            None => Some(Vec::new()),
            Some(r) => self.rules(r, &class_names),
        };

        let limits = match root.get("limits") {
            None => Some(Vec::new()),
            Some(l) => self.limits(l, classes.as_deref().unwrap_or(&[])),
        };

        let concurrency = match root.get("concurrency") {
            None => Some(None),
            Some(c) => self.concurrency(c, classes.as_deref().unwrap_or(&[])).map(Some),
        };

        let (mode, classes, default_class, rules, limits, concurrency) =
            (mode?, classes?, default_class?, rules?, limits?, concurrency?);
        Some(Policy {
            mode,
            classes,
            default_class,
            rules,
            limits,
            concurrency,
            header_names: std::mem::take(&mut self.header_names),
        })
    }

    fn classes(&mut self, v: &Value, names: &mut Vec<String>) -> Option<Vec<Class>> {
        let list = self.array("classes", v)?;
        if list.is_empty() {
            self.error("classes", "must name at least one class", Some(v));
            return None;
        }
        // Too many is reported beside the entries' own problems (their names still resolve).
        let mut ok = self.at_most_entries("classes", list, MAX_CLASSES);
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let path = format!("classes[{i}]");
            let Some(obj) = self.object(&path, c, "classes[]") else {
                ok = false;
                continue;
            };
            let name = match obj.get("name") {
                Some(n) => self.name(&format!("{path}.name"), n),
                None => {
                    self.error(&format!("{path}.name"), "required", None);
                    None
                }
            };
            if let Some(n) = &name {
                if names.contains(n) {
                    self.error(&format!("{path}.name"), "duplicate class name", obj.get("name"));
                    ok = false;
                } else {
                    names.push(n.clone());
                }
            }
            let reserve = match obj.get("reserve") {
                None => Some(0.0),
                Some(r) => self.number(&format!("{path}.reserve"), r).and_then(|x| {
                    if (0.0..=1.0).contains(&x) {
                        Some(x)
                    } else {
                        self.error(&format!("{path}.reserve"), "must be between 0.0 and 1.0", Some(r));
                        None
                    }
                }),
            };
            match (name, reserve) {
                (Some(name), Some(reserve)) => out.push(Class { name, reserve }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn class_ref(&mut self, path: &str, v: &Value, class_names: &[String]) -> Option<ClassId> {
        let s = self.string(path, v)?;
        let i = class_names.iter().position(|c| c == s);
        if i.is_none() {
            self.error(path, format!("must name a class ({})", class_names.join(", ")), Some(v));
        }
        i.map(ClassId)
    }

    fn rules(&mut self, v: &Value, class_names: &[String]) -> Option<Vec<Rule>> {
        let list = self.array("rules", v)?;
        let mut ok = self.at_most_entries("rules", list, MAX_RULES);
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let path = format!("rules[{i}]");
            let Some(obj) = self.object(&path, r, "rules[]") else {
                ok = false;
                continue;
            };
            let matcher = match obj.get("match") {
                None => Some(Matcher::default()),
                Some(m) => self.matcher(&format!("{path}.match"), m),
            };
            let class = match obj.get("class") {
                Some(c) => self.class_ref(&format!("{path}.class"), c, class_names),
                None => {
                    self.error(&format!("{path}.class"), "required", None);
                    None
                }
            };
            match (matcher, class) {
                (Some(matcher), Some(class)) => out.push(Rule { matcher, class }),
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn matcher(&mut self, path: &str, v: &Value) -> Option<Matcher> {
        let obj = self.object(path, v, "match")?;
        let errors_before = self.errors.len();
        let mut m = Matcher::default();
        if let Some(p) = obj.get("path_prefix") {
            m.path_prefix = self.request_path(&field_path(path, "path_prefix"), p);
        }
        if let Some(p) = obj.get("path") {
            m.path = self.request_path(&field_path(path, "path"), p);
        }
        if let Some(ms) = obj.get("methods") {
            let mpath = field_path(path, "methods");
            if let Some(list) = self.array(&mpath, ms) {
                if list.is_empty() {
                    self.error(&mpath, "must list at least one method", Some(ms));
                }
                self.at_most_entries(&mpath, list, MAX_METHODS);
                let mut methods = Vec::new();
                for (i, method) in list.iter().enumerate() {
                    let p = format!("{mpath}[{i}]");
                    if let Some(s) = self.non_empty_string(&p, method) {
                        if s.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_') {
                            methods.push(s.as_bytes().to_vec());
                        } else {
                            self.error(&p, "must be an upper-case HTTP method", Some(method));
                        }
                    }
                }
                m.methods = Some(methods);
            }
        }
        if let Some(h) = obj.get("header") {
            m.header = self.header_match(&field_path(path, "header"), h);
        }
        (self.errors.len() == errors_before).then_some(m)
    }

    fn request_path(&mut self, path: &str, v: &Value) -> Option<Vec<u8>> {
        let s = self.string(path, v)?;
        if !s.starts_with('/') || s.contains('?') {
            self.error(path, "must start with / and hold no query string", Some(v));
            return None;
        }
        Some(s.as_bytes().to_vec())
    }

    fn header_match(&mut self, path: &str, v: &Value) -> Option<HeaderMatch> {
        let obj = self.object(path, v, "match.header")?;
        let slot = match obj.get("name") {
            Some(n) => self.header_slot(&field_path(path, "name"), n),
            None => {
                self.error(&field_path(path, "name"), "required", None);
                None
            }
        };
        let ignore_case = match obj.get("ignore_case") {
            None => Some(false),
            Some(b) => self.bool(&field_path(path, "ignore_case"), b),
        };
        let given: Vec<&str> =
            ["exact", "prefix", "contains", "present"].into_iter().filter(|k| obj.contains_key(k)).collect();
        if given.len() != 1 {
            self.error(path, "must give exactly one of exact, prefix, contains, present", Some(v));
            return None;
        }
        let key = given.first().copied().unwrap_or("present");
        let fv = obj.get(key).unwrap_or(&Value::Null);
        let fpath = field_path(path, key);
        let case = |s: &str| {
            if ignore_case == Some(true) {
                s.to_ascii_lowercase().into_bytes()
            } else {
                s.as_bytes().to_vec()
            }
        };
        let test = match key {
            "exact" => self.string(&fpath, fv).map(|s| HeaderTest::Exact(case(s))),
            "prefix" => self.string(&fpath, fv).map(|s| HeaderTest::Prefix(case(s))),
            "contains" => self
                .string(&fpath, fv)
                .filter(|s| self.at_most_bytes(&fpath, s, MAX_CONTAINS_BYTES))
                .map(|s| HeaderTest::Contains(Needle::new(case(s)))),
            _ => self.bool(&fpath, fv).map(HeaderTest::Present),
        };
        Some(HeaderMatch { slot: slot?, test: test?, ignore_case: ignore_case? })
    }

    fn limits(&mut self, v: &Value, classes: &[Class]) -> Option<Vec<Limit>> {
        let list = self.array("limits", v)?;
        // Past this a limit has no id (a `LimitSet` is one u64): nothing else is checked.
        if !self.at_most_entries("limits", list, MAX_LIMITS) {
            return None;
        }
        let mut out: Vec<Limit> = Vec::new();
        let mut ok = true;
        let (mut keyed_limits, mut total_keys) = (0, 0);
        for (i, l) in list.iter().enumerate() {
            let path = format!("limits[{i}]");
            let Some(obj) = self.object(&path, l, "limits[]") else {
                ok = false;
                continue;
            };
            let errors_before = self.errors.len();
            let p = |f: &str| format!("{path}.{f}");
            let name = match obj.get("name") {
                Some(n) => self.name(&p("name"), n),
                None => {
                    self.error(&p("name"), "required", None);
                    None
                }
            };
            if let Some(n) = &name {
                if out.iter().any(|l| l.name == *n) {
                    self.error(&p("name"), "duplicate limit name", obj.get("name"));
                }
            }
            let key = match obj.get("key") {
                None => Some(KeySource::Global),
                Some(k) => self.key_source(&p("key"), k),
            };
            let rate = match obj.get("tokens_per_second") {
                None => {
                    self.error(&p("tokens_per_second"), "required", None);
                    None
                }
                Some(r) => self.number(&p("tokens_per_second"), r).and_then(|x| {
                    if x > 0.0 && x <= MAX_TOKENS_PER_SECOND {
                        Some(x)
                    } else {
                        self.error(&p("tokens_per_second"), "must be > 0 and <= 1e9", Some(r));
                        None
                    }
                }),
            };
            let burst = match obj.get("burst") {
                None => {
                    self.error(&p("burst"), "required", None);
                    None
                }
                Some(b) => self.integer(&p("burst"), b, 1, MAX_BURST),
            };
            let matcher = match obj.get("match") {
                None => Some(None),
                Some(m) => self.matcher(&p("match"), m).map(Some),
            };
            let max_keys = match obj.get("max_keys") {
                None => Some(DEFAULT_MAX_KEYS),
                Some(m) => {
                    let n = self.integer(&p("max_keys"), m, 1, MAX_MAX_KEYS);
                    if n.is_some() && key == Some(KeySource::Global) {
                        self.error(&p("max_keys"), "applies only to a keyed limit (client_ip or header)", Some(m));
                    }
                    n
                }
            };
            if key.as_ref().is_some_and(|k| *k != KeySource::Global) {
                keyed_limits += 1;
                if keyed_limits == MAX_KEYED_LIMITS + 1 {
                    let message = format!("at most {MAX_KEYED_LIMITS} limits may be keyed (client_ip or header)");
                    self.error(&p("key"), message, obj.get("key"));
                }
                let before = total_keys;
                total_keys += max_keys.unwrap_or(0);
                // Reported once, at the limit that crosses the bound.
                if let Some(n) = max_keys.filter(|_| before <= MAX_TOTAL_KEYS && total_keys > MAX_TOTAL_KEYS) {
                    self.errors.push(ConfigError {
                        path: p("max_keys"),
                        message: format!("keyed limits may hold at most {MAX_TOTAL_KEYS} keys in all"),
                        got: Some(format!("{n}, {total_keys} in all")),
                    });
                }
            }
            let fleet = match (obj.get("fleet"), &name) {
                (None, _) => Some(None),
                (Some(f), name) => {
                    if key.as_ref().is_some_and(|k| *k != KeySource::Global) {
                        self.error(&p("fleet"), "applies only to a \"global\" limit", Some(f));
                    }
                    self.fleet_link(&p("fleet"), f, name.as_deref().unwrap_or_default(), burst).map(Some)
                }
            };
            if let (Some(rate), Some(burst)) = (rate, burst) {
                if burst as f64 / rate > MAX_WINDOW_S {
                    self.error(&p("burst"), "burst / tokens_per_second must be <= 1e9 seconds", obj.get("burst"));
                }
            }
            if self.errors.len() != errors_before {
                ok = false;
                continue;
            }
            let (Some(name), Some(key), Some(rate), Some(burst), Some(matcher), Some(max_keys), Some(fleet)) =
                (name, key, rate, burst, matcher, max_keys, fleet)
            else {
                ok = false;
                continue;
            };
            let spec = LimitSpec { name, key, tokens_per_second: rate, burst, matcher, max_keys: max_keys as u32 };
            out.push(compile_limit(spec, fleet, classes));
        }
        ok.then_some(out)
    }

    /// `limits[].fleet`, checked; `burst` (if valid) bounds `max_lease`.
    fn fleet_link(&mut self, path: &str, v: &Value, limit_name: &str, burst: Option<u64>) -> Option<FleetLink> {
        let obj = self.object(path, v, "limits[].fleet")?;
        let errors_before = self.errors.len();
        let p = |f: &str| field_path(path, f);
        let required_string = |c: &mut Self, field: &str| match obj.get(field) {
            Some(s) => c.non_empty_string(&p(field), s).map(str::to_string),
            None => {
                c.error(&p(field), "required", None);
                None
            }
        };
        let cluster = required_string(self, "cluster");
        let domain = required_string(self, "domain");
        let descriptor = match obj.get("descriptor") {
            None => Some(vec![(DEFAULT_DESCRIPTOR_KEY.to_string(), limit_name.to_string())]),
            Some(d) => self.descriptor(&p("descriptor"), d),
        };
        let local_share = match obj.get("local_share") {
            None => {
                self.error(&p("local_share"), "required", None);
                None
            }
            Some(x) => self.number(&p("local_share"), x).and_then(|n| {
                if n > 0.0 && n <= 1.0 {
                    Some(n)
                } else {
                    self.error(&p("local_share"), "must be > 0.0 and <= 1.0", Some(x));
                    None
                }
            }),
        };
        let optional_integer = |c: &mut Self, field: &str, default: u64, min: u64, max: u64| match obj.get(field) {
            None => Some(default),
            Some(x) => c.integer(&p(field), x, min, max),
        };
        let timeout_ms = optional_integer(self, "timeout_ms", DEFAULT_FLEET_TIMEOUT_MS, 1, MAX_FLEET_TIMEOUT_MS);
        let refill_ms = optional_integer(self, "refill_ms", DEFAULT_FLEET_REFILL_MS, 10, 10_000);
        let burst = burst.unwrap_or(MAX_BURST);
        let max_lease = optional_integer(self, "max_lease", (burst / 4).max(1), 1, burst);
        if self.errors.len() != errors_before {
            return None;
        }
        Some(FleetLink {
            cluster: cluster?,
            domain: domain?,
            descriptor: descriptor?,
            local_share: local_share?,
            timeout_ms: timeout_ms?,
            refill_ms: refill_ms?,
            max_lease: max_lease?,
        })
    }

    fn descriptor(&mut self, path: &str, v: &Value) -> Option<Vec<(String, String)>> {
        let list = self.array(path, v)?;
        if list.is_empty() {
            self.error(path, "must hold at least one entry", Some(v));
            return None;
        }
        if !self.at_most_entries(path, list, MAX_DESCRIPTOR_ENTRIES) {
            return None;
        }
        let mut out = Vec::new();
        for (i, e) in list.iter().enumerate() {
            let epath = format!("{path}[{i}]");
            let Some(obj) = self.object(&epath, e, "limits[].fleet.descriptor[]") else { continue };
            let entry = |c: &mut Self, field: &str| match obj.get(field) {
                Some(s) => c.non_empty_string(&field_path(&epath, field), s).map(str::to_string),
                None => {
                    c.error(&field_path(&epath, field), "required", None);
                    None
                }
            };
            if let (Some(k), Some(v)) = (entry(self, "key"), entry(self, "value")) {
                out.push((k, v));
            }
        }
        (out.len() == list.len()).then_some(out)
    }

    fn key_source(&mut self, path: &str, v: &Value) -> Option<KeySource> {
        match v {
            Value::String(s) if s == "global" => Some(KeySource::Global),
            Value::String(s) if s == "client_ip" => Some(KeySource::ClientIp),
            Value::Object(_) => {
                let obj = self.object(path, v, "limits[].key")?;
                match obj.get("header") {
                    Some(h) => self.header_slot(&field_path(path, "header"), h).map(KeySource::Header),
                    None => {
                        self.error(&field_path(path, "header"), "required", None);
                        None
                    }
                }
            }
            _ => {
                self.error(path, "must be \"global\", \"client_ip\" or {\"header\": NAME}", Some(v));
                None
            }
        }
    }

    fn concurrency(&mut self, v: &Value, classes: &[Class]) -> Option<Concurrency> {
        let obj = self.object("concurrency", v, "concurrency")?;
        let max = match obj.get("max_in_flight") {
            Some(m) => self.integer("concurrency.max_in_flight", m, 1, MAX_IN_FLIGHT),
            None => {
                self.error("concurrency.max_in_flight", "required", None);
                None
            }
        };
        let retry_after_s = match obj.get("retry_after_s") {
            None => Some(DEFAULT_SHED_RETRY_AFTER_S),
            Some(r) => self.integer("concurrency.retry_after_s", r, 1, 3600),
        };
        let adaptive = match (obj.get("adaptive"), max) {
            (None, _) => Some(None),
            (Some(a), Some(max)) => self.adaptive(a, max as u32, classes).map(Some),
            (Some(a), None) => {
                // Still report its own problems.
                let _ = self.adaptive(a, MAX_IN_FLIGHT as u32, classes);
                None
            }
        };
        let (max, retry_after_s, adaptive) = (max?, retry_after_s?, adaptive?);
        let class_max_in_flight = classes
            .iter()
            // in_flight + 1 <= (1 - reserve) x max; the epsilon absorbs 0.8 x 200 = 159.99999.
            .map(|c| ((1.0 - c.reserve) * max as f64 + 1e-9).floor() as u32)
            .collect();
        Some(Concurrency { max_in_flight: max as u32, class_max_in_flight, retry_after_s, adaptive })
    }

    fn adaptive(&mut self, v: &Value, ceiling: u32, classes: &[Class]) -> Option<Adaptive> {
        let obj = self.object("concurrency.adaptive", v, "concurrency.adaptive")?;
        let mut params = AdaptiveParams::with_ceiling(ceiling);
        let floor = match obj.get("floor") {
            None => Some(params.floor),
            Some(f) => self.integer("concurrency.adaptive.floor", f, 1, u64::from(ceiling)).map(|f| f as u32),
        };
        let tolerance = match obj.get("tolerance") {
            None => Some(params.tolerance),
            Some(t) => self.number("concurrency.adaptive.tolerance", t).and_then(|n| {
                if (MIN_TOLERANCE..=MAX_TOLERANCE).contains(&n) {
                    Some(n)
                } else {
                    // A literal: formatting the floats would bring float printing into the module.
                    self.error("concurrency.adaptive.tolerance", "must be between 1.05 and 4", Some(t));
                    None
                }
            }),
        };
        let window_ms = match obj.get("window_ms") {
            None => Some(params.window_ms),
            Some(w) => self.integer("concurrency.adaptive.window_ms", w, MIN_WINDOW_MS, MAX_WINDOW_MS),
        };
        params.floor = floor?;
        params.tolerance = tolerance?;
        params.window_ms = window_ms?;
        // The band under the cut: growth stops before a cut would start.
        params.grow_tolerance = params.grow_tolerance.min(params.tolerance);
        Some(Adaptive { params, reserves: classes.iter().map(|c| c.reserve).collect() })
    }
}

/// A limit's validated fields, before compilation.
struct LimitSpec {
    name: String,
    key: KeySource,
    tokens_per_second: f64,
    burst: u64,
    matcher: Option<Matcher>,
    max_keys: u32,
}

/// `limits[].fleet`, validated.
struct FleetLink {
    cluster: String,
    domain: String,
    descriptor: Vec<(String, String)>,
    local_share: f64,
    timeout_ms: u64,
    refill_ms: u64,
    max_lease: u64,
}

fn compile_limit(spec: LimitSpec, fleet: Option<FleetLink>, classes: &[Class]) -> Limit {
    let LimitSpec { name, key, tokens_per_second, burst, matcher, max_keys } = spec;
    let window_s = (burst as f64 / tokens_per_second).ceil().max(1.0) as u64;
    let policy_header = format!("\"{name}\";q={burst};w={window_s}");
    // A fleet limit's own bucket is its local fallback: `local_share` of the fleet limit.
    let (bucket_rate, bucket_burst) = match &fleet {
        Some(f) => (tokens_per_second * f.local_share, ((burst as f64 * f.local_share).floor() as u64).max(1)),
        None => (tokens_per_second, burst),
    };
    let (ns_per_token, class_tolerance_ns) = bucket_arithmetic(bucket_rate, bucket_burst, classes);
    let state_id = match &fleet {
        Some(_) => format!("{name}@{ns_per_token}x{bucket_burst}/fleet"),
        None => format!("{name}@{ns_per_token}x{burst}"),
    };
    let fleet = fleet.map(|f| compile_fleet(f, tokens_per_second, burst, classes));
    Limit {
        name,
        key,
        tokens_per_second,
        burst,
        matcher,
        max_keys,
        ns_per_token,
        class_tolerance_ns,
        window_s,
        policy_header,
        state_id,
        fleet,
    }
}

fn compile_fleet(f: FleetLink, tokens_per_second: f64, burst: u64, classes: &[Class]) -> Fleet {
    const NS_PER_MS: u64 = 1_000_000;
    let max_hits = u32::try_from(f.max_lease).unwrap_or(u32::MAX);
    let lease = LeaseParams {
        capacity: burst,
        window_ns: ((burst as f64 / tokens_per_second) * NS_PER_S as f64).ceil().max(1.0) as u64,
        timeout_ns: f.timeout_ms * NS_PER_MS,
        refill_period_ns: f.refill_ms * NS_PER_MS,
        // Small enough not to strand tokens at an idle Envoy, large enough that a cold start
        // does not call once per request.
        min_hits: u32::try_from((burst / 100).clamp(1, f.max_lease)).unwrap_or(1),
        max_hits,
        initial_hits: {
            let per_refill =
                burst as f64 * f.local_share * f.refill_ms as f64 / 1e3 / (burst as f64 / tokens_per_second);
            u32::try_from((per_refill.ceil() as u64).clamp(1, f.max_lease)).unwrap_or(1)
        },
        probe_period_ns: FLEET_PROBE_PERIOD_MS * NS_PER_MS,
    };
    let class_reserve_tokens = classes.iter().map(|c| (c.reserve * burst as f64 + 1e-9).floor() as u64).collect();
    Fleet {
        cluster: f.cluster,
        domain: f.domain,
        descriptor: f.descriptor,
        local_share: f.local_share,
        lease,
        class_reserve_tokens,
    }
}

/// One token's time, and per class how far ahead of now a take may run the bucket.
fn bucket_arithmetic(tokens_per_second: f64, burst: u64, classes: &[Class]) -> (u64, Vec<u64>) {
    let ns_per_token = ((NS_PER_S as f64 / tokens_per_second).round() as u64).max(1);
    let class_tolerance_ns = classes
        .iter()
        .map(|c| {
            // The bucket admits iff, after the take, reserve x burst tokens remain: the arrival
            // time may then run at most (1 - reserve) x burst tokens of time ahead of now.
            let tokens = (1.0 - c.reserve) * burst as f64;
            (tokens * ns_per_token as f64 + 1e-6).floor() as u64
        })
        .collect();
    (ns_per_token, class_tolerance_ns)
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
