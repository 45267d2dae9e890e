//! `kafka`: a consumer-group member reading one or more topics, committing offsets only for records
//! every sink has acknowledged.
//!
//! ## Delivery
//! * Auto-commit and the automatic offset store are off. Each batch the source emits remembers, per
//!   partition it holds records of, the offset after its last record; a per-partition
//!   [`OrderedAcks`] releases an offset only once every earlier batch of that partition was
//!   delivered (to the main, filtered or failure sink, whichever each record went to). Released
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
//! ## Durable keyed state (design note; not built yet)
//! Transform state (WASM keyed state) is to be checkpointed *with* these offsets: the state store
//! is partitioned like the input (one namespace per topic-partition), and a checkpoint of a
//! partition's state is written before the offset it corresponds to is committed (the commit
//! carries the checkpoint id in its metadata). On assignment a member loads the partition's last
//! checkpoint whose id matches the committed metadata (or rebuilds it from a compacted changelog
//! topic); on revocation it checkpoints and commits together. Replayed records after a crash then
//! update state that already reflects them only up to the checkpoint, so transforms must apply
//! updates idempotently (keyed by event id) to be exactly-once in state.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use super::{EmitAcks, Source, SourceConfig, SourceContext, SourceType};
use crate::ack::{Ack, AckHandler, OrderedAcks};
use crate::config::{ByteSize, ConfigError, Duration as CfgDuration, Origin};
use crate::record::{Failed, FailureKind, Meta, Record};

/// ```toml
/// [source]
/// type = "kafka"
/// bootstrap_servers = "broker1:9092,broker2:9092"
/// topics = ["enriched-good"]
/// group_id = "weir-media"
/// group_instance_id = "weir-1"   # optional: static membership (no rebalance on a quick restart)
/// start = "earliest"             # or "latest": where a group without commits starts
/// commit = "acknowledged"        # or "on-read" (no delivery guarantee; benchmarks)
/// commit_interval = "1s"
/// revoke_wait = "10s"            # on revoke, wait this long for in-flight batches
/// shutdown_wait = "30s"          # on shutdown, wait this long for in-flight batches
/// prefetch = "2 MiB"             # bytes librdkafka may prefetch
///
/// [source.options]               # any librdkafka consumer setting, applied last
/// "security.protocol" = "SASL_SSL"
/// "sasl.mechanism" = "PLAIN"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topics: Vec<String>,
    pub group_id: String,
    #[serde(default)]
    pub group_instance_id: Option<String>,
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
    pub options: BTreeMap<String, String>,
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
fn default_prefetch() -> ByteSize {
    ByteSize(2 << 20)
}

/// Where a group without committed offsets starts.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Earliest,
    Latest,
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
        self.client_config()
            .create_native_config()
            .map(drop)
            .map_err(|e| origin.error("options", format!("librdkafka rejected the settings: {e}")))
    }

    fn build(&self) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(KafkaSource { cfg: self.clone() }))
    }
}

impl KafkaConfig {
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        let manual = self.commit == Commit::Acknowledged;
        let kib = (self.prefetch.0 / 1024).max(1);
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("enable.auto.commit", (!manual).to_string())
            .set("enable.auto.offset.store", (!manual).to_string())
            .set(
                "auto.offset.reset",
                match self.start {
                    Start::Earliest => "earliest",
                    Start::Latest => "latest",
                },
            )
            .set("queued.max.messages.kbytes", kib.to_string())
            .set("queued.min.messages", "1000")
            .set("enable.partition.eof", "false")
            .set_log_level(RDKafkaLogLevel::Warning);
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }
}

/// librdkafka's logs and errors, into `tracing`.
pub(crate) fn log_kafka(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
        Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{msg}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
    }
}

type Tp = (Arc<str>, i32);

/// Positions of one assigned partition.
struct Part {
    /// Bumped on every assignment, so acks of batches read under an earlier assignment are ignored.
    epoch: u64,
    acks: OrderedAcks<i64>,
    /// The next offset to read that is safe to commit, and the last one committed.
    ready: Option<i64>,
    committed: Option<i64>,
}

struct InFlight {
    /// (partition, epoch, sequence in that partition's `OrderedAcks`).
    parts: Vec<(Tp, u64, u64)>,
    /// The pipeline's own counting ack for this batch.
    counting: Ack,
}

#[derive(Default)]
struct Tracker {
    parts: HashMap<Tp, Part>,
    batches: HashMap<u64, InFlight>,
    /// Per partition, the offset after the last record of the batch being filled.
    staged: Vec<(Tp, i64)>,
    next_token: u64,
    epoch: u64,
}

/// State shared by the source task, the ack handler (sink tasks) and the rebalance callback.
struct Shared {
    tracker: Mutex<Tracker>,
    counting: Arc<dyn EmitAcks>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        let mut t = self.lock();
        t.epoch += 1;
        let epoch = t.epoch;
        for e in tpl.elements() {
            let tp: Tp = (Arc::from(e.topic()), e.partition());
            t.parts.entry(tp).or_insert_with(|| Part {
                epoch,
                acks: OrderedAcks::new(),
                ready: None,
                committed: None,
            });
        }
    }

    /// Batches in flight that hold records of these partitions (all partitions if `None`).
    fn in_flight(&self, only: Option<&[Tp]>) -> usize {
        let t = self.lock();
        match only {
            None => t.batches.len(),
            Some(tps) => tps
                .iter()
                .filter_map(|tp| t.parts.get(tp))
                .map(|p| p.acks.in_flight())
                .sum(),
        }
    }

    /// Offsets safe to commit; `all`: also those already committed (for a final, sync commit).
    fn committable(&self, only: Option<&[Tp]>, all: bool) -> TopicPartitionList {
        let mut t = self.lock();
        let mut tpl = TopicPartitionList::new();
        for (tp, p) in t.parts.iter_mut() {
            if only.is_some_and(|o| !o.contains(tp)) {
                continue;
            }
            if let Some(off) = p.ready {
                if all || p.committed != Some(off) {
                    let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(off));
                    p.committed = Some(off);
                }
            }
        }
        tpl
    }

    fn forget(&self, tps: &[Tp]) {
        let mut t = self.lock();
        for tp in tps {
            t.parts.remove(tp);
        }
    }
}

struct Acks(Arc<Shared>);

impl EmitAcks for Acks {
    fn ack_for(&self, records: usize) -> Ack {
        let counting = self.0.counting.ack_for(records);
        let mut t = self.0.lock();
        let token = t.next_token;
        t.next_token += 1;
        let staged = std::mem::take(&mut t.staged);
        let mut parts = Vec::with_capacity(staged.len());
        for (tp, next) in staged {
            if let Some(p) = t.parts.get_mut(&tp) {
                let seq = p.acks.push(next);
                parts.push((tp, p.epoch, seq));
            }
        }
        t.batches.insert(token, InFlight { parts, counting });
        drop(t);
        Ack::new(token, self.0.clone() as Arc<dyn AckHandler>)
    }
}

impl AckHandler for Shared {
    fn acked(&self, token: u64, delivered: bool) {
        let mut t = self.lock();
        let Some(b) = t.batches.remove(&token) else {
            return;
        };
        for (tp, epoch, seq) in &b.parts {
            if let Some(p) = t.parts.get_mut(tp).filter(|p| p.epoch == *epoch) {
                p.acks.ack(*seq, delivered);
                if let Some(off) = p.acks.committable() {
                    p.ready = Some(off);
                }
                if p.acks.blocked_by_failure() {
                    tracing::error!(topic = %tp.0, partition = tp.1, "a batch was not delivered: offsets of this partition stay where they are");
                }
            }
        }
        drop(t);
        if delivered {
            b.counting.delivered();
        }
    }
}

/// The consumer's context: routes librdkafka logs to `tracing` and commits on revoke.
struct Context {
    shared: Option<Arc<Shared>>,
    revoke_wait: Duration,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log_kafka(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (Some(shared), Rebalance::Revoke(tpl)) = (&self.shared, rebalance) else {
            if let Rebalance::Error(e) = rebalance {
                tracing::warn!(error = %e, "rebalance error");
            }
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
            shared.forget(&tps);
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
        shared.forget(&tps);
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "commit on revoke failed");
            }
        }
        tracing::info!(
            partitions = tps.len(),
            committed = offsets.count(),
            still_in_flight = pending,
            "partitions revoked"
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if let Some(shared) = &self.shared {
                shared.assign(tpl);
            }
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

struct KafkaSource {
    cfg: KafkaConfig,
}

#[async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let manual = cfg.commit == Commit::Acknowledged;
        let shared = manual.then(|| {
            let counting = ctx.emitter.replace_acks(Arc::new(NoAcks));
            let shared = Arc::new(Shared {
                tracker: Mutex::default(),
                counting,
            });
            ctx.emitter.replace_acks(Arc::new(Acks(shared.clone())));
            shared
        });
        let consumer: StreamConsumer<Context> = cfg
            .client_config()
            .create_with_context(Context {
                shared: shared.clone(),
                revoke_wait: cfg.revoke_wait.0,
            })
            .map_err(|e| anyhow::anyhow!("kafka source: cannot create the consumer: {e}"))?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| anyhow::anyhow!("kafka source: cannot subscribe to {topics:?}: {e}"))?;
        tracing::info!(topics = ?cfg.topics, group = %cfg.group_id, "kafka source subscribed");

        let mut names: Vec<Arc<str>> = Vec::new();
        let mut staged: Vec<(Tp, i64)> = Vec::new();
        let mut commit_tick = tokio::time::interval(cfg.commit_interval.0);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let emitter = &mut ctx.emitter;
        let stage = |staged: &mut Vec<(Tp, i64)>| {
            if let Some(s) = &shared {
                s.lock().staged.append(staged);
            } else {
                staged.clear();
            }
        };
        let mut errors = 0u32;
        loop {
            let deadline = emitter.deadline();
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                m = consumer.recv() => {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            errors += 1;
                            tracing::warn!(error = %e, "kafka source: consume error");
                            tokio::time::sleep(crate::pipeline::backoff(errors.min(6))).await;
                            continue;
                        }
                    };
                    errors = 0;
                    let topic = match names.iter().find(|n| &***n == m.topic()) {
                        Some(n) => n.clone(),
                        None => {
                            names.push(Arc::from(m.topic()));
                            names.last().expect("just pushed").clone()
                        }
                    };
                    let (partition, offset) = (m.partition(), m.offset());
                    match staged.iter_mut().find(|(tp, _)| tp.1 == partition && tp.0 == topic) {
                        Some(s) => s.1 = offset + 1,
                        None => staged.push(((topic.clone(), partition), offset + 1)),
                    }
                    let payload = m.payload().unwrap_or_default();
                    let meta = Meta {
                        topic: Some(topic),
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
                    let full = if payload.len() > ctx.max_record_bytes {
                        emitter.push_failed(Failed {
                            record,
                            kind: FailureKind::Oversized {
                                actual: payload.len(),
                                limit: ctx.max_record_bytes,
                            },
                            component: "kafka".into(),
                            reason: "message longer than limits.max_record_bytes".into(),
                        })
                    } else {
                        emitter.push(record)
                    };
                    drop(m);
                    if full {
                        stage(&mut staged);
                        emitter.flush().await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)), if deadline.is_some() => {
                    stage(&mut staged);
                    emitter.flush().await?;
                }
                _ = commit_tick.tick() => {
                    if let Some(s) = &shared {
                        let tpl = s.committable(None, false);
                        if tpl.count() > 0 {
                            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                                tracing::warn!(error = %e, "kafka source: commit failed");
                            }
                        }
                    }
                }
            }
        }

        // Shutdown: send what was read, wait for it to be acknowledged, commit, leave the group.
        stage(&mut staged);
        emitter.flush().await?;
        if let Some(s) = &shared {
            let deadline = Instant::now() + cfg.shutdown_wait.0;
            while s.in_flight(None) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let left = s.in_flight(None);
            if left > 0 {
                tracing::warn!(batches = left, "kafka source: shutdown_wait passed with batches unacknowledged; they will be read again");
            }
            let tpl = s.committable(None, true);
            if tpl.count() > 0 {
                consumer
                    .commit(&tpl, CommitMode::Sync)
                    .map_err(|e| anyhow::anyhow!("kafka source: final commit failed: {e}"))?;
            }
            tracing::info!(
                partitions = tpl.count(),
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

/// Stands in while the emitter's acks are swapped (and in tests).
struct NoAcks;
impl EmitAcks for NoAcks {
    fn ack_for(&self, _records: usize) -> Ack {
        Ack::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_commit_per_partition_only_past_delivered_batches() {
        let shared = Arc::new(Shared {
            tracker: Mutex::default(),
            counting: Arc::new(NoAcks),
        });
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition("t", 0);
        tpl.add_partition("t", 1);
        shared.assign(&tpl);
        let acks = Acks(shared.clone());
        let tp = |p| (Arc::<str>::from("t"), p);
        // Batch A: p0 up to 10, p1 up to 5. Batch B: p0 up to 20.
        shared.lock().staged = vec![(tp(0), 10), (tp(1), 5)];
        let a = acks.ack_for(2);
        shared.lock().staged = vec![(tp(0), 20)];
        let b = acks.ack_for(1);
        b.delivered();
        assert_eq!(
            shared.committable(None, false).count(),
            0,
            "A still pending"
        );
        a.delivered();
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
        shared.lock().staged = vec![(tp(1), 9)];
        drop(acks.ack_for(1));
        assert_eq!(shared.committable(None, false).count(), 0);
        assert_eq!(shared.in_flight(None), 0);
    }
}
