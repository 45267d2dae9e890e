//! A native test harness: run a transform on records with plain `cargo test`, the way weir runs
//! it (same batch loop, same projection of declared fields), with state, clock and log kept in
//! memory.
//!
//! ```
//! use weir_transform_sdk::{Config, Error, Filter, Record};
//!
//! struct NonEmpty;
//! impl Filter for NonEmpty {
//!     fn new(_: &Config) -> Result<Self, Error> {
//!         Ok(NonEmpty)
//!     }
//!     fn keep(&mut self, r: &Record<'_>) -> Result<bool, Error> {
//!         Ok(!r.value().is_empty())
//!     }
//! }
//!
//! let mut t = weir_transform_sdk::testing::filter::<NonEmpty>(&[]).unwrap();
//! let out = t.process(&[b"a", b"", b"c"]);
//! assert_eq!(out.kept(), vec![0, 2]);
//! assert_eq!(out.filtered, vec![1]);
//! ```

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::batch::{BatchView, ColumnBuf, Emitted, FieldIds, OutputBuf};
use crate::config::Config;
use crate::error::Error;
use crate::host::Level;
use crate::rt::{settings_fields, AsFilter, AsFlatMap, AsMap, AsStateful, Guest, StateCtx};
use crate::snowplow;
use crate::state::{StateCache, StateHost};
use crate::{Filter, FlatMap, Map, Stateful};

/// An output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Index of the input record it came from.
    pub source: usize,
    pub value: Vec<u8>,
    pub key: Option<Vec<u8>>,
}

/// What one batch became.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub outputs: Vec<Output>,
    /// Indexes of the input records that were dropped.
    pub filtered: Vec<usize>,
    /// Indexes of the input records that failed, with the message.
    pub errors: Vec<(usize, String)>,
}

impl Outcome {
    /// The source index of each output, in order.
    pub fn kept(&self) -> Vec<usize> {
        self.outputs.iter().map(|o| o.source).collect()
    }
}

/// An input record with a key.
#[derive(Debug, Clone, Default)]
pub struct Input<'a> {
    pub value: &'a [u8],
    pub key: Option<&'a [u8]>,
}

/// In-memory state with expiry on the harness's clock: the test stand-in for weir's state.
#[derive(Debug, Default, Clone)]
pub struct MemoryState {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)>,
    /// Host calls made (`get`, `get-many`, `put-many`), to check batching.
    pub calls: Vec<&'static str>,
}

impl MemoryState {
    /// The live value under `key`.
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        let now = native_now_ms();
        self.entries
            .get(key)
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .map(|(v, _)| v.as_slice())
    }

    /// Removes the entries that expired by now (earliest deadline first), as weir's expiry does
    /// before it calls the transform's `expired`.
    pub fn take_expired(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let now = native_now_ms();
        let mut due: Vec<(i64, Vec<u8>)> = self
            .entries
            .iter()
            .filter_map(|(k, (_, exp))| exp.filter(|&e| e <= now).map(|e| (e, k.clone())))
            .collect();
        due.sort();
        due.into_iter()
            .filter_map(|(_, k)| self.entries.remove(&k).map(|(v, _)| (k, v)))
            .collect()
    }

    /// Stores `value` under `key` without expiry, as if an earlier run had written it.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.entries.insert(key.to_vec(), (value.to_vec(), None));
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        let now = native_now_ms();
        self.entries
            .values()
            .filter(|(_, exp)| exp.is_none_or(|e| e > now))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateHost for MemoryState {
    fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.calls.push("get");
        self.value(key).map(<[u8]>::to_vec)
    }

    fn get_many(&mut self, keys: ColumnBuf) -> ColumnBuf {
        self.calls.push("get-many");
        let keys = keys.as_ref();
        let n = keys.offsets.len().saturating_sub(1);
        let vals: Vec<Option<Vec<u8>>> = (0..n)
            .map(|i| self.value(keys.item(i)).map(<[u8]>::to_vec))
            .collect();
        ColumnBuf::from_items(vals.iter().map(|v| v.as_deref()))
    }

    fn put_many(&mut self, keys: ColumnBuf, values: ColumnBuf, ttl_ms: Option<u64>) {
        self.calls.push("put-many");
        let (keys, values) = (keys.as_ref(), values.as_ref());
        let exp = ttl_ms.map(|t| native_now_ms().saturating_add(t as i64));
        for i in 0..keys.offsets.len().saturating_sub(1) {
            let k = keys.item(i).to_vec();
            match values.get(i) {
                Some(v) => {
                    self.entries.insert(k, (v.to_vec(), exp));
                }
                None => {
                    self.entries.remove(&k);
                }
            }
        }
    }
}

thread_local! {
    static CLOCK: RefCell<Option<i64>> = const { RefCell::new(None) };
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn native_now_ms() -> i64 {
    CLOCK.with(|c| *c.borrow()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    })
}

pub(crate) fn native_log(level: Level, message: &str) {
    LOGS.with(|l| l.borrow_mut().push((level, message.to_string())));
}

/// Sets the clock [`crate::now_ms`] reads in this test thread.
pub fn set_now_ms(ms: i64) {
    CLOCK.with(|c| *c.borrow_mut() = Some(ms));
}

/// Moves this test thread's clock forward.
pub fn advance_ms(ms: i64) {
    let now = native_now_ms();
    set_now_ms(now + ms);
}

/// Takes the lines logged in this test thread so far.
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

/// A transform under test.
pub struct Harness<G: Guest> {
    guest: G,
    fields: FieldIds,
    cache: StateCache,
    /// The transform's state, as weir would hold it.
    pub state: MemoryState,
}

/// A [`Filter`] under test, built from `config` pairs.
pub fn filter<T: Filter>(config: &[(&str, &str)]) -> Result<Harness<AsFilter<T>>, Error> {
    Harness::new(config)
}

/// A [`Map`] under test.
pub fn map<T: Map>(config: &[(&str, &str)]) -> Result<Harness<AsMap<T>>, Error> {
    Harness::new(config)
}

/// A [`FlatMap`] under test.
pub fn flat_map<T: FlatMap>(config: &[(&str, &str)]) -> Result<Harness<AsFlatMap<T>>, Error> {
    Harness::new(config)
}

/// A [`Stateful`] transform under test.
pub fn stateful<T: Stateful>(config: &[(&str, &str)]) -> Result<Harness<AsStateful<T>>, Error> {
    Harness::new(config)
}

impl<G: Guest> Harness<G> {
    /// Runs `init` with `config`, as weir does when it builds the transform.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, Error> {
        let guest = G::init(&Config::from_pairs(config))?;
        settings_fields(guest.fields())?;
        Ok(Harness {
            fields: FieldIds::new(guest.fields()),
            guest,
            cache: StateCache::default(),
            state: MemoryState::default(),
        })
    }

    /// Runs one batch of payloads.
    pub fn process(&mut self, values: &[&[u8]]) -> Outcome {
        let inputs: Vec<Input<'_>> = values
            .iter()
            .map(|v| Input {
                value: v,
                key: None,
            })
            .collect();
        self.process_inputs(&inputs)
    }

    /// Runs one batch of records with keys.
    pub fn process_inputs(&mut self, inputs: &[Input<'_>]) -> Outcome {
        let n = inputs.len();
        let k = self.fields.len();
        // Build the batch exactly as weir does: payloads, or only the declared fields.
        let values = if k == 0 {
            ColumnBuf::from_items(inputs.iter().map(|r| Some(r.value)))
        } else {
            ColumnBuf::default()
        };
        let fields = if k > 0 {
            let fs = self.fields.ids();
            ColumnBuf::from_items(
                inputs
                    .iter()
                    .flat_map(|r| fs.iter().map(|&f| Some(snowplow::field(r.value, f)))),
            )
        } else {
            ColumnBuf::default()
        };
        let keys = if inputs.iter().any(|r| r.key.is_some()) {
            ColumnBuf::from_items(inputs.iter().map(|r| r.key))
        } else {
            ColumnBuf::default()
        };
        let now = native_now_ms();
        let timestamps = vec![now];
        let view = BatchView {
            len: n,
            values: values.as_ref(),
            fields: fields.as_ref(),
            field_ids: &self.fields,
            keys: keys.as_ref(),
            timestamps: &timestamps,
        };
        let mut out = OutputBuf::with_capacity(n);
        self.guest.process(
            &view,
            &mut out,
            StateCtx {
                cache: &mut self.cache,
                host: &mut self.state,
            },
        );
        out.finish();
        // Interpret the output the way weir does.
        let failed: Vec<usize> = out.errors.iter().map(|e| e.0 as usize).collect();
        let mut used = vec![false; n];
        let mut outputs = Vec::new();
        for (m, &src) in out.sources.iter().enumerate() {
            let src = src as usize;
            assert!(
                src < n,
                "output {m} names input {src}, but the batch has {n}"
            );
            if failed.contains(&src) {
                continue;
            }
            used[src] = true;
            let value = out
                .values
                .as_ref()
                .get(m)
                .unwrap_or(inputs[src].value)
                .to_vec();
            let key = match out.keys.as_ref().get(m) {
                Some(k) => Some(k.to_vec()),
                None => inputs[src].key.map(<[u8]>::to_vec),
            };
            outputs.push(Output {
                source: src,
                value,
                key,
            });
        }
        Outcome {
            outputs,
            filtered: (0..n)
                .filter(|&i| !used[i] && !failed.contains(&i))
                .collect(),
            errors: out
                .errors
                .into_iter()
                .map(|(i, m)| (i as usize, m))
                .collect(),
        }
    }

    /// Expires state entries whose TTL ran out on the harness clock ([`advance_ms`]) and runs
    /// the transform's `expired` with them, as weir does at each tick; returns what it emitted.
    pub fn expire(&mut self) -> Emitted {
        let mut out = Emitted::default();
        let expired = self.state.take_expired();
        if expired.is_empty() {
            return out;
        }
        let keys = ColumnBuf::from_items(expired.iter().map(|(k, _)| Some(k.as_slice())));
        let values = ColumnBuf::from_items(expired.iter().map(|(_, v)| Some(v.as_slice())));
        self.guest.expired(
            keys.as_ref(),
            values.as_ref(),
            &mut out,
            StateCtx {
                cache: &mut self.cache,
                host: &mut self.state,
            },
        );
        out
    }

    /// One tick as weir runs it: [`Harness::expire`], then `flush`; returns what both emitted.
    pub fn flush(&mut self) -> Emitted {
        let mut out = self.expire();
        self.guest.flush(
            &mut out,
            StateCtx {
                cache: &mut self.cache,
                host: &mut self.state,
            },
        );
        out
    }

    /// The transform itself.
    pub fn guest(&mut self) -> &mut G {
        &mut self.guest
    }
}
