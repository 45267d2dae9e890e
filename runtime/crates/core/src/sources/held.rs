//! Messages a queue lends weir until it says they are done: what the `sqs` and `pubsub` sources
//! share. A queue hands out a message with a handle (SQS's receipt handle, Pub/Sub's ack id) and
//! hides it from other consumers for a while; weir must delete (acknowledge) it once delivered,
//! keep it hidden while it works on it, and hand it back when it cannot deliver it.
//!
//! - **Room.** At most `max_in_flight` messages (and, if set, `max_bytes` of them) are held: a
//!   receiver takes room before asking for more, and gets it back when a batch is settled, so a
//!   slow pipeline stops the receiving instead of letting messages pile up (and their hiding
//!   lapse) in weir.
//! - **Settling.** A message is deleted only once the pipeline has acknowledged its batch (every
//!   sink, or the failure sink, durably took it). A batch the pipeline could not deliver (a
//!   shutdown with a failing sink) is handed back at once, as are, on a stop, the messages not
//!   written.
//! - **Hiding.** While held, a message's hiding is renewed (once held a quarter of `hide_for`, by
//!   `hide_for`), so a slow sink or a long retry does not hand it to another consumer.
//! - **Crashes.** A weir killed mid-run deletes nothing it had not delivered: what it held is
//!   handed out again when its hiding times out (at-least-once; duplicates are bounded by what
//!   was in flight).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::SourceContext;
use crate::ack::{Ack, AckHandler};

/// What a queue does with the handles of the messages it lent.
#[async_trait]
pub trait Lender: Send + Sync + 'static {
    /// Deletes (acknowledges) delivered messages. Retries as it sees fit and logs what it could
    /// not delete: such a message is read again (a duplicate, never a loss).
    async fn delete(&self, handles: Vec<String>);
    /// Keeps messages hidden `for_` longer; `Duration::ZERO` hands them out again now. Errors are
    /// logged: the worst case is a message read again.
    async fn hide(&self, handles: &[String], for_: Duration);
}

/// The messages weir holds: those of the open batch and of each batch in the pipeline, by ack
/// token, with when their hiding was last renewed and their bytes.
#[derive(Default)]
struct Held {
    open: Vec<String>,
    open_bytes: u64,
    open_since: Option<Instant>,
    sent: HashMap<u64, Lent>,
}

struct Lent {
    since: Instant,
    handles: Vec<String>,
    bytes: u64,
}

fn lock(m: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    m.lock().expect("a source's held messages lock poisoned")
}

/// Hears the pipeline's acknowledgements and tells the task that settles batches which one it
/// may settle. The batch's handles stay in [`Held`], and keep being hidden, until that task takes
/// them: a backlog of deletes does not let a delivered message reappear and be read twice.
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

/// How much weir holds, in messages and bytes, and the receivers' wait for room.
pub struct Room {
    messages: Arc<Semaphore>,
    bytes: AtomicU64,
    max_bytes: Option<u64>,
    freed: Notify,
}

impl Room {
    /// Waits until `n` more messages may be held (and the bytes held are under the limit), and
    /// takes room for them; give back what the receive did not use with [`Room::give_back`].
    /// `None` once the source is stopping.
    pub async fn take(&self, n: usize) -> Option<()> {
        if let Some(max) = self.max_bytes {
            loop {
                let freed = self.freed.notified();
                if self.bytes.load(Ordering::Acquire) < max {
                    break;
                }
                freed.await;
            }
        }
        self.messages
            .acquire_many(n as u32)
            .await
            .ok()
            .map(|p| p.forget())
    }

    /// Gives back room for `n` messages taken and not received.
    pub fn give_back(&self, n: usize) {
        self.messages.add_permits(n);
    }

    fn free(&self, messages: usize, bytes: u64) {
        self.messages.add_permits(messages);
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.notify_waiters();
    }

    fn close(&self) {
        self.messages.close();
        self.freed.notify_waiters();
    }
}

/// The held messages of one source run, and the tasks that renew and settle them.
pub struct Holding {
    held: Arc<Mutex<Held>>,
    room: Arc<Room>,
    handler: Arc<dyn AckHandler>,
    next_token: u64,
    done: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Holding {
    /// Starts holding for a source whose queue is `lender`: messages are hidden `hide_for` at a
    /// time, at most `max_in_flight` (and `max_bytes`) of them at once.
    pub fn start(
        lender: Arc<dyn Lender>,
        hide_for: Duration,
        max_in_flight: usize,
        max_bytes: Option<u64>,
    ) -> Self {
        let held = Arc::new(Mutex::new(Held::default()));
        let room = Arc::new(Room {
            messages: Arc::new(Semaphore::new(max_in_flight)),
            bytes: AtomicU64::new(0),
            max_bytes,
            freed: Notify::new(),
        });
        let (outcomes_tx, outcomes_rx) = mpsc::unbounded_channel();
        let handler: Arc<dyn AckHandler> = Arc::new(Acks {
            outcomes: outcomes_tx,
        });
        let done = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(settle(
                lender.clone(),
                held.clone(),
                room.clone(),
                outcomes_rx,
                done.clone(),
            )),
            tokio::spawn(keep_hidden(lender, hide_for, held.clone(), done.clone())),
        ];
        Holding {
            held,
            room,
            handler,
            next_token: 0,
            done,
            tasks,
        }
    }

    /// The room receivers take before they ask the queue for more.
    pub fn room(&self) -> Arc<Room> {
        self.room.clone()
    }

    /// Adds a message of `bytes` (received by a request made at `asked`) to the open batch.
    pub fn hold(&self, handle: String, bytes: usize, asked: Instant) {
        let mut h = lock(&self.held);
        h.open.push(handle);
        h.open_bytes += bytes as u64;
        // The open batch counts from its oldest message.
        h.open_since = Some(h.open_since.map_or(asked, |t| t.min(asked)));
        self.room.bytes.fetch_add(bytes as u64, Ordering::AcqRel);
    }

    /// Moves the open batch's handles under a new token and returns the batch's ack.
    fn seal(&mut self) -> Ack {
        let token = self.next_token;
        self.next_token += 1;
        let mut h = lock(&self.held);
        let handles = std::mem::take(&mut h.open);
        let bytes = std::mem::take(&mut h.open_bytes);
        let since = h.open_since.take().unwrap_or_else(Instant::now);
        h.sent.insert(
            token,
            Lent {
                since,
                handles,
                bytes,
            },
        );
        Ack::new(token, self.handler.clone())
    }

    /// Runs the source: `receivers` tasks made by `receiver` (given the room to take before each
    /// receive, where to send what they received with when they asked, and the stop) feed this
    /// loop, which `push`es each message into the open batch (true: the batch is full) and
    /// flushes batches as they fill or their time is up. On shutdown the receivers are stopped,
    /// what they already have is emitted too, and the held messages are settled.
    pub async fn run<M, F>(
        mut self,
        mut ctx: SourceContext,
        receivers: usize,
        receiver: impl Fn(Arc<Room>, mpsc::Sender<(Instant, Vec<M>)>, CancellationToken) -> F,
        mut push: impl FnMut(&mut SourceContext, &Holding, M, Instant) -> bool,
    ) -> anyhow::Result<()>
    where
        M: Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Receivers → this loop, through a channel of a few receives.
        let stop_receiving = CancellationToken::new();
        let (msgs_tx, mut msgs_rx) = mpsc::channel::<(Instant, Vec<M>)>(receivers);
        let tasks: Vec<_> = (0..receivers)
            .map(|_| {
                tokio::spawn(receiver(
                    self.room(),
                    msgs_tx.clone(),
                    stop_receiving.clone(),
                ))
            })
            .collect();
        drop(msgs_tx);

        loop {
            let deadline = ctx.emitter.deadline();
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                msgs = msgs_rx.recv() => {
                    let Some((asked, msgs)) = msgs else { break };
                    for m in msgs {
                        if push(&mut ctx, &self, m, asked) {
                            let ack = self.seal();
                            ctx.emitter.flush_with(ack).await?;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    let ack = self.seal();
                    ctx.emitter.flush_with(ack).await?;
                }
            }
        }

        // Stop receiving; what the receivers already have is emitted too, then the pipeline
        // acknowledges what it can before the held messages are settled. Read the channel until
        // every receiver is gone (a receiver waiting for room in it would otherwise never see
        // the stop).
        stop_receiving.cancel();
        while let Some((asked, msgs)) = msgs_rx.recv().await {
            for m in msgs {
                if push(&mut ctx, &self, m, asked) {
                    let ack = self.seal();
                    ctx.emitter.flush_with(ack).await?;
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
        let ack = self.seal();
        ctx.emitter.flush_with(ack).await?;
        self.finish().await;
        Ok(())
    }

    /// After the last batch is sealed: waits (up to 30 s) for the pipeline to acknowledge what it
    /// can, then stops renewing, settles what was acknowledged and hands back the rest.
    async fn finish(self) {
        let Holding {
            held,
            room,
            handler,
            done,
            tasks,
            ..
        } = self;
        room.close();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !lock(&held).sent.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(handler);
        done.cancel();
        for t in tasks {
            let _ = t.await;
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Keeps the messages weir holds hidden: every quarter of `hide_for`, renews those held that
/// long, 4 calls at once. Its own task, so that slow deletes never delay a renewal.
async fn keep_hidden(
    lender: Arc<dyn Lender>,
    hide_for: Duration,
    held: Arc<Mutex<Held>>,
    done: CancellationToken,
) {
    // A message is renewed once held a quarter of the time, at the latest half of it (ticks are a
    // quarter apart), leaving the other half for the call under load.
    let every = (hide_for / 4).max(Duration::from_millis(500));
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
            for lent in h.sent.values_mut() {
                if now - lent.since >= every {
                    due.extend(lent.handles.iter().cloned());
                    lent.since = now;
                }
            }
            due
        };
        if !due.is_empty() {
            metrics::counter!("weir_source_hiding_renewed_total").increment(due.len() as u64);
            use futures::stream::{self, StreamExt};
            stream::iter(due.chunks(100))
                .for_each_concurrent(4, |part| lender.hide(part, hide_for))
                .await;
        }
    }
}

/// Deletes delivered messages and hands back undelivered ones, as the pipeline acknowledges
/// their batches. Runs until `done`, then settles what is left: the outcomes already heard, and
/// every message still held is handed back.
async fn settle(
    lender: Arc<dyn Lender>,
    held: Arc<Mutex<Held>>,
    room: Arc<Room>,
    mut outcomes: mpsc::UnboundedReceiver<(u64, bool)>,
    done: CancellationToken,
) {
    let one = async |token: u64, delivered: bool| {
        let Some(lent) = lock(&held).sent.remove(&token) else {
            return;
        };
        let n = lent.handles.len();
        if delivered {
            lender.delete(lent.handles).await;
        } else {
            lender.hide(&lent.handles, Duration::ZERO).await;
        }
        room.free(n, lent.bytes);
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
        for (_, lent) in h.sent.drain() {
            rest.extend(lent.handles);
        }
        rest
    };
    if !rest.is_empty() {
        tracing::warn!(
            messages = rest.len(),
            "source stopping with messages not acknowledged; handing them back to the queue"
        );
        lender.hide(&rest, Duration::ZERO).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the holding asked of the queue.
    #[derive(Default)]
    struct Log {
        deleted: Mutex<Vec<String>>,
        hidden: Mutex<Vec<(String, Duration)>>,
    }

    #[async_trait]
    impl Lender for Log {
        async fn delete(&self, handles: Vec<String>) {
            self.deleted.lock().unwrap().extend(handles);
        }
        async fn hide(&self, handles: &[String], for_: Duration) {
            let mut h = self.hidden.lock().unwrap();
            h.extend(handles.iter().map(|x| (x.clone(), for_)));
        }
    }

    #[tokio::test]
    async fn delivered_batches_are_deleted_others_handed_back_and_room_returns() {
        let log = Arc::new(Log::default());
        let mut h = Holding::start(log.clone(), Duration::from_secs(60), 4, Some(10));
        let room = h.room();
        room.take(3).await.unwrap();
        assert_eq!(room.messages.available_permits(), 1);
        let now = Instant::now();
        h.hold("a".into(), 6, now);
        h.hold("b".into(), 6, now);
        let first = h.seal();
        h.hold("c".into(), 1, now);
        let second = h.seal();
        // 13 bytes held, over the limit of 10: no room until something is settled.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), room.take(1))
                .await
                .is_err(),
            "room was given while over max_bytes"
        );
        first.delivered();
        tokio::time::timeout(Duration::from_secs(5), room.take(1))
            .await
            .expect("room after the first batch was delivered")
            .unwrap();
        second.failed(); // not delivered: handed back.
        h.hold("d".into(), 1, now); // never sealed: handed back by finish.
        h.finish().await;
        assert_eq!(*log.deleted.lock().unwrap(), ["a", "b"]);
        let mut back: Vec<_> = log.hidden.lock().unwrap().clone();
        back.sort();
        assert_eq!(
            back,
            [("c".into(), Duration::ZERO), ("d".into(), Duration::ZERO)]
        );
    }
}
