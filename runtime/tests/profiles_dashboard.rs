//! The embedded profile store and the live dashboard, on the real binary: upserts (never older
//! over newer), removals, the JSON snapshot, the SSE push, and rows surviving a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::time::{Duration, Instant};

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
fn start(cfg: &std::path::Path) -> (Child, ChildStdin, String) {
    let mut child = weir()
        .args(["--log-format", "json", "run", "--progress=never"])
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "weir exited early");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["fields"]["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("live dashboard")
        {
            break v["fields"]["address"].as_str().unwrap().to_string();
        }
    };
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    let stdin = child.stdin.take().unwrap();
    (child, stdin, addr)
}

fn wait_for(mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(30));
    }
}

#[test]
fn store_upserts_newest_removes_pushes_and_survives_restart() {
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
    let (child, mut stdin, addr) = start(&cfg);
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
    wait_for(|| viewers(&addr).len() == 2);
    let rows = viewers(&addr);
    assert_eq!(
        rows[0]["status"], "watching",
        "an older update never overwrites a newer one"
    );
    assert_eq!(rows[1]["viewer_id"], "b");
    for _ in 0..4 {
        events.push(sse.next());
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["profile", "profile", "profile", "removed"],
        "{events:?}"
    );

    drop(stdin);
    assert!(child.wait_with_output().unwrap().status.success());
    let bad = std::fs::read_to_string(&bad_rows).unwrap();
    assert_eq!(
        bad.lines().count(),
        1,
        "a record that is not a profile is one bad row: {bad}"
    );
    assert!(bad.contains("not a JSON object"), "{bad}");

    // Restart: the rows are still there.
    let (mut child, stdin, addr) = start(&cfg);
    let rows = viewers(&addr);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["status"], "watching");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}
