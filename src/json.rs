//! The plugin configuration's JSON: read by serde_json into a tree that keeps what the
//! configuration's checks need and `serde_json::Value` drops.
//!
//! - Syntax is serde_json's: the same documents are accepted and the same errors reported
//!   (`expected value at line 1 column 10`), at most [`MAX_DEPTH`] lists and objects deep.
//! - An object keeps every entry in document order, a repeated key each time it is given.
//!   [`Map::get`] sees the last occurrence, as serde_json does. The configuration refuses
//!   repeated keys.
//! - A number keeps its text as written (`1e3`, `0.50`, `-0`), so a message echoes what the
//!   user wrote; its value is serde_json's.
//! - Rendering ([`Value::to_json`]) is compact JSON as serde_json renders its `Value`: object
//!   entries ordered by key, serde_json's string escapes; numbers as written.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// Most lists and objects nested in one another: serde_json's recursion limit (128) refuses
/// the 128th, which also bounds the stack the tree's visitor uses.
pub const MAX_DEPTH: usize = 127;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

/// A JSON number: its text as written and its value (serde_json's).
#[derive(Debug, Clone, PartialEq)]
pub struct Number {
    text: String,
    value: f64,
}

impl Number {
    pub fn as_f64(&self) -> f64 {
        self.value
    }

    /// The number as written in the document.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// An object's entries in document order; repeated keys are kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Map {
    entries: Vec<(String, Value)>,
}

impl Map {
    pub fn new() -> Self {
        Map::default()
    }

    /// The value of `key`; of its last occurrence if it is repeated.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Every key in document order, a repeated key as often as it occurs.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// Every entry in order, repeats included.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Value {
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n.value),
            _ => None,
        }
    }

    /// Compact JSON: no whitespace, object entries ordered by key (repeats in document
    /// order), numbers as written, strings escaped as serde_json does.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    pub fn write_json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(true) => out.push_str("true"),
            Value::Bool(false) => out.push_str("false"),
            Value::Number(n) => out.push_str(&n.text),
            Value::String(s) => write_string(s, out),
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Value::Object(map) => {
                // Key order, as serde_json's `Value` renders, so echoed objects read as before.
                let mut entries: Vec<&(String, Value)> = map.entries.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                out.push('{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write_json(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let b = c as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A syntax error, as serde_json reports it: what (`expected value`), on which line (from 1)
/// and at which byte column of it (from 1; 0 at the start of a line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at line {} column {}", self.message, self.line, self.column)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        // serde_json only offers its message with the position appended.
        let full = e.to_string();
        let message = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full);
        // serde_json's words for its recursion limit say nothing about the document.
        let message = match message {
            "recursion limit exceeded" => "nested too deeply (more than 127 lists and objects)",
            other => other,
        };
        Error { message: message.to_string(), line, column }
    }
}

/// Reads one JSON document; whitespace may surround it, nothing else may follow it.
pub fn parse(text: &str) -> Result<Value, Error> {
    let mut numbers = NumberTexts { rest: text };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = Tree { numbers: &mut numbers }.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The text of each number in a document, in document order.
///
/// serde_json hands a visitor a number's value, not its text (its `arbitrary_precision`
/// feature keeps the digits but rewrites exponents: `1e3` becomes `1e+3`, `1E3` too). When
/// serde_json visits its n-th number it has accepted the document up to and including it, so
/// the n-th number token outside strings in that valid prefix is its text.
struct NumberTexts<'t> {
    /// The document after the last number taken.
    rest: &'t str,
}

impl<'t> NumberTexts<'t> {
    fn next(&mut self) -> Option<&'t str> {
        let bytes = self.rest.as_bytes();
        let mut in_string = false;
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\\' if in_string => i += 1, // the escaped byte cannot end the string
                b'"' => in_string = !in_string,
                b'-' | b'0'..=b'9' if !in_string => {
                    let len = bytes
                        .get(i..)?
                        .iter()
                        .take_while(|c| matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .count();
                    let text = self.rest.get(i..i + len)?;
                    self.rest = self.rest.get(i + len..)?;
                    return Some(text);
                }
                _ => {}
            }
            i += 1;
        }
        None
    }
}

/// Builds a [`Value`] from what serde_json visits, numbers' texts taken from `numbers`.
struct Tree<'n, 't> {
    numbers: &'n mut NumberTexts<'t>,
}

impl<'de> DeserializeSeed<'de> for Tree<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Tree<'_, '_> {
    fn number<E: de::Error>(self, value: f64) -> Result<Value, E> {
        // Unreachable for a document serde_json accepts (see `NumberTexts`).
        let text = self.numbers.next().ok_or_else(|| E::custom("number text not found"))?;
        Ok(Value::Number(Number { text: text.to_string(), value }))
    }
}

impl<'de> Visitor<'de> for Tree<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        self.number(n as f64)
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        self.number(n as f64)
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        self.number(n)
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Tree { numbers: &mut *self.numbers })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Tree { numbers: &mut *self.numbers })?;
            entries.push((key, value));
        }
        Ok(Value::Object(Map { entries }))
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
