//! `collector`: an HTTP endpoint that speaks the Snowplow tracker protocol, as the Snowplow
//! collector does, and emits each event as an enriched TSV line (what Snowplow Enrich would
//! write), so collector traffic and Enrich output look the same downstream.
//!
//! * `POST /com.snowplowanalytics.snowplow/tp2` (batched `payload_data`) answers `ok`;
//!   `GET /i` (and `/ice.png`, `GET /…/tp2`) answers a 1×1 GIF; custom paths map onto these
//!   (`paths`). CORS preflights are answered with the request's Origin and credentials allowed;
//!   every tracker response carries the same CORS headers.
//! * The network user id comes from the `nuid` query parameter, else the `sp` cookie, else a new
//!   UUID, and is set back as the cookie (name, domain, expiry, flags configurable; `enabled =
//!   false` turns it off). Only a plain id (1 to 64 letters, digits, `-` or `_`: a UUID is one)
//!   is taken from the request; anything else is ignored as if absent, so what a request sends
//!   can never add attributes to the `Set-Cookie` answer. `SP-Anonymous` requests get no
//!   cookie, no IP and an all-zero id.
//! * The client is the peer address of the connection. Only when the peer is in
//!   `trusted_proxies` is the forwarding header (`forwarded_header`: `X-Forwarded-For` or
//!   `Forwarded`) believed: walking it from the right (the hop nearest weir), trusted proxies are
//!   skipped and the first address that is not one is the client. That address is what the
//!   per-client limits count and what the event records as `user_ipaddress` (behind one load
//!   balancer, the first `X-Forwarded-For` address, as the Snowplow collector records it; a
//!   value the client itself put in front of it is not believed). IPv6 clients are limited by
//!   their /64 network, which one host can otherwise walk through.
//! * `/health` answers `ok`, `/sink-health` answers 503 while the request queue is full,
//!   `/robots.txt` disallows crawlers.
//!
//! **Hand-off.** Handlers convert their request in parallel, then queue it (a bounded channel) to
//! one batching task that owns the pipeline's [`Emitter`]. That task takes every request waiting,
//! flushes them as one batch into the pipeline's bounded queue, and only then lets their handlers
//! answer: a 200 means the events are in the pipeline. It flushes as soon as nothing more is
//! waiting, so batches grow with load and latency stays low when idle.
//!
//! **Limits.** A body over `max_body_bytes` is refused with 413 (a `size_violation` bad row);
//! more than `max_events_per_request` events with 413; a query string over `max_query_bytes` on
//! a POST with a body (its parameters would be copied into every event) with 414. The memory a
//! request holds, its body and the enriched events it expands to, counts against
//! `max_inflight_bytes` while the request is in flight: the body as soon as its length is known,
//! the events as they are produced. One client may hold at most `max_inflight_per_client_bytes`
//! of it (default an eighth) and `max_inflight_per_client` requests; beyond its share a client
//! gets 429, beyond the whole budget (or `queue` waiting requests) anyone gets 503 (trackers
//! retry), so memory does not grow with the requests and one client cannot starve the others.
//! A request that alone would expand past a client's share gets 413 and a bad row. All these
//! refusals happen before or while events are produced, never after: nothing larger than the
//! budget is built. A request that is not a valid tracker-protocol payload gets 400 and a
//! `collector_payload_format_violation` bad row holding the request as a base64 Thrift
//! `CollectorPayload`; none of its events are emitted.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use cookie::time::{self, OffsetDateTime, PrimitiveDateTime};
use cookie::Cookie;
use http_body_util::BodyExt;
use ipnet::IpNet;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::{Emitter, Source, SourceConfig, SourceContext, SourceType};
use crate::config::{self, ByteSize, ConfigError, Origin};
use crate::record::{Failed, FailureKind, Record};
use crate::setup::BuildContext;
use crate::snowplow::collector_payload::{CollectorPayload, SCHEMA};
use crate::snowplow::now_ms;
use crate::snowplow::tracker::{self, TP1_PATHS, TP2_PATH};
use crate::transforms::sp_collector_payload::{default_max_query, enrich_options};

/// ```toml
/// [source]
/// type = "collector"
/// address = "0.0.0.0:9090"
/// paths = { "/com.acme/track" = "/com.snowplowanalytics.snowplow/tp2" }
/// max_body_bytes = "1 MiB"
/// max_events_per_request = 1000
/// max_query_bytes = "8 KiB"
/// max_inflight_bytes = "64 MiB"
/// max_inflight_per_client_bytes = "8 MiB"
/// max_inflight_per_client = 64
/// trusted_proxies = ["10.0.0.0/8"]
/// forwarded_header = "X-Forwarded-For"
/// queue = 1024
/// read_timeout = "10s"
/// cors_max_age = "1h"
/// anon_ip_octets = 0
/// anon_ipv6_segments = 0
///
/// [source.cookie]
/// enabled = true
/// name = "sp"
/// expiration = "365days"
/// domains = ["example.com"]
/// fallback_domain = "example.com"
/// secure = true
/// http_only = true
/// same_site = "None"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Address to listen on (port 0 picks a free port; the log says which).
    #[serde(default = "default_address")]
    pub address: SocketAddr,
    /// Custom paths and the standard path each stands for (like the Snowplow collector's
    /// `paths`), e.g. `"/com.acme/track" = "/com.snowplowanalytics.snowplow/tp2"`.
    #[serde(default)]
    pub paths: BTreeMap<String, String>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: ByteSize,
    #[serde(default = "default_max_events")]
    pub max_events_per_request: usize,
    /// Longest query string merged into the events of a POSTed body (414 beyond).
    #[serde(default = "default_max_query")]
    pub max_query_bytes: ByteSize,
    /// Bytes of bodies and of the events they expand to that requests may hold at once.
    #[serde(default = "default_inflight_bytes")]
    pub max_inflight_bytes: ByteSize,
    /// The share of `max_inflight_bytes` one client may hold (default: an eighth of it, at
    /// least `max_body_bytes`).
    #[serde(default)]
    pub max_inflight_per_client_bytes: Option<ByteSize>,
    /// Requests one client may have in flight (0: no limit).
    #[serde(default = "default_per_client")]
    pub max_inflight_per_client: usize,
    /// Peers (CIDR ranges or addresses) whose `forwarded_header` names the client; from any
    /// other peer the header is ignored. None by default: the peer is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The header trusted proxies name the client in: `X-Forwarded-For` or `Forwarded`.
    #[serde(default)]
    pub forwarded_header: ForwardedHeader,
    /// Requests waiting to be handed to the pipeline before new ones get 503.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Longest time to receive a request body.
    #[serde(default = "default_read_timeout")]
    pub read_timeout: config::Duration,
    /// How long browsers may cache a CORS preflight answer.
    #[serde(default = "default_cors_max_age")]
    pub cors_max_age: config::Duration,
    #[serde(default)]
    pub anon_ip_octets: u8,
    #[serde(default)]
    pub anon_ipv6_segments: u8,
    #[serde(default)]
    pub cookie: CookieConfig,
    /// `[source.server]`: header and idle timeouts, connection cap, header size (see
    /// `http_server`). Bodies are bounded by `max_body_bytes` above.
    #[serde(default)]
    pub server: crate::http_server::ServerConfig,
}

/// `[source.cookie]`: the network user id cookie (Snowplow's third-party `sp` cookie).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CookieConfig {
    pub enabled: bool,
    pub name: String,
    pub expiration: config::Duration,
    /// Cookie domains: the first that the request's Origin host equals or ends with `.domain`.
    pub domains: Vec<String>,
    /// The domain when none of `domains` matches (none: a host-only cookie).
    pub fallback_domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    pub same_site: SameSite,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            enabled: true,
            name: "sp".into(),
            expiration: config::Duration(Duration::from_secs(365 * 24 * 3600)),
            domains: Vec::new(),
            fallback_domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::None,
        }
    }
}

/// The cookie's `SameSite` attribute (`None`, `Lax` or `Strict`, in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

impl TryFrom<String> for SameSite {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(SameSite::None),
            "lax" => Ok(SameSite::Lax),
            "strict" => Ok(SameSite::Strict),
            _ => Err(format!(
                "expected one of `None`, `Lax`, `Strict`, found `{s}`"
            )),
        }
    }
}

impl From<SameSite> for cookie::SameSite {
    fn from(s: SameSite) -> Self {
        match s {
            SameSite::None => cookie::SameSite::None,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::Strict => cookie::SameSite::Strict,
        }
    }
}

/// The header that trusted proxies name the client in (`X-Forwarded-For` or `Forwarded`, in
/// any case). Only one is read, so a client cannot slip its own in beside the proxy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

impl TryFrom<String> for ForwardedHeader {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(ForwardedHeader::XForwardedFor),
            "forwarded" => Ok(ForwardedHeader::Forwarded),
            _ => Err(format!(
                "expected `X-Forwarded-For` or `Forwarded`, found `{s}`"
            )),
        }
    }
}

fn default_address() -> SocketAddr {
    "127.0.0.1:9090".parse().expect("a valid address")
}
fn default_max_body() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_max_events() -> usize {
    1000
}
fn default_inflight_bytes() -> ByteSize {
    ByteSize(64 << 20)
}
fn default_per_client() -> usize {
    64
}
fn default_queue() -> usize {
    1024
}
fn default_read_timeout() -> config::Duration {
    config::Duration(Duration::from_secs(10))
}
fn default_cors_max_age() -> config::Duration {
    config::Duration(Duration::from_secs(3600))
}

impl SourceType for CollectorConfig {
    const TYPE: &'static str = "collector";
}

#[async_trait]
impl SourceConfig for CollectorConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        self.options(origin)?;
        self.proxies(origin)?;
        let server = origin.child("server");
        self.server.check(&server)?;
        if let Some(b) = self.server.max_body_bytes {
            return Err(server.error(
                "max_body_bytes",
                format!(
                    "expected no body limit here (the collector's is `source.max_body_bytes`, which also writes the bad row), found {} bytes",
                    b.0
                ),
            ));
        }
        for (from, to) in &self.paths {
            if !from.starts_with('/') {
                return Err(origin.error(
                    "paths",
                    format!("expected a path starting with `/`, found `{from}`"),
                ));
            }
            if to != TP2_PATH && !TP1_PATHS.contains(&to.as_str()) {
                return Err(origin.error(
                    &format!("paths.{from}"),
                    format!("expected `{TP2_PATH}` or `/i`, found `{to}`"),
                ));
            }
        }
        for (key, ok, what) in [
            (
                "max_body_bytes",
                self.max_body_bytes.0 > 0,
                "at least 1 byte",
            ),
            ("queue", self.queue > 0, "at least 1"),
            (
                "max_inflight_bytes",
                self.max_inflight_bytes.0 >= self.max_body_bytes.0,
                "at least max_body_bytes",
            ),
            (
                "max_inflight_bytes",
                self.max_inflight_bytes.0 <= u32::MAX as u64,
                "at most 4 GiB",
            ),
            (
                "max_inflight_per_client_bytes",
                self.max_inflight_per_client_bytes
                    .is_none_or(|b| b.0 >= self.max_body_bytes.0),
                "at least max_body_bytes",
            ),
            (
                "max_inflight_per_client_bytes",
                self.max_inflight_per_client_bytes
                    .is_none_or(|b| b.0 < self.max_inflight_bytes.0),
                "less than max_inflight_bytes",
            ),
        ] {
            if !ok {
                return Err(origin.error(
                    key,
                    format!(
                        "expected {what}, found {}",
                        match key {
                            "queue" => self.queue.to_string(),
                            "max_body_bytes" => self.max_body_bytes.0.to_string(),
                            "max_inflight_per_client_bytes" => format!(
                                "{} bytes",
                                self.max_inflight_per_client_bytes.map_or(0, |b| b.0)
                            ),
                            _ => format!("{} bytes", self.max_inflight_bytes.0),
                        }
                    ),
                ));
            }
        }
        if self.cookie.name.is_empty()
            || !self
                .cookie
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        {
            return Err(origin.error(
                "cookie.name",
                format!(
                    "expected a cookie name (letters, digits, -_.), found `{}`",
                    self.cookie.name
                ),
            ));
        }
        Ok(())
    }

    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let origin = Origin::new("", "source");
        let options = self.options(&origin)?;
        let proxies = self.proxies(&origin)?;
        Ok(Box::new(Collector {
            config: self.clone(),
            options,
            proxies,
        }))
    }
}

impl CollectorConfig {
    fn options(&self, origin: &Origin) -> Result<tracker::Options, ConfigError> {
        enrich_options(
            origin,
            self.anon_ip_octets,
            self.anon_ipv6_segments,
            self.max_events_per_request,
            self.max_query_bytes,
        )
        .map_err(|mut e| {
            if e.key.ends_with("max_events") {
                e.key = origin.child("max_events_per_request").key;
            }
            e
        })
    }

    /// `trusted_proxies` as networks (an address alone is a network of one).
    fn proxies(&self, origin: &Origin) -> Result<Vec<IpNet>, ConfigError> {
        self.trusted_proxies
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let p = p.trim();
                p.parse::<IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        origin.error(
                            &format!("trusted_proxies[{i}]"),
                            format!(
                                "expected an address or CIDR range such as `10.0.0.0/8` or \
                                 `2001:db8::/32`, found `{p}`"
                            ),
                        )
                    })
            })
            .collect()
    }

    /// The bytes one client may hold: `max_inflight_per_client_bytes`, else an eighth of
    /// `max_inflight_bytes` but at least `max_body_bytes` (so a client can always send one).
    fn per_client_bytes(&self) -> usize {
        let total = self.max_inflight_bytes.0;
        self.max_inflight_per_client_bytes
            .map_or((total / 8).max(self.max_body_bytes.0.min(total)), |b| b.0) as usize
    }
}

/// `v_collector` of the events this source collects.
pub const COLLECTOR_NAME: &str = concat!("weir-collector-", env!("CARGO_PKG_VERSION"));

/// The 1×1 transparent GIF the Snowplow collector answers `GET /i` with.
const PIXEL: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0xf0, 0x00, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x21, 0xf9, 0x04, 0x05, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

const ANONYMOUS_NUID: &str = "00000000-0000-0000-0000-000000000000";

struct Collector {
    config: CollectorConfig,
    options: tracker::Options,
    proxies: Vec<IpNet>,
}

/// One request's outcome on its way to the pipeline.
struct Job {
    records: Vec<Record>,
    failed: Option<Failed>,
    done: oneshot::Sender<()>,
}

struct Shared {
    config: CollectorConfig,
    options: tracker::Options,
    tx: mpsc::Sender<Job>,
    /// Bytes of request bodies and their events that may be held at once.
    budget: Arc<Semaphore>,
    /// The bytes of `budget` one client may hold.
    per_client_bytes: usize,
    /// What each client has in flight, by [`client_key`].
    clients: Mutex<HashMap<IpAddr, Usage>>,
    /// `trusted_proxies`.
    proxies: Vec<IpNet>,
}

/// One client's requests and bytes in flight.
#[derive(Debug, Default)]
struct Usage {
    requests: usize,
    bytes: usize,
}

#[async_trait]
impl Source for Collector {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.config.address)
            .await
            .with_context(|| format!("source.address {}: cannot listen", self.config.address))?;
        let bound = listener.local_addr()?;
        tracing::info!(address = %bound, "collector listening");
        if let Some(cb) = &ctx.on_listen {
            cb(bound);
        }
        let (tx, mut rx) = mpsc::channel::<Job>(self.config.queue);
        let shared = Arc::new(Shared {
            budget: Arc::new(Semaphore::new(self.config.max_inflight_bytes.0 as usize)),
            per_client_bytes: self.config.per_client_bytes(),
            config: self.config.clone(),
            options: self.options,
            tx,
            clients: Mutex::new(HashMap::new()),
            proxies: self.proxies,
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        drop(shared);
        // Header and idle timeouts, a connection cap, header size (see `http_server`).
        let mut server = tokio::spawn(crate::http_server::serve(
            "collector",
            listener,
            app,
            self.config
                .server
                .limits(crate::http_server::ServerLimits::collector()),
            ctx.shutdown.clone(),
        ));

        // Hand requests to the pipeline until the server has stopped (on shutdown it finishes
        // the requests it has; a client slower than the grace period is cut off).
        let grace = async {
            ctx.shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        tokio::pin!(grace);
        let emitter = &mut ctx.emitter;
        loop {
            let job = tokio::select! {
                biased;
                job = rx.recv() => job,
                _ = &mut server => break,
                _ = &mut grace => break,
            };
            let Some(job) = job else { break };
            hand_off(job, &mut rx, emitter).await?;
        }
        server.abort();
        // Take what is still queued; later requests find the queue closed and get 503.
        rx.close();
        while let Some(job) = rx.recv().await {
            hand_off(job, &mut rx, emitter).await?;
        }
        emitter.flush().await?;
        tracing::info!("collector stopped");
        Ok(())
    }
}

/// Puts `first` and every request already waiting into the open batch, flushing whenever it is
/// full and once at the end; each request is answered after the flush that holds its last event.
async fn hand_off(
    first: Job,
    rx: &mut mpsc::Receiver<Job>,
    emitter: &mut Emitter,
) -> anyhow::Result<()> {
    let mut flushed_with_next: Vec<oneshot::Sender<()>> = Vec::new();
    let mut next = Some(first);
    while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
        for r in job.records {
            if emitter.push(r) {
                emitter.flush().await?;
                answer(&mut flushed_with_next);
            }
        }
        if let Some(f) = job.failed {
            if emitter.push_failed(f) {
                emitter.flush().await?;
                answer(&mut flushed_with_next);
            }
        }
        flushed_with_next.push(job.done);
    }
    emitter.flush().await?;
    answer(&mut flushed_with_next);
    Ok(())
}

fn answer(waiting: &mut Vec<oneshot::Sender<()>>) {
    for done in waiting.drain(..) {
        let _ = done.send(());
    }
}

/// A request's claim on the in-flight budget and on its client's share of it, released when
/// dropped.
struct Lease<'a> {
    shared: &'a Shared,
    client: IpAddr,
    bytes: usize,
    permit: Option<OwnedSemaphorePermit>,
}

/// Why a lease could not grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The client holds too many requests or bytes already (429).
    Client,
    /// The whole budget is taken (503).
    Busy,
    /// This request alone needs more than a client's share (413).
    TooLarge { need: usize, limit: usize },
}

impl<'a> Lease<'a> {
    /// Counts one more request of `client`, unless it has `max_inflight_per_client` already.
    fn open(shared: &'a Shared, client: IpAddr) -> Result<Self, Refusal> {
        let limit = shared.config.max_inflight_per_client;
        let mut clients = shared
            .clients
            .lock()
            .expect("collector clients lock poisoned");
        let usage = clients.entry(client).or_default();
        if limit > 0 && usage.requests >= limit {
            return Err(Refusal::Client);
        }
        usage.requests += 1;
        Ok(Lease {
            shared,
            client,
            bytes: 0,
            permit: None,
        })
    }

    /// Grows the claim to `total` bytes, if the client's share and the budget allow it.
    fn grow_to(&mut self, total: usize) -> Result<(), Refusal> {
        let Some(extra) = total.checked_sub(self.bytes).filter(|&n| n > 0) else {
            return Ok(());
        };
        let limit = self.shared.per_client_bytes;
        if total > limit {
            return Err(Refusal::TooLarge { need: total, limit });
        }
        let mut clients = self
            .shared
            .clients
            .lock()
            .expect("collector clients lock poisoned");
        let usage = clients
            .get_mut(&self.client)
            .expect("a lease's client is counted");
        if usage.bytes + extra > limit {
            return Err(Refusal::Client);
        }
        let permit = u32::try_from(extra)
            .ok()
            .and_then(|n| self.shared.budget.clone().try_acquire_many_owned(n).ok())
            .ok_or(Refusal::Busy)?;
        usage.bytes += extra;
        drop(clients);
        self.bytes = total;
        match &mut self.permit {
            Some(p) => p.merge(permit),
            None => self.permit = Some(permit),
        }
        Ok(())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut clients = self
            .shared
            .clients
            .lock()
            .expect("collector clients lock poisoned");
        if let Some(usage) = clients.get_mut(&self.client) {
            usage.requests -= 1;
            usage.bytes -= self.bytes;
            if usage.requests == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

fn count(outcome: &'static str) {
    metrics::counter!("weir_collector_requests_total", "outcome" => outcome).increment(1);
}

/// The one handler: routes by method and path, since the tracker paths are configurable.
async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let method = req.method().clone();
    let raw_path = req.uri().path().to_string();
    let path = shared
        .config
        .paths
        .get(&raw_path)
        .map_or(raw_path.as_str(), String::as_str);
    let tracker_path = path == TP2_PATH || TP1_PATHS.contains(&path);
    match (&method, path) {
        (&Method::OPTIONS, _) => return preflight(&shared, req.headers()),
        (&Method::GET, "/health") => return text(StatusCode::OK, "ok"),
        (&Method::GET, "/sink-health") => {
            return if shared.tx.capacity() == 0 {
                text(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            } else {
                text(StatusCode::OK, "ok")
            }
        }
        (&Method::GET, "/robots.txt") => {
            return text(StatusCode::OK, "User-agent: *\nDisallow: /\n")
        }
        (&Method::GET | &Method::HEAD, p) if tracker_path => {
            let _ = p;
        }
        (&Method::POST, TP2_PATH) => {}
        (_, _) if tracker_path => {
            count("method_not_allowed");
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        _ => {
            count("not_found");
            return text(StatusCode::NOT_FOUND, "not found");
        }
    }
    let path = path.to_string();
    track(shared, peer, req, path).await
}

/// Handles one tracker request (GET pixel or POST batch).
async fn track(shared: Arc<Shared>, peer: SocketAddr, req: Request, path: String) -> Response {
    let pixel = req.method() != Method::POST;
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let anonymous = headers.contains_key("sp-anonymous");
    let client_ip = client_address(
        peer.ip(),
        headers,
        &shared.proxies,
        shared.config.forwarded_header,
    );
    let cors = cors_headers(headers);

    // One client may hold only so many requests, and so many bytes, in flight.
    let mut lease = match Lease::open(&shared, client_key(client_ip)) {
        Ok(l) => l,
        Err(_) => {
            count("throttled");
            return busy(StatusCode::TOO_MANY_REQUESTS, cors);
        }
    };

    // Receive the body within the size limit and the memory budget.
    let max = shared.config.max_body_bytes.0 as usize;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let ip_text = if anonymous {
        String::new()
    } else {
        client_ip.to_string()
    };
    let mut request = RequestInfo {
        parts: &parts,
        path: &path,
        ip: &ip_text,
        anonymous,
        nuid: String::new(),
    };
    if let Some(n) = declared.filter(|&n| n > max) {
        return too_large(&shared, &request, n, Bytes::new(), cors).await;
    }
    // While the queue to the pipeline is full, refuse before reading and parsing the body.
    if shared.tx.capacity() == 0 {
        count("busy");
        let mut r = busy(StatusCode::SERVICE_UNAVAILABLE, cors);
        if !pixel {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        return r;
    }
    let need = if pixel { 0 } else { declared.unwrap_or(max) };
    if let Err(refusal) = lease.grow_to(need) {
        let mut r = refused(refusal, cors);
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let body = if pixel {
        Bytes::new()
    } else {
        match tokio::time::timeout(
            shared.config.read_timeout.0,
            read_body(body, max, declared.unwrap_or(0)),
        )
        .await
        {
            Ok(Ok(Ok(b))) => b,
            Ok(Ok(Err((head, total)))) => {
                return too_large(&shared, &request, total, head, cors).await
            }
            Ok(Err(_)) => {
                count("aborted");
                return text(StatusCode::BAD_REQUEST, "could not read the request body");
            }
            Err(_) => {
                count("timeout");
                return text(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body not received in time",
                );
            }
        }
    };

    // The network user id: `nuid` parameter, else the cookie, else a new one; only a plain id
    // is taken from the request.
    request.nuid = if anonymous {
        ANONYMOUS_NUID.to_string()
    } else {
        query_param(parts.uri.query(), "nuid")
            .filter(|v| plain_id(v))
            .or_else(|| cookie_value(headers, &shared.config.cookie.name).filter(|v| plain_id(v)))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    };
    let body_text = match std::str::from_utf8(&body) {
        Ok(s) => s,
        Err(e) => {
            let reason = format!(
                "the body is not UTF-8 (invalid at byte {})",
                e.valid_up_to()
            );
            let p = request.payload(None);
            return reject(
                &shared,
                &request,
                p,
                "body",
                reason,
                StatusCode::BAD_REQUEST,
                cors,
            )
            .await;
        }
    };
    let payload = request.payload(Some(body_text).filter(|b| !b.is_empty()));

    // The events, produced within the lease: the body stays counted, and the buffer of events
    // is counted as it grows (as a Vec grows: to the larger of twice its size and what it needs).
    let mut out = Vec::with_capacity(body_text.len() * 2 + 1024);
    let base = lease.bytes.max(body.len());
    let mut reserved = out.capacity();
    let mut refusal = lease.grow_to(base + reserved).err();
    let mut ends = Vec::new();
    let etl_ms = now_ms();
    let converted = match refusal {
        Some(_) => Ok(()),
        None => tracker::convert_within(
            &payload,
            &shared.options,
            etl_ms,
            &mut out,
            &mut ends,
            &mut |bytes| {
                if bytes > reserved {
                    let grown = bytes.max(reserved.saturating_mul(2));
                    if let Err(r) = lease.grow_to(base + grown) {
                        refusal = Some(r);
                        return Err("no room in the in-flight budget".into());
                    }
                    reserved = grown;
                }
                Ok(())
            },
        ),
    };
    if let Some(r) = refusal {
        drop(out);
        let Refusal::TooLarge { limit, .. } = r else {
            return refused(r, cors);
        };
        let field = if payload.body.is_some() {
            "body"
        } else {
            "querystring"
        };
        let reason = format!(
            "the request expands to more than {limit} bytes of events, a client's share of the \
             in-flight budget (max_inflight_per_client_bytes)"
        );
        return reject(
            &shared,
            &request,
            payload,
            field,
            reason,
            StatusCode::PAYLOAD_TOO_LARGE,
            cors,
        )
        .await;
    }
    if let Err(e) = converted {
        drop(out);
        let status = match e.limit {
            Some(tracker::Limit::Events | tracker::Limit::Output) => StatusCode::PAYLOAD_TOO_LARGE,
            Some(tracker::Limit::Query) => StatusCode::URI_TOO_LONG,
            None => StatusCode::BAD_REQUEST,
        };
        return reject(
            &shared,
            &request,
            payload,
            e.field,
            e.to_string(),
            status,
            cors,
        )
        .await;
    }
    let buf = Bytes::from(out);
    let mut start = 0;
    let records = ends
        .iter()
        .map(|&end| {
            let r = Record::new(buf.slice(start..end));
            start = end;
            r
        })
        .collect();
    if let Err(status) = submit(&shared, records, None).await {
        return busy(status, cors);
    }
    count("ok");
    let mut resp = if pixel {
        let mut r = Response::new(Body::from(Bytes::from_static(PIXEL)));
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/gif"));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        r
    } else {
        let mut r = Response::new(Body::from("ok"));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        );
        r
    };
    let h = resp.headers_mut();
    h.extend(cors);
    if !anonymous {
        if let Some(c) = set_cookie(&shared.config.cookie, headers, &request.nuid) {
            h.insert(header::SET_COOKIE, c);
        }
    }
    resp
}

/// What a request contributes to its `CollectorPayload`.
struct RequestInfo<'a> {
    parts: &'a axum::http::request::Parts,
    path: &'a str,
    ip: &'a str,
    anonymous: bool,
    nuid: String,
}

impl<'a> RequestInfo<'a> {
    fn header(&self, name: header::HeaderName) -> Option<&'a str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The request as the Snowplow collector records it (headers only for bad rows).
    fn payload<'s>(&'s self, body: Option<&'s str>) -> CollectorPayload<'s> {
        CollectorPayload {
            schema: SCHEMA.into(),
            ip_address: self.ip.into(),
            timestamp: now_ms(),
            encoding: "UTF-8".into(),
            collector: COLLECTOR_NAME.into(),
            user_agent: self.header(header::USER_AGENT).map(Into::into),
            referer_uri: self.header(header::REFERER).map(Into::into),
            path: Some(self.path.into()),
            querystring: self.parts.uri.query().map(Into::into),
            body: body.map(Into::into),
            headers: Vec::new(),
            content_type: self.header(header::CONTENT_TYPE).map(Into::into),
            hostname: self
                .header(header::HOST)
                .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).into()),
            network_user_id: Some(self.nuid.as_str().into())
                .filter(|n: &std::borrow::Cow<'_, str>| !n.is_empty()),
        }
    }

    /// `Name: value` lines for a bad row's payload (without forwarding headers and cookies for
    /// anonymous requests, as the Snowplow collector does).
    fn header_lines(&self) -> Vec<std::borrow::Cow<'a, str>> {
        self.parts
            .headers
            .iter()
            .filter(|(name, _)| {
                !(self.anonymous
                    && matches!(name.as_str(), "x-forwarded-for" | "x-real-ip" | "cookie"))
            })
            .map(|(name, v)| format!("{}: {}", name, String::from_utf8_lossy(v.as_bytes())).into())
            .collect()
    }
}

/// Reads a body up to `max` bytes: `Err((first bytes, bytes seen))` when it is longer.
async fn read_body(
    mut body: Body,
    max: usize,
    hint: usize,
) -> Result<Result<Bytes, (Bytes, usize)>, axum::Error> {
    let mut buf = BytesMut::with_capacity(hint.min(max));
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max {
            let total = buf.len() + data.len();
            buf.truncate(64 << 10);
            return Ok(Err((buf.freeze(), total)));
        }
        buf.extend_from_slice(&data);
    }
    Ok(Ok(buf.freeze()))
}

/// Queues a request's records (or its bad row) and waits until they are in the pipeline.
async fn submit(
    shared: &Shared,
    records: Vec<Record>,
    failed: Option<Failed>,
) -> Result<(), StatusCode> {
    let (done, answered) = oneshot::channel();
    let job = Job {
        records,
        failed,
        done,
    };
    if shared.tx.try_send(job).is_err() {
        count("busy");
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    answered.await.map_err(|_| {
        count("stopping");
        StatusCode::SERVICE_UNAVAILABLE
    })
}

/// 400 (or 413): the request becomes a collector payload format violation bad row.
async fn reject(
    shared: &Shared,
    request: &RequestInfo<'_>,
    mut payload: CollectorPayload<'_>,
    field: &'static str,
    reason: String,
    status: StatusCode,
    cors: HeaderMap,
) -> Response {
    payload.headers = request.header_lines();
    let encoded = base64::engine::general_purpose::STANDARD.encode(payload.to_bytes());
    let failed = Failed {
        record: Record::new(encoded),
        kind: FailureKind::CollectorPayloadFormat { field },
        component: "source (collector)".into(),
        reason: reason.clone(),
    };
    if let Err(status) = submit(shared, Vec::new(), Some(failed)).await {
        return busy(status, cors);
    }
    count("bad");
    let mut r = text(status, &reason);
    r.headers_mut().extend(cors);
    r
}

/// 413: the body is over the limit; a size violation bad row keeps its first bytes.
async fn too_large(
    shared: &Shared,
    request: &RequestInfo<'_>,
    total: usize,
    head: Bytes,
    cors: HeaderMap,
) -> Response {
    let limit = shared.config.max_body_bytes.0 as usize;
    let failed = Failed {
        record: Record::new(head),
        kind: FailureKind::Oversized {
            actual: total,
            limit,
        },
        component: "source (collector)".into(),
        reason: format!(
            "{} {} from {}: body of {total} bytes exceeds the limit of {limit} bytes (max_body_bytes)",
            request.parts.method, request.path, request.ip
        ),
    };
    if let Err(status) = submit(shared, Vec::new(), Some(failed)).await {
        return busy(status, cors);
    }
    count("too_large");
    let mut r = text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    r.headers_mut().extend(cors);
    // The rest of the body is not read: close the connection rather than drain it.
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn text(status: StatusCode, body: &str) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    r
}

/// 503 or 429 with `Retry-After`, so trackers try again.
fn busy(status: StatusCode, cors: HeaderMap) -> Response {
    let mut r = text(status, "busy, retry later");
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r.headers_mut().extend(cors);
    r
}

/// The answer to a request whose lease could not grow: 429 when its client holds its share,
/// 503 when the budget is taken, 413 when it alone needs more than a client's share.
fn refused(r: Refusal, cors: HeaderMap) -> Response {
    match r {
        Refusal::Client => {
            count("throttled");
            busy(StatusCode::TOO_MANY_REQUESTS, cors)
        }
        Refusal::Busy => {
            count("busy");
            busy(StatusCode::SERVICE_UNAVAILABLE, cors)
        }
        Refusal::TooLarge { need, limit } => {
            count("too_large");
            let mut r = text(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "the request needs {need} bytes, more than a client's share of {limit} bytes"
                ),
            );
            r.headers_mut().extend(cors);
            r
        }
    }
}

// CORS, answered as the Snowplow collector answers it: every tracker response carries
// `Access-Control-Allow-Origin` (the request's first Origin, else `*`) with credentials allowed,
// and an OPTIONS request to any path is a preflight. tower-http's `CorsLayer` does not reproduce
// this: it refuses `*` together with credentials (so a request without Origin would get no
// header), echoes the whole Origin header rather than its first origin, lower-cases the allowed
// headers (`content-type,sp-anonymous`), and adds its headers to every answer of the service it
// wraps, where these go only on the tracker's answers (not on `/health` or a 404).

/// `Access-Control-Allow-Origin` (the request's Origin, else `*`) and `-Allow-Credentials`.
fn cors_headers(req: &HeaderMap) -> HeaderMap {
    let mut h = HeaderMap::new();
    let origin = req
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| HeaderValue::from_str(v).ok())
        .unwrap_or(HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    h
}

/// The answer to a CORS preflight (`OPTIONS` on any path).
fn preflight(shared: &Shared, req: &HeaderMap) -> Response {
    let mut r = Response::new(Body::empty());
    let h = r.headers_mut();
    h.extend(cors_headers(req));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, SP-Anonymous"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(shared.config.cors_max_age.0.as_secs()),
    );
    r
}

/// The client's address: the peer's, or, when the peer is one of the trusted `proxies`, the
/// address the proxies received the request from: walking the forwarding header from the right
/// (the hop nearest weir), the first address that is not a trusted proxy. Where the header ends,
/// or holds something that is not an address (`unknown`, an obfuscated name), the walk stops at
/// the last address it reached.
fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    header: ForwardedHeader,
) -> IpAddr {
    let trusted = |ip: &IpAddr| proxies.iter().any(|n| n.contains(ip));
    let mut client = peer.to_canonical();
    if !trusted(&client) {
        return client;
    }
    let hops = match header {
        ForwardedHeader::XForwardedFor => forwarded_for(headers),
        ForwardedHeader::Forwarded => forwarded(headers),
    };
    for hop in hops.into_iter().rev() {
        let Some(ip) = hop else { break };
        client = ip.to_canonical();
        if !trusted(&client) {
            break;
        }
    }
    client
}

/// The addresses of every `X-Forwarded-For` header, in order (`None` for what is not one).
fn forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_node)
        .collect()
}

/// The `for=` addresses of every `Forwarded` header (RFC 7239), in order.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all(header::FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("for=?").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// An address as forwarding headers write it: `192.0.2.1`, `192.0.2.1:80`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, _)| ip.parse::<Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

/// What the per-client limits count a client by: its IPv4 address, or its IPv6 /64 network
/// (one host usually has a whole /64 to pick addresses from).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A network user id as a tracker or this collector makes it (a UUID, or up to 64 letters,
/// digits, `-` and `_`): nothing that could end a cookie value or add an attribute.
fn plain_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

/// The value of the first non-empty cookie `name` in the request's `Cookie` headers (without
/// surrounding double quotes).
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name && !c.value_trimmed().is_empty())
        .map(|c| c.value_trimmed().to_string())
}

/// The `Set-Cookie` header for the network user id, as the Snowplow collector builds it.
fn set_cookie(c: &CookieConfig, req: &HeaderMap, nuid: &str) -> Option<HeaderValue> {
    if !c.enabled {
        return None;
    }
    let mut cookie = Cookie::build((c.name.as_str(), nuid))
        .expires(expiry(c.expiration.0))
        .path("/")
        .same_site(c.same_site.into())
        .secure(c.secure)
        .http_only(c.http_only);
    if let Some(domain) = cookie_domain(c, req) {
        cookie = cookie.domain(domain);
    }
    HeaderValue::from_str(&cookie.build().to_string()).ok()
}

/// `after` from now (the cookie crate caps it at the end of year 9999, as RFC 6265 asks).
fn expiry(after: Duration) -> OffsetDateTime {
    time::Duration::try_from(after)
        .ok()
        .and_then(|d| OffsetDateTime::now_utc().checked_add(d))
        .unwrap_or(PrimitiveDateTime::MAX.assume_utc())
}

/// The first of `domains` that the host of one of the request's origins equals or is a
/// subdomain of, else `fallback_domain` (none: a host-only cookie).
fn cookie_domain<'c>(c: &'c CookieConfig, req: &HeaderMap) -> Option<&'c str> {
    let origin_hosts: Vec<String> = req
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .into_iter()
        .flat_map(str::split_whitespace)
        .filter_map(|o| o.parse::<Uri>().ok()?.host().map(str::to_string))
        .collect();
    c.domains
        .iter()
        .find(|d| {
            origin_hosts
                .iter()
                .any(|h| h == *d || h.ends_with(&format!(".{d}")))
        })
        .or(c.fallback_domain.as_ref())
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_written_like_the_snowplow_collector() {
        let mut req = HeaderMap::new();
        req.insert(
            header::COOKIE,
            HeaderValue::from_static("_sp_id.1=abc; sp=; sp=\"d8aae409-b64d\"; other=1"),
        );
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://www.acme.com:8443"),
        );
        assert_eq!(cookie_value(&req, "sp").as_deref(), Some("d8aae409-b64d"));
        assert_eq!(cookie_value(&req, "nuid"), None);
        let mut c = CookieConfig {
            domains: vec!["other.org".into(), "acme.com".into()],
            ..CookieConfig::default()
        };
        let before = OffsetDateTime::now_utc().unix_timestamp();
        let v = set_cookie(&c, &req, "n1").unwrap();
        let after = OffsetDateTime::now_utc().unix_timestamp();
        let v = v.to_str().unwrap();
        let parsed = Cookie::parse(v).unwrap();
        assert_eq!((parsed.name(), parsed.value()), ("sp", "n1"), "{v}");
        assert_eq!(parsed.path(), Some("/"), "{v}");
        assert_eq!(parsed.domain(), Some("acme.com"), "{v}");
        assert_eq!(parsed.same_site(), Some(cookie::SameSite::None), "{v}");
        assert_eq!(
            (parsed.secure(), parsed.http_only()),
            (Some(true), Some(true)),
            "{v}"
        );
        // `Expires` is an IMF-fixdate one year (the default expiration) from now.
        let expires = parsed.expires_datetime().unwrap().unix_timestamp();
        let year = 365 * 24 * 3600;
        assert!(
            (before + year..=after + year).contains(&expires),
            "{v}: {expires} not within [{before}, {after}] + 1 year"
        );
        let date = v
            .split("Expires=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");

        c.domains = vec!["cme.com".into()];
        c.fallback_domain = Some("fallback.net".into());
        c.same_site = SameSite::Lax;
        c.secure = false;
        let v = set_cookie(&c, &req, "n1").unwrap();
        let parsed = Cookie::parse(v.to_str().unwrap()).unwrap();
        assert_eq!(parsed.domain(), Some("fallback.net"));
        assert_eq!(parsed.same_site(), Some(cookie::SameSite::Lax));
        assert_eq!((parsed.secure(), parsed.http_only()), (None, Some(true)));
        assert!(!v.to_str().unwrap().contains("Secure"));

        // No Origin, no fallback: a host-only cookie. An expiration past year 9999 is capped.
        c.fallback_domain = None;
        c.expiration = config::Duration(Duration::from_secs(u64::MAX));
        let v = set_cookie(&c, &HeaderMap::new(), "n1").unwrap();
        let v = v.to_str().unwrap();
        assert!(!v.contains("Domain="), "{v}");
        assert!(v.contains("Expires=Fri, 31 Dec 9999 23:59:59 GMT"), "{v}");

        c.enabled = false;
        assert!(set_cookie(&c, &req, "n1").is_none());
    }

    #[test]
    fn cors_echoes_the_first_origin_else_any() {
        let mut req = HeaderMap::new();
        let h = cors_headers(&req);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        req.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example https://b.example"),
        );
        let h = cors_headers(&req);
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let xff = ForwardedHeader::XForwardedFor;
        let proxies: Vec<IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ];
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.66, 198.51.100.4"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.1.2.3"));
        // An untrusted peer is the client, whatever it says.
        assert_eq!(
            client_address(ip("192.0.2.1"), &h, &proxies, xff),
            ip("192.0.2.1")
        );
        assert_eq!(client_address(ip("10.0.0.1"), &h, &[], xff), ip("10.0.0.1"));
        // Behind trusted proxies: the rightmost address that is not one of them, not the
        // leftmost (which the client may have written itself).
        assert_eq!(
            client_address(ip("10.0.0.1"), &h, &proxies, xff),
            ip("198.51.100.4")
        );
        // No header: the proxy is all there is. Garbage stops the walk where it is.
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &proxies, xff),
            ip("10.0.0.1")
        );
        let mut g = HeaderMap::new();
        g.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.4, unknown, 10.9.9.9"),
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &g, &proxies, xff),
            ip("10.9.9.9")
        );
        // An IPv4-mapped peer counts as IPv4.
        assert_eq!(
            client_address(ip("::ffff:10.0.0.1"), &h, &proxies, xff),
            ip("198.51.100.4")
        );

        // `Forwarded`, read only when configured (and then X-Forwarded-For is not).
        let mut f = HeaderMap::new();
        f.insert(
            header::FORWARDED,
            HeaderValue::from_static(
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
        );
        f.insert("x-forwarded-for", HeaderValue::from_static("198.51.100.4"));
        let fwd = ForwardedHeader::Forwarded;
        assert_eq!(
            client_address(ip("10.0.0.1"), &f, &proxies, fwd),
            ip("192.0.2.60")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &f, &proxies, xff),
            ip("198.51.100.4")
        );
        assert_eq!(
            forwarded(&f),
            [Some(ip("192.0.2.60")), Some(ip("2001:db8:cafe::17"))]
        );
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("_hidden"), None);

        // Clients are counted by IPv4 address or IPv6 /64.
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn only_plain_ids_are_taken_as_network_user_ids() {
        assert!(plain_id("d8aae409-b64d-40c0-99d7-5324fcb27735"));
        assert!(plain_id("abc_DEF-123"));
        for bad in [
            "",
            "evil; Max-Age=999999999; Path=/admin",
            "a b",
            "a\"b",
            &"a".repeat(65),
        ] {
            assert!(!plain_id(bad), "{bad}");
        }
    }

    #[test]
    fn trusted_proxies_and_the_client_share_are_checked() {
        use serde_json::json;
        let parse =
            |v: serde_json::Value| -> CollectorConfig { serde_json::from_value(v).unwrap() };
        let o = Origin::new("c.toml", "source");
        let c = parse(json!({"trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]}));
        let p = c.proxies(&o).unwrap();
        assert!(p[1].contains(&ip("192.0.2.7")) && !p[1].contains(&ip("192.0.2.8")));
        let e = parse(json!({"trusted_proxies": ["10.0.0.0/8", "10.0.0/8"]}))
            .check(&o)
            .unwrap_err();
        assert_eq!(e.key, "source.trusted_proxies[1]");
        assert!(e.message.contains("found `10.0.0/8`"), "{}", e.message);
        assert_eq!(parse(json!({})).per_client_bytes(), 8 << 20);
        assert_eq!(
            parse(json!({"max_inflight_bytes": "1 MiB"})).per_client_bytes(),
            1 << 20
        );
        for (v, says) in [
            ("64 MiB", "less than max_inflight_bytes"),
            ("1 KiB", "at least max_body_bytes"),
        ] {
            let e = parse(json!({ "max_inflight_per_client_bytes": v }))
                .check(&o)
                .unwrap_err();
            assert_eq!(e.key, "source.max_inflight_per_client_bytes");
            assert!(e.message.contains(says), "{}", e.message);
        }
        let e = serde_json::from_value::<CollectorConfig>(json!({"forwarded_header": "X-Real-IP"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected `X-Forwarded-For` or `Forwarded`"),
            "{e}"
        );
    }

    #[test]
    fn the_pixel_is_a_gif() {
        assert!(PIXEL.starts_with(b"GIF89a"));
        assert_eq!(PIXEL.len(), 43);
    }
}
