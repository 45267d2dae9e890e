//! Streaming readers for the self-describing JSON fields (`contexts`, `derived_contexts`,
//! `unstruct_event`) and the flattened key names built from their Iglu schema URIs.
//!
//! The readers never build a `serde_json::Value`: the wrapper objects are walked with serde
//! visitors and each entity's `data` is captured as a borrowed `&RawValue` (which serde_json
//! still checks for JSON syntax).
//!
//! Semantics follow the Go analytics SDK (`analytics/shred.go`), which decodes these fields
//! with json-iterator into `Contexts{Schema string; Data []SelfDescribingData}` and
//! `UnstructEvent{Schema string; Data SelfDescribingData}` where
//! `SelfDescribingData{Schema string; Data map[string]any}`:
//! * object keys are matched case-insensitively (json-iterator's default), unknown keys ignored;
//! * a `null` or missing entity `data` is kept as `null`; a non-object `data` is an error;
//! * a missing/`null` `data` array yields no entities;
//! * every entity schema must match the SDK's `SCHEMA_URI_REGEX`, otherwise the field fails.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::FieldProblem;

/// Receives the entities of a contexts field, in order.
pub(crate) trait EntitySink<'de> {
    /// Entity number `index` (0-based) with its schema URI and its `data` (`None` when `null` or
    /// missing; otherwise a JSON object). Returns a problem if the schema is not acceptable.
    fn entity(
        &mut self,
        index: usize,
        schema: &str,
        data: Option<&'de RawValue>,
    ) -> Result<(), FieldProblem>;
}

struct State<'s, S> {
    sink: &'s mut S,
    count: usize,
    /// First entity whose `data` is not an object (a decoding error in Go, reported first).
    shape: Option<FieldProblem>,
    /// First entity refused by the sink (a schema error in Go, reported after decoding).
    schema: Option<FieldProblem>,
}

/// Reads a `contexts`/`derived_contexts` field, handing each entity to `sink`.
pub(crate) fn read_contexts<'de, S: EntitySink<'de>>(
    json: &'de str,
    sink: &mut S,
) -> Result<(), FieldProblem> {
    let mut state = State {
        sink,
        count: 0,
        shape: None,
        schema: None,
    };
    let mut de = serde_json::Deserializer::from_str(json);
    ContextsSeed(&mut state)
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| FieldProblem::Json(e.to_string()))?;
    match state.shape.or(state.schema) {
        Some(problem) => Err(problem),
        None => Ok(()),
    }
}

/// The inner self-describing event of an `unstruct_event` field: its schema URI (empty when
/// missing) and its `data` (`None` when `null` or missing, otherwise a JSON object).
pub(crate) struct Unstruct<'de> {
    pub schema: Cow<'de, str>,
    pub data: Option<&'de RawValue>,
}

/// Reads an `unstruct_event` field (`{"schema":…,"data":{"schema":…,"data":{…}}}`).
pub(crate) fn read_unstruct(json: &str) -> Result<Unstruct<'_>, FieldProblem> {
    let mut de = serde_json::Deserializer::from_str(json);
    let (schema, data) = OuterUnstruct
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| FieldProblem::Json(e.to_string()))?;
    let data = check_data(data).map_err(|found| FieldProblem::DataNotObject {
        what: format!("the event ({schema})"),
        found,
    })?;
    Ok(Unstruct { schema, data })
}

/// `None` for JSON null, the value for an object, the JSON type's name otherwise.
fn check_data(data: Option<&RawValue>) -> Result<Option<&RawValue>, &'static str> {
    let Some(raw) = data else { return Ok(None) };
    match raw.get().as_bytes().first() {
        Some(b'{') => Ok(Some(raw)),
        Some(b'n') => Ok(None),
        Some(b'[') => Err("an array"),
        Some(b'"') => Err("a string"),
        Some(b't' | b'f') => Err("a boolean"),
        _ => Err("a number"),
    }
}

struct ContextsSeed<'a, 's, S>(&'a mut State<'s, S>);

impl<'de, S: EntitySink<'de>> DeserializeSeed<'de> for ContextsSeed<'_, '_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: EntitySink<'de>> Visitor<'de> for ContextsSeed<'_, '_, S> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a self-describing contexts object {\"schema\":…,\"data\":[…]}")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(SdKeySeed)? {
            match key {
                SdKey::Data => map.next_value_seed(EntitiesSeed(&mut *self.0))?,
                _ => map.next_value::<IgnoredAny>().map(|_| ())?,
            }
        }
        Ok(())
    }
}

struct EntitiesSeed<'a, 's, S>(&'a mut State<'s, S>);

impl<'de, S: EntitySink<'de>> DeserializeSeed<'de> for EntitiesSeed<'_, '_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: EntitySink<'de>> Visitor<'de> for EntitiesSeed<'_, '_, S> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of self-describing entities")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(EntitySeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

struct EntitySeed<'a, 's, S>(&'a mut State<'s, S>);

impl<'de, S: EntitySink<'de>> DeserializeSeed<'de> for EntitySeed<'_, '_, S> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let (schema, data) = d.deserialize_any(SelfDescribing)?;
        let state = self.0;
        let index = state.count;
        state.count += 1;
        match check_data(data) {
            Ok(data) => {
                if let Err(problem) = state.sink.entity(index, &schema, data) {
                    state.schema.get_or_insert(problem);
                }
            }
            Err(found) => {
                state.shape.get_or_insert(FieldProblem::DataNotObject {
                    what: format!("entity {index} ({schema})"),
                    found,
                });
            }
        }
        Ok(())
    }
}

/// `{"schema": "...", "data": ...}` → (schema, data); `null` → ("", None).
struct SelfDescribing;

impl<'de> Visitor<'de> for SelfDescribing {
    type Value = (Cow<'de, str>, Option<&'de RawValue>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a self-describing JSON object {\"schema\":…,\"data\":…}")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Cow::Borrowed(""), None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut schema = Cow::Borrowed("");
        let mut data = None;
        while let Some(key) = map.next_key_seed(SdKeySeed)? {
            match key {
                SdKey::Schema => schema = map.next_value_seed(StrSeed)?,
                SdKey::Data => data = Some(map.next_value::<&'de RawValue>()?),
                SdKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok((schema, data))
    }
}

/// The outer `unstruct_event` object: only its `data` matters.
struct OuterUnstruct;

impl<'de> DeserializeSeed<'de> for OuterUnstruct {
    type Value = (Cow<'de, str>, Option<&'de RawValue>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for OuterUnstruct {
    type Value = (Cow<'de, str>, Option<&'de RawValue>);
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a self-describing unstruct_event object {\"schema\":…,\"data\":{…}}")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok((Cow::Borrowed(""), None))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inner = (Cow::Borrowed(""), None);
        while let Some(key) = map.next_key_seed(SdKeySeed)? {
            match key {
                SdKey::Data => inner = map.next_value_seed(InnerSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(inner)
    }
}

struct InnerSeed;

impl<'de> DeserializeSeed<'de> for InnerSeed {
    type Value = (Cow<'de, str>, Option<&'de RawValue>);
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(SelfDescribing)
    }
}

#[derive(Clone, Copy)]
enum SdKey {
    Schema,
    Data,
    Other,
}

/// Reads an object key as `schema`/`data`/other, case-insensitively, without allocating.
struct SdKeySeed;

impl<'de> DeserializeSeed<'de> for SdKeySeed {
    type Value = SdKey;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<SdKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for SdKeySeed {
    type Value = SdKey;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<SdKey, E> {
        Ok(if v.eq_ignore_ascii_case("data") {
            SdKey::Data
        } else if v.eq_ignore_ascii_case("schema") {
            SdKey::Schema
        } else {
            SdKey::Other
        })
    }
}

/// A JSON string (borrowed unless it has escapes); `null` reads as "" (as Go does).
pub(crate) struct StrSeed;

impl<'de> DeserializeSeed<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrSeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(""))
    }
}

/// Something a flattened key can be written to, byte by byte (keys are ASCII).
pub(crate) trait KeyOut {
    fn push(&mut self, b: u8);
    fn push_str(&mut self, s: &str) {
        for b in s.bytes() {
            self.push(b);
        }
    }
}

impl KeyOut for String {
    fn push(&mut self, b: u8) {
        String::push(self, char::from(b));
    }
    fn push_str(&mut self, s: &str) {
        String::push_str(self, s);
    }
}

/// Compares a key as it is written against an expected key, without building it.
pub(crate) struct KeyMatcher<'t> {
    target: &'t [u8],
    pos: usize,
    ok: bool,
}

impl<'t> KeyMatcher<'t> {
    pub(crate) fn new(target: &'t str) -> Self {
        KeyMatcher {
            target: target.as_bytes(),
            pos: 0,
            ok: true,
        }
    }
    pub(crate) fn matched(&self) -> bool {
        self.ok && self.pos == self.target.len()
    }
}

impl KeyOut for KeyMatcher<'_> {
    fn push(&mut self, b: u8) {
        if self.ok && self.target.get(self.pos) == Some(&b) {
            self.pos += 1;
        } else {
            self.ok = false;
        }
    }
}

/// The parts of an Iglu URI that make up a flattened key: (vendor, name, model).
///
/// Accepts exactly the Go SDK's `SCHEMA_URI_REGEX`:
/// `^iglu:([a-zA-Z0-9-_.]+)/([a-zA-Z0-9-_]+)/([a-zA-Z0-9-_]+)/([1-9][0-9]*)(-(0|[1-9][0-9]*)){2}$`
/// (the Python SDK uses the same expression).
pub(crate) fn iglu_parts(uri: &str) -> Option<(&str, &str, &str)> {
    fn word(s: &str, dots: bool) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (dots && b == b'.'))
    }
    fn number(s: &str) -> bool {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    }
    let rest = uri.strip_prefix("iglu:")?;
    let mut parts = rest.split('/');
    let (vendor, name, format, version) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !word(vendor, true) || !word(name, false) || !word(format, false) {
        return None;
    }
    let mut numbers = version.split('-');
    let (model, revision, addition) = (numbers.next()?, numbers.next()?, numbers.next()?);
    if numbers.next().is_some()
        || model == "0"
        || !number(model)
        || !number(revision)
        || !number(addition)
    {
        return None;
    }
    Some((vendor, name, model))
}

/// Writes `<prefix>_<vendor>_<name>_<model>` for an Iglu URI, as the Go SDK's `fixSchema` does:
/// dots in the vendor become `_`, an `_` goes before every upper-case letter of the name that is
/// not its first character and does not follow an `_` (`insertUnderscores`), and the whole key
/// is lower-cased. Returns false (having written nothing) if the URI is not a valid Iglu URI.
///
/// Note: the Python SDK 0.2.3 inserts `_` only between a non-upper-case character and an
/// upper-case one (`ABTest` → `abtest`, Go: `a_b_test`); weir follows Go.
pub(crate) fn write_key(prefix: &str, uri: &str, out: &mut impl KeyOut) -> bool {
    let Some((vendor, name, model)) = iglu_parts(uri) else {
        return false;
    };
    out.push_str(prefix);
    out.push(b'_');
    for b in vendor.bytes() {
        out.push(if b == b'.' {
            b'_'
        } else {
            b.to_ascii_lowercase()
        });
    }
    out.push(b'_');
    let name = name.as_bytes();
    for (i, &b) in name.iter().enumerate() {
        if b.is_ascii_uppercase() && i > 0 && name[i - 1] != b'_' {
            out.push(b'_');
        }
        out.push(b.to_ascii_lowercase());
    }
    out.push(b'_');
    out.push_str(model);
    true
}
