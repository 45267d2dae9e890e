//! `[monitoring.webhook]`: Snowbridge's webhook monitoring (`pkg/monitoring/webhook.go`); and
//! `[monitoring.metadata_reporter]`, its metadata reporter (see [`MetadataReporterConfig`]).
//!
//! A heartbeat is POSTed when the pipeline starts and every `heartbeat_interval` while it is
//! healthy. When a sink fails with a setup error (credentials, permissions, a missing table,
//! a `setup` response rule), an alert with the error is POSTed at once, and again at every
//! interval instead of the heartbeat until a write of that sink succeeds; heartbeats then
//! resume. Events are Snowplow self-describing JSON with Snowbridge's schemas
//! (`iglu:com.snowplowanalytics.monitoring.loader/heartbeat|alert/jsonschema/1-0-0`); a webhook
//! that cannot be reached is logged, never a failure of the pipeline.
//!
//! ```toml
//! [monitoring.webhook]
//! endpoint = "https://webhook.example.com/weir"
//! heartbeat_interval = "5m"
//! tags = { pipeline = "production" }
//! ```

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Duration as CfgDuration, Origin};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringConfig {
    pub webhook: Option<WebhookConfig>,
    pub sentry: Option<SentryConfig>,
    pub metadata_reporter: Option<MetadataReporterConfig>,
}

/// `[monitoring.metadata_reporter]`: Snowbridge's metadata reporter
/// (`pkg/monitoring/metadata_reporter.go`). Every `interval`, one
/// `event_forwarding_metrics` event is POSTed to `endpoint` with the counts of that period:
/// records written by the sink (`successCount`), filtered, in failed writes (`failedCount`),
/// sent to the failure sink (`invalidCount`), and the failures that have an error code (a
/// transform's, an endpoint's refusal, a template) aggregated by code and component
/// (`invalidErrors`). Sent with a few retries; a reporter that cannot reach its endpoint is
/// logged, never a failure of the pipeline.
///
/// ```toml
/// [monitoring.metadata_reporter]
/// endpoint = "https://metadata.example.com/weir"
/// tags = { pipeline = "production" }
/// interval = "1m"      # Snowbridge: the stats receiver's buffer_sec
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataReporterConfig {
    pub endpoint: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "default_metadata_interval")]
    pub interval: CfgDuration,
}

fn default_metadata_interval() -> CfgDuration {
    CfgDuration(Duration::from_secs(60))
}

fn check_endpoint(origin: &Origin, endpoint: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(endpoint) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => Err(origin.error(
            "endpoint",
            format!("expected an http:// or https:// URL, found {endpoint:?}"),
        )),
    }
}

/// `[monitoring.sentry]`: Snowbridge's `sentry` block. Every error weir logs (a sink that gives
/// up, a setup error, a fatal stop) and every panic goes to Sentry as an event, with the `tags`
/// and weir's version as the release; warnings come along as breadcrumbs. Secrets weir knows of
/// are taken out of the events, as out of the logs. The `weir` binary does the sending.
///
/// ```toml
/// [monitoring.sentry]
/// dsn = { env = "SENTRY_DSN" }        # https://KEY@HOST/PROJECT
/// tags = { pipeline = "production" }
/// debug = false                       # the Sentry client's own debug output
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentryConfig {
    pub dsn: crate::kafka::security::Value,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub debug: bool,
}

impl SentryConfig {
    /// The DSN, checked to have a Sentry DSN's shape (`http(s)://KEY@HOST/PROJECT`) and
    /// registered as a secret; the error never shows it.
    pub fn resolve_dsn(&self, origin: &Origin) -> Result<String, ConfigError> {
        let dsn = self.dsn.resolve(origin, "dsn")?;
        crate::kafka::security::register_secret(&dsn);
        let ok = reqwest::Url::parse(&dsn).is_ok_and(|u| {
            matches!(u.scheme(), "http" | "https")
                && !u.username().is_empty()
                && u.host_str().is_some()
                && u.path_segments()
                    .and_then(|mut p| p.next_back())
                    .is_some_and(|p| !p.is_empty())
        });
        if !ok {
            return Err(origin.error(
                "dsn",
                "expected a Sentry DSN (https://KEY@HOST/PROJECT), found something else (not \
                 shown: it may hold a key)",
            ));
        }
        Ok(dsn)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub endpoint: String,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval: CfgDuration,
}

fn default_heartbeat() -> CfgDuration {
    CfgDuration(Duration::from_secs(300))
}

impl MonitoringConfig {
    pub fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if let Some(sentry) = &self.sentry {
            sentry.resolve_dsn(&origin.child("sentry"))?;
        }
        if let Some(m) = &self.metadata_reporter {
            let o = origin.child("metadata_reporter");
            check_endpoint(&o, &m.endpoint)?;
            if m.interval.0 < Duration::from_millis(100) {
                return Err(o.error("interval", "expected at least 100ms"));
            }
        }
        let Some(w) = &self.webhook else {
            return Ok(());
        };
        let o = origin.child("webhook");
        check_endpoint(&o, &w.endpoint)?;
        if w.heartbeat_interval.0 < Duration::from_millis(100) {
            return Err(o.error("heartbeat_interval", "expected at least 100ms"));
        }
        Ok(())
    }
}

/// The current setup error of the pipeline's sinks, if any (the latest one reported).
fn setup_state() -> &'static watch::Sender<Option<String>> {
    static STATE: OnceLock<watch::Sender<Option<String>>> = OnceLock::new();
    STATE.get_or_init(|| watch::channel(None).0)
}

/// A sink write failed with a setup error.
pub fn setup_failed(error: String) {
    let error = crate::kafka::security::redact(&error).into_owned();
    setup_state().send_if_modified(|s| {
        let changed = s.as_deref() != Some(error.as_str());
        *s = Some(error);
        changed
    });
}

/// A sink that had failed with a setup error wrote again.
pub fn setup_resolved() {
    setup_state().send_if_modified(|s| s.take().is_some());
}

#[derive(serde::Serialize)]
struct Event<'a> {
    schema: &'a str,
    data: Data<'a>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    app_name: &'a str,
    app_version: &'a str,
    tags: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

const HEARTBEAT: &str = "iglu:com.snowplowanalytics.monitoring.loader/heartbeat/jsonschema/1-0-0";
const ALERT: &str = "iglu:com.snowplowanalytics.monitoring.loader/alert/jsonschema/1-0-0";

/// Sends heartbeats and alerts until `stop`.
pub async fn run_webhook(cfg: WebhookConfig, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "webhook monitoring: cannot build a client");
            return;
        }
    };
    let send = |schema: &'static str, message: Option<String>| {
        let client = client.clone();
        let cfg = &cfg;
        async move {
            let event = Event {
                schema,
                data: Data {
                    app_name: "weir",
                    app_version: env!("CARGO_PKG_VERSION"),
                    tags: &cfg.tags,
                    message: message.as_deref(),
                },
            };
            let body = serde_json::to_vec(&event).unwrap_or_default();
            let r = client
                .post(&cfg.endpoint)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match r {
                Ok(resp) if resp.status().is_success() => {}
                Ok(resp) => {
                    tracing::warn!(
                        status = resp.status().as_u16(),
                        "webhook monitoring: the endpoint refused an event"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e.without_url(), "webhook monitoring: cannot send an event")
                }
            }
        }
    };
    let mut state = setup_state().subscribe();
    let mut current: Option<String> = state.borrow_and_update().clone();
    // The start heartbeat goes first even if a sink already failed before this task ran (a
    // loaded machine): then its alert follows at once.
    send(HEARTBEAT, None).await;
    if let Some(e) = &current {
        send(ALERT, Some(e.clone())).await;
    }
    let mut tick = tokio::time::interval(cfg.heartbeat_interval.0);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => match &current {
                None => send(HEARTBEAT, None).await,
                Some(e) => send(ALERT, Some(e.clone())).await,
            },
            r = state.changed() => {
                if r.is_err() {
                    return;
                }
                let next = state.borrow_and_update().clone();
                if current.is_none() {
                    if let Some(e) = &next {
                        // The first alert goes at once.
                        send(ALERT, Some(e.clone())).await;
                    }
                } else if next.is_none() {
                    tracing::info!("setup error resolved: resuming heartbeats");
                }
                current = next;
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// Failures with an error code, counted by (code, component) between two metadata reports
/// (bounded: codes and components are few; past [`ErrorTally::MAX_KINDS`] new kinds are not
/// counted apart).
#[derive(Debug, Default)]
pub struct ErrorTally {
    counts: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
}

impl ErrorTally {
    const MAX_KINDS: usize = 1000;

    pub fn record(&self, code: &str, description: &str) {
        let mut m = self.counts.lock().expect("error tally lock");
        if let Some(n) = m.get_mut(&(code.to_string(), description.to_string())) {
            *n += 1;
        } else if m.len() < Self::MAX_KINDS {
            m.insert((code.to_string(), description.to_string()), 1);
        }
    }

    fn take(&self) -> Vec<AggregatedError> {
        let m = std::mem::take(&mut *self.counts.lock().expect("error tally lock"));
        let mut v: Vec<AggregatedError> = m
            .into_iter()
            .map(|((code, description), count)| AggregatedError {
                code,
                description,
                count,
            })
            .collect();
        v.sort_by(|a, b| (&a.code, &a.description).cmp(&(&b.code, &b.description)));
        v
    }
}

#[derive(Debug, serde::Serialize)]
struct AggregatedError {
    code: String,
    description: String,
    count: u64,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Metrics<'a> {
    app_name: &'a str,
    app_version: &'a str,
    period_start: String,
    period_end: String,
    success_count: u64,
    filtered_count: u64,
    failed_count: u64,
    invalid_count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    invalid_errors: Vec<AggregatedError>,
    tags: &'a BTreeMap<String, String>,
}

const METRICS: &str =
    "iglu:com.snowplowanalytics.snowplow/event_forwarding_metrics/jsonschema/1-0-0";

/// Reports every `interval` until `stop`, then once more for the last period; the first
/// period starts when this is called (not when the task first runs), with every count at zero.
pub fn run_metadata_reporter(
    cfg: MetadataReporterConfig,
    stats: std::sync::Arc<crate::observe::Stats>,
    tally: std::sync::Arc<ErrorTally>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    let start = std::time::SystemTime::now();
    report_metadata(cfg, stats, tally, stop, start)
}

async fn report_metadata(
    cfg: MetadataReporterConfig,
    stats: std::sync::Arc<crate::observe::Stats>,
    tally: std::sync::Arc<ErrorTally>,
    stop: CancellationToken,
    mut start: std::time::SystemTime,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "metadata reporter: cannot build a client");
            return;
        }
    };
    let cfg = std::sync::Arc::new(cfg);
    let mut last = crate::observe::Snapshot::default();
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.tick().await;
    // One report in flight at a time: a period that ends while the last one is still being
    // sent is dropped with a warning, as Snowbridge does.
    let mut in_flight: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let now = stats.snapshot();
        let end = std::time::SystemTime::now();
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let event = serde_json::json!({
            "schema": METRICS,
            "data": Metrics {
                app_name: "weir",
                app_version: env!("CARGO_PKG_VERSION"),
                period_start: humantime::format_rfc3339_seconds(start).to_string(),
                period_end: humantime::format_rfc3339_seconds(end).to_string(),
                success_count: d(now.written, last.written),
                filtered_count: d(now.filtered, last.filtered),
                failed_count: d(now.write_failed, last.write_failed),
                invalid_count: d(now.failed, last.failed),
                invalid_errors: tally.take(),
                tags: &cfg.tags,
            },
        });
        last = now;
        start = end;
        let body = serde_json::to_vec(&event).unwrap_or_default();
        if in_flight.as_ref().is_some_and(|t| !t.is_finished()) {
            tracing::warn!(
                "metadata reporter: the last report is still being sent; dropping this period's"
            );
        } else {
            let (client, cfg) = (client.clone(), cfg.clone());
            in_flight = Some(tokio::spawn(async move {
                send_metadata(&client, &cfg.endpoint, body).await
            }));
        }
        if stopping {
            if let Some(t) = in_flight {
                let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
            }
            return;
        }
    }
}

async fn send_metadata(client: &reqwest::Client, endpoint: &str, body: Vec<u8>) {
    let mut last_error = String::new();
    for attempt in 0..6 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = client
            .post(endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => return,
            Ok(resp) => last_error = format!("the endpoint answered {}", resp.status().as_u16()),
            Err(e) => last_error = e.without_url().to_string(),
        }
    }
    tracing::warn!(error = %last_error, "metadata reporter: cannot send a report");
}
