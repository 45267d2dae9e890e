//! `pubsub`: publishes to a Google Cloud Pub/Sub topic.
//!
//! Records go in Publish requests of at most `max_batch_messages` messages and
//! `max_batch_bytes` bytes, `concurrency` requests at once. A request lands whole or not at all;
//! a batch the pipeline retries skips the requests that already landed. A request Pub/Sub refuses
//! as invalid is split and its messages sent one by one, so that only the message it refuses goes
//! to the failure sink (with Pub/Sub's reason), not its neighbours. Messages Pub/Sub could never
//! take are refused before they are sent: an empty record (a message needs data or attributes)
//! and one over Pub/Sub's 10 MB.
//!
//! With `ordering = true`, the record's key (set by `spEnrichedSetPk` or a keyed source) is the
//! message's ordering key: each key hashes to one of `concurrency` lanes whose requests go one
//! after the other, so a key's messages land in the order of the batch (the topic's subscribers
//! must enable message ordering to receive them in that order). Keys over 1,024 bytes are refused.
//!
//! Snowbridge's `pubsub` target translates to this sink: `batching.max_batch_messages`,
//! `max_batch_bytes` and `max_concurrent_batches` keep their meaning.

use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use gcloud_gax::grpc::Code;
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::publisher::Publisher;
use serde::Deserialize;

use super::lanes::{self, Outcome};
use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ConfigError, Origin};
use crate::gcp;
use crate::record::Record;
use crate::setup::BuildContext;

/// Most messages in one Publish request.
pub const MAX_MESSAGES_PER_REQUEST: usize = 1000;
/// Longest ordering key.
pub const MAX_ORDERING_KEY_BYTES: usize = 1024;

/// ```toml
/// [sink]
/// type = "pubsub"
/// project_id = "acme-project"
/// topic = "enriched-good"        # an id, or projects/<project>/topics/<id>
/// max_batch_messages = 100       # messages per Publish request (at most 1000)
/// max_batch_bytes = 9000000      # bytes per Publish request (at most 10 MB)
/// concurrency = 5                # requests in flight
/// ordering = false               # the record key as ordering key, in order per key
/// pool_size = 4                  # gRPC connections
/// # credentials_path = "/secrets/service-account.json"  # else Application Default Credentials
/// # emulator_host = "127.0.0.1:8085"                    # else $PUBSUB_EMULATOR_HOST, else Google
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubConfig {
    pub project_id: String,
    pub topic: String,
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub ordering: bool,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    pub credentials_path: Option<String>,
    pub emulator_host: Option<String>,
}

fn default_max_batch_messages() -> usize {
    100
}
fn default_max_batch_bytes() -> usize {
    9_000_000
}
fn default_concurrency() -> usize {
    5
}
fn default_pool_size() -> usize {
    4
}

impl SinkType for PubsubConfig {
    const TYPE: &'static str = "pubsub";
}

#[async_trait]
impl SinkConfig for PubsubConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        gcp::check_names(origin, &self.project_id, "topic", &self.topic, "topics")?;
        if !(1..=MAX_MESSAGES_PER_REQUEST).contains(&self.max_batch_messages) {
            return Err(origin.error(
                "max_batch_messages",
                format!(
                    "expected 1 to {MAX_MESSAGES_PER_REQUEST} (Pub/Sub's most per request), found {}",
                    self.max_batch_messages
                ),
            ));
        }
        if !(1..=gcp::MAX_MESSAGE_BYTES).contains(&self.max_batch_bytes) {
            return Err(origin.error(
                "max_batch_bytes",
                format!(
                    "expected 1 to {} (Pub/Sub's largest request), found {}",
                    gcp::MAX_MESSAGE_BYTES,
                    self.max_batch_bytes
                ),
            ));
        }
        if self.concurrency == 0 {
            return Err(origin.error("concurrency", "expected at least 1, found 0"));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(origin.error(
                "pool_size",
                format!("expected 1 to 64 connections, found {}", self.pool_size),
            ));
        }
        Ok(())
    }

    /// Creates the client and checks that the topic exists and the credentials are accepted.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let client = gcp::connect(&gcp::Connection {
            project_id: &self.project_id,
            credentials_path: self.credentials_path.as_deref(),
            emulator_host: self.emulator_host.as_deref(),
            pool_size: self.pool_size,
        })
        .await?;
        let topic = gcp::full_name(&self.project_id, "topics", &self.topic);
        let handle = client.topic(&topic);
        let what = format!("topic `{topic}`");
        crate::setup::check("Pub/Sub", async {
            match handle.exists(Some(few_retries())).await {
                Ok(true) => Ok(()),
                Ok(false) => anyhow::bail!("the {what} does not exist"),
                Err(s) => Err(gcp::unusable(&what, &s)),
            }
        })
        .await?;
        // Publishes only through `publish_immediately`: one request per call, batched by weir.
        let publisher = handle.new_publisher(None);
        tracing::info!(topic = %topic, "pubsub sink ready");
        Ok(Box::new(PubsubSink {
            cfg: self.clone(),
            publisher,
            topic,
        }))
    }
}

pub struct PubsubSink {
    cfg: PubsubConfig,
    publisher: Publisher,
    /// The topic's full name.
    topic: String,
}

/// Retries of one call for what clears in a moment; longer outages are the pipeline's retries.
fn few_retries() -> RetrySetting {
    RetrySetting {
        from_millis: 50,
        max_delay: Some(std::time::Duration::from_secs(1)),
        factor: 2,
        take: 3,
        codes: vec![
            Code::Unavailable,
            Code::Unknown,
            Code::Aborted,
            Code::Internal,
            Code::DeadlineExceeded,
        ],
    }
}

type Entry = lanes::Entry<PubsubMessage>;

impl PubsubSink {
    /// Record `i`'s message and its size, or why Pub/Sub would never take it.
    fn entry(&self, r: &Record) -> Result<(usize, PubsubMessage), Refusal> {
        let ordering_key = match (&r.key, self.cfg.ordering) {
            (Some(k), true) if !k.is_empty() => match std::str::from_utf8(k) {
                Ok(k) if k.len() <= MAX_ORDERING_KEY_BYTES => k.to_string(),
                Ok(k) => {
                    return Err(format!(
                    "key of {} bytes is over Pub/Sub's {MAX_ORDERING_KEY_BYTES}-byte ordering keys",
                    k.len()
                )
                    .into())
                }
                Err(_) => return Err("key is not UTF-8, which an ordering key must be".into()),
            },
            _ => String::new(),
        };
        if r.value.is_empty() {
            return Err("record is empty; a Pub/Sub message needs data or attributes".into());
        }
        let size = r.value.len() + ordering_key.len();
        let limit = gcp::MAX_MESSAGE_BYTES.min(self.cfg.max_batch_bytes);
        if size > limit {
            return Err(Refusal::oversized(
                format!(
                    "record of {size} bytes is over the {limit}-byte limit of a Pub/Sub request"
                ),
                size,
                limit,
            ));
        }
        Ok((
            size,
            PubsubMessage {
                data: r.value.to_vec(),
                ordering_key,
                ..PubsubMessage::default()
            },
        ))
    }

    fn lane(&self, msg: &PubsubMessage) -> usize {
        if msg.ordering_key.is_empty() {
            return 0;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        msg.ordering_key.hash(&mut h);
        (h.finish() % self.cfg.concurrency as u64) as usize
    }

    /// Sends one request; if Pub/Sub refuses it as invalid, its messages one by one.
    async fn send(&self, req: Vec<Entry>) -> Outcome {
        let mut out = Outcome::default();
        match self.publish(&req).await {
            Ok(()) => out.landed.extend(req.iter().map(|(i, _, _)| *i)),
            Err(e) if e.code() == Code::InvalidArgument && req.len() > 1 => {
                for one in req {
                    let o = Box::pin(self.send(vec![one])).await;
                    out.landed.extend(o.landed);
                    out.refused.extend(o.refused);
                    if out.error.is_none() {
                        out.error = o.error;
                    }
                }
            }
            Err(e) if e.code() == Code::InvalidArgument => {
                let (i, _, _) = req[0];
                out.refused.push((
                    i,
                    format!("Pub/Sub refused the message: {}", gcp::describe(&e)).into(),
                ));
            }
            Err(e) => {
                let class = gcp::classify(&e);
                metrics::counter!("weir_pubsub_failed_messages_total").increment(req.len() as u64);
                let err = anyhow::anyhow!(
                    "pubsub {}: {} messages not published: {}",
                    self.topic,
                    req.len(),
                    gcp::describe(&e)
                );
                out.error = Some(SinkError::of_class(class, err));
            }
        }
        out
    }

    async fn publish(&self, req: &[Entry]) -> Result<(), gcloud_gax::grpc::Status> {
        let messages = req.iter().map(|(_, _, m)| m.clone()).collect();
        self.publisher
            .publish_immediately(messages, Some(few_retries()))
            .await?;
        metrics::counter!("weir_pubsub_published_total").increment(req.len() as u64);
        Ok(())
    }
}

#[async_trait]
impl Sink for PubsubSink {
    async fn write(
        &mut self,
        records: &[Record],
        progress: &mut Progress,
    ) -> Result<(), SinkError> {
        // Requests of ≤ max_batch_messages and ≤ max_batch_bytes, skipping what an earlier try
        // of this batch already landed or refused; by lane when ordering (see the module's doc).
        let lanes = if self.cfg.ordering {
            self.cfg.concurrency
        } else {
            1
        };
        let mut entries = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if progress.is_settled(i) {
                continue;
            }
            match self.entry(r) {
                Ok((size, msg)) => entries.push((self.lane(&msg), (i, size, msg))),
                Err(refusal) => progress.reject(i, refusal),
            }
        }
        let requests = lanes::plan(
            lanes,
            self.cfg.max_batch_messages,
            self.cfg.max_batch_bytes,
            entries,
        );
        let this = &*self;
        let outcomes = lanes::send_all(requests, self.cfg.ordering, self.cfg.concurrency, |req| {
            this.send(req)
        })
        .await;
        lanes::settle(outcomes, progress)
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.publisher.shutdown().await;
        Ok(())
    }
}
