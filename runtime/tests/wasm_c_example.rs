//! The non-Rust example: media-filter written in C against the same WIT world, compiled from
//! source by this test (wit-bindgen C generator + clang + wasi-libc) and run by the same host,
//! with the same checks as the Rust build.

mod wasm_support;

use bytes::Bytes;
use wasm_support::*;
use weir_core::record::Record;
use weir_core::wasm::{Guest, Limits};
use weir_transform_sdk::{Config, Filter};

fn kept(g: &mut Guest, lines: &[Bytes]) -> (Vec<usize>, Vec<(usize, String)>) {
    let out = g.run(lines.iter().map(|l| Record::new(l.clone())).collect(), 0);
    (
        out.sources,
        out.failed.into_iter().map(|(i, _, m)| (i, m)).collect(),
    )
}

#[test]
fn c_media_filter_keeps_what_the_rust_one_keeps() {
    let c = c_media_filter();
    let lines = fixture_lines();
    for cfg in [vec![], vec![("event_name", "^(play|pause)_event$")]] {
        let mut native = media_filter::MediaFilter::new(&Config::from_pairs(&cfg)).unwrap();
        let expected: Vec<usize> = (0..lines.len())
            .filter(|&i| {
                native
                    .keep(&weir_transform_sdk::Record::new(&lines[i]))
                    .unwrap()
            })
            .collect();
        let mut g = guest(&c, &cfg, Limits::default());
        assert_eq!(
            g.fields(),
            Some(&[125usize, 126][..]),
            "asks for the two fields only"
        );
        let (got, failed) = kept(&mut g, &lines);
        assert_eq!(got, expected, "config {cfg:?}");
        assert!(failed.is_empty());
    }
}

#[test]
fn c_media_filter_reports_config_errors_and_per_record_errors() {
    let c = c_media_filter();
    let e = Guest::new(&c, options(&[("event_name", "(")], Limits::default()))
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("invalid regex: unbalanced parenthesis"),
        "{e}"
    );
    let e = Guest::new(&c, options(&[("vendr", "x")], Limits::default()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("unknown setting `vendr`"), "{e}");

    let mut fields = vec![String::new(); 131];
    fields[125] = "com.snowplowanalytics.snowplow.media".into();
    fields[126] = "x".repeat(300);
    let long = Bytes::from(fields.join("\t"));
    let mut lines = fixture_lines();
    lines.insert(3, long);
    let mut g = guest(&c, &[], Limits::default());
    let (got, failed) = kept(&mut g, &lines);
    assert_eq!(got.len(), 47);
    assert_eq!(
        failed,
        vec![(3, "event_name longer than 255 bytes".to_string())]
    );
    assert_eq!(g.stats.traps, 0);
}
