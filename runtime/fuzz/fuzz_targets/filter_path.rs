//! The filters' path syntax and value lookups: `FieldPath::parse` (the `path` of
//! `spEnrichedFilterContext` / `spEnrichedFilterUnstructEvent`), then `context_values`,
//! `unstruct_value` and `atomic_value_text` on an enriched line built around the input.
//!
//! Input: `path \n contexts JSON \n unstruct_event JSON \n atomic value` (lossy UTF-8; tabs and
//! newlines inside the JSON parts become spaces so the line keeps its 131 fields).
//! Checks: no panic; a parsed path prints as given.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use regex::Regex;
use weir_snowplow::{
    atomic_value_text, context_values, unstruct_value, validate, FieldPath, CONTEXTS,
    DERIVED_CONTEXTS, EVENT_NAME, EVENT_VERSION, FIELD_COUNT, UNSTRUCT_EVENT,
};

fn tsv_safe(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let path_text = parts.next().unwrap_or("");
    let contexts = tsv_safe(parts.next().unwrap_or(""));
    let unstruct = tsv_safe(parts.next().unwrap_or(""));
    let atomic = parts.next().unwrap_or("");

    let mut out = String::new();
    for idx in 0..FIELD_COUNT {
        out.clear();
        let _ = atomic_value_text(idx, atomic.as_bytes(), &mut out);
    }

    let Ok(path) = FieldPath::parse(path_text) else {
        return;
    };
    assert_eq!(path.as_str(), path_text);
    let mut fields = vec![String::new(); FIELD_COUNT];
    fields[CONTEXTS] = contexts.clone();
    fields[DERIVED_CONTEXTS] = contexts;
    fields[UNSTRUCT_EVENT] = unstruct;
    fields[EVENT_NAME] = "x".into();
    fields[EVENT_VERSION] = "1-0-0".into();
    let line = fields.join("\t");
    assert!(validate(line.as_bytes()).is_ok());
    static ANY: OnceLock<Regex> = OnceLock::new();
    let any = ANY.get_or_init(|| Regex::new(".*").unwrap());
    let pick = |t: &str| t.len().is_multiple_of(2);
    let _ = context_values(line.as_bytes(), "contexts_com_acme_x_1", &path, pick);
    let _ = unstruct_value(line.as_bytes(), "x", any, &path, pick);
});
