//! `config_structured`: JSON documents built from the configuration's own field names and
//! plausible values, so the fuzzer reaches the deep checks (limits, fleet links, header
//! matches) that random bytes seldom pass the JSON reader to reach. Same assertions as
//! `config`.

use arbitrary::{Arbitrary, Unstructured};
use surgeguard::config::REFERENCE;

/// Deep enough for `limits[].fleet.descriptor[]`, bounded so a document stays small.
const MAX_DEPTH: u32 = 6;

const STRINGS: &[&str] = &[
    "enforce",
    "shadow",
    "global",
    "client_ip",
    "critical",
    "standard",
    "default",
    "x-api-key",
    "user-agent",
    "/checkout",
    "/",
    "GET",
    "POST",
    "bot",
    "",
    "a.b",
    "Ünï",
    "/a?b",
    "rls",
    "x\ny",
];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "0.5",
    "1.0",
    "2",
    "10",
    "64",
    "65",
    "1e3",
    "1e9",
    "1e10",
    "1e-300",
    "1e308",
    "-0",
    "0.3",
    "1000000000",
    "1000001",
    "3600",
    "3601",
    "5000",
    "18446744073709551616",
    "0.0000001",
];

#[derive(Debug, Arbitrary)]
enum Node {
    /// An object of known field names (and now and then an unknown one).
    Object(Vec<(u8, Node)>),
    List(Vec<Node>),
    Str(u8),
    Num(u8),
    Bool(bool),
    Null,
    RawStr(String),
}

/// Every field name the configuration knows, once.
fn field_names() -> Vec<&'static str> {
    let mut names: Vec<&str> = REFERENCE.iter().map(|d| d.path.rsplit('.').next().unwrap_or(d.path)).collect();
    for n in &mut names {
        *n = n.trim_end_matches("[]");
    }
    names.sort_unstable();
    names.dedup();
    names
}

fn quote(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn render(node: &Node, names: &[&'static str], depth: u32, out: &mut String) {
    let pick = |list: &[&'static str], i: u8| list[usize::from(i) % list.len()];
    match node {
        Node::Object(fields) if depth < MAX_DEPTH => {
            out.push('{');
            for (i, (name, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // One in 32 names is not a field: the parser must say "unknown field".
                let name = if *name >= 248 { "tokens_per_secnd" } else { pick(names, *name) };
                quote(name, out);
                out.push(':');
                render(value, names, depth + 1, out);
            }
            out.push('}');
        }
        Node::List(items) if depth < MAX_DEPTH => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                render(item, names, depth + 1, out);
            }
            out.push(']');
        }
        Node::Object(_) | Node::List(_) | Node::Null => out.push_str("null"),
        Node::Str(i) => quote(pick(STRINGS, *i), out),
        Node::Num(i) => out.push_str(pick(NUMBERS, *i)),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::RawStr(s) => quote(s, out),
    }
}

pub fn check(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(root) = Node::arbitrary(&mut u) else { return };
    let mut json = String::new();
    render(&root, &field_names(), 0, &mut json);
    crate::config::check_bytes(json.as_bytes());
}
