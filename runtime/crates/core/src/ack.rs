//! End-to-end acknowledgements.
//!
//! A source hands every batch an [`Ack`]. The router splits a batch into up to three parts (main,
//! filtered, failure), each holding a clone. A sink calls [`Ack::delivered`] once it has durably
//! accepted its part; a clone dropped any other way (a failed write, a shutdown) marks the batch
//! as not delivered. When the last clone is gone the source's [`AckHandler`] hears the outcome,
//! exactly once. One `Arc` per batch, nothing per record.
//!
//! Sources that commit positions (Kafka offsets, Kinesis checkpoints) feed outcomes into an
//! [`OrderedAcks`], which only ever releases a position once everything before it is acknowledged.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.handler
            .acked(self.token, !self.failed.load(Ordering::Acquire));
    }
}

/// A share in one batch's acknowledgement. Cloning makes another share; the batch counts as
/// delivered only if every share was consumed by [`Ack::delivered`].
#[derive(Default)]
pub struct Ack {
    inner: Option<Arc<Inner>>,
}

impl Ack {
    pub fn new(token: u64, handler: Arc<dyn AckHandler>) -> Self {
        Ack {
            inner: Some(Arc::new(Inner {
                token,
                failed: AtomicBool::new(false),
                handler,
            })),
        }
    }

    /// An ack nobody listens to (tests, tools).
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(u64, bool)>>);
    impl AckHandler for Log {
        fn acked(&self, token: u64, delivered: bool) {
            self.0.lock().unwrap().push((token, delivered));
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
        assert!(log.0.lock().unwrap().is_empty(), "one share still out");
        b.delivered();
        assert_eq!(*log.0.lock().unwrap(), vec![(7, true)]);
    }

    #[test]
    fn a_dropped_share_fails_the_batch() {
        let log = Arc::new(Log::default());
        let ack = Ack::new(1, log.clone());
        let a = ack.clone();
        ack.delivered();
        drop(a);
        assert_eq!(*log.0.lock().unwrap(), vec![(1, false)]);
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
}
