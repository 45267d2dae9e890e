//! Snowplow enriched events: the 131-field TSV line, its analytics-SDK JSON form, and the
//! lookups behind Snowbridge-style filters.
//!
//! Everything here works on one enriched TSV line as `&[u8]`, without its trailing newline.
//!
//! * [`validate`] checks the field count and UTF-8; [`field`] returns one field's raw bytes
//!   without scanning the whole line (the hot path of atomic-field filters).
//! * [`to_json`] writes the JSON that Snowbridge's `spEnrichedToJson` (the Go analytics SDK's
//!   `ParsedEvent.ToJson`) produces, value for value, reusing a [`Scratch`] so that steady state
//!   does not allocate.
//! * [`FieldPath`], [`context_values`] and [`unstruct_value`] implement the value lookups of
//!   Snowbridge's `spEnrichedFilterContext` and `spEnrichedFilterUnstructEvent`;
//!   [`atomic_value_text`] gives the text its atomic `spEnrichedFilter` compares for typed
//!   fields (booleans as `true`/`false`, timestamps as Go prints them, …).
//! * [`tracker::convert`] turns a collector request (tracker protocol GET or POST, as a
//!   [`collector_payload::CollectorPayload`]) into enriched lines, as Enrich does before its
//!   configurable enrichments; [`collector_payload`] reads and writes the Thrift form a Snowplow
//!   collector writes to its raw stream.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod badrow;
pub mod collector_payload;
mod fields;
mod filter;
mod json;
mod path;
mod sdj;
pub mod tracker;

use std::fmt;

pub use fields::{
    field_index, field_names, Field, FieldType, CONTEXTS, DERIVED_CONTEXTS, EVENT_FORMAT,
    EVENT_NAME, EVENT_VENDOR, EVENT_VERSION, FIELDS, FIELD_COUNT, GEO_LATITUDE, GEO_LONGITUDE,
    UNSTRUCT_EVENT,
};
pub use filter::{atomic_value_text, context_values, first_context_value, unstruct_value};
pub use json::{to_json, to_json_with, Scratch, ToJsonOptions};
pub use path::{FieldPath, PathError, PathSegment};

/// Milliseconds since the Unix epoch, now: the one clock behind every timestamp weir stamps
/// (`etl_tstamp`, state TTLs, the load generator's `dtm`/`stm`).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// An enriched event's `collector_tstamp` (its fourth field, `2026-11-26 09:00:00.123`, UTC) in
/// milliseconds since the epoch; `None` if `line` does not have one in that form (a record that
/// is not an enriched event). Reads only the start of the line.
pub fn collector_tstamp_ms(line: &[u8]) -> Option<i64> {
    let mut start = 0;
    for _ in 0..3 {
        start += memchr::memchr(b'\t', &line[start..])? + 1;
    }
    let rest = &line[start..];
    let t = &rest[..memchr::memchr(b'\t', rest)?];
    // `YYYY-MM-DD HH:MM:SS` then optionally `.` and 1 to 9 digits.
    if t.len() < 19
        || t[4] != b'-'
        || t[7] != b'-'
        || t[10] != b' '
        || t[13] != b':'
        || t[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        t[r].iter().try_fold(0i64, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut ms = 0;
    if t.len() > 19 {
        let frac = &t[20..];
        if t[19] != b'.' || frac.is_empty() || frac.len() > 9 {
            return None;
        }
        let f = num(20..t.len())?;
        ms = f * 1000 / 10i64.pow(frac.len() as u32);
    }
    // Days since 1970-01-01 (H. Hinnant's days_from_civil).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// Why an enriched line could not be read or converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The line does not have exactly [`FIELD_COUNT`] tab-separated fields.
    #[error("expected 131 tab-separated fields, found {found}")]
    FieldCount {
        /// How many fields the line has.
        found: usize,
    },
    /// The line is not valid UTF-8.
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the first invalid sequence in the line.
        offset: usize,
    },
    /// One field's content is not what its type requires.
    #[error("field {name} ({index}): {problem}")]
    Field {
        /// The field's index (0-based).
        index: usize,
        /// The field's name.
        name: &'static str,
        /// What is wrong with it.
        problem: FieldProblem,
    },
}

impl ParseError {
    pub(crate) fn field(index: usize, problem: FieldProblem) -> ParseError {
        ParseError::Field {
            index,
            name: FIELDS[index].name,
            problem,
        }
    }
}

/// What is wrong with one field (see [`ParseError::Field`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    /// Not a 64-bit decimal integer.
    #[error("expected an integer, found {0}")]
    Int(Excerpt),
    /// Not a finite floating point number.
    #[error("expected a number, found {0}")]
    Double(Excerpt),
    /// Not a boolean.
    #[error("expected a boolean (1 or 0), found {0}")]
    Bool(Excerpt),
    /// Not a `YYYY-MM-DD HH:MM:SS[.fff]` timestamp.
    #[error("expected a timestamp like \"2024-11-16 13:33:22.625\", found {0}")]
    Timestamp(Excerpt),
    /// JSON syntax error or a JSON value of the wrong type (the message comes from serde_json
    /// and ends with the position inside the field).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A self-describing entity whose schema is not an Iglu URI.
    #[error("{what} has schema {uri}, which is not an Iglu URI iglu:vendor/name/format/M-R-A")]
    SchemaUri {
        /// Which entity, e.g. "entity 3".
        what: String,
        /// The schema string found.
        uri: Excerpt,
    },
    /// A self-describing entity whose `data` is neither an object nor null.
    #[error("{what}: \"data\" must be a JSON object, found {found}")]
    DataNotObject {
        /// Which entity, e.g. "entity 3 (iglu:com.acme/x/jsonschema/1-0-0)".
        what: String,
        /// The JSON type found.
        found: &'static str,
    },
    /// The field is empty but must not be.
    #[error("must not be empty")]
    Empty,
    /// The field cannot be used this way.
    #[error("{0}")]
    Shape(&'static str),
    /// The field is not valid UTF-8 (only when a field is read on its own).
    #[error("invalid UTF-8 at byte {0} of the field")]
    InvalidUtf8(usize),
}

/// A field value quoted for an error message, cut after 80 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt(pub String);

impl Excerpt {
    const MAX_CHARS: usize = 80;

    pub(crate) fn new(s: &str) -> Excerpt {
        match s.char_indices().nth(Self::MAX_CHARS) {
            None => Excerpt(s.to_owned()),
            Some((cut, _)) => {
                let mut owned = s[..cut].to_owned();
                owned.push('…');
                Excerpt(owned)
            }
        }
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Checks that `line` has exactly [`FIELD_COUNT`] tab-separated fields and is valid UTF-8.
pub fn validate(line: &[u8]) -> Result<(), ParseError> {
    let tabs = bytecount::count(line, b'\t');
    if tabs != FIELD_COUNT - 1 {
        return Err(ParseError::FieldCount { found: tabs + 1 });
    }
    utf8(line).map(|_| ())
}

/// `line` as `&str`, or the offset of its first invalid UTF-8 sequence.
pub(crate) fn utf8(line: &[u8]) -> Result<&str, ParseError> {
    match simdutf8::basic::from_utf8(line) {
        Ok(s) => Ok(s),
        Err(_) => {
            let offset = match simdutf8::compat::from_utf8(line) {
                Err(e) => e.valid_up_to(),
                Ok(_) => 0,
            };
            Err(ParseError::InvalidUtf8 { offset })
        }
    }
}

/// One field as `&str`, for lookups that read a single field of a line.
pub(crate) fn field_str(line: &[u8], idx: usize) -> Result<&str, ParseError> {
    let raw = field(line, idx);
    match simdutf8::basic::from_utf8(raw) {
        Ok(s) => Ok(s),
        Err(_) => {
            let offset = match simdutf8::compat::from_utf8(raw) {
                Err(e) => e.valid_up_to(),
                Ok(_) => 0,
            };
            Err(ParseError::field(idx, FieldProblem::InvalidUtf8(offset)))
        }
    }
}

/// The raw bytes of field `idx` of a validated line (see [`validate`]), found without scanning
/// the whole line: fields before `tr_country` (66) are reached by counting tabs from the start,
/// the others by counting tabs back from the end (`event_name`, 126, is 4 tabs from the end).
/// Tabs are counted 8 bytes at a time; the field's other end is found with `memchr`.
///
/// If the line has fewer fields than expected the result is meaningless (but this never panics
/// for `idx < FIELD_COUNT`).
///
/// # Panics
/// If `idx >= FIELD_COUNT`.
#[inline]
pub fn field(line: &[u8], idx: usize) -> &[u8] {
    assert!(idx < FIELD_COUNT, "field index {idx} out of range");
    if idx < 66 {
        let start = if idx == 0 {
            0
        } else {
            match nth_tab(line, idx - 1) {
                Some(p) => p + 1,
                None => return &[],
            }
        };
        let end = memchr::memchr(b'\t', &line[start..]).map_or(line.len(), |p| start + p);
        &line[start..end]
    } else {
        let after = FIELD_COUNT - 1 - idx;
        let end = if after == 0 {
            line.len()
        } else {
            match nth_tab_back(line, after - 1) {
                Some(p) => p,
                None => return &[],
            }
        };
        let start = memchr::memrchr(b'\t', &line[..end]).map_or(0, |p| p + 1);
        &line[start..end]
    }
}

/// High bit of each byte of `x` that is a tab, exactly (no carries between bytes).
#[inline(always)]
fn tab_mask(x: u64) -> u64 {
    const TABS: u64 = 0x0909_0909_0909_0909;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let y = x ^ TABS;
    !(((y & LOW7) + LOW7) | y | LOW7)
}

/// Fills `starts` with the start offset of every field, plus `line.len() + 1` at the end (so
/// field `i` is `line[starts[i]..starts[i + 1] - 1]`). False if the line does not have exactly
/// [`FIELD_COUNT`] fields.
pub(crate) fn field_starts(line: &[u8], starts: &mut [usize; FIELD_COUNT + 1]) -> bool {
    let mut n = 0;
    let mut record = |mut mask: u64, base: usize| {
        while mask != 0 {
            n += 1;
            if n >= FIELD_COUNT {
                return false;
            }
            starts[n] = base + mask.trailing_zeros() as usize / 8 + 1;
            mask &= mask - 1;
        }
        true
    };
    let mut blocks = line.chunks_exact(32);
    let mut base = 0;
    for block in &mut blocks {
        let masks = [
            tab_mask(word(&block[0..8])),
            tab_mask(word(&block[8..16])),
            tab_mask(word(&block[16..24])),
            tab_mask(word(&block[24..32])),
        ];
        if masks.iter().any(|&m| m != 0) {
            for (k, &mask) in masks.iter().enumerate() {
                if !record(mask, base + 8 * k) {
                    return false;
                }
            }
        }
        base += 32;
    }
    let mut words = blocks.remainder().chunks_exact(8);
    for chunk in &mut words {
        if !record(tab_mask(word(chunk)), base) {
            return false;
        }
        base += 8;
    }
    for (k, &b) in words.remainder().iter().enumerate() {
        if b == b'\t' && !record(0x80, base + k) {
            return false;
        }
    }
    if n != FIELD_COUNT - 1 {
        return false;
    }
    starts[FIELD_COUNT] = line.len() + 1;
    true
}

#[inline(always)]
fn word(chunk: &[u8]) -> u64 {
    u64::from_le_bytes(chunk.try_into().expect("8 bytes"))
}

/// Position of tab number `n` (0-based) from the start of `line`. Tabs are counted 32 bytes at
/// a time, then 8, then one by one.
#[inline]
fn nth_tab(line: &[u8], mut n: usize) -> Option<usize> {
    let mut base = 0;
    let mut blocks = line.chunks_exact(32);
    for block in &mut blocks {
        let masks = [
            tab_mask(word(&block[0..8])),
            tab_mask(word(&block[8..16])),
            tab_mask(word(&block[16..24])),
            tab_mask(word(&block[24..32])),
        ];
        let count: u32 = masks.iter().map(|m| m.count_ones()).sum();
        if n < count as usize {
            for mut mask in masks {
                let count = mask.count_ones() as usize;
                if n < count {
                    for _ in 0..n {
                        mask &= mask - 1;
                    }
                    return Some(base + mask.trailing_zeros() as usize / 8);
                }
                n -= count;
                base += 8;
            }
        }
        n -= count as usize;
        base += 32;
    }
    let rest = blocks.remainder();
    let mut words = rest.chunks_exact(8);
    for chunk in &mut words {
        let mut mask = tab_mask(word(chunk));
        let count = mask.count_ones() as usize;
        if n < count {
            for _ in 0..n {
                mask &= mask - 1;
            }
            return Some(base + mask.trailing_zeros() as usize / 8);
        }
        n -= count;
        base += 8;
    }
    memchr::memchr_iter(b'\t', words.remainder())
        .nth(n)
        .map(|p| base + p)
}

/// Position of tab number `n` (0-based) counted back from the end of `line`, 32 bytes at a time,
/// then 8, then one by one.
#[inline]
fn nth_tab_back(line: &[u8], mut n: usize) -> Option<usize> {
    let mut end = line.len();
    let mut blocks = line.rchunks_exact(32);
    for block in &mut blocks {
        let masks = [
            tab_mask(word(&block[24..32])),
            tab_mask(word(&block[16..24])),
            tab_mask(word(&block[8..16])),
            tab_mask(word(&block[0..8])),
        ];
        let count: u32 = masks.iter().map(|m| m.count_ones()).sum();
        if n < count as usize {
            for mut mask in masks {
                end -= 8;
                let count = mask.count_ones() as usize;
                if n < count {
                    for _ in 0..n {
                        mask &= !(1u64 << (63 - mask.leading_zeros()));
                    }
                    return Some(end + (63 - mask.leading_zeros() as usize) / 8);
                }
                n -= count;
            }
        }
        n -= count as usize;
        end -= 32;
    }
    let rest = blocks.remainder();
    let mut words = rest.rchunks_exact(8);
    for chunk in &mut words {
        end -= 8;
        let mut mask = tab_mask(word(chunk));
        let count = mask.count_ones() as usize;
        if n < count {
            for _ in 0..n {
                mask &= !(1u64 << (63 - mask.leading_zeros()));
            }
            return Some(end + (63 - mask.leading_zeros() as usize) / 8);
        }
        n -= count;
    }
    memchr::memrchr_iter(b'\t', words.remainder()).nth(n)
}

/// Appends to `out` the positions of the first `n` tabs of `line` (fewer if it has fewer), in
/// one pass that tests 64 bytes per step and then takes the tabs a bit at a time: where a
/// line's fields are mostly short or empty, a search per tab (memchr) pays its set-up for every
/// few bytes. (A word-at-a-time version of this was no faster than memchr; 16-byte compares
/// are.)
pub fn first_tabs(line: &[u8], n: usize, out: &mut Vec<usize>) {
    let want = out.len() + n;
    if n == 0 {
        return;
    }
    let mut blocks = line.chunks_exact(64);
    let mut base = 0;
    for block in &mut blocks {
        let mut mask = tabs64(block.try_into().expect("64 bytes"));
        while mask != 0 {
            out.push(base + mask.trailing_zeros() as usize);
            if out.len() == want {
                return;
            }
            mask &= mask - 1;
        }
        base += 64;
    }
    for (k, &b) in blocks.remainder().iter().enumerate() {
        if b == b'\t' {
            out.push(base + k);
            if out.len() == want {
                return;
            }
        }
    }
}

/// Appends to `out` the positions of the last `n` tabs of `line`, last first (fewer if it has
/// fewer): [`first_tabs`] from the end.
pub fn last_tabs(line: &[u8], n: usize, out: &mut Vec<usize>) {
    let want = out.len() + n;
    if n == 0 {
        return;
    }
    let mut blocks = line.rchunks_exact(64);
    let mut base = line.len();
    for block in &mut blocks {
        base -= 64;
        let mut mask = tabs64(block.try_into().expect("64 bytes"));
        while mask != 0 {
            let top = 63 - mask.leading_zeros() as usize;
            out.push(base + top);
            if out.len() == want {
                return;
            }
            mask ^= 1 << top;
        }
    }
    for (k, &b) in blocks.remainder().iter().enumerate().rev() {
        if b == b'\t' {
            out.push(k);
            if out.len() == want {
                return;
            }
        }
    }
}

/// Bit `k` set where `block[k]` is a tab: four 16-byte compares (SSE2, which every x86-64 has).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn tabs64(block: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8};
    let mut mask = 0u64;
    // SAFETY: SSE2 is part of every x86-64 (the target's baseline), and each load reads bytes
    // `16k..16k + 16` of the 64-byte block, unaligned.
    unsafe {
        let tab = _mm_set1_epi8(b'\t' as i8);
        for k in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
            mask |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, tab)) as u16) << (16 * k);
        }
    }
    mask
}

/// Bit `k` set where `block[k]` is a tab.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn tabs64(block: &[u8; 64]) -> u64 {
    block
        .iter()
        .enumerate()
        .fold(0, |m, (k, &b)| m | u64::from(b == b'\t') << k)
}

#[cfg(test)]
mod tests;
