//! Builds the test guests (once per test binary) and runs them through weir's WASM host.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use weir_core::record::{Batch, Record};
use weir_core::state::MemoryBackend;
use weir_core::wasm::{Guest, GuestOptions, Limits};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The target dir of the guest crates: `<target>/guests`, beside (not inside) the host's builds.
pub fn guest_target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("guests")
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // Flags meant for the host build must not leak into the wasm build.
    for v in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
    ] {
        c.env_remove(v);
    }
    c.env("CARGO_TARGET_DIR", guest_target_dir());
    c
}

/// Builds every Rust guest in `transforms/` for wasm32-unknown-unknown (release), once.
pub fn build_rust_guests() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = cargo()
                .args(["build", "--release", "--target", "wasm32-unknown-unknown", "--workspace", "--manifest-path"])
                .arg(repo_root().join("transforms/Cargo.toml"))
                // transforms/.cargo/config.toml (the guests' rustflags) applies from there.
                .current_dir(repo_root().join("transforms"))
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building the test guests failed (is the wasm32-unknown-unknown target installed? `rustup target add wasm32-unknown-unknown`)");
            guest_target_dir().join("wasm32-unknown-unknown/release")
        })
        .clone()
}

/// The `.wasm` of a Rust guest crate, e.g. `hostile`, `media_filter`, `dedup`.
pub fn rust_guest(name: &str) -> PathBuf {
    build_rust_guests().join(format!("{name}.wasm"))
}

/// The compile cache shared by the tests (entries are keyed by content and engine, so sharing
/// is safe, and a debug-build Cranelift compiles each guest once, not once per test binary).
pub fn cache_dir() -> PathBuf {
    guest_target_dir().join("compile-cache")
}

pub fn options(config: &[(&str, &str)], limits: Limits) -> GuestOptions {
    GuestOptions {
        label: "transforms[0] (wasm)".into(),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        limits,
        state: MemoryBackend::new(),
        cache_dir: cache_dir(),
    }
}

pub fn guest(path: &Path, config: &[(&str, &str)], limits: Limits) -> Guest {
    Guest::new(path, options(config, limits)).unwrap_or_else(|e| panic!("{e}"))
}

pub fn batch(values: &[&str]) -> Batch {
    Batch::new(
        values
            .iter()
            .map(|v| Record::new(Bytes::copy_from_slice(v.as_bytes())))
            .collect(),
        Default::default(),
    )
}

/// The failed records of a batch: (payload, reason).
pub fn failures(b: &Batch) -> Vec<(String, String)> {
    b.failed
        .iter()
        .map(|f| {
            (
                String::from_utf8_lossy(&f.record.value).into_owned(),
                f.reason.clone(),
            )
        })
        .collect()
}

pub fn texts(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// The enriched-TSV fixture lines (73 events of a media session).
pub fn fixture_lines() -> Vec<Bytes> {
    let text = std::fs::read(repo_root().join("examples/data/micro-media-session.tsv")).unwrap();
    text.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect()
}

pub fn shared_state() -> Arc<MemoryBackend> {
    MemoryBackend::new()
}

/// Builds the C example (transforms/examples/c-media-filter) from source into the guest target
/// dir: wit-bindgen's C generator, Debian's clang and wasi-libc (see transforms/README.md).
pub fn c_media_filter() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = guest_target_dir().join("c-media-filter");
            std::fs::create_dir_all(&out).unwrap();
            let wasm = out.join("media_filter_c.wasm");
            let status = Command::new("make")
                .arg("-C")
                .arg(repo_root().join("transforms/examples/c-media-filter"))
                .arg("--always-make")
                .arg(format!("OUT={}", wasm.display()))
                .arg(format!("GEN={}", out.join("gen").display()))
                .status()
                .expect("make runs");
            assert!(
                status.success(),
                "building the C example failed; it needs `apt-get install clang lld wasi-libc \
                 libclang-rt-dev-wasm32` and `cargo install wit-bindgen-cli --version 0.63.0 --locked`"
            );
            wasm
        })
        .clone()
}

/// Builds a C guest of the fixtures (`runtime/tests/fixtures/wasm/<name>.c`) as the C example is
/// built (clang, wasi-libc, the example's wit-bindgen bindings), into the guest target dir.
pub fn c_guest(name: &str) -> PathBuf {
    let gen = c_media_filter().with_file_name("gen");
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/wasm")
        .join(format!("{name}.c"));
    let wasm = guest_target_dir().join(format!("c-fixtures/{name}.wasm"));
    std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
    let status = Command::new(std::env::var("WASM_CC").unwrap_or_else(|_| "clang".into()))
        .args([
            "--target=wasm32-wasi",
            "-O2",
            "-mexec-model=reactor",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-Wno-unused-parameter",
        ])
        .arg("-I")
        .arg(&gen)
        .arg("-o")
        .arg(&wasm)
        .arg(&source)
        .arg(gen.join("weir_transform.c"))
        .arg(gen.join("weir_transform_component_type.o"))
        .status()
        .expect("clang runs");
    assert!(status.success(), "building {} failed", source.display());
    wasm
}

/// The `weir` binary.
pub fn weir() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
    c.env_remove("WEIR_LOG");
    c
}
