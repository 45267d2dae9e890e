//! Loading and validating pipeline configuration.
//!
//! A config file (TOML, YAML or JSON, by extension) is read with the `config` crate, then every
//! environment variable named `WEIR__<KEY>__<KEY>…` overrides the value at that key path. Path
//! segments are joined with a double underscore and matched case-insensitively; a numeric segment
//! indexes an array: `WEIR__SINK__PATH=/tmp/out.tsv`, `WEIR__TRANSFORMS__0__REGEX='^play'`,
//! `WEIR__BATCH__MAX_RECORDS=500`.
//!
//! Deserialisation is strict (unknown keys are errors) and every error names the file, the key
//! path, what was expected and what was found, with a suggestion for a misspelt key.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Prefix of environment variables that override config values.
pub const ENV_PREFIX: &str = "WEIR__";

/// A configuration error, rendered as `file: key `key.path`: message` (without the key part when
/// the error is about the whole file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{message}", key_label(.key))]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

fn key_label(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

/// Where a component's settings came from, threaded into the builders so their own checks
/// (a regex that does not compile, a path that does not exist) report the same way.
#[derive(Debug, Clone)]
pub struct Origin {
    pub file: String,
    pub key: String,
}

impl Origin {
    pub fn new(file: &str, key: impl Into<String>) -> Self {
        Origin {
            file: file.to_string(),
            key: key.into(),
        }
    }

    /// The origin of a key below this one.
    pub fn child(&self, key: &str) -> Origin {
        Origin {
            file: self.file.clone(),
            key: join_key(&self.key, key),
        }
    }

    /// An error at this key (or at `field` below it, if non-empty).
    pub fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: join_key(&self.key, field),
            message: message.into(),
        }
    }

    /// Deserialise `value` as `T`, strictly, reporting errors at their full key path.
    pub fn deserialize<T: DeserializeOwned>(&self, value: config::Value) -> Result<T, ConfigError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let message = describe(e.inner());
            ConfigError {
                file: self.file.clone(),
                key: join_key(&self.key, &path),
                message,
            }
        })
    }
}

fn join_key(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

/// Turn a deserialisation error into "expected …, found …" with a suggestion where one helps.
fn describe(err: &config::ConfigError) -> String {
    // The config crate wraps serde's message; strip its own location suffix, we give ours.
    let raw = match err {
        config::ConfigError::Message(m) => m.clone(),
        config::ConfigError::Type {
            unexpected,
            expected,
            ..
        } => format!("expected {expected}, found {unexpected}"),
        other => other.to_string(),
    };
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" / "expected `a`" / "there are no fields"
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return unknown_key_message(name, &valid);
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        return format!("missing required key `{name}`");
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let (name, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let mut m = format!(
            "expected one of {}, found `{name}`",
            valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(s) = suggest(name, valid.iter().copied()) {
            m.push_str(&format!(" (did you mean `{s}`?)"));
        }
        return m;
    }
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        // "invalid type: string \"abc\", expected u64"
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return format!("expected {}, found {}", plain_type(expected), found);
        }
    }
    if let Some(rest) = raw.strip_prefix("invalid value: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            return format!("expected {expected}, found {found}");
        }
    }
    raw
}

fn plain_type(serde_name: &str) -> &str {
    match serde_name {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "a boolean" | "bool" => "a boolean (true or false)",
        other => other,
    }
}

/// "unknown key `x`; valid keys here: …; did you mean `y`?"
pub fn unknown_key_message(name: &str, valid: &[&str]) -> String {
    let mut m = format!("unknown key `{name}`");
    if valid.is_empty() {
        m.push_str("; this section takes no keys");
    } else {
        m.push_str("; expected one of ");
        m.push_str(
            &valid
                .iter()
                .map(|v| format!("`{v}`"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    if let Some(s) = suggest(name, valid.iter().copied()) {
        m.push_str(&format!("; did you mean `{s}`?"));
    }
    m
}

/// The closest candidate to a misspelt name, if it is close enough to be a plausible typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A config file read into a tree, with environment overrides applied.
pub struct Loaded {
    pub file: String,
    pub root: config::Value,
}

impl Loaded {
    pub fn origin(&self) -> Origin {
        Origin::new(&self.file, "")
    }
}

/// Read `path` and apply `WEIR__…` overrides from `env`.
pub fn load(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let err = |message: String| ConfigError {
        file: file.clone(),
        key: String::new(),
        message,
    };
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => config::FileFormat::Toml,
        Some("yaml" | "yml") => config::FileFormat::Yaml,
        Some("json") => config::FileFormat::Json,
        other => {
            return Err(err(format!(
                "expected a file ending in .toml, .yaml, .yml, .json or .hcl (a Snowbridge config), found {}",
                other.map_or("no extension".to_string(), |e| format!("`.{e}`"))
            )))
        }
    };
    if !path.is_file() {
        return Err(err("cannot read the file: it does not exist".to_string()));
    }
    load_source(
        file,
        config::File::from(PathBuf::from(path)).format(format),
        env,
    )
}

/// [`load`] from text already read: `file` names it in errors. (The config fuzz target's entry
/// point: no file system.)
pub fn load_str(
    file: &str,
    text: &str,
    format: config::FileFormat,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    load_source(file.to_string(), config::File::from_str(text, format), env)
}

fn load_source<S: config::Source + Send + Sync + 'static>(
    file: String,
    source: S,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigError> {
    let err = |message: String| ConfigError {
        file: file.clone(),
        key: String::new(),
        message,
    };
    let mut builder = config::Config::builder().add_source(source);
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = env_key_to_path(rest);
        builder = builder
            .set_override(key.clone(), value)
            .map_err(|e| err(format!("environment variable {name} (key `{key}`): {e}")))?;
    }
    let cfg = builder.build().map_err(|e| err(e.to_string()))?;
    let root: config::Value = cfg.try_deserialize().map_err(|e| err(e.to_string()))?;
    Ok(Loaded { file, root })
}

/// `TRANSFORMS__0__REGEX` → `transforms[0].regex`.
pub fn env_key_to_path(rest: &str) -> String {
    let mut out = String::new();
    for seg in rest.split("__").filter(|s| !s.is_empty()) {
        if seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg.to_ascii_lowercase());
        }
    }
    out
}

/// Take one key out of a table value (e.g. `type` from a component's settings).
pub fn take_key(
    value: &mut config::Value,
    key: &str,
    origin: &Origin,
) -> Result<Option<config::Value>, ConfigError> {
    match &mut value.kind {
        config::ValueKind::Table(t) => Ok(t.remove(key)),
        other => Err(origin.error(
            "",
            format!("expected a table of settings, found {}", kind_name(other)),
        )),
    }
}

pub fn kind_name(kind: &config::ValueKind) -> &'static str {
    match kind {
        config::ValueKind::Nil => "nothing",
        config::ValueKind::Boolean(_) => "a boolean",
        config::ValueKind::I64(_) | config::ValueKind::U64(_) => "an integer",
        config::ValueKind::I128(_) | config::ValueKind::U128(_) => "an integer",
        config::ValueKind::Float(_) => "a number",
        config::ValueKind::String(_) => "a string",
        config::ValueKind::Table(_) => "a table",
        config::ValueKind::Array(_) => "an array",
    }
}

/// A byte size: an integer, or a string such as `"64 KiB"`, `"1MiB"`, `"2 MB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size in bytes such as 1048576 or \"1 MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v)
                    .map(ByteSize)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    Some((num * mult as f64) as u64)
}

/// A duration: a string such as `"200ms"`, `"5s"`, `"1m"`, or an integer number of milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration such as \"200ms\" or \"5s\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration(std::time::Duration::from_millis(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(|v| Duration(std::time::Duration::from_millis(v)))
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v)
                    .map(Duration)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_keys_map_to_paths() {
        assert_eq!(env_key_to_path("SINK__PATH"), "sink.path");
        assert_eq!(
            env_key_to_path("TRANSFORMS__0__REGEX"),
            "transforms[0].regex"
        );
        assert_eq!(env_key_to_path("BATCH__MAX_RECORDS"), "batch.max_records");
    }

    #[test]
    fn suggestions_catch_typos_only() {
        let keys = ["atomic_field", "regex", "filter_action"];
        assert_eq!(suggest("atomic_feild", keys), Some("atomic_field"));
        assert_eq!(suggest("regexp", keys), Some("regex"));
        assert_eq!(suggest("zzz", keys), None);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1 MiB"), Some(1 << 20));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1 parsec"), None);
    }
}
