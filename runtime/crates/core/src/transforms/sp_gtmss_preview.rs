//! `spGtmssPreview`: Snowbridge 5.x's GTM server-side preview transformation
//! (`pkg/transform/sp_gtmss/snowplow_gtmss_preview.go`). When an enriched event carries the
//! `com.google.tag-manager.server-side/preview_mode` entity, its `x-gtm-server-preview` value
//! (which must be base64) becomes the record's `x-gtm-server-preview` header, replacing one of
//! that name; an event whose `collector_tstamp` is older than `expiry_seconds` then goes to the
//! failure sink ("message has expired"). Events without the entity pass unchanged.
//!
//! Snowbridge sets the header for its HTTP target. weir keeps it in the record's headers
//! ([`crate::record::Meta::headers`]), which the Kafka sink writes as message headers; weir has
//! no HTTP sink yet (issue #18), so there the header has nowhere to go.

use bytes::Bytes;
use serde::Deserialize;

use super::go_time;
use super::{partition, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Meta, Record};
use crate::snowplow;

/// ```toml
/// [[transforms]]
/// type = "spGtmssPreview"
/// expiry_seconds = 300   # default, as in Snowbridge
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_expiry")]
    pub expiry_seconds: i64,
}

fn default_expiry() -> i64 {
    300
}

impl TransformType for Config {
    const TYPE: &'static str = "spGtmssPreview";
}

const CONTEXT: &str = "contexts_com_google_tag-manager_server-side_preview_mode_1";
const PROPERTY: &str = "x-gtm-server-preview";
const HEADER: &str = "x-gtm-server-preview";
const COLLECTOR_TSTAMP: usize = 3;

impl TransformConfig for Config {
    fn build(&self, label: &str, _origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(Preview {
            ctx: CONTEXT,
            property: snowplow::FieldPath::parse(PROPERTY).expect("a valid path"),
            expiry_ms: self.expiry_seconds.saturating_mul(1000),
            label: label.to_string(),
            scratch: Vec::new(),
            now_ms: snowplow::now_ms,
        }))
    }
}

struct Preview {
    ctx: &'static str,
    property: snowplow::FieldPath,
    expiry_ms: i64,
    label: String,
    scratch: Vec<Record>,
    now_ms: fn() -> i64,
}

/// Snowbridge's `extractHeaderValue`: the first value of `prop` among the entities of `ctx`
/// (contexts, then derived contexts); it must be a base64 string.
fn header_value(
    line: &[u8],
    ctx: &str,
    prop: &snowplow::FieldPath,
) -> Result<Option<String>, String> {
    let Some(raw) = snowplow::first_context_value(line, ctx, prop).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let Ok(serde_json::Value::String(s)) = serde_json::from_str(&raw) else {
        return Err("invalid header value".into());
    };
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(&s)
        .map_err(|e| format!("illegal base64 data at input: {e}"))?;
    Ok(Some(s))
}

impl Preview {
    /// As Snowbridge, which parses the event lazily: only the field count, the two context
    /// fields and (when the entity is there) `collector_tstamp` are read.
    fn header(&mut self, r: &Record) -> Result<Option<String>, String> {
        snowplow::validate(&r.value)
            .map_err(|e| format!("intermediate state cannot be parsed as parsedEvent: {e}"))?;
        let Some(value) = header_value(&r.value, self.ctx, &self.property)
            .map_err(|e| format!("failed to extract HeaderValue from parsedEvent: {e}"))?
        else {
            return Ok(None);
        };
        let raw = std::str::from_utf8(snowplow::field(&r.value, COLLECTOR_TSTAMP)).unwrap_or("");
        if raw.is_empty() {
            return Err(
                "failed to get value of the [collector_tstamp] atomic field: field is empty".into(),
            );
        }
        let t = go_time::parse("2006-01-02 15:04:05.999", raw).map_err(|()| {
            format!("failed to get value of the [collector_tstamp] atomic field: {raw:?}")
        })?;
        if (self.now_ms)() > t.millis().saturating_add(self.expiry_ms) {
            return Err("message has expired".into());
        }
        Ok(Some(value))
    }
}

impl Transform for Preview {
    fn process(&mut self, batch: &mut Batch) {
        let mut headers: Vec<Option<String>> = Vec::with_capacity(batch.records.len());
        let label = std::mem::take(&mut self.label);
        let mut scratch = std::mem::take(&mut self.scratch);
        partition(batch, &mut scratch, &label, |r| {
            headers.push(self.header(r)?);
            Ok(true)
        });
        self.label = label;
        self.scratch = scratch;
        for (r, h) in batch.records.iter_mut().zip(headers) {
            if let Some(h) = h {
                let meta = r.meta.get_or_insert_with(|| Box::new(Meta::default()));
                meta.headers.retain(|(k, _)| k != HEADER);
                meta.headers.push((HEADER.to_string(), Bytes::from(h)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;
    use crate::record::Failed;

    const B64: &str = "ZW52LTcyN3wtMkMwR084ekptbWxiZmpkcHNIRENBfDE4ZTJkYzgxMDc2NDg1MjVmMzI2Mw==";
    const WITH: &str = include_str!("testdata/gtmss_with.tsv");
    const WITHOUT: &str = include_str!("testdata/gtmss_without.tsv");
    const INVALID_B64: &str = include_str!("testdata/gtmss_invalid_b64.tsv");
    const FAKE: &str = include_str!("testdata/gtmss_fake.tsv");
    const NO_CTX: &str = include_str!("testdata/gtmss_no_ctx.tsv");
    const FIFTY_YEARS: i64 = 50 * 365 * 24 * 3600;

    fn preview(ctx: &'static str, property: &'static str, expiry_s: i64) -> Preview {
        Preview {
            ctx,
            property: snowplow::FieldPath::parse(property).unwrap(),
            expiry_ms: expiry_s * 1000,
            label: "t".into(),
            scratch: Vec::new(),
            // The Go tests run "now"; these events are from 2024-03-12.
            now_ms: || 1_767_225_600_000, // 2026-01-01
        }
    }

    fn record(tsv: &str, headers: &[(&str, &str)]) -> Record {
        let mut r = Record::new(tsv.to_string());
        r.key = Some("pk".into());
        if !headers.is_empty() {
            r.meta = Some(Box::new(Meta {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), Bytes::from(v.to_string())))
                    .collect(),
                ..Meta::default()
            }));
        }
        r
    }

    fn run(p: &mut Preview, r: Record) -> (Vec<Record>, Vec<Failed>) {
        let mut batch = Batch::new(vec![r], Ack::none());
        p.process(&mut batch);
        (batch.records, batch.failed)
    }

    fn headers(r: &Record) -> Vec<(String, String)> {
        r.headers()
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Snowbridge's TestGTMSSPreview (snowplow_gtmss_preview_test.go), every scenario.
    #[test]
    fn snowbridge_test_gtmss_preview() {
        let mut p = preview(CONTEXT, PROPERTY, FIFTY_YEARS);
        // main_case_with_gtmss
        let (ok, failed) = run(&mut p, record(WITH, &[]));
        assert!(failed.is_empty());
        assert_eq!(ok[0].value, WITH.as_bytes());
        assert_eq!(ok[0].key.as_deref(), Some(&b"pk"[..]));
        assert_eq!(headers(&ok[0]), h(&[(HEADER, B64)]));
        // main_case_no_gtmss (expiry 1h: does not matter without the entity)
        let (ok, failed) = run(&mut preview(CONTEXT, PROPERTY, 3600), record(WITHOUT, &[]));
        assert!(failed.is_empty());
        assert!(ok[0].meta.is_none());
        // non_snowplow_event
        let (ok, failed) = run(&mut p, record("asdf", &[]));
        assert!(ok.is_empty());
        assert!(failed[0].reason.contains("parse"), "{}", failed[0].reason);
        assert_eq!(failed[0].record.value, &b"asdf"[..]);
        // existing_headers_with_gtmss
        let (ok, _) = run(&mut p, record(WITH, &[("foo", "bar")]));
        assert_eq!(headers(&ok[0]), h(&[("foo", "bar"), (HEADER, B64)]));
        // existing_headers_append_with_gtmss: the value replaces an existing one
        let (ok, _) = run(
            &mut p,
            record(WITH, &[("foo", "bar"), (HEADER, "existing")]),
        );
        assert_eq!(headers(&ok[0]), h(&[("foo", "bar"), (HEADER, B64)]));
        // empty_headers_with_gtmss
        let mut r = record(WITH, &[]);
        r.meta = Some(Box::default());
        let (ok, _) = run(&mut p, r);
        assert_eq!(headers(&ok[0]), h(&[(HEADER, B64)]));
        // not_found_with_existing_headers (ctx "app_id" is no context)
        let (ok, failed) = run(
            &mut preview("app_id", PROPERTY, FIFTY_YEARS),
            record(WITH, &[("foo", "bar")]),
        );
        assert!(failed.is_empty());
        assert_eq!(headers(&ok[0]), h(&[("foo", "bar")]));
        // expired_message
        let (ok, failed) = run(&mut preview(CONTEXT, PROPERTY, 3600), record(WITH, &[]));
        assert!(ok.is_empty());
        assert_eq!(failed[0].reason, "message has expired");
        assert!(
            failed[0].record.meta.is_none(),
            "no header on a failed record"
        );
    }

    fn extract(tsv: &str, ctx: &str, prop: &str) -> Result<Option<String>, String> {
        snowplow::validate(tsv.as_bytes()).map_err(|e| e.to_string())?;
        header_value(
            tsv.as_bytes(),
            ctx,
            &snowplow::FieldPath::parse(prop).unwrap(),
        )
    }

    /// As the Go SDK's GetContextValue: contexts are searched before derived contexts, and an
    /// entity without the property is skipped, one with it null is not.
    #[test]
    fn contexts_come_before_derived_contexts() {
        let ent = |v: &str| {
            format!(
                r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{{"schema":"iglu:com.google.tag-manager.server-side/preview_mode/jsonschema/1-0-0","data":{v}}}]}}"#
            )
        };
        let mut fields: Vec<String> = WITHOUT.split('\t').map(String::from).collect();
        fields[snowplow::CONTEXTS] = ent(r#"{"other":1}"#);
        fields[snowplow::DERIVED_CONTEXTS] = ent(r#"{"x-gtm-server-preview":"QUJD"}"#);
        assert_eq!(
            extract(&fields.join("\t"), CONTEXT, PROPERTY),
            Ok(Some("QUJD".into()))
        );
        fields[snowplow::CONTEXTS] = ent(r#"{"x-gtm-server-preview":"REVG"}"#);
        assert_eq!(
            extract(&fields.join("\t"), CONTEXT, PROPERTY),
            Ok(Some("REVG".into()))
        );
        fields[snowplow::CONTEXTS] = ent(r#"{"x-gtm-server-preview":null}"#);
        assert_eq!(
            extract(&fields.join("\t"), CONTEXT, PROPERTY),
            Err("invalid header value".into())
        );
    }

    /// Snowbridge's TestExtractHeaderValue, every scenario.
    #[test]
    fn snowbridge_test_extract_header_value() {
        // happy_path
        assert_eq!(extract(WITH, CONTEXT, PROPERTY), Ok(Some(B64.into())));
        // ctx_not_in_event
        assert_eq!(extract(WITHOUT, CONTEXT, PROPERTY), Ok(None));
        // toMap_fails ("wrong number of fields")
        let e = extract("f\ta\ti\tl", "foo", "bar").unwrap_err();
        assert!(e.contains("field"), "{e}");
        // not_a_context_same_as_no_such_context
        assert_eq!(extract(WITHOUT, "app_id", "foobar"), Ok(None));
        // invalid_header_value (not a string type)
        let ctx = "contexts_com_snowplowanalytics_snowplow_web_page_1";
        assert_eq!(extract(FAKE, ctx, "id"), Err("invalid header value".into()));
        // invalid_header_value (not base64 encoding)
        let e = extract(INVALID_B64, CONTEXT, PROPERTY).unwrap_err();
        assert!(e.contains("illegal base64 data at input"), "{e}");
        // event_without_contexts
        assert_eq!(extract(NO_CTX, ctx, "id"), Ok(None));
        // missing_property
        assert_eq!(extract(FAKE, ctx, "doesNotExist"), Ok(None));
    }
}
