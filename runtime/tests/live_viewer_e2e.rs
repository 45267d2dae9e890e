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

#[test]
fn a_browser_viewer_goes_watching_paused_in_ad_watching_ended_on_the_dashboard() {
    let root = repo_root();
    let demo = root.join("examples/live-viewer/demo");
    assert!(
        demo.join("node_modules/playwright-core").is_dir()
            && demo.join("dist/tracker.js").is_file(),
        "run runtime/tests/setup.sh first (npm packages and the tracker bundle)"
    );
    // The WASM transforms, built as `make demo` builds them.
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .args([
            "--target-dir",
            "target",
            "-p",
            "media-filter",
            "-p",
            "viewer-state",
        ])
        .current_dir(root.join("transforms"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(status.success());

    let dir = tempfile::tempdir().unwrap();
    let (collector, dashboard) = (free_port(), free_port());
    let mut weir = weir()
        .args([
            "run",
            "--progress=never",
            "examples/live-viewer/pipeline.toml",
        ])
        .current_dir(&root)
        .env("WEIR__SOURCE__ADDRESS", format!("127.0.0.1:{collector}"))
        .env(
            "WEIR__SINK__DASHBOARD__ADDRESS",
            format!("127.0.0.1:{dashboard}"),
        )
        .env("WEIR__SINK__PATH", dir.path().join("profiles.redb"))
        .env("WEIR__HTTP__ADDRESS", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let shot = root.join("target/live-viewer-e2e.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    // Wait for the dashboard to listen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", dashboard)).is_err() {
        assert!(std::time::Instant::now() < deadline, "weir did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
