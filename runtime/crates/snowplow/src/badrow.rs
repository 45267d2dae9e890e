//! Snowplow bad rows: the self-describing JSON documents Snowplow writes for events it could not
//! process, `generic_error`, `size_violation` and `collector_payload_format_violation`, with the
//! processor, the failure (timestamp and messages) and the original payload, truncated to fit.

use serde_json::json;

pub const GENERIC_ERROR: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/generic_error/jsonschema/1-0-0";
pub const SIZE_VIOLATION: &str =
    "iglu:com.snowplowanalytics.snowplow.badrows/size_violation/jsonschema/1-0-0";
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
}

impl Failure<'_> {
    /// The Iglu schema of this failure's bad row.
    pub fn schema(&self) -> &'static str {
        match self {
            Failure::Generic { .. } => GENERIC_ERROR,
            Failure::SizeViolation { .. } => SIZE_VIOLATION,
            Failure::CollectorPayloadFormat { .. } => COLLECTOR_PAYLOAD_FORMAT_VIOLATION,
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
/// `max_payload_bytes` (at a character boundary; invalid UTF-8 replaced).
pub fn to_json(
    processor: Processor<'_>,
    failure: Failure<'_>,
    payload: &[u8],
    max_payload_bytes: usize,
    now_ms: i64,
) -> Vec<u8> {
    let (text, truncated) = truncated_text(payload, max_payload_bytes);
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
