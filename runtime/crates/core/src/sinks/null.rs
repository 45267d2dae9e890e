//! `null`: accepts and acknowledges everything, writes nothing (counted in the metrics like any
//! sink). For benchmarks, and for the `filtered` sink when filtered records should just be dropped.

use async_trait::async_trait;
use serde::Deserialize;

use super::{Progress, Sink, SinkConfig, SinkError, SinkType};
use crate::record::Record;
use crate::setup::BuildContext;

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

#[async_trait]
impl SinkConfig for NullConfig {
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(Null))
    }
}

struct Null;

#[async_trait]
impl Sink for Null {
    async fn write(
        &mut self,
        _records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        Ok(())
    }
}
