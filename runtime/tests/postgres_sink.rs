//! The `postgres` sink against a real PostgreSQL server (Debian's package, started by
//! `pg_support` per test), on the real binary: the version rule across batches, runs and
//! instances; bad rows; two instances feeding one dashboard through LISTEN/NOTIFY; a SIGKILL of
//! weir and a restart of PostgreSQL mid-run with nothing lost (the input from a real Kafka
//! broker, whose offsets weir commits only once the rows are committed).

mod common;
mod kafka_support;
mod pg_support;
mod wasm_support;

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use pg_support::Postgres;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const WAIT: Duration = Duration::from_secs(60);

fn profile(viewer: &str, version: u32, status: &str) -> String {
    serde_json::json!({
        "viewer_id": viewer,
        "version": version,
        "status": status,
        "position": version * 10,
    })
    .to_string()
}

/// `viewer_id → (version, status)` of the live rows, and the keys of the tombstones.
fn table(pg: &Postgres, table: &str) -> (HashMap<String, (f64, String)>, Vec<String>) {
    let mut live = HashMap::new();
    let mut removed = Vec::new();
    for row in pg.query(&format!(
        "SELECT key, coalesce(version_n::text, ''), coalesce(doc->>'status', ''), \
         doc IS NULL FROM {table} ORDER BY key"
    )) {
        let f: Vec<&str> = row.split('|').collect();
        if f[3] == "t" {
            removed.push(f[0].to_string());
        } else {
            live.insert(f[0].to_string(), (f[1].parse().unwrap(), f[2].to_string()));
        }
    }
    (live, removed)
}

fn sink_config(pg: &Postgres, extra: &str) -> String {
    format!(
        "[sink]\ntype = \"postgres\"\nurl = \"{}\"\ntable = \"viewer_profiles\"\n\
         version_field = \"version\"\n{extra}\n",
        pg.url()
    )
}

#[test]
fn the_newest_profile_wins_once_per_viewer_and_bad_records_are_bad_rows() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let bad_rows = dir.path().join("bad.ndjson");

    // 300 viewers × versions 1..=4 in a scrambled order, a third of the records twice, then
    // the removal of ten viewers; in batches of 64, so a batch holds several versions of one
    // viewer and a viewer's versions span batches.
    let mut records = Vec::new();
    for v in 0..300 {
        for version in 1..=4 {
            records.push((v, version));
            if (v + version) % 3 == 0 {
                records.push((v, version));
            }
        }
    }
    let mut seed = 42u64;
    for i in (1..records.len()).rev() {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        records.swap(i, (seed >> 33) as usize % (i + 1));
    }
    let mut input: Vec<String> = records
        .iter()
        .map(|(v, version)| profile(&format!("v{v:03}"), *version, &format!("s{version}")))
        .collect();
    for v in 0..10 {
        input.push(format!(r#"{{"viewer_id":"v{v:03}","removed":true}}"#));
    }
    let bad = [
        "not json".to_string(),
        "[1,2]".to_string(),
        r#"{"viewer_id":"x\u0000y","version":1}"#.to_string(),
        r#"{"viewer_id":"ok","note":"a \u0000 inside","version":1}"#.to_string(),
        format!(r#"{{"viewer_id":"{}","version":1}}"#, "k".repeat(2000)),
        r#"{"version":1}"#.to_string(),
    ];
    input.splice(100..100, bad.iter().cloned());
    let file = write(dir.path(), "in.ndjson", &(input.join("\n") + "\n"));
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "{}{}[batch]\nmax_records = 64\n[failure]\ntype = \"file\"\npath = \"{}\"\n",
            file_source(&file),
            sink_config(&pg, ""),
            bad_rows.display()
        ),
    );
    let out = run(&cfg);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let (live, removed) = table(&pg, "viewer_profiles");
    assert_eq!(live.len(), 290, "{live:?}");
    assert!(
        live.values().all(|(v, s)| *v == 4.0 && s == "s4"),
        "every viewer at its newest version: {live:?}"
    );
    assert_eq!(
        removed,
        (0..10).map(|v| format!("v{v:03}")).collect::<Vec<_>>()
    );
    let bad_text = std::fs::read_to_string(&bad_rows).unwrap();
    assert_eq!(bad_text.lines().count(), bad.len(), "{bad_text}");
    for reason in [
        "not a JSON object",
        "found an array",
        "U+0000",
        "over max_key_bytes (1024)",
        "expected a non-empty string at `viewer_id`, found nothing",
    ] {
        assert!(bad_text.contains(reason), "{reason}: {bad_text}");
    }

    // Later: late and repeated updates. A removed viewer stays removed unless the update is
    // newer than the removed row; an older update never regresses a row; an equal one applies.
    let late = [
        profile("v000", 3, "late"),
        profile("v000", 4, "late"),
        profile("v001", 5, "back"),
        profile("v100", 2, "stale"),
        profile("v101", 4, "again"),
    ];
    let file2 = write(dir.path(), "in2.ndjson", &(late.join("\n") + "\n"));
    let cfg2 = write(
        dir.path(),
        "p2.toml",
        &format!("{}{}", file_source(&file2), sink_config(&pg, "")),
    );
    let out = run(&cfg2);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (live, removed) = table(&pg, "viewer_profiles");
    assert!(!live.contains_key("v000"), "{live:?}");
    assert!(removed.contains(&"v000".to_string()));
    assert_eq!(live["v001"], (5.0, "back".into()));
    assert_eq!(live["v100"], (4.0, "s4".into()));
    assert_eq!(live["v101"], (4.0, "again".into()));
    assert_eq!(live.len(), 291);
}

/// Runs weir on `cfg`, which must fail to start; its log.
fn failed_start(cfg: &std::path::Path) -> String {
    let out = weir()
        .arg("run")
        .arg(cfg)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{log}");
    log
}

#[test]
fn a_table_that_is_not_weirs_fails_the_start_with_what_was_expected() {
    let pg = Postgres::start();
    pg.query("CREATE TABLE viewer_profiles (key text PRIMARY KEY, doc json)");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "p.toml",
        &format!(
            "[source]\ntype = \"stdin\"\n{}",
            sink_config(&pg, "create_table = false")
        ),
    );
    let log = failed_start(&cfg);
    assert!(
        log.contains("expected a column `doc` of type jsonb, found type json"),
        "{log}"
    );
    // A wrong password in the URL never reaches the log.
    let cfg = write(
        dir.path(),
        "q.toml",
        &format!(
            "[source]\ntype = \"stdin\"\n[sink]\ntype = \"postgres\"\n\
             url = \"postgres://nobody:hunter2secret@127.0.0.1:{}/nodb\"\n",
            pg.port
        ),
    );
    let log = failed_start(&cfg);
    assert!(
        log.contains("cannot connect to PostgreSQL at 127.0.0.1:"),
        "{log}"
    );
    assert!(!log.contains("hunter2secret"), "{log}");
}

/// weir reading profiles from its stdin into the shared table, with a dashboard (and a
/// `/metrics` endpoint) or not.
fn instance(pg: &Postgres, dir: &std::path::Path, name: &str, dashboard: bool) -> Logged {
    let cfg = write(
        dir,
        &format!("{name}.toml"),
        &format!(
            "[source]\ntype = \"stdin\"\n[batch]\nflush_interval = \"10ms\"\n{}\n{}",
            if dashboard {
                "[http]\naddress = \"127.0.0.1:0\"\n"
            } else {
                ""
            },
            sink_config(
                pg,
                if dashboard {
                    "[sink.dashboard]\naddress = \"127.0.0.1:0\""
                } else {
                    ""
                }
            )
        ),
    );
    Logged::spawn(
        weir()
            .args(["--log-format", "json", "run", "--progress=never"])
            .arg(cfg)
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    )
}

#[test]
fn two_instances_write_one_table_and_one_dashboard_shows_both_live() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut a = instance(&pg, dir.path(), "a", true);
    let metrics_addr = a.bound("serving /healthz").to_string();
    let addr = a.bound("live dashboard").to_string();
    let mut b = instance(&pg, dir.path(), "b", false);
    b.wait_for("b to connect", WAIT, |l| {
        l.contains("postgres: connected").then_some(())
    });
    let mut a_in = a.child.stdin.take().unwrap();
    let mut b_in = b.child.stdin.take().unwrap();

    let mut sse = Sse::connect(&addr);
    let (name, data) = sse.next();
    assert_eq!(name, "snapshot", "{data}");
    // Let the dashboard's LISTEN be in place before the first write.
    a.wait_for("the change feed", WAIT, |l| {
        l.contains("following the table's changes").then_some(())
    });

    let mut latencies = Vec::new();
    let mut expect =
        |input: &mut std::process::ChildStdin, line: String, event: &str, key: &str| {
            let t0 = Instant::now();
            writeln!(input, "{line}").unwrap();
            input.flush().unwrap();
            let (name, data) = sse.next();
            latencies.push(t0.elapsed());
            let v: serde_json::Value = serde_json::from_str(&data).unwrap();
            assert_eq!(name, event, "{data}");
            let k = if event == "removed" {
                &v["key"]
            } else {
                &v["viewer_id"]
            };
            assert_eq!(k, key, "{data}");
            v
        };
    // Instance B's writes reach A's dashboard; so do A's own; B removes a viewer A wrote.
    let v = expect(
        &mut b_in,
        profile("from-b", 1, "playing"),
        "profile",
        "from-b",
    );
    assert_eq!(v["status"], "playing");
    expect(
        &mut a_in,
        profile("from-a", 1, "paused"),
        "profile",
        "from-a",
    );
    let v = expect(
        &mut b_in,
        profile("from-a", 2, "ended"),
        "profile",
        "from-a",
    );
    assert_eq!(v["status"], "ended");
    expect(
        &mut b_in,
        r#"{"viewer_id":"from-a","removed":true}"#.to_string(),
        "removed",
        "from-a",
    );
    eprintln!("write in one instance → pushed by the other's dashboard: {latencies:?}");
    // A's own write and nothing stale: one row applied by A (B's are B's).
    let metrics = http_get(&metrics_addr, "/metrics").unwrap();
    let rows = |outcome: &str| {
        metrics.lines().find_map(|l| {
            l.strip_prefix(&format!(
                "weir_postgres_rows_total{{outcome=\"{outcome}\"}} "
            ))?
            .parse::<f64>()
            .ok()
        })
    };
    assert_eq!(
        (rows("applied"), rows("skipped")),
        (Some(1.0), Some(0.0)),
        "{metrics}"
    );
    assert!(
        metrics.contains("weir_postgres_commit_seconds"),
        "{metrics}"
    );

    let body = http_get(&addr, "/api/viewers").unwrap();
    let snap: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = snap["viewers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["viewer_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["from-b"], "{body}");

    // The feed survives a lost connection: the dashboard resyncs with a fresh snapshot.
    pg.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'weir dashboard feed'",
    );
    let (name, data) = sse.next();
    assert_eq!(name, "snapshot", "{data}");
    writeln!(b_in, "{}", profile("after", 1, "playing")).unwrap();
    b_in.flush().unwrap();
    let (name, data) = sse.next();
    assert_eq!(
        (name.as_str(), data.contains("\"after\"")),
        ("profile", true),
        "{data}"
    );
    drop((a_in, b_in));
    assert!(a.wait_exit(WAIT).0.success());
    assert!(b.wait_exit(WAIT).0.success());
}

fn produce(bootstrap: &str, topic: &str, range: std::ops::Range<usize>, viewers: usize) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in range {
        let viewer = format!("v{:05}", i % viewers);
        let line = profile(&viewer, (i / viewers + 1) as u32, "playing");
        let mut r = BaseRecord::to(topic).key(&viewer).payload(&line);
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

#[test]
fn a_sigkill_and_a_postgresql_restart_mid_run_lose_nothing() {
    const VIEWERS: usize = 10_000;
    let kafka = kafka_support::shared();
    kafka.create_topic("pg-in", 4, 1, &[]);
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "k.toml",
        &format!(
            "[source]\ntype = \"kafka\"\nbootstrap_servers = \"{}\"\ntopics = [\"pg-in\"]\n\
             group_id = \"pg-sink\"\n{}[batch]\nmax_records = 50\n",
            kafka.bootstrap(),
            sink_config(&pg, "timeout = \"5s\"")
        ),
    );
    let start = || {
        Logged::spawn(
            weir()
                .args(["run", "--progress=never"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )
    };
    let rows_at = |version: f64| {
        table(&pg, "viewer_profiles")
            .0
            .values()
            .filter(|(v, _)| *v == version)
            .count()
    };

    // Every viewer's first profile; weir killed while it writes them.
    produce(&kafka.bootstrap(), "pg-in", 0..VIEWERS, VIEWERS);
    let mut weir = start();
    weir.wait_for("the table", WAIT, |l| {
        l.contains("postgres: connected").then_some(())
    });
    wait_until("some rows", WAIT, || {
        pg.query("SELECT count(*) FROM viewer_profiles")
            .first()
            .is_some_and(|n| n != "0")
    });
    signal(weir.child.id(), libc::SIGKILL);
    let (status, log) = weir.wait_exit(WAIT);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{log}");
    let at_kill = rows_at(1.0);

    // Restarted: what was not committed is read again. (Running before PostgreSQL stops: a
    // sink that cannot reach its database at start fails the start, by design.)
    let mut weir = start();
    weir.wait_for("the restarted pipeline", WAIT, |l| {
        l.contains("pipeline running").then_some(())
    });
    wait_until("every first profile after the restart", WAIT, || {
        rows_at(1.0) == VIEWERS
    });
    eprintln!("rows at the kill: {at_kill} of {VIEWERS}; all there after the restart");

    // PostgreSQL stops while the second profiles arrive; weir backs off and resumes.
    pg.stop("fast");
    produce(&kafka.bootstrap(), "pg-in", VIEWERS..2 * VIEWERS, VIEWERS);
    weir.wait_for("a failed write", WAIT, |l| {
        l.contains("write failed, retrying").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    pg.resume();
    wait_until(
        "every second profile after PostgreSQL is back",
        WAIT,
        || rows_at(2.0) == VIEWERS,
    );
    let (live, removed) = table(&pg, "viewer_profiles");
    assert_eq!((live.len(), removed.len()), (VIEWERS, 0));
    assert!(weir.child.try_wait().unwrap().is_none(), "{}", weir.log());
    let (status, log) = weir.terminate(WAIT);
    assert!(status.success(), "{log}");
}

#[test]
fn the_live_viewer_pipeline_writes_the_profiles_it_emits_newest_once_per_viewer() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // A real media session's enriched events, twice (a redelivery), through the shipped
    // transforms; once into a file (every profile viewer-state emits), once into PostgreSQL.
    let session = std::fs::read_to_string(fixture("sdk/micro-media-session.tsv")).unwrap();
    let input = write(dir.path(), "in.tsv", &format!("{session}{session}"));
    let transforms = format!(
        "[[transforms]]\ntype = \"wasm\"\npath = \"{}\"\n\
         [[transforms]]\ntype = \"wasm\"\npath = \"{}\"\nconfig = {{ ttl = \"1h\" }}\n\
         [batch]\nmax_records = 20\n",
        wasm_support::rust_guest("media_filter").display(),
        wasm_support::rust_guest("viewer_state").display(),
    );
    let emitted = dir.path().join("profiles.ndjson");
    for sink in [
        format!(
            "[sink]\ntype = \"file\"\npath = \"{}\"\n",
            emitted.display()
        ),
        sink_config(&pg, ""),
    ] {
        let cfg = write(
            dir.path(),
            "lv.toml",
            &format!("{}{transforms}{sink}", file_source(&input)),
        );
        let out = run(&cfg);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The newest profile of each viewer, as emitted.
    let mut newest: HashMap<String, serde_json::Value> = HashMap::new();
    let text = std::fs::read_to_string(&emitted).unwrap();
    for line in text.lines() {
        let p: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = p["viewer_id"].as_str().unwrap().to_string();
        let older = newest
            .get(&id)
            .is_some_and(|n| n["version"].as_f64() > p["version"].as_f64());
        if !older {
            newest.insert(id, p);
        }
    }
    assert!(
        !newest.is_empty() && text.lines().count() > newest.len(),
        "{text}"
    );
    let rows: HashMap<String, serde_json::Value> = pg
        .query("SELECT key, doc::text FROM viewer_profiles WHERE doc IS NOT NULL")
        .iter()
        .map(|r| {
            let (k, d) = r.split_once('|').unwrap();
            (k.to_string(), serde_json::from_str(d).unwrap())
        })
        .collect();
    assert_eq!(rows, newest);
    // The session's last state (the player paused after its ads), the version a string.
    let p = rows.values().next().unwrap();
    assert_eq!(
        (&p["status"], &p["media"]["title"], &p["session"]["ads"]),
        (&"paused".into(), &"Bugs Bunny".into(), &6.0.into()),
        "{p}"
    );
    assert!(p["version"].is_string(), "{p}");
}

/// A connection string as managed services hand them out (`sslmode=verify-full`,
/// `sslrootcert`): weir connects over TLS, verifying the server's certificate against that CA;
/// a CA that did not sign it fails the start with what to do about it.
#[test]
fn tls_is_verified_against_the_ca_the_connection_string_names() {
    let pg = Postgres::start_tls();
    let (ca, stranger) = pg.tls.clone().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = |ca: &std::path::Path| {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            pg.port,
            ca.display()
        )
    };
    let cfg = |name: &str, ca: &std::path::Path| {
        write(
            dir.path(),
            name,
            &format!(
                "[source]\ntype = \"stdin\"\n[sink]\ntype = \"postgres\"\nurl = \"{}\"\n",
                url(ca)
            ),
        )
    };
    let mut w = Logged::spawn(
        weir()
            .args(["run", "--progress=never"])
            .arg(cfg("ok.toml", &ca))
            .stdin(Stdio::piped())
            .stdout(Stdio::null()),
    );
    w.wait_for("the connection", WAIT, |l| {
        l.contains("postgres: connected").then_some(())
    });
    let encrypted = pg.query(
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'weir' AND s.ssl",
    );
    assert_eq!(encrypted, ["1"], "weir's connection is TLS");
    let mut stdin = w.child.stdin.take().unwrap();
    writeln!(stdin, "{}", profile("over-tls", 1, "playing")).unwrap();
    drop(stdin);
    let (status, log) = w.wait_exit(WAIT);
    assert!(status.success(), "{log}");
    assert_eq!(
        pg.query("SELECT doc->>'status' FROM weir_profiles WHERE key = 'over-tls'"),
        ["playing"]
    );

    let log = failed_start(&cfg("stranger.toml", &stranger));
    assert!(
        log.contains("the server's TLS certificate is not trusted"),
        "{log}"
    );
}
