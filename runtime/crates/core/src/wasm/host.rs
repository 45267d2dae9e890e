//! What a guest may call (the WIT `state` and `host` imports), and the per-store limits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::bindings::weir::transform::{host, state, types};
use crate::snowplow::now_ms;
use crate::state::{At, StateStore, Write};

/// Longest guest log line or panic message kept (longer ones are cut).
const MAX_MESSAGE: usize = 4096;

/// The data of one guest's store.
pub struct HostState {
    pub(crate) label: Arc<str>,
    pub(crate) memory: MemoryLimiter,
    pub(crate) store: Arc<dyn StateStore>,
    /// The input position the current call processes (its writes are tagged with it).
    pub(crate) at: Option<At>,
    /// Writes of the current guest call, committed only if it succeeds.
    pub(crate) txn: HashMap<Vec<u8>, Write>,
    pub(crate) log: LogLimiter,
    /// What the guest said just before it trapped.
    pub(crate) panic: Option<String>,
}

impl HostState {
    pub(crate) fn new(
        label: Arc<str>,
        max_memory: usize,
        store: Arc<dyn StateStore>,
        log_lines_per_second: u32,
    ) -> HostState {
        HostState {
            label,
            memory: MemoryLimiter {
                max: max_memory,
                exceeded: None,
            },
            store,
            at: None,
            txn: HashMap::new(),
            log: LogLimiter::new(log_lines_per_second),
            panic: None,
        }
    }

    /// Forgets what a previous call left behind.
    pub(crate) fn begin_call(&mut self) {
        self.txn.clear();
        self.panic = None;
        self.memory.exceeded = None;
    }

    /// Commits the state writes of a successful call.
    pub(crate) fn commit(&mut self) -> anyhow::Result<()> {
        if self.txn.is_empty() {
            return Ok(());
        }
        let writes: Vec<Write> = self.txn.drain().map(|(_, w)| w).collect();
        self.store.commit(writes, self.at, now_ms())
    }

    fn read(&self, key: &[u8], now: i64) -> anyhow::Result<Option<Vec<u8>>> {
        match self.txn.get(key) {
            Some(w) => Ok(w
                .value
                .clone()
                .filter(|_| w.expires_at_ms.is_none_or(|e| e > now))),
            None => self.store.get(key, now),
        }
    }

    fn write(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
        now: i64,
    ) -> wasmtime::Result<()> {
        let size = key.len() + value.as_ref().map_or(0, Vec::len);
        wasmtime::ensure!(
            size <= MAX_ENTRY_BYTES,
            "state: an entry of {size} bytes (key + value) is over the limit of {MAX_ENTRY_BYTES}"
        );
        let expires_at_ms = ttl_ms.map(|t| now.saturating_add(t.min(i64::MAX as u64) as i64));
        self.txn.insert(
            key.clone(),
            Write {
                key,
                value,
                expires_at_ms,
            },
        );
        Ok(())
    }
}

/// The largest state entry (key + value) a guest may write: a durable backend appends entries
/// to a Kafka changelog, whose messages are limited to about 1 MB by default.
pub const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// Refuses memory growth past the transform's cap: the guest traps at once (with this
/// message) instead of limping on with failed allocations.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    /// Set when the guest asked for more than `max` (bytes asked for).
    pub(crate) exceeded: Option<usize>,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max {
            self.exceeded = Some(desired);
            wasmtime::bail!(
                "guest exceeded its memory limit of {} bytes (asked for {desired})",
                self.max
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A token bucket for guest log lines: a burst of `10 × rate`, refilled at `rate` per second.
/// Lines over the limit are counted and reported with the next line that gets through.
pub(crate) struct LogLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    pub(crate) suppressed: u64,
}

impl LogLimiter {
    fn new(rate: u32) -> LogLimiter {
        let rate = f64::from(rate);
        LogLimiter {
            rate,
            burst: rate * 10.0,
            tokens: rate * 10.0,
            last: Instant::now(),
            suppressed: 0,
        }
    }

    /// Whether a line may be written now.
    fn admit(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn column(c: &types::Column) -> Vec<&[u8]> {
    let n = c.offsets.len().saturating_sub(1);
    (0..n)
        .map(|i| {
            let (a, b) = (c.offsets[i] as usize, c.offsets[i + 1] as usize);
            c.data.get(a..b).unwrap_or(&[])
        })
        .collect()
}

fn is_absent(c: &types::Column, i: usize) -> bool {
    c.absent.binary_search(&(i as u32)).is_ok()
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read(&key, now_ms())
            .map_err(wasmtime::Error::from_anyhow)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        self.write(key, Some(value), ttl_ms, now_ms())
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.write(key, None, None, now_ms())
    }

    fn get_many(&mut self, keys: types::Column) -> wasmtime::Result<types::Column> {
        let now = now_ms();
        let ks = column(&keys);
        // Keys written during this call are answered from the call's own writes.
        let from_store: Vec<&[u8]> = ks
            .iter()
            .copied()
            .filter(|k| !self.txn.contains_key(*k))
            .collect();
        let mut stored = self
            .store
            .get_many(&from_store, now)
            .map_err(wasmtime::Error::from_anyhow)?
            .into_iter();
        let mut out = types::Column {
            data: Vec::new(),
            offsets: Vec::with_capacity(ks.len() + 1),
            absent: Vec::new(),
        };
        out.offsets.push(0);
        for (i, k) in ks.iter().enumerate() {
            let v = if self.txn.contains_key(*k) {
                self.read(k, now).map_err(wasmtime::Error::from_anyhow)?
            } else {
                stored.next().flatten()
            };
            match v {
                Some(v) => out.data.extend_from_slice(&v),
                None => out.absent.push(i as u32),
            }
            out.offsets.push(out.data.len() as u32);
        }
        Ok(out)
    }

    fn put_many(
        &mut self,
        keys: types::Column,
        values: types::Column,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        let now = now_ms();
        let ks = column(&keys);
        let vs = column(&values);
        wasmtime::ensure!(
            ks.len() == vs.len(),
            "put-many: {} keys but {} values",
            ks.len(),
            vs.len()
        );
        for (i, (k, v)) in ks.iter().zip(&vs).enumerate() {
            let value = (!is_absent(&values, i)).then(|| v.to_vec());
            self.write(k.to_vec(), value, ttl_ms, now)?;
        }
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: types::Level, message: String) -> wasmtime::Result<()> {
        if !self.log.admit() {
            return Ok(());
        }
        let message = cut(message);
        let suppressed = std::mem::take(&mut self.log.suppressed);
        let t = &*self.label;
        macro_rules! emit {
            ($lvl:expr) => {
                if suppressed > 0 {
                    tracing::event!(target: "weir::wasm::guest", $lvl, transform = t, suppressed, "{message}")
                } else {
                    tracing::event!(target: "weir::wasm::guest", $lvl, transform = t, "{message}")
                }
            };
        }
        match level {
            types::Level::Trace => emit!(tracing::Level::TRACE),
            types::Level::Debug => emit!(tracing::Level::DEBUG),
            types::Level::Info => emit!(tracing::Level::INFO),
            types::Level::Warn => emit!(tracing::Level::WARN),
            types::Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }

    fn now_ms(&mut self) -> wasmtime::Result<i64> {
        Ok(now_ms())
    }

    fn panicking(&mut self, message: String) -> wasmtime::Result<()> {
        self.panic = Some(cut(message));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemoryBackend, StateBackend, StateScope};
    use state::Host as _;

    #[test]
    fn an_entry_over_the_limit_traps_the_call() {
        let store = MemoryBackend::new()
            .open(&StateScope::unpartitioned("t"))
            .unwrap();
        let mut h = HostState::new("t".into(), 1 << 20, store, 10);
        h.begin_call();
        h.put(b"k".to_vec(), vec![0; MAX_ENTRY_BYTES - 1], None)
            .unwrap();
        let e = h
            .put(b"k".to_vec(), vec![0; MAX_ENTRY_BYTES], None)
            .unwrap_err();
        assert!(e.to_string().contains("over the limit"), "{e}");
    }

    #[test]
    fn a_call_sees_its_own_writes_and_only_a_commit_keeps_them() {
        let store = MemoryBackend::new()
            .open(&StateScope::unpartitioned("t"))
            .unwrap();
        let mut h = HostState::new("t".into(), 1 << 20, store.clone(), 10);
        h.begin_call();
        h.put(b"k".to_vec(), b"v".to_vec(), None).unwrap();
        assert_eq!(h.get(b"k".to_vec()).unwrap(), Some(b"v".to_vec()));
        let keys = types::Column {
            data: b"kx".to_vec(),
            offsets: vec![0, 1, 2],
            absent: vec![],
        };
        let got = h.get_many(keys).unwrap();
        assert_eq!((got.data, got.absent), (b"v".to_vec(), vec![1]));
        assert_eq!(store.get(b"k", 0).unwrap(), None, "not committed yet");
        // The call trapped: its writes are dropped.
        h.begin_call();
        assert_eq!(h.get(b"k".to_vec()).unwrap(), None);
        // A call that succeeds commits.
        h.put(b"k".to_vec(), b"w".to_vec(), Some(60_000)).unwrap();
        h.commit().unwrap();
        assert_eq!(store.get(b"k", now_ms()).unwrap(), Some(b"w".to_vec()));
        assert_eq!(store.get(b"k", now_ms() + 61_000).unwrap(), None, "expired");
    }

    #[test]
    fn log_lines_are_rate_limited() {
        let mut l = LogLimiter::new(2);
        let admitted = (0..100).filter(|_| l.admit()).count();
        assert_eq!(admitted, 20, "burst of 10 × rate");
        assert_eq!(l.suppressed, 80);
    }
}
