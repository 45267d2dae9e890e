//! The `pubsub` source and sink against Google's Pub/Sub fake (pstest, a real gRPC server
//! process), through the real weir binary.

mod common;
mod pubsub_support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::*;
use gcloud_googleapis::pubsub::v1::PubsubMessage;
use pubsub_support::*;

fn spawn_weir(config: &Path) -> Child {
    spawn_logging(
        {
            let mut c = weir();
            c.env_remove("PUBSUB_EMULATOR_HOST");
            c
        },
        config,
    )
}

fn stop(child: Child, config: &Path) {
    stop_logged(child, config)
}

async fn wait_for(what: &str, config: &Path, ok: impl AsyncFnMut() -> bool) {
    wait_for_logged(what, config, WAIT, ok).await
}

fn source(emu: &Emulator, sub: &str, extra: &str) -> String {
    format!(
        "[source]\ntype = \"pubsub\"\nproject_id = \"{PROJECT}\"\nsubscription = \"{sub}\"\n\
         emulator_host = \"{}\"\n{extra}\n",
        emu.host
    )
}

fn sink(emu: &Emulator, topic: &str, extra: &str) -> String {
    format!(
        "[sink]\ntype = \"pubsub\"\nproject_id = \"{PROJECT}\"\ntopic = \"{topic}\"\n\
         emulator_host = \"{}\"\n{extra}\n",
        emu.host
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_to_pubsub_keeps_every_message_once_with_ordering_keys_in_order() {
    let emu = Emulator::start();
    emu.topic("in", Some(("in-sub", 10))).await;
    emu.topic("out", Some(("out-sub", 10))).await;
    // 2,000 messages of 20 viewers (ordering keys), a few with attributes, and one over
    // limits.max_record_bytes.
    let mut sent = Vec::new();
    for i in 0..2_000 {
        let mut m = message(&format!("{{\"viewer\":\"v{}\",\"n\":{i}}}", i % 20));
        m.ordering_key = format!("v{}", i % 20);
        if i % 500 == 0 {
            m.attributes.insert("origin".into(), "test".into());
        }
        sent.push(m);
    }
    sent.push(message(&"x".repeat(5_000)));
    emu.publish("in", sent).await;

    let dir = tempfile::tempdir().unwrap();
    let failed = dir.path().join("failed.jsonl");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}{}[limits]\nmax_record_bytes = 4096\n[batch]\nmax_records = 300\nflush_interval = \"100ms\"\n\
             [failure]\ntype = \"file\"\npath = \"{}\"\n",
            source(&emu, "in-sub", "max_in_flight = 700"),
            sink(&emu, "out", "ordering = true\nmax_batch_messages = 50"),
            failed.display()
        ),
    );
    let weir = spawn_weir(&cfg);
    let mut got: Vec<PubsubMessage> = Vec::new();
    wait_for("2,000 messages on the out topic", &cfg, async || {
        got.extend(emu.drain("out-sub").await);
        got.len() >= 2_000
    })
    .await;
    // The input was acknowledged: nothing comes back on the input subscription.
    wait_for(
        "the input subscription to be acknowledged",
        &cfg,
        async || {
            tokio::time::sleep(Duration::from_secs(11)).await; // past the subscription's deadline
            emu.drain("in-sub").await.is_empty()
        },
    )
    .await;
    stop(weir, &cfg);

    let mut seen = HashSet::new();
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        let n = v["n"].as_i64().unwrap();
        assert!(seen.insert(n), "message {n} published twice");
        assert_eq!(
            m.ordering_key,
            v["viewer"].as_str().unwrap(),
            "the key kept"
        );
        let prev = last.insert(m.ordering_key.clone(), n).unwrap_or(-1);
        assert!(prev < n, "{}: {n} after {prev}", m.ordering_key);
    }
    assert_eq!(seen.len(), 2_000);
    let bad = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(bad.lines().count(), 1, "{bad}");
    assert!(bad.contains("max_record_bytes"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_sends_what_pubsub_cannot_take_to_the_failure_sink() {
    let emu = Emulator::start();
    emu.topic("out", Some(("out-sub", 10))).await;
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.txt", "a\n\nb\nc\n");
    let failed = dir.path().join("failed.jsonl");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}{}[failure]\ntype = \"file\"\npath = \"{}\"\n",
            file_source(&input),
            sink(&emu, "out", ""),
            failed.display()
        ),
    );
    let out = weir()
        .arg("run")
        .arg(&cfg)
        .arg("--progress=never")
        .env_remove("PUBSUB_EMULATOR_HOST")
        .output()
        .unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let mut data: Vec<String> = emu
        .drain("out-sub")
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.data).unwrap())
        .collect();
    data.sort();
    assert_eq!(data, ["a", "b", "c"]);
    let bad = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(bad.lines().count(), 1, "{bad}");
    assert!(bad.contains("a Pub/Sub message needs data"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let emu = Emulator::start();
    emu.topic("in", Some(("in-sub", 10))).await;
    let n = 20_000usize;
    let bodies: Vec<String> = (0..n).map(|i| format!("m-{i:05}")).collect();
    emu.publish("in", bodies.iter().map(|b| message(b)).collect())
        .await;

    let dir = tempfile::tempdir().unwrap();
    let max_in_flight = 200;
    let config = |out: &str| {
        format!(
            "{}[sink]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 50\nflush_interval = \"100ms\"\n",
            source(
                &emu,
                "in-sub",
                &format!("ack_deadline = \"10s\"\nmax_in_flight = {max_in_flight}")
            ),
            dir.path().join(out).display()
        )
    };
    let first = write(dir.path(), "first.toml", &config("first.txt"));
    let mut weir = spawn_weir(&first);
    let out1 = dir.path().join("first.txt");
    wait_for(
        "a part of the subscription to be written",
        &first,
        async || lines_of(&out1).len() >= n / 4,
    )
    .await;
    weir.kill().unwrap(); // SIGKILL
    weir.wait().unwrap();
    let written_first = lines_of(&out1);
    assert!(written_first.len() < n, "killed before the end");

    let second = write(dir.path(), "second.toml", &config("second.txt"));
    let weir = spawn_weir(&second);
    let out2 = dir.path().join("second.txt");
    // Everything not acknowledged comes back once its deadline (10 s) passes: what the first run
    // held (written or not) is redelivered to the second, so it runs past those deadlines.
    let killed = std::time::Instant::now();
    wait_for("every message to be written", &second, async || {
        let all: HashSet<String> = lines_of(&out1).into_iter().chain(lines_of(&out2)).collect();
        all.len() >= n
    })
    .await;
    let rest = Duration::from_secs(15).saturating_sub(killed.elapsed());
    tokio::time::sleep(rest).await;
    wait_for("the redeliveries to be written", &second, async || {
        let before = lines_of(&out2).len();
        tokio::time::sleep(Duration::from_secs(2)).await;
        lines_of(&out2).len() == before
    })
    .await;
    stop(weir, &second);
    let written_second = lines_of(&out2);

    let mut count: HashMap<&str, usize> = HashMap::new();
    for l in written_first.iter().chain(&written_second) {
        *count.entry(l.as_str()).or_default() += 1;
    }
    for b in &bodies {
        assert!(count.contains_key(b.as_str()), "{b} lost");
    }
    assert_eq!(count.len(), n, "nothing but the messages sent");
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= max_in_flight,
        "{duplicates} duplicates, more than the {max_in_flight} messages weir may hold\n{}",
        log_of(&second)
    );
    eprintln!(
        "killed after {} of {n} written; {duplicates} duplicates",
        written_first.len()
    );
    // And the subscription is empty: the second run acknowledged what it wrote.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(emu.drain("in-sub").await.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_acknowledges_what_was_written_and_nacks_the_rest_at_once() {
    let emu = Emulator::start();
    // A deadline far longer than the test: a message weir held and did not nack would stay out.
    emu.topic("in", Some(("in-sub", 600))).await;
    let n = 20_000usize;
    emu.publish(
        "in",
        (0..n).map(|i| message(&format!("m-{i:05}"))).collect(),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[sink]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 50\nflush_interval = \"100ms\"\n",
            source(&emu, "in-sub", "ack_deadline = \"600s\"\nmax_in_flight = 200"),
            out.display()
        ),
    );
    let weir = spawn_weir(&cfg);
    wait_for("a part to be written", &cfg, async || {
        lines_of(&out).len() >= n / 4
    })
    .await;
    stop(weir, &cfg);
    let written: HashSet<String> = lines_of(&out).into_iter().collect();
    let rest: HashSet<String> = emu
        .drain("in-sub")
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.data).unwrap())
        .collect();
    assert!(written.len() < n, "stopped before the end");
    assert!(
        written.is_disjoint(&rest),
        "a written message was not acknowledged"
    );
    assert_eq!(
        written.len() + rest.len(),
        n,
        "every message written or available again at once\n{}",
        log_of(&cfg)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_subscription_or_topic_fails_the_start_naming_it() {
    let emu = Emulator::start();
    let dir = tempfile::tempdir().unwrap();
    for (role, cfg, name) in [
        (
            "source",
            format!("{}[sink]\ntype = \"null\"\n", source(&emu, "nope-sub", "")),
            "subscription `projects/weir-test/subscriptions/nope-sub` does not exist",
        ),
        (
            "sink",
            format!(
                "[source]\ntype = \"stdin\"\n{}",
                sink(&emu, "nope-topic", "")
            ),
            "topic `projects/weir-test/topics/nope-topic` does not exist",
        ),
    ] {
        let cfg = write(dir.path(), "p.toml", &cfg);
        let out = weir()
            .arg("run")
            .arg(&cfg)
            .stdin(Stdio::null())
            .env_remove("PUBSUB_EMULATOR_HOST")
            .output()
            .unwrap();
        let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(role) && stderr.contains(name), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snowbridge_pubsub_config_runs_unchanged_on_the_emulator() {
    // Snowbridge's own docs example shape, with the emulator named as Google's clients take it.
    let emu = Emulator::start();
    emu.topic("raw", Some(("raw-sub", 10))).await;
    emu.topic("fwd", Some(("fwd-sub", 10))).await;
    emu.publish("raw", (0..100).map(|i| message(&format!("e{i}"))).collect())
        .await;
    let dir = tempfile::tempdir().unwrap();
    let hcl = write(
        dir.path(),
        "config.hcl",
        &format!(
            r#"
source {{
  use "pubsub" {{
    project_id      = "{PROJECT}"
    subscription_id = "raw-sub"
    max_outstanding_messages = 200
    min_extension_period_seconds = 10
    streaming_pull_goroutines = 1
    grpc_connection_pool_size = 2
  }}
}}
target {{
  use "pubsub" {{
    project_id = "{PROJECT}"
    topic_name = "fwd"
    batching {{
      max_batch_messages = 20
      max_concurrent_batches = 2
    }}
  }}
}}
license {{
  accept = true
}}
"#
        ),
    );
    let log = std::fs::File::create(dir.path().join("config.log")).unwrap();
    let mut weir = weir()
        .arg("run")
        .arg(&hcl)
        .arg("--progress=never")
        .env("PUBSUB_EMULATOR_HOST", &emu.host)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    wait_for("100 messages forwarded", &hcl, async || {
        got.extend(emu.drain("fwd-sub").await);
        got.len() >= 100
    })
    .await;
    signal(weir.id(), libc::SIGTERM);
    assert!(weir.wait().unwrap().success(), "{}", log_of(&hcl));
    let data: HashSet<String> = got
        .into_iter()
        .map(|m| String::from_utf8(m.data).unwrap())
        .collect();
    assert_eq!(data.len(), 100);
}
