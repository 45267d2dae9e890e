//! Unit tests on real enriched media events (Snowplow Micro output of a media session, copied
//! from the shared fixtures) and on events derived from them.

use super::*;
use serde_json::{json, Value};
use weir_transform_sdk::testing;

const SESSION: &str = include_str!("../tests/micro-media-session.tsv");

/// A repeatable pseudo-random sequence (xorshift64) for the tests that sweep values.
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn lines() -> Vec<Vec<u8>> {
    SESSION.lines().map(|l| l.as_bytes().to_vec()).collect()
}

fn field(line: &[u8], idx: usize) -> String {
    String::from_utf8(line.split(|b| *b == b'\t').nth(idx).unwrap().to_vec()).unwrap()
}

fn set(line: &[u8], idx: usize, value: &str) -> Vec<u8> {
    let text = String::from_utf8(line.to_vec()).unwrap();
    let mut f: Vec<&str> = text.split('\t').collect();
    f[idx] = value;
    f.join("\t").into_bytes()
}

type Harness = testing::Harness<weir_transform_sdk::rt::AsStateful<ViewerState>>;

fn harness() -> Harness {
    testing::set_now_ms(1_731_764_000_000);
    testing::stateful::<ViewerState>(&[("ttl", "5m")]).unwrap()
}

fn run(h: &mut Harness, events: &[Vec<u8>]) -> Vec<Value> {
    let refs: Vec<&[u8]> = events.iter().map(|e| e.as_slice()).collect();
    let out = h.process(&refs);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    out.outputs
        .iter()
        .map(|o| serde_json::from_slice(&o.value).unwrap())
        .collect()
}

/// The profile the state holds now for `viewer`.
fn profile(h: &Harness, viewer: &str) -> Value {
    decoded(h.state.value(viewer.as_bytes()).unwrap(), viewer)
}

/// A stored profile as the JSON the transform emits for it.
fn decoded(bytes: &[u8], viewer: &str) -> Value {
    let mut json = Vec::new();
    Stored::decode(bytes).unwrap().write_json(viewer, &mut json);
    serde_json::from_slice(&json).unwrap()
}

const VIEWER: &str = "143f9cb9-3db9-4e99-8d67-c8aea075d190";

#[test]
fn a_real_session_gives_a_profile_of_what_happened() {
    let mut h = harness();
    let out = run(&mut h, &lines());
    let media: Vec<_> = lines()
        .into_iter()
        .filter(|l| field(l, fields::EVENT_VENDOR) == "com.snowplowanalytics.snowplow.media")
        .collect();
    // One profile per media event that changed the profile, none for the others: fed one at a
    // time, an event emits exactly when the stored profile after it differs from the one before
    // in more than the count, the version and the time last seen.
    let mut one_by_one = harness();
    let mut changed = 0;
    let stored = |h: &Harness| h.state.value(VIEWER.as_bytes()).map(|v| decoded(v, VIEWER));
    let stable = |p: &Option<Value>| {
        p.clone().map(|mut p| {
            for k in ["events", "version", "last_seen"] {
                p.as_object_mut().unwrap().remove(k);
            }
            p
        })
    };
    for l in lines() {
        let before = stored(&one_by_one);
        let emitted = run(&mut one_by_one, &[l]);
        let after = stored(&one_by_one);
        if stable(&before) == stable(&after) {
            assert!(
                emitted.is_empty(),
                "nothing changed, nothing emitted: {emitted:?}"
            );
        } else {
            assert_eq!(emitted, [after.unwrap()], "the new profile, once");
            changed += 1;
        }
    }
    // Of the session's 47 media events, 7 (pings and progress that repeat what is known) change
    // nothing; in one batch, the same 40 profiles come out.
    assert_eq!(media.len(), 47);
    assert_eq!(changed, 40);
    assert_eq!(out.len(), changed);
    let p = profile(&h, VIEWER);
    assert_eq!(p["viewer_id"], VIEWER);
    assert_eq!(p["events"], media.len());
    // The session's last media event is a pause: the viewer is paused, three ad breaks seen.
    let last = media
        .iter()
        .max_by_key(|l| field(l, fields::DVCE_CREATED_TSTAMP))
        .unwrap();
    assert_eq!(p["last_event"], field(last, fields::EVENT_NAME));
    assert_eq!(p["status"], "paused");
    // The numbers of that last event's entities: media_player (duration 596.474195 s, at
    // 67.502404 s) and the media session (3 ad breaks, 6 ads, 3 skipped, 1 clicked).
    assert_eq!(p["media"]["duration"], 596.474195);
    assert_eq!(p["media"]["position"], 67.502404);
    assert_eq!(p["session"]["ad_breaks"], 3.0);
    assert_eq!(p["session"]["ads"], 6.0);
    assert_eq!(p["session"]["ads_skipped"], 3.0);
    assert_eq!(p["session"]["ads_clicked"], 1.0);
    assert_eq!(
        out.last().unwrap(),
        &p,
        "the last emitted profile is the state"
    );
}

#[test]
fn shuffled_duplicated_and_replayed_events_give_the_same_profile() {
    let mut h = harness();
    run(&mut h, &lines());
    let expected = profile(&h, VIEWER);

    // A deterministic shuffle, with every event twice, in batches of 7.
    let mut events: Vec<Vec<u8>> = lines().into_iter().chain(lines()).collect();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for i in (1..events.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        events.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let mut h2 = harness();
    for chunk in events.chunks(7) {
        run(&mut h2, chunk);
    }
    assert_eq!(profile(&h2, VIEWER), expected);

    // Replaying everything again changes nothing and emits nothing.
    let out = run(&mut h2, &lines());
    assert!(out.is_empty(), "a redelivered event emits nothing: {out:?}");
    assert_eq!(profile(&h2, VIEWER), expected);
}

#[test]
fn status_follows_the_player_through_ads_to_the_end_and_a_second_video_starts_over() {
    let mut h = harness();
    let all = lines();
    // The first event of that name outside an ad break (in this session the content pauses as
    // each ad break starts, and that pause carries the ad break entity: it counts as "in ad").
    #[allow(unused)]
    let by_name = |name: &str| {
        all.iter()
            .find(|l| {
                field(l, fields::EVENT_NAME) == name
                    && (name.starts_with("ad_")
                        || !field(l, fields::CONTEXTS).contains("/ad_break/"))
            })
            .unwrap()
            .clone()
    };
    // Event by event, in the order the tracker sent them: the status after each, collapsed.
    let mut statuses: Vec<String> = Vec::new();
    for l in &all {
        run(&mut h, std::slice::from_ref(l));
        if let Some(st) = h
            .state
            .value(VIEWER.as_bytes())
            .map(|_| profile(&h, VIEWER)["status"].clone())
        {
            let st = st.as_str().unwrap_or("").to_string();
            if !st.is_empty() && statuses.last() != Some(&st) {
                statuses.push(st);
            }
        }
    }
    assert_eq!(
        statuses,
        [
            "watching", "in_ad", "paused", "watching", "in_ad", "paused", "watching", "in_ad",
            "paused", "watching", "paused"
        ],
        "play; three ad breaks, after each the content waits paused until play; a final pause"
    );

    // An end event (later than everything), then a new video in a new media session.
    let end = set(
        &set(&by_name("ping_event"), fields::EVENT_NAME, "end_event"),
        fields::EVENT_ID,
        "end-1",
    );
    let end = set(&end, fields::DVCE_CREATED_TSTAMP, "2024-11-16 14:00:00.000");
    run(&mut h, &[end]);
    assert_eq!(profile(&h, VIEWER)["status"], "ended");
    let next = set(&by_name("play_event"), fields::EVENT_ID, "play-2");
    let next = set(
        &next,
        fields::DVCE_CREATED_TSTAMP,
        "2024-11-16 14:05:00.000",
    );
    let out = run(&mut h, &[next]);
    assert_eq!(out.len(), 1);
    assert_eq!(
        profile(&h, VIEWER)["status"],
        "watching",
        "a replay after an end is tracked"
    );
}

#[test]
fn an_older_event_never_regresses_the_current_fields() {
    let mut h = harness();
    let all = lines();
    let pause = all
        .iter()
        .rev()
        .find(|l| field(l, fields::EVENT_NAME) == "pause_event")
        .unwrap()
        .clone();
    let early_play = all
        .iter()
        .find(|l| field(l, fields::EVENT_NAME) == "play_event")
        .unwrap()
        .clone();
    run(&mut h, &[pause]);
    assert_eq!(profile(&h, VIEWER)["status"], "paused");
    run(&mut h, &[early_play]);
    let p = profile(&h, VIEWER);
    assert_eq!(
        p["status"], "paused",
        "the late, older play does not resume the viewer"
    );
    assert_eq!(p["events"], 2, "but it is counted");
}

#[test]
fn silent_viewers_expire_with_a_removal_record() {
    let mut h = harness();
    let play = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "play_event")
        .unwrap();
    let other = set(
        &set(&play, fields::DOMAIN_USERID, "viewer-2"),
        fields::EVENT_ID,
        "x-2",
    );
    run(&mut h, &[play]);
    testing::advance_ms(4 * 60_000);
    run(&mut h, &[other]);
    assert!(h.flush().is_empty(), "nobody silent for 5 minutes yet");
    testing::advance_ms(2 * 60_000); // the first viewer: 6 min silent; the second: 2 min
    let removed = h.flush();
    assert_eq!(removed.len(), 1);
    let (value, key) = removed.get(0).unwrap();
    let doc: Value = serde_json::from_slice(value).unwrap();
    assert_eq!(doc, json!({"viewer_id": VIEWER, "removed": true}));
    assert_eq!(key, Some(VIEWER.as_bytes()));
    assert!(h.state.value(VIEWER.as_bytes()).is_none());
    assert!(h.state.value(b"viewer-2").is_some());
}

#[test]
fn events_without_a_viewer_fail_and_settings_are_checked() {
    let mut h = harness();
    let play = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "play_event")
        .unwrap();
    let anon = set(
        &set(&play, fields::DOMAIN_USERID, ""),
        fields::NETWORK_USERID,
        "",
    );
    let out = h.process(&[&anon]);
    assert_eq!(out.errors.len(), 1);
    assert!(testing::stateful::<ViewerState>(&[("ttl", "soon")]).is_err());
    assert!(testing::stateful::<ViewerState>(&[("tll", "5m")]).is_err());
}

#[test]
fn a_profile_stored_as_json_by_an_earlier_version_is_read_and_kept() {
    // What viewer-state 0.1 stored: the profile JSON and the newest device timestamp.
    let mut h = harness();
    run(&mut h, &lines());
    let expected = profile(&h, VIEWER);
    let version = expected["version"].as_str().unwrap();
    let newest_ms: i64 = version.split('-').next().unwrap().parse().unwrap();
    let old = json!({"profile": expected, "newest_ms": newest_ms});
    let mut h2 = harness();
    h2.state
        .insert(VIEWER.as_bytes(), &serde_json::to_vec(&old).unwrap());
    // Profiles of 0.1 had no platform (nor device, nor app): read as unknown.
    let mut as_it_was = expected.clone();
    as_it_was["platform"] = Value::Null;
    assert_eq!(profile(&h2, VIEWER), as_it_was, "read as it was");
    // An older event still counts and is stored in the new format, the rest kept.
    let play = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "play_event")
        .unwrap();
    let play = set(&play, fields::EVENT_ID, "late-1");
    run(&mut h2, &[play]);
    let after = profile(&h2, VIEWER);
    assert_eq!(h2.state.value(VIEWER.as_bytes()).unwrap()[0], FORMAT);
    assert_eq!(after["events"], expected["events"].as_u64().unwrap() + 1);
    assert_eq!(after["status"], expected["status"]);
    assert_eq!(after["session"], expected["session"]);
}

#[test]
fn the_dedup_memory_is_bounded_per_viewer_and_recognises_recent_replays() {
    testing::set_now_ms(1_731_764_000_000);
    let mut h = testing::stateful::<ViewerState>(&[("ttl", "5m"), ("dedup_events", "4")]).unwrap();
    let ping = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "ping_event")
        .unwrap();
    let events: Vec<Vec<u8>> = (0..10)
        .map(|i| set(&ping, fields::EVENT_ID, &format!("e-{i}")))
        .collect();
    run(&mut h, &events);
    let stored = Stored::decode(h.state.value(VIEWER.as_bytes()).unwrap()).unwrap();
    assert_eq!(stored.seen.len(), 4, "only the last 4 are remembered");
    assert_eq!(stored.events, 10);
    // A replay of the last 4 is recognised; an older one is counted again (documented).
    run(&mut h, &events[6..]);
    assert_eq!(profile(&h, VIEWER)["events"], 10);
    run(&mut h, &events[..1]);
    assert_eq!(profile(&h, VIEWER)["events"], 11);
}

#[test]
fn a_profile_is_small() {
    let mut h = harness();
    run(&mut h, &lines());
    let bytes = h.state.value(VIEWER.as_bytes()).unwrap();
    let json = serde_json::to_vec(&profile(&h, VIEWER)).unwrap();
    // 47 events: 47 fingerprints (376 bytes) and the profile itself.
    assert!(
        bytes.len() < 1024 && bytes.len() < json.len(),
        "{} bytes stored, {} as JSON",
        bytes.len(),
        json.len()
    );
}

#[test]
fn long_viewer_ids_and_replaced_settings_are_refused() {
    let mut h = harness();
    let play = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "play_event")
        .unwrap();
    let long = set(&play, fields::DOMAIN_USERID, &"x".repeat(257));
    let ok = set(&play, fields::DOMAIN_USERID, &"y".repeat(256));
    let out = h.process(&[&long, &ok]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].0, 0);
    assert!(
        out.errors[0].1.contains("max_viewer_id_bytes"),
        "{:?}",
        out.errors
    );
    assert_eq!(out.outputs.len(), 1, "the other viewer is unaffected");
    let err = testing::stateful::<ViewerState>(&[("dedup_window", "24h")])
        .err()
        .unwrap();
    assert!(err.message().contains("dedup_events"), "{}", err.message());
    assert!(testing::stateful::<ViewerState>(&[("dedup_events", "5000")]).is_err());
}

/// What serde_json writes for a profile: the reference the hand-written writer must match.
#[derive(Serialize)]
struct Profile<'a> {
    ad: &'a Option<Ad<'a>>,
    ad_break: &'a Option<AdBreak<'a>>,
    app: &'a Option<App<'a>>,
    app_id: &'a Option<Str<'a>>,
    device: &'a Option<Device<'a>>,
    events: u64,
    first_seen: &'a str,
    last_event: &'a str,
    last_seen: &'a str,
    media: &'a Media<'a>,
    page: &'a Page<'a>,
    platform: &'a Option<Str<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: &'a Option<Session<'a>>,
    status: Status,
    version: &'a str,
    viewer_id: &'a str,
}

fn reference_json(s: &Stored, viewer: &str) -> Vec<u8> {
    let c = &s.current;
    let version = format!("{:013}-{:09}", s.newest_ms.max(0), s.events);
    serde_json::to_vec(&Profile {
        ad: &c.ad,
        ad_break: &c.ad_break,
        app: &s.client.app,
        app_id: &c.app_id,
        device: &s.client.device,
        events: s.events,
        first_seen: &s.first_seen,
        last_event: &c.last_event,
        last_seen: &s.last_seen,
        media: &c.media,
        page: &c.page,
        platform: &s.client.platform,
        session: &s.session,
        status: c.status,
        version: &version,
        viewer_id: viewer,
    })
    .unwrap()
}

#[test]
fn profiles_are_written_byte_for_byte_as_serde_json_writes_them() {
    // Every profile of the real session, after each event.
    let mut h = harness();
    let mut compared = 0;
    for l in lines() {
        run(&mut h, &[l]);
        if let Some(bytes) = h.state.value(VIEWER.as_bytes()) {
            let s = Stored::decode(bytes).unwrap();
            let mut mine = Vec::new();
            s.write_json(VIEWER, &mut mine);
            assert_eq!(
                String::from_utf8(mine).unwrap(),
                String::from_utf8(reference_json(&s, VIEWER)).unwrap()
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "{compared}");
    // Strings that need escaping, every control character, non-ASCII, odd numbers.
    let nasty: String = (0u8..0x20)
        .map(char::from)
        .chain("\"\\/\u{7f}é😀 </script>".chars())
        .collect();
    let numbers = [
        0.0,
        -0.0,
        1.0,
        -1.5,
        1e21,
        1e-7,
        123_456_789.123_456_79,
        f64::MAX,
        f64::MIN_POSITIVE,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    for (i, n) in numbers.into_iter().enumerate() {
        let t = Some(Str::from(nasty.as_str()));
        let s = Stored {
            events: [0, 1, u64::MAX, 999_999_999, 1_000_000_000][i % 5],
            first_seen: Str::from(nasty.as_str()),
            last_seen: Str::default(),
            newest_ms: [i64::MIN, -1, 0, 1_731_764_089_279, i64::MAX][i % 5],
            current: Current {
                ad: (i % 2 == 0).then(|| Ad {
                    creative_id: t.clone(),
                    duration: Some(n),
                    id: None,
                    name: t.clone(),
                    pod_position: Some(n),
                    skippable: Some(i % 3 == 0),
                }),
                ad_break: (i % 3 == 0).then(|| AdBreak {
                    id: t.clone(),
                    name: None,
                    pod_size: Some(n),
                    kind: t.clone(),
                }),
                app_id: t.clone(),
                last_event: Str::from(nasty.as_str()),
                media: Media {
                    duration: Some(n),
                    fullscreen: Some(false),
                    muted: None,
                    percent: Some(-n),
                    player_type: t.clone(),
                    position: Some(n),
                    quality: None,
                    rate: Some(n / 3.0),
                    title: t.clone(),
                    kind: None,
                    volume: Some(n * 7.0),
                },
                page: Page {
                    title: t.clone(),
                    url: None,
                },
                status: [
                    Status::Watching,
                    Status::Paused,
                    Status::Buffering,
                    Status::InAd,
                    Status::Ended,
                ][i % 5],
            },
            session: (i % 2 == 1).then(|| Session {
                ad_breaks: Some(n),
                id: t.clone(),
                started_at: t.clone(),
                time_played_muted: Some(n),
                ..Session::default()
            }),
            seen: Seen::from_words(&[1, 2]),
            client: Client {
                app: (i % 2 == 0).then(|| App {
                    build: t.clone(),
                    version: None,
                }),
                device: (i % 3 == 0).then(|| Device {
                    manufacturer: t.clone(),
                    model: t.clone(),
                    os: None,
                    os_version: t.clone(),
                }),
                platform: (i % 2 == 1).then(|| Str::from(nasty.as_str())),
            },
        };
        let mut mine = Vec::new();
        s.write_json(&nasty, &mut mine);
        assert_eq!(
            String::from_utf8(mine).unwrap(),
            String::from_utf8(reference_json(&s, &nasty)).unwrap(),
            "case {i}"
        );
    }
}

/// `line` as a mobile tracker's event: platform `mob`, no user id or domain user id, and the
/// entities Snowplow's Android tracker attaches (client_session, mobile_context, application).
fn mobile(line: &[u8], install_id: &str) -> Vec<u8> {
    let mut contexts: Value = serde_json::from_str(&field(line, fields::CONTEXTS)).unwrap();
    let data = contexts["data"].as_array_mut().unwrap();
    data.push(
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
        "data": {"userId": install_id, "sessionId": "3994693e-a3ae-4e68-9323-451b4a95902a",
                 "sessionIndex": 5, "storageMechanism": "LOCAL_STORAGE", "eventIndex": 5,
                 "previousSessionId": null}}),
    );
    data.push(
        json!({"schema": "iglu:com.snowplowanalytics.mobile/application/jsonschema/1-0-0",
        "data": {"version": "2.4.1", "build": "241"}}),
    );
    data.push(
        json!({"schema": "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3",
        "data": {"osType": "android", "osVersion": "14", "deviceModel": "Pixel 8",
                 "deviceManufacturer": "Google", "networkType": "wifi"}}),
    );
    let line = set(line, fields::CONTEXTS, &contexts.to_string());
    let line = set(&line, fields::PLATFORM, "mob");
    let line = set(&line, fields::USER_ID, "");
    set(&line, fields::DOMAIN_USERID, "")
}

#[test]
fn a_mobile_viewer_is_its_install_and_its_profile_has_platform_device_and_app() {
    let install = "db149e47-14be-49ab-b93f-e42eabd2d9f2";
    let events: Vec<Vec<u8>> = lines().iter().map(|l| mobile(l, install)).collect();
    let mut h = harness();
    let out = run(&mut h, &events);
    assert!(!out.is_empty());
    assert!(
        h.state.value(VIEWER.as_bytes()).is_none(),
        "not keyed by the web id"
    );
    let p = profile(&h, install);
    assert_eq!(p["viewer_id"], install);
    assert_eq!(p["platform"], "mob");
    assert_eq!(
        p["device"],
        json!({"manufacturer": "Google", "model": "Pixel 8", "os": "android", "os_version": "14"})
    );
    assert_eq!(p["app"], json!({"build": "241", "version": "2.4.1"}));
    let mobile_profile = p;
    // A web viewer of the same session: the same media state; platform web, no device, no app.
    let mut h = harness();
    run(&mut h, &lines());
    let p = profile(&h, VIEWER);
    for k in ["status", "media", "session", "events", "last_event"] {
        assert_eq!(mobile_profile[k], p[k], "{k}");
    }
    assert_eq!(p["platform"], "web");
    assert_eq!(
        (p["device"].clone(), p["app"].clone()),
        (Value::Null, Value::Null)
    );
    // user_id still wins over the install id; an escaped install id is not used.
    let first_media = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_VENDOR) == "com.snowplowanalytics.snowplow.media")
        .unwrap();
    let with_user = set(&mobile(&first_media, install), fields::USER_ID, "user-7");
    let mut h = harness();
    run(&mut h, &[with_user]);
    assert!(h.state.value(b"user-7").is_some());
    let escaped = mobile(&first_media, "a\\u0041b");
    let nuid = field(&escaped, fields::NETWORK_USERID);
    let mut h = harness();
    run(&mut h, &[escaped]);
    assert!(
        h.state.value(nuid.as_bytes()).is_some(),
        "falls back to network_userid"
    );
}

/// `stored` as format 2 wrote it (with the format byte).
fn format_2(stored: &Stored) -> Vec<u8> {
    let s = stored.clone();
    let v2 = Stored2 {
        v1: Stored1 {
            events: s.events,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            newest_ms: s.newest_ms,
            current: s.current,
            session: s.session,
            seen: s.seen.words().collect(),
        },
        client: s.client,
    };
    // Format 2 was one flat struct: nesting format 1 in it must not change a byte.
    let v1 = postcard::to_allocvec(&v2.v1).unwrap();
    let client = postcard::to_allocvec(&v2.client).unwrap();
    assert_eq!(postcard::to_allocvec(&v2).unwrap(), [v1, client].concat());
    let mut out = vec![FORMAT_2];
    out.extend(postcard::to_allocvec(&v2).unwrap());
    out
}

#[test]
fn a_profile_stored_in_format_1_is_read_with_an_empty_client() {
    let mut h = harness();
    run(&mut h, &lines());
    let stored = Stored::decode(h.state.value(VIEWER.as_bytes()).unwrap()).unwrap();
    assert_eq!(stored.client.platform.as_deref(), Some("web"));
    assert!(stored.seen.words().next().is_some());
    // Format 1 is format 2 without the trailing client.
    let mut v1 = format_2(&stored);
    let tail = postcard::to_allocvec(&stored.client).unwrap();
    v1.truncate(v1.len() - tail.len());
    v1[0] = FORMAT_1;
    let old = Stored::decode(&v1).unwrap();
    assert_eq!(old.client, Client::default());
    assert_eq!(old.current, stored.current);
    assert_eq!(old.seen, stored.seen);
}

#[test]
fn a_profile_stored_in_format_2_is_read_and_rewritten_with_its_fingerprints_as_words() {
    testing::set_now_ms(1_731_764_000_000);
    let mut h = testing::stateful::<ViewerState>(&[("ttl", "5m")]).unwrap();
    let ping = lines()
        .into_iter()
        .find(|l| field(l, fields::EVENT_NAME) == "ping_event")
        .unwrap();
    let events: Vec<Vec<u8>> = (0..70)
        .map(|i| set(&ping, fields::EVENT_ID, &format!("e-{i}")))
        .collect();
    run(&mut h, &events[..69]);
    let v3 = h.state.value(VIEWER.as_bytes()).unwrap().to_vec();
    assert_eq!(v3[0], FORMAT);
    let stored = Stored::decode(&v3).unwrap();
    assert_eq!(stored.seen.len(), 64);
    // Format 2 spent a varint per fingerprint (FNV-1a values need 9 or 10 bytes); format 3
    // spends 8.
    let v2 = format_2(&stored);
    assert!(v2.len() >= v3.len() + 64, "{} vs {}", v2.len(), v3.len());
    assert_eq!(Stored::decode(&v2).unwrap(), stored);
    // A viewer stored in format 2: its replays are still recognised, and the next event
    // rewrites it in format 3.
    let mut h2 = testing::stateful::<ViewerState>(&[("ttl", "5m")]).unwrap();
    h2.state.insert(VIEWER.as_bytes(), &v2);
    run(&mut h2, &events[60..69]);
    assert_eq!(profile(&h2, VIEWER)["events"], 69, "replays recognised");
    run(&mut h2, &events[69..]);
    let after = h2.state.value(VIEWER.as_bytes()).unwrap();
    assert_eq!(after[0], FORMAT);
    let after = Stored::decode(after).unwrap();
    assert_eq!(after.events, 70);
    let words = |s: &Stored<'_>| s.seen.words().collect::<Vec<_>>();
    assert_eq!(words(&after)[..63], words(&stored)[1..]);
    // A byte string that is not whole words is refused, not misread.
    let mut bad = v3.clone();
    let at = v3.len() - postcard::to_allocvec(&stored.client).unwrap().len() - 8 * 64 - 2;
    assert_eq!(
        &bad[at..at + 2],
        &[0x80, 0x04],
        "the length of 512 bytes, as a varint"
    );
    bad[at..at + 2].copy_from_slice(&[0xff, 0x03]); // 511 bytes
    assert!(Stored::decode(&bad).is_err());
}

#[test]
fn timestamps_parse_to_milliseconds_with_any_fraction() {
    let base = parse_ms("2024-11-16 13:33:22").unwrap();
    assert_eq!(base, 1_731_764_002_000);
    for (s, ms) in [
        (".6", Some(600)),
        (".62", Some(620)),
        (".625", Some(625)),
        (".62599", Some(625)),
        (".", Some(0)),
        ("Z", Some(0)),
        (".6x", None),
        (".x", None),
        (".é", None),
    ] {
        assert_eq!(
            parse_ms(&format!("2024-11-16 13:33:22{s}")),
            ms.map(|m| base + m),
            "{s}"
        );
    }
    assert_eq!(parse_ms("2024-11-16 13:33"), None);
    assert_eq!(parse_ms("1970-01-01 00:00:00.001"), Some(1));
    let mut out = String::new();
    iso_into("2024-11-16 13:33:22.625", &mut out);
    assert_eq!(out, "2024-11-16T13:33:22.625Z");
    iso_into("", &mut out);
    assert_eq!(out, "");
}

#[test]
fn short_decimals_are_written_as_serde_json_writes_them() {
    use serde_json::ser::{CompactFormatter, Formatter};
    let check = |v: f64| {
        let mut want = Vec::new();
        CompactFormatter.write_f64(&mut want, v).unwrap();
        let mut got = Vec::new();
        if json_out::short_decimal(v, &mut got) {
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap(),
                "{v:e}"
            );
            true
        } else {
            assert!(got.is_empty());
            false
        }
    };
    // Every value of three decimals below 20, both signs; and around the limit.
    let mut fast = 0;
    for m in 0..20_000u64 {
        for v in [m as f64 / 1000.0, -(m as f64) / 1000.0] {
            fast += check(v) as usize;
        }
    }
    assert!(fast >= 39_999, "{fast}: the fast path takes these");
    for m in [
        (1u64 << 30) * 1000 - 1,
        (1 << 30) * 1000,
        123_456_789_012,
        999_999_999_999,
    ] {
        check(m as f64 / 1000.0);
        check(-(m as f64) / 1000.0);
    }
    // Other values: more decimals, tiny, huge, -0, the ends of the range; and random bits.
    for v in [
        0.1 + 0.2,
        1e-7,
        5e-324,
        1e21,
        1e15 + 0.5,
        -0.0,
        f64::MAX,
        f64::MIN_POSITIVE,
        1073741823.999,
        1073741824.0,
        12.3456,
        0.0005,
        0.0015,
    ] {
        check(v);
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200_000 {
        xorshift(&mut x);
        let v = f64::from_bits(x);
        if v.is_finite() {
            check(v);
        }
        // Media-like values: a position in seconds with a few decimals, perhaps off by an ulp.
        let p = (x % 10_000_000) as f64 / 1000.0;
        check(p);
        check(f64::from_bits(p.to_bits() + 1));
    }
}

/// The entity classifier accepts each schema's whole prefix, at any version, and nothing that
/// differs from one in a single place.
#[test]
fn entities_are_told_apart_by_their_schema() {
    let known = [
        (
            "iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/",
            Entity::Player,
        ),
        (
            "iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/",
            Entity::Session,
        ),
        (
            "iglu:com.snowplowanalytics.snowplow.media/ad/jsonschema/",
            Entity::Ad,
        ),
        (
            "iglu:com.snowplowanalytics.snowplow.media/ad_break/jsonschema/",
            Entity::AdBreak,
        ),
        (
            "iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/",
            Entity::Mobile,
        ),
        (
            "iglu:com.snowplowanalytics.mobile/application/jsonschema/",
            Entity::Application,
        ),
    ];
    for (prefix, kind) in known {
        for version in ["1-0-0", "2-0-1", ""] {
            assert_eq!(
                Entity::of(&format!("{prefix}{version}")),
                Some(kind),
                "{prefix}"
            );
        }
        // Cut short anywhere, or one bit changed in any byte: none of them.
        for n in 0..prefix.len() {
            assert_eq!(Entity::of(&prefix[..n]), None, "{}", &prefix[..n]);
            let mut changed = prefix.as_bytes().to_vec();
            changed[n] ^= 0x01;
            let changed = String::from_utf8(changed).unwrap() + "1-0-0";
            assert_eq!(Entity::of(&changed), None, "{changed}");
        }
    }
    // read_current finds each kind at `kind as usize`.
    for (i, (_, kind)) in Entity::NAMES.iter().enumerate() {
        assert_eq!(*kind as usize, i, "{kind:?}");
    }
    for other in [
        "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
        "iglu:com.snowplowanalytics.snowplow.media/play_event/jsonschema/1-0-0",
        "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2",
        "iglu:com.acme/media_player/jsonschema/1-0-0",
        "",
    ] {
        assert_eq!(Entity::of(other), None, "{other}");
    }
}

#[test]
fn integers_are_written_as_format_writes_them() {
    let mut values = vec![0u64, 1, 9, 10, 99, 100, u64::from(u32::MAX), u64::MAX];
    values.extend([u64::from(u32::MAX) + 1, 10_000_000_000, 1_731_764_009_114]);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..10_000 {
        let r = xorshift(&mut x);
        values.push(r >> (r % 64));
    }
    for v in values {
        for width in [1, 9, 20] {
            let mut got = b"x".to_vec();
            json_out::put_u64(&mut got, v, width);
            assert_eq!(String::from_utf8(got).unwrap(), format!("x{v:0width$}"));
        }
    }
}
