//! What the benches share: running a command to completion with its CPU time and peak RSS,
//! writing configs, building the WASM guests.
#![allow(dead_code)] // each bench uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The repository root and the target dir; `None` when the binary runs without `--bench`
/// (`cargo test --all-targets` runs bench binaries that way): do nothing then.
pub fn dirs() -> Option<(PathBuf, PathBuf)> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Some((root, target))
}

pub struct Measure {
    /// Wall-clock seconds of each run.
    pub secs: Vec<f64>,
    /// CPU seconds (user + system) of each run: on a shared machine, the steadier per-core figure.
    pub cpu: Vec<f64>,
    pub peak_rss_kib: u64,
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

impl Measure {
    pub fn median(&self) -> f64 {
        median(&self.secs)
    }
    pub fn median_cpu(&self) -> f64 {
        median(&self.cpu)
    }
}

/// Runs the command `runs` times; wall time of each, and the largest peak RSS (from wait4).
// Children are reaped with wait4 (for their resource usage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
pub fn measure(runs: usize, cmd: impl Fn() -> Command) -> Measure {
    let mut secs = Vec::new();
    let mut cpu = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        let t = Instant::now();
        // stdout is a pipe, not /dev/null: GNU grep stops at the first match when its output is
        // /dev/null, which would make it look impossibly fast.
        let mut child = cmd().stdout(Stdio::piped()).spawn().expect("spawn");
        let mut out = Vec::new();
        std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut out).unwrap();
        let mut status = 0;
        // SAFETY: `rusage` is a plain C struct of integers, for which all-zero bytes are valid.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `child` is our unreaped child process, and both out-pointers are to live locals
        // of the right types.
        let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert!(r > 0, "wait4");
        secs.push(t.elapsed().as_secs_f64());
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        cpu.push(tv(usage.ru_utime) + tv(usage.ru_stime));
        assert!(libc::WIFEXITED(status), "benchmark command failed");
        // grep -c exits 1 when nothing matches; weir must exit 0.
        assert!(libc::WEXITSTATUS(status) <= 1, "benchmark command failed");
        peak = peak.max(usage.ru_maxrss as u64);
    }
    Measure {
        secs,
        cpu,
        peak_rss_kib: peak,
    }
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Builds the guests of transforms/ (release, wasm32-unknown-unknown) into `target`; returns
/// the directory of the `.wasm` files.
pub fn build_guests(root: &Path, target: &Path) -> PathBuf {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--workspace",
            "--manifest-path",
        ])
        .arg(root.join("transforms/Cargo.toml"))
        // From transforms/, so that its .cargo/config.toml (the guests' rustflags: simd128)
        // applies, as when building there (Makefile, `weir transform new` projects).
        .current_dir(root.join("transforms"))
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the guests failed");
    target.join("wasm32-unknown-unknown/release")
}
