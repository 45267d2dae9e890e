//! Records, batches and the failure records that travel beside them.
//!
//! A record's bytes are a [`Bytes`] slice of the buffer the source read into, so splitting lines,
//! filtering and setting a partition key copy nothing. Records always travel in a [`Batch`]; a batch
//! carries one [`Ack`] that covers all of its records, whichever sink each of them ends up in.

use bytes::Bytes;

use crate::ack::Ack;

/// One event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The payload, e.g. one enriched TSV line without its newline.
    pub value: Bytes,
    /// The partition key, if a source or transform set one (`spEnrichedSetPk`, a Kafka key).
    pub key: Option<Bytes>,
    /// Where the record came from and its headers, for sources that have them (Kafka). Boxed and
    /// optional so that records of sources without metadata stay three words and allocate nothing.
    pub meta: Option<Box<Meta>>,
}

/// A record's origin and headers: set by the Kafka source, by the router on failure records (the
/// error as headers), and written as message headers by the Kafka sink.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Topic, partition and offset the record was read from.
    pub topic: Option<std::sync::Arc<str>>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, as the producer or broker stamped it.
    pub timestamp: Option<i64>,
    /// Message headers, in order (a name may repeat).
    pub headers: Vec<(String, Bytes)>,
    /// The record as the source read it, kept through the transforms only when bad rows are
    /// written as `event_forwarding` errors (their `payload`; the failing value is their
    /// `latestState`). Never written by sinks.
    pub original: Option<Bytes>,
}

impl Record {
    pub fn new(value: impl Into<Bytes>) -> Self {
        Record {
            value: value.into(),
            key: None,
            meta: None,
        }
    }

    /// Bytes this record occupies in a batch (value, key and headers).
    pub fn size(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Bytes::len)
            + self.meta.as_ref().map_or(0, |m| {
                m.headers.iter().map(|(k, v)| k.len() + v.len()).sum()
            })
    }

    /// This record's headers (none for sources without metadata).
    pub fn headers(&self) -> &[(String, Bytes)] {
        self.meta.as_deref().map_or(&[], |m| &m.headers)
    }
}

/// Why a record could not be processed: decides the bad-row schema it is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The payload could not be parsed or a transform rejected it (`generic_error`).
    Invalid,
    /// The payload was larger than allowed (`size_violation`).
    Oversized { actual: usize, limit: usize },
    /// A collector payload (an HTTP request to the `collector` source, or a Thrift
    /// `CollectorPayload` record) that is not a valid tracker-protocol payload
    /// (`collector_payload_format_violation`). `field` names the payload field or tracker
    /// parameter at fault (empty when none applies); the record holds the payload as base64 of
    /// its Thrift encoding, as Snowplow's bad rows do.
    CollectorPayloadFormat { field: &'static str },
    /// A sink's endpoint refused the record (an HTTP status a response rule calls invalid):
    /// `generic_error`, or an `event_forwarding_error` of type `api` with the status as code.
    Api { status: u16 },
    /// A template could not be rendered over the record: `generic_error`, or an
    /// `event_forwarding_error` of type `template`.
    Template,
}

/// A record that failed, with the reason; it goes to the failure sink as a Snowplow bad row.
#[derive(Debug, Clone)]
pub struct Failed {
    pub record: Record,
    pub kind: FailureKind,
    /// Which component failed it (a source, or a transform's name in the chain).
    pub component: String,
    pub reason: String,
}

impl Failed {
    pub fn invalid(record: Record, component: &str, reason: impl Into<String>) -> Self {
        Failed {
            record,
            kind: FailureKind::Invalid,
            component: component.to_string(),
            reason: reason.into(),
        }
    }
}

/// A batch of records and everything that became of them on the way through the transforms.
///
/// Transforms move records out of `records` into `filtered` or `failed`; the router then sends
/// each of the three to its sink, each part holding a clone of `ack`.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub filtered: Vec<Record>,
    pub failed: Vec<Failed>,
    pub ack: Ack,
    /// When the source closed this batch (for end-to-end latency).
    pub created: Option<std::time::Instant>,
    /// Set by partitioned sources (Kafka): every record of the batch comes from this partition,
    /// and the batch reaches this far in it. Transform state is kept per input partition and
    /// checkpointed at these positions (see `docs/state.md`).
    pub position: Option<SourcePosition>,
}

/// An input partition: a Kafka topic-partition (unpartitioned sources: topic "" partition 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionId {
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
}

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Where a batch of one partition ends in its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    pub partition: PartitionId,
    /// The source's assignment generation of the partition when the batch was read: effects of
    /// a batch read under an earlier assignment are not kept.
    pub epoch: u64,
    /// The position after the batch's last record (Kafka: the offset of the next record), i.e.
    /// what the source commits once this batch and all before it are acknowledged.
    pub end: u64,
}

impl Batch {
    pub fn new(records: Vec<Record>, ack: Ack) -> Self {
        Batch {
            records,
            filtered: Vec::new(),
            failed: Vec::new(),
            ack,
            created: Some(std::time::Instant::now()),
            position: None,
        }
    }

    /// Number of records in all three parts.
    pub fn len(&self) -> usize {
        self.records.len() + self.filtered.len() + self.failed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
