//! `weir validate`: every shipped example passes; mistakes are reported with file, key path,
//! expected vs found, and a suggestion.

mod common;

use common::*;

fn validate(path: &std::path::Path) -> (bool, String) {
    let out = weir()
        .arg("validate")
        .arg(path)
        .current_dir(repo_root())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn every_example_config_validates() {
    // Example configs name WASM transforms: build them, so that validation really loads them.
    build_example_transforms();
    let mut checked = 0;
    for dir in ["examples", "deploy"] {
        for entry in walk(&repo_root().join(dir)) {
            let ext = entry.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "toml" | "yaml" | "yml" | "json") || !is_pipeline(&entry) {
                continue;
            }
            let (ok, text) = validate(&entry);
            assert!(ok, "{} does not validate:\n{text}", entry.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "expected the example configs, found {checked}"
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
    let (ok, text) = validate(&cfg);
    assert!(!ok);
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
    let (ok, text) = validate(&cfg);
    assert!(!ok);
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
    let (ok, text) = validate(&cfg);
    assert!(!ok);
    assert!(
        text.contains("key `sink.type`") && text.contains("did you mean `file`?"),
        "{text}"
    );

    let cfg = write(
        dir.path(),
        "b.toml",
        "[source]\ntype = \"stdin\"\n[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_nmae\"\nregex = \"x\"\n[sink]\ntype = \"stdout\"\n",
    );
    let (ok, text) = validate(&cfg);
    assert!(!ok);
    assert!(
        text.contains("transforms[0].atomic_field") && text.contains("did you mean `event_name`?"),
        "{text}"
    );

    let cfg = write(
        dir.path(),
        "c.toml",
        "[source]\ntype = \"stdin\"\n[sink]\ntype = \"stdout\"\n[bacth]\nqueue = 1\n",
    );
    let (ok, text) = validate(&cfg);
    assert!(!ok);
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
    let (ok, text) = validate(&cfg);
    assert!(!ok);
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
        &format!(
            "[source]\ntype = \"file\"\npaths = [\"{}\"]\n[sink]\ntype = \"stdout\"\n",
            input.display()
        ),
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
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("transforms[0].regex"));
}
