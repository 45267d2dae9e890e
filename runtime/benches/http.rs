//! Throughput of the `http` sink to a local endpoint, on one core, against a raw client.
//!
//! `cargo bench --bench http` turns the bundled enriched events into JSON (spEnrichedToJson, the
//! body event forwarding sends; ~WEIR_BENCH_MB MiB, default 256, cached under target/bench-data),
//! starts an HTTP/1.1 server in this process on CPU 1 that counts the records and bytes it is
//! sent, and then runs, pinned to CPU 0, three times each:
//! - a raw client: this binary again (`--raw-client`), reading the file and POSTing the same
//!   JSON-array batches with reqwest on one thread, as many in flight, and nothing else;
//! - weir: file → http, Snowbridge's default batching (50 records, 5 requests in flight);
//! - weir: file → http with 500 records per request.
//!
//! It prints medians of events/s by wall-clock and by CPU time, the ratio to the raw client,
//! and checks that the server got every record of every run.

use std::io::BufRead;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

mod support;
use support::{measure, write_config, Measure};

const RUNS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--raw-client") {
        raw_client(&args[at + 1], &args[at + 2], args[at + 3].parse().unwrap());
        return;
    }
    let Some((root, target)) = support::dirs() else {
        return;
    };
    let dir = target.join("bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let mb: u64 = std::env::var("WEIR_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let weir = env!("CARGO_BIN_EXE_weir");
    let input = dir.join(format!("enriched-{mb}mb.json"));
    let events = json_input(&root, &dir, weir, &input, mb << 20);

    let records = Arc::new(AtomicU64::new(0));
    let addr = server(records.clone());
    let url = format!("http://{addr}/events");
    println!(
        "input: {} ({events} events, {} MiB of JSON); {RUNS} runs each, pinned to CPU 0 (the server on CPU 1)",
        input.display(),
        std::fs::metadata(&input).unwrap().len() >> 20
    );

    let sink = |batch: usize| {
        write_config(
            &dir,
            &format!("http-{batch}.toml"),
            &format!(
                "[source]\ntype = \"file\"\npaths = [\"{}\"]\n[sink]\ntype = \"http\"\nurl = \"{url}\"\n\
                 max_batch_messages = {batch}\nconcurrency = 5\n[batch]\nmax_records = {}\n",
                input.display(),
                batch.max(500)
            ),
        )
    };
    let run = |name: &str, m: &Measure, raw: Option<&Measure>| {
        let ratio = |a: f64, b: Option<f64>| {
            b.map(|b| format!("{:>5.2}x raw", b / a))
                .unwrap_or_default()
        };
        println!(
            "{name:<44} wall {:>6.3} s {:>8.0} ev/s {} | cpu {:>6.3} s {:>8.0} ev/s {} | peak RSS {:>5.1} MiB",
            m.median(),
            events as f64 / m.median(),
            ratio(m.median(), raw.map(Measure::median)),
            m.median_cpu(),
            events as f64 / m.median_cpu(),
            ratio(m.median_cpu(), raw.map(Measure::median_cpu)),
            m.peak_rss_kib as f64 / 1024.0,
        );
    };
    let check = |what: &str| {
        let got = records.swap(0, Ordering::SeqCst);
        assert_eq!(
            got,
            events * RUNS as u64,
            "{what}: the server got {got} records"
        );
    };

    let exe = std::env::current_exe().unwrap();
    let raw = measure(RUNS, || {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"])
            .arg(&exe)
            .args(["--raw-client"])
            .arg(&input)
            .arg(&url)
            .arg("50");
        c
    });
    check("raw client");
    run(
        "raw client (reqwest, 50 per request, 5 in flight)",
        &raw,
        None,
    );
    for batch in [50, 500] {
        let cfg = sink(batch);
        let m = measure(RUNS, || {
            let mut c = Command::new("taskset");
            c.args(["-c", "0", weir, "run", "--progress=never"])
                .arg(&cfg)
                .env("WEIR_LOG", "warn");
            c
        });
        check("weir");
        run(
            &format!("weir: file -> http ({batch} per request)"),
            &m,
            Some(&raw),
        );
    }
}

/// The bundled enriched events as JSON lines, repeated to about `bytes`; returns their count.
fn json_input(root: &Path, dir: &Path, weir: &str, out: &Path, bytes: u64) -> u64 {
    if !out.exists() {
        let fixture = root.join("examples/data/micro-media-session.tsv");
        let one = dir.join("micro-media-session.json");
        let cfg = write_config(
            dir,
            "to-json.toml",
            &format!(
                "[source]\ntype = \"file\"\npaths = [\"{}\"]\n[[transforms]]\ntype = \"spEnrichedToJson\"\n\
                 [sink]\ntype = \"file\"\npath = \"{}\"\n",
                fixture.display(),
                one.display()
            ),
        );
        let _ = std::fs::remove_file(&one);
        assert!(Command::new(weir)
            .args(["run", "--progress=never"])
            .arg(&cfg)
            .status()
            .unwrap()
            .success());
        let text = std::fs::read(&one).unwrap();
        let tmp = out.with_extension("partial");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
        let mut written = 0;
        while written < bytes {
            std::io::Write::write_all(&mut f, &text).unwrap();
            written += text.len() as u64;
        }
        std::io::Write::flush(&mut f).unwrap();
        drop(f);
        std::fs::rename(&tmp, out).unwrap();
    }
    std::io::BufReader::new(std::fs::File::open(out).unwrap())
        .split(b'\n')
        .count() as u64
}

/// An HTTP/1.1 server on CPU 1 that answers 200 and counts the records of each JSON array.
fn server(records: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity only touch it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let records = records.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let records = records.clone();
                            async move {
                                use http_body_util::BodyExt;
                                let body = req.into_body().collect().await?.to_bytes();
                                // One record per top-level element: the records are objects, so
                                // count the object starts at depth 1 (strings can hold braces).
                                records.fetch_add(top_level_objects(&body), Ordering::Relaxed);
                                Ok::<_, hyper::Error>(hyper::Response::new(
                                    http_body_util::Full::new(hyper::body::Bytes::from_static(
                                        b"ok",
                                    )),
                                ))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
    });
    addr
}

fn top_level_objects(body: &[u8]) -> u64 {
    let (mut depth, mut in_str, mut esc, mut n) = (0i32, false, false, 0);
    for &b in body {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                if depth == 1 && b == b'{' {
                    n += 1;
                }
                depth += 1;
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
    }
    n
}

/// The floor: read the lines, POST them as JSON arrays of `batch`, 5 requests in flight.
fn raw_client(input: &str, url: &str, batch: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use futures::StreamExt;
        let client = reqwest::Client::new();
        let text = std::fs::read(input).unwrap();
        let lines: Vec<&[u8]> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        futures::stream::iter(lines.chunks(batch))
            .map(|chunk| {
                let mut body =
                    Vec::with_capacity(chunk.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
                body.push(b'[');
                for (i, l) in chunk.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(l);
                }
                body.push(b']');
                let client = client.clone();
                async move {
                    let r = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                    r.bytes().await.unwrap();
                }
            })
            .buffer_unordered(5)
            .collect::<Vec<()>>()
            .await;
    });
}
