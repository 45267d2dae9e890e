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
//! Nothing here knows where input or changelog live: the source that drives a [`Checkpointed`]
//! backend connects its changelog (the Kafka source: [`crate::kafka::changelog`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::record::PartitionId;

pub mod changelog;
pub mod disk;

pub use changelog::Changelog;
pub use disk::{DiskState, StateConfig};

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
}

/// The state of one scope.
pub trait StateStore: Send + Sync + Debug {
    /// The live value of `key` at `now_ms`.
    fn get(&self, key: &[u8], now_ms: i64) -> anyhow::Result<Option<Vec<u8>>>;
    /// The live values of many keys, in order (one lock or one round trip).
    fn get_many(&self, keys: &[&[u8]], now_ms: i64) -> anyhow::Result<Vec<Option<Vec<u8>>>>;
    /// Applies the writes of one successful guest call, atomically. `at`: the input the call
    /// processed (`None`: not tied to input, e.g. the guest's `flush`; such writes count as
    /// part of the latest input applied).
    fn commit(&self, writes: Vec<Write>, at: Option<At>, now_ms: i64) -> anyhow::Result<()>;
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
    fn assign(&self, partition: &PartitionId, epoch: u64) -> anyhow::Result<Option<u64>>;
    /// Makes durable, in one transaction, the effects of every batch that ends at or before the
    /// given position of each partition, and records those positions. Called before the source
    /// commits them; on error it must not commit them ([`CheckpointFailed`]: only those).
    fn checkpoint(&self, positions: &[(PartitionId, u64)]) -> anyhow::Result<()>;
    /// `partition` is no longer ours: drop its effects that were not checkpointed.
    fn revoke(&self, partition: &PartitionId);
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

/// State in process memory: lost on restart (the default; `[state] backend = "disk"` keeps it).
#[derive(Debug, Default)]
pub struct MemoryBackend {
    stores: Mutex<HashMap<StateScope, Arc<MemoryStore>>>,
}

impl MemoryBackend {
    pub fn new() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::default())
    }
}

impl StateBackend for MemoryBackend {
    fn open(&self, scope: &StateScope) -> anyhow::Result<Arc<dyn StateStore>> {
        let mut stores = self.stores.lock().expect("stores lock poisoned");
        let s = stores.entry(scope.clone()).or_default().clone();
        Ok(s)
    }
}

/// One scope's state in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    map: HashMap<Vec<u8>, (Vec<u8>, Option<i64>)>,
    /// Entries with an expiry; when the map doubles past the size after the last sweep,
    /// expired entries are removed (amortised O(1) per write).
    sweep_at: usize,
}

impl MemoryInner {
    fn live(&self, key: &[u8], now: i64) -> Option<Vec<u8>> {
        match self.map.get(key) {
            Some((v, exp)) if exp.is_none_or(|e| e > now) => Some(v.clone()),
            _ => None,
        }
    }
}

impl MemoryStore {
    /// Number of entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("inner lock poisoned").map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8], now_ms: i64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .lock()
            .expect("inner lock poisoned")
            .live(key, now_ms))
    }

    fn get_many(&self, keys: &[&[u8]], now_ms: i64) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let inner = self.inner.lock().expect("inner lock poisoned");
        Ok(keys.iter().map(|k| inner.live(k, now_ms)).collect())
    }

    fn commit(&self, writes: Vec<Write>, _at: Option<At>, now_ms: i64) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().expect("inner lock poisoned");
        for w in writes {
            match w.value {
                Some(v) => {
                    inner.map.insert(w.key, (v, w.expires_at_ms));
                }
                None => {
                    inner.map.remove(&w.key);
                }
            }
        }
        if inner.map.len() >= inner.sweep_at.max(1024) {
            inner
                .map
                .retain(|_, (_, exp)| exp.is_none_or(|e| e > now_ms));
            inner.sweep_at = inner.map.len() * 2;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_separate_and_expiry_is_honoured() {
        let b = MemoryBackend::new();
        let scope = |p| StateScope {
            transform: "t".into(),
            partition: PartitionId {
                topic: "in".into(),
                partition: p,
            },
        };
        let s0 = b.open(&scope(0)).unwrap();
        let s1 = b.open(&scope(1)).unwrap();
        s0.commit(
            vec![
                Write {
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec()),
                    expires_at_ms: Some(100),
                },
                Write {
                    key: b"b".to_vec(),
                    value: Some(b"2".to_vec()),
                    expires_at_ms: None,
                },
            ],
            None,
            0,
        )
        .unwrap();
        assert_eq!(s0.get(b"a", 99).unwrap(), Some(b"1".to_vec()));
        assert_eq!(s0.get(b"a", 100).unwrap(), None);
        assert_eq!(s1.get(b"b", 0).unwrap(), None);
        assert_eq!(
            s0.get_many(&[b"b", b"zz"], 0).unwrap(),
            vec![Some(b"2".to_vec()), None]
        );
        // Same scope, same store.
        assert_eq!(
            b.open(&scope(0)).unwrap().get(b"b", 0).unwrap(),
            Some(b"2".to_vec())
        );
    }
}
