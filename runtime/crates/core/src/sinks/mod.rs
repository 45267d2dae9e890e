//! Sinks: where records go. One file per sink, its config struct beside its code.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::registry::Registration;
use crate::setup::{BuildContext, SetupError};

pub mod dynamodb;
pub mod fanout;
pub mod file;
pub mod http;
pub mod kafka;
pub mod kinesis;
pub mod lanes;
pub mod null;
pub mod postgres;
pub mod profiles;
pub mod pubsub;
pub mod sqs;
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
    sink::<postgres::PostgresConfig>(),
    sink::<kafka::KafkaConfig>(),
    sink::<sqs::SqsConfig>(),
    sink::<pubsub::PubsubConfig>(),
    sink::<http::HttpConfig>(),
    Registration {
        name: fanout::TYPE,
        parse: fanout::parse,
    },
];

/// A sink's validated settings.
#[async_trait]
pub trait SinkConfig: Debug + Send + Sync {
    /// Checks that need more than the types; offline (`weir validate` calls it).
    fn check(&self, _origin: &Origin) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Builds the sink for `weir run`: creates its clients and checks, once, that it can reach
    /// its service with its credentials, so that a sink that cannot work fails the start (see
    /// [`crate::setup`]). Starts nothing that serves others: that is [`Sink::start`].
    /// Whether this sink writes inside the pipeline's Kafka transactions (`delivery =
    /// "exactly-once"`), which the source must commit.
    fn exactly_once(&self) -> bool {
        false
    }
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>>;
}

/// Builds a sink; a failure is a [`SetupError`] naming it by its key path (`ctx.path`).
pub async fn build(
    config: &dyn SinkConfig,
    ctx: &BuildContext,
) -> Result<Box<dyn Sink>, SetupError> {
    config
        .build(ctx)
        .await
        .map_err(|e| SetupError::of(&ctx.path, e))
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
    /// Worth trying again (network, a timeout, a full disk that may clear): retried with
    /// backoff under `[retry.transient]`, holding back the source meanwhile.
    #[error("{0:#}")]
    Retriable(anyhow::Error),
    /// The service asks weir to slow down (throttling, a full producer queue): retried under
    /// `[retry.throttle]`.
    #[error("{0:#}")]
    Throttled(anyhow::Error),
    /// The target is misconfigured or refuses weir (credentials, permissions, a missing table,
    /// stream or topic): retried under `[retry.setup]` (by default a few times, then weir stops).
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// Will not succeed however often it is tried: the pipeline stops without acknowledging.
    #[error("{0:#}")]
    Fatal(anyhow::Error),
    /// Every record of the batch was durably accepted except these (index into the batch, reason),
    /// which never will be (too large for the target, refused by it for good). The pipeline sends
    /// them to the failure sink as bad rows and acknowledges the batch once those are written.
    /// Returned by the failure sink itself, it stops the pipeline like `Fatal`.
    #[error("{} record(s) rejected, first: {}", .0.len(), .0.first().map_or("", |r| r.1.reason.as_str()))]
    Rejected(Vec<(usize, Refusal)>),
}

/// Why a sink refuses a record for good (see [`SinkError::Rejected`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// The bad row it becomes: `Invalid` (`generic_error`); `Oversized` with the record's size
    /// and the target's limit (`size_violation`, as Snowbridge writes them); `Api` or
    /// `Template` (an `event_forwarding` bad row's error type and code).
    pub kind: crate::record::FailureKind,
}

impl Refusal {
    /// A record of `actual` bytes over the target's `limit`.
    pub fn oversized(reason: impl Into<String>, actual: usize, limit: usize) -> Refusal {
        Refusal {
            reason: reason.into(),
            kind: crate::record::FailureKind::Oversized { actual, limit },
        }
    }

    /// A record an endpoint refused with HTTP `status`.
    pub fn api(reason: impl Into<String>, status: u16) -> Refusal {
        Refusal {
            kind: crate::record::FailureKind::Api { status },
            ..Refusal::from(reason.into())
        }
    }

    /// A record a template could not be rendered over.
    pub fn template(reason: impl Into<String>) -> Refusal {
        Refusal {
            kind: crate::record::FailureKind::Template,
            ..Refusal::from(reason.into())
        }
    }

    /// The record's size and the target's limit, when it is refused for its size.
    pub fn oversized_by(&self) -> Option<(usize, usize)> {
        match self.kind {
            crate::record::FailureKind::Oversized { actual, limit } => Some((actual, limit)),
            _ => None,
        }
    }
}

impl From<String> for Refusal {
    fn from(reason: String) -> Refusal {
        Refusal {
            reason,
            kind: crate::record::FailureKind::Invalid,
        }
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Refusal {
        Refusal::from(reason.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl SinkError {
    /// The retry policy class of an error worth retrying; `None` for `Fatal` and `Rejected`.
    pub fn class(&self) -> Option<crate::retry::FailureClass> {
        use crate::retry::FailureClass;
        match self {
            SinkError::Retriable(_) => Some(FailureClass::Transient),
            SinkError::Throttled(_) => Some(FailureClass::Throttle),
            SinkError::Setup(_) => Some(FailureClass::Setup),
            SinkError::Fatal(_) | SinkError::Rejected(_) => None,
        }
    }

    /// An error of `class` (what a composite sink returns for its children's).
    pub fn of_class(class: crate::retry::FailureClass, e: anyhow::Error) -> SinkError {
        use crate::retry::FailureClass;
        match class {
            FailureClass::Transient => SinkError::Retriable(e),
            FailureClass::Throttle => SinkError::Throttled(e),
            FailureClass::Setup => SinkError::Setup(e),
        }
    }
}

/// A running sink.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. Returning `Ok` means the records are durably accepted: the pipeline then
    /// acknowledges them to the source. On error nothing of the batch counts as written, and the
    /// pipeline calls `write` again with the same records and the same `progress` (a fresh one for
    /// every new batch): a sink must make a retried batch safe to write again, and may note in
    /// `progress` what it already took of it to skip that on the retry. Except
    /// [`SinkError::Rejected`], which accepts all but some.
    async fn write(&mut self, records: &[Record], progress: &mut Progress)
        -> Result<(), SinkError>;

    /// Starts what the sink serves to others (a dashboard), once every component of the
    /// pipeline is built and before the source reads. Called once.
    async fn start(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called once at shutdown, after the last write.
    async fn close(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// What a sink has done so far of the batch it is writing. The pipeline keeps one per batch and
/// sink across the retries of that batch (and starts a fresh one for the next batch), so a sink
/// that took part of a batch before failing skips that part when the batch comes again, without
/// remembering batches itself. Sinks that write a batch all or nothing ignore it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Per record (by index in the batch): taken, or refused for good. Grows on demand.
    settled: Vec<bool>,
    /// Records refused for good, with the reason.
    rejected: Vec<(usize, Refusal)>,
    /// The progress of each part of a composite sink (a fan-out's children), by index.
    parts: Vec<Progress>,
    /// This part of a composite sink has finished the batch (its rejections in `rejected`).
    done: bool,
}

impl Progress {
    /// Whether record `i` was taken or refused by an earlier try.
    pub fn is_settled(&self, i: usize) -> bool {
        self.settled.get(i).copied().unwrap_or(false)
    }

    /// Record `i` is durably taken.
    pub fn take(&mut self, i: usize) {
        if self.settled.len() <= i {
            self.settled.resize(i + 1, false);
        }
        self.settled[i] = true;
    }

    /// Record `i` is refused for good, for `reason`.
    pub fn reject(&mut self, i: usize, reason: impl Into<Refusal>) {
        self.take(i);
        self.rejected.push((i, reason.into()));
    }

    /// How many of the first `len` records are neither taken nor refused.
    pub fn unsettled(&self, len: usize) -> usize {
        len - self.settled.iter().take(len).filter(|s| **s).count()
    }

    /// The records refused so far, with their reasons (taken out: what the sink reports as
    /// [`SinkError::Rejected`] once the rest of the batch is written).
    pub fn take_rejected(&mut self) -> Vec<(usize, Refusal)> {
        std::mem::take(&mut self.rejected)
    }

    /// What a sink's `write` returns once every record of the batch is taken or refused: `Ok`,
    /// or [`SinkError::Rejected`] with the refused ones (taken out).
    pub fn written(&mut self) -> Result<(), SinkError> {
        let rejected = self.take_rejected();
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(rejected))
        }
    }

    /// The progress of each of `n` parts (a composite sink's children).
    pub fn parts(&mut self, n: usize) -> &mut [Progress] {
        if self.parts.len() < n {
            self.parts.resize_with(n, Progress::default);
        }
        &mut self.parts[..n]
    }

    /// Whether this part finished the batch ([`Progress::finish`]).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// This part finished the batch, refusing `rejected`.
    pub fn finish(&mut self, rejected: Vec<(usize, Refusal)>) {
        self.done = true;
        self.rejected = rejected;
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
    fn progress_keeps_what_a_sink_took_of_a_batch() {
        let mut p = Progress::default();
        assert!(!p.is_settled(3));
        assert_eq!(p.unsettled(5), 5);
        p.take(3);
        p.reject(0, "too large");
        assert!(p.is_settled(0) && p.is_settled(3) && !p.is_settled(1));
        assert_eq!(p.unsettled(5), 3);
        assert_eq!(p.take_rejected(), vec![(0, Refusal::from("too large"))]);
        assert!(p.take_rejected().is_empty(), "taken out once");
        let parts = p.parts(2);
        parts[1].finish(vec![(2, "no key".into())]);
        assert!(!p.parts(2)[0].is_done() && p.parts(2)[1].is_done());
        assert_eq!(p.parts(2)[1].take_rejected().len(), 1);
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
