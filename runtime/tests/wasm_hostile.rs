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
    let failed = b
        .failed
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(&f.record.value).into_owned(),
                f.reason.clone(),
            )
        })
        .collect();
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
