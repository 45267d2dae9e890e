//! Enriched TSV → JSON (`weir_snowplow::validate`, `field`, `to_json`), on arbitrary lines.
//! Checks: no panic; `field(i)` equals the i-th tab-separated field of a valid line; what
//! `to_json` writes is valid JSON, and on error it leaves `out` as it was.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_snowplow::{field, to_json, validate, Scratch, FIELD_COUNT};

fuzz_target!(|line: &[u8]| {
    for i in 0..FIELD_COUNT {
        let _ = field(line, i);
    }
    if validate(line).is_err() {
        return;
    }
    for (i, f) in line.split(|&b| b == b'\t').enumerate() {
        assert_eq!(field(line, i), f, "field {i}");
    }
    let mut out = b"[".to_vec();
    let mut scratch = Scratch::default();
    match to_json(line, &mut out, &mut scratch) {
        Ok(()) => {
            if let Err(e) = serde_json::from_slice::<serde_json::Value>(&out[1..]) {
                panic!("to_json wrote invalid JSON: {e}");
            }
        }
        Err(_) => assert_eq!(out, b"["),
    }
});
