//! The HTTP endpoint (/healthz, /readyz, /metrics), JSON logs and the progress line, on the real
//! binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Starts weir on `cfg` (JSON logs, stdin piped); returns it, the address its `[http]` endpoint
/// is bound to, and its stdin.
fn spawn_with_http(
    cfg: &std::path::Path,
) -> (std::process::Child, String, std::process::ChildStdin) {
    let mut child = weir()
        .args(["--log-format", "json", "run", "--progress=never"])
        .arg(cfg)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    // JSON logs: the line announcing the endpoint carries its bound address.
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "weir exited early"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("every log line is JSON");
        if let Some(a) = v["fields"]["address"].as_str() {
            break a.to_string();
        }
    };
    // Keep reading the log, so that weir never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    let stdin = child.stdin.take().unwrap();
    (child, addr, stdin)
}

/// The value of a Prometheus sample line `name` (labels included) in `metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn e2e_latency_runs_from_collector_tstamp_to_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        "[source]\ntype = \"stdin\"\n[sink]\ntype = \"null\"\n[failure]\ntype = \"null\"\n\
         [batch]\nflush_interval = \"20ms\"\n[metrics]\ne2e_latency = true\n\
         [http]\naddress = \"127.0.0.1:0\"\n",
    );
    let (mut child, addr, mut stdin) = spawn_with_http(&cfg);
    // Real events, received by the collector 3 s ago; and a line that is not an event.
    let mut received = String::new();
    assert!(weir_snowplow::tracker::format_tstamp(
        weir_snowplow::now_ms() - 3_000,
        &mut received
    ));
    let fixture =
        std::fs::read_to_string(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    let mut events = 0;
    for l in fixture.lines().filter(|l| !l.is_empty()) {
        let mut f: Vec<&str> = l.split('\t').collect();
        f[3] = &received;
        writeln!(stdin, "{}", f.join("\t")).unwrap();
        events += 1;
    }
    stdin.write_all(b"not an event\n").unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (_, body) = get(&addr, "/metrics");
        if sample(&body, "weir_e2e_latency_seconds_count") == Some(events as f64)
            && sample(&body, "weir_processing_latency_seconds_count") == Some(events as f64 + 1.0)
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "latencies never counted {events} events:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // Every event took 3 s and a little: in the buckets from 5 s up, none below 2.5 s.
    let bucket = |le: &str| {
        sample(
            &metrics,
            &format!("weir_e2e_latency_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(bucket("2.5"), Some(0.0), "{metrics}");
    assert_eq!(bucket("5"), Some(events as f64), "{metrics}");
    let mean = sample(&metrics, "weir_e2e_latency_seconds_sum").unwrap() / events as f64;
    assert!((3.0..5.0).contains(&mean), "mean e2e latency {mean} s");
    // Read → acknowledged: a histogram too, and short.
    let p = |le: &str| {
        sample(
            &metrics,
            &format!("weir_processing_latency_seconds_bucket{{le=\"{le}\"}}"),
        )
    };
    assert_eq!(p("+Inf"), Some(events as f64 + 1.0), "{metrics}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn health_readiness_and_prometheus_metrics_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        "[source]\ntype = \"stdin\"\n\
         [[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_name\"\nregex = \"^play_event$\"\n\
         [sink]\ntype = \"null\"\n[failure]\ntype = \"null\"\n\
         [batch]\nflush_interval = \"20ms\"\n[http]\naddress = \"127.0.0.1:0\"\n",
    );
    let (mut child, addr, mut stdin) = spawn_with_http(&cfg);
    let fixture =
        std::fs::read_to_string(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    stdin.write_all(fixture.as_bytes()).unwrap();
    stdin.write_all(b"a bad line\n").unwrap();
    stdin.flush().unwrap();

    assert_eq!(get(&addr, "/healthz").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let (status, body) = get(&addr, "/metrics");
        assert_eq!(status, 200);
        if body.contains("weir_source_records_total 74")
            && body.contains("weir_records_acked_total 74")
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed 74 records:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(get(&addr, "/readyz").0, 200, "running and not draining");
    let plays = fixture
        .lines()
        .filter(|l| l.contains("\tplay_event\t"))
        .count();
    for expected in [
        format!("weir_transform_records_total{{transform=\"transforms[0] (spEnrichedFilter)\",outcome=\"kept\"}} {plays}"),
        "weir_transform_records_total{transform=\"transforms[0] (spEnrichedFilter)\",outcome=\"failed\"} 1".to_string(),
        format!("weir_sink_records_total{{sink=\"sink\"}} {plays}"),
        "weir_sink_records_total{sink=\"failure\"} 1".to_string(),
        "weir_sink_write_seconds{sink=\"sink\",quantile=\"0.99\"}".to_string(),
        "weir_batch_records{stage=\"source\",quantile=\"0.5\"}".to_string(),
    ] {
        assert!(metrics.contains(&expected), "missing {expected} in\n{metrics}");
    }
    let (_, stats) = get(&addr, "/stats");
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["read"], 74);
    assert_eq!(stats["failed"], 1);
    drop(stdin); // end of input: weir finishes and exits 0
    assert!(child.wait().unwrap().success());
}

#[test]
fn progress_line_reports_counts() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        "[source]\ntype = \"stdin\"\n[sink]\ntype = \"null\"\n",
    );
    let mut weir = Logged::spawn(
        weir()
            .args(["run", "--progress=always"])
            .arg(&cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    let mut stdin = weir.child.stdin.take().unwrap();
    for i in 0..500 {
        writeln!(stdin, "line {i}").unwrap();
    }
    stdin.flush().unwrap();
    // While stdin is open, the progress line comes round and reports what was read and acked.
    let progress = weir.wait_for("a progress line", Duration::from_secs(60), |l| {
        l.contains("] read 500 ").then(|| l.to_string())
    });
    drop(stdin);
    assert!(weir.wait_exit(Duration::from_secs(60)).0.success());
    // `[   1.0s] read 500 (…/s)  written 500  filtered 0  failed 0  acked 500`
    let fields: Vec<&str> = progress.split_whitespace().collect();
    let after = |name: &str| {
        let at = fields.iter().position(|f| *f == name).unwrap();
        fields[at + 1]
    };
    assert_eq!(
        ["read", "written", "filtered", "failed", "acked"].map(after),
        ["500", "500", "0", "0", "500"],
        "{progress}"
    );
}

/// `[metrics.statsd]` against a statsd server of the test's own (a UDP socket): counts under
/// Snowbridge's names add up to what the pipeline did, with the tags, and the e2e latency of
/// events received 3 s ago is a timing of about 3 s.
#[test]
fn statsd_gets_counts_and_latencies_with_prefix_and_tags() {
    let statsd = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    statsd
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut received = String::new();
    assert!(weir_snowplow::tracker::format_tstamp(
        weir_snowplow::now_ms() - 3_000,
        &mut received
    ));
    let fixture =
        std::fs::read_to_string(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    let mut input = String::new();
    let mut events = 0;
    for l in fixture.lines().filter(|l| !l.is_empty()) {
        let mut f: Vec<&str> = l.split('\t').collect();
        f[3] = &received;
        input.push_str(&f.join("\t"));
        input.push('\n');
        events += 1;
    }
    let input = write(dir.path(), "in.tsv", &input);
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}[[transforms]]\ntype = \"spEnrichedFilter\"\natomic_field = \"event_name\"\nregex = \"^page_view$\"\nfilter_action = \"drop\"\n\
             [sink]\ntype = \"null\"\n[batch]\nmax_records = 10\n\
             [metrics]\ne2e_latency = true\n[metrics.statsd]\naddress = \"{}\"\nprefix = \"weir.test\"\n\
             flush_interval = \"50ms\"\ntags = {{ env = \"ci\" }}\n",
            file_source(&input),
            statsd.local_addr().unwrap()
        ),
    );
    let out = run(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let written = summary(&stderr, "written").unwrap();
    let filtered = summary(&stderr, "filtered").unwrap();
    assert!(written > 0 && filtered > 0, "{stderr}");
    let lines = statsd_lines(&statsd);
    let total = |name: &str| statsd_total(&lines, &format!("weir.test.{name}"), "|c|#env:ci");
    assert_eq!(total("records_read"), events, "{lines:?}");
    assert_eq!(total("target_success"), written);
    assert_eq!(total("message_filtered"), filtered);
    assert_eq!(total("records_acked"), events);
    let timing = |name: &str| -> Vec<u64> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("weir.test.{name}:")))
            .map(|rest| {
                assert!(rest.ends_with("|ms|#env:ci"), "{rest}");
                rest.split('|').next().unwrap().parse::<u64>().unwrap()
            })
            .collect()
    };
    let max_e2e = timing("max_e2e_latency");
    assert!(!max_e2e.is_empty(), "{lines:?}");
    assert!(
        max_e2e.iter().all(|ms| (2_900..60_000).contains(ms)),
        "{max_e2e:?}"
    );
    assert!(!timing("min_processing_latency").is_empty(), "{lines:?}");
}

/// What a fake server received: (path, body) of each request.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A stand-in for an HTTP endpoint (Sentry's ingestion, a metadata reporter's receiver): keeps
/// each request's path and body, answers 200.
fn fake_endpoint() -> (std::net::SocketAddr, Received) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let keep = keep.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                    let mut len = 0;
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                len = v.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    keep.lock().unwrap().push((path, body));
                    let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}");
                }
            });
        }
    });
    (addr, got)
}

/// `[monitoring.sentry]`: the error that stops weir reaches Sentry as an event, with the tags
/// and weir's release; a malformed DSN is a config error that does not show the DSN.
#[test]
fn sentry_gets_the_error_that_stops_weir() {
    let (addr, got) = fake_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.txt", "a\nb\nc\n");
    let sentry = |dsn: &str| {
        format!("[monitoring.sentry]\ndsn = \"{dsn}\"\ntags = {{ pipeline = \"ci\" }}\n")
    };
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "{}[sink]\ntype = \"file\"\npath = \"/dev/full\"\n\
             [retry.transient]\ndelay = \"5ms\"\nmax_attempts = 2\n{}",
            file_source(&input),
            sentry(&format!("http://publickey@{addr}/42"))
        ),
    );
    let out = run(&cfg);
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("reporting errors to Sentry"), "{stderr}");
    let got = got.lock().unwrap().clone();
    let events: Vec<String> = got
        .iter()
        .filter(|(path, _)| path == "/api/42/envelope/")
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert!(
        !events.is_empty(),
        "nothing reached Sentry: {got:?}\n{stderr}"
    );
    let all = events.join("\n");
    assert!(all.contains("No space left on device"), "{all}");
    assert!(all.contains(r#""pipeline":"ci""#), "{all}");
    assert!(
        all.contains(&format!("weir@{}", env!("CARGO_PKG_VERSION"))),
        "{all}"
    );

    // A DSN that is not one: refused at its key, and never printed.
    let bad = write(
        dir.path(),
        "bad.toml",
        &format!(
            "{}[sink]\ntype = \"null\"\n{}",
            file_source(&input),
            sentry("not-a-dsn-secretish")
        ),
    );
    let out = weir().arg("validate").arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key `monitoring.sentry.dsn`"), "{stderr}");
    assert!(!stderr.contains("secretish"), "{stderr}");
}

/// Snowbridge's `monitoring { metadata_reporter }`: every period's counts reach the endpoint as
/// `event_forwarding_metrics` events, with the tags; failures with an error code are
/// aggregated by code and component. Summed over the reports, the counts are the run's.
#[test]
fn the_metadata_reporter_sends_each_periods_counts_and_coded_errors() {
    let (addr, got) = fake_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        std::fs::read_to_string(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    let mut input: Vec<&str> = fixture.lines().filter(|l| !l.is_empty()).collect();
    let events = input.len() as u64;
    input.insert(5, "not an enriched event");
    input.insert(9, "nor this");
    let cfg = write(
        dir.path(),
        "p.hcl",
        &format!(
            "transform {{\n  use \"spEnrichedFilter\" {{\n    atomic_field = \"event_name\"\n    \
             regex = \"^page_view$\"\n    filter_action = \"drop\"\n  }}\n  \
             use \"spEnrichedToJson\" {{}}\n}}\n\
             target {{\n  use \"stdout\" {{}}\n}}\nfailure_target {{\n  use \"stdout\" {{}}\n}}\n\
             stats_receiver {{\n  buffer_sec = 1\n}}\n\
             monitoring {{\n  metadata_reporter {{\n    endpoint = \"http://{addr}/metadata\"\n    \
             tags = {{\n      pipeline = \"ci\"\n    }}\n  }}\n}}\nlicense {{\n  accept = true\n}}\n"
        ),
    );
    // Half the input, a report that counts it, then the rest: two periods at least.
    let mut child = weir()
        .args(["run", "--progress=never"])
        .arg(&cfg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (first, rest) = input.split_at(input.len() / 2);
    writeln!(stdin, "{}", first.join("\n")).unwrap();
    stdin.flush().unwrap();
    wait_until(
        "a report that counts the first half",
        Duration::from_secs(30),
        || {
            got.lock().unwrap().iter().any(|(_, b)| {
                serde_json::from_slice::<serde_json::Value>(b).unwrap()["data"]["successCount"]
                    .as_u64()
                    .is_some_and(|n| n > 0)
            })
        },
    );
    writeln!(stdin, "{}", rest.join("\n")).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let written = summary(&stderr, "written").unwrap();
    let filtered = summary(&stderr, "filtered").unwrap();
    assert_eq!(summary(&stderr, "failed"), Some(2), "{stderr}");
    let reports: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(path, body)| {
            assert_eq!(path, "/metadata");
            serde_json::from_slice(body).unwrap()
        })
        .collect();
    assert!(reports.len() >= 2, "{reports:?}");
    let sum = |k: &str| -> u64 { reports.iter().map(|r| r["data"][k].as_u64().unwrap()).sum() };
    assert_eq!(
        (
            sum("successCount"),
            sum("filteredCount"),
            sum("invalidCount"),
            sum("failedCount")
        ),
        (written, filtered, 2, 0),
        "{reports:?}"
    );
    assert_eq!(written + filtered, events);
    let errors: Vec<&serde_json::Value> = reports
        .iter()
        .filter_map(|r| r["data"]["invalidErrors"].as_array())
        .flatten()
        .collect();
    let counted: u64 = errors.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, 2, "{errors:?}");
    assert!(
        errors.iter().all(|e| e["code"] == "TransformationError"
            && e["description"] == "transforms[0] (spEnrichedFilter)"),
        "{errors:?}"
    );
    for r in &reports {
        assert_eq!(
            r["schema"],
            "iglu:com.snowplowanalytics.snowplow/event_forwarding_metrics/jsonschema/1-0-0"
        );
        assert_eq!(r["data"]["tags"]["pipeline"], "ci");
        assert_eq!(r["data"]["appName"], "weir");
        let (start, end) = (
            r["data"]["periodStart"].as_str().unwrap(),
            r["data"]["periodEnd"].as_str().unwrap(),
        );
        assert!(start.ends_with('Z') && start <= end, "{r}");
    }
}
