//! `spCollectorPayloadToEnriched` on the real binary, on CollectorPayload records encoded by a
//! real Thrift library (thriftpy2 from PyPI, with the CollectorPayload IDL): base64 lines and
//! length-prefixed binary files, the sidecar topology of a Snowplow collector's raw stream.

#[path = "common/collector.rs"]
mod collector_common;
mod common;

use base64::Engine as _;
use collector_common::*;
use common::*;
use serde_json::Value;

struct Encoded {
    dir: tempfile::TempDir,
    expected: Vec<Value>,
}

fn encode() -> Encoded {
    let dir = tempfile::tempdir().unwrap();
    let idl = fixture("collector/collector-payload.thrift");
    let js = fixture("collector/js-tracker-post.jsonl");
    let n: usize = python(
        "collector/thrift_payloads.py",
        &[
            idl.to_str().unwrap(),
            js.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ],
        "",
    )
    .trim()
    .parse()
    .unwrap();
    let expected: Vec<Value> = lines(&dir.path().join("expected.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(expected.len(), n);
    Encoded { dir, expected }
}

fn run_sidecar(
    input: &std::path::Path,
    framing: &str,
    dir: &std::path::Path,
) -> (Vec<String>, Vec<Value>) {
    let cfg = write(
        dir,
        &format!("sidecar-{framing}.toml"),
        &format!(
            r#"
[source]
type = "file"
paths = ["{}"]
framing = "{framing}"

[[transforms]]
type = "spCollectorPayloadToEnriched"
anon_ip_octets = 1

[sink]
type = "file"
path = "{out}"

[failure]
type = "file"
path = "{bad}"
"#,
            input.display(),
            out = dir.join(format!("out-{framing}.tsv")).display(),
            bad = dir.join(format!("bad-{framing}.ndjson")).display(),
        ),
    );
    let out = run(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = lines(&dir.join(format!("out-{framing}.tsv")));
    let bad = lines(&dir.join(format!("bad-{framing}.ndjson")))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (events, bad)
}

fn check(events: &[String], bad: &[Value], expected: &[Value]) {
    let want_eids: Vec<&str> = expected
        .iter()
        .filter(|e| e["ok"] == true)
        .flat_map(|e| {
            e["eids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
        })
        .collect();
    let got_eids: Vec<&str> = events.iter().map(|l| field(l, "event_id")).collect();
    assert_eq!(
        got_eids, want_eids,
        "every event of every good payload, in order"
    );
    let docs = to_json_all(events);
    for l in events {
        assert_eq!(
            field(l, "v_collector"),
            "ssc-3.2.0-kinesis",
            "the raw payload's collector"
        );
        assert!(field(l, "v_etl").starts_with("weir-"));
        assert!(
            field(l, "user_ipaddress").ends_with(".x"),
            "anonymised: {}",
            field(l, "user_ipaddress")
        );
    }
    // The JS tracker's POSTs: the collector's time, the browser's UA, the network user id.
    let first = &events[0];
    assert_eq!(docs[0]["collector_tstamp"], tstamp(1795677553002));
    assert_eq!(field(first, "user_ipaddress"), "203.0.113.x");
    assert_eq!(
        field(first, "network_userid"),
        "8b5f1c7e-5d0a-4d1e-9a55-2f8f7a1c0b3d"
    );
    assert!(field(first, "useragent").contains("HeadlessChrome/156"));
    assert_eq!(field(first, "event_name"), "page_view");
    // The GET /i payload with a base64 event.
    let pixel = docs
        .iter()
        .find(|j| j["event_id"] == "7d2a1f3e-9c4b-4e8a-b1d2-3f4a5b6c7d8e")
        .unwrap();
    assert_eq!(pixel["event_name"], "ad_click_event");
    assert_eq!(
        pixel["unstruct_event_com_snowplowanalytics_snowplow_media_ad_click_event_1"]
            ["percentProgress"],
        25
    );
    // Refused payloads: one collector payload format violation each, carrying the payload.
    let refused: Vec<&Value> = expected.iter().filter(|e| e["ok"] == false).collect();
    assert_eq!(bad.len(), refused.len());
    for (row, want) in bad.iter().zip(refused) {
        assert_eq!(
            row["schema"],
            "iglu:com.snowplowanalytics.snowplow.badrows/collector_payload_format_violation/jsonschema/1-0-0"
        );
        assert_eq!(row["data"]["failure"]["loader"], "thrift");
        assert_eq!(
            row["data"]["failure"]["message"]["payloadField"],
            want["field"]
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(row["data"]["payload"].as_str().unwrap())
            .unwrap();
        let p = weir_core::snowplow::collector_payload::decode(&bytes)
            .expect("the original payload, intact");
        assert!(p.ip_address.starts_with("198.51.100."));
    }
}

#[test]
fn base64_lines_of_thrift_payloads_become_the_tracked_events() {
    let enc = encode();
    let (events, bad) = run_sidecar(
        &enc.dir.path().join("payloads.b64"),
        "lines",
        enc.dir.path(),
    );
    check(&events, &bad, &enc.expected);
}

#[test]
fn length_prefixed_thrift_payloads_become_the_tracked_events() {
    let enc = encode();
    let (events, bad) = run_sidecar(
        &enc.dir.path().join("payloads.framed"),
        "length_prefixed",
        enc.dir.path(),
    );
    check(&events, &bad, &enc.expected);
}

#[test]
fn damaged_records_become_bad_rows_and_the_rest_goes_on() {
    let enc = encode();
    let good = lines(&enc.dir.path().join("payloads.b64"));
    // A record cut in half, one that is not base64 nor Thrift, one that is not a payload.
    let cut = &good[0][..good[0].len() / 2];
    let text = format!(
        "{}\n{cut}\nnot a payload at all\n{}\n{}\n",
        good[1],
        base64::engine::general_purpose::STANDARD.encode(b"\x0b\x00\x01\x00\x00\x00\x02hi\x00"),
        good[2]
    );
    let input = write(enc.dir.path(), "damaged.b64", &text);
    let (events, bad) = run_sidecar(&input, "lines", enc.dir.path());
    let want: usize = [1, 2]
        .iter()
        .map(|&i| enc.expected[i]["eids"].as_array().unwrap().len())
        .sum();
    assert_eq!(events.len(), want, "the intact payloads' events");
    assert_eq!(bad.len(), 3);
    for row in &bad {
        let s = row["schema"].as_str().unwrap();
        assert!(s.contains("collector_payload_format_violation"), "{row}");
    }
}
