//! Throughput of the built-in Snowplow transforms against `grep -c`, on one core.
//!
//! `cargo bench --bench throughput` generates a ~1 GiB enriched-TSV file from the bundled fixture
//! (cached under target/bench-data; size from WEIR_BENCH_MB), then runs, pinned to CPU 0, five
//! times each: `grep -c` on the file, weir's atomic-field filter (file → spEnrichedFilter → file)
//! and TSV → JSON (file → spEnrichedToJson → null). It prints medians of events/s by wall-clock
//! time and by CPU time (user + system, from wait4: steadier on a shared machine), the ratio to
//! `grep -c`, and the peak RSS.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

mod support;
use support::{measure, write_config, Measure};

const RUNS: usize = 5;

fn main() {
    let Some((root, target)) = support::dirs() else {
        return;
    };
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let mb: u64 = std::env::var("WEIR_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let input = dir.join(format!("enriched-{mb}mb.tsv"));
    let events = generate(
        &root.join("examples/data/micro-media-session.tsv"),
        &input,
        mb << 20,
    );
    let weir = env!("CARGO_BIN_EXE_weir");
    println!(
        "input: {} ({} MiB, {events} events); {RUNS} runs each, pinned to CPU 0 (taskset -c 0)",
        input.display(),
        mb
    );

    let filter_cfg = write_config(&dir, "filter.toml", &format!(
        "[source]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_name\"\nregex = \"^(play|pause|ping|end|ad_break_start|ad_break_end)_event$\"\n\
         [sink]\ntype = \"file\"\npath = \"{}\"\n",
        input.display(), dir.join("filter-out.tsv").display()));
    let json_cfg = write_config(
        &dir,
        "json.toml",
        &format!(
            "[source]\ntype = \"file\"\npaths = [\"{}\"]\n\
         [[transforms]]\ntype = \"spEnrichedToJson\"\n[sink]\ntype = \"null\"\n",
            input.display()
        ),
    );
    let read_cfg = write_config(
        &dir,
        "read.toml",
        &format!(
            "[source]\ntype = \"file\"\npaths = [\"{}\"]\n[sink]\ntype = \"null\"\n",
            input.display()
        ),
    );

    let grep = measure(RUNS, || {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", "grep", "-c", "_event"]).arg(&input);
        c
    });
    let report = |name: &str, m: &Measure| {
        println!(
            "{name:<40} wall {:>6.3} s {:>9.0} ev/s {:>5.2}x grep | cpu {:>6.3} s {:>9.0} ev/s {:>5.2}x grep | peak RSS {:>5.1} MiB | runs {}",
            m.median(),
            events as f64 / m.median(),
            grep.median() / m.median(),
            m.median_cpu(),
            events as f64 / m.median_cpu(),
            grep.median_cpu() / m.median_cpu(),
            m.peak_rss_kib as f64 / 1024.0,
            m.secs.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(" ")
        )
    };
    report("grep -c _event", &grep);
    for (name, cfg) in [
        ("weir: file -> null (read only)", &read_cfg),
        ("weir: file -> spEnrichedFilter -> file", &filter_cfg),
        ("weir: file -> spEnrichedToJson -> null", &json_cfg),
    ] {
        let m = measure(RUNS, || {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", weir, "run", "--progress=never"])
                .arg(cfg)
                .env("WEIR_LOG", "warn");
            c
        });
        report(name, &m);
    }
}

/// Repeats the fixture's lines until the file has at least `bytes`; returns the event count.
fn generate(fixture: &Path, out: &Path, bytes: u64) -> u64 {
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(fixture).unwrap())
        .lines()
        .map(Result::unwrap)
        .filter(|l| !l.is_empty())
        .collect();
    if let Ok(meta) = std::fs::metadata(out) {
        if meta.len() >= bytes {
            let text_lines = std::io::BufReader::new(std::fs::File::open(out).unwrap())
                .lines()
                .count();
            return text_lines as u64;
        }
    }
    let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(out).unwrap());
    let (mut written, mut n) = (0u64, 0u64);
    while written < bytes {
        for l in &lines {
            w.write_all(l.as_bytes()).unwrap();
            w.write_all(b"\n").unwrap();
            written += l.len() as u64 + 1;
            n += 1;
        }
    }
    w.flush().unwrap();
    n
}
