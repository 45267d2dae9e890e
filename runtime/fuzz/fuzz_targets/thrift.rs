//! The Thrift `CollectorPayload` decoder (`weir_snowplow::collector_payload::decode`), on raw
//! bytes as a collector's raw stream could hold them. Checks: no panic; what decodes
//! re-encodes to bytes that decode to the same payload; a decoded payload converts (or is
//! refused) without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_snowplow::collector_payload::decode;
use weir_snowplow::tracker::{self, Options};

fuzz_target!(|data: &[u8]| {
    let Ok(p) = decode(data) else {
        return;
    };
    let again = p.to_bytes();
    match decode(&again) {
        Ok(q) => assert_eq!(p, q, "decode(encode(p)) differs from p"),
        Err(e) => panic!("a decoded payload re-encodes to bytes that do not decode: {e}"),
    }
    let (mut out, mut ends) = (Vec::new(), Vec::new());
    let _ = tracker::convert(&p, &Options::default(), 0, &mut out, &mut ends);
});
