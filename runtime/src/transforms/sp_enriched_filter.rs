//! `spEnrichedFilter`: keep or drop enriched events by a regex on one atomic field.
//!
//! Only the one field is located (by counting tabs from the nearer end of the line); the event is
//! not parsed and passes through as the same bytes.

use regex::bytes::Regex;
use serde::Deserialize;

use super::{partition, FilterAction, Transform, TransformConfig, TransformType};
use crate::config::{suggest, ConfigError, Origin};
use crate::record::{Batch, Record};
use crate::snowplow;

/// ```toml
/// [[transforms]]
/// type = "spEnrichedFilter"
/// atomic_field = "event_name"
/// regex = "^(play|pause|ping|end|ad_break.*)_event$"
/// filter_action = "keep"     # or "drop"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// An enriched-event field name, e.g. `event_name`, `app_id`, `platform`.
    pub atomic_field: String,
    /// Matched against the field's text; an empty field is matched as the empty string.
    pub regex: String,
    #[serde(default)]
    pub filter_action: FilterAction,
}

impl TransformType for Config {
    const TYPE: &'static str = "spEnrichedFilter";
}

/// The index of an atomic field, or a config error naming the closest field.
pub fn atomic_field(name: &str, origin: &Origin, key: &str) -> Result<usize, ConfigError> {
    match snowplow::field_index(name) {
        Some(i) if !matches!(i, snowplow::CONTEXTS | snowplow::UNSTRUCT_EVENT | snowplow::DERIVED_CONTEXTS) => Ok(i),
        Some(_) => Err(origin.error(
            key,
            format!("expected an atomic field, found `{name}`, which holds JSON; use spEnrichedFilterContext or spEnrichedFilterUnstructEvent"),
        )),
        None => {
            let mut m = format!("expected an enriched-event field name, found `{name}`");
            if let Some(s) = suggest(name, snowplow::field_names()) {
                m.push_str(&format!("; did you mean `{s}`?"));
            }
            Err(origin.error(key, m))
        }
    }
}

/// Compiles a regex, or a config error with the regex crate's explanation.
pub fn compile(pattern: &str, origin: &Origin, key: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| {
        origin.error(
            key,
            format!("expected a valid regex, found `{pattern}`: {e}"),
        )
    })
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(Filter {
            field: atomic_field(&self.atomic_field, origin, "atomic_field")?,
            regex: compile(&self.regex, origin, "regex")?,
            action: self.filter_action,
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

struct Filter {
    field: usize,
    regex: Regex,
    action: FilterAction,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for Filter {
    fn process(&mut self, batch: &mut Batch) {
        let (field, regex, action) = (self.field, &self.regex, self.action);
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            Ok(action.keeps(regex.is_match(snowplow::field(&r.value, field))))
        });
    }
}
