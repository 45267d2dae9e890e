//! `http`: POSTs batches of records to an HTTP endpoint, as Snowbridge's HTTP target does
//! (event forwarding: to a GTM server-side container, a vendor's API, an internal service).
//!
//! A request holds up to `max_batch_messages` records and `max_batch_bytes`. Its body is, by
//! default, the records as a JSON array (each record must be JSON: one that is not goes to the
//! failure sink); with `template_file`, it is that Go template (Snowbridge's templating, see
//! [`crate::go_template`]) rendered over the array of the records' JSON. Records larger than
//! `max_message_bytes` go to the failure sink as `size_violation`. With `dynamic_headers`, a
//! record that carries headers (`spGtmssPreview`'s `x-gtm-server-preview`) is sent on its own,
//! with its headers on the request.
//!
//! A 2xx answer is success, unless a response rule for a 2xx code matches its body. Any other
//! answer, and a request that could not complete (status 0, the error as body: a timeout reads
//! `context deadline exceeded`, as in Go), is matched against `response_rules` in order; the
//! first that matches (its status codes, and its `body` text if it has one) decides:
//! `invalid` sends the request's records to the failure sink, `throttle`, `setup` and `fatal`
//! are retried under `[retry.throttle]`, `[retry.setup]`, or stop the pipeline; no match is a
//! transient failure, retried under `[retry.transient]`. A batch retried skips the requests
//! that landed. Redirects are followed only when they keep the method and body (307, 308).
//!
//! Credentials: `[sink.basic_auth]`, or `[sink.oauth2]` (the refresh-token grant: an access
//! token is fetched at start-up and again before it expires, and after a 401). Secrets are
//! strings, `{ env = "VAR" }` or `{ file = "/path" }`, and never reach a log or an error.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, StreamExt};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;

use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ByteSize, ConfigError, Duration as CfgDuration, Origin};
use crate::go_template::{self, Template};
use crate::kafka::security::{Secret, Value};
use crate::record::Record;
use crate::setup::BuildContext;

/// How much of a response body weir reads to match rules and explain failures.
const MAX_RESPONSE_BODY: usize = 64 << 10;
/// How much of a response body a failure reason quotes (`response_body_in_errors`).
const QUOTED_BODY: usize = 1 << 10;

/// ```toml
/// [sink]
/// type = "http"
/// url = "https://sgtm.example.com/com.snowplowanalytics.snowplow/enriched"
/// timeout = "5s"                   # per request
/// content_type = "application/json"
/// max_batch_messages = 50          # records per request
/// max_batch_bytes = "1 MiB"        # bytes of records per request
/// max_message_bytes = "1 MiB"      # larger records go to the failure sink
/// concurrency = 5                  # requests in flight
/// dynamic_headers = false          # records with headers go alone, with them
/// # template_file = "request.tmpl" # Go template over the batch (Snowbridge's templating)
/// # include_timing_headers = true  # Rejection-Timestamp: now + timeout - rejection_threshold
/// # rejection_threshold = "150ms"
/// # response_body_in_errors = false  # failure reasons quote the response body
///
/// [sink.headers]
/// Accept-Language = "en-US"
/// X-Api-Key = { env = "API_KEY" }
///
/// [sink.basic_auth]                # or [sink.oauth2]
/// username = "weir"
/// password = { env = "HTTP_PASSWORD" }
///
/// [sink.oauth2]
/// client_id = { env = "CLIENT_ID" }
/// client_secret = { env = "CLIENT_SECRET" }
/// refresh_token = { file = "/run/secrets/refresh-token" }
/// token_url = "https://oauth2.googleapis.com/token"
///
/// [sink.tls]
/// ca_file = "ca.pem"               # only these CAs (none: the system's)
/// cert_file = "client.pem"         # mutual TLS
/// key_file = "client.key"
/// verify = true
///
/// [[sink.response_rules]]
/// type = "invalid"                 # invalid, throttle, setup or fatal
/// http_codes = [400]
/// body = "Invalid value"           # optional: text the response body must contain
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(default = "default_timeout")]
    pub timeout: CfgDuration,
    #[serde(default = "default_content_type")]
    pub content_type: String,
    #[serde(default)]
    pub headers: BTreeMap<String, Value>,
    pub basic_auth: Option<BasicAuth>,
    pub oauth2: Option<OAuth2Config>,
    pub tls: Option<HttpTls>,
    #[serde(default)]
    pub dynamic_headers: bool,
    pub template_file: Option<PathBuf>,
    #[serde(default)]
    pub response_rules: Vec<ResponseRule>,
    #[serde(default = "default_batch_messages")]
    pub max_batch_messages: usize,
    #[serde(default = "default_bytes")]
    pub max_batch_bytes: ByteSize,
    #[serde(default = "default_bytes")]
    pub max_message_bytes: ByteSize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub include_timing_headers: bool,
    #[serde(default = "default_rejection_threshold")]
    pub rejection_threshold: CfgDuration,
    #[serde(default)]
    pub response_body_in_errors: bool,
}

fn default_timeout() -> CfgDuration {
    CfgDuration(Duration::from_secs(5))
}
fn default_content_type() -> String {
    "application/json".into()
}
fn default_batch_messages() -> usize {
    50
}
fn default_bytes() -> ByteSize {
    ByteSize(1 << 20)
}
fn default_concurrency() -> usize {
    5
}
fn default_rejection_threshold() -> CfgDuration {
    CfgDuration(Duration::from_millis(150))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[serde(default = "empty")]
    pub username: Value,
    #[serde(default = "empty")]
    pub password: Value,
}

fn empty() -> Value {
    Value::Inline(String::new())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub client_id: Value,
    #[serde(default = "empty")]
    pub client_secret: Value,
    pub refresh_token: Value,
    pub token_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

/// How a matching response is handled (Snowbridge's rule types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleType {
    Invalid,
    Throttle,
    Setup,
    Fatal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseRule {
    #[serde(rename = "type")]
    pub kind: RuleType,
    #[serde(default)]
    pub http_codes: Vec<u16>,
    /// Text the response body must contain (none: any body).
    pub body: Option<String>,
}

impl ResponseRule {
    fn matches(&self, status: u16, body: &str) -> bool {
        self.http_codes.contains(&status)
            && self
                .body
                .as_deref()
                .is_none_or(|b| b.is_empty() || body.contains(b))
    }

    fn for_2xx(&self) -> bool {
        self.http_codes.iter().any(|c| (200..300).contains(c))
    }

    /// What a failure reason says of the response when it must not quote the body.
    fn safe_message(&self) -> &str {
        match self.body.as_deref() {
            Some(b) if !b.is_empty() => b,
            _ => match self.kind {
                RuleType::Invalid => "Invalid error",
                RuleType::Throttle => "Throttle error",
                RuleType::Setup => "Setup error",
                RuleType::Fatal => "Fatal error",
            },
        }
    }
}

impl SinkType for HttpConfig {
    const TYPE: &'static str = "http";
}

/// `url` without credentials, query or fragment: what logs and errors name.
fn display_url(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

fn check_url(origin: &Origin, key: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let u = reqwest::Url::parse(url).map_err(|e| {
        origin.error(
            key,
            format!("expected an absolute http:// or https:// URL, found {url:?}: {e}"),
        )
    })?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(origin.error(
            key,
            format!("expected an absolute http:// or https:// URL, found {url:?}"),
        ));
    }
    Ok(u)
}

impl HttpConfig {
    /// The parsed template and the length of its text (what a request carries besides records).
    fn load_template(&self, origin: &Origin) -> Result<Option<(Template, usize)>, ConfigError> {
        let Some(path) = &self.template_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            origin.error(
                "template_file",
                format!(
                    "expected a readable template file, found {}: {e}",
                    path.display()
                ),
            )
        })?;
        let t = go_template::parse(&text).map_err(|e| {
            origin.error(
                "template_file",
                format!(
                    "expected a Go template weir can run, found in {}: {e}",
                    path.display()
                ),
            )
        })?;
        if text.len() >= self.max_batch_bytes.0 as usize {
            return Err(origin.error(
                "template_file",
                format!(
                    "expected a template smaller than max_batch_bytes ({}), found {} bytes",
                    self.max_batch_bytes.0,
                    text.len()
                ),
            ));
        }
        Ok(Some((t, text.len())))
    }

    /// What a request carries besides its records: commas, and the JSON array's brackets or the
    /// template's own text (as Snowbridge counts it).
    fn overhead(&self, template_len: Option<usize>) -> usize {
        self.max_batch_messages.saturating_sub(1) + template_len.unwrap_or(2)
    }
}

#[async_trait]
impl SinkConfig for HttpConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        check_url(origin, "url", &self.url)?;
        if self.timeout.0.is_zero() {
            return Err(origin.error("timeout", "expected a duration above zero, found 0"));
        }
        if self.max_batch_messages == 0 {
            return Err(origin.error("max_batch_messages", "expected at least 1, found 0"));
        }
        if self.concurrency == 0 || self.concurrency > 1024 {
            return Err(origin.error(
                "concurrency",
                format!(
                    "expected 1 to 1024 requests in flight, found {}",
                    self.concurrency
                ),
            ));
        }
        HeaderValue::from_str(&self.content_type).map_err(|_| {
            origin.error(
                "content_type",
                format!(
                    "expected a valid header value, found {:?}",
                    self.content_type
                ),
            )
        })?;
        for name in self.headers.keys() {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                origin.error(
                    &format!("headers.{name}"),
                    "expected a header name (letters, digits and !#$%&'*+-.^_`|~), found another character",
                )
            })?;
        }
        if self.basic_auth.is_some() && self.oauth2.is_some() {
            return Err(origin.error(
                "oauth2",
                "expected either basic_auth or oauth2, found both (both set Authorization)",
            ));
        }
        if let Some(o) = &self.oauth2 {
            check_url(origin, "oauth2.token_url", &o.token_url)?;
        }
        if let Some(t) = &self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(origin.error(
                    "tls",
                    "expected both cert_file and key_file (mutual TLS), or neither, found one",
                ));
            }
        }
        for (i, r) in self.response_rules.iter().enumerate() {
            if r.http_codes.is_empty() {
                return Err(origin.error(
                    &format!("response_rules[{i}].http_codes"),
                    "expected at least one status code (0: the request did not complete)",
                ));
            }
            if r.for_2xx() && r.body.as_deref().is_none_or(str::is_empty) {
                return Err(origin.error(
                    &format!("response_rules[{i}].body"),
                    "expected the body text a 2xx response must contain to match (a rule on 2xx codes alone would refuse every success)",
                ));
            }
        }
        let template = self.load_template(origin)?;
        let overhead = self.overhead(template.as_ref().map(|(_, len)| *len));
        if overhead as u64 >= self.max_batch_bytes.0 {
            return Err(origin.error(
                "max_batch_bytes",
                format!(
                    "expected more than the {overhead} bytes a request of max_batch_messages needs besides its records, found {}",
                    self.max_batch_bytes.0
                ),
            ));
        }
        Ok(())
    }

    /// Resolves the secrets, loads the template, builds the client, fetches the first OAuth2
    /// token, and checks that the endpoint answers at all (a HEAD request: any status will do;
    /// a name that does not resolve, a refused connection or a TLS failure fails the start).
    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let origin = Origin::new("", ctx.path.clone());
        let sink = HttpSink::new(self.clone(), &origin).await?;
        let probe = sink
            .client
            .head(sink.url.clone())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} does not answer: {}",
                    display_url(&sink.url),
                    describe(&e)
                )
            })?;
        tracing::info!(url = %display_url(&sink.url), probe = probe.status().as_u16(), template = sink.template.is_some(), oauth2 = sink.oauth.is_some(), "http sink ready");
        Ok(Box::new(sink))
    }
}

/// A running `http` sink.
pub struct HttpSink {
    cfg: HttpConfig,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    template: Option<Template>,
    oauth: Option<Arc<OAuth>>,
    batch_bytes: usize,
    message_bytes: usize,
}

/// One request of a batch: its records (by index), and their headers with `dynamic_headers`.
struct Request {
    records: Vec<usize>,
    headers: Option<HeaderMap>,
}

#[derive(Default)]
struct Outcome {
    landed: Vec<usize>,
    refused: Vec<(usize, Refusal)>,
    error: Option<SinkError>,
}

impl HttpSink {
    /// A sink for `cfg`: its secrets resolved, template loaded and client built (no request).
    pub async fn new(cfg: HttpConfig, origin: &Origin) -> anyhow::Result<HttpSink> {
        let url = check_url(origin, "url", &cfg.url)?;
        let template = cfg.load_template(origin)?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(&cfg.content_type)?);
        for (name, value) in &cfg.headers {
            let key = format!("headers.{name}");
            let text = value.resolve(origin, &key)?;
            let mut v = HeaderValue::from_str(&text).map_err(|_| {
                origin.error(
                    &key,
                    "expected a valid header value (visible ASCII), found other characters",
                )
            })?;
            if !matches!(value, Value::Inline(_))
                || crate::kafka::security::is_sensitive(name)
                || name.eq_ignore_ascii_case("authorization")
                || name.to_ascii_lowercase().contains("key")
            {
                Secret::new(text);
                v.set_sensitive(true);
            }
            headers.append(HeaderName::from_bytes(name.as_bytes())?, v);
        }
        if let Some(b) = &cfg.basic_auth {
            let user = b.username.resolve(origin, "basic_auth.username")?;
            let password = b.password.resolve(origin, "basic_auth.password")?;
            Secret::new(password.clone());
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            Secret::new(token.clone());
            let mut v = HeaderValue::from_str(&format!("Basic {token}"))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let client = client(&cfg, origin)?;
        let oauth = match &cfg.oauth2 {
            Some(o) => {
                let oauth = OAuth {
                    client: client.clone(),
                    token_url: check_url(origin, "oauth2.token_url", &o.token_url)?,
                    client_id: o.client_id.resolve(origin, "oauth2.client_id")?,
                    client_secret: Secret::new(
                        o.client_secret.resolve(origin, "oauth2.client_secret")?,
                    ),
                    refresh_token: tokio::sync::Mutex::new(
                        o.refresh_token.secret(origin, "oauth2.refresh_token")?,
                    ),
                    token: tokio::sync::Mutex::new(None),
                    params: std::sync::atomic::AtomicBool::new(false),
                };
                oauth.bearer().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                Some(Arc::new(oauth))
            }
            None => None,
        };
        let overhead = cfg.overhead(template.as_ref().map(|(_, len)| *len));
        let template = template.map(|(t, _)| t);
        let batch_bytes = (cfg.max_batch_bytes.0 as usize)
            .saturating_sub(overhead)
            .max(1);
        let message_bytes = (cfg.max_message_bytes.0 as usize).min(batch_bytes);
        Ok(HttpSink {
            cfg,
            client,
            url,
            headers,
            template,
            oauth,
            batch_bytes,
            message_bytes,
        })
    }

    /// Splits the unsettled records into requests; refuses those that can never be sent.
    fn plan(&self, records: &[Record], progress: &mut Progress) -> Vec<Request> {
        let mut requests = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for (i, r) in records.iter().enumerate() {
            if progress.is_settled(i) {
                continue;
            }
            let size = r.value.len();
            if size > self.message_bytes {
                progress.reject(
                    i,
                    Refusal::oversized(
                        format!("record of {size} bytes is over the http sink's limit of {} bytes per record", self.message_bytes),
                        size,
                        self.message_bytes,
                    ),
                );
                continue;
            }
            // With a template, the record is parsed once, when its request is rendered.
            if let (None, Err(e)) = (
                &self.template,
                serde_json::from_slice::<serde::de::IgnoredAny>(&r.value),
            ) {
                progress.reject(
                    i,
                    format!("record is not JSON, which the http sink sends (use a template or a transform to make it so): {e}"),
                );
                continue;
            }
            if self.cfg.dynamic_headers {
                if let Some(meta) = r.meta.as_deref().filter(|m| !m.headers.is_empty()) {
                    match record_headers(&meta.headers) {
                        Ok(h) => requests.push(Request {
                            records: vec![i],
                            headers: Some(h),
                        }),
                        Err(e) => progress.reject(i, e),
                    }
                    continue;
                }
            }
            if current.len() == self.cfg.max_batch_messages || bytes + size > self.batch_bytes {
                requests.push(Request {
                    records: std::mem::take(&mut current),
                    headers: None,
                });
                bytes = 0;
            }
            bytes += size;
            current.push(i);
        }
        if !current.is_empty() {
            requests.push(Request {
                records: current,
                headers: None,
            });
        }
        requests
    }

    /// The request body for `records`: their JSON array, or the template rendered over it.
    /// With a template, records that are not JSON are refused (into `refused`, out of `req`);
    /// `None`: none is left to send.
    fn body(
        &self,
        records: &[Record],
        req: &mut Request,
        refused: &mut Vec<(usize, Refusal)>,
    ) -> Result<Option<Bytes>, String> {
        match &self.template {
            None => {
                let len: usize = req
                    .records
                    .iter()
                    .map(|&i| records[i].value.len() + 1)
                    .sum();
                let mut b = BytesMut::with_capacity(len + 2);
                b.put_u8(b'[');
                for (n, &i) in req.records.iter().enumerate() {
                    if n > 0 {
                        b.put_u8(b',');
                    }
                    b.put_slice(&records[i].value);
                }
                b.put_u8(b']');
                Ok(Some(b.freeze()))
            }
            Some(t) => {
                let mut items = Vec::with_capacity(req.records.len());
                req.records.retain(|&i| {
                    match serde_json::from_slice::<serde_json::Value>(&records[i].value) {
                        Ok(v) => {
                            items.push(v);
                            true
                        }
                        Err(e) => {
                            refused.push((
                                i,
                                Refusal::template(format!(
                                    "record is not JSON, which the http sink's template needs: {e}"
                                )),
                            ));
                            false
                        }
                    }
                });
                if items.is_empty() {
                    return Ok(None);
                }
                let limit = 4 * self.cfg.max_batch_bytes.0 as usize + (64 << 10);
                t.render(&serde_json::Value::Array(items), limit)
                    .map(|b| Some(Bytes::from(b)))
                    .map_err(|e| format!("could not create the request body: {e}"))
            }
        }
    }

    async fn send(&self, records: &[Record], mut req: Request) -> Outcome {
        let mut out = Outcome::default();
        let body = match self.body(records, &mut req, &mut out.refused) {
            Ok(Some(b)) => b,
            Ok(None) => return out,
            Err(why) => {
                out.refused.extend(
                    req.records
                        .iter()
                        .map(|&i| (i, Refusal::template(why.clone()))),
                );
                return out;
            }
        };
        let mut headers = self.headers.clone();
        if let Some(h) = req.headers {
            for (k, v) in h.iter() {
                headers.insert(k.clone(), v.clone());
            }
        }
        if let Some(o) = &self.oauth {
            match o.bearer().await {
                Ok(v) => {
                    headers.insert(AUTHORIZATION, v);
                }
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
        if self.cfg.include_timing_headers {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64;
            let at = now + self.cfg.timeout.0.as_millis() as i64
                - self.cfg.rejection_threshold.0.as_millis() as i64;
            headers.insert("Rejection-Timestamp", HeaderValue::from(at));
        }
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .send()
            .await;
        let (status, reason, text) = match sent {
            Ok(resp) => {
                let status = resp.status();
                let body = read_body(resp).await;
                (status.as_u16(), status.to_string(), body)
            }
            Err(e) => (0, "the request did not complete".to_string(), describe(&e)),
        };
        metrics::counter!("weir_http_requests_total", "status" => status.to_string()).increment(1);
        let success = (200..300).contains(&status);
        let rule = self
            .cfg
            .response_rules
            .iter()
            .find(|r| (!success || r.for_2xx()) && r.matches(status, &text));
        let Some(rule) = rule else {
            if success {
                out.landed = req.records;
                return out;
            }
            if status == 401 {
                if let Some(o) = &self.oauth {
                    o.forget().await;
                }
            }
            out.error = Some(SinkError::Retriable(anyhow::anyhow!(
                "http {}: {}",
                display_url(&self.url),
                self.explain(status, &reason, &text, "Transient error")
            )));
            return out;
        };
        let why = self.explain(status, &reason, &text, rule.safe_message());
        let e = || anyhow::anyhow!("http {}: {why}", display_url(&self.url));
        match rule.kind {
            RuleType::Invalid => {
                out.refused = req
                    .records
                    .iter()
                    .map(|&i| {
                        (
                            i,
                            Refusal::api(format!("the endpoint refused the record: {why}"), status),
                        )
                    })
                    .collect();
            }
            RuleType::Throttle => out.error = Some(SinkError::Throttled(e())),
            RuleType::Setup => out.error = Some(SinkError::Setup(e())),
            RuleType::Fatal => out.error = Some(SinkError::Fatal(e())),
        }
        out
    }

    /// What a failure says of a response: its status and the rule's text, or (with
    /// `response_body_in_errors`) the start of the body.
    fn explain(&self, status: u16, reason: &str, body: &str, safe: &str) -> String {
        let said = if status == 0 {
            // The client's own error: no response body that could hold someone's data.
            body.to_string()
        } else if self.cfg.response_body_in_errors {
            let mut end = body.len().min(QUOTED_BODY);
            while !body.is_char_boundary(end) {
                end -= 1;
            }
            body[..end].to_string()
        } else {
            safe.to_string()
        };
        let status = if status == 0 {
            "0".to_string()
        } else {
            reason.to_string()
        };
        crate::kafka::security::redact(&format!("response status {status}: {said}")).into_owned()
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(
        &mut self,
        records: &[Record],
        progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let requests = self.plan(records, progress);
        let outcomes: Vec<Outcome> = stream::iter(requests)
            .map(|req| self.send(records, req))
            .buffer_unordered(self.cfg.concurrency)
            .collect()
            .await;
        let mut error: Option<SinkError> = None;
        for o in outcomes {
            for i in o.landed {
                progress.take(i);
            }
            for (i, why) in o.refused {
                progress.reject(i, why);
            }
            // The gravest error decides how the batch is retried.
            if let Some(e) = o.error {
                let rank = |e: &SinkError| match e {
                    SinkError::Fatal(_) => 3,
                    SinkError::Setup(_) => 2,
                    SinkError::Throttled(_) => 1,
                    _ => 0,
                };
                if error.as_ref().is_none_or(|old| rank(&e) > rank(old)) {
                    error = Some(e);
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        progress.written()
    }
}

/// A record's headers as request headers, or why they cannot be.
fn record_headers(headers: &[(String, Bytes)]) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::with_capacity(headers.len());
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("record header {k:?} is not a valid HTTP header name"))?;
        let value = HeaderValue::from_bytes(v).map_err(|_| {
            format!("record header {k:?} has a value that is not a valid HTTP header value")
        })?;
        h.append(name, value);
    }
    Ok(h)
}

async fn read_body(mut resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < MAX_RESPONSE_BODY {
        match resp.chunk().await {
            Ok(Some(c)) => {
                let take = c.len().min(MAX_RESPONSE_BODY - buf.len());
                buf.extend_from_slice(&c[..take]);
            }
            Ok(None) => break,
            Err(e) => return describe(&e),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A client error as Go's client would word what rules match on: a timeout is
/// `context deadline exceeded`; otherwise the error and its causes.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "context deadline exceeded (Client.Timeout exceeded while awaiting headers)".into();
    }
    // Not `e`'s own text: it holds the URL, whose query or user part may be a credential.
    let mut s = if e.is_connect() {
        "error trying to connect"
    } else if e.is_body() {
        "error sending or reading a body"
    } else if e.is_redirect() {
        "error following a redirect"
    } else {
        "error sending request"
    }
    .to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    crate::kafka::security::redact(&s).into_owned()
}

fn client(cfg: &HttpConfig, origin: &Origin) -> anyhow::Result<reqwest::Client> {
    let read = |key: &str, p: &PathBuf| {
        std::fs::read(p).map_err(|e| {
            origin.error(
                key,
                format!("expected a readable PEM file, found {}: {e}", p.display()),
            )
        })
    };
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(cfg.timeout.0)
        .connect_timeout(cfg.timeout.0.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(cfg.concurrency * 2)
        .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::custom(|a| {
            // A 301, 302 or 303 would turn the POST into a GET without the records.
            if matches!(a.status().as_u16(), 307 | 308) && a.previous().len() < 5 {
                a.follow()
            } else {
                a.stop()
            }
        }));
    if let Some(t) = &cfg.tls {
        if let Some(ca) = &t.ca_file {
            let pem = read("tls.ca_file", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                origin.error(
                    "tls.ca_file",
                    format!("expected PEM certificates, found {}: {e}", ca.display()),
                )
            })?;
            if certs.is_empty() {
                return Err(origin
                    .error(
                        "tls.ca_file",
                        format!("expected PEM certificates, found none in {}", ca.display()),
                    )
                    .into());
            }
            b = b.tls_built_in_root_certs(false);
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let (Some(cert), Some(key)) = (&t.cert_file, &t.key_file) {
            let mut pem = read("tls.cert_file", cert)?;
            pem.push(b'\n');
            pem.extend(read("tls.key_file", key)?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                origin.error(
                    "tls.cert_file",
                    format!(
                        "expected a PEM certificate and its PEM private key, found {} and {}: {e}",
                        cert.display(),
                        key.display()
                    ),
                )
            })?;
            b = b.identity(id);
        }
        if !t.verify {
            tracing::warn!(key = %origin.key, "tls.verify = false: the endpoint's certificate is not checked");
            b = b.danger_accept_invalid_certs(true);
        }
    }
    Ok(b.build()?)
}

/// OAuth2's refresh-token grant (RFC 6749 §6), as Go's `golang.org/x/oauth2` does it: client
/// credentials in a Basic header, else (if the server refuses that) in the form; a token is
/// renewed 10 s before it expires.
struct OAuth {
    client: reqwest::Client,
    token_url: reqwest::Url,
    client_id: String,
    client_secret: Secret,
    refresh_token: tokio::sync::Mutex<Secret>,
    token: tokio::sync::Mutex<Option<(HeaderValue, Option<Instant>)>>,
    /// The server wants the credentials in the form.
    params: std::sync::atomic::AtomicBool,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    refresh_token: Option<String>,
}

const EXPIRY_DELTA: Duration = Duration::from_secs(10);

impl OAuth {
    /// The `Authorization` value to send: the current token, or a new one.
    async fn bearer(&self) -> Result<HeaderValue, SinkError> {
        let mut token = self.token.lock().await;
        if let Some((v, expiry)) = token.as_ref() {
            if expiry.is_none_or(|at| Instant::now() + EXPIRY_DELTA < at) {
                return Ok(v.clone());
            }
        }
        let fresh = self.refresh().await?;
        *token = Some(fresh.clone());
        Ok(fresh.0)
    }

    /// Drops the current token (the endpoint refused it), so that the next request fetches one.
    async fn forget(&self) {
        *self.token.lock().await = None;
    }

    async fn refresh(&self) -> Result<(HeaderValue, Option<Instant>), SinkError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut refresh_token = self.refresh_token.lock().await;
        let where_ = || display_url(&self.token_url);
        let mut in_params = self.params.load(Relaxed);
        loop {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token.expose()),
            ];
            let mut req = self.client.post(self.token_url.clone());
            if in_params {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            } else {
                let enc =
                    |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                req = req.basic_auth(enc(&self.client_id), Some(enc(self.client_secret.expose())));
            }
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&form)
                .finish();
            let resp = req
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    SinkError::Retriable(anyhow::anyhow!(
                        "oauth2: cannot fetch token from {}: {}",
                        where_(),
                        describe(&e)
                    ))
                })?;
            let status = resp.status();
            let text = read_body(resp).await;
            if !status.is_success() {
                if !in_params && matches!(status.as_u16(), 400 | 401) {
                    // Go's auto-detection: try the credentials in the form once.
                    in_params = true;
                    continue;
                }
                // Only the error fields: the body of a token endpoint is not for logs.
                let detail = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        let e = v.get("error")?.as_str()?.to_string();
                        let d = v
                            .get("error_description")
                            .and_then(|d| d.as_str())
                            .unwrap_or("");
                        Some(format!("{e} {d}").trim().to_string())
                    })
                    .unwrap_or_default();
                let e = anyhow::anyhow!(
                    "oauth2: cannot fetch token from {}: {status} {detail}",
                    where_()
                );
                return Err(if status.is_client_error() && status.as_u16() != 429 {
                    SinkError::Setup(e)
                } else if status.as_u16() == 429 {
                    SinkError::Throttled(e)
                } else {
                    SinkError::Retriable(e)
                });
            }
            self.params.store(in_params, Relaxed);
            let t: TokenResponse = serde_json::from_str(&text).map_err(|e| {
                SinkError::Setup(anyhow::anyhow!(
                    "oauth2: the answer of {} is not a token: {e}",
                    where_()
                ))
            })?;
            if t.access_token.is_empty() {
                return Err(SinkError::Setup(anyhow::anyhow!(
                    "oauth2: {} answered without an access_token",
                    where_()
                )));
            }
            let expires_in = match &t.expires_in {
                Some(serde_json::Value::Number(n)) => n.as_u64(),
                Some(serde_json::Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            let expiry = expires_in
                .filter(|s| *s > 0)
                .map(|s| Instant::now() + Duration::from_secs(s));
            if let Some(r) = t.refresh_token.filter(|r| !r.is_empty()) {
                *refresh_token = Secret::new(r);
            }
            let kind = match t.token_type.as_deref() {
                None | Some("") => "Bearer".to_string(),
                Some(k) if k.eq_ignore_ascii_case("bearer") => "Bearer".to_string(),
                Some(k) => k.to_string(),
            };
            let mut v =
                HeaderValue::from_str(&format!("{kind} {}", t.access_token)).map_err(|_| {
                    SinkError::Setup(anyhow::anyhow!(
                        "oauth2: {} answered with a token that cannot be a header",
                        where_()
                    ))
                })?;
            v.set_sensitive(true);
            tracing::debug!(token_url = %where_(), expires_in, "oauth2 token refreshed");
            metrics::counter!("weir_http_oauth2_refreshes_total").increment(1);
            return Ok((v, expiry));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: RuleType, codes: &[u16], body: Option<&str>) -> ResponseRule {
        ResponseRule {
            kind,
            http_codes: codes.to_vec(),
            body: body.map(String::from),
        }
    }

    #[test]
    fn rules_match_codes_and_body_text() {
        let r = rule(
            RuleType::Invalid,
            &[400],
            Some("Invalid value for 'purchase' field"),
        );
        assert!(r.matches(400, "error: Invalid value for 'purchase' field (x)"));
        assert!(!r.matches(400, "other"));
        assert!(!r.matches(422, "Invalid value for 'purchase' field"));
        let r = rule(RuleType::Throttle, &[429], None);
        assert!(r.matches(429, "anything"));
        assert_eq!(r.safe_message(), "Throttle error");
        let r = rule(RuleType::Throttle, &[0], Some("context deadline exceeded"));
        assert!(r.matches(
            0,
            "context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
        ));
        assert!(rule(RuleType::Invalid, &[200], Some("x")).for_2xx());
    }

    #[test]
    fn urls_in_logs_lose_credentials_and_queries() {
        let u = reqwest::Url::parse("https://user:pw@h.example:8443/p/x?key=secret#f").unwrap();
        assert_eq!(display_url(&u), "https://h.example:8443/p/x");
    }

    #[test]
    fn record_headers_must_be_http_headers() {
        let h = record_headers(&[("x-gtm-server-preview".into(), Bytes::from("abc="))]).unwrap();
        assert_eq!(h["x-gtm-server-preview"], "abc=");
        assert!(record_headers(&[("bad name".into(), Bytes::from("v"))]).is_err());
        assert!(record_headers(&[("x".into(), Bytes::from("a\nb"))]).is_err());
    }
}
