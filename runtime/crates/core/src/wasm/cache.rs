//! The on-disk cache of compiled transforms.
//!
//! A compiled component is machine code for this wasmtime version and engine configuration, so
//! its file name holds all three: `<sha256 of the .wasm>-wasmtime<version>-<engine hash>.cwasm`.
//! Loading a cached file skips Cranelift entirely (a few hundred µs instead of seconds for a
//! large module). Files are written to a temporary name and renamed, so a crash never leaves a
//! half-written entry; a file that fails to load is compiled again and replaced.
//!
//! Loading machine code is only safe for files this host wrote itself, so the directory must be
//! private: weir creates it 0700, and before reading anything from it checks ([`check_dir`]) that
//! it is a directory owned by the user weir runs as, writable by no one else. Otherwise another
//! local user could plant code that weir would run; such a directory is **refused with an
//! error** rather than silently skipped: a planted directory means someone is attacking the
//! host, and an operator should hear of it at start-up, not find every start slow. Each entry is
//! checked the same way before it is loaded (a file that fails is compiled again and replaced).
//!
//! The default directory is per user: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/wasm`, else
//! `~/.cache/weir/wasm`, else (no home) `<temp dir>/weir-<uid>/wasm`, never a shared directory
//! such as `/tmp/weir-wasm-cache` that anyone could create first.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;

/// Environment variable that overrides the cache directory.
pub const CACHE_DIR_ENV: &str = "WEIR_CACHE_DIR";

/// The cache directory: `$WEIR_CACHE_DIR`, else `$XDG_CACHE_HOME/weir/wasm`, else
/// `~/.cache/weir/wasm`, else `<temp dir>/weir-<uid>/wasm` (checked like any other).
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
    std::env::temp_dir()
        .join(format!("weir-{}", current_uid()))
        .join("wasm")
}

/// A cache directory (or entry) weir will not load machine code from.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing the WebAssembly cache directory {dir}: {why}; another user could plant machine      code there that weir would run. Use a private directory (owned by uid {uid}, mode 0700:      `chmod 700` it, or set `cache_dir` / ${CACHE_DIR_ENV} to another path)"
)]
pub struct UnsafeCacheDir {
    pub dir: PathBuf,
    pub why: String,
    pub uid: u32,
}

/// The user weir runs as (the owner its files get).
pub fn current_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Creates `dir` (0700, with its missing parents) if it does not exist, then checks that it is a
/// directory owned by this user and writable by no one else (a symlink is followed: what counts
/// is the directory weir would read).
pub fn check_dir(dir: &Path) -> Result<(), UnsafeCacheDir> {
    let uid = current_uid();
    let refuse = |why: String| UnsafeCacheDir {
        dir: dir.to_path_buf(),
        why,
        uid,
    };
    if !dir.exists() {
        create_private_dir(dir).map_err(|e| refuse(format!("cannot create it: {e}")))?;
    }
    let m = std::fs::metadata(dir).map_err(|e| refuse(format!("cannot inspect it: {e}")))?;
    if !m.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if m.uid() != uid {
        return Err(refuse(format!(
            "it belongs to uid {}, not to the user weir runs as",
            m.uid()
        )));
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "it is writable by {} (mode {mode:04o})",
            if mode & 0o002 != 0 {
                "anyone"
            } else {
                "its group"
            }
        )));
    }
    Ok(())
}

/// Whether a cache entry may be loaded: a regular file (not a link), ours, writable by no one
/// else. Why not, if not.
pub fn check_entry(path: &Path) -> Result<(), String> {
    let m = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !m.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if m.uid() != current_uid() {
        return Err(format!("owned by uid {}, not by weir's user", m.uid()));
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!("writable by others (mode {mode:04o})"));
    }
    Ok(())
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
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
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
