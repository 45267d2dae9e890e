//! `spEnrichedFilterUnstructEvent`: keep or drop enriched events by a regex on a field of the
//! self-describing event, for one event name and matching versions. Semantics follow Snowbridge;
//! see [`crate::snowplow::unstruct_value`].

use regex::Regex;
use serde::Deserialize;

use super::sp_enriched_filter_context::{field_path, text_regex};
use super::{partition, FilterAction, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Record};
use crate::snowplow;
use crate::snowplow::FieldPath;

/// ```toml
/// [[transforms]]
/// type = "spEnrichedFilterUnstructEvent"
/// unstruct_event_name = "ad_quartile_event"
/// unstruct_event_version_regex = "^1-"     # default ".*"
/// custom_field_path = "percentProgress"
/// regex = "^(50|75)$"
/// filter_action = "keep"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The event's schema name, compared for equality with `event_name`.
    pub unstruct_event_name: String,
    /// Searched (unanchored, as in Snowbridge) in `event_version`, e.g. `^1-`.
    #[serde(default = "any_version")]
    pub unstruct_event_version_regex: String,
    pub custom_field_path: String,
    pub regex: String,
    #[serde(default)]
    pub filter_action: FilterAction,
}

fn any_version() -> String {
    ".*".to_string()
}

impl TransformType for Config {
    const TYPE: &'static str = "spEnrichedFilterUnstructEvent";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(UnstructFilter {
            event: self.unstruct_event_name.clone(),
            version: text_regex(
                &self.unstruct_event_version_regex,
                origin,
                "unstruct_event_version_regex",
            )?,
            path: field_path(&self.custom_field_path, origin)?,
            regex: text_regex(&self.regex, origin, "regex")?,
            action: self.filter_action,
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

struct UnstructFilter {
    event: String,
    version: Regex,
    path: FieldPath,
    regex: Regex,
    action: FilterAction,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for UnstructFilter {
    fn process(&mut self, batch: &mut Batch) {
        let (event, version, path, regex, action) = (
            &self.event,
            &self.version,
            &self.path,
            &self.regex,
            self.action,
        );
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            let matched =
                snowplow::unstruct_value(&r.value, event, version, path, |v| regex.is_match(v))
                    .map_err(|e| e.to_string())?;
            Ok(action.keeps(matched))
        });
    }
}
