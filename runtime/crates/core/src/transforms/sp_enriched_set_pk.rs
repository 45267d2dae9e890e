//! `spEnrichedSetPk`: set the record's partition key from an atomic field (a zero-copy slice of
//! the event), e.g. so that a Kafka or Kinesis sink keeps each viewer's events in order.

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
        }))
    }
}

struct SetPk {
    field: usize,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for SetPk {
    fn process(&mut self, batch: &mut Batch) {
        let field = self.field;
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            Ok(true)
        });
        for r in &mut batch.records {
            let v = snowplow::field(&r.value, field);
            r.key = Some(r.value.slice_ref(v));
        }
    }
}

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
}
