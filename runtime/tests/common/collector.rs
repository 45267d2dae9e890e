//! Helpers for the collector tests: run the real `weir` binary with a `collector` source, learn
//! its port from the log, talk HTTP to it (from chosen loopback addresses), read what it wrote.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use super::common::{weir, write, Logged};

/// A running `weir run` with a collector source.
pub struct Weir {
    pub proc: Logged,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

/// Writes a config (collector source on 127.0.0.1:0 plus `source_extra` keys, then `rest`: the
/// sink and failure sections and anything else) and starts weir on it.
pub fn start(dir: &Path, source_extra: &str, rest: &str) -> Weir {
    let cfg = write(
        dir,
        "collector.toml",
        &format!(
            "[source]\ntype = \"collector\"\naddress = \"127.0.0.1:0\"\n{source_extra}\n\n{rest}\n"
        ),
    );
    start_config(dir, &cfg)
}

/// The usual sinks: events to `out.tsv`, bad rows to `bad.ndjson` in `dir`.
pub fn file_sinks(dir: &Path) -> String {
    format!(
        "[sink]\ntype = \"file\"\npath = \"{}\"\n\n[failure]\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("out.tsv").display(),
        dir.join("bad.ndjson").display()
    )
}

pub fn start_config(dir: &Path, cfg: &Path) -> Weir {
    let mut proc = Logged::spawn(
        weir()
            .arg("run")
            .arg(cfg)
            .arg("--progress=never")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    let addr = proc.bound("collector listening");
    Weir {
        proc,
        addr,
        dir: dir.to_path_buf(),
    }
}

impl Weir {
    /// SIGTERM, then waits for a clean exit; returns the log.
    pub fn stop(self) -> String {
        let (status, log) = self.proc.terminate(Duration::from_secs(60));
        assert!(status.success(), "weir exited with {status}:\n{log}");
        log
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Lines of a file weir wrote in its directory.
    pub fn lines(&self, name: &str) -> Vec<String> {
        lines(&self.dir.join(name))
    }
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type Body = BoxBody<Bytes, Infallible>;

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A body sent chunked, without a Content-Length.
pub fn chunked(chunks: Vec<Bytes>) -> Body {
    let stream = futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, Infallible>(Frame::data(c))),
    );
    StreamBody::new(stream).boxed()
}

/// One keep-alive HTTP/1.1 connection, optionally from a given loopback address; opened again
/// when the server closed it (as a browser does).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    addr: SocketAddr,
    from: Option<IpAddr>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, from: Option<IpAddr>) -> std::io::Result<Conn> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(ip) = from {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, addr, from })
    }

    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> std::io::Result<Resp> {
        if self.sender.ready().await.is_err() {
            *self = Conn::open(self.addr, self.from).await?;
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header("host", self.addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .sender
            .send_request(req.body(body).unwrap())
            .await
            .map_err(std::io::Error::other)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes()
            .to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

/// One request on a new connection.
pub async fn send(
    addr: SocketAddr,
    from: Option<IpAddr>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> std::io::Result<Resp> {
    Conn::open(addr, from)
        .await?
        .send(method, target, headers, body)
        .await
}

/// [`send`] from synchronous code.
pub fn send_blocking(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Resp {
    let body = body.into();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(send(addr, None, method, target, headers, full(body)))
        .expect("the request gets an answer")
}

/// A tracker-protocol POST body holding `events` (JSON objects of string parameters).
pub fn payload_data(events: &[serde_json::Value]) -> String {
    serde_json::json!({
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": events,
    })
    .to_string()
}

pub const TP2: &str = "/com.snowplowanalytics.snowplow/tp2";

#[allow(unused_imports)]
pub use super::common::sdk::*;
