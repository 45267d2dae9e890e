//! The `dynamodb` sink against a real emulator (moto), through the real weir binary.

mod aws;
mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;

use aws::*;
use aws_sdk_dynamodb::types::AttributeValue;
use common::*;
use weir_core::record::Record;
use weir_core::sinks::dynamodb::{is_tombstone, DynamoDbConfig, DynamoDbSink};
use weir_core::sinks::{Progress, Sink};

fn run_weir(config: &std::path::Path) -> std::process::Output {
    weir_aws()
        .arg("run")
        .arg(config)
        .arg("--progress=never")
        .output()
        .expect("weir runs")
}

/// A deterministic shuffle (no rand dependency).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_out_of_order_and_twice_end_as_the_newest_version_once_per_viewer() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    // 40 viewers × 15 versions each, shuffled, every record twice; plus records that can never
    // be items (no key, over 400 KB) and one viewer whose newest update removes it.
    let mut lines = Vec::new();
    for v in 0..40 {
        for i in 0..15 {
            lines.push(format!(
                r#"{{"viewer_id":"viewer-{v}","version":"2026-11-26T09:00:{i:02}.000Z#e{i}","status":"s{i}","video_ts":{i}.5}}"#
            ));
        }
    }
    lines.push(
        r#"{"viewer_id":"viewer-gone","version":"2026-11-26T09:00:01.000Z#a","status":"watching"}"#
            .into(),
    );
    lines.push(
        r#"{"viewer_id":"viewer-gone","version":"2026-11-26T09:00:02.000Z#b","removed":true}"#
            .into(),
    );
    let doubled: Vec<String> = lines.iter().chain(lines.iter()).cloned().collect();
    let mut all = doubled;
    shuffle(&mut all, 7);
    all.push(r#"{"status":"no key"}"#.into());
    all.push(format!(
        r#"{{"viewer_id":"viewer-huge","version":"1","blob":"{}"}}"#,
        "x".repeat(420_000)
    ));
    let input = write(dir.path(), "profiles.ndjson", &(all.join("\n") + "\n"));
    let bad = dir.path().join("bad.ndjson");
    let config = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
{}
[sink]
type = "dynamodb"
table = "viewer_profiles"
partition_key = "viewer_id"
version_attribute = "version"
removal_field = "removed"
ttl_attribute = "expires_at"
ttl = "1d"
create_table = true
endpoint_url = "{}"

[failure]
type = "file"
path = "{}"

[batch]
max_records = 50
"#,
            file_source(&input),
            moto.endpoint,
            bad.display()
        ),
    );
    let out = run_weir(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weir failed:\n{stderr}");

    let client = dynamodb(&moto.endpoint).await;
    let (items, tombstones): (Vec<_>, Vec<_>) = scan_all(&client, "viewer_profiles")
        .await
        .into_iter()
        .partition(|i| !is_tombstone(i, "deleted"));
    let by_viewer: HashMap<String, _> = items
        .iter()
        .map(|i| (i["viewer_id"].as_s().unwrap().clone(), i.clone()))
        .collect();
    assert_eq!(items.len(), 40, "one item per viewer, the removed one gone");
    assert_eq!(by_viewer.len(), 40);
    // The removed viewer is a tombstone at the removal's version, without its attributes.
    assert_eq!(tombstones.len(), 1, "{tombstones:?}");
    let t = &tombstones[0];
    assert_eq!(t["viewer_id"].as_s().unwrap(), "viewer-gone");
    assert_eq!(t["version"].as_s().unwrap(), "2026-11-26T09:00:02.000Z#b");
    assert!(!t.contains_key("status"), "{t:?}");
    assert!(t.contains_key("expires_at"), "tombstones expire: {t:?}");
    for v in 0..40 {
        let item = &by_viewer[&format!("viewer-{v}")];
        assert_eq!(
            item["version"].as_s().unwrap(),
            "2026-11-26T09:00:14.000Z#e14",
            "viewer-{v} holds the newest version"
        );
        assert_eq!(item["status"], AttributeValue::S("s14".into()));
        assert_eq!(item["video_ts"], AttributeValue::N("14.5".into()));
        let expires: u64 = item["expires_at"].as_n().unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(expires > now + 86_000 && expires <= now + 86_400 + 5);
    }
    assert!(!by_viewer.contains_key("viewer-gone"));
    let bad_rows = std::fs::read_to_string(&bad).unwrap();
    assert_eq!(bad_rows.lines().count(), 2, "{bad_rows}");
    assert!(bad_rows.contains("missing key field `viewer_id`"));
    assert!(bad_rows.contains("over DynamoDB's limit"));
    // The oversized item is a size_violation with DynamoDB's limit; the keyless one a
    // generic_error.
    let rows: Vec<serde_json::Value> = bad_rows
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let oversized = rows
        .iter()
        .find(|r| r.to_string().contains("over DynamoDB's limit"))
        .unwrap();
    assert!(
        oversized["schema"]
            .as_str()
            .unwrap()
            .contains("/size_violation/"),
        "{oversized}"
    );
    assert_eq!(
        oversized["data"]["failure"]["maximumAllowedSizeBytes"],
        400 * 1024
    );
    let keyless = rows
        .iter()
        .find(|r| r.to_string().contains("missing key field"))
        .unwrap();
    assert!(keyless["schema"]
        .as_str()
        .unwrap()
        .contains("/generic_error/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_items_and_throttling_are_retried_until_every_item_lands_once() {
    let moto = Moto::start();
    let client = dynamodb_table(&moto.endpoint, "events", "event_id").await;
    let proxy = Proxy::start(
        &moto.endpoint,
        Faults {
            throttle: 3.into(),
            unprocessed: 400.into(),
            ..Default::default()
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let lines: String = (0..n)
        .map(|i| format!(r#"{{"event_id":"e{i:05}","n":{i}}}"#) + "\n")
        .collect();
    let input = write(dir.path(), "events.ndjson", &lines);
    let config = write(
        dir.path(),
        "p.toml",
        &format!(
            r#"
{}
[sink]
type = "dynamodb"
table = "events"
partition_key = "event_id"
endpoint_url = "{}"
concurrency = 4
"#,
            file_source(&input),
            proxy.endpoint,
        ),
    );
    let out = run_weir(&config);
    assert!(
        out.status.success(),
        "weir failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = &proxy.faults;
    assert_eq!(f.injected_throttles.load(SeqCst), 3);
    assert_eq!(f.injected_unprocessed.load(SeqCst), 400);
    // Every item reached the emulator in exactly one forwarded request.
    let mut sent: HashMap<String, usize> = HashMap::new();
    for req in f.requests(".BatchWriteItem") {
        let items = req["RequestItems"]["events"].as_array().unwrap();
        assert!(items.len() <= 25, "at most 25 items per BatchWriteItem");
        for it in items {
            let id = it["PutRequest"]["Item"]["event_id"]["S"]
                .as_str()
                .unwrap()
                .to_string();
            *sent.entry(id).or_default() += 1;
        }
    }
    assert_eq!(sent.len(), n, "every item was written");
    let twice: Vec<_> = sent.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    assert_eq!(scan_all(&client, "events").await.len(), n);
}

/// Writes `lines` as one batch.
async fn write_batch(sink: &mut DynamoDbSink, lines: &[&str]) {
    let records: Vec<Record> = lines.iter().map(|l| Record::new(l.to_string())).collect();
    sink.write(&records, &mut Progress::default())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_item_is_not_recreated_by_an_older_update_but_is_by_a_newer_one() {
    let moto = Moto::start();
    let client = dynamodb(&moto.endpoint).await;
    let cfg: DynamoDbConfig = serde_json::from_str(
        r#"{"table":"profiles","partition_key":"viewer_id","version_attribute":"version",
            "removal_field":"removed","ttl_attribute":"expires_at","ttl":"1h"}"#,
    )
    .unwrap();
    weir_core::sinks::dynamodb::create_table(&client, &cfg)
        .await
        .unwrap();
    let mut sink = DynamoDbSink::with_client(cfg, client.clone());
    let get = |id: &str| {
        let client = client.clone();
        let id = id.to_string();
        async move {
            client
                .get_item()
                .table_name("profiles")
                .key("viewer_id", AttributeValue::S(id))
                .consistent_read(true)
                .send()
                .await
                .unwrap()
                .item
                .unwrap()
        }
    };
    write_batch(
        &mut sink,
        &[
            r#"{"viewer_id":"a","version":"0003","status":"watching"}"#,
            r#"{"viewer_id":"b","version":"0003","status":"paused"}"#,
            r#"{"viewer_id":"c","version":"0003","status":"ended"}"#,
        ],
    )
    .await;
    // `a` and `b` removed at a version; `c` by viewer-state's versionless expiry record, which
    // tombstones the stored version.
    write_batch(
        &mut sink,
        &[
            r#"{"viewer_id":"a","version":"0004","removed":true}"#,
            r#"{"viewer_id":"b","version":"0004","removed":true}"#,
            r#"{"viewer_id":"c","removed":true}"#,
        ],
    )
    .await;
    let c = get("c").await;
    assert!(is_tombstone(&c, "deleted"), "{c:?}");
    assert_eq!(c["version"].as_s().unwrap(), "0003");
    // Late, older updates (and a replay of `c`'s last one) arrive after the removals.
    write_batch(
        &mut sink,
        &[
            r#"{"viewer_id":"a","version":"0002","status":"late"}"#,
            r#"{"viewer_id":"b","version":"0003","status":"replayed"}"#,
            r#"{"viewer_id":"c","version":"0003","status":"ended"}"#,
        ],
    )
    .await;
    for id in ["a", "b", "c"] {
        let item = get(id).await;
        assert!(
            is_tombstone(&item, "deleted"),
            "{id} stays removed: {item:?}"
        );
        assert!(!item.contains_key("status"), "{item:?}");
    }
    // A newer update re-creates the viewer.
    write_batch(
        &mut sink,
        &[r#"{"viewer_id":"a","version":"0005","status":"back"}"#],
    )
    .await;
    let a = get("a").await;
    assert!(!is_tombstone(&a, "deleted"), "{a:?}");
    assert_eq!(a["status"].as_s().unwrap(), "back");
    // Removing an item that was never written leaves a tombstone only with a version.
    write_batch(
        &mut sink,
        &[
            r#"{"viewer_id":"d","removed":true}"#,
            r#"{"viewer_id":"e","version":"0001","removed":true}"#,
        ],
    )
    .await;
    write_batch(
        &mut sink,
        &[r#"{"viewer_id":"e","version":"0001","status":"replayed"}"#],
    )
    .await;
    let all = scan_all(&client, "profiles").await;
    assert!(!all.iter().any(|i| i["viewer_id"].as_s().unwrap() == "d"));
    assert!(is_tombstone(&get("e").await, "deleted"));
}

/// Bench (run with `--ignored --nocapture`): items/s into the emulator with BatchWriteItem vs one
/// conditional PutItem per item, and requests per item, counted by the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_batching_vs_one_write_per_item() {
    let n: usize = std::env::var("WEIR_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let lines: String = (0..n)
        .map(|i| {
            format!(
                r#"{{"viewer_id":"v{i:06}","version":"2026-11-26T09:00:00.000Z#{i}","status":"watching","video_ts":{i}}}"#
            ) + "\n"
        })
        .collect();
    let input = write(dir.path(), "in.ndjson", &lines);
    for (name, extra) in [
        ("BatchWriteItem (25/request)", ""),
        ("conditional PutItem", "version_attribute = \"version\""),
    ] {
        let table = if extra.is_empty() {
            "batched"
        } else {
            "conditional"
        };
        let client = dynamodb(&moto.endpoint).await;
        weir_core::sinks::dynamodb::create_table(
            &client,
            &serde_json::from_str(&format!(
                r#"{{"table":"{table}","partition_key":"viewer_id"}}"#
            ))
            .unwrap(),
        )
        .await
        .unwrap();
        let proxy = Proxy::start(&moto.endpoint, Faults::default());
        let config = write(
            dir.path(),
            &format!("{table}.toml"),
            &format!(
                r#"
{}
[sink]
type = "dynamodb"
table = "{table}"
partition_key = "viewer_id"
endpoint_url = "{}"
{extra}
"#,
                file_source(&input),
                proxy.endpoint
            ),
        );
        let t = std::time::Instant::now();
        let out = run_weir(&config);
        let secs = t.elapsed().as_secs_f64();
        assert!(out.status.success());
        let requests = proxy.faults.forwarded.lock().unwrap().len();
        assert_eq!(scan_all(&client, table).await.len(), n);
        println!(
            "{name:30} {n} items in {secs:.2}s = {:.0} items/s, {requests} requests = {:.3} requests/item",
            n as f64 / secs,
            requests as f64 / n as f64
        );
    }
}

/// The dashboard on a DynamoDB table: its snapshot is the table (tombstones left out), and the
/// writes the sink applies are pushed to a connected browser; a stale write is not.
#[test]
fn the_dashboard_reads_its_snapshot_from_the_table_and_gets_applied_writes_pushed() {
    use std::io::Write;
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "d.toml",
        &format!(
            r#"
[source]
type = "stdin"

[sink]
type = "dynamodb"
table = "viewer_profiles"
partition_key = "viewer_id"
version_attribute = "version"
removal_field = "removed"
create_table = true
endpoint_url = "{}"

[sink.dashboard]
address = "127.0.0.1:0"

[batch]
flush_interval = "10ms"
"#,
            moto.endpoint
        ),
    );
    let mut weir = Logged::spawn(
        weir_aws()
            .args(["run", "--progress=never"])
            .arg(&config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null()),
    );
    let addr = weir.bound("live dashboard").to_string();
    let mut stdin = weir.child.stdin.take().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let viewers = |want: usize| -> Vec<serde_json::Value> {
        loop {
            if let Some(body) = http_get(&addr, "/api/viewers") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let mut rows = v["viewers"].as_array().unwrap().clone();
                if rows.len() == want {
                    rows.sort_by_key(|r| r["viewer_id"].as_str().unwrap().to_string());
                    return rows;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dashboard never showed {want} viewers"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    assert!(viewers(0).is_empty(), "an empty table, an empty snapshot");

    let mut sse = Sse::connect(&addr);
    let mut next_event = || {
        let (name, data) = sse.next();
        (
            name,
            serde_json::from_str::<serde_json::Value>(&data).unwrap(),
        )
    };
    assert_eq!(next_event().0, "snapshot");

    for line in [
        r#"{"viewer_id":"a","version":"2","status":"paused","video_ts":12.5}"#,
        r#"{"viewer_id":"b","version":"1","status":"playing"}"#,
        r#"{"viewer_id":"c","version":"1","status":"playing"}"#,
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    let mut pushed = Vec::new();
    while pushed.len() < 3 {
        let (name, doc) = next_event();
        assert_eq!(name, "profile", "{doc}");
        pushed.push(doc["viewer_id"].as_str().unwrap().to_string());
    }
    pushed.sort();
    assert_eq!(pushed, ["a", "b", "c"]);
    // Stale (older than stored), then a removal: the next event pushed is the removal (a push
    // of the stale write would come before it, as the sink applies writes in order).
    writeln!(
        stdin,
        r#"{{"viewer_id":"a","version":"1","status":"playing"}}"#
    )
    .unwrap();
    writeln!(stdin, r#"{{"viewer_id":"c","removed":true}}"#).unwrap();
    let (name, doc) = next_event();
    assert_eq!(
        (name.as_str(), doc["key"].as_str()),
        ("removed", Some("c")),
        "{doc}"
    );

    let rows = viewers(2);
    assert_eq!(rows[0]["viewer_id"], "a");
    assert_eq!(rows[0]["status"], "paused", "the stale write did not land");
    assert_eq!(rows[0]["video_ts"], 12.5, "numbers come back as numbers");
    assert_eq!(rows[1]["viewer_id"], "b");

    drop(stdin);
    let (status, log) = weir.wait_exit(std::time::Duration::from_secs(60));
    assert!(status.success(), "{log}");
}
