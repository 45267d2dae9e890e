//! `spEnrichedSetPk`: set the record's partition key from an atomic field (a zero-copy slice of
//! the event), e.g. so that a Kafka or Kinesis sink keeps each viewer's events in order.
//!
//! As in Snowbridge, the key is the text Go's `%v` gives for the analytics SDK's typed value:
//! string fields as they are (a zero-copy slice), timestamps as `2019-05-10 14:40:29.576 +0000
//! UTC`, booleans as `true`/`false`, numbers as Go prints them; an empty field, or a value its
//! type refuses, sends the record to the failure sink.

use serde::Deserialize;

use super::sp_enriched_filter::atomic_field;
use super::{partition, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Record};
use crate::snowplow;

/// ```toml
/// [[transforms]]
/// type = "spEnrichedSetPk"
/// atomic_field = "domain_userid"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub atomic_field: String,
}

impl TransformType for Config {
    const TYPE: &'static str = "spEnrichedSetPk";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(SetPk {
            field: atomic_field(&self.atomic_field, origin, "atomic_field")?,
            label: label.to_string(),
            scratch: Vec::new(),
            text: String::new(),
        }))
    }
}

struct SetPk {
    field: usize,
    label: String,
    scratch: Vec<Record>,
    /// Go's `%v` text of a typed field's value (timestamps, numbers, booleans), reused.
    text: String,
}

impl Transform for SetPk {
    fn process(&mut self, batch: &mut Batch) {
        let field = self.field;
        let string = snowplow::FIELDS[field].ty == snowplow::FieldType::String;
        let text = &mut self.text;
        let mut typed: Vec<bytes::Bytes> = Vec::new();
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            let raw = snowplow::field(&r.value, field);
            // Snowbridge: the analytics SDK's GetValue refuses an empty field.
            if raw.is_empty() {
                return Err(EMPTY.to_string());
            }
            if !string {
                text.clear();
                snowplow::atomic_value_text(field, raw, text).map_err(|e| {
                    format!("failed to get value of the provided atomic field: {e}")
                })?;
                typed.push(bytes::Bytes::copy_from_slice(text.as_bytes()));
            }
            Ok(true)
        });
        if string {
            for r in &mut batch.records {
                let v = snowplow::field(&r.value, field);
                r.key = Some(r.value.slice_ref(v));
            }
        } else {
            for (r, k) in batch.records.iter_mut().zip(typed) {
                r.key = Some(k);
            }
        }
    }
}

/// Snowbridge's failure message for an empty field (SafeMessage: SDK error).
const EMPTY: &str = "failed to get value of the provided atomic field: field is empty";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    #[test]
    fn key_is_the_field_and_bad_lines_fail() {
        let mut fields = vec![""; snowplow::FIELD_COUNT];
        fields[15] = "viewer-1";
        let good = Record::new(fields.join("\t"));
        let origin = Origin::new("t.toml", "transforms[0]");
        let mut t = Config {
            atomic_field: "domain_userid".into(),
        }
        .build("t", &origin)
        .unwrap();
        let mut batch = Batch::new(vec![good.clone(), Record::new("x\ty")], Ack::none());
        t.process(&mut batch);
        assert_eq!(batch.records.len(), 1);
        assert_eq!(batch.records[0].key.as_deref(), Some(&b"viewer-1"[..]));
        assert_eq!(batch.records[0].value, good.value, "value untouched");
        assert_eq!(batch.failed.len(), 1);
    }

    fn keys(field: &str, idx: usize, values: &[&str]) -> (Vec<Option<String>>, Vec<String>) {
        let origin = Origin::new("t.toml", "transforms[0]");
        let mut t = Config {
            atomic_field: field.into(),
        }
        .build("t", &origin)
        .unwrap();
        let records = values
            .iter()
            .map(|v| {
                let mut fields = vec![""; snowplow::FIELD_COUNT];
                fields[idx] = v;
                Record::new(fields.join("\t"))
            })
            .collect();
        let mut batch = Batch::new(records, Ack::none());
        t.process(&mut batch);
        let keys = batch
            .records
            .iter()
            .map(|r| {
                r.key
                    .as_ref()
                    .map(|k| String::from_utf8(k.to_vec()).unwrap())
            })
            .collect();
        (
            keys,
            batch.failed.iter().map(|f| f.reason.clone()).collect(),
        )
    }

    /// Snowbridge's snowplow_enriched_set_pk_test.go: collector_tstamp and page_urlport keys
    /// are Go's `%v` of the SDK's typed values.
    #[test]
    fn typed_fields_key_as_snowbridge_prints_them() {
        let (k, f) = keys("collector_tstamp", 3, &["2019-05-10 14:40:29.576"]);
        assert_eq!(k, [Some("2019-05-10 14:40:29.576 +0000 UTC".to_string())]);
        assert!(f.is_empty());
        let (k, _) = keys("page_urlport", 34, &["80"]);
        assert_eq!(k, [Some("80".to_string())]);
        let (k, _) = keys("br_features_pdf", 84, &["1", "0"]);
        assert_eq!(k, [Some("true".into()), Some("false".into())]);
    }

    /// An empty field (and a value its type refuses) goes to the failure sink, not on with an
    /// empty key.
    #[test]
    fn empty_and_malformed_fields_fail() {
        let (k, f) = keys("user_id", 12, &["", "u1"]);
        assert_eq!(k, [Some("u1".to_string())]);
        assert_eq!(f, [EMPTY.to_string()]);
        let (k, f) = keys("page_urlport", 34, &["eighty"]);
        assert!(k.is_empty());
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("failed to get value"), "{f:?}");
    }
}
