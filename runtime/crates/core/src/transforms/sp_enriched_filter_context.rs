//! `spEnrichedFilterContext`: keep or drop enriched events by a regex on a field inside a context
//! entity, searching `contexts` and `derived_contexts` (any entity of the schema may match).
//! Semantics follow Snowbridge; see [`crate::snowplow::context_values`].

use regex::Regex;
use serde::Deserialize;

use super::{partition, FilterAction, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Record};
use crate::snowplow;
use crate::snowplow::FieldPath;

/// ```toml
/// [[transforms]]
/// type = "spEnrichedFilterContext"
/// context_full_name = "contexts_com_snowplowanalytics_snowplow_media_player_2"
/// custom_field_path = "label"
/// regex = "^Big Buck Bunny$"
/// filter_action = "keep"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The flattened context name: `contexts_<vendor>_<name>_<major>`.
    pub context_full_name: String,
    /// Path inside the entity's data, e.g. `a.b[0].c`.
    pub custom_field_path: String,
    pub regex: String,
    #[serde(default)]
    pub filter_action: FilterAction,
}

impl TransformType for Config {
    const TYPE: &'static str = "spEnrichedFilterContext";
}

/// Parses a `custom_field_path`, or a config error at that key.
pub fn field_path(text: &str, origin: &Origin) -> Result<FieldPath, ConfigError> {
    FieldPath::parse(text).map_err(|e| {
        origin.error(
            "custom_field_path",
            format!("expected a path like `a.b[0].c`, found `{text}`: {e}"),
        )
    })
}

/// Compiles a regex matched against JSON values' text.
pub fn text_regex(pattern: &str, origin: &Origin, key: &str) -> Result<Regex, ConfigError> {
    Regex::new(pattern).map_err(|e| {
        origin.error(
            key,
            format!("expected a valid regex, found `{pattern}`: {e}"),
        )
    })
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        if !self.context_full_name.starts_with("contexts_") {
            return Err(origin.error(
                "context_full_name",
                format!(
                    "expected a flattened context name like `contexts_com_acme_thing_1`, found `{}`",
                    self.context_full_name
                ),
            ));
        }
        Ok(Box::new(ContextFilter {
            name: self.context_full_name.clone(),
            path: field_path(&self.custom_field_path, origin)?,
            regex: text_regex(&self.regex, origin, "regex")?,
            action: self.filter_action,
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

struct ContextFilter {
    name: String,
    path: FieldPath,
    regex: Regex,
    action: FilterAction,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for ContextFilter {
    fn process(&mut self, batch: &mut Batch) {
        let (name, path, regex, action) = (&self.name, &self.path, &self.regex, self.action);
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            let matched = snowplow::context_values(&r.value, name, path, |v| regex.is_match(v))
                .map_err(|e| e.to_string())?;
            Ok(action.keeps(matched))
        });
    }
}
