//! `spEnrichedFilter`: keep or drop enriched events by a regex on one atomic field.
//!
//! Only the one field is located (by counting tabs from the nearer end of the line); the event is
//! not parsed and passes through as the same bytes. As in Snowbridge, the regex sees the field's
//! value as the Go SDK prints it: string fields as they are, booleans as `true`/`false`,
//! timestamps as `2019-05-10 14:40:35.972 +0000 UTC` (see [`snowplow::atomic_value_text`]).

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
    /// Booleans read `true`/`false`, timestamps `2019-05-10 14:40:35.972 +0000 UTC`.
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
        let field = atomic_field(&self.atomic_field, origin, "atomic_field")?;
        Ok(Box::new(Filter {
            field,
            typed: snowplow::FIELDS[field].ty != snowplow::FieldType::String,
            text: String::new(),
            regex: compile(&self.regex, origin, "regex")?,
            action: self.filter_action,
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

struct Filter {
    field: usize,
    /// The field is not a string: its text is the Go SDK's rendering of the typed value.
    typed: bool,
    text: String,
    regex: Regex,
    action: FilterAction,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for Filter {
    fn process(&mut self, batch: &mut Batch) {
        let (field, typed, regex, action) = (self.field, self.typed, &self.regex, self.action);
        let text = &mut self.text;
        partition(batch, &mut self.scratch, &self.label, |r| {
            snowplow::validate(&r.value).map_err(|e| e.to_string())?;
            let raw = snowplow::field(&r.value, field);
            let matched = if typed {
                text.clear();
                snowplow::atomic_value_text(field, raw, text).map_err(|e| e.to_string())?;
                regex.is_match(text.as_bytes())
            } else {
                regex.is_match(raw)
            };
            Ok(action.keeps(matched))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    fn line(set: &[(usize, &str)]) -> Record {
        let mut fields = vec![""; snowplow::FIELD_COUNT];
        for (i, v) in set {
            fields[*i] = v;
        }
        Record::new(fields.join("\t"))
    }

    fn run(cfg: Config, records: Vec<Record>) -> Batch {
        let origin = Origin::new("test.toml", "transforms[0]");
        let mut t = cfg.build("t", &origin).unwrap();
        let mut batch = Batch::new(records, Ack::none());
        t.process(&mut batch);
        batch
    }

    fn cfg(field: &str, regex: &str, action: FilterAction) -> Config {
        Config {
            atomic_field: field.into(),
            regex: regex.into(),
            filter_action: action,
        }
    }

    #[test]
    fn keeps_and_drops_by_regex_and_fails_malformed_lines() {
        let play = line(&[(126, "play_event")]);
        let ping = line(&[(126, "page_ping")]);
        let bad = Record::new("not\tenough\tfields");
        let b = run(
            cfg("event_name", "^play_event$", FilterAction::Keep),
            vec![play.clone(), ping.clone(), bad],
        );
        assert_eq!(b.records, vec![play.clone()]);
        assert_eq!(b.filtered, vec![ping.clone()]);
        assert_eq!(b.failed.len(), 1);
        assert!(b.failed[0]
            .reason
            .contains("expected 131 tab-separated fields, found 3"));
        let b = run(
            cfg("event_name", "^play_event$", FilterAction::Drop),
            vec![play.clone(), ping.clone()],
        );
        assert_eq!(b.records, vec![ping]);
        assert_eq!(b.filtered, vec![play]);
    }

    #[test]
    fn an_empty_field_is_matched_as_empty_text() {
        let no_user = line(&[(126, "play_event")]);
        let b = run(
            cfg("user_id", "^$", FilterAction::Drop),
            vec![no_user.clone()],
        );
        assert_eq!(b.filtered, vec![no_user]);
    }

    #[test]
    fn typed_fields_are_matched_as_snowbridge_prints_them() {
        let r = line(&[(3, "2019-05-10 14:40:35.972"), (93, "1")]);
        let b = run(
            cfg(
                "collector_tstamp",
                "^2019-05-10 14:40:35.972 \\+0000 UTC$",
                FilterAction::Keep,
            ),
            vec![r.clone()],
        );
        assert_eq!(b.records.len(), 1, "timestamp text");
        let b = run(
            cfg("br_cookies", "^true$", FilterAction::Keep),
            vec![r.clone()],
        );
        assert_eq!(b.records.len(), 1, "bool text");
        let broken = line(&[(3, "yesterday")]);
        let b = run(
            cfg("collector_tstamp", ".", FilterAction::Keep),
            vec![broken],
        );
        assert_eq!(b.failed.len(), 1, "a value its type refuses is a failure");
    }

    #[test]
    fn config_errors_name_the_key_and_suggest() {
        let origin = Origin::new("p.toml", "transforms[2]");
        let e = cfg("event_nam", "x", FilterAction::Keep)
            .build("t", &origin)
            .err()
            .unwrap();
        assert_eq!(e.key, "transforms[2].atomic_field");
        assert!(
            e.message.contains("did you mean `event_name`?"),
            "{}",
            e.message
        );
        let e = cfg("contexts", "x", FilterAction::Keep)
            .build("t", &origin)
            .err()
            .unwrap();
        assert!(
            e.message.contains("spEnrichedFilterContext"),
            "{}",
            e.message
        );
    }
}
