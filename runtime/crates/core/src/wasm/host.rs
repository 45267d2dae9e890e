//! What a guest may call (the WIT `state` and `host` imports), and the per-store limits.
//!
//! Nothing a guest passes to a state call makes the host hold more than the guest itself could:
//! columns are validated (offsets ascending within the data, so no two items share bytes), every
//! key is capped (`limits.max_state_key_bytes`), a `get-many` answer may hold no more than the
//! guest's memory has room for (`limits.max_memory` minus what its memory already takes) and
//! is refused before it is built, and the writes one call keeps pending may hold no more than
//! `limits.max_memory`. A refusal traps the call with the reason (see [`HostState::refused`]): the
//! records of the batch are isolated by bisection and the one that asked fails with it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::bindings::weir::transform::{host, state, types};
use crate::snowplow::now_ms;
use crate::state::{At, StateStore, TooLarge, Write};

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
    /// Why the host refused a state call of the current guest call (a limit): it trapped.
    pub(crate) refused: Option<String>,
    /// The longest key a state call may name.
    pub(crate) max_key: usize,
    /// Bytes of the writes in `txn` (keys and values).
    txn_bytes: usize,
}

impl HostState {
    pub(crate) fn new(
        label: Arc<str>,
        max_memory: usize,
        max_key: usize,
        store: Arc<dyn StateStore>,
        log_lines_per_second: u32,
    ) -> HostState {
        HostState {
            label,
            memory: MemoryLimiter {
                max: max_memory,
                size: 0,
                exceeded: None,
            },
            store,
            at: None,
            txn: HashMap::new(),
            log: LogLimiter::new(log_lines_per_second),
            panic: None,
            refused: None,
            max_key,
            txn_bytes: 0,
        }
    }

    /// Forgets what a previous call left behind.
    pub(crate) fn begin_call(&mut self) {
        self.drop_writes();
        self.panic = None;
        self.refused = None;
        self.memory.exceeded = None;
    }

    /// Drops the writes of a failed call.
    pub(crate) fn drop_writes(&mut self) {
        self.txn.clear();
        self.txn_bytes = 0;
    }

    /// Commits the state writes of a successful call.
    pub(crate) fn commit(&mut self) -> anyhow::Result<()> {
        if self.txn.is_empty() {
            return Ok(());
        }
        self.txn_bytes = 0;
        let writes: Vec<Write> = self.txn.drain().map(|(_, w)| w).collect();
        self.store.commit(writes, self.at, now_ms())
    }

    /// Refuses the state call: the guest traps, and the reason is the record's failure.
    fn refuse(&mut self, reason: String) -> wasmtime::Error {
        self.refused = Some(reason.clone());
        wasmtime::Error::msg(reason)
    }

    fn check_key(&mut self, call: &str, key: &[u8]) -> wasmtime::Result<()> {
        if key.len() > self.max_key {
            return Err(self.refuse(format!(
                "state: {call} with a key of {} bytes refused: over the limit of {} \
                 (limits.max_state_key_bytes)",
                key.len(),
                self.max_key
            )));
        }
        Ok(())
    }

    /// The items of a column a guest passed to `call`, validated.
    fn items<'c>(
        &mut self,
        call: &str,
        what: &str,
        c: &'c types::Column,
    ) -> wasmtime::Result<Vec<&'c [u8]>> {
        match column(c) {
            Ok(items) => Ok(items),
            Err(e) => Err(self.refuse(format!("state: {call} refused: {what} {e}"))),
        }
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

    /// Checks a write before anything of it is copied.
    fn check_write(
        &mut self,
        call: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> wasmtime::Result<()> {
        self.check_key(call, key)?;
        let size = key.len() + value.map_or(0, <[u8]>::len);
        if size > MAX_ENTRY_BYTES {
            return Err(self.refuse(format!(
                "state: an entry of {size} bytes (key + value) is over the limit of {MAX_ENTRY_BYTES}"
            )));
        }
        let replaced = self.txn.get(key).map_or(0, Write::bytes);
        let pending = self.txn_bytes - replaced + size;
        if pending > self.memory.max {
            return Err(self.refuse(format!(
                "state: {call} refused: the writes of this call would hold {pending} bytes, more \
                 than the transform's memory limit of {} bytes (limits.max_memory)",
                self.memory.max
            )));
        }
        Ok(())
    }

    fn write(&mut self, key: &[u8], value: Option<&[u8]>, ttl_ms: Option<u64>, now: i64) {
        let expires_at_ms = ttl_ms.map(|t| now.saturating_add(t.min(i64::MAX as u64) as i64));
        let w = Write {
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            expires_at_ms,
        };
        self.txn_bytes += w.bytes();
        if let Some(old) = self.txn.insert(w.key.clone(), w) {
            self.txn_bytes -= old.bytes();
        }
    }
}

/// The largest state entry (key + value) a guest may write: a durable backend appends entries
/// to a Kafka changelog, whose messages are limited to about 1 MB by default.
pub const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// Refuses memory growth past the transform's cap: the guest traps at once (with this
/// message) instead of limping on with failed allocations.
pub(crate) struct MemoryLimiter {
    pub(crate) max: usize,
    /// The size the guest's memory has grown to (the largest, if it has several).
    pub(crate) size: usize,
    /// Set when the guest asked for more than `max` (bytes asked for).
    pub(crate) exceeded: Option<usize>,
}

impl MemoryLimiter {
    /// Bytes the guest's memory may still grow by.
    pub(crate) fn room(&self) -> usize {
        self.max.saturating_sub(self.size)
    }
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
        self.size = self.size.max(desired);
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

/// The items of a column, if it is well-formed: offsets start at 0 and ascend within the data
/// (so items never overlap and together hold at most the data), `absent` ascends within range.
/// No offsets at all: no items.
fn column(c: &types::Column) -> Result<Vec<&[u8]>, String> {
    let Some((&first, _)) = c.offsets.split_first() else {
        return Ok(Vec::new());
    };
    let n = c.offsets.len() - 1;
    if first != 0 {
        return Err(format!("offsets start at {first}, not 0"));
    }
    if let Some(w) = c.offsets.windows(2).find(|w| w[0] > w[1]) {
        return Err(format!("offsets go down ({} then {})", w[0], w[1]));
    }
    if c.offsets[n] as usize > c.data.len() {
        return Err(format!(
            "offsets end at {}, past the {} bytes of data",
            c.offsets[n],
            c.data.len()
        ));
    }
    if c.absent.windows(2).any(|w| w[0] >= w[1])
        || c.absent.last().is_some_and(|&a| a as usize >= n)
    {
        return Err(format!("absent is not ascending within the {n} items"));
    }
    Ok(c.offsets
        .windows(2)
        .map(|w| &c.data[w[0] as usize..w[1] as usize])
        .collect())
}

fn is_absent(c: &types::Column, i: usize) -> bool {
    c.absent.binary_search(&(i as u32)).is_ok()
}

impl types::Host for HostState {}

impl state::Host for HostState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.check_key("get", &key)?;
        self.read(&key, now_ms())
            .map_err(wasmtime::Error::from_anyhow)
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        self.check_write("put", &key, Some(&value))?;
        self.write(&key, Some(&value), ttl_ms, now_ms());
        Ok(())
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        self.check_write("delete", &key, None)?;
        self.write(&key, None, None, now_ms());
        Ok(())
    }

    fn get_many(&mut self, keys: types::Column) -> wasmtime::Result<types::Column> {
        let now = now_ms();
        let ks = self.items("get-many", "keys", &keys)?;
        for k in &ks {
            self.check_key("get-many", k)?;
        }
        // The answer is copied into the guest's memory: it may hold no more than that has room
        // for (offsets and absent included), and is refused before it is built.
        let n = ks.len();
        let room = self.memory.room();
        let index_bytes = (n + 1).saturating_mul(8);
        let refused = |h: &mut HostState| {
            let reason = format!(
                "state: get-many of {n} keys refused: the answer would hold more than the \
                 {room} bytes the guest's memory has room for (limits.max_memory {}; repeated \
                 keys count each time)",
                h.memory.max
            );
            h.refuse(reason)
        };
        let Some(max_data) = room.checked_sub(index_bytes) else {
            return Err(refused(self));
        };
        // Keys written during this call are answered from the call's own writes.
        let from_store: Vec<&[u8]> = ks
            .iter()
            .copied()
            .filter(|k| !self.txn.contains_key(*k))
            .collect();
        let stored = match self.store.get_many(&from_store, now, max_data) {
            Ok(v) => v,
            Err(e) if e.is::<TooLarge>() => return Err(refused(self)),
            Err(e) => return Err(wasmtime::Error::from_anyhow(e)),
        };
        let mut stored = stored.into_iter();
        let mut out = types::Column {
            data: Vec::new(),
            offsets: Vec::with_capacity(n + 1),
            absent: Vec::new(),
        };
        out.offsets.push(0);
        for (i, k) in ks.iter().enumerate() {
            let fits = |data: &mut Vec<u8>, v: &[u8]| {
                let ok = data.len() + v.len() <= max_data;
                if ok {
                    data.extend_from_slice(v);
                }
                ok
            };
            let found = match self.txn.get(*k) {
                Some(w) => w
                    .value
                    .as_deref()
                    .filter(|_| w.expires_at_ms.is_none_or(|e| e > now))
                    .map(|v| fits(&mut out.data, v)),
                None => stored.next().flatten().map(|v| fits(&mut out.data, &v)),
            };
            match found {
                Some(true) => {}
                Some(false) => return Err(refused(self)),
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
        let ks = self.items("put-many", "keys", &keys)?;
        let vs = self.items("put-many", "values", &values)?;
        if ks.len() != vs.len() {
            return Err(self.refuse(format!(
                "state: put-many refused: {} keys but {} values",
                ks.len(),
                vs.len()
            )));
        }
        // A refusal traps the call: none of its writes are kept.
        for (i, (k, v)) in ks.iter().zip(&vs).enumerate() {
            let value = (!is_absent(&values, i)).then_some(*v);
            self.check_write("put-many", k, value)?;
            self.write(k, value, ttl_ms, now);
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
        let mut h = HostState::new("t".into(), 1 << 20, 1024, store, 10);
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
        let mut h = HostState::new("t".into(), 1 << 20, 1024, store.clone(), 10);
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

    fn col(items: &[&[u8]]) -> types::Column {
        let mut c = types::Column {
            data: Vec::new(),
            offsets: vec![0],
            absent: Vec::new(),
        };
        for i in items {
            c.data.extend_from_slice(i);
            c.offsets.push(c.data.len() as u32);
        }
        c
    }

    fn host(max_memory: usize) -> HostState {
        let store = MemoryBackend::new()
            .open(&StateScope::unpartitioned("t"))
            .unwrap();
        let mut h = HostState::new("t".into(), max_memory, 1024, store, 10);
        h.begin_call();
        h
    }

    /// The attack of issue 15: one 500 KiB value, a key column of 8,000 copies of its key.
    #[test]
    fn get_many_of_repeated_large_values_is_refused_before_it_is_built() {
        for committed in [true, false] {
            let mut h = host(64 << 20);
            h.put(b"big".to_vec(), vec![7; 500 << 10], None).unwrap();
            if committed {
                h.commit().unwrap();
            }
            // What fits in the guest's memory is answered.
            let got = h.get_many(col(&[&b"big"[..]; 100])).unwrap();
            assert_eq!(got.data.len(), 100 * (500 << 10));
            let e = h.get_many(col(&[&b"big"[..]; 8000])).unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("state: get-many of 8000 keys refused: the answer would hold"),
                "{e}"
            );
            assert_eq!(h.refused.as_deref(), Some(&*e.to_string()));
            // The room left in the guest's memory is what counts.
            h.memory.size = 60 << 20;
            assert!(h.get_many(col(&[&b"big"[..]; 10])).is_err());
            assert_eq!(h.get_many(col(&[&b"big"[..]; 7])).unwrap().offsets.len(), 8);
        }
    }

    #[test]
    fn malformed_columns_are_refused() {
        let mut h = host(1 << 20);
        let bad = |data: &[u8], offsets: &[u32], absent: &[u32]| types::Column {
            data: data.to_vec(),
            offsets: offsets.to_vec(),
            absent: absent.to_vec(),
        };
        for (c, why) in [
            (
                bad(b"k", &[0, 1_000_000], &[]),
                "offsets end at 1000000, past the 1 bytes",
            ),
            (bad(b"kk", &[1, 2], &[]), "offsets start at 1"),
            (bad(b"kk", &[0, 2, 0, 2], &[]), "offsets go down (2 then 0)"),
            (bad(b"kk", &[0, 1, 2], &[2]), "absent is not ascending"),
        ] {
            let e = h.get_many(c.clone()).unwrap_err().to_string();
            assert!(e.starts_with("state: get-many refused: keys "), "{e}");
            assert!(e.contains(why), "{e}");
            let e = h.put_many(col(&[b"a", b"b", b"c"]), c, None).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        // Values that repeat the same bytes (offsets going back) are refused, not copied.
        let e = h
            .put_many(
                col(&[b"a", b"b", b"c"]),
                bad(&[1; 1000], &[0, 1000, 0, 1000], &[]),
                None,
            )
            .unwrap_err();
        assert!(e.to_string().contains("values offsets go down"), "{e}");
        assert!(h.txn.is_empty());
        let e = h
            .put_many(col(&[b"a"]), col(&[b"1", b"2"]), None)
            .unwrap_err();
        assert!(e.to_string().contains("1 keys but 2 values"), "{e}");
    }

    #[test]
    fn keys_over_the_cap_are_refused_on_every_call() {
        let mut h = host(1 << 20);
        let ok = vec![b'k'; 1024];
        let long = vec![b'k'; 1025];
        h.put(ok.clone(), b"v".to_vec(), None).unwrap();
        assert_eq!(h.get(ok.clone()).unwrap(), Some(b"v".to_vec()));
        let cap =
            "with a key of 1025 bytes refused: over the limit of 1024 (limits.max_state_key_bytes)";
        let errors = [
            h.get(long.clone()).unwrap_err(),
            h.put(long.clone(), b"v".to_vec(), None).unwrap_err(),
            h.delete(long.clone()).unwrap_err(),
            h.get_many(col(&[&ok, &long])).unwrap_err(),
            h.put_many(col(&[&long]), col(&[b"v"]), None).unwrap_err(),
        ];
        for (e, call) in errors
            .iter()
            .zip(["get", "put", "delete", "get-many", "put-many"])
        {
            assert_eq!(e.to_string(), format!("state: {call} {cap}"));
        }
    }

    #[test]
    fn the_writes_of_one_call_are_bounded_by_the_memory_limit() {
        let mut h = host(1 << 20);
        let v = vec![0; 400 << 10];
        // Writing the same key again replaces its pending write.
        for _ in 0..10 {
            h.put(b"a".to_vec(), v.clone(), None).unwrap();
        }
        h.put(b"b".to_vec(), v.clone(), None).unwrap();
        let e = h.put(b"c".to_vec(), v.clone(), None).unwrap_err();
        assert!(
            e.to_string()
                .contains("more than the transform's memory limit"),
            "{e}"
        );
        // A new call starts from nothing.
        h.begin_call();
        h.put(b"c".to_vec(), v, None).unwrap();
    }
}
