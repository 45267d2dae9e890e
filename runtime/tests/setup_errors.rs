//! A source or sink that cannot work fails `weir run` at start-up, before anything is read, with
//! exit code 1 and an error naming it by its key path in the config (`sink`, `sink.sinks[1]`,
//! `failure`, `source`) and the cause: an endpoint or broker that cannot be reached, credentials
//! the service refuses. Not an endless retry of the first write. `weir validate` stays offline.
//!
//! Against the real binary; refused AWS credentials come from the fault-injecting proxy in front
//! of moto (`aws/mod.rs`), answering as AWS does (400 UnrecognizedClientException).
//!
//! Not here yet: Kafka with refused credentials needs a broker that authenticates (SASL), which
//! the real-broker harness provides; the check it would exercise is `kafka::check_cluster`, whose
//! error then says "the cluster refused this client" with librdkafka's authentication error.

mod aws;
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aws::*;
use common::*;

/// Runs `weir run config` with one record waiting on its stdin (kept open, so a weir that
/// started would run on, retrying its writes) until it exits; its status and stderr. A weir
/// still running after a minute is killed and the test fails.
fn run_until_exit(config: &Path) -> (ExitStatus, String) {
    let mut c = weir();
    c.args(["run", "--progress=never"])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("weir starts");
    let mut stdin = child.stdin.take().unwrap();
    let _ = writeln!(stdin, r#"{{"id":"a","n":1}}"#);
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "weir did not stop on a component that cannot work:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(stdin);
    (status, strip_ansi(&reader.join().unwrap()))
}

/// Asserts exit code 1 and that stderr has each of `expected`.
fn assert_setup_failure(status: ExitStatus, stderr: &str, expected: &[&str]) {
    assert_eq!(status.code(), Some(1), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
    assert!(
        !stderr.contains("pipeline running"),
        "nothing runs before every component is set up:\n{stderr}"
    );
}

/// A local port nothing listens on (port 1 is reserved and unused here): connections are
/// refused at once.
const UNREACHABLE: &str = "127.0.0.1:1";

const STDIN: &str = "[source]\ntype = \"stdin\"\n";

fn dynamodb_sink(endpoint: &str) -> String {
    format!(
        "type = \"dynamodb\"\ntable = \"profiles\"\npartition_key = \"id\"\n\
         endpoint_url = \"{endpoint}\"\n"
    )
}

fn kinesis_sink(endpoint: &str) -> String {
    format!("type = \"kinesis\"\nstream = \"events\"\nendpoint_url = \"{endpoint}\"\n")
}

#[test]
fn a_dynamodb_sink_that_cannot_be_reached_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{UNREACHABLE}");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{STDIN}[sink]\n{}", dynamodb_sink(&endpoint)),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            "table `profiles`",
            &format!("cannot reach DynamoDB at {endpoint}"),
        ],
    );
}

#[test]
fn a_dynamodb_sink_whose_credentials_are_refused_fails_the_start() {
    let moto = Moto::start();
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            refuse_credentials: true.into(),
            ..Faults::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{STDIN}[sink]\n{}", dynamodb_sink(&proxy.endpoint)),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            "DynamoDB at http://127.0.0.1:",
            "refused the credentials",
            "UnrecognizedClientException",
        ],
    );
}

#[test]
fn a_missing_table_fails_the_start_unless_the_sink_may_create_it() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{STDIN}[sink]\n{}", dynamodb_sink(&moto.endpoint)),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            "the table `profiles` does not exist",
        ],
    );
}

#[test]
fn a_kinesis_sink_that_cannot_be_reached_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{UNREACHABLE}");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{STDIN}[sink]\n{}", kinesis_sink(&endpoint)),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            "stream `events`",
            &format!("cannot reach Kinesis at {endpoint}"),
        ],
    );
}

#[test]
fn a_kinesis_sink_whose_credentials_are_refused_fails_the_start() {
    let moto = Moto::start();
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            refuse_credentials: true.into(),
            ..Faults::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!("{STDIN}[sink]\n{}", kinesis_sink(&proxy.endpoint)),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            "Kinesis at http://127.0.0.1:",
            "refused the credentials",
            "UnrecognizedClientException",
        ],
    );
}

#[test]
fn a_kafka_sink_whose_brokers_cannot_be_reached_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "{STDIN}[sink]\ntype = \"kafka\"\nbootstrap_servers = \"{UNREACHABLE}\"\n\
             topic = \"events\"\n"
        ),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink`",
            &format!("kafka brokers {UNREACHABLE}"),
            "cannot reach the cluster",
        ],
    );
}

#[test]
fn a_dead_letter_topic_that_cannot_be_reached_fails_the_start_as_the_failure_sink() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "{STDIN}[sink]\ntype = \"null\"\n[failure]\ntype = \"kafka\"\n\
             bootstrap_servers = \"{UNREACHABLE}\"\ntopic = \"dead-letters\"\n"
        ),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &["cannot set up `failure`", "kafka brokers"],
    );
}

#[test]
fn a_fanout_child_that_cannot_be_reached_is_named_by_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{UNREACHABLE}");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "{STDIN}[sink]\ntype = \"fanout\"\n[[sink.sinks]]\ntype = \"null\"\n\
             [[sink.sinks]]\n{}",
            dynamodb_sink(&endpoint)
        ),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `sink.sinks[1]`",
            &format!("cannot reach DynamoDB at {endpoint}"),
        ],
    );
}

#[test]
fn a_kinesis_source_that_cannot_be_reached_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{UNREACHABLE}");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[source]\ntype = \"kinesis\"\nstream = \"events\"\nendpoint_url = \"{endpoint}\"\n\
             [sink]\ntype = \"null\"\n"
        ),
    );
    let (status, stderr) = run_until_exit(&cfg);
    assert_setup_failure(
        status,
        &stderr,
        &[
            "cannot set up `source`",
            &format!("cannot reach Kinesis at {endpoint}"),
        ],
    );
}

/// `weir validate` checks configs offline: the same unreachable components pass it.
#[test]
fn validate_connects_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{UNREACHABLE}");
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "[source]\ntype = \"kinesis\"\nstream = \"events\"\nendpoint_url = \"{endpoint}\"\n\
             [sink]\ntype = \"fanout\"\n[[sink.sinks]]\n{}[[sink.sinks]]\ntype = \"kafka\"\n\
             bootstrap_servers = \"{UNREACHABLE}\"\ntopic = \"events\"\n",
            dynamodb_sink(&endpoint)
        ),
    );
    let out = weir().arg("validate").arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
}
