//! `spCollectorPayloadToEnriched`: raw collector payloads → enriched TSV, for weir as a sidecar on
//! a Snowplow collector's raw stream.
//!
//! Each record is one Thrift `CollectorPayload` (what the collector writes to Kinesis, Kafka or
//! Pub/Sub), either as raw bytes (a length-prefixed file, a message) or as base64 text (one per
//! line); the form is recognised per record: base64 uses only its alphabet, binary Thrift never
//! does. A payload becomes as many enriched events as it holds, through the same conversion as
//! the `collector` source; a payload that cannot be read or converted goes to the failure sink as a
//! `collector_payload_format_violation` bad row carrying it in base64.
//!
//! **Limits.** A payload's query-string parameters are merged into every event of its body, so a
//! small payload can expand a thousandfold. A query string longer than `max_query_bytes` is not
//! merged (the payload fails), and one payload may expand to at most `max_output_bytes` of
//! enriched events: conversion stops as soon as it would go over, and the payload goes to the
//! failure sink with the reason (it is never dropped silently).

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use super::{Transform, TransformConfig, TransformType};
use crate::config::{ByteSize, ConfigError, Origin};
use crate::record::{Batch, Failed, FailureKind, Meta, Record};
use crate::snowplow::{collector_payload, tracker};

/// ```toml
/// [[transforms]]
/// type = "spCollectorPayloadToEnriched"
/// anon_ip_octets = 1          # optional: 0-4 trailing IPv4 octets replaced by x
/// anon_ipv6_segments = 0      # optional: 0-8 trailing IPv6 segments replaced by x
/// max_events = 10000          # optional: most events one payload may hold
/// max_query_bytes = "8 KiB"   # optional: longest query string merged into POSTed events
/// max_output_bytes = "16 MiB" # optional: most bytes of enriched events one payload yields
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub anon_ip_octets: u8,
    #[serde(default)]
    pub anon_ipv6_segments: u8,
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    #[serde(default = "default_max_query")]
    pub max_query_bytes: ByteSize,
    #[serde(default = "default_max_output")]
    pub max_output_bytes: ByteSize,
}

fn default_max_events() -> usize {
    10_000
}
pub(crate) fn default_max_query() -> ByteSize {
    ByteSize(tracker::DEFAULT_MAX_QUERY_BYTES as u64)
}
/// 16 MiB: a payload from a collector that takes bodies of up to 1 MB (10,000 tiny events, or
/// 1,000 events with their entities) yields a few MiB.
fn default_max_output() -> ByteSize {
    ByteSize(16 << 20)
}

impl TransformType for Config {
    const TYPE: &'static str = "spCollectorPayloadToEnriched";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        let options = enrich_options(
            origin,
            self.anon_ip_octets,
            self.anon_ipv6_segments,
            self.max_events,
            self.max_query_bytes,
        )?;
        if self.max_output_bytes.0 == 0 || self.max_output_bytes.0 > u32::MAX as u64 {
            return Err(origin.error(
                "max_output_bytes",
                format!(
                    "expected 1 byte to 4 GiB, found {} bytes",
                    self.max_output_bytes.0
                ),
            ));
        }
        Ok(Box::new(ToEnriched {
            label: label.to_string(),
            options,
            max_output: self.max_output_bytes.0 as usize,
            ends: Vec::new(),
            scratch: Vec::new(),
        }))
    }
}

/// Checks the conversion settings shared by this transform and the `collector` source.
pub(crate) fn enrich_options(
    origin: &Origin,
    anon_ip_octets: u8,
    anon_ipv6_segments: u8,
    max_events: usize,
    max_query_bytes: ByteSize,
) -> Result<tracker::Options, ConfigError> {
    if anon_ip_octets > 4 {
        return Err(origin.error(
            "anon_ip_octets",
            format!("expected 0 to 4 octets, found {anon_ip_octets}"),
        ));
    }
    if anon_ipv6_segments > 8 {
        return Err(origin.error(
            "anon_ipv6_segments",
            format!("expected 0 to 8 segments, found {anon_ipv6_segments}"),
        ));
    }
    if max_events == 0 {
        return Err(origin.error("max_events", "expected at least 1, found 0"));
    }
    Ok(tracker::Options {
        anon_ipv4_octets: anon_ip_octets,
        anon_ipv6_segments,
        max_events,
        max_query_bytes: usize::try_from(max_query_bytes.0).unwrap_or(usize::MAX),
    })
}

use crate::snowplow::now_ms;

struct ToEnriched {
    label: String,
    options: tracker::Options,
    /// Most bytes of enriched events one payload may yield.
    max_output: usize,
    ends: Vec<usize>,
    scratch: Vec<Record>,
}

/// True if `b` can only be base64 text (binary Thrift always holds bytes outside the alphabet).
fn looks_like_base64(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Decodes standard or URL-safe base64, padded or not.
pub(crate) fn decode_base64(text: &[u8]) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const STD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    const URL: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    if text.iter().any(|&c| c == b'-' || c == b'_') {
        URL.decode(text)
    } else {
        STD.decode(text)
    }
}

impl ToEnriched {
    /// Converts one record, appending its events to `out`; on failure returns why, with the
    /// payload field at fault.
    fn convert(
        &mut self,
        value: &[u8],
        etl_ms: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), (&'static str, String)> {
        let decoded;
        let bytes = if looks_like_base64(value) {
            decoded = decode_base64(value)
                .map_err(|e| ("", format!("the record is not valid base64: {e}")))?;
            &decoded[..]
        } else {
            value
        };
        let payload = collector_payload::decode(bytes)
            .map_err(|e| (e.field, format!("not a Thrift CollectorPayload: {e}")))?;
        let max = self.max_output;
        tracker::convert_within(
            &payload,
            &self.options,
            etl_ms,
            out,
            &mut self.ends,
            &mut |bytes| {
                if bytes > max {
                    Err(format!(
                        "the payload expands to more than {max} bytes of enriched events \
                         (max_output_bytes)"
                    ))
                } else {
                    Ok(())
                }
            },
        )
        .map_err(|e| (e.field, e.to_string()))
    }
}

impl Transform for ToEnriched {
    fn process(&mut self, batch: &mut Batch) {
        let etl_ms = now_ms();
        let input: usize = batch.records.iter().map(|r| r.value.len()).sum();
        let mut out = Vec::with_capacity(input * 2);
        std::mem::swap(&mut batch.records, &mut self.scratch);
        self.ends.clear();
        // (key, source metadata, index of the first end offset) of each converted record: the
        // events of one payload keep the key and the Kafka/Kinesis position it was read from.
        let mut groups: Vec<(Option<Bytes>, Option<Box<Meta>>, usize)> =
            Vec::with_capacity(self.scratch.len());
        let records = std::mem::take(&mut self.scratch);
        for r in &records {
            let first = self.ends.len();
            match self.convert(&r.value, etl_ms, &mut out) {
                Ok(()) => groups.push((r.key.clone(), r.meta.clone(), first)),
                Err((field, reason)) => {
                    let payload = if looks_like_base64(&r.value) {
                        r.value.clone()
                    } else {
                        Bytes::from(base64::engine::general_purpose::STANDARD.encode(&r.value))
                    };
                    batch.failed.push(Failed {
                        record: Record {
                            value: payload,
                            key: r.key.clone(),
                            meta: r.meta.clone(),
                        },
                        kind: FailureKind::CollectorPayloadFormat { field },
                        component: self.label.clone(),
                        reason,
                    });
                }
            }
        }
        self.scratch = records;
        self.scratch.clear();
        let buf = Bytes::from(out);
        let mut start = 0;
        for (gi, (key, meta, first)) in groups.iter().enumerate() {
            let last = groups.get(gi + 1).map_or(self.ends.len(), |g| g.2);
            for &end in &self.ends[*first..last] {
                batch.records.push(Record {
                    value: buf.slice(start..end),
                    key: key.clone(),
                    meta: meta.clone(),
                });
                start = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;
    use crate::snowplow::collector_payload::{CollectorPayload, SCHEMA};
    use crate::snowplow::{field, field_index, validate};

    fn payload(body: &str) -> Vec<u8> {
        CollectorPayload {
            schema: SCHEMA.into(),
            ip_address: "192.0.2.9".into(),
            timestamp: 1_795_677_553_600,
            encoding: "UTF-8".into(),
            collector: "ssc-3.2.0-kinesis".into(),
            path: Some("/com.snowplowanalytics.snowplow/tp2".into()),
            body: Some(body.to_string().into()),
            content_type: Some("application/json".into()),
            network_user_id: Some("d8aae409-b64d-40c0-99d7-5324fcb27735".into()),
            ..Default::default()
        }
        .to_bytes()
    }

    fn body(n: usize) -> String {
        let events: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"e":"pv","aid":"a{i}","url":"http://x.test/{i}"}}"#))
            .collect();
        format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{}]}}"#,
            events.join(",")
        )
    }

    fn run(records: Vec<Record>, octets: u8) -> Batch {
        run_with(records, octets, 16 << 20)
    }

    fn run_with(records: Vec<Record>, octets: u8, max_output: u64) -> Batch {
        let cfg = Config {
            anon_ip_octets: octets,
            anon_ipv6_segments: 0,
            max_events: 100,
            max_query_bytes: default_max_query(),
            max_output_bytes: ByteSize(max_output),
        };
        let mut t = cfg.build("t", &Origin::new("f", "transforms[0]")).unwrap();
        let mut batch = Batch::new(records, Ack::none());
        t.process(&mut batch);
        batch
    }

    #[test]
    fn events_keep_the_source_position_of_their_payload() {
        let meta = |offset| {
            Some(Box::new(Meta {
                topic: Some("raw".into()),
                partition: 3,
                offset,
                timestamp: Some(1_795_677_553_600),
                headers: vec![("h".into(), Bytes::from_static(b"v"))],
                original: None,
            }))
        };
        let records = vec![
            Record {
                value: payload(&body(2)).into(),
                key: None,
                meta: meta(41),
            },
            Record {
                value: payload(&body(1)).into(),
                key: None,
                meta: meta(42),
            },
        ];
        let batch = run(records, 1);
        let offsets: Vec<i64> = batch
            .records
            .iter()
            .map(|r| r.meta.as_ref().expect("meta kept").offset)
            .collect();
        assert_eq!(offsets, [41, 41, 42]);
        let m = batch.records[2].meta.as_ref().unwrap();
        assert_eq!((m.topic.as_deref(), m.partition), (Some("raw"), 3));
        assert_eq!(m.headers, [("h".to_string(), Bytes::from_static(b"v"))]);
    }

    #[test]
    fn flat_maps_binary_and_base64_payloads_in_order() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload(&body(3)));
        let records = vec![
            Record::new(payload(&body(2))),
            Record {
                value: Bytes::from(b64),
                key: Some(Bytes::from_static(b"k")),
                meta: None,
            },
            Record::new("bm90IHRocmlmdA"), // base64 of "not thrift"
            Record::new(b"\x0b\x7a\x69garbage".to_vec()),
        ];
        let batch = run(records, 1);
        let apps: Vec<&[u8]> = batch
            .records
            .iter()
            .map(|r| field(&r.value, field_index("app_id").unwrap()))
            .collect();
        assert_eq!(apps, [&b"a0"[..], b"a1", b"a0", b"a1", b"a2"]);
        for r in &batch.records {
            validate(&r.value).unwrap();
            assert_eq!(
                field(&r.value, field_index("user_ipaddress").unwrap()),
                b"192.0.2.x"
            );
            assert_eq!(
                field(&r.value, field_index("v_collector").unwrap()),
                b"ssc-3.2.0-kinesis"
            );
        }
        assert_eq!(batch.records[0].key, None);
        assert_eq!(batch.records[4].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(batch.failed.len(), 2);
        for f in &batch.failed {
            assert!(matches!(f.kind, FailureKind::CollectorPayloadFormat { .. }));
            assert!(looks_like_base64(&f.record.value), "bad rows carry base64");
        }
    }

    #[test]
    fn a_payload_with_a_bad_event_fails_whole() {
        let bad = body(2).replace(r#""e":"pv","aid":"a1""#, r#""aid":"a1""#);
        let batch = run(vec![Record::new(payload(&bad))], 0);
        assert!(batch.records.is_empty());
        assert_eq!(batch.failed.len(), 1);
        assert_eq!(
            batch.failed[0].kind,
            FailureKind::CollectorPayloadFormat { field: "e" }
        );
        assert!(batch.failed[0].reason.contains("event 2 of 2"));
    }

    #[test]
    fn settings_are_checked() {
        let o = Origin::new("p.toml", "transforms[0]");
        let q = default_max_query();
        let e = enrich_options(&o, 5, 0, 1, q).unwrap_err();
        assert_eq!(e.key, "transforms[0].anon_ip_octets");
        assert!(e.message.contains("found 5"));
        assert!(enrich_options(&o, 0, 9, 1, q).is_err());
        assert!(enrich_options(&o, 0, 0, 0, q).is_err());
    }

    #[test]
    fn a_payload_that_expands_past_its_budget_fails_with_the_reason() {
        // 50 tiny events, each given a 2 KB `url` by the query string: about 250 KB of events
        // from a payload of 4 KB. With a 64 KiB budget it fails; the next payload still passes.
        let url = format!("url=http%3A%2F%2Fx.test%2F{}", "a".repeat(2000));
        let big = CollectorPayload {
            schema: SCHEMA.into(),
            ip_address: "192.0.2.9".into(),
            timestamp: 1_795_677_553_600,
            encoding: "UTF-8".into(),
            collector: "ssc-3.2.0-kinesis".into(),
            path: Some("/com.snowplowanalytics.snowplow/tp2".into()),
            querystring: Some(url.into()),
            body: Some(body(50).into()),
            ..Default::default()
        }
        .to_bytes();
        let records = vec![Record::new(big), Record::new(payload(&body(2)))];
        let batch = run_with(records, 0, 64 << 10);
        assert_eq!(batch.records.len(), 2, "the small payload passes");
        assert_eq!(batch.failed.len(), 1);
        let f = &batch.failed[0];
        assert_eq!(
            f.kind,
            FailureKind::CollectorPayloadFormat { field: "body" }
        );
        assert!(
            f.reason.contains("more than 65536 bytes") && f.reason.contains("max_output_bytes"),
            "{}",
            f.reason
        );
        // Within a large enough budget the same payload yields its 50 events.
        let big = batch.failed[0].record.value.clone();
        let batch = run_with(vec![Record::new(big)], 0, 1 << 20);
        assert_eq!((batch.records.len(), batch.failed.len()), (50, 0));
    }
}
