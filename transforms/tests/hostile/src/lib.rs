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
                if let Some(x) = v.strip_prefix(b"hold:") {
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
}

/// Deep recursion on the wasm call stack itself (no locals in linear memory).
#[inline(never)]
#[allow(unconditional_recursion)]
fn recurse(n: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(n + 1))) + 1
}

weir_transform_sdk::export_stateful!(Hostile);
