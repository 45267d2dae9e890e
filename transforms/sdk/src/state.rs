//! Keyed state owned by the host, seen by a transform through a per-batch cache.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::batch::{ColumnBuf, ColumnRef};

/// The host's state API (the WIT `state` interface). In WASM it calls weir; natively the
/// in-memory store of [`crate::testing`].
pub trait StateHost {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    /// One item per key; `absent` where there is no value.
    fn get_many(&mut self, keys: ColumnRef<'_>) -> ColumnBuf;
    /// An absent value deletes its key.
    fn put_many(&mut self, keys: ColumnRef<'_>, values: ColumnRef<'_>, ttl_ms: Option<u64>);
}

// Deterministic hashing: no randomness source is needed (there is none in the guest).
type Map<V> = HashMap<Vec<u8>, V, BuildHasherDefault<DefaultHasher>>;

#[derive(Debug, Clone)]
struct Slot {
    value: Option<Vec<u8>>,
    /// `Some(ttl)` if written during this batch and not yet sent to the host.
    dirty: Option<Option<u64>>,
}

/// The state cache of one transform instance: filled per batch by one `get-many`, written back
/// by one `put-many` per TTL at the end of the batch.
#[derive(Debug, Default)]
pub struct StateCache {
    slots: Map<Slot>,
}

impl StateCache {
    /// Fetches the values of `keys` in one host call.
    pub(crate) fn prefetch(&mut self, host: &mut dyn StateHost, keys: &[&[u8]]) {
        let missing: Vec<&[u8]> = keys
            .iter()
            .copied()
            .filter(|k| !self.slots.contains_key(*k))
            .collect();
        if missing.is_empty() {
            return;
        }
        let req = ColumnBuf::from_items(missing.iter().map(|k| Some(*k)));
        let got = host.get_many(req.as_ref());
        let got = got.as_ref();
        for (i, k) in missing.iter().enumerate() {
            let value = if got.offsets.len() > i + 1 {
                got.get(i).map(<[u8]>::to_vec)
            } else {
                None
            };
            self.slots
                .entry(k.to_vec())
                .or_insert(Slot { value, dirty: None });
        }
    }

    /// Sends this batch's writes to the host and forgets everything (the host is the truth).
    pub(crate) fn write_back(&mut self, host: &mut dyn StateHost) {
        type Writes<'w> = Vec<(&'w [u8], Option<&'w [u8]>)>;
        let mut by_ttl: Vec<(Option<u64>, Writes<'_>)> = Vec::new();
        for (k, s) in &self.slots {
            if let Some(ttl) = s.dirty {
                let w = (k.as_slice(), s.value.as_deref());
                match by_ttl.iter_mut().find(|(t, _)| *t == ttl) {
                    Some((_, v)) => v.push(w),
                    None => by_ttl.push((ttl, vec![w])),
                }
            }
        }
        for (ttl, writes) in &by_ttl {
            let keys = ColumnBuf::from_items(writes.iter().map(|w| Some(w.0)));
            let values = ColumnBuf::from_items(writes.iter().map(|w| w.1));
            host.put_many(keys.as_ref(), values.as_ref(), *ttl);
        }
        self.slots.clear();
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
            let value = self.host.get(key);
            self.cache
                .slots
                .insert(key.to_vec(), Slot { value, dirty: None });
        }
        self.cache.slots.get(key).and_then(|s| s.value.as_deref())
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
        match self.cache.slots.get_mut(key) {
            // Overwriting a cached value reuses its buffer.
            Some(s) => {
                match (value, &mut s.value) {
                    (Some(v), Some(buf)) => {
                        buf.clear();
                        buf.extend_from_slice(v);
                    }
                    (v, slot) => *slot = v.map(<[u8]>::to_vec),
                }
                s.dirty = Some(ttl);
            }
            None => {
                let slot = Slot {
                    value: value.map(<[u8]>::to_vec),
                    dirty: Some(ttl),
                };
                self.cache.slots.insert(key.to_vec(), slot);
            }
        }
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

    fn get_many(&mut self, keys: ColumnRef<'_>) -> ColumnBuf {
        let c = crate::bindings::weir::transform::state::get_many(&crate::rt::wasm::column(keys));
        ColumnBuf {
            data: c.data,
            offsets: c.offsets,
            absent: c.absent,
        }
    }

    fn put_many(&mut self, keys: ColumnRef<'_>, values: ColumnRef<'_>, ttl_ms: Option<u64>) {
        crate::bindings::weir::transform::state::put_many(
            &crate::rt::wasm::column(keys),
            &crate::rt::wasm::column(values),
            ttl_ms,
        )
    }
}
