//! Sources: where records come from. One file per source, its config struct beside its code.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::{Ack, AckCounter};
use crate::config::{ConfigError, Origin};
use crate::observe::Stats;
use crate::record::{Batch, Failed, Record};
use crate::registry::Registration;
use crate::setup::{BuildContext, SetupError};

pub mod collector;
pub mod file;
pub mod frames;
pub mod held;
pub mod kafka;
pub mod kinesis;
pub mod lines;
pub mod pubsub;
pub mod sqs;
pub mod stdin;

/// Every source type weir knows, by its config `type`.
pub static REGISTRY: &[Registration<dyn SourceConfig>] = &[
    source::<stdin::StdinConfig>(),
    source::<file::FileConfig>(),
    source::<kinesis::KinesisConfig>(),
    source::<kafka::KafkaConfig>(),
    source::<collector::CollectorConfig>(),
    source::<sqs::SqsConfig>(),
    source::<pubsub::PubsubConfig>(),
];

/// A source's validated settings.
#[async_trait]
pub trait SourceConfig: Debug + Send + Sync {
    /// Checks that need more than the types; offline (`weir validate` calls it).
    fn check(&self, _origin: &Origin) -> Result<(), ConfigError> {
        Ok(())
    }
    /// Builds the source for `weir run`: creates its clients and checks, once, that it can
    /// reach its input with its credentials (see [`crate::setup`]). Reads nothing yet and
    /// starts nothing that serves others: that is [`Source::run`].
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>>;
    /// Whether this source checkpoints transform state with its positions (`[state] backend =
    /// "disk"` needs one).
    fn checkpoints_state(&self) -> bool {
        false
    }
    /// The `transactional.id` this source's exactly-once transactions take, if it can commit its
    /// positions in a Kafka transaction (the Kafka source, from its group).
    fn transactional_id(&self) -> Option<String> {
        None
    }
    /// How many independently partitioned inputs (Kafka topics) this source reads.
    fn input_streams(&self) -> usize {
        1
    }
}

/// Implemented by each source's config struct to register it.
pub trait SourceType: SourceConfig + DeserializeOwned + 'static {
    const TYPE: &'static str;
}

const fn source<C: SourceType>() -> Registration<dyn SourceConfig> {
    fn parse<C: SourceType>(
        v: config::Value,
        o: &Origin,
    ) -> Result<Box<dyn SourceConfig>, ConfigError> {
        let c: C = o.deserialize(v)?;
        c.check(o)?;
        Ok(Box::new(c))
    }
    Registration {
        name: C::TYPE,
        parse: parse::<C>,
    }
}

/// A running source. It reads until its input ends or `ctx.shutdown` fires, then flushes what it
/// has read and returns; it never abandons a record it has read.
#[async_trait]
pub trait Source: Send {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()>;
}

/// Builds a source; a failure is a [`SetupError`] naming it (`ctx.path`).
pub async fn build(
    config: &dyn SourceConfig,
    ctx: &BuildContext,
) -> Result<Box<dyn Source>, SetupError> {
    config
        .build(ctx)
        .await
        .map_err(|e| SetupError::of(&ctx.path, e))
}

/// What a running source gets from the pipeline.
pub struct SourceContext {
    pub emitter: Emitter,
    pub shutdown: CancellationToken,
    /// Longest record accepted; longer ones go to the failure sink as size violations.
    pub max_record_bytes: usize,
    /// Told the address a listening source (e.g. `collector`) is bound to.
    pub on_listen: Option<Arc<dyn Fn(std::net::SocketAddr) + Send + Sync>>,
}

/// Batch limits, from the `[batch]` config section.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
    pub flush_interval: std::time::Duration,
}

/// Builds batches for a source and sends them into the pipeline's bounded queue: when the queue is
/// full, [`Emitter::flush`] waits, which is how a slow sink slows the source down.
///
/// Every batch goes with the source's own acknowledgement of it ([`Emitter::flush_with`],
/// [`Emitter::send`]; see [`crate::ack`]); the emitter wraps it in the pipeline's, which counts
/// the batch's records once it is delivered.
pub struct Emitter {
    tx: mpsc::Sender<Batch>,
    limits: BatchLimits,
    records: Vec<Record>,
    failed: Vec<Failed>,
    bytes: usize,
    opened: Option<Instant>,
    counter: Arc<AckCounter>,
    stats: Arc<Stats>,
    /// `[metrics] e2e_latency`: read each record's `collector_tstamp`.
    e2e_latency: bool,
}

impl Emitter {
    pub fn new(
        tx: mpsc::Sender<Batch>,
        limits: BatchLimits,
        counter: Arc<AckCounter>,
        stats: Arc<Stats>,
    ) -> Self {
        Emitter {
            tx,
            limits,
            records: Vec::with_capacity(limits.max_records),
            failed: Vec::new(),
            bytes: 0,
            opened: None,
            counter,
            stats,
            e2e_latency: false,
        }
    }

    /// Measures each enriched event's collector → acknowledged latency (`[metrics]
    /// e2e_latency`).
    pub fn with_e2e_latency(mut self, on: bool) -> Self {
        self.e2e_latency = on;
        self
    }

    /// What the latencies of a batch of `records` read since `read` are measured from.
    fn timing(&self, read: Instant, records: &[Record]) -> crate::ack::Timing {
        let collector_ms = if self.e2e_latency {
            records
                .iter()
                .filter_map(|r| weir_snowplow::collector_tstamp_ms(&r.value))
                .collect()
        } else {
            Vec::new()
        };
        crate::ack::Timing {
            read,
            records: records.len(),
            collector_ms,
        }
    }

    /// Adds a record; returns true when the batch is full and should be flushed.
    #[inline]
    pub fn push(&mut self, record: Record) -> bool {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.bytes += record.size();
        self.records.push(record);
        self.is_full()
    }

    /// Adds a record that failed at the source (e.g. too long); it travels in the batch so that it
    /// is acknowledged with the others once the failure sink has it.
    pub fn push_failed(&mut self, failed: Failed) -> bool {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        self.bytes += failed.record.size();
        self.failed.push(failed);
        self.is_full()
    }

    pub fn is_full(&self) -> bool {
        self.records.len() + self.failed.len() >= self.limits.max_records
            || self.bytes >= self.limits.max_bytes
    }

    /// When the open batch must be flushed even if not full.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.opened
            .map(|t| tokio::time::Instant::from_std(t + self.limits.flush_interval))
    }

    /// The `[batch]` limits.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn buffered(&self) -> usize {
        self.records.len() + self.failed.len()
    }

    /// Sends a batch the source assembled itself (e.g. one partition's records), with the
    /// source's acknowledgement of it and, for a partitioned source, the batch's partition and
    /// end position; waits for room in the queue. Errors only if the pipeline is gone.
    pub async fn send(
        &mut self,
        records: Vec<Record>,
        failed: Vec<Failed>,
        position: Option<crate::record::SourcePosition>,
        ack: Ack,
    ) -> anyhow::Result<()> {
        let n = records.len() + failed.len();
        if n == 0 {
            ack.delivered();
            return Ok(());
        }
        let timing = self.timing(Instant::now(), &records);
        let mut batch = Batch::new(records, self.counter.track_timed(n, ack, timing));
        batch.failed = failed;
        batch.position = position;
        self.dispatch(batch, n).await
    }

    /// Sends the open batch, waiting for room in the queue, for a source that does not listen
    /// for its outcome (it cannot commit: stdin, files, the collector). Errors only if the
    /// pipeline is gone.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        self.flush_with(Ack::none()).await
    }

    /// Sends the open batch with the source's acknowledgement of it (see [`crate::ack`]),
    /// waiting for room in the queue. Errors only if the pipeline is gone. An empty batch is not
    /// sent: its `ack` is delivered at once (there is nothing to lose).
    pub async fn flush_with(&mut self, ack: Ack) -> anyhow::Result<()> {
        let n = self.buffered();
        if n == 0 {
            ack.delivered();
            return Ok(());
        }
        let records = std::mem::replace(
            &mut self.records,
            Vec::with_capacity(self.limits.max_records),
        );
        let timing = self.timing(self.opened.unwrap_or_else(Instant::now), &records);
        let mut batch = Batch::new(records, self.counter.track_timed(n, ack, timing));
        batch.failed = std::mem::take(&mut self.failed);
        self.bytes = 0;
        self.opened = None;
        self.dispatch(batch, n).await
    }

    async fn dispatch(&mut self, batch: Batch, n: usize) -> anyhow::Result<()> {
        self.stats.record_read(n as u64);
        self.tx
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("pipeline stopped while the source was sending"))
    }
}
