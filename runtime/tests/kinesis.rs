//! The `kinesis` sink and source against a real emulator (moto), through the real weir binary.

mod aws;
mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use aws::*;
use common::*;

fn weir_aws() -> Command {
    let mut c = weir();
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    c
}

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
    for name in ["a", "b"] {
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
[source]
type = "file"
paths = ["{}"]

[sink]
type = "kinesis"
stream = "out"
endpoint_url = "{}"
# moto numbers records without a lock: concurrent PutRecords into one shard can lose records
# there (not on Kinesis), so one request at a time against the emulator.
concurrency = 1
"#,
            input.display(),
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
    wait_for(
        dir.path(),
        "a to read",
        Duration::from_secs(30),
        async || !lines_of(&dir.path().join("a.out")).is_empty(),
    )
    .await;
    let mut b = spawn_weir(&b_cfg);
    wait_for(
        dir.path(),
        "the shards to be split 2/2",
        Duration::from_secs(30),
        async || {
            let o = owners(&d).await;
            let a_n = o.values().filter(|v| *v == "a").count();
            let b_n = o.values().filter(|v| *v == "b").count();
            a_n == 2 && b_n == 2
        },
    )
    .await;
    put(&k, "events", 3000..5000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill().unwrap();
    let _ = a.wait();
    put(&k, "events", 5000..6000).await;
    wait_for(
        dir.path(),
        "b to hold every lease",
        Duration::from_secs(30),
        async || owners(&d).await.values().all(|v| v == "b"),
    )
    .await;
    wait_for(
        dir.path(),
        "every record",
        Duration::from_secs(60),
        async || {
            let seen: HashSet<String> = lines_of(&dir.path().join("a.out"))
                .into_iter()
                .chain(lines_of(&dir.path().join("b.out")))
                .collect();
            seen.len() == 6000
        },
    )
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
    let dir = tempfile::tempdir().unwrap();
    let cfg = source_config(dir.path(), "a", &moto.endpoint, "events");
    let mut a = spawn_weir(&cfg);
    wait_for(
        dir.path(),
        "a to read",
        Duration::from_secs(30),
        async || !lines_of(&dir.path().join("a.out")).is_empty(),
    )
    .await;
    k.update_shard_count()
        .stream_name("events")
        .target_shard_count(2)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    put(&k, "events", 1500..3000).await;
    let shards = k.list_shards().stream_name("events").send().await.unwrap();
    assert!(
        shards
            .shards()
            .iter()
            .filter(|s| s.parent_shard_id().is_some())
            .count()
            >= 2,
        "the split made child shards"
    );
    wait_for(
        dir.path(),
        "every record",
        Duration::from_secs(60),
        async || lines_of(&dir.path().join("a.out")).len() >= 3000,
    )
    .await;
    signal(a.id(), libc::SIGTERM);
    let status = a.wait().unwrap();
    assert!(status.success(), "{}", logs(dir.path()));
    let lines = lines_of(&dir.path().join("a.out"));
    let pos: HashMap<&str, usize> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    assert_eq!(pos.len(), 3000, "every record once");
    let last_parent = (0..1500)
        .map(|i| pos[format!("event-{i:06}").as_str()])
        .max()
        .unwrap();
    let first_child = (1500..3000)
        .map(|i| pos[format!("event-{i:06}").as_str()])
        .min()
        .unwrap();
    assert!(
        last_parent < first_child,
        "every parent record ({last_parent}) comes before any child record ({first_child})"
    );
}
