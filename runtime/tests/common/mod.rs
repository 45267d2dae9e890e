//! Helpers shared by the integration tests: run the real `weir` binary on a config.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The weir binary the tests run: the one cargo built, or `WEIR_BIN` (e.g. a copy kept for a
/// long run while the tree is rebuilt, or a release build).
pub fn weir() -> Command {
    let bin = std::env::var_os("WEIR_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_weir").into());
    let mut c = Command::new(bin);
    c.env_remove("WEIR_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("WEIR__") {
            c.env_remove(k);
        }
    }
    c
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture files copied into the repo (tests never need ../shared).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub fn run(config: &Path) -> Output {
    weir().arg("run").arg(config).output().expect("weir runs")
}

pub fn spawn(config: &Path) -> Child {
    weir()
        .arg("run")
        .arg(config)
        .arg("--progress=never")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir starts")
}

/// A field of the "pipeline stopped" summary line, e.g. `summary(&stderr, "read")`.
pub fn summary(stderr: &str, field: &str) -> Option<u64> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("pipeline stopped"))?;
    let clean = strip_ansi(line);
    let key = format!("{field}=");
    let at = clean.find(&key)? + key.len();
    clean[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Resident and peak resident memory of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let get = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; an unknown pid or
    // signal is an error return, not undefined behaviour.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

pub fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// Builds the WASM transforms the example configs name, as `make demo` does (into
/// transforms/target, from transforms/ so that its .cargo/config.toml applies).
pub fn build_example_transforms() {
    let root = repo_root();
    let status = Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .args([
            "--target-dir",
            "target",
            "-p",
            "media-filter",
            "-p",
            "viewer-state",
        ])
        .current_dir(root.join("transforms"))
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(status.success(), "building the example transforms failed");
}

/// `GET path` on `addr` (HTTP/1.1, connection closed): the body if the status is 200.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1.1 200")
        .then(|| text.split_once("\r\n\r\n").map_or("", |b| b.1).to_string())
}

/// A Server-Sent Events client of the dashboard's `/api/stream`.
pub struct Sse(std::io::BufReader<std::net::TcpStream>);

impl Sse {
    pub fn connect(addr: &str) -> Sse {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        Sse(std::io::BufReader::new(s))
    }

    /// The next event: its name and its data.
    pub fn next(&mut self) -> (String, String) {
        use std::io::BufRead;
        let (mut name, mut data) = (String::new(), String::new());
        loop {
            let mut l = String::new();
            assert!(self.0.read_line(&mut l).unwrap() > 0, "event stream closed");
            let l = l.trim_end();
            if let Some(n) = l.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(d) = l.strip_prefix("data: ") {
                data = d.to_string();
            } else if l.is_empty() && !name.is_empty() {
                return (name, data);
            }
        }
    }
}
