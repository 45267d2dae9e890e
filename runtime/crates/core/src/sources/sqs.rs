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
//! Each message becomes one record: its body as it is, with the message group id (FIFO queues) as
//! the record key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use aws_sdk_sqs::Client;
use serde::Deserialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{Source, SourceConfig, SourceContext, SourceType};
use crate::ack::{Ack, AckHandler};
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

/// The messages weir holds: those of the open batch and of each batch in the pipeline, by ack
/// token, with when their visibility was last extended.
#[derive(Default)]
struct Held {
    open: Vec<String>,
    open_since: Option<Instant>,
    sent: HashMap<u64, (Instant, Vec<String>)>,
}

/// Hears the pipeline's acknowledgements and tells the task that deletes delivered messages
/// (and makes undelivered ones visible again) which batch it may settle. The batch's handles stay
/// in [`Held`], and keep being extended, until that task takes them: a backlog of deletes does
/// not let a delivered message become visible again and be read twice.
struct Acks {
    outcomes: mpsc::UnboundedSender<(u64, bool)>,
}

impl AckHandler for Acks {
    fn acked(&self, token: u64, delivered: bool) {
        // Bounded by construction: one entry per batch in flight, and at most `max_in_flight`
        // messages are.
        let _ = self.outcomes.send((token, delivered));
    }
}

fn lock(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().expect("the sqs source's lock poisoned")
}

#[async_trait]
impl Source for SqsSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let SqsSource { cfg, client, queue } = *self;
        tracing::info!(queue = %queue.url, fifo = queue.fifo, "sqs source starting");
        let held = Arc::new(Mutex::new(Held::default()));
        let room = Arc::new(Semaphore::new(cfg.max_in_flight));
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        let handler: Arc<dyn AckHandler> = Arc::new(Acks {
            outcomes: outcomes_tx,
        });

        // Receivers → this loop, through a channel of a few receives.
        let stop_receiving = CancellationToken::new();
        let (msgs_tx, mut msgs_rx) = mpsc::channel::<(Instant, Vec<Message>)>(cfg.receivers);
        let mut receivers = Vec::new();
        for _ in 0..cfg.receivers {
            receivers.push(tokio::spawn(receive(
                client.clone(),
                queue.url.clone(),
                cfg.clone(),
                room.clone(),
                msgs_tx.clone(),
                stop_receiving.clone(),
            )));
        }
        drop(msgs_tx);
        let done_acking = CancellationToken::new();
        let acker = tokio::spawn(settle(
            client.clone(),
            queue.url.clone(),
            held.clone(),
            room.clone(),
            outcomes_rx,
            done_acking.clone(),
        ));
        let extender = tokio::spawn(keep_hidden(
            client.clone(),
            queue.url.clone(),
            cfg.visibility_timeout.0,
            held.clone(),
            done_acking.clone(),
        ));

        let max = ctx.max_record_bytes;
        let mut next_token = 0u64;
        // Moves the open batch's handles under a token and returns the batch's ack.
        let mut seal = |held: &Mutex<Held>| -> Ack {
            let token = next_token;
            next_token += 1;
            let mut h = lock(held);
            let handles = std::mem::take(&mut h.open);
            let since = h.open_since.take().unwrap_or_else(Instant::now);
            h.sent.insert(token, (since, handles));
            Ack::new(token, handler.clone())
        };

        loop {
            let deadline = ctx.emitter.deadline();
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                msgs = msgs_rx.recv() => {
                    let Some((asked, msgs)) = msgs else { break };
                    for m in msgs {
                        if push(&mut ctx, &held, m, asked, max) {
                            let ack = seal(&held);
                            ctx.emitter.flush_with(ack).await?;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    let ack = seal(&held);
                    ctx.emitter.flush_with(ack).await?;
                }
            }
        }

        // Stop receiving; what the receivers already have is emitted too, then the pipeline
        // acknowledges what it can before the held messages are settled.
        // Read the channel until every receiver is gone (a receiver waiting for room in it
        // would otherwise never see the stop).
        stop_receiving.cancel();
        while let Some((asked, msgs)) = msgs_rx.recv().await {
            for m in msgs {
                if push(&mut ctx, &held, m, asked, max) {
                    let ack = seal(&held);
                    ctx.emitter.flush_with(ack).await?;
                }
            }
        }
        for r in receivers {
            let _ = r.await;
        }
        let ack = seal(&held);
        ctx.emitter.flush_with(ack).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lock(&held).sent.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(handler);
        done_acking.cancel();
        let _ = extender.await;
        let _ = acker.await;
        Ok(())
    }
}

/// Adds one message (received by a request made at `asked`) to the open batch; true when the
/// batch is full.
fn push(
    ctx: &mut SourceContext,
    held: &Mutex<Held>,
    m: Message,
    asked: Instant,
    max: usize,
) -> bool {
    let Some(handle) = m.receipt_handle else {
        return false;
    };
    {
        let mut h = lock(held);
        h.open.push(handle);
        // The open batch counts from its oldest message.
        h.open_since = Some(h.open_since.map_or(asked, |t| t.min(asked)));
    }
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

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One receiver: long polls while there is room for 10 more messages in flight.
async fn receive(
    client: Client,
    url: String,
    cfg: SqsConfig,
    room: Arc<Semaphore>,
    out: mpsc::Sender<(Instant, Vec<Message>)>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let permits = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            p = room.clone().acquire_many_owned(PER_CALL as u32) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
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
                    Err(_) => return,
                }
            }
            r = &mut call => r,
        };
        match res {
            Ok(out_) => {
                failures = 0;
                let msgs = out_.messages.unwrap_or_default();
                // The permits of the messages received are given back when their batch is
                // acknowledged; the rest now.
                permits.forget();
                room.add_permits(PER_CALL - msgs.len().min(PER_CALL));
                if msgs.is_empty() {
                    continue;
                }
                metrics::counter!("weir_sqs_received_total").increment(msgs.len() as u64);
                if out.send((asked, msgs)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                drop(permits);
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

/// Keeps the messages weir holds hidden: every quarter of the visibility timeout, extends those
/// held that long, 4 calls at once. Its own task, so that slow deletes never delay an extension.
async fn keep_hidden(
    client: Client,
    url: String,
    visibility: Duration,
    held: Arc<Mutex<Held>>,
    done: CancellationToken,
) {
    // A message is extended once held a quarter of the timeout, at the latest half of it
    // (ticks are a quarter apart), leaving the other half for the call under load.
    let every = (visibility / 4).max(Duration::from_millis(500));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due: Vec<String> = {
            let now = Instant::now();
            let mut h = lock(&held);
            let mut due = Vec::new();
            if h.open_since.is_some_and(|t| now - t >= every) {
                due.extend(h.open.iter().cloned());
                h.open_since = Some(now);
            }
            for (since, handles) in h.sent.values_mut() {
                if now - *since >= every {
                    due.extend(handles.iter().cloned());
                    *since = now;
                }
            }
            due
        };
        if !due.is_empty() {
            metrics::counter!("weir_sqs_visibility_extended_total").increment(due.len() as u64);
            use futures::stream::{self, StreamExt};
            stream::iter(due.chunks(PER_CALL * 10))
                .for_each_concurrent(4, |part| change_visibility(&client, &url, part, visibility))
                .await;
        }
    }
}

/// Deletes delivered messages and makes undelivered ones visible again, as the pipeline
/// acknowledges their batches. Runs until `done`, then settles what is left: the outcomes
/// already heard, and every message still held is made visible again.
async fn settle(
    client: Client,
    url: String,
    held: Arc<Mutex<Held>>,
    room: Arc<Semaphore>,
    mut outcomes: mpsc::UnboundedReceiver<(u64, bool)>,
    done: CancellationToken,
) {
    let one = async |token: u64, delivered: bool| {
        let Some((_, handles)) = lock(&held).sent.remove(&token) else {
            return;
        };
        let n = handles.len();
        if delivered {
            delete(&client, &url, handles).await;
        } else {
            change_visibility(&client, &url, &handles, Duration::ZERO).await;
        }
        room.add_permits(n);
    };
    loop {
        tokio::select! {
            o = outcomes.recv() => {
                let Some((token, delivered)) = o else { break };
                one(token, delivered).await;
            }
            _ = done.cancelled() => break,
        }
    }
    while let Ok((token, delivered)) = outcomes.try_recv() {
        one(token, delivered).await;
    }
    let rest: Vec<String> = {
        let mut h = lock(&held);
        let mut rest = std::mem::take(&mut h.open);
        for (_, (_, handles)) in h.sent.drain() {
            rest.extend(handles);
        }
        rest
    };
    if !rest.is_empty() {
        tracing::warn!(
            messages = rest.len(),
            "sqs source stopping with messages not acknowledged; making them visible again"
        );
        change_visibility(&client, &url, &rest, Duration::ZERO).await;
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
