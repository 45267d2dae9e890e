//! Support for the Pub/Sub tests: Google's Pub/Sub fake (pstest, from the Go client library,
//! built by `runtime/tests/setup.sh` from `emulator/`) as a real gRPC server process, and a
//! client of it for the tests' own publishing and pulling.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gcloud_googleapis::pubsub::v1::PubsubMessage;
use gcloud_pubsub::client::{Client, ClientConfig};
use gcloud_pubsub::subscription::SubscriptionConfig;

use super::common::installed;

/// The project the tests use (the emulator takes any).
pub const PROJECT: &str = "weir-test";

/// A pstest server on 127.0.0.1, stopped (by PID) when dropped.
pub struct Emulator {
    child: Child,
    /// `127.0.0.1:PORT`, as `PUBSUB_EMULATOR_HOST` takes it.
    pub host: String,
}

impl Emulator {
    /// Starts the emulator on a port the OS picks (`-port 0`) and learns it from its start-up
    /// line (`pstest listening on 127.0.0.1:PORT`).
    pub fn start() -> Emulator {
        let bin = installed("WEIR_PUBSUB_EMULATOR", "pubsub-emulator/pstest-server");
        let mut child = Command::new(bin)
            .args(["-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the Pub/Sub emulator starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let host = first
            .trim()
            .strip_prefix("pstest listening on ")
            .unwrap_or_else(|| panic!("unexpected emulator start-up line: {first:?}"))
            .to_string();
        Emulator { child, host }
    }

    /// A client of the emulator for `PROJECT`.
    pub async fn client(&self) -> Client {
        let cfg = ClientConfig {
            project_id: Some(PROJECT.into()),
            environment: gcloud_gax::conn::Environment::Emulator(self.host.clone()),
            ..ClientConfig::default()
        };
        Client::new(cfg).await.expect("a client of the emulator")
    }

    /// Creates topic `topic` and, if given, subscription `sub` on it (ack deadline `deadline`
    /// seconds, ordering on).
    pub async fn topic(&self, topic: &str, sub: Option<(&str, i32)>) {
        let c = self.client().await;
        c.create_topic(topic, None, None)
            .await
            .expect("create topic");
        if let Some((sub, deadline)) = sub {
            let cfg = SubscriptionConfig {
                ack_deadline_seconds: deadline,
                enable_message_ordering: true,
                ..SubscriptionConfig::default()
            };
            c.create_subscription(sub, topic, cfg, None)
                .await
                .expect("create subscription");
        }
    }

    /// Publishes `messages` to `topic`, 1,000 to a request.
    pub async fn publish(&self, topic: &str, messages: Vec<PubsubMessage>) {
        let c = self.client().await;
        let p = c.topic(topic).new_publisher(None);
        for chunk in messages.chunks(1000) {
            p.publish_immediately(chunk.to_vec(), None)
                .await
                .expect("publish");
        }
    }

    /// Pulls and acknowledges everything `sub` has now (until a pull comes back empty).
    pub async fn drain(&self, sub: &str) -> Vec<PubsubMessage> {
        let c = self.client().await;
        let s = c.subscription(sub);
        let mut all = Vec::new();
        loop {
            let got = s.pull(1000, None).await.expect("pull");
            if got.is_empty() {
                return all;
            }
            let ids = got.iter().map(|m| m.ack_id().to_string()).collect();
            s.ack(ids).await.expect("ack");
            all.extend(got.into_iter().map(|m| m.message));
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message with `data` and nothing else.
pub fn message(data: &str) -> PubsubMessage {
    PubsubMessage {
        data: data.as_bytes().to_vec(),
        ..PubsubMessage::default()
    }
}

/// How long a wait may take before a test fails (the emulator and weir share 2 cores with builds).
pub const WAIT: Duration = Duration::from_secs(180);
