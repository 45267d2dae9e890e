//! Reading Snowplow enriched events (131-field TSV lines) without parsing all of them.

use crate::fields::COUNT;
use crate::json::{self, Json};

/// The raw bytes of field `idx` of an enriched TSV line, found without scanning the whole line:
/// fields before 66 by walking tabs from the start, the others by walking back from the end
/// (`event_name`, 126, is 4 tabs from the end). The same rule as weir's own
/// `weir::snowplow::field`, so a field reads the same natively, in WASM and when weir sends only
/// declared fields.
///
/// A line with fewer fields than 131 gives a meaningless (but in-bounds) result.
///
/// # Panics
/// If `idx >= 131`.
#[inline]
pub fn field(line: &[u8], idx: usize) -> &[u8] {
    assert!(idx < COUNT, "field index {idx} out of range");
    if idx < 66 {
        let mut tabs = memchr::memchr_iter(b'\t', line);
        let start = if idx == 0 {
            0
        } else {
            match tabs.nth(idx - 1) {
                Some(p) => p + 1,
                None => return &[],
            }
        };
        let end = tabs.next().unwrap_or(line.len());
        &line[start..end]
    } else {
        let after = COUNT - 1 - idx;
        let mut tabs = memchr::memrchr_iter(b'\t', line);
        let end = if after == 0 {
            line.len()
        } else {
            match tabs.nth(after - 1) {
                Some(p) => p,
                None => return &[],
            }
        };
        let start = tabs.next().map_or(0, |p| p + 1);
        &line[start..end]
    }
}

/// A self-describing JSON: `{"schema": "iglu:vendor/name/format/version", "data": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfDescribing<'a> {
    /// The schema URI, e.g. `iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0`.
    pub schema: &'a str,
    /// The `data` value, unparsed.
    pub data: Json<'a>,
}

impl<'a> SelfDescribing<'a> {
    /// Reads `{"schema": …, "data": …}` (in either order).
    pub fn parse(json: Json<'a>) -> Option<SelfDescribing<'a>> {
        let (mut schema, mut data) = (None, None);
        json.for_each_member(|k, v| match k {
            b"schema" => schema = Some(v),
            b"data" => data = Some(v),
            _ => {}
        });
        Self::from_members(schema, data)
    }

    fn from_members(schema: Option<Json<'a>>, data: Option<Json<'a>>) -> Option<Self> {
        let raw = schema?.raw();
        // Schema URIs never contain escapes; take the text between the quotes.
        let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        Some(SelfDescribing {
            schema: crate::utf8(inner)?,
            data: data?,
        })
    }

    /// Whether the schema URI starts with `prefix` (e.g. `iglu:com.acme/thing/jsonschema/1-`
    /// matches every 1-x-x version).
    pub fn is(&self, prefix: &str) -> bool {
        self.schema.starts_with(prefix)
    }

    /// The parts of the Iglu URI: vendor, name, format, version.
    pub fn parts(&self) -> Option<(&'a str, &'a str, &'a str, &'a str)> {
        let mut it = self.schema.strip_prefix("iglu:")?.split('/');
        let parts = (it.next()?, it.next()?, it.next()?, it.next()?);
        it.next().is_none().then_some(parts)
    }

    /// The schema's vendor, e.g. `com.snowplowanalytics.snowplow.media`.
    pub fn vendor(&self) -> Option<&'a str> {
        self.parts().map(|p| p.0)
    }

    /// The schema's name, e.g. `play_event`.
    pub fn name(&self) -> Option<&'a str> {
        self.parts().map(|p| p.1)
    }
}

/// The event inside an `unstruct_event` field value.
pub fn unstruct(field: &[u8]) -> Option<SelfDescribing<'_>> {
    if field.is_empty() {
        return None;
    }
    let outer = SelfDescribing::parse(Json(field))?;
    SelfDescribing::parse(outer.data)
}

/// The entities of a `contexts` or `derived_contexts` field value.
///
/// One pass over the text: the outer `data` array is entered where it starts, and each entity's
/// members are read while walking past it (`elements()` then `SelfDescribing::parse` would scan
/// every entity twice, and the array once more to find its end).
pub fn entities(field: &[u8]) -> Entities<'_> {
    let start = (!field.is_empty())
        .then(|| {
            let open = json::skip_ws(field, 0);
            if field.get(open) != Some(&b'{') {
                return None;
            }
            let data = json::member_start(field, open, b"data")?;
            (field.get(data) == Some(&b'[')).then_some(data + 1)
        })
        .flatten();
    Entities {
        b: field,
        pos: start,
    }
}

/// Iterator over the entities of a contexts field ([`entities`]). Elements that are not
/// self-describing objects are passed over; malformed text ends the iteration.
pub struct Entities<'a> {
    b: &'a [u8],
    pos: Option<usize>,
}

impl<'a> Iterator for Entities<'a> {
    type Item = SelfDescribing<'a>;

    fn next(&mut self) -> Option<SelfDescribing<'a>> {
        let b = self.b;
        loop {
            let mut i = json::skip_ws(b, self.pos?);
            if b.get(i) == Some(&b',') {
                i = json::skip_ws(b, i + 1);
            }
            match b.get(i) {
                Some(b'{') => {}
                None | Some(b']') => {
                    self.pos = None;
                    return None;
                }
                Some(_) => {
                    self.pos = json::skip_value(b, i);
                    continue;
                }
            }
            if let Some((e, next)) = compact_entity(b, i) {
                self.pos = Some(next);
                return Some(e);
            }
            let (mut schema, mut data) = (None, None);
            self.pos = json::each_member(b, i, |k, v| match k {
                b"schema" => schema = Some(v),
                b"data" => data = Some(v),
                _ => {}
            });
            if let Some(e) = SelfDescribing::from_members(schema, data) {
                return Some(e);
            }
        }
    }
}

/// The entity at `b[i]` (a `{`) if it is laid out as trackers and enrich write entities,
/// `{"schema":"…","data":…}` with nothing else, and the index past it; `None` for any other
/// layout (spaces, other members, data first), which the general member loop then reads to the
/// same result. The fast path checks two literals instead of reading two keys.
#[inline]
fn compact_entity(b: &[u8], i: usize) -> Option<(SelfDescribing<'_>, usize)> {
    const HEAD: &[u8] = b"{\"schema\":\"";
    const MID: &[u8] = b",\"data\":";
    let text = i + HEAD.len();
    if b.get(i..text)? != HEAD {
        return None;
    }
    let quote = json::string_end(b, text)?; // just past the schema's closing quote
    let data = quote + MID.len();
    if b.get(quote..data)? != MID {
        return None;
    }
    let end = json::skip_value(b, data)?;
    if b.get(end) != Some(&b'}') {
        return None;
    }
    let e = SelfDescribing {
        // As `from_members`: schema URIs never contain escapes.
        schema: crate::utf8(&b[text..quote - 1])?,
        data: Json(&b[data..end]),
    };
    Some((e, end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields;

    fn line() -> String {
        let mut f: Vec<String> = (0..COUNT).map(|i| format!("f{i}")).collect();
        f[fields::UNSTRUCT_EVENT] = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.snowplowanalytics.snowplow.media/play_event/jsonschema/1-0-0","data":{}}}"#.into();
        f[fields::CONTEXTS] = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0","data":{"currentTime":12.5,"label":"Sample"}},{"schema":"iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0","data":{"id":"x"}}]}"#.into();
        f.join("\t")
    }

    #[test]
    fn fields_from_both_ends() {
        let l = line();
        for i in 0..COUNT {
            if i != fields::UNSTRUCT_EVENT && i != fields::CONTEXTS {
                assert_eq!(field(l.as_bytes(), i), format!("f{i}").as_bytes());
            }
        }
        assert_eq!(field(b"a\tb", 100), b"");
        assert_eq!(field(b"a\tb", 1), b"b");
    }

    #[test]
    fn unstruct_and_entities() {
        let l = line();
        let ue = unstruct(field(l.as_bytes(), fields::UNSTRUCT_EVENT)).unwrap();
        assert_eq!(ue.vendor(), Some("com.snowplowanalytics.snowplow.media"));
        assert_eq!(ue.name(), Some("play_event"));
        let c: Vec<_> = entities(field(l.as_bytes(), fields::CONTEXTS)).collect();
        assert_eq!(c.len(), 2);
        assert!(c[0].is("iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-"));
        assert_eq!(c[0].data.get("currentTime").unwrap().as_f64(), Some(12.5));
        assert!(unstruct(b"").is_none());
        assert_eq!(entities(b"not json").count(), 0);
    }

    /// The one-pass reader finds what walking the array and parsing each element finds.
    #[test]
    fn one_pass_entities_match_element_by_element() {
        fn reference(field: &[u8]) -> Vec<SelfDescribing<'_>> {
            SelfDescribing::parse(Json(field))
                .into_iter()
                .flat_map(|c| c.data.elements())
                .filter_map(SelfDescribing::parse)
                .collect()
        }
        let l = line();
        let contexts = field(l.as_bytes(), fields::CONTEXTS).to_vec();
        let cases: Vec<Vec<u8>> = vec![
            contexts.clone(),
            br#" { "schema" : "iglu:x/contexts/jsonschema/1-0-0" , "data" : [ 1 , "s" , {"data":{"a":"]}"},"schema":"iglu:a/b/jsonschema/1-0-0"} , {"x":1} , {"schema":"iglu:c/d/jsonschema/1-0-0","data":[{"q":"\"}"}]} ] } "#.to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[]}"#.to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":{}}"#.to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:a/b/jsonschema/1-0-0","data":{"#.to_vec(),
            b"[]".to_vec(),
            b"".to_vec(),
            // Beside the compact layout's fast path: another member after data, schema twice,
            // an escape in the schema, a schema that is not UTF-8, data that is not JSON, data
            // first.
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:a/b/jsonschema/1-0-0","data":{},"x":1},{"schema":"iglu:a/b/jsonschema/1-0-0","data":1,"schema":"iglu:c/d/jsonschema/1-0-0"}]}"#.to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:a/\"b/jsonschema/1-0-0","data":{"k":"v"}},{"schema":"iglu:c/d/jsonschema/1-0-0","data":[1,2]}]}"#.to_vec(),
            b"{\"schema\":\"iglu:x/contexts/jsonschema/1-0-0\",\"data\":[{\"schema\":\"iglu:\xff/b/jsonschema/1-0-0\",\"data\":{}},{\"schema\":\"iglu:c/d/jsonschema/1-0-0\",\"data\":true}]}".to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:a/b/jsonschema/1-0-0","data":}},{"schema":"iglu:c/d/jsonschema/1-0-0","data":{}}]}"#.to_vec(),
            br#"{"schema":"iglu:x/contexts/jsonschema/1-0-0","data":[{"data":{"a":1},"schema":"iglu:a/b/jsonschema/1-0-0"},{"schema":"iglu:c/d/jsonschema/1-0-0","data":null}]}"#.to_vec(),
        ];
        for c in &cases {
            let got: Vec<_> = entities(c).collect();
            assert_eq!(got, reference(c), "{}", String::from_utf8_lossy(c));
        }
        assert_eq!(entities(&cases[1]).count(), 2);
        // Every prefix of a real contexts field: never a panic, never more than the whole.
        for n in 0..contexts.len() {
            assert!(entities(&contexts[..n]).count() <= reference(&contexts).len());
        }
    }
}
