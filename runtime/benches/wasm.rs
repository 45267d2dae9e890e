//! The WASM transform host against native code, in one run.
//!
//! `cargo bench --bench wasm` builds the guests (transforms/, wasm32-unknown-unknown, release),
//! then reports medians of `RUNS` runs of:
//!
//! 1. media-filter on a large enriched-TSV input (the fixture repeated to WEIR_WASM_BENCH_MB,
//!    default 64 MiB, as record slices of one buffer like the file source makes), in batches of
//!    1000 records: the same `MediaFilter` code compiled natively (called per record, as a
//!    built-in would be) against the WASM build through weir's host, sending only the two fields
//!    it declares (the default) and sending whole events;
//! 2. the boundary cost: a guest that keeps every record, on 1 KiB records, per record, at
//!    batches of 256 and 1000;
//! 3. loading media-filter: compiling it (empty cache) against loading the compiled code from
//!    the disk cache (as after a restart), and building an instance (InstancePre + init).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

mod support;
use support::build_guests;
use weir_core::record::{Batch, Record};
use weir_core::state::MemoryBackend;
use weir_core::wasm::engine::{self, LoadKind};
use weir_core::wasm::{Guest, GuestOptions, Limits};
use weir_transform_sdk::{Config, Filter};

/// Runs per measurement (WEIR_WASM_BENCH_RUNS, default 7); medians are reported.
fn runs() -> usize {
    std::env::var("WEIR_WASM_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

fn main() {
    let Some((root, target)) = support::dirs() else {
        return;
    };
    let guests = build_guests(&root, &target.join("guests"));
    let tmp = tempfile::tempdir().unwrap();
    let cache_dir = std::env::var_os("WEIR_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let cache = &cache_dir;
    // WEIR_WASM_BENCH=media,boundary,load picks parts (default: all).
    let parts = std::env::var("WEIR_WASM_BENCH").unwrap_or_else(|_| "media,boundary,load".into());
    let mb: usize = std::env::var("WEIR_WASM_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);

    if parts.contains("media") {
        media(&root, &guests, cache, mb);
    }
    if parts.contains("boundary") {
        boundary(&guests, cache);
    }
    if parts.contains("load") {
        load(&guests);
    }
}

fn cfg(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 1. media-filter, native vs WASM.
fn media(root: &Path, guests: &Path, cache: &Path, mb: usize) {
    let fixture = std::fs::read(root.join("examples/data/micro-media-session.tsv")).unwrap();
    let data = repeat_to(&fixture, mb << 20);
    let lines = split_lines(&data);
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    println!(
        "input: {} events, {:.1} MiB of enriched TSV (avg {} B/event), batches of 1000; medians of {} runs",
        lines.len(),
        bytes as f64 / (1 << 20) as f64,
        bytes / lines.len(),
        runs()
    );
    let media = guests.join("media_filter.wasm");
    let mut wasm_fields = guest(&media, cfg(&[]), cache);
    let mut wasm_payload = guest(&media, cfg(&[("send", "payload")]), cache);
    let mut native = media_filter::MediaFilter::new(&Config::default()).unwrap();
    let mut scratch = Vec::new();

    // "warm": each batch's bytes were just read, as the file source's line splitter leaves
    // them; "cold": straight from memory (each variant reads its own copy of the input, larger
    // than the L3 cache). The variants take turns batch by batch, so that load from other
    // processes on the machine hits them alike.
    let copies: Vec<Vec<Bytes>> = (0..3)
        .map(|_| split_lines(&Bytes::from(data.to_vec())))
        .collect();
    for warm in [true, false] {
        let mut times: [Vec<Duration>; 3] = Default::default();
        let mut ratios: [Vec<f64>; 2] = Default::default();
        let mut kept = [0usize; 3];
        for _ in 0..runs() {
            let mut t = [Duration::ZERO; 3];
            kept = [0; 3];
            let n_batches = lines.len().div_ceil(1000);
            for c in 0..n_batches {
                for turn in 0..3 {
                    let v = (c + turn) % 3;
                    let input = if warm { &lines } else { &copies[v] };
                    let chunk = &input[c * 1000..((c + 1) * 1000).min(input.len())];
                    let mut b = batch_of(chunk, warm);
                    let start = Instant::now();
                    match v {
                        0 => {
                            weir_core::transforms::partition(&mut b, &mut scratch, "native", |r| {
                                native
                                    .keep(&weir_transform_sdk::Record::new(&r.value))
                                    .map_err(|e| e.message())
                            })
                        }
                        1 => wasm_fields.process_batch(&mut b),
                        _ => wasm_payload.process_batch(&mut b),
                    }
                    t[v] += start.elapsed();
                    kept[v] += b.records.len();
                }
            }
            for v in 0..3 {
                times[v].push(t[v]);
            }
            ratios[0].push(t[0].as_secs_f64() / t[1].as_secs_f64());
            ratios[1].push(t[0].as_secs_f64() / t[2].as_secs_f64());
        }
        assert_eq!(kept[0], kept[1], "native and WASM disagree");
        assert_eq!(kept[0], kept[2], "native and WASM disagree");
        let [n, f, p] = times.map(|mut v| median(&mut v));
        let [rf, rp] = ratios.map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        });
        let per = |d: Duration| d.as_nanos() as f64 / lines.len() as f64;
        let mevs = |d: Duration| lines.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "media-filter, {} ({} of {} events kept):",
            if warm {
                "warm input (just read, as in a pipeline)"
            } else {
                "cold input (from RAM)"
            },
            kept[0],
            lines.len()
        );
        println!(
            "  native (same Rust code, per record)    {:>8.1} ns/event  {:>6.2} M events/s",
            per(n),
            mevs(n)
        );
        println!(
            "  WASM, declared fields only (default)    {:>8.1} ns/event  {:>6.2} M events/s  = {rf:.2}x native",
            per(f),
            mevs(f)
        );
        println!(
            "  WASM, whole events sent                 {:>8.1} ns/event  {:>6.2} M events/s  = {rp:.2}x native",
            per(p),
            mevs(p)
        );
    }
    println!("  (x native: median over the runs of native time / WASM time in the same run)");
}

fn batch_of(chunk: &[Bytes], warm: bool) -> Batch {
    if warm {
        for r in chunk {
            std::hint::black_box(memchr::memchr(b'\n', r));
        }
    }
    Batch::new(
        chunk.iter().map(|v| Record::new(v.clone())).collect(),
        Default::default(),
    )
}

/// 2. Boundary cost per 1 KiB record.
fn boundary(guests: &Path, cache: &Path) {
    let mut keep_all = guest(&guests.join("passthrough.wasm"), cfg(&[]), cache);
    let rec = Bytes::from(vec![b'k'; 1024]);
    let n_rec = 256 * 1000;
    let kib: Vec<Bytes> = (0..n_rec).map(|_| rec.clone()).collect();
    println!("boundary cost (guest keeps every record; whole 1 KiB payloads in, sources out):");
    for batch in [256usize, 1000] {
        let mut ts = Vec::new();
        for _ in 0..runs() {
            let (t, k) = run_batches(&kib, batch, true, |b| keep_all.process_batch(b));
            assert_eq!(k, n_rec);
            ts.push(t);
        }
        let m = median(&mut ts);
        println!(
            "  batch {batch:>4}: {:>6.1} ns per 1 KiB record ({:.1} µs per call)",
            m.as_nanos() as f64 / n_rec as f64,
            m.as_nanos() as f64 / (n_rec / batch) as f64 / 1000.0
        );
    }
}

/// 3. Loading: compile, cached load, instance.
fn load(guests: &Path) {
    let media = guests.join("media_filter.wasm");
    let eng = engine::engine(Limits::default().max_stack).unwrap();
    let wasm = std::fs::read(&media).unwrap();
    let (mut compile, mut cached, mut inst) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs().min(5) {
        let dir = tempfile::tempdir().unwrap();
        engine::forget_loaded();
        let l = engine::load_bytes(&eng, Limits::default().max_stack, &wasm, dir.path()).unwrap();
        assert_eq!(l.kind, LoadKind::Compiled);
        compile.push(l.elapsed);
        engine::forget_loaded();
        let l = engine::load_bytes(&eng, Limits::default().max_stack, &wasm, dir.path()).unwrap();
        assert_eq!(l.kind, LoadKind::Cached);
        cached.push(l.elapsed);
        let t = Instant::now();
        let g = guest(&media, cfg(&[]), dir.path());
        inst.push(t.elapsed());
        drop(g);
    }
    println!(
        "loading media-filter ({} KiB .wasm): compile {:.1} ms, from disk cache {:.2} ms, new instance + init {:.2} ms",
        wasm.len() / 1024,
        median(&mut compile).as_secs_f64() * 1e3,
        median(&mut cached).as_secs_f64() * 1e3,
        median(&mut inst).as_secs_f64() * 1e3
    );
}

fn guest(path: &Path, config: Vec<(String, String)>, cache: &Path) -> Guest {
    Guest::new(
        path,
        GuestOptions {
            label: "bench".into(),
            config,
            limits: Limits::default(),
            state: MemoryBackend::new(),
            cache_dir: cache.to_path_buf(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` over `records` in batches of `size`; returns the time spent in `f` and the number of
/// records kept. `warm`: read each batch's bytes first (untimed), as a source does.
fn run_batches(
    records: &[Bytes],
    size: usize,
    warm: bool,
    mut f: impl FnMut(&mut Batch),
) -> (Duration, usize) {
    let mut total = Duration::ZERO;
    let mut kept = 0;
    for chunk in records.chunks(size) {
        if warm {
            for r in chunk {
                std::hint::black_box(memchr::memchr(b'\n', r));
            }
        }
        let mut b = Batch::new(
            chunk.iter().map(|v| Record::new(v.clone())).collect(),
            Default::default(),
        );
        let t = Instant::now();
        f(&mut b);
        total += t.elapsed();
        kept += b.records.len();
    }
    (total, kept)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn repeat_to(fixture: &[u8], size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size + fixture.len());
    while out.len() < size {
        out.extend_from_slice(fixture);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    Bytes::from(out)
}

fn split_lines(data: &Bytes) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', data) {
        if i > start {
            out.push(data.slice(start..i));
        }
        start = i + 1;
    }
    out
}
