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
            json: snowplow::Scratch::default(),
        }))
    }
}

struct ToJson {
    label: String,
    scratch: Vec<Record>,
    json: snowplow::Scratch,
}

impl Transform for ToJson {
    fn process(&mut self, batch: &mut Batch) {
        std::mem::swap(&mut batch.records, &mut self.scratch);
        let (label, failed) = (&self.label, &mut batch.failed);
        batch.records = to_json_records(&mut self.scratch, &mut self.json, None, |r, e| {
            failed.push(Failed::invalid(r, label, e))
        });
    }
}

/// The enriched TSV of `input` (drained) as analytics-SDK JSON records, written into one buffer
/// for the batch, each record a slice of it. A record that is not an enriched event goes to
/// `fail` with the parser's reason; with `originals`, the TSV of each converted record is pushed
/// there, in output order (the `js` transform restores it on a record that fails later).
pub(crate) fn to_json_records(
    input: &mut Vec<Record>,
    json: &mut snowplow::Scratch,
    mut originals: Option<&mut Vec<Bytes>>,
    mut fail: impl FnMut(Record, String),
) -> Vec<Record> {
    let input_bytes: usize = input.iter().map(|r| r.value.len()).sum();
    let mut out = Vec::with_capacity(input_bytes + input_bytes / 2);
    let mut kept = Vec::with_capacity(input.len());
    for r in input.drain(..) {
        // On error `to_json` leaves `out` as it was.
        match snowplow::to_json(&r.value, &mut out, json) {
            Ok(()) => {
                kept.push((r.key, r.meta, out.len()));
                if let Some(o) = originals.as_deref_mut() {
                    o.push(r.value);
                }
            }
            Err(e) => fail(r, e.to_string()),
        }
    }
    let buf = Bytes::from(out);
    let mut start = 0;
    kept.into_iter()
        .map(|(key, meta, end)| {
            let value = buf.slice(start..end);
            start = end;
            Record { value, key, meta }
        })
        .collect()
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
