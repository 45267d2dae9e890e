//! `postgres`: one row per key (e.g. one live profile per viewer) in a PostgreSQL table, from
//! JSON records, under the same rules as the embedded `profiles` store.
//!
//! - A record is a JSON object; its `key_field` names the row, the whole object is the row's
//!   `doc` (jsonb). A record whose `removal_field` is `true` removes the row.
//! - With `version_field`, a record whose version is lower than the stored row's is ignored
//!   (numbers compare numerically, strings as bytes, e.g. RFC 3339 timestamps), so a replay or an
//!   out-of-order update never regresses a row, whichever instance writes it; a removal leaves a
//!   tombstone (the key and its version, `doc` null) for `tombstone_ttl`, so a late update that
//!   is not newer than the removed row does not bring it back. Without it, the last write wins
//!   and a removal deletes the row.
//! - Each batch is one transaction of a few statements (`INSERT … SELECT FROM unnest(…) ON
//!   CONFLICT DO UPDATE … WHERE <version rule>`), whatever its size; the batch is acknowledged
//!   once it commits. Records that can never be a row (not a JSON object, no key, a key over
//!   `max_key_bytes`, text PostgreSQL refuses such as `\u0000`) go to the failure sink; a lost
//!   connection, a restarted server or a timeout is retried with backoff on a new connection.
//! - `ttl`: rows not updated for that long are deleted (a sweep every minute, by whichever
//!   instance runs it; bounded per statement), as are tombstones older than `tombstone_ttl`.
//! - The schema is created at start-up when missing (`create_table`, under an advisory lock so
//!   instances starting together do not race) and checked otherwise: a table with other columns
//!   is a setup error that says what was expected.
//! - `notify` (default on): a trigger sends each changed key on a `LISTEN`/`NOTIFY` channel. A
//!   `[sink.dashboard]` on this sink listens on it, so every instance writing the table feeds it
//!   live, not only its own writes; its snapshot is a query of the table.
//! - Metrics: `weir_postgres_rows_total{outcome}` (`applied`; `skipped`: an update older than
//!   the stored row, a removal of a row already gone), `weir_postgres_commit_seconds`,
//!   `weir_postgres_reconnects_total`, `weir_postgres_swept_total`.
//! - The connection string is a secret value (`{ env = "…" }` or `{ file = "…" }`); TLS through
//!   rustls: `sslmode=require` (or `prefer`, libpq's default) in the URL, the system's CAs or
//!   `tls.ca_file`, a client certificate for mutual TLS, verification on unless
//!   `tls.verify = false`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use futures::StreamExt as _;
use serde::Deserialize;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client};

use super::http::HttpTls;
use super::{Progress, Refusal, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ConfigError, Duration as CfgDuration, Origin};
use crate::dashboard::{self, DashboardConfig, Hub};
use crate::kafka::security::{Secret, Value};
use crate::record::Record;
use crate::setup::BuildContext;

/// How often expired rows and old tombstones are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Rows one sweep statement deletes at most (a sweep repeats until fewer are left).
const SWEEP_ROWS: i64 = 10_000;
/// The `application_name` of the dashboard's change feed connection.
const FEED_APPLICATION: &str = "weir dashboard feed";
/// NOTIFY's payload limit is 8000 bytes: a key must fit.
const MAX_KEY_LIMIT: usize = 7_900;

/// ```toml
/// [sink]
/// type = "postgres"
/// url = { env = "WEIR_POSTGRES_URL" }   # postgres://weir@db:5432/live?sslmode=require
/// # password = { file = "/run/secrets/pg" }   # if not in the URL
/// table = "viewer_profiles"             # or "schema.table"
/// key_field = "viewer_id"               # default
/// version_field = "version"             # optional: never replace a row with an older version
/// removal_field = "removed"             # default: `"removed": true` removes the row
/// tombstone_ttl = "24h"                 # with version_field: how long a removal's version is kept
/// # ttl = "30d"                         # optional: delete rows not updated for this long
/// create_table = true                   # default: create the table (and trigger) if missing
/// notify = true                         # default: NOTIFY each changed key (live dashboards)
/// max_key_bytes = 1024                  # longer keys are bad rows
/// timeout = "30s"                       # connect and per-batch deadline
/// [sink.tls]                            # optional
/// ca_file = "ca.pem"                    # only these CAs (none: the system's)
/// # cert_file = "client.pem"  key_file = "client.key"   # mutual TLS
/// # verify = false                     # never in production
/// [sink.dashboard]                      # optional: the live dashboard, read from this table
/// address = "127.0.0.1:8080"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: Value,
    pub password: Option<Value>,
    #[serde(default = "default_table")]
    pub table: String,
    #[serde(default = "default_key")]
    pub key_field: String,
    pub version_field: Option<String>,
    #[serde(default = "default_removal")]
    pub removal_field: String,
    #[serde(default = "default_tombstone_ttl")]
    pub tombstone_ttl: CfgDuration,
    pub ttl: Option<CfgDuration>,
    #[serde(default = "yes")]
    pub create_table: bool,
    #[serde(default = "yes")]
    pub notify: bool,
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    #[serde(default = "default_timeout")]
    pub timeout: CfgDuration,
    pub tls: Option<HttpTls>,
    pub dashboard: Option<DashboardConfig>,
}

fn yes() -> bool {
    true
}
fn default_table() -> String {
    "weir_profiles".to_string()
}
fn default_key() -> String {
    "viewer_id".to_string()
}
fn default_removal() -> String {
    "removed".to_string()
}
fn default_tombstone_ttl() -> CfgDuration {
    CfgDuration(Duration::from_secs(24 * 3600))
}
fn default_max_key_bytes() -> usize {
    1024
}
fn default_timeout() -> CfgDuration {
    CfgDuration(Duration::from_secs(30))
}

impl SinkType for PostgresConfig {
    const TYPE: &'static str = "postgres";
}

/// A table name: `name` or `schema.name`, each a plain SQL identifier (quoted when used).
fn table_parts(table: &str) -> Option<Vec<&str>> {
    let parts: Vec<&str> = table.split('.').collect();
    let ident = |p: &&str| {
        !p.is_empty()
            && p.len() <= 63
            && p.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (parts.len() <= 2 && parts.iter().all(ident)).then_some(parts)
}

#[async_trait]
impl SinkConfig for PostgresConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if table_parts(&self.table).is_none() {
            return Err(origin.error(
                "table",
                format!(
                    "expected a table name (`name` or `schema.name`, letters, digits and `_`, \
                     up to 63 each), found {:?}",
                    self.table
                ),
            ));
        }
        for (key, value) in [
            ("key_field", Some(&self.key_field)),
            ("version_field", self.version_field.as_ref()),
            ("removal_field", Some(&self.removal_field)),
        ] {
            if value.is_some_and(|v| v.is_empty()) {
                return Err(origin.error(key, "expected a JSON field name, found an empty string"));
            }
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_LIMIT {
            return Err(origin.error(
                "max_key_bytes",
                format!(
                    "expected 1 to {MAX_KEY_LIMIT} (a key must fit a NOTIFY payload), found {}",
                    self.max_key_bytes
                ),
            ));
        }
        if self.timeout.0.is_zero() {
            return Err(origin.error("timeout", "expected a duration above zero, found 0"));
        }
        if let Some(t) = &self.tls {
            if t.cert_file.is_some() != t.key_file.is_some() {
                return Err(origin.error(
                    if t.cert_file.is_some() {
                        "tls.key_file"
                    } else {
                        "tls.cert_file"
                    },
                    "`cert_file` and `key_file` go together: set both or neither",
                ));
            }
        }
        if let Some(d) = &self.dashboard {
            d.check(&origin.child("dashboard"))?;
        }
        // Only the shape of an inline URL can be checked offline (no secret in the message).
        if let Value::Inline(url) = &self.url {
            parse_url(&split_libpq_tls(url).0).map_err(|e| origin.error("url", e))?;
        }
        Ok(())
    }

    async fn build(&self, ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        let origin = Origin::new("", ctx.path.clone());
        let db = Arc::new(Db::new(self, &origin)?);
        let writer = db
            .connect()
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", db.describe()))?;
        let names = Names::new(&self.table);
        if self.create_table {
            create_schema(&writer, &names, self.notify).await?;
        }
        check_schema(&writer, &names, &self.table).await?;
        tracing::info!(at = %db.describe(), table = %self.table, "postgres: connected");
        let names_table = names.table.clone();
        let hub = Hub::new(
            Arc::new(Snapshotter {
                db: db.clone(),
                names: names.clone(),
                client: tokio::sync::Mutex::new(None),
            }),
            self.key_field.clone(),
        );
        Ok(Box::new(PostgresSink {
            cfg: self.clone(),
            db,
            names,
            client: Some(
                Writer::prepare(writer, &names_table, self.version_field.is_some()).await?,
            ),
            hub,
            last_sweep: None,
        }))
    }
}

/// libpq's TLS parameters that tokio-postgres does not take, as a connection string may carry
/// them (managed services hand out `…?sslmode=verify-full&sslrootcert=ca.pem`).
#[derive(Debug, Default, PartialEq)]
struct LibpqTls {
    rootcert: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The connection string without `sslrootcert`, `sslcert`, `sslkey` (returned apart), and with
/// `sslmode=verify-full` / `verify-ca` as `require` (weir always verifies the server's
/// certificate, hostname included, unless `tls.verify = false`) and `allow` as `prefer`.
fn split_libpq_tls(url: &str) -> (String, LibpqTls) {
    let mut tls = LibpqTls::default();
    let mut take = |k: &str, v: &str| -> Option<Option<String>> {
        match k {
            "sslrootcert" if v != "system" => tls.rootcert = Some(PathBuf::from(v)),
            "sslrootcert" => {}
            "sslcert" => tls.cert = Some(PathBuf::from(v)),
            "sslkey" => tls.key = Some(PathBuf::from(v)),
            "sslmode" => {
                return Some(Some(
                    match v {
                        "verify-full" | "verify-ca" => "require",
                        "allow" => "prefer",
                        other => other,
                    }
                    .to_string(),
                ))
            }
            _ => return None,
        }
        Some(None)
    };
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Ok(mut u) = reqwest::Url::parse(url) else {
            return (url.to_string(), tls);
        };
        let mut kept: Vec<(String, String)> = Vec::new();
        for (k, v) in u.query_pairs() {
            match take(&k, &v) {
                None => kept.push((k.into_owned(), v.into_owned())),
                Some(Some(mapped)) => kept.push((k.into_owned(), mapped)),
                Some(None) => {}
            }
        }
        if kept.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(kept);
        }
        (u.to_string(), tls)
    } else if url.contains(['\'', '\\']) {
        // Quoted values: left to the driver as they are.
        (url.to_string(), tls)
    } else {
        let kept: Vec<String> = url
            .split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                match take(k.trim(), v.trim()) {
                    None => Some(kv.to_string()),
                    Some(Some(mapped)) => Some(format!("{k}={mapped}")),
                    Some(None) => None,
                }
            })
            .collect();
        (kept.join(" "), tls)
    }
}

fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    // tokio-postgres' error names the part it could not parse, never the password; still, say
    // only that it failed: a URL may hold the password.
    url.parse::<tokio_postgres::Config>().map_err(|_| {
        "expected a PostgreSQL connection string (`postgres://user@host:port/db?sslmode=…` or \
         `host=… user=… dbname=…`), found text that does not parse as one"
            .to_string()
    })
}

type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<
        tokio_postgres::Socket,
    >>::Stream,
>;

/// How to connect: the parsed connection string and the TLS connector.
struct Db {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    timeout: Duration,
}

impl Db {
    fn new(cfg: &PostgresConfig, origin: &Origin) -> anyhow::Result<Db> {
        let url = cfg.url.secret(origin, "url")?;
        let (url, libpq) = split_libpq_tls(url.expose());
        Secret::new(url.clone());
        let mut config = parse_url(&url).map_err(|e| origin.error("url", e))?;
        // The config's `tls` wins; the URL's libpq parameters fill in what it leaves out.
        let mut tls = cfg.tls.clone().unwrap_or(HttpTls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            verify: true,
        });
        tls.ca_file = tls.ca_file.or(libpq.rootcert);
        if tls.cert_file.is_none() && tls.key_file.is_none() {
            (tls.cert_file, tls.key_file) = (libpq.cert, libpq.key);
        }
        if let Some(p) = config.get_password() {
            Secret::new(String::from_utf8_lossy(p).into_owned());
        }
        if let Some(p) = &cfg.password {
            config.password(p.secret(origin, "password")?.expose());
        }
        config.connect_timeout(cfg.timeout.0);
        config.application_name("weir");
        // The schema's "already exists, skipping" notices are not worth a log line.
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c client_min_messages=warning"),
            _ => "-c client_min_messages=warning".to_string(),
        };
        config.options(&options);
        if config.get_user().is_none() {
            // libpq's default: the operating system user.
            if let Ok(user) = std::env::var("USER") {
                config.user(user);
            }
        }
        Ok(Db {
            config,
            tls: tls_connector(Some(&tls), origin)?,
            timeout: cfg.timeout.0,
        })
    }

    /// Where it connects (hosts and database, never credentials).
    fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .zip(
                self.config
                    .get_ports()
                    .iter()
                    .chain(std::iter::repeat(&5432)),
            )
            .map(|(h, p)| match h {
                tokio_postgres::config::Host::Tcp(h) => format!("{h}:{p}"),
                tokio_postgres::config::Host::Unix(d) => format!("{}:{p}", d.display()),
            })
            .collect();
        format!(
            "{}/{}",
            hosts.join(","),
            self.config.get_dbname().unwrap_or("")
        )
    }

    /// A new connection, driven by its own task.
    async fn connect(&self) -> anyhow::Result<Client> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres: connection closed");
            }
        });
        Ok(client)
    }

    async fn open(&self) -> anyhow::Result<(Client, Connection)> {
        self.open_as("weir").await
    }

    /// [`Db::open`] under another `application_name` (how a connection shows in
    /// `pg_stat_activity`).
    async fn open_as(&self, application: &str) -> anyhow::Result<(Client, Connection)> {
        let mut config = self.config.clone();
        config.application_name(application);
        let r = tokio::time::timeout(self.timeout, config.connect(self.tls.clone()))
            .await
            .map_err(|_| anyhow::anyhow!("no connection within {:?}", self.timeout))?;
        r.map_err(|e| anyhow::anyhow!("{}", describe(&e)))
    }
}

fn tls_connector(
    tls: Option<&HttpTls>,
    origin: &Origin,
) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut roots = rustls::RootCertStore::empty();
    match tls.and_then(|t| t.ca_file.as_ref()) {
        Some(ca) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| {
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
            for c in certs {
                roots.add(c).map_err(|e| {
                    origin.error(
                        "tls.ca_file",
                        format!("expected CA certificates, found {}: {e}", ca.display()),
                    )
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let verify = tls.is_none_or(|t| t.verify);
    let builder = if verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    };
    let config = match tls.and_then(|t| t.cert_file.as_ref().zip(t.key_file.as_ref())) {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| {
                    origin.error(
                        "tls.cert_file",
                        format!("expected a PEM certificate, found {}: {e}", cert.display()),
                    )
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                origin.error(
                    "tls.key_file",
                    format!("expected a PEM private key, found {}: {e}", key.display()),
                )
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                origin.error(
                    "tls.cert_file",
                    format!("expected a certificate matching tls.key_file: {e}"),
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// `tls.verify = false`: accepts any server certificate (signatures still checked).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A driver error as one line: the server's message and code, or the client's cause (with what
/// to do about an untrusted server certificate).
fn describe(e: &tokio_postgres::Error) -> String {
    let s = describe_error(e);
    if s.contains("invalid peer certificate") {
        format!(
            "{s} (the server's TLS certificate is not trusted: give its CA as tls.ca_file or \
             sslrootcert, or connect without TLS with sslmode=disable)"
        )
    } else {
        s
    }
}

fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}: {})", db.message(), db.severity(), db.code().code()),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        }
    }
}

/// The quoted names the statements use.
#[derive(Clone)]
struct Names {
    /// `"schema"."table"` or `"table"`.
    table: String,
    /// The trigger function, in the table's schema.
    function: String,
    /// The NOTIFY channel (and the advisory lock's name): the table's name as written.
    channel: String,
}

impl Names {
    fn new(table: &str) -> Names {
        let parts = table_parts(table).expect("checked");
        let quoted: Vec<String> = parts.iter().map(|p| format!("\"{p}\"")).collect();
        let function = match parts.as_slice() {
            [schema, _] => format!("\"{schema}\".\"weir_notify_change\""),
            _ => "\"weir_notify_change\"".to_string(),
        };
        Names {
            table: quoted.join("."),
            function,
            channel: table.to_string(),
        }
    }
}

/// The table weir writes: what `create_table` creates and the start-up check expects.
fn ddl(names: &Names) -> String {
    let t = &names.table;
    let idx = |suffix: &str| {
        // Index names live in the table's schema; derive them from the table's own name.
        let base = names.channel.rsplit('.').next().unwrap_or("t");
        let name: String = format!("{base}_{suffix}").chars().take(63).collect();
        format!("\"{name}\"")
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (\n\
         \x20 key text PRIMARY KEY,\n\
         \x20 doc jsonb,\n\
         \x20 version_n double precision,\n\
         \x20 version_s text COLLATE \"C\",\n\
         \x20 removed_at timestamptz,\n\
         \x20 updated_at timestamptz NOT NULL DEFAULT now()\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {} ON {t} (updated_at) WHERE removed_at IS NULL;\n\
         CREATE INDEX IF NOT EXISTS {} ON {t} (removed_at) WHERE removed_at IS NOT NULL;",
        idx("updated_at"),
        idx("removed_at")
    )
}

const COLUMNS: &[(&str, &str)] = &[
    ("key", "text"),
    ("doc", "jsonb"),
    ("version_n", "double precision"),
    ("version_s", "text"),
    ("removed_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
];

async fn create_schema(client: &Client, names: &Names, notify: bool) -> anyhow::Result<()> {
    // The lock's key is PostgreSQL's own hash of the table's name: the same in every instance.
    let channel = names.channel.replace('\'', "''");
    let mut sql = format!(
        "BEGIN;\nSELECT pg_advisory_xact_lock(hashtext('weir:{channel}'));\n{}\n",
        ddl(names)
    );
    if notify {
        sql.push_str(&format!(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $weir$\n\
             BEGIN\n\
             \x20 IF TG_OP = 'DELETE' THEN PERFORM pg_notify(TG_ARGV[0], OLD.key);\n\
             \x20 ELSE PERFORM pg_notify(TG_ARGV[0], NEW.key); END IF;\n\
             \x20 RETURN NULL;\n\
             END $weir$;\n\
             DO $weir$ BEGIN\n\
             \x20 IF NOT EXISTS (SELECT 1 FROM pg_trigger\n\
             \x20     WHERE tgname = 'weir_notify' AND tgrelid = '{t}'::regclass) THEN\n\
             \x20   CREATE TRIGGER weir_notify AFTER INSERT OR UPDATE OR DELETE ON {t}\n\
             \x20     FOR EACH ROW EXECUTE FUNCTION {f}('{channel}');\n\
             \x20 END IF;\n\
             END $weir$;\n",
            f = names.function,
            t = names.table,
        ));
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the table {}: {}", names.table, describe(&e)))
}

/// The table exists with weir's columns; else a setup error that says what to create.
async fn check_schema(client: &Client, names: &Names, table: &str) -> anyhow::Result<()> {
    let parts = table_parts(table).expect("checked");
    let (schema, name) = match parts.as_slice() {
        [s, n] => (Some(*s), *n),
        [n] => (None, *n),
        _ => unreachable!(),
    };
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name = $1 AND table_schema = COALESCE($2, current_schema())",
            &[&name, &schema],
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the schema of {table}: {}", describe(&e)))?;
    let found: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if found.is_empty() {
        anyhow::bail!(
            "the table {table} does not exist (create_table = false): create it with\n{}",
            ddl(names)
        );
    }
    for (col, ty) in COLUMNS {
        match found.get(*col) {
            Some(t) if t == ty => {}
            other => anyhow::bail!(
                "the table {table} is not one weir writes: expected a column `{col}` of type \
                 {ty}, found {}; weir's table is\n{}",
                other.map_or("none".to_string(), |t| format!("type {t}")),
                ddl(names)
            ),
        }
    }
    Ok(())
}

/// The dashboard's reads: its own connection (not the writer's, which holds transactions).
struct Snapshotter {
    db: Arc<Db>,
    names: Names,
    client: tokio::sync::Mutex<Option<Client>>,
}

#[async_trait]
impl dashboard::Snapshot for Snapshotter {
    async fn rows(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut rows = Vec::new();
        self.each_row(&mut |r| rows.push(r)).await?;
        Ok(rows)
    }

    /// Row by row, as PostgreSQL sends them (a cursor-less stream of one query).
    async fn each_row(&self, f: &mut (dyn FnMut(serde_json::Value) + Send)) -> anyhow::Result<()> {
        use futures::TryStreamExt;
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.db.connect().await?);
        }
        let client = guard.as_ref().expect("connected");
        let sql = format!(
            "SELECT doc::text FROM {} WHERE doc IS NOT NULL",
            self.names.table
        );
        let rows = client
            .query_raw(&sql, std::iter::empty::<&str>())
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        let mut rows = std::pin::pin!(rows);
        while let Some(r) = rows
            .try_next()
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?
        {
            f(serde_json::from_str(r.get::<_, &str>(0))?);
        }
        Ok(())
    }
}

/// Follows the table's NOTIFY channel and pushes each changed row to the dashboard, on its own
/// connection; after a reconnection the dashboards take a fresh snapshot (changes made while
/// it was away were not announced).
async fn listen(db: Arc<Db>, names: Names, hub: Hub) {
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        match listen_once(&db, &names, &hub, &mut first).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                retry_in = ?backoff,
                "postgres: the dashboard lost the change feed; reconnecting"
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once(db: &Db, names: &Names, hub: &Hub, first: &mut bool) -> anyhow::Result<()> {
    let (client, mut connection) = db.open_as(FEED_APPLICATION).await?;
    // Notifications from the connection to this task, bounded: past it, a resync.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4096);
    let overflow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let driver = {
        let overflow = overflow.clone();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.try_send(n.payload().to_string()).is_err() {
                            overflow.store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => return Err(anyhow::anyhow!("{}", describe(&e))),
                }
            }
            Ok(())
        })
    };
    let result: anyhow::Result<()> = async {
        client
            .batch_execute(&format!(
                "LISTEN \"{}\"",
                names.channel.replace('"', "\"\"")
            ))
            .await
            .map_err(|e| anyhow::anyhow!("LISTEN: {}", describe(&e)))?;
        if !std::mem::take(first) {
            hub.resync();
        }
        tracing::info!(channel = %names.channel, "postgres: following the table's changes");
        let fetch = client
            .prepare(&format!(
                "SELECT key, doc::text FROM {} WHERE key = ANY($1)",
                names.table
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let Some(k) = rx.recv().await else {
                anyhow::bail!("the connection closed");
            };
            // Take what else has arrived (a batch of writes announces many keys at once).
            let mut seen = HashSet::new();
            keys.clear();
            for k in std::iter::once(k).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
                if keys.len() >= 1000 {
                    break;
                }
            }
            if overflow.swap(false, std::sync::atomic::Ordering::AcqRel) {
                hub.resync();
                continue;
            }
            let rows = client
                .query(&fetch, &[&keys])
                .await
                .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
            let mut live = HashSet::new();
            for r in &rows {
                let key: &str = r.get(0);
                if let Some(doc) = r.get::<_, Option<&str>>(1) {
                    if let Ok(doc) = serde_json::from_str(doc) {
                        live.insert(key.to_string());
                        hub.upserted(key, doc);
                    }
                }
            }
            for k in keys.iter().filter(|k| !live.contains(*k)) {
                hub.removed(k);
            }
        }
    }
    .await;
    driver.abort();
    result
}

struct Writer {
    client: Client,
    upsert: tokio_postgres::Statement,
    remove: tokio_postgres::Statement,
}

impl Writer {
    async fn prepare(client: Client, table: &str, versioned: bool) -> anyhow::Result<Writer> {
        let upsert = client
            .prepare(&format!(
                "INSERT INTO {table} AS t (key, doc, version_n, version_s, removed_at, updated_at) \
                 SELECT k, d::jsonb, vn, vs, NULL, now() \
                 FROM unnest($1::text[], $2::text[], $3::float8[], $4::text[]) AS u(k, d, vn, vs) \
                 ON CONFLICT (key) DO UPDATE SET doc = EXCLUDED.doc, \
                   version_n = EXCLUDED.version_n, version_s = EXCLUDED.version_s, \
                   removed_at = NULL, updated_at = now() \
                 WHERE NOT (CASE WHEN t.removed_at IS NULL \
                   THEN COALESCE(EXCLUDED.version_n < t.version_n, false) \
                     OR COALESCE(EXCLUDED.version_s < t.version_s, false) \
                   ELSE COALESCE(EXCLUDED.version_n <= t.version_n, false) \
                     OR COALESCE(EXCLUDED.version_s <= t.version_s, false) END) \
                 RETURNING key"
            ))
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        let remove = client
            .prepare(&if versioned {
                format!(
                    "UPDATE {table} SET doc = NULL, removed_at = now(), updated_at = now() \
                     WHERE key = ANY($1) AND removed_at IS NULL RETURNING key"
                )
            } else {
                format!("DELETE FROM {table} WHERE key = ANY($1) RETURNING key")
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}", describe(&e)))?;
        Ok(Writer {
            client,
            upsert,
            remove,
        })
    }
}

struct PostgresSink {
    cfg: PostgresConfig,
    db: Arc<Db>,
    names: Names,
    /// The writer's connection and its statements; `None` after it broke (reconnected on the
    /// next write).
    client: Option<Writer>,
    hub: Hub,
    last_sweep: Option<std::time::Instant>,
}

/// One record's change to the table.
struct Change<'a> {
    key: String,
    /// `None`: a removal.
    doc: Option<(&'a str, serde_json::Value)>,
    /// The record's `version_field` value (a number or a string orders it).
    version: Option<serde_json::Value>,
}

impl Change<'_> {
    /// The version as the table's two columns: a number, or text.
    fn version_columns(&self) -> (Option<f64>, Option<&str>) {
        match &self.version {
            Some(serde_json::Value::String(s)) => (None, Some(s)),
            Some(v) => (v.as_f64(), None),
            None => (None, None),
        }
    }
}

impl PostgresSink {
    fn change<'a>(&self, r: &'a Record) -> Result<Change<'a>, String> {
        let text = std::str::from_utf8(&r.value).map_err(|e| format!("not UTF-8 text: {e}"))?;
        let doc: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not a JSON object: {e}"))?;
        if !doc.is_object() {
            return Err(format!("not a JSON object: found {}", json_kind(&doc)));
        }
        let key = super::profiles::row_key(&doc, &self.cfg.key_field)?;
        if key.len() > self.cfg.max_key_bytes {
            return Err(format!(
                "the key at `{}` is {} bytes, over max_key_bytes ({})",
                self.cfg.key_field,
                key.len(),
                self.cfg.max_key_bytes
            ));
        }
        // PostgreSQL's text and jsonb cannot hold U+0000 (it would fail the whole batch).
        if memchr::memmem::find(text.as_bytes(), b"\\u0000").is_some() && has_nul(&doc) {
            return Err("holds the character U+0000, which PostgreSQL text cannot".to_string());
        }
        if doc.get(&self.cfg.removal_field).and_then(|v| v.as_bool()) == Some(true) {
            return Ok(Change {
                key,
                doc: None,
                version: None,
            });
        }
        let version = self
            .cfg
            .version_field
            .as_ref()
            .and_then(|f| doc.get(f))
            .cloned();
        Ok(Change {
            key,
            doc: Some((text, doc)),
            version,
        })
    }

    async fn writer(&mut self) -> Result<&Writer, SinkError> {
        if self.client.as_ref().is_none_or(|w| w.client.is_closed()) {
            self.client = None;
            let at = self.db.describe();
            let c = self.db.connect().await.map_err(|e| {
                SinkError::Retriable(e.context(format!("cannot connect to PostgreSQL at {at}")))
            })?;
            let w = Writer::prepare(c, &self.names.table, self.cfg.version_field.is_some())
                .await
                .map_err(SinkError::Setup)?;
            tracing::info!(at = %at, "postgres: connected");
            metrics::counter!("weir_postgres_reconnects_total").increment(1);
            self.client = Some(w);
        }
        Ok(self.client.as_ref().expect("connected"))
    }

    /// Writes `runs` in one transaction; the keys each statement applied.
    async fn commit(&mut self, runs: &[Vec<&Change<'_>>]) -> Result<Vec<Applied>, SinkError> {
        let timeout = self.cfg.timeout.0;
        let Writer {
            client,
            upsert,
            remove,
        } = self.writer().await?;
        let work = async {
            client.batch_execute("BEGIN").await?;
            let mut applied = Vec::new();
            for run in runs {
                let (ups, rms): (Vec<&&Change>, Vec<&&Change>) =
                    run.iter().partition(|c| c.doc.is_some());
                if !ups.is_empty() {
                    let keys: Vec<&str> = ups.iter().map(|c| c.key.as_str()).collect();
                    let docs: Vec<&str> = ups.iter().map(|c| c.doc.as_ref().unwrap().0).collect();
                    let (vn, vs): (Vec<Option<f64>>, Vec<Option<&str>>) =
                        ups.iter().map(|c| c.version_columns()).unzip();
                    for row in client.query(upsert, &[&keys, &docs, &vn, &vs]).await? {
                        applied.push(Applied::Upserted(row.get(0)));
                    }
                }
                if !rms.is_empty() {
                    let keys: Vec<&str> = rms.iter().map(|c| c.key.as_str()).collect();
                    for row in client.query(remove, &[&keys]).await? {
                        applied.push(Applied::Removed(row.get(0)));
                    }
                }
            }
            client.batch_execute("COMMIT").await?;
            Ok::<_, tokio_postgres::Error>(applied)
        };
        let sent: usize = runs.iter().map(Vec::len).sum();
        let t0 = std::time::Instant::now();
        let result = tokio::time::timeout(timeout, work).await;
        match result {
            Ok(Ok(applied)) => {
                metrics::histogram!("weir_postgres_commit_seconds")
                    .record(t0.elapsed().as_secs_f64());
                metrics::counter!("weir_postgres_rows_total", "outcome" => "applied")
                    .increment(applied.len() as u64);
                metrics::counter!("weir_postgres_rows_total", "outcome" => "skipped")
                    .increment(sent.saturating_sub(applied.len()) as u64);
                Ok(applied)
            }
            Ok(Err(e)) => {
                let class = classify(&e);
                // A failed transaction is rolled back by closing its connection with it.
                self.client = None;
                let err = anyhow::anyhow!("PostgreSQL: {}", describe(&e));
                Err(match class {
                    PgClass::Throttled => SinkError::Throttled(err),
                    PgClass::Setup => SinkError::Setup(err),
                    PgClass::Transient => SinkError::Retriable(err),
                })
            }
            Err(_) => {
                self.client = None;
                Err(SinkError::Retriable(anyhow::anyhow!(
                    "PostgreSQL: the batch did not commit within {timeout:?}"
                )))
            }
        }
    }

    /// Deletes rows past `ttl` and tombstones past `tombstone_ttl`, a bounded number per
    /// statement; errors are logged (the next sweep tries again).
    async fn sweep(&mut self) {
        let table = self.names.table.clone();
        let tombstone_secs = self.cfg.tombstone_ttl.0.as_secs_f64();
        let ttl_secs = self.cfg.ttl.map(|t| t.0.as_secs_f64());
        let Ok(Writer { client, .. }) = self.writer().await else {
            return;
        };
        let mut statements = vec![(
            format!(
                "DELETE FROM {table} WHERE key IN (SELECT key FROM {table} \
                 WHERE removed_at < now() - make_interval(secs => $1) LIMIT {SWEEP_ROWS})"
            ),
            tombstone_secs,
        )];
        if let Some(ttl) = ttl_secs {
            statements.push((
                format!(
                    "DELETE FROM {table} WHERE key IN (SELECT key FROM {table} \
                     WHERE removed_at IS NULL AND updated_at < now() - make_interval(secs => $1) \
                     LIMIT {SWEEP_ROWS})"
                ),
                ttl,
            ));
        }
        for (sql, secs) in statements {
            loop {
                match client.execute(&sql, &[&secs]).await {
                    Ok(n) => {
                        metrics::counter!("weir_postgres_swept_total").increment(n);
                        if (n as i64) < SWEEP_ROWS {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "postgres: sweep failed");
                        return;
                    }
                }
            }
        }
    }
}

enum Applied {
    Upserted(String),
    Removed(String),
}

enum PgClass {
    Transient,
    Throttled,
    Setup,
}

fn classify(e: &tokio_postgres::Error) -> PgClass {
    let Some(code) = e.code() else {
        return PgClass::Transient;
    };
    let c = code.code();
    if *code == SqlState::TOO_MANY_CONNECTIONS || c.starts_with("53") {
        PgClass::Throttled
    } else if c.starts_with("28") // invalid authorization
        || c.starts_with("42") // undefined table or column, insufficient privilege
        || c.starts_with("3D")
    // invalid catalog (database) name
    {
        PgClass::Setup
    } else {
        PgClass::Transient
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn has_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(has_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Orders a batch's changes into runs of distinct keys, applied one after the other: a key's
/// consecutive upserts fold into the one the version rule keeps (the newest; the last of equal
/// versions), so a batch of updates to the same viewers is one run of one statement.
fn runs<'c, 'a>(changes: &'c [Change<'a>]) -> Vec<Vec<&'c Change<'a>>> {
    let mut per_key: HashMap<&str, Vec<&Change>> = HashMap::with_capacity(changes.len());
    let mut order: Vec<&str> = Vec::with_capacity(changes.len());
    for c in changes {
        let ops = per_key.entry(c.key.as_str()).or_insert_with(|| {
            order.push(c.key.as_str());
            Vec::new()
        });
        match ops.last_mut() {
            Some(last) if last.doc.is_some() && c.doc.is_some() => {
                let newer_or_equal = match (&c.version, &last.version) {
                    (Some(a), Some(b)) => !super::profiles::older(a, b),
                    _ => true,
                };
                if newer_or_equal {
                    *last = c;
                }
            }
            _ => ops.push(c),
        }
    }
    let mut runs: Vec<Vec<&Change>> = Vec::new();
    for key in order {
        for (i, c) in per_key
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if runs.len() <= i {
                runs.push(Vec::new());
            }
            runs[i].push(c);
        }
    }
    runs
}

#[async_trait]
impl Sink for PostgresSink {
    async fn start(&mut self) -> anyhow::Result<()> {
        if let Some(d) = &self.cfg.dashboard {
            dashboard::spawn(d.clone(), self.hub.clone())?;
            if self.cfg.notify {
                tokio::spawn(listen(
                    self.db.clone(),
                    self.names.clone(),
                    self.hub.clone(),
                ));
            }
        }
        Ok(())
    }

    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let mut changes = Vec::with_capacity(records.len());
        let mut rejected: Vec<(usize, Refusal)> = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match self.change(r) {
                Ok(c) => changes.push(c),
                Err(e) => rejected.push((i, e.into())),
            }
        }
        if !changes.is_empty() {
            let runs = runs(&changes);
            let applied = self.commit(&runs).await?;
            // Without NOTIFY, the dashboard hears this instance's writes from here.
            if !self.cfg.notify && self.cfg.dashboard.is_some() {
                let docs: HashMap<&str, &serde_json::Value> = changes
                    .iter()
                    .filter_map(|c| c.doc.as_ref().map(|(_, d)| (c.key.as_str(), d)))
                    .collect();
                for a in applied {
                    match a {
                        Applied::Upserted(k) => {
                            if let Some(d) = docs.get(k.as_str()) {
                                self.hub.upserted(&k, (*d).clone());
                            }
                        }
                        Applied::Removed(k) => self.hub.removed(&k),
                    }
                }
            }
        }
        if self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            self.last_sweep = Some(std::time::Instant::now());
            self.sweep().await;
        }
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(SinkError::Rejected(rejected))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &str, doc: bool, v: Option<f64>) -> Change<'static> {
        Change {
            key: key.into(),
            doc: doc.then(|| ("{}", serde_json::json!({}))),
            version: v.map(|v| serde_json::json!(v)),
        }
    }

    fn shape(runs: &[Vec<&Change>]) -> Vec<Vec<String>> {
        runs.iter()
            .map(|r| {
                r.iter()
                    .map(|c| match (&c.doc, c.version_columns().0) {
                        (Some(_), Some(v)) => format!("{}@{v}", c.key),
                        (Some(_), None) => format!("{}+", c.key),
                        (None, _) => format!("{}-", c.key),
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_batch_folds_into_runs_of_distinct_keys() {
        let changes = [
            change("a", true, Some(2.0)),
            change("b", true, Some(1.0)),
            change("a", true, Some(1.0)), // older: folded away
            change("a", true, Some(3.0)),
            change("b", false, None),
            change("b", true, Some(5.0)),
            change("c", true, Some(1.0)),
        ];
        assert_eq!(
            shape(&runs(&changes)),
            [vec!["a@3", "b@1", "c@1"], vec!["b-"], vec!["b@5"]]
        );
        // Equal versions: the later record wins, as a second write would.
        let mut later = change("a", true, Some(3.0));
        later.doc = Some(("{\"x\":1}", serde_json::json!({"x": 1})));
        let changes = [change("a", true, Some(3.0)), later];
        let r = runs(&changes);
        assert_eq!(r[0][0].doc.as_ref().unwrap().0, "{\"x\":1}");
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(table_parts("viewer_profiles").is_some());
        assert!(table_parts("live.viewer_profiles").is_some());
        for bad in [
            "",
            "a.b.c",
            "x;drop",
            "1abc",
            "a\"b",
            "a..b",
            &"x".repeat(64),
        ] {
            assert!(table_parts(bad).is_none(), "{bad}");
        }
        let n = Names::new("live.viewers");
        assert_eq!(n.table, "\"live\".\"viewers\"");
        assert_eq!(n.function, "\"live\".\"weir_notify_change\"");
    }

    #[test]
    fn libpq_tls_parameters_are_lifted_out_of_the_connection_string() {
        let (url, tls) = split_libpq_tls(
            "postgres://u:p@db.example.com:5432/live?sslmode=verify-full&sslrootcert=/etc/ca.pem\
             &application_name=x&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            url,
            "postgres://u:p@db.example.com:5432/live?sslmode=require&application_name=x"
        );
        assert_eq!(
            tls,
            LibpqTls {
                rootcert: Some("/etc/ca.pem".into()),
                cert: Some("/c.pem".into()),
                key: Some("/k.pem".into()),
            }
        );
        assert!(parse_url(&url).is_ok());
        let (url, tls) = split_libpq_tls("host=db user=weir sslmode=verify-ca sslrootcert=system");
        assert_eq!(url, "host=db user=weir sslmode=require");
        assert_eq!(tls, LibpqTls::default());
        assert!(parse_url(&url).is_ok());
        let (url, _) = split_libpq_tls("postgres://db/live?sslrootcert=/ca.pem");
        assert_eq!(url, "postgres://db/live");
        // Without libpq's extras, a URL is left as it is.
        let plain = "postgres://weir@127.0.0.1:5432/live?sslmode=disable";
        assert_eq!(split_libpq_tls(plain).0, plain);
    }

    #[test]
    fn nul_characters_are_found_anywhere() {
        assert!(has_nul(&serde_json::json!({"a": ["x\u{0}"]})));
        assert!(has_nul(&serde_json::json!({"a\u{0}": 1})));
        assert!(!has_nul(&serde_json::json!({"a": "\\u0000"})));
    }
}
