//! The live viewer demo end to end in a real browser: headless Chromium plays the demo page with
//! the real Snowplow JS tracker and media plugin, through the demo pipeline (collector →
//! media-filter → viewer-state → profile store + dashboard, the real `weir` binary and the real
//! WASM transforms), while the page's driver (examples/live-viewer/demo/e2e.mjs) reads what the
//! dashboard page renders. Needs Chromium and the demo's npm packages (runtime/tests/setup.sh
//! installs both).

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::*;

/// Starts the demo pipeline with its collector and dashboard on ports the OS picks; returns weir
/// and the collector and dashboard ports, read from weir's log.
fn start_demo(root: &std::path::Path, store: &std::path::Path) -> (Logged, u16, u16, u16) {
    build_example_transforms();
    let mut weir = Logged::spawn(
        weir()
            .args([
                "run",
                "--progress=never",
                "examples/live-viewer/pipeline.toml",
            ])
            .current_dir(root)
            .env("WEIR__SOURCE__ADDRESS", "127.0.0.1:0")
            .env("WEIR__SINK__DASHBOARD__ADDRESS", "127.0.0.1:0")
            .env("WEIR__SINK__PATH", store)
            .env("WEIR__HTTP__ADDRESS", "127.0.0.1:0")
            .stdout(Stdio::null()),
    );
    let collector = weir.bound("collector listening").port();
    let dashboard = weir.bound("live dashboard").port();
    let metrics = weir.bound("serving /healthz").port();
    (weir, collector, dashboard, metrics)
}

/// The Chromium to drive: `$CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
        .expect(
            "no Chromium: set CHROMIUM or run runtime/tests/setup.sh (installs Debian's chromium)",
        )
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
    let (weir, collector, dashboard, metrics) =
        start_demo(&root, &dir.path().join("profiles.redb"));
    let rows = std::fs::read_to_string(fixture("collector/js-tracker-post.jsonl")).unwrap();
    let mut events = 0;
    for line in rows.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["method"] != "POST" {
            continue;
        }
        let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        events += body["data"].as_array().unwrap().len();
        let headers = replay_headers(&r);
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
    // The demo measures each event from the collector to the profile store: every event is
    // counted once its batch is stored, and none took long.
    let sample = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = http(metrics, "GET", "/metrics", &[], "");
        if sample(&text, "weir_e2e_latency_seconds_count") == Some(events as f64) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weir_e2e_latency_seconds never counted the {events} events:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mean = sample(&text, "weir_e2e_latency_seconds_sum").unwrap() / events as f64;
    assert!(
        (0.0..5.0).contains(&mean),
        "mean collector → store latency {mean} s"
    );
    assert_eq!(
        sample(&text, "weir_e2e_latency_seconds_bucket{le=\"10\"}"),
        Some(events as f64),
        "{text}"
    );
    eprintln!(
        "{events} events, mean collector → store latency {:.1} ms",
        mean * 1000.0
    );
    drop(weir);
    assert_eq!(profile["media"]["title"], "Fixture test pattern (30 s)");
    assert_eq!(profile["session"]["ads"].as_f64(), Some(2.0), "{profile}");
    assert_eq!(
        profile["session"]["ads_skipped"].as_f64(),
        Some(1.0),
        "{profile}"
    );
    assert_eq!(profile["last_event"], "end_event");
}

/// A media session from Snowplow's Android tracker and one from its iOS tracker, each as one
/// request shaped exactly as the tracker sends it (runtime/tests/fixtures/collector/
/// mobile-trackers.md says where each detail comes from), replayed at the demo's collector: both
/// viewers are on the dashboard with their platform, device, app and title, ended, with their
/// ad counts. The Android app sets a user id; the iOS app does not, so that viewer is its
/// install (the `client_session` user id).
#[test]
fn android_and_ios_tracker_sessions_become_mobile_viewers_on_the_dashboard() {
    let root = repo_root();
    let dir = tempfile::tempdir().unwrap();
    let (weir, collector, dashboard, _) = start_demo(&root, &dir.path().join("profiles.redb"));
    let fixtures: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("collector/mobile-trackers.json")).unwrap(),
    )
    .unwrap();
    for platform in ["android", "ios"] {
        let r = &fixtures[platform];
        let headers: Vec<(String, String)> = r["headers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "host" | "content-length" | "connection" | "accept-encoding"
                )
            })
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let (status, body) = http(
            collector,
            "POST",
            r["path"].as_str().unwrap(),
            &headers,
            r["raw_body"].as_str().unwrap(),
        );
        assert_eq!(status, 200, "{platform}: {body}");
    }
    let android_id = "user-7@example.com";
    let ios_id = "c48f6f41-a450-4d59-ab87-a4dc157a8060";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let viewers = loop {
        let (_, body) = http(dashboard, "GET", "/api/viewers", &[], "");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let viewers = v["viewers"].as_array().unwrap().clone();
        if viewers.len() == 2 && viewers.iter().all(|p| p["status"] == "ended") {
            break viewers;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not two ended viewers: {viewers:?}\n{}",
            weir.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    // And as a browser shows them: each card names the device and the app.
    let demo = root.join("examples/live-viewer/demo");
    let shot = root.join("target/live-viewer-mobile.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = std::process::Command::new("node")
        .arg("cards.mjs")
        .arg(format!("http://127.0.0.1:{dashboard}"))
        .arg("2")
        .arg(&shot)
        .env("CHROMIUM", chromium())
        .current_dir(&demo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cards: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let card = |id: &str| {
        cards
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["key"] == id)
            .unwrap_or_else(|| panic!("no card for {id}: {cards}"))
            .clone()
    };
    let c = card(android_id);
    assert_eq!(
        c["client"], "mobile · Google Pixel 8 · android 14 · app 2.4.1 (241)",
        "{c}"
    );
    assert_eq!(c["title"], "Big Buck Bunny (2 min cut)");
    assert_eq!(
        (c["status"].as_str(), c["stats"]["ads"].as_str()),
        (Some("ended"), Some("1"))
    );
    let c = card(ios_id);
    assert_eq!(
        c["client"], "mobile · Apple Inc. iPhone15,2 · ios 17.5.1 · app 2.4.1 (42)",
        "{c}"
    );
    assert_eq!(c["title"], "Sintel (90 s cut)");
    assert_eq!(c["status"], "ended");
    assert_eq!(
        (c["stats"]["ads"].as_str(), c["stats"]["skipped"].as_str()),
        (Some("2"), Some("1"))
    );
    drop(weir);
    let by_id = |id: &str| {
        viewers
            .iter()
            .find(|p| p["viewer_id"] == id)
            .unwrap_or_else(|| panic!("no viewer {id}: {viewers:?}"))
            .clone()
    };
    let android = by_id(android_id);
    assert_eq!(android["platform"], "mob", "{android}");
    assert_eq!(android["device"]["manufacturer"], "Google");
    assert_eq!(android["device"]["model"], "Pixel 8");
    assert_eq!(android["device"]["os"], "android");
    assert_eq!(android["app"]["version"], "2.4.1");
    assert_eq!(android["app_id"], "media-demo-android");
    assert_eq!(android["media"]["title"], "Big Buck Bunny (2 min cut)");
    assert_eq!(android["last_event"], "end_event");
    assert_eq!(android["session"]["ads"].as_f64(), Some(1.0), "{android}");
    assert_eq!(android["session"]["ad_breaks"].as_f64(), Some(1.0));
    let ios = by_id(ios_id);
    assert_eq!(ios["platform"], "mob", "{ios}");
    assert_eq!(ios["device"]["manufacturer"], "Apple Inc.");
    assert_eq!(ios["device"]["model"], "iPhone15,2");
    assert_eq!(ios["device"]["os_version"], "17.5.1");
    assert_eq!(ios["app"]["build"], "42");
    assert_eq!(ios["media"]["title"], "Sintel (90 s cut)");
    assert_eq!(ios["session"]["ads"].as_f64(), Some(2.0), "{ios}");
    assert_eq!(ios["session"]["ads_skipped"].as_f64(), Some(1.0), "{ios}");
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
    let (weir, collector, dashboard, _) = start_demo(&root, &dir.path().join("profiles.redb"));
    let shot = root.join("target/live-viewer-e2e.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let out = std::process::Command::new("node")
        .arg("e2e.mjs")
        .arg(format!("http://127.0.0.1:{dashboard}"))
        .arg(format!("http://127.0.0.1:{collector}"))
        .arg(&shot)
        .env("CHROMIUM", chromium())
        .current_dir(&demo)
        .output()
        .unwrap();
    let log = weir.log();
    drop(weir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed:\n{stdout}\n{}\nweir:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let seen: Vec<&str> = report["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    // The statuses the viewer's card showed, in order (the page renders on animation frames, so a
    // state shorter than a frame may not be drawn).
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
    // The card at the end, as rendered: the title, the status, two ads of which one skipped.
    let card = &report["card"];
    assert_eq!(card["title"], "Fixture test pattern (30 s)", "{card}");
    assert_eq!(card["status"], "ended", "{card}");
    assert_eq!(
        card["ad"],
        serde_json::Value::Null,
        "no ad line once ended: {card}"
    );
    assert_eq!(card["stats"]["ads"], "2", "{card}");
    assert_eq!(card["stats"]["skipped"], "1", "{card}");
    assert_eq!(card["stats"]["clicked"], "0", "{card}");
    assert_eq!(card["client"], "web", "{card}");
    let text = report["dashboardText"].as_str().unwrap();
    assert!(text.contains("Fixture test pattern (30 s)"), "{text}");
    assert!(shot.is_file(), "screenshot saved");
}
