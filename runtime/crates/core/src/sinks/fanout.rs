//! `fanout`: every record to several sinks (e.g. viewer profiles to DynamoDB and to Kafka).
//!
//! Each child is any registered sink, configured exactly as it would be as the main sink (same
//! strict checks; errors name the key path, e.g. `sink.sinks[1].topic`). For each batch:
//!
//! - every child gets every record; the children write concurrently;
//! - the batch is acknowledged only once every child has accepted it;
//! - a child's retriable error retries that child only: the children that already accepted the
//!   batch are not sent it again (the pipeline retries the batch with the same
//!   [`Progress`], in which each child has its own part, marked done once it accepted the
//!   batch);
//! - records a child rejects go to the failure sink, the reason naming the child (the other
//!   children keep them);
//! - a fatal error of any child stops the pipeline.

use std::collections::BTreeMap;

use super::{Progress, Refusal, Sink, SinkConfig, SinkError};
use crate::config::{kind_name, take_key, unknown_key_message, ConfigError, Origin};
use crate::record::Record;
use crate::setup::BuildContext;
use anyhow::Context as _;
use async_trait::async_trait;

/// The config `type`.
pub const TYPE: &str = "fanout";

/// ```toml
/// [sink]
/// type = "fanout"
///
/// [[sink.sinks]]
/// type = "dynamodb"
/// table = "viewer_profiles"
/// partition_key = "viewer_id"
///
/// [[sink.sinks]]
/// type = "kafka"
/// bootstrap_servers = "broker:9092"
/// topic = "viewer-profiles"
/// ```
#[derive(Debug)]
pub struct FanoutConfig {
    /// Each child with its label (`sinks[i] (type)`), in config order.
    pub sinks: Vec<(String, Box<dyn SinkConfig>)>,
}

/// Parses `type = "fanout"` settings: each child through the sink registry, at its own key path.
pub fn parse(
    mut value: config::Value,
    origin: &Origin,
) -> Result<Box<dyn SinkConfig>, ConfigError> {
    let sinks = take_key(&mut value, "sinks", origin)?;
    if let config::ValueKind::Table(rest) = &value.kind {
        let mut keys: Vec<&String> = rest.keys().collect();
        keys.sort();
        if let Some(k) = keys.first() {
            return Err(origin.error(k, unknown_key_message(k, &["sinks"])));
        }
    }
    let items = match sinks.map(|v| v.kind) {
        None => return Err(origin.error("", "missing required key `sinks`")),
        Some(config::ValueKind::Array(items)) if !items.is_empty() => items,
        Some(config::ValueKind::Array(_)) => {
            return Err(origin.error(
                "sinks",
                "expected at least one sink ([[sink.sinks]] in TOML), found an empty array",
            ))
        }
        Some(other) => {
            return Err(origin.error(
                "sinks",
                format!(
                    "expected an array of sinks ([[sink.sinks]] in TOML), found {}",
                    kind_name(&other)
                ),
            ))
        }
    };
    let mut sinks = Vec::with_capacity(items.len());
    for (i, v) in items.into_iter().enumerate() {
        let key = format!("sinks[{i}]");
        let (name, cfg) = crate::registry::parse(super::REGISTRY, "sink", v, &origin.child(&key))?;
        sinks.push((format!("{key} ({name})"), cfg));
    }
    Ok(Box::new(FanoutConfig { sinks }))
}

#[async_trait]
impl SinkConfig for FanoutConfig {
    /// Builds every child at its own key path (`sink.sinks[1]`), which names it if it fails.
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let mut children = Vec::with_capacity(self.sinks.len());
        for (i, (label, cfg)) in self.sinks.iter().enumerate() {
            let sink = super::build(cfg.as_ref(), &ctx.child(&format!("sinks[{i}]"))).await?;
            children.push(Child::new(label.clone(), sink));
        }
        Ok(Box::new(FanoutSink::new(children)))
    }
}

/// One child sink of a fan-out.
pub struct Child {
    label: String,
    sink: Box<dyn Sink>,
    retries: metrics::Counter,
}

impl Child {
    pub fn new(label: String, sink: Box<dyn Sink>) -> Child {
        Child {
            retries: metrics::counter!("weir_fanout_retries_total", "child" => label.clone()),
            label,
            sink,
        }
    }
}

pub struct FanoutSink {
    children: Vec<Child>,
}

impl FanoutSink {
    pub fn new(children: Vec<Child>) -> FanoutSink {
        FanoutSink { children }
    }
}

#[async_trait]
impl Sink for FanoutSink {
    async fn write(
        &mut self,
        records: &[Record],
        progress: &mut Progress,
    ) -> Result<(), SinkError> {
        // Each child writes with its own part of the batch's progress; a child that finished
        // the batch in an earlier try is not sent it again.
        let parts = progress.parts(self.children.len());
        let writes = self
            .children
            .iter_mut()
            .zip(parts.iter_mut())
            .enumerate()
            .filter(|(_, (_, part))| !part.is_done())
            .map(|(i, (c, part))| async move { (i, c.sink.write(records, part).await) });
        let results = futures::future::join_all(writes).await;

        let parts = progress.parts(self.children.len());
        let mut fatal = Vec::new();
        let mut retriable = Vec::new();
        // The most serious class among the children still to write: setup, then throttle.
        let mut class = crate::retry::FailureClass::Transient;
        for (i, result) in results {
            let label = &self.children[i].label;
            match result {
                Ok(()) => parts[i].finish(Vec::new()),
                Err(SinkError::Rejected(rejected)) => parts[i].finish(rejected),
                Err(SinkError::Fatal(e)) => fatal.push(format!("{label}: {e:#}")),
                Err(e) => {
                    use crate::retry::FailureClass::*;
                    let c = e.class().unwrap_or(Transient);
                    if c == Setup || (c == Throttle && class == Transient) {
                        class = c;
                    }
                    self.children[i].retries.increment(1);
                    retriable.push(format!("{label}: {e:#}"));
                }
            }
        }
        if !fatal.is_empty() {
            return Err(SinkError::Fatal(anyhow::anyhow!(
                "fanout: {}",
                fatal.join("; ")
            )));
        }
        if !retriable.is_empty() {
            let waiting = retriable.len();
            return Err(SinkError::of_class(
                class,
                anyhow::anyhow!(
                    "fanout: {waiting} of {} sink(s) still to write the batch: {}",
                    self.children.len(),
                    retriable.join("; ")
                ),
            ));
        }
        // Every child accepted the batch; what some rejected goes to the failure sink, each
        // record once, with every child's reason; a size refusal stays one (the smallest limit).
        let mut reasons: BTreeMap<usize, (Vec<String>, Option<(usize, usize)>)> = BTreeMap::new();
        for (child, part) in self.children.iter().zip(parts.iter_mut()) {
            for (i, refusal) in part.take_rejected() {
                let (texts, oversized) = reasons.entry(i).or_default();
                texts.push(format!("fanout {} rejected it: {refusal}", child.label));
                if let Some((actual, limit)) = refusal.oversized_by() {
                    if oversized.is_none_or(|(_, l)| limit < l) {
                        *oversized = Some((actual, limit));
                    }
                }
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(
                reasons
                    .into_iter()
                    .map(|(i, (texts, oversized))| {
                        (
                            i,
                            match oversized {
                                Some((actual, limit)) => {
                                    Refusal::oversized(texts.join("; "), actual, limit)
                                }
                                None => Refusal::from(texts.join("; ")),
                            },
                        )
                    })
                    .collect(),
            ))
        }
    }

    async fn start(&mut self) -> anyhow::Result<()> {
        for c in &mut self.children {
            c.sink
                .start()
                .await
                .with_context(|| format!("fanout {}", c.label))?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let closes = self
            .children
            .iter_mut()
            .map(|c| async move { (c.label.as_str(), c.sink.close().await) });
        let errors: Vec<String> = futures::future::join_all(closes)
            .await
            .into_iter()
            .filter_map(|(label, r)| r.err().map(|e| format!("{label}: {e:#}")))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Fatal(anyhow::anyhow!(
                "fanout: {}",
                errors.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A scripted outcome of one write.
    type Outcome = fn() -> Result<(), SinkError>;

    /// A child that answers each write with the next scripted outcome (then `Ok`) and counts
    /// the writes it saw.
    struct Fake {
        script: VecDeque<Outcome>,
        writes: Arc<Mutex<usize>>,
    }

    #[async_trait]
    impl Sink for Fake {
        async fn write(
            &mut self,
            _records: &[Record],
            _progress: &mut Progress,
        ) -> Result<(), SinkError> {
            *self.writes.lock().expect("lock poisoned") += 1;
            self.script.pop_front().map_or(Ok(()), |f| f())
        }
    }

    fn fanout(scripts: Vec<Vec<Outcome>>) -> (FanoutSink, Vec<Arc<Mutex<usize>>>) {
        let mut counts = Vec::new();
        let children = scripts
            .into_iter()
            .enumerate()
            .map(|(i, script)| {
                let writes = Arc::new(Mutex::new(0));
                counts.push(writes.clone());
                Child::new(
                    format!("sinks[{i}] (fake)"),
                    Box::new(Fake {
                        script: script.into(),
                        writes,
                    }),
                )
            })
            .collect();
        (FanoutSink::new(children), counts)
    }

    fn batch() -> Vec<Record> {
        (0..3).map(|i| Record::new(format!("r{i}"))).collect()
    }

    fn count(c: &Arc<Mutex<usize>>) -> usize {
        *c.lock().expect("lock poisoned")
    }

    #[tokio::test]
    async fn a_retriable_error_retries_only_the_failing_child() {
        let (mut sink, writes) = fanout(vec![
            vec![],
            vec![
                || Err(SinkError::Retriable(anyhow::anyhow!("throttled"))),
                || Err(SinkError::Retriable(anyhow::anyhow!("throttled again"))),
            ],
            vec![],
        ]);
        // The pipeline retries a batch with the same progress.
        let records = batch();
        let mut progress = Progress::default();
        let e = sink.write(&records, &mut progress).await.unwrap_err();
        assert!(matches!(e, SinkError::Retriable(_)), "{e}");
        assert!(e.to_string().contains("sinks[1] (fake): throttled"), "{e}");
        assert!(sink.write(&records, &mut progress).await.is_err());
        sink.write(&records, &mut progress).await.unwrap();
        let seen: Vec<usize> = writes.iter().map(count).collect();
        assert_eq!(
            seen,
            vec![1, 3, 1],
            "only the failing child is written again"
        );

        // The next batch (a fresh progress) goes to every child again.
        let next = batch();
        sink.write(&next, &mut Progress::default()).await.unwrap();
        let seen: Vec<usize> = writes.iter().map(count).collect();
        assert_eq!(seen, vec![2, 4, 2]);
    }

    #[tokio::test]
    async fn rejected_records_name_the_children_that_rejected_them() {
        let (mut sink, writes) = fanout(vec![
            vec![|| {
                Err(SinkError::Rejected(vec![(
                    1,
                    Refusal::oversized("too large", 2000, 1000),
                )]))
            }],
            vec![],
            vec![
                || Err(SinkError::Retriable(anyhow::anyhow!("timeout"))),
                || {
                    Err(SinkError::Rejected(vec![
                        (1, "no key".into()),
                        (2, "bad".into()),
                    ]))
                },
            ],
        ]);
        let records = batch();
        let mut progress = Progress::default();
        assert!(matches!(
            sink.write(&records, &mut progress).await,
            Err(SinkError::Retriable(_))
        ));
        // The retry reaches only the third child; the first child's rejections are kept.
        let Err(SinkError::Rejected(rejected)) = sink.write(&records, &mut progress).await else {
            panic!("expected rejections")
        };
        assert_eq!(
            rejected,
            vec![
                (
                    1,
                    // One child refused it for its size: a size violation, with that limit.
                    Refusal::oversized(
                        "fanout sinks[0] (fake) rejected it: too large; \
                         fanout sinks[2] (fake) rejected it: no key",
                        2000,
                        1000
                    )
                ),
                (2, Refusal::from("fanout sinks[2] (fake) rejected it: bad")),
            ]
        );
        let seen: Vec<usize> = writes.iter().map(count).collect();
        assert_eq!(seen, vec![1, 1, 2]);
    }

    #[tokio::test]
    async fn a_fatal_error_of_any_child_is_fatal() {
        let (mut sink, _) = fanout(vec![
            vec![|| Err(SinkError::Retriable(anyhow::anyhow!("later")))],
            vec![|| Err(SinkError::Fatal(anyhow::anyhow!("no such table")))],
        ]);
        let e = sink
            .write(&batch(), &mut Progress::default())
            .await
            .unwrap_err();
        assert!(matches!(e, SinkError::Fatal(_)), "{e}");
        assert!(
            e.to_string().contains("sinks[1] (fake): no such table"),
            "{e}"
        );
    }
}
