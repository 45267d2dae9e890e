//! The live dashboard: an HTTP server that shows the rows of a profile store — the embedded
//! [`profiles`](crate::sinks::profiles) store or a [`dynamodb`](crate::sinks::dynamodb) table — and
//! pushes every change its sink writes to the browser.
//!
//! * `GET /` — the dashboard page (made for a wall screen, usable on a laptop): the aggregates
//!   first, then a page of viewers, filtered and searched on the server.
//! * `GET /api/viewers` — the full export: a JSON snapshot, `{"viewers": [profile, …]}`. With any
//!   of `status`, `platform`, `title`, `user` (a part of the viewer id), `q` (a part of the id or
//!   title), `page`, `per_page` (≤ 200): one page of the viewers they select, most recently
//!   active first: `{"total", "page", "per_page", "pages", "viewers"}`.
//! * `GET /api/summary` — the aggregates: viewers by status, platform and title, live viewers
//!   over the last hour, ad completion, skip and click rates.
//! * `GET /api/view?…` — Server-Sent Events for one screen: `view` events (`{"summary", "page"}`,
//!   the page as `/api/viewers?…` gives it) at most every `push_interval`, when something
//!   changed. Whatever the store holds, a client is sent a page and the aggregates, never more.
//! * `GET /api/stream` — Server-Sent Events of everything (for tools; the page uses
//!   `/api/view`): one `snapshot` event with every profile on connect,
//!   then `profile` (a JSON profile) and `removed` (`{"key": …}`) events as they happen. A client
//!   that falls behind gets a fresh `snapshot` instead of an unbounded backlog.
//! * `GET /demo/…` — static files (the tracker demo page), if `static_dir` is set.
//! * `GET /healthz` — never behind `auth`.
//!
//! **The index.** The pages and aggregates come from an in-memory [`index::Index`] of the
//! store: read once at start (and again after a [`Hub::resync`]), then kept current by every
//! change the sink announces.
//!
//! **Bounds.** One snapshot is built at a time (at most once a second), on a blocking thread,
//! and shared by every client that needs it (each holds a reference, never a copy); at most
//! three snapshots are in memory, a newer one disconnecting the clients still sent the oldest. Each stream client has its own queue of
//! `client_buffer` events; a client that leaves an event (or the snapshot) untaken for
//! `send_timeout` is dropped: its connection is closed and its browser reconnects to a fresh
//! snapshot. At most `max_stream_clients` streams at once (503 beyond). The server itself has
//! the timeouts and caps of [`crate::http_server`] (`[sink.dashboard.server]`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::config::{self, ConfigError, Origin};
use crate::http_server::{self, Connection, ServerConfig, ServerLimits};

pub mod index;

use index::{Index, Query};

const PAGE: &str = include_str!("../../assets/dashboard.html");

/// Where a dashboard reads its full snapshot (on connect, and for a client that fell behind).
#[async_trait::async_trait]
pub trait Snapshot: Send + Sync {
    /// Every live row, as JSON objects.
    async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>>;

    /// Every live row, one at a time (a store that can read row by row overrides this, so that
    /// the rows are never all in memory as JSON values at once).
    async fn each_row(&self, f: &mut (dyn FnMut(serde_json::Value) + Send)) -> anyhow::Result<()> {
        for r in self.rows().await? {
            f(r);
        }
        Ok(())
    }
}

/// `[sink.dashboard]` of the profiles and dynamodb sinks.
///
/// ```toml
/// [sink.dashboard]
/// address = "127.0.0.1:8080"    # 0.0.0.0:8080 only on purpose (a container, behind a proxy)
/// static_dir = "examples/live-viewer/demo"
/// max_stream_clients = 32       # /api/stream clients at once (503 beyond)
/// client_buffer = 256           # events queued for one client
/// send_timeout = "30s"          # an event (or the snapshot) not taken within this: dropped
/// push_interval = "1s"          # /api/view: a screen's page and aggregates, when changed
/// [sink.dashboard.auth]         # optional
/// scheme = "basic"              # or "bearer"
/// username = "wall"             # basic only
/// secret_env = "WEIR_DASHBOARD_PASSWORD"   # or secret_file = "/run/secrets/dashboard"
/// [sink.dashboard.server]       # optional: timeouts and caps (see `http_server`)
/// max_connections = 64
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    /// Where to listen, e.g. `127.0.0.1:8080`.
    pub address: SocketAddr,
    /// A folder served under `/demo/` (the tracker demo page).
    pub static_dir: Option<PathBuf>,
    /// Most `/api/stream` clients at once; one more gets 503.
    #[serde(default = "default_max_stream_clients")]
    pub max_stream_clients: usize,
    /// Events queued for one stream client; a client this far behind waits for the shared
    /// channel, and one that stays behind gets a fresh snapshot.
    #[serde(default = "default_client_buffer")]
    pub client_buffer: usize,
    /// A client that has not taken the event (or snapshot) it was sent within this long is
    /// dropped; its browser reconnects and starts again from a snapshot.
    #[serde(default = "default_send_timeout")]
    pub send_timeout: config::Duration,
    /// How often a `/api/view` client is sent its page and the aggregates, when they changed.
    #[serde(default = "default_push_interval")]
    pub push_interval: config::Duration,
    /// Require credentials on everything but `/healthz`.
    pub auth: Option<AuthConfig>,
    /// Timeouts, connection cap and size limits (defaults: [`ServerLimits::admin`]).
    #[serde(default)]
    pub server: ServerConfig,
}

fn default_max_stream_clients() -> usize {
    32
}
fn default_client_buffer() -> usize {
    256
}
fn default_send_timeout() -> config::Duration {
    config::Duration(Duration::from_secs(30))
}
fn default_push_interval() -> config::Duration {
    config::Duration(Duration::from_secs(1))
}

/// `[sink.dashboard.auth]`: HTTP authentication. The secret (token or password) comes from an
/// environment variable or a file, is read at start, compared in constant time and never logged.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub scheme: AuthScheme,
    /// The user name (`basic` only).
    pub username: Option<String>,
    /// The environment variable holding the token or password.
    pub secret_env: Option<String>,
    /// The file holding the token or password (surrounding whitespace trimmed).
    pub secret_file: Option<PathBuf>,
}

/// `bearer` (`Authorization: Bearer <token>`: scripts, a proxy that adds it) or `basic` (user
/// and password: browsers ask for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    Bearer,
    Basic,
}

impl DashboardConfig {
    /// Offline checks (`origin` is the `dashboard` key).
    pub fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.max_stream_clients == 0 {
            return Err(origin.error("max_stream_clients", "expected at least 1, found 0"));
        }
        if self.client_buffer < 4 {
            return Err(origin.error(
                "client_buffer",
                format!("expected at least 4, found {}", self.client_buffer),
            ));
        }
        if self.send_timeout.0 < Duration::from_secs(1) {
            return Err(origin.error(
                "send_timeout",
                format!(
                    "expected at least 1s, found {}",
                    humantime::format_duration(self.send_timeout.0)
                ),
            ));
        }
        if self.push_interval.0 < Duration::from_millis(50) {
            return Err(origin.error(
                "push_interval",
                format!(
                    "expected at least 50ms, found {}",
                    humantime::format_duration(self.push_interval.0)
                ),
            ));
        }
        if let Some(a) = &self.auth {
            a.check(&origin.child("auth"))?;
        }
        self.server.check(&origin.child("server"))
    }
}

impl AuthConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        match (&self.secret_env, &self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(origin.error(
                    "secret_file",
                    "expected one of `secret_env` and `secret_file`, found both",
                ))
            }
            (None, None) => {
                return Err(origin.error(
                    "secret_env",
                    "missing: expected `secret_env` (an environment variable) or `secret_file` \
                     holding the token or password",
                ))
            }
            (Some(v), None) if v.is_empty() => {
                return Err(origin.error(
                    "secret_env",
                    "expected an environment variable name, found an empty string",
                ))
            }
            _ => {}
        }
        match (self.scheme, &self.username) {
            (AuthScheme::Basic, None) => Err(origin.error(
                "username",
                "missing: expected a user name for scheme = \"basic\"",
            )),
            (AuthScheme::Basic, Some(u)) if u.is_empty() || u.contains(':') => Err(origin.error(
                "username",
                format!("expected a user name without `:`, found `{u}`"),
            )),
            (AuthScheme::Bearer, Some(_)) => Err(origin.error(
                "username",
                "expected no user name for scheme = \"bearer\" (a token alone), found one",
            )),
            _ => Ok(()),
        }
    }

    /// Reads the secret; the error names where it was looked for, never its value.
    fn credential(&self) -> anyhow::Result<Credential> {
        let secret = match (&self.secret_env, &self.secret_file) {
            (Some(var), _) => std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "dashboard.auth.secret_env: environment variable `{var}` is not set"
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| {
                    format!("dashboard.auth.secret_file: cannot read {}", path.display())
                })?
                .trim()
                .to_string(),
            (None, None) => anyhow::bail!("dashboard.auth: no secret configured"),
        };
        if secret.is_empty() {
            anyhow::bail!("dashboard.auth: the token or password is empty");
        }
        // What the client must send, decoded: the token, or `user:password`.
        let expected = match self.scheme {
            AuthScheme::Bearer => secret,
            AuthScheme::Basic => format!("{}:{secret}", self.username.as_deref().unwrap_or("")),
        };
        Ok(Credential {
            scheme: self.scheme,
            digest: Sha256::digest(expected.as_bytes()).into(),
        })
    }
}

/// The expected credential, kept only as its SHA-256 (so comparing takes the same time whatever
/// the length or content of what a client sends).
#[derive(Clone)]
struct Credential {
    scheme: AuthScheme,
    digest: [u8; 32],
}

impl Credential {
    fn accepts(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, rest)) = value.trim().split_once(' ') else {
            return false;
        };
        let given = match self.scheme {
            AuthScheme::Bearer if scheme.eq_ignore_ascii_case("bearer") => {
                rest.trim().as_bytes().to_vec()
            }
            AuthScheme::Basic if scheme.eq_ignore_ascii_case("basic") => {
                match base64::engine::general_purpose::STANDARD.decode(rest.trim()) {
                    Ok(b) => b,
                    Err(_) => return false,
                }
            }
            _ => return false,
        };
        let digest: [u8; 32] = Sha256::digest(&given).into();
        // Constant time: every byte is compared, whatever the first difference.
        digest
            .iter()
            .zip(self.digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn challenge(&self) -> &'static str {
        match self.scheme {
            AuthScheme::Bearer => "Bearer realm=\"weir dashboard\"",
            AuthScheme::Basic => "Basic realm=\"weir dashboard\", charset=\"UTF-8\"",
        }
    }
}

async fn require_auth(State(cred): State<Arc<Credential>>, req: Request, next: Next) -> Response {
    if cred.accepts(req.headers().get(header::AUTHORIZATION)) {
        return next.run(req).await;
    }
    metrics::counter!("weir_dashboard_unauthorized_total").increment(1);
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, cred.challenge())],
        "unauthorized\n",
    )
        .into_response()
}

/// A full snapshot as served: the JSON document, the sequence number of the last change it is
/// known to include, and the connections it was handed to (which may still hold it unsent).
struct Built {
    seq: u64,
    /// `event: snapshot` with the JSON as its data.
    frame: Bytes,
    /// The JSON alone (a slice of `frame`: the same memory).
    json: Bytes,
    holders: std::sync::Mutex<Vec<Connection>>,
}

impl Built {
    /// Notes that `conn` was given this snapshot (so it can be closed to free it).
    fn handed_to(&self, conn: Option<&Connection>) {
        if let Some(c) = conn {
            let mut h = self
                .holders
                .lock()
                .expect("the snapshot holders lock poisoned");
            h.retain(Connection::is_open);
            h.push(c.clone());
        }
    }

    fn held(&self) -> bool {
        let mut h = self
            .holders
            .lock()
            .expect("the snapshot holders lock poisoned");
        h.retain(Connection::is_open);
        !h.is_empty()
    }
}

/// Snapshots kept at once: the newest and older ones that clients are still being sent. When a
/// new one would make more, the clients holding the oldest are disconnected (their browsers
/// reconnect to the newest), so however many slow clients connect at however many moments,
/// at most this many snapshots are in memory.
const MAX_GENERATIONS: usize = 3;
/// Snapshots are built at most this often (clients that need a newer one wait for it).
const MIN_REBUILD: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Generations {
    /// Oldest first; the last is the newest.
    live: std::collections::VecDeque<Arc<Built>>,
    built_at: Option<tokio::time::Instant>,
}

/// Fans store changes out to every connected dashboard.
#[derive(Clone)]
pub struct Hub {
    store: Arc<dyn Snapshot>,
    /// Each change as a ready SSE frame, shared by every client.
    tx: broadcast::Sender<Bytes>,
    key_field: Arc<str>,
    /// Changes announced so far.
    seq: Arc<AtomicU64>,
    /// The snapshots in memory (one build at a time: the lock is held while building).
    generations: Arc<tokio::sync::Mutex<Generations>>,
    /// Every row, for pages and aggregates.
    index: Arc<std::sync::RwLock<Index>>,
    /// The aggregates as JSON, with the index version they are of: built once per change for
    /// every screen, not once per screen.
    summary: Arc<std::sync::Mutex<(u64, Arc<str>)>>,
}

impl Hub {
    pub fn new(store: Arc<dyn Snapshot>, key_field: String) -> Hub {
        let (tx, _) = broadcast::channel(4096);
        Hub {
            store,
            tx,
            key_field: key_field.into(),
            seq: Arc::new(AtomicU64::new(0)),
            generations: Arc::new(tokio::sync::Mutex::new(Generations::default())),
            index: Arc::default(),
            summary: Arc::new(std::sync::Mutex::new((u64::MAX, Arc::from("")))),
        }
    }

    /// The aggregates of `ix` (this hub's index, read-locked) as JSON.
    fn summary_json(&self, ix: &Index) -> Arc<str> {
        let mut cached = self
            .summary
            .lock()
            .expect("the dashboard summary lock poisoned");
        if cached.0 != ix.version {
            let json = serde_json::to_string(&ix.summary()).unwrap_or_default();
            *cached = (ix.version, Arc::from(json));
        }
        cached.1.clone()
    }

    fn index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .expect("the dashboard index lock poisoned")
    }

    fn index_read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .expect("the dashboard index lock poisoned")
    }

    /// A row was written (call after the store holds it).
    pub fn upserted(&self, key: &str, doc: serde_json::Value) {
        let json = doc.to_string();
        self.index().upsert(key, &doc, &json);
        self.announce(sse_frame("profile", &json));
    }

    /// A row was removed (call after the store no longer holds it).
    pub fn removed(&self, key: &str) {
        self.index().remove(key);
        let msg = serde_json::json!({ "key": key, "key_field": &*self.key_field });
        self.announce(sse_frame("removed", &msg.to_string()));
    }

    /// Every client takes a fresh snapshot (the store changed in ways not announced, e.g. while
    /// a change feed was away), and the index is read again.
    pub fn resync(&self) {
        self.announce(Bytes::from_static(RESYNC));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let hub = self.clone();
            rt.spawn(async move { hub.load_index().await });
        }
    }

    /// Reads the store into the index (the changes announced meanwhile win over the rows read),
    /// row by row on a blocking thread, outside the index's lock.
    pub async fn load_index(&self) {
        self.index().begin_load();
        let started = Instant::now();
        let store = self.store.clone();
        let key_field = self.key_field.clone();
        let rt = tokio::runtime::Handle::current();
        let read = tokio::task::spawn_blocking(move || -> anyhow::Result<Index> {
            let mut fresh = Index::default();
            rt.block_on(store.each_row(&mut |r| {
                if let Some(k) = r.get(&*key_field).and_then(|k| k.as_str()) {
                    fresh.load_row(k, &r);
                }
            }))?;
            Ok(fresh)
        })
        .await
        .map_err(|e| anyhow::anyhow!("the index task failed: {e}"))
        .and_then(|r| r);
        match read {
            Ok(fresh) => {
                let n = fresh.len();
                self.index().finish_load(fresh);
                tracing::info!(rows = n, took = ?started.elapsed(), "dashboard: profile store read");
            }
            Err(e) => {
                self.index().abort_load();
                tracing::warn!(error = %e, "dashboard: cannot read the profile store into its index");
            }
        }
    }

    fn announce(&self, frame: Bytes) {
        self.seq.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(frame);
    }

    /// Subscribes to changes; with the sequence number a snapshot must reach so that, with the
    /// changes received from here on, the client misses nothing.
    fn subscribe(&self) -> (broadcast::Receiver<Bytes>, u64) {
        let rx = self.tx.subscribe();
        (rx, self.seq.load(Ordering::Acquire))
    }

    /// A snapshot that includes every change up to `min_seq`, handed to `conn`: the newest one
    /// if it does, else a new one, read and serialised on a blocking thread. Never an empty
    /// snapshot in place of one the store cannot give: that would wipe every viewer off the
    /// screens.
    async fn snapshot(
        &self,
        min_seq: u64,
        conn: Option<&Connection>,
    ) -> Result<Arc<Built>, String> {
        let mut g = self.generations.lock().await;
        if let Some(b) = g.live.back().filter(|b| b.seq >= min_seq) {
            b.handed_to(conn);
            return Ok(b.clone());
        }
        if let Some(at) = g.built_at {
            tokio::time::sleep_until(at + MIN_REBUILD).await;
        }
        g.built_at = Some(tokio::time::Instant::now());
        let seq = self.seq.load(Ordering::Acquire);
        let store = self.store.clone();
        let key_field = self.key_field.clone();
        let rt = tokio::runtime::Handle::current();
        let built = tokio::task::spawn_blocking(move || -> anyhow::Result<Bytes> {
            let rows = rt.block_on(store.rows())?;
            let doc = serde_json::json!({ "key_field": &*key_field, "viewers": rows });
            // The SSE event whole (one chunk on the wire), the JSON a slice of it.
            let mut frame = SNAPSHOT_PREFIX.to_vec();
            serde_json::to_writer(&mut frame, &doc)?;
            frame.extend_from_slice(b"\n\n");
            Ok(Bytes::from(frame))
        })
        .await
        .map_err(|e| anyhow::anyhow!("the snapshot task failed: {e}"))
        .and_then(|r| r);
        let frame = match built {
            Ok(frame) => frame,
            Err(e) => {
                tracing::warn!(error = %e, "dashboard: cannot read the profile store");
                return Err(format!("cannot read the profile store: {e:#}"));
            }
        };
        // Forget the older snapshots no connection holds any more; past the limit, disconnect
        // the clients still holding the oldest.
        let newest = g.live.pop_back();
        g.live.retain(|b| b.held());
        g.live.extend(newest);
        while g.live.len() >= MAX_GENERATIONS {
            let old = g.live.pop_front().expect("not empty");
            let holders = std::mem::take(
                &mut *old
                    .holders
                    .lock()
                    .expect("the snapshot holders lock poisoned"),
            );
            let open: Vec<_> = holders.into_iter().filter(Connection::is_open).collect();
            if !open.is_empty() {
                metrics::counter!("weir_dashboard_stream_dropped_total")
                    .increment(open.len() as u64);
                tracing::debug!(
                    clients = open.len(),
                    "dashboard: disconnecting clients still sent an old snapshot"
                );
            }
            for c in open {
                c.close();
            }
        }
        let b = Arc::new(Built {
            seq,
            json: frame.slice(SNAPSHOT_PREFIX.len()..frame.len() - 2),
            frame,
            holders: Default::default(),
        });
        b.handed_to(conn);
        g.live.push_back(b.clone());
        Ok(b)
    }

    /// The snapshot as SSE frames: `snapshot` (the JSON shared, not copied) or `store-error`.
    async fn snapshot_frames(&self, min_seq: u64, conn: Option<&Connection>) -> Vec<Bytes> {
        match self.snapshot(min_seq, conn).await {
            Ok(b) => vec![b.frame.clone()],
            Err(e) => vec![sse_frame("store-error", &e)],
        }
    }
}

const SNAPSHOT_PREFIX: &[u8] = b"event: snapshot\ndata: ";
/// Announced by [`Hub::resync`]: never sent as such, each client takes a new snapshot instead.
const RESYNC: &[u8] = b":resync\n\n";

/// One SSE event; `data` on one line (compact JSON has no newline; any other is replaced).
fn sse_frame(event: &str, data: &str) -> Bytes {
    let data = data.replace(['\r', '\n'], " ");
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// What the dashboard's handlers share.
#[derive(Clone)]
struct App {
    hub: Hub,
    push_interval: Duration,
    clients: Arc<Semaphore>,
    client_buffer: usize,
    send_timeout: Duration,
    keep_alive: Duration,
}

/// Starts the dashboard server in the background.
pub fn spawn(cfg: DashboardConfig, hub: Hub) -> anyhow::Result<SocketAddr> {
    let credential = cfg.auth.as_ref().map(AuthConfig::credential).transpose()?;
    let limits = cfg.server.limits(ServerLimits::admin());
    let listener = std::net::TcpListener::bind(cfg.address)
        .with_context(|| format!("dashboard.address {}: cannot listen", cfg.address))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    // The index: read once, then sampled every 10 s for the live-viewers chart.
    {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.load_index().await;
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                hub.index().sample(now);
            }
        });
    }
    let app = App {
        hub,
        push_interval: cfg.push_interval.0,
        clients: Arc::new(Semaphore::new(cfg.max_stream_clients)),
        client_buffer: cfg.client_buffer,
        send_timeout: cfg.send_timeout.0,
        // Comments keep a quiet stream from looking idle (to weir and to proxies).
        keep_alive: (limits.idle_timeout / 3).min(Duration::from_secs(15)),
    };
    let mut router = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/api/viewers", get(viewers))
        .route("/api/summary", get(summary))
        .route("/api/view", get(view))
        .route("/api/stream", get(stream));
    if let Some(dir) = cfg.static_dir {
        router = router.nest_service("/demo", tower_http::services::ServeDir::new(dir));
    }
    if let Some(c) = credential {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(c),
            require_auth,
        ));
    }
    // Added after the auth layer: health checks need no credentials (and reveal nothing).
    let router = router
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app);
    tokio::spawn(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => {
                http_server::serve(
                    "dashboard",
                    l,
                    router,
                    limits,
                    tokio_util::sync::CancellationToken::new(),
                )
                .await
            }
            Err(e) => tracing::error!(error = %e, "dashboard listener"),
        }
    });
    tracing::info!(address = %bound, "live dashboard at http://{bound}/");
    Ok(bound)
}

async fn viewers(
    State(app): State<App>,
    axum::extract::Query(q): axum::extract::Query<Query>,
    conn: Option<Extension<Connection>>,
) -> Response {
    if !q.is_empty() {
        let page = app.hub.index_read().page_json(&q);
        return ([(header::CONTENT_TYPE, "application/json")], page).into_response();
    }
    let (_, seq) = app.hub.subscribe();
    match app.hub.snapshot(seq, conn.as_ref().map(|c| &c.0)).await {
        Ok(b) => (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(b.json.clone()),
        )
            .into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "error": e }).to_string(),
        )
            .into_response(),
    }
}

impl App {
    /// A place among the `max_stream_clients` streams, if one is free.
    fn stream_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = self.clients.clone().try_acquire_owned().ok();
        if p.is_none() {
            metrics::counter!("weir_dashboard_stream_refused_total").increment(1);
        }
        p
    }
}

fn too_many_clients() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "10")],
        "too many dashboard clients\n",
    )
        .into_response()
}

fn sse_response(body: ClientBody) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn summary(State(app): State<App>) -> Response {
    let s = app.hub.summary_json(&app.hub.index_read());
    ([(header::CONTENT_TYPE, "application/json")], s.to_string()).into_response()
}

/// One `view` event: the aggregates and the client's page, built under one read of the index.
fn view_frame(hub: &Hub, q: &Query) -> (u64, Bytes) {
    let ix = hub.index_read();
    let summary = hub.summary_json(&ix);
    let page = ix.page_json(q);
    let mut frame = Vec::with_capacity(summary.len() + page.len() + 48);
    frame.extend_from_slice(b"event: view\ndata: {\"summary\":");
    frame.extend_from_slice(summary.as_bytes());
    frame.extend_from_slice(b",\"page\":");
    frame.extend_from_slice(page.as_bytes());
    frame.extend_from_slice(b"}\n\n");
    (ix.version, Bytes::from(frame))
}

/// `GET /api/view?…`: one screen's stream: its page and the aggregates, sent again (at most
/// every `push_interval`) when the index changed. Bounded like `/api/stream`: the same cap on
/// clients, one frame queued at a time, a client that takes none for `send_timeout` dropped.
async fn view(
    State(app): State<App>,
    axum::extract::Query(q): axum::extract::Query<Query>,
    conn: Option<Extension<Connection>>,
) -> Response {
    let Some(permit) = app.stream_permit() else {
        return too_many_clients();
    };
    let (tx, rx) = mpsc::channel(1);
    let progress = Arc::new(Progress::new());
    let body = ClientBody {
        rx,
        progress: progress.clone(),
    };
    tokio::spawn(async move {
        let mut sent_version = None;
        let mut tick = tokio::time::interval(app.push_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => break,
            }
            if progress.stuck_for() > app.send_timeout {
                metrics::counter!("weir_dashboard_stream_dropped_total").increment(1);
                if let Some(c) = &conn {
                    c.0.close();
                }
                break;
            }
            let version = app.hub.index_read().version;
            let frame = if sent_version != Some(version) {
                let (v, frame) = view_frame(&app.hub, &q);
                sent_version = Some(v);
                frame
            } else if last_sent.elapsed() >= app.keep_alive {
                Bytes::from_static(b":\n\n")
            } else {
                continue;
            };
            // One frame queued at most: a client still reading the last one skips to the newest.
            match tx.try_send(frame) {
                Ok(()) => last_sent = Instant::now(),
                Err(mpsc::error::TrySendError::Full(_)) => sent_version = None,
                Err(mpsc::error::TrySendError::Closed(_)) => break,
            }
        }
        drop(permit);
    });
    sse_response(body)
}

/// `GET /api/stream`: one client's event stream. The client gets its own bounded queue, fed by
/// a task; the body it reads takes from that queue. A client that stops reading stops taking:
/// after `send_timeout` its connection is closed (what it had not read is freed), and its
/// browser reconnects to a fresh snapshot.
async fn stream(State(app): State<App>, conn: Option<Extension<Connection>>) -> Response {
    let Some(permit) = app.stream_permit() else {
        return too_many_clients();
    };
    let (tx, rx) = mpsc::channel(app.client_buffer);
    let progress = Arc::new(Progress::new());
    let body = ClientBody {
        rx,
        progress: progress.clone(),
    };
    tokio::spawn(async move {
        let conn = conn.map(|c| c.0);
        let dropped = feed(&app, tx, &progress, conn.as_ref()).await;
        if dropped {
            metrics::counter!("weir_dashboard_stream_dropped_total").increment(1);
            tracing::debug!("dashboard: dropped a stream client that stopped reading");
            if let Some(c) = conn {
                c.close();
            }
        }
        drop(permit);
    });
    sse_response(body)
}

/// Feeds one client until it goes away (false) or must be dropped for not reading (true).
async fn feed(
    app: &App,
    tx: mpsc::Sender<Bytes>,
    progress: &Progress,
    conn: Option<&Connection>,
) -> bool {
    let (mut rx, seq) = app.hub.subscribe();
    let mut pending: std::collections::VecDeque<Bytes> =
        app.hub.snapshot_frames(seq, conn).await.into();
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(app.send_timeout / 2));
    let mut last_sent = Instant::now();
    loop {
        if progress.stuck_for() > app.send_timeout {
            return true;
        }
        tokio::select! {
            permit = tx.reserve(), if !pending.is_empty() => {
                let Ok(permit) = permit else { return false };
                permit.send(pending.pop_front().expect("not empty"));
                last_sent = Instant::now();
            }
            // Take the next change only once the client's queue has room for it: meanwhile the
            // shared channel holds it, and a client that falls that far behind resyncs.
            r = rx.recv(), if pending.is_empty() => match r {
                Ok(frame) if frame == RESYNC => {
                    let (fresh, seq) = app.hub.subscribe();
                    rx = fresh;
                    pending.extend(app.hub.snapshot_frames(seq, conn).await);
                }
                Ok(frame) => pending.push_back(frame),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (fresh, seq) = app.hub.subscribe();
                    rx = fresh;
                    pending.extend(app.hub.snapshot_frames(seq, conn).await);
                }
                Err(broadcast::error::RecvError::Closed) => return false,
            },
            _ = tick.tick() => {
                if pending.is_empty() && last_sent.elapsed() >= app.keep_alive {
                    pending.push_back(Bytes::from_static(b":\n\n"));
                }
            }
            _ = tx.closed() => return false,
        }
    }
}

/// Whether the body of a stream is being read: when it last handed a frame on that was not
/// followed by a request for the next.
struct Progress {
    start: Instant,
    /// Milliseconds since `start` + 1 of the frame still out; 0: none.
    out_since: AtomicU64,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            start: Instant::now(),
            out_since: AtomicU64::new(0),
        }
    }
    fn stuck_for(&self) -> Duration {
        match self.out_since.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            t => self
                .start
                .elapsed()
                .saturating_sub(Duration::from_millis(t - 1)),
        }
    }
}

/// The body of one stream client: frames from its queue. hyper asks for the next frame once it
/// has room for it, so a frame it has not come back after is one the client has not read.
struct ClientBody {
    rx: mpsc::Receiver<Bytes>,
    progress: Arc<Progress>,
}

impl futures::Stream for ClientBody {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.progress.out_since.store(0, Ordering::Release);
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let now = self.progress.start.elapsed().as_millis() as u64 + 1;
                self.progress.out_since.store(now, Ordering::Release);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
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
        let cfg: DashboardConfig = serde_json::from_str(r#"{"address": "127.0.0.1:0"}"#).unwrap();
        let addr = spawn(cfg, hub).unwrap();
        let r = get(addr, "/api/viewers", "table gone").await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("table gone"), "{r}");
        let r = get(addr, "/api/stream", "table gone").await;
        assert!(r.contains("event: store-error"), "{r}");
        assert!(!r.contains("event: snapshot"), "{r}");
    }
}
