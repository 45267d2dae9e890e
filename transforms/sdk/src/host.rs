//! Services of the host: logging and the clock. In WASM they call weir; natively (tests) they
//! use the in-memory stand-ins of [`crate::testing`].

/// Log level of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes `message` to weir's log (weir rate-limits it per transform).
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    {
        use crate::bindings::weir::transform::types::Level as L;
        let l = match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        };
        crate::bindings::weir::transform::host::log(l, message);
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::native_log(level, message);
}

/// Wall-clock time in milliseconds since the Unix epoch (in tests: the harness's clock).
pub fn now_ms() -> i64 {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::weir::transform::host::now_ms()
    }
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::native_now_ms()
}

/// Tells the host why the guest is about to trap.
#[cfg(target_arch = "wasm32")]
pub(crate) fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => s.to_string(),
            None => match info.payload().downcast_ref::<String>() {
                Some(s) => s.clone(),
                None => "panic".to_string(),
            },
        };
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::bindings::weir::transform::host::panicking(&format!("panicked: {msg}{at}"));
    }));
}
