//! Keyed state owned by the host, seen by a transform through a per-batch cache.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::batch::ColumnBuf;

/// The host's state API (the WIT `state` interface). In WASM it calls weir; natively the
/// in-memory store of [`crate::testing`]. Columns go by value: in WASM they are the call's
/// arguments as they are, not a copy.
pub trait StateHost {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    /// One item per key; `absent` where there is no value.
    fn get_many(&mut self, keys: ColumnBuf) -> ColumnBuf;
    /// An absent value deletes its key.
    fn put_many(&mut self, keys: ColumnBuf, values: ColumnBuf, ttl_ms: Option<u64>);
}

// Deterministic hashing: no randomness source is needed (there is none in the guest).
type Map<V> = HashMap<Vec<u8>, V, BuildHasherDefault<DefaultHasher>>;

#[derive(Debug, Clone)]
struct Slot {
    value: Value,
    /// `Some(ttl)` if written during this batch and not yet sent to the host.
    dirty: Option<Option<u64>>,
}

/// Where a cached value is.
#[derive(Debug, Clone)]
enum Value {
    Absent,
    /// Item `i` of the batch's `get-many` answer, read where the host wrote it (not copied).
    Fetched(usize),
    /// Written during the batch, or fetched alone.
    Own(Vec<u8>),
}

/// The state cache of one transform instance: filled per batch by one `get-many`, written back
/// by one `put-many` per TTL at the end of the batch.
#[derive(Debug, Default)]
pub struct StateCache {
    slots: Map<Slot>,
    /// The batch's `get-many` answer.
    fetched: ColumnBuf,
}

impl StateCache {
    /// Fetches the values of `keys` in one host call.
    pub(crate) fn prefetch(&mut self, host: &mut dyn StateHost, keys: &[&[u8]]) {
        // At the start of a batch (where the SDK calls this) the cache is empty (write_back
        // cleared it): every key is missing and the answer is kept as the host wrote it. On a
        // cache already in use, only the keys not in it are asked for and their values copied.
        let fresh = self.slots.is_empty();
        let missing: Vec<&[u8]> = if fresh {
            keys.to_vec()
        } else {
            keys.iter()
                .copied()
                .filter(|k| !self.slots.contains_key(*k))
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let req = ColumnBuf::from_items(missing.iter().map(|k| Some(*k)));
        let got = host.get_many(req);
        for (i, k) in missing.iter().enumerate() {
            let present = got.offsets.len() > i + 1 && got.as_ref().get(i).is_some();
            let value = match (present, fresh) {
                (false, _) => Value::Absent,
                (true, true) => Value::Fetched(i),
                (true, false) => Value::Own(got.as_ref().item(i).to_vec()),
            };
            self.slots
                .entry(k.to_vec())
                .or_insert(Slot { value, dirty: None });
        }
        if fresh {
            self.fetched = got;
        }
    }

    fn value<'c>(&'c self, slot: &'c Slot) -> Option<&'c [u8]> {
        match &slot.value {
            Value::Absent => None,
            Value::Fetched(i) => Some(self.fetched.as_ref().item(*i)),
            Value::Own(v) => Some(v),
        }
    }

    /// Sends this batch's writes to the host and forgets everything (the host is the truth).
    pub(crate) fn write_back(&mut self, host: &mut dyn StateHost) {
        let mut by_ttl: Vec<(Option<u64>, ColumnBuf, ColumnBuf)> = Vec::new();
        for (k, s) in &self.slots {
            if let Some(ttl) = s.dirty {
                let n = match by_ttl.iter().position(|(t, _, _)| *t == ttl) {
                    Some(n) => n,
                    None => {
                        by_ttl.push((ttl, ColumnBuf::default(), ColumnBuf::default()));
                        by_ttl.len() - 1
                    }
                };
                let (_, keys, values) = &mut by_ttl[n];
                keys.push(Some(k));
                values.push(self.value(s));
            }
        }
        for (ttl, keys, values) in by_ttl {
            host.put_many(keys, values, ttl);
        }
        self.slots.clear();
        self.fetched = ColumnBuf::default();
    }
}

/// A transform's view of its keyed state during one batch (or flush).
pub struct State<'s> {
    pub(crate) cache: &'s mut StateCache,
    pub(crate) host: &'s mut dyn StateHost,
}

impl State<'_> {
    /// The value stored under `key`, if any (and not expired).
    pub fn get(&mut self, key: &[u8]) -> Option<&[u8]> {
        // A hit (the usual case: the batch's keys were prefetched) copies nothing.
        if !self.cache.slots.contains_key(key) {
            let value = match self.host.get(key) {
                Some(v) => Value::Own(v),
                None => Value::Absent,
            };
            self.cache
                .slots
                .insert(key.to_vec(), Slot { value, dirty: None });
        }
        let cache = &*self.cache;
        cache.slots.get(key).and_then(|s| cache.value(s))
    }

    /// Whether a value is stored under `key`.
    pub fn contains(&mut self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` under `key`, without expiry.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.set(key, Some(value), None);
    }

    /// Stores `value` under `key`; the host forgets it after `ttl_ms` milliseconds.
    pub fn put_with_ttl(&mut self, key: &[u8], value: &[u8], ttl_ms: u64) {
        self.set(key, Some(value), Some(ttl_ms));
    }

    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.set(key, None, None);
    }

    fn set(&mut self, key: &[u8], value: Option<&[u8]>, ttl: Option<u64>) {
        if let Some(s) = self.cache.slots.get_mut(key) {
            match (value, &mut s.value) {
                // Overwriting a value written before in this batch reuses its buffer.
                (Some(v), Value::Own(buf)) => {
                    buf.clear();
                    buf.extend_from_slice(v);
                }
                (Some(v), slot) => *slot = Value::Own(v.to_vec()),
                (None, slot) => *slot = Value::Absent,
            }
            s.dirty = Some(ttl);
            return;
        }
        let slot = Slot {
            value: value.map_or(Value::Absent, |v| Value::Own(v.to_vec())),
            dirty: Some(ttl),
        };
        self.cache.slots.insert(key.to_vec(), slot);
    }
}

/// The host's state through the WIT imports.
#[cfg(target_arch = "wasm32")]
pub(crate) struct WasmState;

#[cfg(target_arch = "wasm32")]
impl StateHost for WasmState {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        crate::bindings::weir::transform::state::get(key)
    }

    fn get_many(&mut self, keys: ColumnBuf) -> ColumnBuf {
        let c = crate::bindings::weir::transform::state::get_many(&crate::rt::wasm::into_wit(keys));
        ColumnBuf {
            data: c.data,
            offsets: c.offsets,
            absent: c.absent,
        }
    }

    fn put_many(&mut self, keys: ColumnBuf, values: ColumnBuf, ttl_ms: Option<u64>) {
        crate::bindings::weir::transform::state::put_many(
            &crate::rt::wasm::into_wit(keys),
            &crate::rt::wasm::into_wit(values),
            ttl_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryState;

    /// Prefetched values are read where get-many put them, writes and deletes of the batch
    /// shadow them, a key not prefetched costs one `get`, a second prefetch asks only for what
    /// is missing, and the end of the batch sends the writes (one `put-many` per TTL) and
    /// forgets everything.
    #[test]
    fn the_cache_reads_prefetched_values_and_writes_back_the_batch() {
        let mut host = MemoryState::default();
        host.insert(b"a", b"1");
        host.insert(b"b", b"22");
        host.insert(b"e", b"5");
        let mut cache = StateCache::default();
        for round in 0..2 {
            host.calls.clear();
            cache.prefetch(&mut host, &[b"a", b"b", b"c", b"a"]);
            let mut state = State {
                cache: &mut cache,
                host: &mut host,
            };
            let a = if round == 0 { &b"1"[..] } else { b"111" };
            assert_eq!(state.get(b"a"), Some(a));
            assert_eq!(state.get(b"b"), Some(&b"22"[..]));
            let c = if round == 0 { None } else { Some(&b"3"[..]) };
            assert_eq!(state.get(b"c"), c);
            assert_eq!(state.get(b"d"), None);
            state.put(b"a", b"11");
            state.put(b"a", b"111");
            assert_eq!(state.get(b"a"), Some(&b"111"[..]));
            state.delete(b"b");
            assert_eq!(state.get(b"b"), None);
            state.put_with_ttl(b"c", b"3", 60_000);
            assert_eq!(state.get(b"c"), Some(&b"3"[..]));
            // A prefetch on a cache in use asks only for what it lacks, and copies it.
            cache.prefetch(&mut host, &[b"a", b"e"]);
            let mut state = State {
                cache: &mut cache,
                host: &mut host,
            };
            assert_eq!(state.get(b"e"), Some(&b"5"[..]));
            assert_eq!(state.get(b"a"), Some(&b"111"[..]));
            cache.write_back(&mut host);
            assert!(cache.slots.is_empty() && cache.fetched.offsets.is_empty());
            let mut calls = host.calls.clone();
            calls.sort();
            assert_eq!(
                calls,
                ["get", "get-many", "get-many", "put-many", "put-many"]
            );
            assert_eq!(host.value(b"a"), Some(&b"111"[..]));
            assert_eq!(host.value(b"b"), None);
            assert_eq!(host.value(b"c"), Some(&b"3"[..]));
            host.insert(b"b", b"22");
        }
    }
}
