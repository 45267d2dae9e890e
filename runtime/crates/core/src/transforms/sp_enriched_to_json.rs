//! `spEnrichedToJson`: enriched TSV → the analytics-SDK JSON (one flat object; contexts and the
//! unstruct event flattened; empty fields omitted; ints, doubles, booleans and timestamps typed).
//!
//! A batch's JSON is written into one buffer and each record becomes a slice of it, so the
//! transform allocates per batch, not per event.

use bytes::Bytes;
use serde::Deserialize;

use super::{Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Failed, Record};
use crate::snowplow;

/// ```toml
/// [[transforms]]
/// type = "spEnrichedToJson"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl TransformType for Config {
    const TYPE: &'static str = "spEnrichedToJson";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, _origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(ToJson {
            label: label.to_string(),
            scratch: Vec::new(),
            ends: Vec::new(),
            json: snowplow::Scratch::default(),
        }))
    }
}

struct ToJson {
    label: String,
    scratch: Vec<Record>,
    ends: Vec<usize>,
    json: snowplow::Scratch,
}

impl Transform for ToJson {
    fn process(&mut self, batch: &mut Batch) {
        let input_bytes: usize = batch.records.iter().map(|r| r.value.len()).sum();
        let mut out = Vec::with_capacity(input_bytes + input_bytes / 2);
        std::mem::swap(&mut batch.records, &mut self.scratch);
        self.ends.clear();
        let mut kept = Vec::with_capacity(self.scratch.len());
        for r in self.scratch.drain(..) {
            let start = out.len();
            match snowplow::to_json(&r.value, &mut out, &mut self.json) {
                Ok(()) => {
                    self.ends.push(out.len());
                    kept.push((r.key, r.meta));
                }
                Err(e) => {
                    out.truncate(start);
                    batch
                        .failed
                        .push(Failed::invalid(r, &self.label, e.to_string()));
                }
            }
        }
        let buf = Bytes::from(out);
        let mut start = 0;
        for ((key, meta), &end) in kept.into_iter().zip(&self.ends) {
            batch.records.push(Record {
                value: buf.slice(start..end),
                key,
                meta,
            });
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    #[test]
    fn converts_each_record_keeps_keys_and_fails_bad_ones() {
        let mut fields = vec![""; snowplow::FIELD_COUNT];
        fields[6] = "e1";
        fields[7] = "12";
        let good = Record {
            value: fields.join("\t").into(),
            key: Some("k".into()),
            meta: None,
        };
        fields[7] = "twelve";
        let bad = Record::new(fields.join("\t"));
        let mut t = Config {}.build("json", &Origin::new("t", "")).unwrap();
        let mut batch = Batch::new(vec![good.clone(), bad, good], Ack::none());
        t.process(&mut batch);
        assert_eq!(batch.records.len(), 2);
        for r in &batch.records {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(v, serde_json::json!({"event_id": "e1", "txn_id": 12}));
            assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        }
        assert_eq!(batch.failed.len(), 1);
        assert!(
            batch.failed[0].reason.contains("txn_id"),
            "{}",
            batch.failed[0].reason
        );
    }
}
