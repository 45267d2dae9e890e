//! The tracker protocol: a collector request (GET query string or POSTed `payload_data` body,
//! with base64 and JSON entities) → enriched TSV lines (`weir_snowplow::tracker::convert`).
//!
//! Input: byte 0 picks the path and options, then `querystring 0xFF body 0xFF ip 0xFF
//! user agent` (lossy UTF-8). Checks: no panic; on success every line is a valid enriched line
//! that converts to JSON, and `ends` delimit `out`; on error `out` is untouched.
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use weir_snowplow::collector_payload::CollectorPayload;
use weir_snowplow::tracker::{self, Options, TP1_PATHS, TP2_PATH};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.split(|&b| b == 0xFF).map(String::from_utf8_lossy);
    let mut next = || parts.next().unwrap_or(Cow::Borrowed(""));
    let (qs, body, ip, ua) = (next(), next(), next(), next());
    let path = match sel & 3 {
        0 | 1 => TP2_PATH,
        2 => TP1_PATHS[0],
        _ => TP1_PATHS[1],
    };
    let payload = CollectorPayload {
        schema: Cow::Borrowed(weir_snowplow::collector_payload::SCHEMA),
        ip_address: ip,
        timestamp: 1_700_000_000_000,
        encoding: Cow::Borrowed("UTF-8"),
        collector: Cow::Borrowed("fuzz"),
        user_agent: Some(ua),
        path: Some(Cow::Borrowed(path)),
        querystring: Some(qs),
        body: (sel & 3 == 1).then_some(body),
        ..Default::default()
    };
    let options = Options {
        anon_ipv4_octets: (sel >> 2) % 5,
        anon_ipv6_segments: (sel >> 4) % 9,
        max_events: 64,
        ..Options::default()
    };
    let mut out = b"previous".to_vec();
    let mut ends = vec![8];
    match tracker::convert(&payload, &options, 1_700_000_000_123, &mut out, &mut ends) {
        Ok(()) => {
            assert_eq!(*ends.last().unwrap(), out.len());
            let mut scratch = weir_snowplow::Scratch::default();
            let mut json = Vec::new();
            for w in ends.windows(2) {
                let line = &out[w[0]..w[1]];
                let line = line.strip_suffix(b"\n").unwrap_or(line);
                if let Err(e) = weir_snowplow::validate(line) {
                    panic!("convert wrote an invalid enriched line: {e}");
                }
                json.clear();
                if let Err(e) = weir_snowplow::to_json(line, &mut json, &mut scratch) {
                    panic!("convert wrote a line that does not convert to JSON: {e}");
                }
            }
        }
        Err(_) => assert!(out == b"previous" && ends == [8]),
    }
});
