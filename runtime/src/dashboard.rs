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

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::sync::broadcast;

const PAGE: &str = include_str!("../../examples/live-viewer/dashboard.html");

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

    async fn snapshot_json(&self) -> String {
        let rows = self.store.rows().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "dashboard: cannot read the profile store");
            Vec::new()
        });
        serde_json::json!({ "key_field": &*self.key_field, "viewers": rows }).to_string()
    }
}

/// Starts the dashboard server in the background.
pub fn spawn(cfg: DashboardConfig, hub: Hub) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(cfg.address)
        .map_err(|e| anyhow::anyhow!("dashboard.address {}: cannot listen: {e}", cfg.address))?;
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
                        (
                            [("content-type", "application/json")],
                            hub.snapshot_json().await,
                        )
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
        async move {
            Ok(Event::default()
                .event("snapshot")
                .data(hub.snapshot_json().await))
        }
    };
    let updates = futures::stream::unfold((rx, hub), |(mut rx, hub)| async move {
        let event = match rx.recv().await {
            Ok(Update::Profile(p)) => Event::default().event("profile").data(&*p),
            Ok(Update::Removed(k)) => Event::default().event("removed").data(&*k),
            // Fell behind: start again from a full snapshot rather than queue without bound.
            Err(broadcast::error::RecvError::Lagged(_)) => Event::default()
                .event("snapshot")
                .data(hub.snapshot_json().await),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, hub)))
    });
    let all = futures::StreamExt::chain(futures::stream::once(first), updates);
    Sse::new(all).keep_alive(KeepAlive::default())
}
