//! The Thrift `CollectorPayload` a Snowplow collector writes to its raw stream (schema
//! `iglu:com.snowplowanalytics.snowplow/CollectorPayload/thrift/1-0-0`): one HTTP request as the
//! collector saw it.
//!
//! Encoded with Thrift's binary protocol (what the collector's `TSerializer` and Enrich's
//! `TDeserializer` use): a struct is a run of fields, each `type: i8, id: i16 BE, value`, ended by
//! a zero byte; strings are `len: i32 BE` + UTF-8 bytes; lists are `elem type: i8, len: i32 BE` +
//! elements. The field ids are the schema's:
//!
//! | id | field | type |
//! |---|---|---|
//! | 31337 | schema | string |
//! | 100 | ipAddress | string |
//! | 200 | timestamp | i64 (ms since the epoch) |
//! | 210 | encoding | string |
//! | 220 | collector | string |
//! | 300 | userAgent | string |
//! | 310 | refererUri | string |
//! | 320 | path | string |
//! | 330 | querystring | string |
//! | 340 | body | string |
//! | 350 | headers | list\<string\> |
//! | 360 | contentType | string |
//! | 400 | hostname | string |
//! | 410 | networkUserId | string |
//!
//! [`decode`] borrows every string from the input (no copy); unknown fields of any type are
//! skipped, as a Thrift reader does; every length is checked against the input, so a truncated
//! or hostile record is an error, never a panic or a large allocation.

use std::borrow::Cow;

/// The schema every payload carries.
pub const SCHEMA: &str = "iglu:com.snowplowanalytics.snowplow/CollectorPayload/thrift/1-0-0";

const T_STOP: u8 = 0;
const T_BOOL: u8 = 2;
const T_BYTE: u8 = 3;
const T_DOUBLE: u8 = 4;
const T_I16: u8 = 6;
const T_I32: u8 = 8;
const T_I64: u8 = 10;
const T_STRING: u8 = 11;
const T_STRUCT: u8 = 12;
const T_MAP: u8 = 13;
const T_SET: u8 = 14;
const T_LIST: u8 = 15;

/// Nesting depth beyond which an unknown field is refused rather than skipped.
const MAX_DEPTH: usize = 32;

/// One collector request. Strings borrow from the decoded bytes or from the HTTP request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorPayload<'a> {
    pub schema: Cow<'a, str>,
    pub ip_address: Cow<'a, str>,
    /// When the collector received the request, in ms since the epoch.
    pub timestamp: i64,
    pub encoding: Cow<'a, str>,
    /// The collector's name and version (becomes `v_collector`).
    pub collector: Cow<'a, str>,
    pub user_agent: Option<Cow<'a, str>>,
    pub referer_uri: Option<Cow<'a, str>>,
    pub path: Option<Cow<'a, str>>,
    pub querystring: Option<Cow<'a, str>>,
    pub body: Option<Cow<'a, str>>,
    /// `Name: value` lines.
    pub headers: Vec<Cow<'a, str>>,
    pub content_type: Option<Cow<'a, str>>,
    pub hostname: Option<Cow<'a, str>>,
    pub network_user_id: Option<Cow<'a, str>>,
}

/// Why bytes are not a `CollectorPayload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DecodeError {
    /// The payload field concerned (`schema`, `timestamp`, …), or `"payload"` for the framing.
    pub field: &'static str,
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> DecodeError {
    DecodeError {
        field,
        message: message.into(),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                err(
                    field,
                    format!(
                        "truncated: needs {n} bytes at offset {}, {} left",
                        self.pos,
                        self.buf.len() - self.pos
                    ),
                )
            })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2, field)?.try_into().unwrap()))
    }
    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4, field)?.try_into().unwrap()))
    }
    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8, field)?.try_into().unwrap()))
    }
    fn len(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let n = self.i32(field)?;
        usize::try_from(n).map_err(|_| err(field, format!("negative length {n}")))
    }
    fn string(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let n = self.len(field)?;
        let bytes = self.take(n, field)?;
        std::str::from_utf8(bytes).map_err(|e| {
            err(
                field,
                format!("invalid UTF-8 at byte {} of the string", e.valid_up_to()),
            )
        })
    }
    /// Skips one value of type `ty` (for fields this reader does not know).
    fn skip(&mut self, ty: u8, depth: usize) -> Result<(), DecodeError> {
        const F: &str = "payload";
        if depth > MAX_DEPTH {
            return Err(err(F, "unknown field nested too deeply"));
        }
        match ty {
            T_BOOL | T_BYTE => drop(self.take(1, F)?),
            T_I16 => drop(self.take(2, F)?),
            T_I32 => drop(self.take(4, F)?),
            T_DOUBLE | T_I64 => drop(self.take(8, F)?),
            T_STRING => {
                let n = self.len(F)?;
                self.take(n, F)?;
            }
            T_STRUCT => loop {
                let t = self.u8(F)?;
                if t == T_STOP {
                    break;
                }
                self.i16(F)?;
                self.skip(t, depth + 1)?;
            },
            T_MAP => {
                let (k, v) = (self.u8(F)?, self.u8(F)?);
                let n = self.len(F)?;
                for _ in 0..n {
                    self.skip(k, depth + 1)?;
                    self.skip(v, depth + 1)?;
                }
            }
            T_SET | T_LIST => {
                let t = self.u8(F)?;
                let n = self.len(F)?;
                for _ in 0..n {
                    self.skip(t, depth + 1)?;
                }
            }
            other => return Err(err(F, format!("unknown Thrift type {other}"))),
        }
        Ok(())
    }
}

/// Decodes one binary-protocol `CollectorPayload`. Checks the schema (any 1-x-x revision) and that
/// `timestamp` and `collector` are present; the rest is optional, as in the Thrift schema.
pub fn decode(bytes: &[u8]) -> Result<CollectorPayload<'_>, DecodeError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut p = CollectorPayload::default();
    let (mut has_schema, mut has_timestamp, mut has_collector) = (false, false, false);
    loop {
        let ty = r.u8("payload")?;
        if ty == T_STOP {
            break;
        }
        let id = r.i16("payload")?;
        let (name, want): (&'static str, u8) = match id {
            31337 => ("schema", T_STRING),
            100 => ("ipAddress", T_STRING),
            200 => ("timestamp", T_I64),
            210 => ("encoding", T_STRING),
            220 => ("collector", T_STRING),
            300 => ("userAgent", T_STRING),
            310 => ("refererUri", T_STRING),
            320 => ("path", T_STRING),
            330 => ("querystring", T_STRING),
            340 => ("body", T_STRING),
            350 => ("headers", T_LIST),
            360 => ("contentType", T_STRING),
            400 => ("hostname", T_STRING),
            410 => ("networkUserId", T_STRING),
            _ => {
                r.skip(ty, 0)?;
                continue;
            }
        };
        if ty != want {
            return Err(err(
                name,
                format!("expected Thrift type {want}, found type {ty}"),
            ));
        }
        match id {
            200 => {
                p.timestamp = r.i64(name)?;
                has_timestamp = true;
            }
            350 => {
                let elem = r.u8(name)?;
                let n = r.len(name)?;
                if elem != T_STRING {
                    return Err(err(
                        name,
                        format!("expected a list of strings, found elements of type {elem}"),
                    ));
                }
                // Each element takes at least 4 bytes: never reserve more than the input holds.
                p.headers = Vec::with_capacity(n.min((bytes.len() - r.pos) / 4));
                for _ in 0..n {
                    p.headers.push(Cow::Borrowed(r.string(name)?));
                }
            }
            _ => {
                let s = Cow::Borrowed(r.string(name)?);
                match id {
                    31337 => {
                        p.schema = s;
                        has_schema = true;
                    }
                    100 => p.ip_address = s,
                    210 => p.encoding = s,
                    220 => {
                        p.collector = s;
                        has_collector = true;
                    }
                    300 => p.user_agent = Some(s),
                    310 => p.referer_uri = Some(s),
                    320 => p.path = Some(s),
                    330 => p.querystring = Some(s),
                    340 => p.body = Some(s),
                    360 => p.content_type = Some(s),
                    400 => p.hostname = Some(s),
                    _ => p.network_user_id = Some(s),
                }
            }
        }
    }
    if r.pos != bytes.len() {
        return Err(err(
            "payload",
            format!("{} bytes after the end of the struct", bytes.len() - r.pos),
        ));
    }
    if !has_schema {
        return Err(err("schema", "missing"));
    }
    if !p
        .schema
        .starts_with("iglu:com.snowplowanalytics.snowplow/CollectorPayload/thrift/1-")
    {
        return Err(err(
            "schema",
            format!("expected {SCHEMA} (any 1-x-x), found {:?}", p.schema),
        ));
    }
    if !has_timestamp {
        return Err(err("timestamp", "missing"));
    }
    if !has_collector {
        return Err(err("collector", "missing"));
    }
    Ok(p)
}

impl CollectorPayload<'_> {
    /// Encodes the payload with the binary protocol, fields in the schema's order (as the
    /// collector's generated Java code writes them); absent optional fields are left out.
    pub fn encode(&self, out: &mut Vec<u8>) {
        fn header(out: &mut Vec<u8>, ty: u8, id: i16) {
            out.push(ty);
            out.extend_from_slice(&id.to_be_bytes());
        }
        fn string(out: &mut Vec<u8>, id: i16, s: &str) {
            header(out, T_STRING, id);
            put_str(out, s);
        }
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as i32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        string(out, 31337, &self.schema);
        string(out, 100, &self.ip_address);
        header(out, T_I64, 200);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        string(out, 210, &self.encoding);
        string(out, 220, &self.collector);
        for (id, v) in [
            (300, &self.user_agent),
            (310, &self.referer_uri),
            (320, &self.path),
            (330, &self.querystring),
            (340, &self.body),
        ] {
            if let Some(v) = v {
                string(out, id, v);
            }
        }
        if !self.headers.is_empty() {
            header(out, T_LIST, 350);
            out.push(T_STRING);
            out.extend_from_slice(&(self.headers.len() as i32).to_be_bytes());
            for h in &self.headers {
                put_str(out, h);
            }
        }
        for (id, v) in [
            (360, &self.content_type),
            (400, &self.hostname),
            (410, &self.network_user_id),
        ] {
            if let Some(v) = v {
                string(out, id, v);
            }
        }
        out.push(T_STOP);
    }

    /// [`encode`](Self::encode) into a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            256 + self.body.as_ref().map_or(0, |b| b.len())
                + self.querystring.as_ref().map_or(0, |q| q.len()),
        );
        self.encode(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CollectorPayload<'static> {
        CollectorPayload {
            schema: SCHEMA.into(),
            ip_address: "10.1.2.3".into(),
            timestamp: 1_795_677_553_423,
            encoding: "UTF-8".into(),
            collector: "ssc-3.2.0-kinesis".into(),
            user_agent: Some("Mozilla/5.0".into()),
            referer_uri: None,
            path: Some("/com.snowplowanalytics.snowplow/tp2".into()),
            querystring: None,
            body: Some("{\"schema\":\"x\",\"data\":[]}".into()),
            headers: vec!["Host: a".into(), "Origin: b".into()],
            content_type: Some("application/json".into()),
            hostname: Some("collector.example".into()),
            network_user_id: Some("d8aae409-b64d-40c0-99d7-5324fcb27735".into()),
        }
    }

    #[test]
    fn round_trips() {
        let p = sample();
        let bytes = p.to_bytes();
        assert_eq!(decode(&bytes).unwrap(), p);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode(&longer).unwrap_err().field, "payload");
    }

    #[test]
    fn unknown_fields_are_skipped_and_wrong_types_refused() {
        let mut bytes = Vec::new();
        // An unknown struct field (id 7) holding a list<i32> and a map<string,i64>.
        bytes.extend_from_slice(&[T_STRUCT, 0, 7]);
        bytes.extend_from_slice(&[T_LIST, 0, 1, T_I32, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2]);
        bytes.extend_from_slice(&[T_MAP, 0, 2, T_STRING, T_I64, 0, 0, 0, 1]);
        bytes.extend_from_slice(&[0, 0, 0, 1, b'k', 0, 0, 0, 0, 0, 0, 0, 9]);
        bytes.push(T_STOP);
        let mut p = Vec::new();
        sample().encode(&mut p);
        bytes.extend_from_slice(&p);
        assert_eq!(decode(&bytes).unwrap(), sample());

        // timestamp sent as a string
        let mut bad = Vec::new();
        bad.extend_from_slice(&[T_STRING, 0, 200, 0, 0, 0, 1, b'1', T_STOP]);
        assert_eq!(decode(&bad).unwrap_err().field, "timestamp");
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        // A headers list claiming 2^31-1 elements in a 20-byte record.
        let mut bytes = vec![T_LIST, 0x01, 0x5e, T_STRING, 0x7f, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&[0, 0, 0, 1, b'a']);
        let e = decode(&bytes).unwrap_err();
        assert_eq!(e.field, "headers");
        // A negative string length.
        let bytes = [T_STRING, 0x7a, 0x69, 0xff, 0xff, 0xff, 0xfe];
        assert!(decode(&bytes).unwrap_err().message.contains("negative"));
    }

    #[test]
    fn schema_timestamp_and_collector_are_required() {
        let mut p = sample();
        p.schema = "iglu:com.acme/other/thrift/1-0-0".into();
        assert_eq!(decode(&p.to_bytes()).unwrap_err().field, "schema");
        let bytes = [T_STRING, 0x7a, 0x69, 0, 0, 0, 0, T_STOP];
        assert_eq!(decode(&bytes).unwrap_err().field, "schema");
    }
}
