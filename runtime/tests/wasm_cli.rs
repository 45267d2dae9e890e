//! `weir transform test` and `weir transform new`, and the compile cache across processes.

mod wasm_support;

use std::path::Path;
use std::process::Output;

use wasm_support::*;

fn fixture() -> std::path::PathBuf {
    repo_root().join("examples/data/micro-media-session.tsv")
}

/// `weir transform test ARGS --wasm WASM INPUT`, with the tests' compile cache.
fn transform_test(args: &[&str], wasm: &Path, input: &Path) -> Output {
    weir()
        .args(["transform", "test"])
        .args(args)
        .arg("--wasm")
        .arg(wasm)
        .arg(input)
        .env("WEIR_CACHE_DIR", cache_dir())
        .output()
        .unwrap()
}

#[test]
fn transform_test_prints_outputs_filtered_and_failed_records() {
    let out = transform_test(&[], &rust_guest("media_filter"), &fixture());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("weir sends only these fields: event_vendor, event_name"),
        "{text}"
    );
    assert!(text.contains("== outputs (47) =="), "{text}");
    assert!(text.contains("== filtered (26) =="), "{text}");
    assert!(text.contains("== failed (0) =="), "{text}");
    assert!(
        text.contains("     line 4 | →web→"),
        "outputs name their input line: {text}"
    );
    assert!(
        text.contains("summary: 73 in → 47 out, 26 filtered, 0 failed; 1 guest call(s), 0 trap(s)"),
        "{text}"
    );
}

#[test]
fn transform_test_shows_why_records_failed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "a\npanic\nfail:bad input\nupper:b\n").unwrap();
    let out = transform_test(&[], &rust_guest("hostile"), &input);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("== outputs (2) =="), "{text}");
    assert!(text.contains("== failed (2) =="), "{text}");
    assert!(text.contains("guest panicked: hostile panic"), "{text}");
    assert!(text.contains("guest backtrace:"), "{text}");
    assert!(text.contains("bad input"), "{text}");
    assert!(text.contains("line 4 | B"), "{text}");
}

#[test]
fn transform_test_refuses_a_bad_config_with_exit_2() {
    let out = transform_test(
        &["--config", "event_name=("],
        &rust_guest("media_filter"),
        &fixture(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid regex"));
}

#[test]
fn a_restart_loads_the_compiled_module_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let run = || {
        let out = weir()
            .args(["transform", "test", "--summary", "--wasm"])
            .arg(rust_guest("dedup"))
            .arg(fixture())
            .env("WEIR_CACHE_DIR", cache.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = run();
    assert!(first.contains("compiled (and cached)"), "{first}");
    let entries: Vec<_> = std::fs::read_dir(cache.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one cache entry");
    let name = entries[0]
        .as_ref()
        .unwrap()
        .file_name()
        .into_string()
        .unwrap();
    assert!(
        name.contains("-wasmtime48-") && name.ends_with(".cwasm"),
        "{name}"
    );
    let second = run();
    assert!(second.contains("loaded from the compile cache"), "{second}");
}

#[test]
fn transform_new_makes_a_crate_that_tests_builds_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("my-filter");
    let out = weir()
        .args(["transform", "new", "my-filter", "--dir"])
        .arg(&krate)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cargo = || {
        let mut c =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(&krate)
            .env("CARGO_TARGET_DIR", guest_target_dir().join("template"));
        c.env_remove("RUSTFLAGS");
        c
    };
    let t = cargo().args(["test", "--quiet"]).output().unwrap();
    assert!(
        t.status.success(),
        "{}{}",
        String::from_utf8_lossy(&t.stdout),
        String::from_utf8_lossy(&t.stderr)
    );
    let b = cargo()
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .output()
        .unwrap();
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let wasm = guest_target_dir().join("template/wasm32-unknown-unknown/release/my_filter.wasm");
    let out = transform_test(&["--summary"], &wasm, &fixture());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("73 in → 2 out, 71 filtered, 0 failed"),
        "{text}"
    );
}
