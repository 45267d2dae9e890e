//! Field paths into self-describing data, in Snowbridge's `custom_field_path` syntax
//! (`a.b[0].c`, `[1]`, `a[0][2]`), and their lookup in raw JSON.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSegment {
    /// An object member.
    Key(String),
    /// An array element (0-based).
    Index(usize),
}

/// A path to a value inside a context entity's or an unstruct event's `data`, e.g.
/// `test1.test2[0].test3`.
///
/// Syntax: keys separated by `.`, each followed by any number of `[N]` indexes; a segment may
/// be indexes alone (`[1]`, `a.[0]`). Keys may hold any character but `.`, `[` and `]`.
///
/// Snowbridge (`parsePathToArguments` in `pkg/transform/filter/snowplow_enriched_filter_common.go`)
/// tokenises the path with the regex `\[\d+\]|[^\.\[]+` after checking that `[` and `]` are as
/// many, so it silently skips empty segments (`a..b`, `.a`) and reads `a[x]` as the keys `a` and
/// `x]`. weir refuses those with a message instead; every path that means one thing reads the
/// same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath {
    text: String,
    segments: Vec<PathSegment>,
}

/// Why a field path could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid field path {path:?}: {reason} at character {position}")]
pub struct PathError {
    /// The path as given.
    pub path: String,
    /// 0-based character position of the problem.
    pub position: usize,
    /// What is wrong.
    pub reason: &'static str,
}

impl FieldPath {
    /// Parses a path such as `a.b[0].c`.
    pub fn parse(text: &str) -> Result<FieldPath, PathError> {
        let b = text.as_bytes();
        let fail = |at: usize, reason: &'static str| PathError {
            path: text.to_owned(),
            position: text[..at.min(text.len())].chars().count(),
            reason,
        };
        if b.is_empty() {
            return Err(fail(0, "the path is empty"));
        }
        let mut segments = Vec::new();
        let mut i = 0;
        loop {
            let start = i;
            while i < b.len() && !matches!(b[i], b'.' | b'[' | b']') {
                i += 1;
            }
            if i > start {
                segments.push(PathSegment::Key(text[start..i].to_owned()));
            }
            while i < b.len() && b[i] == b'[' {
                let digits = i + 1;
                i = digits;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                if i == digits {
                    return Err(fail(i, "expected an array index (digits) after '['"));
                }
                if b.get(i) != Some(&b']') {
                    return Err(fail(i, "expected ']'"));
                }
                let n = text[digits..i]
                    .parse()
                    .map_err(|_| fail(digits, "array index too large"))?;
                segments.push(PathSegment::Index(n));
                i += 1;
            }
            if i == start {
                return Err(fail(
                    i,
                    if b[i] == b']' {
                        "unmatched ']'"
                    } else {
                        "empty key"
                    },
                ));
            }
            match b.get(i) {
                None => break,
                Some(b'.') => {
                    i += 1;
                    if i == b.len() {
                        return Err(fail(i, "the path ends with '.'"));
                    }
                }
                Some(_) => return Err(fail(i, "expected '.' or '[' after ']'")),
            }
        }
        Ok(FieldPath {
            text: text.to_owned(),
            segments,
        })
    }

    /// The segments, in order (never empty).
    pub fn segments(&self) -> &[PathSegment] {
        &self.segments
    }

    /// The path as it was written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for FieldPath {
    type Err = PathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldPath::parse(s)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A borrowed path step (lets callers prepend fixed steps without allocating).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Step<'p> {
    Key(&'p str),
    Index(usize),
}

impl<'p> From<&'p PathSegment> for Step<'p> {
    fn from(s: &'p PathSegment) -> Self {
        match s {
            PathSegment::Key(k) => Step::Key(k),
            PathSegment::Index(n) => Step::Index(*n),
        }
    }
}

/// Follows `steps` from the JSON text `json`. `Ok(None)` when a step does not apply (missing
/// key, index out of range, or the wrong kind of value), as the Go SDK's `json.Get` reports
/// "not found". Keys match exactly; with duplicate keys the last one wins (Go decodes entity
/// data into a map). Errors only for invalid JSON.
pub(crate) fn lookup<'a, 'p>(
    json: &'a str,
    steps: impl IntoIterator<Item = Step<'p>>,
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    let mut current: Option<&'a RawValue> = None;
    let mut text = json;
    for step in steps {
        let mut de = serde_json::Deserializer::from_str(text);
        let next = de.deserialize_any(StepVisitor(step))?;
        de.end()?;
        match next {
            Some(raw) => {
                text = raw.get();
                current = Some(raw);
            }
            None => return Ok(None),
        }
    }
    Ok(current)
}

struct StepVisitor<'p>(Step<'p>);

impl<'de> Visitor<'de> for StepVisitor<'_> {
    type Value = Option<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        match self.0 {
            Step::Key(key) => {
                while let Some(hit) = map.next_key_seed(KeyIs(key))? {
                    if hit {
                        found = Some(map.next_value::<&'de RawValue>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Step::Index(_) => while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {},
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        match self.0 {
            Step::Index(n) => {
                let mut i = 0;
                while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                    if i == n {
                        found = Some(raw);
                    }
                    i += 1;
                }
            }
            Step::Key(_) => while seq.next_element::<IgnoredAny>()?.is_some() {},
        }
        Ok(found)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Reads an object key and tells whether it equals the expected one, without allocating.
struct KeyIs<'k>(&'k str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}
