//! `[state] changelog_topic`: the Kafka side of durable state following its partition.
//!
//! Every checkpoint of input partition `p` appends the keys it changed to partition `p` of a
//! compacted changelog topic, followed by a *marker* holding the input position, before the
//! offsets are committed; an instance that is assigned `p` replays that partition of the
//! changelog into its local state file first (see [`super::durable`] and `docs/state.md`).
//!
//! This module is only the Kafka I/O: creating or checking the topic, appending a checkpoint's
//! records and waiting for their delivery, and reading a range back.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Kafka's default `delete.retention.ms` (one day).
const DEFAULT_TOMBSTONE_MS: u64 = 24 * 3600 * 1000;

/// How long a checkpoint may wait for its records to be delivered, and a restore for the broker.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The settings of the source's consumer that also apply to the changelog's clients
/// (connection, security, debugging), by key prefix.
const SHARED_SETTINGS: &[&str] = &[
    "bootstrap.servers",
    "security.",
    "sasl.",
    "ssl.",
    "client.",
    "socket.",
    "broker.",
    "reconnect.",
    "debug",
];

/// One partition's part of a checkpoint: changed keys (`None`: deleted), then the marker.
pub struct Append {
    pub partition: i32,
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub marker: (Vec<u8>, Vec<u8>),
}

/// A connected changelog topic.
pub struct Changelog {
    topic: String,
    /// Connection settings, to recreate the producer after a fatal error.
    base: ClientConfig,
    producer: std::sync::Mutex<FutureProducer>,
    reader: std::sync::Mutex<BaseConsumer>,
    partitions: AtomicI32,
    /// The topic's `delete.retention.ms` (ms): how long compaction keeps a deletion readable.
    /// Read in the background (Kafka's default until then).
    tombstone_retention: Arc<AtomicU64>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Changelog({}, {} partitions)",
            self.topic,
            self.partitions.load(Ordering::Relaxed)
        )
    }
}

fn producer(base: &ClientConfig) -> anyhow::Result<FutureProducer> {
    base.clone()
        .set("enable.idempotence", "true")
        // A gap in a partition (a message lost while later ones were written) is a fatal error
        // rather than a silent hole before a marker.
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
        .create()
        .context("cannot create the changelog producer")
}

impl Changelog {
    /// Connects to `topic` on the cluster of `source` (the source consumer's settings; only
    /// connection and security ones are used), creating it compacted with as many partitions as
    /// the largest of `inputs` if it does not exist.
    pub fn connect(source: &ClientConfig, topic: &str, inputs: &[String]) -> anyhow::Result<Self> {
        let mut base = ClientConfig::new();
        for (k, v) in source.config_map() {
            if SHARED_SETTINGS.iter().any(|p| k.starts_with(p)) {
                base.set(k, v);
            }
        }
        base.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
        let producer = producer(&base)?;
        let reader: BaseConsumer = base
            .clone()
            .set("group.id", "weir-state-restore")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("cannot create the changelog reader")?;

        let needed = inputs
            .iter()
            .map(|t| partition_count(producer.client(), t))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let admin: AdminClient<DefaultClientContext> = base
            .create()
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
        Ok(Changelog {
            topic: topic.to_string(),
            tombstone_retention,
            base,
            producer: std::sync::Mutex::new(producer),
            reader: std::sync::Mutex::new(reader),
            partitions: AtomicI32::new(partitions),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How long a deletion stays readable in the changelog (`delete.retention.ms`; Kafka's
    /// default when it cannot be read). A file that last caught up longer ago than this may
    /// have missed deletions, so it is replayed from the start.
    pub fn tombstone_retention(&self) -> Duration {
        Duration::from_millis(self.tombstone_retention.load(Ordering::Relaxed))
    }

    /// Input partition `p` has changelog partition `p` (read the topic's partitions again if
    /// the input grew).
    fn check_partition(&self, p: i32) -> anyhow::Result<()> {
        if p < self.partitions.load(Ordering::Relaxed) {
            return Ok(());
        }
        // (The reader's client: `append` holds the producer.)
        let n = {
            let reader = self.reader.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Appends each partition's records then its marker and waits until every one of them is
    /// delivered or failed; returns, per append, its marker's offset or why it failed. A marker
    /// is sent only after all its records were queued, and an append is `Ok` only if every one
    /// of its records was delivered. Nothing sent is left in flight when this returns.
    pub fn append(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
        let mut producer = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        // Per append: its futures (the marker's last) or the error that stopped it.
        let mut sent: Vec<(Vec<DeliveryFuture>, Option<anyhow::Error>)> = Vec::new();
        for a in appends {
            let mut futures = Vec::with_capacity(a.records.len() + 1);
            let r = self.check_partition(a.partition).and_then(|()| {
                for (k, v) in &a.records {
                    futures.push(self.send(&producer, a.partition, k, v.as_deref())?);
                }
                futures.push(self.send(&producer, a.partition, &a.marker.0, Some(&a.marker.1))?);
                Ok(())
            });
            sent.push((futures, r.err()));
        }
        let results: Vec<anyhow::Result<i64>> = sent
            .into_iter()
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
            .collect();
        if let Some(e) = producer.client().fatal_error() {
            tracing::error!(error = ?e, "changelog producer: fatal error; creating a new one");
            match self::producer(&self.base) {
                Ok(p) => *producer = p,
                Err(e) => tracing::error!("{e:#}"),
            }
        }
        results
    }

    fn send(
        &self,
        producer: &FutureProducer,
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

    /// The (low, high) offsets of a changelog partition.
    pub fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)> {
        self.check_partition(partition)?;
        let r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        r.fetch_watermarks(&self.topic, partition, TIMEOUT)
            .with_context(|| format!("cannot read the offsets of changelog {:?}", self.topic))
    }

    /// Calls `f(offset, key, value)` for every record of `partition` in `[from, to)`.
    pub fn read(
        &self,
        partition: i32,
        from: i64,
        to: i64,
        mut f: impl FnMut(i64, &[u8], Option<&[u8]>) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        if from >= to {
            return Ok(0);
        }
        let r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
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
        Ok(Err((e, _))) => Err(anyhow!("a changelog record was not delivered: {e}")),
        Err(_) => Err(anyhow!("the changelog producer went away")),
    }
}
