//! `base64Decode`: replaces each record's value by its standard base64 decoding, as Snowbridge's
//! transform of that name does (Go's `base64.StdEncoding`: padding required, line breaks
//! ignored). A value that is not base64 goes to the failure sink with the reason.

use base64::Engine as _;
use serde::Deserialize;

use super::{partition, Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Record};

/// ```toml
/// [[transforms]]
/// type = "base64Decode"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl TransformType for Config {
    const TYPE: &'static str = "base64Decode";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, _origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(Decode {
            label: label.to_string(),
            scratch: Vec::new(),
            unwrapped: Vec::new(),
        }))
    }
}

struct Decode {
    label: String,
    scratch: Vec<Record>,
    /// The value without `\r` and `\n`, for the rare value that has them.
    unwrapped: Vec<u8>,
}

impl Transform for Decode {
    fn process(&mut self, batch: &mut Batch) {
        let engine = &base64::engine::general_purpose::STANDARD;
        let unwrapped = &mut self.unwrapped;
        // Decode in the check, then move the decoded bytes in: one pass, one allocation a record.
        let mut decoded: Vec<bytes::Bytes> = Vec::with_capacity(batch.records.len());
        partition(batch, &mut self.scratch, &self.label, |r| {
            let input: &[u8] = if memchr::memchr2(b'\r', b'\n', &r.value).is_some() {
                unwrapped.clear();
                unwrapped.extend(r.value.iter().filter(|&&b| b != b'\r' && b != b'\n'));
                unwrapped
            } else {
                &r.value
            };
            let bytes = engine
                .decode(input)
                .map_err(|e| format!("failed to decode data as base64: {e}"))?;
            decoded.push(bytes.into());
            Ok(true)
        });
        for (r, d) in batch.records.iter_mut().zip(decoded) {
            r.value = d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    fn run(values: &[&[u8]]) -> Batch {
        let origin = Origin::new("t.toml", "transforms[0]");
        let mut t = Config {}.build("t", &origin).unwrap();
        let records = values.iter().map(|v| Record::new(v.to_vec())).collect();
        let mut batch = Batch::new(records, Ack::none());
        t.process(&mut batch);
        batch
    }

    /// Snowbridge's base64_test.go: TestBase64DecodeSuccess and TestBase64DecodeFailure, in
    /// one batch (the good record keeps its place, the bad one fails with the reason).
    #[test]
    fn decodes_like_snowbridge_and_fails_what_is_not_base64() {
        let b = run(&[b"notB64", b"SGVsbG8gV29ybGQh"]);
        assert_eq!(b.records.len(), 1);
        assert_eq!(b.records[0].value, &b"Hello World!"[..]);
        assert_eq!(b.failed.len(), 1);
        assert_eq!(
            b.failed[0].record.value,
            &b"notB64"[..],
            "the original value"
        );
        assert!(
            b.failed[0]
                .reason
                .starts_with("failed to decode data as base64"),
            "{}",
            b.failed[0].reason
        );
    }

    /// Snowbridge's TestBase64DecodeTrailingNulls: decoding then encoding gives the input back
    /// (no trailing NULs), here on every length modulo 3; and Go ignores line breaks.
    #[test]
    fn round_trips_without_trailing_nuls_and_ignores_line_breaks() {
        let engine = &base64::engine::general_purpose::STANDARD;
        for n in 0..64usize {
            let raw: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            let enc = engine.encode(&raw);
            let b = run(&[enc.as_bytes()]);
            assert_eq!(b.records[0].value, &raw[..], "length {n}");
        }
        let b = run(&[b"SGVsbG8g\r\nV29ybGQh\n"]);
        assert_eq!(b.records[0].value, &b"Hello World!"[..]);
    }
}
