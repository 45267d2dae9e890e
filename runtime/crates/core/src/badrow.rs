//! Snowplow bad rows: how failed records are written to the failure sink.
//!
//! Each failure becomes one self-describing JSON document, `generic_error` for records that could
//! not be processed, `size_violation` for records over the size limit and
//! `collector_payload_format_violation` for collector requests that are not tracker-protocol
//! payloads, with the processor, the failure (timestamp and messages) and the original payload,
//! truncated to fit.

use bytes::Bytes;

use crate::record::{Failed, FailureKind, Record};
use crate::snowplow::badrow::{self, Failure, Processor};
pub use crate::snowplow::badrow::{
    COLLECTOR_PAYLOAD_FORMAT_VIOLATION, GENERIC_ERROR, SIZE_VIOLATION,
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
}

impl BadRows {
    pub fn encode(&self, f: &Failed) -> Record {
        let message;
        let failure = match f.kind {
            FailureKind::Invalid => {
                message = format!("{}: {}", f.component, f.reason);
                Failure::Generic { message: &message }
            }
            FailureKind::Oversized { actual, limit } => {
                message = format!("{}: {}", f.component, f.reason);
                Failure::SizeViolation {
                    actual,
                    limit,
                    expectation: &message,
                }
            }
            FailureKind::CollectorPayloadFormat { field } => Failure::CollectorPayloadFormat {
                field,
                reason: &f.reason,
            },
        };
        let doc = badrow::to_json(
            WEIR,
            failure,
            &f.record.value,
            self.max_payload_bytes,
            crate::snowplow::now_ms(),
        );
        // The error also travels as headers, so a Kafka dead-letter topic can be triaged without
        // parsing the bad row; the original headers (and origin) are kept after them.
        let mut meta = f.record.meta.as_deref().cloned().unwrap_or_default();
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
