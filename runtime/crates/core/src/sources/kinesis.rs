//! `kinesis`: reads a Kinesis data stream, sharing its shards with other weir instances through
//! leases in one DynamoDB table.
//!
//! - **Shards and resharding.** The stream's shards are listed every `lease_duration / 3`. A shard
//!   is read once all its parents are finished (checkpointed at their end), so after a split or a
//!   merge the children start only when the parents are done, from their first record.
//! - **Start.** A shard with no checkpoint (and no parent) starts at `initial_position`:
//!   `trim_horizon` (the oldest record), `latest` (new records only) or `at_timestamp`
//!   (`timestamp`, RFC 3339).
//! - **Leases.** One item per shard in `lease_table` (key `lease_key` = `stream:shard`), with the
//!   owner, a counter the owner bumps at every renewal, the checkpoint and the parents. All changes
//!   are conditional writes. A lease whose counter has not moved for `lease_duration` is expired
//!   and taken over; each instance aims at its fair share (shards / live instances, rounded up) and
//!   takes one lease at a time from an instance holding more than that.
//! - **Checkpoints** advance only over records whose batches the pipeline acknowledged, in order
//!   per shard ([`OrderedAcks`]): a crash re-reads from the last checkpoint (at-least-once). On
//!   shutdown weir waits for its in-flight batches, writes final checkpoints and releases its
//!   leases, so another instance continues at once.
//!
//! Each Kinesis record becomes one weir record (its bytes as they are: an enriched TSV line from
//! `enriched-good`, or a raw collector payload) with the Kinesis partition key as the record key.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use aws_sdk_kinesis::types::ShardIteratorType;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Source, SourceConfig, SourceContext, SourceType};
use crate::ack::PositionAcks;
use crate::aws::{self, ErrorClass};
use crate::config::{self, ConfigError, Origin};
use crate::record::{Failed, FailureKind, Record};
use crate::setup::{self, BuildContext};

/// The checkpoint of a shard read to its end.
pub const SHARD_END: &str = "SHARD_END";

/// ```toml
/// [source]
/// type = "kinesis"
/// stream = "enriched-good"
/// initial_position = "trim_horizon"   # or "latest", or "at_timestamp" with `timestamp`
/// # timestamp = "2026-11-26T09:00:00Z"
/// lease_table = "weir-leases"         # shared by every instance reading the stream
/// lease_duration = "10s"              # a lease not renewed for this long is taken over
/// # worker_id = "host-1"              # default: host name + process id
/// poll_interval = "1s"                # wait after an empty read
/// read_interval = "200ms"             # wait after a read that returned records (per shard)
/// # max_shards = 4                    # at most this many shards at once (none: a fair share)
/// max_records_per_call = 10000
/// create_lease_table = true
/// # region = "eu-west-1"
/// # endpoint_url = "http://127.0.0.1:4566"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    pub stream: String,
    #[serde(default)]
    pub initial_position: InitialPosition,
    pub timestamp: Option<String>,
    #[serde(default = "default_lease_table")]
    pub lease_table: String,
    #[serde(default = "default_lease_duration")]
    pub lease_duration: config::Duration,
    pub worker_id: Option<String>,
    #[serde(default = "default_poll")]
    pub poll_interval: config::Duration,
    /// The wait after a GetRecords call that returned records, per shard (Kinesis allows five
    /// reads per shard and second, shared by every consumer of the stream).
    #[serde(default = "default_read_interval")]
    pub read_interval: config::Duration,
    /// The most shards this instance reads at once (Snowbridge's `max_concurrent_shards`); the
    /// rest are left to other instances. None: its fair share of the stream's shards.
    pub max_shards: Option<usize>,
    #[serde(default = "default_max_records")]
    pub max_records_per_call: i32,
    #[serde(default = "default_true")]
    pub create_lease_table: bool,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// An IAM role to assume (through STS) for this component's requests.
    pub role_arn: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialPosition {
    #[default]
    TrimHorizon,
    Latest,
    AtTimestamp,
}

fn default_lease_table() -> String {
    "weir-leases".into()
}
fn default_lease_duration() -> config::Duration {
    config::Duration(Duration::from_secs(10))
}
fn default_poll() -> config::Duration {
    config::Duration(Duration::from_secs(1))
}
fn default_read_interval() -> config::Duration {
    config::Duration(Duration::from_millis(200))
}
fn default_max_records() -> i32 {
    10_000
}
fn default_true() -> bool {
    true
}

impl SourceType for KinesisConfig {
    const TYPE: &'static str = "kinesis";
}

impl KinesisConfig {
    fn timestamp(&self) -> Option<aws_sdk_kinesis::primitives::DateTime> {
        let t = humantime::parse_rfc3339_weak(self.timestamp.as_deref()?).ok()?;
        Some(aws_sdk_kinesis::primitives::DateTime::from(t))
    }
}

#[async_trait]
impl SourceConfig for KinesisConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        aws::check_role_arn(origin, self.role_arn.as_deref())?;
        if self.stream.is_empty() {
            return Err(origin.error("stream", "expected a stream name, found an empty string"));
        }
        if self.lease_table.is_empty() {
            return Err(origin.error(
                "lease_table",
                "expected a table name, found an empty string",
            ));
        }
        match (self.initial_position, &self.timestamp) {
            (InitialPosition::AtTimestamp, None) => {
                return Err(origin.error(
                    "timestamp",
                    "initial_position = \"at_timestamp\" needs `timestamp` (RFC 3339)",
                ))
            }
            (InitialPosition::AtTimestamp, Some(t)) if self.timestamp().is_none() => {
                return Err(origin.error(
                    "timestamp",
                    format!("expected an RFC 3339 time such as 2026-11-26T09:00:00Z, found `{t}`"),
                ))
            }
            (p, Some(_)) if p != InitialPosition::AtTimestamp => {
                return Err(origin.error(
                    "timestamp",
                    "`timestamp` is only used with initial_position = \"at_timestamp\"",
                ))
            }
            _ => {}
        }
        if self.lease_duration.0 < Duration::from_millis(300) {
            return Err(origin.error("lease_duration", "expected at least 300ms"));
        }
        if self.max_shards == Some(0) {
            return Err(origin.error("max_shards", "expected at least 1 shard, found 0"));
        }
        if !(1..=10_000).contains(&self.max_records_per_call) {
            return Err(origin.error(
                "max_records_per_call",
                format!("expected 1 to 10000, found {}", self.max_records_per_call),
            ));
        }
        Ok(())
    }

    /// Creates the clients, checks that the stream exists and the credentials are accepted,
    /// and creates the lease table (`create_lease_table`) or checks that it exists.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let sdk = aws::sdk_config(
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            self.role_arn.as_deref(),
        )
        .await;
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let endpoint = self.endpoint_url.as_deref();
        setup::check(
            "Kinesis",
            aws::check_stream(&kinesis, &self.stream, endpoint),
        )
        .await?;
        let (table, create) = (&self.lease_table, self.create_lease_table);
        setup::check(
            "DynamoDB",
            aws::check_table(
                &ddb,
                "lease table",
                table,
                endpoint,
                ("create_lease_table", create),
            ),
        )
        .await?;
        if create {
            create_lease_table(&ddb, table).await?;
        }
        Ok(Box::new(KinesisSource {
            cfg: self.clone(),
            kinesis,
            ddb,
        }))
    }
}

struct KinesisSource {
    cfg: KinesisConfig,
    kinesis: aws_sdk_kinesis::Client,
    ddb: aws_sdk_dynamodb::Client,
}

/// The acknowledgements of one shard this instance reads: each batch's [`Ack`] carries the
/// sequence number of its last record, and the lease's checkpoint is the furthest one released.
struct ShardAcks {
    acks: Arc<PositionAcks<String>>,
    /// The reader reached the shard's end and every record of it was emitted.
    reached_end: AtomicBool,
}

impl ShardAcks {
    fn new(shard: &str) -> ShardAcks {
        ShardAcks {
            acks: PositionAcks::new(shard),
            reached_end: AtomicBool::new(false),
        }
    }
    /// Every emitted batch acknowledged and the end reached: the shard is done.
    fn finished(&self) -> bool {
        self.reached_end.load(Ordering::Acquire) && self.acks.in_flight() == 0
    }
    fn in_flight(&self) -> usize {
        self.acks.in_flight()
    }
    /// Highest sequence number up to which everything is acknowledged.
    fn committable(&self) -> Option<String> {
        self.acks.released()
    }
}

/// Records read from one shard, in order.
struct Chunk {
    shard: Arc<ShardAcks>,
    records: Vec<(Record, String)>,
    end: bool,
}

/// A shard as listed.
#[derive(Debug, Clone)]
struct ShardInfo {
    parents: Vec<String>,
    ending: Option<String>,
}

/// A lease as last read from the table, and when its counter last changed (by our clock).
#[derive(Debug, Clone)]
struct Lease {
    key: String,
    shard: String,
    owner: String,
    counter: i64,
    checkpoint: String,
    parents: Vec<String>,
}

/// A lease this instance holds.
struct Held {
    counter: i64,
    acks: Arc<ShardAcks>,
    stop: CancellationToken,
    written_checkpoint: String,
}

struct Coordinator {
    cfg: KinesisConfig,
    me: String,
    kinesis: aws_sdk_kinesis::Client,
    ddb: aws_sdk_dynamodb::Client,
    held: HashMap<String, Held>,
    seen: HashMap<String, (i64, Instant)>,
    shards: HashMap<String, ShardInfo>,
    chunks: mpsc::Sender<Chunk>,
}

#[async_trait]
impl Source for KinesisSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let KinesisSource { cfg, kinesis, ddb } = *self;
        let me = cfg.worker_id.clone().unwrap_or_else(default_worker_id);
        tracing::info!(stream = %cfg.stream, worker = %me, lease_table = %cfg.lease_table, "kinesis source starting");

        let (chunks_tx, mut chunks_rx) = mpsc::channel::<Chunk>(4);
        let mut coord = Coordinator {
            cfg: cfg.clone(),
            me,
            kinesis,
            ddb,
            held: HashMap::new(),
            seen: HashMap::new(),
            shards: HashMap::new(),
            chunks: chunks_tx,
        };
        let tick = (cfg.lease_duration.0 / 3).max(Duration::from_millis(100));
        let mut next_tick = tokio::time::Instant::now();
        let max = ctx.max_record_bytes;
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(next_tick) => {
                    if let Err(e) = coord.tick().await {
                        tracing::warn!(error = %format!("{e:#}"), "lease coordination failed; retrying");
                    }
                    next_tick = tokio::time::Instant::now() + tick;
                }
                Some(chunk) = chunks_rx.recv() => {
                    let Chunk { shard, records, end } = chunk;
                    let mut last = String::new();
                    for (record, seq) in records {
                        last = seq;
                        let full = if record.value.len() > max {
                            let actual = record.value.len();
                            ctx.emitter.push_failed(Failed {
                                record,
                                kind: FailureKind::Oversized { actual, limit: max },
                                component: "source (kinesis)".into(),
                                reason: format!("record of {actual} bytes is longer than limits.max_record_bytes"),
                            })
                        } else {
                            ctx.emitter.push(record)
                        };
                        if full {
                            ctx.emitter.flush_with(shard.acks.ack_for(last.clone())).await?;
                        }
                    }
                    if ctx.emitter.buffered() > 0 {
                        ctx.emitter.flush_with(shard.acks.ack_for(last.clone())).await?;
                    }
                    if end {
                        shard.reached_end.store(true, Ordering::Release);
                    }
                }
            }
        }

        // Stop reading, let the pipeline acknowledge what was emitted, then checkpoint and release.
        for h in coord.held.values() {
            h.stop.cancel();
        }
        drop(chunks_rx);
        let deadline = Instant::now() + Duration::from_secs(30);
        while coord.held.values().any(|h| h.acks.in_flight() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        coord.release_all().await;
        Ok(())
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir".into());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Kinesis sequence numbers are decimal strings of up to 128 bits: compare by length, then text.
fn seq_ge(a: &str, b: &str) -> bool {
    (a.len(), a) >= (b.len(), b)
}

impl Coordinator {
    fn lease_key(&self, shard: &str) -> String {
        format!("{}:{shard}", self.cfg.stream)
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        self.list_shards().await?;
        let mut leases = self.scan_leases().await?;
        // A lease for every shard we do not know yet.
        let known: HashSet<String> = leases.iter().map(|l| l.shard.clone()).collect();
        for (id, info) in &self.shards {
            if known.contains(id) {
                continue;
            }
            let key = self.lease_key(id);
            let r = self
                .ddb
                .put_item()
                .table_name(&self.cfg.lease_table)
                .item("lease_key", s(&key))
                .item("stream", s(&self.cfg.stream))
                .item("shard_id", s(id))
                .item("owner", s(""))
                .item("counter", n(0))
                .item("checkpoint", s(""))
                .item(
                    "parents",
                    AttributeValue::L(info.parents.iter().map(|p| s(p.clone())).collect()),
                )
                .condition_expression("attribute_not_exists(lease_key)")
                .send()
                .await;
            match r {
                Ok(_) => leases.push(Lease {
                    key,
                    shard: id.clone(),
                    owner: String::new(),
                    counter: 0,
                    checkpoint: String::new(),
                    parents: info.parents.clone(),
                }),
                Err(e) if aws::classify(&e) == ErrorClass::ConditionFailed => {}
                Err(e) => anyhow::bail!("creating lease for {id}: {}", aws::describe(&e)),
            }
        }

        // Renew what we hold (with the newest checkpoint); finish shards read to their end.
        let held: Vec<String> = self.held.keys().cloned().collect();
        for shard in held {
            let (finished, cp) = {
                let h = &self.held[&shard];
                let committable = h.acks.committable();
                (h.acks.finished(), committable)
            };
            let checkpoint = if finished {
                Some(SHARD_END.to_string())
            } else {
                cp.filter(|c| *c != self.held[&shard].written_checkpoint)
            };
            let ok = self.renew(&shard, checkpoint.as_deref(), finished).await?;
            if !ok || finished {
                if let Some(h) = self.held.remove(&shard) {
                    h.stop.cancel();
                }
                if finished {
                    tracing::info!(shard = %shard, "shard finished");
                } else {
                    tracing::info!(shard = %shard, "lease lost to another instance");
                }
            }
        }

        // Which shards may be read, who is alive, and our fair share.
        let now = Instant::now();
        let done: HashSet<&str> = leases
            .iter()
            .filter(|l| l.checkpoint == SHARD_END)
            .map(|l| l.shard.as_str())
            .collect();
        let listed: HashSet<&str> = leases.iter().map(|l| l.shard.as_str()).collect();
        let mut expired = HashSet::new();
        for l in &leases {
            let e = self.seen.entry(l.key.clone()).or_insert((l.counter, now));
            if e.0 != l.counter {
                *e = (l.counter, now);
            }
            if l.owner.is_empty()
                || (l.owner != self.me && now.duration_since(e.1) > self.cfg.lease_duration.0)
            {
                expired.insert(l.key.clone());
            }
        }
        let eligible: Vec<&Lease> = leases
            .iter()
            .filter(|l| l.checkpoint != SHARD_END)
            .filter(|l| {
                l.parents
                    .iter()
                    .all(|p| done.contains(p.as_str()) || !listed.contains(p.as_str()))
            })
            .collect();
        let mut load: HashMap<String, usize> = HashMap::new();
        load.insert(self.me.clone(), self.held.len());
        for l in &eligible {
            if !expired.contains(&l.key) && l.owner != self.me {
                *load.entry(l.owner.clone()).or_default() += 1;
            }
        }
        let target = eligible
            .len()
            .div_ceil(load.len())
            .min(self.cfg.max_shards.unwrap_or(usize::MAX));
        let mine = self.held.len();
        if mine >= target {
            return Ok(());
        }
        let free: Vec<Lease> = eligible
            .iter()
            .filter(|l| expired.contains(&l.key) && !self.held.contains_key(&l.shard))
            .map(|l| (*l).clone())
            .collect();
        let mut wanted = target - mine;
        for l in free {
            if wanted == 0 {
                break;
            }
            if self.take(&l).await? {
                wanted -= 1;
            }
        }
        if wanted > 0 {
            // Steal one lease from the busiest instance above its share.
            let busiest = load
                .iter()
                .filter(|(o, c)| **o != self.me && **c > target)
                .max_by_key(|(_, c)| **c)
                .map(|(o, _)| o.to_string());
            if let Some(victim) = busiest {
                if let Some(l) = eligible
                    .iter()
                    .find(|l| l.owner == victim && !expired.contains(&l.key))
                    .map(|l| (*l).clone())
                {
                    tracing::info!(shard = %l.shard, from = %victim, "taking a lease to balance load");
                    self.take(&l).await?;
                }
            }
        }
        Ok(())
    }

    async fn list_shards(&mut self) -> anyhow::Result<()> {
        let mut next: Option<String> = None;
        let mut shards = HashMap::new();
        loop {
            let mut req = self.kinesis.list_shards();
            req = match &next {
                Some(t) => req.next_token(t),
                None => req.stream_name(&self.cfg.stream),
            };
            let out = req.send().await.map_err(|e| {
                anyhow::anyhow!("ListShards {}: {}", self.cfg.stream, aws::describe(&e))
            })?;
            for sh in out.shards() {
                let parents = sh
                    .parent_shard_id()
                    .into_iter()
                    .chain(sh.adjacent_parent_shard_id())
                    .map(str::to_string)
                    .collect();
                let ending = sh
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .map(str::to_string);
                shards.insert(sh.shard_id().to_string(), ShardInfo { parents, ending });
            }
            match out.next_token() {
                Some(t) if !t.is_empty() && !out.shards().is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        self.shards = shards;
        Ok(())
    }

    async fn scan_leases(&self) -> anyhow::Result<Vec<Lease>> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let page = self
                .ddb
                .scan()
                .table_name(&self.cfg.lease_table)
                .consistent_read(true)
                .filter_expression("#stream = :stream")
                .expression_attribute_names("#stream", "stream")
                .expression_attribute_values(":stream", s(&self.cfg.stream))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    anyhow::anyhow!("scanning {}: {}", self.cfg.lease_table, aws::describe(&e))
                })?;
            for item in page.items() {
                let get_s = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(v)) => v.clone(),
                    _ => String::new(),
                };
                let counter = match item.get("counter") {
                    Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
                    _ => 0,
                };
                let parents = match item.get("parents") {
                    Some(AttributeValue::L(l)) => {
                        l.iter().filter_map(|v| v.as_s().ok().cloned()).collect()
                    }
                    _ => Vec::new(),
                };
                out.push(Lease {
                    key: get_s("lease_key"),
                    shard: get_s("shard_id"),
                    owner: get_s("owner"),
                    counter,
                    checkpoint: get_s("checkpoint"),
                    parents,
                });
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Bumps the counter of a held lease (and writes a checkpoint, and releases it if `release`).
    /// False if the lease is no longer ours.
    async fn renew(
        &mut self,
        shard: &str,
        checkpoint: Option<&str>,
        release: bool,
    ) -> anyhow::Result<bool> {
        let key = self.lease_key(shard);
        let Some(h) = self.held.get_mut(shard) else {
            return Ok(false);
        };
        let mut update = "SET #counter = #counter + :one".to_string();
        let mut req = self
            .ddb
            .update_item()
            .table_name(&self.cfg.lease_table)
            .key("lease_key", s(&key))
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(&self.me))
            .expression_attribute_values(":one", n(1));
        if let Some(cp) = checkpoint {
            update.push_str(", checkpoint = :cp");
            req = req.expression_attribute_values(":cp", s(cp));
        }
        if release {
            update.push_str(", #owner = :free");
            req = req.expression_attribute_values(":free", s(""));
        }
        match req.update_expression(update).send().await {
            Ok(_) => {
                h.counter += 1;
                if let Some(cp) = checkpoint {
                    h.written_checkpoint = cp.to_string();
                    tracing::debug!(shard, checkpoint = cp, "checkpoint");
                }
                Ok(true)
            }
            Err(e) if aws::classify(&e) == ErrorClass::ConditionFailed => Ok(false),
            Err(e) => anyhow::bail!("renewing lease {key}: {}", aws::describe(&e)),
        }
    }

    /// Takes a lease seen with `l.counter`; false if someone else changed it first.
    async fn take(&mut self, l: &Lease) -> anyhow::Result<bool> {
        let r = self
            .ddb
            .update_item()
            .table_name(&self.cfg.lease_table)
            .key("lease_key", s(&l.key))
            .update_expression("SET #owner = :me, #counter = #counter + :one")
            .condition_expression("#counter = :seen")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(&self.me))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(l.counter))
            .send()
            .await;
        match r {
            Ok(_) => {}
            Err(e) if aws::classify(&e) == ErrorClass::ConditionFailed => return Ok(false),
            Err(e) => anyhow::bail!("taking lease {}: {}", l.key, aws::describe(&e)),
        }
        tracing::info!(shard = %l.shard, previous_owner = %l.owner, checkpoint = %l.checkpoint, "lease taken");
        let acks = Arc::new(ShardAcks::new(&l.shard));
        let stop = CancellationToken::new();
        // A child shard (its parents read) starts from its first record whatever the
        // initial position: nothing written to it after the split may be skipped.
        let start = if !l.checkpoint.is_empty() {
            Start::After(l.checkpoint.clone())
        } else if !l.parents.is_empty() {
            Start::TrimHorizon
        } else {
            match self.cfg.initial_position {
                InitialPosition::TrimHorizon => Start::TrimHorizon,
                InitialPosition::Latest => Start::Latest,
                InitialPosition::AtTimestamp => Start::AtTimestamp,
            }
        };
        let reader = Reader {
            cfg: self.cfg.clone(),
            client: self.kinesis.clone(),
            shard: l.shard.clone(),
            acks: acks.clone(),
            stop: stop.clone(),
            chunks: self.chunks.clone(),
            ending: self.shards.get(&l.shard).and_then(|s| s.ending.clone()),
        };
        tokio::spawn(reader.run(start));
        self.held.insert(
            l.shard.clone(),
            Held {
                counter: l.counter + 1,
                acks,
                stop,
                written_checkpoint: l.checkpoint.clone(),
            },
        );
        Ok(true)
    }

    /// On shutdown: final checkpoints, and every lease released for the others.
    async fn release_all(&mut self) {
        let held: Vec<String> = self.held.keys().cloned().collect();
        for shard in held {
            let (finished, cp) = {
                let h = &self.held[&shard];
                let committable = h.acks.committable();
                (h.acks.finished(), committable)
            };
            let cp = if finished {
                Some(SHARD_END.to_string())
            } else {
                cp
            };
            match self.renew(&shard, cp.as_deref(), true).await {
                Ok(true) => tracing::info!(shard = %shard, checkpoint = ?cp, "lease released"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %format!("{e:#}"), "could not release lease")
                }
            }
        }
        self.held.clear();
    }
}

enum Start {
    After(String),
    TrimHorizon,
    Latest,
    AtTimestamp,
}

struct Reader {
    cfg: KinesisConfig,
    client: aws_sdk_kinesis::Client,
    shard: String,
    acks: Arc<ShardAcks>,
    stop: CancellationToken,
    chunks: mpsc::Sender<Chunk>,
    /// The shard's last sequence number once it is closed (as listed when the lease was taken;
    /// refreshed from ListShards while reading).
    ending: Option<String>,
}

impl Reader {
    async fn iterator(&self, start: &Start) -> anyhow::Result<String> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.cfg.stream)
            .shard_id(&self.shard);
        req = match start {
            Start::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
            Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Start::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            Start::AtTimestamp => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .set_timestamp(self.cfg.timestamp()),
        };
        let out = req.send().await.map_err(|e| {
            anyhow::anyhow!("GetShardIterator {}: {}", self.shard, aws::describe(&e))
        })?;
        out.shard_iterator
            .ok_or_else(|| anyhow::anyhow!("GetShardIterator {}: no iterator", self.shard))
    }

    async fn run(mut self, start: Start) {
        let mut last: Option<String> = match &start {
            Start::After(s) => Some(s.clone()),
            _ => None,
        };
        let mut start = start;
        let mut attempt = 0;
        let mut iterator: Option<String> = None;
        while !self.stop.is_cancelled() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(&start).await {
                    Ok(it) => it,
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(shard = %self.shard, error = %format!("{e:#}"), "retrying");
                        self.pause(crate::retry::REQUEST.delay(attempt)).await;
                        continue;
                    }
                },
            };
            let out = match self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(self.cfg.max_records_per_call)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    attempt += 1;
                    let class = aws::classify(&e);
                    let msg = aws::describe(&e);
                    if msg.starts_with("ExpiredIteratorException") || class == ErrorClass::Invalid {
                        // Get a fresh iterator after the last record read.
                        iterator = None;
                    } else {
                        iterator = Some(it);
                    }
                    tracing::debug!(shard = %self.shard, error = %msg, "GetRecords failed; retrying");
                    self.pause(crate::retry::REQUEST.delay(attempt)).await;
                    continue;
                }
            };
            attempt = 0;
            let records: Vec<(Record, String)> = out
                .records()
                .iter()
                .map(|r| {
                    (
                        Record {
                            value: bytes::Bytes::copy_from_slice(r.data().as_ref()),
                            key: Some(bytes::Bytes::copy_from_slice(
                                r.partition_key().unwrap_or_default().as_bytes(),
                            )),
                            meta: None,
                        },
                        r.sequence_number().to_string(),
                    )
                })
                .collect();
            let empty = records.is_empty();
            if let Some((_, seq)) = records.last() {
                last = Some(seq.clone());
                start = Start::After(seq.clone());
            }
            // The end: no next iterator (Kinesis), or a closed shard read up to its last record
            // (emulators that keep handing out iterators).
            if empty && out.next_shard_iterator.is_some() && self.ending.is_none() {
                self.refresh_ending().await;
            }
            let end = out.next_shard_iterator.is_none()
                || (empty
                    && self
                        .ending
                        .as_deref()
                        .is_some_and(|e| seq_ge(last.as_deref().unwrap_or("0"), e)));
            if !empty || end {
                let chunk = Chunk {
                    shard: self.acks.clone(),
                    records,
                    end,
                };
                tokio::select! {
                    r = self.chunks.send(chunk) => if r.is_err() { return },
                    _ = self.stop.cancelled() => return,
                }
            }
            if end {
                tracing::info!(shard = %self.shard, "reached the end of the shard");
                return;
            }
            iterator = out.next_shard_iterator;
            let wait = if empty {
                self.cfg.poll_interval.0
            } else {
                self.cfg.read_interval.0
            };
            self.pause(wait).await;
        }
    }

    async fn refresh_ending(&mut self) {
        if let Ok(out) = self
            .client
            .list_shards()
            .stream_name(&self.cfg.stream)
            .send()
            .await
        {
            self.ending = out
                .shards()
                .iter()
                .find(|s| s.shard_id() == self.shard)
                .and_then(|s| s.sequence_number_range())
                .and_then(|r| r.ending_sequence_number())
                .map(str::to_string);
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.cancelled() => {}
        }
    }
}

/// Creates the lease table if missing (on-demand billing) and waits until it is active.
pub async fn create_lease_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<()> {
    if aws::create_table(client, table, &[("lease_key", KeyType::Hash)])
        .await
        .context("creating the lease table")?
    {
        tracing::info!(table, "created lease table");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_compare_as_numbers() {
        assert!(seq_ge("10", "9"));
        assert!(seq_ge(
            "49590338271490256608559692538361571095921575989136588898",
            "4959"
        ));
        assert!(seq_ge("5", "5"));
        assert!(!seq_ge("0", "1"));
    }
}
