//! The live dashboard over 100,000 viewers, in a real browser: profiles of generated viewers
//! (as viewer-state writes them) go through the real binary into the embedded profile store; the
//! API pages and filters on the server, and headless Chromium (examples/live-viewer/demo/scale.mjs)
//! loads the page, sees a change arrive, filters by status, pages and searches.
//!
//! The page's load time and weir's memory are printed, not asserted (tests never assert speed;
//! the figures are in the README).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const VIEWERS: usize = 100_000;
const TITLES: [&str; 8] = [
    "Big Buck Bunny",
    "Sintel",
    "Tears of Steel",
    "Elephants Dream",
    "Cosmos Laundromat",
    "Spring",
    "Agent 327",
    "Coffee Run",
];

/// Viewer `i`: 40 % watching, 10 % paused, 10 % in an ad, 10 % buffering, 30 % ended; a third on
/// mobile; ads by the session's index.
fn profile(i: usize) -> String {
    let status = match i % 10 {
        0..=3 => "watching",
        4 => "paused",
        5 => "in_ad",
        6 => "buffering",
        _ => "ended",
    };
    let (platform, device) = if i % 3 == 0 {
        (
            "mob",
            r#"{"manufacturer":"Google","model":"Pixel 8","os":"android","os_version":"14"}"#,
        )
    } else {
        ("web", "null")
    };
    let secs = i as u64;
    let ads = i % 4;
    format!(
        r#"{{"viewer_id":"viewer-{i:06}","status":"{status}","platform":"{platform}","device":{device},"app":null,"app_id":"scale","events":{},"first_seen":"2026-12-07T08:00:00Z","last_seen":"2026-12-{:02}T{:02}:{:02}:{:02}Z","last_event":"ping_event","media":{{"title":"{}","duration":600,"position":{},"percent":null}},"session":{{"ads":{ads},"ads_skipped":{},"ads_clicked":0,"time_played":{}}},"version":"{:013}-000000001"}}"#,
        10 + i % 50,
        6 + secs / 86_400,
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        TITLES[i % TITLES.len()],
        i % 600,
        ads / 2,
        i % 600,
        1_795_680_000_000u64 + secs * 1000,
    )
}

fn json(addr: &str, path: &str) -> serde_json::Value {
    serde_json::from_str(&http_get(addr, path).unwrap_or_else(|| panic!("GET {path}"))).unwrap()
}

#[test]
fn a_dashboard_of_100k_viewers_loads_pages_filters_and_stays_live() {
    let root = repo_root();
    let demo = root.join("examples/live-viewer/demo");
    assert!(
        demo.join("node_modules/playwright-core").is_dir(),
        "run runtime/tests/setup.sh first (the demo's npm packages)"
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"stdin\"\n[sink]\ntype = \"profiles\"\npath = \"{}\"\n\
             [sink.dashboard]\naddress = \"127.0.0.1:0\"\npush_interval = \"250ms\"\n\
             [batch]\nmax_records = 5000\nflush_interval = \"50ms\"\n",
            dir.path().join("profiles.redb").display()
        ),
    );
    let mut weir = Logged::spawn(
        weir()
            .args(["run", "--progress=never"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let addr = weir.bound("live dashboard").to_string();
    let mut stdin = weir.child.stdin.take().unwrap();
    let started = Instant::now();
    {
        let mut w = std::io::BufWriter::new(&mut stdin);
        for i in 0..VIEWERS {
            writeln!(w, "{}", profile(i)).unwrap();
        }
    }
    wait_until(
        "100,000 viewers in the index",
        Duration::from_secs(300),
        || json(&addr, "/api/summary")["viewers"] == VIEWERS,
    );
    eprintln!(
        "{VIEWERS} profiles stored in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The API: a page and the aggregates, never the whole store.
    let s = json(&addr, "/api/summary");
    assert_eq!(s["live"], 70_000, "{s}");
    assert_eq!(s["by_status"]["paused"], 10_000);
    assert_eq!(s["by_platform"]["mob"], 33_334);
    assert_eq!(s["top_titles"].as_array().unwrap().len(), 8);
    assert_eq!(s["ads"]["started"], 150_000.0, "{s}");
    assert_eq!(s["ads"]["skipped"], 50_000.0, "{s}");
    let p = json(
        &addr,
        "/api/viewers?status=in_ad&platform=mob&per_page=50&page=3",
    );
    assert_eq!(p["total"], 3_333, "i % 10 == 5 and i % 3 == 0");
    let rows = p["viewers"].as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert!(rows
        .iter()
        .all(|r| r["status"] == "in_ad" && r["platform"] == "mob"));
    let page_bytes = http_get(&addr, "/api/viewers?page=1").unwrap().len();
    assert!(page_bytes < 100_000, "a page is a page: {page_bytes} bytes");
    eprintln!("a page of 24 viewers: {page_bytes} bytes");

    // The browser: load, live update, filter, page, search.
    let shot = root.join("target/dashboard-100k.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let mut node = std::process::Command::new("node")
        .arg("scale.mjs")
        .arg(format!("http://{addr}"))
        .arg(&shot)
        .arg("viewer-042042")
        .current_dir(&demo)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(node.stdout.take().unwrap()).lines();
    let loaded: serde_json::Value =
        serde_json::from_str(&out.next().expect("the page loads").unwrap()).unwrap();
    eprintln!(
        "dashboard page over {VIEWERS} viewers shown in {} ms",
        loaded["loaded"]
    );
    assert_eq!(loaded["total"], "100,000");
    // Stays live: a change arrives while the page is open.
    writeln!(
        stdin,
        r#"{{"viewer_id":"live-check","status":"in_ad","platform":"web","media":{{"title":"Live check"}},"last_seen":"2026-12-08T00:00:00Z","session":{{"ads":1}}}}"#
    )
    .unwrap();
    stdin.flush().unwrap();
    let report: serde_json::Value = match out.next() {
        Some(Ok(l)) => serde_json::from_str(&l).unwrap(),
        _ => {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut node.stderr.take().unwrap(), &mut err).unwrap();
            panic!("the browser run failed: {err}\nweir:\n{}", weir.log());
        }
    };
    assert!(node.wait().unwrap().success());
    assert_eq!(report["liveStatus"], "in ad", "{report}");
    assert_eq!(
        report["pausedInfo"], "page 1 of 417 · 10,000 viewers",
        "{report}"
    );
    let (p1, p2) = (&report["page1"], &report["page2"]);
    assert_eq!(p1.as_array().unwrap().len(), 24);
    assert!(p1
        .as_array()
        .unwrap()
        .iter()
        .all(|k| !p2.as_array().unwrap().contains(k)));
    assert!(report["page2Statuses"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s == "paused"));
    assert_eq!(report["searchInfo"], "page 1 of 1 · 1 viewers", "{report}");
    assert!(shot.is_file());
    if let Some((rss, hwm)) = rss_kib(weir.child.id()) {
        eprintln!("weir RSS {} MiB (peak {} MiB)", rss / 1024, hwm / 1024);
    }
    drop(stdin);
    let (status, log) = weir.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{log}");

    // Restarted on that store: the dashboard reads it into its index once, and serves pages.
    let mut again = Logged::spawn(
        common::weir()
            .args(["run", "--progress=never"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let addr = again.bound("live dashboard").to_string();
    let started = Instant::now();
    wait_until(
        "the store read into the index",
        Duration::from_secs(120),
        || json(&addr, "/api/summary")["viewers"] == VIEWERS + 1,
    );
    eprintln!(
        "restart: {} viewers read from the store in {:.1} s",
        VIEWERS + 1,
        started.elapsed().as_secs_f64()
    );
    let p = json(&addr, "/api/viewers?per_page=24");
    assert_eq!(
        p["viewers"][0]["viewer_id"], "live-check",
        "{}",
        p["viewers"][0]
    );
    assert_eq!(p["pages"], 4_167);
    if let Some((rss, hwm)) = rss_kib(again.child.id()) {
        eprintln!(
            "weir RSS after reading the store {} MiB (peak {} MiB)",
            rss / 1024,
            hwm / 1024
        );
    }
    drop(again.child.stdin.take());
    let (status, log) = again.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{log}");
}
