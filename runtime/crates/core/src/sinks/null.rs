//! `null`: accepts and acknowledges everything, writes nothing (counted in the metrics like any
//! sink). For benchmarks, and for the `filtered` sink when filtered records should just be dropped.

use async_trait::async_trait;
use serde::Deserialize;

use super::{Sink, SinkConfig, SinkError, SinkType};
use crate::record::Record;

/// ```toml
/// [sink]
/// type = "null"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullConfig {}

impl SinkType for NullConfig {
    const TYPE: &'static str = "null";
}

impl SinkConfig for NullConfig {
    fn build(&self) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(Null))
    }
}

struct Null;

#[async_trait]
impl Sink for Null {
    async fn write(&mut self, _records: &[Record]) -> Result<(), SinkError> {
        Ok(())
    }
}
