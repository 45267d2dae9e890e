//! `jq`: replaces each record by the first output of a jq program, as Snowbridge 5.x's `jq`
//! transformation does (`pkg/transform/jq`): nulls and empty objects/arrays are removed from
//! the output, which is written as Go's `json.Marshal` writes it. See [`super::jq_engine`] for
//! the helpers (`epoch`, `epochMillis`, `hash`) and how `timeout_ms` is kept.

use serde::Deserialize;

use super::jq_engine::{self, Engine, Mode, Outcome};
use super::{Transform, TransformConfig, TransformType};
use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Failed, Record};
use crate::snowplow;

/// ```toml
/// [[transforms]]
/// type = "jq"
/// jq_command = "{my_app_id: .app_id}"
/// timeout_ms = 100        # default 100, as in Snowbridge
/// snowplow_mode = true    # input is enriched TSV, seen as the analytics-SDK JSON
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub jq_command: String,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub snowplow_mode: bool,
}

/// Snowbridge's default `timeout_ms`.
pub fn default_timeout() -> u64 {
    100
}

impl TransformType for Config {
    const TYPE: &'static str = "jq";
}

impl TransformConfig for Config {
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError> {
        jq_engine::check(&self.jq_command, origin)?;
        Ok(Box::new(Jq {
            runner: Runner::new(
                &self.jq_command,
                Mode::Map,
                self.timeout_ms,
                self.snowplow_mode,
            ),
            label: label.to_string(),
            scratch: Vec::new(),
        }))
    }
}

/// Turns a record into the jq input (the enriched TSV into the analytics-SDK JSON in
/// `snowplow_mode`) and evaluates it; shared with `jqFilter`.
pub(crate) struct Runner {
    engine: Engine,
    snowplow_mode: bool,
    json: snowplow::Scratch,
}

impl Runner {
    pub(crate) fn new(code: &str, mode: Mode, timeout_ms: u64, snowplow_mode: bool) -> Self {
        Runner {
            engine: Engine::new(code, mode, timeout_ms),
            snowplow_mode,
            json: snowplow::Scratch::default(),
        }
    }

    pub(crate) fn run(&mut self, r: &Record) -> Result<Outcome, String> {
        let input = if self.snowplow_mode {
            let mut out = Vec::with_capacity(r.value.len() * 2);
            snowplow::to_json(&r.value, &mut out, &mut self.json)
                .map_err(|e| format!("failed to prepare expected JQ input: {e}"))?;
            out.into()
        } else {
            r.value.clone()
        };
        self.engine.eval(input)
    }
}

struct Jq {
    runner: Runner,
    label: String,
    scratch: Vec<Record>,
}

impl Transform for Jq {
    fn process(&mut self, batch: &mut Batch) {
        std::mem::swap(&mut batch.records, &mut self.scratch);
        batch.records.clear();
        for mut r in self.scratch.drain(..) {
            match self.runner.run(&r) {
                Ok(Outcome::Data(d)) => {
                    r.value = d.into();
                    batch.records.push(r);
                }
                Ok(Outcome::Keep(_)) => unreachable!("jq runs in Map mode"),
                Err(reason) => batch.failed.push(Failed::invalid(r, &self.label, reason)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Ack;

    /// Snowbridge's `SnowplowTsv1` and `SnowplowJSON1` (pkg/transform/transform_test_variables.go).
    pub(crate) const TSV1: &str = include_str!("testdata/snowplow_tsv1.tsv");
    pub(crate) const JSON1: &str = include_str!("testdata/snowplow_json1.json");

    /// Runs `jq_command` on one record keyed "some-key": the output value, or the failure reason.
    fn jq(cmd: &str, sp: bool, timeout_ms: u64, input: &str) -> Result<String, String> {
        let origin = Origin::new("t.toml", "transforms[0]");
        let cfg = Config {
            jq_command: cmd.into(),
            timeout_ms,
            snowplow_mode: sp,
        };
        let mut t = cfg.build("t", &origin).map_err(|e| e.message)?;
        let mut r = Record::new(input.to_string());
        r.key = Some("some-key".into());
        let mut batch = Batch::new(vec![r], Ack::none());
        t.process(&mut batch);
        assert_eq!(batch.records.len() + batch.failed.len(), 1);
        if let Some(f) = batch.failed.pop() {
            assert_eq!(
                f.record.value,
                input.as_bytes(),
                "a failed record is unchanged"
            );
            return Err(f.reason);
        }
        let r = batch.records.pop().unwrap();
        assert_eq!(r.key.as_deref(), Some(&b"some-key"[..]));
        Ok(String::from_utf8(r.value.to_vec()).unwrap())
    }

    fn ok(cmd: &str, sp: bool, input: &str) -> String {
        jq(cmd, sp, 100, input).unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    fn fails(cmd: &str, sp: bool, timeout_ms: u64, input: &str) -> String {
        jq(cmd, sp, timeout_ms, input).expect_err(cmd)
    }

    /// jq_test.go TestJQRunFunction_SpMode_true, every scenario (happy_path_with_Intermediate_
    /// state is happy_path here: weir has no intermediate state).
    #[test]
    fn snowbridge_jq_sp_mode_true() {
        let cases = [
            ("test_timestamp_to_epochMillis", "{ foo: .collector_tstamp | epochMillis }", r#"{"foo":1557499235972}"#),
            ("test_timestamp_to_epochMillis_context", "{ sessionId: .contexts_com_snowplowanalytics_snowplow_client_session_1[0].firstEventTimestamp | epochMillis }", r#"{"sessionId":1730129267100}"#),
            ("test_timestamp_to_epoch", "{ foo: .collector_tstamp | epoch }", r#"{"foo":1557499235}"#),
            ("test_timestamp_to_epoch_chained", "{ foo: .collector_tstamp | epoch | todateiso8601 }", r#"{"foo":"2019-05-10T14:40:35Z"}"#),
            ("test_hash_context-sha1-wo-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("sha1"; "") }"#, r#"{"agentName":"3767ff5f27dff1fc1a8a8bbf3aa53a7170adbcbea0ab43b3"}"#),
            ("test_hash_context-sha1-with-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("sha1"; "09a2d6b3ecd943aa8512df1f") }"#, r#"{"agentName":"5841e55de6c4486fa092f044a5189570dec421cb06652829"}"#),
            ("test_hash_context-sha256-wo-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("sha256"; "") }"#, r#"{"agentName":"262ca08d9db38199ac487454bd4accb795a33297516b3cec"}"#),
            ("test_hash_context-sha256-with-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("sha256"; "09a2d6b3ecd943aa8512df1f") }"#, r#"{"agentName":"23e37c9c9aaed4e592b306b291deb43fd197551048704d57"}"#),
            ("test_hash_context-md5-wo-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("md5"; "") }"#, r#"{"agentName":"30368c83ff2751652f501b62d6b965794d3512177f301db1"}"#),
            ("test_hash_context-md5-with-salt", r#"{ agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor | hash("md5"; "09a2d6b3ecd943aa8512df1f") }"#, r#"{"agentName":"8ac2e6ae6f31687f8f52ec3ae553d1dc78a591d31bfae508"}"#),
            ("happy_path", "{foo: .app_id}", r#"{"foo":"test-data1"}"#),
            ("selecting_from_context", "{foo: .contexts_nl_basjes_yauaa_context_1[0].operatingSystemName}", r#"{"foo":"Unknown"}"#),
        ];
        for (name, cmd, want) in cases {
            assert_eq!(ok(cmd, true, TSV1), want, "{name}");
        }
    }

    /// jq_test.go TestJQRunFunction_SpMode_false, every scenario.
    #[test]
    fn snowbridge_jq_sp_mode_false() {
        assert_eq!(
            ok("{foo: .app_id}", false, JSON1),
            r#"{"foo":"test-data1"}"#,
            "happy_path"
        );
        assert_eq!(
            ok("\n{\n    bar: .foo | ..\n}", false, r#"{"foo":[1,2,3]}"#),
            r#"{"bar":[1,2,3]}"#,
            "with_multiple_returns: only the first output counts"
        );
        for f in ["epochMillis", "epoch"] {
            let cmd = format!(
                "\n      {{ \n        explicit_null: .explicit | {f},\n        no_such_field: \
                 .nonexistent | {f},\n        non_null: .non_null\n      }}"
            );
            assert_eq!(
                ok(&cmd, false, r#"{"explicit": null, "non_null": "hello"}"#),
                r#"{"non_null":"hello"}"#,
                "{f}_on_nullable"
            );
        }
        assert_eq!(
            ok(
                r#"{ sessionId: .time | epochMillis("2006-01-02 15:04:05.999")}"#,
                false,
                r#"{"time": "2024-10-28 15:27:47.100"}"#
            ),
            r#"{"sessionId":1730129267100}"#,
            "epochMillis_custom_timelayout"
        );
        let nested = r#"
        {
          "f1": "value1",
          "f2": 2,
          "f3": {
            "f5": null,
            "f6": "value6",
            "f7": {
              "f8": 100,
              "f9": null
             }
           },
          "f4": null
        }"#;
        assert_eq!(
            ok(".", false, nested),
            r#"{"f1":"value1","f2":2,"f3":{"f6":"value6","f7":{"f8":100}}}"#,
            "remove_nulls_struct"
        );
        let arrays = r#"{"items":[{"f1":"value1","f2":null,"f3":[{"f4":1,"f5":null},{"f4":null,"f5":20}]}]}"#;
        assert_eq!(
            ok(".", false, arrays),
            r#"{"items":[{"f1":"value1","f3":[{"f4":1},{"f5":20}]}]}"#,
            "remove_nulls_arrays"
        );
        assert_eq!(
            ok(
                ".items",
                false,
                r#" {"items": [{}, [], null, {"nested": []}]} "#
            ),
            "[]",
            "remove_nulls_arrays_empty_output"
        );
    }

    /// jq_test.go TestJQRunFunction_errors, every scenario. Messages are Snowbridge's where
    /// weir makes them; where Go's JSON or TSV parser speaks, weir's says the same thing its
    /// own way (noted per case).
    #[test]
    fn snowbridge_jq_errors() {
        // not_a_map_a: Go's exact message.
        let e = fails(".", false, 100, "[]");
        assert!(
            e.contains("cannot unmarshal array into Go value of type map[string]interface {}"),
            "{e}"
        );
        // not_a_map_b: Go says "invalid character 'a' looking for beginning of value".
        let e = fails(".", false, 100, "a");
        assert!(
            e.starts_with("failed to prepare expected JQ input: expected value"),
            "{e}"
        );
        // not_snowplow_event_with_spMode_true: Go says "cannot parse tsv event".
        let e = fails(".", true, 100, "a");
        assert!(
            e.starts_with("failed to prepare expected JQ input: "),
            "{e}"
        );
        // deadline_exceeded: timeout_ms = 0.
        let e = fails("{foo: .app_id}", true, 0, TSV1);
        assert!(e.contains("context deadline"), "{e}");
        // no_output
        assert_eq!(
            fails(".foo[].value", false, 100, r#"{"foo": []}"#),
            "jq query got no output"
        );
        // epochMillis_on_non_time_type, epoch_on_non_time_type
        for f in ["epochMillis", "epoch"] {
            let e = fails(&format!(".str | {f}"), false, 100, r#"{"str": "value"}"#);
            assert!(
                e.contains(
                    "could not parse input - 'value' using provided time layout - \
                     '2006-01-02T15:04:05.999Z'"
                ),
                "{e}"
            );
        }
        // epochMillis_with_not_matching_timelayout
        let e = fails(
            r#"{ sessionId: .time | epochMillis("2006-01-02 15:04:05") }"#,
            false,
            100,
            r#"{"time": "2024-10-28T15:27:47.100"}"#,
        );
        assert!(
            e.contains(
                "could not parse input - '2024-10-28T15:27:47.100' using provided time layout - \
                 '2006-01-02 15:04:05'"
            ),
            "{e}"
        );
    }

    /// jq_test.go TestJQMapperConfigFunction: a program that does not compile is a config error
    /// at `jq_command`.
    #[test]
    fn snowbridge_jq_config_errors() {
        let build = |cmd: &str| {
            Config {
                jq_command: cmd.into(),
                timeout_ms: 100,
                snowplow_mode: false,
            }
            .build("t", &Origin::new("t.toml", "transforms[0]"))
            .err()
            .expect(cmd)
        };
        // compile_error
        let e = build("\n{\n    foo: something_undefined\n}\n");
        assert_eq!(e.file, "t.toml");
        assert_eq!(e.key, "transforms[0].jq_command");
        assert!(
            e.message.contains("error compiling jq query"),
            "{}",
            e.message
        );
        assert!(e.message.contains("something_undefined/0"), "{}", e.message);
        // parsing_error
        let e = build("^");
        assert!(
            e.message
                .contains(r#"error parsing jq command: unexpected token "^""#),
            "{}",
            e.message
        );
    }

    /// Snowbridge's assets/test/transformconfig/TestEnginesAndTransformations/configs/
    /// transform-jq-hash-function.hcl (note gojq's trailing comma in the object).
    #[test]
    fn snowbridge_transformconfig_jq_hash_function() {
        let cmd = "{\n    agentName: .contexts_nl_basjes_yauaa_context_1[0].agentNameVersionMajor \
                   | hash(\"sha1\"; \"\"),\n}\n";
        assert_eq!(
            ok(cmd, true, TSV1),
            r#"{"agentName":"3767ff5f27dff1fc1a8a8bbf3aa53a7170adbcbea0ab43b3"}"#
        );
    }

    /// Snowbridge's docs example jq-minimal-example.hcl (`[.]`, not in snowplow mode) on
    /// Snowbridge's SnowplowJSON1: the same object in an array, keys sorted as Go writes them
    /// (SnowplowJSON1 itself was edited by hand: one key is out of Go's order).
    /// (The full example runs in runtime/tests/snowbridge_hcl.rs.)
    #[test]
    fn docs_jq_minimal_example() {
        let got = ok("[.]", false, JSON1);
        let v: serde_json::Value = serde_json::from_str(&got).unwrap();
        let want: serde_json::Value = serde_json::from_str(JSON1).unwrap();
        assert_eq!(v, serde_json::json!([want]));
        let keys: Vec<&str> = v[0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let at = |k: &str| got.find(&format!("\"{k}\":")).unwrap();
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{got}");
    }

    /// The README's example.
    #[test]
    fn readme_example() {
        let cmd = r#"{ id: .event_id, ts: .collector_tstamp | epochMillis, user: .user_id | hash("sha256"; "salt") }"#;
        let v: serde_json::Value = serde_json::from_str(&ok(cmd, true, TSV1)).unwrap();
        assert_eq!(v["ts"], 1557499235972i64);
        assert_eq!(v["id"], "e9234345-f042-46ad-b1aa-424464066a33");
        assert_eq!(v["user"].as_str().map(str::len), Some(48));
    }

    /// The helpers' argument checks (jq_common.go: parseTimeLayout, resolveHash).
    #[test]
    fn helper_argument_errors() {
        let e = fails(r#".a | hash("sha1")"#, false, 100, r#"{"a":"x"}"#);
        assert!(
            e.contains("[1] parameters given, hash function expecting 2"),
            "{e}"
        );
        let e = fails(r#".a | hash("sha512"; "")"#, false, 100, r#"{"a":"x"}"#);
        assert!(e.contains("unsupported hash function: [sha512]"), "{e}");
        let e = fails(r#".a | hash("sha1"; "")"#, false, 100, r#"{"a":1}"#);
        assert!(e.contains("hash function input must be a string"), "{e}");
        let e = fails(".a | epoch(1)", false, 100, r#"{"a":"x"}"#);
        assert!(
            e.contains("function argument is invalid '1'; expected string"),
            "{e}"
        );
        let e = fails(".a | epochMillis", false, 100, r#"{"a":1}"#);
        assert!(
            e.contains("not a valid time input to 'epochMillis' function - '1'"),
            "{e}"
        );
        assert_eq!(
            ok(r#"{h: .a | hash("md5"; "")}"#, false, r#"{"a":null}"#),
            "{}"
        );
    }

    /// Output as Go's json.Marshal writes gojq's values: keys sorted, HTML characters escaped,
    /// floats in Go's notation; a value Go cannot encode fails the record.
    #[test]
    fn output_is_written_as_go_writes_it() {
        assert_eq!(
            ok("{b: 1, a: \"<&>\"}", false, "{}"),
            r#"{"a":"\u003c\u0026\u003e","b":1}"#
        );
        assert_eq!(
            ok("[1.0, 0.5, 1e21, 1e-7, 100000]", false, "{}"),
            "[1,0.5,1e+21,1e-7,100000]"
        );
        assert_eq!(ok(".x", false, r#"{"x": 2.50}"#), "2.5");
        assert_eq!(ok("\"a\\nb\"", false, "{}"), r#""a\nb""#);
        let e = fails("nan", false, 100, "{}");
        assert!(e.starts_with("error encoding jq query output data"), "{e}");
    }

    /// A program that never yields fails its record with Snowbridge's deadline message, and the
    /// transform goes on with the next record (on a fresh evaluating thread).
    #[test]
    fn runaway_programs_time_out_and_the_next_record_is_served() {
        let origin = Origin::new("t.toml", "transforms[0]");
        for cmd in ["def f: f; f", "[repeat(1)]", "last(range(1e18))"] {
            let mut t = Config {
                jq_command: format!("if .stop then {cmd} else {{ok: .n}} end"),
                timeout_ms: 50,
                snowplow_mode: false,
            }
            .build("t", &origin)
            .unwrap();
            let mut batch = Batch::new(
                vec![
                    Record::new(r#"{"n":1}"#),
                    Record::new(r#"{"stop":true}"#),
                    Record::new(r#"{"n":2}"#),
                ],
                Ack::none(),
            );
            t.process(&mut batch);
            let out: Vec<_> = batch.records.iter().map(|r| r.value.clone()).collect();
            assert_eq!(out, [&br#"{"ok":1}"#[..], &br#"{"ok":2}"#[..]], "{cmd}");
            assert_eq!(batch.failed.len(), 1, "{cmd}");
            assert!(batch.failed[0].reason.contains("context deadline exceeded"));
        }
        // repeat(.) yields at once: only the first output is taken, as in Snowbridge.
        assert_eq!(ok("first(repeat(.))", false, r#"{"a":1}"#), r#"{"a":1}"#);
        assert_eq!(ok("repeat(.)", false, r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
