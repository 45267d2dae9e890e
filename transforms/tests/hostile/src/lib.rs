//! A misbehaving transform for weir's own tests. Each record's payload says what to do:
//!
//! | payload | does |
//! |---|---|
//! | `loop` | spins forever |
//! | `alloc` | allocates (and touches) memory without bound |
//! | `recurse` | recurses without bound (stack overflow) |
//! | `panic` | panics with "hostile panic" |
//! | `huge` | emits `huge_bytes` (setting, default 32 MiB) of output |
//! | `fail:MSG` | returns the per-record error MSG |
//! | `split:A,B` | emits A and B |
//! | `upper:X` | emits X upper-cased |
//! | `key:K` | keeps the record with key K |
//! | `log:MSG` | logs MSG at info level 100 times, keeps the record |
//! | `clock` | emits the host clock as text |
//! | `put:K` | stores K (value `v`) in the host's state, keeps the record |
//! | `putpanic:K` | stores K, then panics (the write must not survive) |
//! | `get:K` | emits `K=<value>` or `K=none` |
//! | `hold:X` | emits nothing now; `flush` emits X (windowed output) |
//! | `ttl:K:MS` | stores K (value `v`) with a TTL of MS ms, keeps the record; when it expires, `expired` emits `expired:K=v`, or panics if K starts with `panic`, or stores K again for an hour if K starts with `keep` |
//! | `bigput:K:N` | stores N bytes under K, keeps the record |
//! | `bigkey:N` | stores `v` under a key of N bytes, keeps the record |
//! | `getmany:K:N` | calls `get-many` itself with N copies of K; emits `got B bytes` |
//! | `badoffsets` | calls `get-many` with a key column whose offsets run past its data |
//! | `overlap:N` | calls `put-many` with N keys whose values all name the same 64 KiB (offsets that go back) |
//! | anything else | keeps the record |

#![deny(unsafe_op_in_unsafe_fn)]

use weir_transform_sdk::{
    log, now_ms, Config, Emit, Emitted, Error, Level, Record, State, Stateful,
};

pub struct Hostile {
    huge_bytes: usize,
    held: Vec<Vec<u8>>,
}

impl Stateful for Hostile {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&["huge_bytes", "fail_init"])?;
        if let Some(msg) = config.get("fail_init") {
            return Err(msg.into());
        }
        Ok(Hostile {
            huge_bytes: config.parse("huge_bytes")?.unwrap_or(32 << 20),
            held: Vec::new(),
        })
    }

    fn process(
        &mut self,
        r: &Record<'_>,
        state: &mut State<'_>,
        out: &mut Emit<'_>,
    ) -> Result<(), Error> {
        let v = r.value();
        match v {
            b"loop" => loop {
                std::hint::black_box(&v);
            },
            b"alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            b"recurse" => {
                std::hint::black_box(recurse(std::hint::black_box(1)));
            }
            b"panic" => panic!("hostile panic"),
            b"huge" => out.emit(&vec![b'x'; self.huge_bytes]),
            b"clock" => out.emit(now_ms().to_string().as_bytes()),
            _ => {
                if let Some(arg) = v.strip_prefix(b"bigput:") {
                    let (k, n) = key_and_count(arg)?;
                    state.put(k, &vec![b'x'; n]);
                    out.keep();
                } else if let Some(arg) = v.strip_prefix(b"bigkey:") {
                    let (_, n) = key_and_count(arg)?;
                    state.put(&vec![b'k'; n], b"v");
                    out.keep();
                } else if let Some(arg) = v.strip_prefix(b"getmany:") {
                    let (k, n) = key_and_count(arg)?;
                    let got = raw::get_many_copies(k, n);
                    out.emit(format!("got {got} bytes").as_bytes());
                } else if v == b"badoffsets" {
                    raw::bad_offsets();
                    out.keep();
                } else if let Some(arg) = v.strip_prefix(b"overlap:") {
                    let (_, n) = key_and_count(arg)?;
                    raw::overlapping_values(n);
                    out.keep();
                } else if let Some(arg) = v.strip_prefix(b"ttl:") {
                    let (k, ms) = key_and_count(arg)?;
                    state.put_with_ttl(k, b"v", ms as u64);
                    out.keep();
                } else if let Some(x) = v.strip_prefix(b"hold:") {
                    self.held.push(x.to_vec());
                } else if let Some(k) = v.strip_prefix(b"put:") {
                    state.put(k, b"v");
                    out.keep();
                } else if let Some(k) = v.strip_prefix(b"putpanic:") {
                    state.put(k, b"v");
                    panic!("panic after a state write");
                } else if let Some(k) = v.strip_prefix(b"get:") {
                    let got = state.get(k).map(<[u8]>::to_vec);
                    let mut e = k.to_vec();
                    e.extend_from_slice(b"=");
                    e.extend_from_slice(got.as_deref().unwrap_or(b"none"));
                    out.emit(&e);
                } else if let Some(m) = v.strip_prefix(b"fail:") {
                    return Err(String::from_utf8_lossy(m).into());
                } else if let Some(parts) = v.strip_prefix(b"split:") {
                    for p in parts.split(|&b| b == b',') {
                        out.emit(p);
                    }
                } else if let Some(x) = v.strip_prefix(b"upper:") {
                    out.emit(&x.to_ascii_uppercase());
                } else if let Some(k) = v.strip_prefix(b"key:") {
                    out.keep_with_key(k);
                } else if let Some(m) = v.strip_prefix(b"log:") {
                    for _ in 0..100 {
                        log(Level::Info, &String::from_utf8_lossy(m));
                    }
                    out.keep();
                } else {
                    out.keep();
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self, _: &mut State<'_>, out: &mut Emitted) {
        for x in std::mem::take(&mut self.held) {
            out.emit(&x);
        }
    }

    fn expired(&mut self, key: &[u8], value: &[u8], state: &mut State<'_>, out: &mut Emitted) {
        if key.starts_with(b"panic") {
            panic!("hostile panic in expired");
        }
        if key.starts_with(b"keep") {
            state.put_with_ttl(key, value, 3_600_000);
            return;
        }
        let mut e = b"expired:".to_vec();
        e.extend_from_slice(key);
        e.push(b'=');
        e.extend_from_slice(value);
        out.emit(&e);
    }
}

/// `K:N` (or just `N`) → (K, N).
fn key_and_count(arg: &[u8]) -> Result<(&[u8], usize), Error> {
    let (k, n) = match arg.iter().rposition(|&b| b == b':') {
        Some(i) => (&arg[..i], &arg[i + 1..]),
        None => (&b""[..], arg),
    };
    let n = std::str::from_utf8(n)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::from("expected a count"))?;
    Ok((k, n))
}

/// State calls made directly through the WIT imports (what a hostile guest could send, which
/// the SDK never does).
#[cfg(target_arch = "wasm32")]
mod raw {
    use weir_transform_sdk::bindings::weir::transform::state;
    use weir_transform_sdk::bindings::weir::transform::types::Column;

    /// `get-many` of `n` copies of `key` (well-formed offsets); the bytes answered.
    pub fn get_many_copies(key: &[u8], n: usize) -> usize {
        let keys = Column {
            data: key.repeat(n),
            offsets: (0..=n).map(|i| (i * key.len()) as u32).collect(),
            absent: Vec::new(),
        };
        state::get_many(&keys).data.len()
    }

    pub fn bad_offsets() {
        let keys = Column {
            data: b"k".to_vec(),
            offsets: vec![0, 1_000_000],
            absent: Vec::new(),
        };
        state::get_many(&keys);
    }

    /// `put-many` of `n` keys whose value offsets go back to the start each time, so that
    /// every value would be the same 64 KiB.
    pub fn overlapping_values(n: usize) {
        let len = 64u32 << 10;
        let keys: Vec<u8> = (0..n).flat_map(|i| (i as u32).to_be_bytes()).collect();
        let key_col = Column {
            data: keys,
            offsets: (0..=n).map(|i| (i * 4) as u32).collect(),
            absent: Vec::new(),
        };
        let values = Column {
            data: vec![b'x'; len as usize],
            offsets: (0..=n).map(|i| if i % 2 == 1 { len } else { 0 }).collect(),
            absent: Vec::new(),
        };
        state::put_many(&key_col, &values, None);
    }
}

/// Natively (the SDK's test harness) there is no host to abuse.
#[cfg(not(target_arch = "wasm32"))]
mod raw {
    pub fn get_many_copies(_: &[u8], _: usize) -> usize {
        0
    }
    pub fn bad_offsets() {}
    pub fn overlapping_values(_: usize) {}
}

/// Deep recursion on the wasm call stack itself (no locals in linear memory).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

weir_transform_sdk::export_stateful!(Hostile);
