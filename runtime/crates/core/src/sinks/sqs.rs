//! `sqs`: SendMessageBatch into an SQS queue, standard or FIFO.
//!
//! Records go in requests of at most 10 messages and the queue's `MaximumMessageSize` in total
//! (read from the queue at start-up, as is whether it is FIFO). When a request partly fails, only
//! the failed entries are sent again, with backoff and jitter; entries the queue refuses for good
//! (`SenderFault`: invalid characters, too long) go to the failure sink as bad rows. A batch the
//! pipeline retries skips the records an earlier try already landed.
//!
//! On a FIFO queue the record's key (set by `spEnrichedSetPk` or a keyed source) is the message
//! group id, so one viewer's events stay in order; a key that is not a valid group id (over 128
//! characters, or characters SQS refuses) is replaced by its SHA-256 in hex, and a record without
//! a key uses `message_group_id`, else a hash of its bytes. Each group hashes to one of
//! `concurrency` lanes whose requests go one after the other (the lanes at once), so a group's
//! messages land in the order of the batch. Unless the queue deduplicates by
//! content itself, the deduplication id is the SHA-256 of the body: a record sent again within
//! SQS's five-minute window (a retried batch) is stored once.
//!
//! An SQS message body is text: a record that is not UTF-8, or holds characters SQS does not
//! allow (control characters other than tab, LF and CR; U+FFFE, U+FFFF), or is empty, is refused
//! as a bad row before it is sent.

use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::lanes::{self, Outcome};
use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::aws::{self, ErrorClass, SqsQueue};
use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::setup::BuildContext;

/// SendMessageBatch takes at most 10 entries.
pub const MAX_MESSAGES_PER_REQUEST: usize = 10;
/// SQS's longest message group id.
pub const MAX_GROUP_ID_CHARS: usize = 128;

/// ```toml
/// [sink]
/// type = "sqs"
/// queue = "enriched-good"        # a queue name, or its URL
/// # message_group_id = "weir"    # FIFO queues: the group of records without a key
/// # region = "eu-west-1"
/// # endpoint_url = "http://127.0.0.1:4566"
/// concurrency = 5                # SendMessageBatch requests in flight
/// max_attempts = 10              # per message, before the batch is retried as a whole
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    pub queue: String,
    pub message_group_id: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// An IAM role to assume (through STS) for this component's requests.
    pub role_arn: Option<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "aws::default_max_attempts")]
    pub max_attempts: u32,
}

fn default_concurrency() -> usize {
    5
}

impl SinkType for SqsConfig {
    const TYPE: &'static str = "sqs";
}

#[async_trait]
impl SinkConfig for SqsConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        aws::check_role_arn(origin, self.role_arn.as_deref())?;
        aws::check_queue_name(origin, "queue", &self.queue)?;
        if let Some(g) = &self.message_group_id {
            if !valid_group_id(g) {
                return Err(origin.error(
                    "message_group_id",
                    format!(
                        "expected 1 to {MAX_GROUP_ID_CHARS} letters, digits or ASCII punctuation, found {g:?}"
                    ),
                ));
            }
        }
        aws::check_requests(origin, self.concurrency, self.max_attempts)
    }

    /// Creates the client, checks that the queue exists and the credentials are accepted, and
    /// reads what kind of queue it is.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let (client, queue) = aws::connect_sqs(
            &self.queue,
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            self.role_arn.as_deref(),
        )
        .await?;
        tracing::info!(queue = %queue.url, fifo = queue.fifo, max_message_bytes = queue.max_message_bytes, "sqs sink ready");
        Ok(Box::new(SqsSink::with_client(self.clone(), client, queue)))
    }
}

pub struct SqsSink {
    cfg: SqsConfig,
    client: Client,
    queue: SqsQueue,
}

type Entry = lanes::Entry<SendMessageBatchRequestEntry>;

impl SqsSink {
    /// A sink for `cfg` with an already configured client and a resolved queue (tests, tools).
    pub fn with_client(cfg: SqsConfig, client: Client, queue: SqsQueue) -> Self {
        SqsSink { cfg, client, queue }
    }

    /// The entry of record `i`, or why SQS would never take it.
    /// Record `i`'s entry, its size and its lane (see [`SqsSink::write`]), or why SQS would never
    /// take it.
    fn entry(
        &self,
        i: usize,
        r: &Record,
    ) -> Result<(usize, usize, SendMessageBatchRequestEntry), Refusal> {
        let body = message_body(&r.value)?;
        let size = body.len();
        let limit = self.queue.max_message_bytes;
        if size > limit {
            return Err(Refusal::oversized(
                format!("record of {size} bytes is over the queue's MaximumMessageSize of {limit}"),
                size,
                limit,
            ));
        }
        let mut e = SendMessageBatchRequestEntry::builder().id(i.to_string());
        let mut lane = 0;
        if self.queue.fifo {
            let group = self.group_id(r);
            let mut h = std::collections::hash_map::DefaultHasher::new();
            group.hash(&mut h);
            lane = (h.finish() % self.cfg.concurrency as u64) as usize;
            e = e.message_group_id(group);
            if !self.queue.content_dedup {
                e = e.message_deduplication_id(hex_sha256(body.as_bytes()));
            }
        }
        let entry = e.message_body(body).build().expect("id and body are set");
        Ok((size, lane, entry))
    }

    fn group_id(&self, r: &Record) -> String {
        match &r.key {
            Some(k) if !k.is_empty() => match std::str::from_utf8(k) {
                Ok(k) if valid_group_id(k) => k.to_string(),
                _ => hex_sha256(k),
            },
            _ => match &self.cfg.message_group_id {
                Some(g) => g.clone(),
                None => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    r.value.hash(&mut h);
                    format!("{:016x}", h.finish())
                }
            },
        }
    }

    /// Sends one request, then again only its entries that failed and may succeed later.
    async fn send(&self, mut pending: Vec<Entry>) -> Outcome {
        let cfg = &self.cfg;
        let mut out = Outcome::default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut throttled = false;
            let entries: Vec<SendMessageBatchRequestEntry> =
                pending.iter().map(|(_, _, e)| e.clone()).collect();
            let failure = match self
                .client
                .send_message_batch()
                .queue_url(&self.queue.url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(res) => {
                    let index = |id: &str| id.parse::<usize>().ok();
                    for ok in res.successful() {
                        if let Some(i) = index(ok.id()) {
                            out.landed.push(i);
                        }
                    }
                    let mut again = Vec::new();
                    let mut first_error = String::new();
                    for f in res.failed() {
                        let Some(i) = index(f.id()) else { continue };
                        let why = format!("{}: {}", f.code(), f.message().unwrap_or("no message"));
                        if f.sender_fault() {
                            out.refused
                                .push((i, format!("SQS refused the message: {why}").into()));
                        } else {
                            if first_error.is_empty() {
                                throttled =
                                    aws::classify_code(Some(f.code())) == ErrorClass::Throttled;
                                first_error = why;
                            }
                            again.push(i);
                        }
                    }
                    // An entry the answer does not mention has not landed: send it again.
                    pending.retain(|(i, _, _)| {
                        again.contains(i)
                            || !(out.landed.contains(i) || out.refused.iter().any(|(r, _)| r == i))
                    });
                    if pending.is_empty() {
                        return out;
                    }
                    metrics::counter!("weir_sqs_failed_messages_total")
                        .increment(pending.len() as u64);
                    tracing::debug!(queue = %self.queue.url, failed = pending.len(), attempt, error = %first_error, "retrying failed messages");
                    first_error
                }
                Err(e) => match aws::classify(&e) {
                    ErrorClass::Invalid => {
                        out.error = Some(SinkError::Fatal(anyhow::anyhow!(
                            "sqs {}: {}",
                            cfg.queue,
                            aws::describe(&e)
                        )));
                        return out;
                    }
                    ErrorClass::Setup => {
                        out.error = Some(SinkError::Setup(anyhow::anyhow!(
                            "sqs {}: {}",
                            cfg.queue,
                            aws::describe(&e)
                        )));
                        return out;
                    }
                    class => {
                        throttled = class == ErrorClass::Throttled;
                        aws::describe(&e)
                    }
                },
            };
            if attempt >= cfg.max_attempts {
                let class = if throttled {
                    crate::retry::FailureClass::Throttle
                } else {
                    crate::retry::FailureClass::Transient
                };
                out.error = Some(SinkError::of_class(
                    class,
                    anyhow::anyhow!(
                        "sqs {}: {} messages not written after {attempt} attempts: {failure}",
                        cfg.queue,
                        pending.len()
                    ),
                ));
                return out;
            }
            tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
        }
    }
}

#[async_trait]
impl Sink for SqsSink {
    async fn write(
        &mut self,
        records: &[Record],
        progress: &mut Progress,
    ) -> Result<(), SinkError> {
        // Requests of ≤ 10 messages and ≤ the queue's message size in total, skipping what an
        // earlier try of this batch already landed or refused. On a FIFO queue each group id has
        // a lane (a hash of it): a lane's requests go one after the other, so that a group's
        // messages land in order, and the lanes go at once. On a standard queue, which keeps no
        // order, every request goes at once (up to `concurrency`).
        let lanes = if self.queue.fifo {
            self.cfg.concurrency
        } else {
            1
        };
        let mut entries = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if progress.is_settled(i) {
                continue;
            }
            match self.entry(i, r) {
                Ok((size, lane, entry)) => entries.push((lane, (i, size, entry))),
                Err(refusal) => progress.reject(i, refusal),
            }
        }
        let requests = lanes::plan(
            lanes,
            MAX_MESSAGES_PER_REQUEST,
            self.queue.max_message_bytes,
            entries,
        );
        let this = &*self;
        let outcomes = lanes::send_all(requests, self.queue.fifo, self.cfg.concurrency, |req| {
            this.send(req)
        })
        .await;
        lanes::settle(outcomes, progress)
    }
}

/// The record as an SQS message body, or why it cannot be one.
pub fn message_body(value: &[u8]) -> Result<String, Refusal> {
    let text = std::str::from_utf8(value).map_err(|e| {
        Refusal::from(format!(
            "record is not UTF-8 text, which an SQS message must be: {e}"
        ))
    })?;
    if text.is_empty() {
        return Err("record is empty; an SQS message needs at least one character".into());
    }
    if let Some((at, c)) = text
        .char_indices()
        .find(|&(_, c)| !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
    {
        return Err(format!(
            "record holds U+{:04X} at byte {at}, a character SQS does not allow in a message",
            c as u32
        )
        .into());
    }
    Ok(text.to_string())
}

/// Whether `g` can be a FIFO message group id: 1 to 128 ASCII letters, digits or punctuation.
pub fn valid_group_id(g: &str) -> bool {
    !g.is_empty() && g.len() <= MAX_GROUP_ID_CHARS && g.bytes().all(|b| b.is_ascii_graphic())
}

fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_text_sqs_allows() {
        assert_eq!(
            message_body(b"a\tb\nc\r\xc3\xa9").unwrap(),
            "a\tb\nc\r\u{e9}"
        );
        assert_eq!(message_body("🎬 ok".as_bytes()).unwrap(), "🎬 ok");
        let e = message_body(b"ab\x00c").unwrap_err();
        assert!(e.reason.contains("U+0000 at byte 2"), "{e}");
        assert!(message_body(b"\x1b[0m").is_err());
        assert!(message_body("x\u{FFFE}".as_bytes()).is_err());
        assert!(message_body("x\u{FFFF}".as_bytes()).is_err());
        assert!(message_body(b"\xff\xfe")
            .unwrap_err()
            .reason
            .contains("not UTF-8"));
        assert!(message_body(b"").unwrap_err().reason.contains("empty"));
        assert_eq!(message_body(&[]).unwrap_err().oversized_by(), None);
    }

    #[test]
    fn group_ids_are_printable_ascii_of_at_most_128() {
        assert!(valid_group_id("viewer-42"));
        assert!(valid_group_id("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"));
        assert!(valid_group_id(&"a".repeat(128)));
        assert!(!valid_group_id(&"a".repeat(129)));
        assert!(!valid_group_id(""));
        assert!(!valid_group_id("a b"));
        assert!(!valid_group_id("caf\u{e9}"));
    }

    #[test]
    fn sha256_is_lower_hex() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
