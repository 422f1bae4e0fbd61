//! `rls_response`: the rate limit service's messages.
//!
//! - arbitrary bytes as a `RateLimitResponse` (and as a gRPC reply) never panic;
//! - a response encoded here from arbitrary fields decodes to exactly those fields;
//! - `encode_request` from arbitrary fields is valid protobuf that decodes (with the reader
//!   below, independent of the crate's) to the same domain, entries and hits.

use arbitrary::{Arbitrary, Unstructured};
use surgeguard::fleet::answer_from;
use surgeguard::rls::{decode_response, encode_request, Code, DescriptorStatus};

pub fn check(data: &[u8]) {
    let _ = decode_response(data);
    let _ = answer_from(0, data);
    let mut u = Unstructured::new(data);
    if let Ok(resp) = ResponseFields::arbitrary(&mut u) {
        check_response_round_trip(&resp);
    }
    if let Ok(req) = RequestFields::arbitrary(&mut u) {
        check_request_round_trip(&req);
    }
}

#[derive(Debug, Arbitrary)]
struct StatusFields {
    code: u8,
    limit: Option<(u32, u8)>,
    remaining: u64,
    reset: Option<(i64, i32)>,
    /// An unknown field of each wire type, which must be skipped.
    unknown: Option<(u8, u64)>,
}

#[derive(Debug, Arbitrary)]
struct ResponseFields {
    code: u8,
    statuses: Vec<StatusFields>,
}

#[derive(Debug, Arbitrary)]
struct RequestFields {
    domain: String,
    entries: Vec<(String, String)>,
    hits: u32,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_field_varint(out: &mut Vec<u8>, field: u64, v: u64) {
    put_varint(out, field << 3);
    put_varint(out, v);
}

fn put_field_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn code(v: u64) -> Code {
    match v {
        1 => Code::Ok,
        2 => Code::OverLimit,
        _ => Code::Unknown,
    }
}

fn check_response_round_trip(r: &ResponseFields) {
    let mut bytes = Vec::new();
    put_field_varint(&mut bytes, 1, u64::from(r.code));
    let mut expected = Vec::new();
    for s in &r.statuses {
        let mut status = Vec::new();
        put_field_varint(&mut status, 1, u64::from(s.code));
        if let Some((per_unit, unit)) = s.limit {
            let mut limit = Vec::new();
            put_field_varint(&mut limit, 1, u64::from(per_unit));
            put_field_varint(&mut limit, 2, u64::from(unit));
            put_field_bytes(&mut status, 2, &limit);
        }
        put_field_varint(&mut status, 3, s.remaining);
        if let Some((seconds, nanos)) = s.reset {
            let mut duration = Vec::new();
            put_field_varint(&mut duration, 1, seconds as u64);
            // int32 is sign-extended to ten bytes on the wire.
            put_field_varint(&mut duration, 2, i64::from(nanos) as u64);
            put_field_bytes(&mut status, 4, &duration);
        }
        if let Some((kind, v)) = s.unknown {
            let field = 5 + u64::from(kind % 8);
            match kind % 4 {
                0 => put_field_varint(&mut status, field, v),
                1 => {
                    put_varint(&mut status, (field << 3) | 1);
                    status.extend_from_slice(&v.to_le_bytes());
                }
                2 => put_field_bytes(&mut status, field, &v.to_le_bytes()),
                _ => {
                    put_varint(&mut status, (field << 3) | 5);
                    status.extend_from_slice(&(v as u32).to_le_bytes());
                }
            }
        }
        put_field_bytes(&mut bytes, 2, &status);
        let unit_s = s.limit.and_then(|(_, unit)| match unit {
            1 => Some(1),
            2 => Some(60),
            3 => Some(3_600),
            4 => Some(86_400),
            5 => Some(30 * 86_400),
            6 => Some(365 * 86_400),
            _ => None,
        });
        let until_reset_ns = s.reset.map(|(seconds, nanos)| {
            let ns = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
            u64::try_from(ns.max(0)).unwrap_or(u64::MAX)
        });
        expected.push(DescriptorStatus {
            code: code(u64::from(s.code)),
            requests_per_unit: s.limit.map(|(per_unit, _)| per_unit),
            unit_s,
            limit_remaining: u32::try_from(s.remaining).unwrap_or(u32::MAX),
            until_reset_ns,
        });
    }
    match decode_response(&bytes) {
        Ok(decoded) => {
            assert_eq!(decoded.overall_code, code(u64::from(r.code)));
            assert_eq!(decoded.statuses, expected);
        }
        Err(e) => panic!("a well-formed response is refused ({e:?}): {bytes:?}"),
    }
}

/// One field: its number, and its payload (type 2) or its varint (type 0).
type Field<'a> = (u64, Result<&'a [u8], u64>);

/// A minimal protobuf reader for `RateLimitRequest`, written apart from the crate's decoder.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn field(&mut self) -> Option<Field<'a>> {
        let tag = self.varint()?;
        match tag & 7 {
            0 => Some((tag >> 3, Err(self.varint()?))),
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let (payload, rest) = (self.0.get(..len)?, self.0.get(len..)?);
                self.0 = rest;
                Some((tag >> 3, Ok(payload)))
            }
            _ => None,
        }
    }

    /// Every field to the end; `None` if anything is malformed.
    fn fields(mut self) -> Option<Vec<Field<'a>>> {
        let mut out = Vec::new();
        while !self.0.is_empty() {
            out.push(self.field()?);
        }
        Some(out)
    }
}

fn utf8(b: Result<&[u8], u64>) -> String {
    match b {
        Ok(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => s.to_string(),
            Err(_) => panic!("a string field is not UTF-8"),
        },
        Err(_) => panic!("a string field sent as a varint"),
    }
}

fn check_request_round_trip(r: &RequestFields) {
    let entries: Vec<(&str, &str)> = r.entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let bytes = encode_request(&r.domain, &entries, r.hits);
    let Some(fields) = Reader(&bytes).fields() else { panic!("malformed request: {bytes:?}") };
    let (mut domain, mut decoded, mut hits, mut descriptors) = (None, Vec::new(), 0u64, 0);
    for (number, value) in fields {
        match number {
            1 => domain = Some(utf8(value)),
            2 => {
                descriptors += 1;
                let Ok(descriptor) = value else { panic!("descriptor sent as a varint") };
                let Some(list) = Reader(descriptor).fields() else { panic!("malformed descriptor") };
                for (n, entry) in list {
                    assert_eq!(n, 1, "a descriptor holds entries only");
                    let Ok(entry) = entry else { panic!("entry sent as a varint") };
                    let Some(kv) = Reader(entry).fields() else { panic!("malformed entry") };
                    let (mut key, mut value) = (String::new(), String::new());
                    for (n, s) in kv {
                        match n {
                            1 => key = utf8(s),
                            2 => value = utf8(s),
                            _ => panic!("unexpected entry field {n}"),
                        }
                    }
                    decoded.push((key, value));
                }
            }
            3 => {
                let Err(v) = value else { panic!("hits_addend sent as bytes") };
                hits = v;
            }
            n => panic!("unexpected request field {n}"),
        }
    }
    assert_eq!(descriptors, 1, "one descriptor per lease call");
    assert_eq!(domain.as_deref(), Some(r.domain.as_str()));
    assert_eq!(decoded, r.entries);
    assert_eq!(hits, u64::from(r.hits));
}
