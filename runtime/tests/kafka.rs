//! Kafka source and sink against a real Apache Kafka broker (KRaft, started by `kafka_support`
//! from the jars `runtime/tests/setup.sh` fetched). The real `weir` binary runs as a separate
//! process, so it can be killed (SIGKILL) or stopped (SIGTERM) while the broker keeps its data
//! and offsets.
//!
//! The tests of this file share one broker (each with its own topics and consumer group) and run
//! one at a time; the broker-outage and fail-over tests start their own (one broker they stop,
//! a three-node cluster).
//!
//! Events are real enriched events (runtime/tests/fixtures/sdk) with a unique `event_id` each;
//! the checker reads the output topic back and compares ids.

mod common;
mod kafka_support;
mod wasm_support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{rss_kib, signal, strip_ansi, weir, write};
use kafka_support::Kafka;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 8;

/// The tests here are timing-sensitive (group rebalances, kills) and each runs weir against the
/// broker: run them one at a time rather than all at once on a small machine.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The input and output topics of one test (`in-<tag>`, `out-<tag>`), created on `kafka`.
struct Topics {
    input: String,
    output: String,
}

fn topics(kafka: &Kafka, tag: &str) -> Topics {
    let t = Topics {
        input: format!("in-{tag}"),
        output: format!("out-{tag}"),
    };
    let rf = kafka.node_ids().len().min(3) as i32;
    kafka.create_topic(&t.input, PARTITIONS, rf, &[]);
    kafka.create_topic(&t.output, PARTITIONS, rf, &[]);
    t
}

/// The fixture's enriched events: a media event (kept) and a page view (filtered out) to stamp
/// ids into.
fn templates() -> (String, String) {
    let text = std::fs::read_to_string(common::fixture("sdk/micro-media-session.tsv")).unwrap();
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

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .unwrap()
}

fn send<K: ToBytes + ?Sized, V: ToBytes + ?Sized>(p: &BaseProducer, r: BaseRecord<'_, K, V>) {
    let mut r = r;
    loop {
        match p.send(r) {
            Ok(()) => break,
            Err((_, back)) => {
                r = back;
                p.poll(Duration::from_millis(10));
            }
        }
    }
    p.poll(Duration::ZERO);
}

/// Produces `n` events (every 4th a page view, which the pipeline filters out); returns the ids
/// of the media events, which must all come out.
fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<usize>) -> HashSet<String> {
    let (media, page) = templates();
    let p = producer(bootstrap);
    let mut kept = HashSet::new();
    for i in range {
        let id = id(i);
        let line = if i % 4 == 3 {
            stamp(&page, &id)
        } else {
            kept.insert(id.clone());
            stamp(&media, &id)
        };
        send(&p, BaseRecord::to(topic).key(&id).payload(&line));
    }
    p.flush(Duration::from_secs(60)).unwrap();
    kept
}

/// A reader of a whole topic from its beginning: each `catch_up` returns the messages up to the
/// topic's end at the time of the call (its high watermarks), so the caller knows it saw
/// everything written so far without waiting for an idle period.
struct Tail {
    c: BaseConsumer,
    topic: String,
    next: HashMap<i32, i64>,
}

impl Tail {
    /// A read_committed reader (librdkafka's default): aborted records are never read.
    fn new(bootstrap: &str, topic: &str) -> Tail {
        Tail::with_isolation(bootstrap, topic, "read_committed")
    }

    fn with_isolation(bootstrap: &str, topic: &str, isolation: &str) -> Tail {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("isolation.level", isolation)
            .set("group.id", "checker")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let parts = md.topics()[0].partitions().len() as i32;
        assert!(parts > 0, "topic {topic} exists");
        let mut tpl = TopicPartitionList::new();
        let mut next = HashMap::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
            next.insert(p, 0);
        }
        c.assign(&tpl).unwrap();
        Tail {
            c,
            topic: topic.to_string(),
            next,
        }
    }

    fn catch_up(&mut self) -> Vec<OwnedMessage> {
        let mut ends = HashMap::new();
        for &p in self.next.keys() {
            let (_, high) = self
                .c
                .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                .unwrap();
            ends.insert(p, high);
        }
        let mut out = Vec::new();
        let start = Instant::now();
        let mut last = Instant::now();
        while ends.iter().any(|(p, end)| self.next[p] < *end) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "reading {} to its end",
                self.topic
            );
            // A transactional topic ends in commit and abort markers (and aborted records),
            // which a read_committed reader never gets: it is at the end once quiet.
            if last.elapsed() > Duration::from_secs(2) {
                break;
            }
            if let Some(m) = self.c.poll(Duration::from_millis(100)) {
                let m = m.unwrap();
                self.next.insert(m.partition(), m.offset() + 1);
                out.push(m.detach());
                last = Instant::now();
            }
        }
        out
    }
}

/// Every message of a topic from the beginning.
fn read_all(bootstrap: &str, topic: &str) -> Vec<OwnedMessage> {
    Tail::new(bootstrap, topic).catch_up()
}

fn event_id(m: &OwnedMessage) -> String {
    let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
    v.split('\t').nth(6).unwrap().to_string()
}

/// Event ids of the output (enriched TSV, field 6) and how often each came, kept up to date.
struct OutIds {
    tail: Tail,
    ids: HashMap<String, usize>,
    /// Messages read whose id had come before.
    dup_total: usize,
}

impl OutIds {
    fn new(bootstrap: &str, topic: &str) -> OutIds {
        OutIds {
            tail: Tail::new(bootstrap, topic),
            ids: HashMap::new(),
            dup_total: 0,
        }
    }
    /// Reads what was written since; returns (messages, of which duplicates of earlier ones).
    fn update(&mut self) -> (usize, usize) {
        let msgs = self.tail.catch_up();
        let mut dups = 0;
        for m in &msgs {
            let n = self.ids.entry(event_id(m)).or_insert(0);
            if *n > 0 {
                dups += 1;
            }
            *n += 1;
        }
        self.dup_total += dups;
        (msgs.len(), dups)
    }
    fn has_all(&self, expected: &HashSet<String>) -> bool {
        expected.iter().all(|i| self.ids.contains_key(i))
    }
    fn present(&self, expected: &HashSet<String>) -> usize {
        expected
            .iter()
            .filter(|i| self.ids.contains_key(*i))
            .count()
    }
    fn dups(&self) -> usize {
        self.ids.values().map(|n| n - 1).sum()
    }
    /// Waits until every expected id was written.
    fn wait_all(&mut self, expected: &HashSet<String>, limit: Duration, why: impl Fn() -> String) {
        let start = Instant::now();
        loop {
            self.update();
            if self.has_all(expected) {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "only {} of {} ids arrived within {limit:?}: {}",
                self.present(expected),
                expected.len(),
                why()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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

/// The knobs of the test pipeline (Kafka → keep media events → partition key → Kafka).
struct Pipe<'a> {
    /// The config's file name (without `.toml`); its log is `<name>.log` beside it.
    name: &'a str,
    bootstrap: &'a str,
    topics: &'a Topics,
    group: &'a str,
    commit_interval: &'a str,
    max_records: usize,
    queue: usize,
    session_ms: u32,
    /// `"classic"` or `"consumer"` (KIP-848: session and heartbeats are the broker's, so the
    /// config sets neither).
    group_protocol: &'a str,
    /// Extra `[source]` keys, `[source.options]` lines, `[sink]` keys, and trailing sections.
    source: String,
    source_options: String,
    sink: String,
    extra: String,
}

impl<'a> Pipe<'a> {
    fn new(name: &'a str, bootstrap: &'a str, topics: &'a Topics, group: &'a str) -> Pipe<'a> {
        Pipe {
            name,
            bootstrap,
            topics,
            group,
            commit_interval: "200ms",
            max_records: 200,
            queue: 2,
            session_ms: 6000,
            group_protocol: "classic",
            source: String::new(),
            source_options: String::new(),
            sink: String::new(),
            extra: String::new(),
        }
    }

    /// Batches a killed weir may have read but not committed: the source's buffers (two
    /// batches) and the one it may be handing over, the source queue, the dispatcher's, each
    /// worker's three (in, processing, out), the router's, the sink queue and the one being
    /// written (`workers = 1` here).
    fn batches_in_flight(&self) -> usize {
        let workers = 1;
        2 + 1 + self.queue + 1 + 3 * workers + 1 + self.queue + 1
    }

    fn write(&self, dir: &Path) -> PathBuf {
        let heartbeat_ms = self.session_ms / 5;
        let timing = if self.group_protocol == "classic" {
            format!(
                "\"session.timeout.ms\" = \"{}\"\n\"heartbeat.interval.ms\" = \"{heartbeat_ms}\"",
                self.session_ms
            )
        } else {
            String::new()
        };
        write(
            dir,
            &format!("{}.toml", self.name),
            &format!(
                r#"
[source]
type = "kafka"
bootstrap_servers = "{bs}"
topics = ["{input}"]
group_id = "{group}"
commit_interval = "{ci}"
prefetch = "256 KiB"
group_protocol = "{protocol}"
{source}

[source.options]
{timing}
{source_options}

[[transforms]]
type = "spEnrichedFilter"
atomic_field = "event_vendor"
regex = "^com\\.snowplowanalytics\\.snowplow\\.media$"

[[transforms]]
type = "spEnrichedSetPk"
atomic_field = "domain_userid"

[sink]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "{output}"
{sink}

[batch]
max_records = {max_records}
queue = {queue}
{extra}
"#,
                bs = self.bootstrap,
                input = self.topics.input,
                output = self.topics.output,
                group = self.group,
                ci = self.commit_interval,
                protocol = self.group_protocol,
                source = self.source,
                source_options = self.source_options,
                sink = self.sink,
                max_records = self.max_records,
                queue = self.queue,
                extra = self.extra,
            ),
        )
    }
}

/// One round of a crash test: starts weir, waits until it has its partitions, lets it work for
/// `work_ms` and SIGKILLs it; returns how long it worked. A weir that never joins is killed
/// before the test fails, so no instance outlives the test.
fn kill_after_join(cfg: &Path, round: usize, join_limit: Duration, work_ms: u64) -> Duration {
    kill_when(cfg, round, join_limit, |joined| {
        joined.elapsed() >= Duration::from_millis(work_ms)
    })
}

/// Like [`kill_after_join`], killing once `ready(joined at)` is true (polled every 10 ms).
fn kill_when(
    cfg: &Path,
    round: usize,
    join_limit: Duration,
    mut ready: impl FnMut(Instant) -> bool,
) -> Duration {
    let mut child = spawn(cfg);
    let started = Instant::now();
    while !log_of(cfg).contains("partitions assigned") {
        if started.elapsed() >= join_limit {
            let stacks = backtraces(child.id());
            let _ = child.kill();
            let _ = child.wait();
            panic!("round {round}: never joined: {}\n{stacks}", log_of(cfg));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let joined = Instant::now();
    while !ready(joined) {
        if joined.elapsed() >= Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "round {round}: the kill condition never came: {}",
                log_of(cfg)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(child.id(), libc::SIGKILL);
    let worked = joined.elapsed();
    wait_exit(&mut child, Duration::from_secs(10));
    if std::env::var_os("WEIR_KAFKA_DEBUG").is_some() {
        eprintln!("--- run {round}\n{}", log_of(cfg));
    }
    worked
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
    spawn_env(cfg, &[])
}

/// [`spawn`] with extra environment variables (stdout goes to a file beside the config too).
fn spawn_env(cfg: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(cfg.with_extension("log")).unwrap();
    let out = std::fs::File::create(cfg.with_extension("out")).unwrap();
    let mut weir = weir();
    if let Ok(filter) = std::env::var("WEIR_KAFKA_TEST_LOG") {
        weir.env("WEIR_LOG", filter);
    }
    weir.envs(env.iter().copied());
    weir.arg("run")
        .arg(cfg)
        .arg("--progress=never")
        .stdin(std::process::Stdio::null())
        .stdout(out)
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

fn log_tail(cfg: &Path, n: usize) -> String {
    let log = log_of(cfg);
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs until every expected id is in the output (or `limit`), then SIGTERM.
fn run_until_complete(cfg: &Path, out: &mut OutIds, expected: &HashSet<String>, limit: Duration) {
    run_until_complete_env(cfg, out, expected, limit, &[])
}

/// [`run_until_complete`] with extra environment variables.
fn run_until_complete_env(
    cfg: &Path,
    out: &mut OutIds,
    expected: &HashSet<String>,
    limit: Duration,
    env: &[(&str, &str)],
) {
    let mut child = Reaper(spawn_env(cfg, env));
    out.wait_all(expected, limit, || log_tail(cfg, 40));
    signal(child.0.id(), libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "weir failed: {}", log_of(cfg));
}

/// `GET /stats` of a weir's `[http]` endpoint, as JSON.
fn stats(addr: &str) -> Option<serde_json::Value> {
    common::http_get(addr, "/stats").and_then(|b| serde_json::from_str(&b).ok())
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn sigterm_under_load_writes_everything_read_commits_it_and_restarts_without_duplicates() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "term");
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    let expected = produce(&bs, &t.input, 0..n);
    // A slow pipeline (small batches, one at a time) so that SIGTERM lands mid-stream.
    let mut pipe = Pipe::new("g-term", &bs, &t, "g-term");
    pipe.max_records = 50;
    pipe.queue = 1;
    let cfg = pipe.write(dir.path());
    let mut out = OutIds::new(&bs, &t.output);
    let mut child = Reaper(spawn(&cfg));
    let start = Instant::now();
    while out.ids.len() < 300 {
        out.update();
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no progress: {}",
            log_of(&cfg)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(child.0.id(), libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "weir exit: {status:?}\n{}", log_of(&cfg));

    // Exactly the media events below the committed offsets were written, once each.
    let offsets = committed(&bs, "g-term", &t.input);
    out.update();
    assert_eq!(out.dups(), 0, "duplicates after a clean stop");
    let read: HashSet<String> = read_all(&bs, &t.input)
        .into_iter()
        .filter(|m| offsets.get(&m.partition()).is_some_and(|c| m.offset() < *c))
        .map(|m| String::from_utf8(m.key().unwrap().to_vec()).unwrap())
        .filter(|k| expected.contains(k))
        .collect();
    let written: HashSet<String> = out.ids.keys().cloned().collect();
    assert!(written.len() < expected.len(), "stopped mid-stream");
    assert_eq!(
        written, read,
        "written = media events below the committed offsets"
    );

    // Restart: the rest arrives, nothing twice.
    run_until_complete(&cfg, &mut out, &expected, Duration::from_secs(180));
    out.update();
    assert_eq!(out.dups(), 0, "duplicates after the restart");
    assert_eq!(out.ids.len(), expected.len());
}

/// What a crash run saw.
struct Crashes {
    /// Per kill: output records that were duplicates of earlier output, written by the next
    /// instance (what the kill cost).
    dups_per_kill: Vec<usize>,
    /// The most a kill may cost: the records in flight (see [`Pipe::batches_in_flight`]) plus
    /// what is acknowledged but not yet committed (two commit intervals at the fastest rate a
    /// round reached: the interval that had not ended and a commit still on its way).
    window: usize,
    expected: usize,
    missing: usize,
    /// Distinct ids written while crashing (not by the final run).
    during: usize,
    crashing: Duration,
    peak_rate: f64,
}

impl Crashes {
    /// The per-kill bound, as the test asserts it.
    fn check(&self) -> Result<(), String> {
        let over: Vec<(usize, usize)> = self
            .dups_per_kill
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, d)| *d > self.window)
            .collect();
        if over.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} of {} kills cost more duplicates than the in-flight window of {} (kill, duplicates): {over:?}",
                over.len(),
                self.dups_per_kill.len(),
                self.window
            ))
        }
    }
}

/// How the rounds of a crash run end.
enum KillAt {
    /// A random moment in 0..ms after the instance got its partitions.
    Random(u64),
    /// Once the round has written this many records.
    Written(usize),
}

/// The commit interval of the crash test, which its in-flight window is derived from.
const CRASH_COMMIT_INTERVAL: Duration = Duration::from_millis(100);

/// The at-least-once crash run: `kills` rounds, each producing `per_kill` more events, starting
/// weir and SIGKILLing it, then a run to the end. Duplicates are counted per kill. Without
/// `commits`, weir's commit interval is longer than the test: it never commits an offset.
fn crash_run(
    kafka: &Kafka,
    tag: &str,
    kills: usize,
    per_kill: usize,
    commits: bool,
    at: KillAt,
) -> Crashes {
    crash_run_as(kafka, tag, kills, per_kill, commits, false, at)
}

/// [`crash_run`]; with `exactly_once`, the sink's `delivery = "exactly-once"` and static
/// membership (each restart aborts what the killed instance left open).
fn crash_run_as(
    kafka: &Kafka,
    tag: &str,
    kills: usize,
    per_kill: usize,
    commits: bool,
    exactly_once: bool,
    at: KillAt,
) -> Crashes {
    let bs = kafka.bootstrap();
    let t = topics(kafka, tag);
    let dir = tempfile::tempdir().unwrap();
    let group = format!("g-{tag}");
    let mut pipe = Pipe::new("crash", &bs, &t, &group);
    if exactly_once {
        pipe.sink = "delivery = \"exactly-once\"".into();
        pipe.source = format!("group_instance_id = \"{tag}-1\"");
    }
    let interval = format!("{}ms", CRASH_COMMIT_INTERVAL.as_millis());
    pipe.commit_interval = if commits { &interval } else { "1h" };
    pipe.max_records = 100;
    pipe.queue = 2;
    // Short sessions: the group notices a killed member at once.
    pipe.session_ms = 1000;
    let cfg = pipe.write(dir.path());
    let mut out = OutIds::new(&bs, &t.output);
    let mut expected = HashSet::new();
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut dups_per_kill = Vec::new();
    let mut peak_rate: f64 = 0.0;
    let start = Instant::now();
    for k in 0..kills {
        // Keep producing while crashing, so kills land mid-stream.
        expected.extend(produce(&bs, &t.input, k * per_kill..(k + 1) * per_kill));
        let (before, dups_before) = (high_watermarks(&bs, &t.output), out.dup_total);
        let worked = match at {
            KillAt::Random(ms) => kill_after_join(&cfg, k, Duration::from_secs(60), next() % ms),
            KillAt::Written(n) => kill_when(&cfg, k, Duration::from_secs(60), |_| {
                high_watermarks(&bs, &t.output) - before >= n as i64
            }),
        };
        let (msgs, _) = out.update();
        // What this round wrote again is what the previous kill cost.
        if k > 0 {
            dups_per_kill.push(out.dup_total - dups_before);
        }
        if worked > Duration::from_millis(100) {
            peak_rate = peak_rate.max(msgs as f64 / worked.as_secs_f64());
        }
    }
    let crashing = start.elapsed();
    let during = out.ids.len();
    let dups_before = out.dup_total;
    run_until_complete(&cfg, &mut out, &expected, Duration::from_secs(300));
    out.update();
    dups_per_kill.push(out.dup_total - dups_before);
    let window = pipe.batches_in_flight() * pipe.max_records
        + (peak_rate * 2.0 * CRASH_COMMIT_INTERVAL.as_secs_f64()).ceil() as usize;
    Crashes {
        dups_per_kill,
        window,
        expected: expected.len(),
        missing: expected
            .iter()
            .filter(|i| !out.ids.contains_key(*i))
            .count(),
        during,
        crashing,
        peak_rate,
    }
}

/// The sum of a topic's high watermarks: how many records it has.
fn high_watermarks(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

/// The crash test of a stateless pipeline: `WEIR_KAFKA_KILLS` (default 50) SIGKILLs at random
/// moments while input keeps coming. Every id must come out, and each kill may cost at most the
/// in-flight window the config allows (checked per kill). The long run is
/// `WEIR_KAFKA_KILLS=1000 cargo test --release -p weir --test kafka sigkill_at_random_moments_loses -- --nocapture`.
#[test]
fn sigkill_at_random_moments_loses_nothing_and_duplicates_only_the_in_flight_window() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let r = crash_run(
        kafka_support::shared(),
        "crash",
        kills,
        600,
        true,
        KillAt::Random(1500),
    );
    let dups: usize = r.dups_per_kill.iter().sum();
    eprintln!(
        "crash test: {kills} kills in {:?}, {} ids written while crashing, {} ids, {} missing, {dups} duplicates ({:.1} per kill, most {} in one kill; window {} = in flight + 2 commit intervals at {:.0}/s)",
        r.crashing,
        r.during,
        r.expected,
        r.missing,
        dups as f64 / kills as f64,
        r.dups_per_kill.iter().max().unwrap_or(&0),
        r.window,
        r.peak_rate
    );
    assert_eq!(r.missing, 0, "records lost");
    assert!(
        r.during > r.expected / 2,
        "most records were written between kills"
    );
    r.check().unwrap();
}

/// Exactly-once under SIGKILL: `WEIR_KAFKA_EOS_KILLS` (default 50) kills at random moments
/// while input keeps coming, the sink writing in Kafka transactions with the offsets. A
/// read_committed reader of the output must see every id exactly once: what a killed instance
/// had written but not committed is aborted (by its successor's `init_transactions`) and written
/// again by the next. The at-least-once crash test above, with the same kills, shows the
/// duplicates this removes.
#[test]
fn exactly_once_sigkill_at_random_moments_writes_every_id_exactly_once() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_EOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let r = crash_run_as(
        kafka_support::shared(),
        "eos",
        kills,
        600,
        true,
        true,
        KillAt::Random(1500),
    );
    let dups: usize = r.dups_per_kill.iter().sum();
    eprintln!(
        "exactly-once crash test: {kills} kills in {:?}, {} ids written while crashing, {} ids, {} missing, {dups} duplicates",
        r.crashing, r.during, r.expected, r.missing,
    );
    assert_eq!(r.missing, 0, "records lost");
    assert_eq!(dups, 0, "ids written twice: {:?}", r.dups_per_kill);
    // Not vacuous: kills did leave records written in transactions that were then aborted (a
    // read_uncommitted reader sees them), and the read_committed reader skipped them.
    let uncommitted = Tail::with_isolation(
        &kafka_support::shared().bootstrap(),
        "out-eos",
        "read_uncommitted",
    )
    .catch_up()
    .len();
    eprintln!("exactly-once crash test: {uncommitted} records in the output with the aborted ones");
    assert!(
        uncommitted > r.expected,
        "no kill left an aborted write behind ({uncommitted} records for {} ids): the test shows nothing",
        r.expected
    );
    assert!(
        r.during > r.expected / 4,
        "most records were written between kills"
    );
}

/// The control of the crash test's duplicate check: the same check on a weir that never commits
/// an offset (its commit interval is longer than the test) must fail, or the check proves
/// nothing. Each instance re-reads everything from the start, so every kill costs everything
/// written before it.
#[test]
fn crash_check_catches_a_weir_that_never_commits() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    // Each round writes far more than the window, so the next one's re-reading shows.
    let r = crash_run(kafka, "nocommit", 4, 16_000, false, KillAt::Written(10_000));
    eprintln!(
        "control (no commits): duplicates per kill {:?}, window {}",
        r.dups_per_kill, r.window
    );
    assert_eq!(r.missing, 0, "records lost");
    let err = r
        .check()
        .expect_err("the per-kill duplicate check passed a weir that never commits");
    eprintln!("the check failed as it must: {err}");
}

#[test]
fn poison_record_goes_to_the_dead_letter_topic_with_the_error_in_headers() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "dlq");
    kafka.create_topic("dlq-dlq", PARTITIONS, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (media, _) = templates();
    let p = producer(&bs);
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
        send(
            &p,
            BaseRecord::to(&t.input)
                .partition(0)
                .key(&id)
                .payload(&line),
        );
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
topics = ["{input}"]
group_id = "g-dlq"

[[transforms]]
type = "spEnrichedToJson"

[sink]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "{output}"
max_message_bytes = "4 kB"

[failure]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "dlq-dlq"

[batch]
max_records = 30
"#,
            input = t.input,
            output = t.output
        ),
    );
    let mut child = Reaper(spawn(&cfg));
    let mut tail = Tail::new(&bs, &t.output);
    let mut out = Vec::new();
    let start = Instant::now();
    while out.len() < good.len() && start.elapsed() < Duration::from_secs(60) {
        out.extend(tail.catch_up());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The dead-letter records are written before the batches after them are acknowledged.
    let start = Instant::now();
    while committed(&bs, "g-dlq", &t.input).get(&0) != Some(&200) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the partition committed past the poison: {}",
            log_of(&cfg)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(child.0.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(60)).success(),
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
    let dlq = read_all(&bs, "dlq-dlq");
    assert_eq!(dlq.len(), 2, "the poison and the oversized record");
    let header = |m: &OwnedMessage, k: &str| {
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
    let mut size_violations = 0;
    for m in &dlq {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let schema = v["schema"].as_str().unwrap();
        assert!(schema.contains("badrows"));
        // The broker refused it for its size: a size_violation with the sink's limit, as
        // Snowbridge writes it (not a generic_error).
        if header(m, "weir.component").unwrap().contains("sink") {
            assert!(schema.contains("/size_violation/"), "{v}");
            assert_eq!(v["data"]["failure"]["maximumAllowedSizeBytes"], 4000, "{v}");
            assert!(
                v["data"]["failure"]["actualSizeBytes"].as_u64().unwrap() > 4000,
                "{v}"
            );
            size_violations += 1;
        }
    }
    assert!(size_violations > 0);
}

/// The broker is stopped (SIGKILL) for 30 s while weir works through a backlog many times its
/// memory bound, then started again. While it is down, a listener of the test's own takes its
/// port and counts weir's connection attempts: librdkafka must back off (attempts thin out),
/// weir must not exit, and its memory must stay within the bound. The consumer's session
/// expires meanwhile, so weir must also serve the lost assignment and rejoin once the broker is
/// back. Afterwards every id comes out.
#[test]
fn broker_down_for_30s_backs_off_holds_memory_and_loses_nothing() {
    let _serial = serial();
    let mut kafka = Kafka::single();
    let bs = kafka.bootstrap();
    let t = topics(&kafka, "down");
    let dir = tempfile::tempdir().unwrap();
    // ~1.4 KB events: 100,000 are ~140 MB, more than four times the memory bound below.
    let bound_kib: u64 = 32 * 1024;
    let n = 100_000;
    let expected = produce(&bs, &t.input, 0..n);
    let input_bytes: usize = read_all_sizes(&bs, &t.input);
    let mut pipe = Pipe::new("down", &bs, &t, "g-down");
    // weir's default batches: the fastest way through the backlog.
    pipe.max_records = 1000;
    pipe.queue = 4;
    let http = free_addr();
    pipe.extra = format!("[http]\naddress = \"{http}\"\n");
    let cfg = pipe.write(dir.path());
    let mut child = Reaper(spawn(&cfg));
    let pid = child.0.id();
    let mut out = OutIds::new(&bs, &t.output);
    // Warmed up: output flows.
    let start = Instant::now();
    while out.ids.len() < 5_000 {
        out.update();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress: {}",
            log_of(&cfg)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let read_at_outage = stats(&http).and_then(|v| v["read"].as_u64()).unwrap();
    drop(out);
    let node = kafka.node_ids()[0];
    kafka.kill(node);
    let port: u16 = bs.rsplit(':').next().unwrap().parse().unwrap();
    // The broker's port, held by the test: every connection weir makes is counted and closed.
    let listener = {
        let start = Instant::now();
        loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "port {port}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    };
    listener.set_nonblocking(true).unwrap();
    let down = Instant::now();
    let (rss0, _) = rss_kib(pid).unwrap();
    let mut peak = rss0;
    let mut attempts = [0usize; 6]; // per 5 s
    while down.elapsed() < Duration::from_secs(30) {
        match listener.accept() {
            Ok((s, _)) => {
                let slot = (down.elapsed().as_secs() / 5).min(5) as usize;
                attempts[slot] += 1;
                drop(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "weir exited while the broker was down: {}",
            log_of(&cfg)
        );
        peak = peak.max(rss_kib(pid).unwrap().0);
    }
    drop(listener);
    kafka.restart(node);
    eprintln!(
        "broker down 30 s: connection attempts per 5 s {attempts:?}; RSS {rss0} KiB at the outage, peak {peak} KiB; {read_at_outage} of {n} events read at the outage; input {} MiB",
        input_bytes >> 20
    );
    // Backs off: librdkafka's reconnect backoff doubles from reconnect.backoff.ms (100 ms) to
    // reconnect.backoff.max.ms (10 s), so each of weir's connections (a handful: the consumer's
    // and the producers', bootstrap and broker) tries a few times in the first second and about
    // once per 10 s after that. A client that did not back off would retry every 100 ms: 10 per
    // second for each connection. Over the last 20 s, allow 2 per second in all.
    let last_20s: usize = attempts[2..].iter().sum();
    assert!(attempts[0] > 0, "weir tried to reconnect: {attempts:?}");
    assert!(
        last_20s <= 40,
        "{last_20s} connection attempts in the last 20 s of the outage (no backoff): {attempts:?}"
    );
    let mut out = OutIds::new(&bs, &t.output);
    let mut child_peak = peak;
    let start = Instant::now();
    loop {
        out.update();
        if let Some((rss, _)) = rss_kib(pid) {
            child_peak = child_peak.max(rss);
        }
        if out.has_all(&expected) {
            break;
        }
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "weir exited after the outage: {}",
            log_tail(&cfg, 40)
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{} of {} ids after recovery: {}",
            out.present(&expected),
            expected.len(),
            log_tail(&cfg, 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "peak RSS over the whole backlog: {child_peak} KiB (bound: {rss0} + {bound_kib} KiB)"
    );
    assert!(
        (input_bytes as u64) > 4 * bound_kib * 1024,
        "the input is far larger than the memory bound"
    );
    assert!(
        read_at_outage < (n as u64) / 2,
        "most of the input was still unread at the outage"
    );
    assert!(
        child_peak < rss0 + bound_kib,
        "memory grew by {} KiB",
        child_peak - rss0
    );
    signal(pid, libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "{}", log_of(&cfg));
}

/// The bytes of a topic's values.
fn read_all_sizes(bootstrap: &str, topic: &str) -> usize {
    read_all(bootstrap, topic)
        .iter()
        .map(|m| m.payload().map_or(0, <[u8]>::len))
        .sum()
}

/// Two instances, each with its own config file and log, share the group: both consume (each
/// one's own `/stats` counts records read and written), then one is killed and the survivor
/// takes over its partitions.
#[test]
fn two_instances_share_the_group_and_the_survivor_takes_over_a_killed_ones_partitions() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "two");
    let dir = tempfile::tempdir().unwrap();
    let (http_a, http_b) = (free_addr(), free_addr());
    let mut a = Pipe::new("two-a", &bs, &t, "g-two");
    a.extra = format!("[http]\naddress = \"{http_a}\"\n");
    let mut b = Pipe::new("two-b", &bs, &t, "g-two");
    b.extra = format!("[http]\naddress = \"{http_b}\"\n");
    let (cfg_a, cfg_b) = (a.write(dir.path()), b.write(dir.path()));
    let mut inst_a = Reaper(spawn(&cfg_a));
    let inst_b = Reaper(spawn(&cfg_b));
    let written = |http: &str| stats(http).and_then(|v| v["written"].as_u64()).unwrap_or(0);
    // Input keeps coming until both instances have written some of it: each holds partitions.
    let mut expected = HashSet::new();
    let mut produced = 0;
    let start = Instant::now();
    while written(&http_a) == 0 || written(&http_b) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "both instances consume: a wrote {}, b wrote {}\n--- a:\n{}\n--- b:\n{}",
            written(&http_a),
            written(&http_b),
            log_tail(&cfg_a, 20),
            log_tail(&cfg_b, 20)
        );
        expected.extend(produce(&bs, &t.input, produced..produced + 200));
        produced += 200;
        std::thread::sleep(Duration::from_millis(200));
    }
    let (wa, wb) = (written(&http_a), written(&http_b));
    eprintln!("both consume: a wrote {wa}, b wrote {wb} of {produced} produced");
    signal(inst_a.0.id(), libc::SIGKILL);
    wait_exit(&mut inst_a.0, Duration::from_secs(10));
    let b_before = written(&http_b);
    expected.extend(produce(&bs, &t.input, produced..produced + 4000));
    let mut out = OutIds::new(&bs, &t.output);
    out.wait_all(&expected, Duration::from_secs(120), || log_tail(&cfg_b, 40));
    let b_after = written(&http_b);
    // Every media event produced after the kill (3,000) went through the survivor: it holds
    // all the partitions now.
    assert!(
        b_after - b_before >= 3000,
        "the survivor wrote {} after the kill",
        b_after - b_before
    );
    let mut inst_b = inst_b;
    signal(inst_b.0.id(), libc::SIGTERM);
    let status = wait_exit(&mut inst_b.0, Duration::from_secs(60));
    let log = log_of(&cfg_b);
    assert!(status.success(), "{log}");
    assert!(
        log.matches("partitions assigned").count() >= 2,
        "the survivor got partitions twice (at the start and after the kill): {log}"
    );
}

/// Fencing a zombie: instance A is frozen (SIGSTOP) in the middle of a backlog with a
/// transaction open; B joins, takes every partition once A's session expires and writes the
/// rest; A is thawed while its transaction is still open (before the broker's transaction
/// timeout). A's next commit carries its old group generation: the coordinator refuses it, A
/// aborts, and nothing A wrote after its partitions moved is ever read (read_committed: every
/// id exactly once).
#[test]
fn exactly_once_fences_a_zombie_that_wakes_after_its_partitions_moved() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "zombie");
    let dir = tempfile::tempdir().unwrap();
    let mut expected = produce(&bs, &t.input, 0..20_000);
    let (http_a, http_b) = (free_addr(), free_addr());
    let mut a = Pipe::new("zombie-a", &bs, &t, "g-zombie");
    a.session_ms = 2000;
    a.commit_interval = "1s";
    a.sink = "delivery = \"exactly-once\"".into();
    a.source = "group_instance_id = \"zombie-a\"".into();
    a.extra = format!("[http]\naddress = \"{http_a}\"\n");
    let mut b = Pipe::new("zombie-b", &bs, &t, "g-zombie");
    b.session_ms = 2000;
    b.sink = a.sink.clone();
    b.source = "group_instance_id = \"zombie-b\"".into();
    b.extra = format!("[http]\naddress = \"{http_b}\"\n");
    let (cfg_a, cfg_b) = (a.write(dir.path()), b.write(dir.path()));
    let written = |http: &str| stats(http).and_then(|v| v["written"].as_u64()).unwrap_or(0);
    let mut inst_a = Reaper(spawn(&cfg_a));
    let start = Instant::now();
    while written(&http_a) < 2000 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "A works: {}",
            log_tail(&cfg_a, 20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(inst_a.0.id(), libc::SIGSTOP);
    let frozen = Instant::now();
    let frozen_at = written(&http_b); // 0: B is not there yet
    let mut inst_b = Reaper(spawn(&cfg_b));
    // B holds every partition once A's session (2 s) expired.
    let start = Instant::now();
    while !log_of(&cfg_b).contains("partitions assigned") || written(&http_b) == frozen_at {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "B takes over: {}",
            log_tail(&cfg_b, 20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Thaw A well within the transaction timeout (10 s) of its open transaction.
    while frozen.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(inst_a.0.id(), libc::SIGCONT);
    expected.extend(produce(&bs, &t.input, 20_000..24_000));
    let mut out = OutIds::new(&bs, &t.output);
    out.wait_all(&expected, Duration::from_secs(120), || {
        format!(
            "--- a:\n{}\n--- b:\n{}",
            log_tail(&cfg_a, 30),
            log_tail(&cfg_b, 30)
        )
    });
    // Give the zombie time for a commit attempt or two, then stop both.
    std::thread::sleep(Duration::from_secs(3));
    for (i, cfg) in [(&mut inst_a, &cfg_a), (&mut inst_b, &cfg_b)] {
        signal(i.0.id(), libc::SIGTERM);
        let start = Instant::now();
        while i.0.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} did not stop: {}\n{}",
                cfg.display(),
                log_tail(cfg, 60),
                backtraces(i.0.id())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    out.update();
    let log_a = log_of(&cfg_a);
    eprintln!(
        "zombie test: {} ids, {} duplicates; A wrote {} before it froze",
        out.ids.len(),
        out.dups(),
        2000
    );
    assert_eq!(
        out.dups(),
        0,
        "a zombie's write became visible\n--- a:\n{log_a}\n--- b:\n{}",
        log_tail(&cfg_b, 40)
    );
    assert!(out.has_all(&expected));
    assert!(
        log_a.contains("aborting the transaction") || log_a.contains("failed for good"),
        "the zombie's transaction was refused: {log_a}"
    );
}

/// Group membership on the real coordinator, and what a crash loop costs: for the classic
/// protocol and KIP-848's consumer protocol (`group_protocol = "consumer"`), each with and
/// without static membership (`group_instance_id`), weir works, is SIGKILLed, 2,000 more events
/// come and a new weir starts at once (a supervisor's restart). Every id must come out in each
/// mode; printed: the time from the restart to the last of those events written. Without static
/// membership the killed member keeps its partitions until its session (6 s here, for both
/// protocols) expires; with the classic protocol a static member takes its partitions back at
/// once, while KIP-848 refuses its return until the predecessor's session expired
/// (UNRELEASED_INSTANCE_ID, fatal for the consumer: weir exits naming it and the test, as a
/// supervisor, starts it again). `WEIR_KAFKA_MEMBERSHIP=consumer-true` runs one mode.
#[test]
fn a_crash_restart_resumes_with_and_without_static_membership_classic_and_kip848() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let mut figures = Vec::new();
    for (protocol, fixed) in [
        ("classic", false),
        ("classic", true),
        ("consumer", false),
        ("consumer", true),
    ]
    .into_iter()
    .filter(|(p, f)| {
        std::env::var("WEIR_KAFKA_MEMBERSHIP").map_or(true, |o| o == format!("{p}-{f}"))
    }) {
        let tag = format!(
            "member-{protocol}-{}",
            if fixed { "static" } else { "dynamic" }
        );
        let t = topics(kafka, &tag);
        let dir = tempfile::tempdir().unwrap();
        let group = format!("g-{tag}");
        let mut pipe = Pipe::new(&tag, &bs, &t, &group);
        pipe.group_protocol = protocol;
        if let Ok(d) = std::env::var("WEIR_KAFKA_TEST_RDKAFKA_DEBUG") {
            pipe.source_options = format!("\"debug\" = \"{d}\"");
        }
        if fixed {
            pipe.source = format!("group_instance_id = \"{tag}-1\"");
        }
        let cfg = pipe.write(dir.path());
        let mut out = OutIds::new(&bs, &t.output);
        let mut expected = produce(&bs, &t.input, 0..1000);
        let mut first = Reaper(spawn(&cfg));
        out.wait_all(&expected, Duration::from_secs(90), || log_tail(&cfg, 30));
        signal(first.0.id(), libc::SIGKILL);
        wait_exit(&mut first.0, Duration::from_secs(10));
        expected.extend(produce(&bs, &t.input, 1000..3000));
        let restarted = Instant::now();
        let mut second = Reaper(spawn(&cfg));
        // As a supervisor would: a weir that exits is started again (KIP-848 refuses a static
        // member's return until its predecessor's session expired: weir exits naming it).
        let mut restarts = 0;
        while !out.has_all(&expected) {
            assert!(
                restarted.elapsed() < Duration::from_secs(120),
                "{tag}: only {} of {} ids came: {}",
                out.present(&expected),
                expected.len(),
                log_tail(&cfg, 30)
            );
            if let Some(status) = second.0.try_wait().unwrap() {
                let log = log_of(&cfg);
                assert!(
                    !status.success() && log.contains("failed for good"),
                    "{tag}: weir exited ({status}) without saying why: {log}"
                );
                restarts += 1;
                std::thread::sleep(Duration::from_millis(500));
                second = Reaper(spawn(&cfg));
            }
            out.update();
            std::thread::sleep(Duration::from_millis(50));
        }
        let cost = restarted.elapsed();
        signal(second.0.id(), libc::SIGTERM);
        let status = wait_exit(&mut second.0, Duration::from_secs(60));
        assert!(status.success(), "{protocol}: {}", log_tail(&cfg, 30));
        assert!(
            log_of(&cfg).contains("partitions assigned"),
            "{protocol}: the restarted weir got partitions"
        );
        eprintln!(
            "membership: {tag}: restart to caught up in {cost:.1?} ({restarts} more restarts)"
        );
        figures.push((tag, cost, restarts));
    }
    eprintln!("membership (restart after SIGKILL → 1,500 events written): {figures:?}");
}

/// Produces `range` as records keyed `k<i % keys>` with the id as value; returns, per key, the
/// ids in the order they were produced (one key, one partition: the order its counts follow).
fn produce_keyed(
    bootstrap: &str,
    topic: &str,
    range: std::ops::Range<usize>,
    keys: usize,
    order: &mut HashMap<String, Vec<String>>,
) {
    let p = producer(bootstrap);
    for i in range {
        let key = format!("k{}", i % keys);
        let id = id(i);
        send(&p, BaseRecord::to(topic).key(&key).payload(&id));
        order.entry(key).or_default().push(id);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// The counter's output: (key, count, id) lines, with how often each came, kept up to date.
struct Counted {
    tail: Tail,
    out: HashMap<(String, u64, String), usize>,
}

impl Counted {
    fn new(bootstrap: &str, topic: &str) -> Counted {
        Counted {
            tail: Tail::new(bootstrap, topic),
            out: HashMap::new(),
        }
    }
    fn update(&mut self) -> &HashMap<(String, u64, String), usize> {
        for m in self.tail.catch_up() {
            let v = std::str::from_utf8(m.payload().unwrap()).unwrap();
            let mut f = v.split('\t');
            let key = f.next().unwrap().to_string();
            let n: u64 = f.next().unwrap().parse().unwrap();
            let id = f.next().unwrap().to_string();
            *self.out.entry((key, n, id)).or_insert(0) += 1;
        }
        &self.out
    }
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
fn state_config(dir: &Path, bootstrap: &str, t: &Topics, changelog: &str, name: &str) -> PathBuf {
    state_config_as(dir, bootstrap, t, changelog, name, false)
}

/// [`state_config`]; `exactly_once`: group `g-state-eos`, `delivery = "exactly-once"` and
/// static membership (a restart aborts what the killed instance left open); transactions time
/// out after 5 s (what an instance that never comes back holds up read_committed readers for).
fn state_config_as(
    dir: &Path,
    bootstrap: &str,
    t: &Topics,
    changelog: &str,
    name: &str,
    exactly_once: bool,
) -> PathBuf {
    let wasm = wasm_support::rust_guest("counter");
    let group = if exactly_once {
        "g-state-eos"
    } else {
        "g-state"
    };
    let (source_extra, sink_extra) = if exactly_once {
        (
            format!("group_instance_id = \"{group}-{name}\"\n"),
            "delivery = \"exactly-once\"\n\n[sink.options]\n\"transaction.timeout.ms\" = \"5000\"\n"
                .to_string(),
        )
    } else {
        (String::new(), String::new())
    };
    write(
        dir,
        &format!("{group}-{name}.toml"),
        &format!(
            r#"
# Two workers: a partition's batches still go to one of them, in order.
workers = 2

[source]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topics = ["{input}"]
group_id = "{group}"
commit_interval = "200ms"
prefetch = "256 KiB"
{source_extra}
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
changelog_topic = "{changelog}"

[sink]
type = "kafka"
bootstrap_servers = "{bootstrap}"
topic = "{output}"
{sink_extra}
[batch]
max_records = 200
queue = 2
"#,
            input = t.input,
            output = t.output,
            wasm = wasm.display().to_string(),
            cache = wasm_support::cache_dir().display().to_string(),
            state = dir
                .join(format!("state/{group}-{name}.redb"))
                .display()
                .to_string(),
            debug = std::env::var("WEIR_KAFKA_TEST_RDKAFKA_DEBUG")
                .map(|d| format!("debug = {d:?}"))
                .unwrap_or_default(),
        ),
    )
}

/// Runs the counter pipeline `cfg` until all `produced` ids came out, then stops it cleanly.
fn run_counter_to_end(
    cfg: &Path,
    produced: usize,
    order: &HashMap<String, Vec<String>>,
    counted: &mut Counted,
) {
    let mut child = Reaper(spawn(cfg));
    let start = Instant::now();
    loop {
        let got = check_counts(counted.update(), order).0;
        if got == produced {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "only {got} of {produced} ids came out: {}",
            log_tail(cfg, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(child.0.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut child.0, Duration::from_secs(60)).success(),
        "{}",
        log_of(cfg)
    );
}

/// Of a (compacted) topic: the records it still has and the offsets it spans (per partition,
/// high watermark − low watermark). Fewer records than offsets: the cleaner removed some.
fn records_and_span(bootstrap: &str, topic: &str) -> (usize, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let span = (0..PARTITIONS)
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap();
            hi - lo
        })
        .sum();
    (read_all(bootstrap, topic).len(), span)
}

/// A compacted changelog topic whose segments roll every 500 ms and which the cleaner takes as
/// soon as anything is dirty, so that compaction runs during a test.
fn compacted_changelog(kafka: &Kafka, name: &str) {
    kafka.create_topic(
        name,
        PARTITIONS,
        1,
        &[
            ("cleanup.policy", "compact"),
            ("segment.ms", "500"),
            ("min.cleanable.dirty.ratio", "0.01"),
            ("min.compaction.lag.ms", "0"),
        ],
    );
}

/// The crash phase of the counter tests: `kills` rounds of producing keyed input and
/// SIGKILLing an instance at a random moment after it joined, every third round the `other`
/// one. Returns how long it took.
#[allow(clippy::too_many_arguments)]
fn crash_counter(
    (cfg, other): (&Path, &Path),
    bs: &str,
    t: &Topics,
    kills: usize,
    mut rng: u64,
    keys: usize,
    produced: &mut usize,
    order: &mut HashMap<String, Vec<String>>,
) -> Duration {
    let per_kill = (4000 / kills.max(1)).max(20);
    let start = Instant::now();
    for k in 0..kills {
        produce_keyed(bs, &t.input, *produced..*produced + per_kill, keys, order);
        *produced += per_kill;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let instance = if k % 3 == 2 { other } else { cfg };
        kill_after_join(instance, k, Duration::from_secs(60), rng % 1500);
    }
    start.elapsed()
}

/// Waits until the broker compacted `changelog` (the restores that follow read the compacted
/// log), running `cfg` over a little more input each time: compaction only takes closed
/// segments, and an append rolls the active one past `segment.ms`. Returns (records left,
/// offsets spanned).
#[allow(clippy::too_many_arguments)]
fn wait_compacted(
    changelog: &str,
    cfg: &Path,
    bs: &str,
    t: &Topics,
    keys: usize,
    produced: &mut usize,
    order: &mut HashMap<String, Vec<String>>,
    counted: &mut Counted,
) -> (usize, i64) {
    let start = Instant::now();
    loop {
        let (records, span) = records_and_span(bs, changelog);
        if (records as i64) < span {
            eprintln!("changelog compacted: {records} records left of {span} offsets");
            return (records, span);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the changelog was never compacted: {records} records over {span} offsets"
        );
        produce_keyed(bs, &t.input, *produced..*produced + 64, keys, order);
        *produced += 64;
        run_counter_to_end(cfg, *produced, order, counted);
    }
}

/// Two instances share the partitions; `cfg`'s is SIGKILLed mid-stream and `other`'s takes its
/// partitions over with their state, restored from the changelog. Returns once every id came
/// out, with the survivor still running.
#[allow(clippy::too_many_arguments)]
fn counter_take_over(
    (cfg, other): (&Path, &Path),
    bs: &str,
    t: &Topics,
    keys: usize,
    produced: &mut usize,
    order: &mut HashMap<String, Vec<String>>,
    counted: &mut Counted,
) -> Reaper {
    let mut a = Reaper(spawn(cfg));
    let b = Reaper(spawn(other));
    let start = Instant::now();
    while !(log_of(cfg).contains("partitions assigned")
        && log_of(other).contains("partitions assigned"))
    {
        assert!(start.elapsed() < Duration::from_secs(60), "both join");
        std::thread::sleep(Duration::from_millis(20));
    }
    produce_keyed(bs, &t.input, *produced..*produced + 2000, keys, order);
    *produced += 2000;
    while check_counts(counted.update(), order).0 < *produced - 1500 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "progress with two instances"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(a.0.id(), libc::SIGKILL);
    wait_exit(&mut a.0, Duration::from_secs(10));
    produce_keyed(bs, &t.input, *produced..*produced + 1000, keys, order);
    *produced += 1000;
    let start = Instant::now();
    loop {
        let got = check_counts(counted.update(), order).0;
        if got == *produced {
            return b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "only {got} of {produced} ids came out after the kill: {}",
            log_tail(other, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The crash test with a stateful transform: a per-key counter whose state lives in
/// `[state] backend = "disk"` with a changelog topic, which the broker compacts during the test
/// (segments roll every 500 ms and the cleaner takes any dirty segment). SIGKILLed
/// `WEIR_KAFKA_STATE_KILLS` (default 50) times at random moments while input keeps coming,
/// restarting every third time as another instance, whose state file lacks what the other did
/// (so state must follow the partitions through the changelog, also after kills in the middle of
/// a checkpoint); then, once the changelog was compacted, the group's committed offsets are
/// rewound (as a crash between the state checkpoint and the Kafka commit would leave them); then
/// both instances run in the group and one is killed, so the survivor takes its partitions over
/// with their state, restored from the compacted changelog. Every record must come out, and every
/// output must carry exactly its position in its key's sequence: no update lost, none applied
/// twice. The long run: `WEIR_KAFKA_STATE_KILLS=1000 cargo test --release -p weir --test kafka
/// durable_state -- --nocapture`.
#[test]
fn sigkill_with_durable_state_keeps_state_and_offsets_in_agreement() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_STATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "state");
    let changelog = "g-state-changelog";
    compacted_changelog(kafka, changelog);
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_config(dir.path(), &bs, &t, changelog, "a");
    let other = state_config(dir.path(), &bs, &t, changelog, "b");
    let keys = 64;
    let mut order = HashMap::new();
    let mut produced = 0;
    let mut counted = Counted::new(&bs, &t.output);
    let crashing = crash_counter(
        (&cfg, &other),
        &bs,
        &t,
        kills,
        0x2545F4914F6CDD1D,
        keys,
        &mut produced,
        &mut order,
    );
    let during = check_counts(counted.update(), &order).0;

    // Run to the end, stop cleanly.
    run_counter_to_end(&cfg, produced, &order, &mut counted);
    let (ids, dups) = check_counts(counted.update(), &order);
    assert_eq!(ids, produced, "every record came out");
    eprintln!(
        "stateful crash test: {kills} kills in {crashing:?}, {during} ids out while crashing, {ids} ids, {dups} duplicate lines ({:.1} per kill), counts all consecutive",
        dups as f64 / kills as f64
    );
    // Not vacuous: weir did real work between kills.
    assert!(during >= produced / 4, "records came out between kills");

    // The broker compacts the changelog: a checkpoint writes each changed key and a marker, so
    // with 64 keys and hundreds of checkpoints most records are superseded.
    wait_compacted(
        changelog,
        &cfg,
        &bs,
        &t,
        keys,
        &mut produced,
        &mut order,
        &mut counted,
    );

    // A crash between the state checkpoint and the Kafka commit: rewind the group's offsets to
    // half of what is committed. weir must resume at the state checkpoints, not re-apply.
    let before = committed(&bs, "g-state", &t.input);
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
    c.subscribe(&[&t.input]).unwrap();
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
            .add_partition_offset(&t.input, *p, Offset::Offset(o / 2))
            .unwrap();
    }
    c.commit(&rewind, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    c.unsubscribe();
    for _ in 0..10 {
        c.poll(Duration::from_millis(50));
    }
    drop(c);
    assert!(
        committed(&bs, "g-state", &t.input).values().sum::<i64>() < before.values().sum::<i64>()
    );
    let (_, dups) = check_counts(counted.update(), &order);
    produce_keyed(&bs, &t.input, produced..produced + 500, keys, &mut order);
    produced += 500;
    run_counter_to_end(&cfg, produced, &order, &mut counted);
    let log = log_of(&cfg);
    assert!(log.contains("resuming at the state checkpoint"), "{log}");
    let (ids, dups2) = check_counts(counted.update(), &order);
    assert_eq!(ids, produced);
    assert_eq!(
        dups2, dups,
        "nothing before the state checkpoints was processed again"
    );

    // Two instances share the partitions; one is killed and the survivor takes its partitions
    // over, with their state (its own file has only what it processed itself), restored from
    // the compacted changelog.
    let mut b = counter_take_over(
        (&cfg, &other),
        &bs,
        &t,
        keys,
        &mut produced,
        &mut order,
        &mut counted,
    );
    let survivor = log_of(&other);
    assert!(
        survivor.contains("state restored from the changelog"),
        "{survivor}"
    );
    signal(b.0.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut b.0, Duration::from_secs(60)).success(),
        "{survivor}"
    );
    let (ids, _) = check_counts(counted.update(), &order);
    assert_eq!(ids, produced);
}

/// Exactly-once with durable state: the per-key counter of the durable-state test with
/// `delivery = "exactly-once"`, so that each output record, the state changes behind it (in the
/// changelog) and the input offsets are committed in one Kafka transaction. SIGKILLed
/// `WEIR_KAFKA_EOS_STATE_KILLS` (default 50) times at random moments while input keeps coming,
/// every third restart as another instance whose state file lacks the other's work (so state
/// must come from the changelog's committed records), with the changelog compacted as it goes;
/// then two instances share the partitions and one is killed. A read_committed reader must see
/// every record exactly once, each carrying exactly its position in its key's sequence: no
/// duplicate, no update lost or applied twice, whatever the kills aborted.
#[test]
fn exactly_once_with_durable_state_counts_every_record_exactly_once_across_kills() {
    let _serial = serial();
    let kills: usize = std::env::var("WEIR_KAFKA_EOS_STATE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, "eos-state");
    let changelog = "g-state-eos-changelog";
    compacted_changelog(kafka, changelog);
    let dir = tempfile::tempdir().unwrap();
    let cfg = state_config_as(dir.path(), &bs, &t, changelog, "a", true);
    let other = state_config_as(dir.path(), &bs, &t, changelog, "b", true);
    let keys = 64;
    let mut order = HashMap::new();
    let mut produced = 0;
    let mut counted = Counted::new(&bs, &t.output);
    let crashing = crash_counter(
        (&cfg, &other),
        &bs,
        &t,
        kills,
        0x853C49E6748FEA9B,
        keys,
        &mut produced,
        &mut order,
    );
    let (during, dups) = check_counts(counted.update(), &order);
    assert_eq!(dups, 0, "a record came out twice while crashing");
    run_counter_to_end(&cfg, produced, &order, &mut counted);
    let (ids, dups) = check_counts(counted.update(), &order);
    assert_eq!(ids, produced, "every record came out");
    assert_eq!(dups, 0, "every record came out exactly once");
    let uncommitted = Tail::with_isolation(&bs, &t.output, "read_uncommitted")
        .catch_up()
        .len();
    eprintln!(
        "exactly-once stateful crash test: {kills} kills in {crashing:?}, {during} ids out while crashing, {ids} ids, 0 duplicates, counts all consecutive; {uncommitted} records with the aborted ones"
    );
    assert!(during >= produced / 4, "records came out between kills");
    // Not vacuous: kills left writes behind in transactions that were aborted.
    assert!(
        uncommitted > ids,
        "no kill left an aborted write ({uncommitted} records for {ids} ids)"
    );
    let log = log_of(&other);
    assert!(
        log.contains("state restored from the changelog"),
        "the other instance restored: {log}"
    );

    // The broker compacts the changelog (aborted records go too); restores below read it.
    wait_compacted(
        changelog,
        &cfg,
        &bs,
        &t,
        keys,
        &mut produced,
        &mut order,
        &mut counted,
    );

    // Two instances share the partitions; one is killed mid-stream and the survivor takes its
    // partitions over with their committed state.
    let mut b = counter_take_over(
        (&cfg, &other),
        &bs,
        &t,
        keys,
        &mut produced,
        &mut order,
        &mut counted,
    );
    signal(b.0.id(), libc::SIGTERM);
    assert!(
        wait_exit(&mut b.0, Duration::from_secs(60)).success(),
        "{}",
        log_of(&other)
    );
    let (ids, dups) = check_counts(counted.update(), &order);
    assert_eq!(ids, produced);
    assert_eq!(dups, 0, "nothing came out twice across the take-over");
}

/// weir's Kafka source and sink through a secured listener. `source_security` and
/// `sink_security` are TOML tables (`[source.tls]`, `[sink.sasl]`, …) added to the config; `env`
/// goes to weir's environment. Input is produced and output read on PLAINTEXT.
fn secured_pipeline(
    tag: &str,
    bootstrap: &str,
    source_security: &str,
    sink_security: &str,
    env: &[(&str, &str)],
) {
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let t = topics(kafka, tag);
    let dir = tempfile::tempdir().unwrap();
    let expected = produce(&bs, &t.input, 0..4000);
    let group = format!("g-{tag}");
    let mut pipe = Pipe::new(tag, bootstrap, &t, &group);
    pipe.sink = format!("\n{sink_security}");
    pipe.extra = source_security.to_string();
    let cfg = pipe.write(dir.path());
    let mut out = OutIds::new(&bs, &t.output);
    run_until_complete_env(&cfg, &mut out, &expected, Duration::from_secs(120), env);
    assert_eq!(out.ids.len(), expected.len());
    assert_eq!(out.dups(), 0, "a clean run writes each record once");
    let log = log_of(&cfg);
    assert!(!log.contains(" ERROR "), "{log}");
}

/// Whether a plain librdkafka client with `settings` can read the cluster's metadata.
fn can_connect(settings: &[(&str, &str)]) -> Result<(), String> {
    let mut c = ClientConfig::new();
    c.set("log_level", "0");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    let c: BaseConsumer = c.create().map_err(|e| e.to_string())?;
    c.fetch_metadata(None, Duration::from_secs(5))
        .map(drop)
        .map_err(|e| e.to_string())
}

/// `[<component>.tls]` and `[<component>.sasl]` for the SASL_SSL listener with SCRAM-SHA-512;
/// `password`: the TOML of the password's value.
fn scram_tables(component: &str, ca: &Path, password: &str) -> String {
    format!(
        "[{component}.tls]\nca_file = {ca:?}\n\n[{component}.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"{user}\"\npassword = {password}\n",
        ca = ca.display().to_string(),
        user = kafka_support::SCRAM_USER,
    )
}

/// The test client key encrypted with `password` (PKCS#8, AES-256), by the `openssl` command.
fn encrypted_client_key(kafka: &Kafka, dir: &Path, password: &str) -> PathBuf {
    let out = dir.join("client-encrypted.key");
    let st = Command::new("openssl")
        .args(["pkcs8", "-topk8", "-v2", "aes-256-cbc", "-in"])
        .arg(&kafka.certs.client_key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"))
        .status()
        .expect("the openssl command runs (apt-get install openssl)");
    assert!(st.success(), "openssl pkcs8 failed");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("ENCRYPTED PRIVATE KEY"), "{text}");
    out
}

/// SASL_SSL with SCRAM-SHA-512 through the typed `tls` and `sasl` tables: the source's password
/// from an environment variable, the sink's from a file (the broker checks the password: a
/// wrong one is refused).
#[test]
fn sasl_ssl_scram_sha_512_source_and_sink() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap_sasl_ssl();
    let ca = kafka.certs.ca.display().to_string();
    let base = [
        ("bootstrap.servers", bs.as_str()),
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanism", "SCRAM-SHA-512"),
        ("sasl.username", kafka_support::SCRAM_USER),
        ("ssl.ca.location", ca.as_str()),
    ];
    let with = |password: &str| {
        let mut s = base.to_vec();
        s.push(("sasl.password", password));
        can_connect(&s)
    };
    with(kafka_support::SCRAM_PASSWORD).expect("the right password connects");
    assert!(
        with("wrong-password").is_err(),
        "the listener checks the password"
    );
    let secrets = tempfile::tempdir().unwrap();
    let pw_file = secrets.path().join("kafka-password");
    std::fs::write(&pw_file, format!("{}\n", kafka_support::SCRAM_PASSWORD)).unwrap();
    secured_pipeline(
        "scram",
        &bs,
        &scram_tables(
            "source",
            &kafka.certs.ca,
            "{ env = \"WEIR_TEST_KAFKA_PASSWORD\" }",
        ),
        &scram_tables(
            "sink",
            &kafka.certs.ca,
            &format!("{{ file = {:?} }}", pw_file.display().to_string()),
        ),
        &[("WEIR_TEST_KAFKA_PASSWORD", kafka_support::SCRAM_PASSWORD)],
    );
}

/// Mutual TLS through the typed `tls` table: the listener requires a client certificate signed
/// by the CA it trusts. The source's key is encrypted (its password from an environment
/// variable), the sink's is not.
#[test]
fn mutual_tls_source_and_sink() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap_mtls();
    let c = &kafka.certs;
    let (ca, cert, key) = (
        c.ca.display().to_string(),
        c.client_cert.display().to_string(),
        c.client_key.display().to_string(),
    );
    let base = [
        ("bootstrap.servers", bs.as_str()),
        ("security.protocol", "SSL"),
        ("ssl.ca.location", ca.as_str()),
    ];
    assert!(
        can_connect(&base).is_err(),
        "the listener refuses a client without a certificate"
    );
    let mut full = base.to_vec();
    full.extend([
        ("ssl.certificate.location", cert.as_str()),
        ("ssl.key.location", key.as_str()),
    ]);
    can_connect(&full).expect("a client with its certificate connects");
    let keys = tempfile::tempdir().unwrap();
    let key_pw = "mtls-Key-Secret-9e1";
    let encrypted = encrypted_client_key(kafka, keys.path(), key_pw)
        .display()
        .to_string();
    secured_pipeline(
        "mtls",
        &bs,
        &format!(
            "[source.tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {encrypted:?}\nkey_password = {{ env = \"WEIR_TEST_KEY_PASSWORD\" }}\n"
        ),
        &format!("[sink.tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n"),
        &[("WEIR_TEST_KEY_PASSWORD", key_pw)],
    );
}

/// Runs weir on `cfg` (with `env`) and expects it to fail at start-up within a minute; returns
/// its log.
fn fails_at_start_up(cfg: &Path, env: &[(&str, &str)]) -> String {
    let mut child = Reaper(spawn_env(cfg, env));
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    let log = log_of(cfg);
    assert!(!status.success(), "weir ran: {log}");
    assert!(!log.contains("partitions assigned"), "{log}");
    log
}

/// A wrong SASL password, a broker certificate from a CA the client does not trust (a different
/// CA, or no `ca_file` at all: the system's CAs) and a wrong key password each stop `weir run`
/// at start-up, with an error naming the cause and not the secret.
#[test]
fn wrong_password_untrusted_ca_and_wrong_key_password_fail_at_start_up() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let t = topics(kafka, "startup-fail");
    let dir = tempfile::tempdir().unwrap();
    // The same security tables for the source and the sink.
    let config = |name: &str, bootstrap: &str, tables: &dyn Fn(&str) -> String| {
        let mut pipe = Pipe::new(name, bootstrap, &t, "g-startup-fail");
        pipe.sink = format!("\n{}", tables("sink"));
        pipe.extra = tables("source");
        pipe.write(dir.path())
    };
    let c = &kafka.certs;
    let path = |p: &Path| p.display().to_string();

    let wrong = "Wrong-Scram-Secret-31";
    let cfg = config(
        "wrong-password",
        &kafka.bootstrap_sasl_ssl(),
        &|component| scram_tables(component, &c.ca, "{ env = \"WEIR_TEST_KAFKA_PASSWORD\" }"),
    );
    let log = fails_at_start_up(&cfg, &[("WEIR_TEST_KAFKA_PASSWORD", wrong)]);
    assert!(
        log.contains("the cluster refused this client") && log.contains("sasl.password"),
        "{log}"
    );
    assert!(
        !log.contains(wrong),
        "the wrong password is in the log: {log}"
    );

    let untrusted =
        |component: &str| format!("[{component}.tls]\nca_file = {:?}\n", path(&c.untrusted_ca));
    let system = |component: &str| format!("[{component}.tls]\n");
    for (name, tables) in [
        ("untrusted-ca", &untrusted as &dyn Fn(&str) -> String),
        ("system-cas", &system),
    ] {
        let cfg = config(name, &kafka.bootstrap_ssl(), tables);
        let log = fails_at_start_up(&cfg, &[]);
        assert!(
            log.contains("certificate verify failed") && log.contains("tls.ca_file"),
            "{name}: {log}"
        );
    }

    let keys = tempfile::tempdir().unwrap();
    let key = encrypted_client_key(kafka, keys.path(), "right-Key-Password-1");
    let wrong_key = "Wrong-Key-Password-2";
    let cfg = config(
        "wrong-key-password",
        &kafka.bootstrap_mtls(),
        &|component| {
            format!(
            "[{component}.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nkey_password = \"{wrong_key}\"\n",
            path(&c.ca),
            path(&c.client_cert),
            path(&key),
        )
        },
    );
    let log = fails_at_start_up(&cfg, &[]);
    assert!(
        log.contains("cannot create the") && log.contains("ssl.key"),
        "{log}"
    );
    assert!(!log.contains(wrong_key), "{log}");
}

/// Output of a `weir validate`.
fn validate(cfg: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = weir()
        .envs(env.iter().copied())
        .arg("validate")
        .arg(cfg)
        .output()
        .unwrap();
    let text = strip_ansi(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    (out.status.success(), text)
}

/// A secret weir is given in each of the ways it takes one (an environment variable in the
/// typed `sasl` table, an inline value in the raw `options` table, a file for the dead-letter
/// sink; used by the source, its state changelog, the sink and the dead-letter sink) appears
/// in no output: `weir validate`'s (also when a misspelt key holds it), `weir run`'s log at
/// debug level with librdkafka's own debug output on, `/stats` and `/metrics`.
#[test]
fn secrets_appear_in_no_validate_output_run_log_stats_or_metrics() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let plain = kafka.bootstrap();
    let bs = kafka.bootstrap_sasl_ssl();
    let t = topics(kafka, "secret");
    kafka.create_topic("dlq-secret", PARTITIONS, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let secret = kafka_support::SCRAM_PASSWORD;
    let pw_file = dir.path().join("kafka-password");
    std::fs::write(&pw_file, secret).unwrap();
    let env = [("WEIR_TEST_KAFKA_PASSWORD", secret)];
    let ca = kafka.certs.ca.display().to_string();
    let http = free_addr();
    let mut pipe = Pipe::new("secret", &bs, &t, "g-secret");
    // librdkafka's own debug output (its SASL exchange included) goes to the log too.
    pipe.source_options = "debug = \"security,broker,conf\"".into();
    pipe.sink = format!(
        "\n[sink.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"{}\"\n\"sasl.password\" = \"{secret}\"\n\"ssl.ca.location\" = {ca:?}\n",
        kafka_support::SCRAM_USER
    );
    pipe.extra = format!(
        "{source}\n[failure]\ntype = \"kafka\"\nbootstrap_servers = \"{bs}\"\ntopic = \"dlq-secret\"\n\n{failure}\n[state]\nbackend = \"disk\"\npath = {state:?}\nchangelog_topic = \"cl-secret\"\n\n[http]\naddress = \"{http}\"\n",
        source = scram_tables(
            "source",
            &kafka.certs.ca,
            "{ env = \"WEIR_TEST_KAFKA_PASSWORD\" }"
        ),
        failure = scram_tables(
            "failure",
            &kafka.certs.ca,
            &format!("{{ file = {:?} }}", pw_file.display().to_string())
        ),
        state = dir.path().join("state.redb").display().to_string(),
    );
    let cfg = pipe.write(dir.path());

    let (ok, text) = validate(&cfg, &env);
    assert!(ok, "{text}");
    assert!(!text.contains(secret), "validate: {text}");

    // A misspelt key, in the raw options and in the typed table, holding the secret.
    let text_of = |from: &str, to: &str| {
        let bad = std::fs::read_to_string(&cfg).unwrap().replacen(from, to, 1);
        let bad_cfg = write(dir.path(), "misspelt.toml", &bad);
        let (ok, text) = validate(&bad_cfg, &env);
        assert!(!ok, "{text}");
        assert!(!text.contains(secret), "validate: {text}");
        text
    };
    let text = text_of("\"sasl.password\" =", "\"sasl.pasword\" =");
    assert!(text.contains("sasl.pasword"), "{text}");
    let text = text_of(
        "[failure.sasl]\nmechanism = \"SCRAM-SHA-512\"",
        &format!("[failure.sasl]\npasword = \"{secret}\"\nmechanism = \"SCRAM-SHA-512\""),
    );
    assert!(
        text.contains("failure.sasl") && text.contains("pasword"),
        "{text}"
    );

    let expected = produce(&plain, &t.input, 0..2000);
    let mut out = OutIds::new(&plain, &t.output);
    let log_env = [env[0], ("WEIR_LOG", "debug")];
    let mut child = Reaper(spawn_env(&cfg, &log_env));
    out.wait_all(&expected, Duration::from_secs(90), || {
        log_of(&cfg)
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .collect::<Vec<_>>()
            .join("\n")
    });
    let stats = common::http_get(&http, "/stats").expect("/stats answers");
    let metrics = common::http_get(&http, "/metrics").expect("/metrics answers");
    assert!(stats.contains("\"read\""), "{stats}");
    assert!(!stats.contains(secret), "/stats: {stats}");
    assert!(!metrics.contains(secret), "/metrics: {metrics}");
    signal(child.0.id(), libc::SIGTERM);
    assert!(wait_exit(&mut child.0, Duration::from_secs(60)).success());
    let log = log_of(&cfg);
    assert!(
        log.contains("changelog"),
        "the changelog was connected: {log}"
    );
    assert!(
        log.contains("DEBUG") && log.contains("SASLSCRAM"),
        "librdkafka's debug output is in the log"
    );
    assert!(!log.contains(secret), "the run's log holds the secret");
    let stdout = std::fs::read_to_string(cfg.with_extension("out")).unwrap_or_default();
    assert!(!stdout.contains(secret), "stdout: {stdout}");
}

/// A three-node cluster, topics replicated three times (`min.insync.replicas = 2`): the broker
/// leading most partitions is SIGKILLed while weir works, and started again later. Leadership
/// moves, weir keeps going, nothing is lost.
#[test]
fn a_broker_of_three_dies_and_weir_fails_over_without_loss() {
    let _serial = serial();
    let mut kafka = Kafka::cluster(3);
    let bs = kafka.bootstrap();
    let t = Topics {
        input: "in-failover".into(),
        output: "out-failover".into(),
    };
    for topic in [&t.input, &t.output] {
        kafka.create_topic(topic, PARTITIONS, 3, &[("min.insync.replicas", "2")]);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut expected = produce(&bs, &t.input, 0..20_000);
    let cfg = Pipe::new("failover", &bs, &t, "g-failover").write(dir.path());
    let mut child = Reaper(spawn(&cfg));
    let mut out = OutIds::new(&bs, &t.output);
    let start = Instant::now();
    while out.ids.len() < 2000 {
        out.update();
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress: {}",
            log_tail(&cfg, 40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut count: HashMap<i32, usize> = HashMap::new();
    for topic in [&t.input, &t.output] {
        for (_, leader) in kafka.leaders(topic) {
            *count.entry(leader).or_default() += 1;
        }
    }
    let victim = count
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id)
        .unwrap();
    drop(out);
    kafka.kill(victim as u32);
    eprintln!(
        "killed broker {victim} (leader of {} partitions)",
        count[&victim]
    );
    let survivors: String = kafka
        .node_ids()
        .into_iter()
        .filter(|id| *id != victim as u32)
        .map(|id| {
            kafka
                .bootstrap()
                .split(',')
                .nth(id as usize - 1)
                .unwrap()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",");
    // Input keeps coming while the broker is down.
    expected.extend(produce(&survivors, &t.input, 20_000..30_000));
    let mut out = OutIds::new(&survivors, &t.output);
    out.wait_all(&expected, Duration::from_secs(180), || log_tail(&cfg, 40));
    assert!(child.0.try_wait().unwrap().is_none(), "weir kept running");
    kafka.restart(victim as u32);
    expected.extend(produce(&bs, &t.input, 30_000..32_000));
    out.wait_all(&expected, Duration::from_secs(120), || log_tail(&cfg, 40));
    signal(child.0.id(), libc::SIGTERM);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "{}", log_of(&cfg));
}

// ---------------------------------------------------------------------------------------------
// Bench: (a) a plain librdkafka consume → produce pipe, no processing (the limit of this machine
// and broker) vs (b) weir Kafka → media-filter (WASM) → Kafka, at-least-once; same broker, same
// input topic, same records, medians of `WEIR_KAFKA_BENCH_ROUNDS` (5) rounds.
// ---------------------------------------------------------------------------------------------

/// The enriched fixture's events, repeated with unique ids (event_id and domain_userid).
fn bench_events(n: usize) -> (Vec<(String, String)>, usize) {
    let text = std::fs::read_to_string(common::fixture("sdk/micro-media-session.tsv")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = 0;
    let events = (0..n)
        .map(|i| {
            let line = lines[i % lines.len()];
            if line.split('\t').nth(125) == Some("com.snowplowanalytics.snowplow.media") {
                kept += 1;
            }
            let id = id(i);
            (id.clone(), stamp(line, &id))
        })
        .collect();
    (events, kept)
}

/// Produces `events` as fast as librdkafka takes them (each stamped with its produce time).
fn bench_produce(bootstrap: &str, topic: &str, events: &[(String, String)]) {
    let p = producer(bootstrap);
    for (id, line) in events {
        send(&p, BaseRecord::to(topic).key(id).payload(line));
    }
    p.flush(Duration::from_secs(120)).unwrap();
}

/// Produces `events` at `rate` per second; returns each id's produce time (ms since the epoch,
/// also the record's timestamp).
fn bench_produce_paced(
    bootstrap: &str,
    topic: &str,
    events: &[(String, String)],
    rate: f64,
) -> HashMap<String, i64> {
    let p = producer(bootstrap);
    let mut sent = HashMap::new();
    let start = Instant::now();
    for (i, (id, line)) in events.iter().enumerate() {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        while Instant::now() < due {
            p.poll(Duration::ZERO);
            std::thread::sleep(Duration::from_micros(200));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        sent.insert(id.clone(), now);
        send(
            &p,
            BaseRecord::to(topic).key(id).payload(line).timestamp(now),
        );
    }
    p.flush(Duration::from_secs(60)).unwrap();
    sent
}

/// One pipeline's figures of one round.
#[derive(Clone, Copy, Debug)]
struct BenchFigures {
    /// Input events per second, steady state (first output to last).
    rate: f64,
    /// End-to-end p99 at a paced input rate: output log-append time − input produce time.
    p99_ms: f64,
    p50_ms: f64,
    peak_rss_kib: u64,
    /// CPU seconds the pipeline process spent per million input events (backlog phase).
    cpu_s_per_m: f64,
    /// CPU seconds the broker spent per million input events in the same window.
    broker_cpu_s_per_m: f64,
}

/// CPU time (user + system) a process has used so far, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf takes a plain integer and returns one.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

/// Runs one pipeline process (already started, reading the backlog topic from the start) until
/// it has written `out_expected` records, then feeds it `paced` at `rate`/s on `paced_topic`
/// (which it also reads) and measures the latency of those. Kills it at the end.
#[allow(clippy::too_many_arguments)]
fn bench_measure(
    child: &mut Child,
    broker_pid: u32,
    bootstrap: &str,
    paced_topic: &str,
    output: &str,
    n_in: usize,
    out_expected: i64,
    paced: &[(String, String)],
    paced_out: usize,
    rate: f64,
) -> BenchFigures {
    let pid = child.id();
    let start = Instant::now();
    let mut first: Option<(Instant, i64, f64, f64)> = None;
    let mut peak = 0;
    let cpu = || {
        (
            cpu_secs(pid).unwrap_or(0.0),
            cpu_secs(broker_pid).unwrap_or(0.0),
        )
    };
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let hwm = |c: &BaseConsumer| -> i64 {
        (0..PARTITIONS)
            .map(|p| {
                c.fetch_watermarks(output, p, Duration::from_secs(10))
                    .unwrap()
                    .1
            })
            .sum()
    };
    loop {
        let w = hwm(&c);
        if let Some((_, h)) = rss_kib(pid) {
            peak = peak.max(h);
        }
        if w > 0 && first.is_none() {
            let (p, b) = cpu();
            first = Some((Instant::now(), w, p, b));
        }
        if w >= out_expected {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the pipeline exited early"
        );
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "bench stalled at {w}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (t0, w0, p0, b0) = first.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    let (p1, b1) = cpu();
    let events_in = (out_expected - w0) as f64 * n_in as f64 / out_expected as f64;
    let rate_in = events_in / secs;
    // Latency at a steady input rate, well below either pipeline's limit.
    let mut tail = Tail::new(bootstrap, output);
    tail.catch_up();
    let sent = bench_produce_paced(bootstrap, paced_topic, paced, rate);
    let mut lat = Vec::new();
    let start = Instant::now();
    while lat.len() < paced_out {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "paced records came out"
        );
        for m in tail.catch_up() {
            if let (Some(t_in), rdkafka::Timestamp::LogAppendTime(t_out)) =
                (sent.get(&event_id(&m)), m.timestamp())
            {
                lat.push((t_out - t_in) as f64);
            }
        }
        if let Some((_, h)) = rss_kib(pid) {
            peak = peak.max(h);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let _ = child.kill();
    let _ = child.wait();
    BenchFigures {
        rate: rate_in,
        p99_ms: q(0.99),
        p50_ms: q(0.50),
        peak_rss_kib: peak,
        cpu_s_per_m: (p1 - p0) / events_in * 1e6,
        broker_cpu_s_per_m: (b1 - b0) / events_in * 1e6,
    }
}

/// The plain pipe (a), run in a child process (this test binary, `bench_plain_pipe_process`) so
/// that its memory is its own.
fn spawn_plain_pipe(bootstrap: &str, inputs: &[&str], output: &str, group: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "bench_plain_pipe_process",
            "--ignored",
            "--nocapture",
        ])
        .env(
            "WEIR_BENCH_PIPE",
            format!("{bootstrap}|{}|{output}|{group}", inputs.join(",")),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// (a): consume → produce with librdkafka, no processing, as fast as it goes: one poll loop
/// handing each record's key and value to an idempotent producer (acks=all, lz4, as weir's
/// sink), librdkafka batching on both sides; offsets auto-committed. Only runs as the bench's
/// child (`WEIR_BENCH_PIPE` set).
#[test]
#[ignore]
fn bench_plain_pipe_process() {
    let Ok(spec) = std::env::var("WEIR_BENCH_PIPE") else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let (bootstrap, inputs, output, group) = (f[0], f[1], f[2], f[3]);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .create()
        .unwrap();
    c.subscribe(&inputs.split(',').collect::<Vec<_>>()).unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()
        .unwrap();
    loop {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut r = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                loop {
                    match p.send(r) {
                        Ok(()) => break,
                        Err((_, back)) => {
                            r = back;
                            p.poll(Duration::from_millis(1));
                        }
                    }
                }
                p.poll(Duration::ZERO);
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {
                p.poll(Duration::ZERO);
            }
        }
    }
}

/// Build the binary in release for meaningful numbers:
/// `cargo test --release -p weir --test kafka bench_kafka -- --ignored --nocapture`
/// (`WEIR_KAFKA_BENCH_EVENTS`, default 300,000 per round; `WEIR_KAFKA_BENCH_ROUNDS`, default 5;
/// `WEIR_KAFKA_BENCH_RATE`, the paced rate of the latency phase, default 20,000/s).
#[test]
#[ignore]
fn bench_kafka_plain_pipe_vs_weir() {
    let _serial = serial();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    // A million events: the plain pipe goes through 300,000 in about a second, too short a
    // window to measure.
    let n = env("WEIR_KAFKA_BENCH_EVENTS", 1_000_000);
    let rounds = env("WEIR_KAFKA_BENCH_ROUNDS", 3);
    let rate = env("WEIR_KAFKA_BENCH_RATE", 20_000) as f64;
    let paced_n = (rate * 5.0) as usize;
    let kafka = Kafka::single();
    let bs = kafka.bootstrap();
    let (events, kept) = bench_events(n + paced_n);
    let (backlog, paced) = events.split_at(n);
    let kept_backlog = backlog
        .iter()
        .filter(|(_, l)| l.split('\t').nth(125) == Some("com.snowplowanalytics.snowplow.media"))
        .count();
    let kept_paced = kept - kept_backlog;
    let wasm = wasm_support::rust_guest("media_filter");
    // Settings to try (TOML lines put at the top of weir's config, e.g.
    // `WEIR_KAFKA_BENCH_CONFIG='[batch]\nmax_records = 4000'`).
    // `WEIR_KAFKA_BENCH_SOURCE` goes into `[source]` (`prefetch = "16 MiB"`).
    let from_env = |k: &str| std::env::var(k).unwrap_or_default().replace("\\n", "\n");
    let (extra, source_extra) = (
        from_env("WEIR_KAFKA_BENCH_CONFIG"),
        from_env("WEIR_KAFKA_BENCH_SOURCE"),
    );
    let mut results: HashMap<&str, Vec<BenchFigures>> = HashMap::new();
    for round in 0..rounds {
        let input = format!("bench-in-{round}");
        kafka.create_topic(&input, PARTITIONS, 1, &[]);
        let t0 = Instant::now();
        bench_produce(&bs, &input, backlog);
        eprintln!("round {round}: {n} events produced in {:.1?}", t0.elapsed());
        // Rotate the order, so no pipeline always reads a cold page cache.
        let mut order = ["plain", "weir", "weir-eos"];
        order.rotate_left(round % 3);
        for which in order {
            let output = format!("bench-out-{which}-{round}");
            kafka.create_topic(
                &output,
                PARTITIONS,
                1,
                &[("message.timestamp.type", "LogAppendTime")],
            );
            let group = format!("bench-{which}-{round}");
            let paced_topic = format!("bench-paced-{which}-{round}");
            kafka.create_topic(&paced_topic, PARTITIONS, 1, &[]);
            let dir = tempfile::tempdir().unwrap();
            let (mut child, out_expected, paced_out) = if which == "plain" {
                (
                    spawn_plain_pipe(&bs, &[&input, &paced_topic], &output, &group),
                    n as i64,
                    paced_n,
                )
            } else {
                let cfg = write(
                    dir.path(),
                    "bench.toml",
                    &format!(
                        r#"
{extra}

[source]
type = "kafka"
bootstrap_servers = "{bs}"
topics = ["{input}", "{paced_topic}"]
group_id = "{group}"
{source_extra}

[[transforms]]
type = "wasm"
path = {wasm:?}
cache_dir = {cache:?}

[sink]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "{output}"
{delivery}
"#,
                        delivery = if which == "weir-eos" {
                            "delivery = \"exactly-once\""
                        } else {
                            ""
                        },
                        wasm = wasm.display().to_string(),
                        cache = wasm_support::cache_dir().display().to_string(),
                    ),
                );
                (spawn(&cfg), kept_backlog as i64, kept_paced)
            };
            let f = bench_measure(
                &mut child,
                kafka.pid(kafka.node_ids()[0]).expect("the broker runs"),
                &bs,
                &paced_topic,
                &output,
                n,
                out_expected,
                paced,
                paced_out,
                rate,
            );
            eprintln!(
                "round {round} {which}: {:.0} events/s, latency p50 {:.0} ms p99 {:.0} ms at {rate:.0}/s, peak RSS {} KiB, CPU per 1M events: pipeline {:.2} s, broker {:.2} s",
                f.rate, f.p50_ms, f.p99_ms, f.peak_rss_kib, f.cpu_s_per_m, f.broker_cpu_s_per_m
            );
            results.entry(which).or_default().push(f);
            delete_topics(&bs, &[&output, &paced_topic]);
        }
        delete_topics(&bs, &[&input]);
    }
    let median = |v: &[BenchFigures], f: fn(&BenchFigures) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    for which in ["plain", "weir", "weir-eos"] {
        let v = &results[which];
        eprintln!(
            "bench {which}: median {:.0} events/s, p99 {:.0} ms (p50 {:.0} ms) at {rate:.0}/s, peak RSS {:.0} KiB, CPU per 1M events: pipeline {:.2} s, broker {:.2} s",
            median(v, |f| f.rate),
            median(v, |f| f.p99_ms),
            median(v, |f| f.p50_ms),
            median(v, |f| f.peak_rss_kib as f64),
            median(v, |f| f.cpu_s_per_m),
            median(v, |f| f.broker_cpu_s_per_m)
        );
    }
    let plain = median(&results["plain"], |f| f.rate);
    eprintln!(
        "bench: (b) weir / plain = {:.2}, (c) weir exactly-once / plain = {:.2}",
        median(&results["weir"], |f| f.rate) / plain,
        median(&results["weir-eos"], |f| f.rate) / plain
    );
}

fn delete_topics(bootstrap: &str, topics: &[&str]) {
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
    let _ = futures::executor::block_on(
        admin.delete_topics(topics, &rdkafka::admin::AdminOptions::new()),
    );
}

/// Expiry owned by weir, end to end: the real binary with viewer-state, disk state and a
/// changelog, `flush_interval = "200ms"`, `ttl = "2s"`. A viewer that goes silent is removed
/// within a tick or so after its TTL (while another viewer of the same partition keeps sending):
/// a removal record keyed by the viewer on the output, and a tombstone of its profile on the
/// changelog after the value it held. The busy viewer is never removed.
#[test]
fn a_silent_viewer_gets_a_removal_record_and_a_changelog_tombstone() {
    let _serial = serial();
    let kafka = kafka_support::shared();
    let bs = kafka.bootstrap();
    let (input, output, changelog) = ("in-expiry", "out-expiry", "cl-expiry");
    kafka.create_topic(input, 1, 1, &[]);
    kafka.create_topic(output, 1, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "expiry.toml",
        &format!(
            r#"
[source]
type = "kafka"
bootstrap_servers = "{bs}"
topics = ["{input}"]
group_id = "g-expiry"
commit_interval = "200ms"

[[transforms]]
type = "wasm"
path = {wasm:?}
cache_dir = {cache:?}
flush_interval = "200ms"
config = {{ ttl = "2s" }}

[state]
backend = "disk"
path = {state:?}
changelog_topic = "{changelog}"

[sink]
type = "kafka"
bootstrap_servers = "{bs}"
topic = "{output}"
"#,
            wasm = wasm_support::rust_guest("viewer_state")
                .display()
                .to_string(),
            cache = wasm_support::cache_dir().display().to_string(),
            state = dir.path().join("state.redb").display().to_string(),
        ),
    );
    let mut weir = Reaper(spawn(&cfg));
    let (media, _) = templates();
    let event = |viewer: &str, id: &str| {
        let mut f: Vec<&str> = media.split('\t').collect();
        f[6] = id; // event_id
        f[12] = ""; // user_id
        f[15] = viewer; // domain_userid
        f[17] = ""; // network_userid
        f.join("\t")
    };
    let p = producer(&bs);
    let removed = |msgs: &[OwnedMessage], viewer: &str| {
        msgs.iter().any(|m| {
            m.key() == Some(viewer.as_bytes())
                && m.payload().is_some_and(|v| {
                    let doc: serde_json::Value = serde_json::from_slice(v).unwrap();
                    doc["removed"] == true
                })
        })
    };
    let line = event("quiet", &id(0));
    send(
        &p,
        BaseRecord::<(), _>::to(input).payload(&line).partition(0),
    );
    let start = Instant::now();
    let mut found = None;
    let mut i = 1;
    while start.elapsed() < Duration::from_secs(60) {
        let line = event("busy", &id(i));
        send(
            &p,
            BaseRecord::<(), _>::to(input).payload(&line).partition(0),
        );
        p.flush(Duration::from_secs(5)).unwrap();
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
        let msgs = read_all(&bs, output);
        if removed(&msgs, "quiet") {
            found = Some(msgs);
            break;
        }
        assert!(
            weir.0.try_wait().unwrap().is_none(),
            "{}",
            log_tail(&cfg, 30)
        );
    }
    let msgs = found.unwrap_or_else(|| {
        panic!(
            "no removal record of the silent viewer\n{}",
            log_tail(&cfg, 30)
        )
    });
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "not before its TTL"
    );
    assert!(
        msgs.iter()
            .any(|m| m.key() == Some(b"quiet".as_slice())
                && !removed(std::slice::from_ref(m), "quiet")),
        "its profile came first"
    );
    assert!(!removed(&msgs, "busy"), "the busy viewer stays");
    // The tombstone reaches the changelog with the next checkpoint.
    let tombstone = |cl: &[OwnedMessage]| {
        let of_quiet: Vec<_> = cl
            .iter()
            .filter(|m| m.key().is_some_and(|k| k.ends_with(b"quiet")))
            .collect();
        of_quiet.first().is_some_and(|m| m.payload().is_some())
            && of_quiet.last().is_some_and(|m| m.payload().is_none())
    };
    let waited = Instant::now();
    while !tombstone(&read_all(&bs, changelog)) {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "no changelog tombstone for the silent viewer\n{}",
            log_tail(&cfg, 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(weir.0.id(), libc::SIGTERM);
    wait_exit(&mut weir.0, Duration::from_secs(30));
}
