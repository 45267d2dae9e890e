//! `kafka`: an idempotent producer writing each record to a topic, keyed by its partition key,
//! with its headers.
//!
//! A batch is written by handing every record to librdkafka first (its queue stays full, it
//! batches and compresses per partition) and only then awaiting the delivery reports; the batch is
//! acknowledged once every report is in. Reports are classified:
//! * too large / invalid for the broker → the record goes to the failure sink (the rest of the
//!   batch counts as written);
//! * anything else (timeouts, unreachable brokers, leader changes, authorisation being fixed) →
//!   the pipeline retries the batch with backoff. Only the records whose delivery failed are sent
//!   again. librdkafka itself retries until `delivery_timeout`, and the idempotent producer makes
//!   its own retries duplicate-free; a record re-sent after a timeout report may still appear twice
//!   if the broker had in fact stored the first copy (at-least-once);
//! * a fatal producer error (idempotence state lost) → the producer is rebuilt and the failed
//!   records are retried.
//!
//! With `removal_field`, a record whose JSON field of that name is `true` (what viewer-state emits
//! for an expired viewer: `{"viewer_id": …, "removed": true}`) is written as a tombstone: the
//! record's key (viewer-state keys its output by viewer) with a null value, so that a compacted
//! topic forgets that key. A removal without a key has nothing to tombstone and goes to the
//! failure sink.
//!
//! With `delivery = "exactly-once"` (the source must be Kafka), the sink writes through the
//! pipeline's transactional producer and the source commits its offsets in the same
//! transaction ([`crate::kafka::txn`]): read_committed consumers see each input record's output
//! once, across crashes and rebalances. A failed delivery then poisons the transaction: the
//! batch (and every one after it until the source rewinds) is discarded, to be read and
//! written again in a new transaction.
//!
//! As the failure sink (a dead-letter topic), each bad row carries the error in the headers
//! `weir.error`, `weir.component` and `weir.schema`, followed by the original record's headers.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Deserialize;

use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ByteSize, ConfigError, Duration as CfgDuration, Origin};
use crate::kafka::security::{self, Options, Resolved, Sasl, Tls};
use crate::kafka::{self, ClientLog};
use crate::record::Record;
use crate::setup::{self, BuildContext};

/// ```toml
/// [sink]
/// type = "kafka"
/// bootstrap_servers = "broker1:9092"
/// topic = "media-events"
/// compression = "lz4"          # none, gzip, snappy, lz4
/// idempotence = true
/// linger = "5ms"
/// delivery_timeout = "5m"      # librdkafka retries a message this long before reporting failure
/// max_message_bytes = "1 MiB"  # larger records go to the failure sink
/// removal_field = "removed"    # optional: `"removed": true` → a tombstone (key, null value)
/// delivery = "at-least-once"   # or "exactly-once": in a Kafka transaction with the source's offsets
///
/// [sink.tls]                   # optional: TLS (see crate::kafka::security)
/// ca_file = "/etc/kafka/ca.pem"
///
/// [sink.sasl]                  # optional: SASL
/// mechanism = "SCRAM-SHA-512"
/// username = "weir"
/// password = { file = "/run/secrets/kafka" }
///
/// [sink.options]               # any librdkafka producer setting, applied last
/// "request.timeout.ms" = "30000"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    pub topic: String,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default = "yes")]
    pub idempotence: bool,
    #[serde(default = "default_linger")]
    pub linger: CfgDuration,
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: CfgDuration,
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: ByteSize,
    pub removal_field: Option<String>,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub tls: Option<Tls>,
    #[serde(default)]
    pub sasl: Option<Sasl>,
    #[serde(default)]
    pub options: Options,
}

fn yes() -> bool {
    true
}
fn default_linger() -> CfgDuration {
    CfgDuration(Duration::from_millis(5))
}
fn default_delivery_timeout() -> CfgDuration {
    CfgDuration(Duration::from_secs(300))
}
fn default_max_message_bytes() -> ByteSize {
    ByteSize(1 << 20)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    #[default]
    Lz4,
}

/// What a written record is worth.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Delivery {
    /// Acknowledged once the broker has it; after a crash, what was written but not committed
    /// by the source is written again.
    #[default]
    #[serde(rename = "at-least-once")]
    AtLeastOnce,
    /// Written in a Kafka transaction with the source's offsets.
    #[serde(rename = "exactly-once")]
    ExactlyOnce,
}

impl SinkType for KafkaConfig {
    const TYPE: &'static str = "kafka";
}

#[async_trait]
impl SinkConfig for KafkaConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(origin.error(
                "bootstrap_servers",
                "expected host:port[,host:port…], found an empty string",
            ));
        }
        if self.topic.is_empty() {
            return Err(origin.error("topic", "expected a topic name, found an empty string"));
        }
        if self.removal_field.as_ref().is_some_and(|f| f.is_empty()) {
            return Err(origin.error(
                "removal_field",
                "expected a JSON field name, found an empty string",
            ));
        }
        if self.delivery == Delivery::ExactlyOnce && !self.idempotence {
            return Err(origin.error(
                "idempotence",
                "expected true with delivery = \"exactly-once\" (transactions need the \
                 idempotent producer), found false",
            ));
        }
        let security = self.security(origin)?;
        security.warn(&origin.key);
        kafka::check_options(&self.client_config(&security), &security, origin)
    }

    fn exactly_once(&self) -> bool {
        self.delivery == Delivery::ExactlyOnce
    }

    /// Creates the producer (with exactly-once: the pipeline's transactional producer, made by
    /// the first such sink) and checks that the brokers answer and accept it.
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let log = ClientLog::default();
        let security = self.security(&Origin::new("", &ctx.path))?;
        let txn = match (self.delivery, &ctx.transactions) {
            (Delivery::AtLeastOnce, _) => None,
            (Delivery::ExactlyOnce, None) => anyhow::bail!(
                "delivery = \"exactly-once\" needs a `kafka` source to commit the transactions"
            ),
            (Delivery::ExactlyOnce, Some(slot)) => {
                let (slot, config, bs) = (
                    slot.clone(),
                    self.client_config(&security),
                    self.bootstrap_servers.clone(),
                );
                Some(tokio::task::spawn_blocking(move || slot.get_or_start(&bs, &config)).await??)
            }
        };
        let producer = match &txn {
            Some(t) => t.producer().clone(),
            None => self.producer_with(&security, log.clone())?,
        };
        let (client, topic) = (producer.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            kafka::check_cluster(client.client(), &log, &[&topic], setup::CHECK_TIMEOUT)
        })
        .await?
        .with_context(|| format!("kafka brokers {}", self.bootstrap_servers))?;
        Ok(Box::new(KafkaSink {
            producer,
            cfg: self.clone(),
            security,
            txn,
        }))
    }
}

impl KafkaConfig {
    /// The security and `options` settings, resolved (secrets read, files checked).
    fn security(&self, origin: &Origin) -> Result<Resolved, ConfigError> {
        security::resolve(self.tls.as_ref(), self.sasl.as_ref(), &self.options, origin)
    }

    fn client_config(&self, security: &Resolved) -> ClientConfig {
        kafka::client_config(
            &self.bootstrap_servers,
            |c| {
                c.set("enable.idempotence", self.idempotence.to_string())
                    .set(
                        "compression.codec",
                        match self.compression {
                            Compression::None => "none",
                            Compression::Gzip => "gzip",
                            Compression::Snappy => "snappy",
                            Compression::Lz4 => "lz4",
                        },
                    )
                    .set("linger.ms", self.linger.0.as_millis().to_string())
                    .set(
                        "message.timeout.ms",
                        self.delivery_timeout.0.as_millis().max(1).to_string(),
                    )
                    .set("message.max.bytes", self.max_message_bytes.0.to_string());
                if !self.idempotence {
                    c.set("acks", "all");
                }
            },
            security,
        )
    }

    fn producer_with(
        &self,
        security: &Resolved,
        log: ClientLog,
    ) -> anyhow::Result<FutureProducer<ClientLog>> {
        self.client_config(security)
            .create_with_context(log)
            .map_err(|e| kafka::creation_error("kafka sink: cannot create the producer", e))
    }
}

/// What became of one record's send.
enum Class {
    /// The broker will never take it: to the failure sink.
    Reject,
    /// Try again later.
    Retry,
}

fn classify(e: &KafkaError) -> Class {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(
            MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord | BadMessage,
        ) => Class::Reject,
        _ => Class::Retry,
    }
}

/// Why the broker refuses `record` for good: a size violation (with the configured
/// `max_message_bytes`) when it is too large, else the error.
fn refusal(e: &KafkaError, record: Option<&Record>, max_message: usize) -> Refusal {
    let reason = format!("kafka sink: {e}");
    match (e.rdkafka_error_code(), record) {
        (
            Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize),
            Some(r),
        ) => Refusal::oversized(reason, r.size(), max_message),
        _ => Refusal::from(reason),
    }
}

struct KafkaSink {
    producer: FutureProducer<ClientLog>,
    cfg: KafkaConfig,
    /// The resolved security settings, for rebuilding the producer.
    security: Resolved,
    /// With exactly-once: the transactions `producer` writes in.
    txn: Option<std::sync::Arc<kafka::txn::Transactions>>,
}

impl KafkaSink {
    /// True if `r` is a removal (its `removal_field` is `true`): it is written as a tombstone.
    fn is_removal(&self, r: &Record) -> bool {
        let Some(field) = &self.cfg.removal_field else {
            return false;
        };
        // Most records are not removals: look for the field's name before parsing.
        if memchr::memmem::find(&r.value, field.as_bytes()).is_none() {
            return false;
        }
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&r.value)
            .is_ok_and(|o| o.get(field) == Some(&serde_json::Value::Bool(true)))
    }

    fn record<'a>(&'a self, r: &'a Record) -> FutureRecord<'a, [u8], [u8]> {
        let mut fr = FutureRecord::to(&self.cfg.topic);
        if !self.is_removal(r) {
            fr = fr.payload(&r.value[..]);
        }
        if let Some(k) = &r.key {
            fr = fr.key(&k[..]);
        }
        let hs = r.headers();
        if !hs.is_empty() {
            let mut headers = OwnedHeaders::new_with_capacity(hs.len());
            for (k, v) in hs {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(&v[..]),
                });
            }
            fr = fr.headers(headers);
        }
        fr
    }
}

#[async_trait]
impl Sink for KafkaSink {
    async fn write(
        &mut self,
        records: &[Record],
        progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let len = records.len();
        if self.txn.as_ref().is_some_and(|t| t.poisoned()) {
            // The open transaction will be aborted and these records read again: discard.
            return discard(records, progress);
        }
        let max_message = self.cfg.max_message_bytes.0 as usize;
        let mut retry_error: Option<KafkaError> = None;
        let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::with_capacity(len);
        let settle = |progress: &mut Progress,
                      retry_error: &mut Option<KafkaError>,
                      i: usize,
                      outcome: Result<(), KafkaError>| match outcome {
            Ok(()) => progress.take(i),
            Err(e) => match classify(&e) {
                Class::Reject => progress.reject(i, refusal(&e, records.get(i), max_message)),
                Class::Retry => {
                    retry_error.get_or_insert(e);
                }
            },
        };
        // Hand everything to librdkafka first; await reports only when its queue is full.
        // Records taken by an earlier try of this batch are not sent again.
        for (i, r) in records.iter().enumerate() {
            if progress.is_settled(i) {
                continue;
            }
            if r.key.is_none() && self.is_removal(r) {
                progress.reject(
                    i,
                    "kafka sink: a removal record without a key: there is no key to tombstone",
                );
                continue;
            }
            let mut fr = self.record(r);
            loop {
                match self.producer.send_result(fr) {
                    Ok(f) => {
                        pending.push_back((i, f));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        fr = back;
                        match pending.pop_front() {
                            Some((j, f)) => {
                                let outcome = delivery(f.await);
                                settle(progress, &mut retry_error, j, outcome);
                            }
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((e, _)) => {
                        settle(progress, &mut retry_error, i, Err(e));
                        break;
                    }
                }
            }
        }
        for (i, f) in pending {
            let outcome = delivery(f.await);
            settle(progress, &mut retry_error, i, outcome);
        }
        if let Some(e) = retry_error {
            if let Some(t) = &self.txn {
                // A failed delivery leaves the transaction abortable only: everything in it
                // is read again after the source aborted it and rewound.
                t.poison(format!("kafka sink: a delivery failed: {e}"));
                return discard(records, progress);
            }
            if let Some((code, reason)) = self.producer.client().fatal_error() {
                tracing::error!(
                    ?code,
                    reason,
                    "kafka sink: fatal producer error; rebuilding the producer"
                );
                self.producer = self
                    .cfg
                    .producer_with(&self.security, ClientLog::default())
                    .map_err(SinkError::Retriable)?;
            }
            let left = progress.unsettled(len);
            let class = match e.rdkafka_error_code() {
                Some(c)
                    if crate::kafka::refusal(c)
                        || matches!(
                            c,
                            RDKafkaErrorCode::UnknownTopicOrPartition
                                | RDKafkaErrorCode::UnknownTopic
                        ) =>
                {
                    crate::retry::FailureClass::Setup
                }
                Some(RDKafkaErrorCode::QueueFull | RDKafkaErrorCode::ThrottlingQuotaExceeded) => {
                    crate::retry::FailureClass::Throttle
                }
                _ => crate::retry::FailureClass::Transient,
            };
            return Err(SinkError::of_class(
                class,
                anyhow::Error::new(e).context(format!(
                    "kafka sink: {left} of {len} record(s) not delivered"
                )),
            ));
        }
        progress.written()
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(30)))
            .await
            .map_err(|e| SinkError::Retriable(e.into()))?
            .map_err(|e| SinkError::Retriable(anyhow::Error::new(e).context("kafka sink: flush")))
    }
}

/// Settles every record of a batch the poisoned transaction could not take: the source rewinds
/// to before it, so it is read and written again.
fn discard(records: &[Record], progress: &mut Progress) -> Result<(), SinkError> {
    drop(progress.take_rejected());
    for i in 0..records.len() {
        if !progress.is_settled(i) {
            progress.take(i);
        }
    }
    progress.written()
}

fn delivery(
    r: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), KafkaError> {
    match r {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}
