//! The module layering of weir-core, checked on its source files:
//!
//! - `pipeline.rs` is the top: no other module imports it;
//! - no module under `sinks/` imports from `sources/`, and none under `sources/` from `sinks/`
//!   (what both need lives in a shared module: `kafka`, `aws`, `retry`, `setup`, …);
//! - the shared modules below the components (`ack`, `record`, `aws`, `kafka`, `retry`,
//!   `setup`, `state`, `observe`) import no component (`sources`, `sinks`, `transforms`,
//!   `wasm`, `pipeline`);
//! - keyed state (`state/`) knows nothing of Kafka or WebAssembly, and the pipeline does not
//!   depend on `wasm/` for it.
//!
//! A reference is any `crate::…` or `super::…` path outside comments, including grouped imports
//! (`crate::{a, b}`), resolved to the top-level module it names.

use std::path::{Path, PathBuf};

/// The module a file is, as path segments (`src/sinks/kafka.rs` → `["sinks", "kafka"]`;
/// `src/sinks/mod.rs` → `["sinks"]`; `src/lib.rs` → `[]`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().expect("a file name");
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Drops `//` comments (doc comments included): a path in prose is no import.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level modules `source` (the text of the file that is module `module`) refers to,
/// with the line of each reference.
fn references(module: &[String], source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Past `mod tests {` the code is one module deeper (for `super::`).
    let mut here: Vec<String> = module.to_vec();
    for (n, line) in source.lines().enumerate() {
        let code = code_of(line);
        if code.trim_start().starts_with("mod tests") && code.contains('{') {
            here = module.to_vec();
            here.push("tests".into());
        }
        let bytes = code.as_bytes();
        let mut i = 0;
        while i < code.len() {
            let rest = &code[i..];
            let boundary =
                i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
            let (base, after) = if boundary && rest.starts_with("crate::") {
                (Vec::new(), &rest["crate::".len()..])
            } else if boundary && rest.starts_with("super::") {
                let mut base = here.clone();
                let mut after = rest;
                while let Some(r) = after.strip_prefix("super::") {
                    base.pop();
                    after = r;
                }
                (base, after)
            } else {
                i += rest.chars().next().map_or(1, char::len_utf8);
                continue;
            };
            let names: Vec<String> = if let Some(group) = after.strip_prefix('{') {
                // `crate::{a, b::c}`: the first segment of each item (to the end of the line).
                let group = group.split('}').next().unwrap_or("");
                group
                    .split(',')
                    .filter_map(|item| item.trim().split("::").next().map(str::to_string))
                    .collect()
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                vec![name]
            };
            for name in names {
                let top = base.first().cloned().unwrap_or(name);
                if !top.is_empty() && top != "self" && top != "*" {
                    out.push((n + 1, top));
                }
            }
            i += 1;
        }
    }
    out
}

/// What `module` (a file's module path) may not refer to, and why.
fn forbidden(module: &[String]) -> Vec<(&'static str, &'static str)> {
    let top = module.first().map(String::as_str).unwrap_or("");
    let mut rules = Vec::new();
    if top != "pipeline" && !module.is_empty() {
        rules.push((
            "pipeline",
            "pipeline.rs is the top: nothing below it imports it",
        ));
    }
    match top {
        "sinks" => rules.push(("sources", "a sink imports nothing from sources/")),
        "sources" => rules.push(("sinks", "a source imports nothing from sinks/")),
        "pipeline" => rules.push(("wasm", "the pipeline does not depend on wasm/")),
        _ => {}
    }
    if matches!(
        top,
        "ack" | "record" | "aws" | "kafka" | "retry" | "setup" | "state" | "observe"
    ) {
        for component in ["sources", "sinks", "transforms", "wasm"] {
            rules.push((component, "a shared module imports no component"));
        }
    }
    if top == "state" {
        rules.push(("kafka", "keyed state knows nothing of Kafka"));
        rules.push(("wasm", "keyed state knows nothing of WebAssembly"));
    }
    rules
}

/// Every rule `source` (the file `name`, module `module`) breaks, as messages.
fn violations(name: &str, module: &[String], source: &str) -> Vec<String> {
    let rules = forbidden(module);
    let mut out: Vec<String> = references(module, source)
        .into_iter()
        .filter_map(|(line, top)| {
            rules
                .iter()
                .find(|(m, _)| *m == top)
                .map(|(m, why)| format!("{name}:{line}: refers to `{m}`: {why}"))
        })
        .collect();
    if module.first().map(String::as_str) == Some("state") {
        for (n, line) in source.lines().enumerate() {
            if code_of(line).contains("rdkafka") {
                out.push(format!(
                    "{name}:{}: uses rdkafka: keyed state knows nothing of Kafka",
                    n + 1
                ));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("a dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_source_tree_keeps_its_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 30, "found only {files:?}");
    let mut broken = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = module_of(rel);
        let text = std::fs::read_to_string(f).unwrap();
        for (_, top) in references(&module, &text) {
            seen.insert(top);
        }
        broken.extend(violations(&rel.display().to_string(), &module, &text));
    }
    // The scan sees the imports that do exist (else it would pass on anything).
    for m in [
        "sources", "sinks", "pipeline", "state", "kafka", "aws", "retry", "wasm",
    ] {
        assert!(seen.contains(m), "no reference to `{m}` found: {seen:?}");
    }
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_what_it_should() {
    let m = |s: &str| -> Vec<String> { s.split('/').map(str::to_string).collect() };
    let bad = |module: &str, code: &str| !violations("f.rs", &m(module), code).is_empty();
    // Sideways between sinks and sources, in every spelling.
    assert!(bad("sinks/kafka", "use crate::sources::kafka::log_kafka;"));
    assert!(bad(
        "sinks/kafka",
        "        crate::sources::kafka::log_kafka(l, f, m);"
    ));
    assert!(bad("sinks/kafka", "use super::super::sources::kafka;"));
    assert!(bad("sinks/kafka", "use crate::{record::Record, sources};"));
    assert!(bad(
        "sources/kinesis",
        "crate::sinks::dynamodb::wait_active(c, t)"
    ));
    assert!(bad(
        "sinks/fanout",
        "mod tests {\n    use super::super::super::sources::x;"
    ));
    // Back up to the pipeline.
    assert!(bad(
        "sources/kafka",
        "std::thread::sleep(crate::pipeline::backoff(2));"
    ));
    assert!(bad("wasm/guest", "use crate::pipeline::PipelineConfig;"));
    // State that knows Kafka or WebAssembly, a pipeline on wasm for state.
    assert!(bad("state", "fn attach(c: &rdkafka::ClientConfig) {}"));
    assert!(bad("state/disk", "use crate::kafka::ClientLog;"));
    assert!(bad("pipeline", "use crate::wasm::DiskState;"));
    assert!(bad("retry", "use crate::sinks::SinkError;"));
    // What is allowed.
    assert!(!bad(
        "sinks/kafka",
        "use super::{Progress, Sink};\nuse crate::kafka::ClientLog;"
    ));
    assert!(!bad(
        "sinks/kafka",
        "/// like [`crate::sources::kafka`] does"
    ));
    assert!(!bad("sinks/kafka", "let s = \"not_crate::sources\";"));
    assert!(!bad(
        "pipeline",
        "use crate::sources::{self, Emitter};\nuse crate::sinks;"
    ));
    assert!(!bad(
        "sources/kafka",
        "use crate::state::Checkpointed;\nuse crate::kafka;"
    ));
    assert!(!bad(
        "kafka/changelog",
        "use crate::state::changelog::Changelog;"
    ));
}
