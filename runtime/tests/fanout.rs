//! The `fanout` sink with real children, through the real weir binary: DynamoDB on an emulator
//! (moto, behind the fault-injecting proxy) and a file.

mod aws;
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;

use aws::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_every_child_and_a_throttled_child_is_retried_alone() {
    let moto = Moto::start();
    let client = dynamodb_table(&moto.endpoint, "profiles", "viewer_id").await;
    // Throttling with one attempt per request: the DynamoDB child fails the batch (retriable)
    // three times, while the file child has long accepted it.
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            throttle: 3.into(),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let n = 200;
    let mut lines: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"viewer_id":"v{i:04}","events":{i}}}"#))
        .collect();
    // DynamoDB can never store this one (no key); the file takes it.
    lines.insert(57, r#"{"status":"no key"}"#.to_string());
    let input = write(dir.path(), "in.ndjson", &(lines.join("\n") + "\n"));
    let copy = dir.path().join("copy.ndjson");
    let bad = dir.path().join("bad.ndjson");
    let config = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
{}
[sink]
type = "fanout"

[[sink.sinks]]
type = "dynamodb"
table = "profiles"
partition_key = "viewer_id"
endpoint_url = "{}"
max_attempts = 1

[[sink.sinks]]
type = "file"
path = "{}"

[failure]
type = "file"
path = "{}"

[batch]
max_records = 50
"#,
            file_source(&input),
            proxy.endpoint,
            copy.display(),
            bad.display()
        ),
    );
    let mut c = weir();
    c.arg("run").arg(&config).arg("--progress=never");
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    let out = c.output().expect("weir runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir failed:\n{stderr}");
    assert_eq!(proxy.faults.injected_throttles.load(SeqCst), 3);
    assert!(
        stderr.contains("sinks[0] (dynamodb)"),
        "the retries name the child:\n{stderr}"
    );

    // The file child wrote every record exactly once, in order, despite the retries.
    let written = std::fs::read_to_string(&copy).unwrap();
    assert_eq!(written, lines.join("\n") + "\n");

    // DynamoDB holds every viewer once.
    let items = scan_all(&client, "profiles").await;
    let ids: HashMap<String, _> = items
        .iter()
        .map(|i| (i["viewer_id"].as_s().unwrap().clone(), ()))
        .collect();
    assert_eq!(items.len(), n);
    assert_eq!(ids.len(), n);

    // The record DynamoDB rejected is a bad row naming the child that rejected it.
    let bad_rows = std::fs::read_to_string(&bad).unwrap();
    assert_eq!(bad_rows.lines().count(), 1, "{bad_rows}");
    assert!(
        bad_rows.contains("fanout sinks[0] (dynamodb) rejected it: missing key field `viewer_id`"),
        "{bad_rows}"
    );
}
