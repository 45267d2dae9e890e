//! The `kafka` sink's tombstones against a real Apache Kafka broker (started by
//! `kafka_support`): a removal record (viewer-state's expiry) becomes a null value under the
//! viewer's key, so a compacted profiles topic forgets the viewer.

mod kafka_support;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use weir_core::record::Record;
use weir_core::setup::BuildContext;
use weir_core::sinks::{Progress, SinkError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_become_tombstones_keyed_by_viewer() {
    let kafka = kafka_support::shared();
    let bootstrap = kafka.bootstrap();
    kafka.create_topic("profiles", 1, 1, &[("cleanup.policy", "compact")]);

    let cfg: weir_core::sinks::kafka::KafkaConfig = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": bootstrap,
        "topic": "profiles",
        "removal_field": "removed",
    }))
    .unwrap();
    let mut sink = weir_core::sinks::build(&cfg, &BuildContext::new("sink"))
        .await
        .unwrap();
    let keyed = |key: &str, value: &str| {
        let mut r = Record::new(value.to_string());
        r.key = Some(key.as_bytes().to_vec().into());
        r
    };
    let records = vec![
        keyed(
            "v1",
            r#"{"viewer_id":"v1","status":"watching","version":"1"}"#,
        ),
        keyed(
            "v2",
            r#"{"viewer_id":"v2","status":"paused","version":"1"}"#,
        ),
        keyed("v1", r#"{"viewer_id":"v1","removed":true}"#),
        // Mentions the field but is no removal: written as it is.
        keyed("v2", r#"{"viewer_id":"v2","removed":false}"#),
        // A removal without a key cannot be a tombstone.
        Record::new(r#"{"viewer_id":"v3","removed":true}"#),
    ];
    match sink.write(&records, &mut Progress::default()).await {
        Err(SinkError::Rejected(r)) => {
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].0, 4);
            assert!(r[0].1.reason.contains("without a key"), "{}", r[0].1);
        }
        other => panic!("expected the keyless removal rejected, got {other:?}"),
    }
    sink.close().await.unwrap();

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["profiles"]).unwrap();
    let mut got: Vec<(String, Option<String>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 4 && Instant::now() < deadline {
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            got.push((
                String::from_utf8_lossy(m.key().unwrap()).into_owned(),
                m.payload().map(|p| String::from_utf8_lossy(p).into_owned()),
            ));
        }
    }
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got[0].1.as_deref(),
        Some(records[0].value.as_ref()).map(|b| std::str::from_utf8(b).unwrap())
    );
    assert_eq!(
        got[2],
        ("v1".to_string(), None),
        "the removal is a tombstone"
    );
    assert_eq!(
        got[3],
        (
            "v2".to_string(),
            Some(r#"{"viewer_id":"v2","removed":false}"#.to_string())
        )
    );
}
