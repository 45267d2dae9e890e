//! `js`: a JavaScript transformation with Snowbridge 5.x's contract (`main(input)` returning
//! `Data`, `PartitionKey`, `FilterOut`, `HTTPHeaders`), run inside weir's WebAssembly sandbox.
//!
//! The JavaScript engine (Boa) is itself a weir transform, `weir_js.wasm` (transforms/js),
//! shipped beside weir. So a script gets what every WASM transform gets: a deadline per call, a
//! memory cap, and poison-record isolation (a script that loops, eats memory or throws on one
//! record fails that record alone, to the failure sink with the reason; the rest go on).
//!
//! In `snowplow_mode` weir turns each enriched TSV line into the analytics-SDK JSON before the
//! script sees it (`input.Data` is that object); a record that fails keeps its original TSV.
//! `HTTPHeaders` returned by the script become the record's headers (the `http` sink's
//! `dynamic_headers` sends them; the Kafka sink writes them as message headers).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;

use super::{Transform, TransformConfig, TransformType};
use crate::config::{ByteSize, ConfigError, Origin};
use crate::kafka::security::Value;
use crate::record::{Batch, Failed, Meta, Record};
use crate::snowplow;
use crate::state::MemoryBackend;
use crate::wasm::guest::BuildError;
use crate::wasm::{Guest, GuestOptions, Limits};

/// ```toml
/// [[transforms]]
/// type = "js"
/// script_path = "script.js"     # or: script = "function main(input) { return input; }"
/// timeout_sec = 15              # per call: weir calls the script on a batch of records
/// snowplow_mode = true          # input.Data is the enriched event as analytics-SDK JSON
/// # json_mode = true            # input.Data is the record parsed as a JSON object (wins)
/// # remove_nulls = true         # drop nulls and empty objects/arrays from an object Data
/// # hash_salt_secret = { env = "SHA1_SALT" }   # the salt of hash(text, "sha1"|"sha256"|"md5")
/// # max_memory = "256 MiB"      # the engine's memory, per worker
/// # engine = "/opt/weir/weir_js.wasm"   # default: $WEIR_JS_ENGINE, else found beside weir
/// # cache_dir = "/var/cache/weir/wasm"  # where the compiled engine is cached (as `wasm`)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Read at start-up; wins over `script` (as in Snowbridge).
    pub script_path: Option<PathBuf>,
    pub script: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_sec: u64,
    #[serde(default)]
    pub snowplow_mode: bool,
    #[serde(default)]
    pub json_mode: bool,
    #[serde(default)]
    pub remove_nulls: bool,
    pub hash_salt_secret: Option<Value>,
    #[serde(default = "default_memory")]
    pub max_memory: ByteSize,
    pub engine: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
}

/// Snowbridge's default `timeout_sec`.
fn default_timeout() -> u64 {
    15
}

fn default_memory() -> ByteSize {
    ByteSize(256 << 20)
}

/// Where weir looks for the engine when the config does not say.
pub const ENGINE_ENV: &str = "WEIR_JS_ENGINE";
const ENGINE_FILE: &str = "weir_js.wasm";
/// The engine's place below the repository (and below `dist/`, the image's /opt/weir).
const ENGINE_IN_TREE: &str = "transforms/target/wasm32-unknown-unknown/release/weir_js.wasm";

/// The engine: `engine`, else `$WEIR_JS_ENGINE`, else beside the weir binary (`weir_js.wasm`
/// there, or in `../transforms/...` of the release layout), else in the working directory's
/// `transforms/target/...` (a checkout, after `make js-engine`).
pub fn engine_path(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os(ENGINE_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut tried = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        tried.push(dir.join(ENGINE_FILE));
        tried.push(dir.join("..").join(ENGINE_IN_TREE));
    }
    tried.push(PathBuf::from(ENGINE_IN_TREE));
    if let Some(p) = tried.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(format!(
        "the JavaScript engine ({ENGINE_FILE}) was not found (looked in {}); build it with \
         `make js-engine`, or name it with `engine` or ${ENGINE_ENV}",
        tried
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

impl TransformType for Config {
    const TYPE: &'static str = "js";
}

impl Config {
    fn source(&self, origin: &Origin) -> Result<String, ConfigError> {
        match (&self.script_path, &self.script) {
            (Some(p), _) => std::fs::read_to_string(p).map_err(|e| {
                origin.error(
                    "script_path",
                    format!("cannot read the script {}: {e}", p.display()),
                )
            }),
            (None, Some(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(origin.error(
                "script_path",
                "expected `script_path` or `script`, found neither",
            )),
        }
    }
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        let script = self.source(origin)?;
        if self.timeout_sec == 0 {
            return Err(origin.error("timeout_sec", "expected at least 1, found 0"));
        }
        let max_memory = self.max_memory.0;
        if !(16 << 20..=4 << 30).contains(&max_memory) {
            return Err(origin.error(
                "max_memory",
                format!("expected 16 MiB to 4 GiB, found {max_memory} bytes"),
            ));
        }
        let salt = match &self.hash_salt_secret {
            Some(v) => v.resolve(origin, "hash_salt_secret")?,
            None => String::new(),
        };
        let engine = engine_path(self.engine.as_deref()).map_err(|m| origin.error("engine", m))?;
        // json_mode wins over snowplow_mode, as in Snowbridge.
        let snowplow_mode = self.snowplow_mode && !self.json_mode;
        let mode = if self.json_mode || snowplow_mode {
            "json"
        } else {
            "string"
        };
        let options = GuestOptions {
            label: label.to_string(),
            config: vec![
                ("script".into(), script),
                ("mode".into(), mode.into()),
                ("remove_nulls".into(), self.remove_nulls.to_string()),
                ("hash_salt_secret".into(), salt),
            ],
            limits: Limits {
                timeout: std::time::Duration::from_secs(self.timeout_sec),
                max_memory: max_memory as usize,
                // Boa's parser and interpreter recurse deeper than a hand-written transform.
                max_stack: 2 << 20,
                ..Limits::default()
            },
            state: MemoryBackend::new(),
            cache_dir: self
                .cache_dir
                .clone()
                .unwrap_or_else(crate::wasm::cache::default_dir),
        };
        let guest = Guest::new(&engine, options).map_err(|e| match e {
            // The script does not compile, or has no `main`.
            BuildError::Init(m) => origin.error(
                if self.script_path.is_some() {
                    "script_path"
                } else {
                    "script"
                },
                m,
            ),
            BuildError::Load(m) => origin.error("engine", format!("{}: {m}", engine.display())),
            BuildError::Cache(m) => origin.error("cache_dir", m),
        })?;
        Ok(Box::new(Js {
            guest,
            label: label.to_string(),
            snowplow_mode,
            json: snowplow::Scratch::default(),
            originals: Vec::new(),
        }))
    }
}

struct Js {
    guest: Guest,
    label: String,
    snowplow_mode: bool,
    json: snowplow::Scratch,
    /// In `snowplow_mode`, the TSV of each record handed to the engine, by index.
    originals: Vec<Bytes>,
}

impl Js {
    /// Turns the batch's TSV lines into analytics-SDK JSON (one buffer per batch, as
    /// `spEnrichedToJson` does), keeping each converted record's TSV in `originals`; a line
    /// that is not an enriched event fails here.
    fn convert(&mut self, batch: &mut Batch) -> Vec<Record> {
        self.originals.clear();
        let (label, failed) = (&self.label, &mut batch.failed);
        super::sp_enriched_to_json::to_json_records(
            &mut batch.records,
            &mut self.json,
            Some(&mut self.originals),
            |r, e| {
                failed.push(Failed::invalid(
                    r,
                    label,
                    format!("failed making input for the JavaScript runtime: {e}"),
                ))
            },
        )
    }
}

impl Transform for Js {
    fn process(&mut self, batch: &mut Batch) {
        let records = if self.snowplow_mode {
            self.convert(batch)
        } else {
            std::mem::take(&mut batch.records)
        };
        if records.is_empty() {
            return;
        }
        let read_at = crate::wasm::guest::batch_time_ms(batch);
        let out = self.guest.run(records, read_at);
        let restore = |i: usize, mut r: Record, originals: &[Bytes]| {
            if let Some(o) = originals.get(i) {
                r.value = o.clone();
            }
            r
        };
        let originals: &[Bytes] = if self.snowplow_mode {
            &self.originals
        } else {
            &[]
        };
        for (i, r) in out.filtered {
            batch.filtered.push(restore(i, r, originals));
        }
        for (i, r, reason) in out.failed {
            let r = restore(i, r, originals);
            batch.failed.push(Failed::invalid(r, &self.label, reason));
        }
        for (mut r, i) in out.records.into_iter().zip(out.sources) {
            match unframe(&r.value) {
                Some((headers, data)) => {
                    if let Some(h) = headers {
                        r.meta.get_or_insert_with(Box::<Meta>::default).headers = h;
                    }
                    r.value = data;
                    batch.records.push(r);
                }
                None => {
                    let r = restore(i, r, originals);
                    batch.failed.push(Failed::invalid(
                        r,
                        &self.label,
                        "the JavaScript engine returned a malformed record",
                    ));
                }
            }
        }
    }
}

/// A record's headers, in order.
type Headers = Vec<(String, Bytes)>;

/// Splits an engine output: `u32` LE length, that many bytes of headers (a JSON object of
/// strings), then the payload.
fn unframe(v: &Bytes) -> Option<(Option<Headers>, Bytes)> {
    let n = u32::from_le_bytes(v.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(n)?;
    let head = v.get(4..end)?;
    let headers = if n == 0 {
        None
    } else {
        let m: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(head).ok()?;
        Some(
            m.into_iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => Some((k, Bytes::from(s))),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?,
        )
    };
    Some((headers, v.slice(end..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unframe_reads_headers_and_payload_and_refuses_garbage() {
        let mut v = Vec::new();
        let h = br#"{"foo":"bar"}"#;
        v.extend_from_slice(&(h.len() as u32).to_le_bytes());
        v.extend_from_slice(h);
        v.extend_from_slice(b"data");
        let (headers, data) = unframe(&Bytes::from(v)).unwrap();
        assert_eq!(headers, Some(vec![("foo".into(), Bytes::from("bar"))]));
        assert_eq!(data, Bytes::from("data"));
        let (headers, data) = unframe(&Bytes::from(b"\0\0\0\0x".to_vec())).unwrap();
        assert_eq!((headers, data), (None, Bytes::from("x")));
        assert!(unframe(&Bytes::from(b"\x09\0\0\0{}".to_vec())).is_none());
        assert!(unframe(&Bytes::from(b"\0\0".to_vec())).is_none());
    }

    #[test]
    fn engine_path_prefers_the_config_and_names_what_it_tried() {
        let p = engine_path(Some(Path::new("/x/e.wasm"))).unwrap();
        assert_eq!(p, PathBuf::from("/x/e.wasm"));
    }
}
