//! The live-viewer state at scale: media-filter → viewer-state over N viewers, on one core.
//!
//! `cargo bench --bench viewers` builds the guests, generates for each N (WEIR_VIEWERS, default
//! `1000,100000,1000000`) a file of N viewers × K media events (WEIR_VIEWER_EVENTS, default 3)
//! from the real media session of the fixture — each viewer gets its own id and K consecutive
//! events of the session, every event its own id, interleaved as concurrent viewers send them —
//! cached under target/bench-data, and runs weir pinned to CPU 0 (`taskset -c 0`):
//! file → media-filter → viewer-state → file, with the memory state backend (the disk backend
//! is checkpointed with a source's committed positions, which a file source does not have). It
//! prints media events/s by CPU time (user + system) and wall time, the peak RSS, and
//! the memory per viewer: (peak RSS at N − peak RSS at the smallest N) / the viewers added.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

mod support;
use support::{build_guests, measure, write_config};

fn main() {
    let Some((root, target)) = support::dirs() else {
        return;
    };
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let sizes: Vec<u64> = env("WEIR_VIEWERS", "1000,100000,1000000")
        .split(',')
        .map(|s| s.trim().parse().expect("WEIR_VIEWERS: numbers"))
        .collect();
    let k: u64 = env("WEIR_VIEWER_EVENTS", "3").parse().unwrap();
    let runs: usize = env("WEIR_VIEWERS_BENCH_RUNS", "3").parse().unwrap();
    // The disk backend is checkpointed with a source's committed positions: a file source has
    // none, and `weir run` refuses the combination (measuring it needs a Kafka source).
    let backends: Vec<String> = env("WEIR_VIEWERS_BACKENDS", "memory")
        .split(',')
        .map(str::to_string)
        .collect();
    let guests = build_guests(&root, &target.join("guests"));
    let weir = env!("CARGO_BIN_EXE_weir");
    let session = media_session(&root.join("examples/data/micro-media-session.tsv"));
    println!(
        "viewer-state at scale: {k} media events per viewer, {runs} runs each, pinned to CPU 0"
    );
    for backend in &backends {
        let mut base: Option<(u64, u64)> = None;
        for &n in &sizes {
            let input = dir.join(format!("viewers-{n}x{k}.tsv"));
            let events = generate(&session, n, k, &input);
            match backend.as_str() {
                "memory" => {}
                "disk" => panic!(
                    "WEIR_VIEWERS_BACKENDS: the disk backend needs a source that checkpoints \
                     (Kafka); this bench reads a file"
                ),
                other => panic!("WEIR_VIEWERS_BACKENDS: memory, found {other}"),
            }
            let cfg = write_config(
                &dir,
                "viewers.toml",
                &format!(
                    "[source]\ntype = \"file\"\npaths = [\"{input}\"]\n\
                     [[transforms]]\ntype = \"wasm\"\npath = \"{guests}/media_filter.wasm\"\n\
                     [[transforms]]\ntype = \"wasm\"\npath = \"{guests}/viewer_state.wasm\"\n\
                     config = {{ ttl = \"30m\" }}\n\
                     [sink]\ntype = \"file\"\npath = \"{out}\"\n",
                    input = input.display(),
                    guests = guests.display(),
                    out = dir.join("viewers-out.jsonl").display(),
                ),
            );
            let m = measure(runs, || {
                let mut c = Command::new("taskset");
                c.args(["-c", "0", weir, "run", "--progress=never"])
                    .arg(&cfg)
                    .env("WEIR_LOG", "warn");
                c
            });
            let per_viewer = match base {
                Some((n0, rss0)) if n > n0 => format!(
                    "{:>6.0} B/viewer",
                    (m.peak_rss_kib.saturating_sub(rss0) * 1024) as f64 / (n - n0) as f64
                ),
                _ => "     (base)".to_string(),
            };
            if base.is_none() {
                base = Some((n, m.peak_rss_kib));
            }
            println!(
                "{backend:<6} {n:>8} viewers {events:>8} events | cpu {:>7.3} s {:>8.0} ev/s | wall {:>7.3} s {:>8.0} ev/s | peak RSS {:>7.1} MiB {per_viewer}",
                m.median_cpu(),
                events as f64 / m.median_cpu(),
                m.median(),
                events as f64 / m.median(),
                m.peak_rss_kib as f64 / 1024.0,
            );
        }
    }
}

/// The media events of the fixture's session, split into fields.
fn media_session(fixture: &Path) -> Vec<Vec<String>> {
    std::io::BufReader::new(std::fs::File::open(fixture).unwrap())
        .lines()
        .map(Result::unwrap)
        .map(|l| l.split('\t').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() == 131 && f[125] == "com.snowplowanalytics.snowplow.media")
        .collect()
}

/// Writes `n` viewers × `k` events (unless the file is there); returns the event count.
fn generate(session: &[Vec<String>], n: u64, k: u64, out: &Path) -> u64 {
    let events = n * k;
    if out.exists() {
        return events;
    }
    let tmp = out.with_extension("tmp");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).unwrap());
    let len = session.len() as u64;
    // Round j: event j of every viewer, as concurrent viewers send them.
    for j in 0..k {
        for v in 0..n {
            let src = &session[((v * 7 + j) % len) as usize];
            for (i, f) in src.iter().enumerate() {
                if i > 0 {
                    w.write_all(b"\t").unwrap();
                }
                match i {
                    6 => write!(w, "{v:08x}-{j:04x}-4000-8000-000000000000").unwrap(),
                    15 => write!(w, "{v:08x}-0000-4000-8000-{v:012x}").unwrap(),
                    _ => w.write_all(f.as_bytes()).unwrap(),
                }
            }
            w.write_all(b"\n").unwrap();
        }
    }
    w.flush().unwrap();
    std::fs::rename(&tmp, out).unwrap();
    events
}
