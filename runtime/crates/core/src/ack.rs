//! End-to-end acknowledgements.
//!
//! **A source builds the acknowledgement of every batch it emits and hands it over with the
//! batch** ([`crate::sources::Emitter::flush_with`], [`crate::sources::Emitter::send`]). A source
//! that commits positions makes it with [`PositionAcks::ack_for`] from the position the batch
//! reaches in its input (a Kafka partition's next offset, a Kinesis shard's last sequence
//! number); a source that cannot commit (stdin, files, the collector) hands over
//! [`Ack::none`]. The emitter wraps the source's ack in the pipeline's own share-counted
//! [`Ack`], which also feeds the pipeline's count of delivered records ([`AckCounter`]).
//!
//! The router splits a batch into up to three parts (main, filtered, failure), each holding a
//! clone of its [`Ack`]. A sink calls [`Ack::delivered`] once it has durably accepted its part; a
//! clone dropped any other way (a failed write, a shutdown) marks the batch as not delivered.
//! When the last clone is gone the pipeline counts the outcome and the source's own ack hears
//! it, exactly once. Per batch: one `Arc` for the pipeline's ack, one for the source's (if any);
//! nothing per record.
//!
//! [`OrderedAcks`] (inside [`PositionAcks`]) only ever releases a position once everything
//! before it is acknowledged, so a commit never skips a record that has not been written.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::observe::Stats;

/// Receives the outcome of each batch a source emitted.
pub trait AckHandler: Send + Sync {
    /// `token` is the value the source gave [`Ack::new`]; `delivered` is false if any part of the
    /// batch was dropped without being delivered.
    fn acked(&self, token: u64, delivered: bool);
}

struct Inner {
    token: u64,
    failed: AtomicBool,
    handler: Arc<dyn AckHandler>,
    /// An acknowledgement that hears this one's outcome after `handler` (the source's, inside
    /// the pipeline's).
    then: Ack,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let delivered = !self.failed.load(Ordering::Acquire);
        self.handler.acked(self.token, delivered);
        let then = std::mem::take(&mut self.then);
        if delivered {
            then.delivered();
        }
    }
}

/// A share in one batch's acknowledgement. Cloning makes another share; the batch counts as
/// delivered only if every share was consumed by [`Ack::delivered`].
#[derive(Default)]
pub struct Ack {
    inner: Option<Arc<Inner>>,
}

impl Ack {
    /// An acknowledgement whose outcome `handler` hears with `token`.
    pub fn new(token: u64, handler: Arc<dyn AckHandler>) -> Self {
        Self::chained(token, handler, Ack::none())
    }

    /// An acknowledgement whose outcome `handler` hears with `token`, and then `then` (which
    /// is delivered if this one was, and fails otherwise).
    pub fn chained(token: u64, handler: Arc<dyn AckHandler>, then: Ack) -> Self {
        Ack {
            inner: Some(Arc::new(Inner {
                token,
                failed: AtomicBool::new(false),
                handler,
                then,
            })),
        }
    }

    /// An ack nobody listens to: what a source that cannot commit hands over (and tests, tools).
    pub fn none() -> Self {
        Ack { inner: None }
    }

    /// This share was durably accepted.
    pub fn delivered(mut self) {
        self.inner.take();
    }

    /// This share was not delivered: the whole batch will be reported as failed.
    pub fn failed(self) {
        drop(self)
    }
}

impl Clone for Ack {
    fn clone(&self) -> Self {
        Ack {
            inner: self.inner.clone(),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.failed.store(true, Ordering::Release);
        }
    }
}

impl fmt::Debug for Ack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            Some(i) => write!(f, "Ack({})", i.token),
            None => f.write_str("Ack(none)"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("the engine map lock poisoned")
}

/// The acknowledgements of one stream of positions a source reads (a Kafka partition under one
/// assignment, a Kinesis shard): each batch emitted from it gets its [`Ack`] from
/// [`PositionAcks::ack_for`] with the position the batch reaches, and the source commits
/// [`PositionAcks::released`].
pub struct PositionAcks<P> {
    /// Names the stream in logs (e.g. `topic/3`).
    label: String,
    state: Mutex<PositionState<P>>,
}

struct PositionState<P> {
    order: OrderedAcks<P>,
    released: Option<P>,
}

impl<P: Clone + Send + 'static> PositionAcks<P> {
    pub fn new(label: impl Into<String>) -> Arc<Self> {
        Arc::new(PositionAcks {
            label: label.into(),
            state: Mutex::new(PositionState {
                order: OrderedAcks::new(),
                released: None,
            }),
        })
    }

    /// The acknowledgement of the next batch emitted from this stream, which reaches `position`
    /// (what to commit once it and every batch before it are delivered). Batches must be
    /// emitted in the order of their positions.
    pub fn ack_for(self: &Arc<Self>, position: P) -> Ack {
        let token = lock(&self.state).order.push(position);
        Ack::new(token, self.clone() as Arc<dyn AckHandler>)
    }

    /// The furthest position up to which every batch was delivered (`None`: none yet); it only
    /// moves forward, and never past a batch that failed.
    pub fn released(&self) -> Option<P> {
        lock(&self.state).released.clone()
    }

    /// Batches emitted whose position is not released yet (pending, or failed and blocking).
    pub fn in_flight(&self) -> usize {
        lock(&self.state).order.in_flight()
    }

    /// Batches emitted whose outcome is not known yet, and whether one was not delivered.
    pub fn unsettled(&self) -> (usize, bool) {
        lock(&self.state).order.unsettled()
    }
}

impl<P: Clone + Send + 'static> AckHandler for PositionAcks<P> {
    fn acked(&self, token: u64, delivered: bool) {
        let mut s = lock(&self.state);
        s.order.ack(token, delivered);
        if let Some(p) = s.order.committable() {
            s.released = Some(p);
        }
        if !delivered {
            tracing::error!(stream = %self.label, "a batch was not delivered: positions of this stream stay where they are");
        }
    }
}

/// The pipeline's count of delivered records: records of acknowledged batches, in emission
/// order from the start (a batch that failed stops the count, as it stops a commit).
#[derive(Default)]
pub struct AckCounter {
    inner: Mutex<CounterState>,
    stats: Option<Arc<Stats>>,
    /// Per batch in flight (by token), what its latencies are measured from.
    timings: Mutex<std::collections::HashMap<u64, Timing>>,
}

/// When a batch's records were read and, for enriched events when `[metrics] e2e_latency` is
/// on, when the collector received each (`collector_tstamp`, ms since the epoch). On the batch's
/// acknowledgement they become `weir_processing_latency_seconds` (read → acknowledged by every
/// sink, per record) and `weir_e2e_latency_seconds` (collector → acknowledged, per event).
#[derive(Debug)]
pub struct Timing {
    pub read: std::time::Instant,
    pub records: usize,
    pub collector_ms: Vec<i64>,
}

#[derive(Default)]
struct CounterState {
    order: OrderedAcks<u64>,
    emitted: u64,
    acknowledged: u64,
}

impl AckCounter {
    /// A counter that also reports into `stats` (the `acked` total).
    pub fn new(stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(AckCounter {
            inner: Mutex::default(),
            stats: Some(stats),
            timings: Mutex::default(),
        })
    }

    /// [`AckCounter::track`], with what the batch's latencies are measured from.
    pub fn track_timed(self: &Arc<Self>, records: usize, ack: Ack, timing: Timing) -> Ack {
        let mut inner = lock(&self.inner);
        inner.emitted += records as u64;
        let pos = inner.emitted;
        let token = inner.order.push(pos);
        drop(inner);
        lock(&self.timings).insert(token, timing);
        Ack::chained(token, self.clone() as Arc<dyn AckHandler>, ack)
    }

    /// The pipeline's acknowledgement of a batch of `records` records, wrapping the source's
    /// own `ack` (which hears the outcome after the count).
    pub fn track(self: &Arc<Self>, records: usize, ack: Ack) -> Ack {
        let mut inner = lock(&self.inner);
        inner.emitted += records as u64;
        let pos = inner.emitted;
        let token = inner.order.push(pos);
        drop(inner);
        Ack::chained(token, self.clone() as Arc<dyn AckHandler>, ack)
    }

    /// Records acknowledged in order from the start.
    pub fn acknowledged(&self) -> u64 {
        lock(&self.inner).acknowledged
    }
}

impl AckHandler for AckCounter {
    fn acked(&self, token: u64, delivered: bool) {
        if let Some(t) = lock(&self.timings).remove(&token).filter(|_| delivered) {
            let processing = t.read.elapsed();
            metrics::histogram!("weir_processing_latency_seconds")
                .record_many(processing.as_secs_f64(), t.records);
            crate::observe::PROCESSING_LATENCY.record(processing);
            if !t.collector_ms.is_empty() {
                let now = weir_snowplow::now_ms();
                let e2e = metrics::histogram!("weir_e2e_latency_seconds");
                for ms in t.collector_ms {
                    let d = (now - ms).max(0) as u64;
                    e2e.record(d as f64 / 1000.0);
                    crate::observe::E2E_LATENCY.record(std::time::Duration::from_millis(d));
                }
            }
        }
        let mut inner = lock(&self.inner);
        inner.order.ack(token, delivered);
        if let Some(pos) = inner.order.committable() {
            let newly = pos - inner.acknowledged;
            inner.acknowledged = pos;
            if let Some(s) = &self.stats {
                s.record_acked(newly);
            }
        }
    }
}

/// Tracks positions in emission order and releases the highest position up to which every batch
/// has been acknowledged, so a commit never skips a record that has not been written.
#[derive(Debug)]
pub struct OrderedAcks<P> {
    first_seq: u64,
    pending: VecDeque<(P, Outcome)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Delivered,
    Failed,
}

impl<P: Clone> Default for OrderedAcks<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Clone> OrderedAcks<P> {
    pub fn new() -> Self {
        OrderedAcks {
            first_seq: 0,
            pending: VecDeque::new(),
        }
    }

    /// Register the position reached by the next batch; returns its sequence number (the token to
    /// give [`Ack::new`]).
    pub fn push(&mut self, position: P) -> u64 {
        self.pending.push_back((position, Outcome::Pending));
        self.first_seq + self.pending.len() as u64 - 1
    }

    /// Record the outcome of batch `seq`.
    pub fn ack(&mut self, seq: u64, delivered: bool) {
        if seq < self.first_seq {
            return;
        }
        if let Some(slot) = self.pending.get_mut((seq - self.first_seq) as usize) {
            slot.1 = if delivered {
                Outcome::Delivered
            } else {
                Outcome::Failed
            };
        }
    }

    /// Pops the contiguous run of delivered batches at the front and returns the last position of
    /// that run, i.e. the position that is now safe to commit. Stops at the first batch that is
    /// pending or failed: a failed batch is never committed past.
    pub fn committable(&mut self) -> Option<P> {
        let mut last = None;
        while let Some((_, Outcome::Delivered)) = self.pending.front() {
            let (p, _) = self.pending.pop_front().expect("front exists");
            self.first_seq += 1;
            last = Some(p);
        }
        last
    }

    /// True if some batch before the commit point failed (the source must not commit past it).
    pub fn blocked_by_failure(&self) -> bool {
        matches!(self.pending.front(), Some((_, Outcome::Failed)))
    }

    /// Batches emitted and not yet released.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Batches whose outcome is not known yet, and whether one failed.
    pub fn unsettled(&self) -> (usize, bool) {
        let pending = self
            .pending
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Pending))
            .count();
        let failed = self
            .pending
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Failed));
        (pending, failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u64, bool)>>);
    impl AckHandler for Log {
        fn acked(&self, token: u64, delivered: bool) {
            self.0
                .lock()
                .expect("lock poisoned")
                .push((token, delivered));
        }
    }

    #[test]
    fn fires_once_when_every_share_is_delivered() {
        let log = Arc::new(Log::default());
        let ack = Ack::new(7, log.clone());
        let a = ack.clone();
        let b = ack.clone();
        ack.delivered();
        a.delivered();
        assert!(
            log.0.lock().expect("lock poisoned").is_empty(),
            "one share still out"
        );
        b.delivered();
        assert_eq!(*log.0.lock().expect("lock poisoned"), vec![(7, true)]);
    }

    #[test]
    fn a_dropped_share_fails_the_batch() {
        let log = Arc::new(Log::default());
        let ack = Ack::new(1, log.clone());
        let a = ack.clone();
        ack.delivered();
        drop(a);
        assert_eq!(*log.0.lock().expect("lock poisoned"), vec![(1, false)]);
    }

    #[test]
    fn ordered_acks_never_skip_a_pending_batch() {
        let mut o = OrderedAcks::new();
        let s0 = o.push(10);
        let s1 = o.push(20);
        let s2 = o.push(30);
        o.ack(s2, true);
        o.ack(s1, true);
        assert_eq!(o.committable(), None, "batch 0 still pending");
        o.ack(s0, true);
        assert_eq!(o.committable(), Some(30));
        assert_eq!(o.in_flight(), 0);
        let s3 = o.push(40);
        let s4 = o.push(50);
        o.ack(s3, false);
        o.ack(s4, true);
        assert_eq!(o.committable(), None);
        assert!(o.blocked_by_failure());
    }

    #[test]
    fn unsettled_counts_batches_without_an_outcome_and_notices_a_failed_one() {
        let acks = PositionAcks::new("t/0");
        let (a, b, c) = (acks.ack_for(1), acks.ack_for(2), acks.ack_for(3));
        assert_eq!(acks.unsettled(), (3, false));
        b.delivered();
        assert_eq!(acks.unsettled(), (2, false));
        drop(a); // not delivered: blocks the positions for good
        assert_eq!(acks.unsettled(), (1, true));
        c.delivered();
        assert_eq!(acks.unsettled(), (0, true), "settled, one failed");
        assert_eq!(
            acks.in_flight(),
            3,
            "nothing released past the failed batch"
        );
    }

    #[test]
    fn a_chained_ack_hears_the_outcome_after_the_outer_one() {
        let log = Arc::new(Log::default());
        let source = Ack::new(1, log.clone());
        let ack = Ack::chained(2, log.clone(), source);
        let part = ack.clone();
        ack.delivered();
        assert!(log.0.lock().expect("lock poisoned").is_empty());
        part.delivered();
        assert_eq!(
            *log.0.lock().expect("lock poisoned"),
            vec![(2, true), (1, true)]
        );

        let log = Arc::new(Log::default());
        let ack = Ack::chained(2, log.clone(), Ack::new(1, log.clone()));
        ack.failed();
        assert_eq!(
            *log.0.lock().expect("lock poisoned"),
            vec![(2, false), (1, false)]
        );
    }

    #[test]
    fn position_acks_release_in_order_and_stop_at_a_failure() {
        let p = PositionAcks::<i64>::new("t/0");
        let a = p.ack_for(10);
        let b = p.ack_for(20);
        let c = p.ack_for(30);
        assert_eq!(p.in_flight(), 3);
        b.delivered();
        assert_eq!(p.released(), None, "10 still pending");
        a.delivered();
        assert_eq!(p.released(), Some(20));
        drop(c);
        let d = p.ack_for(40);
        d.delivered();
        assert_eq!(p.released(), Some(20), "never past the failed batch");
        assert_eq!(p.in_flight(), 2);
    }

    #[test]
    fn the_counter_counts_records_delivered_in_order_and_passes_outcomes_on() {
        let stats = Arc::new(Stats::default());
        let counter = AckCounter::new(stats.clone());
        let source = PositionAcks::<u32>::new("s");
        let a = counter.track(3, source.ack_for(1));
        let b = counter.track(5, Ack::none());
        b.delivered();
        assert_eq!(counter.acknowledged(), 0);
        a.delivered();
        assert_eq!(counter.acknowledged(), 8);
        assert_eq!(stats.snapshot().acked, 8);
        assert_eq!(source.released(), Some(1), "the source heard its batch");
    }
}
