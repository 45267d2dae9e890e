//! Sources: where records come from. One file per source, its config struct beside its code.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ack::{Ack, AckHandler, OrderedAcks};
use crate::config::{ConfigError, Origin};
use crate::observe::Stats;
use crate::record::{Batch, Failed, Record};
use crate::registry::Registration;

pub mod collector;
pub mod file;
pub mod frames;
pub mod kafka;
pub mod kinesis;
pub mod lines;
pub mod stdin;

/// Every source type weir knows, by its config `type`.
pub static REGISTRY: &[Registration<dyn SourceConfig>] = &[
    source::<stdin::StdinConfig>(),
    source::<file::FileConfig>(),
    source::<kinesis::KinesisConfig>(),
    source::<kafka::KafkaConfig>(),
    source::<collector::CollectorConfig>(),
];

/// A source's validated settings.
pub trait SourceConfig: Debug + Send + Sync {
    /// Checks that need more than the types (e.g. a glob that matches nothing).
    fn check(&self, _origin: &Origin) -> Result<(), ConfigError> {
        Ok(())
    }
    fn build(&self) -> anyhow::Result<Box<dyn Source>>;
    /// Whether this source checkpoints transform state with its positions (`[state] backend =
    /// "disk"` needs one).
    fn checkpoints_state(&self) -> bool {
        false
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

/// What a source gets from the pipeline.
pub struct SourceContext {
    pub emitter: Emitter,
    pub shutdown: CancellationToken,
    /// Longest record accepted; longer ones go to the failure sink as size violations.
    pub max_record_bytes: usize,
    /// Told the address a listening source (e.g. `collector`) is bound to.
    pub on_listen: Option<Arc<dyn Fn(std::net::SocketAddr) + Send + Sync>>,
    /// The pipeline's durable transform state, to checkpoint before committing positions.
    pub state: Option<Arc<dyn crate::wasm::Checkpointed>>,
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
pub struct Emitter {
    tx: mpsc::Sender<Batch>,
    limits: BatchLimits,
    records: Vec<Record>,
    failed: Vec<Failed>,
    bytes: usize,
    opened: Option<Instant>,
    acks: Arc<dyn EmitAcks>,
    stats: Arc<Stats>,
}

/// How an emitter obtains the [`Ack`] for a batch it is about to send. Sources that commit
/// positions supply their own; line sources use [`CountingAcks`].
pub trait EmitAcks: Send + Sync {
    fn ack_for(&self, records: usize) -> Ack;
}

impl Emitter {
    pub fn new(
        tx: mpsc::Sender<Batch>,
        limits: BatchLimits,
        acks: Arc<dyn EmitAcks>,
        stats: Arc<Stats>,
    ) -> Self {
        Emitter {
            tx,
            limits,
            records: Vec::with_capacity(limits.max_records),
            failed: Vec::new(),
            bytes: 0,
            opened: None,
            acks,
            stats,
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

    /// Puts `acks` in charge of the acknowledgements of the batches sent from now on, and returns
    /// the ones it replaces. A source that commits positions (Kinesis) wraps the pipeline's own
    /// acks in its own, so that both hear every outcome.
    pub fn replace_acks(&mut self, acks: Arc<dyn EmitAcks>) -> Arc<dyn EmitAcks> {
        std::mem::replace(&mut self.acks, acks)
    }

    /// The `[batch]` limits.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    pub fn buffered(&self) -> usize {
        self.records.len() + self.failed.len()
    }

    /// Sends a batch the source assembled itself (e.g. one partition's records), waiting for
    /// room in the queue. Errors only if the pipeline is gone.
    pub async fn send(
        &mut self,
        records: Vec<Record>,
        failed: Vec<Failed>,
        position: Option<crate::record::SourcePosition>,
    ) -> anyhow::Result<()> {
        let n = records.len() + failed.len();
        if n == 0 {
            return Ok(());
        }
        let mut batch = Batch::new(records, self.acks.ack_for(n));
        batch.failed = failed;
        batch.position = position;
        self.stats.record_read(n as u64);
        self.tx
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("pipeline stopped while the source was sending"))
    }

    /// Sends the open batch, waiting for room in the queue. Errors only if the pipeline is gone.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        let n = self.buffered();
        if n == 0 {
            return Ok(());
        }
        let records = std::mem::replace(
            &mut self.records,
            Vec::with_capacity(self.limits.max_records),
        );
        let mut batch = Batch::new(records, self.acks.ack_for(n));
        batch.failed = std::mem::take(&mut self.failed);
        self.bytes = 0;
        self.opened = None;
        self.stats.record_read(n as u64);
        self.tx
            .send(batch)
            .await
            .map_err(|_| anyhow::anyhow!("pipeline stopped while the source was sending"))
    }
}

/// Acknowledgements for sources that cannot commit (stdin, files): counts records as they are
/// acknowledged, in order, so the pipeline can report exactly how many were delivered.
#[derive(Default)]
pub struct CountingAcks {
    inner: Mutex<CountingInner>,
    stats: Option<Arc<Stats>>,
}

#[derive(Default)]
struct CountingInner {
    order: OrderedAcks<u64>,
    emitted: u64,
    acknowledged: u64,
}

impl CountingAcks {
    pub fn new(stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(CountingAcks {
            inner: Mutex::default(),
            stats: Some(stats),
        })
    }

    /// Records acknowledged in order from the start.
    pub fn acknowledged(&self) -> u64 {
        self.inner.lock().expect("ack lock").acknowledged
    }
}

impl EmitAcks for Arc<CountingAcks> {
    fn ack_for(&self, records: usize) -> Ack {
        let mut inner = self.inner.lock().expect("ack lock");
        inner.emitted += records as u64;
        let pos = inner.emitted;
        let token = inner.order.push(pos);
        Ack::new(token, self.clone() as Arc<dyn AckHandler>)
    }
}

impl AckHandler for CountingAcks {
    fn acked(&self, token: u64, delivered: bool) {
        let mut inner = self.inner.lock().expect("ack lock");
        inner.order.ack(token, delivered);
        if let Some(pos) = inner.order.committable() {
            let newly = pos - inner.acknowledged;
            inner.acknowledged = pos;
            if let Some(s) = &self.stats {
                s.record_acked(newly);
            }
        }
    }
}
