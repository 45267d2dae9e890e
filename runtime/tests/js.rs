//! The `js` transform: Snowbridge's JavaScript contract run by the engine weir ships
//! (transforms/js, built by the test). The accelerator's Snowbridge config on the Micro fixture,
//! compared record for record with an independent computation; Snowbridge's own release-test
//! cases when a copy of its repository is here; and hostile scripts, isolated like any WASM
//! transform.

mod common;
mod wasm_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wasm_support::*;
use weir_core::config::Origin;
use weir_core::record::Batch;
use weir_core::transforms::{js, Transform, TransformConfig};

fn engine() -> PathBuf {
    rust_guest("weir_js")
}

/// A `js` transform from its config (as JSON), on the engine built here.
fn build(mut cfg: Value) -> Result<Box<dyn Transform>, String> {
    cfg["engine"] = json!(engine());
    cfg["cache_dir"] = json!(cache_dir());
    let c: js::Config = serde_json::from_value(cfg).map_err(|e| e.to_string())?;
    c.build(
        "transforms[0] (js)",
        &Origin::new("test.toml", "transforms[0]"),
    )
    .map_err(|e| e.to_string())
}

/// The config error `cfg` gives.
fn error(cfg: Value) -> String {
    match build(cfg) {
        Ok(_) => panic!("built"),
        Err(e) => e,
    }
}

fn js(cfg: Value) -> Box<dyn Transform> {
    build(cfg).unwrap_or_else(|e| panic!("{e}"))
}

/// Outputs, filtered, failed (payload, reason), and the batch.
type Outcome = (Vec<String>, Vec<String>, Vec<(String, String)>, Batch);

/// Runs `values` through `t`: (outputs, filtered, failed (payload, reason)), and the batch.
fn run(t: &mut dyn Transform, values: &[&str]) -> Outcome {
    let mut b = batch(values);
    t.process(&mut b);
    let failed = failures(&b);
    (texts(&b.records), texts(&b.filtered), failed, b)
}

/// `weir` with the engine found through `$WEIR_JS_ENGINE` and the tests' compile cache.
fn weir_js() -> Command {
    let mut c = weir();
    c.env(js::ENGINE_ENV, engine())
        .env("WEIR_CACHE_DIR", cache_dir());
    c
}

/// What the accelerator's filters and script give for one analytics-SDK event, computed here
/// from the SDK JSON of the fixture (tests/fixtures/sdk, made by the Python analytics SDK).
fn accelerator(e: &Value) -> Option<Value> {
    let name = e["event_name"].as_str()?;
    let wanted = regex_lite(name);
    if e["event"] != "unstruct" || !wanted {
        return None;
    }
    let first = |k: &str| e.get(k).and_then(|v| v.get(0)).cloned();
    let session = first("contexts_com_snowplowanalytics_snowplow_media_session_1");
    let player = first("contexts_com_snowplowanalytics_snowplow_media_player_2");
    let ad = first("contexts_com_snowplowanalytics_snowplow_media_ad_1");
    let field = |o: &Option<Value>, k: &str, default: Value| {
        o.as_ref()
            .and_then(|o| o.get(k))
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(default)
    };
    let viewer = match e.get("user_id").and_then(Value::as_str) {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => e["domain_userid"].as_str().unwrap_or_default().to_string(),
    };
    Some(json!({
        "collector_tstamp": e["collector_tstamp"],
        "event_id": e["event_id"],
        "event_name": name,
        "viewer_id": viewer,
        "adsClicked": field(&session, "adsClicked", json!(0)),
        "adsSkipped": field(&session, "adsSkipped", json!(0)),
        "adId": field(&ad, "adId", Value::Null),
        "video_ts": field(&player, "currentTime", Value::Null),
    }))
}

/// `^(play|pause|ping|end|ad_break.*)_event$`, by hand.
fn regex_lite(name: &str) -> bool {
    let Some(stem) = name.strip_suffix("_event") else {
        return false;
    };
    matches!(stem, "play" | "pause" | "ping" | "end") || name.starts_with("ad_break")
}

#[test]
fn the_accelerators_snowbridge_config_runs_on_the_micro_fixture_record_for_record() {
    let expected: Vec<Value> =
        std::fs::read_to_string(common::fixture("sdk/micro-media-session.expected.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter_map(|e| accelerator(&e))
            .collect();
    assert!(
        expected.len() >= 15,
        "the fixture has media events: {}",
        expected.len()
    );
    assert!(
        expected.iter().any(|e| !e["adId"].is_null())
            && expected.iter().any(|e| e["adsSkipped"] != 0),
        "the fixture exercises the ad fields"
    );

    let input = std::fs::File::open(common::fixture("sdk/micro-media-session.tsv")).unwrap();
    let out = weir_js()
        .args(["run", "accelerator.hcl"])
        .current_dir(common::fixture("snowbridge"))
        .env("JS_SCRIPT_PATH", "accelerator.js")
        .stdin(input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let got: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(got.len(), expected.len(), "{stderr}");
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "record {i}");
    }
    // The output is what Go's json.Marshal of the script's object gives: keys sorted, compact.
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(first.starts_with(r#"{"adId":"#), "{first}");
    let stderr = common::strip_ansi(&stderr);
    assert!(stderr.contains("failed=0"), "{stderr}");
}

#[test]
fn partition_key_headers_and_filter_reach_the_record() {
    let mut t = js(json!({
        "script": r#"
            function main(input) {
                const [kind, id] = input.Data.split(":");
                if (kind === "drop") return { FilterOut: true };
                return {
                    Data: `${kind}-${id}`,
                    PartitionKey: id,
                    HTTPHeaders: { "x-kind": kind },
                };
            }"#,
    }));
    let (out, filtered, failed, b) = run(t.as_mut(), &["a:1", "drop:2", "b:3"]);
    assert_eq!(out, vec!["a-1", "b-3"]);
    assert_eq!(filtered, vec!["drop:2"]);
    assert!(failed.is_empty(), "{failed:?}");
    let keys: Vec<_> = b.records.iter().map(|r| r.key.clone().unwrap()).collect();
    assert_eq!(keys, vec!["1", "3"]);
    let h = &b.records[1].meta.as_ref().unwrap().headers;
    assert_eq!(h, &vec![("x-kind".to_string(), bytes::Bytes::from("b"))]);
}

#[test]
fn snowplow_mode_failures_keep_the_tsv_and_say_why() {
    let lines = fixture_lines();
    let tsv = std::str::from_utf8(&lines[5]).unwrap();
    let mut t = js(json!({
        "snowplow_mode": true,
        "script": r#"
            function main(input) {
                if (input.Data.event_name === "page_view") throw new Error("no page views");
                return { Data: input.Data.event_id };
            }"#,
    }));
    let page_view = lines
        .iter()
        .map(|l| std::str::from_utf8(l).unwrap())
        .find(|l| l.split('\t').nth(5) == Some("page_view"))
        .unwrap();
    let (out, _, failed, _) = run(t.as_mut(), &[tsv, "not an event", page_view]);
    assert_eq!(out, vec![tsv.split('\t').nth(6).unwrap()]);
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert_eq!(failed[0].0, "not an event");
    assert!(
        failed[0]
            .1
            .starts_with("failed making input for the JavaScript runtime"),
        "{}",
        failed[0].1
    );
    assert_eq!(
        failed[1].0, page_view,
        "the original TSV goes to the failure sink"
    );
    assert!(failed[1].1.contains("no page views"), "{}", failed[1].1);
}

#[test]
fn a_script_that_loops_is_stopped_and_only_its_record_fails() {
    let mut t = js(json!({
        "timeout_sec": 1,
        "script": r#"
            function main(input) {
                if (input.Data === "loop") { for (;;) {} }
                return input;
            }"#,
    }));
    let start = Instant::now();
    let (out, _, failed, _) = run(t.as_mut(), &["a", "b", "loop", "c", "d"]);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_eq!(out, vec!["a", "b", "c", "d"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "loop");
    assert!(
        failed[0].1.contains("time limit of 1s for one batch"),
        "{}",
        failed[0].1
    );
    // The engine is rebuilt with the script: the next batch works.
    let (out, _, failed, _) = run(t.as_mut(), &["e"]);
    assert_eq!((out, failed.len()), (vec!["e".to_string()], 0));
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap_and_only_its_record_fails() {
    let mut t = js(json!({
        "max_memory": "64 MiB",
        "script": r#"
            function main(input) {
                if (input.Data === "bomb") {
                    const a = [];
                    for (;;) a.push("x".repeat(1 << 20) + a.length);
                }
                return input;
            }"#,
    }));
    let (out, _, failed, _) = run(t.as_mut(), &["a", "bomb", "b"]);
    assert_eq!(out, vec!["a", "b"]);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, "bomb");
    assert!(
        failed[0].1.contains("memory limit of 67108864 bytes"),
        "{}",
        failed[0].1
    );
    let (out, _, _, _) = run(t.as_mut(), &["c"]);
    assert_eq!(out, vec!["c"]);
}

#[test]
fn a_script_that_throws_on_one_record_fails_that_record_alone() {
    let mut t = js(json!({
        "script": r#"
            function main(input) {
                if (input.Data.startsWith("bad")) throw new TypeError("bad record " + input.Data);
                return { Data: input.Data.toUpperCase() };
            }"#,
    }));
    let (out, _, failed, _) = run(t.as_mut(), &["a", "bad1", "b", "bad2"]);
    assert_eq!(out, vec!["A", "B"]);
    let reasons: Vec<_> = failed
        .iter()
        .map(|(v, r)| (v.as_str(), r.as_str()))
        .collect();
    assert_eq!(reasons.len(), 2);
    assert_eq!(reasons[0].0, "bad1");
    assert!(
        reasons[0].1.contains("TypeError: bad record bad1"),
        "{reasons:?}"
    );
    assert_eq!(reasons[1].0, "bad2");
}

#[test]
fn config_errors_name_the_key() {
    let e = error(json!({ "script": "function main(input) { return input" }));
    assert!(
        e.contains("test.toml") && e.contains("`transforms[0].script`"),
        "{e}"
    );
    let e = error(json!({ "script": "function notmain(input) { return input }" }));
    assert!(e.contains("main"), "{e}");
    let e = error(json!({ "script_path": "/nonexistent/x.js" }));
    assert!(
        e.contains("`transforms[0].script_path`") && e.contains("/nonexistent/x.js"),
        "{e}"
    );
    let e = error(json!({}));
    assert!(
        e.contains("expected `script_path` or `script`, found neither"),
        "{e}"
    );
    let e = error(json!({ "script": "function main(i) { return i }", "timeout_sec": 0 }));
    assert!(e.contains("`transforms[0].timeout_sec`"), "{e}");
}

/// Where a copy of Snowbridge's repository may be (not in CI).
const MIRROR: &str = "/work/.mirror/snowplow+snowbridge/repo";

fn git_show(repo: &Path, path: &str) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["show", &format!("HEAD:{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "git show {path}");
    String::from_utf8(out.stdout).unwrap()
}

/// Snowbridge's release tests (release_test/cases/transformations/js*): its own configs and
/// scripts on its own input, through `weir run`; the result compared with its expected data as
/// its test does (sorted lines; JSON compared as JSON; partition keys through the library, as
/// weir's stdout target prints data only).
#[test]
fn snowbridge_release_test_js_cases_give_its_expected_data() {
    let repo = PathBuf::from(MIRROR);
    if !repo.exists() {
        eprintln!("skipped: no copy of Snowbridge's repository at {MIRROR}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input = git_show(&repo, "release_test/input.txt");
    let input_path = dir.path().join("input.txt");
    std::fs::write(&input_path, &input).unwrap();
    let lines: Vec<&str> = input.lines().filter(|l| !l.is_empty()).collect();
    for case in [
        "jsPlainFilter",
        "jsPlainTransform",
        "jsSnowplowFilter",
        "jsSnowplowTransform",
        "jsPlainSetPk",
        "jsSnowplowSetPk",
    ] {
        let base = format!("release_test/cases/transformations/{case}");
        let script = dir.path().join(format!("{case}.js"));
        std::fs::write(&script, git_show(&repo, &format!("{base}/script.js"))).unwrap();
        let hcl = git_show(&repo, &format!("{base}/config.hcl")).replace(
            "\"/script.js\"",
            &format!("{:?}", script.display().to_string()),
        );
        let config = dir.path().join(format!("{case}.hcl"));
        std::fs::write(&config, &hcl).unwrap();
        let mut expected: Vec<String> = git_show(&repo, &format!("{base}/expected_data.txt"))
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        expected.sort();

        if case.ends_with("SetPk") {
            let mut t = js(json!({
                "script_path": script,
                "snowplow_mode": case.starts_with("jsSnowplow"),
            }));
            let (_, _, failed, b) = run(t.as_mut(), &lines);
            assert!(failed.is_empty(), "{case}: {failed:?}");
            let mut keys: Vec<String> = b
                .records
                .iter()
                .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned())
                .collect();
            keys.sort();
            assert_eq!(keys, expected, "{case}");
            continue;
        }
        let out = weir_js()
            .arg("run")
            .arg(&config)
            .stdin(std::fs::File::open(&input_path).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut got: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        got.sort();
        if case.starts_with("jsSnowplow") {
            // Go's output order of an object's keys is not the SDK's: compare as JSON.
            let parse = |v: &[String]| {
                let mut v: Vec<Value> =
                    v.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
                v.sort_by_key(|x| x["event_id"].as_str().unwrap_or_default().to_string());
                v
            };
            assert_eq!(parse(&got), parse(&expected), "{case}");
            if case == "jsSnowplowTransform" {
                // Its expected data has the keys sorted, as weir writes them: then the bytes
                // are the same too (Snowbridge's escaping and number format).
                assert_eq!(got, expected, "{case}: byte for byte");
            }
        } else {
            assert_eq!(got, expected, "{case}");
        }
        eprintln!("{case}: {} records as expected", got.len());
    }
}

/// Every JavaScript example of Snowbridge's docs compiles and has `main` (what its docs test,
/// docs/configuration_transformations_docs_test.go, checks); transforms/js/src/tests.rs runs
/// them on their documented inputs.
#[test]
fn snowbridge_docs_scripts_compile() {
    let repo = PathBuf::from(MIRROR);
    if !repo.exists() {
        eprintln!("skipped: no copy of Snowbridge's repository at {MIRROR}");
        return;
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args([
            "ls-tree",
            "-r",
            "--name-only",
            "HEAD",
            "assets/docs/configuration/",
        ])
        .output()
        .unwrap();
    let scripts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(".js"))
        .map(str::to_string)
        .collect();
    assert!(scripts.len() >= 8, "{scripts:?}");
    for s in &scripts {
        let script = git_show(&repo, s);
        build(json!({ "script": script, "snowplow_mode": true }))
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// `failure_parser { format = "event_forwarding" }`: a record the script fails is an
/// `event_forwarding_error` with the record as read, what the transforms before made of it, and
/// the JavaScript error's class as its code. The expected rows are what Snowbridge 5.1.1 wrote
/// for this config and input (built here from snowplow/snowbridge; its timestamp, processor and
/// the engine's own wording of the error aside).
#[test]
fn event_forwarding_failures_are_written_as_snowbridge_writes_them() {
    let dir = tempfile::tempdir().unwrap();
    let script = common::write(
        dir.path(),
        "script.js",
        "function main(input) {\n\
         \x20 if (input.Data.indexOf(\"Ym9\") === 0) { return null.boom; }\n\
         \x20 if (input.Data.indexOf(\"dW5\") === 0) { return notDefinedAnywhere + 1; }\n\
         \x20 return input;\n\
         }\n",
    );
    let cfg = common::write(
        dir.path(),
        "cfg.hcl",
        "transform {\n  use \"base64Encode\" {}\n  use \"js\" {\n    script_path = env.JS_PATH\n  }\n}\n\
         target {\n  use \"stdout\" {\n    data_only_output = true\n  }\n}\n\
         failure_target {\n  use \"stdout\" {\n    data_only_output = true\n  }\n}\n\
         failure_parser {\n  format = \"event_forwarding\"\n}\n\
         license {\n  accept = true\n}\n",
    );
    let mut child = weir_js()
        .arg("run")
        .arg(&cfg)
        .env("JS_PATH", &script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"boom-1\nfine\nunknown-2\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut rows: Vec<Value> = Vec::new();
    let mut good = Vec::new();
    for l in stdout.lines() {
        match serde_json::from_str::<Value>(l) {
            Ok(v) if v.is_object() => rows.push(v),
            _ => good.push(l),
        }
    }
    assert_eq!(good, ["ZmluZQ=="], "{stdout}");
    rows.sort_by_key(|r| r["data"]["payload"].as_str().unwrap().to_string());
    let snowbridge = [
        ("boom-1", "Ym9vbS0x", "TypeError"),
        ("unknown-2", "dW5rbm93bi0y", "ReferenceError"),
    ];
    assert_eq!(rows.len(), snowbridge.len(), "{stdout}");
    for (row, (payload, latest, code)) in rows.iter().zip(snowbridge) {
        assert_eq!(
            row["schema"],
            "iglu:com.snowplowanalytics.snowplow.badrows/event_forwarding_error/jsonschema/1-0-0"
        );
        let f = &row["data"]["failure"];
        assert_eq!(row["data"]["payload"], payload, "{row}");
        assert_eq!(f["latestState"], latest, "{row}");
        assert_eq!(f["errorType"], "transformation", "{row}");
        assert_eq!(f["errorCode"], code, "{row}");
        let message = f["errorMessage"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "error running JavaScript function [main]: {code}: "
            )),
            "{row}"
        );
        assert!(f["timestamp"].as_str().unwrap().ends_with('Z'), "{row}");
        assert_eq!(row["data"]["processor"]["artifact"], "weir");
    }
}
