//! Logs, metrics, the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`) and the progress line.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Origin};
use crate::http_server::{self, ServerConfig, ServerLimits};

/// Running totals, cheap to bump once per batch; read by the progress line and the summary.
#[derive(Debug, Default)]
pub struct Stats {
    pub read: AtomicU64,
    pub written: AtomicU64,
    pub filtered: AtomicU64,
    pub failed: AtomicU64,
    pub acked: AtomicU64,
    /// Records in writes of the main sink that failed (each failed attempt counts; retried).
    pub write_failed: AtomicU64,
    /// The same for the failure sink.
    pub failure_write_failed: AtomicU64,
    /// Write calls to the main sink, failed or not.
    pub writes: AtomicU64,
}

impl Stats {
    pub fn record_read(&self, n: u64) {
        self.read.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("weir_source_records_total").increment(n);
    }
    pub fn record_acked(&self, n: u64) {
        self.acked.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("weir_records_acked_total").increment(n);
    }
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            read: self.read.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            write_failed: self.write_failed.load(Ordering::Relaxed),
            failure_write_failed: self.failure_write_failed.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    pub read: u64,
    pub written: u64,
    pub filtered: u64,
    pub failed: u64,
    pub acked: u64,
    pub write_failed: u64,
    pub failure_write_failed: u64,
    pub writes: u64,
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            // Latencies as histograms with buckets (what alerting rules and dashboards
            // aggregate across instances), the other timings as summaries.
            const LATENCY_BUCKETS: &[f64] = &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
                900.0, 3600.0,
            ];
            let latency = |name: &str| metrics_exporter_prometheus::Matcher::Full(name.to_string());
            let recorder = PrometheusBuilder::new()
                .set_quantiles(&[0.5, 0.9, 0.99, 0.999])
                .expect("static quantiles are valid")
                .set_buckets_for_metric(latency("weir_e2e_latency_seconds"), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .set_buckets_for_metric(latency("weir_processing_latency_seconds"), LATENCY_BUCKETS)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding application): then
            // our handle renders nothing, which is harmless.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The shortest and longest of a latency over the current statsd window, in microseconds
/// (two atomic operations per observation; read and reset by [`report_statsd`]).
pub struct Window {
    min: AtomicU64,
    max: AtomicU64,
}

impl Window {
    const fn new() -> Window {
        Window {
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }

    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128 - 1) as u64;
        self.min.fetch_min(us, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    /// The window's (min, max), if anything was recorded; starts a new window.
    fn take(&self) -> Option<(Duration, Duration)> {
        let min = self.min.swap(u64::MAX, Ordering::Relaxed);
        let max = self.max.swap(0, Ordering::Relaxed);
        (min != u64::MAX).then(|| {
            (
                Duration::from_micros(min),
                Duration::from_micros(max.max(min)),
            )
        })
    }
}

/// Read → acknowledged by every sink, per batch.
pub static PROCESSING_LATENCY: Window = Window::new();
/// Collector → acknowledged, per Snowplow event (with `[metrics] e2e_latency`).
pub static E2E_LATENCY: Window = Window::new();

/// `[metrics.statsd]`: Snowbridge's statsd stats receiver. Every `flush_interval`, and once
/// when the pipeline ends, weir sends what happened in the window under Snowbridge's names:
/// counts `target_success` (records written), `target_failed` (records in failed writes of the
/// sink, once per failed attempt), `target_request_count` (write calls to the sink),
/// `failure_target_success` (sent to the failure sink), `failure_target_failed`,
/// `message_filtered`, and weir's `records_read` and `records_acked`; timings
/// `min_processing_latency`, `max_processing_latency` and, with `e2e_latency`,
/// `min_e2e_latency`, `max_e2e_latency`. Tags go on every metric (`|#key:value`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdConfig {
    /// `host:port` of the statsd server (UDP).
    pub address: String,
    #[serde(default = "default_statsd_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_flush_interval")]
    pub flush_interval: crate::config::Duration,
}

fn default_statsd_prefix() -> String {
    "weir".into()
}
fn default_flush_interval() -> crate::config::Duration {
    crate::config::Duration(Duration::from_secs(10))
}

impl StatsdConfig {
    pub fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        match self.address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => {
                return Err(origin.error(
                    "address",
                    format!("expected host:port, found {:?}", self.address),
                ))
            }
        }
        if self.flush_interval.0 < Duration::from_millis(10) {
            return Err(origin.error("flush_interval", "expected at least 10ms"));
        }
        Ok(())
    }
}

/// Sends the pipeline's counts and latencies to statsd every `flush_interval` until `stop`,
/// then once more. A statsd server that is down loses its metrics (UDP), never the pipeline.
pub async fn report_statsd(
    cfg: StatsdConfig,
    stats: Arc<Stats>,
    e2e: bool,
    stop: CancellationToken,
) {
    use cadence::prelude::*;
    let client = async {
        let addr = tokio::net::lookup_host(&cfg.address)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("no address"))?;
        let bind = if addr.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        };
        let socket = std::net::UdpSocket::bind(bind)?;
        socket.set_nonblocking(true)?;
        let sink = cadence::UdpMetricSink::from(addr, socket)?;
        let prefix = cfg.prefix.trim_end_matches('.');
        let mut b = cadence::StatsdClient::builder(prefix, sink);
        for (k, v) in &cfg.tags {
            b = b.with_tag(k.as_str(), v.as_str());
        }
        anyhow::Ok(b.build())
    }
    .await;
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(address = %cfg.address, error = %e, "statsd: cannot send metrics");
            return;
        }
    };
    tracing::info!(address = %cfg.address, prefix = %cfg.prefix, every = ?cfg.flush_interval.0, "sending metrics to statsd");
    let mut last = Snapshot::default();
    let mut tick = tokio::time::interval(cfg.flush_interval.0);
    tick.tick().await;
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
        };
        let now = stats.snapshot();
        let delta = |n: u64, was: u64| n.saturating_sub(was) as i64;
        let mut sent: Vec<cadence::MetricResult<()>> = [
            ("target_success", delta(now.written, last.written)),
            ("target_failed", delta(now.write_failed, last.write_failed)),
            ("target_request_count", delta(now.writes, last.writes)),
            ("failure_target_success", delta(now.failed, last.failed)),
            (
                "failure_target_failed",
                delta(now.failure_write_failed, last.failure_write_failed),
            ),
            ("message_filtered", delta(now.filtered, last.filtered)),
            ("records_read", delta(now.read, last.read)),
            ("records_acked", delta(now.acked, last.acked)),
        ]
        .into_iter()
        .map(|(name, n)| client.count(name, n).map(drop))
        .collect();
        last = now;
        let windows = [
            ("processing", Some(&PROCESSING_LATENCY)),
            ("e2e", e2e.then_some(&E2E_LATENCY)),
        ];
        for (name, w) in windows {
            if let Some((min, max)) = w.and_then(Window::take) {
                sent.push(client.time(&format!("min_{name}_latency"), min).map(drop));
                sent.push(client.time(&format!("max_{name}_latency"), max).map(drop));
            }
        }
        if let Some(Err(e)) = sent.into_iter().find(Result::is_err) {
            tracing::debug!(error = %e, "statsd: a metric was not sent");
        }
        if stopping {
            return;
        }
    }
}

/// `[http]`: the observability endpoint.
///
/// ```toml
/// [http]
/// address = "127.0.0.1:9464"   # 0.0.0.0:9464 only where a scraper on another host needs it
/// [http.server]                # optional: timeouts and caps (see `http_server`), defaults:
/// max_connections = 64
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on, e.g. `127.0.0.1:9464` (port 0 picks a free port).
    pub address: SocketAddr,
    /// Timeouts, connection cap and size limits (defaults: [`ServerLimits::admin`]).
    #[serde(default)]
    pub server: ServerConfig,
}

impl HttpConfig {
    pub fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        self.server.check(&origin.child("server"))
    }
}

/// Readiness as reported by `/readyz`: ready once the pipeline runs, not ready while draining.
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release)
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`. Returns the bound address.
pub async fn serve_http(
    cfg: &HttpConfig,
    ready: Arc<Readiness>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use axum::{http::StatusCode, routing::get, Router};
    let handle = prometheus();
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.get() {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4")],
                        handle.render(),
                    )
                }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let stats = stats.clone();
                async move { axum::Json(stats.snapshot()) }
            }),
        );
    let address = cfg.address;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("http.address {address}: cannot listen"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "serving /healthz, /readyz, /metrics");
    let limits = cfg.server.limits(ServerLimits::admin());
    tokio::spawn(http_server::serve("http", listener, app, limits, shutdown));
    Ok(bound)
}

/// Prints `read … written … filtered … failed … (rate/s)` every `every` until `stop`.
pub async fn progress_line(stats: Arc<Stats>, every: Duration, stop: CancellationToken) {
    let start = Instant::now();
    let mut last = stats.snapshot();
    let mut last_t = start;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stats.snapshot();
        let dt = last_t.elapsed().as_secs_f64().max(1e-9);
        eprintln!(
            "[{:>6.1}s] read {} ({}/s)  written {}  filtered {}  failed {}  acked {}",
            start.elapsed().as_secs_f64(),
            now.read,
            human_rate((now.read - last.read) as f64 / dt),
            now.written,
            now.filtered,
            now.failed,
            now.acked,
        );
        last = now;
        last_t = Instant::now();
    }
}

fn human_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}
