//! `pubsub`: reads a Google Cloud Pub/Sub subscription.
//!
//! - **Pulling.** `receivers` pulls (up to 1,000 messages each) run at once, as long as weir
//!   holds fewer than `max_in_flight` messages and `max_in_flight_bytes` bytes: a slow pipeline
//!   stops the pulling instead of letting leases lapse in weir.
//! - **Acknowledging.** A message is acknowledged only once the pipeline has acknowledged its
//!   batch (every sink, or the failure sink, durably took it); acks go 1,000 to a call.
//! - **Leases.** As soon as it is pulled, a message's ack deadline is set to `ack_deadline`, and
//!   renewed while weir holds it (see [`super::held`]); a batch the pipeline could not deliver,
//!   and on a stop what was not written, is nacked (deadline 0) so Pub/Sub redelivers it at once.
//! - **Crashes.** A weir killed mid-run acknowledges nothing it had not delivered: Pub/Sub
//!   redelivers what it held once the ack deadline passes (at-least-once; duplicates are bounded
//!   by what was in flight).
//!
//! Each message becomes one record: its data as they are, its ordering key (if any) as the record
//! key, and its attributes (if any) as headers, with its publish time as the record's timestamp
//! (a message without attributes carries no metadata, and costs no allocation for it).
//!
//! Snowbridge's `pubsub` source translates to this one: `max_outstanding_messages` is
//! `max_in_flight`, `max_outstanding_bytes` is `max_in_flight_bytes`,
//! `min_extension_period_seconds` is `ack_deadline`, `streaming_pull_goroutines` is `receivers`
//! and `grpc_connection_pool_size` is `pool_size`. Weir pulls with unary Pull calls (one per
//! receiver in flight) rather than a StreamingPull: flow control is then exact, and nothing is
//! pushed to weir that it has no room for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use gcloud_gax::grpc::Code;
use gcloud_gax::retry::RetrySetting;
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, GetSubscriptionRequest, ModifyAckDeadlineRequest, PullRequest,
    ReceivedMessage,
};
use gcloud_pubsub::apiv1::subscriber_client::SubscriberClient;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::held::{Holding, Lender, Room};
use super::{Source, SourceConfig, SourceContext, SourceType};
use crate::config::{self, ConfigError, Origin};
use crate::gcp;
use crate::record::{Failed, FailureKind, Meta, Record};
use crate::setup::BuildContext;

/// Most messages one Pull returns, and ack ids per Acknowledge / ModifyAckDeadline call.
const PER_PULL: usize = 1000;
const PER_ACK: usize = 1000;
/// Pub/Sub's ack deadline range.
const MIN_DEADLINE: Duration = Duration::from_secs(10);
const MAX_DEADLINE: Duration = Duration::from_secs(600);
/// How long a stop waits for a pull in flight.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// ```toml
/// [source]
/// type = "pubsub"
/// project_id = "acme-project"
/// subscription = "enriched-good"   # an id, or projects/<project>/subscriptions/<id>
/// ack_deadline = "60s"             # a held message's lease; renewed while held (10s to 600s)
/// receivers = 1                    # pulls in flight
/// max_in_flight = 1000             # messages pulled and not yet acknowledged
/// max_in_flight_bytes = 1000000000 # and their bytes
/// pool_size = 4                    # gRPC connections
/// # credentials_path = "/secrets/service-account.json"  # else Application Default Credentials
/// # emulator_host = "127.0.0.1:8085"                    # else $PUBSUB_EMULATOR_HOST, else Google
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubsubConfig {
    pub project_id: String,
    pub subscription: String,
    #[serde(default = "default_deadline")]
    pub ack_deadline: config::Duration,
    #[serde(default = "default_receivers")]
    pub receivers: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    pub credentials_path: Option<String>,
    pub emulator_host: Option<String>,
}

fn default_deadline() -> config::Duration {
    config::Duration(Duration::from_secs(60))
}
fn default_receivers() -> usize {
    1
}
fn default_max_in_flight() -> usize {
    1000
}
fn default_max_in_flight_bytes() -> u64 {
    1_000_000_000
}
fn default_pool_size() -> usize {
    4
}

impl SourceType for PubsubConfig {
    const TYPE: &'static str = "pubsub";
}

#[async_trait]
impl SourceConfig for PubsubConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        gcp::check_names(
            origin,
            &self.project_id,
            "subscription",
            &self.subscription,
            "subscriptions",
        )?;
        let d = self.ack_deadline.0;
        if d < MIN_DEADLINE || d > MAX_DEADLINE {
            return Err(origin.error(
                "ack_deadline",
                format!("expected 10s to 600s (Pub/Sub's ack deadlines), found {d:?}"),
            ));
        }
        if self.receivers == 0 {
            return Err(origin.error("receivers", "expected at least 1, found 0"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > u32::MAX as usize {
            return Err(origin.error(
                "max_in_flight",
                format!("expected 1 to {}, found {}", u32::MAX, self.max_in_flight),
            ));
        }
        if self.max_in_flight_bytes == 0 {
            return Err(origin.error("max_in_flight_bytes", "expected at least 1, found 0"));
        }
        if self.pool_size == 0 || self.pool_size > 64 {
            return Err(origin.error(
                "pool_size",
                format!("expected 1 to 64 connections, found {}", self.pool_size),
            ));
        }
        Ok(())
    }

    /// Creates the client and checks that the subscription exists and the credentials are
    /// accepted.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let client = gcp::connect(&gcp::Connection {
            project_id: &self.project_id,
            credentials_path: self.credentials_path.as_deref(),
            emulator_host: self.emulator_host.as_deref(),
            pool_size: self.pool_size,
        })
        .await?;
        let name = gcp::full_name(&self.project_id, "subscriptions", &self.subscription);
        let subc = client.subscription(&name).get_client();
        let what = format!("subscription `{name}`");
        crate::setup::check("Pub/Sub", async {
            subc.get_subscription(
                GetSubscriptionRequest {
                    subscription: name.clone(),
                },
                Some(few_retries()),
            )
            .await
            .map_err(|s| gcp::unusable(&what, &s))
        })
        .await?;
        Ok(Box::new(PubsubSource {
            cfg: self.clone(),
            subc,
            name,
        }))
    }
}

pub struct PubsubSource {
    cfg: PubsubConfig,
    subc: SubscriberClient,
    /// The subscription's full name.
    name: String,
}

/// Retries of one call for what clears in a moment; longer outages are the caller's loop.
fn few_retries() -> RetrySetting {
    RetrySetting {
        from_millis: 50,
        max_delay: Some(Duration::from_secs(1)),
        factor: 2,
        take: 3,
        codes: vec![
            Code::Unavailable,
            Code::Unknown,
            Code::Aborted,
            Code::Internal,
        ],
    }
}

/// The subscription, as [`Holding`] needs it: acknowledge, and set ack deadlines.
struct Lease {
    subc: SubscriberClient,
    name: String,
}

#[async_trait]
impl Lender for Lease {
    async fn delete(&self, handles: Vec<String>) {
        use futures::stream::{self, StreamExt};
        stream::iter(handles.chunks(PER_ACK))
            .for_each_concurrent(4, |ids| async move {
                for attempt in 1..=5u32 {
                    let req = AcknowledgeRequest {
                        subscription: self.name.clone(),
                        ack_ids: ids.to_vec(),
                    };
                    match self.subc.acknowledge(req, Some(few_retries())).await {
                        Ok(_) => {
                            metrics::counter!("weir_pubsub_acked_total")
                                .increment(ids.len() as u64);
                            return;
                        }
                        Err(e) => tracing::warn!(subscription = %self.name, attempt, error = %gcp::describe(&e), "acknowledging on Pub/Sub failed"),
                    }
                    tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
                }
                tracing::warn!(subscription = %self.name, messages = ids.len(), "messages written but not acknowledged; Pub/Sub will deliver them again");
            })
            .await;
    }

    async fn hide(&self, handles: &[String], for_: Duration) {
        for ids in handles.chunks(PER_ACK) {
            let req = ModifyAckDeadlineRequest {
                subscription: self.name.clone(),
                ack_ids: ids.to_vec(),
                ack_deadline_seconds: for_.as_secs() as i32,
            };
            if let Err(e) = self
                .subc
                .modify_ack_deadline(req, Some(few_retries()))
                .await
            {
                tracing::warn!(subscription = %self.name, error = %gcp::describe(&e), "setting ack deadlines on Pub/Sub failed");
            }
        }
    }
}

#[async_trait]
impl Source for PubsubSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let PubsubSource { cfg, subc, name } = *self;
        tracing::info!(subscription = %name, "pubsub source starting");
        let lease = Arc::new(Lease {
            subc: subc.clone(),
            name: name.clone(),
        });
        let holding = Holding::start(
            lease.clone(),
            cfg.ack_deadline.0,
            cfg.max_in_flight,
            Some(cfg.max_in_flight_bytes),
        );
        let max = ctx.max_record_bytes;
        let receivers = cfg.receivers;
        holding
            .run(
                ctx,
                receivers,
                |room, out, stop| receive(lease.clone(), cfg.clone(), room, out, stop),
                |ctx, holding, m, asked| push(ctx, holding, m, asked, max),
            )
            .await
    }
}

/// Adds one message (pulled by a request made at `asked`) to the open batch; true when the batch
/// is full.
fn push(
    ctx: &mut SourceContext,
    holding: &Holding,
    m: ReceivedMessage,
    asked: Instant,
    max: usize,
) -> bool {
    let Some(msg) = m.message else {
        // Never sent by Pub/Sub; acknowledge nothing, the deadline hands it back.
        return false;
    };
    holding.hold(m.ack_id, msg.data.len(), asked);
    let mut record = Record::new(msg.data);
    if !msg.ordering_key.is_empty() {
        record.key = Some(bytes::Bytes::from(msg.ordering_key.into_bytes()));
    }
    if !msg.attributes.is_empty() {
        let mut headers: Vec<(String, bytes::Bytes)> = msg
            .attributes
            .into_iter()
            .map(|(k, v)| (k, bytes::Bytes::from(v.into_bytes())))
            .collect();
        headers.sort();
        record.meta = Some(Box::new(Meta {
            headers,
            timestamp: msg
                .publish_time
                .map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
            ..Meta::default()
        }));
    }
    if record.value.len() > max {
        let actual = record.value.len();
        ctx.emitter.push_failed(Failed {
            record,
            kind: FailureKind::Oversized { actual, limit: max },
            component: "source (pubsub)".into(),
            reason: format!("message of {actual} bytes is longer than limits.max_record_bytes"),
        })
    } else {
        ctx.emitter.push(record)
    }
}

/// One receiver: pulls while there is room, and leases what it pulls for `ack_deadline`.
async fn receive(
    lease: Arc<Lease>,
    cfg: PubsubConfig,
    room: Arc<Room>,
    out: mpsc::Sender<(Instant, Vec<ReceivedMessage>)>,
    stop: CancellationToken,
) {
    let per_pull = PER_PULL.min(cfg.max_in_flight);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = room.take(per_pull) => if r.is_none() { return },
        }
        // Pub/Sub starts a message's deadline when it answers: counting from the request errs on
        // the safe side.
        let asked = Instant::now();
        #[allow(deprecated)]
        let req = PullRequest {
            subscription: lease.name.clone(),
            return_immediately: false,
            max_messages: per_pull as i32,
        };
        let mut call = std::pin::pin!(lease.subc.pull(req, Some(few_retries())));
        // On a stop, a pull in flight is let finish (the messages it brings are emitted and
        // settled like the others); one still waiting after `STOP_GRACE` found nothing.
        let res = tokio::select! {
            _ = stop.cancelled() => match tokio::time::timeout(STOP_GRACE, &mut call).await {
                Ok(r) => r,
                Err(_) => { room.give_back(per_pull); return }
            },
            r = &mut call => r,
        };
        match res {
            Ok(resp) => {
                failures = 0;
                let msgs = resp.into_inner().received_messages;
                room.give_back(per_pull - msgs.len().min(per_pull));
                if msgs.is_empty() {
                    continue;
                }
                metrics::counter!("weir_pubsub_received_total").increment(msgs.len() as u64);
                // The subscription's own deadline may be shorter than weir's lease.
                let ids: Vec<String> = msgs.iter().map(|m| m.ack_id.clone()).collect();
                lease.hide(&ids, cfg.ack_deadline.0).await;
                if out.send((asked, msgs)).await.is_err() {
                    return;
                }
            }
            Err(e) if e.code() == Code::DeadlineExceeded => {
                // A pull that found nothing before the call timed out.
                room.give_back(per_pull);
            }
            Err(e) => {
                room.give_back(per_pull);
                failures += 1;
                tracing::warn!(subscription = %lease.name, error = %gcp::describe(&e), "pulling from Pub/Sub failed; retrying");
                let wait = crate::retry::REQUEST.delay(failures.min(10));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}
