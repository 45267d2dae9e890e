use super::*;
use crate::{field_index, to_json, validate, Scratch, FIELDS};
use serde_json::{json, Value};

const TP2: &str = "/com.snowplowanalytics.snowplow/tp2";

fn payload<'a>(path: &'a str, qs: Option<&'a str>, body: Option<&'a str>) -> CollectorPayload<'a> {
    CollectorPayload {
        schema: super::super::collector_payload::SCHEMA.into(),
        ip_address: "203.0.113.7".into(),
        timestamp: 1_795_677_553_600,
        encoding: "UTF-8".into(),
        collector: "weir-test".into(),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0.0.0".into()),
        referer_uri: Some("http://127.0.0.1:8000/".into()),
        path: Some(path.into()),
        querystring: qs.map(Into::into),
        body: body.map(Into::into),
        headers: vec![],
        content_type: body.map(|_| "application/json; charset=UTF-8".into()),
        hostname: Some("127.0.0.1".into()),
        network_user_id: Some("d8aae409-b64d-40c0-99d7-5324fcb27735".into()),
    }
}

fn lines(p: &CollectorPayload<'_>) -> Result<Vec<String>, ConvertError> {
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    convert(
        p,
        &Options::default(),
        1_795_677_554_000,
        &mut out,
        &mut ends,
    )?;
    let mut start = 0;
    Ok(ends
        .iter()
        .map(|&e| {
            let s = String::from_utf8(out[start..e].to_vec()).unwrap();
            start = e;
            s
        })
        .collect())
}

fn get<'l>(line: &'l str, name: &str) -> &'l str {
    line.split('\t').nth(field_index(name).unwrap()).unwrap()
}

fn as_json(line: &str) -> Value {
    validate(line.as_bytes()).expect("131 fields, UTF-8");
    let mut out = Vec::new();
    to_json(line.as_bytes(), &mut out, &mut Scratch::default()).expect("to_json accepts it");
    serde_json::from_slice(&out).unwrap()
}

fn error(p: &CollectorPayload<'_>) -> ConvertError {
    lines(p).expect_err("should be refused")
}

fn body(events: Value) -> String {
    json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": events
    })
    .to_string()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

const PLAY: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0","data":{"schema":"iglu:com.snowplowanalytics.snowplow.media/play_event/jsonschema/1-0-0","data":{}}}"#;
const CONTEXTS_DOC: &str = r#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0","data":[{"schema":"iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-0-0","data":{"currentTime":12.5,"paused":false,"label":"Tab\there"}},{"schema":"iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0","data":{"id":"f5fbcd30-9c3f-42a3-b40b-3085d3cba058"}}]}"#;

#[test]
fn field_indexes_match_the_field_table() {
    for (name, _, idx) in PARAMS {
        let _ = name;
        assert!(idx < FIELD_COUNT);
    }
    let by_name = [
        ("platform", PLATFORM),
        ("etl_tstamp", ETL_TSTAMP),
        ("collector_tstamp", COLLECTOR_TSTAMP),
        ("dvce_created_tstamp", DVCE_CREATED_TSTAMP),
        ("event", EVENT),
        ("event_id", EVENT_ID),
        ("v_collector", V_COLLECTOR),
        ("v_etl", V_ETL),
        ("user_ipaddress", USER_IPADDRESS),
        ("network_userid", NETWORK_USERID),
        ("page_url", PAGE_URL),
        ("page_referrer", PAGE_REFERRER),
        ("page_urlscheme", PAGE_URLSCHEME),
        ("refr_urlscheme", REFR_URLSCHEME),
        ("contexts", CONTEXTS),
        ("unstruct_event", UNSTRUCT_EVENT),
        ("useragent", USERAGENT),
        ("dvce_sent_tstamp", DVCE_SENT_TSTAMP),
        ("refr_domain_userid", REFR_DOMAIN_USERID),
        ("refr_device_tstamp", REFR_DEVICE_TSTAMP),
        ("derived_tstamp", DERIVED_TSTAMP),
        ("event_vendor", EVENT_VENDOR),
        ("event_name", EVENT_NAME),
        ("event_format", EVENT_FORMAT),
        ("event_version", EVENT_VERSION),
        ("true_tstamp", TRUE_TSTAMP),
    ];
    for (name, idx) in by_name {
        assert_eq!(field_index(name), Some(idx), "{name}");
    }
    // Each parameter's target, as in Enrich's Transform.scala.
    let targets = [
        ("aid", "app_id"),
        ("tid", "txn_id"),
        ("uid", "user_id"),
        ("duid", "domain_userid"),
        ("fp", "user_fingerprint"),
        ("vid", "domain_sessionidx"),
        ("sid", "domain_sessionid"),
        ("tna", "name_tracker"),
        ("tv", "v_tracker"),
        ("lang", "br_lang"),
        ("f_pdf", "br_features_pdf"),
        ("f_ag", "br_features_silverlight"),
        ("cookie", "br_cookies"),
        ("res", "dvce_screenwidth"),
        ("cd", "br_colordepth"),
        ("tz", "os_timezone"),
        ("page", "page_title"),
        ("cs", "doc_charset"),
        ("ds", "doc_width"),
        ("vp", "br_viewwidth"),
        ("se_ca", "se_category"),
        ("se_va", "se_value"),
        ("tr_id", "tr_orderid"),
        ("tr_co", "tr_country"),
        ("ti_id", "ti_orderid"),
        ("ti_qu", "ti_quantity"),
        ("pp_mix", "pp_xoffset_min"),
        ("pp_may", "pp_yoffset_max"),
        ("tr_cu", "tr_currency"),
        ("ti_cu", "ti_currency"),
    ];
    for (param, field) in targets {
        let (_, _, idx) = PARAMS[param_slot(param).unwrap()];
        assert_eq!(FIELDS[idx].name, field, "{param}");
    }
    assert_eq!(
        FIELDS[field_index("dvce_screenwidth").unwrap() + 1].name,
        "dvce_screenheight"
    );
    assert_eq!(
        FIELDS[field_index("doc_width").unwrap() + 1].name,
        "doc_height"
    );
    assert_eq!(
        FIELDS[field_index("br_viewwidth").unwrap() + 1].name,
        "br_viewheight"
    );
    assert_eq!(FIELDS[PAGE_URLSCHEME + 5].name, "page_urlfragment");
    assert_eq!(FIELDS[REFR_URLSCHEME + 5].name, "refr_urlfragment");
    for (i, p) in PARAMS.iter().enumerate() {
        assert_eq!(param_slot(p.0), Some(i), "{} listed twice", p.0);
    }
}

#[test]
fn timestamps_format_like_enrich() {
    let f = |ms| {
        let mut s = String::new();
        assert!(format_tstamp(ms, &mut s));
        s
    };
    assert_eq!(f(1_795_677_553_380), "2026-11-26 07:19:13.380");
    assert_eq!(f(0), "1970-01-01 00:00:00.000");
    assert_eq!(f(-1), "1969-12-31 23:59:59.999");
    assert_eq!(f(MAX_MS), "9999-12-31 23:59:59.999");
    assert_eq!(f(MIN_MS), "0000-01-01 00:00:00.000");
    assert!(!format_tstamp(MAX_MS + 1, &mut String::new()));
}

#[test]
fn a_posted_media_event_becomes_an_enriched_line() {
    let events = json!([{
        "e": "ue", "eid": "3838E41E-1B2D-49ED-BC52-0DF828832235", "tv": "js-4.10.2", "tna": "sp",
        "aid": "media-fixtures", "p": "web", "cookie": "1", "cs": "UTF-8", "lang": "en-US",
        "res": "800x600", "cd": "24", "tz": "UTC", "dtm": "1795677553458", "stm": "1795677553510",
        "vp": "780x437", "ds": "780x437", "vid": "1",
        "sid": "b31de12b-38d3-4d7e-8ec1-9e7ac2ef02a1",
        "duid": "c577e3ce-0d07-4f74-9815-756ae93f6b44", "uid": "user-1@example.com",
        "url": "https://example.com/watch?v=1&_sp=abc.1795677550000#t=3",
        "refr": "http://127.0.0.1:8000/",
        "ue_pr": PLAY, "co": CONTEXTS_DOC
    }]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert_eq!(out.len(), 1);
    let l = &out[0];
    for (name, value) in [
        ("app_id", "media-fixtures"),
        ("platform", "web"),
        ("etl_tstamp", "2026-11-26 07:19:14.000"),
        ("collector_tstamp", "2026-11-26 07:19:13.600"),
        ("dvce_created_tstamp", "2026-11-26 07:19:13.458"),
        ("dvce_sent_tstamp", "2026-11-26 07:19:13.510"),
        // collector - (sent - created) = 13.600 - 0.052
        ("derived_tstamp", "2026-11-26 07:19:13.548"),
        ("event", "unstruct"),
        ("event_id", "3838e41e-1b2d-49ed-bc52-0df828832235"),
        ("name_tracker", "sp"),
        ("v_tracker", "js-4.10.2"),
        ("v_collector", "weir-test"),
        ("v_etl", v_etl()),
        ("user_id", "user-1@example.com"),
        ("user_ipaddress", "203.0.113.7"),
        ("domain_userid", "c577e3ce-0d07-4f74-9815-756ae93f6b44"),
        ("domain_sessionidx", "1"),
        ("network_userid", "d8aae409-b64d-40c0-99d7-5324fcb27735"),
        (
            "page_url",
            "https://example.com/watch?v=1&_sp=abc.1795677550000#t=3",
        ),
        ("page_urlscheme", "https"),
        ("page_urlhost", "example.com"),
        ("page_urlport", "443"),
        ("page_urlpath", "/watch"),
        ("page_urlquery", "v=1&_sp=abc.1795677550000"),
        ("page_urlfragment", "t=3"),
        ("page_referrer", "http://127.0.0.1:8000/"),
        ("refr_urlhost", "127.0.0.1"),
        ("refr_urlport", "8000"),
        ("refr_urlpath", "/"),
        ("refr_domain_userid", "abc"),
        ("refr_device_tstamp", "2026-11-26 07:19:10.000"),
        (
            "useragent",
            "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/156.0.0.0",
        ),
        ("br_lang", "en-US"),
        ("br_cookies", "1"),
        ("br_colordepth", "24"),
        ("br_viewwidth", "780"),
        ("br_viewheight", "437"),
        ("dvce_screenwidth", "800"),
        ("dvce_screenheight", "600"),
        ("doc_width", "780"),
        ("os_timezone", "UTC"),
        ("doc_charset", "UTF-8"),
        ("domain_sessionid", "b31de12b-38d3-4d7e-8ec1-9e7ac2ef02a1"),
        ("event_vendor", "com.snowplowanalytics.snowplow.media"),
        ("event_name", "play_event"),
        ("event_format", "jsonschema"),
        ("event_version", "1-0-0"),
        ("unstruct_event", PLAY),
    ] {
        assert_eq!(get(l, name), value, "{name}");
    }
    // The contexts keep their content; JSON cannot hold a raw tab, so the field is TSV-safe.
    let co: Value = serde_json::from_str(get(l, "contexts")).unwrap();
    assert_eq!(co, serde_json::from_str::<Value>(CONTEXTS_DOC).unwrap());
    let j = as_json(l);
    assert_eq!(
        j["contexts_com_snowplowanalytics_snowplow_media_player_2"][0]["label"],
        "Tab\there"
    );
    assert_eq!(
        j["unstruct_event_com_snowplowanalytics_snowplow_media_play_event_1"],
        json!({})
    );
    assert_eq!(j["page_urlport"], 443);
    assert_eq!(j["br_cookies"], true);
}

#[test]
fn get_with_base64_parameters_and_no_padding() {
    let qs = format!(
        "e=ue&p=web&tv=py-1.1.0&eid=3d534308-1220-41a6-8351-bd42f3a98908&dtm=1795677553380&ue_px={}&cx={}",
        b64(PLAY),
        b64(CONTEXTS_DOC)
    );
    let out = lines(&payload("/i", Some(&qs), None)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(get(&out[0], "event_name"), "play_event");
    assert_eq!(get(&out[0], "unstruct_event"), PLAY);
    // No url parameter: the page URL is the request's Referer, as Enrich does.
    assert_eq!(get(&out[0], "page_url"), "http://127.0.0.1:8000/");
    assert_eq!(get(&out[0], "page_urlport"), "8000");
    // Standard-alphabet base64 with padding is read too.
    let std_b64 = base64::engine::general_purpose::STANDARD.encode(PLAY);
    let qs = format!("e=ue&ue_px={}", std_b64.replace('+', "%2B"));
    assert_eq!(
        get(
            &lines(&payload("/i", Some(&qs), None)).unwrap()[0],
            "unstruct_event"
        ),
        PLAY
    );
}

#[test]
fn query_string_parameters_override_posted_ones_in_every_event() {
    let events = json!([{"e": "pv", "aid": "body"}, {"e": "pp", "aid": "body", "pp_miy": "12.0"}]);
    let out = lines(&payload(
        TP2,
        Some("aid=qs&tna=from-qs"),
        Some(&body(events)),
    ))
    .unwrap();
    assert_eq!(out.len(), 2);
    for l in &out {
        assert_eq!(get(l, "app_id"), "qs");
        assert_eq!(get(l, "name_tracker"), "from-qs");
        as_json(l);
    }
    assert_eq!(get(&out[0], "event_name"), "page_view");
    assert_eq!(get(&out[1], "event_name"), "page_ping");
    assert_eq!(get(&out[1], "pp_yoffset_min"), "12");
    // Every event gets its own generated id when the tracker sends none.
    assert_ne!(get(&out[0], "event_id"), get(&out[1], "event_id"));
    assert_eq!(get(&out[0], "event_id").len(), 36);
}

#[test]
fn struct_and_transaction_events_get_their_schemas() {
    let events = json!([
        {"e": "se", "se_ca": "video", "se_ac": "play", "se_va": "1e2"},
        {"e": "tr", "tr_id": "o1", "tr_tt": "10.50", "tr_cu": "EUR"},
        {"e": "ti", "ti_id": "o1", "ti_sk": "s", "ti_pr": "2", "ti_qu": "3"}
    ]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert_eq!(get(&out[0], "event_vendor"), "com.google.analytics");
    assert_eq!(get(&out[0], "event_name"), "event");
    assert_eq!(get(&out[0], "se_value"), "100");
    assert_eq!(get(&out[1], "event_name"), "transaction");
    assert_eq!(get(&out[1], "tr_total"), "10.50");
    assert_eq!(get(&out[2], "event_name"), "transaction_item");
    assert_eq!(get(&out[2], "ti_quantity"), "3");
    for l in &out {
        as_json(l);
    }
}

#[test]
fn strings_are_made_tsv_safe() {
    let events = json!([{"e": "pv", "page": "a\tb\r\nc", "uid": "x\ny"}]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert_eq!(get(&out[0], "page_title"), "a    bc");
    assert_eq!(get(&out[0], "user_id"), "xy");
    as_json(&out[0]);
    // Pretty-printed contexts lose their whitespace (and so their newlines).
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(CONTEXTS_DOC).unwrap())
            .unwrap();
    let events = json!([{"e": "pv", "co": pretty}]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert!(!get(&out[0], "contexts").contains('\n'));
    as_json(&out[0]);
}

#[test]
fn ip_parameters_and_anonymization() {
    let events = json!([{"e": "pv", "ip": "198.51.100.23, 10.0.0.1"}]);
    let out = lines(&payload(TP2, None, Some(&body(events.clone())))).unwrap();
    assert_eq!(get(&out[0], "user_ipaddress"), "198.51.100.23");
    let b = body(events);
    let p = payload(TP2, None, Some(&b));
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    let o = Options {
        anon_ipv4_octets: 2,
        anon_ipv6_segments: 3,
        max_events: 10,
        ..Options::default()
    };
    convert(&p, &o, 0, &mut out, &mut ends).unwrap();
    assert_eq!(
        get(std::str::from_utf8(&out).unwrap(), "user_ipaddress"),
        "198.51.x.x"
    );
    assert_eq!(
        anonymize_ip("2001:db8::8a2e:370:7334", &o),
        "2001:db8:0:0:0:x:x:x"
    );
    assert_eq!(anonymize_ip("unknown", &o), "unknown");
}

#[test]
fn true_tstamp_wins_the_derived_timestamp() {
    let events = json!([{"e": "pv", "dtm": "1795677553000", "stm": "1795677553100", "ttm": "1795677552000"}]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert_eq!(get(&out[0], "derived_tstamp"), "2026-11-26 07:19:12.000");
    assert_eq!(get(&out[0], "true_tstamp"), "2026-11-26 07:19:12.000");
    // A device clock that sent before it created: the collector time stands.
    let events = json!([{"e": "pv", "dtm": "1795677553100", "stm": "1795677553000"}]);
    let out = lines(&payload(TP2, None, Some(&body(events)))).unwrap();
    assert_eq!(get(&out[0], "derived_tstamp"), "2026-11-26 07:19:13.600");
}

#[test]
fn malformed_payloads_are_refused_with_the_parameter_at_fault() {
    let refused = |events: Value| error(&payload(TP2, None, Some(&body(events))));
    let e = refused(json!([{"aid": "x"}]));
    assert_eq!(e.field, "e");
    let e = refused(json!([{"e": "pv"}, {"e": "zz"}]));
    assert_eq!(
        (e.field, e.message.starts_with("event 2 of 2")),
        ("e", true)
    );
    assert_eq!(
        refused(json!([{"e": "ue", "ue_px": "!!not base64!!"}])).field,
        "ue_px"
    );
    assert_eq!(
        refused(json!([{"e": "ue", "ue_pr": "{not json"}])).field,
        "ue_pr"
    );
    assert_eq!(refused(json!([{"e": "ue"}])).field, "ue_px");
    let wrong = PLAY.replace("unstruct_event/jsonschema", "something_else/jsonschema");
    assert!(refused(json!([{"e": "ue", "ue_pr": wrong}]))
        .message
        .contains("expected schema"));
    let not_iglu = PLAY.replace(
        "iglu:com.snowplowanalytics.snowplow.media/play_event",
        "play",
    );
    assert!(refused(json!([{"e": "ue", "ue_pr": not_iglu}]))
        .message
        .contains("not an Iglu URI"));
    let ctx = CONTEXTS_DOC.replace("/contexts/", "/other/");
    assert_eq!(refused(json!([{"e": "pv", "co": ctx}])).field, "co");
    assert_eq!(
        refused(json!([{"e": "pv", "eid": "not-a-uuid"}])).field,
        "eid"
    );
    assert_eq!(
        refused(json!([{"e": "pv", "dtm": "yesterday"}])).field,
        "dtm"
    );
    assert_eq!(
        refused(json!([{"e": "pv", "res": "800by600"}])).field,
        "res"
    );
    assert_eq!(refused(json!([{"e": "pv", "p": "toaster"}])).field, "p");
    assert_eq!(
        refused(json!([{"e": "pv", "cookie": "yes"}])).field,
        "cookie"
    );
    assert_eq!(refused(json!([{"e": "pv", "vid": 3}])).field, "vid");
    assert_eq!(refused(json!([])).message, "empty list of events");
    // Not payload_data, not JSON, no body at all.
    let other = json!({"schema": "iglu:com.acme/x/jsonschema/1-0-0", "data": [{"e": "pv"}]});
    let e = error(&payload(TP2, None, Some(&other.to_string())));
    assert!(e.message.contains("payload_data"), "{e}");
    assert_eq!(
        error(&payload(TP2, None, Some("{\"schema\":"))).field,
        "body"
    );
    assert_eq!(error(&payload(TP2, None, Some("[1,2]"))).field, "body");
    assert_eq!(error(&payload(TP2, None, None)).field, "querystring");
    assert_eq!(error(&payload("/i", Some(""), None)).field, "querystring");
    assert_eq!(
        error(&payload("/com.acme/v1", Some("e=pv"), None)).field,
        "path"
    );
}

#[test]
fn too_many_events_are_refused_as_such() {
    let events: Vec<Value> = (0..11).map(|_| json!({"e": "pv"})).collect();
    let b = body(Value::Array(events));
    let p = payload(TP2, None, Some(&b));
    let (mut out, mut ends) = (b"keep".to_vec(), vec![4]);
    let o = Options {
        max_events: 10,
        ..Options::default()
    };
    let e = convert(&p, &o, 0, &mut out, &mut ends).unwrap_err();
    assert_eq!(e.limit, Some(Limit::Events));
    assert!(e.message.starts_with("11 events"), "{e}");
    assert_eq!((out, ends), (b"keep".to_vec(), vec![4]), "left as it was");
}

#[test]
fn url_parts() {
    let p = UrlParts::parse("http://user:pw@[::1]:8080/a/b?x=1").unwrap();
    assert_eq!(
        (p.host, p.port, p.path, p.query),
        ("[::1]", Some("8080"), "/a/b", Some("x=1"))
    );
    let p = UrlParts::parse("https://example.com").unwrap();
    assert_eq!((p.host, p.port, p.path), ("example.com", None, ""));
    assert!(UrlParts::parse("not a url").is_none());
    assert!(UrlParts::parse("http://host:notaport/").is_none());
    assert!(UrlParts::parse("android-app://com.example/x").is_some());
}

#[test]
fn a_long_query_string_is_not_merged_into_posted_events() {
    let events: Vec<Value> = (0..3).map(|_| json!({"e": "pv"})).collect();
    let b = body(Value::Array(events));
    let url = format!("url=http%3A%2F%2Fx.test%2F{}", "a".repeat(200));
    let p = payload(TP2, Some(&url), Some(&b));
    let (mut out, mut ends) = (b"keep".to_vec(), vec![4]);
    let o = Options {
        max_query_bytes: 100,
        ..Options::default()
    };
    let e = convert(&p, &o, 0, &mut out, &mut ends).unwrap_err();
    assert_eq!((e.field, e.limit), ("querystring", Some(Limit::Query)));
    assert!(e.message.contains("at most 100 bytes"), "{e}");
    assert_eq!((out, ends), (b"keep".to_vec(), vec![4]), "left as it was");
    // Within the limit, the query string is merged into every event; a GET's query string is
    // one event and is not limited by it.
    let o = Options {
        max_query_bytes: url.len(),
        ..Options::default()
    };
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    convert(&p, &o, 0, &mut out, &mut ends).unwrap();
    assert_eq!(ends.len(), 3);
    let get_pv = format!("e=pv&{url}");
    let p = payload(TP2, Some(&get_pv), None);
    let o = Options {
        max_query_bytes: 1,
        ..Options::default()
    };
    convert(&p, &o, 0, &mut Vec::new(), &mut Vec::new()).unwrap();
}

#[test]
fn the_output_budget_is_asked_before_each_line_and_can_refuse() {
    let events: Vec<Value> = (0..5).map(|_| json!({"e": "pv"})).collect();
    let b = body(Value::Array(events));
    let p = payload(TP2, None, Some(&b));
    let (mut out, mut ends) = (b"keep".to_vec(), vec![4]);
    let mut asked = Vec::new();
    let e = convert_within(
        &p,
        &Options::default(),
        0,
        &mut out,
        &mut ends,
        &mut |bytes| {
            asked.push(bytes);
            if asked.len() > 3 {
                Err(format!("{bytes} bytes is too much"))
            } else {
                Ok(())
            }
        },
    )
    .unwrap_err();
    assert_eq!((e.field, e.limit), ("body", Some(Limit::Output)));
    assert!(e.message.starts_with("event 4 of 5: "), "{e}");
    assert_eq!((out, ends), (b"keep".to_vec(), vec![4]), "left as it was");
    // Each ask covers the lines so far plus the next one (never less than what is written).
    assert_eq!(asked.len(), 4);
    assert!(asked.windows(2).all(|w| w[1] > w[0]), "{asked:?}");
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    let mut last = 0;
    convert_within(
        &p,
        &Options::default(),
        0,
        &mut out,
        &mut ends,
        &mut |bytes| {
            last = bytes;
            Ok(())
        },
    )
    .unwrap();
    assert!(
        last >= out.len() && last <= out.len() + 8,
        "{last} vs {}",
        out.len()
    );
}

#[test]
fn escaped_slashes_are_written_as_enrich_writes_them() {
    // As Snowplow's mobile trackers serialize: every `/` escaped, schema URIs included.
    assert_eq!(
        minify(r#"{"schema":"iglu:com.acme\/x\/jsonschema\/1-0-0","data":{"a":"b\\\/c \"\/\""}}"#),
        r#"{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"a":"b\\/c \"/\""}}"#
    );
    // Whitespace between tokens goes too; in strings it stays.
    assert_eq!(
        minify("{ \"a\" : [1, \"x \\/ y\"] }"),
        r#"{"a":[1,"x / y"]}"#
    );
    assert_eq!(minify(r#"{"a":"\\"}"#), r#"{"a":"\\"}"#);
    // An escaped-slash context from a mobile tracker: the entity's schema reads plainly.
    let cx = r#"{"schema":"iglu:com.snowplowanalytics.snowplow\/contexts\/jsonschema\/1-0-1","data":[{"schema":"iglu:com.snowplowanalytics.snowplow\/mobile_context\/jsonschema\/1-0-3","data":{"osType":"ios","osVersion":"17.5.1","deviceManufacturer":"Apple Inc.","deviceModel":"iPhone15,2"}}]}"#;
    let out = contexts("cx", cx).unwrap();
    assert!(
        out.contains(
            r#""schema":"iglu:com.snowplowanalytics.snowplow/mobile_context/jsonschema/1-0-3""#
        ),
        "{out}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::from_str::<Value>(cx).unwrap()
    );
}

/// The Android and iOS trackers' media sessions (runtime/tests/fixtures/collector/
/// mobile-trackers.md says where each detail comes from): every event becomes an enriched event
/// with the mobile fields, whichever base64 alphabet the tracker used.
#[test]
fn mobile_tracker_requests_become_enriched_events() {
    let fixtures: Value = serde_json::from_str(include_str!(
        "../../../../tests/fixtures/collector/mobile-trackers.json"
    ))
    .unwrap();
    for (platform, tv, n) in [("android", "andr-6.3.2", 18), ("ios", "ios-6.2.5", 21)] {
        let r = &fixtures[platform];
        let mut p = payload(TP2, None, r["raw_body"].as_str());
        p.user_agent = r["headers"]["User-Agent"].as_str().map(Into::into);
        let out = lines(&p).unwrap_or_else(|e| panic!("{platform}: {e}"));
        assert_eq!(out.len(), n, "{platform}");
        for l in &out {
            assert_eq!(get(l, "platform"), "mob");
            assert_eq!(get(l, "v_tracker"), tv);
            assert!(
                !l.contains("\\/"),
                "{platform}: slashes written plainly: {l}"
            );
            let j = as_json(l);
            let names: Vec<&str> = j["contexts_com_snowplowanalytics_snowplow_client_session_1"]
                .as_array()
                .map(|a| a.iter().map(|_| "client_session").collect())
                .unwrap_or_default();
            assert_eq!(names, ["client_session"], "{platform}: {j}");
            assert!(j["contexts_com_snowplowanalytics_snowplow_mobile_context_1"].is_array());
            assert!(j["contexts_com_snowplowanalytics_mobile_application_1"].is_array());
        }
        let last = as_json(out.last().unwrap());
        assert_eq!(last["event_name"], "end_event", "{platform}");
        assert_eq!(
            last["contexts_com_snowplowanalytics_snowplow_media_player_2"][0]["ended"],
            true
        );
        match platform {
            "android" => {
                assert_eq!(get(&out[0], "user_id"), "user-7@example.com");
                assert_eq!(get(&out[0], "br_lang"), "English");
                assert_eq!(get(&out[0], "dvce_screenwidth"), "1080");
            }
            _ => {
                assert_eq!(get(&out[0], "user_id"), "");
                assert_eq!(get(&out[0], "br_lang"), "en-US");
                assert_eq!(get(&out[0], "br_viewwidth"), "1179");
            }
        }
        assert_eq!(
            get(&out[0], "domain_userid"),
            "",
            "mobile trackers send no duid"
        );
    }
}
