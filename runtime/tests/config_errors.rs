//! `weir validate`: every shipped example passes; mistakes are reported with file, key path,
//! expected vs found, and a suggestion.

mod common;

use common::*;

/// `weir validate PATH`: the exit code and everything it printed.
fn validate(path: &std::path::Path) -> (Option<i32>, String) {
    let out = weir()
        .arg("validate")
        .arg(path)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

/// `weir validate` on a config with a mistake: exit code 2 (README: "2 a config error") and what
/// it printed.
fn invalid(path: &std::path::Path) -> String {
    let (code, text) = validate(path);
    assert_eq!(code, Some(2), "a config error exits 2:\n{text}");
    text
}

/// Every pipeline config shipped under examples/ and deploy/. A new one goes here too: the test
/// fails on a config it does not know (or one that has gone), so none is skipped unnoticed.
const SHIPPED_CONFIGS: &[&str] = &[
    "deploy/config/aws-dashboard.toml",
    "deploy/config/aws-sidecar.toml",
    "deploy/config/compose-collector.toml",
    "deploy/config/compose-dashboard.toml",
    "deploy/config/compose-media.toml",
    "deploy/config/compose-profiles.toml",
    "deploy/config/live-viewer.toml",
    "examples/ad-quartiles.toml",
    "examples/aws-media-profiles.toml",
    "examples/collector-sidecar.toml",
    "examples/collector-to-stdout.toml",
    "examples/kafka-media-events.toml",
    "examples/kafka-viewer-profiles.toml",
    "examples/live-viewer/pipeline.toml",
    "examples/live-viewer/postgres.toml",
    "examples/media-events.toml",
    "examples/media-player-context.json",
    "examples/stdin-to-file.yaml",
];

#[test]
fn every_example_config_validates() {
    // Example configs name WASM transforms: build them, so that validation really loads them.
    build_example_transforms();
    let root = repo_root();
    let mut checked = Vec::new();
    for dir in ["examples", "deploy"] {
        for entry in walk(&root.join(dir)) {
            let ext = entry.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "toml" | "yaml" | "yml" | "json") || !is_pipeline(&entry) {
                continue;
            }
            let (code, text) = validate(&entry);
            assert_eq!(
                code,
                Some(0),
                "{} does not validate:\n{text}",
                entry.display()
            );
            checked.push(entry.strip_prefix(&root).unwrap().display().to_string());
        }
    }
    checked.sort();
    assert_eq!(
        checked, SHIPPED_CONFIGS,
        "the configs validated are exactly the shipped ones (add a new example to SHIPPED_CONFIGS)"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "node_modules") {
                out.extend(walk(&p));
            }
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Pipeline configs have a `source` section (other YAML/JSON under deploy/ are not weir configs).
fn is_pipeline(p: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    text.contains("[source]")
        || text.contains("\"source\"")
        || text.lines().any(|l| l.starts_with("source:"))
}

#[test]
fn misspelt_key_names_file_key_path_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        "[source]\ntype = \"stdin\"\n[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_feild = \"event_name\"\nregex = \"x\"\n[sink]\ntype = \"stdout\"\n",
    );
    let text = invalid(&cfg);
    assert!(text.contains("bad.toml"), "{text}");
    assert!(text.contains("transforms[0].atomic_feild"), "{text}");
    assert!(text.contains("did you mean `atomic_field`?"), "{text}");
}

#[test]
fn wrong_type_says_expected_and_found() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.yaml",
        "source: {type: stdin}\nsink: {type: stdout}\nbatch:\n  max_records: lots\n",
    );
    let text = invalid(&cfg);
    assert!(
        text.contains("bad.yaml: key `batch.max_records`: expected"),
        "{text}"
    );
    assert!(text.contains("\"lots\""), "{text}");
}

#[test]
fn unknown_component_type_and_field_name_get_suggestions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "a.json",
        r#"{"source":{"type":"stdin"},"sink":{"type":"fille","path":"x"}}"#,
    );
    let text = invalid(&cfg);
    assert!(
        text.contains("key `sink.type`") && text.contains("did you mean `file`?"),
        "{text}"
    );

    let cfg = write(
        dir.path(),
        "b.toml",
        "[source]\ntype = \"stdin\"\n[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_nmae\"\nregex = \"x\"\n[sink]\ntype = \"stdout\"\n",
    );
    let text = invalid(&cfg);
    assert!(
        text.contains("transforms[0].atomic_field") && text.contains("did you mean `event_name`?"),
        "{text}"
    );

    let cfg = write(
        dir.path(),
        "c.toml",
        "[source]\ntype = \"stdin\"\n[sink]\ntype = \"stdout\"\n[bacth]\nqueue = 1\n",
    );
    let text = invalid(&cfg);
    assert!(text.contains("did you mean `batch`?"), "{text}");
}

#[test]
fn bad_regex_is_a_config_error_at_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "r.toml",
        "[source]\ntype = \"stdin\"\n[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_name\"\nregex = \"(unclosed\"\n[sink]\ntype = \"stdout\"\n",
    );
    let text = invalid(&cfg);
    assert!(
        text.contains("key `transforms[0].regex`: expected a valid regex"),
        "{text}"
    );
}

#[test]
fn environment_overrides_any_key_including_array_elements() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.txt", "a\nb\n");
    let out = dir.path().join("out.txt");
    let cfg = write(
        dir.path(),
        "e.toml",
        &format!("{}[sink]\ntype = \"stdout\"\n", file_source(&input)),
    );
    // sink.type and sink.path from the environment: the file gets the records, stdout nothing.
    let o = weir()
        .arg("run")
        .arg(&cfg)
        .env("WEIR__SINK__TYPE", "file")
        .env("WEIR__SINK__PATH", &out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\nb\n");
    assert!(o.stdout.is_empty());

    // An array element: transforms[0].regex.
    let cfg = write(
        dir.path(),
        "f.toml",
        "[source]\ntype = \"stdin\"\n[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_name\"\nregex = \"ok\"\n[sink]\ntype = \"stdout\"\n",
    );
    let o = weir()
        .arg("validate")
        .arg(&cfg)
        .env("WEIR__TRANSFORMS__0__REGEX", "(bad")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("transforms[0].regex"), "{err}");
    // Without the override the same file is valid: the error came from the environment.
    assert_eq!(validate(&cfg).0, Some(0));
}

/// `delivery = "exactly-once"` commits the source's offsets in the sink's Kafka transaction: a
/// source without offsets, durable state without a changelog (which the transaction commits)
/// and a producer without idempotence are each refused at their key.
#[test]
fn exactly_once_needs_a_kafka_source_a_state_changelog_and_idempotence() {
    let dir = tempfile::tempdir().unwrap();
    let sink = "[sink]\ntype = \"kafka\"\nbootstrap_servers = \"k:9092\"\ntopic = \"out\"\ndelivery = \"exactly-once\"\n";
    let kafka_source = "[source]\ntype = \"kafka\"\nbootstrap_servers = \"k:9092\"\ntopics = [\"in\"]\ngroup_id = \"g\"\n";
    let ok = write(dir.path(), "eos.toml", &format!("{kafka_source}{sink}"));
    let (code, text) = validate(&ok);
    assert_eq!(code, Some(0), "{text}");

    let stdin = write(
        dir.path(),
        "stdin.toml",
        &format!("[source]\ntype = \"stdin\"\n{sink}"),
    );
    let text = invalid(&stdin);
    assert!(text.contains("stdin.toml: key `sink.delivery`"), "{text}");
    assert!(text.contains("expected a `kafka` source"), "{text}");

    let on_read = write(
        dir.path(),
        "on-read.toml",
        &format!("{kafka_source}commit = \"on-read\"\n{sink}"),
    );
    assert!(invalid(&on_read).contains("key `sink.delivery`"));

    let state = write(
        dir.path(),
        "state.toml",
        &format!(
            "{kafka_source}{sink}[state]\nbackend = \"disk\"\npath = \"{}\"\n",
            dir.path().join("st").display()
        ),
    );
    let text = invalid(&state);
    assert!(text.contains("key `state.changelog_topic`"), "{text}");
    assert!(text.contains("expected a changelog topic"), "{text}");
    // With a changelog, state is committed in the transaction.
    let with_changelog = write(
        dir.path(),
        "state-changelog.toml",
        &format!(
            "{kafka_source}{sink}[state]\nbackend = \"disk\"\npath = \"{}\"\nchangelog_topic = \"cl\"\n",
            dir.path().join("st").display()
        ),
    );
    let (code, text) = validate(&with_changelog);
    assert_eq!(code, Some(0), "{text}");

    let no_idem = write(
        dir.path(),
        "idem.toml",
        &format!("{kafka_source}{sink}idempotence = false\n"),
    );
    let text = invalid(&no_idem);
    assert!(text.contains("key `sink.idempotence`"), "{text}");
}
