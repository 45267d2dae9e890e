//! Engines, the epoch ticker, and loading (compiling or fetching from cache) transforms.

use anyhow::Context as _;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache;

/// How often the epoch advances: the granularity of per-call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instances the pooling allocator holds at once per engine (each is one transform in one
/// worker, plus the short-lived ones `weir validate` builds).
const POOL_INSTANCES: u32 = 128;

static ENGINES: OnceLock<Mutex<HashMap<usize, Engine>>> = OnceLock::new();

/// The engine for transforms with this wasm stack limit (engines are shared: one per distinct
/// stack limit, since wasmtime sets the stack limit per engine).
pub fn engine(max_stack: usize) -> anyhow::Result<Engine> {
    let engines = ENGINES.get_or_init(|| {
        start_ticker();
        Mutex::new(HashMap::new())
    });
    let mut map = engines.lock().expect("the engine map lock poisoned");
    if let Some(e) = map.get(&max_stack) {
        return Ok(e.clone());
    }
    let e = match Engine::new(&engine_config(max_stack, true)) {
        Ok(e) => e,
        Err(err) => {
            // The pool reserves its address space up front; where that is refused (a `ulimit
            // -v`, valgrind), allocate instances on demand instead.
            tracing::warn!(
                "wasm: pooling allocator unavailable ({err:#}); allocating instances on demand"
            );
            Engine::new(&engine_config(max_stack, false))?
        }
    };
    map.insert(max_stack, e.clone());
    Ok(e)
}

fn engine_config(max_stack: usize, pooling: bool) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(POOL_INSTANCES * 4)
        .total_memories(POOL_INSTANCES)
        .total_tables(POOL_INSTANCES * 2)
        .max_memories_per_module(1)
        .max_tables_per_module(2)
        .max_core_instances_per_component(16)
        .max_component_instance_size(1 << 20)
        .max_unused_warm_slots(POOL_INSTANCES / 4)
        // Memory beyond what a transform is allowed is refused by our ResourceLimiter; the
        // pool's own ceiling is the 4 GiB of a 32-bit memory.
        .max_memory_size(1 << 32);
    let mut c = Config::new();
    c.allocation_strategy(if pooling {
        InstanceAllocationStrategy::Pooling(pool)
    } else {
        InstanceAllocationStrategy::OnDemand
    })
    .epoch_interruption(true)
    .max_wasm_stack(max_stack)
    .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(64))
    .wasm_backtrace_details(wasmtime::WasmBacktraceDetails::Disable)
    .wasm_component_model(true)
    .cranelift_opt_level(wasmtime::OptLevel::Speed);
    c
}

/// Advances the epoch of every engine every [`EPOCH_TICK`], forever (a daemon thread).
fn start_ticker() {
    let _ = std::thread::Builder::new()
        .name("weir-wasm-epoch".into())
        .spawn(|| loop {
            std::thread::sleep(EPOCH_TICK);
            if let Some(engines) = ENGINES.get() {
                let map = engines.lock().expect("the engine map lock poisoned");
                for e in map.values() {
                    e.increment_epoch();
                }
            }
        });
}

/// The epoch deadline (in ticks) that stops a call after at least `timeout`, and at most one
/// tick more.
pub fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()) as u64).max(1) + 1
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Already loaded by this process.
    Memory,
    /// Read from the on-disk cache.
    Cached,
    /// Compiled now (and written to the cache).
    Compiled,
}

/// A loaded transform.
#[derive(Clone)]
pub struct Loaded {
    pub component: Component,
    pub kind: LoadKind,
    /// Time spent compiling or deserialising.
    pub elapsed: Duration,
    pub hash: [u8; 32],
}

type MemKey = ([u8; 32], usize);
static LOADED: OnceLock<Mutex<HashMap<MemKey, Component>>> = OnceLock::new();

/// Forgets the components this process loaded, so the next [`load`] reads the disk cache (for
/// measuring cached loads, as after a restart).
pub fn forget_loaded() {
    if let Some(m) = LOADED.get() {
        m.lock().expect("the engine map lock poisoned").clear();
    }
}

/// Loads the transform at `path` for `engine`: from this process's memory, else from the disk
/// cache in `cache_dir`, else by compiling it (and caching the result). A core module with an
/// embedded WIT world (as `cargo build --target wasm32-unknown-unknown` makes with the SDK) is
/// turned into a component first.
pub fn load(
    engine: &Engine,
    max_stack: usize,
    path: &Path,
    cache_dir: &Path,
) -> anyhow::Result<Loaded> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    load_bytes(engine, max_stack, &bytes, cache_dir)
}

/// [`load`] for bytes in memory.
pub fn load_bytes(
    engine: &Engine,
    max_stack: usize,
    bytes: &[u8],
    cache_dir: &Path,
) -> anyhow::Result<Loaded> {
    let t = Instant::now();
    let hash = cache::content_hash(bytes);
    let mem = LOADED.get_or_init(Default::default);
    if let Some(c) = mem
        .lock()
        .expect("the memory lock poisoned")
        .get(&(hash, max_stack))
    {
        return Ok(Loaded {
            component: c.clone(),
            kind: LoadKind::Memory,
            elapsed: t.elapsed(),
            hash,
        });
    }
    // Nothing is read from (or written to) a directory another user could write to.
    cache::check_dir(cache_dir)?;
    let entry = cache::entry_path(cache_dir, &hash, engine);
    let mut kind = LoadKind::Compiled;
    let mut component = None;
    if entry.exists() || entry.is_symlink() {
        match cache::check_entry(&entry) {
            // SAFETY: the cache directory was just checked to be private to this user, and the
            // entry to be a regular file of ours that no one else can write: it holds what this
            // host serialised (named by content hash and engine compatibility hash); a file that
            // does not load is compiled again below.
            Ok(()) => match unsafe { Component::deserialize_file(engine, &entry) } {
                Ok(c) => {
                    component = Some(c);
                    kind = LoadKind::Cached;
                }
                Err(e) => {
                    tracing::warn!("ignoring unusable cache entry {}: {e:#}", entry.display())
                }
            },
            Err(why) => tracing::warn!(
                "not loading cache entry {} ({why}); compiling again",
                entry.display()
            ),
        }
    }
    let component = match component {
        Some(c) => c,
        None => {
            let wasm = componentize(bytes)?;
            let c = Component::new(engine, &wasm)
                .map_err(|e| anyhow::anyhow!("not a valid transform: {e:#}"))?;
            match c.serialize() {
                Ok(ser) => {
                    if let Err(e) = cache::store(&entry, &ser) {
                        tracing::warn!(
                            "cannot cache compiled transform in {}: {e}",
                            entry.display()
                        );
                    }
                }
                Err(e) => tracing::warn!("cannot serialise compiled transform: {e:#}"),
            }
            c
        }
    };
    mem.lock()
        .expect("the memory lock poisoned")
        .insert((hash, max_stack), component.clone());
    Ok(Loaded {
        component,
        kind,
        elapsed: t.elapsed(),
        hash,
    })
}

/// A component as is; a core module with an embedded `component-type` section encoded as a
/// component (no WASI adapter: a module that imports WASI is refused).
pub fn componentize(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    // Header: b"\0asm", then version 1 for a core module, or 0x0d + layer 1 for a component.
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => {}
        Some([0, b'a', b's', b'm', _, _, 1, 0]) => return Ok(bytes.to_vec()),
        _ => anyhow::bail!("not a WebAssembly module or component (bad header)"),
    }
    wit_component::ComponentEncoder::default()
        .module(bytes)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot make a component of this core module (was it built with the weir \
                 transform SDK or wit-bindgen for the weir:transform world?): {e:#}"
            )
        })
}
