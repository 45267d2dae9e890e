//! `profiles`: the embedded profile store. One row per key (e.g. one live profile per viewer),
//! upserted from JSON records, kept on disk in a single file (redb: ACID, crash-safe, no external
//! service), and — optionally — served on a live dashboard that pushes every change to browsers.
//!
//! A record is a JSON object; its `key_field` names the row. A record with `"removed": true`
//! deletes the row. With `version_field`, a record whose version is lower than the stored row's
//! is ignored, so a replay or an out-of-order update never regresses a row; and a removal leaves a
//! tombstone with the last version for `tombstone_ttl`, so a late or redelivered update that is
//! not newer than the removed row does not bring it back. Versions live in their own table: an
//! upsert reads a few bytes, never the stored row.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

use super::{Progress, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ConfigError, Duration as CfgDuration, Origin};
use crate::dashboard::{self, DashboardConfig, Hub};
use crate::record::Record;
use crate::setup::BuildContext;

const ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");
/// Key → (removed at, ms since the epoch; 0 while the row is live, the row's version as JSON).
const VERSIONS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("versions");
/// How often tombstones older than `tombstone_ttl` are pruned.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// ```toml
/// [sink]
/// type = "profiles"
/// path = "target/weir-demo/profiles.redb"
/// key_field = "viewer_id"          # default
/// version_field = "version"        # optional: never replace a row with an older version
/// tombstone_ttl = "24h"            # with version_field: how long a removal's version is kept
/// [sink.dashboard]                 # optional: the live dashboard
/// address = "127.0.0.1:8080"
/// static_dir = "examples/live-viewer/demo"   # optional: files served under /demo/
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfilesConfig {
    pub path: PathBuf,
    #[serde(default = "default_key")]
    pub key_field: String,
    pub version_field: Option<String>,
    #[serde(default = "default_tombstone_ttl")]
    pub tombstone_ttl: CfgDuration,
    pub dashboard: Option<DashboardConfig>,
}

fn default_tombstone_ttl() -> CfgDuration {
    CfgDuration(std::time::Duration::from_secs(24 * 3600))
}

fn default_key() -> String {
    "viewer_id".to_string()
}

impl SinkType for ProfilesConfig {
    const TYPE: &'static str = "profiles";
}

#[async_trait]
impl SinkConfig for ProfilesConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(origin.error("path", "expected a file path, found an empty string"));
        }
        if self.key_field.is_empty() {
            return Err(origin.error(
                "key_field",
                "expected a JSON field name, found an empty string",
            ));
        }
        if let Some(d) = &self.dashboard {
            d.check(&origin.child("dashboard"))?;
        }
        Ok(())
    }

    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let store = Store::open(&self.path)?;
        let hub = Hub::new(Arc::new(store.clone()), self.key_field.clone());
        Ok(Box::new(ProfileSink {
            store,
            hub,
            dashboard: self.dashboard.clone(),
            key_field: self.key_field.clone(),
            version_field: self.version_field.clone(),
            tombstone_ttl_ms: self.tombstone_ttl.0.as_millis() as u64,
            last_prune: std::time::Instant::now(),
        }))
    }
}

/// The on-disk table of rows (JSON documents by key).
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
}

impl Store {
    pub fn open(path: &std::path::Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let db = Database::create(path)
            .with_context(|| format!("cannot open profile store {}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(ROWS)?;
        txn.open_table(VERSIONS)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Every row, as JSON documents.
    pub fn snapshot(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        self.each(&mut |v| out.push(v))?;
        Ok(out)
    }

    /// Every row, one at a time.
    pub fn each(&self, f: &mut dyn FnMut(serde_json::Value)) -> anyhow::Result<()> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROWS)?;
        for row in table.iter()? {
            let (_, v) = row?;
            f(serde_json::from_slice(v.value())?);
        }
        Ok(())
    }

    pub fn len(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ROWS)?.len()?)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

#[async_trait]
impl dashboard::Snapshot for Store {
    async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        self.snapshot()
    }

    async fn each_row(&self, f: &mut (dyn FnMut(serde_json::Value) + Send)) -> anyhow::Result<()> {
        self.each(f)
    }
}

struct ProfileSink {
    store: Store,
    hub: Hub,
    /// Where the dashboard listens (it starts with the sink), if it has one.
    dashboard: Option<DashboardConfig>,
    key_field: String,
    version_field: Option<String>,
    tombstone_ttl_ms: u64,
    last_prune: std::time::Instant,
}

/// What one record does to the table.
enum Change {
    Upsert { key: String, doc: serde_json::Value },
    Remove { key: String },
}

impl ProfileSink {
    fn change(&self, r: &Record) -> Result<Change, String> {
        let doc: serde_json::Value =
            serde_json::from_slice(&r.value).map_err(|e| format!("not a JSON object: {e}"))?;
        let key = row_key(&doc, &self.key_field)?;
        if doc.get("removed").and_then(|v| v.as_bool()) == Some(true) {
            Ok(Change::Remove { key })
        } else {
            Ok(Change::Upsert { key, doc })
        }
    }
}

/// The row key of a profile: its `key_field`, a non-empty string or a number (the `profiles`
/// and `postgres` stores).
pub(crate) fn row_key(doc: &serde_json::Value, key_field: &str) -> Result<String, String> {
    match doc.get(key_field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        other => Err(format!(
            "expected a non-empty string at `{key_field}`, found {}",
            other.map_or("nothing".to_string(), |v| v.to_string())
        )),
    }
}

/// `a` is older than `b`: numbers numerically, strings (e.g. RFC 3339 timestamps) as text.
pub(crate) fn older(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    match (a, b) {
        (serde_json::Value::String(x), serde_json::Value::String(y)) => x < y,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x < y,
            _ => false,
        },
    }
}

#[async_trait]
impl Sink for ProfileSink {
    async fn start(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &self.dashboard {
            dashboard::spawn(d.clone(), self.hub.clone())?;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        // Records that are not profiles are rejected one by one (to the failure sink); the rest
        // are written.
        let mut changes = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match self.change(r) {
                Ok(c) => changes.push(c),
                Err(e) => rejected.push((i, e.into())),
            }
        }
        let version_field = self.version_field.clone();
        let store = self.store.clone();
        let now_ms = (crate::snowplow::now_ms() as u64).max(1);
        let prune_before = (self.last_prune.elapsed() >= PRUNE_EVERY)
            .then(|| now_ms.saturating_sub(self.tombstone_ttl_ms));
        let applied = tokio::task::block_in_place(move || -> anyhow::Result<Vec<Change>> {
            let txn = store.db.begin_write()?;
            let mut applied = Vec::with_capacity(changes.len());
            {
                let mut table = txn.open_table(ROWS)?;
                let mut versions = txn.open_table(VERSIONS)?;
                for c in changes {
                    match c {
                        Change::Upsert { key, doc } => {
                            let new_v = version_field.as_ref().and_then(|vf| doc.get(vf));
                            if let Some(new_v) = new_v {
                                let stored = match versions.get(key.as_str())? {
                                    Some(g) => {
                                        let (removed_at, v) = g.value();
                                        Some((removed_at, serde_json::from_slice(v)?))
                                    }
                                    // A store written before versions had their own table.
                                    None => match table.get(key.as_str())? {
                                        Some(row) => serde_json::from_slice::<serde_json::Value>(
                                            row.value(),
                                        )?
                                        .get(version_field.as_deref().unwrap_or_default())
                                        .map(|v| (0, v.clone())),
                                        None => None,
                                    },
                                };
                                match stored {
                                    // A live row: equal versions are the same update again.
                                    Some((0, old_v)) if older(new_v, &old_v) => continue,
                                    // A removed row comes back only with a newer version.
                                    Some((r, old_v)) if r != 0 && !older(&old_v, new_v) => continue,
                                    _ => {}
                                }
                                let v = serde_json::to_vec(new_v)?;
                                versions.insert(key.as_str(), (0, v.as_slice()))?;
                            }
                            let bytes = serde_json::to_vec(&doc)?;
                            table.insert(key.as_str(), bytes.as_slice())?;
                            applied.push(Change::Upsert { key, doc });
                        }
                        Change::Remove { key } => {
                            let live = versions
                                .get(key.as_str())?
                                .filter(|g| g.value().0 == 0)
                                .map(|g| g.value().1.to_vec());
                            if let Some(v) = live {
                                versions.insert(key.as_str(), (now_ms, v.as_slice()))?;
                            }
                            if table.remove(key.as_str())?.is_some() {
                                applied.push(Change::Remove { key });
                            }
                        }
                    }
                }
                if let Some(before) = prune_before {
                    versions
                        .retain(|_, (removed_at, _)| removed_at == 0 || removed_at >= before)?;
                }
            }
            txn.commit()?;
            Ok(applied)
        })
        .map_err(SinkError::Retriable)?;
        if prune_before.is_some() {
            self.last_prune = std::time::Instant::now();
        }
        for c in applied {
            match c {
                Change::Upsert { key, doc } => self.hub.upserted(&key, doc),
                Change::Remove { key } => self.hub.removed(&key),
            }
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(rejected))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(dir: &std::path::Path, tombstone_ttl_ms: u64) -> ProfileSink {
        let store = Store::open(&dir.join("p.redb")).unwrap();
        ProfileSink {
            hub: Hub::new(Arc::new(store.clone()), "viewer_id".into()),
            dashboard: None,
            store,
            key_field: "viewer_id".into(),
            version_field: Some("version".into()),
            tombstone_ttl_ms,
            last_prune: std::time::Instant::now(),
        }
    }

    fn rec(v: serde_json::Value) -> Record {
        Record::new(v.to_string())
    }

    fn up(version: &str) -> Record {
        rec(serde_json::json!({"viewer_id": "v1", "version": version}))
    }

    fn stored(s: &ProfileSink) -> Vec<String> {
        let mut rows: Vec<String> = s
            .store
            .snapshot()
            .unwrap()
            .iter()
            .map(|r| format!("{}@{}", r["viewer_id"], r["version"]))
            .collect();
        rows.sort();
        rows
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_removed_row_comes_back_only_with_a_newer_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 3_600_000);
        let removal = || rec(serde_json::json!({"viewer_id": "v1", "removed": true}));
        s.write(&[up("2"), up("1")], &mut Progress::default())
            .await
            .unwrap();
        assert_eq!(stored(&s), [r#""v1"@"2""#]);
        s.write(&[removal()], &mut Progress::default())
            .await
            .unwrap();
        assert!(stored(&s).is_empty());
        // A late older update and a redelivery of the last one stay removed.
        s.write(&[up("1"), up("2")], &mut Progress::default())
            .await
            .unwrap();
        assert!(stored(&s).is_empty(), "{:?}", stored(&s));
        // A newer one (the viewer is back) is a new row.
        s.write(&[up("3")], &mut Progress::default()).await.unwrap();
        assert_eq!(stored(&s), [r#""v1"@"3""#]);
        // Equal versions on a live row are applied (idempotent), older ones not.
        s.write(&[up("3"), up("2")], &mut Progress::default())
            .await
            .unwrap();
        assert_eq!(stored(&s), [r#""v1"@"3""#]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tombstones_are_pruned_after_their_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sink(dir.path(), 0);
        s.write(&[up("5")], &mut Progress::default()).await.unwrap();
        s.write(
            &[rec(serde_json::json!({"viewer_id": "v1", "removed": true}))],
            &mut Progress::default(),
        )
        .await
        .unwrap();
        s.last_prune -= PRUNE_EVERY;
        std::thread::sleep(std::time::Duration::from_millis(5));
        s.write(&[], &mut Progress::default()).await.unwrap();
        // Pruned: the tombstone no longer holds back an old version.
        s.write(&[up("4")], &mut Progress::default()).await.unwrap();
        assert_eq!(stored(&s), [r#""v1"@"4""#]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_store_from_before_the_version_table_still_guards_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = sink(dir.path(), 0);
        {
            let txn = s.store.db.begin_write().unwrap();
            txn.open_table(ROWS)
                .unwrap()
                .insert("v1", br#"{"viewer_id":"v1","version":"7"}"#.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let mut s = s;
        s.write(&[up("6")], &mut Progress::default()).await.unwrap();
        assert_eq!(stored(&s), [r#""v1"@"7""#]);
        s.write(&[up("8")], &mut Progress::default()).await.unwrap();
        assert_eq!(stored(&s), [r#""v1"@"8""#]);
    }
}
