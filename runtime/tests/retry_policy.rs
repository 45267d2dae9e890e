//! The `[retry]` policy (Snowbridge's `retry` block) against the real binary: a write that keeps
//! failing is retried under the policy of its class (transient, throttle, setup) until that
//! class's `max_attempts`; then the batch goes to the failure sink (`invalid_after_max`) or weir
//! stops with the error, acknowledging nothing of it.
//!
//! Transient errors come from a file sink on /dev/full (every write: ENOSPC); setup errors from
//! the fault-injecting proxy in front of moto, switched to refusing the credentials once weir
//! runs (its start-up check passed), as AWS answers revoked keys.

mod aws;
mod common;

use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use aws::*;
use common::*;

const RECORDS: usize = 50;

/// A config reading `RECORDS` lines from a file into /dev/full, failures into `failed`.
fn full_disk(dir: &std::path::Path, retry: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let lines: String = (0..RECORDS).map(|i| format!("record-{i:03}\n")).collect();
    let input = write(dir, "in.txt", &lines);
    let failed = dir.join("failed.jsonl");
    let cfg = write(
        dir,
        "c.toml",
        &format!(
            "{}[sink]\ntype = \"file\"\npath = \"/dev/full\"\n\
             [failure]\ntype = \"file\"\npath = {:?}\n{retry}",
            file_source(&input),
            failed.display().to_string()
        ),
    );
    (cfg, failed)
}

#[test]
fn transient_errors_past_max_attempts_go_to_the_failure_sink_with_invalid_after_max() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, failed) = full_disk(
        dir.path(),
        "[retry.transient]\ndelay = \"5ms\"\nmax_attempts = 3\ninvalid_after_max = true\n",
    );
    let out = run(&cfg);
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let rows = std::fs::read_to_string(&failed).unwrap();
    let rows: Vec<&str> = rows.lines().collect();
    assert_eq!(
        rows.len(),
        RECORDS,
        "every record once, as a bad row:\n{stderr}"
    );
    for (i, row) in rows.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(row).unwrap();
        let text = v.to_string();
        assert!(text.contains(&format!("record-{i:03}")), "{row}");
        assert!(
            text.contains("transient error, gave up after 3 attempts"),
            "{row}"
        );
        assert!(text.contains("No space left on device"), "{row}");
    }
    // Two retries (and no more) before each batch was given up.
    let retried = stderr.matches("write failed, retrying").count();
    let given_up = stderr
        .matches("sending the batch to the failure sink")
        .count();
    assert!(given_up >= 1, "{stderr}");
    assert_eq!(retried, 2 * given_up, "{stderr}");
}

/// Failed writes reach statsd under Snowbridge's names: `target_failed` counts the records of
/// every failed attempt, `target_request_count` every write call.
#[test]
fn failed_writes_reach_statsd_as_target_failed() {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = full_disk(
        dir.path(),
        &format!(
            "[retry.transient]\ndelay = \"5ms\"\nmax_attempts = 3\ninvalid_after_max = true\n\
             [metrics.statsd]\naddress = \"{}\"\nflush_interval = \"50ms\"\n",
            statsd.local_addr().unwrap()
        ),
    );
    let out = run(&cfg);
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let batches = stderr
        .matches("sending the batch to the failure sink")
        .count() as u64;
    assert!(batches >= 1, "{stderr}");
    let lines = statsd_lines(&statsd);
    let total = |name: &str| statsd_total(&lines, &format!("weir.{name}"), "|c");
    assert_eq!(total("target_failed"), 3 * RECORDS as u64, "{lines:?}");
    assert_eq!(total("target_request_count"), 3 * batches, "{lines:?}");
    assert_eq!(total("target_success"), 0, "{lines:?}");
    assert_eq!(total("failure_target_success"), RECORDS as u64, "{lines:?}");
    assert_eq!(total("failure_target_failed"), 0, "{lines:?}");
}

#[test]
fn transient_errors_past_max_attempts_stop_weir_without_invalid_after_max() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, failed) = full_disk(
        dir.path(),
        "[retry.transient]\ndelay = 5\nmax_attempts = 2\n",
    );
    let out = run(&cfg);
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sink: transient error, gave up after 2 attempts")
            && stderr.contains("No space left on device"),
        "{stderr}"
    );
    let rows = std::fs::read_to_string(&failed).unwrap_or_default();
    assert_eq!(rows, "", "nothing was sent to the failure sink");
}

/// weir's default stays what it was: a transient error is retried until it clears, so a sink
/// that never recovers holds weir (it does not exit) and fails nothing.
#[test]
fn by_default_transient_errors_are_retried_until_they_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, failed) = full_disk(dir.path(), "");
    let mut w = Logged::spawn(weir().args(["run", "--progress=never"]).arg(&cfg));
    w.wait_for("the fifth retry", Duration::from_secs(60), |l| {
        l.contains("write failed, retrying")
            .then_some(())
            .filter(|_| l.contains("attempt=5"))
    });
    assert!(w.child.try_wait().unwrap().is_none(), "still running");
    let log = w.log();
    assert!(!log.contains("gave up after"), "{log}");
    // (A SIGTERM would wait for the batch to be written: drain never drops a record.)
    w.child.kill().unwrap();
    assert_eq!(std::fs::read_to_string(&failed).unwrap_or_default(), "");
}

#[test]
fn a_sink_whose_credentials_are_refused_mid_run_stops_weir_after_the_setup_attempts() {
    let moto = Moto::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        create_stream(&kinesis(&moto.endpoint).await, "events", 1).await;
    });
    let proxy = Proxy::start(&moto.endpoint, Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[source]\ntype = \"stdin\"\n[sink]\ntype = \"kinesis\"\nstream = \"events\"\n\
             endpoint_url = \"{}\"\n[retry.setup]\ndelay = \"20ms\"\nmax_attempts = 2\n",
            proxy.endpoint
        ),
    );
    let mut cmd = weir_aws();
    cmd.args(["run", "--progress=never"])
        .arg(&cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut weir = Logged::spawn(&mut cmd);
    weir.wait_for("the pipeline to run", Duration::from_secs(60), |l| {
        l.contains("pipeline running").then_some(())
    });
    // The keys are revoked while weir runs.
    proxy.faults.refuse_credentials.store(true, SeqCst);
    let mut stdin = weir.child.stdin.take().unwrap();
    writeln!(stdin, "{{\"id\":\"a\"}}").unwrap();
    stdin.flush().unwrap();
    let (status, log) = weir.wait_exit(Duration::from_secs(60));
    drop(stdin);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("sink: setup error, gave up after 2 attempts")
            && log.contains("UnrecognizedClientException"),
        "{log}"
    );
    assert_eq!(
        log.matches("write failed, retrying").count(),
        1,
        "one retry between the two attempts:\n{log}"
    );
}
