//! The `collector` source on the real binary: real tracker traffic in (the JS tracker's recorded
//! requests, the Python tracker run live, Snowplow Micro's enriched events turned back into
//! requests), enriched events out; malformed and abusive requests; the load generator.

#[path = "common/collector.rs"]
mod collector_common;
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use collector_common::*;
use common::*;
use serde_json::{json, Value};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn sdj_eq(text: &str, expected: &str) -> bool {
    serde_json::from_str::<Value>(text).unwrap() == serde_json::from_str::<Value>(expected).unwrap()
}

#[test]
fn js_tracker_traffic_yields_exactly_the_events_the_tracker_sent() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(dir.path(), "", &file_sinks(dir.path()));
    let rows: Vec<Value> = std::fs::read_to_string(fixture("collector/js-tracker-post.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let before = now_ms();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Replay as the browser sent it, on one keep-alive connection. The recorded browser held the
    // `sp` cookie its collector had set on the first POST, and sends it from the second on.
    // (event, the request's headers, the network user id it got)
    type Sent = (Value, Vec<(String, String)>, String);
    let mut sent: Vec<Sent> = Vec::new();
    rt.block_on(async {
        let mut conn = Conn::open(w.addr, None).await.unwrap();
        for r in &rows {
            let headers = replay_headers(r);
            let sp_sent = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                .and_then(|(_, v)| v.split("; ").find_map(|c| c.strip_prefix("sp=")))
                .map(str::to_string);
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let method = r["method"].as_str().unwrap();
            let body = r["body"].as_str().unwrap().to_string();
            let resp = conn
                .send(method, r["path"].as_str().unwrap(), &h, full(body.clone()))
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "request {}: {}", r["seq"], resp.text());
            // CORS: the request's Origin echoed, credentials allowed.
            assert_eq!(
                resp.header("access-control-allow-origin"),
                Some("http://127.0.0.1:8000")
            );
            assert_eq!(
                resp.header("access-control-allow-credentials"),
                Some("true")
            );
            if method == "OPTIONS" {
                let allowed = resp.header("access-control-allow-headers").unwrap();
                assert!(allowed.to_ascii_lowercase().contains("content-type"));
                assert!(resp.header("access-control-max-age").is_some());
                continue;
            }
            assert_eq!(resp.text(), "ok");
            let cookie = resp.header("set-cookie").expect("the sp cookie is set");
            let value = cookie
                .strip_prefix("sp=")
                .unwrap()
                .split(';')
                .next()
                .unwrap();
            assert!(
                cookie.contains("Path=/") && cookie.contains("Expires="),
                "{cookie}"
            );
            if let Some(c) = &sp_sent {
                assert_eq!(c, value, "the browser's cookie is kept");
            }
            for e in serde_json::from_str::<Value>(&body).unwrap()["data"]
                .as_array()
                .unwrap()
            {
                sent.push((e.clone(), headers.clone(), value.to_string()));
            }
        }
    });
    let after = now_ms();
    let log = w.stop();
    assert!(
        lines(&dir.path().join("bad.ndjson")).is_empty(),
        "no bad rows:\n{log}"
    );
    let out = lines(&dir.path().join("out.tsv"));
    assert_eq!(sent.len(), 38, "the fixture holds 38 events in 33 POSTs");
    assert_eq!(
        out.len(),
        sent.len(),
        "one enriched event per tracked event"
    );
    assert!(sent
        .iter()
        .skip(1)
        .all(|s| s.2 == "d1adfade-81d2-4ed9-9a8d-593d9660f0f5"));
    // Read through the analytics SDK (which also checks that each line is an enriched event).
    let docs = to_json_all(&out);
    for (((e, headers, nuid), line), j) in sent.iter().zip(&out).zip(&docs) {
        let p = |k: &str| e[k].as_str().unwrap_or("");
        let header = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map_or("", |(_, v)| v.as_str())
        };
        let eid = p("eid");
        let f = |name: &str| field(line, name);
        assert_eq!(f("event_id"), eid);
        let (event, vendor, name) = match p("e") {
            "pv" => (
                "page_view",
                "com.snowplowanalytics.snowplow",
                "page_view".to_string(),
            ),
            "pp" => (
                "page_ping",
                "com.snowplowanalytics.snowplow",
                "page_ping".to_string(),
            ),
            "ue" => {
                let ue: Value = serde_json::from_str(p("ue_pr")).unwrap();
                let schema = ue["data"]["schema"].as_str().unwrap();
                assert_eq!(f("event_version"), schema.rsplit('/').next().unwrap());
                (
                    "unstruct",
                    "com.snowplowanalytics.snowplow.media",
                    schema.split('/').nth(1).unwrap().to_string(),
                )
            }
            other => panic!("unexpected event type {other}"),
        };
        assert_eq!(
            (f("event"), f("event_vendor"), f("event_name")),
            (event, vendor, name.as_str()),
            "{eid}"
        );
        assert_eq!(f("event_format"), "jsonschema");
        if p("e") == "ue" {
            assert!(
                sdj_eq(f("unstruct_event"), p("ue_pr")),
                "{eid}: the event's data"
            );
        } else {
            assert_eq!(f("unstruct_event"), "");
        }
        assert!(
            sdj_eq(f("contexts"), p("co")),
            "{eid}: every entity, as sent"
        );
        for (param, name) in [
            ("uid", "user_id"),
            ("duid", "domain_userid"),
            ("sid", "domain_sessionid"),
            ("vid", "domain_sessionidx"),
            ("aid", "app_id"),
            ("p", "platform"),
            ("tv", "v_tracker"),
            ("tna", "name_tracker"),
            ("url", "page_url"),
            ("page", "page_title"),
            ("lang", "br_lang"),
            ("tz", "os_timezone"),
            ("cs", "doc_charset"),
            ("cd", "br_colordepth"),
            ("cookie", "br_cookies"),
        ] {
            assert_eq!(f(name), p(param), "{eid}: {param} → {name}");
        }
        for (param, w_, h_) in [
            ("vp", "br_viewwidth", "br_viewheight"),
            ("res", "dvce_screenwidth", "dvce_screenheight"),
            ("ds", "doc_width", "doc_height"),
        ] {
            assert_eq!(format!("{}x{}", f(w_), f(h_)), p(param), "{eid}: {param}");
        }
        let dtm: i64 = p("dtm").parse().unwrap();
        let stm: i64 = p("stm").parse().unwrap();
        assert_eq!(j["dvce_created_tstamp"], tstamp(dtm), "{eid}");
        assert_eq!(j["dvce_sent_tstamp"], tstamp(stm), "{eid}");
        // What the collector and Enrich add.
        let collected = ms(&j["collector_tstamp"]);
        assert!(
            (before..=after).contains(&collected),
            "{eid}: collector_tstamp {} is the time of the request",
            j["collector_tstamp"]
        );
        assert_eq!(
            j["derived_tstamp"],
            tstamp(collected - (stm - dtm)),
            "{eid}"
        );
        assert!(ms(&j["etl_tstamp"]) >= collected, "{eid}");
        assert_eq!(f("useragent"), header("user-agent"));
        assert_eq!(f("user_ipaddress"), "127.0.0.1");
        assert_eq!(f("network_userid"), nuid, "the sp cookie, or the one set");
        assert_eq!(
            (f("page_urlscheme"), f("page_urlhost"), f("page_urlport")),
            ("http", "127.0.0.1", "8000")
        );
        assert_eq!(f("page_urlpath"), "/index.html");
        assert_eq!(f("page_urlquery"), p("url").split_once('?').unwrap().1);
        assert!(f("v_collector").starts_with("weir-collector-"));
        assert!(f("v_etl").starts_with("weir-"));
    }
    // The JSON has the shape Enrich's output has for the same kinds of events.
    compare_with_micro(&out);
}

/// Per event name, the set of analytics-SDK JSON keys of some enriched lines, but for the entity
/// keys (`contexts_…`), which only say which entities the tracker attached.
fn json_keys(lines: &[String]) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (l, j) in lines.iter().zip(to_json_all(lines)) {
        let keys = m.entry(field(l, "event_name").to_string()).or_default();
        keys.extend(
            j.as_object()
                .unwrap()
                .keys()
                .filter(|k| !k.starts_with("contexts_"))
                .cloned(),
        );
        // The entity keys are exactly those of the entities in the contexts field.
        let entities: BTreeSet<String> = serde_json::from_str::<Value>(field(l, "contexts"))
            .unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let parts: Vec<&str> = e["schema"].as_str().unwrap()[5..].split('/').collect();
                let major = parts[3].split('-').next().unwrap();
                format!(
                    "contexts_{}_{}_{major}",
                    parts[0].replace('.', "_"),
                    parts[1]
                )
            })
            .collect();
        let got: BTreeSet<String> = j
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("contexts_"))
            .cloned()
            .collect();
        assert_eq!(got, entities);
    }
    m
}

/// weir's JSON keys for the JS tracker's events against those of Snowplow Micro's Enrich for the
/// same kinds of events (page view, page ping, media events). The only differences allowed are
/// the ones the tracker input explains, each checked.
fn compare_with_micro(out: &[String]) {
    let micro = lines(&fixture("sdk/micro-media-session.tsv"));
    let (ours, theirs) = (json_keys(out), json_keys(&micro));
    let mut compared = 0;
    for (name, keys) in &ours {
        let Some(enrich) = theirs.get(name) else {
            continue;
        };
        compared += 1;
        // The recorded JS tracker (4.10) sends an app id, a user id and a URL with a query string;
        // the tracker Micro recorded (4.0) sent none of these.
        let only_ours: BTreeSet<&str> = keys.difference(enrich).map(String::as_str).collect();
        let explained_ours: BTreeSet<&str> = ["app_id", "user_id", "page_urlquery"].into();
        assert!(
            only_ours.is_subset(&explained_ours),
            "{name}: weir adds {only_ours:?}"
        );
        // Micro's page had a referrer and its page pings scroll offsets; the recorded JS traffic
        // has neither (no refr, no pp_* parameters).
        let only_theirs: BTreeSet<&str> = enrich.difference(keys).map(String::as_str).collect();
        let explained_theirs: BTreeSet<&str> = [
            "page_referrer",
            "refr_urlscheme",
            "refr_urlhost",
            "refr_urlport",
            "refr_urlpath",
            "pp_yoffset_min",
            "pp_yoffset_max",
        ]
        .into();
        assert!(
            only_theirs.is_subset(&explained_theirs),
            "{name}: weir lacks {only_theirs:?}"
        );
        // Everything Enrich derives from the request is there.
        for k in [
            "collector_tstamp",
            "etl_tstamp",
            "derived_tstamp",
            "dvce_created_tstamp",
            "dvce_sent_tstamp",
            "v_collector",
            "v_etl",
            "user_ipaddress",
            "useragent",
            "network_userid",
            "page_url",
            "page_urlscheme",
            "page_urlhost",
            "page_urlport",
            "page_urlpath",
            "event_vendor",
            "event_name",
            "event_format",
            "event_version",
            "event_id",
            "br_viewwidth",
            "dvce_screenwidth",
            "doc_width",
        ] {
            assert!(keys.contains(k), "{name}: {k}");
        }
    }
    assert!(
        compared >= 6,
        "page_view, page_ping and media events compared, found {compared}"
    );
    // The JS events lack no key of the page views and pings that their input would give.
    let refr_in_js = out.iter().any(|l| !field(l, "page_referrer").is_empty());
    assert!(!refr_in_js);
}

#[test]
fn enrich_output_turned_back_into_requests_comes_out_field_for_field() {
    // Snowplow Micro's 73 enriched events of a media session, each turned back into the tracker
    // request that carried it (same parameters, User-Agent, client IP and network user id), come
    // out of weir identical to what Enrich wrote, but for the fields that record when and by what
    // they were processed.
    let micro = lines(&fixture("sdk/micro-media-session.tsv"));
    assert_eq!(micro.len(), 73);
    let micro_json = to_json_all(&micro);
    let dir = tempfile::tempdir().unwrap();
    // The requests come as through a load balancer at 127.0.0.1 naming the client.
    let w = start(
        dir.path(),
        "trusted_proxies = [\"127.0.0.1\"]",
        &file_sinks(dir.path()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = Conn::open(w.addr, None).await.unwrap();
        for (l, j) in micro.iter().zip(&micro_json) {
            let f = |n: &str| field(l, n).to_string();
            let e = match f("event").as_str() {
                "page_view" => "pv",
                "page_ping" => "pp",
                "unstruct" => "ue",
                other => panic!("{other}"),
            };
            let mut p = serde_json::Map::new();
            let mut put = |k: &str, v: String| {
                if !v.is_empty() {
                    p.insert(k.into(), Value::String(v));
                }
            };
            put("e", e.into());
            for (param, name) in [
                ("eid", "event_id"),
                ("tv", "v_tracker"),
                ("tna", "name_tracker"),
                ("aid", "app_id"),
                ("p", "platform"),
                ("uid", "user_id"),
                ("duid", "domain_userid"),
                ("vid", "domain_sessionidx"),
                ("sid", "domain_sessionid"),
                ("url", "page_url"),
                ("page", "page_title"),
                ("refr", "page_referrer"),
                ("lang", "br_lang"),
                ("cookie", "br_cookies"),
                ("cd", "br_colordepth"),
                ("cs", "doc_charset"),
                ("tz", "os_timezone"),
                ("co", "contexts"),
                ("ue_pr", "unstruct_event"),
                ("pp_mix", "pp_xoffset_min"),
                ("pp_max", "pp_xoffset_max"),
                ("pp_miy", "pp_yoffset_min"),
                ("pp_may", "pp_yoffset_max"),
            ] {
                put(param, f(name));
            }
            for (param, w_, h_) in [
                ("vp", "br_viewwidth", "br_viewheight"),
                ("res", "dvce_screenwidth", "dvce_screenheight"),
                ("ds", "doc_width", "doc_height"),
            ] {
                if !f(w_).is_empty() {
                    put(param, format!("{}x{}", f(w_), f(h_)));
                }
            }
            put("dtm", ms(&j["dvce_created_tstamp"]).to_string());
            put("stm", ms(&j["dvce_sent_tstamp"]).to_string());
            let target = format!("{TP2}?nuid={}", f("network_userid"));
            let (ua, ip) = (f("useragent"), f("user_ipaddress"));
            let headers = [
                ("content-type", "application/json; charset=UTF-8"),
                ("user-agent", ua.as_str()),
                ("x-forwarded-for", ip.as_str()),
            ];
            let body = payload_data(&[Value::Object(p)]);
            let resp = conn
                .send("POST", &target, &headers, full(body))
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    });
    w.stop();
    let out = lines(&dir.path().join("out.tsv"));
    assert_eq!(out.len(), micro.len());
    let out_json = to_json_all(&out);
    let processing = [
        "etl_tstamp",
        "collector_tstamp",
        "derived_tstamp",
        "v_collector",
        "v_etl",
    ];
    for ((ours, enrich), (ours_j, enrich_j)) in
        out.iter().zip(&micro).zip(out_json.iter().zip(&micro_json))
    {
        for name in field_names() {
            if processing.contains(&name.as_str()) {
                continue;
            }
            assert_eq!(
                field(ours, name),
                field(enrich, name),
                "{} {name}",
                field(enrich, "event_id")
            );
        }
        let t = |j: &Value, n: &str| ms(&j[n]);
        // Enrich: derived = collector - (sent - created), for each side's own collector time.
        for j in [ours_j, enrich_j] {
            assert_eq!(
                t(j, "derived_tstamp"),
                t(j, "collector_tstamp") - (t(j, "dvce_sent_tstamp") - t(j, "dvce_created_tstamp")),
                "{j}"
            );
        }
        // So the analytics-SDK JSON has exactly the same keys.
        let keys = |j: &Value| {
            j.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(keys(ours_j), keys(enrich_j));
    }
}

#[test]
fn python_tracker_get_post_base64_and_batched() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(dir.path(), "", &file_sinks(dir.path()));
    let port = w.addr.port().to_string();
    let report = python("collector/python_tracker.py", &[&port], "");
    w.stop();
    assert!(lines(&dir.path().join("bad.ndjson")).is_empty());
    let rows: Vec<Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let requests: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "request").collect();
    let tracked: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "event").collect();
    assert_eq!(tracked.len(), 20);
    // The tracker really used every form: GET /i and POST tp2, base64 on and off, a batch.
    for r in &requests {
        assert_eq!(r["status"], 200, "{r}");
        assert!(r["set_cookie"].as_str().unwrap().starts_with("sp="));
    }
    let of = |mode: &str| {
        requests
            .iter()
            .filter(|r| r["mode"] == mode)
            .collect::<Vec<_>>()
    };
    for mode in ["get-base64", "get-plain"] {
        let rs = of(mode);
        assert_eq!(rs.len(), 5, "{mode}: one GET per event");
        for r in &rs {
            let url = r["url"].as_str().unwrap();
            assert!(url.contains("/i?e="), "{url}");
            let b64 = mode == "get-base64";
            if url.contains("e=ue") {
                assert_eq!(url.contains("ue_px="), b64, "{url}");
                assert_eq!(url.contains("ue_pr="), !b64, "{url}");
                assert_eq!(url.contains("cx="), b64);
            }
        }
    }
    let batched = of("post-base64-batched");
    let sizes: Vec<usize> = batched
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            assert!(r["url"].as_str().unwrap().ends_with(TP2));
            let events = body["data"].as_array().unwrap();
            for e in events {
                if e["e"] == "ue" {
                    assert!(
                        e.get("ue_px").is_some()
                            && e.get("cx").is_some()
                            && e.get("ue_pr").is_none()
                    );
                }
            }
            events.len()
        })
        .collect();
    assert_eq!(sizes, [3, 2], "batches of 3");
    let single = of("post-plain-single");
    assert_eq!(single.len(), 5);
    assert!(single
        .iter()
        .any(|r| r["body"].as_str().unwrap().contains("\"ue_pr\"")));

    let out = lines(&dir.path().join("out.tsv"));
    assert_eq!(out.len(), 20, "every tracked event, once");
    let docs = to_json_all(&out);
    let by_eid: HashMap<&str, (&String, &Value)> = out
        .iter()
        .zip(&docs)
        .map(|(l, j)| (field(l, "event_id"), (l, j)))
        .collect();
    assert_eq!(by_eid.len(), 20);
    for t in &tracked {
        let eid = t["eid"].as_str().unwrap();
        let mode = t["mode"].as_str().unwrap();
        let &(l, j) = by_eid
            .get(eid)
            .unwrap_or_else(|| panic!("{mode}: event {eid} missing"));
        let f = |n: &str| field(l, n);
        assert_eq!(f("v_tracker"), "py-1.1.0");
        assert_eq!(f("name_tracker"), format!("py-{mode}"));
        assert_eq!(f("app_id"), "weir-python-test");
        assert_eq!(f("platform"), "web");
        assert_eq!(f("user_id"), format!("py-{mode}@example.com"));
        assert_eq!(
            (f("dvce_screenwidth"), f("dvce_screenheight")),
            ("1920", "1080")
        );
        assert_eq!(
            (f("br_viewwidth"), f("br_lang"), f("os_timezone")),
            ("1280", "pt-PT", "Europe/Lisbon")
        );
        assert_eq!(f("domain_userid"), "5bd1b4a6-1a7f-4c3e-8c55-7c3f0b0f9d6e");
        ms(&j["dvce_created_tstamp"]);
        ms(&j["dvce_sent_tstamp"]);
        match t["type"].as_str().unwrap() {
            "page_view" => {
                assert_eq!((f("event"), f("event_name")), ("page_view", "page_view"));
                assert_eq!(f("page_url"), t["url"]);
                assert_eq!(f("page_urlquery"), format!("mode={mode}&x=%20y"));
                assert_eq!(f("page_urlfragment"), "frag");
                assert_eq!(f("page_title"), "Watch page");
                assert_eq!(f("page_referrer"), t["referrer"]);
                assert_eq!(
                    (f("refr_urlhost"), f("refr_urlquery")),
                    ("ref.example.org", "b=1")
                );
            }
            "page_ping" => {
                assert_eq!(f("event_name"), "page_ping");
                let pp: Vec<i64> = [
                    "pp_xoffset_min",
                    "pp_xoffset_max",
                    "pp_yoffset_min",
                    "pp_yoffset_max",
                ]
                .iter()
                .map(|n| f(n).parse().unwrap())
                .collect();
                assert_eq!(json!(pp), t["pp"]);
            }
            "struct" => {
                assert_eq!(
                    (f("event"), f("event_vendor"), f("event_name")),
                    ("struct", "com.google.analytics", "event")
                );
                assert_eq!(
                    (
                        f("se_category"),
                        f("se_action"),
                        f("se_label"),
                        f("se_property")
                    ),
                    ("video", "play", "Tracker test", "autoplay")
                );
                // se_value is a string in the analytics SDKs' field table.
                assert_eq!(j["se_value"], "1.5");
            }
            "unstruct" => {
                let schema = t["schema"].as_str().unwrap();
                assert_eq!(f("event"), "unstruct");
                assert_eq!(f("event_name"), schema.split('/').nth(1).unwrap());
                let ue: Value = serde_json::from_str(f("unstruct_event")).unwrap();
                assert_eq!(ue["data"]["schema"], schema);
                assert_eq!(ue["data"]["data"], t["data"]);
                let co: Value = serde_json::from_str(f("contexts")).unwrap();
                assert_eq!(
                    co["data"], t["contexts"],
                    "{mode}: entities, tab and accents included"
                );
                assert_eq!(
                    j["contexts_com_snowplowanalytics_snowplow_media_player_2"][0]["label"],
                    "Tracker \"test\" é\tü"
                );
                if let Some(ttm) = t["ttm"].as_i64() {
                    assert_eq!(j["true_tstamp"], tstamp(ttm));
                    assert_eq!(j["derived_tstamp"], tstamp(ttm));
                }
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn malformed_requests_get_4xx_and_bad_rows_and_good_ones_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(
        dir.path(),
        "max_body_bytes = \"16 KiB\"\nmax_events_per_request = 5",
        &file_sinks(dir.path()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let good = |i: usize| {
        payload_data(&[json!({"e": "pv", "aid": format!("good-{i}"), "url": "http://a.test/"})])
    };
    let json_h = [("content-type", "application/json")];
    let play = json!({"schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
        "data": {"schema": "iglu:com.snowplowanalytics.snowplow.media/play_event/jsonschema/1-0-0", "data": {}}})
    .to_string();
    // (what, method, target, body, expected status, expected bad row: schema name, payloadField)
    type Case = (
        &'static str,
        &'static str,
        String,
        crate::collector_common::Body,
        u16,
        Option<(&'static str, &'static str)>,
    );
    let cpfv = "collector_payload_format_violation";
    let mut cases: Vec<Case> = vec![
        ("bad JSON", "POST", TP2.into(), full("{\"schema\": \"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4\", \"data\": [{\"e\":"), 400, Some((cpfv, "body"))),
        ("bad base64", "GET", "/i?e=ue&ue_px=%21%21%21not-base64%21%21".into(), full(""), 400, Some((cpfv, "ue_px"))),
        ("event without e", "POST", TP2.into(), full(payload_data(&[json!({"aid": "x"})])), 400, Some((cpfv, "e"))),
        ("wrong payload schema", "POST", TP2.into(), full(json!({"schema": "iglu:com.acme/batch/jsonschema/1-0-0", "data": [{"e": "pv"}]}).to_string()), 400, Some((cpfv, "body"))),
        ("wrong unstruct schema", "POST", TP2.into(), full(payload_data(&[json!({"e": "ue", "ue_pr": play.replace("/unstruct_event/", "/contexts/")})])), 400, Some((cpfv, "ue_pr"))),
        ("entity schema not Iglu", "GET", format!("/i?e=pv&cx={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{"schema":"web_page","data":{}}]}"#)), full(""), 400, Some((cpfv, "cx"))),
        ("a number where a string goes", "POST", TP2.into(), full(payload_data(&[json!({"e": "pv", "vid": 2})])), 400, Some((cpfv, "vid"))),
        ("too many events", "POST", TP2.into(), full(payload_data(&vec![json!({"e": "pv"}); 6])), 413, Some((cpfv, "body"))),
        ("oversized body", "POST", TP2.into(), full(vec![b'x'; 64 << 10]), 413, Some(("size_violation", ""))),
        ("oversized chunked body", "POST", TP2.into(), chunked(vec![Bytes::from(vec![b'y'; 8 << 10]); 8]), 413, Some(("size_violation", ""))),
        ("empty GET", "GET", "/i".into(), full(""), 400, Some((cpfv, "querystring"))),
        ("unknown path", "POST", "/com.acme/v1".into(), full(good(0)), 404, None),
        ("wrong method", "PUT", TP2.into(), full(good(0)), 405, None),
    ];
    let n_bad = cases.iter().filter(|c| c.5.is_some()).count();
    let mut expected_rows = Vec::new();
    rt.block_on(async {
        for (i, (what, method, target, body, status, row)) in cases.drain(..).enumerate() {
            let resp = send(w.addr, None, method, &target, &json_h, body)
                .await
                .unwrap();
            assert_eq!(resp.status, status, "{what}: {}", resp.text());
            if let Some(r) = row {
                expected_rows.push((what, r));
            }
            // Another client's good request right after is answered normally.
            let resp = send(w.addr, None, "POST", TP2, &json_h, full(good(i + 1)))
                .await
                .unwrap();
            assert_eq!(resp.status, 200, "good request after {what}");
        }
    });
    w.stop();
    let out = lines(&dir.path().join("out.tsv"));
    let apps: Vec<&str> = out.iter().map(|l| field(l, "app_id")).collect();
    let want: Vec<String> = (1..=13).map(|i| format!("good-{i}")).collect();
    assert_eq!(
        apps, want,
        "only the good requests' events, none of the refused ones"
    );
    let rows: Vec<Value> = lines(&dir.path().join("bad.ndjson"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), n_bad, "one bad row per refused request");
    for (row, (what, (schema, field_name))) in rows.iter().zip(&expected_rows) {
        let s = row["schema"].as_str().unwrap();
        assert!(s.contains(&format!("/{schema}/")), "{what}: {s}");
        if *schema == "collector_payload_format_violation" {
            let failure = &row["data"]["failure"];
            assert_eq!(failure["loader"], "thrift");
            assert_eq!(
                failure["message"]["payloadField"], *field_name,
                "{what}: {row}"
            );
            // The payload is the request as a Snowplow collector records it, so it can be
            // recovered: base64 of a Thrift CollectorPayload.
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(row["data"]["payload"].as_str().unwrap())
                .unwrap();
            let p = weir_core::snowplow::collector_payload::decode(&bytes).unwrap();
            assert_eq!(p.ip_address, "127.0.0.1");
            assert!(p.path.as_deref().unwrap().starts_with('/'));
            assert!(
                p.headers.iter().any(|h| h.starts_with("content-type:")),
                "{what}"
            );
        } else {
            assert_eq!(row["data"]["failure"]["maximumAllowedSizeBytes"], 16 << 10);
        }
    }
}

#[test]
fn a_flood_from_one_client_leaves_room_for_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(
        dir.path(),
        "max_inflight_per_client = 4",
        &file_sinks(dir.path()),
    );
    let addr = w.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (flood, others) = rt.block_on(async move {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        let flooder: IpAddr = "127.0.0.2".parse().unwrap();
        // The flood lasts while the other client sends (at most two minutes).
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let throttled = std::sync::Arc::new(AtomicUsize::new(0));
        let limit = Instant::now() + Duration::from_secs(120);
        let mut tasks = Vec::new();
        // 64 connections from one address, each sending batches of 10 events without pause.
        for c in 0..64 {
            let (done, throttled) = (done.clone(), throttled.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen: Vec<(u16, Vec<String>)> = Vec::new();
                let mut conn = Conn::open(addr, Some(flooder)).await.unwrap();
                let mut i = 0;
                while !done.load(SeqCst) && Instant::now() < limit {
                    let eids: Vec<String> = (0..10).map(|k| format!("f{c}-{i}-{k}")).collect();
                    let events: Vec<Value> = eids
                        .iter()
                        .map(|e| json!({"e": "pv", "aid": "flood", "tna": e}))
                        .collect();
                    // A refusal may close the connection before the body is sent: status 0.
                    let status = match conn
                        .send("POST", TP2, &[], full(payload_data(&events)))
                        .await
                    {
                        Ok(r) => r.status,
                        Err(_) => 0,
                    };
                    if status == 429 {
                        throttled.fetch_add(1, SeqCst);
                    }
                    seen.push((status, eids));
                    i += 1;
                }
                seen
            }));
        }
        // Once the flood is being throttled, another client sends one request every 20 ms.
        while throttled.load(SeqCst) == 0 {
            assert!(Instant::now() < limit, "the flood was never throttled");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        let mut others = Vec::new();
        for i in 0..100 {
            let body = payload_data(&[json!({"e": "pv", "aid": "other", "tna": format!("o-{i}")})]);
            let r = send(addr, Some(other), "POST", TP2, &[], full(body))
                .await
                .unwrap();
            others.push(r.status);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done.store(true, SeqCst);
        let mut flood = Vec::new();
        for t in tasks {
            flood.extend(t.await.unwrap());
        }
        (flood, others)
    });
    let rss = rss_kib(w.pid()).map(|(_, peak)| peak).unwrap_or(0);
    w.stop();
    assert!(
        others.iter().all(|&s| s == 200),
        "the other client is always answered: {others:?}"
    );
    let throttled = flood.iter().filter(|(s, _)| *s == 429).count();
    let accepted: Vec<&Vec<String>> = flood
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, e)| e)
        .collect();
    assert!(throttled > 0, "the flooding client was throttled");
    assert!(flood.iter().all(|(s, _)| [200, 429, 503, 0].contains(s)));
    // Every event answered 200 arrived exactly once; no refused one did.
    let out = lines(&dir.path().join("out.tsv"));
    let mut got: HashMap<String, usize> = HashMap::new();
    for l in &out {
        *got.entry(field(l, "name_tracker").to_string()).or_default() += 1;
    }
    for eids in &accepted {
        for e in *eids {
            assert_eq!(got.get(e), Some(&1), "{e}");
        }
    }
    let accepted_n: usize = accepted.iter().map(|e| e.len()).sum();
    assert_eq!(out.len(), accepted_n + 100, "nothing else arrived");
    eprintln!(
        "flood: {} requests, {} accepted, {throttled} throttled; peak RSS {} MiB",
        flood.len(),
        accepted.len(),
        rss / 1024
    );
}

#[test]
fn a_stalled_pipeline_refuses_with_503_says_so_on_sink_health_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("sink.fifo");
    mkfifo(&fifo);
    let rest = format!(
        "[sink]\ntype = \"file\"\npath = \"{}\"\n\n[failure]\ntype = \"file\"\npath = \"{}\"\n\n[batch]\nmax_records = 200\nqueue = 1\n",
        fifo.display(),
        dir.path().join("bad.ndjson").display()
    );
    let cfg = write(
        dir.path(),
        "collector.toml",
        &format!(
            "[source]\ntype = \"collector\"\naddress = \"127.0.0.1:0\"\nqueue = 8\nmax_inflight_bytes = \"4 MiB\"\nmax_inflight_per_client = 0\n\n{rest}"
        ),
    );
    // The sink opens the FIFO at start: open our end first so that it can.
    let opener = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo).unwrap()
    });
    let w = start_config(dir.path(), &cfg);
    let reader = opener.join().unwrap();
    let addr = w.addr;
    let pid = w.pid();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // ~30 KiB per request: 100 events with a padded page title.
    fn body_for(c: usize, i: usize) -> (Vec<String>, String) {
        let pad = "p".repeat(300);
        let eids: Vec<String> = (0..100).map(|k| format!("s{c}-{i}-{k}")).collect();
        let events: Vec<String> = eids
            .iter()
            .map(|e| format!(r#"{{"e":"pv","tna":"{e}","page":"{pad}"}}"#))
            .collect();
        let body = format!(
            r#"{{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{}]}}"#,
            events.join(",")
        );
        (eids, body)
    }
    let stop_sending = Instant::now() + Duration::from_secs(4);
    // 32 clients, each from its own address (one client alone would meet its share, 429).
    let clients: Vec<_> = (0..32)
        .map(|c| {
            rt.spawn(async move {
                let mut seen = Vec::new();
                let from: IpAddr = format!("127.0.1.{}", c + 1).parse().unwrap();
                let mut conn = Conn::open(addr, Some(from)).await.unwrap();
                let mut i = 0;
                while Instant::now() < stop_sending {
                    let (eids, body) = body_for(c, i);
                    // A refusal may close the connection before the body is sent: status 0.
                    let status = match conn.send("POST", TP2, &[], full(body)).await {
                        Ok(r) => r.status,
                        Err(_) => 0,
                    };
                    seen.push((status, eids));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    // Nothing reads the sink for 4 s: the pipeline stalls, the collector must refuse, not buffer,
    // and say so on /sink-health.
    let mut peak = 0;
    let mut sink_health = BTreeSet::new();
    while Instant::now() < stop_sending {
        if let Some((rss, _)) = rss_kib(pid) {
            peak = peak.max(rss);
        }
        sink_health.insert(send_blocking(addr, "GET", "/sink-health", &[], "").status);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Now drain the sink: the requests still waiting are answered, later ones accepted again.
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { reader }, &mut s).unwrap();
        s
    });
    let mut results = Vec::new();
    for c in clients {
        results.extend(rt.block_on(c).unwrap());
    }
    let after = rt.block_on(async {
        let (_, body) = body_for(999, 0);
        send(addr, None, "POST", TP2, &[], full(body))
            .await
            .unwrap()
            .status
    });
    assert_eq!(after, 200, "accepting again once the sink moves");
    assert!(
        sink_health.contains(&503),
        "/sink-health answered 503 while the queue was full: {sink_health:?}"
    );
    assert!(sink_health.is_subset(&[200, 503].into()), "{sink_health:?}");
    wait_until(
        "/sink-health to be 200 again",
        Duration::from_secs(60),
        || send_blocking(addr, "GET", "/sink-health", &[], "").status == 200,
    );
    w.stop();
    let written = drain.join().unwrap();
    let refused = results.iter().filter(|(s, _)| *s == 503).count();
    let accepted: Vec<&Vec<String>> = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, e)| e)
        .collect();
    let offered_mib = results.len() * 31 / 1024;
    eprintln!(
        "stall: {} requests (~{offered_mib} MiB), {} accepted, {refused} refused with 503; peak RSS during the stall {} MiB",
        results.len(),
        accepted.len(),
        peak / 1024
    );
    assert!(refused > 0, "a stalled pipeline makes the collector refuse");
    assert!(results.iter().all(|(s, _)| [200, 503, 0].contains(s)));
    assert!(
        peak < 64 * 1024,
        "memory stays bounded while refusing: peak {peak} KiB"
    );
    let mut got: HashMap<&str, usize> = HashMap::new();
    for l in written.lines() {
        *got.entry(field(l, "name_tracker")).or_default() += 1;
    }
    let accepted_eids: HashSet<&str> = accepted
        .iter()
        .flat_map(|e| e.iter().map(String::as_str))
        .collect();
    for e in &accepted_eids {
        assert_eq!(
            got.get(e),
            Some(&1),
            "accepted event {e} written exactly once"
        );
    }
    for (s, eids) in &results {
        if *s == 503 {
            assert!(
                eids.iter().all(|e| !got.contains_key(e.as_str())),
                "a refused request's events are not written"
            );
        }
    }
}

#[test]
fn the_load_generator_sends_media_sessions_that_arrive_whole() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(dir.path(), "", &file_sinks(dir.path()));
    let out = weir()
        .args([
            "loadgen",
            "--viewers",
            "4",
            "--duration",
            "3s",
            "--speed",
            "0",
            "--batch",
            "7",
            "--json",
        ])
        .arg(format!("http://{}", w.addr))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    w.stop();
    let events = lines(&dir.path().join("out.tsv"));
    assert!(lines(&dir.path().join("bad.ndjson")).is_empty());
    assert_eq!(report["status_other"], 0, "{report}");
    assert_eq!(report["dropped_batches"], 0, "{report}");
    assert_eq!(
        report["events_accepted"].as_u64().unwrap() as usize,
        events.len(),
        "{report}"
    );
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for (l, j) in events.iter().zip(to_json_all(&events)) {
        let name = field(l, "event_name").to_string();
        if field(l, "event_vendor") == "com.snowplowanalytics.snowplow.media" {
            assert!(
                j["contexts_com_snowplowanalytics_snowplow_media_player_2"].is_array(),
                "{name}"
            );
            assert!(
                j["contexts_com_snowplowanalytics_snowplow_media_session_1"].is_array(),
                "{name}"
            );
            if name.starts_with("ad_")
                && name != "ad_break_start_event"
                && name != "ad_break_end_event"
            {
                assert!(
                    j["contexts_com_snowplowanalytics_snowplow_media_ad_1"].is_array(),
                    "{name}"
                );
            }
            if name.starts_with("ad_") {
                assert!(
                    j["contexts_com_snowplowanalytics_snowplow_media_ad_break_1"].is_array(),
                    "{name}"
                );
            }
        }
        *names.entry(name).or_default() += 1;
    }
    for name in [
        "page_view",
        "ready_event",
        "play_event",
        "ping_event",
        "percent_progress_event",
        "ad_break_start_event",
        "ad_start_event",
        "ad_quartile_event",
        "ad_complete_event",
        "ad_skip_event",
        "ad_break_end_event",
        "pause_event",
        "seek_start_event",
        "end_event",
    ] {
        assert!(names.contains_key(name), "{name} in {names:?}");
    }
}

#[test]
fn health_cookie_settings_custom_paths_and_anonymous_requests() {
    let dir = tempfile::tempdir().unwrap();
    let w = start(
        dir.path(),
        "paths = { \"/com.acme/collect\" = \"/com.snowplowanalytics.snowplow/tp2\", \"/p.gif\" = \"/i\" }\nanon_ip_octets = 1\ntrusted_proxies = [\"127.0.0.0/8\"]\n[source.cookie]\nname = \"nuid\"\ndomains = [\"acme.test\"]\nsame_site = \"Lax\"\nsecure = false",
        &file_sinks(dir.path()),
    );
    let health = send_blocking(w.addr, "GET", "/health", &[], "");
    assert_eq!((health.status, health.text().as_str()), (200, "ok"));
    assert_eq!(
        send_blocking(w.addr, "GET", "/robots.txt", &[], "").status,
        200
    );
    assert_eq!(
        send_blocking(w.addr, "GET", "/sink-health", &[], "").status,
        200
    );
    let body = payload_data(&[json!({"e": "pv", "aid": "custom-path"})]);
    let r = send_blocking(
        w.addr,
        "POST",
        "/com.acme/collect",
        &[
            ("origin", "https://www.acme.test"),
            ("cookie", "nuid=11111111-2222-4333-8444-555555555555"),
            ("x-forwarded-for", "198.51.100.77"),
        ],
        body,
    );
    assert_eq!(r.status, 200);
    let c = r.header("set-cookie").unwrap();
    assert!(
        c.starts_with("nuid=11111111-2222-4333-8444-555555555555;"),
        "{c}"
    );
    assert!(
        c.contains("Domain=acme.test") && c.contains("SameSite=Lax") && !c.contains("Secure"),
        "{c}"
    );
    let r = send_blocking(
        w.addr,
        "GET",
        "/p.gif?e=pv&aid=pixel&nuid=99999999-2222-4333-8444-555555555555",
        &[],
        "",
    );
    assert_eq!(
        (r.status, r.header("content-type")),
        (200, Some("image/gif"))
    );
    assert!(r.body.starts_with(b"GIF89a"));
    let r = send_blocking(
        w.addr,
        "GET",
        "/i?e=pv&aid=anonymous",
        &[("sp-anonymous", "*"), ("cookie", "nuid=x")],
        "",
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("set-cookie").is_none(),
        "no cookie for anonymous tracking"
    );
    w.stop();
    let out = lines(&dir.path().join("out.tsv"));
    assert_eq!(out.len(), 3);
    assert_eq!(
        field(&out[0], "network_userid"),
        "11111111-2222-4333-8444-555555555555"
    );
    assert_eq!(
        field(&out[0], "user_ipaddress"),
        "198.51.100.x",
        "anonymised"
    );
    assert_eq!(
        field(&out[1], "network_userid"),
        "99999999-2222-4333-8444-555555555555",
        "nuid parameter"
    );
    assert_eq!(
        field(&out[2], "network_userid"),
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(field(&out[2], "user_ipaddress"), "");
}

#[test]
fn collector_config_mistakes_are_reported_at_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for (extra, key, says) in [
        (
            "anon_ip_octets = 7",
            "source.anon_ip_octets",
            "expected 0 to 4 octets, found 7",
        ),
        (
            "paths = { \"/x\" = \"/y\" }",
            "source.paths./x",
            "expected `/com.snowplowanalytics.snowplow/tp2` or `/i`",
        ),
        (
            "max_inflight_bytes = \"1 KiB\"",
            "source.max_inflight_bytes",
            "expected at least max_body_bytes",
        ),
        (
            "trusted_proxies = [\"10.0.0.0/33\"]",
            "source.trusted_proxies[0]",
            "expected an address or CIDR range such as `10.0.0.0/8`",
        ),
        (
            "max_inflight_per_client_bytes = \"64 MiB\"",
            "source.max_inflight_per_client_bytes",
            "expected less than max_inflight_bytes, found 67108864 bytes",
        ),
        (
            "max_body_byte = 5",
            "source.max_body_byte",
            "did you mean `max_body_bytes`?",
        ),
        (
            "[source.cookie]\nsame_site = \"Laxx\"",
            "source.cookie.same_site",
            "expected one of `None`, `Lax`, `Strict`, found `Laxx`",
        ),
    ] {
        let cfg = write(
            dir.path(),
            "bad.toml",
            &format!("[source]\ntype = \"collector\"\n{extra}\n\n[sink]\ntype = \"null\"\n"),
        );
        let out = weir().arg("validate").arg(&cfg).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        assert!(err.contains(&format!("key `{key}`")), "{extra}: {err}");
        assert!(err.contains(says), "{extra}: {err}");
    }
}
