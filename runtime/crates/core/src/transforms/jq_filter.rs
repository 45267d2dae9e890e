//! `jqFilter`: keeps the records for which a jq program's first output is `true`, as Snowbridge
//! 5.x's `jqFilter` (`pkg/transform/filter/jq_filter.go`): `false` sends the record to the
//! filtered sink, any other output (or none, an error, a time-out) to the failure sink. The
//! record itself is not changed. See [`super::jq_engine`].

use serde::Deserialize;

use super::jq::{default_timeout, Runner};
use super::jq_engine::{self, Mode, Outcome};
use super::{partition, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Record};

/// ```toml
/// [[transforms]]
/// type = "jqFilter"
/// jq_command = "has(\"app_id\")"
/// timeout_ms = 100        # default 100, as in Snowbridge
/// snowplow_mode = true    # input is enriched TSV, seen as the analytics-SDK JSON
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub jq_command: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub snowplow_mode: bool,
}

impl TransformType for Config {
    const TYPE: &'static str = "jqFilter";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        jq_engine::check(&self.jq_command, origin)?;
        Ok(Box::new(JqFilter {
            runner: Runner::new(
                &self.jq_command,
                Mode::Filter,
                self.timeout_ms,
                self.snowplow_mode,
            ),
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

struct JqFilter {
    runner: Runner,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for JqFilter {
    fn process(&mut self, batch: &mut Batch) {
        let runner = &mut self.runner;
        partition(batch, &mut self.scratch, &self.label, |r| {
            match runner.run(r)? {
                Outcome::Keep(b) => Ok(b),
                Outcome::Data(_) => unreachable!("jqFilter runs in Filter mode"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    const TSV1: &str = include_str!("testdata/snowplow_tsv1.tsv");
    const JSON1: &str = include_str!("testdata/snowplow_json1.json");

    /// (kept, filtered, failure reasons) of one record through `jqFilter`.
    fn filter(cmd: &str, sp: bool, input: &str) -> (usize, usize, Vec<String>) {
        let mut t = Config {
            jq_command: cmd.into(),
            timeout_ms: 100,
            snowplow_mode: sp,
        }
        .build("t", &Origin::new("t.toml", "transforms[0]"))
        .unwrap();
        let mut batch = Batch::new(vec![Record::new(input.to_string())], Ack::none());
        t.process(&mut batch);
        for r in batch.records.iter().chain(&batch.filtered) {
            assert_eq!(r.value, input.as_bytes(), "the record is not changed");
        }
        (
            batch.records.len(),
            batch.filtered.len(),
            batch.failed.into_iter().map(|f| f.reason).collect(),
        )
    }

    /// jq_filter_test.go: TestJQFilter_SpMode_{true,false}_{keep,drop}, TestJQFilter_epoch,
    /// TestJQFilter_non_boolean_output (same message).
    #[test]
    fn snowbridge_jq_filter() {
        assert_eq!(filter(r#"has("app_id")"#, true, TSV1), (1, 0, vec![]));
        assert_eq!(
            filter(r#"has("non_existent_key")"#, true, TSV1),
            (0, 1, vec![])
        );
        assert_eq!(filter(r#"has("app_id")"#, false, JSON1), (1, 0, vec![]));
        assert_eq!(
            filter(r#"has("non_existent_key")"#, false, JSON1),
            (0, 1, vec![])
        );
        assert_eq!(
            filter(".collector_tstamp | epoch | . < 10", true, TSV1),
            (0, 1, vec![])
        );
        assert_eq!(
            filter(".collector_tstamp | epoch", true, TSV1),
            (
                0,
                0,
                vec!["jq filter didn't return expected [boolean] value: 1557499235".to_string()]
            )
        );
    }

    /// Snowbridge's docs example jqFilter-minimal-example.hcl (`has("app_id")`, JSON input).
    #[test]
    fn docs_jq_filter_minimal_example() {
        assert_eq!(filter(r#"has("app_id")"#, false, JSON1), (1, 0, vec![]));
        assert_eq!(
            filter(r#"has("app_id")"#, false, r#"{"x":1}"#),
            (0, 1, vec![])
        );
    }

    /// jq_filter_test.go TestJQFilter_invalid_jq_command: same message, as a config error.
    #[test]
    fn snowbridge_jq_filter_invalid_command() {
        let e = Config {
            jq_command: "blabla".into(),
            timeout_ms: 100,
            snowplow_mode: true,
        }
        .build("t", &Origin::new("t.toml", "transforms[0]"))
        .err()
        .unwrap();
        assert_eq!(e.key, "transforms[0].jq_command");
        assert!(
            e.message
                .ends_with("error compiling jq query: function not defined: blabla/0"),
            "{}",
            e.message
        );
    }
}
