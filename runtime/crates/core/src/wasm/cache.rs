//! The on-disk cache of compiled transforms.
//!
//! A compiled component is machine code for this wasmtime version and engine configuration, so
//! its file name holds all three: `<sha256 of the .wasm>-wasmtime<version>-<engine hash>.cwasm`.
//! Loading a cached file skips Cranelift entirely (a few hundred µs instead of seconds for a
//! large module). Files are written to a temporary name and renamed, so a crash never leaves a
//! half-written entry; a file that fails to load is compiled again and replaced.
//!
//! Loading machine code is only safe for files this host wrote itself: the directory is created
//! private to the user (0700).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "WEIR_CACHE_DIR";

/// The cache directory: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/wasm`, else
/// `~/.cache/weir/wasm`, else a directory under the system temp dir.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("weir").join("wasm");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("weir").join("wasm");
    }
    std::env::temp_dir().join("weir-wasm-cache")
}

/// SHA-256 of the module's bytes.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The cache file for a module with this content hash, compiled by `engine`.
pub fn entry_path(dir: &Path, hash: &[u8; 32], engine: &Engine) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!(
        "{hex}-wasmtime{}-{:016x}.cwasm",
        wasmtime_version(),
        h.finish()
    ))
}

/// The wasmtime version weir is built with.
pub fn wasmtime_version() -> &'static str {
    // Cargo.toml pins the major version; the precompile compatibility hash covers the rest.
    "48"
}

/// Writes `bytes` to `path` atomically (temp file + rename), creating a private directory.
pub fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
