//! Helpers shared by the integration tests: run the real `weir` binary on a config.
#![allow(dead_code)]

pub mod sdk;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// The `[source]` section of a config that reads the file `input`, one record a line.
pub fn file_source(input: &Path) -> String {
    format!(
        "[source]\ntype = \"file\"\npaths = [\"{}\"]\n",
        input.display()
    )
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

/// Headers of a recorded request to send again (hop-by-hop and length headers are the client's).
pub fn replay_headers(r: &serde_json::Value) -> Vec<(String, String)> {
    r["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_string(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .filter(|(k, _)| {
            !matches!(
                k.to_ascii_lowercase().as_str(),
                "host" | "content-length" | "connection" | "accept-encoding"
            )
        })
        .collect()
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

/// Waits until `ok` holds, checking every 50 ms; fails the test naming `what` after `timeout`.
/// (A condition with a deadline, never a sleep, is how the tests wait for something.)
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file the setup script installed under the target dir (looked for in every ancestor of the
/// test binary), or the path in `env` when that is set.
pub fn installed(env: &str, relative: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .map(|dir| dir.join(relative))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{relative} not found under the target dir: run `bash runtime/tests/setup.sh` \
                 (with the same CARGO_TARGET_DIR) or set {env}"
            )
        })
}

/// The Python of the tests' virtualenv, where runtime/tests/setup.sh installs the Snowplow
/// tracker, thriftpy2 and the analytics SDK (never the system Python's site-packages).
pub fn test_python() -> PathBuf {
    installed("WEIR_TEST_PYTHON", "test-python/venv/bin/python")
}

/// Runs a Python script of the fixtures (`collector/…`, `sdk/…`) with the tests' virtualenv,
/// `stdin` as its input; returns its standard output, failing the test if it fails.
pub fn python(script: &str, args: &[&str], stdin: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(test_python())
        .arg(fixture(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the tests' python runs (install with: bash runtime/tests/setup.sh)");
    let mut input = child.stdin.take().unwrap();
    let text = stdin.to_string();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{script} failed (its packages come from runtime/tests/setup.sh):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A process whose standard error is collected line by line (ANSI colours stripped) by a thread,
/// so that a test can wait for a log line; killed when dropped.
pub struct Logged {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Logged {
    /// Starts `cmd` with its standard error piped to the collector.
    pub fn spawn(cmd: &mut Command) -> Logged {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .expect("the process starts");
        let pipe = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(strip_ansi(&line));
            }
        });
        Logged {
            child,
            lines,
            reader: Some(reader),
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (up to `timeout`) for a line that `pick` accepts and returns what it made of it;
    /// fails with the log if the process exits first or the time runs out.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            {
                let lines = self.lines.lock().unwrap();
                for l in &lines[seen..] {
                    if let Some(t) = pick(l) {
                        return t;
                    }
                }
                seen = lines.len();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader may still hold the last lines: let it finish, then look once more.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                let lines = self.lines.lock().unwrap();
                if let Some(t) = lines[seen..].iter().find_map(|l| pick(l)) {
                    return t;
                }
                panic!("exited ({status}) before {what}:\n{}", lines.join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address a component logged that it bound (`address=…` of the line that says
    /// `message`, in text or JSON logs): how a test learns a port it asked the OS for (`:0`).
    pub fn bound(&mut self, message: &str) -> SocketAddr {
        self.wait_for(message, Duration::from_secs(60), |l| {
            if !l.contains(message) {
                return None;
            }
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                return v["fields"]["address"].as_str()?.parse().ok();
            }
            l.split("address=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
    }

    /// Waits for the process to exit (up to `timeout`); returns its status and the whole log.
    pub fn wait_exit(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    /// SIGTERM, then [`Logged::wait_exit`].
    pub fn terminate(self, timeout: Duration) -> (std::process::ExitStatus, String) {
        signal(self.child.id(), libc::SIGTERM);
        self.wait_exit(timeout)
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The lines a statsd UDP socket received, until it was quiet for its read timeout.
pub fn statsd_lines(socket: &std::net::UdpSocket) -> Vec<String> {
    let mut lines = Vec::new();
    let mut buf = [0u8; 65536];
    while let Ok(n) = socket.recv(&mut buf) {
        lines.extend(String::from_utf8_lossy(&buf[..n]).lines().map(String::from));
    }
    lines
}

/// The sum of the statsd counter `name` (with its prefix) over `lines`; each of its lines must
/// end with `suffix` (type and tags, e.g. `|c` or `|c|#env:ci`).
pub fn statsd_total(lines: &[String], name: &str, suffix: &str) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|rest| {
            assert!(rest.ends_with(suffix), "{name}: {rest}");
            rest.split('|').next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// Starts `cmd` (a `weir()` with its environment) on `config`, logging at info into the file
/// beside it.
pub fn spawn_logging(mut cmd: Command, config: &Path) -> Child {
    let log = std::fs::File::create(config.with_extension("log")).unwrap();
    cmd.arg("run")
        .arg(config)
        .arg("--progress=never")
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("weir starts")
}

/// The log of a weir started by [`spawn_logging`] on `config`.
pub fn log_of(config: &Path) -> String {
    strip_ansi(&std::fs::read_to_string(config.with_extension("log")).unwrap_or_default())
}

/// The lines of a file (none if it does not exist yet).
pub fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// SIGTERM, and the exit must be clean (else the failure shows the log).
pub fn stop_logged(mut child: Child, config: &Path) {
    signal(child.id(), libc::SIGTERM);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "weir exited {status}:\n{}",
        log_of(config)
    );
}

/// Waits (up to `timeout`, checking every 100 ms) for `ok`; fails with the log of the weir
/// started on `config`.
pub async fn wait_for_logged(
    what: &str,
    config: &Path,
    timeout: Duration,
    mut ok: impl AsyncFnMut() -> bool,
) {
    let start = Instant::now();
    while !ok().await {
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}\n{}",
            log_of(config)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
