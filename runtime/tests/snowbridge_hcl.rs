//! Snowbridge 5.x HCL configs in weir: `weir validate` on Snowbridge's own documentation
//! examples (read from a local copy of its repository when there is one), on the project's own
//! HCL fixtures (tests/fixtures/snowbridge/), `weir config convert` round trips, and one
//! end-to-end `weir run` of an HCL config against the same pipeline written in TOML.

mod common;
mod wasm_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use weir_core::pipeline::{PipelineConfig, TOP_LEVEL_KEYS};

/// Where a copy of Snowbridge's repository may be (not in CI).
const MIRROR: &str = "/work/.mirror/snowplow+snowbridge/repo";

/// The environment Snowbridge's docs tests (docs/*_test.go) set.
const DOCS_ENV: &[(&str, &str)] = &[
    ("MY_AUTH_PASSWORD", "test"),
    ("SASL_PASSWORD", "test"),
    ("HOSTNAME", "hostname"),
    ("CLIENT_ID", "client_id_test"),
    ("CLIENT_SECRET", "client_secret_test"),
    ("REFRESH_TOKEN", "refresh_token_test"),
    ("SHA1_SALT", "testsalt"),
    ("ACCEPT_LIMITED_USE_LICENSE", "true"),
    // Snowbridge's Event Hubs client needs it to start; weir checks that it is set.
    (
        "EVENTHUB_CONNECTION_STRING",
        "Endpoint=sb://testNamespace.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v",
    ),
    ("JS_SCRIPT_PATH", "create-a-script-filter-example.js"),
    (
        "JS_NON_SNOWPLOW_SCRIPT_PATH",
        "js-non-snowplow-script-example.js",
    ),
    ("JS_SNOWPLOW_SCRIPT_PATH", "js-snowplow-script-example.js"),
];

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// `weir validate` passes.
    Ok,
    /// Refused, at this HCL key path, with this message.
    Refused(&'static str, &'static str),
    /// A transformation that weir takes by Snowbridge's name once it has it: passes if weir's
    /// registry has it, else refused as not supported yet (issue #17).
    Transform(&'static str, &'static str),
}

const HTTP18: &str = "is not supported by weir yet (issue #18)";

/// Every docs example, by path under assets/docs/configuration/, and what weir does with it.
const DOCS: &[(&str, Expect)] = &[
    ("failure-parser-full-example.hcl", Expect::Ok),
    ("failure-parser-minimal-example.hcl", Expect::Ok),
    ("metrics/e2e-latency-example.hcl", Expect::Ok),
    ("monitoring/log-level-example.hcl", Expect::Ok),
    ("monitoring/metadata-full-example.hcl", Expect::Ok),
    ("monitoring/metadata-minimal-example.hcl", Expect::Ok),
    ("monitoring/sentry-example.hcl", Expect::Ok),
    ("monitoring/statsd-example.hcl", Expect::Ok),
    ("monitoring/webhook-full-example.hcl", Expect::Ok),
    ("monitoring/webhook-minimal-example.hcl", Expect::Ok),
    ("overview-full-example.hcl", Expect::Ok),
    ("retry-example.hcl", Expect::Ok),
    (
        "sources/http-full-example.hcl",
        Expect::Refused("source.use \"http\"", "source `http` "),
    ),
    (
        "sources/http-minimal-example.hcl",
        Expect::Refused("source.use \"http\"", "source `http` "),
    ),
    ("sources/kafka-full-example.hcl", Expect::Ok),
    ("sources/kafka-minimal-example.hcl", Expect::Ok),
    ("sources/kinesis-full-example.hcl", Expect::Ok),
    ("sources/kinesis-minimal-example.hcl", Expect::Ok),
    ("sources/pubsub-full-example.hcl", Expect::Ok),
    ("sources/pubsub-minimal-example.hcl", Expect::Ok),
    ("sources/sqs-full-example.hcl", Expect::Ok),
    ("sources/sqs-minimal-example.hcl", Expect::Ok),
    ("sources/stdin-full-example.hcl", Expect::Ok),
    ("sources/stdin-minimal-example.hcl", Expect::Ok),
    ("targets/eventhub-full-example.hcl", Expect::Ok),
    ("targets/eventhub-minimal-example.hcl", Expect::Ok),
    ("targets/http-full-example.hcl", Expect::Ok),
    ("targets/http-minimal-example.hcl", Expect::Ok),
    ("targets/kafka-full-example.hcl", Expect::Ok),
    ("targets/kafka-minimal-example.hcl", Expect::Ok),
    ("targets/kinesis-full-example.hcl", Expect::Ok),
    ("targets/kinesis-minimal-example.hcl", Expect::Ok),
    ("targets/pubsub-full-example.hcl", Expect::Ok),
    ("targets/pubsub-minimal-example.hcl", Expect::Ok),
    ("targets/sqs-full-example.hcl", Expect::Ok),
    ("targets/sqs-minimal-example.hcl", Expect::Ok),
    ("targets/stdout-full-example.hcl", Expect::Ok),
    ("targets/stdout-minimal-example.hcl", Expect::Ok),
    (
        "transformations/builtin/base64Decode-full-example.hcl",
        Expect::Transform("transform.use \"base64Decode\"", "base64Decode"),
    ),
    (
        "transformations/builtin/base64Decode-minimal-example.hcl",
        Expect::Transform("transform.use \"base64Decode\"", "base64Decode"),
    ),
    (
        "transformations/builtin/base64Encode-full-example.hcl",
        Expect::Transform("transform.use \"base64Encode\"", "base64Encode"),
    ),
    (
        "transformations/builtin/base64Encode-minimal-example.hcl",
        Expect::Transform("transform.use \"base64Encode\"", "base64Encode"),
    ),
    (
        "transformations/builtin/jq-full-example.hcl",
        Expect::Transform("transform.use \"jq\"", "jq"),
    ),
    (
        "transformations/builtin/jq-minimal-example.hcl",
        Expect::Transform("transform.use \"jq\"", "jq"),
    ),
    (
        "transformations/builtin/jqFilter-full-example.hcl",
        Expect::Transform("transform.use \"jqFilter\"", "jqFilter"),
    ),
    (
        "transformations/builtin/jqFilter-minimal-example.hcl",
        Expect::Transform("transform.use \"jqFilter\"", "jqFilter"),
    ),
    (
        "transformations/custom-scripts/examples/js-non-snowplow-config-example.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
    (
        "transformations/custom-scripts/examples/js-snowplow-config-example.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
    (
        "transformations/custom-scripts/js-configuration-full-example.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
    (
        "transformations/custom-scripts/js-configuration-minimal-example.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilter-full-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilter-minimal-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilterContext-full-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilterContext-minimal-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilterUnstructEvent-full-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedFilterUnstructEvent-minimal-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedSetPk-full-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedSetPk-minimal-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedToJson-full-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spEnrichedToJson-minimal-example.hcl",
        Expect::Ok,
    ),
    (
        "transformations/snowplow-builtin/spGtmssPreview-full-example.hcl",
        Expect::Transform("transform.use \"spGtmssPreview\"", "spGtmssPreview"),
    ),
    (
        "transformations/snowplow-builtin/spGtmssPreview-minimal-example.hcl",
        Expect::Transform("transform.use \"spGtmssPreview\"", "spGtmssPreview"),
    ),
    (
        "transformations/transformations-overview-example.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
];

/// The project's own HCL configs (tests/fixtures/snowbridge/), each following a docs example.
const FIXTURES: &[(&str, Expect)] = &[
    ("kafka-source.hcl", Expect::Ok),
    ("kinesis-source.hcl", Expect::Ok),
    ("kafka-target.hcl", Expect::Ok),
    ("kinesis-target.hcl", Expect::Ok),
    ("snowplow-transforms.hcl", Expect::Ok),
    ("filter-stdin-stdout.hcl", Expect::Ok),
    ("jq-transforms.hcl", Expect::Ok),
    ("transform-jq-hash-function.hcl", Expect::Ok),
    ("transform-jq-hash-salt-function.hcl", Expect::Ok),
    ("http-target.hcl", Expect::Ok),
    ("http-full-example.hcl", Expect::Ok),
    ("pubsub-target.hcl", Expect::Ok),
    (
        "js-transform.hcl",
        Expect::Transform("transform.use \"js\"", "js"),
    ),
    // The live-viewer accelerator's pipeline (runtime/tests/js.rs runs it).
    ("accelerator.hcl", Expect::Ok),
];

fn weir_has_transform(name: &str) -> bool {
    weir_core::transforms::REGISTRY
        .iter()
        .any(|r| r.name == name)
}

/// Validating a `js` transform compiles its script on the engine weir ships: the one built
/// here, with the tests' compile cache.
fn js_engine() -> [(&'static str, PathBuf); 2] {
    [
        (
            weir_core::transforms::js::ENGINE_ENV,
            wasm_support::rust_guest("weir_js"),
        ),
        ("WEIR_CACHE_DIR", wasm_support::cache_dir()),
    ]
}

/// `weir validate PATH` with `env`: exit code and what it printed.
/// `weir validate` of `path`, in the config's directory (where files it names are).
fn validate(path: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = weir()
        .arg("validate")
        .arg(path)
        .current_dir(path.parent().unwrap())
        .envs(env.iter().copied())
        .envs(js_engine())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Checks one config against what is expected of it; returns a complaint or nothing.
fn check(path: &Path, expect: Expect, env: &[(&str, &str)]) -> Option<String> {
    let (code, text) = validate(path, env);
    let file = path.display().to_string();
    let (ok, key, msg) = match expect {
        Expect::Ok => (true, "", String::new()),
        Expect::Refused(key, msg) => (false, key, msg.to_string()),
        Expect::Transform(key, name) if !weir_has_transform(name) => (
            false,
            key,
            format!("transformation `{name}` is not supported by weir yet (issue #17)"),
        ),
        Expect::Transform(..) => (true, "", String::new()),
    };
    if ok {
        if code != Some(0) || !text.contains(&format!("{file}: ok")) {
            return Some(format!("{file}: expected ok, got {code:?}: {text}"));
        }
        return None;
    }
    // A refusal names the file, the HCL key path and the component.
    let msg = if msg.ends_with(' ') {
        format!("{msg}{HTTP18}")
    } else {
        msg
    };
    let want = format!("error: {file}: key `{key}`: {msg}");
    if code != Some(2) || !text.contains(&want) {
        return Some(format!(
            "{file}: expected exit 2 and\n  {want}\ngot {code:?}:\n  {text}"
        ));
    }
    None
}

/// The `git` directory of the mirror, if this machine has one.
fn mirror() -> Option<PathBuf> {
    let p = PathBuf::from(MIRROR);
    p.exists().then_some(p)
}

fn git(repo: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn snowbridge_docs_examples_validate_or_are_refused_precisely() {
    let Some(repo) = mirror() else {
        eprintln!(
            "skipped: no copy of Snowbridge's repository at {MIRROR}; the fixtures under \
             tests/fixtures/snowbridge/ are checked by the other tests"
        );
        return;
    };
    let prefix = "assets/docs/configuration/";
    let listed: Vec<String> = git(&repo, &["ls-tree", "-r", "--name-only", "HEAD", prefix])
        .lines()
        .filter(|l| l.ends_with(".hcl"))
        .map(|l| l.trim_start_matches(prefix).to_string())
        .collect();
    // A docs example this test does not know (or one that has gone) fails it.
    let mut known: Vec<&str> = DOCS.iter().map(|(p, _)| *p).collect();
    known.sort();
    let mut found: Vec<&str> = listed.iter().map(String::as_str).collect();
    found.sort();
    assert_eq!(found, known, "the docs examples changed: update DOCS");

    let dir = tempfile::tempdir().unwrap();
    // The http example's template file, as Snowbridge's docs give it.
    std::fs::write(
        dir.path().join("myTemplate.file"),
        git(
            &repo,
            &[
                "show",
                &format!("HEAD:{prefix}targets/http-template-full-example.file"),
            ],
        ),
    )
    .unwrap();
    // The docs' scripts, by the names DOCS_ENV gives them.
    for script in git(&repo, &["ls-tree", "-r", "--name-only", "HEAD", prefix])
        .lines()
        .filter(|l| l.ends_with(".js"))
    {
        let name = Path::new(script).file_name().unwrap();
        std::fs::write(
            dir.path().join(name),
            git(&repo, &["show", &format!("HEAD:{script}")]),
        )
        .unwrap();
    }
    let mut problems = Vec::new();
    let (mut valid, mut refused) = (0, 0);
    for (rel, expect) in DOCS {
        let text = git(&repo, &["show", &format!("HEAD:{prefix}{rel}")]);
        let path = dir.path().join(rel.replace('/', "__"));
        std::fs::write(&path, text).unwrap();
        match expect {
            Expect::Ok => valid += 1,
            Expect::Transform(_, n) if weir_has_transform(n) => valid += 1,
            _ => refused += 1,
        }
        match check(&path, *expect, DOCS_ENV) {
            Some(p) => problems.push(p),
            // Every example that validates converts to TOML that validates too.
            None => problems.extend(round_trip_validates(&path, DOCS_ENV, *expect)),
        }
    }
    eprintln!("Snowbridge docs examples: {valid} validate, {refused} refused");
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// `weir config convert` of a config that validates gives TOML that `weir validate` accepts.
fn round_trip_validates(path: &Path, env: &[(&str, &str)], expect: Expect) -> Option<String> {
    let ok = match expect {
        Expect::Ok => true,
        Expect::Transform(_, n) => weir_has_transform(n),
        Expect::Refused(..) => false,
    };
    if !ok {
        return None;
    }
    let out = weir()
        .args(["config", "convert"])
        .arg(path)
        .current_dir(path.parent().unwrap())
        .envs(env.iter().copied())
        .envs(js_engine())
        .output()
        .unwrap();
    if !out.status.success() {
        return Some(format!(
            "{}: convert failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let toml = path.with_extension("toml");
    std::fs::write(&toml, &out.stdout).unwrap();
    let (code, text) = validate(&toml, env);
    (code != Some(0)).then(|| {
        format!(
            "{}: converted TOML does not validate: {text}\n{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn fixture_path(name: &str) -> PathBuf {
    fixture("snowbridge").join(name)
}

const FIXTURE_ENV: &[(&str, &str)] = &[
    ("HOSTNAME", "host-1"),
    ("JS_SCRIPT_PATH", "script.js"),
    ("MY_AUTH_PASSWORD", "test"),
    ("CLIENT_ID", "client_id_test"),
    ("CLIENT_SECRET", "client_secret_test"),
    ("REFRESH_TOKEN", "refresh_token_test"),
    ("SHA1_SALT", "09a2d6b3ecd943aa8512df1f"),
];

#[test]
fn snowbridge_fixtures_validate_or_are_refused_precisely() {
    let problems: Vec<String> = FIXTURES
        .iter()
        .filter_map(|(name, expect)| check(&fixture_path(name), *expect, FIXTURE_ENV))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}

/// The pipeline weir builds from a config, as text (without the file name).
fn pipeline_of(cfg: &PipelineConfig) -> String {
    format!("{:?}", cfg.source)
        + &format!(
            "{:?}",
            cfg.transforms
                .iter()
                .map(|t| (&t.label, &t.config))
                .collect::<Vec<_>>()
        )
        + &format!("{:?}{:?}{:?}", cfg.sink, cfg.filtered, cfg.failure)
        + &format!("{:?}{:?}{:?}", cfg.batch, cfg.limits, cfg.workers)
}

#[test]
fn convert_then_validate_gives_the_same_pipeline() {
    let env: HashMap<String, String> = FIXTURE_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    for (name, expect) in FIXTURES {
        // These name a file (template, script) relative to the working directory, which this
        // test (in process) cannot set; snowbridge_fixtures_validate_or_are_refused_precisely
        // checks them.
        if !matches!(expect, Expect::Ok)
            || *name == "http-full-example.hcl"
            || *name == "accelerator.hcl"
        {
            continue;
        }
        let hcl = fixture_path(name);
        let out = weir()
            .args(["config", "convert"])
            .arg(&hcl)
            .envs(FIXTURE_ENV.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let toml = dir.path().join(name.replace(".hcl", ".toml"));
        std::fs::write(&toml, &text).unwrap();
        let (code, said) = validate(&toml, &[]);
        assert_eq!(
            code,
            Some(0),
            "{name}: the TOML does not validate: {said}\n{text}"
        );

        let t = weir_core::snowbridge::load(&hcl, env.clone(), TOP_LEVEL_KEYS).unwrap();
        let from_hcl = PipelineConfig::from_value(&t.file, t.root()).unwrap();
        let from_toml = PipelineConfig::load(&toml).unwrap();
        assert_eq!(
            pipeline_of(&from_hcl),
            pipeline_of(&from_toml),
            "{name}: HCL and converted TOML differ\n{text}"
        );
    }
}

#[test]
fn convert_writes_what_it_drops_as_comments() {
    let out = weir()
        .args(["config", "convert"])
        .arg(fixture_path("kinesis-source.hcl"))
        .envs(FIXTURE_ENV.iter().copied())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# - `source.use \"kinesis\".shard_check_freq_seconds`: ignored"),
        "{text}"
    );
    assert!(text.contains("read_interval = \"500ms\""), "{text}");
    assert!(text.contains("max_shards = 20"), "{text}");
    assert!(
        text.contains("role_arn = \"arn:aws:iam::123456789012:role/myrole\""),
        "the role is kept: {text}"
    );
    assert!(text.contains("worker_id = \"host-1\""), "{text}");
    assert!(
        text.contains("timestamp = \"2020-01-01T10:00:00Z\""),
        "{text}"
    );
    // a refused config converts to nothing, with the same error as validate
    let dir = tempfile::tempdir().unwrap();
    let refused = dir.path().join("http-source.hcl");
    std::fs::write(&refused, "source {\n  use \"http\" {}\n}\n").unwrap();
    let out = weir()
        .args(["config", "convert"])
        .arg(&refused)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("source `http` is not supported"));
}

#[test]
fn a_missing_env_var_is_an_error_naming_it() {
    let (code, text) = validate(&fixture_path("kinesis-source.hcl"), &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(
            "key `source.use \"kinesis\".client_name`: environment variable `HOSTNAME` is not set"
        ),
        "{text}"
    );
}

/// The same filter as HCL and as TOML on the enriched fixture: the same output, record for record.
#[test]
fn an_hcl_config_runs_like_its_toml_equivalent() {
    let input = std::fs::read(fixture("sdk/micro-media-session.tsv")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = write(
        dir.path(),
        "filter.toml",
        "[source]\ntype = \"stdin\"\n\n[[transforms]]\ntype = \"spEnrichedFilter\"\n\
         atomic_field = \"event\"\nregex = \"^unstruct$\"\nfilter_action = \"keep\"\n\n\
         [sink]\ntype = \"stdout\"\n\n[failure]\ntype = \"stdout\"\n",
    );
    let run_with = |config: &Path| {
        use std::io::Write;
        let mut child = weir()
            .arg("run")
            .arg(config)
            .arg("--progress=never")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&input).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let from_hcl = run_with(&fixture_path("filter-stdin-stdout.hcl"));
    let from_toml = run_with(&toml);
    let unstruct = String::from_utf8_lossy(&input)
        .lines()
        .filter(|l| l.split('\t').nth(5) == Some("unstruct"))
        .count();
    assert_eq!(from_hcl.lines().count(), unstruct, "{from_hcl}");
    assert!(unstruct > 0 && unstruct < input.split(|b| *b == b'\n').count());
    assert_eq!(from_hcl, from_toml);
}

/// Snowbridge's docs jq examples, verbatim (jqFilter-full-example.hcl then jq-full-example.hcl,
/// in tests/fixtures/snowbridge/jq-transforms.hcl), run by the weir binary on the enriched
/// fixture, whose events have no `app_id`: this test gives every other event one, and, as the
/// example reads the media player entity 1-x-x and the fixture has 2-0-0, it relabels that
/// entity 1-0-0 in every fourth event (the data is the same for the example). The filter
/// (`has("app_id")`) keeps exactly those, and each becomes `{my_app_id, my_nested_prop:
/// {playback_rate}}` from its analytics-SDK JSON, nulls and emptied objects removed, keys
/// sorted as Snowbridge (Go) writes them. Expected values come from the SDK JSON fixture.
#[test]
fn docs_jq_examples_give_the_documented_result() {
    use std::io::Write;
    let tsv = std::fs::read_to_string(fixture("sdk/micro-media-session.tsv")).unwrap();
    let expected =
        std::fs::read_to_string(fixture("sdk/micro-media-session.expected.jsonl")).unwrap();
    let mut input = String::new();
    let mut want = Vec::new();
    for (i, (line, sdk)) in tsv.lines().zip(expected.lines()).enumerate() {
        let (app_id, rest) = line.split_once('\t').unwrap();
        assert_eq!(app_id, "", "the fixture's events have no app_id");
        if i % 2 == 1 {
            input.push_str(line);
            input.push('\n');
            continue;
        }
        let app = format!("media-{i}");
        let v1 = i % 4 == 0;
        let rest = if v1 {
            rest.replace(
                "snowplow/media_player/jsonschema/2-0-0",
                "snowplow/media_player/jsonschema/1-0-0",
            )
        } else {
            rest.to_string()
        };
        input.push_str(&format!("{app}\t{rest}\n"));
        let event: serde_json::Value = serde_json::from_str(sdk).unwrap();
        let null = serde_json::Value::Null;
        let rate = if v1 {
            &event["contexts_com_snowplowanalytics_snowplow_media_player_2"][0]["playbackRate"]
        } else {
            &null
        };
        let mut o = serde_json::json!({ "my_app_id": app });
        if !rate.is_null() {
            o["my_nested_prop"] = serde_json::json!({ "playback_rate": rate });
        }
        want.push(o);
    }
    let mut child = weir()
        .arg("run")
        .arg(fixture_path("jq-transforms.hcl"))
        .arg("--progress=never")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let got = String::from_utf8(out.stdout).unwrap();
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "the events with an app_id, one output each: {log}"
    );
    let mut with_rate = 0;
    for (g, w) in got.iter().zip(&want) {
        let v: serde_json::Value = serde_json::from_str(g).unwrap_or_else(|e| panic!("{g}: {e}"));
        assert_eq!(&v, w, "{g}");
        // Go's json.Marshal: keys in sorted order, no spaces.
        assert!(g.starts_with(r#"{"my_app_id":"media-"#), "{g}");
        if w.get("my_nested_prop").is_some() {
            with_rate += 1;
            assert!(g.contains(r#"","my_nested_prop":{"playback_rate":"#), "{g}");
        } else {
            assert!(g.ends_with("\"}"), "{g}");
        }
    }
    assert!(
        with_rate > 0 && with_rate < want.len(),
        "{with_rate} of {}",
        want.len()
    );
}

/// Snowbridge's TestJQHashTransformation (pkg/transform/transformconfig/
/// transform_config_test.go): its two configs, verbatim, run by the weir binary on
/// SnowplowTsv1 with SHA1_SALT set as the Go test sets it; the outputs are the Go test's.
#[test]
fn snowbridge_jq_hash_transformation_configs() {
    use std::io::Write;
    let tsv1 = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/core/src/transforms/testdata/snowplow_tsv1.tsv"),
    )
    .unwrap();
    for (file, want) in [
        (
            "transform-jq-hash-function.hcl",
            r#"{"agentName":"3767ff5f27dff1fc1a8a8bbf3aa53a7170adbcbea0ab43b3"}"#,
        ),
        (
            "transform-jq-hash-salt-function.hcl",
            r#"{"agentName":"5841e55de6c4486fa092f044a5189570dec421cb06652829"}"#,
        ),
    ] {
        let mut child = weir()
            .arg("run")
            .arg(fixture_path(file))
            .arg("--progress=never")
            .env("SHA1_SALT", "09a2d6b3ecd943aa8512df1f")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&tsv1).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("{want}\n"),
            "{file}"
        );
    }
}
