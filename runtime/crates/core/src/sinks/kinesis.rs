//! `kinesis`: PutRecords into a Kinesis data stream.
//!
//! Records go in requests of at most 500 records and 5 MiB (Kinesis's limits). The partition key
//! is the record's key (set by `spEnrichedSetPk` or a keyed source); a record without one uses
//! `partition_key` if configured, else a hash of its bytes (so a retried record lands on the same
//! shard). When a request partly fails, only the failed records are sent again, with backoff and
//! jitter; the batch is acknowledged once every record has landed. A record over 1 MiB or with a
//! key over 256 characters can never be written: it goes to the failure sink as a bad row.

use std::hash::{Hash, Hasher};

use async_trait::async_trait;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use futures::stream::{self, StreamExt};
use serde::Deserialize;

use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::aws::{self, ErrorClass};
use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::setup::{self, BuildContext};

pub const MAX_RECORDS_PER_REQUEST: usize = 500;
pub const MAX_BYTES_PER_REQUEST: usize = 5 << 20;
pub const MAX_RECORD_BYTES: usize = 1 << 20;
pub const MAX_KEY_CHARS: usize = 256;

/// ```toml
/// [sink]
/// type = "kinesis"
/// stream = "enriched-good"
/// # partition_key = "weir"      # for records without a key (default: a hash of the record)
/// # region = "eu-west-1"
/// # endpoint_url = "http://127.0.0.1:4566"
/// concurrency = 4               # PutRecords requests in flight
/// max_attempts = 10             # per record, before the batch is retried as a whole
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KinesisConfig {
    pub stream: String,
    pub partition_key: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// An IAM role to assume (through STS) for this component's requests.
    pub role_arn: Option<String>,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "aws::default_max_attempts")]
    pub max_attempts: u32,
}

fn default_concurrency() -> usize {
    4
}

impl SinkType for KinesisConfig {
    const TYPE: &'static str = "kinesis";
}

#[async_trait]
impl SinkConfig for KinesisConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        aws::check_role_arn(origin, self.role_arn.as_deref())?;
        if self.stream.is_empty() {
            return Err(origin.error("stream", "expected a stream name, found an empty string"));
        }
        if let Some(k) = &self.partition_key {
            if k.is_empty() || k.chars().count() > MAX_KEY_CHARS {
                return Err(origin.error(
                    "partition_key",
                    format!(
                        "expected 1 to {MAX_KEY_CHARS} characters, found {}",
                        k.len()
                    ),
                ));
            }
        }
        aws::check_requests(origin, self.concurrency, self.max_attempts)
    }

    /// Creates the client and checks that the stream exists and the credentials are accepted.
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let sdk = aws::sdk_config(
            self.region.as_deref(),
            self.endpoint_url.as_deref(),
            self.role_arn.as_deref(),
        )
        .await;
        let client = Client::new(&sdk);
        setup::check(
            "Kinesis",
            aws::check_stream(&client, &self.stream, self.endpoint_url.as_deref()),
        )
        .await?;
        Ok(Box::new(KinesisSink {
            cfg: self.clone(),
            client,
        }))
    }
}

pub struct KinesisSink {
    cfg: KinesisConfig,
    client: Client,
}

impl KinesisSink {
    /// A sink for `cfg` with an already configured client (tests, tools).
    pub fn with_client(cfg: KinesisConfig, client: Client) -> Self {
        KinesisSink { cfg, client }
    }

    fn partition_key(&self, r: &Record) -> Result<String, String> {
        match &r.key {
            Some(k) if !k.is_empty() => {
                let k = std::str::from_utf8(k)
                    .map_err(|_| "partition key is not valid UTF-8".to_string())?;
                if k.chars().count() > MAX_KEY_CHARS {
                    return Err(format!(
                        "partition key of {} characters is over Kinesis's limit of {MAX_KEY_CHARS}",
                        k.chars().count()
                    ));
                }
                Ok(k.to_string())
            }
            _ => Ok(match &self.cfg.partition_key {
                Some(k) => k.clone(),
                None => {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    r.value.hash(&mut h);
                    format!("{:016x}", h.finish())
                }
            }),
        }
    }
}

/// One record ready to send: its index in the batch and its entry.
type Entry = (usize, PutRecordsRequestEntry);

#[async_trait]
impl Sink for KinesisSink {
    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let client = self.client.clone();
        let mut rejected: Vec<(usize, Refusal)> = Vec::new();
        // Split into requests of ≤ 500 records and ≤ 5 MiB (data + partition keys).
        let mut requests: Vec<Vec<Entry>> = Vec::new();
        let mut current: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            let key = match self.partition_key(r) {
                Ok(k) => k,
                Err(e) => {
                    rejected.push((i, e.into()));
                    continue;
                }
            };
            let size = r.value.len() + key.len();
            if size > MAX_RECORD_BYTES {
                rejected.push((
                    i,
                    Refusal::oversized(
                        format!(
                            "record of {size} bytes is over Kinesis's limit of {MAX_RECORD_BYTES}"
                        ),
                        size,
                        MAX_RECORD_BYTES,
                    ),
                ));
                continue;
            }
            if current.len() == MAX_RECORDS_PER_REQUEST || bytes + size > MAX_BYTES_PER_REQUEST {
                requests.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(r.value.to_vec()))
                .partition_key(key)
                .build()
                .expect("data and key are set");
            current.push((i, entry));
        }
        if !current.is_empty() {
            requests.push(current);
        }
        let results: Vec<Result<(), SinkError>> = stream::iter(requests)
            .map(|req| self.put(&client, req))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        for r in results {
            r?;
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(rejected))
        }
    }
}

impl KinesisSink {
    /// Sends one request, then again only its failed records, until all have landed.
    async fn put(&self, client: &Client, mut pending: Vec<Entry>) -> Result<(), SinkError> {
        let cfg = &self.cfg;
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Whether the last failure was the stream throttling us (request or records).
            let throttled;
            let entries: Vec<PutRecordsRequestEntry> =
                pending.iter().map(|(_, e)| e.clone()).collect();
            let failure = match client
                .put_records()
                .stream_name(&cfg.stream)
                .set_records(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    let failed = out.failed_record_count.unwrap_or(0);
                    if failed == 0 {
                        return Ok(());
                    }
                    // Results are in request order; keep only the entries that failed.
                    let mut first_error = String::new();
                    let mut first_code: Option<String> = None;
                    let mut kept = Vec::with_capacity(failed as usize);
                    for (entry, result) in pending.into_iter().zip(out.records) {
                        if let Some(code) = result.error_code {
                            if first_error.is_empty() {
                                first_code = Some(code.clone());
                                first_error =
                                    format!("{code}: {}", result.error_message.unwrap_or_default());
                            }
                            kept.push(entry);
                        }
                    }
                    pending = kept;
                    metrics::counter!("weir_kinesis_failed_records_total")
                        .increment(pending.len() as u64);
                    tracing::debug!(stream = %cfg.stream, failed = pending.len(), attempt, error = %first_error, "retrying failed records");
                    throttled = first_code.is_some_and(|c| {
                        aws::classify_code(Some(c.as_str())) == ErrorClass::Throttled
                    });
                    first_error
                }
                Err(e) => match aws::classify(&e) {
                    ErrorClass::Invalid => {
                        return Err(SinkError::Fatal(anyhow::anyhow!(
                            "kinesis {}: {}",
                            cfg.stream,
                            aws::describe(&e)
                        )))
                    }
                    ErrorClass::Setup => {
                        return Err(SinkError::Setup(anyhow::anyhow!(
                            "kinesis {}: {}",
                            cfg.stream,
                            aws::describe(&e)
                        )))
                    }
                    class => {
                        throttled = class == ErrorClass::Throttled;
                        aws::describe(&e)
                    }
                },
            };
            if pending.is_empty() {
                return Ok(());
            }
            if attempt >= cfg.max_attempts {
                let class = if throttled {
                    crate::retry::FailureClass::Throttle
                } else {
                    crate::retry::FailureClass::Transient
                };
                return Err(SinkError::of_class(
                    class,
                    anyhow::anyhow!(
                        "kinesis {}: {} records not written after {attempt} attempts: {failure}",
                        cfg.stream,
                        pending.len()
                    ),
                ));
            }
            tokio::time::sleep(crate::retry::REQUEST.delay(attempt)).await;
        }
    }
}
