//! Support for the AWS tests: a real emulator process (moto's server, installed by
//! `runtime/tests/setup.sh`), SDK clients for it, and a fault-injecting HTTP proxy that produces
//! what emulators never do: throttling, BatchWriteItem UnprocessedItems, partial PutRecords and
//! SendMessageBatch failures and refused credentials.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::common::installed;

/// Environment for weir processes talking to the emulator: static credentials, a region, and no
/// instance-metadata lookups.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The weir binary with the emulator's credentials and region in its environment.
pub fn weir_aws() -> Command {
    let mut c = super::common::weir();
    for (k, v) in AWS_ENV {
        c.env(k, v);
    }
    c
}

/// A moto server on 127.0.0.1, stopped (by PID) when dropped.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Starts moto on a port the OS picks (`-p 0`) and learns it from the server's start-up line
    /// (` * Running on http://127.0.0.1:PORT`): no free-port-then-release race with other tests.
    pub fn start() -> Moto {
        let server = installed("WEIR_MOTO_SERVER", "aws-emulators/venv/bin/moto_server");
        // The venv's moto with Kinesis resharding fixed (see moto_server.py); a server given
        // through WEIR_MOTO_SERVER runs as it is.
        let mut command = match server.with_file_name("python") {
            python if std::env::var_os("WEIR_MOTO_SERVER").is_none() && python.is_file() => {
                let mut c = Command::new(python);
                c.arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/aws/moto_server.py"
                ));
                c
            }
            _ => Command::new(server),
        };
        let mut child = command
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("moto_server starts");
        // The server logs every request to stderr: keep reading it, keep the start for errors.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut start = Vec::new();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let Some(t) = &tx else { continue };
                let port = line
                    .split("Running on http://127.0.0.1:")
                    .nth(1)
                    .and_then(|p| p.trim().parse::<u16>().ok());
                match port {
                    Some(p) => {
                        let _ = t.send(Ok(p));
                        tx = None;
                    }
                    None => start.push(line),
                }
            }
            if let Some(t) = tx {
                let _ = t.send(Err(start.join("\n")));
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(port)) => port,
            Ok(Err(log)) => panic!("moto_server exited before listening:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("moto_server did not say where it listens within 60 s");
            }
        };
        Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "test", "test", None, None, "test",
        ))
        .load()
        .await
}

pub async fn dynamodb(endpoint: &str) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk(endpoint).await)
}

/// A table (string partition key `key`) on the emulator, created up front so that every request
/// through a fault-injecting proxy is a write; returns a client of the emulator itself.
pub async fn dynamodb_table(endpoint: &str, table: &str, key: &str) -> aws_sdk_dynamodb::Client {
    let client = dynamodb(endpoint).await;
    let cfg = serde_json::from_value(json!({ "table": table, "partition_key": key })).unwrap();
    weir_core::sinks::dynamodb::create_table(&client, &cfg)
        .await
        .unwrap();
    client
}

pub async fn kinesis(endpoint: &str) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::new(&sdk(endpoint).await)
}

/// Every item of a table.
pub async fn scan_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        out.extend(page.items().iter().cloned());
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => break,
        }
    }
    out
}

/// Creates a stream and waits until it is active.
pub async fn create_stream(client: &aws_sdk_kinesis::Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    for _ in 0..100 {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .is_some_and(|s| s.stream_status().as_str() == "ACTIVE")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} did not become active");
}

/// Every record of one shard, from the start, in order: (sequence number, data).
pub async fn read_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
) -> Vec<(String, String)> {
    let mut it = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let mut out = Vec::new();
    loop {
        let r = client
            .get_records()
            .shard_iterator(&it)
            .send()
            .await
            .unwrap();
        if r.records().is_empty() {
            return out;
        }
        for rec in r.records() {
            out.push((
                rec.sequence_number().to_string(),
                String::from_utf8(rec.data().as_ref().to_vec()).unwrap(),
            ));
        }
        match r.next_shard_iterator {
            Some(n) => it = n,
            None => return out,
        }
    }
}

/// Every record of every shard of a stream, from the start: (shard, data).
pub async fn read_stream(client: &aws_sdk_kinesis::Client, name: &str) -> Vec<(String, String)> {
    let shards = client.list_shards().stream_name(name).send().await.unwrap();
    let mut out = Vec::new();
    for sh in shards.shards() {
        for (_, data) in read_shard(client, name, sh.shard_id()).await {
            out.push((sh.shard_id().to_string(), data));
        }
    }
    out
}

/// What the proxy injects and what it saw. Budgets count down as faults are injected.
#[derive(Default)]
pub struct Faults {
    /// Write requests answered with a throttling error instead of being forwarded (reads, such
    /// as a component's start-up check, go through).
    pub throttle: AtomicUsize,
    /// BatchWriteItem items held back and returned as UnprocessedItems (every other item).
    pub unprocessed: AtomicUsize,
    /// PutRecords records held back and reported as failed (every other record).
    pub failed_records: AtomicUsize,
    /// SendMessageBatch entries held back and reported as failed, not the sender's fault (every
    /// other entry).
    pub failed_messages: AtomicUsize,
    /// After this many PutRecords requests went through, every further one is refused with an
    /// InvalidArgumentException (a request Kinesis will never accept): a sink failing for good
    /// in mid-run.
    pub refuse_put_records_after: Option<usize>,
    /// PutRecords requests let through so far.
    pub put_records_passed: AtomicUsize,
    pub injected_refusals: AtomicUsize,
    /// Every request answered as AWS answers unknown credentials (400
    /// UnrecognizedClientException) instead of being forwarded.
    pub refuse_credentials: std::sync::atomic::AtomicBool,
    /// Counters of what was injected.
    pub injected_throttles: AtomicUsize,
    pub injected_unprocessed: AtomicUsize,
    pub injected_failed_records: AtomicUsize,
    pub injected_failed_messages: AtomicUsize,
    /// Every request forwarded to the emulator: (X-Amz-Target, body as sent on).
    pub forwarded: Mutex<Vec<(String, Value)>>,
    /// Every request: its operation (`X-Amz-Target`, or `Action` of a query-protocol request
    /// such as STS's) and the access key id that signed it.
    pub signed_by: Mutex<Vec<(String, String)>>,
}

impl Faults {
    pub fn requests(&self, target_suffix: &str) -> Vec<Value> {
        self.forwarded
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with(target_suffix))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// A fault-injecting HTTP/1.1 proxy in front of `upstream` (host:port), on 127.0.0.1.
pub struct Proxy {
    pub endpoint: String,
    pub faults: Arc<Faults>,
}

impl Proxy {
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let faults = Arc::new(faults);
        let f = faults.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (f, up) = (f.clone(), upstream.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &f);
                });
            }
        });
        Proxy { endpoint, faults }
    }
}

struct Message {
    head: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn encode(&self, body: &[u8], connection: &str) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.head);
        for (k, v) in &self.headers {
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "content-length" | "connection" | "transfer-encoding" | "x-amz-crc32"
            ) {
                continue;
            }
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        ));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }
}

fn read_message(r: &mut impl BufRead, until_eof: bool) -> std::io::Result<Option<Message>> {
    let mut head = String::new();
    if r.read_line(&mut head)? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut m = Message {
        head: head.trim_end().to_string(),
        headers,
        body: Vec::new(),
    };
    if let Some(len) = m
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        m.body = vec![0; len];
        r.read_exact(&mut m.body)?;
    } else if m
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            m.body.extend_from_slice(&chunk[..n]);
        }
    } else if until_eof {
        r.read_to_end(&mut m.body)?;
    }
    Ok(Some(m))
}

/// Whether an `X-Amz-Target` is a write (what the throttling fault answers).
fn is_write(target: &str) -> bool {
    let op = target.rsplit('.').next().unwrap_or("");
    matches!(
        op,
        "BatchWriteItem"
            | "PutItem"
            | "UpdateItem"
            | "DeleteItem"
            | "PutRecords"
            | "PutRecord"
            | "SendMessageBatch"
    )
}

fn serve(client: TcpStream, upstream: &str, f: &Faults) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    while let Some(req) = read_message(&mut reader, false)? {
        let target = req.header("x-amz-target").unwrap_or("").to_string();
        {
            let op = if target.is_empty() {
                form_urlencoded::parse(&req.body)
                    .find(|(k, _)| k == "Action")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            } else {
                target.clone()
            };
            let key = req
                .header("authorization")
                .and_then(|a| a.split("Credential=").nth(1))
                .and_then(|c| c.split('/').next())
                .unwrap_or("")
                .to_string();
            f.signed_by.lock().unwrap().push((op, key));
        }
        let take = |budget: &AtomicUsize| {
            budget
                .fetch_update(SeqCst, SeqCst, |b| b.checked_sub(1))
                .is_ok()
        };
        if f.refuse_credentials.load(SeqCst) {
            let body = json!({
                "__type": "com.amazon.coral.service#UnrecognizedClientException",
                "message": "The security token included in the request is invalid."
            })
            .to_string();
            let resp = Message {
                head: "HTTP/1.1 400 Bad Request".into(),
                headers: vec![
                    ("Content-Type".into(), "application/x-amz-json-1.0".into()),
                    (
                        "x-amzn-ErrorType".into(),
                        "UnrecognizedClientException:".into(),
                    ),
                ],
                body: Vec::new(),
            };
            client.write_all(&resp.encode(body.as_bytes(), "keep-alive"))?;
            continue;
        }
        if target.ends_with(".PutRecords") {
            if let Some(limit) = f.refuse_put_records_after {
                if f.put_records_passed.load(SeqCst) >= limit {
                    f.injected_refusals.fetch_add(1, SeqCst);
                    let body = json!({"__type": "com.amazonaws#InvalidArgumentException",
                        "message": "injected: this request will never be accepted"})
                    .to_string();
                    let resp = Message {
                        head: "HTTP/1.1 400 Bad Request".into(),
                        headers: vec![("Content-Type".into(), "application/x-amz-json-1.1".into())],
                        body: Vec::new(),
                    };
                    client.write_all(&resp.encode(body.as_bytes(), "keep-alive"))?;
                    continue;
                }
                f.put_records_passed.fetch_add(1, SeqCst);
            }
        }
        if is_write(&target) && take(&f.throttle) {
            f.injected_throttles.fetch_add(1, SeqCst);
            let code = if target.starts_with("Kinesis") {
                "ProvisionedThroughputExceededException"
            } else {
                "ThrottlingException"
            };
            let body =
                json!({"__type": format!("com.amazonaws#{code}"), "message": "injected throttling"})
                    .to_string();
            let resp = Message {
                head: "HTTP/1.1 400 Bad Request".into(),
                headers: vec![("Content-Type".into(), "application/x-amz-json-1.0".into())],
                body: Vec::new(),
            };
            client.write_all(&resp.encode(body.as_bytes(), "keep-alive"))?;
            continue;
        }
        let mut body: Option<Value> = serde_json::from_slice(&req.body).ok();
        // Hold items back before forwarding; add them to the response afterwards.
        let mut held_items: Vec<(String, Vec<Value>)> = Vec::new();
        let mut failed_at: Vec<(usize, Value)> = Vec::new();
        let mut failed_ids: Vec<Value> = Vec::new();
        if let Some(b) = body.as_mut() {
            if target.ends_with(".BatchWriteItem") {
                if let Some(tables) = b["RequestItems"].as_object_mut() {
                    for (table, items) in tables.iter_mut() {
                        let all = std::mem::take(items.as_array_mut().unwrap());
                        let (mut keep, mut hold) = (Vec::new(), Vec::new());
                        for (i, it) in all.into_iter().enumerate() {
                            if i % 2 == 1 && take(&f.unprocessed) {
                                hold.push(it);
                            } else {
                                keep.push(it);
                            }
                        }
                        f.injected_unprocessed.fetch_add(hold.len(), SeqCst);
                        *items = Value::Array(keep);
                        if !hold.is_empty() {
                            held_items.push((table.clone(), hold));
                        }
                    }
                    tables.retain(|_, v| !v.as_array().unwrap().is_empty());
                }
            } else if target.ends_with(".PutRecords") {
                let all = std::mem::take(b["Records"].as_array_mut().unwrap());
                let mut keep = Vec::new();
                for (i, r) in all.into_iter().enumerate() {
                    if i % 2 == 1 && take(&f.failed_records) {
                        failed_at.push((i, r));
                    } else {
                        keep.push(r);
                    }
                }
                f.injected_failed_records.fetch_add(failed_at.len(), SeqCst);
                b["Records"] = Value::Array(keep);
            } else if target.ends_with(".SendMessageBatch") {
                let all = std::mem::take(b["Entries"].as_array_mut().unwrap());
                let mut keep = Vec::new();
                for (i, e) in all.into_iter().enumerate() {
                    if i % 2 == 1 && take(&f.failed_messages) {
                        failed_ids.push(e["Id"].clone());
                    } else {
                        keep.push(e);
                    }
                }
                f.injected_failed_messages
                    .fetch_add(failed_ids.len(), SeqCst);
                b["Entries"] = Value::Array(keep);
            }
        }
        // A BatchWriteItem whose every item was held back is not forwarded at all.
        let skip = body.as_ref().is_some_and(|b| {
            target.ends_with(".BatchWriteItem")
                && b["RequestItems"].as_object().is_some_and(|t| t.is_empty())
        });
        let mut resp_body: Value;
        let resp = if skip {
            resp_body = json!({"UnprocessedItems": {}});
            Message {
                head: "HTTP/1.1 200 OK".into(),
                headers: vec![("Content-Type".into(), "application/x-amz-json-1.0".into())],
                body: Vec::new(),
            }
        } else {
            let sent = match &body {
                Some(b) if !target.is_empty() => serde_json::to_vec(b).unwrap(),
                _ => req.body.clone(),
            };
            if let Some(b) = &body {
                f.forwarded
                    .lock()
                    .unwrap()
                    .push((target.clone(), b.clone()));
            }
            let mut up = TcpStream::connect(upstream)?;
            up.write_all(&req.encode(&sent, "close"))?;
            let mut ur = BufReader::new(up);
            let resp = read_message(&mut ur, true)?.expect("upstream answered");
            resp_body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
            if held_items.is_empty() && failed_at.is_empty() && failed_ids.is_empty() {
                client.write_all(&resp.encode(&resp.body, "keep-alive"))?;
                continue;
            }
            resp
        };
        if !held_items.is_empty() {
            if !resp_body["UnprocessedItems"].is_object() {
                resp_body["UnprocessedItems"] = json!({});
            }
            for (table, items) in held_items {
                let slot = &mut resp_body["UnprocessedItems"][&table];
                if !slot.is_array() {
                    *slot = json!([]);
                }
                slot.as_array_mut().unwrap().extend(items);
            }
        }
        if !failed_at.is_empty() {
            let results = std::mem::take(resp_body["Records"].as_array_mut().unwrap());
            let mut results = results.into_iter();
            let total = results.len() + failed_at.len();
            let mut merged = Vec::with_capacity(total);
            let mut failed = failed_at.into_iter().peekable();
            for i in 0..total {
                if failed.peek().is_some_and(|(at, _)| *at == i) {
                    failed.next();
                    merged.push(json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "injected"}));
                } else {
                    merged.push(results.next().unwrap());
                }
            }
            let n = merged
                .iter()
                .filter(|r| r.get("ErrorCode").is_some())
                .count();
            resp_body["Records"] = Value::Array(merged);
            resp_body["FailedRecordCount"] = json!(n);
        }
        if !failed_ids.is_empty() {
            if !resp_body["Failed"].is_array() {
                resp_body["Failed"] = json!([]);
            }
            let failed = resp_body["Failed"].as_array_mut().unwrap();
            for id in failed_ids {
                failed.push(json!({"Id": id, "SenderFault": false, "Code": "InternalError", "Message": "injected"}));
            }
        }
        client.write_all(&resp.encode(resp_body.to_string().as_bytes(), "keep-alive"))?;
    }
    Ok(())
}
