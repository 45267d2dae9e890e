//! Write [weir](https://github.com/) WebAssembly transforms in Rust: one function per record.
//!
//! Pick the trait that fits and export it with its macro:
//!
//! | trait | you write | macro |
//! |---|---|---|
//! | [`Filter`] | `keep(record) -> Result<bool, Error>` | [`export_filter!`] |
//! | [`Map`] | `map(record, out_payload) -> Result<(), Error>` | [`export_map!`] |
//! | [`FlatMap`] | `flat_map(record, emit) -> Result<(), Error>` (0..n outputs) | [`export_flat_map!`] |
//! | [`Stateful`] | `process(record, state, emit)` with host-owned keyed state | [`export_stateful!`] |
//!
//! The SDK generates the batch loop: weir hands the guest a whole batch in one call as flat
//! buffers (see `transforms/wit/weir-transform.wit`), and the SDK calls your function once per
//! record. An `Err` sends that record to weir's failure sink with the error's message; a panic
//! does too (weir rebuilds the instance and isolates the record), but costs far more. [`Error`]
//! takes `?` on any error type (UTF-8, number parsing, `serde_json`, …) and on `String` / `&str`
//! messages: `record.field(fields::EVENT_ID).ok_or("no event_id")?`.
//!
//! Snowplow helpers ([`Record::field`], [`Record::unstruct`], [`Record::entity`]) read an enriched
//! TSV line without parsing all of it. Declare the fields you read in `fields()` and weir sends
//! only those fields across the boundary instead of whole lines.
//!
//! Unit tests run natively with plain `cargo test`, state and clock stubbed in memory: see
//! [`testing`].
//!
//! ```
//! use weir_transform_sdk::{fields, Config, Error, Filter, Record};
//!
//! struct PageViews;
//!
//! impl Filter for PageViews {
//!     fn new(config: &Config) -> Result<Self, Error> {
//!         config.check_keys(&[])?;
//!         Ok(PageViews)
//!     }
//!     fn fields(&self) -> &[usize] {
//!         &[fields::EVENT]
//!     }
//!     fn keep(&mut self, record: &Record<'_>) -> Result<bool, Error> {
//!         Ok(record.field(fields::EVENT) == Some(b"page_view"))
//!     }
//! }
//! weir_transform_sdk::export_filter!(PageViews);
//!
//! let mut t = weir_transform_sdk::testing::filter::<PageViews>(&[]).unwrap();
//! let line = ["x"; 131].join("\t");
//! assert_eq!(t.process(&[line.as_bytes()]).filtered, vec![0]);
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

extern crate self as weir_transform_sdk;

mod batch;
mod config;
mod error;
pub mod fields;
mod host;
mod json;
pub mod mem;
pub mod snowplow;
mod state;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod words;

#[doc(hidden)]
pub mod rt;

/// `bytes` as text if they are UTF-8: `std::str::from_utf8(bytes).ok()`, with a fast path for
/// ASCII (most event fields), which the standard library checks a byte at a time in a wasm32
/// guest and this test eight bytes at a time ([`words`]).
#[inline]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if words::is_ascii(bytes) {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir-transform-expiry",
        pub_export_macro: true,
        export_macro_name: "__wit_export",
        default_bindings_module: "weir_transform_sdk::bindings",
        runtime_path: "weir_transform_sdk::bindings::__rt",
    });
    #[doc(hidden)]
    pub use wit_bindgen::rt as __rt;
}

pub use batch::{Emit, Emitted, Record};
pub use config::{parse_duration_ms, Config};
pub use error::{Context, Error};
pub use host::{log, now_ms, Level};
pub use json::Json;
pub use snowplow::SelfDescribing;
pub use state::State;

/// Keeps or drops each record.
pub trait Filter: Sized + 'static {
    /// Builds the transform from the `config` map of its pipeline config. An error is shown to
    /// the user as a config error. `?` works on the [`Config`] helpers and on any error type.
    fn new(config: &Config) -> Result<Self, Error>;
    /// The Snowplow enriched fields ([`fields`]) this transform reads. If not empty, weir sends
    /// only these fields, not whole payloads, and [`Record::value`] is not available.
    fn fields(&self) -> &[usize] {
        &[]
    }
    /// `Ok(true)` keeps the record, `Ok(false)` drops it (to the `filtered` sink), `Err` fails it
    /// (to the failure sink, with the error's message).
    fn keep(&mut self, record: &Record<'_>) -> Result<bool, Error>;
}

/// Replaces each record's payload.
pub trait Map: Sized + 'static {
    /// See [`Filter::new`].
    fn new(config: &Config) -> Result<Self, Error>;
    /// See [`Filter::fields`].
    fn fields(&self) -> &[usize] {
        &[]
    }
    /// Writes the new payload of `record` into `out` (empty when called).
    fn map(&mut self, record: &Record<'_>, out: &mut Vec<u8>) -> Result<(), Error>;
}

/// Turns each record into zero, one or many records.
pub trait FlatMap: Sized + 'static {
    /// See [`Filter::new`].
    fn new(config: &Config) -> Result<Self, Error>;
    /// See [`Filter::fields`].
    fn fields(&self) -> &[usize] {
        &[]
    }
    /// Emits what `record` becomes through `out`; emitting nothing drops it.
    fn flat_map(&mut self, record: &Record<'_>, out: &mut Emit<'_>) -> Result<(), Error>;
    /// Emits what the transform held back (windowed output); called when the input ends.
    fn flush(&mut self, out: &mut Emitted) {
        let _ = out;
    }
}

/// Like [`FlatMap`], with keyed state owned by weir (it survives instance rebuilds and, with a
/// durable backend, restarts).
pub trait Stateful: Sized + 'static {
    /// See [`Filter::new`].
    fn new(config: &Config) -> Result<Self, Error>;
    /// See [`Filter::fields`].
    fn fields(&self) -> &[usize] {
        &[]
    }
    /// The state key `record` will read, if known up front: the SDK then fetches the keys of a
    /// whole batch in one host call instead of one call per record.
    fn state_key<'r>(&self, record: &Record<'r>) -> Option<&'r [u8]> {
        let _ = record;
        None
    }
    /// Handles one record. Writes to `state` are visible to the next records of the batch at
    /// once and reach the host in one call at the end of the batch.
    fn process(
        &mut self,
        record: &Record<'_>,
        state: &mut State<'_>,
        out: &mut Emit<'_>,
    ) -> Result<(), Error>;
    /// Emits what the transform held back (windowed output); called when the input ends.
    fn flush(&mut self, state: &mut State<'_>, out: &mut Emitted) {
        let _ = (state, out);
    }
    /// Called for each state entry whose TTL ran out (`put_with_ttl`), with the value it held:
    /// weir keeps the expiry of every key and, at each `flush_interval` tick (every second
    /// without one), hands the expired entries over in pages, then deletes them. No transform
    /// needs an index of its own keys to find the stale ones. `state` no longer sees `key`;
    /// writing it again keeps it. By default nothing is emitted.
    fn expired(&mut self, key: &[u8], value: &[u8], state: &mut State<'_>, out: &mut Emitted) {
        let _ = (key, value, state, out);
    }
}

/// Exports a [`Filter`] as the transform of this crate.
#[macro_export]
macro_rules! export_filter {
    ($t:ty) => {
        $crate::__export!($crate::rt::AsFilter<$t>);
    };
}

/// Exports a [`Map`] as the transform of this crate.
#[macro_export]
macro_rules! export_map {
    ($t:ty) => {
        $crate::__export!($crate::rt::AsMap<$t>);
    };
}

/// Exports a [`FlatMap`] as the transform of this crate.
#[macro_export]
macro_rules! export_flat_map {
    ($t:ty) => {
        $crate::__export!($crate::rt::AsFlatMap<$t>);
    };
}

/// Exports a [`Stateful`] transform as the transform of this crate.
#[macro_export]
macro_rules! export_stateful {
    ($t:ty) => {
        $crate::__export!($crate::rt::AsStateful<$t>);
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($g:ty) => {
        const _: () = {
            struct __WeirGuest;
            impl $crate::bindings::exports::weir::transform::transform::Guest for __WeirGuest {
                fn init(
                    config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                ) -> ::std::result::Result<
                    $crate::bindings::weir::transform::types::Settings,
                    ::std::string::String,
                > {
                    $crate::rt::wasm::init::<$g>(config)
                }
                fn process(
                    batch: $crate::bindings::weir::transform::types::Batch,
                ) -> $crate::bindings::weir::transform::types::Output {
                    $crate::rt::wasm::process::<$g>(batch)
                }
                fn flush() -> $crate::bindings::weir::transform::types::Emitted {
                    $crate::rt::wasm::flush::<$g>()
                }
            }
            impl $crate::bindings::exports::weir::transform::expiry::Guest for __WeirGuest {
                fn expired(
                    keys: $crate::bindings::weir::transform::types::Column,
                    values: $crate::bindings::weir::transform::types::Column,
                ) -> $crate::bindings::weir::transform::types::Emitted {
                    $crate::rt::wasm::expired::<$g>(keys, values)
                }
            }
    $crate::bindings::__wit_export!(__WeirGuest with_types_in $crate::bindings);
        };
    };
}

/// Natively (unit tests, benchmarks) there is nothing to export: use [`testing`].
#[cfg(not(target_arch = "wasm32"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __export {
    ($g:ty) => {
        const _: fn() = || {
            fn assert_guest<G: $crate::rt::Guest>() {}
            assert_guest::<$g>();
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn utf8_agrees_with_the_standard_library() {
        let long_ascii = "a".repeat(100);
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"plain".to_vec(),
            long_ascii.clone().into_bytes(),
            "caf\u{e9}".into(),
            "\u{1f600} at the start".into(),
            [long_ascii.as_bytes(), "\u{7f}\u{80}".as_bytes()].concat(),
            vec![0x80],
            vec![b'a', 0xff, b'b'],
            vec![0xe2, 0x82],                                // truncated
            [long_ascii.as_bytes(), &[0xc0, 0x80]].concat(), // overlong
        ];
        // A non-ASCII byte at every position of a 40-byte text.
        for i in 0..40 {
            let mut v = long_ascii.as_bytes()[..40].to_vec();
            v[i] = 0xc3;
            cases.push(v.clone());
            if i < 39 {
                v[i + 1] = 0xa9;
                cases.push(v);
            }
        }
        for c in &cases {
            assert_eq!(super::utf8(c), std::str::from_utf8(c).ok(), "{c:?}");
        }
    }
}
