//! Enriched TSV → analytics-SDK JSON, as Snowbridge's `spEnrichedToJson` writes it.
//!
//! Reference: snowplow/snowbridge `pkg/transform/snowplow_enriched_to_json.go`, which calls
//! `ParsedEvent.ToJson()` of snowplow/snowplow-golang-analytics-sdk (`analytics/transform.go`,
//! `analytics/shred.go`). The output is one flat JSON object:
//! * empty fields are omitted;
//! * strings are JSON strings, ints/doubles JSON numbers, bools `true`/`false`;
//! * timestamps `YYYY-MM-DD HH:MM:SS.fff` become RFC 3339 in UTC the way Go's `time.Time`
//!   marshals them (`RFC3339Nano`): trailing zeros of the fraction are dropped, and so is a
//!   zero fraction (`…35.000` → `…35Z`, `…29.170` → `…29.17Z`);
//! * `contexts` and `derived_contexts` become one `contexts_<vendor>_<name>_<model>` array per
//!   schema, holding the entities' `data`;
//! * `unstruct_event` becomes `unstruct_event_<vendor>_<name>_<model>` holding the event's `data`.
//!
//! **contexts vs derived_contexts.** The Go SDK does *not* merge the two fields: its
//! `mapifyGoodEvent` walks the fields in order and assigns `output[key] = value`, so when both
//! fields hold entities of the same schema (same flattened key), the `derived_contexts` array
//! (field 122) replaces the `contexts` one (field 52). weir does the same. (Within one field,
//! entities of the same key are gathered into one array, in order.) The Python SDK 0.2.3 does
//! the same overwrite (`jsonify_good_event`).
//!
//! **geo_location.** The Go SDK adds `"geo_location": "<lat>,<lon>"` only in `ToJsonWithGeo` /
//! `ToMapWithGeo`; Snowbridge calls `ToJson`, so it is off by default here and turned on with
//! [`ToJsonOptions::geo_location`] (the Python SDK adds it by default).
//!
//! Differences from Go that do not change any value: keys come out in TSV order (Go's map
//! order is random); entity data is copied verbatim from the input (Go re-encodes it from a
//! `map[string]any`, which rounds integers above 2^53 to float64 — weir keeps them exact).

use std::io::Write as _;

use super::fields::{FieldType, FIELDS, FIELD_COUNT, GEO_LATITUDE, GEO_LONGITUDE};
use super::sdj::{self, EntitySink};
use super::{utf8, Excerpt, FieldProblem, ParseError, DERIVED_CONTEXTS, UNSTRUCT_EVENT};
use serde_json::value::RawValue;

/// Options for [`to_json_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToJsonOptions {
    /// Add `"geo_location": "<geo_latitude>,<geo_longitude>"` when both are non-empty (the Go
    /// SDK's `ToJsonWithGeo`). Off by default, like Snowbridge's `spEnrichedToJson`.
    pub geo_location: bool,
}

/// Reusable buffers for [`to_json`]; keep one per worker so that steady state does not
/// allocate.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Flattened keys of the context entities of the current line, back to back.
    keys: String,
    entities: Vec<Entity>,
}

#[cfg(test)]
impl Scratch {
    pub(crate) fn keys_capacity(&self) -> usize {
        self.keys.capacity()
    }
    pub(crate) fn entities_capacity(&self) -> usize {
        self.entities.capacity()
    }
}

#[derive(Debug, Clone, Copy)]
struct Entity {
    derived: bool,
    key: (usize, usize),
    /// Byte range of the entity's `data` in the line; `None` for null.
    data: Option<(usize, usize)>,
}

/// Appends the analytics-SDK JSON of one enriched line to `out` (Snowbridge `spEnrichedToJson`
/// semantics, see the module docs). On error `out` is left as it was.
pub fn to_json(line: &[u8], out: &mut Vec<u8>, scratch: &mut Scratch) -> Result<(), ParseError> {
    to_json_with(line, out, scratch, ToJsonOptions::default())
}

/// [`to_json`] with options.
pub fn to_json_with(
    line: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    options: ToJsonOptions,
) -> Result<(), ParseError> {
    let len = out.len();
    let result = write_event(line, out, scratch, options);
    if result.is_err() {
        out.truncate(len);
    }
    result
}

fn write_event(
    line: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    options: ToJsonOptions,
) -> Result<(), ParseError> {
    // Field boundaries: field i is line[starts[i]..starts[i + 1] - 1].
    let mut starts = [0usize; FIELD_COUNT + 1];
    if !super::field_starts(line, &mut starts) {
        return Err(ParseError::FieldCount {
            found: bytecount::count(line, b'\t') + 1,
        });
    }
    let s = utf8(line)?;
    let field = |i: usize| &s[starts[i]..starts[i + 1] - 1];

    scratch.keys.clear();
    scratch.entities.clear();
    out.reserve(line.len() + line.len() / 2 + 256);
    out.push(b'{');
    let mut first = true;
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };

    if options.geo_location {
        let (lat, lon) = (field(GEO_LATITUDE), field(GEO_LONGITUDE));
        if !lat.is_empty() && !lon.is_empty() {
            sep(out);
            out.extend_from_slice(b"\"geo_location\":\"");
            write_str_content(out, lat);
            out.push(b',');
            write_str_content(out, lon);
            out.push(b'"');
        }
    }

    for (i, spec) in FIELDS.iter().enumerate() {
        let v = field(i);
        if v.is_empty() {
            continue;
        }
        let bad =
            |problem: fn(Excerpt) -> FieldProblem| ParseError::field(i, problem(Excerpt::new(v)));
        match spec.ty {
            FieldType::String => {
                sep(out);
                out.extend_from_slice(spec.json_key.as_bytes());
                write_str(out, v);
            }
            FieldType::Int => {
                sep(out);
                out.extend_from_slice(spec.json_key.as_bytes());
                write_int(out, v).ok_or_else(|| bad(FieldProblem::Int))?;
            }
            FieldType::Double => {
                sep(out);
                out.extend_from_slice(spec.json_key.as_bytes());
                write_double(out, v).ok_or_else(|| bad(FieldProblem::Double))?;
            }
            FieldType::Bool => {
                sep(out);
                out.extend_from_slice(spec.json_key.as_bytes());
                let b = parse_bool(v).ok_or_else(|| bad(FieldProblem::Bool))?;
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
            FieldType::Timestamp => {
                sep(out);
                out.extend_from_slice(spec.json_key.as_bytes());
                write_timestamp(out, v).ok_or_else(|| bad(FieldProblem::Timestamp))?;
            }
            FieldType::Contexts => {
                // Written after the loop: derived_contexts may overwrite contexts keys.
                let mut sink = ScratchSink {
                    scratch: &mut *scratch,
                    derived: i == DERIVED_CONTEXTS,
                    base: s.as_ptr() as usize,
                };
                sdj::read_contexts(v, &mut sink).map_err(|p| ParseError::field(i, p))?;
            }
            FieldType::Unstruct => {
                debug_assert_eq!(i, UNSTRUCT_EVENT);
                let ue = sdj::read_unstruct(v).map_err(|p| ParseError::field(i, p))?;
                sep(out);
                out.push(b'"');
                // Built at the end of the key buffer (after any contexts keys), then dropped.
                let keys = &mut scratch.keys;
                let mark = keys.len();
                let valid = sdj::write_key("unstruct_event", &ue.schema, keys);
                out.extend_from_slice(&keys.as_bytes()[mark..]);
                keys.truncate(mark);
                if !valid {
                    return Err(ParseError::field(
                        i,
                        FieldProblem::SchemaUri {
                            what: "the event".to_owned(),
                            uri: Excerpt::new(&ue.schema),
                        },
                    ));
                }
                out.extend_from_slice(b"\":");
                write_raw(out, ue.data);
            }
        }
    }

    // contexts_* arrays: one per key and field; a key present in derived_contexts replaces the
    // same key from contexts (Go SDK: output[key] = value, field 122 after field 52).
    let Scratch { keys, entities } = &*scratch;
    let key = |e: &Entity| &keys[e.key.0..e.key.1];
    for (i, e) in entities.iter().enumerate() {
        let k = key(e);
        let seen = entities[..i]
            .iter()
            .any(|p| p.derived == e.derived && key(p) == k);
        let replaced = !e.derived && entities.iter().any(|p| p.derived && key(p) == k);
        if seen || replaced {
            continue;
        }
        sep(out);
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":[");
        let mut first_item = true;
        for q in entities[i..]
            .iter()
            .filter(|q| q.derived == e.derived && key(q) == k)
        {
            if !std::mem::take(&mut first_item) {
                out.push(b',');
            }
            match q.data {
                Some((a, b)) => out.extend_from_slice(&line[a..b]),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.push(b']');
    }
    out.push(b'}');
    Ok(())
}

/// Collects context entities into the scratch buffers.
struct ScratchSink<'a> {
    scratch: &'a mut Scratch,
    derived: bool,
    /// Address of the line's first byte: entity data is stored as offsets into the line.
    base: usize,
}

impl<'de> EntitySink<'de> for ScratchSink<'_> {
    fn entity(
        &mut self,
        index: usize,
        schema: &str,
        data: Option<&'de RawValue>,
    ) -> Result<(), FieldProblem> {
        let keys = &mut self.scratch.keys;
        let start = keys.len();
        if !sdj::write_key("contexts", schema, keys) {
            keys.truncate(start);
            return Err(FieldProblem::SchemaUri {
                what: format!("entity {index}"),
                uri: Excerpt::new(schema),
            });
        }
        let data = data.map(|raw| {
            let text = raw.get();
            let a = text.as_ptr() as usize - self.base;
            (a, a + text.len())
        });
        self.scratch.entities.push(Entity {
            derived: self.derived,
            key: (start, keys.len()),
            data,
        });
        Ok(())
    }
}

fn write_raw(out: &mut Vec<u8>, data: Option<&RawValue>) {
    match data {
        Some(raw) => out.extend_from_slice(raw.get().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars

/// Writes a Go `strconv.Atoi` integer (optional sign, decimal digits, 64-bit range) as a JSON
/// number: verbatim when already canonical, re-printed otherwise (`+7`, `007` → `7`).
pub(crate) fn write_int(out: &mut Vec<u8>, v: &str) -> Option<()> {
    let b = v.as_bytes();
    let digits = match b.first() {
        Some(b'-' | b'+') => &b[1..],
        _ => b,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let canonical = b[0] != b'+'
        && (digits[0] != b'0' || (digits.len() == 1 && b[0] != b'-'))
        && digits.len() <= 18;
    if canonical {
        out.extend_from_slice(b);
    } else {
        let n: i64 = v.parse().ok()?;
        write!(out, "{n}").ok()?;
    }
    Some(())
}

/// Writes a Go `strconv.ParseFloat` number as a JSON number: verbatim when it is already a JSON
/// number, re-printed otherwise (`.5`, `+1`, `5.` …). NaN and ±Inf are refused (Go fails to
/// marshal them; `1e400` overflows to Inf and Go's ParseFloat reports a range error). Go also
/// accepts hexadecimal floats and `_` digit separators, which are refused here.
pub(crate) fn write_double(out: &mut Vec<u8>, v: &str) -> Option<()> {
    let f: f64 = v.parse().ok()?;
    if !f.is_finite() {
        return None;
    }
    if is_json_number(v.as_bytes()) {
        out.extend_from_slice(v.as_bytes());
    } else {
        write!(out, "{f}").ok()?;
    }
    Some(())
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn is_json_number(b: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let s = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - s
    };
    if b.first() == Some(&b'-') {
        i += 1;
    }
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go `strconv.ParseBool`: `1 t T TRUE true True` / `0 f F FALSE false False`.
/// (The Python SDK accepts only `1`/`0`; Enrich only writes those.)
pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Writes `YYYY-MM-DD HH:MM:SS[.fff…]` as a JSON string the way Go's `time.Time` marshals
/// `time.Parse("2006-01-02 15:04:05.999", v)`: `"YYYY-MM-DDTHH:MM:SS[.f]Z"` with the fraction
/// cut to 9 digits and its trailing zeros dropped. Calendar ranges are checked as Go does
/// (month 1–12, day within the month, hour < 24, minute and second < 60).
pub(crate) fn write_timestamp(out: &mut Vec<u8>, v: &str) -> Option<()> {
    let b = v.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = b.get(r)?;
        d.iter().try_fold(0u32, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let year = num(0..4)?;
    let month = num(5..7)?;
    let day = num(8..10)?;
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || b.get(10) != Some(&b' ') {
        return None;
    }
    // Go's "15" takes one or two digits.
    let hour_len = if b.get(12).is_some_and(u8::is_ascii_digit) {
        2
    } else {
        1
    };
    let hour = num(11..11 + hour_len)?;
    let p = 11 + hour_len;
    if b.get(p) != Some(&b':') || b.get(p + 3) != Some(&b':') {
        return None;
    }
    let minute = num(p + 1..p + 3)?;
    let second = num(p + 4..p + 6)?;
    let mut q = p + 6;
    let mut frac: &[u8] = &[];
    if matches!(b.get(q), Some(b'.' | b',')) && b.get(q + 1).is_some_and(u8::is_ascii_digit) {
        let start = q + 1;
        q = start;
        while q < b.len() && b[q].is_ascii_digit() {
            q += 1;
        }
        frac = &b[start..q];
    }
    if q != b.len() {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    out.push(b'"');
    out.extend_from_slice(&b[0..10]);
    out.push(b'T');
    if hour_len == 1 {
        out.push(b'0');
    }
    out.extend_from_slice(&b[11..p + 6]);
    let frac = &frac[..frac.len().min(9)];
    let kept = frac.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
    if kept > 0 {
        out.push(b'.');
        out.extend_from_slice(&frac[..kept]);
    }
    out.extend_from_slice(b"Z\"");
    Some(())
}

// ---------------------------------------------------------------------------------------------
// Strings

/// 0: copy; b'u': `\u00XX`; other: `\` + that byte.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// True if any of the 8 bytes is `"`, `\` or a control character (< 0x20).
#[inline]
fn needs_escape(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let control = x.wrapping_sub(ONES * 0x20) & !x;
    let q = x ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = x ^ (ONES * u64::from(b'\\'));
    let backslash = s.wrapping_sub(ONES) & !s;
    (control | quote | backslash) & HIGH != 0
}

/// Writes `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_content(out, s);
    out.push(b'"');
}

/// Writes the JSON-escaped content of `s` (without quotes). Only `"`, `\` and control
/// characters are escaped (like Go's json-iterator with HTML escaping off, as the SDK uses).
fn write_str_content(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let mut copied = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(chunk) = b.get(i..i + 8) {
            let x = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            if !needs_escape(x) {
                i += 8;
                continue;
            }
        }
        let c = b[i];
        let e = ESCAPE[usize::from(c)];
        if e != 0 {
            out.extend_from_slice(&b[copied..i]);
            if e == b'u' {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xf)]);
            } else {
                out.push(b'\\');
                out.push(e);
            }
            copied = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&b[copied..]);
}
