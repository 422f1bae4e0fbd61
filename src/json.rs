//! A small JSON reader (RFC 8259) for the plugin configuration, in place of serde_json: the
//! module only reads one document and echoes parts of it in error messages, and serde_json
//! brought float formatting and parsing tables with it.
//!
//! - It accepts exactly the documents serde_json accepts (but for numbers within a few units
//!   in the last place of `f64::MAX`, see [`Number`]), and reports a syntax error as
//!   serde_json does: the same kind (`expected value`, `trailing comma`, ...) at the same
//!   1-based line and byte column (`json_tests` checks both against serde_json). The one
//!   exception is the kind for nesting deeper than [`MAX_DEPTH`], which says so.
//! - A number keeps its source text, so a message echoes what the user wrote (`got 1e10`,
//!   `got 1.50`), and is converted to `f64` without core's float parser (see [`Number`]).
//! - An object keeps every entry, ordered by key (byte order, as serde_json's map, so rendered
//!   values read as before); a repeated key keeps each occurrence, in document order, and
//!   [`Map::get`] sees the last, as serde_json does. The configuration refuses repeated keys.
//! - Rendering ([`Value::to_json`]) is compact JSON with serde_json's string escapes.
//!
//! Nothing here formats or parses a float, and nothing panics (every index is in range by
//! construction).

/// Most lists and objects nested in one another, as serde_json allows (its limit of 128
/// refuses the 128th).
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

/// A JSON number: its source text and its value.
///
/// The value is exact (correctly rounded) when the number has at most 15 significant digits
/// (any integer below 2^53) and a decimal exponent within +-22, i.e. every value a
/// configuration plausibly holds: one multiplication or division by an exactly representable
/// power of ten. Otherwise it is within a few units in the last place (relative error below
/// 1e-15; digits beyond the 19th are dropped), which configuration values never need to beat;
/// subnormal results are coarser still. A number too large for an `f64` is an error
/// (`number out of range`), as in serde_json; one within a few units in the last place of
/// `f64::MAX` may land on the other side of that line than serde_json's own approximation.
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

/// An object's entries, ordered by key; repeated keys are kept (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Map {
    entries: Vec<(String, Value)>,
}

impl Map {
    pub fn new() -> Self {
        Map::default()
    }

    fn from_entries(entries: Vec<(String, Value)>) -> Self {
        Map { entries: sort_by_key(entries) }
    }

    /// The value of `key`; of its last occurrence if it is repeated.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _)| k == key)
    }

    /// Every key in order, a repeated key as often as it occurs (adjacent).
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

/// A stable merge sort by key: repeated keys stay in document order, so the last one written
/// is the last. (`slice::sort_by` would do, but brings ~7 KB of code into the module.)
fn sort_by_key(mut entries: Vec<(String, Value)>) -> Vec<(String, Value)> {
    if entries.len() < 2 {
        return entries;
    }
    let right = sort_by_key(entries.split_off(entries.len() / 2));
    let left = sort_by_key(entries);
    let mut out = Vec::with_capacity(left.len() + right.len());
    let (mut left, mut right) = (left.into_iter().peekable(), right.into_iter().peekable());
    while let (Some(l), Some(r)) = (left.peek(), right.peek()) {
        let next = if r.0 < l.0 { right.next() } else { left.next() };
        out.extend(next);
    }
    out.extend(left);
    out.extend(right);
    out
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

    /// Compact JSON: no whitespace, object entries in [`Map`] order, numbers as written,
    /// strings escaped as serde_json does.
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
                out.push('{');
                for (i, (key, value)) in map.iter().enumerate() {
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

/// What is wrong with a document; [`ErrorKind::as_str`] is serde_json's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    EofWhileParsingList,
    EofWhileParsingObject,
    EofWhileParsingString,
    EofWhileParsingValue,
    ExpectedColon,
    ExpectedListCommaOrEnd,
    ExpectedObjectCommaOrEnd,
    ExpectedIdent,
    ExpectedValue,
    InvalidEscape,
    InvalidNumber,
    NumberOutOfRange,
    InvalidUnicodeCodePoint,
    ControlCharacterInString,
    KeyMustBeAString,
    LoneLeadingSurrogateInHexEscape,
    TrailingComma,
    TrailingCharacters,
    UnexpectedEndOfHexEscape,
    TooDeep,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::EofWhileParsingList => "EOF while parsing a list",
            ErrorKind::EofWhileParsingObject => "EOF while parsing an object",
            ErrorKind::EofWhileParsingString => "EOF while parsing a string",
            ErrorKind::EofWhileParsingValue => "EOF while parsing a value",
            ErrorKind::ExpectedColon => "expected `:`",
            ErrorKind::ExpectedListCommaOrEnd => "expected `,` or `]`",
            ErrorKind::ExpectedObjectCommaOrEnd => "expected `,` or `}`",
            ErrorKind::ExpectedIdent => "expected ident",
            ErrorKind::ExpectedValue => "expected value",
            ErrorKind::InvalidEscape => "invalid escape",
            ErrorKind::InvalidNumber => "invalid number",
            ErrorKind::NumberOutOfRange => "number out of range",
            ErrorKind::InvalidUnicodeCodePoint => "invalid unicode code point",
            ErrorKind::ControlCharacterInString => "control character (\\u0000-\\u001F) found while parsing a string",
            ErrorKind::KeyMustBeAString => "key must be a string",
            ErrorKind::LoneLeadingSurrogateInHexEscape => "lone leading surrogate in hex escape",
            ErrorKind::TrailingComma => "trailing comma",
            ErrorKind::TrailingCharacters => "trailing characters",
            ErrorKind::UnexpectedEndOfHexEscape => "unexpected end of hex escape",
            ErrorKind::TooDeep => "nested too deeply (more than 127 lists and objects)",
        }
    }
}

/// A syntax error: its kind, and where, as serde_json counts: `line` from 1, `column` in
/// bytes from the start of the line, i.e. the 1-based column of the offending byte (0 at the
/// start of a line, e.g. for an empty document).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub line: usize,
    pub column: usize,
}

/// Reads one JSON document; whitespace may surround it, nothing else may follow it.
pub fn parse(text: &str) -> Result<Value, Error> {
    let mut reader = Reader { text, bytes: text.as_bytes(), pos: 0 };
    let value = reader.value(0)?;
    match reader.whitespace() {
        Some(_) => Err(reader.peek_error(ErrorKind::TrailingCharacters)),
        None => Ok(value),
    }
}

struct Reader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    /// Index of the next byte to read.
    pos: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn error_at(&self, index: usize, kind: ErrorKind) -> Error {
        let before = self.bytes.get(..index).unwrap_or(self.bytes);
        let start_of_line = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
        Error { kind, line, column: index - start_of_line }
    }

    /// An error at the byte just read (serde_json's `error`).
    fn error(&self, kind: ErrorKind) -> Error {
        self.error_at(self.pos, kind)
    }

    /// An error at the byte about to be read (serde_json's `peek_error`).
    fn peek_error(&self, kind: ErrorKind) -> Error {
        self.error_at(self.bytes.len().min(self.pos + 1), kind)
    }

    /// Skips whitespace; the next byte.
    fn whitespace(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
        self.peek()
    }

    /// A value inside `depth` lists and objects.
    fn value(&mut self, depth: usize) -> Result<Value, Error> {
        match self.whitespace() {
            None => Err(self.peek_error(ErrorKind::EofWhileParsingValue)),
            Some(b'n') => self.literal(b"null").map(|()| Value::Null),
            Some(b't') => self.literal(b"true").map(|()| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Value::Bool(false)),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            Some(b'"') => {
                self.pos += 1;
                self.string().map(Value::String)
            }
            Some(b'[' | b'{') if depth >= MAX_DEPTH => Err(self.peek_error(ErrorKind::TooDeep)),
            Some(b'[') => {
                self.pos += 1;
                self.array(depth + 1)
            }
            Some(b'{') => {
                self.pos += 1;
                self.object(depth + 1)
            }
            Some(_) => Err(self.peek_error(ErrorKind::ExpectedValue)),
        }
    }

    /// `null`, `true` or `false`, whose first byte has been peeked.
    fn literal(&mut self, word: &[u8]) -> Result<(), Error> {
        self.pos += 1;
        for &expected in word.iter().skip(1) {
            let Some(b) = self.peek() else {
                return Err(self.error(ErrorKind::EofWhileParsingValue));
            };
            self.pos += 1;
            if b != expected {
                return Err(self.error(ErrorKind::ExpectedIdent));
            }
        }
        Ok(())
    }

    /// After `[`.
    fn array(&mut self, depth: usize) -> Result<Value, Error> {
        let mut items = Vec::new();
        loop {
            match self.whitespace() {
                None => return Err(self.peek_error(ErrorKind::EofWhileParsingList)),
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                Some(_) if items.is_empty() => {}
                Some(b',') => {
                    self.pos += 1;
                    match self.whitespace() {
                        Some(b']') => return Err(self.peek_error(ErrorKind::TrailingComma)),
                        Some(_) => {}
                        None => return Err(self.peek_error(ErrorKind::EofWhileParsingValue)),
                    }
                }
                Some(_) => return Err(self.peek_error(ErrorKind::ExpectedListCommaOrEnd)),
            }
            items.push(self.value(depth)?);
        }
    }

    /// After `{`.
    fn object(&mut self, depth: usize) -> Result<Value, Error> {
        let mut entries = Vec::new();
        loop {
            match self.whitespace() {
                None => return Err(self.peek_error(ErrorKind::EofWhileParsingObject)),
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(Map::from_entries(entries)));
                }
                Some(b'"') if entries.is_empty() => {}
                Some(_) if entries.is_empty() => return Err(self.peek_error(ErrorKind::KeyMustBeAString)),
                Some(b',') => {
                    self.pos += 1;
                    match self.whitespace() {
                        Some(b'"') => {}
                        Some(b'}') => return Err(self.peek_error(ErrorKind::TrailingComma)),
                        Some(_) => return Err(self.peek_error(ErrorKind::KeyMustBeAString)),
                        None => return Err(self.peek_error(ErrorKind::EofWhileParsingValue)),
                    }
                }
                Some(_) => return Err(self.peek_error(ErrorKind::ExpectedObjectCommaOrEnd)),
            }
            self.pos += 1; // the key's opening quote
            let key = self.string()?;
            match self.whitespace() {
                Some(b':') => self.pos += 1,
                Some(_) => return Err(self.peek_error(ErrorKind::ExpectedColon)),
                None => return Err(self.peek_error(ErrorKind::EofWhileParsingObject)),
            }
            let value = self.value(depth)?;
            entries.push((key, value));
        }
    }

    /// After the opening quote.
    fn string(&mut self) -> Result<String, Error> {
        let mut out = Vec::new();
        let mut start = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error(ErrorKind::EofWhileParsingString));
            };
            match b {
                b'"' | b'\\' => {
                    out.extend_from_slice(self.bytes.get(start..self.pos).unwrap_or_default());
                    self.pos += 1;
                    if b == b'"' {
                        break;
                    }
                    self.escape(&mut out)?;
                    start = self.pos;
                }
                0x00..=0x1f => {
                    self.pos += 1;
                    return Err(self.error(ErrorKind::ControlCharacterInString));
                }
                _ => self.pos += 1,
            }
        }
        // Valid: the text was, and escapes add whole characters.
        String::from_utf8(out).map_err(|_| self.error(ErrorKind::InvalidUnicodeCodePoint))
    }

    /// After a backslash in a string.
    fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(c) = self.peek() else {
            return Err(self.error(ErrorKind::EofWhileParsingString));
        };
        self.pos += 1;
        let byte = match c {
            b'"' | b'\\' | b'/' => c,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => return self.unicode_escape(out),
            _ => return Err(self.error(ErrorKind::InvalidEscape)),
        };
        out.push(byte);
        Ok(())
    }

    /// After `\u`: four hex digits, and a second `\uXXXX` if they are a leading surrogate.
    fn unicode_escape(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let first = self.hex4()?;
        let code = match first {
            0xdc00..=0xdfff => return Err(self.error(ErrorKind::LoneLeadingSurrogateInHexEscape)),
            0xd800..=0xdbff => {
                for expected in [b'\\', b'u'] {
                    let Some(b) = self.peek() else {
                        return Err(self.error(ErrorKind::EofWhileParsingString));
                    };
                    self.pos += 1;
                    if b != expected {
                        return Err(self.error(ErrorKind::UnexpectedEndOfHexEscape));
                    }
                }
                let second = self.hex4()?;
                if !(0xdc00..=0xdfff).contains(&second) {
                    return Err(self.error(ErrorKind::LoneLeadingSurrogateInHexEscape));
                }
                0x1_0000 + (((first - 0xd800) << 10) | (second - 0xdc00))
            }
            _ => first,
        };
        let c = char::from_u32(code).ok_or_else(|| self.error(ErrorKind::InvalidUnicodeCodePoint))?;
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, Error> {
        let Some(digits) = self.bytes.get(self.pos..self.pos + 4) else {
            self.pos = self.bytes.len();
            return Err(self.error(ErrorKind::EofWhileParsingString));
        };
        self.pos += 4;
        let mut n = 0;
        for &d in digits {
            let Some(v) = char::from(d).to_digit(16) else {
                return Err(self.error(ErrorKind::InvalidEscape));
            };
            n = (n << 4) | v;
        }
        Ok(n)
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, at its first byte.
    fn number(&mut self) -> Result<Number, Error> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        let mut decimal = Decimal::default();
        match self.peek() {
            None => return Err(self.error(ErrorKind::EofWhileParsingValue)),
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(self.peek_error(ErrorKind::InvalidNumber));
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(d @ b'0'..=b'9') = self.peek() {
                    self.pos += 1;
                    decimal.integer_digit(d - b'0');
                }
            }
            Some(_) => {
                self.pos += 1;
                return Err(self.error(ErrorKind::InvalidNumber));
            }
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let first = self.pos;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.pos += 1;
                decimal.fraction_digit(d - b'0');
            }
            if self.pos == first {
                let kind =
                    if self.peek().is_some() { ErrorKind::InvalidNumber } else { ErrorKind::EofWhileParsingValue };
                return Err(self.peek_error(kind));
            }
        }
        let mut value = None;
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            let negative_exponent = match self.peek() {
                Some(b'+') => {
                    self.pos += 1;
                    false
                }
                Some(b'-') => {
                    self.pos += 1;
                    true
                }
                _ => false,
            };
            let mut exponent: i32 = match self.peek() {
                None => return Err(self.error(ErrorKind::EofWhileParsingValue)),
                Some(d @ b'0'..=b'9') => {
                    self.pos += 1;
                    i32::from(d - b'0')
                }
                Some(_) => {
                    self.pos += 1;
                    return Err(self.error(ErrorKind::InvalidNumber));
                }
            };
            while let Some(d @ b'0'..=b'9') = self.peek() {
                self.pos += 1;
                if value.is_some() {
                    continue;
                }
                match exponent.checked_mul(10).and_then(|e| e.checked_add(i32::from(d - b'0'))) {
                    Some(e) => exponent = e,
                    // An exponent beyond i32 is out of range, or makes zero (as in serde_json).
                    None if decimal.mantissa != 0 && !negative_exponent => {
                        return Err(self.error(ErrorKind::NumberOutOfRange));
                    }
                    None => value = Some(0.0),
                }
            }
            let exponent = i64::from(exponent);
            decimal.exponent += if negative_exponent { -exponent } else { exponent };
        }
        let magnitude = value.unwrap_or_else(|| decimal.to_f64());
        if magnitude.is_infinite() {
            return Err(self.error(ErrorKind::NumberOutOfRange));
        }
        Ok(Number {
            text: self.text.get(start..self.pos).unwrap_or_default().to_string(),
            value: if negative { -magnitude } else { magnitude },
        })
    }
}

/// A decimal number as `mantissa x 10^exponent`, its first 19 significant digits kept.
#[derive(Default)]
struct Decimal {
    mantissa: u64,
    digits: u32,
    exponent: i64,
}

impl Decimal {
    /// 19 digits always fit a u64.
    const MAX_DIGITS: u32 = 19;

    fn integer_digit(&mut self, d: u8) {
        if self.digits < Self::MAX_DIGITS {
            self.push(d);
        } else {
            self.exponent += 1;
        }
    }

    fn fraction_digit(&mut self, d: u8) {
        if self.digits < Self::MAX_DIGITS {
            self.push(d);
            self.exponent -= 1;
        }
    }

    fn push(&mut self, d: u8) {
        self.mantissa = self.mantissa * 10 + u64::from(d);
        // Leading zeros are not significant.
        if self.mantissa != 0 {
            self.digits += 1;
        }
    }

    /// See [`Number`] for the precision.
    fn to_f64(&self) -> f64 {
        // Exact powers of ten up to 1e22; 1e23 to 1e31 are correctly rounded.
        const POW10: [f64; 32] = [
            1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
            1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31,
        ];
        // 1e32^k, correctly rounded.
        const POW10_32: [f64; 10] = [1e0, 1e32, 1e64, 1e96, 1e128, 1e160, 1e192, 1e224, 1e256, 1e288];
        if self.mantissa == 0 {
            return 0.0;
        }
        let f = self.mantissa as f64;
        let e = usize::try_from(self.exponent.unsigned_abs()).unwrap_or(usize::MAX);
        if self.exponent >= 0 {
            // mantissa >= 1: 1e309 and up are out of range.
            if e > 308 {
                return f64::INFINITY;
            }
            f * POW10[e % 32] * POW10_32[e / 32]
        } else {
            // mantissa < 1e19: 1e-344 and down round to zero.
            let (f, e) = match e {
                0..=308 => (f, e),
                309..=343 => (f / 1e308, e - 308),
                _ => return 0.0,
            };
            f / POW10[e % 32] / POW10_32[e / 32]
        }
    }
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
