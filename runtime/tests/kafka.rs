//! Kafka source and sink against a real Kafka-protocol broker: librdkafka's mock cluster, started
//! in this test process on a real TCP port. The real `weir` binary runs as a separate process, so
//! it can be killed (SIGKILL) or stopped (SIGTERM) while the broker keeps its data and offsets.
//!
//! Events are real enriched events (from examples/data) with a unique `event_id` each; the checker
//! reads the output topic back and compares ids.

mod common;
mod wasm_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{repo_root, rss_kib, signal, strip_ansi, weir, write};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;

/// The tests here are timing-sensitive (group rebalances, kills) and each runs a broker and weir:
/// run them one at a time rather than all at once on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 3-broker mock cluster, owned by a client of this process (so that its group settings can be
/// reached through librdkafka's C API).
struct Cluster(BaseProducer);

impl Cluster {
    fn mock(&self) -> MockCluster<'_, rdkafka::producer::DefaultProducerContext> {
        self.0.client().mock_cluster().expect("a mock cluster")
    }
    fn bootstrap_servers(&self) -> String {
        self.mock().bootstrap_servers()
    }
    fn create_topic(&self, t: &str, partitions: i32, rf: i32) -> rdkafka::error::KafkaResult<()> {
        self.mock().create_topic(t, partitions, rf)
    }
    fn broker_down(&self, b: i32) -> rdkafka::error::KafkaResult<()> {
        self.mock().broker_down(b)
    }
    fn broker_up(&self, b: i32) -> rdkafka::error::KafkaResult<()> {
        self.mock().broker_up(b)
    }
}

fn cluster() -> Cluster {
    let p: BaseProducer = ClientConfig::new()
        .set("test.mock.num.brokers", "3")
        .create()
        .expect("mock cluster");
    // SAFETY: the handle is alive (owned by `p`) and has a mock cluster (test.mock.num.brokers).
    unsafe {
        let mc = rdkafka::bindings::rd_kafka_handle_mock_cluster(p.client().native_ptr());
        assert!(!mc.is_null());
        // Real brokers delay a new group's first rebalance by 3 s; restarts here should not wait.
        rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0);
    }
    Cluster(p)
}

/// A media (kept) and a page-view (filtered out) enriched event to stamp ids into.
fn templates() -> (String, String) {
    let text =
        std::fs::read_to_string(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    (lines[3].to_string(), lines[0].to_string())
}

fn stamp(template: &str, id: &str) -> String {
    let mut f: Vec<&str> = template.split('\t').collect();
    f[6] = id;
    f[15] = id; // domain_userid: the output's partition key, so output spreads over partitions
    f.join("\t")
}

fn id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// Produces `n` events (every 4th a page view, which the pipeline filters out); returns the ids
/// of the media events, which must all come out.
fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<usize>) -> HashSet<String> {
    let (media, page) = templates();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut kept = HashSet::new();
    for i in range {
        let id = id(i);
        let line = if i % 4 == 3 {
            stamp(&page, &id)
        } else {
            kept.insert(id.clone());
            stamp(&media, &id)
        };
        loop {
            match p.send(BaseRecord::to(topic).key(&id).payload(&line)) {
                Ok(()) => break,
                Err((_, _)) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
    kept
}

/// Every message of a topic from the beginning, read until `idle` passes without one.
fn read_all(bootstrap: &str, topic: &str, idle: Duration) -> Vec<rdkafka::message::OwnedMessage> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut last = Instant::now();
    // Connecting and the first fetch take a moment: wait longer for the first message.
    while last.elapsed()
        < if out.is_empty() {
            idle.max(Duration::from_secs(2))
        } else {
            idle
        }
    {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            out.push(m.unwrap().detach());
            last = Instant::now();
        }
    }
    out
}

/// Event ids of the output (enriched TSV, field 6) and how often each came.
fn output_ids(bootstrap: &str, topic: &str, idle: Duration) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for m in read_all(bootstrap, topic, idle) {
        let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let id = v.split('\t').nth(6).unwrap().to_string();
        *ids.entry(id).or_insert(0) += 1;
    }
    ids
}

fn committed(bootstrap: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Kafka → keep media events → partition key → Kafka.
fn config(
    dir: &Path,
    bootstrap: &str,
    group: &str,
    extra_source: &str,
    extra: &str,
) -> std::path::PathBuf {
    // Short sessions where instances are killed, so that the group notices at once.
    let session_ms = if group == "g-crash" { 1000 } else { 6000 };
    let heartbeat_ms = session_ms / 5;
    write(
        dir,
        &format!("{group}.toml"),
        &format!(
            r#"
[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topics = ["in"]
group_id = "{group}"
commit_interval = "200ms"
prefetch = "256 KiB"
{extra_source}

[source.options]
"session.timeout.ms" = "{session_ms}"
"heartbeat.interval.ms" = "{heartbeat_ms}"

[[transforms]]
type = "spEnrichedFilter"
atomic_field = "event_vendor"
regex = "^com\\.snowplowanalytics\\.snowplow\\.media$"

[[transforms]]
type = "spEnrichedSetPk"
atomic_field = "domain_userid"

[sink]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "out"

[batch]
max_records = 200
queue = 2
{extra}
"#
        ),
    )
}

/// One round of a crash test: starts weir, waits until it has its partitions, lets it work for
/// `work_ms` and SIGKILLs it. A weir that never joins is killed before the test fails, so no
/// instance outlives the test.
fn kill_after_join(cfg: &Path, round: usize, join_limit: Duration, work_ms: u64) {
    let mut child = spawn(cfg);
    let joined = Instant::now();
    while !log_of(cfg).contains("partitions assigned") {
        if joined.elapsed() >= join_limit {
            let stacks = backtraces(child.id());
            let _ = child.kill();
            let _ = child.wait();
            panic!("round {round}: never joined: {}\n{stacks}", log_of(cfg));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(work_ms));
    signal(child.id(), libc::SIGKILL);
    wait_exit(&mut child, Duration::from_secs(10));
    if std::env::var_os("WEIR_KAFKA_DEBUG").is_some() {
        eprintln!("--- run {round}\n{}", log_of(cfg));
    }
}

/// Where a stuck weir was: every thread's backtrace (with gdb, if installed), written to a
/// file that outlives the test's temporary directory; returns where, or why not.
fn backtraces(pid: u32) -> String {
    let out = Command::new("gdb")
        .args([
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 30",
        ])
        .output();
    match out {
        Ok(o) => {
            let path = std::env::temp_dir().join(format!("weir-stuck-{pid}.txt"));
            match std::fs::write(&path, &o.stdout) {
                Ok(()) => format!("backtraces of every thread: {}", path.display()),
                Err(e) => format!("(backtraces not written: {e})"),
            }
        }
        Err(e) => format!("(no backtraces: gdb: {e})"),
    }
}

/// Starts weir with its log in a file beside the config (a pipe could fill up and block it).
/// `WEIR_KAFKA_TEST_LOG` sets its log filter (e.g. `info,librdkafka=debug`, with
/// `WEIR_KAFKA_TEST_RDKAFKA_DEBUG=cgrp` for the stateful crash test's consumer).
fn spawn(cfg: &Path) -> Child {
    let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
    let mut weir = weir();
    if let Ok(filter) = std::env::var("WEIR_KAFKA_TEST_LOG") {
        weir.env("WEIR_LOG", filter);
    }
    weir.arg("run")
        .arg(cfg)
        .arg("--progress=never")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("weir starts")
}

/// Kills weir when dropped before it exited (a failing test), so that no instance outlives the
/// test.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("weir did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_of(cfg: &Path) -> String {
    strip_ansi(&std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default())
}

/// Runs until every expected id is in the output (or `limit`), then SIGTERM.
fn run_until_complete(cfg: &Path, bootstrap: &str, expected: &HashSet<String>, limit: Duration) {
    let mut child = spawn(cfg);
    let start = Instant::now();
    loop {
        let ids = output_ids(bootstrap, "out", Duration::from_millis(500));
        if expected.iter().all(|i| ids.contains_key(i)) {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "only {} of {} ids arrived within {limit:?}",
            expected.iter().filter(|i| ids.contains_key(*i)).count(),
            expected.len()
        );
    }
    signal(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = log_of(cfg);
    assert!(status.success(), "weir failed: {err}");
}

fn dup_count(ids: &HashMap<String, usize>) -> usize {
    ids.values().map(|n| n - 1).sum()
}

#[test]
fn sigterm_under_load_writes_everything_read_commits_it_and_restarts_without_duplicates() {
    let _serial = serial();
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    mock.create_topic("in", PARTITIONS, 1).unwrap();
    mock.create_topic("out", PARTITIONS, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = 6000;
    let expected = produce(&bs, "in", 0..n);
    // A slow pipeline (small batches, one at a time) so that SIGTERM lands mid-stream.
    let cfg = config(dir.path(), &bs, "g-term", "", "");
    let mut child = spawn(&cfg);
    let start = Instant::now();
    loop {
        let got = output_ids(&bs, "out", Duration::from_millis(200)).len();
        if got >= 300 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {}",
            log_of(&cfg)
        );
    }
    signal(child.id(), libc::SIGTERM);
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let err = log_of(&cfg);
    assert!(status.success(), "weir exit: {status:?}\n{err}");

    // Exactly the media events below the committed offsets were written, once each.
    let offsets = committed(&bs, "g-term", "in");
    let ids = output_ids(&bs, "out", Duration::from_secs(1));
    assert_eq!(dup_count(&ids), 0, "duplicates after a clean stop");
    let read: HashSet<String> = read_all(&bs, "in", Duration::from_secs(1))
        .into_iter()
        .filter(|m| offsets.get(&m.partition()).is_some_and(|c| m.offset() < *c))
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .filter(|k| expected.contains(k))
        .collect();
    let written: HashSet<String> = ids.keys().cloned().collect();
    assert!(written.len() < expected.len(), "stopped mid-stream");
    assert_eq!(
        written, read,
        "written = media events below the committed offsets"
    );

    // Restart: the rest arrives, nothing twice.
    run_until_complete(&cfg, &bs, &expected, Duration::from_secs(120));
    let ids = output_ids(&bs, "out", Duration::from_secs(1));
    assert_eq!(dup_count(&ids), 0, "duplicates after the restart");
    assert_eq!(ids.len(), expected.len());
}

/// The crash test of a stateless pipeline. `WEIR_KAFKA_KILLS` (default 20: the CI's 50 kills are
/// in the stateful crash test below, which checks ids and state) SIGKILLs at random moments; the
/// long run is `WEIR_KAFKA_KILLS=1000 cargo test --release --test kafka crash -- --nocapture`.
#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_only_the_in_flight_window() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    mock.create_topic("in", PARTITIONS, 1).unwrap();
    mock.create_topic("out", PARTITIONS, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &bs, "g-crash", "", "");
    let mut expected = HashSet::new();
    let mut during = 0;
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let per_kill = (4000 / kills.max(1)).max(20);
    let start = Instant::now();
    for k in 0..kills {
        // Keep producing while crashing, so kills land mid-stream (and the mock broker's small
        // per-partition retention never drops input that was not read yet).
        expected.extend(produce(&bs, "in", k * per_kill..(k + 1) * per_kill));
        // Kill while it works: at a random moment after it got its partitions.
        kill_after_join(&cfg, k, Duration::from_secs(30), next() % 700);
    }
    let crashing = start.elapsed();
    during += output_ids(&bs, "out", Duration::from_millis(500)).len();
    run_until_complete(&cfg, &bs, &expected, Duration::from_secs(180));
    let ids = output_ids(&bs, "out", Duration::from_secs(1));
    let missing = expected.iter().filter(|i| !ids.contains_key(*i)).count();
    let dups = dup_count(&ids);
    // In flight at a kill: the batch being filled, the queues (source, worker in/out, sink:
    // 2 batches each) and the batch being written, plus up to one commit interval of acknowledged
    // records: 8 batches × 200 records + 200 ms of throughput (well under 1,000 here).
    let window = 8 * 200 + 1000;
    eprintln!(
        "crash test: {kills} kills in {crashing:?}, {during} ids written while crashing, {} ids, {missing} missing, {dups} duplicates ({:.1} per kill, window {window})",
        expected.len(),
        dups as f64 / kills as f64
    );
    assert_eq!(missing, 0, "records lost");
    assert!(
        during > expected.len() / 2,
        "most records were written between kills"
    );
    assert!(
        dups <= kills * window,
        "{dups} duplicates exceed the in-flight window"
    );
}

#[test]
fn poison_record_goes_to_the_dead_letter_topic_with_the_error_in_headers() {
    let _serial = serial();
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    for t in ["in", "out", "dlq"] {
        mock.create_topic(t, PARTITIONS, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (media, _) = templates();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .create()
        .unwrap();
    // All on partition 0: the poison record (a bad timestamp) and an oversized one in the middle.
    let mut good = HashSet::new();
    for i in 0..200 {
        let id = id(i);
        let line = match i {
            50 => {
                let mut f: Vec<String> = stamp(&media, &id).split('\t').map(String::from).collect();
                f[3] = "not-a-timestamp".into(); // collector_tstamp
                f.join("\t")
            }
            120 => {
                let mut f: Vec<String> = stamp(&media, &id).split('\t').map(String::from).collect();
                f[8] = "x".repeat(6000); // name_tracker: too big for the sink's 4 kB limit
                f.join("\t")
            }
            _ => {
                good.insert(id.clone());
                stamp(&media, &id)
            }
        };
        p.send(BaseRecord::to("in").partition(0).key(&id).payload(&line))
            .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let cfg = write(
        dir.path(),
        "dlq.toml",
        &format!(
            r#"
[source]
type = "kafka"
bootstrap_servers = "{bs}"
topics = ["in"]
group_id = "g-dlq"

[[transforms]]
type = "spEnrichedToJson"

[sink]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "out"
max_message_bytes = "4 kB"

[failure]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "dlq"

[batch]
max_records = 30
"#
        ),
    );
    let mut child = spawn(&cfg);
    let start = Instant::now();
    let out = loop {
        let out = read_all(&bs, "out", Duration::from_millis(500));
        if out.len() >= good.len() || start.elapsed() > Duration::from_secs(60) {
            break out;
        }
    };
    signal(child.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut child, Duration::from_secs(60)).success(),
        "{}",
        log_of(&cfg)
    );
    let out_ids: HashSet<String> = out
        .iter()
        .map(|m| {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            v["event_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        out_ids, good,
        "every good record of the partition, before and after the poison"
    );
    let dlq = read_all(&bs, "dlq", Duration::from_secs(1));
    assert_eq!(dlq.len(), 2, "the poison and the oversized record");
    let header = |m: &rdkafka::message::OwnedMessage, k: &str| {
        m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == k)
                .map(|h| String::from_utf8_lossy(h.value.unwrap()).to_string())
        })
    };
    let mut errors: Vec<(String, String)> = dlq
        .iter()
        .map(|m| {
            (
                header(m, "weir.component").unwrap(),
                header(m, "weir.error").unwrap(),
            )
        })
        .collect();
    errors.sort();
    eprintln!("{errors:?}");
    assert!(
        errors.iter().any(|(c, _)| c.contains("spEnrichedToJson")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(c, e)| c.contains("sink") && e.contains("too large")),
        "{errors:?}"
    );
    for m in &dlq {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert!(v["schema"].as_str().unwrap().contains("badrows"));
    }
    let offsets = committed(&bs, "g-dlq", "in");
    assert_eq!(
        offsets.get(&0),
        Some(&200),
        "the partition committed past the poison"
    );
}

/// All brokers refuse connections for 30 s. The consumer's session expires meanwhile, so weir
/// must also serve the lost assignment and rejoin once they are back: that needs its source to
/// keep polling through the errors librdkafka queues during the outage rather than sleep on each.
#[test]
fn broker_unreachable_for_30s_backs_off_holds_memory_and_loses_nothing() {
    let _serial = serial();
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    mock.create_topic("in", PARTITIONS, 1).unwrap();
    mock.create_topic("out", PARTITIONS, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let expected = produce(&bs, "in", 0..3000);
    let cfg = config(dir.path(), &bs, "g-down", "", "");
    let mut child = Reaper(spawn(&cfg));
    let pid = child.0.id();
    let start = Instant::now();
    while output_ids(&bs, "out", Duration::from_millis(200)).len() < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {}",
            log_of(&cfg)
        );
    }
    for b in 1..=3 {
        mock.broker_down(b).unwrap();
    }
    let down = Instant::now();
    let (rss0, _) = rss_kib(pid).unwrap();
    let mut peak = rss0;
    while down.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "weir exited while the broker was down"
        );
        peak = peak.max(rss_kib(pid).unwrap().0);
    }
    for b in 1..=3 {
        mock.broker_up(b).unwrap();
    }
    eprintln!("broker down 30 s: RSS {rss0} KiB at the outage, peak {peak} KiB");
    assert!(
        peak < rss0 + 64 * 1024,
        "memory grew by {} KiB",
        peak - rss0
    );
    let start = Instant::now();
    loop {
        let ids = output_ids(&bs, "out", Duration::from_millis(500));
        if expected.iter().all(|i| ids.contains_key(i)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {} ids after recovery: {}",
            expected.iter().filter(|i| ids.contains_key(*i)).count(),
            expected.len(),
            log_of(&cfg)
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    signal(pid, libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "{}", log_of(&cfg));
}

#[test]
fn two_instances_share_the_group_and_the_survivor_takes_over_a_killed_ones_partitions() {
    let _serial = serial();
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    mock.create_topic("in", PARTITIONS, 1).unwrap();
    mock.create_topic("out", PARTITIONS, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut expected = produce(&bs, "in", 0..2000);
    let cfg = config(dir.path(), &bs, "g-two", "", "");
    let mut a = spawn(&cfg);
    let mut b = spawn(&cfg);
    // Both members get partitions: wait for the second to log an assignment.
    std::thread::sleep(Duration::from_secs(8));
    expected.extend(produce(&bs, "in", 2000..4000));
    signal(a.id(), libc::SIGKILL);
    wait_exit(&mut a, Duration::from_secs(10));
    expected.extend(produce(&bs, "in", 4000..5000));
    let start = Instant::now();
    loop {
        let ids = output_ids(&bs, "out", Duration::from_millis(500));
        if expected.iter().all(|i| ids.contains_key(i)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {} ids after the kill",
            expected.iter().filter(|i| ids.contains_key(*i)).count(),
            expected.len()
        );
    }
    signal(b.id(), libc::SIGTERM);
    let status = wait_exit(&mut b, Duration::from_secs(60));
    let err = log_of(&cfg);
    assert!(status.success(), "{err}");
    assert!(
        err.matches("partitions assigned").count() >= 2,
        "the survivor got partitions twice (at the start and after the kill): {err}"
    );
}

/// Bench: Kafka → media filter → partition key → Kafka, with acknowledgements and commits on
/// (`commit = "acknowledged"`) vs off (`commit = "on-read"`), medians of 5 runs each, and peak RSS.
/// Rates are steady-state: events written from the first output to the last, over that time.
/// The broker a bench round runs against: librdkafka's in-process mock cluster, or a real
/// broker, tansu (`WEIR_KAFKA_BENCH_TANSU=path/to/tansu`), started fresh for the round.
enum BenchBroker {
    Mock(Cluster),
    Tansu(Child, String),
}

impl BenchBroker {
    fn start(topics: &[&str], partitions: i32) -> BenchBroker {
        let Some(tansu) = std::env::var_os("WEIR_KAFKA_BENCH_TANSU") else {
            let mock = cluster();
            for t in topics {
                mock.create_topic(t, partitions, 1).unwrap();
            }
            return BenchBroker::Mock(mock);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu starts");
        let bs = format!("127.0.0.1:{port}");
        let start = Instant::now();
        while std::net::TcpStream::connect(&bs).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "tansu listens");
            std::thread::sleep(Duration::from_millis(50));
        }
        let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
            ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .create()
                .unwrap();
        let new: Vec<_> = topics
            .iter()
            .map(|t| {
                rdkafka::admin::NewTopic::new(
                    t,
                    partitions,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )
            })
            .collect();
        let created = futures::executor::block_on(
            admin.create_topics(&new, &rdkafka::admin::AdminOptions::new()),
        )
        .unwrap();
        assert!(created.iter().all(Result::is_ok), "{created:?}");
        BenchBroker::Tansu(child, bs)
    }

    fn bootstrap_servers(&self) -> String {
        match self {
            BenchBroker::Mock(m) => m.bootstrap_servers(),
            BenchBroker::Tansu(_, bs) => bs.clone(),
        }
    }
}

impl Drop for BenchBroker {
    fn drop(&mut self) {
        if let BenchBroker::Tansu(child, _) = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Build the binary in release for meaningful numbers:
/// `cargo build --release && WEIR_BIN=$CARGO_TARGET_DIR/release/weir cargo test --release --test kafka bench -- --ignored --nocapture`
/// Against a real broker: `cargo install tansu --features dynostore,libsql` and add
/// `WEIR_KAFKA_BENCH_TANSU=$HOME/.cargo/bin/tansu`; `WEIR_KAFKA_BENCH_EVENTS` sets the events
/// per round (default 40,000: about 1 MiB per partition, under the mock broker's retention).
#[test]
#[ignore]
fn bench_acks_on_vs_off() {
    let _serial = serial();
    let bin = std::env::var("WEIR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_weir").to_string());
    let n: usize = std::env::var("WEIR_KAFKA_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let parts = 32;
    let mut results: HashMap<&str, Vec<(f64, u64)>> = HashMap::new();
    for round in 0..5 {
        for mode in ["acknowledged", "on-read"] {
            let broker = BenchBroker::start(&["in", "out"], parts);
            let bs = broker.bootstrap_servers();
            let kept = produce(&bs, "in", 0..n).len() as i64;
            let dir = tempfile::tempdir().unwrap();
            let cfg = config(
                dir.path(),
                &bs,
                "g-bench",
                &format!("commit = \"{mode}\""),
                "",
            );
            // The media filter as WASM (the shipped media-filter), as in production.
            let text = std::fs::read_to_string(&cfg)
                .unwrap()
                .replace("max_records = 200\nqueue = 2", "max_records = 1000\nqueue = 4")
                .replace(
                    "type = \"spEnrichedFilter\"\natomic_field = \"event_vendor\"\nregex = \"^com\\\\.snowplowanalytics\\\\.snowplow\\\\.media$\"",
                    &format!(
                        "type = \"wasm\"\npath = {:?}\ncache_dir = {:?}",
                        wasm_support::rust_guest("media_filter").display().to_string(),
                        wasm_support::cache_dir().display().to_string()
                    ),
                );
            assert!(text.contains("type = \"wasm\""), "{text}");
            // Progress from weir's own count of records the sink acknowledged (a broker's
            // watermarks need not count records: tansu's count batches).
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let http = format!("127.0.0.1:{port}");
            let text = format!("{text}\n[http]\naddress = \"{http}\"\n");
            std::fs::write(&cfg, text).unwrap();
            let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
            let mut child = std::process::Command::new(&bin)
                .args(["run", cfg.to_str().unwrap(), "--progress=never"])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let start = Instant::now();
            let mut peak = 0;
            // Steady state: from the first output on, so start-up and the group join (seconds
            // on the mock broker) do not dilute the comparison.
            let mut first: Option<(Instant, i64)> = None;
            loop {
                let written: i64 = common::http_get(&http, "/stats")
                    .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|v| v["written"].as_i64())
                    .unwrap_or(0);
                if let Some((_, hwm)) = rss_kib(child.id()) {
                    peak = hwm;
                }
                if written > 0 && first.is_none() {
                    first = Some((Instant::now(), written));
                }
                if written >= kept {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(300), "bench stalled");
                std::thread::sleep(Duration::from_millis(20));
            }
            let (t0, w0) = first.expect("output appeared");
            let secs = t0.elapsed().as_secs_f64();
            let n = (kept - w0) as usize;
            signal(child.id(), libc::SIGTERM);
            wait_exit(&mut child, Duration::from_secs(60));
            eprintln!(
                "round {round} {mode}: {:.0} events/s written (steady state), peak RSS {} KiB",
                n as f64 / secs,
                peak
            );
            results
                .entry(mode)
                .or_default()
                .push((n as f64 / secs, peak));
        }
    }
    let median = |v: &mut Vec<(f64, u64)>| {
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    let on = median(results.get_mut("acknowledged").unwrap());
    let off = median(results.get_mut("on-read").unwrap());
    eprintln!(
        "bench: acks on {:.0} events/s (peak RSS {} KiB), off {:.0} events/s (peak RSS {} KiB), ratio {:.2}",
        on.0, on.1, off.0, off.1, on.0 / off.0
    );
}

/// Produces `range` as records keyed `k<i % keys>` with the id as value; returns, per key, the
/// ids in the order they were produced (one key, one partition: the order its counts follow).
fn produce_keyed(
    bootstrap: &str,
    range: std::ops::Range<usize>,
    keys: usize,
    order: &mut HashMap<String, Vec<String>>,
) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in range {
        let key = format!("k{}", i % keys);
        let id = id(i);
        loop {
            match p.send(BaseRecord::to("in").key(&key).payload(&id)) {
                Ok(()) => break,
                Err(_) => {
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
        order.entry(key).or_default().push(id);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The counter's output: (key, count, id) lines, with how often each came.
fn counted(bootstrap: &str, idle: Duration) -> HashMap<(String, u64, String), usize> {
    let mut out = HashMap::new();
    for m in read_all(bootstrap, "out", idle) {
        let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let mut f = v.split('\t');
        let key = f.next().unwrap().to_string();
        let n: u64 = f.next().unwrap().parse().unwrap();
        let id = f.next().unwrap().to_string();
        *out.entry((key, n, id)).or_insert(0) += 1;
    }
    out
}

/// Every output line's count is the position of its id among its key's records (state applied
/// each record exactly once, in order, whatever the kills and re-reads); returns (ids seen,
/// duplicate lines).
fn check_counts(
    out: &HashMap<(String, u64, String), usize>,
    order: &HashMap<String, Vec<String>>,
) -> (usize, usize) {
    let mut seen = HashSet::new();
    let mut dups = 0;
    for ((key, n, id), times) in out {
        let ids = &order[key];
        let pos = ids
            .iter()
            .position(|i| i == id)
            .expect("an id that was produced") as u64
            + 1;
        assert_eq!(
            *n, pos,
            "key {key}: id {id} is record {pos} of its key but came out counted {n} (state and input disagree)"
        );
        assert!(
            seen.insert(id.clone()),
            "id {id} came out with two different counts"
        );
        dups += times - 1;
    }
    (seen.len(), dups)
}

/// The counter pipeline of instance `name`, with its own state file and the group's changelog.
fn state_config(dir: &Path, bootstrap: &str, name: &str) -> std::path::PathBuf {
    let wasm = wasm_support::rust_guest("counter");
    write(
        dir,
        &format!("g-state-{name}.toml"),
        &format!(
            r#"
# Two workers: a partition's batches still go to one of them, in order.
workers = 2

[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topics = ["in"]
group_id = "g-state"
commit_interval = "200ms"
prefetch = "256 KiB"

[source.options]
"session.timeout.ms" = "1000"
"heartbeat.interval.ms" = "200"
{debug}

[[transforms]]
type = "wasm"
path = {wasm:?}
cache_dir = {cache:?}

[state]
backend = "disk"
path = {state:?}
changelog_topic = "g-state-changelog"

[sink]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "out"

[batch]
max_records = 200
queue = 2
"#,
            wasm = wasm.display().to_string(),
            cache = wasm_support::cache_dir().display().to_string(),
            state = dir.join(format!("state/{name}.redb")).display().to_string(),
            debug = std::env::var("WEIR_KAFKA_TEST_RDKAFKA_DEBUG")
                .map(|d| format!("debug = {d:?}"))
                .unwrap_or_default(),
        ),
    )
}

/// The crash test with a stateful transform: a per-key counter whose state lives in
/// `[state] backend = "disk"` with a changelog topic. SIGKILLed `WEIR_KAFKA_STATE_KILLS`
/// (default 50) times at random moments while input keeps coming, restarting every third time
/// as another instance, whose state file lacks what the other did (so state must follow the
/// partitions through the changelog, also after kills in the middle of a checkpoint); then the
/// group's committed offsets are rewound (as a crash between the state checkpoint and the Kafka
/// commit would leave them); then both instances run in the group and one is killed, so the
/// survivor takes its partitions over with their state. Every record must come out, and every
/// output must carry exactly its position in its key's sequence: no update lost, none applied
/// twice. The long run: `WEIR_KAFKA_STATE_KILLS=1000 cargo test --release --test kafka
/// durable_state -- --nocapture`.
#[test]
fn sigkill_with_durable_state_keeps_state_and_offsets_in_agreement() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_STATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mock = cluster();
    let bs = mock.bootstrap_servers();
    mock.create_topic("in", PARTITIONS, 1).unwrap();
    mock.create_topic("out", PARTITIONS, 1).unwrap();
    mock.create_topic("g-state-changelog", PARTITIONS, 1)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_config(dir.path(), &bs, "a");
    let other = state_config(dir.path(), &bs, "b");
    let keys = 64;
    let mut order = HashMap::new();
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let per_kill = (4000 / kills.max(1)).max(20);
    let mut produced = 0;
    let start = Instant::now();
    for k in 0..kills {
        produce_keyed(&bs, produced..produced + per_kill, keys, &mut order);
        produced += per_kill;
        let instance = if k % 3 == 2 { &other } else { &cfg };
        kill_after_join(instance, k, Duration::from_secs(60), next() % 500);
    }
    let crashing = start.elapsed();
    let during = check_counts(&counted(&bs, Duration::from_millis(500)), &order).0;

    // Run to the end, stop cleanly.
    let run_to_end = |cfg: &Path, produced: usize, order: &HashMap<String, Vec<String>>| {
        let mut child = spawn(cfg);
        let start = Instant::now();
        loop {
            let got = check_counts(&counted(&bs, Duration::from_millis(500)), order).0;
            if got == produced {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "only {got} of {produced} ids came out: {}",
                log_of(cfg)
            );
        }
        signal(child.id(), libc::SIGTERM);
        assert!(
            wait_exit(&mut child, Duration::from_secs(60)).success(),
            "{}",
            log_of(cfg)
        );
    };
    run_to_end(&cfg, produced, &order);
    let out = counted(&bs, Duration::from_secs(1));
    let (ids, dups) = check_counts(&out, &order);
    assert_eq!(ids, produced, "every record came out");
    let window = 8 * 200 + 1000;
    eprintln!(
        "stateful crash test: {kills} kills in {crashing:?}, {during} ids out while crashing, {ids} ids, {dups} duplicate lines ({:.1} per kill), counts all consecutive",
        dups as f64 / kills as f64
    );
    // Not vacuous: weir did real work between kills. (A round lets weir work at most 500 ms
    // after joining, so with 1,000 short rounds about half comes out while crashing; with the
    // default 50 nearly all of it.)
    assert!(during >= produced / 4, "records came out between kills");
    assert!(
        dups <= kills * window,
        "{dups} duplicates exceed the in-flight window"
    );

    // A crash between the state checkpoint and the Kafka commit: rewind the group's offsets to
    // half of what is committed. weir must resume at the state checkpoints, not re-apply.
    let before = committed(&bs, "g-state", "in");
    // (The broker only takes commits from a member of the group: join it, as weir would.)
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("group.id", "g-state")
        .set("enable.auto.commit", "false")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", "1000")
        .set("heartbeat.interval.ms", "200")
        .create()
        .unwrap();
    c.subscribe(&["in"]).unwrap();
    let joined = Instant::now();
    while c.assignment().unwrap().count() < PARTITIONS as usize {
        assert!(
            joined.elapsed() < Duration::from_secs(30),
            "the rewinder never got the partitions"
        );
        c.poll(Duration::from_millis(100));
    }
    let mut rewind = TopicPartitionList::new();
    for (p, o) in &before {
        rewind
            .add_partition_offset("in", *p, Offset::Offset(o / 2))
            .unwrap();
    }
    c.commit(&rewind, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    c.unsubscribe();
    for _ in 0..10 {
        c.poll(Duration::from_millis(50));
    }
    drop(c);
    assert!(committed(&bs, "g-state", "in").values().sum::<i64>() < before.values().sum::<i64>());
    produce_keyed(&bs, produced..produced + 500, keys, &mut order);
    produced += 500;
    run_to_end(&cfg, produced, &order);
    let log = log_of(&cfg);
    assert!(log.contains("resuming at the state checkpoint"), "{log}");
    let out2 = counted(&bs, Duration::from_secs(1));
    let (ids, dups2) = check_counts(&out2, &order);
    assert_eq!(ids, produced);
    assert_eq!(
        dups2, dups,
        "nothing before the state checkpoints was processed again"
    );

    // Two instances share the partitions; one is killed and the survivor takes its partitions
    // over, with their state (its own file has only what it processed itself).
    let mut a = spawn(&cfg);
    let mut b = spawn(&other);
    let start = Instant::now();
    while !(log_of(&cfg).contains("partitions assigned")
        && log_of(&other).contains("partitions assigned"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "both join");
        std::thread::sleep(Duration::from_millis(20));
    }
    produce_keyed(&bs, produced..produced + 2000, keys, &mut order);
    produced += 2000;
    while check_counts(&counted(&bs, Duration::from_millis(300)), &order).0 < produced - 1500 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "progress with two instances"
        );
    }
    signal(a.id(), libc::SIGKILL);
    wait_exit(&mut a, Duration::from_secs(10));
    produce_keyed(&bs, produced..produced + 1000, keys, &mut order);
    produced += 1000;
    let start = Instant::now();
    loop {
        let got = check_counts(&counted(&bs, Duration::from_millis(500)), &order).0;
        if got == produced {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {got} of {produced} ids came out after the kill: {}",
            log_of(&other)
        );
    }
    let survivor = log_of(&other);
    assert!(
        survivor.contains("state restored from the changelog"),
        "{survivor}"
    );
    signal(b.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut b, Duration::from_secs(60)).success(),
        "{survivor}"
    );
    let (ids, _) = check_counts(&counted(&bs, Duration::from_secs(1)), &order);
    assert_eq!(ids, produced);
}
