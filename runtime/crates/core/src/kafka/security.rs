//! Security settings of weir's Kafka clients: TLS, SASL and secrets, shared by the Kafka source
//! (and through it the state changelog), the Kafka sink and the dead-letter sink.
//!
//! ```toml
//! [source.tls]                      # TLS on (security.protocol SSL, or SASL_SSL with [sasl])
//! ca_file = "/etc/kafka/ca.pem"     # CAs that sign the brokers' certificates; none: the system's
//! cert_file = "/etc/kafka/client.pem"  # mutual TLS: the client's certificate (PEM)
//! key_file = "/etc/kafka/client.key"   # and its key (PEM)
//! key_password = { env = "KAFKA_KEY_PASSWORD" }   # if the key is encrypted
//! verify = true                     # false: accept any broker certificate (logs a warning)
//!
//! [source.sasl]
//! mechanism = "SCRAM-SHA-512"       # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
//! username = "weir"
//! password = { env = "KAFKA_PASSWORD" }   # or { file = "/run/secrets/kafka" }, or a string
//! ```
//!
//! Every secret ([`Value`]) is a string, `{ env = "VAR" }` or `{ file = "/path" }` (the file's
//! text without its trailing newline), and so is every value of the `options` table. Resolved
//! secrets are remembered ([`register_secret`]) so that [`redact`] can take them out of any text
//! weir prints (its log writer, its error messages); `Debug` never prints an inline value.
//! Errors about `options` never echo the value of a key that looks secret, or of a key librdkafka
//! does not know (a misspelt `sasl.pasword` is a password all the same).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use serde::Deserialize;

use crate::config::{ConfigError, Origin};

const REDACTED: &str = "[redacted]";

/// Secrets seen so far (resolved passwords, secret-looking `options` values), longest first.
static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Remembers `secret`, so that [`redact`] takes it out of text. Values shorter than 4
/// characters are not remembered (they would mangle unrelated text).
pub fn register_secret(secret: &str) {
    if secret.chars().count() < 4 {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|x| x == secret) {
        s.push(secret.to_string());
        s.sort_by_key(|x| std::cmp::Reverse(x.len()));
    }
}

/// `text` with every registered secret replaced by `[redacted]`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let s = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !s.iter().any(|x| text.contains(x.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for x in s.iter() {
        out = out.replace(x.as_str(), REDACTED);
    }
    Cow::Owned(out)
}

/// Whether a librdkafka setting's name looks like it holds a secret (passwords, keys, tokens,
/// JAAS configs), misspellings included.
pub fn is_sensitive(key: &str) -> bool {
    const MARKS: &[&str] = &[
        "pass",
        "pasw",
        "pwd",
        "secret",
        "token",
        "jaas",
        "key.pem",
        "private",
        "credential",
        "oauthbearer.config",
    ];
    let k = key.to_ascii_lowercase();
    MARKS.iter().any(|m| k.contains(m))
        || k.split(['.', '_', '-']).any(|seg| {
            ["password", "secret", "token"]
                .iter()
                .any(|w| seg.len() >= 5 && strsim::levenshtein(seg, w) <= 2)
        })
}

/// A secret's text; `Debug` and `Display` print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps (and registers, see [`register_secret`]) a secret.
    pub fn new(text: impl Into<String>) -> Secret {
        let text = text.into();
        register_secret(&text);
        Secret(text)
    }

    /// The secret itself, for the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A setting's value: written in the config (a string, number or boolean), or read from an
/// environment variable (`{ env = "VAR" }`) or a file (`{ file = "/path" }`) when the config is
/// checked. `Debug` shows where it comes from, never an inline value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Inline(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Inline(_) => f.write_str(REDACTED),
            Value::Env(name) => write!(f, "{{ env = {name:?} }}"),
            Value::File(path) => write!(f, "{{ file = {:?} }}", path.display().to_string()),
        }
    }
}

impl Value {
    /// The value; an error at `key` (below `origin`) if its variable is unset or its file
    /// cannot be read. The error never holds the value.
    pub fn resolve(&self, origin: &Origin, key: &str) -> Result<String, ConfigError> {
        match self {
            Value::Inline(s) => Ok(s.clone()),
            Value::Env(name) => std::env::var(name).map_err(|e| {
                origin.error(
                    key,
                    match e {
                        std::env::VarError::NotPresent => format!(
                            "expected the environment variable `{name}` to be set, found it unset"
                        ),
                        std::env::VarError::NotUnicode(_) => format!(
                            "expected the environment variable `{name}` to hold UTF-8 text, found other bytes"
                        ),
                    },
                )
            }),
            Value::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| {
                    origin.error(
                        key,
                        format!(
                            "expected a readable UTF-8 file holding the value, found {}: {e}",
                            path.display()
                        ),
                    )
                }),
        }
    }

    /// [`Value::resolve`], as a [`Secret`]; an empty value is an error.
    pub fn secret(&self, origin: &Origin, key: &str) -> Result<Secret, ConfigError> {
        let v = self.resolve(origin, key)?;
        if v.is_empty() {
            let from = match self {
                Value::Inline(_) => "an empty string".to_string(),
                Value::Env(name) => format!("the environment variable `{name}` empty"),
                Value::File(path) => format!("{} empty", path.display()),
            };
            return Err(origin.error(key, format!("expected a non-empty value, found {from}")));
        }
        Ok(Secret::new(v))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, { env = \"VARIABLE\" } or { file = \"/path\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Inline(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
                Ok(Value::Inline(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Inline(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Inline(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Inline(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Inline(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Value, A::Error> {
                use serde::de::Error;
                let mut out = None;
                while let Some(k) = map.next_key::<String>()? {
                    let v: String = map.next_value()?;
                    let value = match k.as_str() {
                        "env" => Value::Env(v),
                        "file" => Value::File(PathBuf::from(v)),
                        _ => return Err(A::Error::unknown_field(&k, &["env", "file"])),
                    };
                    if out.replace(value).is_some() {
                        return Err(A::Error::custom(
                            "expected one of `env` or `file`, found both",
                        ));
                    }
                }
                out.ok_or_else(|| {
                    A::Error::custom("expected `env` or `file`, found an empty table")
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `options` table: librdkafka settings applied last, each value a [`Value`]. `Debug` shows
/// the keys and where their values come from, never a value.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Options(pub BTreeMap<String, Value>);

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl Options {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn yes() -> bool {
    true
}

/// `[tls]`: TLS to the brokers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM file of the CAs that sign the brokers' certificates (none: the system's CAs).
    pub ca_file: Option<PathBuf>,
    /// Mutual TLS: the client's certificate (PEM) …
    pub cert_file: Option<PathBuf>,
    /// … and its private key (PEM).
    pub key_file: Option<PathBuf>,
    /// The key's password, if it is encrypted.
    pub key_password: Option<Value>,
    /// Whether the brokers' certificates (and host names) are verified.
    #[serde(default = "yes")]
    pub verify: bool,
}

/// `[sasl]`: authentication with a user name and password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    pub mechanism: Mechanism,
    pub username: Value,
    pub password: Value,
}

/// The SASL mechanisms weir's librdkafka offers without extra libraries. (OAUTHBEARER needs
/// either a token callback or librdkafka's OIDC support, which needs libcurl; GSSAPI needs
/// Cyrus SASL: neither is built in.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl<'de> Deserialize<'de> for Mechanism {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];
        let s = String::deserialize(d)?;
        match s.as_str() {
            "PLAIN" => Ok(Mechanism::Plain),
            "SCRAM-SHA-256" => Ok(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(Mechanism::ScramSha512),
            other => Err(serde::de::Error::unknown_variant(other, NAMES)),
        }
    }
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// One librdkafka setting and the config key it came from.
#[derive(Clone)]
pub struct Setting {
    pub key: String,
    pub value: String,
    /// The config key (below the component) that set it, e.g. `sasl.password`,
    /// `options."session.timeout.ms"`.
    pub from: String,
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value: &dyn fmt::Debug = if is_sensitive(&self.key) {
            &REDACTED
        } else {
            &self.value
        };
        write!(f, "{} = {value:?} (from {})", self.key, self.from)
    }
}

/// The security and `options` settings of one client, checked, with secrets resolved.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub settings: Vec<Setting>,
    /// What is unsafe about them (TLS verification off, a password sent in clear text).
    pub warnings: Vec<String>,
}

impl Resolved {
    /// The config key that set librdkafka's `key`, if one did.
    pub fn source_of(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|s| s.key == key)
            .map(|s| s.from.as_str())
    }

    /// Adds the settings to `c`.
    pub fn apply(&self, c: &mut ClientConfig) {
        for s in &self.settings {
            c.set(&s.key, &s.value);
        }
    }

    /// Logs the warnings (component: e.g. `source`).
    pub fn warn(&self, component: &str) {
        for w in &self.warnings {
            tracing::warn!(component, "kafka: {w}");
        }
    }
}

/// The librdkafka settings of `tls`, `sasl` and `options` (in this order; `options` may not set
/// what `tls` or `sasl` set). Files named must be readable; environment variables must be set.
pub fn resolve(
    tls: Option<&Tls>,
    sasl: Option<&Sasl>,
    options: &Options,
    origin: &Origin,
) -> Result<Resolved, ConfigError> {
    let mut r = Resolved::default();
    fn push(settings: &mut Vec<Setting>, key: &str, value: String, from: &str) {
        settings.push(Setting {
            key: key.to_string(),
            value,
            from: from.to_string(),
        })
    }
    let protocol = match (tls.is_some(), sasl.is_some()) {
        (true, false) => Some(("SSL", "tls")),
        (true, true) => Some(("SASL_SSL", "tls")),
        (false, true) => Some(("SASL_PLAINTEXT", "sasl")),
        (false, false) => None,
    };
    if let Some((p, from)) = protocol {
        push(&mut r.settings, "security.protocol", p.to_string(), from);
    }
    let mut warnings = Vec::new();
    if let Some(t) = tls {
        match &t.ca_file {
            Some(p) => {
                readable(p, origin, "tls.ca_file")?;
                push(
                    &mut r.settings,
                    "ssl.ca.location",
                    path_text(p),
                    "tls.ca_file",
                );
            }
            // librdkafka looks for the system's CA bundle in the usual places.
            None if t.verify => push(&mut r.settings, "ssl.ca.location", "probe".into(), "tls"),
            None => {}
        }
        match (&t.cert_file, &t.key_file) {
            (Some(c), Some(k)) => {
                readable(c, origin, "tls.cert_file")?;
                readable(k, origin, "tls.key_file")?;
                push(
                    &mut r.settings,
                    "ssl.certificate.location",
                    path_text(c),
                    "tls.cert_file",
                );
                push(
                    &mut r.settings,
                    "ssl.key.location",
                    path_text(k),
                    "tls.key_file",
                );
            }
            (Some(_), None) => {
                return Err(origin.error(
                    "tls.key_file",
                    "expected the client key's file (PEM) with `cert_file`, found none",
                ))
            }
            (None, Some(_)) => {
                return Err(origin.error(
                    "tls.cert_file",
                    "expected the client certificate's file (PEM) with `key_file`, found none",
                ))
            }
            (None, None) => {}
        }
        if let Some(pw) = &t.key_password {
            if t.key_file.is_none() {
                return Err(origin.error(
                    "tls.key_password",
                    "expected it only with `key_file` (the key it decrypts), found no `key_file`",
                ));
            }
            let pw = pw.secret(origin, "tls.key_password")?;
            push(
                &mut r.settings,
                "ssl.key.password",
                pw.expose().to_string(),
                "tls.key_password",
            );
        }
        if !t.verify {
            push(
                &mut r.settings,
                "enable.ssl.certificate.verification",
                "false".into(),
                "tls.verify",
            );
            push(
                &mut r.settings,
                "ssl.endpoint.identification.algorithm",
                "none".into(),
                "tls.verify",
            );
            warnings.push(format!(
                "{}: TLS certificate verification is OFF (`tls.verify = false`): any host can \
                 pose as the brokers and read the traffic, credentials included",
                origin.key
            ));
        }
    }
    if let Some(s) = sasl {
        push(
            &mut r.settings,
            "sasl.mechanism",
            s.mechanism.name().into(),
            "sasl.mechanism",
        );
        let user = s.username.resolve(origin, "sasl.username")?;
        if user.is_empty() {
            return Err(origin.error("sasl.username", "expected a user name, found an empty one"));
        }
        push(&mut r.settings, "sasl.username", user, "sasl.username");
        let pw = s.password.secret(origin, "sasl.password")?;
        push(
            &mut r.settings,
            "sasl.password",
            pw.expose().to_string(),
            "sasl.password",
        );
        if tls.is_none() {
            warnings.push(if s.mechanism == Mechanism::Plain {
                format!(
                    "{}: SASL PLAIN without TLS (SASL_PLAINTEXT) SENDS THE PASSWORD IN CLEAR \
                     TEXT to the brokers: add a `tls` table",
                    origin.key
                )
            } else {
                format!(
                    "{}: SASL without TLS (SASL_PLAINTEXT): records travel unencrypted; add a \
                     `tls` table",
                    origin.key
                )
            });
        }
    }
    let typed: Vec<(String, String)> = r
        .settings
        .iter()
        .map(|s| (s.key.clone(), s.from.clone()))
        .collect();
    for (key, value) in &options.0 {
        let at = format!("options.\"{key}\"");
        if let Some((_, from)) = typed.iter().find(|(k, _)| k == key) {
            return Err(origin.error(
                &at,
                format!("expected each setting in one place, found `{key}` set by `{from}` too"),
            ));
        }
        let v = value.resolve(origin, &at)?;
        if is_sensitive(key) || !matches!(value, Value::Inline(_)) {
            register_secret(&v);
        }
        push(&mut r.settings, key, v, &at);
    }
    r.warnings = warnings;
    Ok(r)
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

/// An error unless `p` is a file this process can open.
fn readable(p: &Path, origin: &Origin, key: &str) -> Result<(), ConfigError> {
    let fail = |found: String| {
        Err(origin.error(
            key,
            format!(
                "expected a readable PEM file, found {}: {found}",
                p.display()
            ),
        ))
    };
    match std::fs::metadata(p) {
        Err(e) => return fail(e.to_string()),
        Ok(m) if !m.is_file() => return fail("not a file".into()),
        Ok(_) => {}
    }
    match std::fs::File::open(p) {
        Ok(_) => Ok(()),
        Err(e) => fail(e.to_string()),
    }
}

/// A librdkafka client error as text, with no secret in it: a rejected setting is named, and
/// its value shown only if it is neither secret-looking nor a setting librdkafka does not know.
pub fn describe_error(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(res, desc, key, value) => {
            use rdkafka::types::RDKafkaConfRes;
            let unknown = *res == RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN;
            let desc = if value.is_empty() {
                desc.clone()
            } else if unknown || is_sensitive(key) {
                desc.replace(value.as_str(), REDACTED)
            } else {
                desc.clone()
            };
            let found = if unknown || is_sensitive(key) {
                String::new()
            } else {
                format!(" (found `{value}`)")
            };
            redact(&format!("`{key}`: {desc}{found}")).into_owned()
        }
        other => redact(&other.to_string()).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin::new("p.toml", "source")
    }

    fn parse<T: serde::de::DeserializeOwned>(toml: &str) -> Result<T, ConfigError> {
        let v: config::Value = config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        origin().deserialize(v)
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Both {
        tls: Option<Tls>,
        sasl: Option<Sasl>,
        #[serde(default)]
        options: Options,
    }

    fn settings(r: &Resolved) -> Vec<(String, String)> {
        r.settings
            .iter()
            .map(|s| (s.key.clone(), s.value.clone()))
            .collect()
    }

    fn resolve_both(b: &Both) -> Result<Resolved, ConfigError> {
        resolve(b.tls.as_ref(), b.sasl.as_ref(), &b.options, &origin())
    }

    fn pem(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, "-----BEGIN CERTIFICATE-----\n").unwrap();
        p.display().to_string()
    }

    #[test]
    fn sasl_over_tls_maps_to_sasl_ssl() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pem(dir.path(), "ca.pem");
        std::env::set_var("WEIR_TEST_SEC_PW", "s3cret-env-pw\n");
        let b: Both = parse(&format!(
            "[tls]\nca_file = {ca:?}\n[sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"u\"\npassword = {{ env = \"WEIR_TEST_SEC_PW\" }}\n"
        ))
        .unwrap();
        let r = resolve_both(&b).unwrap();
        assert_eq!(
            settings(&r),
            [
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", ca.as_str()),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "u"),
                // An environment variable's value is taken as it is.
                ("sasl.password", "s3cret-env-pw\n"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(r.warnings.is_empty());
        assert_eq!(r.source_of("sasl.password"), Some("sasl.password"));
        // Neither Debug form shows the password.
        assert!(!format!("{b:?}{r:?}").contains("s3cret"), "{b:?} {r:?}");
    }

    #[test]
    fn tls_alone_is_ssl_with_client_cert_and_key_password_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            pem(dir.path(), "ca.pem"),
            pem(dir.path(), "c.pem"),
            pem(dir.path(), "c.key"),
        );
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "key-pw-123\n").unwrap();
        let b: Both = parse(&format!(
            "[tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\nkey_password = {{ file = {:?} }}\n",
            pw.display().to_string()
        ))
        .unwrap();
        let r = resolve_both(&b).unwrap();
        let s = settings(&r);
        assert_eq!(s[0], ("security.protocol".into(), "SSL".into()));
        assert!(s.contains(&("ssl.certificate.location".into(), cert)));
        assert!(s.contains(&("ssl.key.location".into(), key)));
        // A file's trailing newline is not part of the password.
        assert!(s.contains(&("ssl.key.password".into(), "key-pw-123".into())));
        assert!(!format!("{b:?}{r:?}").contains("key-pw-123"));
    }

    #[test]
    fn no_ca_file_probes_the_system_cas_and_verify_off_warns() {
        let b: Both = parse("[tls]\n").unwrap();
        let r = resolve_both(&b).unwrap();
        assert!(settings(&r).contains(&("ssl.ca.location".into(), "probe".into())));
        assert!(r.warnings.is_empty());
        let b: Both = parse("[tls]\nverify = false\n").unwrap();
        let r = resolve_both(&b).unwrap();
        let s = settings(&r);
        assert!(s.contains(&("enable.ssl.certificate.verification".into(), "false".into())));
        assert!(s.contains(&(
            "ssl.endpoint.identification.algorithm".into(),
            "none".into()
        )));
        assert!(r.warnings[0].contains("verification is OFF"), "{r:?}");
    }

    #[test]
    fn sasl_plain_without_tls_warns_loudly() {
        let b: Both =
            parse("[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"pw-plain-1\"\n")
                .unwrap();
        let r = resolve_both(&b).unwrap();
        assert_eq!(
            settings(&r)[0],
            ("security.protocol".into(), "SASL_PLAINTEXT".into())
        );
        assert!(r.warnings[0].contains("CLEAR TEXT"), "{r:?}");
    }

    #[test]
    fn files_must_be_readable_and_errors_name_the_key() {
        let e = resolve_both(&parse("[tls]\nca_file = \"/nonexistent/ca.pem\"\n").unwrap())
            .unwrap_err();
        assert_eq!(e.key, "source.tls.ca_file");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let cert = pem(dir.path(), "c.pem");
        let e =
            resolve_both(&parse(&format!("[tls]\ncert_file = {cert:?}\n")).unwrap()).unwrap_err();
        assert_eq!(e.key, "source.tls.key_file");
    }

    #[test]
    fn unset_variables_and_bad_tables_are_errors_without_values() {
        let b: Both = parse(
            "[sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword = { env = \"WEIR_TEST_SEC_UNSET\" }\n",
        )
        .unwrap();
        let e = resolve_both(&b).unwrap_err();
        assert_eq!(e.key, "source.sasl.password");
        assert!(e.message.contains("WEIR_TEST_SEC_UNSET"), "{e}");
        let e = parse::<Both>(
            "[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = { enb = \"X\" }\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "source.sasl.password");
        assert!(e.message.contains("`env`"), "{e}");
        let e = parse::<Both>(
            "[sasl]\nmechanism = \"OAUTHBEARER\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap_err();
        assert!(e.message.contains("SCRAM-SHA-512"), "{e}");
        // A misspelt key in [sasl] is named; its value is not echoed.
        let e = parse::<Both>(
            "[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npasword = \"hunter2-typo\"\n",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn options_take_env_values_and_may_not_repeat_typed_settings() {
        std::env::set_var("WEIR_TEST_SEC_OPT", "opt-secret-42");
        let b: Both = parse(
            "[options]\n\"session.timeout.ms\" = 6000\n\"sasl.oauthbearer.client.secret\" = { env = \"WEIR_TEST_SEC_OPT\" }\n",
        )
        .unwrap();
        let r = resolve_both(&b).unwrap();
        assert!(settings(&r).contains(&("session.timeout.ms".into(), "6000".into())));
        assert!(settings(&r).contains(&(
            "sasl.oauthbearer.client.secret".into(),
            "opt-secret-42".into()
        )));
        assert!(!format!("{b:?}{r:?}").contains("opt-secret-42"));
        assert_eq!(redact("x opt-secret-42 y"), "x [redacted] y");
        let b: Both = parse(
            "[sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword = \"pw-pw-pw\"\n[options]\n\"sasl.password\" = \"other\"\n",
        )
        .unwrap();
        let e = resolve_both(&b).unwrap_err();
        assert_eq!(e.key, "source.options.\"sasl.password\"");
        assert!(!e.to_string().contains("pw-pw-pw") && !e.to_string().contains("other"));
    }

    #[test]
    fn sensitive_keys_include_misspellings() {
        for k in [
            "sasl.password",
            "sasl.pasword",
            "sasl.passwrd",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ] {
            assert!(is_sensitive(k), "{k}");
        }
        for k in [
            "bootstrap.servers",
            "ssl.ca.location",
            "session.timeout.ms",
            "sasl.username",
        ] {
            assert!(!is_sensitive(k), "{k}");
        }
    }

    #[test]
    fn librdkafka_errors_do_not_echo_secret_values() {
        let mut c = ClientConfig::new();
        c.set("sasl.pasword", "Leaky-Typo-Secret");
        let e = c.create_native_config().err().unwrap();
        let text = describe_error(&e);
        assert!(text.contains("sasl.pasword"), "{text}");
        assert!(!text.contains("Leaky-Typo-Secret"), "{text}");
        // A plain setting's bad value is shown.
        let mut c = ClientConfig::new();
        c.set("security.protocol", "TLS-please");
        let text = describe_error(&c.create_native_config().err().unwrap());
        assert!(text.contains("TLS-please"), "{text}");
    }
}
