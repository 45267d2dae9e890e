//! Snowbridge's `eventhub` target, which weir runs as its Kafka sink on Event Hubs' Kafka
//! endpoint: a real Apache Kafka broker set up as Event Hubs authenticates Kafka clients (SASL
//! PLAIN over TLS, the user `$ConnectionString`, the namespace's connection string as the
//! password). The Snowbridge HCL config is converted by `weir config convert`, given the test
//! CA (Event Hubs' certificates chain to a public CA; the test broker's to the tests' own), and
//! run; the records are read back from the topic.

mod common;
mod kafka_support;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use kafka_support::{Kafka, Options, PLAIN_PASSWORD, PLAIN_USER};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

const CONNECTION_STRING: &str =
    "Endpoint=sb://weir-test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=c2VjcmV0LWtleQ==";

#[test]
fn the_eventhub_target_writes_through_the_kafka_endpoint_with_the_connection_string() {
    let kafka = Kafka::start(
        1,
        Options {
            settings: vec![(
                "listener.name.sasl_ssl.plain.sasl.jaas.config".into(),
                format!(
                    "org.apache.kafka.common.security.plain.PlainLoginModule required \
                     user_{PLAIN_USER}=\"{PLAIN_PASSWORD}\" user_$ConnectionString=\"{CONNECTION_STRING}\";"
                ),
            )],
        },
    );
    kafka.create_topic("media-events", 2, 1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let hcl = write(
        dir.path(),
        "eventhub.hcl",
        &format!(
            "target {{\n  use \"eventhub\" {{\n    namespace = \"{}\"\n    name = \"media-events\"\n    \
             context_timeout_in_seconds = 20\n  }}\n}}\nlicense {{\n  accept = true\n}}\n",
            kafka.bootstrap_sasl_ssl()
        ),
    );
    let out = weir()
        .args(["config", "convert"])
        .arg(&hcl)
        .env("EVENTHUB_CONNECTION_STRING", CONNECTION_STRING)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(
        toml.contains("username = \"$ConnectionString\"")
            && toml.contains("env = \"EVENTHUB_CONNECTION_STRING\"")
            && !toml.contains("SharedAccessKey"),
        "{toml}"
    );
    let toml = toml.replace(
        "verify = true",
        &format!(
            "verify = true\nca_file = {:?}",
            kafka.certs.ca.display().to_string()
        ),
    );
    let cfg = write(dir.path(), "eventhub.toml", &toml);

    // A wrong connection string: the broker refuses it, and weir's error never shows it.
    let wrong = "Endpoint=sb://weir-test.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=d3Jvbmc=";
    let out = weir()
        .arg("run")
        .arg(&cfg)
        .env("EVENTHUB_CONNECTION_STRING", wrong)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{log}");
    assert!(
        !log.contains("d3Jvbmc"),
        "the secret is never logged: {log}"
    );

    let mut weir = weir()
        .arg("run")
        .arg(&cfg)
        .arg("--progress=never")
        .env("EVENTHUB_CONNECTION_STRING", CONNECTION_STRING)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = weir.stdin.take().unwrap();
        for i in 0..100 {
            writeln!(stdin, "event-{i}").unwrap();
        }
    }
    let out = weir.wait_with_output().unwrap();
    let log = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("SharedAccessKey="), "{log}");

    let c: BaseConsumer = kafka
        .client()
        .set("group.id", "eventhub-check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["media-events"]).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 100 && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    got.sort_by_key(|s| s[6..].parse::<u32>().unwrap());
    assert_eq!(
        got,
        (0..100).map(|i| format!("event-{i}")).collect::<Vec<_>>()
    );
}
