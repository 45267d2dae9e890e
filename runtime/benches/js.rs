//! The `js` transform against the same work as a Rust WASM transform, in one run.
//!
//! `cargo bench --bench js` builds the guests (transforms/, wasm32-unknown-unknown, release),
//! then runs, on one thread, over the media events of the Micro fixture that the accelerator's
//! two `spEnrichedFilter`s keep (repeated to WEIR_JS_BENCH_EVENTS, default 100,000), in batches
//! of 1000, the medians of WEIR_JS_BENCH_RUNS (default 5) runs of:
//!
//! 1. `js` in `snowplow_mode` with the accelerator's script
//!    (runtime/tests/fixtures/snowbridge/accelerator.js): the whole transform, as a pipeline
//!    runs it (enriched TSV to analytics-SDK JSON in the host, the script in the engine);
//! 2. of that, the host's TSV-to-JSON conversion alone;
//! 3. the same reduction written in Rust (transforms/tests/accelerator) through weir's WASM host.
//!
//! The variants take turns batch by batch, so load from other processes hits them alike. The
//! two transforms' outputs are compared record for record first.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

mod support;
use support::{build_guests, median};
use weir_core::config::Origin;
use weir_core::record::{Batch, Record};
use weir_core::state::MemoryBackend;
use weir_core::transforms::{js, TransformConfig};
use weir_core::wasm::{Guest, GuestOptions, Limits};

const BATCH: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the accelerator's filters keep: `event` is `unstruct` and `event_name` matches
/// `^(play|pause|ping|end|ad_break.*)_event$`.
fn kept_by_the_filters(line: &[u8]) -> bool {
    let f: Vec<&[u8]> = line.split(|&b| b == b'\t').collect();
    if f.len() < 131 || f[5] != b"unstruct" {
        return false;
    }
    let Some(stem) = f[126].strip_suffix(b"_event") else {
        return false;
    };
    matches!(stem, b"play" | b"pause" | b"ping" | b"end") || stem.starts_with(b"ad_break")
}

fn batch(lines: &[Bytes]) -> Batch {
    Batch::new(
        lines.iter().cloned().map(Record::new).collect(),
        Default::default(),
    )
}

fn main() {
    let Some((root, target)) = support::dirs() else {
        return;
    };
    let guests = build_guests(&root, &target.join("guests"));
    let cache = tempfile::tempdir().unwrap();
    let events = env_usize("WEIR_JS_BENCH_EVENTS", 100_000);
    let runs = env_usize("WEIR_JS_BENCH_RUNS", 5);

    let fixture = std::fs::read(root.join("examples/data/micro-media-session.tsv")).unwrap();
    let media: Vec<Bytes> = fixture
        .split(|&b| b == b'\n')
        .filter(|l| kept_by_the_filters(l))
        .map(Bytes::copy_from_slice)
        .collect();
    let lines: Vec<Bytes> = media.iter().cycle().take(events).cloned().collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    println!(
        "input: {} media events ({} distinct, avg {} B of enriched TSV), batches of {BATCH}; \
         medians of {runs} runs, one thread",
        lines.len(),
        media.len(),
        bytes / lines.len()
    );

    let script = root.join("runtime/tests/fixtures/snowbridge/accelerator.js");
    let cfg: js::Config = serde_json::from_value(json!({
        "script_path": script,
        "snowplow_mode": true,
        "engine": guests.join("weir_js.wasm"),
        "cache_dir": cache.path(),
    }))
    .unwrap();
    let t = Instant::now();
    let mut js = cfg
        .build("bench (js)", &Origin::new("bench", "transforms[0]"))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "js engine: compiled and started in {:.1} s (once per cache; weir_js.wasm is {:.1} MiB)",
        t.elapsed().as_secs_f64(),
        std::fs::metadata(guests.join("weir_js.wasm"))
            .unwrap()
            .len() as f64
            / (1 << 20) as f64
    );
    let mut rust = Guest::new(
        &guests.join("accelerator.wasm"),
        GuestOptions {
            label: "bench (wasm)".into(),
            config: Vec::new(),
            limits: Limits::default(),
            state: MemoryBackend::new(),
            cache_dir: cache.path().to_path_buf(),
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // The same output, record for record (as JSON: both write keys sorted, compactly).
    let mut a = batch(&media);
    js.process(&mut a);
    let mut b = batch(&media);
    rust.process_batch(&mut b);
    assert!(a.failed.is_empty() && b.failed.is_empty());
    let agree = a
        .records
        .iter()
        .zip(&b.records)
        .filter(|(x, y)| {
            serde_json::from_slice::<Value>(&x.value).ok()
                == serde_json::from_slice::<Value>(&y.value).ok()
        })
        .count();
    let same_bytes = a
        .records
        .iter()
        .zip(&b.records)
        .filter(|(x, y)| x.value == y.value)
        .count();
    println!(
        "outputs agree on {agree} of {} records ({same_bytes} byte for byte)",
        media.len()
    );
    if let Some((x, y)) = a
        .records
        .iter()
        .zip(&b.records)
        .find(|(x, y)| x.value != y.value)
    {
        println!(
            "  first difference:\n    js:   {}\n    rust: {}",
            String::from_utf8_lossy(&x.value),
            String::from_utf8_lossy(&y.value)
        );
    }

    // What the time goes to: the same engine with scripts that do less.
    let script_of = |src: &str, snowplow: bool| {
        let cfg: js::Config = serde_json::from_value(json!({
            "script": src,
            "snowplow_mode": snowplow,
            "engine": guests.join("weir_js.wasm"),
            "cache_dir": cache.path(),
        }))
        .unwrap();
        cfg.build("bench (js)", &Origin::new("bench", "transforms[0]"))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut empty = script_of("function main(input) { return { Data: \"\" }; }", true);
    let mut identity = script_of("function main(input) { return input; }", true);
    let mut text = script_of("function main(input) { return input; }", false);

    let names = [
        "js, snowplow_mode, accelerator.js (whole transform)",
        "  the host's TSV to analytics-SDK JSON alone",
        "  js, snowplow_mode, `return { Data: \"\" }`",
        "  js, snowplow_mode, `return input` (object back to JSON)",
        "  js, string mode, `return input` (the TSV as a string)",
        "Rust WASM transform (tests/accelerator), same output",
    ];
    let k = names.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut out = Vec::new();
    let mut scratch = weir_core::snowplow::Scratch::default();
    for _ in 0..runs {
        let mut t = vec![Duration::ZERO; k];
        for (c, chunk) in lines.chunks(BATCH).enumerate() {
            for turn in 0..k {
                let v = (c + turn) % k;
                let mut b = batch(chunk);
                let start = Instant::now();
                match v {
                    0 => js.process(&mut b),
                    1 => {
                        for r in &b.records {
                            out.clear();
                            weir_core::snowplow::to_json(&r.value, &mut out, &mut scratch).unwrap();
                        }
                    }
                    2 => empty.process(&mut b),
                    3 => identity.process(&mut b),
                    4 => text.process(&mut b),
                    _ => rust.process_batch(&mut b),
                }
                t[v] += start.elapsed();
                if v != 1 {
                    assert_eq!(b.records.len(), chunk.len(), "records lost");
                }
            }
        }
        for v in 0..k {
            times[v].push(t[v].as_secs_f64());
        }
    }
    let m: Vec<f64> = times.iter().map(|v| median(v)).collect();
    let n = lines.len() as f64;
    for (name, s) in names.iter().zip(&m) {
        println!(
            "  {name:<58} {:>10.0} events/s  {:>7.2} µs/event",
            n / s,
            s / n * 1e6
        );
    }
    println!("js / Rust WASM: {:.1}x the time", m[0] / m[k - 1]);
}
