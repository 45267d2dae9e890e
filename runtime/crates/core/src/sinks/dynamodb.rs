//! `dynamodb`: one item per key (e.g. one profile per viewer), from JSON records.
//!
//! Each record is a JSON object. Its `partition_key` field (and `sort_key`, if set) make the item's
//! key, stored as strings; the other fields (all of them, or those listed in `attributes`) become
//! the item's attributes with their JSON types (string → S, number → N, bool → BOOL, null → NULL,
//! array → L, object → M).
//!
//! - With `version_attribute`, every write is conditional: an item is put only if none exists or
//!   the stored version is lower (`attribute_not_exists(pk) OR #version < :version`), and removed
//!   only if the stored version is not higher. A replayed or late, older update never overwrites a
//!   newer one, whatever order records arrive in. These writes go one item per request
//!   (DynamoDB's batch write takes no conditions), `concurrency` at a time; within one batch only
//!   the newest record of each key is written.
//! - Without it, writes are BatchWriteItem requests of up to 25 items (the last record of a key in
//!   a batch wins), and only the items DynamoDB returns as unprocessed are sent again, with
//!   backoff and jitter.
//! - Throttling and transient errors are retried; records that can never be written (not a JSON
//!   object, no key, an item over 400 KB, a request DynamoDB rejects as invalid) are rejected to
//!   the failure sink as bad rows.
//! - `removal_field`: a record whose field of that name is `true` removes its item. With
//!   `version_attribute`, a removal leaves a tombstone instead of deleting outright: the item is
//!   replaced by its key, its version, `tombstone_attribute` (default `deleted`) = true and the
//!   TTL attribute, conditioned on the version like every write. A late, older update then finds
//!   a stored version at least as new and is discarded: it cannot re-create the removed item,
//!   while a newer update replaces the tombstone. A removal record carrying a version tombstones
//!   at that version; one without (e.g. viewer-state's expiry, `{"viewer_id": …, "removed":
//!   true}`) tombstones whatever version is stored, read first and written only if unchanged.
//!   Readers of the table skip items whose `tombstone_attribute` is true (see [`is_tombstone`]);
//!   DynamoDB's TTL removes tombstones with the rest. Without `version_attribute` a removal
//!   deletes the item.
//! - `ttl_attribute` + `ttl`: each written item gets that attribute set to now + `ttl` (epoch
//!   seconds), for DynamoDB's time-to-live expiry.
//! - `[sink.dashboard]`: the live dashboard (as on the `profiles` sink) with this table as its
//!   store: a browser's snapshot is a Scan of the table (tombstones skipped), and every item this
//!   sink writes or removes — only those its version condition let through — is pushed.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeyType, PutRequest, TimeToLiveSpecification, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use futures::stream::{self, StreamExt};
use serde::Deserialize;

use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::aws::{self, ErrorClass};
use crate::config::{self, ConfigError, Origin};
use crate::dashboard::{self, DashboardConfig, Hub};
use crate::record::Record;
use crate::setup::{self, BuildContext};

/// DynamoDB's item size limit.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// DynamoDB's limit of items per BatchWriteItem.
pub const MAX_BATCH_ITEMS: usize = 25;

/// ```toml
/// [sink]
/// type = "dynamodb"
/// table = "viewer_profiles"
/// partition_key = "viewer_id"          # JSON field → key attribute (stored as a string)
/// # sort_key = "media_id"              # optional second key field
/// # attributes = ["status", "video_ts"] # optional: only these fields (default: every field)
/// version_attribute = "version"         # optional: conditional upserts, newest version wins
/// removal_field = "removed"             # optional: `"removed": true` removes the item
/// tombstone_attribute = "deleted"       # marks removed items (with `version_attribute`)
/// ttl_attribute = "expires_at"          # optional, with `ttl`
/// ttl = "30d"
/// # region = "eu-west-1"               # default: the standard AWS chain
/// # endpoint_url = "http://127.0.0.1:4566"  # LocalStack, emulators
/// create_table = false                  # true: create the table if missing (local development)
/// concurrency = 16                      # requests in flight
/// max_attempts = 10                     # per item, before the batch is retried as a whole
/// [sink.dashboard]                      # optional: the live dashboard, read from this table
/// address = "0.0.0.0:8080"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DynamoDbConfig {
    pub table: String,
    pub partition_key: String,
    pub sort_key: Option<String>,
    pub attributes: Option<Vec<String>>,
    pub version_attribute: Option<String>,
    pub removal_field: Option<String>,
    #[serde(default = "default_tombstone")]
    pub tombstone_attribute: String,
    pub ttl_attribute: Option<String>,
    pub ttl: Option<config::Duration>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// An IAM role to assume (through STS) for this component's requests.
    pub role_arn: Option<String>,
    #[serde(default)]
    pub create_table: bool,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "aws::default_max_attempts")]
    pub max_attempts: u32,
    pub dashboard: Option<DashboardConfig>,
}

fn default_tombstone() -> String {
    "deleted".to_string()
}
fn default_concurrency() -> usize {
    16
}

impl SinkType for DynamoDbConfig {
    const TYPE: &'static str = "dynamodb";
}

#[async_trait]
impl SinkConfig for DynamoDbConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        aws::check_role_arn(origin, self.role_arn.as_deref())?;
        for (key, value) in [
            ("table", Some(&self.table)),
            ("partition_key", Some(&self.partition_key)),
            ("sort_key", self.sort_key.as_ref()),
            ("version_attribute", self.version_attribute.as_ref()),
            ("removal_field", self.removal_field.as_ref()),
            ("tombstone_attribute", Some(&self.tombstone_attribute)),
            ("ttl_attribute", self.ttl_attribute.as_ref()),
        ] {
            if value.is_some_and(|v| v.is_empty()) {
                return Err(origin.error(key, "expected a name, found an empty string"));
            }
        }
        if self.ttl_attribute.is_some() != self.ttl.is_some() {
            return Err(origin.error(
                if self.ttl.is_some() {
                    "ttl_attribute"
                } else {
                    "ttl"
                },
                "`ttl_attribute` and `ttl` go together: set both or neither",
            ));
        }
        if let Some(d) = &self.dashboard {
            d.check(&origin.child("dashboard"))?;
        }
        aws::check_requests(origin, self.concurrency, self.max_attempts)
    }

    /// Creates the client and checks that the table can be used (creating it with
    /// `create_table`).
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let sdk = aws::sdk_config(
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            self.role_arn.as_deref(),
        )
        .await;
        let client = Client::new(&sdk);
        let endpoint = self.endpoint_url.as_deref();
        setup::check(
            "DynamoDB",
            aws::check_table(
                &client,
                "table",
                &self.table,
                endpoint,
                ("create_table", self.create_table),
            ),
        )
        .await?;
        if self.create_table {
            create_table(&client, self).await?;
        }
        let hub = self.dashboard.as_ref().map(|_| {
            let table = TableSnapshot {
                cfg: self.clone(),
                client: client.clone(),
            };
            Hub::new(std::sync::Arc::new(table), self.partition_key.clone())
        });
        Ok(Box::new(DynamoDbSink {
            cfg: self.clone(),
            client,
            hub,
        }))
    }
}

pub struct DynamoDbSink {
    cfg: DynamoDbConfig,
    client: Client,
    /// The dashboard to tell about every applied write (it starts with the sink).
    hub: Option<Hub>,
}

/// The dashboard's view of the table: a paginated Scan, tombstones skipped.
struct TableSnapshot {
    cfg: DynamoDbConfig,
    client: Client,
}

#[async_trait]
impl dashboard::Snapshot for TableSnapshot {
    async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut rows = Vec::new();
        self.each_row(&mut |r| rows.push(r)).await?;
        Ok(rows)
    }

    async fn each_row(&self, f: &mut (dyn FnMut(serde_json::Value) + Send)) -> anyhow::Result<()> {
        let mut pages = self
            .client
            .scan()
            .table_name(&self.cfg.table)
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = match item {
                Ok(item) => item,
                // Not created yet: the sink creates it with its first write.
                Err(e)
                    if self.cfg.create_table
                        && e.as_service_error()
                            .is_some_and(|se| se.is_resource_not_found_exception()) =>
                {
                    return Ok(());
                }
                Err(e) => anyhow::bail!("scan {}: {}", self.cfg.table, aws::describe(&e)),
            };
            if !is_tombstone(&item, &self.cfg.tombstone_attribute) {
                f(item_to_json(&item));
            }
        }
        Ok(())
    }
}

/// What one record asks for.
#[derive(Debug, Clone)]
struct Op {
    index: usize,
    key: (String, Option<String>),
    version: Option<AttributeValue>,
    kind: OpKind,
}

#[derive(Debug, Clone)]
enum OpKind {
    Put(HashMap<String, AttributeValue>),
    /// Remove the item (leaving a tombstone, expiring at the given epoch second, when writes
    /// are versioned).
    Delete {
        expires: Option<u64>,
    },
}

impl DynamoDbSink {
    /// A sink for `cfg` with an already configured client, on a table that exists (tests,
    /// tools).
    pub fn with_client(cfg: DynamoDbConfig, client: Client) -> Self {
        DynamoDbSink {
            cfg,
            client,
            hub: None,
        }
    }

    /// Turns a record into an operation, or says why it cannot be one.
    fn op(&self, index: usize, record: &Record, expires: Option<u64>) -> Result<Op, Refusal> {
        let cfg = &self.cfg;
        let value: serde_json::Value =
            serde_json::from_slice(&record.value).map_err(|e| format!("not JSON: {e}"))?;
        let serde_json::Value::Object(mut obj) = value else {
            return Err("expected a JSON object".into());
        };
        let key_part =
            |obj: &serde_json::Map<String, serde_json::Value>, name: &str| match obj.get(name) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::String(_)) => {
                    Err(format!("key field `{name}` is an empty string"))
                }
                Some(other) => Err(format!(
                    "key field `{name}` must be a string or a number, found {other}"
                )),
                None => Err(format!("missing key field `{name}`")),
            };
        let pk = key_part(&obj, &cfg.partition_key)?;
        let sk = cfg
            .sort_key
            .as_ref()
            .map(|s| key_part(&obj, s))
            .transpose()?;
        if pk.len() > 2048 || sk.as_ref().is_some_and(|s| s.len() > 1024) {
            return Err("key too long (partition key ≤ 2048 bytes, sort key ≤ 1024)".into());
        }
        let removed = cfg
            .removal_field
            .as_ref()
            .is_some_and(|f| obj.get(f) == Some(&serde_json::Value::Bool(true)));
        let version = match &cfg.version_attribute {
            Some(v) => match obj.get(v) {
                Some(val @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => {
                    Some(to_attr(val))
                }
                Some(other) => {
                    return Err(format!(
                        "version field `{v}` must be a string or a number, found {other}"
                    )
                    .into())
                }
                // A removal without a version removes whatever version is stored.
                None if removed => None,
                None => return Err(format!("missing version field `{v}`").into()),
            },
            None => None,
        };
        let kind = if removed {
            OpKind::Delete { expires }
        } else {
            if let Some(f) = &cfg.removal_field {
                obj.remove(f);
            }
            let mut item: HashMap<String, AttributeValue> = match &cfg.attributes {
                Some(names) => names
                    .iter()
                    .filter_map(|n| obj.get(n).map(|v| (n.clone(), to_attr(v))))
                    .collect(),
                None => obj.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect(),
            };
            item.insert(cfg.partition_key.clone(), AttributeValue::S(pk.clone()));
            if let (Some(name), Some(s)) = (&cfg.sort_key, &sk) {
                item.insert(name.clone(), AttributeValue::S(s.clone()));
            }
            if let (Some(name), Some(v)) = (&cfg.version_attribute, &version) {
                item.insert(name.clone(), v.clone());
            }
            if let (Some(name), Some(at)) = (&cfg.ttl_attribute, expires) {
                item.insert(name.clone(), AttributeValue::N(at.to_string()));
            }
            let size = item_size(&item);
            if size > MAX_ITEM_BYTES {
                return Err(Refusal::oversized(
                    format!("item of {size} bytes is over DynamoDB's limit of {MAX_ITEM_BYTES}"),
                    size,
                    MAX_ITEM_BYTES,
                ));
            }
            OpKind::Put(item)
        };
        Ok(Op {
            index,
            key: (pk, sk),
            version,
            kind,
        })
    }

    /// Tells the dashboard (if any) that `op` was applied.
    fn applied(&self, op: &Op) {
        let Some(hub) = &self.hub else { return };
        match &op.kind {
            OpKind::Put(item) => hub.upserted(&op.key.0, item_to_json(item)),
            OpKind::Delete { .. } => hub.removed(&op.key.0),
        }
    }

    fn key_item(&self, op: &Op) -> HashMap<String, AttributeValue> {
        let mut key = HashMap::new();
        key.insert(
            self.cfg.partition_key.clone(),
            AttributeValue::S(op.key.0.clone()),
        );
        if let (Some(name), Some(s)) = (&self.cfg.sort_key, &op.key.1) {
            key.insert(name.clone(), AttributeValue::S(s.clone()));
        }
        key
    }
}

#[async_trait]
impl Sink for DynamoDbSink {
    async fn start(&mut self) -> anyhow::Result<()> {
        if let (Some(d), Some(hub)) = (&self.cfg.dashboard, &self.hub) {
            dashboard::spawn(d.clone(), hub.clone())?;
        }
        Ok(())
    }

    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let client = self.client.clone();
        let expires = self.cfg.ttl.map(|d| {
            (SystemTime::now() + d.0)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let mut rejected: Vec<(usize, Refusal)> = Vec::new();
        // Newest operation per key: later records win ties, a higher version always wins.
        let mut latest: HashMap<(String, Option<String>), Op> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            match self.op(i, r, expires) {
                Ok(mut op) => match latest.get(&op.key) {
                    Some(prev) if newer(&prev.version, &op.version) => {}
                    Some(prev) => {
                        // A removal without a version removes the update it follows.
                        if op.version.is_none() && matches!(op.kind, OpKind::Delete { .. }) {
                            op.version = prev.version.clone();
                        }
                        latest.insert(op.key.clone(), op);
                    }
                    None => {
                        latest.insert(op.key.clone(), op);
                    }
                },
                Err(reason) => rejected.push((i, reason)),
            }
        }
        let mut ops: Vec<Op> = latest.into_values().collect();
        ops.sort_by_key(|o| o.index);
        metrics::counter!("weir_dynamodb_items_total").increment(ops.len() as u64);

        let outcome = if self.cfg.version_attribute.is_some() {
            self.write_conditional(&client, ops).await
        } else {
            self.write_batches(&client, ops).await
        };
        rejected.extend(outcome?.into_iter().map(|(i, r)| (i, Refusal::from(r))));
        if rejected.is_empty() {
            Ok(())
        } else {
            rejected.sort_by_key(|r| r.0);
            Err(SinkError::Rejected(rejected))
        }
    }
}

/// True if version `a` is strictly newer than `b` (strings compare by bytes, as DynamoDB does;
/// numbers by value).
fn newer(a: &Option<AttributeValue>, b: &Option<AttributeValue>) -> bool {
    match (a, b) {
        (Some(AttributeValue::N(x)), Some(AttributeValue::N(y))) => {
            match (x.parse::<f64>(), y.parse::<f64>()) {
                (Ok(x), Ok(y)) => x > y,
                _ => false,
            }
        }
        (Some(AttributeValue::S(x)), Some(AttributeValue::S(y))) => x.as_bytes() > y.as_bytes(),
        _ => false,
    }
}

impl DynamoDbSink {
    /// One conditional PutItem / DeleteItem per key, `concurrency` at a time.
    async fn write_conditional(
        &self,
        client: &Client,
        ops: Vec<Op>,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let results: Vec<Result<Option<(usize, String)>, SinkError>> = stream::iter(ops)
            .map(|op| self.write_one(client, op, true))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut rejected = Vec::new();
        for r in results {
            if let Some(x) = r? {
                rejected.push(x);
            }
        }
        Ok(rejected)
    }

    /// Writes one item, retrying throttling and transient errors; `Ok(Some)` if it is invalid.
    async fn write_one(
        &self,
        client: &Client,
        op: Op,
        conditional: bool,
    ) -> Result<Option<(usize, String)>, SinkError> {
        let cfg = &self.cfg;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (class, message) = match &op.kind {
                OpKind::Put(item) => {
                    let mut req = client
                        .put_item()
                        .table_name(&cfg.table)
                        .set_item(Some(item.clone()));
                    if let (true, Some(v), Some(name)) =
                        (conditional, &op.version, &cfg.version_attribute)
                    {
                        req = req
                            .condition_expression(
                                "attribute_not_exists(#pk) OR #version < :version",
                            )
                            .expression_attribute_names("#pk", &cfg.partition_key)
                            .expression_attribute_names("#version", name)
                            .expression_attribute_values(":version", v.clone());
                    }
                    match req.send().await {
                        Ok(_) => {
                            self.applied(&op);
                            return Ok(None);
                        }
                        Err(e) => (aws::classify(&e), aws::describe(&e)),
                    }
                }
                OpKind::Delete { expires } => {
                    let done = match (conditional, &cfg.version_attribute) {
                        (true, Some(name)) => self.tombstone(client, &op, name, *expires).await,
                        _ => client
                            .delete_item()
                            .table_name(&cfg.table)
                            .set_key(Some(self.key_item(&op)))
                            .send()
                            .await
                            .map(drop)
                            .map_err(|e| (aws::classify(&e), aws::describe(&e))),
                    };
                    match done {
                        Ok(()) => {
                            self.applied(&op);
                            return Ok(None);
                        }
                        Err(e) => e,
                    }
                }
            };
            match class {
                // A newer version is already stored: this older (or replayed) one is done.
                ErrorClass::ConditionFailed => {
                    metrics::counter!("weir_dynamodb_stale_writes_total").increment(1);
                    return Ok(None);
                }
                ErrorClass::Invalid => return Ok(Some((op.index, message))),
                ErrorClass::Setup => {
                    return Err(SinkError::Setup(anyhow::anyhow!(
                        "dynamodb {}: {message}",
                        cfg.table
                    )))
                }
                ErrorClass::Throttled | ErrorClass::Transient => {
                    metrics::counter!("weir_dynamodb_retries_total", "reason" => if class == ErrorClass::Throttled { "throttled" } else { "transient" }).increment(1);
                    if attempt >= cfg.max_attempts {
                        return Err(SinkError::of_class(
                            class.retry_class(),
                            anyhow::anyhow!(
                                "dynamodb {}: {message} (after {attempt} attempts)",
                                cfg.table
                            ),
                        ));
                    }
                    tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
                }
            }
        }
    }

    /// Replaces the item by a tombstone: its key, a version, the tombstone attribute and the TTL.
    /// With the removal's own version, conditioned like a put (`<=`: a tombstone of the same
    /// version is rewritten harmlessly); without one, at the stored version, written only if that
    /// is still the stored version (a concurrent change makes this a transient error: re-read).
    async fn tombstone(
        &self,
        client: &Client,
        op: &Op,
        version_name: &str,
        expires: Option<u64>,
    ) -> Result<(), (ErrorClass, String)> {
        let cfg = &self.cfg;
        let (version, condition) = match &op.version {
            Some(v) => (
                v.clone(),
                "attribute_not_exists(#pk) OR #version <= :version",
            ),
            None => {
                let stored = client
                    .get_item()
                    .table_name(&cfg.table)
                    .set_key(Some(self.key_item(op)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| (aws::classify(&e), aws::describe(&e)))?
                    .item;
                let Some(stored) = stored else {
                    return Ok(()); // nothing to remove
                };
                if is_tombstone(&stored, &cfg.tombstone_attribute) {
                    return Ok(());
                }
                let Some(v) = stored.get(version_name) else {
                    // Written without a version: nothing can be older than the removal.
                    return client
                        .delete_item()
                        .table_name(&cfg.table)
                        .set_key(Some(self.key_item(op)))
                        .send()
                        .await
                        .map(drop)
                        .map_err(|e| (aws::classify(&e), aws::describe(&e)));
                };
                (v.clone(), "#version = :version")
            }
        };
        let mut item = self.key_item(op);
        item.insert(version_name.to_string(), version.clone());
        item.insert(cfg.tombstone_attribute.clone(), AttributeValue::Bool(true));
        if let (Some(name), Some(at)) = (&cfg.ttl_attribute, expires) {
            item.insert(name.clone(), AttributeValue::N(at.to_string()));
        }
        let mut req = client
            .put_item()
            .table_name(&cfg.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .expression_attribute_names("#version", version_name)
            .expression_attribute_values(":version", version);
        if op.version.is_some() {
            req = req.expression_attribute_names("#pk", &cfg.partition_key);
        }
        match req.send().await {
            Ok(_) => {
                metrics::counter!("weir_dynamodb_tombstones_total").increment(1);
                Ok(())
            }
            Err(e) => match aws::classify(&e) {
                ErrorClass::ConditionFailed if op.version.is_none() => Err((
                    ErrorClass::Transient,
                    "the item changed while being removed".to_string(),
                )),
                class => Err((class, aws::describe(&e))),
            },
        }
    }

    /// BatchWriteItem in chunks of 25, `concurrency` chunks at a time.
    async fn write_batches(
        &self,
        client: &Client,
        ops: Vec<Op>,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let chunks: Vec<Vec<Op>> = ops.chunks(MAX_BATCH_ITEMS).map(<[Op]>::to_vec).collect();
        let results: Vec<Result<Vec<(usize, String)>, SinkError>> = stream::iter(chunks)
            .map(|chunk| self.write_chunk(client, chunk))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut rejected = Vec::new();
        for r in results {
            rejected.extend(r?);
        }
        Ok(rejected)
    }

    async fn write_chunk(
        &self,
        client: &Client,
        chunk: Vec<Op>,
    ) -> Result<Vec<(usize, String)>, SinkError> {
        let cfg = &self.cfg;
        let mut pending: Vec<WriteRequest> = Vec::with_capacity(chunk.len());
        for op in &chunk {
            pending.push(match &op.kind {
                OpKind::Put(item) => WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .expect("item is set"),
                    )
                    .build(),
                OpKind::Delete { .. } => WriteRequest::builder()
                    .delete_request(
                        DeleteRequest::builder()
                            .set_key(Some(self.key_item(op)))
                            .build()
                            .expect("key is set"),
                    )
                    .build(),
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = pending.len();
            match client
                .batch_write_item()
                .request_items(&cfg.table, pending.clone())
                .send()
                .await
            {
                Ok(out) => {
                    pending = out
                        .unprocessed_items
                        .and_then(|mut m| m.remove(&cfg.table))
                        .unwrap_or_default();
                    if pending.is_empty() {
                        chunk.iter().for_each(|op| self.applied(op));
                        return Ok(Vec::new());
                    }
                    metrics::counter!("weir_dynamodb_unprocessed_total")
                        .increment(pending.len() as u64);
                    tracing::debug!(
                        table = %cfg.table,
                        unprocessed = pending.len(),
                        of = sent,
                        attempt,
                        "retrying unprocessed items"
                    );
                }
                Err(e) => match aws::classify(&e) {
                    // One bad item fails the whole request: write this chunk item by item to
                    // find it, and reject only it.
                    ErrorClass::Invalid | ErrorClass::ConditionFailed => {
                        tracing::debug!(error = %aws::describe(&e), "batch rejected; writing its items one by one");
                        let mut rejected = Vec::new();
                        for op in chunk {
                            if let Some(r) = self.write_one(client, op, false).await? {
                                rejected.push(r);
                            }
                        }
                        return Ok(rejected);
                    }
                    ErrorClass::Setup => {
                        return Err(SinkError::Setup(anyhow::anyhow!(
                            "dynamodb {}: {}",
                            cfg.table,
                            aws::describe(&e)
                        )))
                    }
                    class => {
                        // Nothing of this request was written: `pending` goes again as it is.
                        metrics::counter!("weir_dynamodb_retries_total", "reason" => if class == ErrorClass::Throttled { "throttled" } else { "transient" }).increment(1);
                        if attempt >= cfg.max_attempts {
                            return Err(SinkError::of_class(
                                class.retry_class(),
                                anyhow::anyhow!(
                                    "dynamodb {}: {} (after {attempt} attempts)",
                                    cfg.table,
                                    aws::describe(&e)
                                ),
                            ));
                        }
                    }
                },
            }
            if attempt >= cfg.max_attempts {
                return Err(SinkError::Retriable(anyhow::anyhow!(
                    "dynamodb {}: {} items still unprocessed after {attempt} attempts",
                    cfg.table,
                    pending.len()
                )));
            }
            tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
        }
    }
}

/// True if a stored item is a removal's tombstone (its `tombstone_attribute` is true): readers of
/// the table skip these.
pub fn is_tombstone(item: &HashMap<String, AttributeValue>, tombstone_attribute: &str) -> bool {
    matches!(
        item.get(tombstone_attribute),
        Some(AttributeValue::Bool(true))
    )
}

/// An item as a JSON object: the inverse of how records become items (numbers stay numbers
/// where JSON can hold them; binary and sets, which weir never writes, become strings/arrays).
pub fn item_to_json(item: &HashMap<String, AttributeValue>) -> serde_json::Value {
    fn value(v: &AttributeValue) -> serde_json::Value {
        use serde_json::Value;
        match v {
            AttributeValue::S(s) => Value::String(s.clone()),
            AttributeValue::N(n) => serde_json::from_str::<serde_json::Number>(n)
                .map_or_else(|_| Value::String(n.clone()), Value::Number),
            AttributeValue::Bool(b) => Value::Bool(*b),
            AttributeValue::Null(_) => Value::Null,
            AttributeValue::L(l) => Value::Array(l.iter().map(value).collect()),
            AttributeValue::M(m) => item_to_json(m),
            AttributeValue::Ss(s) => s.iter().map(|s| Value::String(s.clone())).collect(),
            AttributeValue::Ns(n) => n
                .iter()
                .map(|n| value(&AttributeValue::N(n.clone())))
                .collect(),
            AttributeValue::B(b) => Value::String(String::from_utf8_lossy(b.as_ref()).into_owned()),
            _ => Value::Null,
        }
    }
    serde_json::Value::Object(item.iter().map(|(k, v)| (k.clone(), value(v))).collect())
}

fn to_attr(v: &serde_json::Value) -> AttributeValue {
    use serde_json::Value;
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(to_attr).collect()),
        Value::Object(o) => {
            AttributeValue::M(o.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect())
        }
    }
}

/// DynamoDB's item size: attribute names plus values (numbers counted generously).
fn item_size(item: &HashMap<String, AttributeValue>) -> usize {
    fn value(v: &AttributeValue) -> usize {
        match v {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => n.len().div_ceil(2) + 1,
            AttributeValue::B(b) => b.as_ref().len(),
            AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
            AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value(v)).sum::<usize>(),
            AttributeValue::M(m) => {
                3 + m.iter().map(|(k, v)| 1 + k.len() + value(v)).sum::<usize>()
            }
            AttributeValue::Ss(s) => s.iter().map(String::len).sum(),
            AttributeValue::Ns(n) => n.iter().map(|n| n.len().div_ceil(2) + 1).sum(),
            AttributeValue::Bs(b) => b.iter().map(|b| b.as_ref().len()).sum(),
            _ => 0,
        }
    }
    item.iter().map(|(k, v)| k.len() + value(v)).sum()
}

/// Creates the table (on-demand billing) if it does not exist, waits until it is active and turns
/// on TTL if configured (where the endpoint supports it).
pub async fn create_table(client: &Client, cfg: &DynamoDbConfig) -> anyhow::Result<()> {
    let mut keys = vec![(cfg.partition_key.as_str(), KeyType::Hash)];
    if let Some(sk) = &cfg.sort_key {
        keys.push((sk.as_str(), KeyType::Range));
    }
    if aws::create_table(client, &cfg.table, &keys).await? {
        tracing::info!(table = %cfg.table, "created table");
    }
    if let Some(attr) = &cfg.ttl_attribute {
        let spec = TimeToLiveSpecification::builder()
            .attribute_name(attr)
            .enabled(true)
            .build()?;
        if let Err(e) = client
            .update_time_to_live()
            .table_name(&cfg.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            tracing::warn!(table = %cfg.table, error = %aws::describe(&e), "could not enable TTL");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> DynamoDbConfig {
        DynamoDbConfig {
            table: "t".into(),
            partition_key: "viewer_id".into(),
            sort_key: None,
            attributes: None,
            version_attribute: Some("version".into()),
            removal_field: Some("removed".into()),
            tombstone_attribute: "deleted".into(),
            ttl_attribute: Some("expires_at".into()),
            ttl: Some(config::Duration(Duration::from_secs(60))),
            region: None,
            endpoint_url: None,
            role_arn: None,
            create_table: false,
            concurrency: 1,
            max_attempts: 1,
            dashboard: None,
        }
    }

    #[test]
    fn an_item_reads_back_as_the_json_it_was_made_from() {
        let doc = serde_json::json!({
            "viewer_id": "v1", "n": 3, "x": 12.5, "ok": true, "none": null,
            "ad": {"id": "7", "skipped": [1, 2]}
        });
        let item: HashMap<String, AttributeValue> = doc
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), to_attr(v)))
            .collect();
        assert_eq!(item_to_json(&item), doc);
    }

    #[test]
    fn maps_json_to_an_item_and_rejects_what_cannot_be_one() {
        let sink = DynamoDbSink {
            cfg: cfg(),
            // Never used: no request is made.
            client: Client::from_conf(
                aws_sdk_dynamodb::Config::builder()
                    .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                    .build(),
            ),
            hub: None,
        };
        let op = sink
            .op(
                0,
                &Record::new(r#"{"viewer_id":"v1","version":"2","n":3,"ok":true,"ad":{"id":"7"}}"#),
                Some(100),
            )
            .unwrap();
        let OpKind::Put(item) = op.kind else {
            panic!("a put")
        };
        assert_eq!(item["viewer_id"], AttributeValue::S("v1".into()));
        assert_eq!(item["n"], AttributeValue::N("3".into()));
        assert_eq!(item["ok"], AttributeValue::Bool(true));
        assert_eq!(item["expires_at"], AttributeValue::N("100".into()));
        assert!(matches!(item["ad"], AttributeValue::M(_)));
        let del = sink
            .op(
                1,
                &Record::new(r#"{"viewer_id":"v1","version":"3","removed":true}"#),
                None,
            )
            .unwrap();
        assert!(matches!(del.kind, OpKind::Delete { .. }));
        let expiry = sink
            .op(
                2,
                &Record::new(r#"{"viewer_id":"v1","removed":true}"#),
                None,
            )
            .unwrap();
        assert!(
            matches!(expiry.kind, OpKind::Delete { .. }) && expiry.version.is_none(),
            "a removal needs no version"
        );
        for bad in [
            "not json",
            "[1]",
            r#"{"version":"1"}"#,
            r#"{"viewer_id":"","version":"1"}"#,
            r#"{"viewer_id":"v"}"#,
        ] {
            assert!(sink.op(0, &Record::new(bad), None).is_err(), "{bad}");
        }
        let huge = format!(
            r#"{{"viewer_id":"v","version":"1","blob":"{}"}}"#,
            "x".repeat(MAX_ITEM_BYTES)
        );
        assert!(sink
            .op(0, &Record::new(huge), None)
            .unwrap_err()
            .reason
            .contains("over"));
    }

    #[test]
    fn versions_compare_like_dynamodb() {
        let s = |v: &str| Some(AttributeValue::S(v.into()));
        let n = |v: &str| Some(AttributeValue::N(v.into()));
        assert!(newer(&s("2024-01-02"), &s("2024-01-01")));
        assert!(!newer(&s("a"), &s("a")));
        assert!(newer(&n("10"), &n("9")));
    }
}
