//! `[state] changelog_topic`: the Kafka side of durable state following its partition.
//!
//! Every checkpoint of input partition `p` appends the keys it changed to partition `p` of a
//! compacted changelog topic, followed by a *marker* holding the input position, before the
//! offsets are committed; an instance that is assigned `p` replays that partition of the
//! changelog into its local state file first (see [`super::durable`] and `docs/state.md`).
//!
//! This module is only the Kafka I/O: creating or checking the topic, appending a checkpoint's
//! records and waiting for their delivery, and reading a range back.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

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
    producer: FutureProducer,
    reader: std::sync::Mutex<BaseConsumer>,
    partitions: i32,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Changelog({}, {} partitions)",
            self.topic, self.partitions
        )
    }
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
        let producer: FutureProducer = base
            .clone()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("allow.auto.create.topics", "false")
            .set("message.timeout.ms", TIMEOUT.as_millis().to_string())
            .create()
            .context("cannot create the changelog producer")?;
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
            .map(|t| partition_count(&producer, t))
            .collect::<anyhow::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(1);
        let mut partitions = partition_count(&producer, topic).unwrap_or(0);
        if partitions == 0 {
            let admin: AdminClient<DefaultClientContext> = base
                .create()
                .context("cannot create the admin client for the changelog topic")?;
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
                partitions = partition_count(&producer, topic).unwrap_or(0);
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
        Ok(Changelog {
            topic: topic.to_string(),
            producer,
            reader: std::sync::Mutex::new(reader),
            partitions,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    fn check_partition(&self, p: i32) -> anyhow::Result<()> {
        if p >= self.partitions {
            bail!(
                "input partition {p} has no partition in the changelog topic {:?} ({} partitions)",
                self.topic,
                self.partitions
            );
        }
        Ok(())
    }

    /// Appends each partition's records then its marker, and waits until all are delivered;
    /// returns each marker's offset, in order.
    pub fn append(&self, appends: &[Append]) -> anyhow::Result<Vec<i64>> {
        let mut pending: std::collections::VecDeque<DeliveryFuture> = Default::default();
        let mut markers = Vec::with_capacity(appends.len());
        for a in appends {
            self.check_partition(a.partition)?;
            for (k, v) in &a.records {
                self.send(a.partition, k, v.as_deref(), &mut pending)?;
            }
            self.send(a.partition, &a.marker.0, Some(&a.marker.1), &mut pending)?;
            markers.push(pending.len() - 1);
        }
        let mut offsets = Vec::with_capacity(markers.len());
        let mut next = markers.into_iter().peekable();
        let mut i = 0;
        // Delivered in order per partition (idempotent producer): wait for every one.
        while let Some(f) = pending.pop_front() {
            let d = wait(f)?;
            if next.peek() == Some(&i) {
                next.next();
                offsets.push(d);
            }
            i += 1;
        }
        Ok(offsets)
    }

    fn send(
        &self,
        partition: i32,
        key: &[u8],
        value: Option<&[u8]>,
        pending: &mut std::collections::VecDeque<DeliveryFuture>,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let mut r = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .key(key);
            if let Some(v) = value {
                r = r.payload(v);
            }
            match self.producer.send_result(r) {
                Ok(f) => {
                    pending.push_back(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The producer's own thread delivers; wait for room.
                    if start.elapsed() > TIMEOUT || pending.is_empty() {
                        bail!("the changelog producer queue stays full");
                    }
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
        let mut last = Instant::now();
        let result = loop {
            match r.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    last = Instant::now();
                    if m.offset() >= to {
                        break Ok(n);
                    }
                    f(m.offset(), m.key().unwrap_or_default(), m.payload())?;
                    n += 1;
                    if m.offset() + 1 >= to {
                        break Ok(n);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break Ok(n),
                Some(Err(e)) => {
                    tracing::warn!(topic = %self.topic, partition, error = %e, "reading the changelog")
                }
                None if last.elapsed() > TIMEOUT => {
                    break Err(anyhow!(
                        "reading changelog {:?} partition {partition}: no progress for {TIMEOUT:?}",
                        self.topic
                    ))
                }
                None => {}
            }
        };
        let _ = r.unassign();
        result
    }
}

fn partition_count(p: &FutureProducer, topic: &str) -> anyhow::Result<i32> {
    let md = p
        .client()
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
