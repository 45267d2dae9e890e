//! The `http` sink against the tests' own HTTP server (plain, TLS with a test CA and client
//! certificates, failing on purpose), through the real `weir` binary: batching and headers,
//! at-least-once under 5xx answers and dropped connections, each response rule, OAuth2's
//! refresh-token grant, Snowbridge's templating and GTM preview headers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

/// A request the server got.
#[derive(Debug, Clone)]
struct Seen {
    n: usize,
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// What the server answers.
enum Reply {
    Status(u16, String),
    /// Closes the connection without an answer.
    Drop,
    /// Answers after a while.
    Slow(Duration, u16),
}

type Behaviour = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(Seen, u16)>>>,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start(behaviour: Behaviour) -> Server {
        Server::start_tls(behaviour, None)
    }

    /// A server; with `tls`, HTTPS with that configuration.
    fn start_tls(behaviour: Behaviour, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(Seen, u16)>>> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let s2 = seen.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, count, behaviour, acceptor) = (
                    s2.clone(),
                    count.clone(),
                    behaviour.clone(),
                    acceptor.clone(),
                );
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (seen, count, behaviour) =
                            (seen.clone(), count.clone(), behaviour.clone());
                        async move { handle(req, &seen, &count, &behaviour).await }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        None => {
                            let _ = http
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(tcp).await {
                                let _ = http
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Server {
            addr,
            seen,
            _rt: rt,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }

    /// The requests to `path` (not the start-up probe) and the status each got.
    fn requests(&self, path: &str) -> Vec<(Seen, u16)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| s.path == path)
            .cloned()
            .collect()
    }

    /// The records of the requests to `path` answered with a 2xx.
    fn delivered(&self, path: &str) -> Vec<serde_json::Value> {
        self.requests(path)
            .into_iter()
            .filter(|(_, st)| (200..300).contains(st))
            .flat_map(|(s, _)| {
                let v: serde_json::Value =
                    serde_json::from_str(&s.body).unwrap_or_else(|e| panic!("{e}: {}", s.body));
                v.as_array().unwrap().clone()
            })
            .collect()
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    seen: &Mutex<Vec<(Seen, u16)>>,
    count: &AtomicUsize,
    behaviour: &Behaviour,
) -> Result<hyper::Response<Full<Bytes>>, std::io::Error> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if method == hyper::Method::HEAD {
        return Ok(hyper::Response::new(Full::new(Bytes::new())));
    }
    let s = Seen {
        n: count.fetch_add(1, Ordering::SeqCst),
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    };
    let (status, text) = match behaviour(&s) {
        Reply::Status(st, text) => (st, text),
        Reply::Slow(d, st) => {
            tokio::time::sleep(d).await;
            (st, String::new())
        }
        Reply::Drop => {
            seen.lock().unwrap().push((s, 0));
            return Err(std::io::Error::other("dropped on purpose"));
        }
    };
    seen.lock().unwrap().push((s, status));
    Ok(hyper::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(text)))
        .unwrap())
}

fn ok() -> Reply {
    Reply::Status(200, "ok".into())
}

/// `n` JSON records, `{"i": k, "pad": …}`.
fn json_lines(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50)))
        .collect()
}

fn ids(records: &[serde_json::Value]) -> Vec<u64> {
    let mut v: Vec<u64> = records.iter().filter_map(|r| r["i"].as_u64()).collect();
    v.sort();
    v
}

fn config(dir: &Path, input: &Path, sink: &str, extra: &str) -> PathBuf {
    let failures = dir.join("failures.ndjson");
    write(
        dir,
        "pipeline.toml",
        &format!(
            "{}[sink]\ntype = \"http\"\n{sink}\n[failure]\ntype = \"file\"\npath = \"{}\"\n\
             [retry.throttle]\ndelay = \"10ms\"\nmax_attempts = 1000\n{}{extra}",
            file_source(input),
            failures.display(),
            if extra.contains("[retry.transient]") {
                ""
            } else {
                "[retry.transient]\ndelay = \"10ms\"\nmax_attempts = 1000\n"
            }
        ),
    )
}

fn failures(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("failures.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn run_ok(config: &Path, env: &[(&str, &str)]) -> String {
    let out = weir()
        .arg("run")
        .arg(config)
        .arg("--progress=never")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "weir failed: {stderr}");
    stderr
}

#[test]
fn batches_are_json_arrays_with_the_configured_headers_and_credentials() {
    let server = Server::start(Arc::new(|_| ok()));
    let dir = tempfile::tempdir().unwrap();
    let mut input = json_lines(120);
    input.push_str("not json\n{\"unterminated\": \n");
    input.push_str(&format!("{{\"big\":\"{}\"}}\n", "y".repeat(3000)));
    let input = write(dir.path(), "in.ndjson", &input);
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 25\nmax_message_bytes = 2000\ninclude_timing_headers = true\n\
         timeout = \"2s\"\nrejection_threshold = \"500ms\"\n\
         [sink.headers]\nX-Team = \"media\"\nX-Api-Key = {{ env = \"WEIR_TEST_API_KEY\" }}\n\
         [sink.basic_auth]\nusername = \"weir\"\npassword = {{ env = \"WEIR_TEST_HTTP_PASSWORD\" }}\n",
        server.url("http", "/events?key=s3cr3t-query")
    );
    let cfg = config(dir.path(), &input, &sink, "");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let stderr = run_ok(
        &cfg,
        &[
            ("WEIR_TEST_API_KEY", "key-0123456789"),
            ("WEIR_TEST_HTTP_PASSWORD", "hunter2-password"),
        ],
    );
    let reqs = server.requests("/events");
    assert_eq!(
        ids(&server.delivered("/events")),
        (0..120).collect::<Vec<_>>()
    );
    assert!(
        reqs.len() >= 5,
        "25 records per request at most: {}",
        reqs.len()
    );
    for (r, _) in &reqs {
        let n = serde_json::from_str::<serde_json::Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .len();
        assert!(n <= 25, "{n} records in one request");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-team"], "media");
        assert_eq!(r.headers["x-api-key"], "key-0123456789");
        // base64("weir:hunter2-password")
        assert_eq!(
            r.headers["authorization"],
            "Basic d2VpcjpodW50ZXIyLXBhc3N3b3Jk"
        );
        let at: i64 = r.headers["rejection-timestamp"].parse().unwrap();
        assert!(
            at >= before + 1500 && at < before + 1500 + 60_000,
            "{at} vs {before}"
        );
    }
    let bad = failures(dir.path());
    assert_eq!(bad.len(), 3, "{bad:?}");
    let text = serde_json::to_string(&bad).unwrap();
    assert!(text.contains("is not JSON"), "{text}");
    assert!(text.contains("size_violation"), "{text}");
    for secret in ["hunter2-password", "key-0123456789", "s3cr3t-query"] {
        assert!(!stderr.contains(secret), "{secret} in the log: {stderr}");
    }
}

#[test]
fn nothing_is_lost_under_5xx_answers_and_dropped_connections() {
    // Of every three requests one gets a 503, one is dropped without an answer.
    let server = Server::start(Arc::new(|s| match s.n % 3 {
        0 => Reply::Status(503, "busy".into()),
        1 => Reply::Drop,
        _ => ok(),
    }));
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.ndjson", &json_lines(2000));
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 40\nconcurrency = 4\n",
        server.url("http", "/e")
    );
    let cfg = config(dir.path(), &input, &sink, "[batch]\nmax_records = 200\n");
    run_ok(&cfg, &[]);
    let got = ids(&server.delivered("/e"));
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(unique, (0..2000).collect::<Vec<_>>(), "every record lands");
    let reqs = server.requests("/e");
    let failed = reqs.iter().filter(|(_, st)| *st != 200).count();
    assert!(
        failed * 3 >= reqs.len() && failed > 10,
        "{failed} of {} failed",
        reqs.len()
    );
    // A retried batch skips what landed: a record lands twice only if its own request's answer
    // was lost, which this server never does once it answers 200.
    assert_eq!(got.len(), 2000, "no record delivered twice");
    assert!(failures(dir.path()).is_empty());
}

#[test]
fn response_rules_send_invalid_records_to_failures_and_retry_throttling() {
    let throttled = Arc::new(AtomicUsize::new(0));
    let t2 = throttled.clone();
    let server = Server::start(Arc::new(move |s| {
        if s.body.contains("\"kind\":\"invalid\"") {
            Reply::Status(
                400,
                "error: Invalid value for 'purchase' field (secret detail)".into(),
            )
        } else if s.body.contains("\"kind\":\"soft\"") {
            Reply::Status(200, "{\"status\":\"partial failure\"}".into())
        } else if s.body.contains("\"kind\":\"throttle\"") && t2.fetch_add(1, Ordering::SeqCst) < 3
        {
            Reply::Status(429, "slow down".into())
        } else if s.body.contains("\"kind\":\"slow\"") && s.n < 12 {
            Reply::Slow(Duration::from_millis(1500), 200)
        } else {
            ok()
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let lines: String = ["plain", "invalid", "soft", "throttle", "slow", "plain"]
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{{\"i\":{i},\"kind\":\"{k}\"}}\n"))
        .collect();
    let input = write(dir.path(), "in.ndjson", &lines);
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 1\ntimeout = \"300ms\"\n\
         [[sink.response_rules]]\ntype = \"invalid\"\nhttp_codes = [400]\nbody = \"Invalid value for 'purchase' field\"\n\
         [[sink.response_rules]]\ntype = \"invalid\"\nhttp_codes = [200]\nbody = \"partial failure\"\n\
         [[sink.response_rules]]\ntype = \"throttle\"\nhttp_codes = [429]\n\
         [[sink.response_rules]]\ntype = \"throttle\"\nhttp_codes = [0]\nbody = \"context deadline exceeded\"\n",
        server.url("http", "/e")
    );
    let cfg = config(
        dir.path(),
        &input,
        &sink,
        "[retry.transient]\nmax_attempts = 1\n",
    );
    let out = weir()
        .arg("run")
        .arg(&cfg)
        .arg("--progress=never")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Transient failures are not allowed a second try here: only the throttle rules kept the
    // throttled and the timed-out records alive. Record 2 was answered 200, but with the body
    // that a 2xx rule makes a refusal.
    // (A request the client gave up on may still be answered 200 by this server: dedup.)
    let mut got = ids(&server.delivered("/e"));
    got.dedup();
    assert_eq!(got, vec![0, 2, 3, 4, 5]);
    assert!(
        stderr.contains("context deadline exceeded"),
        "the timeout was retried as throttling: {stderr}"
    );
    assert!(throttled.load(Ordering::SeqCst) >= 4);
    let bad = failures(dir.path());
    let text = serde_json::to_string(&bad).unwrap();
    assert_eq!(bad.len(), 2, "{text}");
    assert!(
        text.contains("400 Bad Request: Invalid value for 'purchase' field"),
        "{text}"
    );
    assert!(text.contains("200 OK: partial failure"), "{text}");
    assert!(
        !text.contains("secret detail"),
        "the body is not quoted by default: {text}"
    );
}

#[test]
fn setup_and_fatal_rules_stop_the_pipeline_without_acknowledging() {
    for (rule, code) in [("setup", 401), ("fatal", 413)] {
        let server = Server::start(Arc::new(move |_| Reply::Status(code, "no".into())));
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), "in.ndjson", &json_lines(5));
        let sink = format!(
            "url = \"{}\"\n[[sink.response_rules]]\ntype = \"{rule}\"\nhttp_codes = [{code}]\n",
            server.url("http", "/e")
        );
        let cfg = config(
            dir.path(),
            &input,
            &sink,
            "[retry.setup]\ndelay = \"10ms\"\nmax_attempts = 2\n",
        );
        let out = weir()
            .arg("run")
            .arg(&cfg)
            .arg("--progress=never")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{rule}: {stderr}");
        assert!(
            stderr.contains(&format!("response status {code}")),
            "{rule}: {stderr}"
        );
        let tries = server.requests("/e").len();
        match rule {
            "setup" => assert!(tries >= 2, "retried under [retry.setup]: {tries}"),
            _ => assert_eq!(tries, 1, "a fatal answer is not retried"),
        }
        assert!(
            failures(dir.path()).is_empty(),
            "nothing refused, nothing acknowledged"
        );
    }
}

#[test]
fn oauth2_tokens_are_refreshed_before_they_expire_and_after_a_401() {
    // The token endpoint wants the client credentials in the form (it refuses the Basic
    // header, as some do), rotates refresh tokens, and issues tokens that live 11 s: 1 s more
    // than the margin weir renews them within, so every second or so a new one.
    let issued: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let grants: Arc<Mutex<Vec<String>>> = Arc::default();
    let (i2, g2) = (issued.clone(), grants.clone());
    let server = Server::start(Arc::new(move |s| {
        if s.path == "/token" {
            g2.lock().unwrap().push(s.body.clone());
            let form: HashMap<String, String> = form_urlencoded::parse(s.body.as_bytes())
                .into_owned()
                .collect();
            if s.headers.contains_key("authorization") {
                return Reply::Status(401, "{\"error\":\"invalid_client\"}".into());
            }
            let mut issued = i2.lock().unwrap();
            let expected = format!("refresh-{}", issued.len());
            if form.get("client_id").map(String::as_str) != Some("weir-client")
                || form.get("client_secret").map(String::as_str) != Some("client-s3cret")
                || form.get("grant_type").map(String::as_str) != Some("refresh_token")
                || form.get("refresh_token") != Some(&expected)
            {
                return Reply::Status(400, "{\"error\":\"invalid_grant\"}".into());
            }
            let token = format!("token-{}", issued.len());
            issued.push((token.clone(), Instant::now() + Duration::from_secs(11)));
            return Reply::Status(
                200,
                format!(
                    "{{\"access_token\":\"{token}\",\"token_type\":\"bearer\",\"expires_in\":11,\"refresh_token\":\"refresh-{}\"}}",
                    issued.len()
                ),
            );
        }
        let issued = i2.lock().unwrap();
        let auth = s.headers.get("authorization").cloned().unwrap_or_default();
        let valid = issued
            .iter()
            .any(|(t, until)| auth == format!("Bearer {t}") && s.at < *until);
        // The third token is revoked as soon as it is first used.
        if !valid || auth == "Bearer token-2" {
            return Reply::Status(401, "unauthorized".into());
        }
        Reply::Slow(Duration::from_millis(100), 200)
    }));
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.ndjson", &json_lines(40));
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 1\nconcurrency = 1\n\
         [sink.oauth2]\nclient_id = \"weir-client\"\nclient_secret = {{ env = \"WEIR_TEST_CLIENT_SECRET\" }}\n\
         refresh_token = \"refresh-0\"\ntoken_url = \"{}\"\n",
        server.url("http", "/e"),
        server.url("http", "/token")
    );
    let cfg = config(dir.path(), &input, &sink, "");
    let stderr = run_ok(&cfg, &[("WEIR_TEST_CLIENT_SECRET", "client-s3cret")]);
    assert_eq!(ids(&server.delivered("/e")), (0..40).collect::<Vec<_>>());
    let n = issued.lock().unwrap().len();
    // 40 requests of ≥ 100 ms: ≥ 4 s, so ≥ 3 tokens by expiry, one more for the revoked one.
    assert!(n >= 4, "{n} tokens issued");
    let refused = server
        .requests("/e")
        .iter()
        .filter(|(_, st)| *st == 401)
        .count();
    assert_eq!(
        refused, 1,
        "only the revoked token is refused: weir renews before expiry"
    );
    assert!(
        !stderr.contains("client-s3cret") && !stderr.contains("token-1"),
        "{stderr}"
    );
}

/// A CA, a server certificate for localhost, and a client certificate, all in `dir`.
struct Certs {
    ca: PathBuf,
    server: (String, String),
    client_cert: PathBuf,
    client_key: PathBuf,
    ca_pem: String,
}

fn certs(dir: &Path) -> Certs {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "weir http test CA");
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let leaf = |sans: &[&str], usage: ExtendedKeyUsagePurpose| {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "leaf");
        p.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let client = leaf(&[], ExtendedKeyUsagePurpose::ClientAuth);
    Certs {
        ca: write(dir, "ca.pem", &issuer.pem()),
        ca_pem: issuer.pem(),
        server,
        client_cert: write(dir, "client.pem", &client.0),
        client_key: write(dir, "client.key", &client.1),
    }
}

fn tls_config(c: &Certs, client_auth: bool) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = if client_auth {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(c.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        b.with_client_cert_verifier(v)
    } else {
        b.with_no_client_auth()
    };
    let cert = CertificateDer::from_pem_slice(c.server.0.as_bytes()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(c.server.1.as_bytes()).unwrap();
    Arc::new(b.with_single_cert(vec![cert], key).unwrap())
}

#[test]
fn tls_with_a_test_ca_and_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let c = certs(dir.path());
    let server = Server::start_tls(Arc::new(|_| ok()), Some(tls_config(&c, true)));
    let input = write(dir.path(), "in.ndjson", &json_lines(30));
    let url = server.url("https", "/e");
    let mtls = format!(
        "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        c.ca.display(),
        c.client_cert.display(),
        c.client_key.display()
    );
    let cfg = config(
        dir.path(),
        &input,
        &format!("url = \"{url}\"\n[sink.tls]\n{mtls}"),
        "",
    );
    run_ok(&cfg, &[]);
    assert_eq!(ids(&server.delivered("/e")), (0..30).collect::<Vec<_>>());

    // Verification is on by default: without the test CA, the system's CAs do not know the
    // server, and without a client certificate the server refuses weir. Both fail the start.
    for (tls, why) in [
        (String::new(), "certificate"),
        (
            format!("[sink.tls]\nca_file = \"{}\"\n", c.ca.display()),
            "",
        ),
    ] {
        let cfg = config(dir.path(), &input, &format!("url = \"{url}\"\n{tls}"), "");
        let out = weir()
            .arg("run")
            .arg(&cfg)
            .arg("--progress=never")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains("does not answer") && stderr.contains(why),
            "{stderr}"
        );
    }
    assert_eq!(
        server.delivered("/e").len(),
        30,
        "nothing sent by the failed starts"
    );

    // verify = false takes any certificate (the server here does not ask for a client's).
    let open = Server::start_tls(Arc::new(|_| ok()), Some(tls_config(&c, false)));
    let cfg = config(
        dir.path(),
        &input,
        &format!(
            "url = \"{}\"\n[sink.tls]\nverify = false\n",
            open.url("https", "/e")
        ),
        "",
    );
    let stderr = run_ok(&cfg, &[]);
    assert!(
        stderr.contains("verify = false"),
        "a warning says so: {stderr}"
    );
    assert_eq!(open.delivered("/e").len(), 30);
}

#[test]
fn templates_render_the_batch_as_snowbridge_docs_show() {
    let server = Server::start(Arc::new(|_| ok()));
    let dir = tempfile::tempdir().unwrap();
    let tmpl = write(
        dir.path(),
        "request.tmpl",
        include_str!("../crates/core/src/sinks/testdata/http-template-full-example.file"),
    );
    let mut lines: String = (0..7)
        .map(|i| format!("{{\"foo\":{{\"n\":{i},\"tag\":\"<b>\"}}}}\n"))
        .collect();
    // Not JSON, in the middle of a request: refused alone, its neighbours still sent.
    lines.insert_str(lines.find('\n').unwrap() + 1, "not json\n");
    let input = write(dir.path(), "in.ndjson", &lines);
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 3\ntemplate_file = \"{}\"\n",
        server.url("http", "/t"),
        tmpl.display()
    );
    let cfg = config(dir.path(), &input, &sink, "");
    run_ok(&cfg, &[("SECRET_KEY", "the-key")]);
    let mut ns = Vec::new();
    for (r, _) in server.requests("/t") {
        let v: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        assert_eq!(v["secret_key"], "the-key");
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 3);
        assert!(
            r.body.contains("\\u003cb\\u003e"),
            "prettyPrint escapes HTML as Go does: {}",
            r.body
        );
        ns.extend(data.iter().map(|d| d["n"].as_u64().unwrap()));
    }
    ns.sort();
    assert_eq!(ns, (0..7).collect::<Vec<_>>());
    let bad = failures(dir.path());
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(serde_json::to_string(&bad)
        .unwrap()
        .contains("template needs"));
}

#[test]
fn gtm_preview_records_go_alone_with_their_header() {
    let server = Server::start(Arc::new(|_| ok()));
    let dir = tempfile::tempdir().unwrap();
    let testdata = repo_root().join("runtime/crates/core/src/transforms/testdata");
    let with = std::fs::read_to_string(testdata.join("gtmss_with.tsv")).unwrap();
    let without = std::fs::read_to_string(testdata.join("gtmss_without.tsv")).unwrap();
    let (with, without) = (with.trim_end_matches('\n'), without.trim_end_matches('\n'));
    let lines = format!("{without}\n{with}\n{without}\n");
    let input = write(dir.path(), "in.tsv", &lines);
    let sink = format!(
        "url = \"{}\"\ndynamic_headers = true\n",
        server.url("http", "/g")
    );
    let cfg = config(
        dir.path(),
        &input,
        &sink,
        "[[transforms]]\ntype = \"spGtmssPreview\"\nexpiry_seconds = 100000000000\n\
         [[transforms]]\ntype = \"spEnrichedToJson\"\n",
    );
    run_ok(&cfg, &[]);
    let reqs = server.requests("/g");
    let (alone, batched): (Vec<_>, Vec<_>) = reqs
        .iter()
        .partition(|(r, _)| r.headers.contains_key("x-gtm-server-preview"));
    assert_eq!(alone.len(), 1, "{reqs:?}");
    let n = |r: &Seen| {
        serde_json::from_str::<serde_json::Value>(&r.body)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(n(&alone[0].0), 1);
    assert_eq!(batched.iter().map(|(r, _)| n(r)).sum::<usize>(), 2);
    assert!(!alone[0].0.headers["x-gtm-server-preview"].is_empty());
}

/// `[monitoring.webhook]`: a heartbeat at start, an alert as soon as a sink fails with a setup
/// error (here a `setup` response rule), repeated while it lasts, and heartbeats again once the
/// sink writes.
#[test]
fn webhook_monitoring_alerts_on_setup_errors_and_resumes_heartbeats() {
    let refused = Arc::new(AtomicUsize::new(0));
    let r2 = refused.clone();
    let server = Server::start(Arc::new(move |s| {
        if s.path == "/hook" {
            return ok();
        }
        if r2.fetch_add(1, Ordering::SeqCst) < 3 {
            return Reply::Status(401, "bad credentials".into());
        }
        Reply::Slow(Duration::from_millis(300), 200)
    }));
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), "in.ndjson", &json_lines(6));
    let sink = format!(
        "url = \"{}\"\n[[sink.response_rules]]\ntype = \"setup\"\nhttp_codes = [401]\n",
        server.url("http", "/e")
    );
    let cfg = config(
        dir.path(),
        &input,
        &sink,
        &format!(
            "[batch]\nmax_records = 1\n[retry.setup]\ndelay = \"400ms\"\nmax_attempts = 10\n\
             [monitoring.webhook]\nendpoint = \"{}\"\nheartbeat_interval = \"250ms\"\ntags = {{ pipeline = \"test\" }}\n",
            server.url("http", "/hook")
        ),
    );
    run_ok(&cfg, &[]);
    assert_eq!(ids(&server.delivered("/e")).len(), 6);
    let events: Vec<serde_json::Value> = server
        .requests("/hook")
        .into_iter()
        .map(|(r, _)| serde_json::from_str(&r.body).unwrap())
        .collect();
    let kind = |e: &serde_json::Value| {
        e["schema"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap()
            .to_string()
    };
    let kinds: Vec<String> = events.iter().map(kind).collect();
    assert_eq!(kinds[0], "heartbeat", "{kinds:?}");
    let first_alert = kinds.iter().position(|k| k == "alert").expect("an alert");
    let last_alert = kinds.iter().rposition(|k| k == "alert").unwrap();
    assert!(
        kinds[last_alert..].iter().any(|k| k == "heartbeat"),
        "heartbeats resume after the sink recovers: {kinds:?}"
    );
    let alert = &events[first_alert];
    assert!(
        alert["data"]["message"]
            .as_str()
            .unwrap()
            .contains("response status 401"),
        "{alert}"
    );
    for e in &events {
        assert_eq!(e["data"]["appName"], "weir");
        assert_eq!(e["data"]["tags"]["pipeline"], "test");
    }
}

/// `[bad_rows] format = "event_forwarding"` (Snowbridge's `failure_parser`): a record the
/// endpoint refuses is an `api` error with the HTTP status as its code, one the template
/// cannot take a `template` error; the payload is the record as read, before the transform.
#[test]
fn event_forwarding_failures_carry_the_status_and_the_record_as_read() {
    let server = Server::start(Arc::new(|s| {
        if s.body.contains("\"kind\":\"invalid\"") {
            Reply::Status(422, "bad purchase".into())
        } else {
            ok()
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let tmpl = write(dir.path(), "t.tmpl", "{{ prettyPrint . }}");
    // Base64 in, decoded by a transform: the bad rows' payload is the base64 as read.
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let lines = [r#"{"kind":"ok"}"#, r#"{"kind":"invalid"}"#, "not json"]
        .map(b64)
        .join("\n");
    let input = write(dir.path(), "in.txt", &(lines + "\n"));
    let sink = format!(
        "url = \"{}\"\nmax_batch_messages = 1\ntemplate_file = \"{}\"\n\
         [[sink.response_rules]]\ntype = \"invalid\"\nhttp_codes = [422]\n",
        server.url("http", "/e"),
        tmpl.display()
    );
    let cfg = config(
        dir.path(),
        &input,
        &sink,
        "[[transforms]]\ntype = \"base64Decode\"\n[bad_rows]\nformat = \"event_forwarding\"\n",
    );
    run_ok(&cfg, &[]);
    let mut bad = failures(dir.path());
    bad.sort_by_key(|r| {
        r["data"]["failure"]["errorType"]
            .as_str()
            .unwrap()
            .to_string()
    });
    let got: Vec<(&str, &str, &str, &str)> = bad
        .iter()
        .map(|r| {
            let f = &r["data"]["failure"];
            (
                f["errorType"].as_str().unwrap(),
                f["errorCode"].as_str().unwrap(),
                r["data"]["payload"].as_str().unwrap(),
                f["latestState"].as_str().unwrap(),
            )
        })
        .collect();
    let (invalid, not_json) = (b64(r#"{"kind":"invalid"}"#), b64("not json"));
    assert_eq!(
        got,
        [
            ("api", "422", invalid.as_str(), r#"{"kind":"invalid"}"#),
            ("template", "", not_json.as_str(), "not json"),
        ],
        "{bad:?}"
    );
    assert!(bad.iter().all(|r| r["schema"]
        == "iglu:com.snowplowanalytics.snowplow.badrows/event_forwarding_error/jsonschema/1-0-0"));
    assert!(bad[0]["data"]["failure"]["errorMessage"]
        .as_str()
        .unwrap()
        .contains("422"));
}
