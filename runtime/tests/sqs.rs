//! The `sqs` source and sink against a real emulator (moto), through the real weir binary.

mod aws;
mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use aws::*;
use aws_sdk_sqs::types::{
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use common::*;

/// How long a wait may take before the test fails (moto and weir share 2 cores with builds).
const WAIT: Duration = Duration::from_secs(180);

async fn sqs(endpoint: &str) -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk(endpoint).await)
}

/// Creates a queue with `attrs`; returns its URL.
async fn create_queue(
    c: &aws_sdk_sqs::Client,
    name: &str,
    attrs: &[(QueueAttributeName, &str)],
) -> String {
    let mut req = c.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), *v);
    }
    req.send().await.unwrap().queue_url.unwrap()
}

/// Sends `bodies` (with their group ids on a FIFO queue), 10 to a call.
async fn send_all(c: &aws_sdk_sqs::Client, url: &str, bodies: &[(String, Option<String>)]) {
    for (n, chunk) in bodies.chunks(10).enumerate() {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, (body, group))| {
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body);
                if let Some(g) = group {
                    e = e
                        .message_group_id(g)
                        .message_deduplication_id(format!("{n}-{i}"));
                }
                e.build().unwrap()
            })
            .collect();
        let out = c
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await
            .unwrap();
        assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
}

/// Receives (and deletes) every message until the queue stays empty: (body, group id).
async fn drain(c: &aws_sdk_sqs::Client, url: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let res = c
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send()
            .await
            .unwrap();
        let msgs = res.messages.unwrap_or_default();
        if msgs.is_empty() {
            empty += 1;
            continue;
        }
        empty = 0;
        for m in msgs {
            let group = m
                .attributes
                .as_ref()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            out.push((m.body.unwrap(), group));
            c.delete_message()
                .queue_url(url)
                .receipt_handle(m.receipt_handle.unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    out
}

/// Messages in the queue, visible and not (approximate counts; exact on moto).
async fn in_queue(c: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let a = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    let n = |k: QueueAttributeName| a.get(&k).unwrap().parse::<u64>().unwrap();
    (
        n(QueueAttributeName::ApproximateNumberOfMessages),
        n(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

fn spawn_weir(config: &Path) -> Child {
    spawn_logging(weir_aws(), config)
}

fn stop(child: Child, config: &Path) {
    stop_logged(child, config)
}

async fn wait_for(what: &str, config: &Path, ok: impl AsyncFnMut() -> bool) {
    wait_for_logged(what, config, WAIT, ok).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_writes_every_record_once_and_sends_what_sqs_refuses_to_the_failure_sink() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    // A small MaximumMessageSize, so that a record over it is cheap to make.
    let url = create_queue(
        &c,
        "out",
        &[(QueueAttributeName::MaximumMessageSize, "1024")],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut input = String::new();
    for i in 0..2_345 {
        input.push_str(&format!("event-{i:05} caf\u{e9} \u{1F3AC}\n"));
    }
    input.push_str("control \u{1} character\n");
    input.push_str(&format!("{}\n", "x".repeat(1025)));
    input.push_str(&format!("{}\n", "y".repeat(1024)));
    let input = write(dir.path(), "in.txt", &input);
    let failures = dir.path().join("failures.ndjson");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[sink]\ntype = \"sqs\"\nqueue = \"out\"\nendpoint_url = \"{}\"\n\
             [failure]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 97\n",
            file_source(&input),
            moto.endpoint,
            failures.display()
        ),
    );
    let out = weir_aws()
        .arg("run")
        .arg(&cfg)
        .arg("--progress=never")
        .output()
        .unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");

    let got = drain(&c, &url).await;
    let mut bodies: Vec<String> = got.into_iter().map(|(b, _)| b).collect();
    bodies.sort();
    let mut want: Vec<String> = (0..2_345)
        .map(|i| format!("event-{i:05} caf\u{e9} \u{1F3AC}"))
        .collect();
    want.push("y".repeat(1024));
    want.sort();
    assert_eq!(bodies.len(), want.len(), "each record exactly once");
    assert_eq!(bodies, want);

    let bad: Vec<serde_json::Value> = lines_of(&failures)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bad.len(), 2, "{bad:#?}");
    let text = serde_json::to_string(&bad).unwrap();
    let oversized = bad
        .iter()
        .find(|b| b["schema"].as_str().unwrap().contains("size_violation"))
        .unwrap_or_else(|| panic!("a size_violation bad row: {text}"));
    assert_eq!(
        oversized["data"]["failure"]["maximumAllowedSizeBytes"], 1024,
        "the queue's own limit: {text}"
    );
    assert!(
        text.contains("U+0001"),
        "the control character is named: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_resends_only_failed_entries_and_rides_out_throttling() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let url = create_queue(&c, "out", &[]).await;
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            throttle: 3.into(),
            failed_messages: 300.into(),
            ..Faults::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let n = 1_500;
    let input: String = (0..n).map(|i| format!("event-{i:05}\n")).collect();
    let input = write(dir.path(), "in.txt", &input);
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[sink]\ntype = \"sqs\"\nqueue = \"out\"\nendpoint_url = \"{}\"\n",
            file_source(&input),
            proxy.endpoint
        ),
    );
    let out = weir_aws()
        .arg("run")
        .arg(&cfg)
        .arg("--progress=never")
        .output()
        .unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let f = &proxy.faults;
    assert_eq!(
        f.injected_failed_messages
            .load(std::sync::atomic::Ordering::SeqCst),
        300
    );
    assert_eq!(
        f.injected_throttles
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    // Each record reached the queue once: a failed entry is sent again alone, never the
    // entries of its request that landed.
    let forwarded: usize = f
        .requests(".SendMessageBatch")
        .iter()
        .map(|b| b["Entries"].as_array().unwrap().len())
        .sum();
    assert_eq!(forwarded, n, "entries sent on to SQS");
    let mut got: Vec<String> = drain(&c, &url).await.into_iter().map(|(b, _)| b).collect();
    got.sort();
    let want: Vec<String> = (0..n).map(|i| format!("event-{i:05}")).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_arn_is_assumed_through_sts_and_signs_the_requests() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let url = create_queue(&c, "out", &[]).await;
    let proxy = Proxy::start(&moto.endpoint, Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.txt", "one\ntwo\nthree\n");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[sink]\ntype = \"sqs\"\nqueue = \"out\"\nendpoint_url = \"{}\"\n\
             role_arn = \"arn:aws:iam::123456789012:role/weir-writer\"\n",
            file_source(&input),
            proxy.endpoint
        ),
    );
    let out = weir_aws().arg("run").arg(&cfg).output().unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let signed = proxy.faults.signed_by.lock().unwrap().clone();
    // The environment's keys ("test") ask STS for the role; the role's keys do the rest.
    assert!(
        signed
            .iter()
            .any(|(op, key)| op == "AssumeRole" && key == "test"),
        "{signed:?}"
    );
    let sends: Vec<&String> = signed
        .iter()
        .filter(|(op, _)| op.ends_with(".SendMessageBatch") || op.ends_with(".GetQueueUrl"))
        .map(|(_, key)| key)
        .collect();
    assert!(!sends.is_empty(), "{signed:?}");
    assert!(
        sends.iter().all(|k| !k.is_empty() && *k != "test"),
        "SQS requests signed with the role's keys: {signed:?}"
    );
    let mut got: Vec<String> = drain(&c, &url).await.into_iter().map(|(b, _)| b).collect();
    got.sort();
    assert_eq!(got, ["one", "three", "two"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_to_fifo_keeps_group_ids_and_each_groups_order() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let fifo = [(QueueAttributeName::FifoQueue, "true")];
    let a = create_queue(&c, "in.fifo", &fifo).await;
    let b = create_queue(&c, "out.fifo", &fifo).await;
    let viewers = 7;
    let per_viewer = 60;
    let mut bodies = Vec::new();
    for n in 0..per_viewer {
        for v in 0..viewers {
            bodies.push((
                format!("viewer-{v} event-{n:03}"),
                Some(format!("viewer-{v}")),
            ));
        }
    }
    send_all(&c, &a, &bodies).await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"sqs\"\nqueue = \"in.fifo\"\nendpoint_url = \"{0}\"\nwait_time = \"1s\"\n\
             [sink]\ntype = \"sqs\"\nqueue = \"out.fifo\"\nendpoint_url = \"{0}\"\n\
             [batch]\nmax_records = 25\nflush_interval = \"100ms\"\n",
            moto.endpoint
        ),
    );
    let weir = spawn_weir(&cfg);
    wait_for("the input queue to be read and deleted", &cfg, async || {
        in_queue(&c, &a).await == (0, 0)
    })
    .await;
    stop(weir, &cfg);

    let got = drain(&c, &b).await;
    assert_eq!(got.len(), bodies.len(), "every message once");
    let mut per_group: HashMap<String, Vec<String>> = HashMap::new();
    for (body, group) in got {
        let group = group.expect("a FIFO message has its group id");
        assert!(
            body.starts_with(&format!("{group} ")),
            "{body} in group {group}"
        );
        per_group.entry(group).or_default().push(body);
    }
    assert_eq!(per_group.len(), viewers);
    for (g, events) in per_group {
        let want: Vec<String> = (0..per_viewer)
            .map(|n| format!("{g} event-{n:03}"))
            .collect();
        assert_eq!(events, want, "group {g} in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_held_past_its_visibility_timeout_is_not_read_twice() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let url = create_queue(&c, "q", &[]).await;
    // 40 messages of 100 KB: far more than a pipe holds.
    let n = 40;
    let pad = "x".repeat(100_000);
    let bodies: Vec<(String, Option<String>)> =
        (0..n).map(|i| (format!("m-{i:03} {pad}"), None)).collect();
    send_all(&c, &url, &bodies).await;

    // The sink is a named pipe the test opens but does not read yet: weir's write blocks once the
    // pipe is full, and weir holds the messages.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("out.fifo");
    mkfifo(&fifo);
    let pipe = {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        // Reads block from here on.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
        f
    };
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"sqs\"\nqueue = \"q\"\nendpoint_url = \"{}\"\nwait_time = \"1s\"\n\
             visibility_timeout = \"3s\"\n\
             [sink]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 5\nflush_interval = \"100ms\"\n",
            moto.endpoint,
            fifo.display()
        ),
    );
    let weir = spawn_weir(&cfg);
    wait_for("weir to hold every message", &cfg, async || {
        in_queue(&c, &url).await == (0, n)
    })
    .await;
    // Three visibility timeouts later, another consumer still finds nothing.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        let res = c
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        assert!(
            res.messages.unwrap_or_default().is_empty(),
            "a message weir holds became visible to another consumer\n{}",
            log_of(&cfg)
        );
    }
    // The sink now takes them: every message once, then deleted.
    let mut reader = BufReader::new(pipe);
    let mut got = HashSet::new();
    let mut line = String::new();
    while got.len() < n as usize {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0);
        let id = line[..5].to_string();
        assert_eq!(line.trim_end(), format!("{id} {pad}"));
        assert!(got.insert(id.clone()), "read twice: {id}");
    }
    wait_for("the messages to be deleted", &cfg, async || {
        in_queue(&c, &url).await == (0, 0)
    })
    .await;
    signal(weir.id(), libc::SIGTERM);
    // Drain what is left of the pipe so that weir can finish; nothing more may come.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).unwrap();
    assert_eq!(rest, "", "nothing after the {n} messages");
    let mut weir = weir;
    assert!(weir.wait().unwrap().success(), "{}", log_of(&cfg));
    assert!(log_of(&cfg).contains("sqs source starting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_loses_nothing_and_duplicates_only_what_was_in_flight() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let url = create_queue(&c, "q", &[]).await;
    let n = 3_000usize;
    let bodies: Vec<(String, Option<String>)> =
        (0..n).map(|i| (format!("m-{i:05}"), None)).collect();
    send_all(&c, &url, &bodies).await;

    let dir = tempfile::tempdir().unwrap();
    let max_in_flight = 500;
    let config = |out: &str| {
        format!(
            "[source]\ntype = \"sqs\"\nqueue = \"q\"\nendpoint_url = \"{}\"\nwait_time = \"1s\"\n\
             visibility_timeout = \"10s\"\nmax_in_flight = {max_in_flight}\n\
             [sink]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 50\nflush_interval = \"100ms\"\n",
            moto.endpoint,
            dir.path().join(out).display()
        )
    };
    let first = write(dir.path(), "first.toml", &config("first.txt"));
    let mut weir = spawn_weir(&first);
    let out1 = dir.path().join("first.txt");
    wait_for("a part of the queue to be written", &first, async || {
        lines_of(&out1).len() >= n / 4
    })
    .await;
    weir.kill().unwrap(); // SIGKILL
    weir.wait().unwrap();
    let written_first = lines_of(&out1);
    assert!(written_first.len() < n, "killed before the end");
    let (visible, hidden) = in_queue(&c, &url).await;
    assert!(
        hidden <= max_in_flight as u64,
        "at most max_in_flight messages held when killed: {hidden}"
    );

    let second = write(dir.path(), "second.toml", &config("second.txt"));
    let weir = spawn_weir(&second);
    wait_for("the queue to be emptied", &second, async || {
        in_queue(&c, &url).await == (0, 0)
    })
    .await;
    stop(weir, &second);
    let written_second = lines_of(&dir.path().join("second.txt"));

    let dups = |lines: &[String]| lines.len() - lines.iter().collect::<HashSet<_>>().len();
    eprintln!(
        "duplicates within the first run: {}, within the second: {}",
        dups(&written_first),
        dups(&written_second)
    );
    let mut count: HashMap<&str, usize> = HashMap::new();
    for l in written_first.iter().chain(&written_second) {
        *count.entry(l.as_str()).or_default() += 1;
    }
    for (b, _) in &bodies {
        assert!(count.contains_key(b.as_str()), "{b} lost");
    }
    assert_eq!(count.len(), n, "nothing but the messages sent");
    let duplicates: usize = count.values().map(|c| c - 1).sum();
    assert!(
        duplicates <= hidden as usize,
        "{duplicates} duplicates, more than the {hidden} messages in flight at the kill\n{}",
        log_of(&second)
    );
    eprintln!(
        "killed after {} of {n} written ({visible} visible, {hidden} in flight); {duplicates} duplicates",
        written_first.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_fails_the_start_naming_it() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    for (role, cfg) in [
        (
            "source",
            format!(
                "[source]\ntype = \"sqs\"\nqueue = \"nope\"\nendpoint_url = \"{}\"\n[sink]\ntype = \"null\"\n",
                moto.endpoint
            ),
        ),
        (
            "sink",
            format!(
                "[source]\ntype = \"stdin\"\n[sink]\ntype = \"sqs\"\nqueue = \"nope\"\nendpoint_url = \"{}\"\n",
                moto.endpoint
            ),
        ),
    ] {
        let cfg = write(dir.path(), "p.toml", &cfg);
        let out = weir_aws()
            .arg("run")
            .arg(&cfg)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(role) && stderr.contains("the queue `nope` does not exist"),
            "{stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_deletes_what_was_written_and_hands_back_the_rest_at_once() {
    let moto = Moto::start();
    let c = sqs(&moto.endpoint).await;
    let url = create_queue(&c, "q", &[]).await;
    let n = 3_000usize;
    let bodies: Vec<(String, Option<String>)> =
        (0..n).map(|i| (format!("m-{i:05}"), None)).collect();
    send_all(&c, &url, &bodies).await;

    // A visibility timeout far longer than the test: a message weir held and did not hand back
    // would stay hidden.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"sqs\"\nqueue = \"q\"\nendpoint_url = \"{}\"\nwait_time = \"1s\"\n\
             visibility_timeout = \"10m\"\nmax_in_flight = 400\n\
             [sink]\ntype = \"file\"\npath = \"{}\"\n[batch]\nmax_records = 50\nflush_interval = \"100ms\"\n",
            moto.endpoint,
            out.display()
        ),
    );
    let weir = spawn_weir(&cfg);
    wait_for("a part of the queue to be written", &cfg, async || {
        lines_of(&out).len() >= n / 5
    })
    .await;
    stop(weir, &cfg);
    let written = lines_of(&out);
    assert!(written.len() < n, "stopped before the end");
    let (visible, hidden) = in_queue(&c, &url).await;
    assert_eq!(
        hidden, 0,
        "every message weir held was deleted or handed back"
    );
    assert_eq!(
        visible as usize + written.len(),
        n,
        "what was written is deleted, the rest is in the queue"
    );
    let rest = drain(&c, &url).await;
    let all: HashSet<String> = written
        .into_iter()
        .chain(rest.into_iter().map(|(b, _)| b))
        .collect();
    assert_eq!(all.len(), n, "nothing lost, nothing twice");
}
