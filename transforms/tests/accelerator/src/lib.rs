//! The accelerator's Snowbridge script (runtime/tests/fixtures/snowbridge/accelerator.js) in
//! Rust: each enriched event becomes the 8-field JSON the live viewer backend consumed, keys in
//! the order Go's `json.Marshal` writes them. `cargo bench --bench js` runs both on the same
//! input and compares their output and speed.

#![deny(unsafe_op_in_unsafe_fn)]

use std::io::Write;

use weir_transform_sdk::snowplow::{entities, SelfDescribing};
use weir_transform_sdk::{fields, Config, Error, Map, Record};

pub struct Accelerator;

const SESSION: &str = "iglu:com.snowplowanalytics.snowplow.media/session/jsonschema/1-";
const PLAYER: &str = "iglu:com.snowplowanalytics.snowplow/media_player/jsonschema/2-";
const AD: &str = "iglu:com.snowplowanalytics.snowplow.media/ad/jsonschema/1-";

impl Map for Accelerator {
    fn new(config: &Config) -> Result<Self, Error> {
        config.check_keys(&[])?;
        Ok(Accelerator)
    }

    fn map(&mut self, r: &Record<'_>, out: &mut Vec<u8>) -> Result<(), Error> {
        let f = |i| r.field(i).unwrap_or_default();
        let (mut session, mut player, mut ad) = (None, None, None);
        for e in entities(f(fields::CONTEXTS)) {
            let slot = if e.is(SESSION) {
                &mut session
            } else if e.is(PLAYER) {
                &mut player
            } else if e.is(AD) {
                &mut ad
            } else {
                continue;
            };
            slot.get_or_insert(e);
        }
        let viewer = match f(fields::USER_ID) {
            b"" => f(fields::DOMAIN_USERID),
            u => u,
        };
        out.extend_from_slice(b"{\"adId\":");
        out.extend_from_slice(member(&ad, "adId", b"null"));
        out.extend_from_slice(b",\"adsClicked\":");
        out.extend_from_slice(member(&session, "adsClicked", b"0"));
        out.extend_from_slice(b",\"adsSkipped\":");
        out.extend_from_slice(member(&session, "adsSkipped", b"0"));
        out.extend_from_slice(b",\"collector_tstamp\":");
        timestamp(f(fields::COLLECTOR_TSTAMP), out);
        for (k, v) in [
            ("event_id", f(fields::EVENT_ID)),
            ("event_name", f(fields::EVENT_NAME)),
        ] {
            let _ = write!(out, ",\"{k}\":");
            string(v, out);
        }
        out.extend_from_slice(b",\"video_ts\":");
        out.extend_from_slice(member(&player, "currentTime", b"null"));
        out.extend_from_slice(b",\"viewer_id\":");
        string(viewer, out);
        out.push(b'}');
        Ok(())
    }
}

/// Member `k` of an entity's data as JSON text, or `default` when absent or null.
fn member<'a>(e: &Option<SelfDescribing<'a>>, k: &str, default: &'a [u8]) -> &'a [u8] {
    e.as_ref()
        .and_then(|e| e.data.get(k))
        .map(|v| v.raw())
        .filter(|v| *v != b"null")
        .unwrap_or(default)
}

/// `2024-11-16 13:33:23.270` as the analytics SDK writes it: `"2024-11-16T13:33:23.27Z"`.
fn timestamp(v: &[u8], out: &mut Vec<u8>) {
    let v = match v.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let frac = &v[dot + 1..];
            let keep = frac.iter().rposition(|&b| b != b'0').map_or(0, |i| i + 1);
            if keep == 0 {
                &v[..dot]
            } else {
                &v[..dot + 1 + keep]
            }
        }
        None => v,
    };
    out.push(b'"');
    out.extend(v.iter().map(|&b| if b == b' ' { b'T' } else { b }));
    out.extend_from_slice(b"Z\"");
}

/// A JSON string.
fn string(v: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in v {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b if b < 0x20 => {
                let _ = write!(out, "\\u{b:04x}");
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
}

weir_transform_sdk::export_map!(Accelerator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_strings_as_the_sdk_writes_them() {
        let mut out = Vec::new();
        timestamp(b"2024-11-16 13:33:23.270", &mut out);
        timestamp(b"2024-11-16 13:33:23.000", &mut out);
        string(b"a\"b\\\x01", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""2024-11-16T13:33:23.27Z""2024-11-16T13:33:23Z""a\"b\\\u0001""#
        );
    }
}
