//! `[state] changelog_topic`: the Kafka side of durable state following its partition.
//!
//! Every checkpoint of input partition `p` appends the keys it changed to partition `p` of a
//! compacted changelog topic, followed by a *marker* holding the input position, before the
//! offsets are committed; an instance that is assigned `p` replays that partition of the
//! changelog into its local state file first (see [`crate::state::disk`] and `docs/state.md`).
//!
//! This module is only the Kafka I/O behind [`crate::state::Changelog`]: creating or checking
//! the topic on the source's cluster, appending a checkpoint's records and waiting for their
//! delivery, and reading a range back; and [`attach`], which the Kafka source calls to connect
//! the changelog its state backend asks for.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::txn::Transactions;
use super::ClientLog;
use crate::state::changelog::{Append, Changelog, Visit};
use crate::state::Checkpointed;

/// Kafka's default `delete.retention.ms` (one day).
const DEFAULT_TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

/// How long a checkpoint may wait for its records to be delivered, and a restore for the broker.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Connects the changelog `state` asks for (if any) on the cluster of the source's consumer
/// (`consumer`: its settings; only the connection and security ones are used), for the input
/// topics `inputs`. Blocking. Called once, before the first assignment.
///
/// `txn`: exactly-once, the pipeline's transactions: checkpoints append inside them
/// ([`Changelog::append_in_transaction`]).
pub fn attach(
    state: &dyn Checkpointed,
    consumer: &ClientConfig,
    inputs: &[String],
    txn: Option<Arc<Transactions>>,
) -> anyhow::Result<()> {
    if let Some(topic) = state.changelog_name() {
        let mut changelog = KafkaChangelog::connect(consumer, topic, inputs)?;
        changelog.txn = txn;
        state.attach_changelog(Box::new(changelog))?;
    }
    Ok(())
}

/// A connected changelog topic.
pub struct KafkaChangelog {
    topic: String,
    /// Connection settings, to recreate the producer after a fatal error.
    base: ClientConfig,
    producer: std::sync::Mutex<FutureProducer<ClientLog>>,
    /// Reads committed records only (read_committed).
    reader: std::sync::Mutex<BaseConsumer<ClientLog>>,
    /// Asks for the log end offsets, open transactions included (read_uncommitted).
    probe: BaseConsumer<ClientLog>,
    /// Exactly-once: the pipeline's transactions, which checkpoints append inside.
    txn: Option<Arc<Transactions>>,
    partitions: AtomicI32,
    /// The topic's `delete.retention.ms` (ms): how long compaction keeps a deletion readable.
    /// Read in the background (Kafka's default until then).
    tombstone_retention: Arc<AtomicU64>,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Changelog({}, {} partitions)",
            self.topic,
            self.partitions.load(Ordering::Relaxed)
        )
    }
}

fn producer(base: &ClientConfig) -> anyhow::Result<FutureProducer<ClientLog>> {
    base.clone()
        .set("enable.idempotence", "true")
        // A gap in a partition (a message lost while later ones were written) is a fatal error
        // rather than a silent hole before a marker.
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
        .create_with_context(ClientLog::default())
        .context("cannot create the changelog producer")
}

impl KafkaChangelog {
    /// Connects to `topic` on the cluster of `source` (the source consumer's settings; only
    /// connection and security ones are used), creating it compacted with as many partitions as
    /// the largest of `inputs` if it does not exist.
    pub fn connect(source: &ClientConfig, topic: &str, inputs: &[String]) -> anyhow::Result<Self> {
        let base = super::connection_settings(source);
        let producer = producer(&base)?;
        let reader: BaseConsumer<ClientLog> = base
            .clone()
            .set("group.id", "weir-state-restore")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // Records of aborted transactions (exactly-once checkpoints) are never applied.
            .set("isolation.level", "read_committed")
            // A restore reads to the end of the partition, which the broker only says once a
            // fetch came back short: do not let it hold that fetch (500 ms by default) for
            // data that is not coming. Assignments restore partition after partition, inside
            // the group's session.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(ClientLog::default())
            .context("cannot create the changelog reader")?;
        let probe: BaseConsumer<ClientLog> = base
            .clone()
            .set("group.id", "weir-state-restore")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .create_with_context(ClientLog::default())
            .context("cannot create the changelog reader")?;

        let needed = inputs
            .iter()
            .map(|t| partition_count(producer.client(), t))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let admin: AdminClient<ClientLog> = base
            .create_with_context(ClientLog::default())
            .context("cannot create the admin client for the changelog topic")?;
        let mut partitions = partition_count(producer.client(), topic).unwrap_or(0);
        if partitions == 0 {
            let new = NewTopic::new(topic, needed, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "compact");
            let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
            let created = futures::executor::block_on(admin.create_topics([&new], &opts));
            match created.as_deref() {
                Ok([Ok(_)]) => {
                    tracing::info!(
                        topic,
                        partitions = needed,
                        "changelog topic created (compacted)"
                    )
                }
                other => {
                    tracing::warn!(topic, result = ?other, "cannot create the changelog topic")
                }
            }
            let start = Instant::now();
            while partitions == 0 && start.elapsed() < TIMEOUT {
                std::thread::sleep(Duration::from_millis(200));
                partitions = partition_count(producer.client(), topic).unwrap_or(0);
            }
            if partitions == 0 {
                bail!(
                    "the changelog topic {topic:?} does not exist and could not be created: \
                     create it with cleanup.policy=compact and {needed} partitions"
                );
            }
        }
        if partitions < needed {
            bail!(
                "the changelog topic {topic:?} has {partitions} partitions; the input topics \
                 {inputs:?} need {needed} (one per input partition)"
            );
        }
        let tombstone_retention = Arc::new(AtomicU64::new(DEFAULT_TOMBSTONE_MS));
        {
            let (retention, topic) = (tombstone_retention.clone(), topic.to_string());
            std::thread::spawn(move || {
                let described = futures::executor::block_on(admin.describe_configs(
                    [&ResourceSpecifier::Topic(&topic)],
                    &AdminOptions::new().request_timeout(Some(TIMEOUT)),
                ));
                let config = described.ok().and_then(|r| r.into_iter().next()?.ok());
                let value = |k: &str| config.as_ref()?.get(k)?.value.clone();
                if let Some(policy) = value("cleanup.policy").filter(|p| !p.contains("compact")) {
                    tracing::error!(
                        topic,
                        policy,
                        "the changelog topic is not compacted: old state \
                        will be deleted by retention and restores will be incomplete; set \
                        cleanup.policy=compact"
                    );
                }
                let ms = value("delete.retention.ms").and_then(|v| v.parse().ok());
                match ms {
                    Some(ms) => retention.store(ms, Ordering::Relaxed),
                    None => tracing::debug!(
                        topic,
                        "changelog: delete.retention.ms unknown; assuming Kafka's default"
                    ),
                }
            });
        }
        Ok(KafkaChangelog {
            topic: topic.to_string(),
            tombstone_retention,
            base,
            producer: std::sync::Mutex::new(producer),
            reader: std::sync::Mutex::new(reader),
            probe,
            txn: None,
            partitions: AtomicI32::new(partitions),
        })
    }

    /// Input partition `p` has changelog partition `p` (read the topic's partitions again if
    /// the input grew).
    fn check_partition(&self, p: i32) -> anyhow::Result<()> {
        if p < self.partitions.load(Ordering::Relaxed) {
            return Ok(());
        }
        // (The reader's client: `append` holds the producer.)
        let n = {
            let reader = self.reader.lock().expect("reader lock poisoned");
            partition_count(reader.client(), &self.topic)?
        };
        self.partitions.store(n, Ordering::Relaxed);
        if p >= n {
            bail!(
                "input partition {p} has no partition in the changelog topic {:?} ({n} \
                 partitions): add partitions to the changelog as the input grows",
                self.topic
            );
        }
        Ok(())
    }

    fn send(
        &self,
        producer: &FutureProducer<ClientLog>,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> anyhow::Result<DeliveryFuture> {
        let start = Instant::now();
        loop {
            let mut r = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .key(key);
            if let Some(v) = value {
                r = r.payload(v);
            }
            match producer.send_result(r) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if start.elapsed() < TIMEOUT =>
                {
                    // The producer's own thread delivers; wait for room.
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("cannot append to the changelog {:?}: {e}", self.topic),
            }
        }
    }
}

impl KafkaChangelog {
    /// Appends each partition's records then its marker with `producer` and waits until every
    /// one of them is delivered or failed (see [`Changelog::append`]).
    fn append_with(
        &self,
        producer: &FutureProducer<ClientLog>,
        appends: &[Append],
    ) -> Vec<anyhow::Result<i64>> {
        // Per append: its futures (the marker's last) or the error that stopped it.
        let mut sent: Vec<(Vec<DeliveryFuture>, Option<anyhow::Error>)> = Vec::new();
        for a in appends {
            let mut futures = Vec::with_capacity(a.records.len() + 1);
            let r = self.check_partition(a.partition).and_then(|()| {
                for (k, v) in &a.records {
                    futures.push(self.send(producer, a.partition, k, v.as_deref())?);
                }
                futures.push(self.send(producer, a.partition, &a.marker.0, Some(&a.marker.1))?);
                Ok(())
            });
            sent.push((futures, r.err()));
        }
        sent.into_iter()
            .map(|(futures, err)| {
                let mut first = err;
                let mut last = None;
                for f in futures {
                    match wait(f) {
                        Ok(o) => last = Some(o),
                        Err(e) => {
                            first.get_or_insert(e);
                        }
                    }
                }
                match (first, last) {
                    (Some(e), _) => Err(e),
                    (None, Some(o)) => Ok(o),
                    (None, None) => Err(anyhow!("nothing was appended")),
                }
            })
            .collect()
    }
}

impl Changelog for KafkaChangelog {
    fn name(&self) -> &str {
        &self.topic
    }

    /// `delete.retention.ms` of the topic (Kafka's default when it cannot be read).
    fn tombstone_retention(&self) -> Duration {
        Duration::from_millis(self.tombstone_retention.load(Ordering::Relaxed))
    }

    /// Appends each partition's records then its marker and waits until every one of them is
    /// delivered or failed; returns, per append, its marker's offset or why it failed. A marker
    /// is sent only after all its records were queued, and an append is `Ok` only if every one
    /// of its records was delivered. Nothing sent is left in flight when this returns.
    fn append(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
        let mut producer = self.producer.lock().expect("producer lock poisoned");
        let results = self.append_with(&producer, appends);
        if let Some(e) = producer.client().fatal_error() {
            tracing::error!(error = ?e, "changelog producer: fatal error; creating a new one");
            match self::producer(&self.base) {
                Ok(p) => *producer = p,
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        results
    }

    fn transactional(&self) -> bool {
        self.txn.is_some()
    }

    /// Through the transactional producer, inside the open transaction.
    fn append_in_transaction(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
        match &self.txn {
            Some(txn) if txn.poisoned() => appends
                .iter()
                .map(|_| Err(anyhow!("the transaction can only be aborted")))
                .collect(),
            Some(txn) => self.append_with(txn.producer(), appends),
            None => appends
                .iter()
                .map(|_| Err(anyhow!("the changelog is not transactional")))
                .collect(),
        }
    }

    /// The (low, high) offsets of a changelog partition (high: the log end, records of open
    /// transactions included).
    fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.check_partition(partition)?;
        self.probe
            .fetch_watermarks(&self.topic, partition, TIMEOUT)
            .with_context(|| format!("cannot read the offsets of changelog {:?}", self.topic))
    }

    /// The last stable offset: the high watermark a read_committed client is given.
    fn stable_end(&self, partition: i32) -> anyhow::Result<i64> {
        self.check_partition(partition)?;
        let r = self.reader.lock().expect("reader lock poisoned");
        Ok(r.fetch_watermarks(&self.topic, partition, TIMEOUT)
            .with_context(|| format!("cannot read the offsets of changelog {:?}", self.topic))?
            .1)
    }

    /// Calls `f(offset, key, value)` for every committed record of `partition` in `[from,
    /// to)`.
    fn read(&self, partition: i32, from: i64, to: i64, f: &mut Visit<'_>) -> anyhow::Result<usize> {
        if from >= to {
            return Ok(0);
        }
        let r = self.reader.lock().expect("reader lock poisoned");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from))?;
        r.assign(&tpl)?;
        let mut n = 0;
        let mut progress = Instant::now();
        let result = loop {
            if progress.elapsed() > TIMEOUT {
                break Err(anyhow!(
                    "reading changelog {:?} partition {partition}: no progress for {TIMEOUT:?}",
                    self.topic
                ));
            }
            match r.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    progress = Instant::now();
                    if m.offset() >= to {
                        break Ok(n);
                    }
                    if let Err(e) = f(m.offset(), m.key().unwrap_or_default(), m.payload()) {
                        break Err(e);
                    }
                    n += 1;
                    if m.offset() + 1 >= to {
                        break Ok(n);
                    }
                }
                // (The end of what is committed: control records and aborted records are
                // never delivered.)
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(n),
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, partition, error = %e, "reading the changelog")
                }
                None => {}
            }
        };
        let _ = r.unassign();
        result
    }
}

fn partition_count<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
) -> anyhow::Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), TIMEOUT)
        .with_context(|| format!("cannot read the metadata of topic {topic:?}"))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32))
}

fn wait(f: DeliveryFuture) -> anyhow::Result<i64> {
    match futures::executor::block_on(f) {
        Ok(Ok(d)) => Ok(d.offset),
        Ok(Err((e, _))) => {
            Err(anyhow::Error::new(e).context("a changelog record was not delivered"))
        }
        Err(_) => Err(anyhow!("the changelog producer went away")),
    }
}

#[cfg(test)]
mod tests {
    //! The disk state backend with its changelog on Kafka: librdkafka's mock cluster (the real
    //! protocol, in process).
    use super::*;
    use crate::record::PartitionId;
    use crate::state::{
        At, CheckpointFailed, DiskState, StateBackend, StateScope, StateStore, Write,
    };
    use std::sync::Arc;

    fn pid(p: i32) -> PartitionId {
        PartitionId {
            topic: "in".into(),
            partition: p,
        }
    }

    fn scope(t: &str, p: i32) -> StateScope {
        StateScope {
            transform: t.into(),
            partition: pid(p),
        }
    }

    fn put(k: &str, v: &str) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
            expires_at_ms: None,
        }
    }

    fn at(epoch: u64, end: u64) -> Option<At> {
        Some(At { epoch, end })
    }

    fn get(s: &Arc<dyn StateStore>, k: &str) -> Option<String> {
        s.get(k.as_bytes(), 0)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    /// librdkafka's mock cluster (the real protocol, in process) with an input topic "in" and a
    /// changelog "cl" of `partitions` each, and the settings to reach it.
    fn kafka(
        partitions: i32,
    ) -> (
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
        rdkafka::ClientConfig,
    ) {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("in", partitions, 1).unwrap();
        mock.create_topic("cl", partitions, 1).unwrap();
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", mock.bootstrap_servers());
        (mock, client)
    }

    /// Against librdkafka's mock cluster (the real protocol, in process).
    #[test]
    fn state_follows_its_partition_through_the_changelog() {
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
        let (_mock, client) = kafka(2);
        let dir = tempfile::tempdir().unwrap();
        let instance = |name: &str| {
            let st = DiskState::with_changelog(&dir.path().join(name), Some("cl".into()));
            attach(&*st, &client, &["in".to_string()], None).unwrap();
            st
        };

        // A processes p0 and checkpoints twice; p1 once.
        let a = instance("a.redb");
        a.assign(&pid(0), 1, None).unwrap();
        a.assign(&pid(1), 1, None).unwrap();
        let s = a.open(&scope("t", 0)).unwrap();
        s.commit(vec![put("a", "1"), put("gone", "x")], at(1, 10), 0)
            .unwrap();
        a.checkpoint(&[(pid(0), 10)]).unwrap();
        s.commit(vec![put("a", "2"), put("b", "1")], at(1, 20), 0)
            .unwrap();
        s.commit(
            vec![Write {
                key: b"gone".to_vec(),
                value: None,
                expires_at_ms: None,
            }],
            at(1, 20),
            0,
        )
        .unwrap();
        a.open(&scope("t", 1))
            .unwrap()
            .commit(vec![put("a", "p1")], at(1, 5), 0)
            .unwrap();
        a.checkpoint(&[(pid(0), 20), (pid(1), 5)]).unwrap();
        // Not checkpointed: must not follow the partition.
        s.commit(vec![put("a", "3")], at(1, 30), 0).unwrap();

        // B, with an empty file, is assigned p0: it gets exactly the checkpointed state.
        let b = instance("b.redb");
        assert_eq!(
            b.assign(&pid(0), 1, None).unwrap(),
            Some(20),
            "resume position"
        );
        let sb = b.open(&scope("t", 0)).unwrap();
        assert_eq!(get(&sb, "a").as_deref(), Some("2"));
        assert_eq!(get(&sb, "b").as_deref(), Some("1"));
        assert_eq!(get(&sb, "gone"), None, "a deletion follows too");
        assert_eq!(get(&b.open(&scope("u", 0)).unwrap(), "a"), None);
        assert_eq!(b.assign(&pid(1), 1, None).unwrap(), Some(5));
        assert_eq!(
            get(&b.open(&scope("t", 1)).unwrap(), "a").as_deref(),
            Some("p1")
        );

        // A checkpoint interrupted by a crash: entries in the changelog without their marker.
        let p: BaseProducer = client.create().unwrap();
        let (k, v) = crate::state::disk::changelog_record("t", &pid(0), b"a", b"torn");
        p.send(BaseRecord::to("cl").partition(0).key(&k).payload(&v))
            .unwrap();
        p.flush(Duration::from_secs(10)).unwrap();
        let c = instance("c.redb");
        assert_eq!(c.assign(&pid(0), 1, None).unwrap(), Some(20));
        assert_eq!(
            get(&c.open(&scope("t", 0)).unwrap(), "a").as_deref(),
            Some("2"),
            "torn entry not applied"
        );
        // It was overwritten in the changelog: a later full replay and A's incremental one agree.
        let d = instance("d.redb");
        d.assign(&pid(0), 1, None).unwrap();
        assert_eq!(
            get(&d.open(&scope("t", 0)).unwrap(), "a").as_deref(),
            Some("2")
        );
        b.revoke(&pid(0));
        drop((a, s));
        let a = instance("a.redb");
        assert_eq!(a.assign(&pid(0), 2, None).unwrap(), Some(20));
        assert_eq!(
            get(&a.open(&scope("t", 0)).unwrap(), "a").as_deref(),
            Some("2")
        );

        // D moves p0 on; B gets it back: it catches up from where its file was.
        let sd = d.open(&scope("t", 0)).unwrap();
        sd.commit(vec![put("b", "2")], at(1, 40), 0).unwrap();
        d.checkpoint(&[(pid(0), 40)]).unwrap();
        d.revoke(&pid(0));
        assert_eq!(b.assign(&pid(0), 2, None).unwrap(), Some(40));
        let sb = b.open(&scope("t", 0)).unwrap();
        assert_eq!(
            (get(&sb, "a").as_deref(), get(&sb, "b").as_deref()),
            (Some("2"), Some("2"))
        );
    }

    /// A partition whose changes cannot be appended is not checkpointed; the others are.
    #[test]
    fn a_failed_append_holds_back_only_its_partition() {
        let (_mock, client) = kafka(2);
        let dir = tempfile::tempdir().unwrap();
        let st = DiskState::with_changelog(&dir.path().join("a.redb"), Some("cl".into()));
        attach(&*st, &client, &["in".to_string()], None).unwrap();
        // Partition 5 has no changelog partition (as if the input grew and the changelog not).
        for p in [0, 5] {
            st.assign(&pid(p), 1, None).unwrap_or_default();
            st.open(&scope("t", p))
                .unwrap()
                .commit(vec![put("k", "v")], at(1, 3), 0)
                .unwrap();
        }
        let e = st.checkpoint(&[(pid(0), 3), (pid(5), 3)]).unwrap_err();
        let failed = &e
            .downcast_ref::<CheckpointFailed>()
            .expect("per partition")
            .partitions;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, pid(5));
        assert!(
            failed[0].1.contains("no partition in the changelog"),
            "{}",
            failed[0].1
        );
        assert_eq!(st.checkpoint_of(&pid(0)).unwrap(), Some(3));
        assert_eq!(st.checkpoint_of(&pid(5)).unwrap(), None);
        assert_eq!(st.pending_writes(&pid(5)), 1, "kept for the next try");
        assert_eq!(st.pending_writes(&pid(0)), 0);
    }

    /// State written before the changelog was configured is seeded into it.
    #[test]
    fn an_empty_changelog_is_seeded_from_local_state() {
        let (_mock, client) = kafka(1);
        let dir = tempfile::tempdir().unwrap();
        {
            let old = DiskState::new(&dir.path().join("a.redb"));
            old.assign(&pid(0), 1, None).unwrap();
            old.open(&scope("t", 0))
                .unwrap()
                .commit(vec![put("k", "v")], at(1, 7), 0)
                .unwrap();
            old.checkpoint(&[(pid(0), 7)]).unwrap();
        }
        let a = DiskState::with_changelog(&dir.path().join("a.redb"), Some("cl".into()));
        attach(&*a, &client, &["in".to_string()], None).unwrap();
        assert_eq!(a.assign(&pid(0), 1, None).unwrap(), Some(7));
        let b = DiskState::with_changelog(&dir.path().join("b.redb"), Some("cl".into()));
        attach(&*b, &client, &["in".to_string()], None).unwrap();
        assert_eq!(b.assign(&pid(0), 1, None).unwrap(), Some(7));
        assert_eq!(
            get(&b.open(&scope("t", 0)).unwrap(), "k").as_deref(),
            Some("v")
        );
    }
}
