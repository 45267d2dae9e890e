//! Snowplow bad rows: the self-describing JSON documents Snowplow writes for events it could not
//! process, `generic_error`, `size_violation` and `collector_payload_format_violation`, with the
//! processor, the failure (timestamp and messages) and the original payload, truncated to fit.

use serde_json::json;

pub const GENERIC_ERROR: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/generic_error/jsonschema/1-0-0";
pub const SIZE_VIOLATION: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/size_violation/jsonschema/1-0-0";
/// Snowbridge's `failure_parser { format = "event_forwarding" }` bad row.
pub const EVENT_FORWARDING_ERROR: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/event_forwarding_error/jsonschema/1-0-0";
pub const COLLECTOR_PAYLOAD_FORMAT_VIOLATION: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/collector_payload_format_violation/jsonschema/1-0-0";

/// What failed, as the bad-row schemas describe it.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// `generic_error`: the payload could not be processed; `message` says why.
    Generic { message: &'a str },
    /// `size_violation`: the payload is `actual` bytes, over the `limit`.
    SizeViolation {
        actual: usize,
        limit: usize,
        expectation: &'a str,
    },
    /// `collector_payload_format_violation`: a collector payload that is not tracker protocol.
    /// `field` names the payload field or tracker parameter at fault (empty when none applies).
    CollectorPayloadFormat { field: &'a str, reason: &'a str },
    /// `event_forwarding_error` (Snowbridge's event forwarding failures): the payload is the
    /// record as it was read, `latest_state` what it had become when it failed; `error_type`
    /// is `transformation`, `api` or `template` (or empty), `code` e.g. an HTTP status.
    EventForwarding {
        error_type: &'a str,
        message: &'a str,
        code: &'a str,
        latest_state: &'a [u8],
    },
}

impl Failure<'_> {
    /// The Iglu schema of this failure's bad row.
    pub fn schema(&self) -> &'static str {
        match self {
            Failure::Generic { .. } => GENERIC_ERROR,
            Failure::SizeViolation { .. } => SIZE_VIOLATION,
            Failure::CollectorPayloadFormat { .. } => COLLECTOR_PAYLOAD_FORMAT_VIOLATION,
            Failure::EventForwarding { .. } => EVENT_FORWARDING_ERROR,
        }
    }
}

/// Who wrote the bad row (`processor`).
#[derive(Debug, Clone, Copy)]
pub struct Processor<'a> {
    pub artifact: &'a str,
    pub version: &'a str,
}

/// The bad row for `failure` of `payload` at `now_ms`, with the payload cut to
/// `max_payload_bytes` (at a character boundary; invalid UTF-8 replaced). An
/// `event_forwarding_error`'s latest state shares that budget and is cut first, as Snowbridge
/// does.
pub fn to_json(
    processor: Processor<'_>,
    failure: Failure<'_>,
    payload: &[u8],
    max_payload_bytes: usize,
    now_ms: i64,
) -> Vec<u8> {
    let (text, truncated) = truncated_text(payload, max_payload_bytes);
    // An event forwarding error's latest state gets what the payload (the record as read)
    // leaves of the budget.
    let latest_budget = max_payload_bytes.saturating_sub(text.len());
    let mut timestamp = String::with_capacity(24);
    if crate::tracker::format_tstamp(now_ms, &mut timestamp) {
        timestamp.replace_range(10..11, "T");
        timestamp.push('Z');
    }
    let processor = json!({"artifact": processor.artifact, "version": processor.version});
    let doc = match failure {
        Failure::Generic { message } => {
            let mut messages = vec![message.to_string()];
            if truncated {
                messages.push(format!(
                    "payload truncated from {} to {} bytes",
                    payload.len(),
                    text.len()
                ));
            }
            json!({
                "schema": GENERIC_ERROR,
                "data": {
                    "processor": processor,
                    "failure": {"timestamp": timestamp, "errors": messages},
                    "payload": text,
                }
            })
        }
        Failure::SizeViolation {
            actual,
            limit,
            expectation,
        } => json!({
            "schema": SIZE_VIOLATION,
            "data": {
                "processor": processor,
                "failure": {
                    "timestamp": timestamp,
                    "maximumAllowedSizeBytes": limit,
                    "actualSizeBytes": actual,
                    "expectation": expectation,
                },
                "payload": text,
            }
        }),
        // The schema's `loader` is one of a fixed list; a collector payload (an HTTP request
        // included) is read as the Thrift CollectorPayload it encodes in `payload`.
        Failure::CollectorPayloadFormat { field, reason } => {
            let message = if field.is_empty() {
                json!({"error": cut_chars(reason, 512)})
            } else {
                json!({
                    "payloadField": cut_chars(field, 64),
                    "expectation": cut_chars(reason, 256),
                })
            };
            json!({
                "schema": COLLECTOR_PAYLOAD_FORMAT_VIOLATION,
                "data": {
                    "processor": processor,
                    "failure": {"timestamp": timestamp, "loader": "thrift", "message": message},
                    "payload": text,
                }
            })
        }
        Failure::EventForwarding {
            error_type,
            message,
            code,
            latest_state,
        } => {
            let (latest, _) = truncated_text(latest_state, latest_budget);
            json!({
                "schema": EVENT_FORWARDING_ERROR,
                "data": {
                    "processor": processor,
                    "failure": {
                        "timestamp": timestamp,
                        "errorType": error_type,
                        "errorMessage": message,
                        "errorCode": code,
                        "latestState": latest,
                    },
                    "payload": text,
                }
            })
        }
    };
    serde_json::to_vec(&doc).expect("a json! value serialises")
}

/// At most `max` characters of `s` (the schemas' `maxLength`).
fn cut_chars(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// The payload as text (invalid UTF-8 replaced), cut at a character boundary to `max` bytes.
fn truncated_text(bytes: &[u8], max: usize) -> (String, bool) {
    let cut = bytes.len() > max;
    let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned();
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

    /// Snowbridge's own vectors (pkg/failure/event_forwarding_test.go), timestamp aside.
    #[test]
    fn event_forwarding_errors_match_snowbridges() {
        for (error_type, message, code) in [
            ("transformation", "failure: failure", "TransformationError"),
            ("template", "failure: failure", ""),
            ("api", "HTTP Status Code: 401 Body: unauthorised", "401"),
        ] {
            let mut v = parse(to_json(
                Processor {
                    artifact: "test",
                    version: "0.1.0",
                },
                Failure::EventForwarding {
                    error_type,
                    message,
                    code,
                    latest_state: b"Hello EventForwarding!!",
                },
                b"EventForwarding",
                5000,
                0,
            ));
            assert_eq!(
                v["data"]["failure"]["timestamp"],
                "1970-01-01T00:00:00.000Z"
            );
            v["data"]["failure"]["timestamp"] = json!("0001-01-01T00:00:00Z");
            assert_eq!(
                v,
                json!({
                    "data": {
                        "processor": {"artifact": "test", "version": "0.1.0"},
                        "payload": "EventForwarding",
                        "failure": {
                            "latestState": "Hello EventForwarding!!",
                            "timestamp": "0001-01-01T00:00:00Z",
                            "errorType": error_type,
                            "errorMessage": message,
                            "errorCode": code,
                        },
                    },
                    "schema": EVENT_FORWARDING_ERROR,
                })
            );
        }
    }

    #[test]
    fn an_event_forwarding_error_cuts_its_latest_state_before_its_payload() {
        let ef = |latest: &'static [u8]| Failure::EventForwarding {
            error_type: "transformation",
            message: "m",
            code: "TypeError",
            latest_state: latest,
        };
        let v = parse(to_json(WEIR, ef(b"0123456789"), b"abcdef", 10, 0));
        assert_eq!(v["data"]["payload"], "abcdef");
        assert_eq!(v["data"]["failure"]["latestState"], "0123");
        let v = parse(to_json(WEIR, ef(b"0123456789"), b"abcdefghijkl", 10, 0));
        assert_eq!(v["data"]["payload"], "abcdefghij");
        assert_eq!(v["data"]["failure"]["latestState"], "");
    }

    const WEIR: Processor<'static> = Processor {
        artifact: "weir",
        version: "0.1.0",
    };

    fn parse(v: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&v).unwrap()
    }

    #[test]
    fn generic_error_carries_the_message_the_time_and_the_truncated_payload() {
        let v = parse(to_json(
            WEIR,
            Failure::Generic { message: "t: bad" },
            &[b'a'; 100],
            10,
            1_764_147_600_123,
        ));
        assert_eq!(v["schema"], GENERIC_ERROR);
        assert_eq!(v["data"]["payload"], "aaaaaaaaaa");
        assert_eq!(
            v["data"]["failure"]["errors"],
            json!(["t: bad", "payload truncated from 100 to 10 bytes"])
        );
        assert_eq!(
            v["data"]["failure"]["timestamp"],
            "2025-11-26T09:00:00.123Z"
        );
        assert_eq!(
            v["data"]["processor"],
            json!({"artifact": "weir", "version": "0.1.0"})
        );
    }

    #[test]
    fn invalid_utf8_stays_valid_json_and_cuts_at_a_character() {
        let v = parse(to_json(
            WEIR,
            Failure::Generic { message: "m" },
            b"ok\xff\xfe",
            1000,
            0,
        ));
        assert_eq!(v["data"]["payload"], "ok\u{fffd}\u{fffd}");
        // "é" is two bytes: a cut after its first byte drops it whole.
        let v = parse(to_json(
            WEIR,
            Failure::Generic { message: "m" },
            "aéb".as_bytes(),
            2,
            0,
        ));
        assert_eq!(v["data"]["payload"], "a");
    }

    #[test]
    fn size_violation_names_both_sizes() {
        let v = parse(to_json(
            WEIR,
            Failure::SizeViolation {
                actual: 5000,
                limit: 100,
                expectation: "stdin: too long",
            },
            b"xyz",
            2,
            0,
        ));
        assert_eq!(v["schema"], SIZE_VIOLATION);
        assert_eq!(v["data"]["failure"]["actualSizeBytes"], 5000);
        assert_eq!(v["data"]["failure"]["maximumAllowedSizeBytes"], 100);
        assert_eq!(v["data"]["failure"]["expectation"], "stdin: too long");
        assert_eq!(v["data"]["payload"], "xy");
    }

    #[test]
    fn collector_payload_format_violation_follows_its_schema() {
        let encode = |field: &str, reason: &str| {
            parse(to_json(
                WEIR,
                Failure::CollectorPayloadFormat { field, reason },
                b"CwB6aQAAAA==",
                1000,
                0,
            ))
        };
        let v = encode("e", &"x".repeat(300));
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
        let v = encode("", "unreadable");
        assert_eq!(
            v["data"]["failure"]["message"],
            json!({"error": "unreadable"})
        );
    }
}
