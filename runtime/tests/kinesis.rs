//! The `kinesis` sink and source against a real emulator (moto), through the real weir binary.

mod aws;
mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use aws::*;
use common::*;

/// How long a wait for an event may take before the test fails. Each wait polls and returns as
/// soon as its condition holds, so this only matters on a loaded machine (moto and weir share 2
/// cores with builds): generous, so a slow run is not a failed one.
const WAIT: Duration = Duration::from_secs(180);

/// Starts weir on `config`; its log goes to the same path with `.log`.
fn spawn_weir(config: &std::path::Path) -> Child {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    weir_aws()
        .arg("run")
        .arg(config)
        .arg("--progress=never")
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("weir starts")
}

fn logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for name in ["a", "b", "c"] {
        let text = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        out.push_str(&format!("--- {name}.log\n{}\n", strip_ansi(&text)));
    }
    out
}

fn lines_of(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn put(client: &aws_sdk_kinesis::Client, stream: &str, ids: std::ops::Range<usize>) {
    put_hashed(client, stream, ids, None).await
}

/// The lowest and highest hash keys: a record with one of them goes to the first or the last
/// shard of the stream.
const LOW_HASH: &str = "0";
const HIGH_HASH: &str = "340282366920938463463374607431768211455";

/// Puts records `ids`, to the shard of `hash_key` if given (else spread by partition key).
async fn put_hashed(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    ids: std::ops::Range<usize>,
    hash_key: Option<&str>,
) {
    let ids: Vec<usize> = ids.collect();
    for chunk in ids.chunks(500) {
        let entries = chunk
            .iter()
            .map(|i| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .data(aws_sdk_kinesis::primitives::Blob::new(format!(
                        "event-{i:06}"
                    )))
                    .partition_key(format!("viewer-{}", i % 97))
                    .set_explicit_hash_key(hash_key.map(str::to_string))
                    .build()
                    .unwrap()
            })
            .collect();
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await
            .unwrap();
        assert_eq!(out.failed_record_count, Some(0));
    }
}

fn source_config(
    dir: &std::path::Path,
    name: &str,
    endpoint: &str,
    stream: &str,
) -> std::path::PathBuf {
    source_config_with(dir, name, endpoint, stream, "")
}

/// `extra` goes into the `[source]` section.
fn source_config_with(
    dir: &std::path::Path,
    name: &str,
    endpoint: &str,
    stream: &str,
    extra: &str,
) -> std::path::PathBuf {
    let out = dir.join(format!("{name}.out"));
    write(
        dir,
        &format!("{name}.toml"),
        &format!(
            r#"
[source]
type = "kinesis"
stream = "{stream}"
lease_table = "leases"
lease_duration = "1500ms"
poll_interval = "200ms"
worker_id = "{name}"
endpoint_url = "{endpoint}"
{extra}

[sink]
type = "file"
path = "{}"

[batch]
max_records = 200
"#,
            out.display()
        ),
    )
}

async fn wait_for(
    dir: &std::path::Path,
    what: &str,
    timeout: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ok().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            logs(dir)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Owner of each lease, from the lease table.
async fn owners(client: &aws_sdk_dynamodb::Client) -> HashMap<String, String> {
    // Not created yet by weir: nobody owns anything.
    if client
        .describe_table()
        .table_name("leases")
        .send()
        .await
        .is_err()
    {
        return HashMap::new();
    }
    scan_all(client, "leases")
        .await
        .into_iter()
        .filter(|i| i["checkpoint"].as_s().unwrap() != "SHARD_END")
        .map(|i| {
            (
                i["shard_id"].as_s().unwrap().clone(),
                i["owner"].as_s().unwrap().clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_put_records_are_retried_until_every_record_lands_once() {
    let moto = Moto::start();
    let client = kinesis(&moto.endpoint).await;
    create_stream(&client, "out", 2).await;
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            throttle: 2.into(),
            failed_records: 700.into(),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let n = 2000;
    let lines: String = (0..n).map(|i| format!("event-{i:06}\n")).collect();
    let input = write(dir.path(), "in.tsv", &lines);
    let config = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
{}
[sink]
type = "kinesis"
stream = "out"
endpoint_url = "{}"
# moto numbers records without a lock: concurrent PutRecords into one shard can lose records
# there (not on Kinesis), so one request at a time against the emulator.
concurrency = 1
"#,
            file_source(&input),
            proxy.endpoint
        ),
    );
    let out = weir_aws().arg("run").arg(&config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = &proxy.faults;
    assert_eq!(f.injected_throttles.load(SeqCst), 2);
    assert_eq!(f.injected_failed_records.load(SeqCst), 700);
    for req in f.requests(".PutRecords") {
        assert!(req["Records"].as_array().unwrap().len() <= 500);
    }
    let records = read_stream(&client, "out").await;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, data) in &records {
        *count.entry(data.as_str()).or_default() += 1;
    }
    let missing: Vec<String> = (0..n)
        .map(|i| format!("event-{i:06}"))
        .filter(|e| !count.contains_key(e.as_str()))
        .collect();
    assert!(missing.is_empty(), "not landed: {missing:?}");
    let twice: Vec<_> = count.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "landed twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_shards_and_one_takes_over_when_the_other_is_killed() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    let d = dynamodb(&moto.endpoint).await;
    create_stream(&k, "events", 4).await;
    put(&k, "events", 0..3000).await;
    let dir = tempfile::tempdir().unwrap();
    let a_cfg = source_config(dir.path(), "a", &moto.endpoint, "events");
    let b_cfg = source_config(dir.path(), "b", &moto.endpoint, "events");
    let mut a = spawn_weir(&a_cfg);
    wait_for(dir.path(), "a to read", WAIT, async || {
        !lines_of(&dir.path().join("a.out")).is_empty()
    })
    .await;
    let mut b = spawn_weir(&b_cfg);
    wait_for(dir.path(), "the shards to be split 2/2", WAIT, async || {
        let o = owners(&d).await;
        let a_n = o.values().filter(|v| *v == "a").count();
        let b_n = o.values().filter(|v| *v == "b").count();
        a_n == 2 && b_n == 2
    })
    .await;
    put(&k, "events", 3000..5000).await;
    // Kill a while it is reading the new records, not before it has seen any.
    let new: HashSet<String> = (3000..5000).map(|i| format!("event-{i:06}")).collect();
    wait_for(dir.path(), "a to read new records", WAIT, async || {
        lines_of(&dir.path().join("a.out"))
            .iter()
            .any(|l| new.contains(l))
    })
    .await;
    a.kill().unwrap();
    let _ = a.wait();
    put(&k, "events", 5000..6000).await;
    wait_for(dir.path(), "b to hold every lease", WAIT, async || {
        owners(&d).await.values().all(|v| v == "b")
    })
    .await;
    wait_for(dir.path(), "every record", WAIT, async || {
        let seen: HashSet<String> = lines_of(&dir.path().join("a.out"))
            .into_iter()
            .chain(lines_of(&dir.path().join("b.out")))
            .collect();
        seen.len() == 6000
    })
    .await;
    signal(b.id(), libc::SIGTERM);
    let status = b.wait().unwrap();
    assert!(status.success(), "{}", logs(dir.path()));
    let expected: HashSet<String> = (0..6000).map(|i| format!("event-{i:06}")).collect();
    let seen: HashSet<String> = lines_of(&dir.path().join("a.out"))
        .into_iter()
        .chain(lines_of(&dir.path().join("b.out")))
        .collect();
    assert_eq!(seen, expected);
    // b released its leases with checkpoints on the way out.
    let leases = scan_all(&d, "leases").await;
    assert!(leases.iter().all(|l| l["owner"].as_s().unwrap().is_empty()));
    assert!(leases
        .iter()
        .all(|l| !l["checkpoint"].as_s().unwrap().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_split_the_children_are_read_after_the_parent_and_nothing_is_skipped() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    create_stream(&k, "events", 1).await;
    put(&k, "events", 0..1500).await;
    // The parent is still being read (for 3 s) when the children appear, so a reader that did
    // not wait for it would mix their records.
    let dir = tempfile::tempdir().unwrap();
    let a = reshard_under_a_reader(&moto, &k, dir.path(), 2).await;
    // The split made two children, and the records written after it are there (as on Kinesis:
    // an unpatched moto put them into the closed parent, which made this test fail now and then).
    assert_eq!(
        records_in_children(&k, "events").await,
        (2, 1500),
        "two children, holding the new records"
    );
    read_to_the_end(dir.path(), a).await;
}

/// Starts a reader of `events` that reads 100 records a call (and at most 5 calls a second),
/// reshards the stream to `shards` shards once it has read something, then writes records
/// 1500..3000 (records 0..1500 are there from before).
async fn reshard_under_a_reader(
    moto: &Moto,
    k: &aws_sdk_kinesis::Client,
    dir: &std::path::Path,
    shards: i32,
) -> Child {
    let cfg = source_config_with(
        dir,
        "a",
        &moto.endpoint,
        "events",
        "max_records_per_call = 100",
    );
    let a = spawn_weir(&cfg);
    wait_for(dir, "a to read", WAIT, async || {
        !lines_of(&dir.join("a.out")).is_empty()
    })
    .await;
    k.update_shard_count()
        .stream_name("events")
        .target_shard_count(shards)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    put(k, "events", 1500..3000).await;
    a
}

/// Waits for the reader of [`reshard_under_a_reader`] to read 3000 records, stops it, and checks
/// that it read each once, the parents' before the children's.
async fn read_to_the_end(dir: &std::path::Path, a: Child) {
    wait_for(dir, "every record", WAIT, async || {
        lines_of(&dir.join("a.out")).len() >= 3000
    })
    .await;
    stop(dir, a);
    parents_then_children(&lines_of(&dir.join("a.out")), 1500, 3000);
}

/// `lines` are records `0..total`, each exactly once, and every record before `split` (written
/// to the parent shards) comes before any record from `split` on (written to the children).
fn parents_then_children(lines: &[String], split: usize, total: usize) {
    let mut pos: HashMap<&str, usize> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        if let Some(first) = pos.insert(l.as_str(), i) {
            panic!("{l} read twice, at lines {first} and {i}");
        }
    }
    let expected: HashSet<String> = (0..total).map(|i| format!("event-{i:06}")).collect();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !pos.contains_key(e.as_str()))
        .collect();
    assert!(missing.is_empty(), "not read: {missing:?}");
    assert_eq!(
        lines.len(),
        total,
        "every record exactly once, nothing else"
    );
    let last_parent = (0..split)
        .map(|i| pos[format!("event-{i:06}").as_str()])
        .max()
        .unwrap();
    let first_child = (split..total)
        .map(|i| pos[format!("event-{i:06}").as_str()])
        .min()
        .unwrap();
    assert!(
        last_parent < first_child,
        "every parent record ({last_parent}) comes before any child record ({first_child})"
    );
}

/// Records of every shard of `stream` that has parents (the children of a reshard), from the
/// start.
async fn records_in_children(k: &aws_sdk_kinesis::Client, stream: &str) -> (usize, usize) {
    let shards = k.list_shards().stream_name(stream).send().await.unwrap();
    let children: Vec<_> = shards
        .shards()
        .iter()
        .filter(|s| s.parent_shard_id().is_some())
        .collect();
    let mut records = 0;
    for sh in &children {
        records += read_shard(k, stream, sh.shard_id()).await.len();
    }
    (children.len(), records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_merge_the_child_is_read_after_both_parents_and_nothing_is_skipped() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    create_stream(&k, "events", 2).await;
    // A small parent and a large one, read 100 records at a time (at most 5 reads a second):
    // the large one is still being read, for seconds, when the small one is done and the child
    // appears, so a reader that waited for one parent only would mix the child's records in.
    put_hashed(&k, "events", 0..100, Some(LOW_HASH)).await;
    put_hashed(&k, "events", 100..1500, Some(HIGH_HASH)).await;
    let dir = tempfile::tempdir().unwrap();
    let a = reshard_under_a_reader(&moto, &k, dir.path(), 1).await;
    let shards = k.list_shards().stream_name("events").send().await.unwrap();
    let child = shards
        .shards()
        .iter()
        .find(|s| s.parent_shard_id().is_some())
        .expect("the merge made a child shard");
    assert!(
        child.adjacent_parent_shard_id().is_some(),
        "a merged shard has two parents: {child:?}"
    );
    // As on Kinesis, the child holds exactly the records written after the merge.
    assert_eq!(
        records_in_children(&k, "events").await,
        (1, 1500),
        "one child, holding the new records"
    );
    read_to_the_end(dir.path(), a).await;
}

/// Puts records `ids` one request at a time until `ok` holds (the reader has caught up), and
/// returns the first id not yet used.
async fn put_until(
    dir: &std::path::Path,
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    mut next: usize,
    mut ok: impl FnMut() -> bool,
) -> usize {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for weir to read\n{}",
            logs(dir)
        );
        put(client, stream, next..next + 1).await;
        next += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    next
}

fn stop(dir: &std::path::Path, mut child: Child) {
    signal(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", logs(dir));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_only_what_is_written_after_the_start() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    create_stream(&k, "events", 1).await;
    put(&k, "events", 0..500).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = source_config_with(
        dir.path(),
        "a",
        &moto.endpoint,
        "events",
        r#"initial_position = "latest""#,
    );
    let a = spawn_weir(&cfg);
    // Once one record written after the start is read, the reader's LATEST iterator exists:
    // everything written from then on must be read.
    let out = dir.path().join("a.out");
    let next = put_until(dir.path(), &k, "events", 10_000, || {
        !lines_of(&out).is_empty()
    })
    .await;
    put(&k, "events", 20_000..21_000).await;
    let after: HashSet<String> = (20_000..21_000).map(|i| format!("event-{i:06}")).collect();
    wait_for(
        dir.path(),
        "the records written after the start",
        WAIT,
        async || {
            let seen: HashSet<String> = lines_of(&out).into_iter().collect();
            after.is_subset(&seen)
        },
    )
    .await;
    assert!(next > 10_000);
    stop(dir.path(), a);
    let seen: HashSet<String> = lines_of(&out).into_iter().collect();
    let before: Vec<_> = (0..500)
        .map(|i| format!("event-{i:06}"))
        .filter(|e| seen.contains(e))
        .collect();
    assert!(
        before.is_empty(),
        "read records written before the start: {before:?}"
    );
    let missing: Vec<_> = (20_000..21_000)
        .map(|i| format!("event-{i:06}"))
        .filter(|e| !seen.contains(e))
        .collect();
    assert!(
        missing.is_empty(),
        "missed records written after the start: {missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_starts_at_the_first_record_written_from_then_on() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    create_stream(&k, "events", 2).await;
    put(&k, "events", 0..500).await;
    // A whole second strictly after the first records arrived, and before the next ones do.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let now = std::time::SystemTime::now();
    let since = now.duration_since(std::time::UNIX_EPOCH).unwrap();
    let boundary = std::time::UNIX_EPOCH + Duration::from_secs(since.as_secs() + 1);
    tokio::time::sleep(boundary.duration_since(now).unwrap() + Duration::from_millis(1100)).await;
    put(&k, "events", 500..1000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = source_config_with(
        dir.path(),
        "a",
        &moto.endpoint,
        "events",
        &format!(
            "initial_position = \"at_timestamp\"\ntimestamp = \"{}\"",
            humantime::format_rfc3339_seconds(boundary)
        ),
    );
    let a = spawn_weir(&cfg);
    let out = dir.path().join("a.out");
    wait_for(
        dir.path(),
        "the records after the timestamp",
        WAIT,
        async || lines_of(&out).len() >= 500,
    )
    .await;
    // Anything older would have been read first (each shard is read in order): give the reader
    // one more poll to be sure nothing else follows.
    put(&k, "events", 1000..1001).await;
    wait_for(dir.path(), "one more record", WAIT, async || {
        lines_of(&out).contains(&"event-001000".to_string())
    })
    .await;
    stop(dir.path(), a);
    let mut seen = lines_of(&out);
    seen.sort();
    let expected: Vec<String> = (500..1001).map(|i| format!("event-{i:06}")).collect();
    assert_eq!(seen, expected, "exactly the records from the timestamp on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_split_six_shards_evenly_and_read_every_record() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    let d = dynamodb(&moto.endpoint).await;
    create_stream(&k, "events", 6).await;
    put(&k, "events", 0..3000).await;
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    for name in ["a", "b", "c"] {
        let cfg = source_config(dir.path(), name, &moto.endpoint, "events");
        children.push(spawn_weir(&cfg));
    }
    wait_for(
        dir.path(),
        "the leases to be split 2/2/2",
        WAIT,
        async || {
            let o = owners(&d).await;
            o.len() == 6
                && ["a", "b", "c"]
                    .iter()
                    .all(|w| o.values().filter(|v| v == w).count() == 2)
        },
    )
    .await;
    put(&k, "events", 3000..6000).await;
    let outs: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| dir.path().join(format!("{n}.out")))
        .collect();
    let seen = || -> HashMap<String, usize> {
        let mut count = HashMap::new();
        for o in &outs {
            for l in lines_of(o) {
                *count.entry(l).or_default() += 1;
            }
        }
        count
    };
    wait_for(dir.path(), "every record", WAIT, async || {
        seen().len() == 6000
    })
    .await;
    // Each instance read records of its own shards.
    for o in &outs {
        assert!(!lines_of(o).is_empty(), "{} read nothing", o.display());
    }
    for c in children {
        stop(dir.path(), c);
    }
    let count = seen();
    let expected: HashSet<String> = (0..6000).map(|i| format!("event-{i:06}")).collect();
    assert_eq!(count.keys().cloned().collect::<HashSet<_>>(), expected);
}

/// Every record of a one-shard stream, in order: (sequence number, data).
async fn shard_records(k: &aws_sdk_kinesis::Client, stream: &str) -> Vec<(String, String)> {
    let shards = k.list_shards().stream_name(stream).send().await.unwrap();
    assert_eq!(shards.shards().len(), 1);
    read_shard(k, stream, shards.shards()[0].shard_id()).await
}

/// A sink that fails for good in mid-run (Kinesis refuses its PutRecords for good after three
/// went through): weir exits 1 naming the sink, the source's checkpoint covers no record that did
/// not reach the sink, and a run after it reads on from there and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_failing_for_good_exits_1_and_checkpoints_nothing_it_did_not_write() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    let d = dynamodb(&moto.endpoint).await;
    create_stream(&k, "in", 1).await;
    create_stream(&k, "out", 1).await;
    put(&k, "in", 0..2000).await;
    let input = shard_records(&k, "in").await;
    assert_eq!(input.len(), 2000);
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            refuse_put_records_after: Some(3),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str, sink_endpoint: &str| {
        write(
            dir.path(),
            &format!("{name}.toml"),
            &format!(
                r#"
[source]
type = "kinesis"
stream = "in"
lease_table = "leases"
lease_duration = "1500ms"
poll_interval = "200ms"
worker_id = "{name}"
endpoint_url = "{}"

[sink]
type = "kinesis"
stream = "out"
endpoint_url = "{sink_endpoint}"
concurrency = 1

[batch]
max_records = 100
"#,
                moto.endpoint
            ),
        )
    };
    let failing = Logged::spawn(
        weir_aws()
            .args(["run", "--progress=never"])
            .arg(config("a", &proxy.endpoint))
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let (status, log) = failing.wait_exit(WAIT);
    assert_eq!(
        status.code(),
        Some(1),
        "a sink failed for good: exit 1\n{log}"
    );
    assert!(
        log.contains("write failed for good") && log.contains("InvalidArgumentException"),
        "the log says which write failed and why:\n{log}"
    );
    assert!(proxy.faults.injected_refusals.load(SeqCst) >= 1);

    // What reached the sink: the input from its start, in order, and nothing else.
    let written: Vec<String> = read_stream(&k, "out")
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    assert!(!written.is_empty(), "three requests went through");
    assert!(
        written.len() < input.len(),
        "the sink failed before the end"
    );
    let prefix: Vec<&String> = input.iter().take(written.len()).map(|r| &r.1).collect();
    assert_eq!(written.iter().collect::<Vec<_>>(), prefix);
    // The checkpoint is at most the last record written: nothing unwritten is committed.
    let leases = scan_all(&d, "leases").await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let checkpoint = leases[0]["checkpoint"].as_s().unwrap().clone();
    if !checkpoint.is_empty() {
        let at = input
            .iter()
            .position(|(seq, _)| *seq == checkpoint)
            .unwrap_or_else(|| panic!("checkpoint {checkpoint} is no record of the stream"));
        assert!(
            at < written.len(),
            "checkpoint at record {at}, but only records 0..{} were written",
            written.len()
        );
    }

    // A run with a working sink goes on from the checkpoint: every record ends up written.
    let b = spawn_weir(&config("b", &moto.endpoint));
    let expected: HashSet<String> = input.iter().map(|r| r.1.clone()).collect();
    wait_for(dir.path(), "every record in the sink", WAIT, async || {
        let out: HashSet<String> = read_stream(&k, "out")
            .await
            .into_iter()
            .map(|r| r.1)
            .collect();
        out == expected
    })
    .await;
    stop(dir.path(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_shards_caps_what_one_instance_reads_and_leaves_the_rest_to_others() {
    let moto = Moto::start();
    let k = kinesis(&moto.endpoint).await;
    let d = dynamodb(&moto.endpoint).await;
    create_stream(&k, "events", 4).await;
    put(&k, "events", 0..2000).await;
    let dir = tempfile::tempdir().unwrap();
    let capped = "max_shards = 2\nread_interval = \"50ms\"";
    let a_cfg = source_config_with(dir.path(), "a", &moto.endpoint, "events", capped);
    let b_cfg = source_config_with(dir.path(), "b", &moto.endpoint, "events", capped);
    let mut a = spawn_weir(&a_cfg);
    wait_for(dir.path(), "a to hold 2 leases", WAIT, async || {
        owners(&d).await.values().filter(|v| *v == "a").count() == 2
    })
    .await;
    // Alone, a keeps to its 2 shards over several lease periods: the others wait unowned.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let o = owners(&d).await;
    assert_eq!(o.values().filter(|v| *v == "a").count(), 2, "{o:?}");
    assert_eq!(o.values().filter(|v| v.is_empty()).count(), 2, "{o:?}");
    let mut b = spawn_weir(&b_cfg);
    wait_for(dir.path(), "b to take the other 2", WAIT, async || {
        owners(&d).await.values().filter(|v| *v == "b").count() == 2
    })
    .await;
    let expected: HashSet<String> = (0..2000).map(|i| format!("event-{i:06}")).collect();
    wait_for(dir.path(), "every record", WAIT, async || {
        let seen: HashSet<String> = lines_of(&dir.path().join("a.out"))
            .into_iter()
            .chain(lines_of(&dir.path().join("b.out")))
            .collect();
        seen == expected
    })
    .await;
    for c in [&mut a, &mut b] {
        signal(c.id(), libc::SIGTERM);
        assert!(c.wait().unwrap().success(), "{}", logs(dir.path()));
    }
}
