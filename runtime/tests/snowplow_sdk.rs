//! SDK conformance of `weir_core::snowplow::to_json`: for every enriched line of the fixtures, the
//! JSON weir writes must equal, key for key and value for value (numbers compared numerically),
//! the JSON of the Snowplow analytics SDKs.
//!
//! Where each expectation comes from:
//! * `tests/fixtures/sdk/<name>.expected.jsonl` for `<name>.tsv` (copies of
//!   `shared/fixtures/snowplow/enriched/*.tsv`): written by `tests/fixtures/sdk/gen_expected.py`,
//!   which runs the real Python analytics SDK (`snowplow-analytics-sdk==0.2.3` from PyPI,
//!   `event_transformer.transform`) over each line, then adjusts the two places where it differs
//!   from the Go SDK that Snowbridge uses (timestamps printed as Go's RFC3339Nano, no
//!   `geo_location`), as that script documents and checks.
//! * `tests/fixtures/sdk/go-sdk-vectors.json`: the Go analytics SDK's own test vectors
//!   (`analytics/vars_test.go`, `transform_test.go`, `shred_test.go` of
//!   snowplow/snowplow-golang-analytics-sdk) and Snowbridge's spEnrichedToJson test vectors
//!   (`pkg/transform/single/transform_test_variables.go` of snowplow/snowbridge), transcribed by
//!   `tests/fixtures/sdk/go_vectors.py`; each vector names its repository, file, commit and test.
//!
//! Both scripts run again on every test run ([`the_expectation_files_are_what_their_scripts_write_today`]),
//! with the SDK that runtime/tests/setup.sh installs, and the committed files must be exactly what
//! they write: an expectation cannot drift from its source, nor be edited by hand to fit weir.

mod common;

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use weir_core::snowplow::{to_json_with, Scratch, ToJsonOptions};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk")
}

fn read(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Differences between `expected` and `actual`, one line each, with JSON paths.
fn diff(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = format!("{path}.{k}");
                match a.get(k) {
                    Some(av) => diff(&p, ev, av, out),
                    None => out.push(format!("{p}: missing, expected {ev}")),
                }
            }
            for (k, av) in a {
                if !e.contains_key(k) {
                    out.push(format!("{path}.{k}: unexpected key, value {av}"));
                }
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                out.push(format!(
                    "{path}: expected {} elements, found {}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                diff(&format!("{path}[{i}]"), ev, av, out);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let same = match (e.as_i64(), a.as_i64(), e.as_u64(), a.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => e.as_f64() == a.as_f64(),
            };
            if !same {
                out.push(format!("{path}: expected {e}, found {a}"));
            }
        }
        (e, a) => {
            if e != a {
                out.push(format!("{path}: expected {e}, found {a}"));
            }
        }
    }
}

/// Fails on a duplicate top-level key (which `Value` would hide).
fn unique_keys(json: &[u8]) -> Result<(), String> {
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Result<(), String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = HashSet::new();
            let mut dup = None;
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(k.clone()) {
                    dup.get_or_insert(k);
                }
            }
            Ok(dup.map_or(Ok(()), |k| Err(format!("duplicate key {k:?}"))))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(json);
    de.deserialize_map(Keys)
        .unwrap_or_else(|e| Err(e.to_string()))
}

/// Converts `tsv` and returns the differences from `expected` (empty when equal).
fn check(
    tsv: &str,
    expected: &Value,
    options: ToJsonOptions,
    scratch: &mut Scratch,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Err(e) = to_json_with(tsv.as_bytes(), &mut out, scratch, options) {
        return vec![format!("to_json failed: {e}")];
    }
    if let Err(e) = unique_keys(&out) {
        return vec![format!("output {}: {e}", String::from_utf8_lossy(&out))];
    }
    let actual: Value = match serde_json::from_slice(&out) {
        Ok(v) => v,
        Err(e) => {
            return vec![format!(
                "output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out)
            )]
        }
    };
    let mut diffs = Vec::new();
    diff("$", expected, &actual, &mut diffs);
    diffs
}

fn python_sdk_file(name: &str) {
    let tsv = read(&format!("{name}.tsv"));
    let expected = read(&format!("{name}.expected.jsonl"));
    let lines: Vec<&str> = tsv.lines().filter(|l| !l.is_empty()).collect();
    let expected: Vec<Value> = expected
        .lines()
        .map(|l| serde_json::from_str(l).expect("expected JSONL"))
        .collect();
    assert_eq!(
        lines.len(),
        expected.len(),
        "{name}: {} TSV lines but {} expectations; rerun gen_expected.py",
        lines.len(),
        expected.len()
    );
    let mut scratch = Scratch::default();
    let mut report = Vec::new();
    for (i, (line, exp)) in lines.iter().zip(&expected).enumerate() {
        let diffs = check(line, exp, ToJsonOptions::default(), &mut scratch);
        if !diffs.is_empty() {
            let id = exp.get("event_id").and_then(Value::as_str).unwrap_or("?");
            report.push(format!(
                "{name}.tsv line {} (event_id {id}):\n  {}",
                i + 1,
                diffs.join("\n  ")
            ));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} events differ from the Python SDK expectation:\n{}",
        report.len(),
        lines.len(),
        report.join("\n")
    );
}

#[test]
fn python_sdk_sdk_samples() {
    python_sdk_file("sdk-samples");
}

#[test]
fn python_sdk_micro_media_session() {
    python_sdk_file("micro-media-session");
}

#[test]
fn go_sdk_and_snowbridge_vectors() {
    let doc: Value = serde_json::from_str(&read("go-sdk-vectors.json")).expect("vectors JSON");
    let vectors = doc["vectors"].as_array().expect("vectors array");
    assert!(vectors.len() >= 19, "vectors missing");
    let mut scratch = Scratch::default();
    let mut report = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().expect("name");
        let source = &v["source"];
        let tsv = v["tsv"].as_str().expect("tsv");
        let options = ToJsonOptions {
            geo_location: v["options"]["geo_location"].as_bool().unwrap_or(false),
        };
        let problems = if let Some(want) = v.get("expected_error").and_then(Value::as_str) {
            let mut out = b"untouched".to_vec();
            match to_json_with(tsv.as_bytes(), &mut out, &mut scratch, options) {
                Ok(()) => vec![format!(
                    "expected an error containing {want:?}, got {}",
                    String::from_utf8_lossy(&out)
                )],
                Err(e) if !e.to_string().contains(want) => {
                    vec![format!(
                        "expected an error containing {want:?}, got {e:?}: {e}"
                    )]
                }
                Err(_) if out != b"untouched" => vec!["output buffer changed on error".to_owned()],
                Err(_) => Vec::new(),
            }
        } else {
            check(tsv, &v["expected"], options, &mut scratch)
        };
        if !problems.is_empty() {
            report.push(format!(
                "{name} ({} {} @ {}):\n  {}",
                source["repo"].as_str().unwrap_or("?"),
                source["path"].as_str().unwrap_or("?"),
                source["commit"].as_str().unwrap_or("?"),
                problems.join("\n  ")
            ));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {} vectors fail:\n{}",
        report.len(),
        vectors.len(),
        report.join("\n")
    );
}

/// The committed expectation files are exactly what `gen_expected.py` (the Python analytics SDK)
/// and `go_vectors.py` write now.
#[test]
fn the_expectation_files_are_what_their_scripts_write_today() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    common::python("sdk/gen_expected.py", &["--out-dir", dir], "");
    let vectors = out.path().join("go-sdk-vectors.json");
    common::python("sdk/go_vectors.py", &[vectors.to_str().unwrap()], "");
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "go-sdk-vectors.json",
            "micro-media-session.expected.jsonl",
            "sdk-samples.expected.jsonl"
        ]
    );
    for name in &names {
        let fresh = std::fs::read_to_string(out.path().join(name)).unwrap();
        let committed = read(name);
        if fresh != committed {
            let line = fresh
                .lines()
                .zip(committed.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| fresh.lines().count().min(committed.lines().count()));
            let show = |text: &str| -> String {
                let l = text.lines().nth(line).unwrap_or("<end>");
                l.chars().take(300).collect()
            };
            panic!(
                "tests/fixtures/sdk/{name} is not what its script writes today (first difference \
                 at line {}); rerun the script and review the change:\n  fresh:     {}\n  committed: {}",
                line + 1,
                show(&fresh),
                show(&committed)
            );
        }
    }
}
