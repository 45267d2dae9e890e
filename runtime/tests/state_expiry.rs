//! Expiry owned by the host: the real viewer-state guest keeps no index of its viewers; weir's
//! time index finds the silent ones and the guest's `expired` emits their removal records.
//!
//! `WEIR_EXPIRY_VIEWERS=1000000 cargo test -p weir --test state_expiry -- --nocapture` runs the
//! many-viewers test at another size (and prints how long the sweep took).

mod wasm_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use wasm_support::*;
use weir_core::record::Record;
use weir_core::state::{Budget, MemoryBackend, StateBackend};
use weir_core::wasm::{Guest, Limits};
use weir_transform_sdk::fields;

const LABEL: &str = "transforms[0] (wasm)";

/// The fixture's first play event, as viewer `viewer` with event id `event`.
fn play_event(template: &[u8], viewer: &str, event: &str) -> Record {
    let text = std::str::from_utf8(template).unwrap();
    let mut f: Vec<&str> = text.split('\t').collect();
    f[fields::USER_ID] = "";
    f[fields::NETWORK_USERID] = "";
    f[fields::DOMAIN_USERID] = viewer;
    f[fields::EVENT_ID] = event;
    Record::new(Bytes::from(f.join("\t")))
}

fn play_template() -> Bytes {
    fixture_lines()
        .into_iter()
        .find(|l| weir_core::snowplow::field(l, fields::EVENT_NAME) == b"play_event")
        .unwrap()
}

fn viewer_state(state: &std::sync::Arc<MemoryBackend>, ttl: &str, timeout: Duration) -> Guest {
    // Ids up to 1 KiB: the crafted flood below uses ~900-byte ones (the default refuses them).
    viewer_state_with(
        state,
        &[("ttl", ttl), ("max_viewer_id_bytes", "1024")],
        timeout,
    )
}

fn viewer_state_with(
    state: &std::sync::Arc<MemoryBackend>,
    config: &[(&str, &str)],
    timeout: Duration,
) -> Guest {
    let mut opts = options(
        config,
        Limits {
            timeout,
            // Room for a million viewers (WEIR_EXPIRY_VIEWERS): budgets are not tested here.
            state_budget: Budget {
                max_bytes: 8 << 30,
                max_keys: 10_000_000,
            },
            ..Limits::default()
        },
    );
    opts.state = state.clone();
    Guest::new(&rust_guest("viewer_state"), opts).unwrap_or_else(|e| panic!("{e}"))
}

fn removals(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let doc: Value = serde_json::from_slice(&r.value).unwrap();
            assert_eq!(doc["removed"], true, "{doc}");
            let id = doc["viewer_id"].as_str().unwrap().to_string();
            assert_eq!(r.key.as_deref(), Some(id.as_bytes()), "keyed by the viewer");
            id
        })
        .collect()
}

#[test]
fn a_silent_viewer_is_removed_with_a_record_and_an_active_one_stays() {
    let state = MemoryBackend::new();
    let mut g = viewer_state(&state, "300ms", Duration::from_secs(5));
    assert!(g.hears_expiry(), "the SDK exports `expired`");
    let play = play_template();
    let out = g.run(vec![play_event(&play, "quiet", "e-1")], 0);
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    assert!(g.expire().is_empty(), "nobody silent yet");
    // `active` keeps sending, `quiet` does not.
    for i in 0..4 {
        std::thread::sleep(Duration::from_millis(100));
        let ev = play_event(&play, "active", &format!("a-{i}"));
        assert!(g.run(vec![ev], 0).failed.is_empty());
    }
    assert_eq!(removals(&g.expire()), ["quiet"]);
    assert!(g.expire().is_empty(), "removed once");
    // Its profile is gone from the state; `active`'s is kept (event ids are remembered inside
    // the profiles, not as entries of their own).
    let (_, keys) = state.usage(LABEL).held();
    assert_eq!(keys, 1, "{keys} keys left");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(removals(&g.expire()), ["active"]);
    assert_eq!(state.usage(LABEL).held(), (0, 0), "nothing left");
}

#[test]
fn many_silent_viewers_expire_in_one_tick_with_a_removal_record_each() {
    let n: usize = std::env::var("WEIR_EXPIRY_VIEWERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let state = MemoryBackend::new();
    // The sweep is bounded by keys and bytes per call, not by time here: the timeout only
    // stops a guest that hangs (a debug build of the host is slow).
    let mut g = viewer_state(&state, "1s", Duration::from_secs(600));
    let play = play_template();
    let loaded = Instant::now();
    for lo in (0..n).step_by(2_000) {
        let records = (lo..(lo + 2_000).min(n))
            .map(|i| play_event(&play, &format!("viewer-{i:08}"), &format!("e-{i}")))
            .collect();
        let out = g.run(records, 0);
        assert!(out.failed.is_empty(), "{:?}", &out.failed[..1]);
    }
    eprintln!("{n} viewers loaded in {:?}", loaded.elapsed());
    // One entry per viewer.
    assert_eq!(state.usage(LABEL).held().1, n as u64);
    std::thread::sleep(Duration::from_millis(1_100));
    let started = Instant::now();
    let out = g.expire();
    let took = started.elapsed();
    eprintln!(
        "{n} viewers expired in one tick: {} removal records in {took:?}",
        out.len()
    );
    let ids = removals(&out);
    assert_eq!(ids.len(), n, "one removal record per viewer");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), n, "each once");
    assert_eq!(state.usage(LABEL).held(), (0, 0), "the state is empty");
    assert_eq!(g.stats.traps, 0, "no guest memory errors");
    assert!(g.expire().is_empty());
}

/// The flood that broke viewer-state's own index (64 buckets of at most 512 KiB, which crafted
/// uids filled, and whose sweep blew the guest's 64 MiB at ~60k viewers): 70,000 viewers with
/// ~900-byte ids. Every event is processed, the flood expires in pages bounded in bytes without
/// a guest memory error, and a viewer that keeps sending is not touched.
#[test]
fn a_crafted_uid_flood_expires_in_bounded_pages_and_leaves_an_active_viewer() {
    let n = 70_000;
    let state = MemoryBackend::new();
    // A TTL far longer than the sweep takes (even in a debug build), so that the regular viewer,
    // who sent just before it, cannot go silent for that long meanwhile.
    let mut g = viewer_state(&state, "20s", Duration::from_secs(600));
    let play = play_template();
    let pad = "x".repeat(900);
    for lo in (0..n).step_by(2_000) {
        let records = (lo..(lo + 2_000).min(n))
            .map(|i| play_event(&play, &format!("{pad}-{i:08}"), &format!("f-{i}")))
            .collect();
        let out = g.run(records, 0);
        assert!(out.failed.is_empty(), "{:?}", &out.failed[..1]);
    }
    let loaded = Instant::now();
    std::thread::sleep(Duration::from_millis(20_100).saturating_sub(loaded.elapsed()));
    let out = g.run(vec![play_event(&play, "regular", "r-1")], 0);
    assert!(out.failed.is_empty() && out.records.len() == 1);
    let ids = removals(&g.expire());
    assert_eq!(ids.len(), n);
    assert!(ids.iter().all(|id| id.starts_with(&pad)), "only the flood");
    assert_eq!(g.stats.traps, 0, "no guest memory errors");
    assert_eq!(state.usage(LABEL).held().1, 1, "the regular viewer");
}

/// The flood of the issue: user ids of ~104 KB. At the default `max_viewer_id_bytes` each is a
/// bad row with the reason; a regular viewer in the same batches is unaffected, and nothing of
/// the flood is stored.
#[test]
fn crafted_huge_uids_are_bad_rows_and_leave_other_viewers_alone() {
    let state = MemoryBackend::new();
    let mut g = viewer_state_with(&state, &[("ttl", "1s")], Duration::from_secs(600));
    let play = play_template();
    let pad = "u".repeat(104_000);
    for round in 0..4 {
        let mut records: Vec<Record> = (0..96)
            .map(|i| {
                play_event(
                    &play,
                    &format!("{pad}-{round}-{i}"),
                    &format!("h-{round}-{i}"),
                )
            })
            .collect();
        records.push(play_event(&play, "regular", &format!("r-{round}")));
        let out = g.run(records, 0);
        assert_eq!(out.failed.len(), 96, "every crafted id refused");
        assert!(
            out.failed
                .iter()
                .all(|f| f.2.contains("max_viewer_id_bytes")),
            "{:?}",
            &out.failed[..1]
        );
        assert_eq!(
            out.records.len(),
            usize::from(round == 0),
            "the regular viewer's profile"
        );
    }
    assert_eq!(g.stats.traps, 0);
    assert_eq!(
        state.usage(LABEL).held().1,
        1,
        "only the regular viewer is stored"
    );
    std::thread::sleep(Duration::from_millis(1_100));
    assert_eq!(removals(&g.expire()), ["regular"], "expiry runs");
}
