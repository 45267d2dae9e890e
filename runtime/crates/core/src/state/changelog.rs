//! The changelog of durable state: a partitioned, compacted log that every checkpoint of input
//! partition `p` is appended to (the keys it changed, then a *marker* holding the input
//! position), so that an instance assigned `p` can replay the partition's state into its own
//! file (see [`super::disk`] and `docs/state.md`).
//!
//! Only the interface: where the log lives is the source's business (Kafka: a compacted topic on
//! the source's cluster, [`crate::kafka::changelog`]).

use std::fmt::Debug;
use std::time::Duration;

/// One partition's part of a checkpoint: changed keys (`None`: deleted), then the marker.
pub struct Append {
    pub partition: i32,
    pub records: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub marker: (Vec<u8>, Vec<u8>),
}

/// What [`Changelog::read`] calls for each record: `(offset, key, value)` (`None`: deleted).
pub type Visit<'a> = dyn FnMut(i64, &[u8], Option<&[u8]>) -> anyhow::Result<()> + 'a;

/// A connected changelog. Blocking: called from the source's checkpoint and assignment paths.
pub trait Changelog: Send + Sync + Debug {
    /// Its name (a topic), for logs.
    fn name(&self) -> &str;

    /// How long a deletion stays readable in the log (compaction forgets deletions after
    /// that): a file that last caught up longer ago than this may have missed deletions, so it
    /// is replayed from the start.
    fn tombstone_retention(&self) -> Duration;

    /// The (low, high) offsets of a partition of the log.
    fn watermarks(&self, partition: i32) -> anyhow::Result<(i64, i64)>;

    /// Appends each partition's records then its marker and waits until every one of them is
    /// delivered or failed; returns, per append, its marker's offset or why it failed. A marker
    /// is sent only after all its records, and an append is `Ok` only if every one of its
    /// records was delivered. Nothing sent is left in flight when this returns.
    fn append(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>>;

    /// The offset below which every transaction in `partition` is decided (Kafka's last stable
    /// offset): every committed record below it can be read. The high watermark when no
    /// transaction is open.
    fn stable_end(&self, partition: i32) -> anyhow::Result<i64>;

    /// Calls `f(offset, key, value)` for every committed record of `partition` in `[from, to)`
    /// (`to` at most [`Changelog::stable_end`]; records of aborted transactions are never
    /// seen); returns how many.
    fn read(&self, partition: i32, from: i64, to: i64, f: &mut Visit<'_>) -> anyhow::Result<usize>;

    /// Exactly-once: whether checkpoints append inside the pipeline's Kafka transaction
    /// ([`Changelog::append_in_transaction`]).
    fn transactional(&self) -> bool {
        false
    }

    /// Exactly-once: [`Changelog::append`] inside the pipeline's open transaction: readers
    /// see the records once it commits, never if it aborts. An error means the transaction
    /// can only be aborted.
    fn append_in_transaction(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
        let _ = appends;
        vec![]
    }
}
