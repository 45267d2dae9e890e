//! `[state] backend = "disk"`: transform state on disk (redb), checkpointed together with the
//! source's positions, so that after a crash state and input agree exactly. See `docs/state.md`.
//!
//! * The writes of each committed guest call go to an in-memory **overlay** of their scope,
//!   tagged with the position of the batch that produced them. Reads see the overlay over the
//!   durable base.
//! * When the source is about to commit position `O` of partition `p` (every batch up to `O`
//!   acknowledged by every sink), it first calls [`Checkpointed::checkpoint`]: the overlay writes
//!   of every scope of `p` tagged `<= O` and the position `O` itself are written in **one**
//!   durable transaction. Only then is `O` committed to Kafka. Durable state therefore always
//!   reflects exactly the acknowledged input up to its checkpoint, never an effect of a record
//!   that could be read again.
//! * On (re)assignment the source resumes at `max(committed offset, state checkpoint)`; the
//!   overlay of a partition is dropped on assignment and revocation (un-acknowledged effects).
//!   Writes of a batch read under an earlier assignment of the partition (its epoch) are dropped.
//!
//! One file for the whole pipeline, so that the checkpoint of a partition covers the state of
//! every transform in one transaction.
//!
//! With `changelog_topic`, state follows its partition to any instance: each checkpoint first
//! appends the partition's changed entries and a marker with its position to that partition of a
//! [`Changelog`] (on Kafka, a compacted topic the source connects), and an assignment first
//! replays what the local file lacks of it. Entries after the last marker (a crash mid-checkpoint) are not applied, and
//! are overwritten in the changelog with the restored values so that compaction can never let them
//! shadow an older, checkpointed value.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

#[cfg(test)]
use redb::ReadableTableMetadata;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use serde::Deserialize;

use anyhow::Context as _;

use super::changelog::{Append, Changelog};
use super::{
    entry_bytes, page_push, At, CheckpointFailed, Checkpointed, Expired, Staged, StateBackend,
    StateScope, StateStore, Usage, Usages, Write,
};
use crate::config::{ConfigError, Origin};
use crate::record::PartitionId;

/// How long a restore waits for a transaction still open in the changelog (exactly-once: the
/// previous owner's, committed or aborted within its `transaction.timeout.ms`).
const RESTORE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Entries: scope prefix + key → 8-byte big-endian expiry (`i64::MAX`: none) + value.
const ENTRIES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("entries");
/// The time index: scope prefix + sortable expiry + key → nothing, so that the host's expiry
/// finds a scope's expired entries in deadline order.
const EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry_by_scope");
/// The index of files written before the time index was per scope: sortable expiry + entry key
/// (moved to [`EXPIRY`] when such a file is opened).
const OLD_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry");
/// Per input partition, the position its state reflects.
const CHECKPOINTS: TableDefinition<&[u8], u64> = TableDefinition::new("checkpoints");
/// Per input partition, the changelog offset up to which this file has its changes, and when it
/// last caught up (ms since the Unix epoch).
const CHANGELOG_POS: TableDefinition<&[u8], (u64, i64)> =
    TableDefinition::new("changelog_positions");

/// `[state]`: where transform state lives.
///
/// ```toml
/// [state]
/// backend = "disk"                          # default "memory"
/// path = "/var/lib/weir/media.state.redb"   # one file per pipeline (required for disk)
/// changelog_topic = "weir-media-state"      # optional: state follows its partition anywhere
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub backend: Backend,
    pub path: Option<PathBuf>,
    /// A compacted Kafka topic (on the source's cluster) every checkpoint is appended to, and an
    /// instance assigned a partition restores that partition's state from.
    pub changelog_topic: Option<String>,
}

/// `[state] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In process memory: lost on restart.
    #[default]
    Memory,
    /// On disk, checkpointed with the source's positions.
    Disk,
}

impl StateConfig {
    /// The disk backend, if configured (opened on first use, not here).
    pub fn check(&self, o: &Origin) -> Result<Option<Arc<DiskState>>, ConfigError> {
        match (self.backend, &self.changelog_topic) {
            (Backend::Memory, Some(_)) => {
                return Err(o.error(
                    "changelog_topic",
                    "expected no changelog with backend = \"memory\" (it needs backend = \"disk\")",
                ))
            }
            (_, Some(t)) if t.trim().is_empty() => {
                return Err(o.error(
                    "changelog_topic",
                    "expected a topic name, found an empty string",
                ))
            }
            _ => {}
        }
        match (self.backend, &self.path) {
            (Backend::Memory, None) => Ok(None),
            (Backend::Memory, Some(_)) => Err(o.error(
                "path",
                "expected no path with backend = \"memory\" (did you mean backend = \"disk\"?)",
            )),
            (Backend::Disk, None) => Err(o.error(
                "path",
                "missing required key `path` (the state file) for backend = \"disk\"",
            )),
            (Backend::Disk, Some(p)) if p.as_os_str().is_empty() || p.is_dir() => Err(o.error(
                "path",
                format!(
                    "expected a file path for the state database, found {:?}",
                    p.display().to_string()
                ),
            )),
            (Backend::Disk, Some(p)) => Ok(Some(DiskState::with_changelog(
                p,
                self.changelog_topic.clone(),
            ))),
        }
    }
}

/// The database, opened on first use (so that `weir validate` creates nothing).
struct Db {
    path: PathBuf,
    db: Mutex<Option<Arc<Database>>>,
}

impl Db {
    fn get(&self) -> anyhow::Result<Arc<Database>> {
        let mut g = lock(&self.db);
        if let Some(db) = &*g {
            return Ok(db.clone());
        }
        let db = open(&self.path)?;
        *g = Some(db.clone());
        Ok(db)
    }
}

fn open(path: &Path) -> anyhow::Result<Arc<Database>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let db = Database::create(path)
        .with_context(|| format!("cannot open the state file {}", path.display()))?;
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(EXPIRY)?;
    txn.open_table(CHECKPOINTS)?;
    txn.open_table(CHANGELOG_POS)?;
    if txn.list_tables()?.any(|t| t.name() == OLD_EXPIRY.name()) {
        {
            let old = txn.open_table(OLD_EXPIRY)?;
            let mut new = txn.open_table(EXPIRY)?;
            for r in old.iter()? {
                let (k, _) = r?;
                let k = k.value();
                if let Some((exp, (prefix, key))) = k
                    .split_first_chunk::<8>()
                    .and_then(|(e, entry)| Some((e, split_scope(entry)?)))
                {
                    new.insert(by_scope(prefix, exp, key).as_slice(), [].as_slice())?;
                }
            }
        }
        txn.delete_table(OLD_EXPIRY)?;
    }
    txn.commit()?;
    tracing::info!(path = %path.display(), "state file opened");
    Ok(Arc::new(db))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("the engine map lock poisoned")
}

/// The pipeline's state on disk: a [`StateBackend`] for the transforms and a [`Checkpointed`]
/// for the source.
pub struct DiskState {
    db: Arc<Db>,
    parts: Mutex<HashMap<PartitionId, Arc<Part>>>,
    /// Serialises checkpoints with assignments and revocations.
    lifecycle: Mutex<()>,
    /// `changelog_topic`, and the topic once the source connected it.
    changelog_topic: Option<String>,
    changelog: OnceLock<Box<dyn Changelog>>,
    /// What each transform holds (the stores open on this instance) against its budget.
    usages: Usages,
}

impl fmt::Debug for DiskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DiskState({})", self.db.path.display())
    }
}

/// One input partition as this instance holds it.
#[derive(Debug)]
struct Part {
    epoch: u64,
    /// Assigned to this instance (writes of scopes of a partition we do not own are dropped).
    owned: bool,
    stores: Mutex<HashMap<String, Arc<DiskStore>>>,
}

impl Part {
    fn close(&self) {
        for s in lock(&self.stores).values() {
            let mut o = lock(&s.overlay);
            o.closed = true;
            o.log.clear();
            o.sealed = 0;
            o.index.clear();
            o.deadlines.clear();
            // No longer ours: it no longer counts against the budget.
            let (bytes, keys) = std::mem::take(&mut o.held);
            s.usage.apply(-bytes, -keys);
        }
    }
}

impl DiskState {
    pub fn new(path: &Path) -> Arc<DiskState> {
        Self::with_changelog(path, None)
    }

    pub fn with_changelog(path: &Path, changelog_topic: Option<String>) -> Arc<DiskState> {
        Arc::new(DiskState {
            db: Arc::new(Db {
                path: path.to_path_buf(),
                db: Mutex::new(None),
            }),
            parts: Mutex::default(),
            lifecycle: Mutex::new(()),
            changelog_topic,
            changelog: OnceLock::new(),
            usages: Usages::default(),
        })
    }

    /// `changelog_topic`, if configured.
    pub fn changelog_topic(&self) -> Option<&str> {
        self.changelog_topic.as_deref()
    }

    /// The connected changelog, if one is configured (an error if it is not connected yet).
    fn changelog(&self) -> anyhow::Result<Option<&dyn Changelog>> {
        match (&self.changelog_topic, self.changelog.get()) {
            (None, _) => Ok(None),
            (Some(_), Some(c)) => Ok(Some(c.as_ref())),
            (Some(t), None) => Err(anyhow::anyhow!(
                "the changelog topic {t:?} is not connected"
            )),
        }
    }

    /// Brings the local state of `p` up to the changelog: replays what this file lacks (all of
    /// it, after wiping `p`, if the file has never seen this changelog or is too far behind),
    /// and overwrites entries after the last marker (an interrupted checkpoint) with the
    /// restored values. With an empty changelog and local state, seeds the changelog from it.
    ///
    /// Only committed records are read (exactly-once checkpoints are appended in Kafka
    /// transactions). `committed`, exactly-once: the partition's committed input offset, whose
    /// checkpoint marker was committed in the same transaction: while the checkpoint read falls
    /// short of it and a transaction is still open in the changelog, the restore waits for it
    /// (up to [`RESTORE_WAIT`]) and reads on.
    fn restore(
        &self,
        cl: &dyn Changelog,
        p: &PartitionId,
        committed: Option<u64>,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let db = self.db.get()?;
        let pk = part_key(p);
        let (local_pos, local_ckpt) = {
            let txn = db.begin_read()?;
            let pos = txn
                .open_table(CHANGELOG_POS)?
                .get(pk.as_slice())?
                .map(|v| v.value());
            let ck = txn
                .open_table(CHECKPOINTS)?
                .get(pk.as_slice())?
                .map(|v| v.value());
            (pos, ck)
        };
        let (low, high) = cl.watermarks(p.partition)?;
        let now = crate::snowplow::now_ms();
        // A file that caught up longer ago than deletions stay readable may have missed some.
        let fresh =
            |at: i64| now.saturating_sub(at) < cl.tombstone_retention().as_millis() as i64 * 9 / 10;
        if local_pos.map(|(l, _)| l) == Some(high as u64)
            && committed.is_none_or(|k| local_ckpt.is_some_and(|c| c >= k))
        {
            // Nothing was appended since this file caught up: it is current, however old.
            set_pos(&db, &pk, high as u64)?;
            return Ok(());
        }
        let local_pos = local_pos.filter(|(_, at)| fresh(*at)).map(|(l, _)| l);
        if low == high {
            // Nothing in the changelog: seed it with what this file has, if anything.
            let txn = db.begin_write()?;
            {
                let entries = txn.open_table(ENTRIES)?;
                let records = prefixed(&entries, &pk)?
                    .into_iter()
                    .map(|(k, v)| (k, Some(v)))
                    .collect::<Vec<_>>();
                if local_ckpt.is_some() || !records.is_empty() {
                    let n = records.len();
                    let m = append_one(
                        cl,
                        Append {
                            partition: p.partition,
                            records,
                            marker: marker(&pk, local_ckpt),
                        },
                    )?;
                    txn.open_table(CHANGELOG_POS)?
                        .insert(pk.as_slice(), ((m + 1) as u64, now))?;
                    tracing::info!(topic = %p.topic, partition = p.partition, entries = n, changelog = cl.name(), "changelog seeded from the local state");
                } else {
                    txn.open_table(CHANGELOG_POS)?
                        .insert(pk.as_slice(), (high as u64, now))?;
                }
            }
            txn.commit()?;
            return Ok(());
        }
        let (from, wipe) = match local_pos {
            Some(l) if (low as u64..=high as u64).contains(&l) => (l as i64, false),
            _ => (low, true),
        };
        let txn = db.begin_write()?;
        let (read, orphans, read_to) = {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut checkpoints = txn.open_table(CHECKPOINTS)?;
            if wipe {
                for (k, _) in prefixed(&entries, &pk)? {
                    apply(&mut entries, &mut expiry, &k, None)?;
                }
                checkpoints.remove(pk.as_slice())?;
            }
            // Entries of a checkpoint apply only once its marker is seen.
            let mut pending: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
            let mut ckpt = if wipe { None } else { local_ckpt };
            let (mut read, mut at) = (0, from);
            let waited = std::time::Instant::now();
            loop {
                // Up to where every transaction is decided.
                let end = cl.stable_end(p.partition)?.max(at);
                read += cl.read(p.partition, at, end, &mut |_, key, value| {
                    let Some(rest) = key.strip_prefix(pk.as_slice()) else {
                        return Ok(()); // another input topic's partition of the same number
                    };
                    if rest == MARKER {
                        for (k, v) in pending.drain(..) {
                            apply(&mut entries, &mut expiry, &k, v.as_deref())?;
                        }
                        if let Some(o) = value.and_then(|v| v.first_chunk::<8>()) {
                            let o = u64::from_be_bytes(*o);
                            checkpoints.insert(pk.as_slice(), o)?;
                            ckpt = Some(o);
                        }
                    } else {
                        pending.push((key.to_vec(), value.map(<[u8]>::to_vec)));
                    }
                    Ok(())
                })?;
                at = end;
                let Some(k) = committed.filter(|&k| ckpt.is_none_or(|c| c < k)) else {
                    break;
                };
                if at >= cl.watermarks(p.partition)?.1 {
                    // Everything is committed and read: the offset was committed without a
                    // marker (by an at-least-once run, or with no state changes before markers
                    // were written for every offset).
                    tracing::warn!(
                        topic = %p.topic, partition = p.partition, committed = k, checkpoint = ?ckpt,
                        "exactly-once: the changelog has no checkpoint at the committed offset; \
                         resuming with the latest one it has"
                    );
                    break;
                }
                // A transaction is open in the changelog from `at` on (the previous owner's,
                // being committed or aborted): its outcome decides what this offset's state is.
                anyhow::ensure!(
                    waited.elapsed() < RESTORE_WAIT,
                    "the changelog's checkpoint of {}[{}] ({ckpt:?}) has not reached its \
                     committed offset {k} after {RESTORE_WAIT:?}: a transaction has stayed open \
                     in changelog partition {} since offset {at}",
                    p.topic,
                    p.partition,
                    p.partition
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            (read, pending, at)
        };
        let ckpt = txn
            .open_table(CHECKPOINTS)?
            .get(pk.as_slice())?
            .map(|v| v.value());
        // Up to where it was read (not past a transaction still open).
        let mut pos = read_to as u64;
        if !orphans.is_empty() {
            // An interrupted checkpoint: overwrite its entries with the checkpointed values.
            let mut keys: Vec<Vec<u8>> = orphans.into_iter().map(|(k, _)| k).collect();
            keys.sort();
            keys.dedup();
            let entries = txn.open_table(ENTRIES)?;
            let records = keys
                .into_iter()
                .map(|k| {
                    let v = entries.get(k.as_slice())?.map(|v| v.value().to_vec());
                    Ok((k, v))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let n = records.len();
            let m = append_one(
                cl,
                Append {
                    partition: p.partition,
                    records,
                    marker: marker(&pk, ckpt),
                },
            )?;
            pos = (m + 1) as u64;
            tracing::info!(topic = %p.topic, partition = p.partition, entries = n, "changelog: entries of an interrupted checkpoint overwritten");
        }
        txn.open_table(CHANGELOG_POS)?
            .insert(pk.as_slice(), (pos, now))?;
        txn.commit()?;
        tracing::info!(
            topic = %p.topic, partition = p.partition, changelog = cl.name(), from, to = high,
            records = read, full = wipe, checkpoint = ?ckpt, ms = started.elapsed().as_millis() as u64,
            "state restored from the changelog"
        );
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.db.path
    }

    /// The position the durable state of `partition` reflects.
    pub fn checkpoint_of(&self, partition: &PartitionId) -> anyhow::Result<Option<u64>> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let t = txn.open_table(CHECKPOINTS)?;
        Ok(t.get(part_key(partition).as_slice())?.map(|v| v.value()))
    }

    /// Writes of partitions' scopes not yet checkpointed (for tests and metrics).
    pub fn pending_writes(&self, partition: &PartitionId) -> usize {
        let parts = lock(&self.parts);
        parts.get(partition).map_or(0, |p| {
            lock(&p.stores)
                .values()
                .map(|s| {
                    lock(&s.overlay)
                        .log
                        .iter()
                        .map(|l| l.writes.len())
                        .sum::<usize>()
                })
                .sum()
        })
    }
}

/// What a checkpoint takes: per partition, its changes and marker for the changelog, and what
/// to write to the file and drop from the overlays once they are durable.
struct Collected {
    /// (store, log entries taken, the last one's seq).
    due: Vec<(PartitionId, Arc<DiskStore>, usize, u64)>,
    /// The positions of the partitions owned.
    owned: Vec<(PartitionId, u64)>,
    /// Per partition in `appended`, its changelog append.
    appends: Vec<Append>,
    appended: Vec<PartitionId>,
    /// Where each partition's marker went in the changelog.
    logged: Vec<(PartitionId, i64)>,
}

impl Collected {
    /// Takes the outcome of appending `appends` (in order): the partitions whose append
    /// failed are left out of the checkpoint; returns them with why.
    fn appended(&mut self, results: Vec<anyhow::Result<i64>>) -> Vec<(PartitionId, String)> {
        let mut failed = Vec::new();
        let mut kept = Vec::with_capacity(self.appends.len());
        let mut kept_parts = Vec::with_capacity(self.appends.len());
        let mut results = results.into_iter();
        for (p, a) in self.appended.drain(..).zip(self.appends.drain(..)) {
            match results
                .next()
                .unwrap_or_else(|| Err(anyhow::anyhow!("no outcome for this append")))
            {
                Ok(m) => {
                    self.logged.push((p.clone(), m));
                    kept.push(a);
                    kept_parts.push(p);
                }
                Err(e) => failed.push((p, format!("{e:#}"))),
            }
        }
        self.appends = kept;
        self.appended = kept_parts;
        self.owned
            .retain(|(p, _)| !failed.iter().any(|(f, _)| f == p));
        self.due
            .retain(|(p, ..)| !failed.iter().any(|(f, _)| f == p));
        failed
    }
}

impl DiskState {
    /// Takes what a checkpoint at `positions` makes durable (the overlays stay readable until
    /// it is). `markers`: a marker for every owned partition, not only those with changes.
    fn collect(&self, positions: &[(PartitionId, u64)], markers: bool) -> Collected {
        let mut c = Collected {
            due: Vec::new(),
            owned: Vec::new(),
            appends: Vec::new(),
            appended: Vec::new(),
            logged: Vec::new(),
        };
        let parts = lock(&self.parts);
        for (p, upto) in positions {
            let Some(part) = parts.get(p).filter(|p| p.owned) else {
                continue;
            };
            c.owned.push((p.clone(), *upto));
            let mut records = Vec::new();
            for s in lock(&part.stores).values() {
                let mut o = lock(&s.overlay);
                let mut n = 0;
                let mut seq = 0;
                for l in o.log.iter().take_while(|l| l.pos <= *upto) {
                    n += 1;
                    seq = l.seq;
                    records.extend(l.writes.iter().map(|w| {
                        let mut k = s.prefix.clone();
                        k.extend_from_slice(&w.key);
                        (k, w.value.as_deref().map(|v| encode(w.expires_at_ms, v)))
                    }));
                }
                if n > 0 {
                    o.sealed = n;
                    c.due.push((p.clone(), s.clone(), n, seq));
                }
            }
            if !records.is_empty() || markers {
                c.appended.push(p.clone());
                c.appends.push(Append {
                    partition: p.partition,
                    records,
                    marker: marker(&part_key(p), Some(*upto)),
                });
            }
        }
        c
    }

    /// Writes a checkpoint's changes and positions to the file in one transaction, then drops
    /// them from the overlays.
    fn write_local(&self, c: Collected) -> anyhow::Result<()> {
        let db = self.db.get()?;
        let now = crate::snowplow::now_ms();
        let txn = db.begin_write()?;
        {
            let mut entries = txn.open_table(ENTRIES)?;
            let mut expiry = txn.open_table(EXPIRY)?;
            let mut checkpoints = txn.open_table(CHECKPOINTS)?;
            for a in &c.appends {
                for (k, v) in &a.records {
                    apply(&mut entries, &mut expiry, k, v.as_deref())?;
                }
            }
            for (p, upto) in &c.owned {
                checkpoints.insert(part_key(p).as_slice(), upto)?;
            }
            let mut changelog_pos = txn.open_table(CHANGELOG_POS)?;
            for (p, m) in &c.logged {
                changelog_pos.insert(part_key(p).as_slice(), ((m + 1) as u64, now))?;
            }
        }
        txn.commit()?;
        // Durable now: drop it from the overlays.
        for (_, s, n, upto_seq) in c.due {
            let mut o = lock(&s.overlay);
            if o.closed {
                continue;
            }
            let n = n.min(o.log.len());
            o.log.drain(..n);
            o.sealed = o.sealed.saturating_sub(n);
            let Overlay {
                index, deadlines, ..
            } = &mut *o;
            index.retain(|k, e| {
                let keep = e.seq > upto_seq;
                if let Some(d) = e.deadline().filter(|_| !keep) {
                    deadlines.remove(&(d, k.clone()));
                }
                keep
            });
        }
        Ok(())
    }

    fn part(&self, p: &PartitionId) -> Arc<Part> {
        lock(&self.parts)
            .entry(p.clone())
            .or_insert_with(|| {
                Arc::new(Part {
                    epoch: 0,
                    owned: false,
                    stores: Mutex::default(),
                })
            })
            .clone()
    }

    /// (bytes, keys) of the durable entries under `prefix` (expired ones not yet deleted
    /// included), as [`entry_bytes`] counts them.
    fn count(&self, prefix: &[u8]) -> anyhow::Result<(i64, i64)> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let (mut bytes, mut keys) = (0i64, 0i64);
        for r in entries.range::<&[u8]>(prefix..)? {
            let (k, v) = r?;
            let Some(key) = k.value().strip_prefix(prefix) else {
                break;
            };
            bytes += entry_bytes(key, decode(v.value()).1) as i64;
            keys += 1;
        }
        Ok((bytes, keys))
    }
}

impl StateBackend for DiskState {
    fn open(&self, scope: &StateScope) -> anyhow::Result<Arc<dyn StateStore>> {
        if let Some(s) = lock(&self.part(&scope.partition).stores).get(&scope.transform) {
            return Ok(s.clone());
        }
        // A new store counts its durable entries against the budget: serialised with
        // checkpoints and (re)assignments.
        let _l = lock(&self.lifecycle);
        let part = self.part(&scope.partition);
        let mut stores = lock(&part.stores);
        if let Some(s) = stores.get(&scope.transform) {
            return Ok(s.clone());
        }
        let prefix = scope_prefix(&scope.transform, &scope.partition);
        let held = self.count(&prefix)?;
        let usage = self.usages.of(&scope.transform);
        usage.apply(held.0, held.1);
        let store = Arc::new(DiskStore {
            db: self.db.clone(),
            prefix,
            epoch: part.epoch,
            owned: part.owned,
            usage,
            overlay: Mutex::new(Overlay {
                held,
                ..Overlay::default()
            }),
        });
        stores.insert(scope.transform.clone(), store.clone());
        Ok(store)
    }

    fn usage(&self, transform: &str) -> Arc<Usage> {
        self.usages.of(transform)
    }
}

impl Checkpointed for DiskState {
    /// Takes a partition on under `epoch`: drops what its previous assignment left in the
    /// overlays and brings its file up to the changelog (waiting for the committed checkpoint
    /// to reach `committed`, exactly-once).
    fn assign(
        &self,
        partition: &PartitionId,
        epoch: u64,
        committed: Option<u64>,
    ) -> anyhow::Result<Option<u64>> {
        let _l = lock(&self.lifecycle);
        let old = lock(&self.parts).insert(
            partition.clone(),
            Arc::new(Part {
                epoch,
                owned: true,
                stores: Mutex::default(),
            }),
        );
        if let Some(old) = old {
            old.close();
        }
        if let Some(cl) = self.changelog()? {
            self.restore(cl, partition, committed)?;
        }
        self.checkpoint_of(partition)
    }

    fn changelog_name(&self) -> Option<&str> {
        self.changelog_topic.as_deref()
    }

    fn attach_changelog(&self, changelog: Box<dyn Changelog>) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.changelog_topic.is_some(),
            "no changelog_topic is configured"
        );
        tracing::info!(changelog = ?changelog, "state changelog connected");
        self.changelog
            .set(changelog)
            .map_err(|_| anyhow::anyhow!("the state changelog is already connected"))
    }

    fn follows_partitions(&self) -> bool {
        self.changelog_topic.is_some()
    }

    fn checkpoint(&self, positions: &[(PartitionId, u64)]) -> anyhow::Result<()> {
        if positions.is_empty() {
            return Ok(());
        }
        let _l = lock(&self.lifecycle);
        let mut c = self.collect(positions, false);
        // With a changelog, the changes are in Kafka before they are in the file (and long before
        // the offsets are committed): a new owner replays them.
        // A partition whose append failed is not checkpointed (its writes stay in the overlay,
        // its offsets uncommitted); the others are.
        let mut failed: Vec<(PartitionId, String)> = Vec::new();
        if let Some(cl) = self.changelog()? {
            anyhow::ensure!(
                !cl.transactional(),
                "an exactly-once changelog is checkpointed through stage and complete"
            );
            if !c.appends.is_empty() {
                let results = cl.append(&c.appends);
                failed = c.appended(results);
            }
        }
        self.write_local(c)?;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CheckpointFailed { partitions: failed }.into())
        }
    }

    fn stage(&self, positions: &[(PartitionId, u64)]) -> anyhow::Result<Staged> {
        let _l = lock(&self.lifecycle);
        let Some(cl) = self.changelog()?.filter(|c| c.transactional()) else {
            anyhow::bail!(
                "exactly-once with durable state needs a changelog in the transaction \
                 ([state] changelog_topic)"
            );
        };
        // Every partition whose offset moves gets a marker, changes or not: a restore then
        // knows it has read all the committed state of an offset once it saw its marker.
        let mut c = self.collect(positions, true);
        if !c.appends.is_empty() {
            let results = cl.append_in_transaction(&c.appends);
            let failed = c.appended(results);
            if !failed.is_empty() {
                return Err(CheckpointFailed { partitions: failed }.into());
            }
        }
        Ok(Staged(Box::new(c)))
    }

    fn complete(&self, staged: Staged) -> anyhow::Result<()> {
        let _l = lock(&self.lifecycle);
        let c = staged
            .0
            .downcast::<Collected>()
            .map_err(|_| anyhow::anyhow!("not a checkpoint staged by this backend"))?;
        self.write_local(*c)
    }

    fn revoke(&self, partition: &PartitionId) {
        // (Closing the partition's stores takes their entries off the budgets.)
        let _l = lock(&self.lifecycle);
        if let Some(old) = lock(&self.parts).remove(partition) {
            old.close();
        }
    }
}

/// The state of one scope: the overlay of writes not yet checkpointed over the durable base.
#[derive(Debug)]
pub struct DiskStore {
    db: Arc<Db>,
    prefix: Vec<u8>,
    epoch: u64,
    owned: bool,
    /// The transform's budget (shared by its stores).
    usage: Arc<Usage>,
    overlay: Mutex<Overlay>,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Db({})", self.path.display())
    }
}

/// The writes of committed guest calls at one input position.
#[derive(Debug)]
struct Logged {
    pos: u64,
    /// The [`Overlay::seq`] of its last commit.
    seq: u64,
    writes: Vec<Write>,
}

#[derive(Debug, Default)]
struct Overlay {
    /// Committed guest calls not yet durable, by position (ascending).
    log: VecDeque<Logged>,
    /// How many entries of `log` a checkpoint in progress took: later writes at the same
    /// position start a new entry, so that a checkpoint never drops writes it did not take.
    sealed: usize,
    /// Numbers the commits (the newest one's).
    seq: u64,
    /// The newest overlay write of each key.
    index: HashMap<Vec<u8>, Entry>,
    /// The time index of `index`: (deadline, key) of its values with an expiry.
    deadlines: BTreeSet<(i64, Vec<u8>)>,
    /// Position of the newest commit.
    head: u64,
    /// The partition was revoked or reassigned: writes are dropped.
    closed: bool,
    /// (bytes, keys) this store counts against its transform's budget: every entry a read sees,
    /// overlay over base, expired ones not yet deleted included.
    held: (i64, i64),
}

#[derive(Debug)]
struct Entry {
    value: Option<Vec<u8>>,
    expires_at_ms: Option<i64>,
    /// The commit that wrote it ([`Overlay::seq`]).
    seq: u64,
}

impl Entry {
    /// When its value expires, if it has one that does.
    fn deadline(&self) -> Option<i64> {
        self.value.as_ref().and(self.expires_at_ms)
    }

    fn live(&self, now: i64) -> Option<Vec<u8>> {
        self.value
            .clone()
            .filter(|_| self.expires_at_ms.is_none_or(|e| e > now))
    }
}

impl DiskStore {
    /// The sizes ([`entry_bytes`]) of the durable entries of `keys`, expired ones included.
    fn base_sizes(&self, keys: &[&[u8]]) -> anyhow::Result<Vec<Option<u64>>> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut k = self.prefix.clone();
        keys.iter()
            .map(|key| {
                k.truncate(self.prefix.len());
                k.extend_from_slice(key);
                Ok(t.get(k.as_slice())?
                    .map(|v| entry_bytes(key, decode(v.value()).1)))
            })
            .collect()
    }

    /// Fails with [`super::TooLarge`] once the values read hold more than `max_bytes` (of an
    /// answer for `asked` keys).
    fn read_base(
        &self,
        keys: &[&[u8]],
        now: i64,
        max_bytes: usize,
        asked: usize,
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let t = txn.open_table(ENTRIES)?;
        let mut k = self.prefix.clone();
        let mut total = 0;
        keys.iter()
            .map(|key| {
                k.truncate(self.prefix.len());
                k.extend_from_slice(key);
                let v = t.get(k.as_slice())?.and_then(|v| {
                    let (exp, val) = decode(v.value());
                    (exp > now).then(|| val.to_vec())
                });
                super::count_answer(&mut total, &v, asked, max_bytes)?;
                Ok(v)
            })
            .collect()
    }
}

impl StateStore for DiskStore {
    fn get(&self, key: &[u8], now_ms: i64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.get_many(&[key], now_ms, usize::MAX)?.pop().flatten())
    }

    fn get_many(
        &self,
        keys: &[&[u8]],
        now_ms: i64,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let mut out: Vec<Option<Option<Vec<u8>>>> = Vec::with_capacity(keys.len());
        let mut misses = Vec::new();
        let mut total = 0;
        {
            let o = lock(&self.overlay);
            for k in keys {
                match o.index.get(*k) {
                    Some(e) => {
                        let v = e.live(now_ms);
                        super::count_answer(&mut total, &v, keys.len(), max_bytes)?;
                        out.push(Some(v));
                    }
                    None => {
                        out.push(None);
                        misses.push(*k);
                    }
                }
            }
        }
        let mut base = if misses.is_empty() {
            Vec::new()
        } else {
            self.read_base(&misses, now_ms, max_bytes - total, keys.len())?
        }
        .into_iter();
        Ok(out
            .into_iter()
            .map(|o| o.unwrap_or_else(|| base.next().flatten()))
            .collect())
    }

    fn commit(&self, writes: Vec<Write>, at: Option<At>, _now_ms: i64) -> anyhow::Result<()> {
        let mut o = lock(&self.overlay);
        if o.closed || !self.owned || at.is_some_and(|a| a.epoch != self.epoch) {
            // Effects of input that is not ours (any more): it will be read again by its owner.
            tracing::debug!(
                writes = writes.len(),
                "state writes of an unowned partition dropped"
            );
            return Ok(());
        }
        // What the writes change of the bytes and keys counted (against what reads see).
        let (mut bytes, mut keys) = (0i64, 0i64);
        let mut misses: Vec<&[u8]> = Vec::new();
        for w in &writes {
            match o.index.get(&w.key) {
                Some(e) => {
                    if let Some(v) = &e.value {
                        bytes -= entry_bytes(&w.key, v) as i64;
                        keys -= 1;
                    }
                }
                None => misses.push(&w.key),
            }
            if let Some(v) = &w.value {
                bytes += entry_bytes(&w.key, v) as i64;
                keys += 1;
            }
        }
        if !misses.is_empty() {
            for size in self.base_sizes(&misses)?.into_iter().flatten() {
                bytes -= size as i64;
                keys -= 1;
            }
        }
        self.usage.try_apply(bytes, keys)?;
        o.held.0 += bytes;
        o.held.1 += keys;
        let pos = at.map_or(o.head, |a| a.end.max(o.head));
        o.head = pos;
        o.seq += 1;
        let seq = o.seq;
        let Overlay {
            index, deadlines, ..
        } = &mut *o;
        for w in &writes {
            let e = Entry {
                value: w.value.clone(),
                expires_at_ms: w.expires_at_ms,
                seq,
            };
            if let Some(d) = e.deadline() {
                deadlines.insert((d, w.key.clone()));
            }
            if let Some(d) = index
                .insert(w.key.clone(), e)
                .and_then(|old| old.deadline())
                .filter(|&d| Some(d) != w.value.as_ref().and(w.expires_at_ms))
            {
                deadlines.remove(&(d, w.key.clone()));
            }
        }
        let open = o.log.len() > o.sealed;
        match o.log.back_mut() {
            Some(l) if l.pos == pos && open => {
                l.seq = seq;
                l.writes.extend(writes);
            }
            _ => o.log.push_back(Logged { pos, seq, writes }),
        }
        Ok(())
    }

    fn expired(&self, now_ms: i64, max_keys: usize, max_bytes: usize) -> anyhow::Result<Expired> {
        let o = lock(&self.overlay);
        let (mut page, mut bytes) = (Vec::new(), 0);
        if o.closed || !self.owned {
            return Ok(page);
        }
        // The overlay's own expired values (it shadows the base) ...
        for (_, k) in o.deadlines.range(..(now_ms.saturating_add(1), Vec::new())) {
            let Some(v) = o.index.get(k).and_then(|e| e.value.as_deref()) else {
                continue;
            };
            if !page_push(&mut page, &mut bytes, max_keys, max_bytes, k, v) {
                return Ok(page);
            }
        }
        // ... then the durable ones the overlay does not shadow.
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        let expiry = txn.open_table(EXPIRY)?;
        let entries = txn.open_table(ENTRIES)?;
        let from = by_scope(&self.prefix, &sortable(i64::MIN), &[]);
        let to = by_scope(&self.prefix, &sortable(now_ms.saturating_add(1)), &[]);
        let mut entry = self.prefix.clone();
        for r in expiry.range::<&[u8]>(from.as_slice()..to.as_slice())? {
            let (ik, _) = r?;
            let Some(key) = ik.value().get(self.prefix.len() + 8..) else {
                continue;
            };
            if o.index.contains_key(key) {
                continue;
            }
            entry.truncate(self.prefix.len());
            entry.extend_from_slice(key);
            let Some(v) = entries.get(entry.as_slice())? else {
                continue;
            };
            let (exp, value) = decode(v.value());
            if exp > now_ms {
                continue; // a stale index entry (cannot happen: kept in step by `apply`)
            }
            if !page_push(&mut page, &mut bytes, max_keys, max_bytes, key, value) {
                break;
            }
        }
        Ok(page)
    }
}

fn part_key(p: &PartitionId) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + p.topic.len());
    k.extend_from_slice(&(p.topic.len() as u32).to_be_bytes());
    k.extend_from_slice(p.topic.as_bytes());
    k.extend_from_slice(&p.partition.to_be_bytes());
    k
}

/// Notes that the file of `pk` is caught up with the changelog up to `pos`, now.
fn set_pos(db: &Database, pk: &[u8], pos: u64) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(CHANGELOG_POS)?
        .insert(pk, (pos, crate::snowplow::now_ms()))?;
    txn.commit()?;
    Ok(())
}

fn append_one(cl: &dyn Changelog, a: Append) -> anyhow::Result<i64> {
    cl.append(std::slice::from_ref(&a))
        .pop()
        .unwrap_or_else(|| Err(anyhow::anyhow!("nothing was appended")))
}

/// After a partition key: the marker of a checkpoint in the changelog (no transform name is
/// `u32::MAX` bytes long, so no entry key has it).
const MARKER: &[u8] = &[0xFF; 4];

/// A changelog marker of partition `pk`: the position its state reflects (empty: none yet).
fn marker(pk: &[u8], position: Option<u64>) -> (Vec<u8>, Vec<u8>) {
    let mut k = pk.to_vec();
    k.extend_from_slice(MARKER);
    (
        k,
        position.map_or_else(Vec::new, |o| o.to_be_bytes().to_vec()),
    )
}

/// A value as stored: 8-byte big-endian expiry (`i64::MAX`: none), then the value.
fn encode(expires_at_ms: Option<i64>, v: &[u8]) -> Vec<u8> {
    let mut val = Vec::with_capacity(8 + v.len());
    val.extend_from_slice(&expires_at_ms.unwrap_or(i64::MAX).to_be_bytes());
    val.extend_from_slice(v);
    val
}

/// Sets (or, with `None`, deletes) an entry and keeps the expiry index in step.
fn apply(
    entries: &mut redb::Table<&[u8], &[u8]>,
    expiry: &mut redb::Table<&[u8], &[u8]>,
    k: &[u8],
    v: Option<&[u8]>,
) -> anyhow::Result<()> {
    let old_exp = entries
        .get(k)?
        .map(|v| decode(v.value()).0)
        .filter(|&e| e != i64::MAX);
    if let Some(ik) = old_exp.and_then(|e| exp_key(e, k)) {
        expiry.remove(ik.as_slice())?;
    }
    match v {
        Some(v) => {
            entries.insert(k, v)?;
            let exp = decode(v).0;
            if let Some(ik) = exp_key(exp, k).filter(|_| exp != i64::MAX) {
                expiry.insert(ik.as_slice(), [].as_slice())?;
            }
        }
        None => {
            entries.remove(k)?;
        }
    }
    Ok(())
}

/// Every entry whose key starts with `prefix`.
fn prefixed(
    entries: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for r in entries.range::<&[u8]>(prefix..)? {
        let (k, v) = r?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// The changelog record (key, value) that stores `key` = `value` of a transform's state of `p`
/// (for tests that forge changelog contents).
#[cfg(test)]
pub(crate) fn changelog_record(
    transform: &str,
    p: &PartitionId,
    key: &[u8],
    value: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut k = scope_prefix(transform, p);
    k.extend_from_slice(key);
    (k, encode(None, value))
}

/// An entry key as (its scope's prefix, the key within the scope).
fn split_scope(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let word = |at: usize| -> Option<usize> {
        Some(u32::from_be_bytes(*k.get(at..)?.first_chunk::<4>()?) as usize)
    };
    let transform_at = 4 + word(0)? + 4;
    let end = transform_at + 4 + word(transform_at)?;
    (end <= k.len()).then(|| k.split_at(end))
}

fn scope_prefix(transform: &str, p: &PartitionId) -> Vec<u8> {
    let mut k = part_key(p);
    k.extend_from_slice(&(transform.len() as u32).to_be_bytes());
    k.extend_from_slice(transform.as_bytes());
    k
}

/// The time index key of an entry key with expiry `exp` (`None`: not an entry key).
fn exp_key(exp: i64, entry: &[u8]) -> Option<Vec<u8>> {
    let (prefix, key) = split_scope(entry)?;
    Some(by_scope(prefix, &sortable(exp), key))
}

/// An expiry as bytes that sort like it.
fn sortable(exp: i64) -> [u8; 8] {
    ((exp as u64) ^ (1 << 63)).to_be_bytes()
}

/// Scope prefix, sortable expiry, key.
fn by_scope(prefix: &[u8], exp: &[u8; 8], key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8 + key.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(exp);
    k.extend_from_slice(key);
    k
}

fn decode(v: &[u8]) -> (i64, &[u8]) {
    match v.split_first_chunk::<8>() {
        Some((e, rest)) => (i64::from_be_bytes(*e), rest),
        None => (i64::MAX, v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(p: i32) -> PartitionId {
        PartitionId {
            topic: "in".into(),
            partition: p,
        }
    }

    fn scope(t: &str, p: i32) -> StateScope {
        StateScope {
            transform: t.into(),
            partition: pid(p),
        }
    }

    fn put(k: &str, v: &str) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
            expires_at_ms: None,
        }
    }

    fn at(epoch: u64, end: u64) -> Option<At> {
        Some(At { epoch, end })
    }

    fn get(s: &Arc<dyn StateStore>, k: &str) -> Option<String> {
        s.get(k.as_bytes(), 0)
            .unwrap()
            .map(|v| String::from_utf8(v).unwrap())
    }

    #[test]
    fn only_checkpointed_effects_survive_a_crash_and_the_checkpoint_says_where_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let st = DiskState::new(&path);
            assert_eq!(st.assign(&pid(0), 1, None).unwrap(), None, "nothing yet");
            let s = st.open(&scope("t", 0)).unwrap();
            s.commit(vec![put("a", "1")], at(1, 10), 0).unwrap();
            s.commit(vec![put("a", "2"), put("b", "1")], at(1, 20), 0)
                .unwrap();
            assert_eq!(get(&s, "a").as_deref(), Some("2"), "reads see the overlay");
            // Batches up to 10 acknowledged: only their effects become durable.
            st.checkpoint(&[(pid(0), 10)]).unwrap();
            assert_eq!(st.pending_writes(&pid(0)), 2);
            assert_eq!(get(&s, "a").as_deref(), Some("2"));
            assert_eq!(st.checkpoint_of(&pid(0)).unwrap(), Some(10));
            // Crash here: the Kafka commit of 10 may or may not have happened.
        }
        let st = DiskState::new(&path);
        assert_eq!(
            st.assign(&pid(0), 1, None).unwrap(),
            Some(10),
            "resume at the checkpoint"
        );
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(
            get(&s, "a").as_deref(),
            Some("1"),
            "exactly the input before 10"
        );
        assert_eq!(get(&s, "b"), None, "effect of an unacknowledged batch");
        // Other scopes and partitions are separate.
        assert_eq!(get(&st.open(&scope("u", 0)).unwrap(), "a"), None);
        assert_eq!(get(&st.open(&scope("t", 1)).unwrap(), "a"), None);
    }

    #[test]
    fn revoked_and_stale_epoch_effects_never_reach_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let st = DiskState::new(&dir.path().join("s.redb"));
        st.assign(&pid(0), 1, None).unwrap();
        let old = st.open(&scope("t", 0)).unwrap();
        old.commit(vec![put("a", "1")], at(1, 5), 0).unwrap();
        st.checkpoint(&[(pid(0), 5)]).unwrap();
        old.commit(vec![put("a", "2")], at(1, 9), 0).unwrap();
        // Revoked before 9 was acknowledged, then assigned again.
        st.revoke(&pid(0));
        old.commit(vec![put("a", "late")], at(1, 12), 0).unwrap();
        assert_eq!(st.assign(&pid(0), 2, None).unwrap(), Some(5));
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(
            get(&s, "a").as_deref(),
            Some("1"),
            "the overlay was dropped"
        );
        // A batch read under the old assignment is processed late: its writes are dropped.
        s.commit(vec![put("a", "old")], at(1, 9), 0).unwrap();
        s.commit(vec![put("b", "1")], at(2, 9), 0).unwrap();
        st.checkpoint(&[(pid(0), 9)]).unwrap();
        drop((st, s, old));
        let st = DiskState::new(&dir.path().join("s.redb"));
        assert_eq!(st.assign(&pid(0), 1, None).unwrap(), Some(9));
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(get(&s, "a").as_deref(), Some("1"));
        assert_eq!(get(&s, "b").as_deref(), Some("1"));
    }

    fn put_ttl(k: &str, v: &str, exp: i64) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
            expires_at_ms: Some(exp),
        }
    }

    fn del(k: &str) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: None,
            expires_at_ms: None,
        }
    }

    fn expired_keys(s: &Arc<dyn StateStore>, now: i64, max_keys: usize) -> Vec<String> {
        s.expired(now, max_keys, 1 << 20)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn the_time_index_finds_expired_entries_in_overlay_and_file_until_they_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let st = DiskState::new(&path);
            st.assign(&pid(0), 1, None).unwrap();
            let s = st.open(&scope("t", 0)).unwrap();
            s.commit(
                vec![
                    put_ttl("a", "1", 100),
                    put_ttl("b", "2", 200),
                    put("c", "3"),
                    put_ttl("d", "4", 150),
                ],
                at(1, 1),
                0,
            )
            .unwrap();
            // Another scope's expired entries are its own.
            st.open(&scope("u", 0))
                .unwrap()
                .commit(vec![put_ttl("a", "x", 1)], at(1, 1), 0)
                .unwrap();
            assert_eq!(expired_keys(&s, 99, 10), Vec::<String>::new());
            assert_eq!(expired_keys(&s, 150, 10), ["a", "d"], "from the overlay");
            assert_eq!(s.get(b"d", 150).unwrap(), None);
            st.checkpoint(&[(pid(0), 1)]).unwrap();
            assert_eq!(st.pending_writes(&pid(0)), 0);
            assert_eq!(expired_keys(&s, 150, 10), ["a", "d"], "from the file");
            assert_eq!(expired_keys(&s, 150, 1), ["a"], "paged");
            assert_eq!(
                s.expired(150, 10, 1).unwrap(),
                vec![(b"a".to_vec(), b"1".to_vec())],
                "paged by bytes, at least one, with its last value"
            );
            // The overlay shadows the file: an overwrite moves a's deadline, a deletion (the
            // host's expiry of d) takes d out, a new expiry of c (durable without one) counts.
            s.commit(
                vec![put_ttl("a", "1'", 1_000), del("d"), put_ttl("c", "3'", 120)],
                at(1, 2),
                0,
            )
            .unwrap();
            assert_eq!(expired_keys(&s, 300, 10), ["c", "b"]);
            assert_eq!(
                s.expired(300, 1, 1 << 20).unwrap(),
                vec![(b"c".to_vec(), b"3'".to_vec())]
            );
            s.commit(vec![del("b"), put("c", "3''")], at(1, 3), 0)
                .unwrap();
            assert_eq!(expired_keys(&s, 300, 10), Vec::<String>::new());
            st.checkpoint(&[(pid(0), 3)]).unwrap();
            assert_eq!(expired_keys(&s, 300, 10), Vec::<String>::new());
            assert_eq!(expired_keys(&s, 1_000, 10), ["a"]);
            let db = st.db.get().unwrap();
            let txn = db.begin_read().unwrap();
            assert_eq!(
                txn.open_table(ENTRIES).unwrap().len().unwrap(),
                3,
                "a, c, u/a"
            );
            assert_eq!(txn.open_table(EXPIRY).unwrap().len().unwrap(), 2, "a, u/a");
            assert_eq!(st.usage("t").held(), (3 + 4, 2), "a=1' and c=3''");
        }
        // The file keeps its time index across a restart.
        let st = DiskState::new(&path);
        st.assign(&pid(0), 2, None).unwrap();
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(expired_keys(&s, 1_000, 10), ["a"]);
        assert_eq!(
            expired_keys(&st.open(&scope("u", 0)).unwrap(), 1, 10),
            ["a"]
        );
        // A partition this instance does not own is not expired here.
        let other = st.open(&scope("t", 1)).unwrap();
        assert_eq!(expired_keys(&other, i64::MAX - 1, 10), Vec::<String>::new());
    }

    #[test]
    fn a_file_with_the_old_expiry_index_is_moved_to_the_time_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut entries = txn.open_table(ENTRIES).unwrap();
                let mut old = txn.open_table(OLD_EXPIRY).unwrap();
                let mut k = scope_prefix("t", &pid(0));
                k.extend_from_slice(b"a");
                entries
                    .insert(k.as_slice(), encode(Some(100), b"1").as_slice())
                    .unwrap();
                let mut ok = sortable(100).to_vec();
                ok.extend_from_slice(&k);
                old.insert(ok.as_slice(), [].as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let st = DiskState::new(&path);
        st.assign(&pid(0), 1, None).unwrap();
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(
            s.expired(100, 10, 1 << 20).unwrap(),
            vec![(b"a".to_vec(), b"1".to_vec())]
        );
        let db = st.db.get().unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.list_tables().unwrap().all(|t| t.name() != "expiry"));
    }

    #[test]
    fn the_budget_refuses_growth_counts_the_file_and_is_given_back_on_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let budget = crate::state::Budget {
            max_bytes: 1 << 20,
            max_keys: 2,
        };
        {
            let st = DiskState::new(&path);
            st.usage("t").set_budget(budget);
            st.assign(&pid(0), 1, None).unwrap();
            st.assign(&pid(1), 1, None).unwrap();
            let s0 = st.open(&scope("t", 0)).unwrap();
            let s1 = st.open(&scope("t", 1)).unwrap();
            s0.commit(vec![put("a", "1")], at(1, 1), 0).unwrap();
            // The budget is the transform's, over its partitions.
            s1.commit(vec![put("b", "1")], at(1, 1), 0).unwrap();
            let e = s0.commit(vec![put("c", "1")], at(1, 2), 0).unwrap_err();
            assert!(e.is::<crate::state::OverBudget>(), "{e:#}");
            assert!(e.to_string().contains("max_state_keys"), "{e:#}");
            assert_eq!(get(&s0, "c"), None, "a refused commit applies nothing");
            // Updates of existing keys go on; another transform has its own budget.
            s0.commit(vec![put("a", "2")], at(1, 3), 0).unwrap();
            st.open(&scope("u", 0))
                .unwrap()
                .commit(vec![put("c", "1")], at(1, 3), 0)
                .unwrap();
            st.checkpoint(&[(pid(0), 3), (pid(1), 1)]).unwrap();
            assert_eq!(st.usage("t").held(), (4, 2));
            // An overlay deletion makes room, counted against the durable entry it hides.
            s1.commit(
                vec![Write {
                    key: b"b".to_vec(),
                    value: None,
                    expires_at_ms: None,
                }],
                at(1, 2),
                0,
            )
            .unwrap();
            s0.commit(vec![put("c", "1")], at(1, 4), 0).unwrap();
            assert_eq!(st.usage("t").held(), (4, 2));
            // Revoked: its entries no longer count on this instance.
            st.revoke(&pid(1));
            assert_eq!(
                st.usage("t").held(),
                (4, 2),
                "b was deleted: nothing left of p1"
            );
            st.checkpoint(&[(pid(0), 4)]).unwrap();
            st.revoke(&pid(0));
            assert_eq!(st.usage("t").held(), (0, 0));
        }
        // Another instance counts what the file holds when it opens the store.
        let st = DiskState::new(&path);
        st.usage("t").set_budget(budget);
        st.assign(&pid(0), 2, None).unwrap();
        let s = st.open(&scope("t", 0)).unwrap();
        assert_eq!(st.usage("t").held(), (4, 2), "a=2 and c=1 from the file");
        let e = s.commit(vec![put("d", "1")], at(2, 5), 0).unwrap_err();
        assert!(e.is::<crate::state::OverBudget>(), "{e:#}");
        s.commit(vec![put("a", "3")], at(2, 5), 0).unwrap();
    }

    /// A changelog in memory with Kafka's transactional visibility: records appended in a
    /// transaction are read by nobody until it commits, and never if it aborts; a reader stops
    /// at the first record of a transaction still open.
    /// (key, value, 0 committed / 1 open / 2 aborted).
    type TxnRecord = (Vec<u8>, Option<Vec<u8>>, u8);

    #[derive(Debug, Default)]
    struct TxnLog {
        log: Mutex<Vec<TxnRecord>>,
    }

    impl TxnLog {
        fn end(&self, outcome: u8) {
            for r in lock(&self.log).iter_mut().filter(|r| r.2 == 1) {
                r.2 = outcome;
            }
        }
        fn push(&self, appends: &[Append], status: u8) -> Vec<anyhow::Result<i64>> {
            let mut log = lock(&self.log);
            appends
                .iter()
                .map(|a| {
                    for (k, v) in &a.records {
                        log.push((k.clone(), v.clone(), status));
                    }
                    log.push((a.marker.0.clone(), Some(a.marker.1.clone()), status));
                    Ok(log.len() as i64 - 1)
                })
                .collect()
        }
    }

    #[derive(Debug)]
    struct Handle(Arc<TxnLog>);

    impl Changelog for Handle {
        fn name(&self) -> &str {
            "txn-log"
        }
        fn tombstone_retention(&self) -> std::time::Duration {
            std::time::Duration::from_secs(86_400)
        }
        fn watermarks(&self, _: i32) -> anyhow::Result<(i64, i64)> {
            Ok((0, lock(&self.0.log).len() as i64))
        }
        fn append(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
            self.0.push(appends, 0)
        }
        fn transactional(&self) -> bool {
            true
        }
        fn append_in_transaction(&self, appends: &[Append]) -> Vec<anyhow::Result<i64>> {
            self.0.push(appends, 1)
        }
        fn stable_end(&self, _: i32) -> anyhow::Result<i64> {
            let log = lock(&self.0.log);
            Ok(log.iter().position(|r| r.2 == 1).unwrap_or(log.len()) as i64)
        }
        fn read(
            &self,
            _: i32,
            from: i64,
            to: i64,
            f: &mut crate::state::changelog::Visit<'_>,
        ) -> anyhow::Result<usize> {
            let log = lock(&self.0.log).clone();
            let mut n = 0;
            for o in from..to.min(log.len() as i64) {
                let (k, v, status) = &log[o as usize];
                assert_ne!(*status, 1, "read past the stable end");
                if *status == 0 {
                    f(o, k, v.as_deref())?;
                    n += 1;
                }
            }
            Ok(n)
        }
    }

    fn txn_instance(dir: &Path, name: &str, log: &Arc<TxnLog>) -> Arc<DiskState> {
        let st = DiskState::with_changelog(&dir.join(name), Some("txn-log".into()));
        st.attach_changelog(Box::new(Handle(log.clone()))).unwrap();
        st
    }

    /// Exactly-once: a staged checkpoint is in the changelog's open transaction and nowhere
    /// else; it reaches the file only once complete (after the commit); an aborted one is
    /// dropped with the overlay when the partition is assigned again, and no other instance
    /// ever sees it.
    #[test]
    fn a_staged_checkpoint_counts_only_once_its_transaction_commits() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(TxnLog::default());
        let a = txn_instance(dir.path(), "a.redb", &log);
        a.assign(&pid(0), 1, None).unwrap();
        let s = a.open(&scope("t", 0)).unwrap();
        s.commit(vec![put("k", "1")], at(1, 10), 0).unwrap();
        let staged = a.stage(&[(pid(0), 10)]).unwrap();
        assert_eq!(
            a.checkpoint_of(&pid(0)).unwrap(),
            None,
            "not before the commit"
        );
        assert_eq!(
            get(&s, "k").as_deref(),
            Some("1"),
            "the overlay still reads"
        );
        // Another instance restoring now sees nothing of the open transaction.
        let b = txn_instance(dir.path(), "b.redb", &log);
        assert_eq!(b.assign(&pid(0), 1, None).unwrap(), None);
        assert_eq!(get(&b.open(&scope("t", 0)).unwrap(), "k"), None);
        log.end(0);
        a.complete(staged).unwrap();
        assert_eq!(a.checkpoint_of(&pid(0)).unwrap(), Some(10));
        assert_eq!(a.pending_writes(&pid(0)), 0);

        // An aborted transaction: the next assignment drops its effects.
        s.commit(vec![put("k", "2"), put("x", "1")], at(1, 20), 0)
            .unwrap();
        let staged = a.stage(&[(pid(0), 20)]).unwrap();
        log.end(2);
        drop(staged);
        assert_eq!(a.assign(&pid(0), 2, Some(10)).unwrap(), Some(10));
        let s = a.open(&scope("t", 0)).unwrap();
        assert_eq!(get(&s, "k").as_deref(), Some("1"));
        assert_eq!(get(&s, "x"), None);
        // A marker goes with every offset that moves, changes or not.
        s.commit(vec![], at(2, 30), 0).unwrap();
        let before = lock(&log.log).len();
        let staged = a.stage(&[(pid(0), 30)]).unwrap();
        assert_eq!(lock(&log.log).len(), before + 1, "one marker");
        log.end(0);
        a.complete(staged).unwrap();
        let c = txn_instance(dir.path(), "c.redb", &log);
        assert_eq!(c.assign(&pid(0), 1, Some(30)).unwrap(), Some(30));
        let sc = c.open(&scope("t", 0)).unwrap();
        assert_eq!(
            (get(&sc, "k").as_deref(), get(&sc, "x")),
            (Some("1"), None),
            "the aborted write never reached the changelog's readers"
        );
    }

    /// Exactly-once: killed after the commit and before the file was written, an instance
    /// catches its file up from the changelog; and a restore waits for a transaction still
    /// open when the committed offset says its checkpoint is committed.
    #[test]
    fn a_restore_reaches_the_committed_offset_through_the_changelog() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(TxnLog::default());
        {
            let a = txn_instance(dir.path(), "a.redb", &log);
            a.assign(&pid(0), 1, None).unwrap();
            let s = a.open(&scope("t", 0)).unwrap();
            s.commit(vec![put("k", "1")], at(1, 10), 0).unwrap();
            let staged = a.stage(&[(pid(0), 10)]).unwrap();
            log.end(0);
            drop(staged); // the crash: committed, never completed
        }
        let a = txn_instance(dir.path(), "a.redb", &log);
        assert_eq!(a.assign(&pid(0), 1, Some(10)).unwrap(), Some(10));
        assert_eq!(
            get(&a.open(&scope("t", 0)).unwrap(), "k").as_deref(),
            Some("1")
        );

        // B's commit is on its way when A restores: A waits for it.
        let b = txn_instance(dir.path(), "b.redb", &log);
        b.assign(&pid(0), 2, Some(10)).unwrap();
        b.open(&scope("t", 0))
            .unwrap()
            .commit(vec![put("k", "2")], at(2, 20), 0)
            .unwrap();
        let staged = b.stage(&[(pid(0), 20)]).unwrap();
        let committer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(300));
                log.end(0);
            })
        };
        let started = std::time::Instant::now();
        assert_eq!(a.assign(&pid(0), 3, Some(20)).unwrap(), Some(20));
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
        assert_eq!(
            get(&a.open(&scope("t", 0)).unwrap(), "k").as_deref(),
            Some("2")
        );
        committer.join().unwrap();
        b.complete(staged).unwrap();
        // A committed offset no marker matches (an at-least-once past) does not block.
        assert_eq!(a.assign(&pid(0), 4, Some(25)).unwrap(), Some(20));
    }

    /// A write at the position a checkpoint in progress took is not dropped with it.
    #[test]
    fn a_write_during_a_checkpoint_is_kept_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(TxnLog::default());
        let a = txn_instance(dir.path(), "a.redb", &log);
        a.assign(&pid(0), 1, None).unwrap();
        let s = a.open(&scope("t", 0)).unwrap();
        s.commit(vec![put("k", "1")], at(1, 10), 0).unwrap();
        let staged = a.stage(&[(pid(0), 10)]).unwrap();
        // A flush's write (no input position: it counts at the latest, 10).
        s.commit(vec![put("f", "1")], None, 0).unwrap();
        log.end(0);
        a.complete(staged).unwrap();
        assert_eq!(get(&s, "f").as_deref(), Some("1"), "still readable");
        assert_eq!(a.pending_writes(&pid(0)), 1, "kept for the next checkpoint");
        let staged = a.stage(&[(pid(0), 10)]).unwrap();
        log.end(0);
        a.complete(staged).unwrap();
        let b = txn_instance(dir.path(), "b.redb", &log);
        b.assign(&pid(0), 2, Some(10)).unwrap();
        assert_eq!(
            get(&b.open(&scope("t", 0)).unwrap(), "f").as_deref(),
            Some("1")
        );
    }
}
