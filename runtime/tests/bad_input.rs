//! Bad input mixed into good events: each bad record becomes exactly one bad row with a useful
//! message, every good event still comes out, and the run succeeds.

mod common;

use std::io::Write;

use common::*;

fn good_lines() -> Vec<Vec<u8>> {
    let text = std::fs::read(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect()
}

fn set_field(line: &[u8], idx: usize, value: &[u8]) -> Vec<u8> {
    let mut fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
    fields[idx] = value;
    fields.join(&b'\t')
}

#[test]
fn each_bad_record_is_one_bad_row_and_good_events_all_come_out() {
    let good = good_lines();
    assert_eq!(good.len(), 73);
    let base = &good[10];

    // (bad line, what its bad row must say)
    let short: Vec<u8> = {
        let fields: Vec<&[u8]> = base.split(|b| *b == b'\t').collect();
        fields[..97].join(&b'\t')
    };
    let bad_json = set_field(base, 52, br#"{"schema":"iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1","data":[{"schema":"iglu:com.acme/x/jsonschema/1-0-0","data":{"a":"#);
    let mut bad_utf8 = set_field(base, 30, b"title \xff\xfe here");
    bad_utf8.extend_from_slice(b"");
    let bad_int = set_field(base, 7, b"twelve");
    let huge = vec![b'x'; 10 << 20];
    let bad: Vec<(Vec<u8>, &str)> = vec![
        (short, "expected 131 tab-separated fields, found 97"),
        (bad_json, "field contexts (52): invalid JSON"),
        (bad_utf8, "invalid UTF-8"),
        (bad_int, "field txn_id (7)"),
        (huge, "exceeds the limit"),
    ];

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.tsv");
    let mut f = std::fs::File::create(&input).unwrap();
    let mut bad_iter = bad.iter();
    for (i, g) in good.iter().enumerate() {
        f.write_all(g).unwrap();
        f.write_all(b"\n").unwrap();
        if i % 12 == 5 {
            if let Some((b, _)) = bad_iter.next() {
                f.write_all(b).unwrap();
                f.write_all(b"\n").unwrap();
            }
        }
    }
    for (b, _) in bad_iter {
        f.write_all(b).unwrap();
        f.write_all(b"\n").unwrap();
    }
    drop(f);

    let out = dir.path().join("good.ndjson");
    let failures = dir.path().join("bad.ndjson");
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[[transforms]]\ntype = \"spEnrichedToJson\"\n\
             [sink]\ntype = \"file\"\npath = \"{}\"\n[failure]\ntype = \"file\"\npath = \"{}\"\n\
             [limits]\nmax_record_bytes = \"1 MiB\"\nbad_row_max_payload_bytes = \"16 KiB\"\n[batch]\nmax_records = 7\n",
            file_source(&input),
            out.display(),
            failures.display()
        ),
    );
    let o = run(&cfg);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");

    // Every good event came out, as JSON, once.
    let good_ids: Vec<String> = good
        .iter()
        .map(|l| String::from_utf8(l.split(|b| *b == b'\t').nth(6).unwrap().to_vec()).unwrap())
        .collect();
    let out_text = std::fs::read_to_string(&out).unwrap();
    let out_ids: Vec<String> = out_text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(out_ids, good_ids, "all good events, in order, once");

    // Exactly one bad row per bad record, each with its reason.
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&failures)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), bad.len(), "{rows:#?}");
    for (_, expect) in &bad {
        let hits: Vec<_> = rows
            .iter()
            .filter(|r| r.to_string().contains(expect))
            .collect();
        assert_eq!(hits.len(), 1, "one bad row saying {expect:?} in {rows:#?}");
    }
    for r in &rows {
        let schema = r["schema"].as_str().unwrap();
        assert!(
            schema.starts_with("iglu:com.snowplowanalytics.snowplow.badrows/"),
            "{schema}"
        );
        assert_eq!(r["data"]["processor"]["artifact"], "weir");
        let payload = r["data"]["payload"].as_str().unwrap();
        assert!(
            !payload.is_empty() && payload.len() <= 16 * 1024,
            "payload truncated to the limit"
        );
    }
    let size = rows
        .iter()
        .find(|r| r["schema"].as_str().unwrap().contains("size_violation"))
        .unwrap();
    assert_eq!(size["data"]["failure"]["actualSizeBytes"], 10 << 20);
    assert_eq!(summary(&stderr, "failed"), Some(bad.len() as u64));
    assert_eq!(summary(&stderr, "acknowledged"), summary(&stderr, "read"));
}
