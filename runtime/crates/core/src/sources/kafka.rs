//! `kafka`: a consumer-group member reading one or more topics, committing offsets only for records
//! every sink has acknowledged.
//!
//! ## Delivery
//! * Auto-commit and the automatic offset store are off. Each batch the source emits holds records
//!   of one partition and goes with an acknowledgement made from the offset after its last record
//!   ([`PositionAcks`], one per partition and assignment), which releases an offset only once
//!   every earlier batch of that partition was delivered (to the main, filtered or failure sink,
//!   whichever each record went to). Released
//!   offsets are committed every `commit_interval`, when partitions are revoked (after waiting up
//!   to `revoke_wait` for their batches in flight) and at shutdown (after waiting up to
//!   `shutdown_wait` for everything in flight). A failed batch is never committed past.
//! * After a crash the group resumes from the last commit: the records read since then are read
//!   again (at-least-once); the window is what was in flight: the pipeline's queues plus one
//!   `commit_interval` of acknowledged records.
//! * Prefetch is bounded by `prefetch` (librdkafka `queued.max.messages.kbytes`); beyond it the
//!   pipeline's bounded queues hold the consumer back, so memory stays flat with any backlog.
//! * Per-partition order is kept: records are emitted in the order librdkafka hands them over and
//!   the pipeline keeps batch order with any number of workers.
//! * `commit = "on-read"` turns all of this off (librdkafka auto-commits what was read): for
//!   benchmarks and for data that may be lost.
//!
//! * Batches hold records of one partition each (a buffer per partition, sent when full, after
//!   `batch.flush_interval`, as soon as librdkafka has no further record ready, or — the fullest
//!   — when all buffers together hold two batches), so that a transform processes one partition
//!   per call and its keyed state is that partition's. A backlog keeps batches full; a quiet
//!   stream is not held back.
//!
//! ## Exactly-once
//! With a sink of `delivery = "exactly-once"` ([`crate::kafka::txn`]) the offsets are not
//! committed by the consumer but in the sinks' Kafka transaction: every `commit_interval`, on a
//! revoke and at shutdown the source stops emitting, waits until every batch it emitted was
//! written (up to `revoke_wait`; past it the transaction is aborted), sends the released offsets
//! with the consumer's group metadata and commits. After an abort (a failed write, a refused
//! commit, a lost assignment) every partition is rewound to its last committed offset and
//! read again; what was buffered is dropped. The transactional id is
//! `weir-<group_id>-<group_instance_id>` with static membership (a restarted instance aborts
//! what its predecessor left open at once), else unique per run (a crashed run's open
//! transaction blocks read_committed readers until it times out, 10 s).
//!
//! ## Durable keyed state
//! With `[state] backend = "disk"`, transform state is checkpointed *with* these offsets (see
//! `docs/state.md` and [`crate::state::disk`]): before an offset is committed, the state of
//! that partition is checkpointed at it (the effects of exactly the acknowledged records before
//! it, in one durable transaction); on assignment the partition resumes at the later of its
//! committed offset and its state checkpoint, and un-checkpointed effects are dropped. So after
//! a crash, a rebalance or a restart, state and input agree exactly: no update is lost and none
//! is applied twice, even for non-idempotent state.
//!
//! Exactly-once, the state's changes go to its changelog inside the transaction
//! ([`Checkpointed::stage`] before the commit, [`Checkpointed::complete`] after it); after an
//! abort each partition is assigned to the state again (its aborted effects dropped), and on
//! assignment the committed offsets are read first so that the restore can wait for the
//! checkpoint committed with them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::RebalanceProtocol;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::{Source, SourceConfig, SourceContext, SourceType};
use crate::ack::{Ack, PositionAcks};
use crate::config::{ByteSize, ConfigError, Duration as CfgDuration, Origin};
use crate::kafka::security::{self, Options, Resolved, Sasl, Tls};
use crate::kafka::txn::{Committed, Transactions};
use crate::kafka::{self, ClientLog};
use crate::record::{Failed, FailureKind, Meta, PartitionId, Record, SourcePosition};
use crate::setup::{self, BuildContext};
use crate::state::{CheckpointFailed, Checkpointed};

/// ```toml
/// [source]
/// type = "kafka"
/// bootstrap_servers = "broker1:9092,broker2:9092"
/// topics = ["enriched-good"]
/// group_id = "weir-media"
/// group_instance_id = "weir-1"   # optional: static membership (no rebalance on a quick restart)
/// group_protocol = "classic"     # or "consumer": KIP-848, the broker assigns (Kafka ≥ 4.0)
/// start = "earliest"             # or "latest": where a group without commits starts
/// commit = "acknowledged"        # or "on-read" (no delivery guarantee; benchmarks)
/// commit_interval = "1s"
/// revoke_wait = "10s"            # on revoke, wait this long for in-flight batches
/// shutdown_wait = "30s"          # on shutdown, wait this long for in-flight batches
/// prefetch = "16 MiB"            # bytes librdkafka may prefetch
///
/// [source.tls]                   # optional: TLS (see crate::kafka::security)
/// ca_file = "/etc/kafka/ca.pem"
///
/// [source.sasl]                  # optional: SASL
/// mechanism = "SCRAM-SHA-512"
/// username = "weir"
/// password = { env = "KAFKA_PASSWORD" }
///
/// [source.options]               # any librdkafka consumer setting, applied last
/// "session.timeout.ms" = "10000"
/// ```
///
/// The state changelog's clients copy the consumer's connection and security settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    #[serde(default)]
    pub group_instance_id: Option<String>,
    #[serde(default)]
    pub group_protocol: GroupProtocol,
    #[serde(default)]
    pub start: Start,
    #[serde(default)]
    pub commit: Commit,
    #[serde(default = "default_commit_interval")]
    pub commit_interval: CfgDuration,
    #[serde(default = "default_revoke_wait")]
    pub revoke_wait: CfgDuration,
    #[serde(default = "default_shutdown_wait")]
    pub shutdown_wait: CfgDuration,
    #[serde(default = "default_prefetch")]
    pub prefetch: ByteSize,
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub options: Options,
}

fn default_commit_interval() -> CfgDuration {
    CfgDuration(Duration::from_secs(1))
}
fn default_revoke_wait() -> CfgDuration {
    CfgDuration(Duration::from_secs(10))
}
fn default_shutdown_wait() -> CfgDuration {
    CfgDuration(Duration::from_secs(30))
}
/// Enough for librdkafka to keep fetching while the pipeline works through what it has: with 2
/// MiB (the default before) weir read about 100,000 events of 1 KB a second on a real broker, and
/// ~180,000 with 16 MiB (README, "Kafka → Kafka on a real broker"). librdkafka's own default is
/// 64 MiB.
fn default_prefetch() -> ByteSize {
    ByteSize(16 << 20)
}

/// Where a group without committed offsets starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
}

/// How the group's members get their partitions.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic protocol: the members assign among themselves (cooperative-sticky, so a
    /// rebalance moves only the partitions that change hands).
    #[default]
    Classic,
    /// KIP-848's consumer protocol: the group coordinator assigns, incrementally, and session
    /// and heartbeat timing are the broker's (`group.consumer.*` settings).
    Consumer,
}

/// When offsets are committed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Commit {
    /// Once every sink acknowledged the records (at-least-once).
    #[default]
    #[serde(rename = "acknowledged")]
    Acknowledged,
    /// As soon as they are read (librdkafka auto-commit): records in flight at a crash are lost.
    #[serde(rename = "on-read")]
    OnRead,
}

impl SourceType for KafkaConfig {
    const TYPE: &'static str = "kafka";
}

#[async_trait]
impl SourceConfig for KafkaConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(origin.error(
                "bootstrap_servers",
                "expected host:port[,host:port…], found an empty string",
            ));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.is_empty()) {
            return Err(origin.error("topics", "expected at least one non-empty topic name"));
        }
        if self.group_id.is_empty() {
            return Err(origin.error(
                "group_id",
                "expected a consumer group id, found an empty string",
            ));
        }
        let security = self.security(origin)?;
        security.warn(&origin.key);
        kafka::check_options(&self.client_config(&security), &security, origin)
    }

    /// Creates the consumer, checks that the brokers answer and accept it, and connects the
    /// state's changelog (if any). Joins no group yet: that is `run`.
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let manual = self.commit == Commit::Acknowledged;
        let txn = match &ctx.transactions {
            None => None,
            Some(slot) => Some(slot.get().ok_or_else(|| {
                anyhow::anyhow!("exactly-once: no sink started the transactions")
            })?),
        };
        let shared = manual.then(|| {
            Arc::new(Shared {
                tracker: Mutex::default(),
                generation: AtomicU64::new(0),
                state: ctx.state.clone(),
                txn,
                rewind: AtomicBool::new(false),
            })
        });
        let client = self.client_config(&self.security(&Origin::new("", &ctx.path))?);
        let consumer: StreamConsumer<Context> = client
            .create_with_context(Context {
                shared: shared.clone(),
                revoke_wait: self.revoke_wait.0,
                log: ClientLog::default(),
            })
            .map_err(|e| kafka::creation_error("kafka source: cannot create the consumer", e))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        let log = &consumer.context().log;
        blocking(|| kafka::check_cluster(consumer.client(), log, &topics, setup::CHECK_TIMEOUT))
            .with_context(|| format!("kafka brokers {}", self.bootstrap_servers))?;
        if let Some(state) = &ctx.state {
            let txn = shared.as_ref().and_then(|s| s.txn.clone());
            blocking(|| kafka::changelog::attach(state.as_ref(), &client, &self.topics, txn))
                .context("the state changelog")?;
        }
        Ok(Box::new(KafkaSource {
            cfg: self.clone(),
            consumer,
            shared,
        }))
    }

    fn checkpoints_state(&self) -> bool {
        self.commit == Commit::Acknowledged
    }

    fn transactional_id(&self) -> Option<String> {
        if self.commit != Commit::Acknowledged {
            return None;
        }
        Some(match &self.group_instance_id {
            Some(instance) => format!("weir-{}-{instance}", self.group_id),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                format!(
                    "weir-{}-{}-{:x}",
                    self.group_id,
                    std::process::id(),
                    nanos & 0xffff_ffff
                )
            }
        })
    }

    fn input_streams(&self) -> usize {
        self.topics.len()
    }
}

impl KafkaConfig {
    /// The security and `options` settings, resolved (secrets read, files checked).
    fn security(&self, origin: &Origin) -> Result<Resolved, ConfigError> {
        security::resolve(self.tls.as_ref(), self.sasl.as_ref(), &self.options, origin)
    }

    fn client_config(&self, security: &Resolved) -> ClientConfig {
        kafka::client_config(&self.bootstrap_servers, |c| self.own_settings(c), security)
    }

    /// The consumer's settings (before the config's `options`).
    fn own_settings(&self, c: &mut ClientConfig) {
        let manual = self.commit == Commit::Acknowledged;
        let kib = (self.prefetch.0 / 1024).max(1);
        c.set("group.id", &self.group_id);
        match self.group_protocol {
            GroupProtocol::Classic => c.set("partition.assignment.strategy", "cooperative-sticky"),
            GroupProtocol::Consumer => c.set("group.protocol", "consumer"),
        };
        c.set("enable.auto.commit", (!manual).to_string())
            .set("enable.auto.offset.store", (!manual).to_string())
            .set(
                "auto.offset.reset",
                match self.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            )
            .set("queued.max.messages.kbytes", kib.to_string())
            // When the prefetch queue is full librdkafka stops fetching for this long (1 s by
            // default since librdkafka 2.3): with a bounded prefetch that drains in
            // milliseconds, a second's pause per fill capped weir at `prefetch` per second.
            .set("fetch.queue.backoff.ms", "10")
            .set("queued.min.messages", "1000")
            .set("enable.partition.eof", "false");
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
    }
}

type Tp = (Arc<str>, i32);

/// Positions of one assigned partition.
struct Part {
    /// Bumped on every assignment: batches read under an earlier assignment are not this one's.
    epoch: u64,
    /// The acknowledgements of this assignment's batches (those of an earlier assignment go to
    /// its own, forgotten `PositionAcks`); what it releases is the next offset safe to commit.
    acks: Arc<PositionAcks<i64>>,
    /// The last offset committed.
    committed: Option<i64>,
}

#[derive(Default)]
struct Tracker {
    parts: HashMap<Tp, Part>,
    epoch: u64,
    /// Assigned partitions (with their epoch) held paused because their state could not be had.
    unrestored: Vec<(Tp, u64)>,
}

/// State shared by the source task, the acknowledgements (sink tasks) and the rebalance
/// callback.
struct Shared {
    tracker: Mutex<Tracker>,
    /// Bumped on every assignment change, so the source task notices (cheaply) that the epochs
    /// of its buffered partitions may have changed.
    generation: AtomicU64,
    /// The pipeline's durable transform state, checkpointed before each commit.
    state: Option<Arc<dyn Checkpointed>>,
    /// Exactly-once: the transactions offsets are committed in (instead of by the consumer).
    txn: Option<Arc<Transactions>>,
    /// Exactly-once: a transaction was aborted; every partition must go back to its last
    /// committed offset before anything more is emitted.
    rewind: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().expect("tracker lock poisoned")
    }

    /// Takes the partitions on; returns each one's epoch.
    fn assign(&self, tpl: &TopicPartitionList) -> Vec<(Tp, u64)> {
        let mut t = self.lock();
        t.epoch += 1;
        let epoch = t.epoch;
        let mut out = Vec::new();
        for e in tpl.elements() {
            let tp: Tp = (Arc::from(e.topic()), e.partition());
            let p = t.parts.entry(tp.clone()).or_insert_with(|| Part {
                epoch,
                acks: PositionAcks::new(format!("{}/{}", tp.0, tp.1)),
                committed: None,
            });
            out.push((tp, p.epoch));
        }
        drop(t);
        self.generation.fetch_add(1, Ordering::Release);
        out
    }

    /// The acknowledgement of a batch of `tp` read under assignment `epoch`, whose last record
    /// is at `next - 1`. A batch of an assignment that is over commits nothing.
    fn ack_for(&self, tp: &Tp, epoch: u64, next: i64) -> Ack {
        match self.lock().parts.get(tp) {
            Some(p) if p.epoch == epoch => p.acks.ack_for(next),
            _ => Ack::none(),
        }
    }

    /// The current epoch of each assigned partition.
    fn epochs(&self) -> HashMap<Tp, u64> {
        self.lock()
            .parts
            .iter()
            .map(|(tp, p)| (tp.clone(), p.epoch))
            .collect()
    }

    /// Checkpoints the transform state at these offsets, then commits them; on a checkpoint
    /// error commits nothing (the offsets stay ready and are tried again), or, when only some
    /// partitions failed, commits the others.
    fn checkpoint_and_commit<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        mut tpl: TopicPartitionList,
        mode: CommitMode,
    ) -> Result<usize, String> {
        if tpl.count() == 0 {
            return Ok(0);
        }
        if let Some(state) = &self.state {
            let positions: Vec<(PartitionId, u64)> = tpl
                .elements()
                .iter()
                .filter_map(|e| match e.offset() {
                    Offset::Offset(o) => Some((partition_id(e.topic(), e.partition()), o as u64)),
                    _ => None,
                })
                .collect();
            if let Err(e) = state.checkpoint(&positions) {
                let only = e.downcast_ref::<CheckpointFailed>();
                let failed = |t: &str, p: i32| {
                    only.is_none_or(|f| {
                        f.partitions
                            .iter()
                            .any(|(f, _)| &*f.topic == t && f.partition == p)
                    })
                };
                let mut t = self.lock();
                let mut rest = TopicPartitionList::new();
                for e in tpl.elements() {
                    if failed(e.topic(), e.partition()) {
                        if let Some(p) = t.parts.get_mut(&(Arc::from(e.topic()), e.partition())) {
                            p.committed = None;
                        }
                    } else {
                        let _ = rest.add_partition_offset(e.topic(), e.partition(), e.offset());
                    }
                }
                drop(t);
                if only.is_none() || rest.count() == 0 {
                    return Err(format!(
                        "state checkpoint failed, offsets not committed: {e:#}"
                    ));
                }
                tracing::warn!("{e}: offsets of those partitions not committed");
                tpl = rest;
            }
        }
        consumer
            .commit(&tpl, mode)
            .map_err(|e| format!("commit failed: {e}"))?;
        Ok(tpl.count())
    }

    /// Batches in flight that hold records of these assigned partitions (all if `None`).
    fn in_flight(&self, only: Option<&[Tp]>) -> usize {
        let t = self.lock();
        t.parts
            .iter()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .map(|(_, p)| p.acks.in_flight())
            .sum()
    }

    /// Exactly-once: batches of the assigned partitions whose outcome is not known yet, and
    /// whether one was not delivered.
    fn unsettled(&self) -> (usize, bool) {
        let t = self.lock();
        t.parts
            .values()
            .map(|p| p.acks.unsettled())
            .fold((0, false), |(n, f), (pn, pf)| (n + pn, f || pf))
    }

    /// Offsets safe to commit; `all`: also those already committed (for a final, sync commit).
    fn committable(&self, only: Option<&[Tp]>, all: bool) -> TopicPartitionList {
        let mut t = self.lock();
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in t.parts.iter_mut() {
            if only.is_some_and(|o| !o.contains(tp)) {
                continue;
            }
            if let Some(off) = p.acks.released() {
                if all || p.committed != Some(off) {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
                    p.committed = Some(off);
                }
            }
        }
        tpl
    }

    /// Exactly-once: waits (blocking) until every batch emitted is written, then commits the
    /// open transaction with every partition's released offset; returns how many partitions
    /// moved. Past `wait` the transaction is poisoned (the sinks discard what they hold) and,
    /// once nothing is in flight, aborted; after any abort the partitions must be rewound
    /// ([`Shared::rewind`] is set). An error is fatal (fenced by another producer).
    fn commit_transaction<C: Consumer<X>, X: ConsumerContext>(
        &self,
        consumer: &C,
        txn: &Transactions,
        wait: Duration,
    ) -> anyhow::Result<usize> {
        let deadline = Instant::now() + wait;
        loop {
            let (pending, failed) = self.unsettled();
            if failed {
                // Its records are not in the transaction, those of later batches may be: the
                // offsets cannot be committed past it, nor the later records without it.
                txn.poison("a batch was not delivered");
            }
            if pending == 0 {
                break;
            }
            if Instant::now() >= deadline && !txn.poisoned() {
                txn.poison(format!(
                    "{pending} batch(es) still in flight after {wait:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut tpl = TopicPartitionList::new();
        let mut moved = Vec::new();
        {
            let t = self.lock();
            for (tp, p) in &t.parts {
                if let Some(off) = p.acks.released() {
                    if p.committed != Some(off) {
                        let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
                        moved.push((tp.clone(), p.epoch, off));
                    }
                }
            }
        }
        // Durable state: the changes up to these offsets go to the changelog inside the
        // transaction, each partition's marker with them; the file follows after the commit.
        let staged = match &self.state {
            Some(state) if !moved.is_empty() && !txn.poisoned() => {
                let positions: Vec<(PartitionId, u64)> = moved
                    .iter()
                    .map(|(tp, _, off)| (partition_id(&tp.0, tp.1), *off as u64))
                    .collect();
                match state.stage(&positions) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        txn.poison(format!("the state checkpoint: {e:#}"));
                        None
                    }
                }
            }
            _ => None,
        };
        let group = consumer.group_metadata();
        match txn.commit(&tpl, group.as_ref())? {
            Committed::Yes => {
                let mut t = self.lock();
                for (tp, epoch, off) in &moved {
                    if let Some(p) = t.parts.get_mut(tp).filter(|p| p.epoch == *epoch) {
                        p.committed = Some(*off);
                    }
                }
                drop(t);
                if let (Some(state), Some(staged)) = (&self.state, staged) {
                    if let Err(e) = state.complete(staged) {
                        // Committed in Kafka, not in the file: the partitions are assigned
                        // again, which catches the file up from the changelog.
                        tracing::error!("exactly-once: the committed state checkpoint could not be written to the state file: {e:#}; restoring from the changelog");
                        self.rewind.store(true, Ordering::Release);
                    }
                }
                Ok(moved.len())
            }
            Committed::Aborted(_) => {
                self.rewind.store(true, Ordering::Release);
                Ok(0)
            }
        }
    }

    /// Exactly-once, after an abort: every assigned partition goes back to its last committed
    /// offset (the group's, when this run committed none) under a new epoch, so that what was
    /// read since (buffered or in flight) is dropped and read again; with durable state, each
    /// partition is assigned to the state again (its overlay of the aborted effects dropped).
    fn rewind<C: Consumer<X>, X: ConsumerContext>(&self, consumer: &C, start: Start) {
        if !self.rewind.swap(false, Ordering::AcqRel) {
            return;
        }
        let parts: Vec<(Tp, Option<i64>)> = {
            let mut t = self.lock();
            t.epoch += 1;
            let epoch = t.epoch;
            t.parts
                .iter_mut()
                .map(|(tp, p)| {
                    p.epoch = epoch;
                    p.acks = PositionAcks::new(format!("{}/{}", tp.0, tp.1));
                    (tp.clone(), p.committed)
                })
                .collect()
        };
        self.generation.fetch_add(1, Ordering::Release);
        let mut ask = TopicPartitionList::new();
        for (tp, _) in parts.iter().filter(|(_, c)| c.is_none()) {
            ask.add_partition(&tp.0, tp.1);
        }
        let group = if ask.count() > 0 {
            consumer
                .committed_offsets(ask, Duration::from_secs(10))
                .unwrap_or_default()
        } else {
            TopicPartitionList::new()
        };
        let epoch = self.lock().epoch;
        for (tp, committed) in parts {
            let to = match committed {
                Some(o) => Offset::Offset(o),
                None => match group.find_partition(&tp.0, tp.1).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => Offset::Offset(o),
                    _ if start == Start::Earliest => Offset::Beginning,
                    _ => Offset::End,
                },
            };
            match consumer.seek(&tp.0, tp.1, to, Duration::from_secs(10)) {
                Ok(()) => {
                    tracing::info!(topic = %tp.0, partition = tp.1, offset = ?to, "exactly-once: rewound to the last committed offset")
                }
                Err(e) => {
                    tracing::error!(topic = %tp.0, partition = tp.1, error = %e, "exactly-once: cannot rewind the partition; retrying");
                    self.rewind.store(true, Ordering::Release);
                }
            }
            // (After the seek: a partition paused here resumes from the committed offset.)
            if let Some(state) = &self.state {
                let k = match to {
                    Offset::Offset(o) => Some(o as u64),
                    _ => None,
                };
                if let Err(e) = state.assign(&partition_id(&tp.0, tp.1), epoch, k) {
                    tracing::error!(topic = %tp.0, partition = tp.1, "exactly-once: cannot get the state of this partition back: {e:#}; the partition is paused until it can");
                    let mut one = TopicPartitionList::new();
                    one.add_partition(&tp.0, tp.1);
                    if let Err(e) = consumer.pause(&one) {
                        tracing::error!(error = %e, "cannot pause a partition whose state is missing");
                    }
                    self.lock().unrestored.push((tp.clone(), epoch));
                }
            }
        }
    }

    fn forget(&self, tps: &[Tp]) {
        let mut t = self.lock();
        for tp in tps {
            t.parts.remove(tp);
        }
        t.unrestored.retain(|(tp, _)| !tps.contains(tp));
        drop(t);
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(state) = &self.state {
            for tp in tps {
                state.revoke(&partition_id(&tp.0, tp.1));
            }
        }
    }
}

/// The consumer's context: routes librdkafka logs to `tracing` and commits on revoke.
struct Context {
    shared: Option<Arc<Shared>>,
    revoke_wait: Duration,
    log: ClientLog,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log.log(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ConsumerContext for Context {
    /// librdkafka's default rebalance (rdkafka's `ConsumerContext::rebalance`), plus: newly
    /// assigned partitions take their epoch here and, with durable state, start at their state
    /// checkpoint when it is ahead of the committed offset.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        // librdkafka calls this from inside the source's `recv()`, on a runtime worker: the
        // revoke path waits for batches in flight (which other tasks must move) and both paths
        // do blocking I/O, so the worker hands its other tasks over first.
        blocking(|| self.rebalance_blocking(consumer, err, tpl));
    }
}

impl Context {
    fn rebalance_blocking(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let revoke = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS;
        if revoke {
            self.revoked(consumer, tpl);
        }
        let mut unrestored = TopicPartitionList::new();
        if assign {
            if let Some(shared) = &self.shared {
                let epochs = shared.assign(tpl);
                if let Some(state) = &shared.state {
                    unrestored = resume_at_checkpoints(
                        consumer,
                        state.as_ref(),
                        &epochs,
                        tpl,
                        shared.txn.is_some(),
                    );
                }
            }
        }
        if !assign && !revoke {
            tracing::warn!(error = ?err, "rebalance error");
        }
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let r = match (assign, cooperative) {
            (true, true) => consumer.incremental_assign(tpl),
            (true, false) => consumer.assign(tpl),
            (false, true) => consumer.incremental_unassign(tpl),
            (false, false) => consumer.unassign(),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "applying the rebalance failed");
        }
        if unrestored.count() > 0 {
            // Reading them with state that is not theirs would corrupt it: hold them until the
            // source task manages to restore it (`retry_unrestored`).
            if let Err(e) = consumer.pause(&unrestored) {
                tracing::error!(error = %e, "cannot pause partitions whose state is missing");
            }
            if let Some(shared) = &self.shared {
                let mut t = shared.lock();
                for e in unrestored.elements() {
                    let tp: Tp = (Arc::from(e.topic()), e.partition());
                    if let Some(epoch) = t.parts.get(&tp).map(|p| p.epoch) {
                        t.unrestored.push((tp, epoch));
                    }
                }
            }
        }
        if assign {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

impl Context {
    /// Partitions are being taken away: wait for their batches in flight, checkpoint their
    /// state, commit, and forget them.
    fn revoked(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let Some(shared) = &self.shared else {
            return;
        };
        let tps: Vec<Tp> = tpl
            .elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition()))
            .collect();
        if consumer.assignment_lost() {
            tracing::warn!(
                partitions = tps.len(),
                "assignment lost: not committing (another member owns these now)"
            );
            if let Some(txn) = &shared.txn {
                // What the open transaction holds of these partitions is another member's to
                // write now: abort it all, and rewind the partitions kept.
                txn.poison("the assignment was lost");
                if let Err(e) = shared.commit_transaction(consumer, txn, self.revoke_wait) {
                    tracing::error!("{e:#}");
                }
            }
            shared.forget(&tps);
            return;
        }
        if let Some(txn) = &shared.txn {
            // Everything in the open transaction is committed with these partitions' offsets
            // before another member may read them.
            let committed = shared
                .commit_transaction(consumer, txn, self.revoke_wait)
                .unwrap_or_else(|e| {
                    tracing::error!("on revoke: {e:#}");
                    0
                });
            shared.forget(&tps);
            tracing::info!(partitions = tps.len(), committed, "partitions revoked");
            return;
        }
        // Give batches in flight a moment to be written, so the next owner starts after them.
        let deadline = Instant::now() + self.revoke_wait;
        let mut pending = shared.in_flight(Some(&tps));
        while pending > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            pending = shared.in_flight(Some(&tps));
        }
        let offsets = shared.committable(Some(&tps), true);
        let committed = shared
            .checkpoint_and_commit(consumer, offsets, CommitMode::Sync)
            .unwrap_or_else(|e| {
                tracing::warn!("on revoke: {e}");
                0
            });
        shared.forget(&tps);
        tracing::info!(
            partitions = tps.len(),
            committed,
            still_in_flight = pending,
            "partitions revoked"
        );
    }
}

/// Drops the un-checkpointed state of newly assigned partitions (restoring it from the
/// changelog, if any) and starts each at the later of its committed offset and its state
/// checkpoint (both cover only acknowledged records; the checkpoint is ahead after a crash
/// between checkpointing and committing). Returns the partitions whose state could not be
/// had, after retrying for a while: the caller pauses them.
///
/// `exactly_once`: offsets and state were committed in the same transactions: the committed
/// offsets are read first (a read_committed consumer waits for those of a transaction still
/// open), and each partition's state is restored up to its committed offset.
fn resume_at_checkpoints<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    state: &dyn Checkpointed,
    epochs: &[(Tp, u64)],
    tpl: &mut TopicPartitionList,
    exactly_once: bool,
) -> TopicPartitionList {
    let mut checkpoints = Vec::new();
    let mut failed = TopicPartitionList::new();
    let committed = if exactly_once {
        committed_of(consumer, epochs.iter().map(|(tp, _)| tp))
    } else {
        HashMap::new()
    };
    for (tp, epoch) in epochs {
        let mut attempt = 0;
        loop {
            let k = committed.get(tp).copied();
            match state.assign(&partition_id(&tp.0, tp.1), *epoch, k) {
                Ok(Some(c)) => checkpoints.push((tp.clone(), c as i64)),
                Ok(None) => {}
                // A few quick tries here (this blocks the consumer); then the source task retries
                // every commit_interval.
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(topic = %tp.0, partition = tp.1, attempt, "cannot get the state of this partition: {e:#}; retrying");
                    std::thread::sleep(crate::retry::PIPELINE.delay(attempt + 2));
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        topic = %tp.0, partition = tp.1,
                        "cannot get the state of this partition: {e:#}; the partition is paused until it can"
                    );
                    let _ = failed.add_partition(&tp.0, tp.1);
                }
            }
            break;
        }
    }
    if checkpoints.is_empty() {
        return failed;
    }
    let mut ask = TopicPartitionList::new();
    for (tp, _) in &checkpoints {
        ask.add_partition(&tp.0, tp.1);
    }
    let committed = match consumer.committed_offsets(ask, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read committed offsets: resuming at the state checkpoints");
            TopicPartitionList::new()
        }
    };
    for (tp, c) in checkpoints {
        let k = committed
            .find_partition(&tp.0, tp.1)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        match k {
            Some(k) if k >= c => {
                if k > c && !state.follows_partitions() {
                    tracing::warn!(
                        topic = %tp.0, partition = tp.1, committed = k, checkpoint = c,
                        "the state of this partition is behind its committed offset (another \
                         instance processed it since): it lacks the effects of those records"
                    );
                }
            }
            _ => {
                tracing::info!(topic = %tp.0, partition = tp.1, committed = ?k, checkpoint = c, "resuming at the state checkpoint");
                if let Err(e) = tpl.set_partition_offset(&tp.0, tp.1, Offset::Offset(c)) {
                    tracing::warn!(error = %e, "cannot set the start offset");
                }
            }
        }
    }
    failed
}

/// The committed offsets of these partitions (those that have one); empty when they cannot be
/// read.
fn committed_of<'a, C: Consumer<X>, X: ConsumerContext>(
    consumer: &C,
    tps: impl Iterator<Item = &'a Tp>,
) -> HashMap<Tp, u64> {
    let mut ask = TopicPartitionList::new();
    let tps: Vec<&Tp> = tps.collect();
    for tp in &tps {
        ask.add_partition(&tp.0, tp.1);
    }
    match consumer.committed_offsets(ask, Duration::from_secs(30)) {
        Ok(l) => tps
            .into_iter()
            .filter_map(|tp| match l.find_partition(&tp.0, tp.1)?.offset() {
                Offset::Offset(o) => Some((tp.clone(), o as u64)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read committed offsets");
            HashMap::new()
        }
    }
}

/// Tries again to get the state of partitions held paused for the lack of it; resumes each one
/// that gets it, at the later of its committed offset and its state checkpoint.
fn retry_unrestored<C: Consumer<X>, X: ConsumerContext>(consumer: &C, shared: &Shared) {
    let Some(state) = &shared.state else {
        return;
    };
    let pending = std::mem::take(&mut shared.lock().unrestored);
    let mut still = Vec::new();
    for (tp, epoch) in pending {
        if shared.lock().parts.get(&tp).map(|p| p.epoch) != Some(epoch) {
            continue; // revoked or assigned again since
        }
        let k = if shared.txn.is_some() {
            committed_of(consumer, std::iter::once(&tp))
                .get(&tp)
                .copied()
        } else {
            None
        };
        let checkpoint = match state.assign(&partition_id(&tp.0, tp.1), epoch, k) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, "still cannot get the state of this partition: {e:#}");
                still.push((tp, epoch));
                continue;
            }
        };
        let mut one = TopicPartitionList::new();
        one.add_partition(&tp.0, tp.1);
        if let Some(c) = checkpoint {
            let committed = consumer
                .committed_offsets(one.clone(), Duration::from_secs(10))
                .ok()
                .and_then(|l| l.find_partition(&tp.0, tp.1).map(|e| e.offset()));
            let behind = !matches!(committed, Some(Offset::Offset(k)) if k >= c as i64);
            if behind {
                if let Err(e) = consumer.seek(
                    &tp.0,
                    tp.1,
                    Offset::Offset(c as i64),
                    Duration::from_secs(10),
                ) {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot seek to the state checkpoint");
                    still.push((tp, epoch));
                    continue;
                }
            }
        }
        match consumer.resume(&one) {
            Ok(()) => {
                tracing::info!(topic = %tp.0, partition = tp.1, checkpoint = ?checkpoint, "state of the partition restored: resumed")
            }
            Err(e) => {
                tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "cannot resume the partition");
                still.push((tp, epoch));
            }
        }
    }
    shared.lock().unrestored.extend(still);
}

fn partition_id(topic: &str, partition: i32) -> PartitionId {
    PartitionId {
        topic: Arc::from(topic),
        partition,
    }
}

struct KafkaSource {
    cfg: KafkaConfig,
    consumer: StreamConsumer<Context>,
    shared: Option<Arc<Shared>>,
}

/// The records read from one partition and not sent yet.
struct Buf {
    records: Vec<Record>,
    failed: Vec<Failed>,
    bytes: usize,
    opened: Instant,
    /// The offset after the last record.
    next: i64,
    /// The partition's epoch when the first record was read.
    epoch: u64,
}

impl Buf {
    fn len(&self) -> usize {
        self.records.len() + self.failed.len()
    }
}

/// Per-partition batching: one buffer per partition, each sent as a batch of its own.
struct Bufs {
    bufs: HashMap<Tp, Buf>,
    total: usize,
    bytes: usize,
    limits: crate::sources::BatchLimits,
    /// Current epoch of each assigned partition (from [`Shared`], refreshed when the generation
    /// moves); `None` without acknowledgements (every epoch 0).
    epochs: Option<HashMap<Tp, u64>>,
    generation: u64,
}

impl Bufs {
    /// Re-reads the partitions' epochs after an assignment change, and drops the buffers of
    /// partitions no longer held under the epoch they were read in (their records are read
    /// again by whoever holds them now: nothing of theirs was acknowledged).
    fn refresh(&mut self, shared: &Option<Arc<Shared>>) {
        let Some(s) = shared else {
            return;
        };
        let g = s.generation.load(Ordering::Acquire);
        if g == self.generation && self.epochs.is_some() {
            return;
        }
        self.generation = g;
        let epochs = s.epochs();
        let stale: Vec<Tp> = self
            .bufs
            .iter()
            .filter(|(tp, b)| epochs.get(*tp) != Some(&b.epoch))
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in stale {
            if let Some(b) = self.bufs.remove(&tp) {
                self.total -= b.len();
                self.bytes -= b.bytes;
                tracing::debug!(topic = %tp.0, partition = tp.1, records = b.len(), "dropping records of a partition no longer assigned");
            }
        }
        self.epochs = Some(epochs);
    }

    /// Adds a record; returns the partition to send now, if any.
    fn push(&mut self, tp: &Tp, offset: i64, record: Result<Record, Failed>) -> Option<Tp> {
        let epoch = match &self.epochs {
            Some(e) => e.get(tp).copied().unwrap_or(0),
            None => 0,
        };
        let size = match &record {
            Ok(r) => r.size(),
            Err(f) => f.record.size(),
        };
        let b = self.bufs.entry(tp.clone()).or_insert_with(|| Buf {
            records: Vec::new(),
            failed: Vec::new(),
            bytes: 0,
            opened: Instant::now(),
            next: offset + 1,
            epoch,
        });
        match record {
            Ok(r) => b.records.push(r),
            Err(f) => b.failed.push(f),
        }
        b.bytes += size;
        b.next = offset + 1;
        self.total += 1;
        self.bytes += size;
        if b.len() >= self.limits.max_records || b.bytes >= self.limits.max_bytes {
            return Some(tp.clone());
        }
        if self.total >= 2 * self.limits.max_records || self.bytes >= 2 * self.limits.max_bytes {
            return self
                .bufs
                .iter()
                .max_by_key(|(_, b)| b.len())
                .map(|(tp, _)| tp.clone());
        }
        None
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.bufs
            .values()
            .map(|b| b.opened)
            .min()
            .map(|t| tokio::time::Instant::from_std(t + self.limits.flush_interval))
    }

    /// Partitions whose buffer is due.
    fn due(&self) -> Vec<Tp> {
        let now = Instant::now();
        self.bufs
            .iter()
            .filter(|(_, b)| b.opened + self.limits.flush_interval <= now)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    fn take(&mut self, tp: &Tp) -> Option<Buf> {
        let b = self.bufs.remove(tp)?;
        self.total -= b.len();
        self.bytes -= b.bytes;
        Some(b)
    }
}

/// Sends one partition's buffer as a batch (its acknowledgement covers that partition's offsets).
async fn send(
    emitter: &mut crate::sources::Emitter,
    shared: &Option<Arc<Shared>>,
    bufs: &mut Bufs,
    tp: &Tp,
) -> anyhow::Result<()> {
    let Some(b) = bufs.take(tp) else {
        return Ok(());
    };
    let ack = match shared {
        Some(s) => s.ack_for(tp, b.epoch, b.next),
        None => Ack::none(),
    };
    let position = SourcePosition {
        partition: partition_id(&tp.0, tp.1),
        epoch: b.epoch,
        end: b.next as u64,
    };
    emitter.send(b.records, b.failed, Some(position), ack).await
}

/// Sends every partition's buffer (of partitions still held under the epoch they were read in).
async fn send_all(
    emitter: &mut crate::sources::Emitter,
    shared: &Option<Arc<Shared>>,
    bufs: &mut Bufs,
) -> anyhow::Result<()> {
    bufs.refresh(shared);
    let all: Vec<Tp> = bufs.bufs.keys().cloned().collect();
    for tp in all {
        send(emitter, shared, bufs, &tp).await?;
    }
    Ok(())
}

/// Runs blocking work (a state checkpoint's fsync) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    let flavor = tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor());
    if matches!(flavor, Ok(tokio::runtime::RuntimeFlavor::MultiThread)) {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let KafkaSource {
            cfg,
            consumer,
            shared,
        } = *self;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .with_context(|| format!("kafka source: cannot subscribe to {topics:?}"))?;
        tracing::info!(topics = ?cfg.topics, group = %cfg.group_id, "kafka source subscribed");

        let mut names: Vec<Arc<str>> = Vec::new();
        let mut bufs = Bufs {
            bufs: HashMap::new(),
            total: 0,
            bytes: 0,
            limits: ctx.emitter.limits(),
            epochs: None,
            generation: 0,
        };
        let mut commit_tick = tokio::time::interval(cfg.commit_interval.0);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let emitter = &mut ctx.emitter;
        let mut errors = 0u32;
        loop {
            let deadline = bufs.deadline();
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                // The timers before the records: a backlog can keep a record ready for long
                // stretches, and a biased select polls later branches only when none is (no
                // commit meanwhile; in exactly-once mode a transaction that keeps growing).
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    bufs.refresh(&shared);
                    for tp in bufs.due() {
                        send(emitter, &shared, &mut bufs, &tp).await?;
                    }
                }
                _ = commit_tick.tick() => {
                    if let Some((s, txn)) = shared.as_ref().and_then(|s| s.txn.as_ref().map(|t| (s, t))) {
                        blocking(|| s.commit_transaction(&consumer, txn, cfg.revoke_wait.0))
                            .context("kafka source")?;
                        blocking(|| s.rewind(&consumer, cfg.start));
                        if !s.lock().unrestored.is_empty() {
                            // (Just after a commit: the open transaction holds nothing yet.)
                            blocking(|| retry_unrestored(&consumer, s));
                        }
                        bufs.refresh(&shared);
                    } else if let Some(s) = &shared {
                        if !s.lock().unrestored.is_empty() {
                            blocking(|| retry_unrestored(&consumer, s));
                        }
                        let tpl = s.committable(None, false);
                        if let Err(e) = blocking(|| s.checkpoint_and_commit(&consumer, tpl, CommitMode::Async)) {
                            tracing::warn!("kafka source: {e}");
                        }
                    }
                }
                m = consumer.recv() => {
                    if let Some(s) = shared.as_ref().filter(|s| s.rewind.load(Ordering::Acquire)) {
                        // A transaction was aborted (in a rebalance): this record is read again.
                        blocking(|| s.rewind(&consumer, cfg.start));
                        continue;
                    }
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            if let Some((code, reason)) = consumer.client().fatal_error() {
                                // The consumer can do nothing more (e.g. KIP-848's
                                // UNRELEASED_INSTANCE_ID: a static member restarted before its
                                // predecessor's session expired). Nothing read since the last
                                // commit was acknowledged for it: stop, so that a supervisor's
                                // restart makes a new one.
                                anyhow::bail!(
                                    "kafka source: the consumer failed for good ({code:?}): {reason}{}",
                                    if code == RDKafkaErrorCode::UnreleasedInstanceId {
                                        " — another member still holds this group_instance_id; \
                                         it is released when that member's session expires"
                                    } else {
                                        ""
                                    }
                                );
                            }
                            tracing::warn!(error = %e, "kafka source: consume error");
                            // librdkafka reports transient errors (a broker unreachable, all
                            // brokers down) here for information only and reconnects by itself,
                            // with its own backoff. Sleeping would not slow it down: it would
                            // leave the errors queued during an outage to be taken one per sleep,
                            // ahead of the rebalances and records queued behind them, long after
                            // the brokers are back. Only a fatal error waits before polling again.
                            if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
                                errors += 1;
                                tokio::time::sleep(crate::retry::PIPELINE.delay(errors.min(6))).await;
                            }
                            continue;
                        }
                    };
                    errors = 0;
                    bufs.refresh(&shared);
                    let topic = match names.iter().find(|n| &***n == m.topic()) {
                        Some(n) => n.clone(),
                        None => {
                            names.push(Arc::from(m.topic()));
                            names.last().expect("just pushed").clone()
                        }
                    };
                    let (partition, offset) = (m.partition(), m.offset());
                    let payload = m.payload().unwrap_or_default();
                    let meta = Meta {
                        topic: Some(topic.clone()),
                        partition,
                        offset,
                        timestamp: m.timestamp().to_millis(),
                        headers: m
                            .headers()
                            .map(|h| {
                                h.iter()
                                    .map(|h| {
                                        (h.key.to_string(), Bytes::copy_from_slice(h.value.unwrap_or_default()))
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                        original: None,
                    };
                    let record = Record {
                        value: if payload.len() > ctx.max_record_bytes {
                            Bytes::copy_from_slice(&payload[..ctx.max_record_bytes])
                        } else {
                            Bytes::copy_from_slice(payload)
                        },
                        key: m.key().map(Bytes::copy_from_slice),
                        meta: Some(Box::new(meta)),
                    };
                    let record = if payload.len() > ctx.max_record_bytes {
                        Err(Failed {
                            record,
                            kind: FailureKind::Oversized {
                                actual: payload.len(),
                                limit: ctx.max_record_bytes,
                            },
                            component: "kafka".into(),
                            reason: "message longer than limits.max_record_bytes".into(),
                        })
                    } else {
                        Ok(record)
                    };
                    drop(m);
                    let tp = (topic, partition);
                    if let Some(full) = bufs.push(&tp, offset, record) {
                        send(emitter, &shared, &mut bufs, &full).await?;
                    }
                }
                // librdkafka has nothing more ready (the recv above is pending): send what
                // was read rather than hold it for `flush_interval`. A backlog never gets here
                // between records, so its batches stay full; a quiet stream is not delayed.
                _ = std::future::ready(()), if bufs.total > 0 => {
                    send_all(emitter, &shared, &mut bufs).await?;
                }
            }
        }

        // Shutdown: send what was read, wait for it to be acknowledged, commit, leave the group.
        send_all(emitter, &shared, &mut bufs).await?;
        if let Some(s) = &shared {
            let deadline = Instant::now() + cfg.shutdown_wait.0;
            while s.in_flight(None) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let left = s.in_flight(None);
            if left > 0 {
                tracing::warn!(batches = left, "kafka source: shutdown_wait passed with batches unacknowledged; they will be read again");
            }
            let n = match &s.txn {
                Some(txn) => blocking(|| s.commit_transaction(&consumer, txn, Duration::ZERO))
                    .context("kafka source: final commit")?,
                None => {
                    let tpl = s.committable(None, true);
                    blocking(|| s.checkpoint_and_commit(&consumer, tpl, CommitMode::Sync))
                        .map_err(|e| anyhow::anyhow!(e).context("kafka source: final commit"))?
                }
            };
            tracing::info!(
                partitions = n,
                "kafka source: offsets committed at shutdown"
            );
        } else if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "kafka source: final auto-commit");
        }
        // Leave the group now rather than by session timeout (the revoke callback finds nothing
        // left to wait for).
        consumer.unsubscribe();
        if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| drop(consumer));
        } else {
            drop(consumer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with the required keys and `extra` (JSON members, each ending in a comma).
    fn config(extra: &str) -> KafkaConfig {
        serde_json::from_str(&format!(
            "{{{extra}\"bootstrap_servers\": \"k:9092\", \"topics\": [\"in\"], \"group_id\": \"g\"}}"
        ))
        .unwrap()
    }

    #[test]
    fn the_transactional_id_follows_static_membership_and_is_unique_without_it() {
        let fixed = config("\"group_instance_id\": \"weir-1\",");
        assert_eq!(fixed.transactional_id().as_deref(), Some("weir-g-weir-1"));
        assert_eq!(fixed.transactional_id(), fixed.transactional_id());
        let dynamic = config("");
        let id = dynamic.transactional_id().unwrap();
        assert!(id.starts_with("weir-g-"), "{id}");
        assert_ne!(id, "weir-g-");
        // commit = "on-read" has no offsets to put in a transaction.
        assert_eq!(config("\"commit\": \"on-read\",").transactional_id(), None);
    }

    #[test]
    fn the_consumer_protocol_leaves_assignment_to_the_broker() {
        let mut c = ClientConfig::new();
        config("").own_settings(&mut c);
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("group.protocol"), None);
        let mut c = ClientConfig::new();
        config("\"group_protocol\": \"consumer\",").own_settings(&mut c);
        assert_eq!(c.get("partition.assignment.strategy"), None);
        assert_eq!(c.get("group.protocol"), Some("consumer"));
    }

    #[test]
    fn offsets_commit_per_partition_only_past_delivered_batches() {
        let shared = Arc::new(Shared {
            tracker: Mutex::default(),
            generation: AtomicU64::new(0),
            state: None,
            txn: None,
            rewind: AtomicBool::new(false),
        });
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition("t", 0);
        assignment.add_partition("t", 1);
        let epochs: HashMap<Tp, u64> = shared.assign(&assignment).into_iter().collect();
        let tp = |p| (Arc::<str>::from("t"), p);
        let ack_for = |p: i32, next| shared.ack_for(&tp(p), epochs[&tp(p)], next);
        // Batches A0 (p0 up to 10), A1 (p1 up to 5), B (p0 up to 20).
        let a0 = ack_for(0, 10);
        let a1 = ack_for(1, 5);
        let b = ack_for(0, 20);
        b.delivered();
        assert_eq!(
            shared.committable(None, false).count(),
            0,
            "A0 and A1 still pending"
        );
        a0.delivered();
        a1.delivered();
        let tpl = shared.committable(None, false);
        assert_eq!(
            tpl.find_partition("t", 0).unwrap().offset(),
            Offset::Offset(20)
        );
        assert_eq!(
            tpl.find_partition("t", 1).unwrap().offset(),
            Offset::Offset(5)
        );
        assert_eq!(shared.committable(None, false).count(), 0, "nothing new");
        // A failed batch blocks its partition.
        drop(ack_for(1, 9));
        ack_for(1, 12).delivered();
        assert_eq!(shared.committable(None, false).count(), 0);
        assert_eq!(
            shared.in_flight(None),
            2,
            "the failed batch and the one after it"
        );
        // A batch read under an assignment that is over commits nothing.
        shared.forget(&[tp(0)]);
        shared.assign(&assignment);
        let stale = shared.ack_for(&tp(0), epochs[&tp(0)], 30);
        stale.delivered();
        assert_eq!(shared.committable(Some(&[tp(0)]), false).count(), 0);
    }

    /// A state backend whose state cannot be had the first `fails` times.
    #[derive(Debug)]
    struct Unreachable {
        fails: AtomicU64,
        checkpoint: u64,
    }

    impl Checkpointed for Unreachable {
        fn assign(&self, _: &PartitionId, _: u64, _: Option<u64>) -> anyhow::Result<Option<u64>> {
            if self
                .fails
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                anyhow::bail!("changelog unreachable");
            }
            Ok(Some(self.checkpoint))
        }
        fn checkpoint(&self, _: &[(PartitionId, u64)]) -> anyhow::Result<()> {
            Ok(())
        }
        fn revoke(&self, _: &PartitionId) {}
    }

    /// Against librdkafka's mock cluster: a partition whose state cannot be restored is not
    /// read (it would be processed with state that is not its own); once it can, it is read
    /// from its state checkpoint.
    #[test]
    fn a_partition_without_its_state_is_held_until_the_state_is_restored() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("t", 1, 1).unwrap();
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .create()
            .unwrap();
        for i in 0..10 {
            p.send(
                BaseRecord::<(), _>::to("t")
                    .partition(0)
                    .payload(&format!("{i}")),
            )
            .unwrap();
        }
        p.flush(Duration::from_secs(10)).unwrap();
        let shared = Arc::new(Shared {
            tracker: Mutex::default(),
            generation: AtomicU64::new(0),
            // The rebalance callback tries 4 times; the first retry after it fails too.
            state: Some(Arc::new(Unreachable {
                fails: AtomicU64::new(5),
                checkpoint: 6,
            })),
            txn: None,
            rewind: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<Context> = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("group.id", "g")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create_with_context(Context {
                shared: Some(shared.clone()),
                revoke_wait: Duration::from_secs(1),
                log: ClientLog::default(),
            })
            .unwrap();
        consumer.subscribe(&["t"]).unwrap();
        let start = Instant::now();
        while shared.lock().unrestored.is_empty() {
            assert!(start.elapsed() < Duration::from_secs(30), "never assigned");
            assert!(
                consumer.poll(Duration::from_millis(100)).is_none(),
                "read without state"
            );
        }
        for _ in 0..10 {
            assert!(
                consumer.poll(Duration::from_millis(100)).is_none(),
                "read while paused"
            );
        }
        retry_unrestored(&consumer, &shared);
        assert_eq!(
            shared.lock().unrestored.len(),
            1,
            "still unreachable: still held"
        );
        assert!(consumer.poll(Duration::from_millis(300)).is_none());
        retry_unrestored(&consumer, &shared);
        assert!(shared.lock().unrestored.is_empty());
        let first = loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(m) => break m.unwrap().offset(),
                None => assert!(start.elapsed() < Duration::from_secs(30), "never resumed"),
            }
        };
        assert_eq!(first, 6, "resumed at the state checkpoint");
    }

    #[test]
    fn buffers_hold_one_partition_each_and_drop_records_of_a_lost_assignment() {
        let shared = Some(Arc::new(Shared {
            tracker: Mutex::default(),
            generation: AtomicU64::new(0),
            state: None,
            txn: None,
            rewind: AtomicBool::new(false),
        }));
        let s = shared.as_ref().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition("t", p);
        }
        s.assign(&tpl);
        let mut bufs = Bufs {
            bufs: HashMap::new(),
            total: 0,
            bytes: 0,
            limits: crate::sources::BatchLimits {
                max_records: 4,
                max_bytes: 1 << 20,
                flush_interval: Duration::from_secs(60),
            },
            epochs: None,
            generation: 0,
        };
        let tp = |p| (Arc::<str>::from("t"), p);
        bufs.refresh(&shared);
        // Interleaved partitions: each fills its own buffer.
        let mut o = 100;
        let mut push = |bufs: &mut Bufs, p: i32| {
            o += 1;
            bufs.push(&tp(p), o, Ok(Record::new("x")))
        };
        for p in [0, 1, 0, 0] {
            assert_eq!(push(&mut bufs, p), None);
        }
        assert_eq!(push(&mut bufs, 0), Some(tp(0)), "p0 is full");
        let b = bufs.take(&tp(0)).unwrap();
        assert_eq!((b.records.len(), b.next, b.epoch), (4, 106, 1));
        // Together the buffers may hold two batches; then the fullest goes.
        for p in [1, 1, 2, 2, 0, 0] {
            assert_eq!(push(&mut bufs, p), None);
        }
        assert_eq!(push(&mut bufs, 3), Some(tp(1)), "8 buffered: the fullest");
        assert_eq!(bufs.take(&tp(1)).unwrap().records.len(), 3);
        // p2 is revoked and assigned again: what was read under the old assignment is dropped
        // (nothing of it was acknowledged; it is read again from the committed offset).
        s.forget(&[tp(2)]);
        let mut again = TopicPartitionList::new();
        again.add_partition("t", 2);
        s.assign(&again);
        bufs.refresh(&shared);
        assert!(!bufs.bufs.contains_key(&tp(2)));
        assert_eq!(push(&mut bufs, 2), None);
        assert_eq!(bufs.bufs[&tp(2)].epoch, 2, "read under the new assignment");
        assert_eq!(bufs.total, bufs.bufs.values().map(Buf::len).sum::<usize>());
    }
}
