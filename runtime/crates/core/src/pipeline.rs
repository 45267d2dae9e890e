//! The pipeline: one source → an ordered chain of transforms → the main sink, plus the `filtered`
//! and `failure` sinks, connected by bounded queues.
//!
//! ```text
//! source ─▶ [queue] ─▶ transform workers (ordered) ─▶ router ─┬▶ [queue] ─▶ sink
//!                                                             ├▶ [queue] ─▶ filtered sink
//!                                                             └▶ [queue] ─▶ failure sink (bad rows)
//! ```
//!
//! Every queue holds at most `batch.queue` batches, so a slow sink slows the source down instead of
//! growing memory. Each batch's [`Ack`](crate::ack::Ack) is shared by the parts the router sends to
//! the three sinks and fires once all of them have durably accepted their part.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ack::{Ack, AckCounter};
use crate::badrow::BadRows;
use crate::config::{self, unknown_key_message, ByteSize, ConfigError, Origin};
use crate::observe::{self, HttpConfig, Readiness, Snapshot, Stats};
use crate::record::{Batch, Failed, Record};
use crate::setup::{BuildContext, SetupError};
use crate::sinks::{self, Progress, Sink, SinkConfig, SinkError};
use crate::sources::{self, BatchLimits, Emitter, SourceConfig, SourceContext};
use crate::transforms::{self, Transform, TransformConfig};

/// `[batch]`: how records are grouped and how many groups may wait in each queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Most records in one batch.
    pub max_records: usize,
    /// Most bytes in one batch (e.g. `"1 MiB"`).
    pub max_bytes: ByteSize,
    /// A batch that is not full is sent after this long (e.g. `"200ms"`).
    pub flush_interval: config::Duration,
    /// Batches each queue holds before the stage feeding it waits.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 1000,
            max_bytes: ByteSize(1 << 20),
            flush_interval: config::Duration(Duration::from_millis(200)),
            queue: 4,
        }
    }
}

/// `[limits]`: sizes beyond which a record is a failure rather than an event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Longest record a source accepts; longer ones become `size_violation` bad rows.
    pub max_record_bytes: ByteSize,
    /// Longest payload kept in a bad row.
    pub bad_row_max_payload_bytes: ByteSize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_record_bytes: ByteSize(1 << 20),
            bad_row_max_payload_bytes: ByteSize(64 << 10),
        }
    }
}

/// `[metrics]`: what weir measures beyond its standard metrics.
///
/// ```toml
/// [metrics]
/// e2e_latency = true   # each Snowplow event's collector_tstamp → acknowledged by every sink
///
/// [metrics.statsd]     # also push counts and latencies to a statsd server
/// address = "127.0.0.1:8125"
/// prefix = "weir"
/// flush_interval = "10s"
/// tags = { env = "prod" }
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `weir_e2e_latency_seconds`: for each record that is an enriched event (a TSV line with a
    /// `collector_tstamp`), the time from that timestamp to its batch being acknowledged. Reads
    /// one field of every record, so it is off by default (Snowbridge's
    /// `metrics { enable_e2e_latency = true }`).
    pub e2e_latency: bool,
    /// `[metrics.statsd]`: Snowbridge's statsd stats receiver.
    pub statsd: Option<crate::observe::StatsdConfig>,
}

/// How long the source may be quiet before the transforms get an empty batch (a tick).
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// A named, validated transform of the chain.
#[derive(Debug)]
pub struct TransformSpec {
    pub label: String,
    pub origin: Origin,
    pub config: Box<dyn TransformConfig>,
}

/// A whole validated pipeline config.
#[derive(Debug)]
pub struct PipelineConfig {
    pub file: String,
    pub source: Box<dyn SourceConfig>,
    pub transforms: Vec<TransformSpec>,
    pub sink: Box<dyn SinkConfig>,
    pub filtered: Option<Box<dyn SinkConfig>>,
    pub failure: Box<dyn SinkConfig>,
    pub batch: BatchConfig,
    pub limits: LimitsConfig,
    /// `[bad_rows]`: how failed records are written.
    pub bad_rows: crate::badrow::BadRowsConfig,
    pub http: Option<HttpConfig>,
    pub metrics: MetricsConfig,
    /// `[monitoring]`: heartbeats and alerts to a webhook (Snowbridge's `monitoring` block).
    pub monitoring: crate::monitoring::MonitoringConfig,
    /// `[retry]`: how failed sink writes are retried, per kind of failure.
    pub retry: crate::retry::RetryConfig,
    /// Transform worker threads (each with its own instance of the chain); output order is kept.
    pub workers: usize,
    /// `[state]`: transform state on disk, checkpointed by the source (none: in memory).
    pub state: Option<Arc<crate::state::DiskState>>,
    /// The log level a Snowbridge config's `log_level` asks for (weir's own configs leave the
    /// log level to `WEIR_LOG`).
    pub log_level: Option<String>,
    /// With a sink of `delivery = "exactly-once"`: the `transactional.id` of the pipeline's
    /// Kafka transactions (see [`crate::kafka::txn`]), from the Kafka source's group.
    pub transactional_id: Option<String>,
}

/// The sections of a weir config.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "source",
    "transforms",
    "sink",
    "filtered",
    "failure",
    "batch",
    "limits",
    "bad_rows",
    "http",
    "metrics",
    "monitoring",
    "workers",
    "state",
    "retry",
];

impl PipelineConfig {
    /// Reads, overrides from the environment and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if crate::snowbridge::is_hcl(path) {
            let t = Self::translate_hcl(path)?;
            for n in &t.notes {
                if n.warn {
                    tracing::warn!("{}: `{}`: {}", t.file, n.path, n.message);
                } else {
                    tracing::debug!("{}: `{}`: {}", t.file, n.path, n.message);
                }
            }
            let mut cfg = Self::from_value(&t.file, t.root()).map_err(|e| t.map_error(e))?;
            cfg.log_level = t.log_level.clone();
            return Ok(cfg);
        }
        let loaded = config::load(path, std::env::vars())?;
        Self::from_value(&loaded.file, loaded.root)
    }

    /// Reads a Snowbridge HCL config and translates it into weir's config tree (see
    /// [`crate::snowbridge`]), with the process environment for `env(…)`.
    pub fn translate_hcl(path: &Path) -> Result<crate::snowbridge::Translated, ConfigError> {
        crate::snowbridge::load(path, std::env::vars(), TOP_LEVEL_KEYS)
    }

    /// Validates an already-read config tree.
    pub fn from_value(file: &str, root: ::config::Value) -> Result<Self, ConfigError> {
        let top = Origin::new(file, "");
        let mut table = match root.kind {
            ::config::ValueKind::Table(t) => t,
            other => {
                return Err(top.error(
                    "",
                    format!(
                        "expected a table at the top level, found {}",
                        config::kind_name(&other)
                    ),
                ))
            }
        };
        let mut keys: Vec<&String> = table.keys().collect();
        keys.sort();
        if let Some(k) = keys.iter().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            return Err(top.error(k, unknown_key_message(k, TOP_LEVEL_KEYS)));
        }
        let mut section = |key: &str| table.remove(key);
        let required = |v: Option<::config::Value>, key: &str, what: &str| {
            v.ok_or_else(|| top.error(key, format!("missing required section `{key}` ({what})")))
        };

        let source = {
            let o = top.child("source");
            let v = required(section("source"), "source", "where records come from")?;
            registry_parse(sources::REGISTRY, "source", v, &o)?
        };
        let state_origin = top.child("state");
        let state = match section("state") {
            Some(v) => state_origin
                .deserialize::<crate::state::StateConfig>(v)?
                .check(&state_origin)?,
            None => None,
        };
        if state.is_some() && !source.checkpoints_state() {
            return Err(top.error(
                "state.backend",
                "expected a source that checkpoints state with its positions (`kafka` with \
                 commit = \"acknowledged\") for backend = \"disk\"; this source cannot, so \
                 its state would never be made durable",
            ));
        }
        if let Some(s) = state.as_ref().filter(|s| s.changelog_topic().is_some()) {
            let n = source.input_streams();
            if n > 1 {
                return Err(top.error(
                    "state.changelog_topic",
                    format!(
                        "expected a source with one topic with a changelog (partition p of the \
                         changelog belongs to partition p of the input), found {n} topics: run \
                         one pipeline per topic, each with its own changelog ({:?} here)",
                        s.changelog_topic().unwrap_or_default()
                    ),
                ));
            }
        }
        let mut transforms = Vec::new();
        if let Some(v) = section("transforms") {
            let items = match v.kind {
                ::config::ValueKind::Array(a) => a,
                other => {
                    return Err(top.error(
                        "transforms",
                        format!(
                            "expected an array of transforms ([[transforms]] in TOML), found {}",
                            config::kind_name(&other)
                        ),
                    ))
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let o = top.child(&format!("transforms[{i}]"));
                let (name, mut config) =
                    crate::registry::parse(transforms::REGISTRY, "transform", item, &o)?;
                if let Some(s) = &state {
                    config.set_state(s.clone());
                }
                transforms.push(TransformSpec {
                    label: format!("transforms[{i}] ({name})"),
                    origin: o,
                    config,
                });
            }
        }
        let sink = {
            let o = top.child("sink");
            let v = required(section("sink"), "sink", "where records go")?;
            registry_parse(sinks::REGISTRY, "sink", v, &o)?
        };
        let filtered = section("filtered")
            .map(|v| registry_parse(sinks::REGISTRY, "sink", v, &top.child("filtered")))
            .transpose()?;
        let failure = match section("failure") {
            Some(v) => registry_parse(sinks::REGISTRY, "sink", v, &top.child("failure"))?,
            None => Box::new(sinks::stdout::StderrConfig {}),
        };
        let batch: BatchConfig = section("batch")
            .map(|v| top.child("batch").deserialize(v))
            .transpose()?
            .unwrap_or_default();
        let limits: LimitsConfig = section("limits")
            .map(|v| top.child("limits").deserialize(v))
            .transpose()?
            .unwrap_or_default();
        let bad_rows: crate::badrow::BadRowsConfig = section("bad_rows")
            .map(|v| top.child("bad_rows").deserialize(v))
            .transpose()?
            .unwrap_or_default();
        let http: Option<HttpConfig> = section("http")
            .map(|v| top.child("http").deserialize(v))
            .transpose()?;
        let metrics: MetricsConfig = section("metrics")
            .map(|v| top.child("metrics").deserialize(v))
            .transpose()?
            .unwrap_or_default();
        if let Some(s) = &metrics.statsd {
            s.check(&top.child("metrics").child("statsd"))?;
        }
        let monitoring: crate::monitoring::MonitoringConfig = section("monitoring")
            .map(|v| top.child("monitoring").deserialize(v))
            .transpose()?
            .unwrap_or_default();
        monitoring.check(&top.child("monitoring"))?;
        let retry = crate::retry::RetryConfig::from_value(section("retry"), &top.child("retry"))?;
        if let Some(h) = &http {
            h.check(&top.child("http"))?;
        }
        let workers: usize = section("workers")
            .map(|v| top.child("workers").deserialize(v))
            .transpose()?
            .unwrap_or(1);
        for (key, ok, what) in [
            ("batch.max_records", batch.max_records > 0, "at least 1"),
            ("batch.max_bytes", batch.max_bytes.0 > 0, "at least 1 byte"),
            ("batch.queue", batch.queue > 0, "at least 1"),
            ("workers", workers > 0, "at least 1"),
            (
                "limits.max_record_bytes",
                limits.max_record_bytes.0 > 0,
                "at least 1 byte",
            ),
        ] {
            if !ok {
                return Err(top.error(key, format!("expected {what}, found 0")));
            }
        }
        let exactly_once = [
            ("sink", Some(&sink)),
            ("failure", Some(&failure)),
            ("filtered", filtered.as_ref()),
        ]
        .into_iter()
        .find_map(|(key, s)| s.filter(|s| s.exactly_once()).map(|_| key));
        let transactional_id = match exactly_once {
            None => None,
            Some(key) => {
                let Some(id) = source.transactional_id() else {
                    return Err(top.error(
                        &format!("{key}.delivery"),
                        "expected a `kafka` source with commit = \"acknowledged\" for \
                         delivery = \"exactly-once\" (the transaction commits the input \
                         offsets with the output), found a source without offsets to commit",
                    ));
                };
                if state
                    .as_ref()
                    .is_some_and(|s| s.changelog_topic().is_none())
                {
                    return Err(top.error(
                        "state.changelog_topic",
                        format!(
                            "expected a changelog topic for durable state with {key}.delivery = \
                             \"exactly-once\" (state changes are committed in the Kafka \
                             transaction through their changelog, with the output and the \
                             offsets; a state file alone would fall behind the committed \
                             offsets after a crash), found none"
                        ),
                    ));
                }
                Some(id)
            }
        };
        Ok(PipelineConfig {
            transactional_id,
            bad_rows,
            file: file.to_string(),
            source,
            transforms,
            sink,
            filtered,
            failure,
            batch,
            limits,
            http,
            metrics,
            monitoring,
            retry,
            workers,
            state,
            log_level: None,
        })
    }

    /// Builds one instance of the transform chain.
    pub fn build_chain(&self) -> Result<Chain, ConfigError> {
        let mut stages = Vec::with_capacity(self.transforms.len());
        for t in &self.transforms {
            stages.push(Stage {
                transform: t.config.build(&t.label, &t.origin)?,
                kept: metrics::counter!("weir_transform_records_total", "transform" => t.label.clone(), "outcome" => "kept"),
                filtered: metrics::counter!("weir_transform_records_total", "transform" => t.label.clone(), "outcome" => "filtered"),
                failed: metrics::counter!("weir_transform_records_total", "transform" => t.label.clone(), "outcome" => "failed"),
                seconds: metrics::histogram!("weir_transform_batch_seconds", "transform" => t.label.clone()),
            });
        }
        Ok(Chain {
            stages,
            keep_originals: self.bad_rows.format == crate::badrow::Format::EventForwarding,
        })
    }
}

fn registry_parse<B: ?Sized>(
    registry: &[crate::registry::Registration<B>],
    role: &str,
    v: ::config::Value,
    o: &Origin,
) -> Result<Box<B>, ConfigError> {
    crate::registry::parse(registry, role, v, o).map(|(_, b)| b)
}

/// One instance of the transform chain, owned by one worker.
pub struct Chain {
    stages: Vec<Stage>,
    /// Each record keeps what the source read (`Meta::original`) for `event_forwarding` bad
    /// rows: a reference to the same bytes, set before the first transform.
    keep_originals: bool,
}

struct Stage {
    transform: Box<dyn Transform>,
    kept: metrics::Counter,
    filtered: metrics::Counter,
    failed: metrics::Counter,
    seconds: metrics::Histogram,
}

impl Chain {
    /// Runs every transform over the batch in order. An empty batch (an idle tick) still visits
    /// every transform, so that transforms with time-driven output (windows, expiry) can emit
    /// records while no input arrives.
    pub fn process(&mut self, batch: &mut Batch) {
        if self.keep_originals && !self.stages.is_empty() {
            for r in &mut batch.records {
                let meta = r.meta.get_or_insert_with(Default::default);
                if meta.original.is_none() {
                    meta.original = Some(r.value.clone());
                }
            }
        }
        for s in &mut self.stages {
            let (f0, x0) = (batch.filtered.len(), batch.failed.len());
            let t = Instant::now();
            s.transform.process(batch);
            s.seconds.record(t.elapsed().as_secs_f64());
            s.kept.increment(batch.records.len() as u64);
            s.filtered.increment((batch.filtered.len() - f0) as u64);
            s.failed.increment((batch.failed.len() - x0) as u64);
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub stats: Snapshot,
    /// True if the run ended because of a shutdown signal rather than the end of the input.
    pub interrupted: bool,
}

/// A part of a batch on its way to one sink.
struct SinkBatch {
    records: Vec<Record>,
    ack: Ack,
}

/// Options of a run that do not belong in the config file.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub progress: bool,
    /// Called with the HTTP endpoint's bound address once it listens.
    pub on_http_bound: Option<Arc<dyn Fn(std::net::SocketAddr) + Send + Sync>>,
    /// Called with a listening source's bound address (the `collector` source) once it listens.
    pub on_source_bound: Option<Arc<dyn Fn(std::net::SocketAddr) + Send + Sync>>,
}

/// Runs the pipeline until its source ends or `shutdown` fires, then drains: every record the
/// source read is written (or failed) before this returns.
pub async fn run(
    cfg: &PipelineConfig,
    shutdown: CancellationToken,
    opts: RunOptions,
) -> anyhow::Result<Summary> {
    observe::prometheus();
    let stats = Arc::new(Stats::default());
    let ready = Arc::new(Readiness::default());
    let http_stop = CancellationToken::new();
    if let Some(http) = &cfg.http {
        let bound =
            observe::serve_http(http, ready.clone(), stats.clone(), http_stop.clone()).await?;
        if let Some(cb) = &opts.on_http_bound {
            cb(bound);
        }
    }
    let _stop_http = http_stop.clone().drop_guard();
    // The statsd reporter sends a last window when the pipeline ends (and is cancelled with it
    // on an error).
    let statsd_stop = CancellationToken::new();
    let statsd = cfg.metrics.statsd.clone().map(|s| {
        tokio::spawn(observe::report_statsd(
            s,
            stats.clone(),
            cfg.metrics.e2e_latency,
            statsd_stop.clone(),
        ))
    });
    let _stop_statsd = statsd_stop.clone().drop_guard();
    let webhook = cfg.monitoring.webhook.clone().map(|w| {
        let stop = statsd_stop.clone();
        tokio::spawn(crate::monitoring::run_webhook(w, stop))
    });
    // Fires when a sink fails for good: stop reading, let the rest drain or drop.
    let abort = CancellationToken::new();
    let q = cfg.batch.queue;

    let tally = cfg
        .monitoring
        .metadata_reporter
        .as_ref()
        .map(|_| Arc::new(crate::monitoring::ErrorTally::default()));
    let metadata_reporter = cfg.monitoring.metadata_reporter.clone().map(|m| {
        tokio::spawn(crate::monitoring::run_metadata_reporter(
            m,
            stats.clone(),
            tally.clone().expect("made with the reporter"),
            statsd_stop.clone(),
        ))
    });
    let bad_rows = BadRows {
        max_payload_bytes: cfg.limits.bad_row_max_payload_bytes.0 as usize,
        format: cfg.bad_rows.format,
        tally,
    };
    // Build every component before anything is read: each creates its clients and checks that
    // it can use them, so one that cannot fails the start, naming itself (`crate::setup`).
    // Sinks first, so nothing is read before there is somewhere to put it.
    let build = BuildContext {
        path: String::new(),
        runtime: tokio::runtime::Handle::current(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        state: None,
        transactions: cfg
            .transactional_id
            .clone()
            .map(crate::kafka::txn::Slot::new),
    };
    let mut failure = sinks::build(cfg.failure.as_ref(), &build.at("failure")).await?;
    let mut main = sinks::build(cfg.sink.as_ref(), &build.at("sink")).await?;
    let mut filtered = match &cfg.filtered {
        Some(c) => Some(sinks::build(c.as_ref(), &build.at("filtered")).await?),
        None => None,
    };
    let source = sources::build(
        cfg.source.as_ref(),
        &BuildContext {
            state: cfg
                .state
                .clone()
                .map(|s| s as Arc<dyn crate::state::Checkpointed>),
            ..build.at("source")
        },
    )
    .await?;
    let chains = (0..cfg.workers)
        .map(|_| cfg.build_chain())
        .collect::<Result<Vec<_>, _>>()?;
    // Then what the sinks serve (dashboards).
    for (path, sink) in [("failure", &mut failure), ("sink", &mut main)]
        .into_iter()
        .chain(filtered.as_mut().map(|f| ("filtered", f)))
    {
        sink.start().await.map_err(|e| SetupError::of(path, e))?;
    }

    // The failure sink also takes the records the other sinks reject.
    let (failure_tx, failure_task) =
        spawn_sink("failure", failure, q, &cfg.retry, &stats, &abort, None);
    let reject_to = || Some((failure_tx.clone(), bad_rows.clone()));
    let (main_tx, main_task) = spawn_sink("sink", main, q, &cfg.retry, &stats, &abort, reject_to());
    let (filtered_tx, filtered_task) = match filtered {
        Some(f) => {
            let (tx, t) = spawn_sink("filtered", f, q, &cfg.retry, &stats, &abort, reject_to());
            (Some(tx), Some(t))
        }
        None => (None, None),
    };

    // Transform workers, each with its own chain; batches are dealt round-robin and collected in
    // the same order, so output order equals input order.
    let workers = cfg.workers;
    let mut worker_in = Vec::with_capacity(workers);
    let mut worker_out = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for (i, mut chain) in chains.into_iter().enumerate() {
        let (in_tx, mut in_rx) = mpsc::channel::<Batch>(1);
        let (out_tx, out_rx) = mpsc::channel::<Batch>(1);
        worker_in.push(in_tx);
        worker_out.push(out_rx);
        threads.push(
            std::thread::Builder::new()
                .name(format!("weir-transform-{i}"))
                .spawn(move || {
                    while let Some(mut batch) = in_rx.blocking_recv() {
                        chain.process(&mut batch);
                        if out_tx.blocking_send(batch).is_err() {
                            break;
                        }
                    }
                })?,
        );
    }

    let (source_tx, mut source_rx) = mpsc::channel::<Batch>(q);
    // Which worker has each batch, in order: the router collects outputs in the same order.
    let (order_tx, mut order_rx) = mpsc::unbounded_channel::<usize>();
    // With durable state, a partition's batches all go to one worker, so that each sees the
    // state its predecessors left (batches of other partitions still spread over the workers).
    let by_partition = cfg.state.is_some();
    let dispatcher = tokio::spawn(async move {
        let mut i = 0;
        loop {
            // While the source is quiet, an empty batch every IDLE_TICK lets transforms with
            // time-driven output (expiry, windows) run; it carries no acknowledgement.
            let batch = match tokio::time::timeout(IDLE_TICK, source_rx.recv()).await {
                Ok(Some(batch)) => {
                    metrics::histogram!("weir_batch_records", "stage" => "source")
                        .record(batch.len() as f64);
                    batch
                }
                Ok(None) => break,
                Err(_) => Batch::default(),
            };
            let w = match &batch.position {
                Some(p) if by_partition => {
                    use std::hash::{BuildHasher, BuildHasherDefault};
                    let h =
                        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                            .hash_one(&p.partition);
                    (h % workers as u64) as usize
                }
                _ => i % workers,
            };
            if order_tx.send(w).is_err() || worker_in[w].send(batch).await.is_err() {
                break;
            }
            i += 1;
        }
    });

    let router_stats = stats.clone();
    let router = tokio::spawn(async move {
        let stats = router_stats;
        let latency = metrics::histogram!("weir_pipeline_batch_seconds");
        while let Some(w) = order_rx.recv().await {
            let Some(batch) = worker_out[w].recv().await else {
                break;
            };
            if let Some(t) = batch.created {
                latency.record(t.elapsed().as_secs_f64());
            }
            route(
                batch,
                &main_tx,
                filtered_tx.as_ref(),
                &failure_tx,
                &bad_rows,
                &stats,
            )
            .await;
        }
    });

    // The source.
    let acks = AckCounter::new(stats.clone());
    let limits = BatchLimits {
        max_records: cfg.batch.max_records,
        max_bytes: cfg.batch.max_bytes.0 as usize,
        flush_interval: cfg.batch.flush_interval.0,
    };
    let source_stop = CancellationToken::new();
    let emitter = Emitter::new(source_tx, limits, acks.clone(), stats.clone())
        .with_e2e_latency(cfg.metrics.e2e_latency);
    let ctx = SourceContext {
        emitter,
        shutdown: source_stop.clone(),
        max_record_bytes: cfg.limits.max_record_bytes.0 as usize,
        on_listen: opts.on_source_bound.clone(),
    };
    let source_task: JoinHandle<anyhow::Result<()>> = tokio::spawn(source.run(ctx));
    ready.set(true);
    tracing::info!(config = %cfg.file, transforms = cfg.transforms.len(), workers, "pipeline running");

    let progress_stop = CancellationToken::new();
    if opts.progress {
        tokio::spawn(observe::progress_line(
            stats.clone(),
            Duration::from_secs(2),
            progress_stop.clone(),
        ));
    }
    let _stop_progress = progress_stop.drop_guard();

    // Stop the source on a signal or a sink failure; it flushes what it read and returns.
    let interrupted = {
        let mut source_task = source_task;
        let result = tokio::select! {
            r = &mut source_task => Some(r),
            _ = shutdown.cancelled() => None,
            _ = abort.cancelled() => None,
        };
        let (result, interrupted) = match result {
            Some(r) => (r, false),
            None => {
                ready.set(false);
                tracing::info!("stopping: draining records already read");
                source_stop.cancel();
                (source_task.await, true)
            }
        };
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "source failed");
                abort.cancel();
                drain(
                    dispatcher,
                    router,
                    threads,
                    [Some(main_task), filtered_task, Some(failure_task)],
                )
                .await;
                return Err(e.context("source failed"));
            }
            Err(e) => return Err(anyhow::anyhow!("source task panicked: {e}")),
        }
        interrupted
    };
    ready.set(false);
    let sink_results = drain(
        dispatcher,
        router,
        threads,
        [Some(main_task), filtered_task, Some(failure_task)],
    )
    .await;
    for r in sink_results {
        r?;
    }
    statsd_stop.cancel();
    for task in [statsd, webhook, metadata_reporter].into_iter().flatten() {
        let _ = task.await;
    }
    let snapshot = stats.snapshot();
    tracing::info!(
        read = snapshot.read,
        written = snapshot.written,
        filtered = snapshot.filtered,
        failed = snapshot.failed,
        acknowledged = acks.acknowledged(),
        "pipeline stopped"
    );
    Ok(Summary {
        stats: Snapshot {
            acked: acks.acknowledged(),
            ..snapshot
        },
        interrupted,
    })
}

/// Waits for every stage to finish, in flow order.
async fn drain(
    dispatcher: JoinHandle<()>,
    router: JoinHandle<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
    sinks: [Option<JoinHandle<anyhow::Result<()>>>; 3],
) -> Vec<anyhow::Result<()>> {
    let _ = dispatcher.await;
    let _ = router.await;
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    let mut out = Vec::new();
    for s in sinks.into_iter().flatten() {
        out.push(
            s.await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("sink task panicked: {e}"))),
        );
    }
    out
}

/// Sends each part of a processed batch to its sink; each part holds a share of the batch's ack.
async fn route(
    batch: Batch,
    main: &mpsc::Sender<SinkBatch>,
    filtered: Option<&mpsc::Sender<SinkBatch>>,
    failure: &mpsc::Sender<SinkBatch>,
    bad_rows: &BadRows,
    stats: &Stats,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let Batch {
        records,
        filtered: dropped,
        failed,
        ack,
        ..
    } = batch;
    if !failed.is_empty() {
        for f in &failed {
            tracing::debug!(component = %f.component, reason = %f.reason, "record failed");
        }
        stats.failed.fetch_add(failed.len() as u64, Relaxed);
        let rows = failed.iter().map(|f| bad_rows.encode(f)).collect();
        let _ = failure
            .send(SinkBatch {
                records: rows,
                ack: ack.clone(),
            })
            .await;
    }
    if !dropped.is_empty() {
        stats.filtered.fetch_add(dropped.len() as u64, Relaxed);
        if let Some(tx) = filtered {
            let _ = tx
                .send(SinkBatch {
                    records: dropped,
                    ack: ack.clone(),
                })
                .await;
        }
    }
    if !records.is_empty() {
        let _ = main
            .send(SinkBatch {
                records,
                ack: ack.clone(),
            })
            .await;
    }
    // The router's own share: the parts above hold the rest.
    ack.delivered();
}

/// Starts a sink's task: it writes each batch, retrying failed writes under the `[retry]` policy
/// of their class (the queue in front of it fills meanwhile, holding the source back),
/// acknowledges what was written, and on a fatal error stops the pipeline. A batch whose class's
/// `max_attempts` run out goes to the failure sink if that class has `invalid_after_max` (its
/// records not yet taken, as bad rows naming the error), otherwise the pipeline stops.
///
/// Records the sink rejects ([`SinkError::Rejected`]) go to `rejects` (the failure sink) as bad
/// rows, holding a share of the batch's ack; the failure sink itself has no `rejects`, so a
/// rejection there is fatal.
fn spawn_sink(
    role: &'static str,
    mut sink: Box<dyn Sink>,
    queue: usize,
    retry: &crate::retry::RetryConfig,
    stats: &Arc<Stats>,
    abort: &CancellationToken,
    reject_to: Option<(mpsc::Sender<SinkBatch>, BadRows)>,
) -> (mpsc::Sender<SinkBatch>, JoinHandle<anyhow::Result<()>>) {
    let (tx, mut rx) = mpsc::channel::<SinkBatch>(queue);
    let retry = *retry;
    let stats = stats.clone();
    let abort = abort.clone();
    let task = tokio::spawn(async move {
        let records_total = metrics::counter!("weir_sink_records_total", "sink" => role);
        let retries = metrics::counter!("weir_sink_retries_total", "sink" => role);
        let seconds = metrics::histogram!("weir_sink_write_seconds", "sink" => role);
        let sizes = metrics::histogram!("weir_batch_records", "stage" => role);
        while let Some(first) = rx.recv().await {
            // Every batch already waiting is written with this one: a sink whose write waits
            // for a round trip (Kafka's delivery reports, an HTTP answer) then takes what
            // queued up during the last one in a single write, instead of one round trip per
            // (often small, filtered) batch. What waits is bounded by the queue.
            let Coalesced { records, acks } = Coalesced::drain(first, &mut rx);
            // Failed writes of this batch so far, per failure class.
            let mut attempts = [0u32; 3];
            // What the sink took of this batch, kept across its retries.
            let mut progress = Progress::default();
            loop {
                let t = Instant::now();
                if role == "sink" {
                    stats
                        .writes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                match sink.write(&records, &mut progress).await {
                    Ok(()) => {
                        seconds.record(t.elapsed().as_secs_f64());
                        sizes.record(records.len() as f64);
                        records_total.increment(records.len() as u64);
                        if role == "sink" {
                            stats.written.fetch_add(
                                records.len() as u64,
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        acks.delivered();
                        if attempts[crate::retry::FailureClass::Setup as usize] > 0 {
                            crate::monitoring::setup_resolved();
                        }
                        break;
                    }
                    Err(
                        e @ (SinkError::Retriable(_)
                        | SinkError::Throttled(_)
                        | SinkError::Setup(_)),
                    ) => {
                        let class = e.class().expect("a retriable class");
                        let failed_counter = match role {
                            "sink" => Some(&stats.write_failed),
                            "failure" => Some(&stats.failure_write_failed),
                            _ => None,
                        };
                        if let Some(c) = failed_counter {
                            c.fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        if class == crate::retry::FailureClass::Setup {
                            crate::monitoring::setup_failed(format!("{role}: {e:#}"));
                        }
                        let policy = retry.policy(class);
                        let attempt = &mut attempts[class as usize];
                        *attempt += 1;
                        let attempt = *attempt;
                        if policy.exhausted(attempt) {
                            let why = format!(
                                "{role}: {} error, gave up after {attempt} attempts: {e:#}",
                                class.as_str()
                            );
                            let Some(to) = reject_to.as_ref().filter(|_| policy.invalid_after_max)
                            else {
                                tracing::error!(sink = role, class = class.as_str(), attempt, error = %format!("{e:#}"), "write failed for good after the retry policy's max_attempts; stopping without acknowledging");
                                abort.cancel();
                                return Err(anyhow::anyhow!("{why}"));
                            };
                            tracing::error!(sink = role, class = class.as_str(), attempt, error = %format!("{e:#}"), "write failed for good: sending the batch to the failure sink (invalid_after_max)");
                            // Records the sink refused keep their reason; those it took stay out.
                            let mut rejected: std::collections::HashMap<
                                usize,
                                crate::sinks::Refusal,
                            > = progress.take_rejected().into_iter().collect();
                            let failed: Vec<_> = records
                                .iter()
                                .enumerate()
                                .filter_map(|(i, r)| {
                                    let reason = match rejected.remove(&i) {
                                        Some(reason) => reason,
                                        None if progress.is_settled(i) => return None,
                                        None => crate::sinks::Refusal::from(why.clone()),
                                    };
                                    Some((i, r, reason))
                                })
                                .collect();
                            acks.route_failed((&to.0, &to.1), role, &stats, failed)
                                .await;
                            break;
                        }
                        retries.increment(1);
                        let wait = policy.backoff().delay(attempt);
                        tracing::warn!(sink = role, class = class.as_str(), attempt, error = %format!("{e:#}"), retry_in = ?wait, "write failed, retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = abort.cancelled() => return Err(anyhow::anyhow!("{role}: gave up on a write while stopping: {e:#}")),
                        }
                    }
                    Err(SinkError::Rejected(rejected)) if reject_to.is_some() => {
                        let (failure, bad_rows) = reject_to.as_ref().expect("checked");
                        seconds.record(t.elapsed().as_secs_f64());
                        let accepted = records.len().saturating_sub(rejected.len());
                        records_total.increment(accepted as u64);
                        if role == "sink" {
                            stats
                                .written
                                .fetch_add(accepted as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        let mut rejected = rejected;
                        rejected.sort_by_key(|(i, _)| *i);
                        let failed: Vec<_> = rejected.into_iter().filter_map(|(i, reason)| {
                            tracing::warn!(sink = role, reason = %reason, "record rejected by the sink: sending it to the failure sink");
                            Some((i, records.get(i)?, reason))
                        }).collect();
                        acks.route_failed((failure, bad_rows), role, &stats, failed)
                            .await;
                        break;
                    }
                    Err(e @ (SinkError::Fatal(_) | SinkError::Rejected(_))) => {
                        tracing::error!(sink = role, error = %format!("{e:#}"), "write failed for good; stopping without acknowledging");
                        abort.cancel();
                        return Err(anyhow::anyhow!("{role}: {e:#}"));
                    }
                }
            }
        }
        sink.close()
            .await
            .map_err(|e| anyhow::Error::new(e).context(format!("{role}: closing")))
    });
    (tx, task)
}

/// Batches waiting for one sink, written together: their records end to end, and each batch's
/// ack with the index of its first record.
struct Coalesced {
    records: Vec<Record>,
    acks: Acks,
}

/// The acks of the batches in one [`Coalesced`] write, each with the index of its first record.
struct Acks(Vec<(usize, Ack)>);

impl Coalesced {
    /// `first` and every batch already queued behind it.
    fn drain(first: SinkBatch, rx: &mut mpsc::Receiver<SinkBatch>) -> Coalesced {
        let SinkBatch { mut records, ack } = first;
        let mut acks = vec![(0, ack)];
        while let Ok(next) = rx.try_recv() {
            acks.push((records.len(), next.ack));
            if records.is_empty() {
                records = next.records;
            } else {
                records.extend(next.records);
            }
        }
        Coalesced {
            records,
            acks: Acks(acks),
        }
    }
}

impl Acks {
    /// Every batch was written.
    fn delivered(self) {
        for (_, ack) in self.0 {
            ack.delivered();
        }
    }

    /// Sends `failed` (records by index, in increasing order, each with its reason) to the
    /// failure sink, each batch's as one part holding a share of that batch's ack; a batch with
    /// no failed record is delivered as it is.
    async fn route_failed(
        self,
        to: (&mpsc::Sender<SinkBatch>, &BadRows),
        role: &str,
        stats: &Stats,
        failed: Vec<(usize, &Record, crate::sinks::Refusal)>,
    ) {
        let mut failed = failed.into_iter().peekable();
        let mut parts = self.0.into_iter().peekable();
        while let Some((_, ack)) = parts.next() {
            let end = parts.peek().map_or(usize::MAX, |(start, _)| *start);
            let mut mine = Vec::new();
            while let Some((_, r, reason)) = failed.next_if(|(i, _, _)| *i < end) {
                mine.push((r, reason));
            }
            if mine.is_empty() {
                ack.delivered();
            } else {
                to_failure_sink(to, role, stats, ack, mine.into_iter()).await;
            }
        }
    }
}

/// Sends `failed` (records of a batch, each with its reason) to the failure sink as bad rows of
/// sink `role`, holding a share of the batch's `ack`, and delivers this sink's share.
async fn to_failure_sink<'a>(
    (failure, bad_rows): (&mpsc::Sender<SinkBatch>, &BadRows),
    role: &str,
    stats: &Stats,
    ack: Ack,
    failed: impl Iterator<Item = (&'a Record, crate::sinks::Refusal)>,
) {
    let component = format!("{role} (sink)");
    let rows: Vec<Record> = failed
        .map(|(r, refusal)| {
            bad_rows.encode(&Failed {
                record: r.clone(),
                kind: refusal.kind,
                component: component.clone(),
                reason: refusal.reason,
            })
        })
        .collect();
    stats
        .failed
        .fetch_add(rows.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let _ = failure
        .send(SinkBatch {
            records: rows,
            ack: ack.clone(),
        })
        .await;
    ack.delivered();
}

#[cfg(test)]
mod tests {
    //! Config validation that spans components (the state backend and the source, a fan-out's
    //! children): the pipeline is the one place that sees them all.
    use super::*;

    fn load(toml: &str) -> Result<PipelineConfig, ConfigError> {
        let root: ::config::Value = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        PipelineConfig::from_value("p.toml", root)
    }

    #[test]
    fn snowbridge_configs_report_weirs_errors_at_their_hcl_paths() {
        let t = crate::snowbridge::translate(
            "t.hcl",
            r#"
            transform {
              use "spEnrichedFilter" {
                atomic_field = "app_id"
                regex = "(["
                filter_action = "keep"
              }
            }"#,
            Default::default(),
            TOP_LEVEL_KEYS,
        )
        .unwrap();
        let e = PipelineConfig::from_value(&t.file, t.root())
            .map(|_| ())
            .map_err(|e| t.map_error(e))
            .expect_err("a bad regex");
        assert_eq!(e.key, r#"transform.use "spEnrichedFilter".regex"#, "{e}");
        assert_eq!(e.file, "t.hcl");
    }

    #[test]
    fn fanout_children_are_validated_at_their_own_key_paths() {
        let head = "[source]\ntype = \"stdin\"\n[sink]\ntype = \"fanout\"\n";
        let ok = format!(
            "{head}[[sink.sinks]]\ntype = \"stdout\"\n[[sink.sinks]]\ntype = \"fanout\"\n\
             [[sink.sinks.sinks]]\ntype = \"null\"\n"
        );
        load(&ok).unwrap();
        let cases = [
            (
                format!("{head}[[sink.sinks]]\ntype = \"stdout\"\n[[sink.sinks]]\ntype = \"file\"\npaht = \"x\"\n"),
                "sink.sinks[1].paht",
                "did you mean `path`?",
            ),
            (
                format!("{head}[[sink.sinks]]\ntype = \"dynamo\"\n"),
                "sink.sinks[0].type",
                "did you mean `dynamodb`?",
            ),
            (
                format!("{head}[[sink.sinks]]\ntype = \"kafka\"\nbootstrap_servers = \"b:9092\"\ntopic = \"\"\n"),
                "sink.sinks[0].topic",
                "expected a topic name",
            ),
            (format!("{head}sinks = []\n"), "sink.sinks", "at least one sink"),
            (
                format!("{head}sinks = \"stdout\"\n"),
                "sink.sinks",
                "expected an array of sinks ([[sink.sinks]] in TOML), found a string",
            ),
            (format!("{head}sink = []\n"), "sink.sink", "did you mean `sinks`?"),
            (head.to_string(), "sink", "missing required key `sinks`"),
        ];
        for (toml, key, message) in cases {
            let e = load(&toml).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn state_config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let load = |source: &str, state: &str| {
            let p = dir.path().join("p.toml");
            std::fs::write(
                &p,
                format!("{source}\n[sink]\ntype = \"null\"\n\n[state]\n{state}\n"),
            )
            .unwrap();
            PipelineConfig::load(&p)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let stdin = "[source]\ntype = \"stdin\"\n";
        let e = load(stdin, "backend = \"disk\"\npath = \"/tmp/x.redb\"");
        assert!(
            e.contains("state.backend") && e.contains("checkpoints state"),
            "{e}"
        );
        let kafka = "[source]\ntype = \"kafka\"\nbootstrap_servers = \"k:9092\"\ntopics = [\"in\"]\ngroup_id = \"g\"\n";
        let file = dir.path().join("st/x.redb");
        let ok = format!(
            "backend = \"disk\"\npath = {:?}",
            file.display().to_string()
        );
        assert_eq!(load(kafka, &ok), "");
        assert!(!file.exists(), "checking a config creates no state file");
        let e = load(kafka, "backend = \"disk\"");
        assert!(e.contains("state.path") && e.contains("missing"), "{e}");
        let e = load(kafka, "backend = \"dsk\"");
        assert!(e.contains("state.backend"), "{e}");
        let e = load(kafka, "path = \"/tmp/x.redb\"");
        assert!(e.contains("state.path"), "{e}");
        let e = load(kafka, "changelog_topic = \"cl\"");
        assert!(
            e.contains("state.changelog_topic") && e.contains("memory"),
            "{e}"
        );
        let e = load(kafka, &format!("{ok}\nchangelog_topic = \"\""));
        assert!(
            e.contains("state.changelog_topic") && e.contains("empty"),
            "{e}"
        );
        assert_eq!(load(kafka, &format!("{ok}\nchangelog_topic = \"cl\"")), "");
        let two = kafka.replace("[\"in\"]", "[\"in\", \"in2\"]");
        let e = load(&two, &format!("{ok}\nchangelog_topic = \"cl\""));
        assert!(
            e.contains("state.changelog_topic") && e.contains("2 topics"),
            "{e}"
        );
        assert_eq!(
            load(&two, &ok),
            "",
            "without a changelog, several topics are fine"
        );
        let on_read = format!("{kafka}commit = \"on-read\"\n");
        let e = load(&on_read, "backend = \"disk\"\npath = \"/tmp/x.redb\"");
        assert!(e.contains("state.backend"), "{e}");
    }

    /// Batches queued for a sink are written together, and what fails of the combined write
    /// goes back to the failure sink under the ack of the batch it came from.
    #[tokio::test]
    async fn queued_batches_are_written_together_and_failures_keep_their_batch() {
        use crate::ack::AckHandler;
        #[derive(Default)]
        struct Log(std::sync::Mutex<Vec<(u64, bool)>>);
        impl AckHandler for Log {
            fn acked(&self, token: u64, delivered: bool) {
                self.0.lock().unwrap().push((token, delivered));
            }
        }
        let log = Arc::new(Log::default());
        let batch = |token: u64, values: &[&str]| SinkBatch {
            records: values.iter().map(|v| Record::new(v.to_string())).collect(),
            ack: Ack::new(token, log.clone()),
        };
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(batch(2, &["c", "d", "e"])).await.unwrap();
        tx.send(batch(3, &[])).await.unwrap();
        tx.send(batch(4, &["f"])).await.unwrap();
        let c = Coalesced::drain(batch(1, &["a", "b"]), &mut rx);
        let values: Vec<&[u8]> = c.records.iter().map(|r| &r.value[..]).collect();
        assert_eq!(values, [&b"a"[..], b"b", b"c", b"d", b"e", b"f"]);
        assert!(rx.try_recv().is_err(), "everything queued was taken");

        // "b" (batch 1) and "e", "d" (batch 2) fail; batches 3 and 4 were written.
        let (ftx, mut frx) = mpsc::channel(8);
        let bad_rows = BadRows {
            max_payload_bytes: 1000,
            format: Default::default(),
            tally: None,
        };
        let failed = [1usize, 3, 4]
            .into_iter()
            .map(|i| {
                (
                    i,
                    &c.records[i],
                    crate::sinks::Refusal::from(format!("no {i}")),
                )
            })
            .collect();
        c.acks
            .route_failed((&ftx, &bad_rows), "sink", &Stats::default(), failed)
            .await;
        drop(ftx);
        let mut parts = Vec::new();
        while let Some(b) = frx.recv().await {
            parts.push(b);
        }
        let texts: Vec<Vec<String>> = parts
            .iter()
            .map(|b| {
                b.records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                    .collect()
            })
            .collect();
        assert_eq!(texts.len(), 2, "one failure part per batch with failures");
        assert_eq!(texts[0].len(), 1);
        assert!(texts[0][0].contains("no 1"), "{texts:?}");
        assert_eq!(texts[1].len(), 2);
        assert!(texts[1][0].contains("no 3") && texts[1][1].contains("no 4"));
        {
            let acked = log.0.lock().unwrap();
            let mut done: Vec<u64> = acked.iter().map(|(t, _)| *t).collect();
            done.sort();
            assert_eq!(
                done,
                [3, 4],
                "batches without failures are delivered at once"
            );
        }
        // The failure sink writes its parts: only then do batches 1 and 2 count as delivered.
        for p in parts {
            p.ack.delivered();
        }
        let acked = log.0.lock().unwrap();
        assert_eq!(acked.len(), 4);
        assert!(acked.iter().all(|(_, delivered)| *delivered), "{acked:?}");
    }
}
