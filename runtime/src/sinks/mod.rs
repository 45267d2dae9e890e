//! Sinks: where records go. One file per sink, its config struct beside its code.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::registry::Registration;

pub mod file;
pub mod null;
pub mod stdout;

/// Every sink type weir knows, by its config `type`.
pub static REGISTRY: &[Registration<dyn SinkConfig>] = &[
    sink::<stdout::StdoutConfig>(),
    sink::<stdout::StderrConfig>(),
    sink::<file::FileConfig>(),
    sink::<null::NullConfig>(),
];

/// A sink's validated settings.
pub trait SinkConfig: Debug + Send + Sync {
    fn check(&self, _origin: &Origin) -> Result<(), ConfigError> {
        Ok(())
    }
    fn build(&self) -> anyhow::Result<Box<dyn Sink>>;
}

/// Implemented by each sink's config struct to register it.
pub trait SinkType: SinkConfig + DeserializeOwned + 'static {
    const TYPE: &'static str;
}

const fn sink<C: SinkType>() -> Registration<dyn SinkConfig> {
    fn parse<C: SinkType>(
        v: config::Value,
        o: &Origin,
    ) -> Result<Box<dyn SinkConfig>, ConfigError> {
        let c: C = o.deserialize(v)?;
        c.check(o)?;
        Ok(Box::new(c))
    }
    Registration {
        name: C::TYPE,
        parse: parse::<C>,
    }
}

/// Why a write failed, which decides what the pipeline does next.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again (network, throttling, a full disk that may clear): retried with backoff,
    /// holding back the source meanwhile.
    #[error("{0:#}")]
    Retriable(anyhow::Error),
    /// Will not succeed however often it is tried: the pipeline stops without acknowledging.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
}

/// A running sink.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Returning `Ok` means the records are durably accepted: the pipeline then
    /// acknowledges them to the source. On error nothing of the batch counts as written (a sink
    /// must make a retried batch safe to write again).
    async fn write(&mut self, records: &[Record]) -> Result<(), SinkError>;

    /// Called once at shutdown, after the last write.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Copies records into `buf` as newline-terminated lines (the framing of line-oriented sinks).
pub fn frame_lines(records: &[Record], buf: &mut Vec<u8>) {
    buf.clear();
    let total: usize = records.iter().map(|r| r.value.len() + 1).sum();
    buf.reserve(total);
    for r in records {
        buf.extend_from_slice(&r.value);
        buf.push(b'\n');
    }
}
