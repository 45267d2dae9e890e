use regex::Regex;
use serde_json::{json, Value};

use super::filter::{go_fmt_float, with_go_text};
use super::json::{write_double, write_int, write_timestamp};
use super::sdj::write_key;
use super::*;

const MEDIA: &str = include_str!("../../../tests/fixtures/sdk/micro-media-session.tsv");
const SAMPLES: &str = include_str!("../../../tests/fixtures/sdk/sdk-samples.tsv");

fn lines() -> impl Iterator<Item = &'static str> {
    MEDIA
        .lines()
        .chain(SAMPLES.lines())
        .filter(|l| !l.is_empty())
}

/// An enriched line with only the given fields set.
fn line(fields: &[(usize, &str)]) -> String {
    let mut cols = vec![""; FIELD_COUNT];
    for &(i, v) in fields {
        cols[i] = v;
    }
    cols.join("\t")
}

fn convert(line: &str) -> Result<Value, ParseError> {
    convert_with(line, ToJsonOptions::default())
}

fn convert_with(line: &str, options: ToJsonOptions) -> Result<Value, ParseError> {
    let mut out = Vec::new();
    to_json_with(line.as_bytes(), &mut out, &mut Scratch::default(), options)?;
    Ok(serde_json::from_slice(&out).expect("to_json writes JSON"))
}

fn error(line: &str) -> String {
    convert(line).expect_err("should fail").to_string()
}

// ---- fields -----------------------------------------------------------------------------------

#[test]
fn field_table() {
    assert_eq!(FIELDS.len(), FIELD_COUNT);
    assert_eq!(field_names().count(), 131);
    let names: std::collections::HashSet<_> = field_names().collect();
    assert_eq!(names.len(), 131, "names are unique");
    assert_eq!(field_index("app_id"), Some(0));
    assert_eq!(field_index("contexts"), Some(CONTEXTS));
    assert_eq!(field_index("unstruct_event"), Some(UNSTRUCT_EVENT));
    assert_eq!(field_index("derived_contexts"), Some(DERIVED_CONTEXTS));
    assert_eq!(field_index("event_name"), Some(EVENT_NAME));
    assert_eq!(field_index("event_version"), Some(EVENT_VERSION));
    assert_eq!(field_index("true_tstamp"), Some(130));
    assert_eq!(field_index("refr_device_tstamp"), Some(121));
    assert_eq!(field_index("Event_Name"), None);
    assert_eq!(FIELDS[7].ty, FieldType::Int);
    assert_eq!(FIELDS[GEO_LATITUDE].ty, FieldType::Double);
    assert_eq!(FIELDS[93].ty, FieldType::Bool);
    assert_eq!(FIELDS[124].ty, FieldType::Timestamp);
    assert_eq!(FIELDS[CONTEXTS].ty, FieldType::Contexts);
    assert_eq!(FIELDS[DERIVED_CONTEXTS].ty, FieldType::Contexts);
    assert_eq!(FIELDS[UNSTRUCT_EVENT].ty, FieldType::Unstruct);
    for f in &FIELDS {
        assert_eq!(f.json_key, format!("\"{}\":", f.name));
    }
}

// ---- validate / field ---------------------------------------------------------------------------

#[test]
fn validate_accepts_the_fixtures() {
    for l in lines() {
        validate(l.as_bytes()).unwrap();
    }
}

#[test]
fn validate_counts_fields() {
    let short = vec!["x"; 97].join("\t");
    assert_eq!(
        validate(short.as_bytes()).unwrap_err().to_string(),
        "expected 131 tab-separated fields, found 97"
    );
    assert_eq!(
        validate(b"").unwrap_err(),
        ParseError::FieldCount { found: 1 }
    );
    let long = format!("{}\textra", line(&[]));
    assert_eq!(
        validate(long.as_bytes()).unwrap_err().to_string(),
        "expected 131 tab-separated fields, found 132"
    );
    assert_eq!(error(&short), "expected 131 tab-separated fields, found 97");
    assert_eq!(error(&long), "expected 131 tab-separated fields, found 132");
    assert_eq!(
        error(&"\t".repeat(300)),
        "expected 131 tab-separated fields, found 301"
    );
}

#[test]
fn validate_finds_invalid_utf8() {
    let mut bytes = line(&[(0, "app"), (30, "caf\u{e9}"), (100, "Europe/Lisbon")]).into_bytes();
    let at = bytes.iter().position(|&b| b == b'L').unwrap();
    bytes[at] = 0xff;
    assert_eq!(
        validate(&bytes).unwrap_err().to_string(),
        format!("invalid UTF-8 at byte {at}")
    );
    // A truncated multi-byte sequence.
    let mut bytes = line(&[(30, "caf\u{e9}")]).into_bytes();
    let e = bytes.iter().position(|&b| b == 0xc3).unwrap();
    bytes.remove(e + 1);
    assert_eq!(
        validate(&bytes).unwrap_err(),
        ParseError::InvalidUtf8 { offset: e }
    );
    let mut out = Vec::new();
    assert_eq!(
        to_json(&bytes, &mut out, &mut Scratch::default()).unwrap_err(),
        ParseError::InvalidUtf8 { offset: e }
    );
}

#[test]
fn field_matches_split_for_every_index() {
    for l in lines() {
        let parts: Vec<&str> = l.split('\t').collect();
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(field(l.as_bytes(), i), part.as_bytes(), "field {i}");
        }
    }
    let l = line(&[(0, "first"), (65, "f65"), (66, "f66"), (130, "last")]);
    assert_eq!(field(l.as_bytes(), 0), b"first");
    assert_eq!(field(l.as_bytes(), 65), b"f65");
    assert_eq!(field(l.as_bytes(), 66), b"f66");
    assert_eq!(field(l.as_bytes(), 130), b"last");
    assert_eq!(field(l.as_bytes(), 1), b"");
}

#[test]
fn field_at_every_alignment() {
    // Field lengths vary so that tabs fall at every offset of the 8- and 32-byte blocks.
    for shift in 0..40 {
        let cols: Vec<String> = (0..FIELD_COUNT)
            .map(|i| "x".repeat((i * 7 + shift) % 13 * usize::from(i % 3 != 0)))
            .collect();
        let l = cols.join("\t");
        let mut starts = [0; FIELD_COUNT + 1];
        assert!(field_starts(l.as_bytes(), &mut starts));
        for (i, col) in cols.iter().enumerate() {
            let f = field(l.as_bytes(), i);
            assert_eq!(f, col.as_bytes(), "shift {shift} field {i}");
            assert_eq!(&l.as_bytes()[starts[i]..starts[i + 1] - 1], col.as_bytes());
        }
        let extra = format!("{l}\t");
        assert!(!field_starts(extra.as_bytes(), &mut starts));
        assert!(!field_starts(
            &l.as_bytes()[..l.rfind('\t').unwrap()],
            &mut starts
        ));
    }
}

#[test]
fn field_does_not_panic_on_short_lines() {
    for i in 0..FIELD_COUNT {
        let _ = field(b"a\tb\tc", i);
        let _ = field(b"", i);
    }
    assert_eq!(field(b"a\tb\tc", 1), b"b");
    assert_eq!(field(b"a\tb\tc", 100), b"");
}

#[test]
#[should_panic(expected = "out of range")]
fn field_panics_past_the_last_index() {
    field(line(&[]).as_bytes(), FIELD_COUNT);
}

// ---- to_json: scalars ---------------------------------------------------------------------------

#[test]
fn bad_int_names_the_field() {
    assert_eq!(
        error(&line(&[(7, "abc")])),
        "field txn_id (7): expected an integer, found \"abc\""
    );
    assert!(error(&line(&[(16, "1.5")]))
        .starts_with("field domain_sessionidx (16): expected an integer"));
    assert!(error(&line(&[(34, "99999999999999999999")])).contains("page_urlport (34)"));
}

#[test]
fn ints() {
    let mut out = Vec::new();
    for (input, json) in [
        ("0", "0"),
        ("41828", "41828"),
        ("-12", "-12"),
        ("+7", "7"),
        ("007", "7"),
        ("-0", "0"),
        ("9223372036854775807", "9223372036854775807"),
        ("-9223372036854775808", "-9223372036854775808"),
    ] {
        out.clear();
        write_int(&mut out, input).unwrap();
        assert_eq!(out, json.as_bytes(), "{input}");
    }
    for bad in [
        "",
        "-",
        "+",
        "1.0",
        "1e3",
        " 1",
        "1_000",
        "9223372036854775808",
        "0x10",
    ] {
        assert!(write_int(&mut out, bad).is_none(), "{bad:?}");
    }
}

#[test]
fn doubles() {
    let mut out = Vec::new();
    for (input, json) in [
        ("37.443604", "37.443604"),
        ("-122.4124", "-122.4124"),
        ("0", "0"),
        ("1E5", "1E5"),
        ("1e-400", "1e-400"),
        (".5", "0.5"),
        ("5.", "5"),
        ("+1.25", "1.25"),
        ("01.5", "1.5"),
    ] {
        out.clear();
        write_double(&mut out, input).unwrap();
        assert_eq!(String::from_utf8_lossy(&out), json, "{input}");
    }
    for bad in [
        "",
        "abc",
        "1e400",
        "NaN",
        "inf",
        "-Infinity",
        "1,5",
        "0x1p-2",
    ] {
        assert!(write_double(&mut out, bad).is_none(), "{bad:?}");
    }
    assert!(
        error(&line(&[(61, "notADouble")])).starts_with("field tr_total (61): expected a number")
    );
}

#[test]
fn bools() {
    let v = convert(&line(&[(84, "1"), (85, "0"), (86, "true"), (87, "F")])).unwrap();
    assert_eq!(
        v,
        json!({"br_features_pdf": true, "br_features_flash": false,
               "br_features_java": true, "br_features_director": false})
    );
    assert_eq!(
        error(&line(&[(93, "yes")])),
        "field br_cookies (93): expected a boolean (1 or 0), found \"yes\""
    );
}

#[test]
fn timestamps_as_go_marshals_them() {
    let mut out = Vec::new();
    for (input, json) in [
        ("2024-11-16 13:33:22.625", "2024-11-16T13:33:22.625Z"),
        ("2024-11-16 13:33:29.170", "2024-11-16T13:33:29.17Z"),
        ("2019-05-10 14:40:35.000", "2019-05-10T14:40:35Z"),
        ("2022-02-01 01:01:01", "2022-02-01T01:01:01Z"),
        ("2022-02-01 01:01:01.5", "2022-02-01T01:01:01.5Z"),
        (
            "2022-02-01 01:01:01.123456789123",
            "2022-02-01T01:01:01.123456789Z",
        ),
        ("2022-02-01 01:01:01,250", "2022-02-01T01:01:01.25Z"),
        ("2022-02-01 1:01:01", "2022-02-01T01:01:01Z"),
        ("2024-02-29 23:59:59.999", "2024-02-29T23:59:59.999Z"),
        ("2000-02-29 00:00:00", "2000-02-29T00:00:00Z"),
    ] {
        out.clear();
        write_timestamp(&mut out, input).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("\"{json}\""),
            "{input}"
        );
    }
    for bad in [
        "",
        "not a tstamp",
        "2024-11-16",
        "2024-11-16T13:33:22.625",
        "2024-11-16 13:33:22.625Z",
        "2024-11-16 13:33:22.",
        "2024-11-16 13:33",
        "2024-13-01 00:00:00",
        "2024-00-01 00:00:00",
        "2023-02-29 00:00:00",
        "1900-02-29 00:00:00",
        "2024-04-31 00:00:00",
        "2024-04-00 00:00:00",
        "2024-04-01 24:00:00",
        "2024-04-01 00:60:00",
        "2024-04-01 00:00:60",
        "24-04-01 00:00:00",
        "2024-4-01 00:00:00",
    ] {
        assert!(write_timestamp(&mut out, bad).is_none(), "{bad:?}");
    }
    assert!(error(&line(&[(3, "yesterday")]))
        .starts_with("field collector_tstamp (3): expected a timestamp"));
}

#[test]
fn strings_are_escaped() {
    let tricky = "q\"b\\s/\u{1}\u{8}\u{c}\r\n\u{1f}é✓ <html> \u{2028}";
    let v = convert(&line(&[(30, tricky), (0, "<>angry-birds")])).unwrap();
    assert_eq!(v["page_title"], tricky);
    assert_eq!(v["app_id"], "<>angry-birds");
    // Long strings go through the 8-byte fast path, with specials at every offset.
    for at in 0..40 {
        let mut s = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH".to_owned();
        s.insert(at, '"');
        s.insert(at / 2, '\u{7}');
        let v = convert(&line(&[(29, &s)])).unwrap();
        assert_eq!(v["page_url"], s.as_str());
    }
    let mut out = Vec::new();
    to_json(
        line(&[(0, "a\"b")]).as_bytes(),
        &mut out,
        &mut Scratch::default(),
    )
    .unwrap();
    assert_eq!(out, br#"{"app_id":"a\"b"}"#);
}

#[test]
fn empty_fields_are_omitted() {
    assert_eq!(convert(&line(&[])).unwrap(), json!({}));
    let mut out = b"[".to_vec();
    to_json(line(&[]).as_bytes(), &mut out, &mut Scratch::default()).unwrap();
    assert_eq!(out, b"[{}", "appends to out");
}

#[test]
fn geo_location_is_optional() {
    let l = line(&[(GEO_LATITUDE, "37.443604"), (GEO_LONGITUDE, "-122.4124")]);
    assert_eq!(convert(&l).unwrap().get("geo_location"), None);
    let v = convert_with(&l, ToJsonOptions { geo_location: true }).unwrap();
    assert_eq!(v["geo_location"], "37.443604,-122.4124");
    assert_eq!(v["geo_latitude"], 37.443604);
    let only_lat = line(&[(GEO_LATITUDE, "37.4")]);
    let v = convert_with(&only_lat, ToJsonOptions { geo_location: true }).unwrap();
    assert_eq!(v.get("geo_location"), None);
}

#[test]
fn errors_leave_out_untouched() {
    let mut out = b"previous".to_vec();
    let mut scratch = Scratch::default();
    let bad = line(&[(0, "app"), (52, "{\"data\":[]}"), (130, "never")]);
    assert!(to_json(bad.as_bytes(), &mut out, &mut scratch).is_err());
    assert_eq!(out, b"previous");
    assert!(to_json(b"a\tb", &mut out, &mut scratch).is_err());
    assert_eq!(out, b"previous");
}

// ---- to_json: self-describing fields ------------------------------------------------------------

fn contexts(entities: &[(&str, &str)]) -> String {
    let items: Vec<String> = entities
        .iter()
        .map(|(schema, data)| format!(r#"{{"schema":"{schema}","data":{data}}}"#))
        .collect();
    format!(
        r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{}]}}"#,
        items.join(",")
    )
}

const PLAYER: &str = "iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0";
const SESSION: &str = "iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/1-0-0";

#[test]
fn contexts_are_grouped_by_key() {
    let c = contexts(&[
        (PLAYER, r#"{"currentTime":1}"#),
        (SESSION, r#"{"mediaSessionId":"s"}"#),
        (PLAYER, r#"{"currentTime":2}"#),
        (
            "iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/1-0-0",
            r#"{"v":1}"#,
        ),
        ("iglu:com.acme/justInts/jsonschema/1-0-0", "null"),
    ]);
    let v = convert(&line(&[(CONTEXTS, &c)])).unwrap();
    assert_eq!(
        v,
        json!({
            "contexts_com_snowplowanalytics_snowplow_media_player_2": [{"currentTime":1},{"currentTime":2}],
            "contexts_com_snowplowanalytics_snowplow_media_session_1": [{"mediaSessionId":"s"}],
            "contexts_com_snowplowanalytics_snowplow_media_player_1": [{"v":1}],
            "contexts_com_acme_just_ints_1": [null],
        })
    );
}

/// The Go SDK assigns output[key] field by field, so derived_contexts (122) replaces contexts (52)
/// for a key in both; it does not merge them.
#[test]
fn derived_contexts_replace_contexts_of_the_same_key() {
    let c = contexts(&[(PLAYER, r#"{"from":"contexts"}"#), (SESSION, r#"{"s":1}"#)]);
    let d = contexts(&[
        (PLAYER, r#"{"from":"derived","n":1}"#),
        (PLAYER, r#"{"from":"derived","n":2}"#),
    ]);
    let v = convert(&line(&[(CONTEXTS, &c), (DERIVED_CONTEXTS, &d)])).unwrap();
    assert_eq!(
        v,
        json!({
            "contexts_com_snowplowanalytics_snowplow_media_player_2":
                [{"from":"derived","n":1},{"from":"derived","n":2}],
            "contexts_com_snowplowanalytics_snowplow_media_session_1": [{"s":1}],
        })
    );
}

#[test]
fn self_describing_json_variants() {
    // Escaped slashes in schemas (Go SDK vars_test derivedContextsString), case-insensitive keys
    // (json-iterator), whitespace, unknown keys, missing data.
    let c = r#" { "Schema" : "x", "extra": [1,{"a":2}], "DATA" : [ {"schema":"iglu:com.snowplowanalytics.snowplow\/ua_parser_context\/jsonschema\/1-0-0","data": {"a" : 1} , "other":true}, {"schema":"iglu:com.acme/no_data/jsonschema/1-0-0"} ] } "#;
    let v = convert(&line(&[(CONTEXTS, c)])).unwrap();
    assert_eq!(
        v,
        json!({
            "contexts_com_snowplowanalytics_snowplow_ua_parser_context_1": [{"a":1}],
            "contexts_com_acme_no_data_1": [null],
        })
    );
    for empty in [
        "null",
        r#"{"schema":"x"}"#,
        r#"{"data":null}"#,
        r#"{"data":[]}"#,
    ] {
        assert_eq!(
            convert(&line(&[(CONTEXTS, empty)])).unwrap(),
            json!({}),
            "{empty}"
        );
    }
    let ue = r#"{"data":{"data":{"key":"value"},"schema":"iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1"},"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"}"#;
    assert_eq!(
        convert(&line(&[(UNSTRUCT_EVENT, ue)])).unwrap(),
        json!({"unstruct_event_com_snowplowanalytics_snowplow_link_click_1": {"key":"value"}})
    );
    let no_data = r#"{"data":{"schema":"iglu:com.acme/ev/jsonschema/3-1-0"}}"#;
    assert_eq!(
        convert(&line(&[(UNSTRUCT_EVENT, no_data)])).unwrap(),
        json!({"unstruct_event_com_acme_ev_3": null})
    );
}

#[test]
fn bad_context_json_names_the_field_and_column() {
    let e = error(&line(&[(CONTEXTS, r#"{"data":[{"schema":}]}"#)]));
    assert!(e.starts_with("field contexts (52): invalid JSON: "), "{e}");
    assert!(e.contains("column 20"), "{e}");
    let e = error(&line(&[(DERIVED_CONTEXTS, r#"{"data":[]} x"#)]));
    assert!(
        e.starts_with("field derived_contexts (122): invalid JSON: trailing characters"),
        "{e}"
    );
    let e = error(&line(&[(CONTEXTS, r#"{"data":{"schema":"x"}}"#)]));
    assert!(
        e.contains("invalid JSON: invalid type: map, expected an array"),
        "{e}"
    );
    let e = error(&line(&[(UNSTRUCT_EVENT, "{")]));
    assert!(
        e.starts_with("field unstruct_event (58): invalid JSON: EOF"),
        "{e}"
    );
}

#[test]
fn bad_schemas_and_data_are_errors() {
    let e = error(&line(&[(
        CONTEXTS,
        &contexts(&[(PLAYER, "{}"), ("fail", "{}")]),
    )]));
    assert_eq!(
        e,
        "field contexts (52): entity 1 has schema \"fail\", which is not an Iglu URI iglu:vendor/name/format/M-R-A"
    );
    let e = error(&line(&[(CONTEXTS, &contexts(&[(PLAYER, "[1]")]))]));
    assert!(e.contains("entity 0 (iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0): \"data\" must be a JSON object, found an array"), "{e}");
    // A data type error is reported before a schema error, as Go decodes before it shreds.
    let e = error(&line(&[(
        CONTEXTS,
        &contexts(&[("fail", "{}"), (PLAYER, "3")]),
    )]));
    assert!(e.contains("found a number"), "{e}");
    let e = error(&line(&[(
        UNSTRUCT_EVENT,
        r#"{"data":{"schema":"iglu:com.broken.path//jsonschema/1-0-0","data":{}}}"#,
    )]));
    assert!(
        e.starts_with("field unstruct_event (58): the event has schema"),
        "{e}"
    );
    let e = error(&line(&[(
        UNSTRUCT_EVENT,
        r#"{"data":{"schema":"iglu:a/b/jsonschema/1-0-0","data":"x"}}"#,
    )]));
    assert!(
        e.contains("\"data\" must be a JSON object, found a string"),
        "{e}"
    );
    let e = error(&line(&[(
        UNSTRUCT_EVENT,
        r#"{"schema":"iglu:a/b/jsonschema/1-0-0"}"#,
    )]));
    assert!(e.contains("the event has schema \"\""), "{e}");
}

#[test]
fn iglu_keys_as_the_go_sdk_builds_them() {
    let key = |prefix, uri| {
        let mut s = String::new();
        write_key(prefix, uri, &mut s).then_some(s)
    };
    // shred_test.go TestFixSchema / TestInsertUnderscores
    assert_eq!(
        key(
            "unstruct",
            "iglu:com.acme.data/some_event/jsonschema/15-34-1"
        )
        .as_deref(),
        Some("unstruct_com_acme_data_some_event_15")
    );
    assert_eq!(
        key("unstruct", "iglu:com.broken.path//jsonschema/1-0-0"),
        None
    );
    assert_eq!(
        key(
            "contexts",
            "iglu:com.acme/ThisStringIsCamelCase/jsonschema/1-0-0"
        )
        .as_deref(),
        Some("contexts_com_acme_this_string_is_camel_case_1")
    );
    assert_eq!(
        key(
            "contexts",
            "iglu:com.acme/this_StringIsAMixture/jsonschema/1-0-0"
        )
        .as_deref(),
        Some("contexts_com_acme_this_string_is_a_mixture_1")
    );
    assert_eq!(
        key("contexts", "iglu:org.w3/PerformanceTiming/jsonschema/1-0-0").as_deref(),
        Some("contexts_org_w3_performance_timing_1")
    );
    assert_eq!(
        key(
            "contexts",
            "iglu:com.Acme-Corp_x/ABTest-name/jsonschema/10-0-12"
        )
        .as_deref(),
        Some("contexts_com_acme-corp_x_a_b_test-name_10")
    );
    for bad in [
        "",
        "iglu:",
        "iglu:a/b/c",
        "iglu:a/b/c/1-0",
        "iglu:a/b/c/1-0-0-0",
        "iglu:a/b/c/0-0-0",
        "iglu:a/b/c/01-0-0",
        "iglu:a/b/c/1-00-0",
        "iglu:a/b/c/1-0-x",
        "iglu:a/b/c/d/1-0-0",
        "iglu:a/b.c/f/1-0-0",
        "iglu:a b/c/f/1-0-0",
        "http:a/b/f/1-0-0",
        " iglu:a/b/f/1-0-0",
    ] {
        assert_eq!(key("contexts", bad), None, "{bad:?}");
    }
}

#[test]
fn scratch_is_reused() {
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for l in lines() {
        out.clear();
        to_json(l.as_bytes(), &mut out, &mut scratch).unwrap();
    }
    let (keys, entities) = (scratch.keys_capacity(), scratch.entities_capacity());
    for l in lines() {
        out.clear();
        to_json(l.as_bytes(), &mut out, &mut scratch).unwrap();
    }
    assert_eq!(
        (keys, entities),
        (scratch.keys_capacity(), scratch.entities_capacity())
    );
}

// ---- field paths ---------------------------------------------------------------------------------

#[test]
fn field_paths_parse() {
    use PathSegment::{Index, Key};
    let k = |s: &str| Key(s.to_owned());
    for (text, segments) in [
        ("a", vec![k("a")]),
        ("a.b[0].c", vec![k("a"), k("b"), Index(0), k("c")]),
        (
            "test1.test2[0].test3",
            vec![k("test1"), k("test2"), Index(0), k("test3")],
        ),
        ("[1]", vec![Index(1)]),
        ("[0][12].x", vec![Index(0), Index(12), k("x")]),
        ("a[0][2]", vec![k("a"), Index(0), Index(2)]),
        ("a.[3]", vec![k("a"), Index(3)]),
        ("with space.$-é", vec![k("with space"), k("$-é")]),
    ] {
        let p = FieldPath::parse(text).unwrap();
        assert_eq!(p.segments(), segments.as_slice(), "{text}");
        assert_eq!(p.to_string(), text);
        assert_eq!(text.parse::<FieldPath>().unwrap(), p);
    }
}

#[test]
fn field_path_errors() {
    for (text, message) in [
        ("", "invalid field path \"\": the path is empty at character 0"),
        ("a..b", "invalid field path \"a..b\": empty key at character 2"),
        (".a", "invalid field path \".a\": empty key at character 0"),
        ("a.", "invalid field path \"a.\": the path ends with '.' at character 2"),
        ("a[", "invalid field path \"a[\": expected an array index (digits) after '[' at character 2"),
        ("a[x]", "invalid field path \"a[x]\": expected an array index (digits) after '[' at character 2"),
        ("a[-1]", "invalid field path \"a[-1]\": expected an array index (digits) after '[' at character 2"),
        ("a[1", "invalid field path \"a[1\": expected ']' at character 3"),
        ("a]", "invalid field path \"a]\": expected '.' or '[' after ']' at character 1"),
        ("]", "invalid field path \"]\": unmatched ']' at character 0"),
        ("a[0]b", "invalid field path \"a[0]b\": expected '.' or '[' after ']' at character 4"),
        (
            "a[99999999999999999999999]",
            "invalid field path \"a[99999999999999999999999]\": array index too large at character 2",
        ),
        ("é..", "invalid field path \"é..\": empty key at character 2"),
    ] {
        assert_eq!(FieldPath::parse(text).unwrap_err().to_string(), message);
    }
}

// ---- Go %v rendering ----------------------------------------------------------------------------

#[test]
fn go_float_formatting() {
    let mut buf = [0u8; 64];
    for (x, text) in [
        (0.0, "0"),
        (-0.0, "-0"),
        (1.0, "1"),
        (12.5, "12.5"),
        (-2.5, "-2.5"),
        (100.0, "100"),
        (123456.0, "123456"),
        (999999.0, "999999"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1415358089861.0, "1.415358089861e+12"),
        (0.112652, "0.112652"),
        (596.474195, "596.474195"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e21, "1e+21"),
        (1e100, "1e+100"),
        (5e-324, "5e-324"),
        (f64::MAX, "1.7976931348623157e+308"),
        (0.1 + 0.2, "0.30000000000000004"),
    ] {
        assert_eq!(go_fmt_float(x, &mut buf), text, "{x}");
    }
}

#[test]
fn go_value_text() {
    let text = |json: &str| {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(json).unwrap();
        with_go_text(&raw, str::to_owned)
    };
    assert_eq!(text(r#""plain""#), "plain");
    assert_eq!(text(r#""esc\"aped\u00e9""#), "esc\"apedé");
    assert_eq!(text("true"), "true");
    assert_eq!(text("false"), "false");
    assert_eq!(text("null"), "");
    assert_eq!(text("1"), "1");
    assert_eq!(text("1.0"), "1");
    assert_eq!(text("2000000"), "2e+06");
    assert_eq!(text("12345678901234567890123"), "1.2345678901234568e+22");
    assert_eq!(
        text(r#"{"b":1,"a":[true,null,"x",{"c":2.5}]}"#),
        "map[a:[true <nil> x map[c:2.5]] b:1]"
    );
    assert_eq!(text("[]"), "[]");
}

// ---- context / unstruct lookups -----------------------------------------------------------------

/// Snowbridge's SnowplowTsv3 shape: a yauaa context holding "test1":{"test2":[{"test3":…}]}.
fn yauaa_line(test3: &str) -> String {
    let d = format!(
        r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{{"schema":"iglu:nl.basjes/yauaa_context/jsonschema/1-0-0","data":{{"deviceBrand":"Unknown","test1":{{"test2":[{{"test3":{test3}}}]}}}}}}]}}"#
    );
    line(&[
        (5, "page_view"),
        (DERIVED_CONTEXTS, &d),
        (EVENT_NAME, "page_view"),
        (EVENT_VERSION, "1-0-0"),
    ])
}

fn ctx(line: &str, name: &str, path: &str, re: &str) -> Result<bool, ParseError> {
    let re = Regex::new(re).unwrap();
    context_values(
        line.as_bytes(),
        name,
        &FieldPath::parse(path).unwrap(),
        |v| re.is_match(v),
    )
}

const YAUAA: &str = "contexts_nl_basjes_yauaa_context_1";

#[test]
fn context_values_as_snowbridge() {
    // snowplow_enriched_filter_context_test.go TestNewContextFilter / TestMakeContextValueGetter
    let good = yauaa_line(r#""testValue""#);
    assert!(ctx(&good, YAUAA, "test1.test2[0].test3", "^testValue$").unwrap());
    assert!(ctx(&yauaa_line("1"), YAUAA, "test1.test2[0].test3", "^1$").unwrap());
    // Wrong context or path: nothing found, so the regex is matched against "".
    assert!(!ctx(
        &good,
        "contexts_nl_basjes_yauaa_context_2",
        "test1.test2[0].test3",
        "^testValue$"
    )
    .unwrap());
    assert!(!ctx(&good, YAUAA, "test1.test2[0].nothingHere", "^testValue$").unwrap());
    assert!(ctx(&good, YAUAA, "test1.test2[1].test3", "^$").unwrap());
    assert!(ctx(&good, YAUAA, "test1.test2.test3", "^$").unwrap());
    // A found value that does not match: "" is not tried.
    assert!(!ctx(&good, YAUAA, "test1.test2[0].test3", "^$").unwrap());
    assert!(ctx(&good, YAUAA, "deviceBrand", "Unk").unwrap());
    assert!(ctx(&good, YAUAA, "test1.test2[0]", "^map\\[test3:testValue\\]$").unwrap());
    // Unanchored regexes, as Go's MatchString.
    assert!(ctx(&good, YAUAA, "test1.test2[0].test3", "Val").unwrap());
    // Values are Go %v of float64.
    assert!(ctx(
        &yauaa_line("1000000"),
        YAUAA,
        "test1.test2[0].test3",
        "^1e\\+06$"
    )
    .unwrap());
    assert!(!ctx(
        &yauaa_line("1000000"),
        YAUAA,
        "test1.test2[0].test3",
        "^1000000$"
    )
    .unwrap());
    assert!(ctx(&yauaa_line("true"), YAUAA, "test1.test2[0].test3", "^true$").unwrap());
    assert!(ctx(&yauaa_line("null"), YAUAA, "test1.test2[0].test3", "^$").unwrap());
}

#[test]
fn context_values_search_every_entity_of_both_fields() {
    // SnowplowTsv1: justInts integerField 0, 1, 2 in derived_contexts.
    let tsv1 = SAMPLES.lines().next().unwrap();
    let name = "contexts_com_acme_just_ints_1";
    let mut seen = Vec::new();
    let matched = context_values(
        tsv1.as_bytes(),
        name,
        &FieldPath::parse("integerField").unwrap(),
        |v| {
            seen.push(v.to_owned());
            false
        },
    )
    .unwrap();
    assert!(!matched);
    assert_eq!(seen, ["0", "1", "2"]);
    assert!(ctx(tsv1, name, "integerField", "^2$").unwrap());

    let c = contexts(&[(PLAYER, r#"{"label":"in contexts"}"#)]);
    let d = contexts(&[(PLAYER, r#"{"label":"in derived"}"#)]);
    let l = line(&[(CONTEXTS, &c), (DERIVED_CONTEXTS, &d)]);
    let player = "contexts_com_snowplowanalytics_snowplow_media_player_2";
    assert!(ctx(&l, player, "label", "^in contexts$").unwrap());
    assert!(ctx(&l, player, "label", "^in derived$").unwrap());

    // Media fixture: currentTime of the media_player entity.
    let media = MEDIA.lines().nth(9).unwrap();
    assert!(ctx(media, player, "currentTime", "^0\\.112652$").unwrap());
    assert!(ctx(media, player, "mediaType", "^video$").unwrap());
    assert!(ctx(
        media,
        "contexts_com_snowplowanalytics_snowplow_media_ad_1",
        "adId",
        "^288$"
    )
    .unwrap());
}

#[test]
fn context_values_errors() {
    let bad_json = line(&[(
        CONTEXTS,
        r#"{"data":[{"schema":"iglu:a/b/c/1-0-0","data":{"x":}}]}"#,
    )]);
    let e = ctx(&bad_json, "contexts_a_b_1", "x", ".*")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("field contexts (52): invalid JSON"), "{e}");
    let bad_schema = line(&[(DERIVED_CONTEXTS, &contexts(&[("iglu:a/b/c/1-0", "{}")]))]);
    let e = ctx(&bad_schema, "contexts_a_b_1", "x", ".*")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("field derived_contexts (122): entity 0 has schema"),
        "{e}"
    );
    let mut bytes = line(&[(CONTEXTS, "{\"data\":[]}")]).into_bytes();
    let at = bytes.iter().position(|&b| b == b'[').unwrap();
    bytes[at] = 0xfe;
    let e = context_values(&bytes, "x", &FieldPath::parse("a").unwrap(), |_| true).unwrap_err();
    assert_eq!(
        e.to_string(),
        "field contexts (52): invalid UTF-8 at byte 8 of the field"
    );
}

fn ue_line(name: &str, version: &str, data: &str) -> String {
    let ue = format!(
        r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{{"schema":"iglu:com.snowplowanalytics.snowplow/{name}/jsonschema/{version}","data":{data}}}}}"#
    );
    line(&[
        (UNSTRUCT_EVENT, &ue),
        (EVENT_NAME, name),
        (EVENT_VERSION, version),
    ])
}

fn ue(line: &str, name: &str, version: &str, path: &str, re: &str) -> Result<bool, ParseError> {
    let re = Regex::new(re).unwrap();
    let version = Regex::new(version).unwrap();
    unstruct_value(
        line.as_bytes(),
        name,
        &version,
        &FieldPath::parse(path).unwrap(),
        |v| re.is_match(v),
    )
}

#[test]
fn unstruct_value_as_snowbridge() {
    let l = ue_line(
        "add_to_cart",
        "1-0-0",
        r#"{"sku":"item41","quantity":2,"unitPrice":32.4,"tags":["a","b"]}"#,
    );
    assert!(ue(&l, "add_to_cart", ".*", "sku", "^item41$").unwrap());
    assert!(ue(&l, "add_to_cart", "^1-", "quantity", "^2$").unwrap());
    assert!(ue(&l, "add_to_cart", "^1-0-0$", "unitPrice", "^32\\.4$").unwrap());
    assert!(ue(&l, "add_to_cart", ".*", "tags[1]", "^b$").unwrap());
    // Name mismatch, version mismatch, missing path: the regex sees "".
    assert!(!ue(&l, "link_click", ".*", "sku", "^item41$").unwrap());
    assert!(ue(&l, "link_click", ".*", "sku", "^$").unwrap());
    assert!(!ue(&l, "add_to_cart", "^2-", "sku", "^item41$").unwrap());
    assert!(!ue(&l, "add_to_cart", ".*", "nothing", "^item41$").unwrap());
    assert!(ue(&l, "add_to_cart", ".*", "tags[5]", "^$").unwrap());
    // The version "regex" is a regex searched anywhere: "1-*-*" matches any version with a 1.
    let v2 = ue_line("add_to_cart", "2-0-1", r#"{"sku":"x"}"#);
    assert!(ue(&v2, "add_to_cart", "1-*-*", "sku", "^x$").unwrap());
    assert!(!ue(&v2, "add_to_cart", "^1-", "sku", "^x$").unwrap());
}

#[test]
fn unstruct_value_errors() {
    let l = line(&[(EVENT_VERSION, "1-0-0")]);
    let e = ue(&l, "x", ".*", "a", ".*").unwrap_err().to_string();
    assert_eq!(e, "field event_name (126): must not be empty");
    let l = line(&[(EVENT_NAME, "x")]);
    let e = ue(&l, "x", ".*", "a", ".*").unwrap_err().to_string();
    assert_eq!(e, "field event_version (128): must not be empty");
    // Another event's empty version is no error: the name does not match first.
    assert!(!ue(&l, "y", ".*", "a", "^z$").unwrap());
    let l = line(&[
        (UNSTRUCT_EVENT, r#"{"data":{"data":{"a":1}"#),
        (EVENT_NAME, "x"),
        (EVENT_VERSION, "1-0-0"),
    ]);
    let e = ue(&l, "x", ".*", "a", ".*").unwrap_err().to_string();
    assert!(
        e.starts_with("field unstruct_event (58): invalid JSON"),
        "{e}"
    );
    // No unstruct_event at all: "".
    let l = line(&[(EVENT_NAME, "x"), (EVENT_VERSION, "1-0-0")]);
    assert!(ue(&l, "x", ".*", "a", "^$").unwrap());
}

#[test]
fn atomic_values_as_snowbridge_compares_them() {
    let text = |idx: usize, raw: &str| {
        let mut s = "old:".to_owned();
        atomic_value_text(idx, raw.as_bytes(), &mut s).map(|()| s)
    };
    assert_eq!(text(0, "app").unwrap(), "old:app");
    assert_eq!(text(0, "").unwrap(), "old:");
    assert_eq!(text(7, "+0041828").unwrap(), "old:41828");
    assert_eq!(text(GEO_LATITUDE, "37.443604").unwrap(), "old:37.443604");
    assert_eq!(text(61, "1000000").unwrap(), "old:1e+06");
    assert_eq!(text(93, "1").unwrap(), "old:true");
    assert_eq!(text(102, "0").unwrap(), "old:false");
    assert_eq!(
        text(3, "2019-05-10 14:40:35.972").unwrap(),
        "old:2019-05-10 14:40:35.972 +0000 UTC"
    );
    assert_eq!(
        text(119, "2019-05-10 14:40:35.000").unwrap(),
        "old:2019-05-10 14:40:35 +0000 UTC"
    );
    assert_eq!(
        text(7, "abc").unwrap_err().to_string(),
        "field txn_id (7): expected an integer, found \"abc\""
    );
    assert!(text(CONTEXTS, "{}")
        .unwrap_err()
        .to_string()
        .contains("not an atomic value"));
}

#[test]
fn collector_tstamp_is_read_in_milliseconds() {
    // Every real event: the field as written is the time read back.
    let mut n = 0;
    for l in lines() {
        let ms = collector_tstamp_ms(l.as_bytes()).expect("a real event has one");
        let mut s = String::new();
        assert!(tracker::format_tstamp(ms, &mut s));
        let f = std::str::from_utf8(field(l.as_bytes(), 3)).unwrap();
        assert!(s == f || s == format!("{f}.000"), "{s} for {f}");
        n += 1;
    }
    assert!(n > 10);
    // Across the calendar: leap days, ends of months and years, before 1970.
    let mut ms = -86_400_000i64 * 365 * 3;
    while ms < 4_102_444_800_000 {
        let mut s = String::new();
        assert!(tracker::format_tstamp(ms, &mut s));
        let line = format!("app\tweb\t\t{s}\tmore");
        assert_eq!(collector_tstamp_ms(line.as_bytes()), Some(ms), "{s}");
        ms += 86_399_999 + 3_600_017;
    }
    let at = |t: &str| collector_tstamp_ms(format!("a\tb\tc\t{t}\td").as_bytes());
    assert_eq!(at("1970-01-01 00:00:01"), Some(1_000));
    assert_eq!(at("1970-01-01 00:00:00.5"), Some(500));
    assert_eq!(at("1970-01-01 00:00:00.123456789"), Some(123));
    for bad in [
        "",
        "1970-01-01",
        "1970-01-01T00:00:00",
        "1970-13-01 00:00:00",
        "1970-01-01 24:00:00",
        "1970-01-01 00:00:00.",
        "1970-01-01 00:00:00.1234567890",
        "1970-01-01 00:00:00Z",
        "197x-01-01 00:00:00",
    ] {
        assert_eq!(at(bad), None, "{bad:?}");
    }
    assert_eq!(collector_tstamp_ms(b"no tabs at all"), None);
    assert_eq!(
        collector_tstamp_ms(b"a\tb\tc\t1970-01-01 00:00:00"),
        None,
        "no tab after it"
    );
}

#[test]
fn first_and_last_tabs_are_those_memchr_finds() {
    // Lines of every length up to 300 (so every remainder after 64-byte blocks), tabs dense and
    // sparse (consecutive tabs included), and bytes one bit from a tab (8, 0x0b, 0x89).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for len in 0..300 {
        for density in [2, 5, 40] {
            let line: Vec<u8> = (0..len)
                .map(|_| match next() % density {
                    0 => b'\t',
                    1 => [8u8, 0x0b, 0x89, b'a'][(next() % 4) as usize],
                    _ => b'x',
                })
                .collect();
            let all: Vec<usize> = memchr::memchr_iter(b'\t', &line).collect();
            for n in [0, 1, 3, 53, 131, 400] {
                let mut got = vec![7];
                first_tabs(&line, n, &mut got);
                let want: Vec<usize> = std::iter::once(7)
                    .chain(all.iter().copied().take(n))
                    .collect();
                assert_eq!(got, want, "first {n} of {line:?}");
                let mut got = vec![7];
                last_tabs(&line, n, &mut got);
                let want: Vec<usize> = std::iter::once(7)
                    .chain(all.iter().rev().copied().take(n))
                    .collect();
                assert_eq!(got, want, "last {n} of {line:?}");
            }
        }
    }
}
