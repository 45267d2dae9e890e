//! `wasm`: a user-written WebAssembly transform (see `transforms/README.md`).
//!
//! The `.wasm` is compiled once and cached on disk; each worker gets its own instance. `init`
//! runs when the config is checked, so a transform that refuses its settings fails `weir
//! validate` like any other config error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Transform, TransformConfig, TransformType};
use crate::config::{self, ByteSize, ConfigError, Origin};
use crate::record::Batch;
use crate::record::PartitionId;
use crate::state::{At, Budget, MemoryBackend, StateBackend};
use crate::wasm::guest::BuildError;
use crate::wasm::{Guest, GuestOptions, Limits};

/// ```toml
/// [[transforms]]
/// type = "wasm"
/// path = "transforms/media_filter.wasm"
/// # The transform's own settings, passed to its `init` (values become strings).
/// config = { vendor = "com.snowplowanalytics.snowplow.media", event_name = "^(play|pause)_event$" }
/// # flush_interval = "10s"   # call the transform's `flush` this often (windowed output), and
/// #                          # expire its state this often (default: every second)
/// # cache_dir = "/var/cache/weir/wasm"  # default: $WEIR_CACHE_DIR, $XDG_CACHE_HOME/weir/wasm,
/// #                                     # ~/.cache/weir/wasm; must be private (0700, ours)
///
/// [transforms.limits]            # all optional; these are the defaults
/// timeout = "1s"                 # per batch (one guest call)
/// max_memory = "64 MiB"
/// max_stack = "512 KiB"
/// max_output_bytes = "16 MiB"    # per batch
/// log_lines_per_second = 10      # guest log lines (bursts of 10x)
/// max_traps_per_batch = 64       # then the rest of the batch fails and weir backs off
/// max_state_key_bytes = "1 KiB"  # longest key a state call may name (else the record fails)
/// max_state_bytes = "1 GiB"      # state kept (keys + values, all partitions on this instance)
/// max_state_keys = 10000000      # keys kept; past either budget, writes that would grow the
///                                # state fail their record, updates of existing keys go on
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The transform: a component, or a core module built with the weir transform SDK.
    pub path: PathBuf,
    /// The transform's own settings.
    #[serde(default)]
    pub config: BTreeMap<String, Setting>,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How often to call the transform's `flush` and expire its state (expiry: every
    /// [`EXPIRY_INTERVAL`] without it).
    pub flush_interval: Option<config::Duration>,
    /// Where compiled transforms are cached.
    pub cache_dir: Option<PathBuf>,
    /// The transform's keyed state, shared by its workers: the pipeline's `[state]` backend
    /// (in memory unless configured).
    #[serde(skip, default = "memory_state")]
    pub state: Arc<dyn StateBackend>,
}

/// How often state expires without a `flush_interval`.
pub const EXPIRY_INTERVAL: Duration = Duration::from_secs(1);

fn memory_state() -> Arc<dyn StateBackend> {
    MemoryBackend::new()
}

/// A value of the `config` table: text, number or boolean (passed to the guest as text).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Setting {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Setting::Bool(b) => write!(f, "{b}"),
            Setting::Int(i) => write!(f, "{i}"),
            Setting::Float(x) => write!(f, "{x}"),
            Setting::Text(s) => f.write_str(s),
        }
    }
}

/// `[transforms.limits]` of a `wasm` transform.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub timeout: config::Duration,
    pub max_memory: ByteSize,
    pub max_stack: ByteSize,
    pub max_output_bytes: ByteSize,
    pub log_lines_per_second: u32,
    pub max_traps_per_batch: u32,
    pub max_state_key_bytes: ByteSize,
    pub max_state_bytes: ByteSize,
    pub max_state_keys: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        LimitsConfig {
            timeout: config::Duration(d.timeout),
            max_memory: ByteSize(d.max_memory as u64),
            max_stack: ByteSize(d.max_stack as u64),
            max_output_bytes: ByteSize(d.max_output_bytes as u64),
            log_lines_per_second: d.log_lines_per_second,
            max_traps_per_batch: d.max_traps_per_batch,
            max_state_key_bytes: ByteSize(d.max_state_key_bytes as u64),
            max_state_bytes: ByteSize(d.state_budget.max_bytes),
            max_state_keys: d.state_budget.max_keys,
        }
    }
}

impl LimitsConfig {
    fn check(&self, o: &Origin) -> Result<Limits, ConfigError> {
        let range = |key: &str, v: u64, lo: u64, hi: u64, what: &str| {
            if v < lo || v > hi {
                Err(o.error(
                    &format!("limits.{key}"),
                    format!("expected {what}, found {v} bytes"),
                ))
            } else {
                Ok(v as usize)
            }
        };
        if self.timeout.0.is_zero() {
            return Err(o.error("limits.timeout", "expected a positive duration, found 0"));
        }
        if self.max_traps_per_batch == 0 {
            return Err(o.error("limits.max_traps_per_batch", "expected at least 1, found 0"));
        }
        if self.max_state_keys == 0 {
            return Err(o.error("limits.max_state_keys", "expected at least 1, found 0"));
        }
        Ok(Limits {
            timeout: self.timeout.0,
            max_memory: range(
                "max_memory",
                self.max_memory.0,
                1 << 20,
                4 << 30,
                "1 MiB to 4 GiB",
            )?,
            max_stack: range(
                "max_stack",
                self.max_stack.0,
                64 << 10,
                64 << 20,
                "64 KiB to 64 MiB",
            )?,
            max_output_bytes: range(
                "max_output_bytes",
                self.max_output_bytes.0,
                1,
                u32::MAX as u64,
                "1 byte to 4 GiB",
            )?,
            log_lines_per_second: self.log_lines_per_second,
            max_traps_per_batch: self.max_traps_per_batch,
            // A key is at most half an entry (crate::wasm::host::MAX_ENTRY_BYTES).
            max_state_key_bytes: range(
                "max_state_key_bytes",
                self.max_state_key_bytes.0,
                1,
                256 << 10,
                "1 byte to 256 KiB",
            )?,
            state_budget: Budget {
                max_bytes: range(
                    "max_state_bytes",
                    self.max_state_bytes.0,
                    1 << 10,
                    1 << 40,
                    "1 KiB to 1 TiB",
                )? as u64,
                max_keys: self.max_state_keys,
            },
        })
    }
}

impl TransformType for Config {
    const TYPE: &'static str = "wasm";
}

impl Config {
    /// The options a guest is built with.
    pub fn options(&self, label: &str, origin: &Origin) -> Result<GuestOptions, ConfigError> {
        Ok(GuestOptions {
            label: label.to_string(),
            config: self
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
            limits: self.limits.check(origin)?,
            state: self.state.clone(),
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(crate::wasm::cache::default_dir),
        })
    }
}

impl TransformConfig for Config {
    fn set_state(&mut self, backend: Arc<dyn StateBackend>) {
        self.state = backend;
    }

    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        let guest = Guest::new(&self.path, self.options(label, origin)?).map_err(|e| match e {
            BuildError::Init(m) => {
                origin.error("config", format!("the transform refused its config: {m}"))
            }
            BuildError::Load(m) => origin.error("path", m),
            BuildError::Cache(m) => origin.error("cache_dir", m),
        })?;
        Ok(Box::new(WasmTransform {
            guest,
            flush_interval: self.flush_interval.map(|d| d.0),
            last_flush: Instant::now(),
            partitions: Vec::new(),
        }))
    }
}

/// A `wasm` transform in one worker.
pub struct WasmTransform {
    pub guest: Guest,
    flush_interval: Option<Duration>,
    /// When the state of an unpartitioned input was last flushed.
    last_flush: Instant,
    /// Input partitions seen, with when each one's state was last flushed.
    partitions: Vec<(PartitionId, Instant)>,
}

impl WasmTransform {
    /// A tick of the state now selected: expiry (every tick), then `flush` (if configured).
    fn tick(&mut self) -> Vec<crate::record::Record> {
        let mut out = self.guest.expire();
        if self.flush_interval.is_some() {
            out.extend(self.guest.flush());
        }
        out
    }
}

impl Transform for WasmTransform {
    fn process(&mut self, batch: &mut Batch) {
        self.guest.process_batch(batch);
        let every = self.flush_interval.unwrap_or(EXPIRY_INTERVAL);
        match &batch.position {
            // A partition's state is flushed (and expired) only inside a batch of that partition:
            // the tick's state writes and the records it emits then share the batch's position,
            // so a checkpoint never covers a removal that has not been delivered, and a partition
            // this worker no longer owns (revoked: no more batches) is never flushed from stale
            // state. A partition that receives nothing is flushed when its next batch comes.
            Some(p) => {
                let due = match self.partitions.iter_mut().find(|(q, _)| *q == p.partition) {
                    Some((_, last)) if last.elapsed() >= every => {
                        *last = Instant::now();
                        true
                    }
                    Some(_) => false,
                    None => {
                        self.partitions.push((p.partition.clone(), Instant::now()));
                        false
                    }
                };
                if due {
                    let at = At {
                        epoch: p.epoch,
                        end: p.end,
                    };
                    match self.guest.select_state(&p.partition, Some(at)) {
                        Ok(()) => {
                            let out = self.tick();
                            batch.records.extend(out);
                        }
                        Err(e) => tracing::error!(
                            partition = %p.partition, "flush: cannot open the state: {e:#}"
                        ),
                    }
                }
            }
            None if self.partitions.is_empty() && self.last_flush.elapsed() >= every => {
                self.last_flush = Instant::now();
                let out = self.tick();
                batch.records.extend(out);
            }
            None => {}
        }
    }
}
