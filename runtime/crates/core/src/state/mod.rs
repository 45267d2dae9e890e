//! Keyed transform state, owned by the host (not by the transforms that use it).
//!
//! A [`StateBackend`] opens one [`StateStore`] per [`StateScope`]: a transform of a pipeline and
//! a partition of its input. Batches of a partitioned source (Kafka) each hold records of one
//! partition ([`crate::record::Batch::position`]), so each transform call works on the state of
//! that partition; unpartitioned sources use one scope (topic "", partition 0).
//!
//! A transform never writes to a store directly: its host (e.g. the WebAssembly host, which
//! collects the writes of one guest call) [`StateStore::commit`]s the writes of a call only if
//! the call succeeds, so a trap never leaves half of a batch's writes behind. Each commit carries
//! the input position ([`At`]) of the batch that produced it: a durable backend
//! ([`disk::DiskState`], also a [`Checkpointed`]) keeps writes in memory until the source asks
//! it to make the effects of its acknowledged input durable, before the source commits that
//! position. See `docs/state.md`.
//!
//! * [`MemoryBackend`]: in process memory (the default).
//! * [`disk`]: on disk (redb), checkpointed with the source's positions, optionally mirrored to
//!   a [`changelog::Changelog`] so that a partition's state follows it to another instance.
//!
//! Every transform has a [`Budget`] (bytes and keys it may keep on this instance, over all its
//! partitions), enforced by the backends at [`StateStore::commit`]: a commit that would take the
//! transform over it is refused whole ([`OverBudget`]), and a commit that does not grow the state
//! (updates of existing keys of the same size, deletions) always goes through. What each
//! transform holds is its [`Usage`], published as the gauges `weir_state_bytes` and
//! `weir_state_keys` (label `transform`), beside `weir_state_budget_bytes` and
//! `weir_state_budget_keys`.
//!
//! Nothing here knows where input or changelog live: the source that drives a [`Checkpointed`]
//! backend connects its changelog (the Kafka source: [`crate::kafka::changelog`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::record::PartitionId;

pub mod changelog;
pub mod disk;
mod memory;

pub use changelog::Changelog;
pub use disk::{DiskState, StateConfig};
pub use memory::{MemoryBackend, MemoryStore};

/// Which state: one transform of one pipeline, one partition of its input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateScope {
    /// The transform's state name (its label in the pipeline, e.g. `transforms[1] (wasm)`,
    /// unless the config names it).
    pub transform: String,
    /// The input partition (topic "", partition 0 for unpartitioned sources).
    pub partition: PartitionId,
}

impl StateScope {
    /// The scope of an unpartitioned input.
    pub fn unpartitioned(transform: &str) -> StateScope {
        StateScope {
            transform: transform.to_string(),
            partition: PartitionId::default(),
        }
    }
}

/// One write of a committed guest call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub key: Vec<u8>,
    /// `None` deletes the key.
    pub value: Option<Vec<u8>>,
    /// When the value expires (ms since the Unix epoch).
    pub expires_at_ms: Option<i64>,
}

impl Write {
    /// Bytes of its key and value.
    pub fn bytes(&self) -> usize {
        self.key.len() + self.value.as_ref().map_or(0, Vec::len)
    }
}

/// The input position a guest call's writes reflect: the batch's partition assignment
/// generation and the position after its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub epoch: u64,
    pub end: u64,
}

/// Where state lives. Implementations must be cheap to share between worker threads.
pub trait StateBackend: Send + Sync + Debug {
    /// The store of `scope`, created empty if new. Cheap: called once per batch.
    fn open(&self, scope: &StateScope) -> anyhow::Result<Arc<dyn StateStore>>;
    /// What `transform` holds (all its scopes on this instance) against its budget; set the
    /// budget there ([`Usage::set_budget`]) before its first commit.
    fn usage(&self, transform: &str) -> Arc<Usage>;
}

/// What a transform may keep in state on this instance, over all its partitions.
///
/// The defaults hold a transform to what a typical instance can spare without one tenant
/// starving the others: 1 GiB of keys and values (the memory backend adds about 100 bytes per
/// key of its own, so at most ~2 GiB of RAM with every key counted), and 10 million keys (the
/// per-key overhead of 10M keys is about the same size as the byte budget; 1M viewers of the
/// live-viewer profile at ≤ 1 KiB each fit in both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Bytes of keys and values (expired entries not yet swept included).
    pub max_bytes: u64,
    pub max_keys: u64,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_bytes: 1 << 30,
            max_keys: 10_000_000,
        }
    }
}

/// A commit refused because it would take the transform's state over its budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "state budget exceeded: this would make {held} {what} for transform `{transform}`, over its \
     budget of {max} (max_state_{what}); existing keys can still be updated or deleted"
)]
pub struct OverBudget {
    pub transform: String,
    /// "bytes" or "keys".
    pub what: &'static str,
    pub held: u64,
    pub max: u64,
}

/// The bytes and keys a transform holds on this instance, against its [`Budget`]; shared by the
/// stores of all its scopes.
#[derive(Debug)]
pub struct Usage {
    transform: String,
    inner: Mutex<UsageInner>,
}

#[derive(Debug, Default)]
struct UsageInner {
    budget: Budget,
    bytes: u64,
    keys: u64,
}

/// The size an entry counts for in a budget.
pub fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl Usage {
    pub fn new(transform: &str) -> Usage {
        let u = Usage {
            transform: transform.to_string(),
            inner: Mutex::default(),
        };
        u.publish(&u.lock());
        u
    }

    fn lock(&self) -> MutexGuard<'_, UsageInner> {
        self.inner.lock().expect("usage lock poisoned")
    }

    pub fn set_budget(&self, budget: Budget) {
        let mut g = self.lock();
        g.budget = budget;
        self.publish(&g);
    }

    pub fn budget(&self) -> Budget {
        self.lock().budget
    }

    /// (bytes, keys) held.
    pub fn held(&self) -> (u64, u64) {
        let g = self.lock();
        (g.bytes, g.keys)
    }

    /// Applies a change of the bytes and keys held if the result is within budget, or if the
    /// change does not grow what it would take over (deleting and shrinking always work).
    pub fn try_apply(&self, bytes: i64, keys: i64) -> Result<(), OverBudget> {
        let mut g = self.lock();
        let nb = g.bytes.saturating_add_signed(bytes);
        let nk = g.keys.saturating_add_signed(keys);
        let over = |what, held, max| OverBudget {
            transform: self.transform.clone(),
            what,
            held,
            max,
        };
        if keys > 0 && nk > g.budget.max_keys {
            return Err(over("keys", nk, g.budget.max_keys));
        }
        if bytes > 0 && nb > g.budget.max_bytes {
            return Err(over("bytes", nb, g.budget.max_bytes));
        }
        (g.bytes, g.keys) = (nb, nk);
        self.publish(&g);
        Ok(())
    }

    /// Applies a change that happened anyway (expiry, a store opened or closed).
    pub fn apply(&self, bytes: i64, keys: i64) {
        let mut g = self.lock();
        g.bytes = g.bytes.saturating_add_signed(bytes);
        g.keys = g.keys.saturating_add_signed(keys);
        self.publish(&g);
    }

    fn publish(&self, g: &UsageInner) {
        let t = self.transform.clone();
        metrics::gauge!("weir_state_bytes", "transform" => t.clone()).set(g.bytes as f64);
        metrics::gauge!("weir_state_keys", "transform" => t.clone()).set(g.keys as f64);
        metrics::gauge!("weir_state_budget_bytes", "transform" => t.clone())
            .set(g.budget.max_bytes as f64);
        metrics::gauge!("weir_state_budget_keys", "transform" => t).set(g.budget.max_keys as f64);
    }
}

/// The [`Usage`] of each transform of a backend.
#[derive(Debug, Default)]
pub struct Usages(Mutex<HashMap<String, Arc<Usage>>>);

impl Usages {
    pub fn of(&self, transform: &str) -> Arc<Usage> {
        let mut m = self.0.lock().expect("usages lock poisoned");
        if let Some(u) = m.get(transform) {
            return u.clone();
        }
        let u = Arc::new(Usage::new(transform));
        m.insert(transform.to_string(), u.clone());
        u
    }
}

/// The answer of a [`StateStore::get_many`] would hold more bytes than its caller allows.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the values of {keys} keys hold more than {max} bytes")]
pub struct TooLarge {
    pub keys: usize,
    pub max: usize,
}

/// Adds `v` to the bytes of a `get_many` answer, or fails once it holds more than `max`.
fn count_answer(
    total: &mut usize,
    v: &Option<Vec<u8>>,
    keys: usize,
    max: usize,
) -> anyhow::Result<()> {
    *total = total.saturating_add(v.as_ref().map_or(0, Vec::len));
    if *total > max {
        return Err(TooLarge { keys, max }.into());
    }
    Ok(())
}

/// The state of one scope.
pub trait StateStore: Send + Sync + Debug {
    /// The live value of `key` at `now_ms`.
    fn get(&self, key: &[u8], now_ms: i64) -> anyhow::Result<Option<Vec<u8>>>;
    /// The live values of many keys, in order (one lock or one round trip). Fails with
    /// [`TooLarge`] as soon as the values read so far hold more than `max_bytes`, so that the
    /// caller never holds more than it allows (whatever repeated keys it asks for).
    fn get_many(
        &self,
        keys: &[&[u8]],
        now_ms: i64,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>>;
    /// Applies the writes of one successful guest call (each key at most once), atomically.
    /// `at`: the input the call processed (`None`: not tied to input, e.g. the guest's `flush`;
    /// such writes count as part of the latest input applied). Fails with [`OverBudget`], and
    /// applies nothing, if the writes would take the transform over its budget.
    fn commit(&self, writes: Vec<Write>, at: Option<At>, now_ms: i64) -> anyhow::Result<()>;
    /// One page of the entries that expired at `now_ms` (deadline `<= now_ms`), earliest
    /// deadline first, with their last values: at most `max_keys`, and no more than `max_bytes`
    /// of keys and values (but at least one entry, if any is due). They stay in the store (and
    /// unreadable) until a commit deletes them: the host's expiry (see
    /// [`crate::wasm::Guest::expire`]) tells the transform, then commits their deletion, so that
    /// the next page holds the next ones.
    fn expired(&self, now_ms: i64, max_keys: usize, max_bytes: usize) -> anyhow::Result<Expired>;
}

/// Expired entries: (key, last value).
pub type Expired = Vec<(Vec<u8>, Vec<u8>)>;

/// Adds an entry to a page of [`StateStore::expired`] if it has room; false when full.
pub(crate) fn page_push(
    page: &mut Expired,
    bytes: &mut usize,
    max_keys: usize,
    max_bytes: usize,
    key: &[u8],
    value: &[u8],
) -> bool {
    let size = key.len() + value.len();
    if page.len() >= max_keys || (!page.is_empty() && *bytes + size > max_bytes) {
        return false;
    }
    *bytes += size;
    page.push((key.to_vec(), value.to_vec()));
    true
}

/// A checkpoint that could not be made for some partitions (it was made for the others): the
/// source must not commit their offsets.
#[derive(Debug, thiserror::Error)]
#[error("state checkpoint failed for{}", .partitions.iter().map(|(p, e)| format!(" {}[{}] ({e})", p.topic, p.partition)).collect::<String>())]
pub struct CheckpointFailed {
    pub partitions: Vec<(PartitionId, String)>,
}

/// A backend whose state is checkpointed together with the source's positions: what a source
/// that commits positions (Kafka) drives. Positions are per partition and only grow within an
/// assignment.
pub trait Checkpointed: Send + Sync + Debug {
    /// `partition` is (re)assigned under `epoch`: whatever effects of it were not checkpointed
    /// are dropped (they belong to input that will be read again). Returns the position its
    /// durable state reflects, if any: the source must resume there at the latest.
    ///
    /// `committed`, exactly-once only: the partition's input offset, committed in a Kafka
    /// transaction together with its state's changelog entries; the restore reads the
    /// changelog's committed records until its checkpoint reaches it (waiting, within limits,
    /// for transactions still open to end).
    fn assign(
        &self,
        partition: &PartitionId,
        epoch: u64,
        committed: Option<u64>,
    ) -> anyhow::Result<Option<u64>>;
    /// Makes durable, in one transaction, the effects of every batch that ends at or before the
    /// given position of each partition, and records those positions. Called before the source
    /// commits them; on error it must not commit them ([`CheckpointFailed`]: only those).
    fn checkpoint(&self, positions: &[(PartitionId, u64)]) -> anyhow::Result<()>;
    /// `partition` is no longer ours: drop its effects that were not checkpointed.
    fn revoke(&self, partition: &PartitionId);
    /// Exactly-once, before the transaction commits: appends the effects of every batch up to
    /// the given positions, and a marker of each position, to the changelog inside the open
    /// transaction. Nothing local changes until [`Checkpointed::complete`], after the commit;
    /// on an abort the staged checkpoint is dropped (and the partitions assigned again, which
    /// drops their overlays). An error means the transaction must be aborted.
    fn stage(&self, positions: &[(PartitionId, u64)]) -> anyhow::Result<Staged> {
        let _ = positions;
        anyhow::bail!("this state backend cannot take part in a Kafka transaction")
    }
    /// Exactly-once, after the transaction committed: makes the staged checkpoint local (the
    /// file is a cache of the changelog; on error, the partitions must be assigned again so
    /// that they catch up from the changelog).
    fn complete(&self, staged: Staged) -> anyhow::Result<()> {
        let _ = staged;
        anyhow::bail!("this state backend cannot take part in a Kafka transaction")
    }
    /// The name of the changelog this backend mirrors its checkpoints to (`[state]
    /// changelog_topic`), if it has one: the source connects it where its input lives and hands
    /// it over with [`Checkpointed::attach_changelog`] before the first assignment.
    fn changelog_name(&self) -> Option<&str> {
        None
    }
    /// The connected changelog (see [`Checkpointed::changelog_name`]). Called once.
    fn attach_changelog(&self, _changelog: Box<dyn Changelog>) -> anyhow::Result<()> {
        anyhow::bail!("this state backend keeps no changelog")
    }
    /// Whether a partition's state follows it to any instance (a changelog), so that an
    /// assignment always gets the partition's latest state.
    fn follows_partitions(&self) -> bool {
        false
    }
}

/// A checkpoint appended to a changelog inside an open Kafka transaction, waiting for the
/// transaction to commit ([`Checkpointed::stage`], [`Checkpointed::complete`]).
pub struct Staged(pub(crate) Box<dyn std::any::Any + Send>);

impl Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Staged")
    }
}
