//! Sinks: where records go. One file per sink, its config struct beside its code.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::registry::Registration;

pub mod dynamodb;
pub mod fanout;
pub mod file;
pub mod kafka;
pub mod kinesis;
pub mod null;
pub mod profiles;
pub mod stdout;

/// Every sink type weir knows, by its config `type`.
pub static REGISTRY: &[Registration<dyn SinkConfig>] = &[
    sink::<stdout::StdoutConfig>(),
    sink::<stdout::StderrConfig>(),
    sink::<file::FileConfig>(),
    sink::<null::NullConfig>(),
    sink::<dynamodb::DynamoDbConfig>(),
    sink::<kinesis::KinesisConfig>(),
    sink::<profiles::ProfilesConfig>(),
    sink::<kafka::KafkaConfig>(),
    Registration {
        name: fanout::TYPE,
        parse: fanout::parse,
    },
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
    /// Every record of the batch was durably accepted except these (index into the batch, reason),
    /// which never will be (too large for the target, refused by it for good). The pipeline sends
    /// them to the failure sink as bad rows and acknowledges the batch once those are written.
    /// Returned by the failure sink itself, it stops the pipeline like `Fatal`.
    #[error("{} record(s) rejected, first: {}", .0.len(), .0.first().map_or("", |r| r.1.as_str()))]
    Rejected(Vec<(usize, String)>),
}

/// A running sink.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Returning `Ok` means the records are durably accepted: the pipeline then
    /// acknowledges them to the source. On error nothing of the batch counts as written (a sink
    /// must make a retried batch safe to write again; it may remember what it already wrote of the
    /// very same slice and skip it), except [`SinkError::Rejected`], which accepts all but some.
    async fn write(&mut self, records: &[Record]) -> Result<(), SinkError>;

    /// Called once at shutdown, after the last write.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Writes records as newline-terminated lines with vectored writes straight from the records'
/// buffers (no copy into a staging buffer), 512 records per `writev`.
pub fn write_lines(w: &mut impl std::io::Write, records: &[Record]) -> std::io::Result<()> {
    use std::io::IoSlice;
    const PER_CALL: usize = 512; // two slices each: IOV_MAX is 1024
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(2 * PER_CALL.min(records.len()));
    for chunk in records.chunks(PER_CALL) {
        slices.clear();
        for r in chunk {
            slices.push(IoSlice::new(&r.value));
            slices.push(IoSlice::new(b"\n"));
        }
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match w.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most 7 bytes per call, to exercise partial vectored writes.
    struct Trickle(Vec<u8>);
    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_lines_survives_partial_writes() {
        let records: Vec<Record> = (0..1500)
            .map(|i| Record::new(format!("record {i}")))
            .collect();
        let mut w = Trickle(Vec::new());
        write_lines(&mut w, &records).unwrap();
        let expected: String = (0..1500).map(|i| format!("record {i}\n")).collect();
        assert_eq!(String::from_utf8(w.0).unwrap(), expected);
    }
}
