//! Expectations about enriched events from Snowplow's own software, not from weir: the Python
//! analytics SDK (`snowplow-analytics-sdk`, installed by runtime/tests/setup.sh in the tests'
//! virtualenv) gives the field table and the JSON of a line (`fixtures/sdk/sdk_json.py`), and
//! timestamps are written and read with `humantime`. A test that reads weir's output through
//! these checks it against Snowplow's reading of the format, so a mistake in weir's field table,
//! timestamp formatter or JSON conversion cannot hide behind the same mistake in the test.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

/// The 131 field names of an enriched event, in order, as the SDK has them.
pub fn field_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let names: Vec<String> =
            serde_json::from_str(&super::python("sdk/sdk_json.py", &["fields"], "")).unwrap();
        assert_eq!(names.len(), 131, "the SDK's field table");
        names
    })
}

/// A field of an enriched TSV line, by its name in the SDK's field table.
pub fn field<'l>(line: &'l str, name: &str) -> &'l str {
    let idx = field_names()
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("the SDK has no field {name}"));
    line.split('\t').nth(idx).unwrap_or("")
}

/// The SDK's JSON of each line (`event_transformer.transform`, without geo_location); fails the
/// test, naming the line, for a line the SDK refuses (not 131 fields, a bad value, bad JSON in a
/// context).
pub fn to_json_all(lines: &[String]) -> Vec<Value> {
    let mut input = String::new();
    for l in lines {
        assert!(
            !l.is_empty() && !l.contains('\n'),
            "one non-empty line per event"
        );
        input.push_str(l);
        input.push('\n');
    }
    let out = super::python("sdk/sdk_json.py", &["json"], &input);
    let docs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), lines.len());
    for (doc, line) in docs.iter().zip(lines) {
        if let Some(e) = doc.get("__sdk_error__") {
            panic!("the analytics SDK refuses this line ({e}):\n{line}");
        }
    }
    docs
}

/// [`to_json_all`] of one line.
pub fn to_json(line: &str) -> Value {
    to_json_all(&[line.to_string()]).remove(0)
}

/// The text the SDK's JSON has for the instant `ms` (ms since the epoch):
/// `YYYY-MM-DDTHH:MM:SS.mmmZ`, Enrich's `YYYY-MM-DD HH:MM:SS.mmm` with a `T` and a `Z`.
pub fn tstamp(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("after 1970"));
    humantime::format_rfc3339_millis(at).to_string()
}

/// ms since the epoch of a timestamp of the SDK's JSON, which must be written exactly as Enrich
/// writes one (three digits of milliseconds, and so on: the text is [`tstamp`] of its value).
pub fn ms(sdk_tstamp: &Value) -> i64 {
    let text = sdk_tstamp
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {sdk_tstamp}"));
    let at = humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    let ms = at.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    assert_eq!(text, tstamp(ms), "a timestamp in Enrich's format");
    ms
}
