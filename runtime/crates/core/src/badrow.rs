//! Snowplow bad rows: how failed records are written to the failure sink.
//!
//! Each failure becomes one self-describing JSON document, `generic_error` for records that could
//! not be processed, `size_violation` for records over the size limit and
//! `collector_payload_format_violation` for collector requests that are not tracker-protocol
//! payloads, with the processor, the failure (timestamp and messages) and the original payload,
//! truncated to fit. With `[bad_rows] format = "event_forwarding"` (Snowbridge's
//! `failure_parser { format = "event_forwarding" }`), records that failed are
//! `event_forwarding_error`s instead: the record as read, what it had become, and the error's
//! type (`transformation`, `api`, `template`) and code.

use bytes::Bytes;

use crate::record::{Failed, FailureKind, Record};
use crate::snowplow::badrow::{self, Failure, Processor};
pub use crate::snowplow::badrow::{
    COLLECTOR_PAYLOAD_FORMAT_VIOLATION, EVENT_FORWARDING_ERROR, GENERIC_ERROR, SIZE_VIOLATION,
};

/// Header names set on every bad row (written as message headers by sinks that have them).
pub const HEADER_ERROR: &str = "weir.error";
pub const HEADER_COMPONENT: &str = "weir.component";
pub const HEADER_SCHEMA: &str = "weir.schema";

const WEIR: Processor<'static> = Processor {
    artifact: "weir",
    version: env!("CARGO_PKG_VERSION"),
};

/// Encodes failures as bad rows.
#[derive(Debug, Clone)]
pub struct BadRows {
    /// Longest payload (in bytes) kept in a bad row.
    pub max_payload_bytes: usize,
    pub format: Format,
    /// Counts failures with an error code for the metadata reporter, when there is one.
    pub tally: Option<std::sync::Arc<crate::monitoring::ErrorTally>>,
}

/// `[bad_rows]`.
///
/// ```toml
/// [bad_rows]
/// format = "event_forwarding"   # default "snowplow"
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BadRowsConfig {
    pub format: Format,
}

/// How failed records are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Snowplow's bad rows: `generic_error`, `size_violation`, …
    #[default]
    Snowplow,
    /// Snowbridge's event forwarding errors (`event_forwarding_error`; `size_violation` for
    /// records over a size limit).
    EventForwarding,
}

/// A failure's error type and code as Snowbridge reports them (`event_forwarding_error`, the
/// metadata reporter's `invalidErrors`), for the failures that have one.
fn error_code(f: &Failed) -> Option<(&'static str, String)> {
    match f.kind {
        FailureKind::Api { status } => Some(("api", status.to_string())),
        FailureKind::Template => Some(("template", String::new())),
        FailureKind::Invalid if f.component.starts_with("transforms") => {
            Some(("transformation", transformation_code(&f.reason).to_string()))
        }
        _ => None,
    }
}

/// Snowbridge's error code of a transformation error: the JavaScript error class its message
/// names, else `TransformationError`.
fn transformation_code(message: &str) -> &'static str {
    ["TypeError", "SyntaxError", "ReferenceError"]
        .into_iter()
        .find(|c| message.contains(c))
        .unwrap_or("TransformationError")
}

impl BadRows {
    pub fn encode(&self, f: &Failed) -> Record {
        let coded = error_code(f);
        if let (Some(t), Some((_, code))) = (&self.tally, &coded) {
            t.record(code, &f.component);
        }
        let message;
        let payload = match self.format {
            Format::EventForwarding => f
                .record
                .meta
                .as_ref()
                .and_then(|m| m.original.as_ref())
                .unwrap_or(&f.record.value),
            Format::Snowplow => &f.record.value,
        };
        let failure = match (f.kind, self.format) {
            (
                FailureKind::Invalid | FailureKind::Api { .. } | FailureKind::Template,
                Format::EventForwarding,
            ) => {
                let (error_type, code) = coded.as_ref().map_or(("", ""), |(t, c)| (*t, c.as_str()));
                Failure::EventForwarding {
                    error_type,
                    message: &f.reason,
                    code,
                    latest_state: &f.record.value,
                }
            }
            (
                FailureKind::Invalid | FailureKind::Api { .. } | FailureKind::Template,
                Format::Snowplow,
            ) => {
                message = format!("{}: {}", f.component, f.reason);
                Failure::Generic { message: &message }
            }
            (FailureKind::Oversized { actual, limit }, _) => {
                message = format!("{}: {}", f.component, f.reason);
                Failure::SizeViolation {
                    actual,
                    limit,
                    expectation: &message,
                }
            }
            (FailureKind::CollectorPayloadFormat { field }, _) => Failure::CollectorPayloadFormat {
                field,
                reason: &f.reason,
            },
        };
        let doc = badrow::to_json(
            WEIR,
            failure,
            payload,
            self.max_payload_bytes,
            crate::snowplow::now_ms(),
        );
        // The error also travels as headers, so a Kafka dead-letter topic can be triaged without
        // parsing the bad row; the original headers (and origin) are kept after them.
        let mut meta = f.record.meta.as_deref().cloned().unwrap_or_default();
        meta.original = None;
        let mut headers = vec![
            (HEADER_ERROR.to_string(), Bytes::from(f.reason.clone())),
            (
                HEADER_COMPONENT.to_string(),
                Bytes::from(f.component.clone()),
            ),
            (
                HEADER_SCHEMA.to_string(),
                Bytes::from_static(failure.schema().as_bytes()),
            ),
        ];
        headers.append(&mut meta.headers);
        meta.headers = headers;
        Record {
            value: Bytes::from(doc),
            key: f.record.key.clone(),
            meta: Some(Box::new(meta)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_row_carries_the_error_in_headers_before_the_originals() {
        let mut record = Record::new(vec![b'a'; 100]);
        record.meta = Some(Box::new(crate::record::Meta {
            headers: vec![("trace".into(), Bytes::from("t1"))],
            ..Default::default()
        }));
        let f = Failed::invalid(record, "transforms[0] (x)", "bad");
        let row = BadRows {
            max_payload_bytes: 10,
            format: Format::Snowplow,
            tally: None,
        }
        .encode(&f);
        let v: serde_json::Value = serde_json::from_slice(&row.value).unwrap();
        assert_eq!(v["schema"], GENERIC_ERROR);
        assert_eq!(v["data"]["payload"], "aaaaaaaaaa");
        assert_eq!(v["data"]["failure"]["errors"][0], "transforms[0] (x): bad");
        let names: Vec<&str> = row.headers().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [HEADER_ERROR, HEADER_COMPONENT, HEADER_SCHEMA, "trace"]
        );
        assert_eq!(row.headers()[0].1, Bytes::from("bad"));
        assert_eq!(row.headers()[2].1, Bytes::from(GENERIC_ERROR));
    }
}
