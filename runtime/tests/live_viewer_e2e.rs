//! The live viewer demo end to end in a real browser: headless Chromium plays the demo page with
//! the real Snowplow JS tracker and media plugin, through the demo pipeline (collector →
//! media-filter → viewer-state → profile store + dashboard, the real `weir` binary and the real
//! WASM transforms), while the page's driver (examples/live-viewer/demo/e2e.mjs) reads the
//! dashboard. Needs Chromium and the demo's npm packages (runtime/tests/setup.sh installs both).

mod common;

use std::process::Stdio;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the demo pipeline on free ports; returns weir and the collector and dashboard ports.
fn start_demo(root: &std::path::Path, store: &std::path::Path) -> (std::process::Child, u16, u16) {
    build_example_transforms();
    let (collector, dashboard) = (free_port(), free_port());
    let weir = weir()
        .args([
            "run",
            "--progress=never",
            "examples/live-viewer/pipeline.toml",
        ])
        .current_dir(root)
        .env("WEIR__SOURCE__ADDRESS", format!("127.0.0.1:{collector}"))
        .env(
            "WEIR__SINK__DASHBOARD__ADDRESS",
            format!("127.0.0.1:{dashboard}"),
        )
        .env("WEIR__SINK__PATH", store)
        .env("WEIR__HTTP__ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for port in [dashboard, collector] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "weir did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    (weir, collector, dashboard)
}

fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    (
        status,
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

/// The recorded JS tracker session (a 30 s test pattern with two ad breaks, one ad skipped,
/// played to the end) replayed at the demo's collector gives the profile of what happened.
#[test]
fn replaying_the_recorded_tracker_session_gives_the_profile_of_that_session() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let (mut weir, collector, dashboard) = start_demo(&root, &dir.path().join("profiles.redb"));
    let rows = std::fs::read_to_string(fixture("collector/js-tracker-post.jsonl")).unwrap();
    for line in rows.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["method"] != "POST" {
            continue;
        }
        let headers: Vec<(String, String)> = r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h[0].as_str().unwrap().to_string(),
                    h[1].as_str().unwrap().to_string(),
                )
            })
            .filter(|(k, _)| {
                !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "host" | "content-length" | "connection" | "accept-encoding"
                )
            })
            .collect();
        let (status, _) = http(
            collector,
            "POST",
            r["path"].as_str().unwrap(),
            &headers,
            r["body"].as_str().unwrap(),
        );
        assert_eq!(status, 200);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let profile = loop {
        let (_, body) = http(dashboard, "GET", "/api/viewers", &[], "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let viewers = v["viewers"].as_array().unwrap().clone();
        if let Some(p) = viewers.iter().find(|p| p["status"] == "ended") {
            assert_eq!(viewers.len(), 1, "one viewer: {viewers:?}");
            break p.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no ended viewer: {viewers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = weir.kill();
    let _ = weir.wait();
    assert_eq!(profile["media"]["title"], "Fixture test pattern (30 s)");
    assert_eq!(profile["session"]["ads"].as_f64(), Some(2.0), "{profile}");
    assert_eq!(
        profile["session"]["ads_skipped"].as_f64(),
        Some(1.0),
        "{profile}"
    );
    assert_eq!(profile["last_event"], "end_event");
}

#[test]
fn a_browser_viewer_goes_watching_paused_in_ad_watching_ended_on_the_dashboard() {
    let root = repo_root();
    let demo = root.join("examples/live-viewer/demo");
    assert!(
        demo.join("node_modules/playwright-core").is_dir()
            && demo.join("dist/tracker.js").is_file(),
        "run runtime/tests/setup.sh first (npm packages and the tracker bundle)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (mut weir, collector, dashboard) = start_demo(&root, &dir.path().join("profiles.redb"));
    let shot = root.join("target/live-viewer-e2e.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = std::process::Command::new("node")
        .arg("e2e.mjs")
        .arg(format!("http://127.0.0.1:{dashboard}"))
        .arg(format!("http://127.0.0.1:{collector}"))
        .arg(&shot)
        .current_dir(&demo)
        .output()
        .unwrap();
    let _ = weir.kill();
    let _ = weir.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let seen: Vec<&str> = report["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // The order the dashboard showed, allowing for states too short to be polled in between.
    let wanted = ["watching", "paused", "in_ad", "watching", "ended"];
    let mut at = 0;
    for s in &seen {
        if at < wanted.len() && *s == wanted[at] {
            at += 1;
        }
    }
    assert_eq!(
        at,
        wanted.len(),
        "dashboard statuses {seen:?} should pass through {wanted:?}"
    );
    let p = &report["profile"];
    assert_eq!(p["media"]["title"], "Fixture test pattern (30 s)");
    assert_eq!(p["status"], "ended");
    assert!(p["session"]["ads"].as_f64().unwrap() >= 2.0, "{p}");
    assert_eq!(p["session"]["ads_skipped"].as_f64(), Some(1.0), "{p}");
    assert!(report["dashboardText"]
        .as_str()
        .unwrap()
        .contains("Fixture test pattern (30 s)"));
    assert!(shot.is_file(), "screenshot saved");
}
