//! Exactly-once Kafka → Kafka (`[sink] delivery = "exactly-once"`): the records a pipeline
//! writes to Kafka and the input offsets they came from are committed in one Kafka transaction.
//!
//! * One transactional producer per pipeline ([`Transactions`]), made by the first sink that
//!   asks for exactly-once (its connection, security and producer settings) under the
//!   `transactional.id` the Kafka source's group gives ([`Slot`]); every such sink (the main sink,
//!   a dead-letter topic as the failure sink, the filtered sink) writes through it.
//! * The Kafka source drives the transactions (see `sources/kafka.rs`): every `commit_interval`,
//!   and when partitions are revoked or weir stops, it stops emitting, waits until every batch it
//!   emitted was written, sends the offsets after them to the transaction with the consumer's
//!   group metadata and commits; a new transaction begins at once.
//! * Fencing (KIP-447): the offsets are sent with the consumer's group generation, so an instance
//!   that lost its partitions (stalled past its session, a zombie) cannot commit: its transaction
//!   is refused and aborted, and read_committed consumers never see what it wrote.
//!   `init_transactions` also aborts whatever a previous instance with the same
//!   `transactional.id` (the same `group_instance_id`) left open.
//! * A failed write in a transaction (librdkafka's "abortable" state) poisons it: the sinks
//!   discard what they are handed until the source has aborted it and rewound its partitions to
//!   the last committed offsets; those records are read and written again in a new transaction.
//!
//! Durable state's changelog ([`crate::kafka::changelog`]) appends each checkpoint through this
//! producer too, so that state changes commit and abort with the output and the offsets.
//!
//! Sinks that are not Kafka (a file or stderr failure sink, a DynamoDB sink) are not part of the
//! transaction: they stay at-least-once.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::TopicPartitionList;

use super::ClientLog;

/// How long a transaction call (init, send offsets, commit, abort) may block.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The transaction timeout the producer asks for (librdkafka's default is 60 s): how long a
/// transaction left open by a crashed instance blocks read_committed consumers when no
/// instance with its `transactional.id` comes back to abort it.
const TRANSACTION_TIMEOUT_MS: &str = "10000";

/// Where a pipeline's transactional producer lives between the sinks that make and use it and
/// the source that commits it (sinks are built first).
#[derive(Debug)]
pub struct Slot {
    /// The producer's `transactional.id`.
    id: String,
    txn: OnceLock<Arc<Transactions>>,
    /// Serialises the first creation (its `init_transactions` blocks).
    making: Mutex<()>,
}

impl Slot {
    pub fn new(transactional_id: String) -> Arc<Slot> {
        Arc::new(Slot {
            id: transactional_id,
            txn: OnceLock::new(),
            making: Mutex::new(()),
        })
    }

    /// The pipeline's transactions, made on first call from `config` (a producer's settings,
    /// without the transactional ones) for the cluster `bootstrap`. A later caller on another
    /// cluster is refused: one transaction spans one cluster. Blocking.
    pub fn get_or_start(
        &self,
        bootstrap: &str,
        config: &ClientConfig,
    ) -> anyhow::Result<Arc<Transactions>> {
        let _making = self.making.lock().expect("slot lock poisoned");
        if let Some(t) = self.txn.get() {
            if t.bootstrap != bootstrap {
                return Err(anyhow!(
                    "exactly-once: every exactly-once sink must write to the cluster of the \
                     first one ({:?}), found {bootstrap:?}",
                    t.bootstrap
                ));
            }
            return Ok(t.clone());
        }
        let t = Arc::new(Transactions::start(bootstrap, config, &self.id)?);
        let _ = self.txn.set(t.clone());
        Ok(t)
    }

    /// The transactions the sinks started, if any did.
    pub fn get(&self) -> Option<Arc<Transactions>> {
        self.txn.get().cloned()
    }

    pub fn transactional_id(&self) -> &str {
        &self.id
    }
}

/// What a commit came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The records and offsets are committed.
    Yes,
    /// The transaction was aborted (poisoned, refused, fenced): the source must rewind to the
    /// last committed offsets. Why, for the log.
    Aborted(String),
}

/// A pipeline's transactional producer, with a transaction always open between commits.
pub struct Transactions {
    producer: FutureProducer<ClientLog>,
    bootstrap: String,
    /// Why the open transaction can only be aborted (a write in it failed).
    poisoned: Mutex<Option<String>>,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transactions")
            .field("bootstrap", &self.bootstrap)
            .finish_non_exhaustive()
    }
}

impl Transactions {
    /// Creates the producer, fences earlier producers of `id` (aborting what they left open)
    /// and begins the first transaction. Blocking.
    fn start(bootstrap: &str, config: &ClientConfig, id: &str) -> anyhow::Result<Transactions> {
        let log = ClientLog::default();
        let mut config = config.clone();
        config
            .set("transactional.id", id)
            .set("enable.idempotence", "true");
        if config.get("transaction.timeout.ms").is_none() {
            config.set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS);
        }
        // librdkafka requires a message's delivery timeout within the transaction's.
        let txn_ms: u64 = config
            .get("transaction.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60_000);
        let msg_ms: u64 = config
            .get("message.timeout.ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300_000);
        if msg_ms > txn_ms {
            config.set("message.timeout.ms", txn_ms.to_string());
        }
        let producer: FutureProducer<ClientLog> =
            config.create_with_context(log.clone()).map_err(|e| {
                super::creation_error("exactly-once: cannot create the transactional producer", e)
            })?;
        producer.init_transactions(TIMEOUT).map_err(|e| {
            let why = log
                .last_error()
                .map(|l| format!(" ({l})"))
                .unwrap_or_default();
            anyhow::Error::new(e).context(format!(
                "exactly-once: cannot initialise transactions as {id:?}{why}"
            ))
        })?;
        producer
            .begin_transaction()
            .context("exactly-once: cannot begin a transaction")?;
        tracing::info!(
            transactional_id = id,
            "exactly-once: transactions initialised"
        );
        Ok(Transactions {
            producer,
            bootstrap: bootstrap.to_string(),
            poisoned: Mutex::new(None),
        })
    }

    /// The producer the sinks write with (inside the open transaction).
    pub fn producer(&self) -> &FutureProducer<ClientLog> {
        &self.producer
    }

    /// A write in the open transaction failed: it can only be aborted.
    pub fn poison(&self, why: impl Into<String>) {
        let mut p = self.poisoned.lock().expect("poison lock poisoned");
        if p.is_none() {
            let why = why.into();
            tracing::warn!("exactly-once: the open transaction will be aborted: {why}");
            *p = Some(why);
        }
    }

    /// Whether the open transaction can only be aborted: sinks discard what they are handed
    /// (it is read again after the rewind).
    pub fn poisoned(&self) -> bool {
        self.poisoned
            .lock()
            .expect("poison lock poisoned")
            .is_some()
    }

    /// Commits the open transaction with the input `offsets` of `group` (nothing to commit:
    /// nothing happens), then begins the next. Blocking. An error is fatal: the producer can
    /// do nothing more (fenced by another instance with its `transactional.id`).
    pub fn commit(
        &self,
        offsets: &TopicPartitionList,
        group: Option<&ConsumerGroupMetadata>,
    ) -> anyhow::Result<Committed> {
        let poisoned = self.poisoned.lock().expect("poison lock poisoned").clone();
        if let Some(why) = poisoned {
            return self.abort(&why);
        }
        if offsets.count() > 0 {
            let Some(group) = group else {
                return self.abort("the consumer has no group metadata (not in a group)");
            };
            let mut attempt = 0;
            loop {
                match self
                    .producer
                    .send_offsets_to_transaction(offsets, group, TIMEOUT)
                {
                    Ok(()) => break,
                    Err(e) => match class(&e) {
                        Class::Retry if attempt < 3 => attempt += 1,
                        Class::Abort | Class::Retry => {
                            return self.abort(&format!("sending the offsets: {e}"))
                        }
                        Class::Fatal => return Err(fatal(e, "sending the offsets")),
                    },
                }
            }
        }
        let mut attempt = 0;
        loop {
            match self.producer.commit_transaction(TIMEOUT) {
                Ok(()) => break,
                Err(e) => match class(&e) {
                    Class::Retry if attempt < 3 => attempt += 1,
                    Class::Abort | Class::Retry => return self.abort(&format!("committing: {e}")),
                    Class::Fatal => return Err(fatal(e, "committing")),
                },
            }
        }
        self.begin()?;
        Ok(Committed::Yes)
    }

    /// Aborts the open transaction (what it holds is never seen by read_committed consumers)
    /// and begins the next. Blocking.
    pub fn abort(&self, why: &str) -> anyhow::Result<Committed> {
        tracing::warn!("exactly-once: aborting the transaction: {why}");
        let mut attempt = 0;
        loop {
            match self.producer.abort_transaction(TIMEOUT) {
                Ok(()) => break,
                Err(e) => match class(&e) {
                    Class::Retry | Class::Abort if attempt < 3 => attempt += 1,
                    _ => return Err(fatal(e, "aborting")),
                },
            }
        }
        *self.poisoned.lock().expect("poison lock poisoned") = None;
        self.begin()?;
        Ok(Committed::Aborted(why.to_string()))
    }

    fn begin(&self) -> anyhow::Result<()> {
        self.producer
            .begin_transaction()
            .map_err(|e| fatal(e, "beginning a transaction"))
    }
}

enum Class {
    Retry,
    Abort,
    Fatal,
}

fn class(e: &KafkaError) -> Class {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Class::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Class::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Class::Retry,
        _ => Class::Fatal,
    }
}

fn fatal(e: KafkaError, doing: &str) -> anyhow::Error {
    anyhow::Error::new(e).context(format!(
        "exactly-once: {doing} failed for good (the producer was fenced by another instance \
         with the same transactional.id, or the cluster refuses transactions)"
    ))
}
