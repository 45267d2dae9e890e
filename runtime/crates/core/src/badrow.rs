//! Snowplow bad rows: how failed records are written to the failure sink.
//!
//! Each failure becomes one self-describing JSON document, `generic_error` for records that could
//! not be processed, `size_violation` for records over the size limit and
//! `collector_payload_format_violation` for collector requests that are not tracker-protocol
//! payloads, with the processor, the failure (timestamp and messages) and the original payload,
//! truncated to fit.

use std::time::SystemTime;

use bytes::Bytes;
use serde_json::json;

use crate::record::{Failed, FailureKind, Record};

pub const GENERIC_ERROR: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/generic_error/jsonschema/1-0-0";
pub const SIZE_VIOLATION: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/size_violation/jsonschema/1-0-0";
pub const COLLECTOR_PAYLOAD_FORMAT_VIOLATION: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/collector_payload_format_violation/jsonschema/1-0-0";

/// Header names set on every bad row (written as message headers by sinks that have them).
pub const HEADER_ERROR: &str = "weir.error";
pub const HEADER_COMPONENT: &str = "weir.component";
pub const HEADER_SCHEMA: &str = "weir.schema";

/// Encodes failures as bad rows.
#[derive(Debug, Clone)]
pub struct BadRows {
    /// Longest payload (in bytes) kept in a bad row.
    pub max_payload_bytes: usize,
}

impl BadRows {
    pub fn encode(&self, f: &Failed) -> Record {
        let (payload, truncated) = truncated_text(&f.record.value, self.max_payload_bytes);
        let timestamp = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let processor = json!({"artifact": "weir", "version": env!("CARGO_PKG_VERSION")});
        let doc = match f.kind {
            FailureKind::Invalid => {
                let mut messages = vec![format!("{}: {}", f.component, f.reason)];
                if truncated {
                    messages.push(format!(
                        "payload truncated from {} to {} bytes",
                        f.record.value.len(),
                        payload.len()
                    ));
                }
                json!({
                    "schema": GENERIC_ERROR,
                    "data": {
                        "processor": processor,
                        "failure": {"timestamp": timestamp, "errors": messages},
                        "payload": payload,
                    }
                })
            }
            FailureKind::Oversized { actual, limit } => json!({
                "schema": SIZE_VIOLATION,
                "data": {
                    "processor": processor,
                    "failure": {
                        "timestamp": timestamp,
                        "maximumAllowedSizeBytes": limit,
                        "actualSizeBytes": actual,
                        "expectation": format!("{}: {}", f.component, f.reason),
                    },
                    "payload": payload,
                }
            }),
            // The schema's `loader` is one of a fixed list; weir reads every collector payload
            // (an HTTP request included) as the Thrift CollectorPayload it encodes in `payload`.
            FailureKind::CollectorPayloadFormat { field } => {
                let message = if field.is_empty() {
                    json!({"error": cut_chars(&f.reason, 512)})
                } else {
                    json!({
                        "payloadField": cut_chars(field, 64),
                        "expectation": cut_chars(&f.reason, 256),
                    })
                };
                json!({
                    "schema": COLLECTOR_PAYLOAD_FORMAT_VIOLATION,
                    "data": {
                        "processor": processor,
                        "failure": {"timestamp": timestamp, "loader": "thrift", "message": message},
                        "payload": payload,
                    }
                })
            }
        };
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
                Bytes::from_static(
                    match f.kind {
                        FailureKind::Invalid => GENERIC_ERROR,
                        FailureKind::Oversized { .. } => SIZE_VIOLATION,
                        FailureKind::CollectorPayloadFormat { .. } => {
                            COLLECTOR_PAYLOAD_FORMAT_VIOLATION
                        }
                    }
                    .as_bytes(),
                ),
            ),
        ];
        headers.append(&mut meta.headers);
        meta.headers = headers;
        Record {
            value: Bytes::from(serde_json::to_vec(&doc).expect("a json! value serialises")),
            key: f.record.key.clone(),
            meta: Some(Box::new(meta)),
        }
    }
}

/// At most `max` characters of `s` (the schema's `maxLength`).
fn cut_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// The payload as text (invalid UTF-8 replaced), cut at a character boundary to `max` bytes.
fn truncated_text(bytes: &[u8], max: usize) -> (String, bool) {
    let cut = bytes.len() > max;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut s = text.into_owned();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    (s, cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_error_carries_reason_and_truncated_payload() {
        let f = Failed::invalid(Record::new(vec![b'a'; 100]), "transforms[0] (x)", "bad");
        let row = BadRows {
            max_payload_bytes: 10,
        }
        .encode(&f);
        let v: serde_json::Value = serde_json::from_slice(&row.value).unwrap();
        assert_eq!(v["schema"], GENERIC_ERROR);
        assert_eq!(v["data"]["payload"], "aaaaaaaaaa");
        assert_eq!(v["data"]["failure"]["errors"][0], "transforms[0] (x): bad");
        assert_eq!(v["data"]["processor"]["artifact"], "weir");
        assert_eq!(
            row.headers()[0],
            (HEADER_ERROR.to_string(), Bytes::from("bad"))
        );
    }

    #[test]
    fn invalid_utf8_payload_stays_valid_json() {
        let f = Failed::invalid(
            Record::new(vec![b'o', b'k', 0xff, 0xfe]),
            "t",
            "invalid UTF-8",
        );
        let row = BadRows {
            max_payload_bytes: 1000,
        }
        .encode(&f);
        let v: serde_json::Value = serde_json::from_slice(&row.value).unwrap();
        assert_eq!(v["data"]["payload"], "ok\u{fffd}\u{fffd}");
    }

    #[test]
    fn size_violation_names_sizes() {
        let f = Failed {
            record: Record::new("xyz"),
            kind: FailureKind::Oversized {
                actual: 5000,
                limit: 100,
            },
            component: "stdin".into(),
            reason: "too long".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(
            &BadRows {
                max_payload_bytes: 2,
            }
            .encode(&f)
            .value,
        )
        .unwrap();
        assert_eq!(v["schema"], SIZE_VIOLATION);
        assert_eq!(v["data"]["failure"]["actualSizeBytes"], 5000);
        assert_eq!(v["data"]["failure"]["maximumAllowedSizeBytes"], 100);
        assert_eq!(v["data"]["payload"], "xy");
    }

    #[test]
    fn collector_payload_format_violation_follows_its_schema() {
        let encode = |field: &'static str, reason: String| {
            let f = Failed {
                record: Record::new("CwB6aQAAAA=="),
                kind: FailureKind::CollectorPayloadFormat { field },
                component: "source (collector)".into(),
                reason,
            };
            let row = BadRows {
                max_payload_bytes: 1000,
            }
            .encode(&f);
            serde_json::from_slice::<serde_json::Value>(&row.value).unwrap()
        };
        let v = encode("e", "x".repeat(300));
        assert_eq!(v["schema"], COLLECTOR_PAYLOAD_FORMAT_VIOLATION);
        let data = &v["data"];
        assert_eq!(data["payload"], "CwB6aQAAAA==");
        assert_eq!(data["failure"]["loader"], "thrift");
        assert_eq!(data["failure"]["message"]["payloadField"], "e");
        // maxLength 256, and no other keys (additionalProperties is false).
        assert_eq!(
            data["failure"]["message"]["expectation"]
                .as_str()
                .unwrap()
                .len(),
            256
        );
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(data), ["failure", "payload", "processor"]);
        assert_eq!(keys(&data["failure"]), ["loader", "message", "timestamp"]);
        assert_eq!(
            keys(&data["failure"]["message"]),
            ["expectation", "payloadField"]
        );
        let v = encode("", "unreadable".into());
        assert_eq!(
            v["data"]["failure"]["message"],
            json!({"error": "unreadable"})
        );
    }
}
