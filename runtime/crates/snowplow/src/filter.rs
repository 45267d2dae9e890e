//! Value lookups for Snowbridge's `spEnrichedFilterContext` and `spEnrichedFilterUnstructEvent`.
//!
//! Semantics (snowplow/snowbridge `pkg/transform/filter/snowplow_enriched_filter_common.go`,
//! `…_context.go`, `…_unstruct.go`, and the Go SDK's `GetContextValue` /
//! `GetUnstructEventValue` in `analytics/transform.go`):
//! * The filter collects every value found at the path and matches its regex against each; the
//!   event "matches" if any value matches. **If no value is found at all, the regex is matched
//!   against the empty string** (`evaluateSpEnrichedFilter`: "because negative matches are a
//!   thing"). So with `keep` and `^foo$` an event without the context/path is dropped, with
//!   `drop` it is kept; a regex that matches "" (e.g. `^$`, `.*`) treats "missing" as a match.
//! * Values are compared in Go's `fmt.Sprintf("%v")` form of what json-iterator decodes: strings
//!   as they are, `null` as "", booleans `true`/`false`, and **every number as a float64 printed
//!   with `%v`** (shortest digits, exponent form below 1e-4 and from 1e6 on: `12.5`, `100`,
//!   `1e+06`, `1.415358089861e+12`). Objects and arrays print as Go maps/slices
//!   (`map[a:1 b:x]`, `[1 2]`).
//! * The returned bool is that "matches"; the caller keeps the event when it matches and the
//!   action is `keep`, or when it does not match and the action is `drop`.

use std::borrow::Cow;
use std::io::Write as _;

use regex::Regex;
use serde::de::DeserializeSeed as _;
use serde_json::value::RawValue;
use serde_json::Value;

use super::path::{lookup, Step};
use super::sdj::{self, EntitySink, KeyMatcher, StrSeed};
use super::{
    field_str, Excerpt, FieldPath, FieldProblem, ParseError, CONTEXTS, DERIVED_CONTEXTS,
    EVENT_NAME, EVENT_VERSION, UNSTRUCT_EVENT,
};

/// Whether any entity of the context `context_full_name` (the flattened key, e.g.
/// `contexts_com_snowplowanalytics_snowplow_media_player_2`), in `contexts` or in
/// `derived_contexts`, has a value at `path` for which `matches` (given the value's Go `%v`
/// text) is true; if no entity has a value there, `matches("")` decides (Snowbridge
/// `spEnrichedFilterContext`, see the module docs).
///
/// Both context fields are read in full and must be valid (as in Snowbridge, where the SDK
/// shreds them first): invalid JSON or a bad schema URI is an error. Expects a line that passed
/// [`validate`](super::validate) (only the two context fields are located, with
/// [`field`](super::field)).
pub fn context_values(
    line: &[u8],
    context_full_name: &str,
    path: &FieldPath,
    mut matches: impl FnMut(&str) -> bool,
) -> Result<bool, ParseError> {
    let mut found = false;
    let mut matched = false;
    for idx in [CONTEXTS, DERIVED_CONTEXTS] {
        let json = field_str(line, idx)?;
        if json.is_empty() {
            continue;
        }
        let mut sink = ContextSink {
            name: context_full_name,
            path,
            matches: &mut matches,
            found: &mut found,
            matched: &mut matched,
        };
        sdj::read_contexts(json, &mut sink).map_err(|p| ParseError::field(idx, p))?;
    }
    if !found {
        matched = matches("");
    }
    Ok(matched)
}

/// The first value at `path` among the entities of the context `context_full_name`, searching
/// `contexts` then `derived_contexts`, as raw JSON text: the first element of the Go SDK's
/// `GetContextValue`, which Snowbridge's `spGtmssPreview` takes. Entities without a value there
/// (or with `data` null) are skipped; a value that is JSON `null` counts. Same validity rules
/// and expectations as [`context_values`].
pub fn first_context_value(
    line: &[u8],
    context_full_name: &str,
    path: &FieldPath,
) -> Result<Option<String>, ParseError> {
    let mut first = None;
    for idx in [CONTEXTS, DERIVED_CONTEXTS] {
        let json = field_str(line, idx)?;
        if json.is_empty() {
            continue;
        }
        let mut sink = FirstSink {
            name: context_full_name,
            path,
            first: &mut first,
        };
        sdj::read_contexts(json, &mut sink).map_err(|p| ParseError::field(idx, p))?;
    }
    Ok(first)
}

struct FirstSink<'a> {
    name: &'a str,
    path: &'a FieldPath,
    first: &'a mut Option<String>,
}

impl<'de> EntitySink<'de> for FirstSink<'_> {
    fn entity(
        &mut self,
        index: usize,
        schema: &str,
        data: Option<&'de RawValue>,
    ) -> Result<(), FieldProblem> {
        let mut key = KeyMatcher::new(self.name);
        if !sdj::write_key("contexts", schema, &mut key) {
            return Err(FieldProblem::SchemaUri {
                what: format!("entity {index}"),
                uri: Excerpt::new(schema),
            });
        }
        let (true, None, Some(data)) = (key.matched(), self.first.as_ref(), data) else {
            return Ok(());
        };
        let steps = self.path.segments().iter().map(Step::from);
        let value = lookup(data.get(), steps).map_err(|e| FieldProblem::Json(e.to_string()))?;
        *self.first = value.map(|v| v.get().to_string());
        Ok(())
    }
}

struct ContextSink<'a, F> {
    name: &'a str,
    path: &'a FieldPath,
    matches: &'a mut F,
    found: &'a mut bool,
    matched: &'a mut bool,
}

impl<'de, F: FnMut(&str) -> bool> EntitySink<'de> for ContextSink<'_, F> {
    fn entity(
        &mut self,
        index: usize,
        schema: &str,
        data: Option<&'de RawValue>,
    ) -> Result<(), FieldProblem> {
        let mut key = KeyMatcher::new(self.name);
        if !sdj::write_key("contexts", schema, &mut key) {
            return Err(FieldProblem::SchemaUri {
                what: format!("entity {index}"),
                uri: Excerpt::new(schema),
            });
        }
        // A null `data` has no paths (Go: json.Get on "null" fails, the entity is skipped).
        let (true, false, Some(data)) = (key.matched(), *self.matched, data) else {
            return Ok(());
        };
        let steps = self.path.segments().iter().map(Step::from);
        let value = lookup(data.get(), steps).map_err(|e| FieldProblem::Json(e.to_string()))?;
        if let Some(value) = value {
            *self.found = true;
            if with_go_text(value, |text| (self.matches)(text)) {
                *self.matched = true;
            }
        }
        Ok(())
    }
}

/// Whether the event is the unstruct event `event_name` with a version matching
/// `version_regex` and has a value at `path` inside its data for which `matches` (given the
/// value's Go `%v` text) is true; in every other case `matches("")` decides (Snowbridge
/// `spEnrichedFilterUnstructEvent`, see the module docs).
///
/// As in Snowbridge:
/// * the event is identified by the atomic fields `event_name` (126), compared for equality,
///   and `event_version` (128), searched with `version_regex` **unanchored**
///   (`regexp.MatchString`): `1-*-*` is a regex that matches any version containing a `1`; use
///   `^1-` for "model 1". Snowbridge's default is `.*`;
/// * an empty `event_name`, or an empty `event_version` when the name matches, is an error;
/// * `unstruct_event` is only read along the path (`data.data.<path>`); its JSON must be valid.
///
/// Expects a line that passed [`validate`](super::validate).
pub fn unstruct_value(
    line: &[u8],
    event_name: &str,
    version_regex: &Regex,
    path: &FieldPath,
    mut matches: impl FnMut(&str) -> bool,
) -> Result<bool, ParseError> {
    let name = field_str(line, EVENT_NAME)?;
    if name.is_empty() {
        return Err(ParseError::field(EVENT_NAME, FieldProblem::Empty));
    }
    if name != event_name {
        return Ok(matches(""));
    }
    let version = field_str(line, EVENT_VERSION)?;
    if version.is_empty() {
        return Err(ParseError::field(EVENT_VERSION, FieldProblem::Empty));
    }
    if !version_regex.is_match(version) {
        return Ok(matches(""));
    }
    let json = field_str(line, UNSTRUCT_EVENT)?;
    if json.is_empty() {
        return Ok(matches(""));
    }
    let steps = [Step::Key("data"), Step::Key("data")]
        .into_iter()
        .chain(path.segments().iter().map(Step::from));
    let value = lookup(json, steps)
        .map_err(|e| ParseError::field(UNSTRUCT_EVENT, FieldProblem::Json(e.to_string())))?;
    Ok(match value {
        Some(value) => with_go_text(value, &mut matches),
        None => matches(""),
    })
}

/// Calls `f` with the text Go's `fmt.Sprintf("%v", v)` gives for the value json-iterator
/// decodes from `raw` (`null` → "", as Snowbridge maps nil to "").
pub(crate) fn with_go_text<R>(raw: &RawValue, f: impl FnOnce(&str) -> R) -> R {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => {
            let mut de = serde_json::Deserializer::from_str(text);
            let s = StrSeed.deserialize(&mut de).unwrap_or(Cow::Borrowed(""));
            f(&s)
        }
        Some(b't') => f("true"),
        Some(b'f') => f("false"),
        Some(b'n') | None => f(""),
        Some(b'{' | b'[') => {
            let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            let mut s = String::new();
            go_fmt_value(&value, &mut s);
            f(&s)
        }
        Some(_) => {
            let mut buf = [0u8; 64];
            let x: f64 = text.parse().unwrap_or(f64::NAN);
            f(go_fmt_float(x, &mut buf))
        }
    }
}

/// Go's `%v` of a decoded JSON value inside a composite (`nil` prints as `<nil>` there).
fn go_fmt_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let mut buf = [0u8; 64];
            out.push_str(go_fmt_float(n.as_f64().unwrap_or(f64::NAN), &mut buf));
        }
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_fmt_value(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // fmt prints maps with sorted keys.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push_str("map[");
            for (i, (k, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                go_fmt_value(item, out);
            }
            out.push(']');
        }
    }
}

/// Go's `fmt.Sprintf("%v", x)` for a float64: `strconv.FormatFloat(x, 'g', -1, 64)` with the
/// `%e` form when the decimal exponent is < -4 or >= 6 (shortest precision uses 6 for that
/// choice), and at least two exponent digits (`1e+06`, `1.5e-07`).
pub(crate) fn go_fmt_float(x: f64, buf: &mut [u8; 64]) -> &str {
    if x.is_nan() {
        return "NaN";
    }
    if x.is_infinite() {
        return if x > 0.0 { "+Inf" } else { "-Inf" };
    }
    // Shortest round-trip digits and exponent, from Rust's `{:e}` (e.g. "-1.2345e-7").
    let mut sci = [0u8; 40];
    let sci_len = {
        let mut cursor = std::io::Cursor::new(&mut sci[..]);
        write!(cursor, "{x:e}").expect("fits");
        cursor.position() as usize
    };
    let sci = &sci[..sci_len];
    let (negative, sci) = match sci.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, sci),
    };
    let e_at = sci
        .iter()
        .position(|&c| c == b'e')
        .expect("{:e} has an exponent");
    let exp: i32 = std::str::from_utf8(&sci[e_at + 1..])
        .ok()
        .and_then(|e| e.parse().ok())
        .expect("exponent");
    let mut digits = [0u8; 24];
    let mut nd = 0;
    for &c in &sci[..e_at] {
        if c != b'.' {
            digits[nd] = c;
            nd += 1;
        }
    }
    let digits = &digits[..nd];

    let mut w = 0;
    let mut push = |buf: &mut [u8; 64], c: u8| {
        buf[w] = c;
        w += 1;
    };
    if negative {
        push(buf, b'-');
    }
    if !(-4..6).contains(&exp) {
        push(buf, digits[0]);
        if nd > 1 {
            push(buf, b'.');
            for &d in &digits[1..] {
                push(buf, d);
            }
        }
        push(buf, b'e');
        push(buf, if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e >= 100 {
            push(buf, b'0' + (e / 100) as u8);
        }
        push(buf, b'0' + (e / 10 % 10) as u8);
        push(buf, b'0' + (e % 10) as u8);
    } else if exp >= 0 {
        let int_digits = exp as usize + 1;
        for i in 0..int_digits {
            push(buf, digits.get(i).copied().unwrap_or(b'0'));
        }
        if nd > int_digits {
            push(buf, b'.');
            for &d in &digits[int_digits..] {
                push(buf, d);
            }
        }
    } else {
        push(buf, b'0');
        push(buf, b'.');
        for _ in 0..(-exp - 1) {
            push(buf, b'0');
        }
        for &d in digits {
            push(buf, d);
        }
    }
    std::str::from_utf8(&buf[..w]).expect("ASCII")
}

/// The text Snowbridge's `spEnrichedFilter` (atomic field filter) matches its regex against
/// for the raw value `raw` of atomic field `idx`: Go's `fmt.Sprintf("%v")` of the SDK's typed
/// value (`GetValue`), appended to `out`.
///
/// * string fields: the value itself (so the raw bytes from [`field`](super::field) can be
///   matched directly, which is the fast path);
/// * empty fields: "" (the SDK's "field is empty" is not an error for the filter);
/// * ints: the decimal number (`+7` → `7`); doubles: float64 `%v` (`1e+06`, `37.443604`);
/// * bools: `true`/`false` (the TSV has `1`/`0`);
/// * timestamps: Go's `time.Time` `%v`, e.g. `2019-05-10 14:40:35.972 +0000 UTC`
///   (`…35.000` → `2019-05-10 14:40:35 +0000 UTC`);
/// * contexts / unstruct_event: not atomic values; an error (use the other filters).
///
/// A value its type refuses is an error, as in Snowbridge (the event goes to the failure
/// target).
pub fn atomic_value_text(idx: usize, raw: &[u8], out: &mut String) -> Result<(), ParseError> {
    use super::fields::{FieldType, FIELDS};
    use super::json::{parse_bool, write_int, write_timestamp};

    let spec = &FIELDS[idx];
    let v = std::str::from_utf8(raw)
        .map_err(|e| ParseError::field(idx, FieldProblem::InvalidUtf8(e.valid_up_to())))?;
    if v.is_empty() {
        return Ok(());
    }
    let bad =
        |problem: fn(Excerpt) -> FieldProblem| ParseError::field(idx, problem(Excerpt::new(v)));
    match spec.ty {
        FieldType::String => out.push_str(v),
        FieldType::Int => {
            let mut buf = Vec::with_capacity(20);
            write_int(&mut buf, v).ok_or_else(|| bad(FieldProblem::Int))?;
            out.push_str(std::str::from_utf8(&buf).expect("ASCII"));
        }
        FieldType::Double => {
            let x: f64 = v
                .parse()
                .ok()
                .filter(|x: &f64| x.is_finite())
                .ok_or_else(|| bad(FieldProblem::Double))?;
            let mut buf = [0u8; 64];
            out.push_str(go_fmt_float(x, &mut buf));
        }
        FieldType::Bool => {
            let b = parse_bool(v).ok_or_else(|| bad(FieldProblem::Bool))?;
            out.push_str(if b { "true" } else { "false" });
        }
        FieldType::Timestamp => {
            // RFC 3339 JSON string "YYYY-MM-DDTHH:MM:SS[.f]Z" → "YYYY-MM-DD HH:MM:SS[.f] +0000 UTC".
            let mut buf = Vec::with_capacity(40);
            write_timestamp(&mut buf, v).ok_or_else(|| bad(FieldProblem::Timestamp))?;
            let text = std::str::from_utf8(&buf[1..buf.len() - 2]).expect("ASCII");
            out.push_str(&text.replacen('T', " ", 1));
            out.push_str(" +0000 UTC");
        }
        FieldType::Contexts | FieldType::Unstruct => {
            return Err(ParseError::field(
                idx,
                FieldProblem::Shape("is not an atomic value; use the context or unstruct filter"),
            ))
        }
    }
    Ok(())
}
