//! What the Google Cloud Pub/Sub components share: the client (gRPC over tonic, from the
//! `gcloud-pubsub` crate), credentials, resource names and how a gRPC status classifies.
//!
//! Credentials: `credentials_path` (a service-account JSON file) if set, else Google's
//! Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user credentials,
//! the metadata server). With `emulator_host` (or `PUBSUB_EMULATOR_HOST`, as every Google client
//! reads it) weir talks plain gRPC to that emulator, without credentials.

use std::time::Duration;

use gcloud_gax::conn::{ConnectionOptions, Environment};
use gcloud_gax::grpc::{Code, Status};
use gcloud_pubsub::client::{Client, ClientConfig};

use crate::config::{ConfigError, Origin};
use crate::retry::FailureClass;

use gcloud_pubsub::apiv1::conn_pool::PUBSUB;
pub use gcloud_pubsub::client::google_cloud_auth;

/// The variable Google's clients read for an emulator's `host:port`.
pub const EMULATOR_VAR: &str = "PUBSUB_EMULATOR_HOST";

/// Pub/Sub's largest message (data and attributes) and request.
pub const MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Longest a gRPC call may take before weir gives up on it (a pull waits for messages at most
/// about this long when there are none).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and as whom a Pub/Sub component connects.
#[derive(Debug, Clone, Default)]
pub struct Connection<'a> {
    pub project_id: &'a str,
    pub credentials_path: Option<&'a str>,
    pub emulator_host: Option<&'a str>,
    pub pool_size: usize,
}

/// A client for `c`. Connecting is lazy; the caller checks its topic or subscription.
pub async fn connect(c: &Connection<'_>) -> anyhow::Result<Client> {
    let emulator = c
        .emulator_host
        .map(str::to_string)
        .or_else(|| std::env::var(EMULATOR_VAR).ok().filter(|v| !v.is_empty()));
    let mut cfg = ClientConfig {
        pool_size: c.pool_size.max(1),
        project_id: Some(c.project_id.to_string()),
        connection_option: ConnectionOptions {
            timeout: Some(CALL_TIMEOUT),
            connect_timeout: Some(Duration::from_secs(10)),
            http2_keep_alive_interval: Some(Duration::from_secs(30)),
            keep_alive_timeout: Some(Duration::from_secs(10)),
            keep_alive_while_idle: Some(true),
        },
        endpoint: PUBSUB.to_string(),
        ..ClientConfig::default()
    };
    match emulator {
        Some(host) => cfg.environment = Environment::Emulator(host),
        None => {
            // tonic's TLS takes rustls's process default; weir builds with ring.
            let _ = rustls::crypto::ring::default_provider().install_default();
            cfg.environment =
                Environment::GoogleCloud(Box::new(token_source::NoopTokenSourceProvider {}));
            cfg = match c.credentials_path {
                Some(path) => {
                    let file = google_cloud_auth::credentials::CredentialsFile::new_from_file(
                        path.to_string(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("reading credentials_path `{path}`: {e}"))?;
                    cfg.with_credentials(file).await
                }
                None => cfg.with_auth().await,
            }
            .map_err(|e| anyhow::anyhow!("Google Cloud credentials: {e}"))?;
            // The config's project, not the credentials'.
            cfg.project_id = Some(c.project_id.to_string());
        }
    }
    Ok(Client::new(cfg).await?)
}

/// `projects/<project>/<kind>/<id>` for `id` (an id, or already such a name).
pub fn full_name(project: &str, kind: &str, id: &str) -> String {
    if id.starts_with("projects/") {
        id.to_string()
    } else {
        format!("projects/{project}/{kind}/{id}")
    }
}

/// Checks a project id and a topic or subscription id (or full name) offline, with Pub/Sub's
/// rules: a project id of 6 to 30 lowercase letters, digits and hyphens (or a domain-scoped
/// `example.com:proj`); an id of 3 to 255 letters, digits and `-_.~+%`, starting with a letter,
/// not with `goog`.
pub fn check_names(
    origin: &Origin,
    project_id: &str,
    key: &str,
    id: &str,
    kind: &str,
) -> Result<(), ConfigError> {
    let project_ok = |p: &str| {
        let p = p.rsplit(':').next().unwrap_or(p);
        (6..=30).contains(&p.len())
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && p.as_bytes()[0].is_ascii_lowercase()
    };
    // The emulator takes any project id; Google's ids are 6 to 30 characters.
    if project_id.is_empty() || project_id.contains('/') {
        return Err(origin.error(
            "project_id",
            format!("expected a Google Cloud project id, found {project_id:?}"),
        ));
    }
    if !project_ok(project_id) {
        tracing::debug!(
            project_id,
            "project id is not in Google's format (fine on an emulator)"
        );
    }
    let name = match id.strip_prefix("projects/") {
        Some(rest) => {
            let mut parts = rest.split('/');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(p), Some(k), Some(n), None) if !p.is_empty() && k == kind => n,
                _ => {
                    return Err(origin.error(
                        key,
                        format!("expected an id or `projects/<project>/{kind}/<id>`, found {id:?}"),
                    ))
                }
            }
        }
        None => id,
    };
    let ok = (3..=255).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphabetic()
        && !name.starts_with("goog")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b));
    if !ok {
        return Err(origin.error(
            key,
            format!(
                "expected 3 to 255 letters, digits or `-_.~+%`, starting with a letter (not \
                 `goog`), found {name:?}"
            ),
        ));
    }
    Ok(())
}

/// How a failed call classifies for the retry policy.
pub fn classify(s: &Status) -> FailureClass {
    match s.code() {
        Code::NotFound
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::InvalidArgument => FailureClass::Setup,
        Code::ResourceExhausted => FailureClass::Throttle,
        _ => FailureClass::Transient,
    }
}

/// A status for logs and errors: its code and message (never credentials: Pub/Sub's messages
/// name resources, not tokens).
pub fn describe(s: &Status) -> String {
    let msg = s.message();
    if msg.is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {msg}", s.code())
    }
}

/// The start-up check's error for a failed call about `what` (e.g. "subscription `x`").
pub fn unusable(what: &str, s: &Status) -> anyhow::Error {
    match s.code() {
        Code::NotFound => anyhow::anyhow!("the {what} does not exist"),
        Code::PermissionDenied | Code::Unauthenticated => anyhow::anyhow!(
            "Pub/Sub refused the credentials for the {what}: {}",
            describe(s)
        ),
        _ => anyhow::anyhow!("cannot reach Pub/Sub for the {what}: {}", describe(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::new("weir.toml", "source")
    }

    #[test]
    fn names_follow_pubsubs_rules() {
        let o = origin();
        assert!(check_names(
            &o,
            "acme-project",
            "subscription",
            "enriched-good",
            "subscriptions"
        )
        .is_ok());
        assert!(check_names(
            &o,
            "acme-project",
            "subscription",
            "projects/other-proj/subscriptions/enriched",
            "subscriptions"
        )
        .is_ok());
        let e = check_names(
            &o,
            "acme-project",
            "subscription",
            "projects/p/topics/t",
            "subscriptions",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("projects/<project>/subscriptions/<id>"),
            "{e}"
        );
        let e = check_names(&o, "acme-project", "topic", "goog-x", "topics").unwrap_err();
        assert!(e.to_string().contains("not `goog`"), "{e}");
        assert!(check_names(&o, "acme-project", "topic", "ab", "topics").is_err());
        assert!(check_names(&o, "acme-project", "topic", "a b c", "topics").is_err());
        assert!(check_names(&o, "", "topic", "abc", "topics").is_err());
        assert_eq!(full_name("p", "topics", "t"), "projects/p/topics/t");
        assert_eq!(
            full_name("p", "topics", "projects/q/topics/t"),
            "projects/q/topics/t"
        );
    }

    #[test]
    fn statuses_classify_for_the_retry_policy() {
        assert_eq!(
            classify(&Status::new(Code::NotFound, "x")),
            FailureClass::Setup
        );
        assert_eq!(
            classify(&Status::new(Code::PermissionDenied, "x")),
            FailureClass::Setup
        );
        assert_eq!(
            classify(&Status::new(Code::ResourceExhausted, "x")),
            FailureClass::Throttle
        );
        assert_eq!(
            classify(&Status::new(Code::Unavailable, "x")),
            FailureClass::Transient
        );
        assert_eq!(
            describe(&Status::new(Code::Unavailable, "gone")),
            "Unavailable: gone"
        );
    }
}
