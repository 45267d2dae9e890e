//! The shipped transforms (media-filter, dedup) in WASM through weir's host, in pipelines with
//! the built-in transforms, and their config errors.

mod wasm_support;

use std::path::Path;

use bytes::Bytes;
use wasm_support::*;
use weir_core::pipeline::PipelineConfig;
use weir_core::record::{Batch, Record};
use weir_core::wasm::Limits;
use weir_transform_sdk::{Config, Filter};

const MEDIA_VENDOR: &str = "com.snowplowanalytics.snowplow.media";

/// Indices of the fixture lines the native build of the same media-filter code keeps.
fn native_media_filter(lines: &[Bytes], config: &[(&str, &str)]) -> Vec<usize> {
    let mut f = media_filter::MediaFilter::new(&Config::from_pairs(config)).unwrap();
    (0..lines.len())
        .filter(|&i| f.keep(&weir_transform_sdk::Record::new(&lines[i])).unwrap())
        .collect()
}

fn wasm_kept(path: &Path, config: &[(&str, &str)], lines: &[Bytes]) -> Vec<usize> {
    let mut g = guest(path, config, Limits::default());
    let out = g.run(lines.iter().map(|l| Record::new(l.clone())).collect(), 0);
    assert!(out.failed.is_empty(), "{:?}", out.failed);
    // A filter hands back the very same bytes (no copy).
    for (r, &s) in out.records.iter().zip(&out.sources) {
        assert_eq!(r.value.as_ptr(), lines[s].as_ptr());
    }
    out.sources
}

#[test]
fn media_filter_in_wasm_keeps_exactly_what_the_native_build_keeps() {
    let lines = fixture_lines();
    let expected = native_media_filter(&lines, &[]);
    assert_eq!(expected.len(), 47, "47 media events in the fixture");
    for i in &expected {
        assert_eq!(
            weir_core::snowplow::field(&lines[*i], weir_core::snowplow::EVENT_VENDOR),
            MEDIA_VENDOR.as_bytes()
        );
    }
    let wasm = rust_guest("media_filter");
    assert_eq!(
        wasm_kept(&wasm, &[], &lines),
        expected,
        "declared fields only"
    );
    assert_eq!(
        wasm_kept(&wasm, &[("send", "payload")], &lines),
        expected,
        "whole events"
    );
    let cfg = [("event_name", "^(play|pause)_event$")];
    let expected = native_media_filter(&lines, &cfg);
    assert_eq!(expected.len(), 8);
    assert_eq!(wasm_kept(&wasm, &cfg, &lines), expected);
}

fn pipeline(
    dir: &Path,
    transforms: &str,
) -> Result<PipelineConfig, weir_core::config::ConfigError> {
    let path = dir.join("pipeline.toml");
    std::fs::write(
        &path,
        format!("[source]\ntype = \"stdin\"\n\n{transforms}\n[sink]\ntype = \"null\"\n",),
    )
    .unwrap();
    PipelineConfig::load(&path)
}

fn wasm_entry(path: &Path, rest: &str) -> String {
    format!(
        "[[transforms]]\ntype = \"wasm\"\npath = {:?}\ncache_dir = {:?}\n{rest}\n",
        path.display().to_string(),
        cache_dir().display().to_string()
    )
}

#[test]
fn wasm_transforms_chain_with_the_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let t = format!(
        "{}\n[[transforms]]\ntype = \"spEnrichedSetPk\"\natomic_field = \"event_name\"\n\n{}",
        wasm_entry(
            &rust_guest("media_filter"),
            "config = { event_name = \"^(play|pause)_event$\" }"
        ),
        wasm_entry(&rust_guest("dedup"), "config = { window = \"10m\" }")
    );
    let cfg = pipeline(dir.path(), &t).unwrap_or_else(|e| panic!("{e}"));
    let mut chain = cfg.build_chain().unwrap();
    let lines = fixture_lines();
    let mut twice: Vec<Record> = lines.iter().map(|l| Record::new(l.clone())).collect();
    twice.extend(lines.iter().map(|l| Record::new(l.clone())));
    let mut b = Batch::new(twice, Default::default());
    chain.process(&mut b);
    // 8 play/pause events, keyed by the built-in, each once (the repeats are duplicates).
    assert_eq!(b.records.len(), 8);
    for r in &b.records {
        let name = weir_core::snowplow::field(&r.value, weir_core::snowplow::EVENT_NAME);
        assert_eq!(r.key.as_deref(), Some(name));
        assert!(name == b"play_event" || name == b"pause_event");
    }
    assert_eq!(b.filtered.len(), 2 * 73 - 8);
    assert!(b.failed.is_empty());
}

#[test]
fn dedup_state_is_shared_by_the_workers_of_a_transform() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = pipeline(dir.path(), &wasm_entry(&rust_guest("dedup"), "")).unwrap();
    let (mut w1, mut w2) = (cfg.build_chain().unwrap(), cfg.build_chain().unwrap());
    let lines = fixture_lines();
    let mut b = Batch::new(
        lines.iter().map(|l| Record::new(l.clone())).collect(),
        Default::default(),
    );
    w1.process(&mut b);
    assert_eq!(b.records.len(), 73);
    let mut b = Batch::new(
        lines.iter().map(|l| Record::new(l.clone())).collect(),
        Default::default(),
    );
    w2.process(&mut b);
    assert_eq!(
        b.records.len(),
        0,
        "the other worker already saw these event ids"
    );
    assert_eq!(b.filtered.len(), 73);
}

#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let media = rust_guest("media_filter");
    let err = |rest: &str| pipeline(dir.path(), &wasm_entry(&media, rest)).unwrap_err();

    let e = err("config = { event_name = \"(\" }");
    assert_eq!(e.key, "transforms[0].config");
    assert!(e.message.contains("invalid regex"), "{e}");

    let e = err("config = { evnt_name = \"x\" }");
    assert!(e.message.contains("unknown setting `evnt_name`"), "{e}");

    let e = err("[transforms.limits]\nmax_memory = \"1 KiB\"");
    assert_eq!(e.key, "transforms[0].limits.max_memory");

    // The state limits: file, key path, expected, found.
    for (rest, key, says) in [
        (
            "max_state_keys = 0",
            "max_state_keys",
            "expected at least 1, found 0",
        ),
        (
            "max_state_key_bytes = \"1 MiB\"",
            "max_state_key_bytes",
            "expected 1 byte to 256 KiB, found 1048576 bytes",
        ),
        (
            "max_state_bytes = \"2048 GiB\"",
            "max_state_bytes",
            "expected 1 KiB to 1 TiB, found 2199023255552 bytes",
        ),
    ] {
        let e = err(&format!("[transforms.limits]\n{rest}"));
        assert_eq!(e.key, format!("transforms[0].limits.{key}"), "{e}");
        assert_eq!(e.message, says, "{e}");
        assert!(
            e.to_string().contains("pipeline.toml"),
            "names the file: {e}"
        );
    }

    let e = err("[transforms.limits]\ntimout = \"1s\"");
    assert!(e.message.contains("did you mean `timeout`"), "{e}");

    let e = pipeline(
        dir.path(),
        &wasm_entry(&dir.path().join("missing.wasm"), ""),
    )
    .unwrap_err();
    assert_eq!(e.key, "transforms[0].path");
    assert!(e.message.contains("cannot read"), "{e}");

    // Numbers and booleans reach the guest as text.
    pipeline(
        dir.path(),
        &wasm_entry(&rust_guest("dedup"), "config = { window = 600000 }"),
    )
    .unwrap();
}

#[test]
fn flush_emits_held_records_directly_and_on_the_pipeline_interval() {
    let hostile = rust_guest("hostile");
    let mut g = guest(&hostile, &[], Limits::default());
    let mut b = batch(&["hold:x", "hold:y", "a"]);
    g.process_batch(&mut b);
    assert_eq!(texts(&b.records), vec!["a"]);
    assert_eq!(b.filtered.len(), 2);
    assert_eq!(texts(&g.flush()), vec!["x", "y"]);
    assert!(g.flush().is_empty());

    // In a pipeline, `flush_interval` appends what flush emits to the batch being processed.
    let dir = tempfile::tempdir().unwrap();
    let cfg = pipeline(
        dir.path(),
        &wasm_entry(&hostile, "flush_interval = \"1ms\""),
    )
    .unwrap();
    let mut chain = cfg.build_chain().unwrap();
    let mut b = batch(&["hold:late", "now"]);
    std::thread::sleep(std::time::Duration::from_millis(5));
    chain.process(&mut b);
    assert_eq!(texts(&b.records), vec!["now", "late"]);
}

/// With a partitioned input, a partition's state is flushed only inside a batch of that
/// partition, so what the flush emits (viewer-state's removal of an expired viewer) travels with
/// that partition's position and never with another partition's batch.
#[test]
fn flush_of_a_partition_rides_on_a_batch_of_that_partition() {
    use weir_core::record::{PartitionId, SourcePosition};
    let viewer_state = rust_guest("viewer_state");
    let dir = tempfile::tempdir().unwrap();
    let cfg = pipeline(
        dir.path(),
        &wasm_entry(
            &viewer_state,
            "flush_interval = \"1ms\"\nconfig = { ttl = \"1ms\" }",
        ),
    )
    .unwrap();
    let mut chain = cfg.build_chain().unwrap();
    let media = fixture_lines()
        .into_iter()
        .find(|l| String::from_utf8_lossy(l).contains("play_event"))
        .unwrap();
    let at = |partition: i32, end: u64, records: Vec<Record>| {
        let mut b = Batch::new(records, Default::default());
        b.position = Some(SourcePosition {
            partition: PartitionId {
                topic: "in".into(),
                partition,
            },
            epoch: 1,
            end,
        });
        b
    };
    let removals = |b: &Batch| {
        texts(&b.records)
            .into_iter()
            .filter(|t| t.contains("\"removed\":true"))
            .count()
    };
    // Partition 0 sees a viewer; partition 1 sees nobody.
    let mut b = at(0, 1, vec![Record::new(media.clone())]);
    chain.process(&mut b);
    assert_eq!(b.records.len(), 1, "the viewer's profile");
    let mut b = at(1, 1, vec![]);
    chain.process(&mut b);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // The viewer has expired, but a batch of partition 1 does not carry its removal...
    let mut b = at(1, 2, vec![]);
    chain.process(&mut b);
    assert_eq!(removals(&b), 0, "{:?}", texts(&b.records));
    // ... the next batch of partition 0 does.
    let mut b = at(0, 2, vec![]);
    chain.process(&mut b);
    assert_eq!(removals(&b), 1, "{:?}", texts(&b.records));
}
