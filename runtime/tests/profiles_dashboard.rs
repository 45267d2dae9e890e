//! The embedded profile store and the live dashboard, on the real binary: upserts (never older
//! over newer), removals, the JSON snapshot, the SSE push, and rows surviving a crash (SIGKILL).

mod common;

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::{ChildStdin, Stdio};
use std::time::Duration;

use common::*;

fn get(addr: &str, path: &str) -> String {
    http_get(addr, path).unwrap_or_else(|| panic!("GET {path} failed"))
}

fn viewers(addr: &str) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&get(addr, "/api/viewers")).unwrap();
    let mut rows = v["viewers"].as_array().unwrap().clone();
    rows.sort_by_key(|r| r["viewer_id"].as_str().unwrap().to_string());
    rows
}

/// Starts weir reading profiles from stdin; returns it, its stdin and the dashboard address.
fn start(cfg: &std::path::Path) -> (Logged, ChildStdin, String) {
    let mut weir = Logged::spawn(
        weir()
            .args(["--log-format", "json", "run", "--progress=never"])
            .arg(cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let addr = weir.bound("live dashboard").to_string();
    let stdin = weir.child.stdin.take().unwrap();
    (weir, stdin, addr)
}

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn store_upserts_newest_removes_pushes_and_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("profiles.redb");
    let bad_rows = dir.path().join("bad.ndjson");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"stdin\"\n[sink]\ntype = \"profiles\"\npath = \"{}\"\nversion_field = \"version\"\n\
             [sink.dashboard]\naddress = \"127.0.0.1:0\"\n[batch]\nflush_interval = \"10ms\"\n\
             [failure]\ntype = \"file\"\npath = \"{}\"\n",
            db.display(),
            bad_rows.display()
        ),
    );
    let (weir, mut stdin, addr) = start(&cfg);
    assert!(
        get(&addr, "/").contains("live viewers"),
        "the dashboard page"
    );

    // An SSE client connected before any profile exists gets an empty snapshot, then pushes.
    let mut sse = Sse::connect(&addr);
    let mut events = Vec::new();
    let (name, data) = sse.next();
    assert_eq!(name, "snapshot");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&data).unwrap()["viewers"],
        serde_json::json!([])
    );

    for line in [
        r#"{"viewer_id":"a","status":"watching","version":2}"#,
        r#"{"viewer_id":"b","status":"paused","version":1}"#,
        r#"{"viewer_id":"a","status":"paused","version":1}"#, // older: ignored
        r#"{"viewer_id":"c","status":"watching","version":1}"#,
        r#"{"viewer_id":"c","removed":true}"#,
        "not a profile",
    ] {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();
    // Pushed once written: the three applied upserts and the removal, not the stale update.
    for _ in 0..4 {
        events.push(sse.next());
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["profile", "profile", "profile", "removed"],
        "{events:?}"
    );
    wait_until("the snapshot to hold a and b", WAIT, || {
        viewers(&addr).len() == 2
    });
    let rows = viewers(&addr);
    assert_eq!(
        rows[0]["status"], "watching",
        "an older update never overwrites a newer one"
    );
    assert_eq!(rows[1]["viewer_id"], "b");
    wait_until("the bad row", WAIT, || {
        std::fs::read_to_string(&bad_rows).is_ok_and(|b| !b.is_empty())
    });
    let bad = std::fs::read_to_string(&bad_rows).unwrap();
    assert_eq!(
        bad.lines().count(),
        1,
        "a record that is not a profile is one bad row: {bad}"
    );
    assert!(bad.contains("not a JSON object"), "{bad}");

    // A crash: no drain, no clean close of the store.
    signal(weir.child.id(), libc::SIGKILL);
    let (status, log) = weir.wait_exit(WAIT);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{log}");
    drop(stdin);

    // Restarted, the rows written before the crash are there, versions included: an update
    // older than what was stored is still ignored, a newer one applies.
    let (weir, mut stdin, addr) = start(&cfg);
    let rows = viewers(&addr);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["status"], "watching");
    assert_eq!(rows[0]["version"], 2);
    assert_eq!(rows[1]["status"], "paused");
    writeln!(stdin, r#"{{"viewer_id":"a","status":"stale","version":1}}"#).unwrap();
    writeln!(stdin, r#"{{"viewer_id":"b","status":"ended","version":2}}"#).unwrap();
    drop(stdin);
    let (status, log) = weir.wait_exit(WAIT);
    assert!(status.success(), "{log}");
    let (weir, stdin, addr) = start(&cfg);
    let rows = viewers(&addr);
    assert_eq!(
        (rows[0]["status"].as_str(), rows[1]["status"].as_str()),
        (Some("watching"), Some("ended")),
        "{rows:?}"
    );
    drop(stdin);
    assert!(weir.wait_exit(WAIT).0.success());
}
