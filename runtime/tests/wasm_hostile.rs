//! Hostile guests (built by the test from `transforms/tests/hostile`): whatever one record makes
//! the guest do, that record fails with the reason, the rest of the batch is processed, and the
//! transform keeps working for the next batch.

mod wasm_support;

use std::time::{Duration, Instant};

use wasm_support::*;
use weir_core::record::Batch;
use weir_core::wasm::{Guest, Limits};

fn hostile(limits: Limits) -> Guest {
    guest(&rust_guest("hostile"), &[], limits)
}

/// Runs `values` through `g`; returns (outputs, failed (payload, reason)).
fn run(g: &mut Guest, values: &[&str]) -> (Vec<String>, Vec<(String, String)>, Batch) {
    let mut b = batch(values);
    g.process_batch(&mut b);
    let failed = failures(&b);
    (texts(&b.records), failed, b)
}

/// The next batch after a disaster is processed normally.
fn still_works(g: &mut Guest) {
    let (out, failed, _) = run(g, &["after", "split:1,2"]);
    assert_eq!(out, vec!["after", "1", "2"]);
    assert!(failed.is_empty());
}

#[test]
fn map_flat_map_keys_and_errors_as_data_without_traps() {
    let mut g = hostile(Limits::default());
    let (out, failed, b) = run(
        &mut g,
        &["a", "split:x,y", "upper:abc", "fail:nope", "key:K", "b"],
    );
    assert_eq!(out, vec!["a", "x", "y", "ABC", "key:K", "b"]);
    assert_eq!(b.records[4].key.as_deref(), Some(&b"K"[..]));
    assert_eq!(failed, vec![("fail:nope".to_string(), "nope".to_string())]);
    assert_eq!(b.failed[0].component, "transforms[0] (wasm)");
    assert_eq!(g.stats.traps, 0, "per-record errors are data, not traps");
    assert_eq!(g.stats.calls, 1, "one guest call per batch");
}

/// The reason a deadline stop gives: only a `Trap::Interrupt` (the epoch deadline firing) is
/// described this way, so it says which mechanism stopped the call.
const DEADLINE: &str = "guest exceeded its time limit of 200ms for one batch (limits.timeout)";

#[test]
fn infinite_loop_is_stopped_by_the_epoch_deadline() {
    let timeout = Duration::from_millis(200);
    let mut g = hostile(Limits {
        timeout,
        ..Limits::default()
    });
    // Alone: the one call traps on the epoch deadline, not before it is due.
    let t = Instant::now();
    let (out, failed, _) = run(&mut g, &["loop"]);
    assert!(t.elapsed() >= timeout, "stopped before its deadline");
    assert!(out.is_empty());
    assert_eq!(failed.len(), 1);
    assert!(failed[0].1.starts_with(DEADLINE), "{}", failed[0].1);
    assert_eq!((g.stats.calls, g.stats.traps, g.stats.rebuilds), (1, 1, 1));

    // In a batch: bisection isolates it. Calls [0,5) and [2,5) and [2,3) hit the deadline
    // (three traps, three fresh instances); [0,2) and [3,5) go through.
    let (out, failed, _) = run(&mut g, &["a", "b", "loop", "split:c,d", "e"]);
    assert_eq!(out, vec!["a", "b", "c", "d", "e"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "loop");
    assert!(failed[0].1.starts_with(DEADLINE), "{}", failed[0].1);
    assert_eq!((g.stats.calls, g.stats.traps, g.stats.rebuilds), (6, 4, 4));
    still_works(&mut g);
}

#[test]
fn memory_bomb_is_stopped_at_the_cap() {
    let cap = 16 << 20;
    let mut g = hostile(Limits {
        max_memory: cap,
        ..Limits::default()
    });
    let (out, failed, _) = run(&mut g, &["a", "alloc", "b"]);
    assert_eq!(out, vec!["a", "b"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "alloc");
    assert!(
        failed[0].1.contains("memory limit of 16777216 bytes"),
        "{}",
        failed[0].1
    );
    still_works(&mut g);
}

#[test]
fn panic_sends_the_record_to_the_failure_sink_with_message_and_backtrace() {
    let mut g = hostile(Limits::default());
    let (out, failed, _) = run(&mut g, &["a", "b", "panic", "c"]);
    assert_eq!(out, vec!["a", "b", "c"]);
    assert_eq!(failed.len(), 1);
    let reason = &failed[0].1;
    assert!(
        reason.starts_with("guest panicked: hostile panic at "),
        "{reason}"
    );
    assert!(reason.contains("guest backtrace:"), "{reason}");
    assert!(
        reason.contains("\n  0: weir:transform/transform@0.1.0#process"),
        "backtrace names guest functions: {reason}"
    );
    assert!(!reason.contains("rust_panic"), "{reason}");
    assert!(g.stats.rebuilds >= 1);
    still_works(&mut g);
}

#[test]
fn huge_output_is_refused_past_the_limit() {
    let mut g = guest(
        &rust_guest("hostile"),
        &[("huge_bytes", "8388608")],
        Limits {
            max_output_bytes: 1 << 20,
            ..Limits::default()
        },
    );
    let (out, failed, _) = run(&mut g, &["a", "huge", "upper:b"]);
    assert_eq!(out, vec!["a", "B"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, "huge");
    assert!(
        failed[0].1.contains("output of 8388608 bytes refused"),
        "{}",
        failed[0].1
    );
    still_works(&mut g);
}

#[test]
fn stack_overflow_is_a_trap_like_any_other() {
    let mut g = hostile(Limits {
        max_stack: 256 << 10,
        ..Limits::default()
    });
    let (out, failed, _) = run(&mut g, &["a", "recurse", "b"]);
    assert_eq!(out, vec!["a", "b"]);
    assert!(
        failed[0].1.contains("overflowed its stack"),
        "{}",
        failed[0].1
    );
    still_works(&mut g);
}

#[test]
fn several_poison_records_in_one_batch_are_all_isolated() {
    let mut g = hostile(Limits::default());
    let mut values: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    for i in [3, 50, 51, 97] {
        values[i] = "panic".into();
    }
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let (out, failed, _) = run(&mut g, &refs);
    assert_eq!(out.len(), 96);
    assert_eq!(failed.len(), 4);
    assert!(out.iter().all(|o| o.starts_with('r')));
}

#[test]
fn repeated_traps_give_up_on_the_batch_and_back_off() {
    let mut g = hostile(Limits {
        max_traps_per_batch: 4,
        ..Limits::default()
    });
    let all_bad = vec!["panic"; 64];
    let (out, failed, _) = run(&mut g, &all_bad);
    assert!(out.is_empty());
    assert_eq!(failed.len(), 64, "every record fails, none is lost");
    assert!(
        failed.iter().any(|f| f.1.contains("max_traps_per_batch")),
        "{:?}",
        failed[0]
    );
    assert_eq!(g.stats.traps, 4, "it gave up at the limit");
    // The next batch waits before touching the guest again (backoff), longer after each batch
    // that gives up.
    assert_eq!(g.backoff(), Duration::from_millis(10));
    run(&mut g, &all_bad);
    assert_eq!(g.stats.traps, 8);
    assert_eq!(g.backoff(), Duration::from_millis(20));
    let t = Instant::now();
    still_works(&mut g);
    assert!(t.elapsed() >= Duration::from_millis(20), "the batch waited");
    // A clean batch resets the backoff.
    assert_eq!(g.backoff(), Duration::ZERO);
}

#[test]
fn state_is_host_owned_survives_rebuilds_and_a_failed_call_leaves_no_writes() {
    let mut g = hostile(Limits::default());
    let (out, _, _) = run(&mut g, &["put:k1", "get:k1", "get:k2"]);
    assert_eq!(out, vec!["put:k1", "k1=v", "k2=none"]);
    // A panic discards the instance; the state is the host's, so k1 is still there; k2 was
    // written by the call that trapped, so it is not.
    let (out, failed, _) = run(&mut g, &["putpanic:k2", "get:k1"]);
    assert_eq!(failed.len(), 1);
    assert_eq!(out, vec!["k1=v"]);
    let (out, _, _) = run(&mut g, &["get:k1", "get:k2"]);
    assert_eq!(out, vec!["k1=v", "k2=none"]);
}

#[test]
fn expired_keys_reach_the_guest_once_and_a_trapping_expired_still_deletes_them() {
    let mut g = hostile(Limits::default());
    assert!(g.hears_expiry());
    let (out, _, _) = run(&mut g, &["ttl:a:1", "ttl:keep:1", "ttl:later:3600000"]);
    assert_eq!(out.len(), 3);
    std::thread::sleep(Duration::from_millis(5));
    // `a` is announced with its last value and deleted; `keep` is written again by the guest.
    assert_eq!(texts(&g.expire()), vec!["expired:a=v"]);
    assert!(g.expire().is_empty(), "once");
    let (out, _, _) = run(&mut g, &["get:a", "get:keep", "get:later"]);
    assert_eq!(out, vec!["a=none", "keep=v", "later=v"]);
    // A guest whose `expired` traps: the keys are deleted all the same (no endless retry), the
    // instance is rebuilt and keeps working.
    run(&mut g, &["ttl:panic1:1", "ttl:panic2:1"]);
    std::thread::sleep(Duration::from_millis(5));
    assert!(g.expire().is_empty());
    assert!(g.expire().is_empty(), "not retried");
    let (out, _, _) = run(&mut g, &["get:panic1", "get:panic2"]);
    assert_eq!(out, vec!["panic1=none", "panic2=none"]);
    still_works(&mut g);
}

#[test]
fn guest_sees_the_host_clock_and_no_wasi() {
    let mut g = hostile(Limits::default());
    let (out, _, _) = run(&mut g, &["clock"]);
    let ms: i64 = out[0].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((now - ms).abs() < 5_000);

    // A guest that reads the environment (getenv: WASI's environ_get) is refused when it is
    // loaded, naming the import weir does not provide; nothing of it runs.
    let wasi = c_guest("wasi_getenv");
    let e = Guest::new(&wasi, options(&[], Limits::default()))
        .err()
        .expect("a guest importing WASI is refused");
    let msg = e.to_string();
    assert!(
        msg.contains("wasi_snapshot_preview1::environ_get"),
        "the error names the WASI import: {msg}"
    );
    assert!(!msg.contains("read the host's environment"), "{msg}");
}

#[test]
fn init_errors_and_non_transforms_are_build_errors() {
    let e = Guest::new(
        &rust_guest("hostile"),
        options(&[("fail_init", "bad setting x")], Limits::default()),
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("bad setting x"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let e = Guest::new(&junk, options(&[], Limits::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a WebAssembly"), "{e}");
}

/// The state attack of issue 15 (one 500 KiB value, `get-many` of 8,000 copies of its key) on
/// the real binary: the record fails with the reason, the others go through, and weir's peak
/// RSS stays far below the 4 GB the unbounded answer took.
#[test]
fn get_many_of_thousands_of_copies_of_a_large_value_is_refused_within_the_guests_memory() {
    use std::io::Write as _;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let (out, bad) = (dir.path().join("out"), dir.path().join("bad"));
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\ntype = \"stdin\"\n\
             [[transforms]]\ntype = \"wasm\"\npath = \"{}\"\ncache_dir = \"{}\"\n\
             [transforms.limits]\nmax_memory = \"64 MiB\"\n\
             [sink]\ntype = \"file\"\npath = \"{}\"\n[failure]\ntype = \"file\"\npath = \"{}\"\n\
             [batch]\nmax_records = 3\nflush_interval = \"20ms\"\n[http]\naddress = \"127.0.0.1:0\"\n",
            rust_guest("hostile").display(),
            cache_dir().display(),
            out.display(),
            bad.display()
        ),
    )
    .unwrap();
    let mut child = weir()
        .args(["--log-format", "json", "run", "--progress=never"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The JSON log line announcing the HTTP endpoint carries its address.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        use std::io::BufRead as _;
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "weir exited early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(a) = v["fields"]["address"].as_str() {
            break a.to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"bigput:big:512000\n").unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stdin
        .write_all(b"a\ngetmany:big:8000\ngetmany:big:100\n")
        .unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        let text = std::fs::read_to_string(&bad).unwrap_or_default();
        if text.contains("getmany:big:8000") {
            break text;
        }
        assert!(Instant::now() < deadline, "the attack never failed");
        std::thread::sleep(Duration::from_millis(50));
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // What the transform holds, against its budget, is in /metrics.
    let metrics = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    for expected in [
        "weir_state_bytes{transform=\"transforms[0] (wasm)\"} 512003",
        "weir_state_keys{transform=\"transforms[0] (wasm)\"} 1",
        "weir_state_budget_bytes{transform=\"transforms[0] (wasm)\"} 1073741824",
        "weir_state_budget_keys{transform=\"transforms[0] (wasm)\"} 10000000",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    eprintln!("peak RSS of weir: {} MiB", hwm_kib >> 10);
    assert!(
        failed.contains("get-many of 8000 keys refused"),
        "the reason reaches the failure sink: {failed}"
    );
    assert!(hwm_kib < 512 << 10, "peak RSS {hwm_kib} KiB");
    let kept = std::fs::read_to_string(&out).unwrap();
    assert!(
        kept.contains("bigput:big:512000") && kept.contains("\na\n"),
        "{kept}"
    );
    assert!(
        kept.contains(&format!("got {} bytes", 100 * 512000)),
        "{kept}"
    );
}

#[test]
fn state_calls_with_malformed_columns_or_oversized_keys_fail_their_record() {
    let mut g = hostile(Limits {
        max_state_key_bytes: 16,
        ..Limits::default()
    });
    let (out, failed, _) = run(
        &mut g,
        &[
            "a",
            "badoffsets",
            "overlap:8",
            "bigkey:17",
            "bigkey:16",
            "b",
        ],
    );
    assert_eq!(out, vec!["a", "bigkey:16", "b"]);
    let reasons: Vec<(&str, &str)> = failed
        .iter()
        .map(|(p, r)| (p.as_str(), r.as_str()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(
        reasons[0]
            .1
            .contains("get-many refused: keys offsets end at 1000000"),
        "{reasons:?}"
    );
    assert!(
        reasons[1]
            .1
            .contains("put-many refused: values offsets go down"),
        "{reasons:?}"
    );
    assert!(
        reasons[2].1.contains(
            "a key of 17 bytes refused: over the limit of 16 (limits.max_state_key_bytes)"
        ),
        "{reasons:?}"
    );
    still_works(&mut g);
}

#[test]
fn past_the_state_budget_new_keys_fail_while_existing_keys_keep_updating() {
    let mut g = hostile(Limits {
        max_traps_per_batch: 2,
        state_budget: weir_core::state::Budget {
            max_bytes: 1 << 20,
            max_keys: 4,
        },
        ..Limits::default()
    });
    let (out, failed, _) = run(&mut g, &["put:k1", "put:k2", "put:k3", "put:k4"]);
    assert_eq!((out.len(), failed.len()), (4, 0));
    // More new keys than max_traps_per_batch, mixed with updates: refusals are not traps of a
    // failing guest, so every update goes through and only the new keys fail.
    let batch = [
        "put:k1", "put:n1", "put:k2", "put:n2", "put:n3", "put:k3", "put:k4", "get:k1",
    ];
    let (out, failed, _) = run(&mut g, &batch);
    assert_eq!(out, vec!["put:k1", "put:k2", "put:k3", "put:k4", "k1=v"]);
    let names: Vec<&str> = failed.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(names, vec!["put:n1", "put:n2", "put:n3"]);
    for (_, r) in &failed {
        assert!(
            r.contains("state budget exceeded") && r.contains("max_state_keys"),
            "{r}"
        );
    }
    assert_eq!(
        g.backoff(),
        Duration::ZERO,
        "no backoff: the pipeline is not stalled"
    );
    let (out, _, _) = run(&mut g, &["get:n1", "get:k4"]);
    assert_eq!(out, vec!["n1=none", "k4=v"]);
}
