//! The rate limit service's two messages (`envoy.service.ratelimit.v3`, `ShouldRateLimit`),
//! encoded and decoded by hand: a lease request has three fields and the answer is read for four,
//! which does not justify a protobuf runtime in the module.
//!
//! Wire format (protobuf): every field is `tag = field_number << 3 | wire_type` followed by a
//! varint (type 0), 8 bytes (type 1), a length-prefixed payload (type 2) or 4 bytes (type 5).
//! Unknown fields are skipped, as protobuf requires, so newer servers that add fields still
//! decode. Decoding never panics: malformed input is a [`DecodeError`].

/// The gRPC service and method a lease is drawn with.
pub const SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
pub const METHOD: &str = "ShouldRateLimit";

/// `RateLimitResponse.Code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Unknown,
    Ok,
    OverLimit,
}

impl Code {
    fn from_wire(v: u64) -> Code {
        match v {
            1 => Code::Ok,
            2 => Code::OverLimit,
            _ => Code::Unknown,
        }
    }
}

/// One `RateLimitResponse.DescriptorStatus`, the fields a lease needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DescriptorStatus {
    pub code: Code,
    /// `current_limit.requests_per_unit`, if the server sent its limit.
    pub requests_per_unit: Option<u32>,
    /// `current_limit.unit` in seconds (second, minute, hour, day), if known.
    pub unit_s: Option<u64>,
    pub limit_remaining: u32,
    /// `duration_until_reset` in nanoseconds, if sent.
    pub until_reset_ns: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub overall_code: Code,
    pub statuses: Vec<DescriptorStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Encodes a `RateLimitRequest` for `domain` with one descriptor of `entries` (key, value) and
/// `hits_addend` (0 is sent as absent: the service then counts 1, per the API).
pub fn encode_request(domain: &str, entries: &[(&str, &str)], hits_addend: u32) -> Vec<u8> {
    let mut descriptor = Vec::new();
    for (key, value) in entries {
        let mut entry = Vec::with_capacity(key.len() + value.len() + 4);
        put_bytes(&mut entry, 1, key.as_bytes());
        put_bytes(&mut entry, 2, value.as_bytes());
        put_bytes(&mut descriptor, 1, &entry);
    }
    let mut out = Vec::with_capacity(domain.len() + descriptor.len() + 16);
    put_bytes(&mut out, 1, domain.as_bytes());
    put_bytes(&mut out, 2, &descriptor);
    if hits_addend != 0 {
        put_varint(&mut out, 3 << 3);
        put_varint(&mut out, u64::from(hits_addend));
    }
    out
}

/// Decodes a `RateLimitResponse`, keeping what a lease needs.
pub fn decode_response(bytes: &[u8]) -> Result<Response, DecodeError> {
    let mut response = Response { overall_code: Code::Unknown, statuses: Vec::new() };
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(v)) => response.overall_code = Code::from_wire(v),
            (2, Value::Bytes(b)) => response.statuses.push(decode_status(b)?),
            _ => {}
        }
    }
    Ok(response)
}

fn decode_status(bytes: &[u8]) -> Result<DescriptorStatus, DecodeError> {
    let mut status = DescriptorStatus {
        code: Code::Unknown,
        requests_per_unit: None,
        unit_s: None,
        limit_remaining: 0,
        until_reset_ns: None,
    };
    for field in Fields(bytes) {
        match field? {
            (1, Value::Varint(v)) => status.code = Code::from_wire(v),
            (2, Value::Bytes(limit)) => {
                for f in Fields(limit) {
                    match f? {
                        (1, Value::Varint(v)) => status.requests_per_unit = Some(saturate_u32(v)),
                        (2, Value::Varint(v)) => status.unit_s = unit_seconds(v),
                        _ => {}
                    }
                }
            }
            (3, Value::Varint(v)) => status.limit_remaining = saturate_u32(v),
            (4, Value::Bytes(duration)) => status.until_reset_ns = Some(decode_duration_ns(duration)?),
            _ => {}
        }
    }
    Ok(status)
}

/// `google.protobuf.Duration` in nanoseconds; negative durations read as 0.
fn decode_duration_ns(bytes: &[u8]) -> Result<u64, DecodeError> {
    let (mut seconds, mut nanos) = (0i64, 0i64);
    for field in Fields(bytes) {
        match field? {
            // int64 and int32 are sent as two's complement varints.
            (1, Value::Varint(v)) => seconds = v as i64,
            (2, Value::Varint(v)) => nanos = i64::from(v as i32),
            _ => {}
        }
    }
    let ns = i128::from(seconds) * 1_000_000_000 + i128::from(nanos);
    Ok(u64::try_from(ns.max(0)).unwrap_or(u64::MAX))
}

/// `RateLimit.Unit`: SECOND, MINUTE, HOUR, DAY, MONTH (30 days), YEAR (365 days).
fn unit_seconds(v: u64) -> Option<u64> {
    match v {
        1 => Some(1),
        2 => Some(60),
        3 => Some(3_600),
        4 => Some(86_400),
        5 => Some(30 * 86_400),
        6 => Some(365 * 86_400),
        _ => None,
    }
}

fn saturate_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_varint(out, (field << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in wire order.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.read_field();
        if item.is_err() {
            // Stop after the first error: the rest cannot be framed.
            self.0 = &[];
        }
        Some(item)
    }
}

impl<'a> Fields<'a> {
    fn read_field(&mut self) -> Result<(u64, Value<'a>), DecodeError> {
        let tag = self.varint()?;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => self.skip(8)?,
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| DecodeError)?;
                let bytes = self.0.get(..len).ok_or(DecodeError)?;
                self.0 = self.0.get(len..).unwrap_or_default();
                Value::Bytes(bytes)
            }
            5 => self.skip(4)?,
            _ => return Err(DecodeError),
        };
        Ok((tag >> 3, value))
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = self.0.get(i + 1..).unwrap_or_default();
                return Ok(v);
            }
        }
        Err(DecodeError)
    }

    fn skip(&mut self, n: usize) -> Result<Value<'a>, DecodeError> {
        self.0 = self.0.get(n..).ok_or(DecodeError)?;
        Ok(Value::Fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_request_is_the_bytes_protobuf_defines() {
        let bytes = encode_request("shop", &[("k", "v")], 300);
        // domain "shop"; descriptors { entries { key "k" value "v" } }; hits_addend 300
        let expected: &[u8] = &[
            0x0a, 4, b's', b'h', b'o', b'p', //
            0x12, 8, 0x0a, 6, 0x0a, 1, b'k', 0x12, 1, b'v', //
            0x18, 0xac, 0x02,
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn a_hits_addend_of_zero_is_left_out() {
        assert_eq!(encode_request("d", &[], 0), vec![0x0a, 1, b'd', 0x12, 0]);
    }

    fn status(code: u8, remaining: u8, reset_s: u8) -> Vec<u8> {
        // code; current_limit { requests_per_unit 100, unit MINUTE }; limit_remaining; reset
        vec![0x08, code, 0x12, 4, 0x08, 100, 0x10, 2, 0x18, remaining, 0x22, 2, 0x08, reset_s]
    }

    #[test]
    fn a_response_gives_the_code_remaining_limit_and_reset() {
        let s = status(1, 42, 7);
        let mut bytes = vec![0x08, 1, 0x12, s.len() as u8];
        bytes.extend_from_slice(&s);
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::Ok);
        assert_eq!(
            r.statuses,
            vec![DescriptorStatus {
                code: Code::Ok,
                requests_per_unit: Some(100),
                unit_s: Some(60),
                limit_remaining: 42,
                until_reset_ns: Some(7_000_000_000),
            }]
        );
    }

    #[test]
    fn unknown_fields_of_every_wire_type_are_skipped() {
        let mut bytes = vec![0x08, 2];
        bytes.extend_from_slice(&[0x29, 1, 2, 3, 4, 5, 6, 7, 8]); // field 5, fixed64
        bytes.extend_from_slice(&[0x35, 1, 2, 3, 4]); // field 6, fixed32
        bytes.extend_from_slice(&[0x3a, 2, 0xff, 0xff]); // field 7, bytes
        bytes.extend_from_slice(&[0x40, 0x80, 0x01]); // field 8, varint
        let r = decode_response(&bytes).unwrap();
        assert_eq!(r.overall_code, Code::OverLimit);
        assert!(r.statuses.is_empty());
    }

    #[test]
    fn an_empty_response_is_unknown_not_an_error() {
        assert_eq!(decode_response(&[]), Ok(Response { overall_code: Code::Unknown, statuses: vec![] }));
    }

    #[test]
    fn truncated_or_malformed_bytes_are_an_error_never_a_panic() {
        let s = status(1, 42, 7);
        let mut bytes = vec![0x08, 1, 0x12, s.len() as u8];
        bytes.extend_from_slice(&s);
        for cut in 1..bytes.len() {
            // Any prefix either decodes (it ended on a field boundary) or is refused.
            let _ = decode_response(&bytes[..cut]);
        }
        assert_eq!(decode_response(&[0x12, 5, 0]), Err(DecodeError));
        assert_eq!(decode_response(&[0x0f]), Err(DecodeError), "wire type 7 does not exist");
        assert_eq!(decode_response(&[0x08; 10]).map(|r| r.overall_code), Ok(Code::Unknown), "code 8 is unknown");
        assert_eq!(decode_response(&[0x08; 11]), Err(DecodeError), "a tag without its value");
        assert_eq!(
            decode_response(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError)
        );
    }

    #[test]
    fn a_negative_or_huge_reset_is_clamped() {
        // seconds = -1 as a ten-byte varint
        let neg = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert_eq!(decode_duration_ns(&neg), Ok(0));
        let huge = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert_eq!(decode_duration_ns(&huge), Ok(u64::MAX));
    }

    #[test]
    fn a_remaining_count_past_u32_saturates() {
        let bytes = [0x12, 6, 0x18, 0x80, 0x80, 0x80, 0x80, 0x20];
        assert_eq!(decode_response(&bytes).unwrap().statuses[0].limit_remaining, u32::MAX);
    }
}
