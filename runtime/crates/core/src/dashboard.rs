//! The live dashboard: an HTTP server that shows the rows of a profile store — the embedded
//! [`profiles`](crate::sinks::profiles) store or a [`dynamodb`](crate::sinks::dynamodb) table — and
//! pushes every change its sink writes to the browser.
//!
//! * `GET /` — the dashboard page (made for a wall screen).
//! * `GET /api/viewers` — a JSON snapshot: `{"viewers": [profile, …]}`.
//! * `GET /api/stream` — Server-Sent Events: one `snapshot` event with every profile on connect,
//!   then `profile` (a JSON profile) and `removed` (`{"key": …}`) events as they happen. A client
//!   that falls behind gets a fresh `snapshot` instead of an unbounded backlog.
//! * `GET /demo/…` — static files (the tracker demo page), if `static_dir` is set.
//! * `GET /healthz`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast;

const PAGE: &str = include_str!("../assets/dashboard.html");

/// Where a dashboard reads its full snapshot (on connect, and for a client that fell behind).
#[async_trait::async_trait]
pub trait Snapshot: Send + Sync {
    /// Every live row, as JSON objects.
    async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>>;
}

/// `[sink.dashboard]` of the profiles and dynamodb sinks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Where to listen, e.g. `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// A folder served under `/demo/` (the tracker demo page).
    pub static_dir: Option<PathBuf>,
}

/// A change to the store, as sent to browsers.
#[derive(Debug, Clone)]
pub enum Update {
    Profile(Arc<str>),
    Removed(Arc<str>),
}

/// Fans store changes out to every connected dashboard.
#[derive(Clone)]
pub struct Hub {
    store: Arc<dyn Snapshot>,
    tx: broadcast::Sender<Update>,
    key_field: Arc<str>,
}

impl Hub {
    pub fn new(store: Arc<dyn Snapshot>, key_field: String) -> Hub {
        let (tx, _) = broadcast::channel(4096);
        Hub {
            store,
            tx,
            key_field: key_field.into(),
        }
    }

    pub fn upserted(&self, _key: &str, doc: serde_json::Value) {
        let _ = self.tx.send(Update::Profile(doc.to_string().into()));
    }

    pub fn removed(&self, key: &str) {
        let msg = serde_json::json!({ "key": key, "key_field": &*self.key_field });
        let _ = self.tx.send(Update::Removed(msg.to_string().into()));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.tx.subscribe()
    }

    /// Every row, or why the store cannot be read (never an empty snapshot in its place: that
    /// would wipe every viewer off the screens).
    async fn snapshot_json(&self) -> Result<String, String> {
        match self.store.rows().await {
            Ok(rows) => Ok(
                serde_json::json!({ "key_field": &*self.key_field, "viewers": rows }).to_string(),
            ),
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the profile store");
                Err(format!("cannot read the profile store: {e:#}"))
            }
        }
    }

    /// The snapshot as an SSE event: `snapshot`, or `store-error` with the reason.
    async fn snapshot_event(&self) -> Event {
        match self.snapshot_json().await {
            Ok(s) => Event::default().event("snapshot").data(s),
            Err(e) => Event::default().event("store-error").data(e),
        }
    }
}

/// Starts the dashboard server in the background.
pub fn spawn(cfg: DashboardConfig, hub: Hub) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(cfg.address)
        .with_context(|| format!("dashboard.address {}: cannot listen", cfg.address))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let mut app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/api/viewers",
            get({
                let hub = hub.clone();
                move || {
                    let hub = hub.clone();
                    async move {
                        let (status, body) = match hub.snapshot_json().await {
                            Ok(s) => (StatusCode::OK, s),
                            Err(e) => (
                                StatusCode::SERVICE_UNAVAILABLE,
                                serde_json::json!({ "error": e }).to_string(),
                            ),
                        };
                        (status, [("content-type", "application/json")], body)
                    }
                }
            }),
        )
        .route(
            "/api/stream",
            get({
                let hub = hub.clone();
                move || {
                    let hub = hub.clone();
                    async move { stream(hub).into_response() }
                }
            }),
        );
    if let Some(dir) = cfg.static_dir {
        app = app.nest_service("/demo", tower_http::services::ServeDir::new(dir));
    }
    tokio::spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                if let Err(e) = axum::serve(l, app).await {
                    tracing::error!(error = %e, "dashboard server stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "dashboard listener"),
        }
    });
    tracing::info!(address = %bound, "live dashboard at http://{bound}/");
    Ok(bound)
}

fn stream(hub: Hub) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    // Subscribe before reading the snapshot, so no change falls between the two.
    let rx = hub.subscribe();
    let first = {
        let hub = hub.clone();
        async move { Ok(hub.snapshot_event().await) }
    };
    let updates = futures::stream::unfold((rx, hub), |(mut rx, hub)| async move {
        let event = match rx.recv().await {
            Ok(Update::Profile(p)) => Event::default().event("profile").data(&*p),
            Ok(Update::Removed(k)) => Event::default().event("removed").data(&*k),
            // Fell behind: start again from a full snapshot rather than queue without bound.
            Err(broadcast::error::RecvError::Lagged(_)) => hub.snapshot_event().await,
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, hub)))
    });
    let all = futures::StreamExt::chain(futures::stream::once(first), updates);
    Sse::new(all).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Down;

    #[async_trait::async_trait]
    impl Snapshot for Down {
        async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
            anyhow::bail!("table gone")
        }
    }

    /// Sends a GET and reads until `until` appears (or the connection closes).
    async fn get(addr: SocketAddr, path: &str, until: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains(until) {
            let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_store_that_cannot_be_read_is_reported_not_shown_as_empty() {
        let hub = Hub::new(Arc::new(Down), "viewer_id".into());
        let cfg = DashboardConfig {
            address: "127.0.0.1:0".parse().unwrap(),
            static_dir: None,
        };
        let addr = spawn(cfg, hub).unwrap();
        let r = get(addr, "/api/viewers", "table gone").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("table gone"), "{r}");
        let r = get(addr, "/api/stream", "table gone").await;
        assert!(r.contains("event: store-error"), "{r}");
        assert!(!r.contains("event: snapshot"), "{r}");
    }
}
