//! Vectors ported from Snowbridge 5.x: `pkg/transform/engine/engine_javascript_test.go` (named
//! by their `Scenario`), and the scripts of its docs
//! (`assets/docs/configuration/transformations/custom-scripts/**`).

use weir_transform_sdk::testing::{self, Input, Outcome};

use super::*;

fn run(script: &str, extra: &[(&str, &str)], data: &str) -> Outcome {
    let mut config = vec![("script", script)];
    config.extend_from_slice(extra);
    let mut t = testing::flat_map::<Js>(&config).unwrap();
    t.process_inputs(&[Input {
        value: data.as_bytes(),
        key: Some(b"some-test-key"),
    }])
}

/// The new payload (the framing taken off) and key of the only output.
fn one(o: &Outcome) -> (String, Option<String>, Option<String>) {
    assert!(o.errors.is_empty(), "{:?}", o.errors);
    assert_eq!(o.outputs.len(), 1, "{o:?}");
    let v = &o.outputs[0].value;
    let n = u32::from_le_bytes(v[..4].try_into().unwrap()) as usize;
    let headers = (n > 0).then(|| String::from_utf8(v[4..4 + n].to_vec()).unwrap());
    (
        String::from_utf8(v[4 + n..].to_vec()).unwrap(),
        o.outputs[0]
            .key
            .as_ref()
            .map(|k| String::from_utf8(k.clone()).unwrap()),
        headers,
    )
}

fn error(o: &Outcome) -> String {
    assert!(o.outputs.is_empty(), "{o:?}");
    assert_eq!(o.errors.len(), 1, "{o:?}");
    o.errors[0].1.clone()
}

#[test]
fn identity_and_concat_hello() {
    let o = run("function main(x) { return x; }", &[], "asdf");
    assert_eq!(one(&o), ("asdf".into(), Some("some-test-key".into()), None));
    let o = run(
        "function main(x) { let newVal = \"Hello:\" + x.Data; x.Data = newVal; return x; }",
        &[],
        "asdf",
    );
    assert_eq!(one(&o).0, "Hello:asdf");
}

#[test]
fn filter_in_and_out() {
    let o = run(
        "function main(x) { x.FilterOut = false\n return x; }",
        &[],
        "asdf",
    );
    assert_eq!(one(&o).0, "asdf");
    let src = r#"function main(x) {
       if (Object.prototype.toString.call(x.Data) === '[object String]') {
           return { FilterOut: true, };
       }
       return { FilterOut: false, Data: x.Data };
    }"#;
    let o = run(src, &[], "asdf");
    assert!(o.outputs.is_empty() && o.errors.is_empty());
    assert_eq!(o.filtered, vec![0]);
}

#[test]
fn json_field_rename_by_regex_and_by_descriptor() {
    let input = r#"{"app_id":"x","n":1}"#;
    let src = r#"function main(x) {
       var jsonObj = JSON.parse(x.Data);
       if (jsonObj.hasOwnProperty("app_id")) { x.Data = x.Data.replace(/app_id/, 'app_id_CHANGED'); }
       return x;
    }"#;
    assert_eq!(
        one(&run(src, &[], input)).0,
        r#"{"app_id_CHANGED":"x","n":1}"#
    );
    let src = r#"function main(x) {
       var jsonObj = JSON.parse(x.Data);
       var descriptor = Object.getOwnPropertyDescriptor(jsonObj, "app_id");
       Object.defineProperty(jsonObj, "app_id_CHANGED", descriptor);
       delete jsonObj["app_id"];
       return { Data: JSON.stringify(jsonObj) };
    }"#;
    assert_eq!(
        one(&run(src, &[], input)).0,
        r#"{"n":1,"app_id_CHANGED":"x"}"#
    );
}

#[test]
fn wrong_returns_fail_the_record() {
    let cases = [
        (
            "function main(x) { return 0; }",
            "invalid return type from JavaScript transformation",
        ),
        (
            "function main(x) {}",
            "invalid return type from JavaScript transformation; got null or undefined",
        ),
        (
            "function main(x) { return null; }",
            "invalid return type from JavaScript transformation; got null or undefined",
        ),
        (
            "function main(x) { return [x]; }",
            "invalid return type from JavaScript transformation",
        ),
        (
            "function main(x) { return x.toExponential(2); }",
            "error running JavaScript function [main]: TypeError",
        ),
        (
            "function main(x) { throw(\"Failed\"); }",
            "error running JavaScript function [main]: Failed",
        ),
        (
            "function main(x) { return {Data: 5}; }",
            "expected string or object",
        ),
        (
            "function main(x) { return {Data: [1]}; }",
            "expected string or object",
        ),
        (
            "function main(x) { return {Data: 'a', FilterOut: 1}; }",
            "protocol violation",
        ),
        (
            "function main(x) { return {Data: 'a', PartitionKey: 7}; }",
            "protocol violation",
        ),
        (
            "function main(x) { return {Data: 'a', HTTPHeaders: {a: 1}}; }",
            "protocol violation",
        ),
    ];
    for (src, want) in cases {
        let e = error(&run(src, &[], "asdf"));
        assert!(e.contains(want), "{src}: {e}");
    }
}

#[test]
fn script_errors_are_config_errors() {
    let e = testing::flat_map::<Js>(&[("script", "function main(x) { return x")])
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("could not load JavaScript code"),
        "{e}"
    );
    let e = testing::flat_map::<Js>(&[("script", "function notMain(x) { return x }")])
        .err()
        .unwrap();
    assert!(
        e.to_string()
            .contains("could not assert as function: \"main\""),
        "{e}"
    );
    let e = testing::flat_map::<Js>(&[("script", "x"), ("mode", "tsv")])
        .err()
        .unwrap();
    assert!(e.to_string().contains("mode"), "{e}");
}

/// `sha1 hashing, with salt` and its siblings.
#[test]
fn hash_vectors() {
    let src = "function main(x) { let newVal = hash(x.Data, ALGO); x.Data = newVal; return x; }";
    let salt = "09a2d6b3ecd943aa8512df1f";
    for (algo, salted, want) in [
        (
            "sha1",
            false,
            "3767ff5f27dff1fc1a8a8bbf3aa53a7170adbcbea0ab43b3",
        ),
        (
            "sha1",
            true,
            "5841e55de6c4486fa092f044a5189570dec421cb06652829",
        ),
        (
            "sha256",
            false,
            "262ca08d9db38199ac487454bd4accb795a33297516b3cec",
        ),
        (
            "sha256",
            true,
            "23e37c9c9aaed4e592b306b291deb43fd197551048704d57",
        ),
        (
            "md5",
            false,
            "30368c83ff2751652f501b62d6b965794d3512177f301db1",
        ),
    ] {
        let s = src.replace("ALGO", &format!("{algo:?}"));
        let extra: &[(&str, &str)] = if salted {
            &[("hash_salt_secret", salt)]
        } else {
            &[]
        };
        assert_eq!(
            one(&run(&s, extra, "python-requests 2")).0,
            want,
            "{algo} {salted}"
        );
    }
    let s = src.replace("ALGO", "\"sha3\"");
    assert_eq!(one(&run(&s, &[], "x")).0, "");
}

/// `TestJSEngineRemoveNulls`: `remove_nulls_struct` and `remove_nulls_array`.
#[test]
fn remove_nulls_vectors() {
    let src = "function main(x) { return { Data: JSON.parse(x.Data) }; }";
    let rn = [("remove_nulls", "true")];
    let input = r#"{"f1":"value1","f2":2,"f3":{"f5":null,"f6":"value6","f7":{"f8":100,"f9":null}},"f4":null}"#;
    assert_eq!(
        one(&run(src, &rn, input)).0,
        r#"{"f1":"value1","f2":2,"f3":{"f6":"value6","f7":{"f8":100}}}"#
    );
    let input =
        r#"{"items":[{"f1":"value1","f2":null,"f3":[{"f4":1,"f5":null},{"f4":null,"f5":20}]}]}"#;
    assert_eq!(
        one(&run(src, &rn, input)).0,
        r#"{"items":[{"f1":"value1","f3":[{"f4":1},{"f5":20}]}]}"#
    );
    // Without the setting, nulls stay.
    assert_eq!(one(&run(src, &[], r#"{"a":null}"#)).0, r#"{"a":null}"#);
}

/// The docs' `js-non-snowplow-script-example.js`.
#[test]
fn docs_non_snowplow_example() {
    let src = r#"function main(input) {
    var jsonObj = JSON.parse(input.Data);
    if (jsonObj.batmobileCount < 1) {
        return { FilterOut: true }
    }
    jsonObj.name = "Bruce Wayne"
    return {
        Data: jsonObj,
        PartitionKey: jsonObj.id }
}"#;
    let o = run(src, &[], r#"{"id":"b1","batmobileCount":2}"#);
    assert_eq!(
        one(&o),
        (
            r#"{"batmobileCount":2,"id":"b1","name":"Bruce Wayne"}"#.into(),
            Some("b1".into()),
            None
        )
    );
    let o = run(src, &[], r#"{"id":"b1","batmobileCount":0}"#);
    assert_eq!(o.filtered, vec![0]);
}

/// `create-a-script-header-example.js`: headers ride in the output framing.
#[test]
fn docs_header_example() {
    let src = "function main(x) {\n var httpHeaders = { foo: 'bar' };\n x.HTTPHeaders = httpHeaders;\n return x;\n }";
    assert_eq!(
        one(&run(src, &[], "d")),
        (
            "d".into(),
            Some("some-test-key".into()),
            Some(r#"{"foo":"bar"}"#.into())
        )
    );
}

/// Mode `json` (json_mode, and snowplow_mode after weir made the analytics-SDK JSON); the
/// docs' `js-snowplow-script-example.js`.
#[test]
fn json_mode_and_docs_snowplow_example() {
    let src = r#"function main(input) {
        var spData = input.Data;
        if (spData["platform"] != "web") { return { FilterOut: true }; }
        if ("user_id" in spData) { spData["uid"] = spData["user_id"] } else { spData["uid"] = spData["domain_userid"] }
        return { Data: spData, PartitionKey: spData["app_id"] };
    }"#;
    let json = [("mode", "json")];
    let o = run(
        src,
        &json,
        r#"{"platform":"web","app_id":"shop","domain_userid":"d1"}"#,
    );
    assert_eq!(
        one(&o),
        (
            r#"{"app_id":"shop","domain_userid":"d1","platform":"web","uid":"d1"}"#.into(),
            Some("shop".into()),
            None
        )
    );
    assert_eq!(run(src, &json, r#"{"platform":"mob"}"#).filtered, vec![0]);
    let e = error(&run(src, &json, "not json"));
    assert!(e.starts_with("failed to transform input into JSON"), "{e}");
    let e = error(&run(src, &json, "[1]"));
    assert!(e.contains("cannot unmarshal array"), "{e}");
}

/// Modern syntax Snowbridge's engine accepts: destructuring, arrow functions, optional
/// chaining, nullish coalescing, template literals, spread.
#[test]
fn es2015_and_later() {
    let src = r#"const pick = ({ a, b: { c } = {} }) => ({ a, c });
    function main(input) {
        const d = input.Data;
        const { a, c } = pick(d);
        return { Data: { s: `${a}-${c ?? 'none'}`, deep: d.x?.y?.z ?? null, ...{ n: [1, 2].map(v => v * 2) } } };
    }"#;
    let json = [("mode", "json")];
    assert_eq!(
        one(&run(src, &json, r#"{"a":1,"b":{"c":2}}"#)).0,
        r#"{"deep":null,"n":[2,4],"s":"1-2"}"#
    );
    assert_eq!(
        one(&run(src, &json, r#"{"a":1,"x":{"y":{"z":3}}}"#)).0,
        r#"{"deep":3,"n":[2,4],"s":"1-none"}"#
    );
}

#[test]
fn all_contexts_and_all_unstruct() {
    let src = r#"function main(input) {
        const d = input.Data;
        return { Data: { c: allContexts(d, "com_acme_x"), u: allUnstruct(d, "com_acme_ev") ?? null } };
    }"#;
    let input = r#"{"contexts_com_acme_x_1":[{"v":1}],"contexts_com_acme_x_2":[{"v":2},{"v":3}],"contexts_com_acme_x_y_1":[9],"unstruct_event_com_acme_ev_1":{"k":"v"}}"#;
    assert_eq!(
        one(&run(src, &[("mode", "json")], input)).0,
        r#"{"c":[{"v":2},{"v":3},{"v":1}],"u":{"k":"v"}}"#
    );
}

/// Names are matched as Go's mapstructure matches them: exactly, else ignoring case.
#[test]
fn protocol_names_ignore_case() {
    let o = run(
        "function main(x) { return { data: 'lower', partitionkey: 'k' }; }",
        &[],
        "a",
    );
    assert_eq!(one(&o), ("lower".into(), Some("k".into()), None));
}

#[test]
fn a_partition_key_equal_to_the_old_one_is_not_rewritten() {
    let o = run(
        "function main(x) { return { Data: 'a', PartitionKey: 'some-test-key' }; }",
        &[],
        "a",
    );
    assert_eq!(one(&o).1.as_deref(), Some("some-test-key"));
    let o = run(
        "function main(x) { return { Data: 'a', PartitionKey: '' }; }",
        &[],
        "a",
    );
    assert_eq!(one(&o).1.as_deref(), Some("some-test-key"));
}

#[test]
fn a_record_that_throws_fails_alone() {
    let mut t = testing::flat_map::<Js>(&[(
        "script",
        "function main(x) { if (x.Data === 'bad') throw new Error('boom'); return x; }",
    )])
    .unwrap();
    let o = t.process(&[b"a", b"bad", b"c"]);
    assert_eq!(o.kept(), vec![0, 2]);
    assert_eq!(o.errors.len(), 1);
    assert_eq!(o.errors[0].0, 1);
    assert!(o.errors[0].1.contains("boom"), "{:?}", o.errors);
}

#[test]
fn date_and_math_random_work() {
    testing::set_now_ms(1_700_000_000_123);
    let o = run(
        "function main(x) { const r = Math.random(); return { Data: String(Date.now()) + (r >= 0 && r < 1) }; }",
        &[],
        "a",
    );
    assert_eq!(one(&o).0, "1700000000123true");
}

/// An object `Data` is written as Snowbridge 5.1.1 writes it (its binary printed this for this
/// script, keys aside: it writes them in Go's random map order): no HTML escaping, integral
/// numbers without a fraction, Go's exponent form, `\u00XX` for control characters.
#[test]
fn object_data_is_written_as_snowbridge_writes_it() {
    let src = r#"function main(input) {
        return { Data: { url: "http://a.b/?x=1&y=<2>", half: 10 / 4, whole: 10 / 2, big: 1e21,
                         tiny: 1e-7, small: 0.000001, sum: 0.1 + 0.2, neg: -3, sep: "\u2028", ctl: "\u0001\b\f\n" } };
    }"#;
    assert_eq!(
        one(&run(src, &[], "x")).0,
        "{\"big\":1e+21,\"ctl\":\"\\u0001\\u0008\\u000c\\n\",\"half\":2.5,\"neg\":-3,\"sep\":\"\u{2028}\",\"small\":0.000001,\"sum\":0.30000000000000004,\"tiny\":1e-07,\"url\":\"http://a.b/?x=1&y=<2>\",\"whole\":5}"
    );
}

/// `input.Data` in mode `json` is a lazy proxy: whatever a script does with it — read, test,
/// list, spread, copy, delete, overwrite, freeze, return it, keep it for the next record — gives
/// what the same script gives on the object parsed whole (`JSON.parse` of the string mode).
#[test]
fn lazy_data_behaves_as_the_whole_object() {
    let bodies = [
        "return { Data: d };",
        "return { Data: { keys: Object.keys(d).sort(), n: d.n, s: d.s, nested: d.o.a } };",
        "const { s, ...rest } = d; return { Data: { s, rest } };",
        "return { Data: { copy: { ...d }, has: 'n' in d, own: d.hasOwnProperty('o'), no: 'zz' in d } };",
        "delete d.s; d.extra = [1, 2]; return { Data: d };",
        "d.s = 'changed'; return { Data: { s: d.s, all: JSON.stringify(d).length, keys: Object.keys(d).length } };",
        "Object.freeze(d); return { Data: { frozen: Object.isFrozen(d), d } };",
        "const e = Object.entries(d).map(([k, v]) => k + '=' + JSON.stringify(v)).sort(); return { Data: { e } };",
        "for (const k in d) { d[k + '_'] = 1; } return { Data: d };",
        "return { Data: { arr: d.a.map(x => x * 2), last: d.a[d.a.length - 1], dup: d.dup, num: d['7'] } };",
        "globalThis.kept = globalThis.kept || d; return { Data: { mine: d.s, kept: globalThis.kept.s } };",
        "return { Data: JSON.parse(JSON.stringify(d)), PartitionKey: d.s };",
    ];
    let inputs = [
        r#"{"s":"first","n":3,"o":{"a":"x","b":[true,null]},"a":[1,2,3],"dup":1,"dup":2,"7":"seven","u":"caf\u00e9"}"#,
        r#" {"s":"second","n":-4,"o":{"a":{"deep":[{"k":"v"}]}},"a":[],"dup":"only","7":7} "#,
        r#"{"s":"third","o":{},"a":[10]}"#,
    ];
    for body in bodies {
        let lazy = format!("function main(input) {{ const d = input.Data; {body} }}");
        let whole = format!("function main(input) {{ const d = JSON.parse(input.Data); {body} }}");
        let mut l =
            testing::flat_map::<Js>(&[("script", lazy.as_str()), ("mode", "json")]).unwrap();
        let mut w = testing::flat_map::<Js>(&[("script", whole.as_str())]).unwrap();
        for input in inputs {
            let one_input = [Input {
                value: input.as_bytes(),
                key: None,
            }];
            let (got, want) = (l.process_inputs(&one_input), w.process_inputs(&one_input));
            assert_eq!(one(&got), one(&want), "{body} on {input}");
        }
    }
}
