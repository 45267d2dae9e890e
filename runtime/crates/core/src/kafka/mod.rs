//! What weir's Kafka clients share: the Kafka source's consumer, the Kafka sink's producer (also
//! as a dead-letter topic, when it is the failure sink) and the clients of the state changelog
//! ([`changelog`]).
//!
//! * [`security`]: the `tls` and `sasl` tables and the `options` table of the source and the
//!   sink, secrets (from the config, the environment or files) and their redaction.
//! * [`client_config`]: the settings every client starts from, the component's own, then the
//!   security settings and the user's `options` table applied last (so anything else librdkafka
//!   knows passes through untouched); [`check_options`] lets librdkafka vet them offline.
//! * [`connection_settings`]: the connection and security settings of one client, for another
//!   client on the same cluster (the changelog's, from the source's consumer).
//! * [`ClientLog`]: librdkafka's logs and errors into `tracing`, remembering the last error so
//!   that a start-up check can say why the cluster cannot be had ([`check_cluster`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::{Client, ClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{ConfigError, Origin};

pub mod changelog;
pub mod security;
pub mod txn;

use security::Resolved;

/// The settings of a client that connect and authenticate it, by key prefix.
const CONNECTION_SETTINGS: &[&str] = &[
    "bootstrap.servers",
    "security.",
    "sasl.",
    "ssl.",
    "enable.ssl.",
    "enable.sasl.",
    "client.",
    "socket.",
    "broker.",
    "reconnect.",
    "debug",
];

/// A client's settings: `bootstrap.servers` and weir's log level, then what `own` sets (the
/// component's settings), then `security` (the `tls` and `sasl` tables, then the `options`
/// table, which may override anything the component set).
pub fn client_config(
    bootstrap_servers: &str,
    own: impl FnOnce(&mut ClientConfig),
    security: &Resolved,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap_servers)
        .set_log_level(RDKafkaLogLevel::Warning);
    own(&mut c);
    security.apply(&mut c);
    debug_level(&mut c);
    c
}

/// With librdkafka's `debug` set (its debug contexts), its debug lines are logged too (weir's
/// level, Warning, would drop them once the client is made).
fn debug_level(c: &mut ClientConfig) {
    if c.get("debug").is_some_and(|d| !d.is_empty()) {
        c.set_log_level(RDKafkaLogLevel::Debug);
    }
}

/// Whether librdkafka accepts the settings (unknown keys, bad values), without connecting. The
/// error names the config key that set the rejected setting (`security`: where they came from)
/// and holds no secret.
pub fn check_options(
    c: &ClientConfig,
    security: &Resolved,
    origin: &Origin,
) -> Result<(), ConfigError> {
    c.create_native_config().map(drop).map_err(|e| {
        let key = match &e {
            KafkaError::ClientConfig(_, _, key, _) => security.source_of(key).unwrap_or("options"),
            _ => "options",
        };
        origin.error(
            key,
            format!(
                "librdkafka rejected the settings: {}",
                security::describe_error(&e)
            ),
        )
    })
}

/// The error of creating a client, without secrets.
pub fn creation_error(what: &str, e: KafkaError) -> anyhow::Error {
    anyhow::anyhow!("{what}: {}", security::describe_error(&e))
}

/// The connection and security settings of `from` (bootstrap servers, TLS, SASL, socket and
/// client settings, debug), for another client of the same cluster.
pub fn connection_settings(from: &ClientConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    // `config_map` leaves out the settings rdkafka deems secret: take those by name (`get`
    // gives them).
    const HIDDEN: &[&str] = &[
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "ssl.truststore.password",
        "sasl.oauthbearer.client.secret",
    ];
    let keys: Vec<&str> = from
        .config_map()
        .into_keys()
        .chain(HIDDEN.iter().copied())
        .collect();
    for k in keys {
        if let Some(v) = from.get(k) {
            if CONNECTION_SETTINGS.iter().any(|p| k.starts_with(p)) {
                c.set(k, v);
            }
        }
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    debug_level(&mut c);
    c
}

/// librdkafka's logs into `tracing` (target `librdkafka`).
pub fn log(level: RDKafkaLogLevel, fac: &str, msg: &str) {
    use RDKafkaLogLevel::*;
    match level {
        Emerg | Alert | Critical | Error => tracing::error!(target: "librdkafka", fac, "{msg}"),
        Warning => tracing::warn!(target: "librdkafka", fac, "{msg}"),
        Notice | Info => tracing::info!(target: "librdkafka", fac, "{msg}"),
        Debug => tracing::debug!(target: "librdkafka", fac, "{msg}"),
    }
}

/// A client context that logs into `tracing` and remembers the client's last error. Clones
/// share it: keep one to ask a client that owns the other ([`check_cluster`]).
#[derive(Debug, Default, Clone)]
pub struct ClientLog {
    last_error: Arc<Mutex<Option<(KafkaError, String)>>>,
}

impl ClientLog {
    /// The last error librdkafka reported for this client (e.g. brokers down, a refused SASL
    /// authentication), as text.
    pub fn last_error(&self) -> Option<String> {
        self.lock()
            .as_ref()
            .map(|(e, reason)| format!("{e} ({reason})"))
    }

    /// Whether the last error is the cluster refusing this client (authentication or
    /// authorisation): waiting longer will not help.
    fn refused(&self) -> bool {
        self.lock()
            .as_ref()
            .and_then(|(e, _)| e.rdkafka_error_code())
            .is_some_and(refusal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(KafkaError, String)>> {
        self.last_error.lock().expect("last_error lock poisoned")
    }
}

/// Whether `code` is the cluster refusing this client (authentication, authorisation, TLS).
pub fn refusal(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        Authentication
            | SaslAuthenticationFailed
            | IllegalSASLState
            | UnsupportedSASLMechanism
            | TopicAuthorizationFailed
            | GroupAuthorizationFailed
            | ClusterAuthorizationFailed
            | SSL
    )
}

impl ClientContext for ClientLog {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            // The end of a partition a reader asked to be told of (`enable.partition.eof`).
            tracing::debug!(target: "librdkafka", "{reason}");
            return;
        }
        tracing::warn!(target: "librdkafka", error = %error, "{reason}");
        let mut last = self.lock();
        // A refusal (bad credentials, an untrusted certificate) is the cause of the "all
        // brokers down" that follows it: keep it.
        let refused = |e: &KafkaError| e.rdkafka_error_code().is_some_and(refusal);
        if refused(&error) || !last.as_ref().is_some_and(|(e, _)| refused(e)) {
            *last = Some((error, reason.to_string()));
        }
    }
}

impl ConsumerContext for ClientLog {}

/// Asks the cluster for the metadata of `topics`: whether its brokers can be reached and accept
/// this client (`log`: the client's [`ClientLog`]). Blocking (call it off the async threads).
/// Gives up after `timeout`, or at once when the cluster refuses the client's credentials; the
/// error names the cause. A topic that does not exist (yet) is only logged.
pub fn check_cluster<C: ClientContext>(
    client: &Client<C>,
    log: &ClientLog,
    topics: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    for topic in topics {
        loop {
            let slice = Duration::from_millis(500).min(timeout.saturating_sub(start.elapsed()));
            match client.fetch_metadata(Some(topic), slice) {
                Ok(md) => {
                    if let Some(e) = md
                        .topics()
                        .iter()
                        .find(|t| t.name() == *topic)
                        .and_then(|t| t.error())
                    {
                        tracing::warn!(topic, error = %RDKafkaErrorCode::from(e), "kafka: the topic cannot be used (yet)");
                    }
                    break;
                }
                Err(e) => {
                    let refused = log.refused() || e.rdkafka_error_code().is_some_and(refusal);
                    if refused || start.elapsed() >= timeout {
                        let why = if refused {
                            "the cluster refused this client"
                        } else {
                            "cannot reach the cluster"
                        };
                        let text = match log.last_error() {
                            Some(last) => {
                                format!("{why} within {timeout:?}: {e}; last client error: {last}")
                            }
                            None => format!("{why} within {timeout:?}: {e}"),
                        };
                        let hint = hint(&text);
                        return Err(anyhow::anyhow!("{}{hint}", security::redact(&text)));
                    }
                    // Some failures come back at once (no broker up): do not spin.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    Ok(())
}

/// What to check, for the failures whose librdkafka text does not say it plainly.
fn hint(error: &str) -> &'static str {
    if error.contains("certificate verify failed") {
        " (TLS: the brokers' certificate is not signed by a CA this client trusts: check \
         `tls.ca_file`)"
    } else if error.contains("Authentication failed") || error.contains("invalid credentials") {
        " (SASL: the brokers refused the user name or password: check `sasl.username` and \
         `sasl.password`)"
    } else if error.contains("SSL handshake failed") {
        " (TLS: the handshake failed: check `tls` and that the listener speaks TLS)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_settings_keep_secrets_and_tls_switches() {
        let mut c = ClientConfig::new();
        for (k, v) in [
            ("bootstrap.servers", "b:9093"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.password", "pw-for-changelog"),
            ("ssl.key.password", "key-pw"),
            ("enable.ssl.certificate.verification", "false"),
            ("group.id", "g"),
        ] {
            c.set(k, v);
        }
        let out = connection_settings(&c);
        assert_eq!(out.get("sasl.password"), Some("pw-for-changelog"));
        assert_eq!(out.get("ssl.key.password"), Some("key-pw"));
        assert_eq!(
            out.get("enable.ssl.certificate.verification"),
            Some("false")
        );
        assert_eq!(out.get("group.id"), None);
    }
}
