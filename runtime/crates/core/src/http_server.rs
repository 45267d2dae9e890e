//! How weir serves HTTP: the one server loop behind the collector, the dashboard and the
//! `/metrics` endpoint, with the limits a server facing the internet needs.
//!
//! * **Header timeout** (`header_timeout`): the request line and headers must arrive within this
//!   long, or the connection is closed; it is also how long an idle keep-alive connection may wait
//!   for its next request (hyper's `header_read_timeout`, which starts whenever hyper waits for a
//!   request head). A slowloris client that trickles its headers is cut off here.
//! * **Idle timeout** (`idle_timeout`): a connection on which no byte moves, in either direction,
//!   for this long is closed: a body trickled slower than that, or a client that stopped reading
//!   its response (the bytes it left unread would otherwise stay in weir's buffers).
//! * **Connections** (`max_connections`): at most this many connections are open at once; one
//!   more is accepted and closed at once (counted in `weir_http_connections_refused_total`), so a
//!   flood of connections costs weir nothing but the accept.
//! * **Sizes**: request line and headers together at most `max_header_bytes` (hyper answers 431);
//!   a request body at most `max_body_bytes` (tower-http's limit answers 413), where set.
//!
//! Every request carries its peer address as axum's `ConnectInfo<SocketAddr>` and the
//! [`Connection`] it came on, so a handler can close a connection whose client it gives up on (the
//! dashboard does that to a client that stops reading its event stream).
//!
//! Metrics (label `server`): `weir_http_connections` (open now),
//! `weir_http_connections_refused_total`, and `weir_http_connections_closed_total{reason}` for the
//! connections weir closed itself: `header_timeout`, `idle_timeout` or `dropped`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ByteSize, ConfigError, Origin};

/// `[….server]` of a component that serves HTTP (`[http.server]` for `/metrics`,
/// `[sink.dashboard.server]` for the dashboard). Every key is optional; an unset key takes the
/// server's default ([`ServerLimits::admin`] for the dashboard and `/metrics`,
/// [`ServerLimits::collector`] for the collector).
///
/// ```toml
/// [http.server]
/// header_timeout = "10s"      # request line + headers; also the wait for the next request
/// idle_timeout = "60s"        # no byte moving either way for this long: closed
/// max_connections = 64        # open at once; more are closed on accept
/// max_header_bytes = "16 KiB" # request line + headers (431 beyond)
/// max_body_bytes = "64 KiB"   # request body (413 beyond)
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub header_timeout: Option<config::Duration>,
    pub idle_timeout: Option<config::Duration>,
    pub max_connections: Option<usize>,
    pub max_header_bytes: Option<ByteSize>,
    pub max_body_bytes: Option<ByteSize>,
}

/// The limits one server runs with (a [`ServerConfig`] over the server's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    /// None: the server's handlers bound bodies themselves (the collector's `max_body_bytes`,
    /// which also writes the bad row).
    pub max_body_bytes: Option<usize>,
}

/// The smallest header limit accepted: a browser's request with a few cookies fits.
const MIN_HEADER_BYTES: u64 = 1 << 10;
/// hyper's read buffer (~400 KB) caps the head anyway; a larger setting would not take effect.
const MAX_HEADER_BYTES: u64 = 256 << 10;

impl ServerLimits {
    /// The collector's defaults. A connection that trickles its headers holds a read buffer of
    /// up to about twice `max_header_bytes`: 4,096 × 2 × 16 KiB = 128 MiB at worst, half the
    /// 256 MiB a sidecar is given. Tracker requests are POSTs of a few KiB, GETs under 8 KiB.
    pub fn collector() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_header_bytes: 16 << 10,
            max_body_bytes: None,
        }
    }

    /// The defaults of the dashboard and the `/metrics` endpoint: a few browsers, a scraper, a
    /// health check; GET requests only.
    pub fn admin() -> ServerLimits {
        ServerLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
            max_header_bytes: 16 << 10,
            max_body_bytes: Some(64 << 10),
        }
    }
}

impl ServerConfig {
    /// Checks the keys that are set (at `origin`, e.g. `http.server`).
    pub fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        let secs = |d: Option<config::Duration>| d.map(|d| d.0);
        for (key, d) in [
            ("header_timeout", secs(self.header_timeout)),
            ("idle_timeout", secs(self.idle_timeout)),
        ] {
            if let Some(d) = d.filter(|d| *d < Duration::from_millis(100)) {
                return Err(origin.error(
                    key,
                    format!(
                        "expected at least 100ms, found {}",
                        humantime::format_duration(d)
                    ),
                ));
            }
        }
        if self.max_connections == Some(0) {
            return Err(origin.error("max_connections", "expected at least 1, found 0"));
        }
        if let Some(b) = self.max_header_bytes {
            if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&b.0) {
                return Err(origin.error(
                    "max_header_bytes",
                    format!("expected between 1 KiB and 256 KiB, found {} bytes", b.0),
                ));
            }
        }
        if self.max_body_bytes == Some(ByteSize(0)) {
            return Err(origin.error("max_body_bytes", "expected at least 1 byte, found 0"));
        }
        Ok(())
    }

    /// These settings over `defaults`.
    pub fn limits(&self, defaults: ServerLimits) -> ServerLimits {
        ServerLimits {
            header_timeout: self.header_timeout.map_or(defaults.header_timeout, |d| d.0),
            idle_timeout: self.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            max_header_bytes: self
                .max_header_bytes
                .map_or(defaults.max_header_bytes, |b| b.0 as usize),
            max_body_bytes: self
                .max_body_bytes
                .map(|b| b.0 as usize)
                .or(defaults.max_body_bytes),
        }
    }
}

/// The connection a request came on (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Connection {
    close: CancellationToken,
    ended: CancellationToken,
}

impl Connection {
    /// Closes the connection now, whatever it is doing (its buffers are freed; the client sees
    /// the connection end).
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Whether the connection is still open.
    pub fn is_open(&self) -> bool {
        !self.ended.is_cancelled()
    }
}

/// Serves `router` on `listener` (`server` names it in logs and metrics) until `shutdown`;
/// then stops accepting, lets every connection finish its request, and returns once all are
/// closed.
pub async fn serve(
    server: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let router = match limits.max_body_bytes {
        Some(n) => router.layer(tower_http::limit::RequestBodyLimitLayer::new(n)),
        None => router,
    };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = metrics::gauge!("weir_http_connections", "server" => server);
    let refused = metrics::counter!("weir_http_connections_refused_total", "server" => server);
    let mut last_refusal_log: Option<Instant> = None;
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (all_closed, conn_rx) = watch::channel(());
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::error!(server, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.increment(1);
            if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_refusal_log = Some(Instant::now());
                tracing::warn!(
                    server,
                    max_connections = limits.max_connections,
                    "connection limit reached: closing new connections (counted in \
                     weir_http_connections_refused_total)"
                );
            }
            drop(tcp);
            continue;
        };
        open.increment(1.0);
        let router = router.clone();
        let shutdown = shutdown.clone();
        let conn_rx = conn_rx.clone();
        let open = open.clone();
        tokio::spawn(async move {
            connection(server, tcp, remote, router, limits, shutdown).await;
            open.decrement(1.0);
            drop(slot);
            drop(conn_rx);
        });
    }
    drop(listener);
    drop(conn_rx);
    all_closed.closed().await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

/// Serves one connection until it ends, times out, is closed by a handler or, after `shutdown`,
/// finishes its request.
async fn connection(
    server: &'static str,
    tcp: TcpStream,
    remote: SocketAddr,
    router: Router,
    limits: ServerLimits,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let handle = Connection {
        close: CancellationToken::new(),
        ended: CancellationToken::new(),
    };
    let _ended = handle.ended.clone().drop_guard();
    let service = Service {
        router,
        remote,
        connection: handle.clone(),
    };
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: activity.clone(),
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let closed = |reason: &'static str| {
        metrics::counter!("weir_http_connections_closed_total", "server" => server, "reason" => reason)
            .increment(1);
    };
    let mut draining = false;
    loop {
        let idle_at = activity.last() + limits.idle_timeout;
        tokio::select! {
            r = conn.as_mut() => {
                match r {
                    Err(e) if e.is_timeout() => closed("header_timeout"),
                    Err(e) => tracing::debug!(server, error = %e, "connection ended"),
                    Ok(()) => {}
                }
                return;
            }
            _ = handle.close.cancelled() => {
                closed("dropped");
                return;
            }
            _ = tokio::time::sleep_until(idle_at) => {
                if activity.last() + limits.idle_timeout <= Instant::now() {
                    closed("idle_timeout");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The router as a hyper service, adding the peer address and the connection to each request.
#[derive(Clone)]
struct Service {
    router: Router,
    remote: SocketAddr,
    connection: Connection,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Service {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(ConnectInfo(self.remote));
        req.extensions_mut().insert(self.connection.clone());
        tower_service::Service::call(&mut self.router.clone(), req)
    }
}

/// When bytes last moved on a connection.
struct Activity {
    start: Instant,
    /// Milliseconds since `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that notes every read or write that moves bytes.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
