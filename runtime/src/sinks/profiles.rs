//! `profiles`: the embedded profile store. One row per key (e.g. one live profile per viewer),
//! upserted from JSON records, kept on disk in a single file (redb: ACID, crash-safe, no external
//! service), and — optionally — served on a live dashboard that pushes every change to browsers.
//!
//! A record is a JSON object; its `key_field` names the row. A record with `"removed": true`
//! deletes the row. With `version_field`, a record whose version is lower than the stored row's
//! is ignored, so a replay or an out-of-order update never regresses a row.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Deserialize;

use super::{Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ConfigError, Origin};
use crate::dashboard::{self, DashboardConfig, Hub};
use crate::record::Record;

const ROWS: TableDefinition<&str, &[u8]> = TableDefinition::new("profiles");

/// ```toml
/// [sink]
/// type = "profiles"
/// path = "target/weir-demo/profiles.redb"
/// key_field = "viewer_id"          # default
/// version_field = "version"        # optional: never replace a row with an older version
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
    pub dashboard: Option<DashboardConfig>,
}

fn default_key() -> String {
    "viewer_id".to_string()
}

impl SinkType for ProfilesConfig {
    const TYPE: &'static str = "profiles";
}

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
        Ok(())
    }

    fn build(&self) -> anyhow::Result<Box<dyn Sink>> {
        let store = Store::open(&self.path)?;
        let hub = Hub::new(store.clone(), self.key_field.clone());
        if let Some(d) = &self.dashboard {
            dashboard::spawn(d.clone(), hub.clone())?;
        }
        Ok(Box::new(ProfileSink {
            store,
            hub,
            key_field: self.key_field.clone(),
            version_field: self.version_field.clone(),
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
            .map_err(|e| anyhow::anyhow!("cannot open profile store {}: {e}", path.display()))?;
        let txn = db.begin_write()?;
        txn.open_table(ROWS)?;
        txn.commit()?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Every row, as JSON documents.
    pub fn snapshot(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ROWS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (_, v) = row?;
            out.push(serde_json::from_slice(v.value())?);
        }
        Ok(out)
    }

    pub fn len(&self) -> anyhow::Result<u64> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ROWS)?.len()?)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }
}

struct ProfileSink {
    store: Store,
    hub: Hub,
    key_field: String,
    version_field: Option<String>,
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
        let key = match doc.get(&self.key_field) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            other => {
                return Err(format!(
                    "expected a non-empty string at `{}`, found {}",
                    self.key_field,
                    other.map_or("nothing".to_string(), |v| v.to_string())
                ))
            }
        };
        if doc.get("removed").and_then(|v| v.as_bool()) == Some(true) {
            Ok(Change::Remove { key })
        } else {
            Ok(Change::Upsert { key, doc })
        }
    }
}

/// `a` is older than `b`: numbers numerically, strings (e.g. RFC 3339 timestamps) as text.
fn older(a: &serde_json::Value, b: &serde_json::Value) -> bool {
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
    async fn write(&mut self, records: &[Record]) -> Result<(), SinkError> {
        // Records that are not profiles are rejected one by one (to the failure sink); the rest
        // are written.
        let mut changes = Vec::with_capacity(records.len());
        let mut rejected = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match self.change(r) {
                Ok(c) => changes.push(c),
                Err(e) => rejected.push((i, e)),
            }
        }
        let version_field = self.version_field.clone();
        let store = self.store.clone();
        // One transaction per batch, committed durably before the batch is acknowledged.
        let applied = tokio::task::block_in_place(move || -> anyhow::Result<Vec<Change>> {
            let txn = store.db.begin_write()?;
            let mut applied = Vec::with_capacity(changes.len());
            {
                let mut table = txn.open_table(ROWS)?;
                for c in changes {
                    match c {
                        Change::Upsert { key, doc } => {
                            if let Some(vf) = &version_field {
                                if let Some(old) = table.get(key.as_str())? {
                                    let old: serde_json::Value =
                                        serde_json::from_slice(old.value())?;
                                    if let (Some(new_v), Some(old_v)) = (doc.get(vf), old.get(vf)) {
                                        if older(new_v, old_v) {
                                            continue;
                                        }
                                    }
                                }
                            }
                            let bytes = serde_json::to_vec(&doc)?;
                            table.insert(key.as_str(), bytes.as_slice())?;
                            applied.push(Change::Upsert { key, doc });
                        }
                        Change::Remove { key } => {
                            if table.remove(key.as_str())?.is_some() {
                                applied.push(Change::Remove { key });
                            }
                        }
                    }
                }
            }
            txn.commit()?;
            Ok(applied)
        })
        .map_err(SinkError::Retriable)?;
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
