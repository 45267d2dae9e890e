//! One running transform instance: calls it once per batch, and survives whatever it does.
//!
//! A call that traps (panic, time limit, memory limit, stack overflow) or returns something
//! invalid (an index out of range, more output than allowed) discards the instance. A new one
//! is made from the `InstancePre` (microseconds with the pooling allocator) and initialised with
//! the same config, and the records of the failed call are split in halves and retried, down to
//! the single record that fails: that one goes to the failure sink with the trap message and the
//! guest backtrace; all others are processed. State writes of a failed call are discarded.
//!
//! A guest that keeps failing is not retried in a tight loop: a batch gives up after
//! `max_traps_per_batch` traps (its remaining records fail), and the next batches wait with an
//! exponential backoff (10 ms doubling to 5 s) until one goes through cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Func, Linker, TypedFunc};
use wasmtime::{Engine, Store};

use super::abi::{BatchIn, BytesColumn, PayloadColumn, Payloads};
use super::bindings::weir::transform::types as wit;
use super::bindings::{WeirTransform, WeirTransformPre};
use super::engine::{self, LoadKind};
use super::host::HostState;
use crate::record::{Batch, Failed, PartitionId, Record};
use crate::state::{At, Budget, OverBudget, StateBackend, StateScope, StateStore, Write};

/// Expired keys handed to the guest's `expired` per call at most.
pub const EXPIRE_PAGE_KEYS: usize = 10_000;
/// Bytes of expired keys and values per call at most (and no more than an eighth of the
/// guest's memory limit).
pub const EXPIRE_PAGE_BYTES: usize = 4 << 20;

/// Limits of one transform; see the `limits` table of the `wasm` transform config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time one guest call (one batch) may take.
    pub timeout: Duration,
    /// Linear memory the guest may grow to.
    pub max_memory: usize,
    /// WebAssembly stack.
    pub max_stack: usize,
    /// Bytes of payloads and keys one call may return.
    pub max_output_bytes: usize,
    /// Guest log lines per second (bursts of 10×).
    pub log_lines_per_second: u32,
    /// Traps tolerated while isolating poison records of one batch (refusals of a state limit
    /// are not counted: they are the host's, deterministic, and bisection ends on its own).
    pub max_traps_per_batch: u32,
    /// The longest key a state call may name.
    pub max_state_key_bytes: usize,
    /// What the transform may keep in state on this instance (all its partitions).
    pub state_budget: Budget,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: Duration::from_secs(1),
            max_memory: 64 << 20,
            max_stack: 512 << 10,
            max_output_bytes: 16 << 20,
            log_lines_per_second: 10,
            max_traps_per_batch: 64,
            max_state_key_bytes: 1024,
            state_budget: Budget::default(),
        }
    }
}

/// How to build a guest.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Names the transform in logs and bad rows.
    pub label: String,
    /// The `config` map passed to the guest's `init`.
    pub config: Vec<(String, String)>,
    pub limits: Limits,
    pub state: Arc<dyn StateBackend>,
    /// Where compiled transforms are cached.
    pub cache_dir: PathBuf,
}

/// Why a guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The file is missing, not WebAssembly, or not a transform of a world weir serves.
    #[error("{0}")]
    Load(String),
    /// The compile cache directory is not private to this user (see [`super::cache`]).
    #[error("{0}")]
    Cache(String),
    /// The guest's `init` refused its config.
    #[error("the transform refused its config: {0}")]
    Init(String),
}

/// What became of a batch's records (see [`Guest::run`]).
#[derive(Debug, Default)]
pub struct Outcome {
    pub records: Vec<Record>,
    /// For each output record, the index of the input record it came from.
    pub sources: Vec<usize>,
    /// Dropped input records, with their indices.
    pub filtered: Vec<(usize, Record)>,
    /// Failed input records, with their indices and why.
    pub failed: Vec<(usize, Record, String)>,
}

/// Counters of one guest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestStats {
    pub calls: u64,
    pub traps: u64,
    pub rebuilds: u64,
}

/// A running transform.
pub struct Guest {
    label: Arc<str>,
    config: Vec<(String, String)>,
    limits: Limits,
    engine: Engine,
    pre: WeirTransformPre<HostState>,
    /// Opens the state of each input partition (see [`Guest::select_state`]).
    backend: Arc<dyn StateBackend>,
    /// The state of the current input partition, and the input position the calls process.
    state: Arc<dyn StateStore>,
    at: Option<At>,
    store: Store<HostState>,
    instance: Option<WeirTransform>,
    /// The `process` export, called with [`abi::BatchIn`] (payloads lowered without staging).
    process: Option<Func>,
    /// The optional `expiry.expired` export.
    expired: Option<TypedFunc<(wit::Column, wit::Column), (wit::Emitted,)>>,
    /// Fields weir sends instead of payloads (`settings.fields`).
    fields: Option<Vec<usize>>,
    input: wit::Batch,
    /// How the component was loaded, and how long that took.
    pub load: (LoadKind, Duration),
    pub stats: GuestStats,
    /// Consecutive batches that ended with the guest failing systematically.
    bad_batches: u32,
}

/// One failed call: why, and whether a state limit refused it (not the guest misbehaving).
struct Failure(String, bool);

impl Failure {
    fn guest(msg: String) -> Failure {
        Failure(msg, false)
    }
}

/// A validated column of a call's output; `None` where the guest omitted it.
struct Col {
    data: Bytes,
    offsets: Vec<u32>,
    absent: Vec<u32>,
}

/// The output of one successful call over the inputs `base..`.
struct CallOut {
    base: u32,
    /// Local input index of each output record.
    sources: Vec<u32>,
    values: Option<Col>,
    keys: Option<Col>,
    /// (local input index, message)
    errors: Vec<(u32, String)>,
}

/// What the calls that made up one batch returned.
#[derive(Default)]
struct Collected {
    calls: Vec<CallOut>,
    /// (global input index, reason) of records failed by the host.
    failed: Vec<(u32, String)>,
    traps: u32,
    gave_up: Option<String>,
}

impl Guest {
    /// Loads (compiling or from cache) and instantiates the transform at `path`, and calls its
    /// `init` with `opts.config`.
    pub fn new(path: &Path, opts: GuestOptions) -> Result<Guest, BuildError> {
        let engine = engine::engine(opts.limits.max_stack)
            .map_err(|e| BuildError::Load(format!("{e:#}")))?;
        let loaded = engine::load(&engine, opts.limits.max_stack, path, &opts.cache_dir).map_err(
            |e| match e.downcast_ref::<super::cache::UnsafeCacheDir>() {
                Some(unsafe_dir) => BuildError::Cache(unsafe_dir.to_string()),
                None => BuildError::Load(format!("{e:#}")),
            },
        )?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        WeirTransform::add_to_linker::<HostState, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| BuildError::Load(format!("{e:#}")))?;
        let pre = linker
            .instantiate_pre(&loaded.component)
            .and_then(WeirTransformPre::new)
            .map_err(|e| {
                BuildError::Load(format!(
                    "{} is not a transform for {} (or needs imports weir does not provide, \
                     such as WASI): {e:#}",
                    path.display(),
                    super::WIT_VERSION
                ))
            })?;
        let label: Arc<str> = Arc::from(opts.label.as_str());
        opts.state
            .usage(&opts.label)
            .set_budget(opts.limits.state_budget);
        let state = opts
            .state
            .open(&StateScope::unpartitioned(&opts.label))
            .map_err(|e| BuildError::Load(format!("cannot open state: {e:#}")))?;
        let store = new_store(&engine, &label, &opts.limits, &state);
        let mut g = Guest {
            label,
            config: opts.config,
            limits: opts.limits,
            engine,
            pre,
            backend: opts.state.clone(),
            state,
            at: None,
            store,
            instance: None,
            process: None,
            expired: None,
            fields: None,
            input: empty_batch(),
            load: (loaded.kind, loaded.elapsed),
            stats: GuestStats::default(),
            bad_batches: 0,
        };
        g.instantiate()?;
        Ok(g)
    }

    /// The fields the guest asked for instead of payloads.
    pub fn fields(&self) -> Option<&[usize]> {
        self.fields.as_deref()
    }

    /// A fresh store and instance, initialised with the config.
    fn instantiate(&mut self) -> Result<(), BuildError> {
        self.instance = None;
        self.process = None;
        self.expired = None;
        self.store = new_store(&self.engine, &self.label, &self.limits, &self.state);
        self.store.data_mut().at = self.at;
        self.store
            .set_epoch_deadline(engine::deadline_ticks(self.limits.timeout));
        let load = |e: wasmtime::Error| BuildError::Load(format!("cannot instantiate: {e:#}"));
        let instance = self
            .pre
            .instance_pre()
            .instantiate(&mut self.store)
            .map_err(load)?;
        let inst = WeirTransform::new(&mut self.store, &instance).map_err(load)?;
        let process = instance
            .get_export_index(&mut self.store, None, "weir:transform/transform@0.1.0")
            .and_then(|i| instance.get_export_index(&mut self.store, Some(&i), "process"))
            .and_then(|i| instance.get_func(&mut self.store, i))
            .ok_or_else(|| BuildError::Load("no `process` export".into()))?;
        // Checks once that `abi::BatchIn` matches the component's `batch` type.
        process
            .typed::<(BatchIn<'static>,), (wit::Output,)>(&self.store)
            .map_err(load)?;
        let expired = match instance
            .get_export_index(&mut self.store, None, EXPIRY_EXPORT)
            .and_then(|i| instance.get_export_index(&mut self.store, Some(&i), "expired"))
        {
            None => None,
            Some(i) => Some(
                instance
                    .get_func(&mut self.store, i)
                    .ok_or_else(|| BuildError::Load("`expired` is not a function".into()))?
                    .typed(&self.store)
                    .map_err(|e| {
                        BuildError::Load(format!(
                            "`{EXPIRY_EXPORT}.expired` has the wrong type: {e:#}"
                        ))
                    })?,
            ),
        };
        let settings = inst
            .weir_transform_transform()
            .call_init(&mut self.store, &self.config)
            .map_err(|e| {
                let msg = describe(&e, &mut self.store, &self.limits);
                BuildError::Load(format!("init trapped: {msg}"))
            })?
            .map_err(BuildError::Init)?;
        let fields = match settings.fields {
            None => None,
            Some(f) => {
                if let Some(bad) = f
                    .iter()
                    .find(|&&i| i as usize >= crate::snowplow::FIELD_COUNT)
                {
                    return Err(BuildError::Load(format!(
                        "init asked for enriched field {bad}, but there are only {}",
                        crate::snowplow::FIELD_COUNT
                    )));
                }
                Some(f.into_iter().map(|i| i as usize).collect())
            }
        };
        self.fields = fields;
        self.instance = Some(inst);
        self.process = Some(process);
        self.expired = expired;
        Ok(())
    }

    fn rebuild(&mut self) -> Result<(), String> {
        self.stats.rebuilds += 1;
        self.instantiate().map_err(|e| e.to_string())
    }

    /// How long the next batch waits before calling the guest: zero, or the backoff after
    /// batches that gave up (10 ms doubling to 5 s).
    pub fn backoff(&self) -> Duration {
        match self.bad_batches {
            0 => Duration::ZERO,
            n => crate::retry::GUEST.delay(n),
        }
    }

    /// Runs the guest over `records`: outputs in the guest's order, dropped records, and failed
    /// records with their reasons.
    pub fn run(&mut self, mut records: Vec<Record>, read_at_ms: i64) -> Outcome {
        // The guest has been failing batch after batch: do not spin.
        let wait = self.backoff();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let n = records.len();
        let mut col = Collected::default();
        if self.instance.is_none() {
            if let Err(e) = self.rebuild() {
                col.gave_up = Some(format!("transform unavailable: {e}"));
            }
        }
        if col.gave_up.is_none() && n > 0 {
            self.run_range(&records, 0, n, read_at_ms, &mut col);
        }
        if col.gave_up.is_some() {
            self.bad_batches = self.bad_batches.saturating_add(1);
        } else {
            self.bad_batches = 0;
        }
        assemble(&mut records, col)
    }

    fn run_range(
        &mut self,
        records: &[Record],
        lo: usize,
        hi: usize,
        ts: i64,
        col: &mut Collected,
    ) {
        if let Some(reason) = &col.gave_up {
            col.failed
                .extend((lo..hi).map(|i| (i as u32, format!("not processed: {reason}"))));
            return;
        }
        match self.call(&records[lo..hi], ts) {
            Ok(mut out) => {
                out.base = lo as u32;
                col.calls.push(out);
            }
            Err(Failure(msg, refused)) => {
                self.stats.traps += 1;
                if !refused {
                    col.traps += 1;
                }
                if let Err(e) = self.rebuild() {
                    col.gave_up = Some(format!("transform unavailable after a trap: {e}"));
                }
                if hi - lo == 1 {
                    col.failed.push((lo as u32, msg));
                    return;
                }
                if col.gave_up.is_none() && col.traps >= self.limits.max_traps_per_batch {
                    col.gave_up = Some(format!(
                        "the transform failed {} times on this batch \
                         (limits.max_traps_per_batch); last: {msg}",
                        col.traps
                    ));
                }
                let mid = lo + (hi - lo) / 2;
                self.run_range(records, lo, mid, ts, col);
                self.run_range(records, mid, hi, ts, col);
            }
        }
    }

    /// One guest call over `records` (indices in the result are local to the slice).
    fn call(&mut self, records: &[Record], ts: i64) -> Result<CallOut, Failure> {
        let Some(process) = self.process else {
            return Err(Failure::guest("transform unavailable".into()));
        };
        fill_batch(&mut self.input, records, self.fields.as_deref(), ts)?;
        self.stats.calls += 1;
        self.store.data_mut().begin_call();
        self.store
            .set_epoch_deadline(engine::deadline_ticks(self.limits.timeout));
        let input = BatchIn {
            values: PayloadColumn {
                data: if self.fields.is_some() {
                    Payloads::none()
                } else {
                    Payloads::new(records)
                },
                offsets: &self.input.values.offsets,
                absent: &[],
            },
            fields: BytesColumn::of(&self.input.fields),
            keys: BytesColumn::of(&self.input.keys),
            headers: &self.input.headers,
            timestamps: &self.input.timestamps,
        };
        // SAFETY: the types were checked against the component at instantiation.
        let typed: TypedFunc<(BatchIn<'_>,), (wit::Output,)> =
            unsafe { TypedFunc::new_unchecked(process) };
        let res = typed.call(&mut self.store, (input,)).map(|(o,)| o);
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                let refused = self.store.data().refused.is_some();
                self.store.data_mut().drop_writes();
                return Err(Failure(
                    describe(&e, &mut self.store, &self.limits),
                    refused,
                ));
            }
        };
        let parsed =
            check_output(out, records.len(), self.limits.max_output_bytes).map_err(|m| {
                self.store.data_mut().drop_writes();
                Failure::guest(m)
            })?;
        if let Err(e) = self.store.data_mut().commit() {
            let over = e.is::<OverBudget>();
            return Err(Failure(
                format!("cannot store the transform's state: {e:#}"),
                over,
            ));
        }
        Ok(parsed)
    }

    /// Calls the guest's `flush` and returns what it emitted.
    pub fn flush(&mut self) -> Vec<Record> {
        let Some(inst) = &self.instance else {
            return Vec::new();
        };
        self.store.data_mut().begin_call();
        self.store
            .set_epoch_deadline(engine::deadline_ticks(self.limits.timeout));
        match inst.weir_transform_transform().call_flush(&mut self.store) {
            Ok(e) => {
                if let Err(err) = self.store.data_mut().commit() {
                    tracing::error!(
                        transform = &*self.label,
                        "cannot store state after flush: {err:#}"
                    );
                }
                emitted_records(e)
            }
            Err(err) => {
                let msg = describe(&err, &mut self.store, &self.limits);
                tracing::error!(transform = &*self.label, "flush failed: {msg}");
                let _ = self.rebuild();
                Vec::new()
            }
        }
    }

    /// Whether the guest exports `expiry.expired`.
    pub fn hears_expiry(&self) -> bool {
        self.expired.is_some()
    }

    /// Expires the entries of the current state scope whose TTL ran out: takes them a page at a
    /// time ([`EXPIRE_PAGE_KEYS`], [`EXPIRE_PAGE_BYTES`]), calls the guest's `expired` with each
    /// page (if it exports it), commits the call's writes and deletes the expired keys it did not
    /// write again, until none is due or `limits.timeout` is spent (the rest waits for the next
    /// tick). Returns the records the guest emitted.
    pub fn expire(&mut self) -> Vec<Record> {
        let started = Instant::now();
        let max_bytes = (self.limits.max_memory / 8).clamp(64 << 10, EXPIRE_PAGE_BYTES);
        let mut out = Vec::new();
        loop {
            let page =
                match self
                    .state
                    .expired(crate::snowplow::now_ms(), EXPIRE_PAGE_KEYS, max_bytes)
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(
                            transform = &*self.label,
                            "cannot read expired state: {e:#}"
                        );
                        break;
                    }
                };
            if page.is_empty() {
                break;
            }
            let n = page.len();
            self.store.data_mut().begin_call();
            if self.instance.is_none() {
                let _ = self.rebuild();
            }
            if let Some(f) = self.expired {
                self.store
                    .set_epoch_deadline(engine::deadline_ticks(self.limits.timeout));
                let keys = column_of(page.iter().map(|(k, _)| k.as_slice()));
                let values = column_of(page.iter().map(|(_, v)| v.as_slice()));
                match f.call(&mut self.store, (keys, values)) {
                    Ok((e,)) => out.extend(emitted_records(e)),
                    Err(err) => {
                        let msg = describe(&err, &mut self.store, &self.limits);
                        self.store.data_mut().drop_writes();
                        tracing::error!(
                            transform = &*self.label,
                            keys = n,
                            "expired failed: {msg}; the keys are deleted without their records"
                        );
                        metrics::counter!("weir_state_expired_unannounced_total", "transform" => self.label.to_string())
                            .increment(n as u64);
                        let _ = self.rebuild();
                    }
                }
            }
            let host = self.store.data_mut();
            for (k, _) in page {
                if !host.txn.contains_key(&k) {
                    host.txn.insert(
                        k.clone(),
                        Write {
                            key: k,
                            value: None,
                            expires_at_ms: None,
                        },
                    );
                }
            }
            if let Err(e) = host.commit() {
                tracing::error!(
                    transform = &*self.label,
                    "cannot store state after expiry: {e:#}"
                );
                break;
            }
            metrics::counter!("weir_state_expired_keys_total", "transform" => self.label.to_string())
                .increment(n as u64);
            if started.elapsed() >= self.limits.timeout {
                tracing::warn!(
                    transform = &*self.label,
                    "expiry took its time budget (limits.timeout); the rest waits for the next tick"
                );
                break;
            }
        }
        out
    }

    /// Points the guest's state at the scope of input `partition`; the writes of the calls
    /// that follow are tagged with `at` (`None`: not tied to input, e.g. `flush`).
    pub fn select_state(&mut self, partition: &PartitionId, at: Option<At>) -> anyhow::Result<()> {
        let store = self.backend.open(&StateScope {
            transform: self.label.to_string(),
            partition: partition.clone(),
        })?;
        self.state = store.clone();
        self.at = at;
        let host = self.store.data_mut();
        host.store = store;
        host.at = at;
        Ok(())
    }

    /// Runs the guest on a weir batch, in place (see [`crate::transforms::Transform`]). A batch
    /// of one input partition works on that partition's state.
    pub fn process_batch(&mut self, batch: &mut Batch) {
        if let Some(p) = &batch.position {
            let at = At {
                epoch: p.epoch,
                end: p.end,
            };
            if let Err(e) = self.select_state(&p.partition, Some(at)) {
                let reason = format!("cannot open the transform's state: {e:#}");
                for r in std::mem::take(&mut batch.records) {
                    batch
                        .failed
                        .push(Failed::invalid(r, &self.label, reason.clone()));
                }
                return;
            }
        }
        let read_at = batch_time_ms(batch);
        let records = std::mem::take(&mut batch.records);
        let out = self.run(records, read_at);
        batch.records = out.records;
        batch
            .filtered
            .extend(out.filtered.into_iter().map(|(_, r)| r));
        for (_, r, reason) in out.failed {
            batch.failed.push(Failed::invalid(r, &self.label, reason));
        }
    }
}

/// The `expiry` interface the host calls if a transform exports it.
const EXPIRY_EXPORT: &str = "weir:transform/expiry@0.1.0";

/// Items packed as a WIT column.
fn column_of<'a>(items: impl Iterator<Item = &'a [u8]>) -> wit::Column {
    let mut c = empty_column();
    c.offsets.push(0);
    for i in items {
        c.data.extend_from_slice(i);
        c.offsets.push(c.data.len() as u32);
    }
    c
}

fn new_store(
    engine: &Engine,
    label: &Arc<str>,
    limits: &Limits,
    state: &Arc<dyn StateStore>,
) -> Store<HostState> {
    let mut store = Store::new(
        engine,
        HostState::new(
            label.clone(),
            limits.max_memory,
            limits.max_state_key_bytes,
            state.clone(),
            limits.log_lines_per_second,
        ),
    );
    store.limiter(|s| &mut s.memory);
    store.epoch_deadline_trap();
    store
}

/// When the batch was read, in milliseconds since the epoch (the guest's `timestamps`).
pub(crate) fn batch_time_ms(batch: &Batch) -> i64 {
    let now = crate::snowplow::now_ms();
    match batch.created {
        Some(t) => now - t.elapsed().as_millis() as i64,
        None => now,
    }
}

fn empty_column() -> wit::Column {
    wit::Column {
        data: Vec::new(),
        offsets: Vec::new(),
        absent: Vec::new(),
    }
}

fn empty_batch() -> wit::Batch {
    wit::Batch {
        values: empty_column(),
        fields: empty_column(),
        keys: empty_column(),
        headers: Vec::new(),
        timestamps: Vec::new(),
    }
}

fn clear(c: &mut wit::Column) {
    c.data.clear();
    c.offsets.clear();
    c.absent.clear();
}

/// Lays `records` out as the WIT batch, reusing the buffers of the previous batch. Payloads
/// themselves are not copied here: [`abi::Payloads`] lowers them straight into the guest.
fn fill_batch(
    b: &mut wit::Batch,
    records: &[Record],
    fields: Option<&[usize]>,
    ts: i64,
) -> Result<(), Failure> {
    let too_big = || Failure::guest("batch too large for one guest call (over 4 GiB)".into());
    clear(&mut b.values);
    clear(&mut b.fields);
    clear(&mut b.keys);
    b.headers.clear();
    b.timestamps.clear();
    // One entry: every record of a weir batch was read at the same time.
    b.timestamps.push(ts);
    match fields {
        None => {
            b.values.offsets.reserve(records.len() + 1);
            b.values.offsets.push(0);
            let mut end = 0u32;
            for r in records {
                end = u32::try_from(r.value.len())
                    .ok()
                    .and_then(|l| end.checked_add(l))
                    .ok_or_else(too_big)?;
                b.values.offsets.push(end);
            }
        }
        Some(fs) => {
            b.fields.offsets.reserve(records.len() * fs.len() + 1);
            b.fields.offsets.push(0);
            let mut plan = FieldPlan::new(fs);
            for r in records {
                plan.extract(&r.value, &mut b.fields.data, &mut b.fields.offsets);
            }
        }
    }
    if records.iter().any(|r| r.key.is_some()) {
        b.keys.offsets.push(0);
        for (i, r) in records.iter().enumerate() {
            match &r.key {
                Some(k) => b.keys.data.extend_from_slice(k),
                None => b.keys.absent.push(i as u32),
            }
            b.keys.offsets.push(b.keys.data.len() as u32);
        }
    }
    if b.fields.data.len() > u32::MAX as usize || b.keys.data.len() > u32::MAX as usize {
        return Err(too_big());
    }
    Ok(())
}

/// Extracts several enriched fields of a line in one pass from each end (the same result as
/// calling [`crate::snowplow::field`] for each, with half the scanning for neighbours such as
/// `event_vendor` and `event_name`).
struct FieldPlan<'a> {
    ids: &'a [usize],
    /// Tabs needed from the start / from the end.
    front: usize,
    back: usize,
    /// Positions of the first `front` tabs and of the last `back` tabs of the current line
    /// (reused from line to line: no per-line initialisation of 131 slots).
    fwd: Vec<usize>,
    rev: Vec<usize>,
}

/// Fields before this index are found from the start of the line (as `snowplow::field` does).
const FROM_END: usize = 66;

impl<'a> FieldPlan<'a> {
    fn new(ids: &'a [usize]) -> FieldPlan<'a> {
        let n = crate::snowplow::FIELD_COUNT;
        let front = ids
            .iter()
            .filter(|&&i| i < FROM_END)
            .map(|&i| i + 1)
            .max()
            .unwrap_or(0);
        let back = ids
            .iter()
            .filter(|&&i| i >= FROM_END)
            .map(|&i| n - i)
            .max()
            .unwrap_or(0);
        FieldPlan {
            ids,
            front,
            back,
            fwd: Vec::with_capacity(front),
            rev: Vec::with_capacity(back),
        }
    }

    fn extract(&mut self, line: &[u8], data: &mut Vec<u8>, offsets: &mut Vec<u32>) {
        let n = crate::snowplow::FIELD_COUNT;
        self.fwd.clear();
        crate::snowplow::first_tabs(line, self.front, &mut self.fwd);
        self.rev.clear();
        crate::snowplow::last_tabs(line, self.back, &mut self.rev);
        let (fwd, rev) = (&self.fwd, &self.rev);
        let tab = |a: &Vec<usize>, j: usize| a.get(j).copied();
        for &i in self.ids {
            let field: &[u8] = if i < FROM_END {
                let start = if i == 0 {
                    Some(0)
                } else {
                    tab(fwd, i - 1).map(|p| p + 1)
                };
                match start {
                    None => &[],
                    Some(s) => &line[s..tab(fwd, i).unwrap_or(line.len())],
                }
            } else {
                let after = n - 1 - i;
                let end = if after == 0 {
                    Some(line.len())
                } else {
                    tab(rev, after - 1)
                };
                match end {
                    None => &[],
                    Some(e) => &line[tab(rev, after).map_or(0, |p| p + 1)..e],
                }
            };
            data.extend_from_slice(field);
            offsets.push(data.len() as u32);
        }
    }
}

/// The records a guest's `flush` emitted; items whose offsets do not fit the data are skipped.
#[doc(hidden)]
pub fn emitted_records(e: wit::Emitted) -> Vec<Record> {
    let n = e.values.offsets.len().saturating_sub(1);
    let values = Bytes::from(e.values.data);
    let keyed = !e.keys.offsets.is_empty();
    let keys = Bytes::from(e.keys.data);
    (0..n)
        .filter_map(|i| {
            let v = values.get(e.values.offsets[i] as usize..e.values.offsets[i + 1] as usize)?;
            let key = if keyed && e.keys.absent.binary_search(&(i as u32)).is_err() {
                let r = e.keys.offsets.get(i)?..e.keys.offsets.get(i + 1)?;
                keys.get(*r.start as usize..*r.end as usize)
                    .map(|k| keys.slice_ref(k))
            } else {
                None
            };
            Some(Record {
                value: values.slice_ref(v),
                key,
                meta: None,
            })
        })
        .collect()
}

/// The host's checks of what `process` calls returned, then the batch's outcome, as
/// [`Guest::run`] does after its calls, without a guest: `calls` holds, for disjoint ranges
/// `lo..hi` of `inputs` in order, what the call over that range returned; a call whose output
/// fails the checks fails its inputs with the reason (as a trap on one record does). The entry
/// point of the guest-output fuzz target (runtime/fuzz).
///
/// # Panics
/// If the ranges are not disjoint, ascending and within `inputs`.
#[doc(hidden)]
pub fn check_and_assemble(
    inputs: &mut [Record],
    calls: Vec<(usize, usize, wit::Output)>,
    max_output_bytes: usize,
) -> Outcome {
    let mut col = Collected::default();
    let mut next = 0;
    for (lo, hi, out) in calls {
        assert!(
            next <= lo && lo <= hi && hi <= inputs.len(),
            "bad call ranges"
        );
        next = hi;
        match check_output(out, hi - lo, max_output_bytes) {
            Ok(mut c) => {
                c.base = lo as u32;
                col.calls.push(c);
            }
            Err(m) => col.failed.extend((lo..hi).map(|i| (i as u32, m.clone()))),
        }
    }
    assemble(inputs, col)
}

/// Checks a column that must be omitted or hold `m` items.
fn check_column(c: &wit::Column, m: usize, what: &str) -> Result<bool, String> {
    if c.offsets.is_empty() {
        return Ok(false);
    }
    if c.offsets.len() != m + 1 {
        return Err(format!(
            "invalid output: {what} has {} items for {m} output records",
            c.offsets.len() - 1
        ));
    }
    if c.offsets[0] != 0
        || c.offsets.windows(2).any(|w| w[0] > w[1])
        || c.offsets[m] as usize > c.data.len()
    {
        return Err(format!(
            "invalid output: {what} offsets are not ascending within the data"
        ));
    }
    if c.absent.windows(2).any(|w| w[0] >= w[1])
        || c.absent.last().is_some_and(|&a| a as usize >= m)
    {
        return Err(format!(
            "invalid output: {what}.absent is not ascending within range"
        ));
    }
    Ok(true)
}

/// Validates a guest's output (indices in range, columns well-formed, size within the limit).
fn check_output(out: wit::Output, n: usize, max_bytes: usize) -> Result<CallOut, String> {
    let m = out.sources.len();
    let bytes = out.values.data.len() + out.keys.data.len();
    if bytes > max_bytes {
        return Err(format!(
            "output of {bytes} bytes refused: more than limits.max_output_bytes ({max_bytes})"
        ));
    }
    if let Some(s) = out.sources.iter().find(|&&s| s as usize >= n) {
        return Err(format!(
            "invalid output: source {s} out of range for a batch of {n}"
        ));
    }
    if let Some(e) = out.errors.iter().find(|e| e.index as usize >= n) {
        return Err(format!(
            "invalid output: error for record {} out of range for a batch of {n}",
            e.index
        ));
    }
    let col = |c: wit::Column, what: &str| -> Result<Option<Col>, String> {
        Ok(check_column(&c, m, what)?.then(|| Col {
            data: Bytes::from(c.data),
            offsets: c.offsets,
            absent: c.absent,
        }))
    };
    Ok(CallOut {
        base: 0,
        sources: out.sources,
        values: col(out.values, "values")?,
        keys: col(out.keys, "keys")?,
        errors: out
            .errors
            .into_iter()
            .map(|e| (e.index, e.message))
            .collect(),
    })
}

/// The common case of a filter: one clean call, outputs in input order, each input at most
/// once, payloads and keys kept. Moves the records, like a built-in filter.
fn assemble_filter(inputs: &mut [Record], col: &Collected) -> Option<Outcome> {
    let [c] = col.calls.as_slice() else {
        return None;
    };
    if !col.failed.is_empty()
        || !c.errors.is_empty()
        || c.values.is_some()
        || c.keys.is_some()
        || c.sources.windows(2).any(|w| w[0] >= w[1])
    {
        return None;
    }
    let mut records = Vec::with_capacity(c.sources.len());
    let mut filtered = Vec::with_capacity(inputs.len() - c.sources.len());
    let mut next = 0usize;
    for &s in &c.sources {
        let s = s as usize;
        for (i, r) in inputs.iter_mut().enumerate().take(s).skip(next) {
            filtered.push((i, std::mem::take(r)));
        }
        records.push(std::mem::take(&mut inputs[s]));
        next = s + 1;
    }
    for (i, r) in inputs.iter_mut().enumerate().skip(next) {
        filtered.push((i, std::mem::take(r)));
    }
    Some(Outcome {
        records,
        sources: c.sources.iter().map(|&s| s as usize).collect(),
        filtered,
        failed: Vec::new(),
    })
}

/// Item `j` of an output column, `None` if the column is omitted or the item absent (inherit).
#[inline]
fn item(c: &Option<Col>, cursor: &mut usize, j: usize) -> Option<Bytes> {
    let c = c.as_ref()?;
    if c.absent.get(*cursor).is_some_and(|&a| a as usize == j) {
        *cursor += 1;
        return None;
    }
    Some(
        c.data
            .slice(c.offsets[j] as usize..c.offsets[j + 1] as usize),
    )
}

/// Builds the outcome: outputs in order (moving input records where possible, so a filter
/// copies nothing), then dropped and failed inputs.
fn assemble(inputs: &mut [Record], mut col: Collected) -> Outcome {
    if let Some(out) = assemble_filter(inputs, &col) {
        return out;
    }
    let n = inputs.len();
    let mut failed = vec![false; n];
    let mut reasons: Vec<(u32, String)> = Vec::new();
    let errors = col
        .calls
        .iter_mut()
        .flat_map(|c| {
            let base = c.base;
            std::mem::take(&mut c.errors)
                .into_iter()
                .map(move |(i, m)| (i + base, m))
        })
        .chain(col.failed);
    for (i, m) in errors {
        if !std::mem::replace(&mut failed[i as usize], true) {
            reasons.push((i, m));
        }
    }
    // Outputs per input; u32::MAX once the input has been used up.
    let mut refs = vec![0u32; n];
    for c in &col.calls {
        for &s in &c.sources {
            refs[(s + c.base) as usize] += 1;
        }
    }
    let total: usize = col.calls.iter().map(|c| c.sources.len()).sum();
    let mut records = Vec::with_capacity(total);
    let mut sources = Vec::with_capacity(total);
    for c in &col.calls {
        let (mut vc, mut kc) = (0, 0);
        for (j, &s) in c.sources.iter().enumerate() {
            let s = (s + c.base) as usize;
            let v = item(&c.values, &mut vc, j);
            let k = item(&c.keys, &mut kc, j);
            if failed[s] {
                continue;
            }
            refs[s] -= 1;
            let last = refs[s] == 0;
            let rec = match (v, k) {
                (None, None) if last => std::mem::take(&mut inputs[s]),
                (v, k) => Record {
                    value: v.unwrap_or_else(|| inputs[s].value.clone()),
                    key: k.or_else(|| inputs[s].key.clone()),
                    // Outputs keep their input's origin (topic, partition, offset, headers).
                    meta: inputs[s].meta.clone(),
                },
            };
            if last {
                refs[s] = u32::MAX;
            }
            records.push(rec);
            sources.push(s);
        }
    }
    let mut filtered = Vec::new();
    for (i, r) in inputs.iter_mut().enumerate() {
        if !failed[i] && refs[i] == 0 {
            filtered.push((i, std::mem::take(r)));
        }
    }
    reasons.sort_by_key(|r| r.0);
    let failed = reasons
        .into_iter()
        .map(|(i, m)| (i as usize, std::mem::take(&mut inputs[i as usize]), m))
        .collect();
    Outcome {
        records,
        sources,
        filtered,
        failed,
    }
}

/// A trap as a failure reason: what the guest said, what stopped it, and where it was.
fn describe(e: &wasmtime::Error, store: &mut Store<HostState>, limits: &Limits) -> String {
    let data = store.data_mut();
    let mut msg = if let Some(r) = data.refused.take() {
        // The host refused a state call (a limit): that is the reason, not the trap it caused.
        return r;
    } else if let Some(p) = data.panic.take() {
        format!("guest {p}")
    } else if let Some(asked) = data.memory.exceeded.take() {
        format!(
            "guest exceeded its memory limit of {} bytes (limits.max_memory; asked for {asked})",
            limits.max_memory
        )
    } else {
        match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => format!(
                "guest exceeded its time limit of {:?} for one batch (limits.timeout)",
                limits.timeout
            ),
            Some(wasmtime::Trap::StackOverflow) => format!(
                "guest overflowed its stack of {} bytes (limits.max_stack)",
                limits.max_stack
            ),
            Some(t) => format!("guest trapped: {t}"),
            None => format!("guest failed: {}", e.root_cause()),
        }
    };
    if let Some(bt) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
        msg.push_str(&backtrace(bt));
    }
    msg
}

/// The guest backtrace, one frame a line (demangled, hashes dropped), runs of the same frame
/// (recursion) collapsed, at most 24 lines.
fn backtrace(bt: &wasmtime::WasmBacktrace) -> String {
    let text = bt.to_string();
    let mut frames: Vec<(String, usize)> = Vec::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with("note:") || line.starts_with("at ") {
            continue;
        }
        // "  3: 0x1a2b - module!crate::func::h0123456789abcdef"
        let func = line.split_once(" - ").map_or(line, |(_, f)| f);
        let func = tidy(strip_hash(func.split_once('!').map_or(func, |(_, f)| f)));
        // The panic machinery on top of a panic says nothing the message does not.
        if frames.is_empty() && is_panic_machinery(&func) {
            continue;
        }
        match frames.last_mut() {
            Some((f, n)) if *f == func => *n += 1,
            _ => frames.push((func, 1)),
        }
    }
    if frames.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nguest backtrace:");
    for (i, (f, n)) in frames.iter().take(24).enumerate() {
        out.push_str(&format!("\n  {i}: {f}"));
        if *n > 1 {
            out.push_str(&format!(" (× {n})"));
        }
    }
    if frames.len() > 24 {
        out.push_str(&format!("\n  … {} more", frames.len() - 24));
    }
    out
}

/// `a::b::h0123456789abcdef` → `a::b`.
fn strip_hash(f: &str) -> &str {
    match f.rsplit_once("::h") {
        Some((head, h)) if h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()) => head,
        _ => f,
    }
}

/// Drops v0-mangling crate disambiguators: `std[a543996e6e7dbf1e]::x` → `std::x`.
fn tidy(f: &str) -> String {
    let mut out = String::with_capacity(f.len());
    let mut rest = f;
    while let Some(i) = rest.find('[') {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        match tail.find(']') {
            Some(j) if tail[1..j].bytes().all(|b| b.is_ascii_hexdigit()) && j > 1 => {
                rest = &tail[j + 1..]
            }
            _ => {
                out.push('[');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_panic_machinery(f: &str) -> bool {
    [
        "rust_panic",
        "panicking::",
        "rust_begin_unwind",
        "__rust_end_short_backtrace",
        "panic_fmt",
        "abort",
    ]
    .iter()
    .any(|p| f.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_plan_matches_snowplow_field() {
        let full: Vec<String> = (0..131).map(|i| format!("f{i}")).collect();
        let full = full.join("\t");
        let lines: Vec<&[u8]> = vec![full.as_bytes(), b"", b"a", b"a\tb\tc", b"\t\t\t"];
        let id_sets: Vec<Vec<usize>> = vec![
            vec![125, 126],
            vec![0, 6, 65, 66, 130],
            (0..131).collect(),
            vec![126, 125, 6],
        ];
        for ids in &id_sets {
            let mut plan = FieldPlan::new(ids);
            for line in &lines {
                let (mut data, mut offsets) = (Vec::new(), vec![0u32]);
                plan.extract(line, &mut data, &mut offsets);
                for (j, &i) in ids.iter().enumerate() {
                    let got = &data[offsets[j] as usize..offsets[j + 1] as usize];
                    assert_eq!(
                        got,
                        crate::snowplow::field(line, i),
                        "field {i} of {line:?}"
                    );
                }
            }
        }
    }
}
