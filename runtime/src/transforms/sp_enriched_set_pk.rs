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
