//! End-to-end guarantees of the pipeline, on the real binary: bounded memory under a stalled sink,
//! exactly-once arrival without crashes, and a clean drain on SIGTERM.

mod common;
mod wasm_support;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// 200,000 records of ~1 KiB, each starting with its sequence number.
fn big_input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("input.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let pad = "x".repeat(1000);
    for i in 0..n {
        writeln!(f, "{i:08}\t{pad}").unwrap();
    }
    f.flush().unwrap();
    path
}

#[test]
fn stalled_sink_holds_memory_bounded_and_every_record_arrives_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 200_000; // ~200 MB of input: far more than the queues may hold
    let input = big_input(dir.path(), n);
    let fifo = dir.path().join("sink.fifo");
    mkfifo(&fifo);
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
{}
[sink]
type = "file"
path = "{}"

[batch]
max_records = 500
queue = 2
"#,
            file_source(&input),
            fifo.display()
        ),
    );
    let child = spawn(&cfg);
    let pid = child.id();
    let mut reader = BufReader::with_capacity(1 << 16, std::fs::File::open(&fifo).unwrap());

    // Read a little, then stall the sink for 3 s by not reading at all.
    let mut seen = vec![false; n];
    let mut count = 0usize;
    let mut line = String::new();
    let mut take = |reader: &mut BufReader<std::fs::File>, limit: usize, seen: &mut Vec<bool>| {
        let mut got = 0;
        while got < limit {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let seq: usize = line[..8].parse().unwrap();
            assert!(!seen[seq], "record {seq} arrived twice");
            seen[seq] = true;
            got += 1;
        }
        got
    };
    count += take(&mut reader, 5_000, &mut seen);
    let stall_end = Instant::now() + Duration::from_secs(3);
    let mut peak_during_stall = 0;
    while Instant::now() < stall_end {
        if let Some((rss, _)) = rss_kib(pid) {
            peak_during_stall = peak_during_stall.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("peak RSS while the sink was stalled: {peak_during_stall} KiB");
    count += take(&mut reader, usize::MAX, &mut seen);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir failed: {stderr}");
    assert_eq!(count, n, "every record arrives");
    assert!(seen.iter().all(|s| *s));
    assert_eq!(summary(&stderr, "acknowledged"), Some(n as u64), "{stderr}");
    // 200 MB went through; the process never held more than a few batches of it.
    assert!(
        peak_during_stall < 96 * 1024,
        "RSS during the stall was {peak_during_stall} KiB: the queue is not bounded"
    );
}

#[test]
fn sigterm_drains_every_record_read_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.txt");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
[source]
type = "stdin"

[sink]
type = "file"
path = "{}"

[batch]
max_records = 1000
flush_interval = "10s"

[http]
address = "127.0.0.1:0"
"#,
            out_path.display()
        ),
    );
    let mut weir = Logged::spawn(
        weir()
            .arg("run")
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let http = weir.bound("serving /healthz").to_string();
    let mut stdin = weir.child.stdin.take().unwrap();
    // 2,500 records: two full batches and a half-full one that only the drain can flush (the
    // flush interval is 10 s). Stdin stays open: weir must not wait for its end.
    let mut chunk = String::new();
    for i in 0..2500 {
        chunk.push_str(&format!("{i:08} payload\n"));
    }
    stdin.write_all(chunk.as_bytes()).unwrap();
    stdin.flush().unwrap();
    // Signal once weir has read them all (and, the flush interval being 10 s, holds the last
    // 500 in a batch not yet written).
    wait_until(
        "weir to read 2,500 records",
        Duration::from_secs(60),
        || {
            http_get(&http, "/stats")
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|s| s["read"] == 2500)
        },
    );
    let (status, stderr) = weir.terminate(Duration::from_secs(60));
    drop(stdin);
    assert!(status.success(), "exit status {status:?}: {stderr}");
    assert_eq!(summary(&stderr, "read"), Some(2500), "{stderr}");
    assert_eq!(summary(&stderr, "acknowledged"), Some(2500), "{stderr}");
    let out = std::fs::read_to_string(&out_path).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2500, "every record read reached the sink");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(&l[..8], format!("{i:08}"), "in order, no gaps");
    }
}

#[test]
fn sigterm_during_a_large_file_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = big_input(dir.path(), 200_000);
    let fifo = dir.path().join("slow.fifo");
    mkfifo(&fifo);
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[sink]\ntype = \"file\"\npath = \"{}\"\n",
            file_source(&input),
            fifo.display()
        ),
    );
    let child = spawn(&cfg);
    let pid = child.id();
    // The sink (this reader) holds weir back: its bounded queues keep it mid-file when the
    // signal arrives, after the first 20,000 records came out.
    let mut reader = BufReader::new(std::fs::File::open(&fifo).unwrap());
    let mut lines = 0u64;
    let mut buf = String::new();
    loop {
        buf.clear();
        if reader.read_line(&mut buf).unwrap() == 0 {
            break;
        }
        assert_eq!(&buf[..8], format!("{lines:08}"), "in order, no gaps");
        lines += 1;
        if lines == 20_000 {
            signal(pid, libc::SIGTERM);
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let read = summary(&stderr, "read").unwrap();
    assert!(
        read < 200_000,
        "the signal should have stopped the source early"
    );
    assert_eq!(lines, read, "every record read reached the sink");
    assert_eq!(summary(&stderr, "acknowledged"), Some(read));
}

/// With several transform workers, batches finish out of order (here every tenth batch holds a
/// record on which the guest loops until its deadline, three times over while it is isolated,
/// while the other batches take microseconds); the sink and the failure sink still get the
/// records in input order.
#[test]
fn several_workers_keep_the_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = 10_000;
    let slow = |i: usize| i % 500 == 250;
    let lines: String = (0..n)
        .map(|i| {
            if slow(i) {
                "loop\n".to_string()
            } else {
                format!("{i:08}\n")
            }
        })
        .collect();
    let input = write(dir.path(), "in.txt", &lines);
    let (out, bad) = (dir.path().join("out.txt"), dir.path().join("bad.ndjson"));
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
workers = 4

{source}

[[transforms]]
type = "wasm"
path = {wasm:?}
cache_dir = {cache:?}
[transforms.limits]
timeout = "30ms"

[sink]
type = "file"
path = {out:?}

[failure]
type = "file"
path = {bad:?}

[batch]
max_records = 50
"#,
            source = file_source(&input),
            wasm = wasm_support::rust_guest("hostile").display().to_string(),
            cache = wasm_support::cache_dir().display().to_string(),
            out = out.display().to_string(),
            bad = bad.display().to_string(),
        ),
    );
    let o = run(&cfg);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected: Vec<String> = (0..n)
        .filter(|&i| !slow(i))
        .map(|i| format!("{i:08}"))
        .collect();
    let got: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(got.len(), expected.len());
    if let Some(at) = got.iter().zip(&expected).position(|(g, e)| g != e) {
        panic!(
            "out of order at line {at}: {:?}, expected {:?}",
            &got[at..(at + 3).min(got.len())],
            &expected[at..(at + 3).min(expected.len())]
        );
    }
    // Each slow record is one bad row, failed by the deadline.
    let bad = std::fs::read_to_string(&bad).unwrap();
    let rows: Vec<serde_json::Value> = bad
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), (0..n).filter(|&i| slow(i)).count());
    assert!(bad.contains("time limit of 30ms"), "{}", rows[0]);
}
