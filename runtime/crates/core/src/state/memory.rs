//! State in process memory: lost on restart (the default; `[state] backend = "disk"` keeps it).
//!
//! Sized for a million keys per scope: each key is stored once (the hash index holds slot
//! numbers, not keys), and the time index that drives expiry is a set of doubly linked lists
//! threaded through the slots, one per [`BUCKET_MS`] of deadlines, each kept in deadline order.
//! A write that refreshes a key's TTL — every event of a live viewer — moves its slot to the
//! tail of a later bucket without allocating: deadlines are `now + ttl`, so they arrive nearly in
//! order and the sorted insert stops at once. (The index this replaced was a `BTreeSet` of
//! `(deadline, key)`: a second copy of every key, and a key allocation per write.)

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use hashbrown::HashTable;

use super::{
    count_answer, entry_bytes, page_push, At, Expired, StateBackend, StateScope, StateStore, Usage,
    Usages, Write,
};

/// Deadlines of one bucket of the time index lie in one span of this many milliseconds.
const BUCKET_MS: i64 = 16;
/// No slot (end of a list, or a slot without a deadline).
const NIL: u32 = u32::MAX;
/// The deadline of an entry that never expires.
const NEVER: i64 = i64::MAX;

/// State in process memory: one [`MemoryStore`] per scope.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    stores: Mutex<HashMap<StateScope, Arc<MemoryStore>>>,
    usages: Usages,
}

impl MemoryBackend {
    pub fn new() -> Arc<MemoryBackend> {
        Arc::new(MemoryBackend::default())
    }
}

impl StateBackend for MemoryBackend {
    fn open(&self, scope: &StateScope) -> anyhow::Result<Arc<dyn StateStore>> {
        let mut stores = self.stores.lock().expect("stores lock poisoned");
        let s = stores
            .entry(scope.clone())
            .or_insert_with(|| {
                Arc::new(MemoryStore {
                    inner: Mutex::default(),
                    usage: self.usages.of(&scope.transform),
                })
            })
            .clone();
        Ok(s)
    }

    fn usage(&self, transform: &str) -> Arc<Usage> {
        self.usages.of(transform)
    }
}

/// One scope's state in memory.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<MemoryInner>,
    usage: Arc<Usage>,
}

/// One entry. A free slot has an empty key and value and no deadline.
#[derive(Debug)]
struct Slot {
    key: Box<[u8]>,
    value: Box<[u8]>,
    /// When the value expires ([`NEVER`]: not in the time index).
    deadline: i64,
    /// Neighbours in its deadline bucket's list (earlier, later).
    prev: u32,
    next: u32,
}

/// The first and last slot of one bucket's list.
#[derive(Debug, Clone, Copy)]
struct Ends {
    head: u32,
    tail: u32,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Randomly keyed SipHash: keys are chosen by whoever sends the events.
    hasher: RandomState,
    /// Slot numbers, found by the hash of their slot's key.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The time index: deadline / [`BUCKET_MS`] → the bucket's list, in deadline order.
    buckets: BTreeMap<i64, Ends>,
}

impl MemoryInner {
    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.index
            .find(hash, |&s| &*self.slots[s as usize].key == key)
            .copied()
    }

    fn live(&self, key: &[u8], now: i64) -> Option<Vec<u8>> {
        let slot = &self.slots[self.find(self.hasher.hash_one(key), key)? as usize];
        (slot.deadline > now).then(|| slot.value.to_vec())
    }

    /// How `writes` would change the (bytes, keys) held.
    fn delta(&self, writes: &[Write], hashes: &[u64]) -> (i64, i64) {
        let (mut bytes, mut keys) = (0i64, 0i64);
        for (w, &h) in writes.iter().zip(hashes) {
            if let Some(s) = self.find(h, &w.key) {
                bytes -= entry_bytes(&w.key, &self.slots[s as usize].value) as i64;
                keys -= 1;
            }
            if let Some(v) = &w.value {
                bytes += entry_bytes(&w.key, v) as i64;
                keys += 1;
            }
        }
        (bytes, keys)
    }

    fn apply(&mut self, w: Write, hash: u64) {
        let deadline = match (&w.value, w.expires_at_ms) {
            (Some(_), Some(e)) => e,
            _ => NEVER,
        };
        let found = self.find(hash, &w.key);
        match (found, w.value) {
            (Some(s), Some(v)) => {
                self.slots[s as usize].value = v.into_boxed_slice();
                if self.slots[s as usize].deadline != deadline {
                    self.unlink(s);
                    self.link(s, deadline);
                }
            }
            (None, Some(v)) => {
                let slot = Slot {
                    key: w.key.into_boxed_slice(),
                    value: v.into_boxed_slice(),
                    deadline: NEVER,
                    prev: NIL,
                    next: NIL,
                };
                let s = match self.free.pop() {
                    Some(s) => {
                        self.slots[s as usize] = slot;
                        s
                    }
                    None => {
                        self.slots.push(slot);
                        u32::try_from(self.slots.len() - 1).expect("under 2^32 entries")
                    }
                };
                let (slots, hasher) = (&self.slots, &self.hasher);
                self.index
                    .insert_unique(hash, s, |&t| hasher.hash_one(&slots[t as usize].key));
                self.link(s, deadline);
            }
            (Some(s), None) => {
                self.unlink(s);
                if let Ok(e) = self.index.find_entry(hash, |&t| t == s) {
                    e.remove();
                }
                let slot = &mut self.slots[s as usize];
                slot.key = Box::default();
                slot.value = Box::default();
                self.free.push(s);
            }
            (None, None) => {}
        }
    }

    /// Takes slot `s` out of its bucket's list (if it has a deadline).
    fn unlink(&mut self, s: u32) {
        let Slot {
            deadline,
            prev,
            next,
            ..
        } = self.slots[s as usize];
        if deadline == NEVER {
            return;
        }
        let bucket = deadline.div_euclid(BUCKET_MS);
        let ends = self
            .buckets
            .get_mut(&bucket)
            .expect("a linked slot's bucket");
        match prev {
            NIL => ends.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => ends.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        if ends.head == NIL {
            self.buckets.remove(&bucket);
        }
        let slot = &mut self.slots[s as usize];
        (slot.deadline, slot.prev, slot.next) = (NEVER, NIL, NIL);
    }

    /// Puts unlinked slot `s` into the bucket of `deadline`, after the last slot whose deadline
    /// is not later (searched from the tail: deadlines mostly arrive in order).
    fn link(&mut self, s: u32, deadline: i64) {
        self.slots[s as usize].deadline = deadline;
        if deadline == NEVER {
            return;
        }
        let ends = self
            .buckets
            .entry(deadline.div_euclid(BUCKET_MS))
            .or_insert(Ends {
                head: NIL,
                tail: NIL,
            });
        let mut after = ends.tail;
        while after != NIL && self.slots[after as usize].deadline > deadline {
            after = self.slots[after as usize].prev;
        }
        let next = match after {
            NIL => std::mem::replace(&mut ends.head, s),
            a => std::mem::replace(&mut self.slots[a as usize].next, s),
        };
        match next {
            NIL => ends.tail = s,
            n => self.slots[n as usize].prev = s,
        }
        let slot = &mut self.slots[s as usize];
        (slot.prev, slot.next) = (after, next);
    }
}

impl MemoryStore {
    /// Number of entries held, expired ones not yet swept included.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("inner lock poisoned").index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl StateStore for MemoryStore {
    fn get(&self, key: &[u8], now_ms: i64) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .lock()
            .expect("inner lock poisoned")
            .live(key, now_ms))
    }

    fn get_many(
        &self,
        keys: &[&[u8]],
        now_ms: i64,
        max_bytes: usize,
    ) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        let inner = self.inner.lock().expect("inner lock poisoned");
        let mut total = 0;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let v = inner.live(k, now_ms);
            count_answer(&mut total, &v, keys.len(), max_bytes)?;
            out.push(v);
        }
        Ok(out)
    }

    fn commit(&self, writes: Vec<Write>, _at: Option<At>, _now_ms: i64) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().expect("inner lock poisoned");
        let hashes: Vec<u64> = writes
            .iter()
            .map(|w| inner.hasher.hash_one(&w.key))
            .collect();
        let (bytes, keys) = inner.delta(&writes, &hashes);
        // Expired entries count until the host's expiry deleted them.
        self.usage.try_apply(bytes, keys)?;
        for (w, h) in writes.into_iter().zip(hashes) {
            inner.apply(w, h);
        }
        Ok(())
    }

    fn expired(&self, now_ms: i64, max_keys: usize, max_bytes: usize) -> anyhow::Result<Expired> {
        let inner = self.inner.lock().expect("inner lock poisoned");
        let (mut page, mut bytes) = (Vec::new(), 0);
        for ends in inner
            .buckets
            .range(..=now_ms.div_euclid(BUCKET_MS))
            .map(|b| b.1)
        {
            let mut s = ends.head;
            while s != NIL {
                let slot = &inner.slots[s as usize];
                if slot.deadline > now_ms {
                    return Ok(page); // in the last bucket due, and the rest of it is later
                }
                if !page_push(
                    &mut page,
                    &mut bytes,
                    max_keys,
                    max_bytes,
                    &slot.key,
                    &slot.value,
                ) {
                    return Ok(page);
                }
                s = slot.next;
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::PartitionId;
    use crate::state::{Budget, OverBudget, TooLarge};

    #[test]
    fn scopes_are_separate_and_expiry_is_honoured() {
        let b = MemoryBackend::new();
        let scope = |p| StateScope {
            transform: "t".into(),
            partition: PartitionId {
                topic: "in".into(),
                partition: p,
            },
        };
        let s0 = b.open(&scope(0)).unwrap();
        let s1 = b.open(&scope(1)).unwrap();
        s0.commit(
            vec![
                Write {
                    key: b"a".to_vec(),
                    value: Some(b"1".to_vec()),
                    expires_at_ms: Some(100),
                },
                Write {
                    key: b"b".to_vec(),
                    value: Some(b"2".to_vec()),
                    expires_at_ms: None,
                },
            ],
            None,
            0,
        )
        .unwrap();
        assert_eq!(s0.get(b"a", 99).unwrap(), Some(b"1".to_vec()));
        assert_eq!(s0.get(b"a", 100).unwrap(), None);
        assert_eq!(s1.get(b"b", 0).unwrap(), None);
        assert_eq!(
            s0.get_many(&[b"b", b"zz"], 0, 1).unwrap(),
            vec![Some(b"2".to_vec()), None]
        );
        // Same scope, same store.
        assert_eq!(
            b.open(&scope(0)).unwrap().get(b"b", 0).unwrap(),
            Some(b"2".to_vec())
        );
    }
    fn put(k: &str, v: &str, exp: Option<i64>) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: Some(v.as_bytes().to_vec()),
            expires_at_ms: exp,
        }
    }

    #[test]
    fn the_budget_refuses_growth_but_not_updates_and_expired_entries_make_room() {
        let b = MemoryBackend::new();
        b.usage("t").set_budget(Budget {
            max_bytes: 100,
            max_keys: 2,
        });
        let s = b.open(&StateScope::unpartitioned("t")).unwrap();
        s.commit(vec![put("a", "1", None), put("b", "1", Some(50))], None, 0)
            .unwrap();
        assert_eq!(b.usage("t").held(), (4, 2));
        // A new key past the key budget: refused whole, nothing applied.
        let e = s
            .commit(vec![put("a", "2", None), put("c", "1", None)], None, 10)
            .unwrap_err();
        let over = e.downcast_ref::<OverBudget>().expect("an OverBudget");
        assert_eq!((over.what, over.held, over.max), ("keys", 3, 2));
        assert_eq!(s.get(b"a", 10).unwrap(), Some(b"1".to_vec()));
        // Existing keys keep updating; a deletion makes room for a new key in the same commit.
        s.commit(vec![put("a", "2", None)], None, 10).unwrap();
        s.commit(
            vec![
                Write {
                    key: b"a".to_vec(),
                    value: None,
                    expires_at_ms: None,
                },
                put("c", "1", None),
            ],
            None,
            10,
        )
        .unwrap();
        assert_eq!(b.usage("t").held(), (4, 2));
        // The byte budget: growing an existing value past it is refused too.
        let e = s.commit(vec![put("c", &"x".repeat(99), None)], None, 10);
        assert!(e.unwrap_err().to_string().contains("max_state_bytes"));
        // b expired at 50: it counts until the host's expiry deletes it, then makes room.
        assert!(s.commit(vec![put("d", "1", None)], None, 5_000).is_err());
        let page = s.expired(5_000, 10, 1 << 20).unwrap();
        assert_eq!(page, vec![(b"b".to_vec(), b"1".to_vec())]);
        s.commit(vec![del("b")], None, 5_000).unwrap();
        s.commit(vec![put("d", "1", None)], None, 5_000).unwrap();
        assert_eq!(b.usage("t").held(), (4, 2));
        assert_eq!(s.get(b"b", 0).unwrap(), None, "deleted");
        // Scopes of one transform share its budget; other transforms have their own.
        let s1 = b
            .open(&StateScope {
                transform: "t".into(),
                partition: PartitionId {
                    topic: "in".into(),
                    partition: 1,
                },
            })
            .unwrap();
        assert!(s1.commit(vec![put("e", "1", None)], None, 5_000).is_err());
        let u = b.open(&StateScope::unpartitioned("u")).unwrap();
        u.commit(vec![put("e", "1", None)], None, 5_000).unwrap();
        assert_eq!(b.usage("u").held(), (2, 1));
    }

    fn del(k: &str) -> Write {
        Write {
            key: k.as_bytes().to_vec(),
            value: None,
            expires_at_ms: None,
        }
    }

    fn keys(page: &Expired) -> Vec<&str> {
        page.iter()
            .map(|(k, _)| std::str::from_utf8(k).unwrap())
            .collect()
    }

    #[test]
    fn the_time_index_pages_expired_keys_and_follows_overwrites_and_deletes() {
        let b = MemoryBackend::new();
        let s = b.open(&StateScope::unpartitioned("t")).unwrap();
        s.commit(
            vec![
                put("a", "1", Some(100)),
                put("b", "2", Some(50)),
                put("c", "3", Some(300)),
                put("d", "4", None),
                put("e", "5", Some(100)),
            ],
            None,
            0,
        )
        .unwrap();
        assert!(s.expired(49, 10, 1 << 20).unwrap().is_empty(), "none due");
        // Earliest deadline first; the deadline itself is expired (reads agree).
        assert_eq!(keys(&s.expired(100, 10, 1 << 20).unwrap()), ["b", "a", "e"]);
        assert_eq!(s.get(b"a", 100).unwrap(), None);
        // Paged: by keys, and by bytes (but always at least one entry).
        assert_eq!(keys(&s.expired(100, 2, 1 << 20).unwrap()), ["b", "a"]);
        assert_eq!(keys(&s.expired(100, 10, 3).unwrap()), ["b"]);
        assert_eq!(keys(&s.expired(100, 10, 1).unwrap()), ["b"]);
        // An overwrite moves the deadline (or removes it); a delete removes it.
        s.commit(
            vec![put("a", "1'", Some(500)), put("e", "5'", None), del("b")],
            None,
            60,
        )
        .unwrap();
        assert!(s.expired(100, 10, 1 << 20).unwrap().is_empty());
        assert_eq!(
            s.expired(1_000, 10, 1 << 20).unwrap(),
            vec![
                (b"c".to_vec(), b"3".to_vec()),
                (b"a".to_vec(), b"1'".to_vec())
            ],
            "with their last values"
        );
        // Expired keys stay until deleted; then the next page has the next ones.
        s.commit(vec![del("c")], None, 1_000).unwrap();
        assert_eq!(keys(&s.expired(1_000, 10, 1 << 20).unwrap()), ["a"]);
        assert_eq!(b.usage("t").held(), (3 + 2 + 3, 3), "a, d and e");
    }

    #[test]
    fn get_many_stops_at_its_byte_limit() {
        let b = MemoryBackend::new();
        let s = b.open(&StateScope::unpartitioned("t")).unwrap();
        s.commit(vec![put("k", &"x".repeat(1000), None)], None, 0)
            .unwrap();
        let keys: Vec<&[u8]> = vec![b"k"; 10];
        assert_eq!(s.get_many(&keys, 0, 10_000).unwrap().len(), 10);
        let e = s.get_many(&keys, 0, 9_999).unwrap_err();
        assert!(e.is::<TooLarge>(), "{e:#}");
    }

    /// Random puts (with and without TTLs, deadlines out of order, in one bucket and across
    /// many), overwrites and deletes against a plain model: every read and every page of
    /// expired keys agrees, in deadline order, and nothing is left in the index after deletes.
    #[test]
    fn the_time_index_agrees_with_a_model_under_random_writes() {
        use std::collections::{BTreeMap, BTreeSet};
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let b = MemoryBackend::new();
        let s = b.open(&StateScope::unpartitioned("t")).unwrap();
        let mut model: BTreeMap<Vec<u8>, (Vec<u8>, Option<i64>)> = BTreeMap::new();
        for round in 0..400 {
            let now = round * 10;
            let mut writes = Vec::new();
            let mut keys_this_round = BTreeSet::new();
            for _ in 0..rnd(40) {
                let key = format!("k{}", rnd(300)).into_bytes();
                if !keys_this_round.insert(key.clone()) {
                    continue; // each key at most once per commit
                }
                let w = match rnd(10) {
                    0..=1 => Write {
                        key,
                        value: None,
                        expires_at_ms: None,
                    },
                    2 => Write {
                        key,
                        value: Some(vec![b'v'; rnd(5) as usize]),
                        expires_at_ms: None,
                    },
                    // Mostly `now + ttl`, sometimes far behind or ahead, often on one deadline.
                    _ => Write {
                        key,
                        value: Some(round.to_string().into_bytes()),
                        expires_at_ms: Some(match rnd(4) {
                            0 => now + rnd(40) as i64 - 20,
                            1 => now + 100,
                            _ => now + rnd(2_000) as i64,
                        }),
                    },
                };
                match &w.value {
                    Some(v) => model.insert(w.key.clone(), (v.clone(), w.expires_at_ms)),
                    None => model.remove(&w.key),
                };
                writes.push(w);
            }
            s.commit(writes, None, now).unwrap();
            // Reads.
            for k in 0..300 {
                let key = format!("k{k}").into_bytes();
                let want = model
                    .get(&key)
                    .filter(|(_, e)| e.is_none_or(|e| e > now))
                    .map(|(v, _)| v.clone());
                assert_eq!(s.get(&key, now).unwrap(), want, "round {round} key k{k}");
            }
            // Expiry: the due entries in deadline order (ties in any order), paged.
            let mut due: Vec<(i64, Vec<u8>)> = model
                .iter()
                .filter_map(|(k, (_, e))| e.filter(|&e| e <= now).map(|e| (e, k.clone())))
                .collect();
            due.sort();
            let page = s.expired(now, 1_000, 1 << 20).unwrap();
            let deadlines: Vec<i64> = page.iter().map(|(k, _)| model[k].1.unwrap()).collect();
            assert!(deadlines.windows(2).all(|w| w[0] <= w[1]), "{deadlines:?}");
            let mut got: Vec<(i64, Vec<u8>)> = page
                .iter()
                .map(|(k, _)| (model[k].1.unwrap(), k.clone()))
                .collect();
            got.sort();
            assert_eq!(got, due, "round {round}");
            let first = s.expired(now, 3, 1 << 20).unwrap();
            assert_eq!(first[..], page[..page.len().min(3)]);
            // The host's expiry deletes what it reported, now and then.
            if round % 3 == 0 {
                let dels = page
                    .iter()
                    .map(|(k, _)| {
                        model.remove(k);
                        Write {
                            key: k.clone(),
                            value: None,
                            expires_at_ms: None,
                        }
                    })
                    .collect();
                s.commit(dels, None, now).unwrap();
            }
        }
        let held: u64 = model
            .iter()
            .map(|(k, (v, _))| (k.len() + v.len()) as u64)
            .sum();
        assert_eq!(b.usage("t").held(), (held, model.len() as u64));
        // Delete everything: the index and the time index are empty, slots are reused.
        let all = model
            .keys()
            .map(|k| Write {
                key: k.clone(),
                value: None,
                expires_at_ms: None,
            })
            .collect();
        s.commit(all, None, 0).unwrap();
        assert!(s.expired(i64::MAX - 1, 10, 1 << 20).unwrap().is_empty());
        assert_eq!(b.usage("t").held(), (0, 0));
    }
}
