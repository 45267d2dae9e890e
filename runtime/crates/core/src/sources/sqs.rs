//! `sqs`: reads an SQS queue, standard or FIFO.
//!
//! - **Receiving.** `receivers` long polls (ReceiveMessage, 10 messages, `wait_time`) run at once,
//!   as long as fewer than `max_in_flight` messages are held: a slow pipeline stops the receiving
//!   instead of letting messages pile up (and their visibility lapse) in weir.
//! - **Deleting.** A message is deleted only once the pipeline has acknowledged its batch (every
//!   sink, or the failure sink, durably took it); deletes go 10 to a call.
//! - **In flight.** While weir holds a message, its visibility is extended (once held a quarter
//!   of `visibility_timeout`, by `visibility_timeout`), so a slow sink or a long retry does not
//!   hand it to another consumer. A batch the pipeline could not deliver (a shutdown with a
//!   failing sink) is made visible again at once, as are, on a stop, the messages not written.
//! - **Crashes.** A weir killed mid-run deletes nothing it had not delivered: what it held
//!   becomes visible again when its visibility times out, and is read again (at-least-once;
//!   duplicates are bounded by what was in flight).
//!
//! The holding, extending and settling are [`super::held`]'s, shared with the `pubsub` source.
//!
//! Each message becomes one record: its body as it is, with the message group id (FIFO queues) as
//! the record key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use aws_sdk_sqs::Client;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::held::{Holding, Lender, Room};
use super::{Source, SourceConfig, SourceContext, SourceType};
use crate::aws::{self, SqsQueue};
use crate::config::{self, ConfigError, Origin};
use crate::record::{Failed, FailureKind, Record};
use crate::setup::BuildContext;

/// ReceiveMessage returns at most 10 messages; the batch calls take at most 10 entries.
const PER_CALL: usize = 10;
/// SQS's longest visibility timeout and long-poll wait.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
const MAX_WAIT: Duration = Duration::from_secs(20);
/// How long a stop waits for a receive in flight (plus a second), at most.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// ```toml
/// [source]
/// type = "sqs"
/// queue = "enriched-good"        # a queue name, or its URL
/// visibility_timeout = "30s"     # how long a message weir holds stays hidden; renewed while held
/// wait_time = "20s"              # long-poll wait of each receive (at most 20 s)
/// receivers = 2                  # receives in flight
/// max_in_flight = 10000          # messages received and not yet acknowledged
/// # region = "eu-west-1"
/// # endpoint_url = "http://127.0.0.1:4566"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqsConfig {
    pub queue: String,
    #[serde(default = "default_visibility")]
    pub visibility_timeout: config::Duration,
    #[serde(default = "default_wait")]
    pub wait_time: config::Duration,
    #[serde(default = "default_receivers")]
    pub receivers: usize,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// An IAM role to assume (through STS) for this component's requests.
    pub role_arn: Option<String>,
}

fn default_visibility() -> config::Duration {
    config::Duration(Duration::from_secs(30))
}
fn default_wait() -> config::Duration {
    config::Duration(MAX_WAIT)
}
fn default_receivers() -> usize {
    2
}
fn default_max_in_flight() -> usize {
    10_000
}

impl SourceType for SqsConfig {
    const TYPE: &'static str = "sqs";
}

#[async_trait]
impl SourceConfig for SqsConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        aws::check_role_arn(origin, self.role_arn.as_deref())?;
        aws::check_queue_name(origin, "queue", &self.queue)?;
        let vt = self.visibility_timeout.0;
        if vt < Duration::from_secs(3) || vt > MAX_VISIBILITY {
            return Err(origin.error(
                "visibility_timeout",
                format!("expected 3s to 12h (whole seconds), found {vt:?}"),
            ));
        }
        let wait = self.wait_time.0;
        if wait < Duration::from_secs(1) || wait > MAX_WAIT {
            return Err(origin.error(
                "wait_time",
                format!("expected 1s to 20s (SQS's longest poll), found {wait:?}"),
            ));
        }
        if self.receivers == 0 {
            return Err(origin.error("receivers", "expected at least 1, found 0"));
        }
        if self.max_in_flight < PER_CALL {
            return Err(origin.error(
                "max_in_flight",
                format!(
                    "expected at least {PER_CALL} (one receive), found {}",
                    self.max_in_flight
                ),
            ));
        }
        Ok(())
    }

    /// Creates the client and checks that the queue exists and the credentials are accepted.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let (client, queue) = aws::connect_sqs(
            &self.queue,
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            self.role_arn.as_deref(),
        )
        .await?;
        Ok(Box::new(SqsSource::with_client(
            self.clone(),
            client,
            queue,
        )))
    }
}

pub struct SqsSource {
    cfg: SqsConfig,
    client: Client,
    queue: SqsQueue,
}

impl SqsSource {
    /// A source for `cfg` with an already configured client and a resolved queue (tests, tools).
    pub fn with_client(cfg: SqsConfig, client: Client, queue: SqsQueue) -> Self {
        SqsSource { cfg, client, queue }
    }
}

/// The queue, as [`Holding`] needs it: delete, and change visibility.
struct Queue {
    client: Client,
    url: String,
}

#[async_trait]
impl Lender for Queue {
    async fn delete(&self, handles: Vec<String>) {
        delete(&self.client, &self.url, handles).await;
    }
    async fn hide(&self, handles: &[String], for_: Duration) {
        change_visibility(&self.client, &self.url, handles, for_).await;
    }
}

#[async_trait]
impl Source for SqsSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> anyhow::Result<()> {
        let SqsSource { cfg, client, queue } = *self;
        tracing::info!(queue = %queue.url, fifo = queue.fifo, "sqs source starting");
        let holding = Holding::start(
            Arc::new(Queue {
                client: client.clone(),
                url: queue.url.clone(),
            }),
            cfg.visibility_timeout.0,
            cfg.max_in_flight,
            None,
        );
        let max = ctx.max_record_bytes;
        let receivers = cfg.receivers;
        holding
            .run(
                ctx,
                receivers,
                |room, out, stop| {
                    receive(
                        client.clone(),
                        queue.url.clone(),
                        cfg.clone(),
                        room,
                        out,
                        stop,
                    )
                },
                |ctx, holding, m, asked| push(ctx, holding, m, asked, max),
            )
            .await
    }
}

/// Adds one message (received by a request made at `asked`) to the open batch; true when the
/// batch is full.
fn push(
    ctx: &mut SourceContext,
    holding: &Holding,
    m: Message,
    asked: Instant,
    max: usize,
) -> bool {
    let Some(handle) = m.receipt_handle else {
        return false;
    };
    holding.hold(handle, m.body.as_ref().map_or(0, String::len), asked);
    let key = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
        .map(|g| bytes::Bytes::copy_from_slice(g.as_bytes()));
    let mut record = Record::new(m.body.unwrap_or_default());
    record.key = key;
    if record.value.len() > max {
        let actual = record.value.len();
        ctx.emitter.push_failed(Failed {
            record,
            kind: FailureKind::Oversized { actual, limit: max },
            component: "source (sqs)".into(),
            reason: format!("message of {actual} bytes is longer than limits.max_record_bytes"),
        })
    } else {
        ctx.emitter.push(record)
    }
}

/// One receiver: long polls while there is room for 10 more messages in flight.
async fn receive(
    client: Client,
    url: String,
    cfg: SqsConfig,
    room: Arc<Room>,
    out: mpsc::Sender<(Instant, Vec<Message>)>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = room.take(PER_CALL) => if r.is_none() { return },
        }
        // SQS starts a message's visibility timeout when it answers: counting from the request
        // errs on the safe side.
        let asked = Instant::now();
        let mut call = std::pin::pin!(client
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(PER_CALL as i32)
            .wait_time_seconds(cfg.wait_time.0.as_secs() as i32)
            .visibility_timeout(cfg.visibility_timeout.0.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send());
        // On a stop, a receive in flight is let finish (the messages it brings are emitted and
        // settled like the others): SQS answers at once when it has messages, and a receive
        // dropped after SQS chose its messages would leave them hidden for a whole visibility
        // timeout. One still waiting after `STOP_GRACE` found an empty queue and is dropped.
        let res = tokio::select! {
            _ = stop.cancelled() => {
                let grace = cfg.wait_time.0.min(STOP_GRACE) + Duration::from_secs(1);
                match tokio::time::timeout(grace, &mut call).await {
                    Ok(r) => r,
                    Err(_) => { room.give_back(PER_CALL); return }
                }
            }
            r = &mut call => r,
        };
        match res {
            Ok(out_) => {
                failures = 0;
                let msgs = out_.messages.unwrap_or_default();
                // The room of the messages received is given back when their batch is
                // settled; the rest now.
                room.give_back(PER_CALL - msgs.len().min(PER_CALL));
                if msgs.is_empty() {
                    continue;
                }
                metrics::counter!("weir_sqs_received_total").increment(msgs.len() as u64);
                if out.send((asked, msgs)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                room.give_back(PER_CALL);
                failures += 1;
                tracing::warn!(queue = %url, error = %aws::describe(&e), "receiving from SQS failed; retrying");
                let wait = crate::retry::REQUEST.delay(failures.min(10));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Deletes messages, 10 to a call and 4 calls at once, retrying what fails a few times. A
/// message whose delete never succeeds is read again after its visibility timeout (a duplicate,
/// never a loss).
async fn delete(client: &Client, url: &str, handles: Vec<String>) {
    use futures::stream::{self, StreamExt};
    stream::iter(handles.chunks(PER_CALL))
        .for_each_concurrent(4, |chunk| delete_chunk(client, url, chunk))
        .await;
}

async fn delete_chunk(client: &Client, url: &str, chunk: &[String]) {
    {
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        for attempt in 1..=5u32 {
            let entries = pending
                .iter()
                .map(|&i| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(&chunk[i])
                        .build()
                        .expect("id and handle are set")
                })
                .collect();
            match client
                .delete_message_batch()
                .queue_url(url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    metrics::counter!("weir_sqs_deleted_total")
                        .increment(out.successful().len() as u64);
                    let failed: Vec<usize> = out
                        .failed()
                        .iter()
                        .filter(|f| !f.sender_fault())
                        .filter_map(|f| f.id().parse().ok())
                        .collect();
                    for f in out.failed().iter().filter(|f| f.sender_fault()) {
                        tracing::warn!(queue = %url, code = f.code(), "SQS refused a delete; the message will be read again");
                    }
                    pending = failed;
                }
                Err(e) => {
                    tracing::warn!(queue = %url, attempt, error = %aws::describe(&e), "deleting from SQS failed");
                }
            }
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
        }
        if !pending.is_empty() {
            tracing::warn!(queue = %url, messages = pending.len(), "messages written but not deleted; they will be read again");
        }
    }
}

/// Sets the visibility timeout of held messages, 10 to a call (errors are logged: the worst case
/// is a message read again).
async fn change_visibility(client: &Client, url: &str, handles: &[String], timeout: Duration) {
    for chunk in handles.chunks(PER_CALL) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(timeout.as_secs() as i32)
                    .build()
                    .expect("id and handle are set")
            })
            .collect();
        if let Err(e) = client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            tracing::warn!(queue = %url, error = %aws::describe(&e), "changing message visibility on SQS failed");
        }
    }
}
