//! `[monitoring.webhook]`: Snowbridge's webhook monitoring (`pkg/monitoring/webhook.go`).
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
        let Some(w) = &self.webhook else {
            return Ok(());
        };
        let o = origin.child("webhook");
        match reqwest::Url::parse(&w.endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
            _ => {
                return Err(o.error(
                    "endpoint",
                    format!(
                        "expected an http:// or https:// URL, found {:?}",
                        w.endpoint
                    ),
                ))
            }
        }
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
