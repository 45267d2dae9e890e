//! `base64Encode`: replaces each record's value by its standard base64 encoding (RFC 4648, with
//! padding), as Snowbridge's transform of that name does.

use base64::Engine as _;
use serde::Deserialize;

use super::{Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::Batch;

/// ```toml
/// [[transforms]]
/// type = "base64Encode"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {}

impl TransformType for Config {
    const TYPE: &'static str = "base64Encode";
}

impl TransformConfig for Config {
    fn build(&self, _label: &str, _origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        Ok(Box::new(Encode))
    }
}

struct Encode;

impl Transform for Encode {
    fn process(&mut self, batch: &mut Batch) {
        let engine = &base64::engine::general_purpose::STANDARD;
        for r in &mut batch.records {
            // One allocation a record: the new value, handed over without a copy.
            r.value = engine.encode(&r.value).into_bytes().into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;
    use crate::record::Record;

    /// Snowbridge's pkg/transform/base64/base64_test.go, TestBase64EncodeSuccess.
    #[test]
    fn encodes_like_snowbridge() {
        let origin = Origin::new("t.toml", "transforms[0]");
        let mut t = Config {}.build("t", &origin).unwrap();
        let mut batch = Batch::new(
            vec![Record::new("Hello World!"), Record::new("")],
            Ack::none(),
        );
        t.process(&mut batch);
        assert_eq!(batch.records[0].value, &b"SGVsbG8gV29ybGQh"[..]);
        assert_eq!(batch.records[1].value, &b""[..]);
        assert!(batch.failed.is_empty());
    }
}
