//! The config loader: a weir config (TOML, YAML or JSON, `config::load_str`) or a Snowbridge
//! HCL config (`snowbridge::translate`), then `PipelineConfig::from_value`, which validates
//! every section and builds each transform once to check it (regexes, field names, paths).
//!
//! Input: byte 0 picks the format, the rest is the text (lossy UTF-8). Checks: no panic.
//! Not covered: `[state]` (removed before validation: a disk backend opens a file at the path
//! given) and texts naming `/dev/` or `/proc/` (a `wasm` transform reads its `path`).
//!
//! The Snowbridge translation catches the panics of hcl-rs's arithmetic (see
//! `snowbridge::Cx::eval`), which libFuzzer's panic hook would report as crashes before they
//! are caught: this target puts back a hook that only prints. A panic that is not caught still
//! aborts (libfuzzer-sys aborts when one reaches it), so it is still a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_core::config::{load_str, ConfigError};
use weir_core::pipeline::{PipelineConfig, TOP_LEVEL_KEYS};
use weir_core::snowbridge;

fn without_state(mut root: config::Value) -> config::Value {
    if let config::ValueKind::Table(t) = &mut root.kind {
        t.remove("state");
    }
    root
}

fuzz_target!(init: {
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
}, |data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    if text.contains("/dev/") || text.contains("/proc/") {
        return;
    }
    let format = match sel % 4 {
        0 => config::FileFormat::Toml,
        1 => config::FileFormat::Yaml,
        2 => config::FileFormat::Json,
        _ => {
            let Ok(t) =
                snowbridge::translate("fuzz.hcl", &text, Default::default(), TOP_LEVEL_KEYS)
            else {
                return;
            };
            let _ = snowbridge::to_toml(&t);
            let r: Result<_, ConfigError> =
                PipelineConfig::from_value(&t.file, without_state(t.root()));
            let _ = r.map_err(|e| t.map_error(e));
            return;
        }
    };
    let Ok(loaded) = load_str("fuzz", &text, format, std::iter::empty()) else {
        return;
    };
    let _ = PipelineConfig::from_value(&loaded.file, without_state(loaded.root));
});
