//! The WebAssembly transform host.
//!
//! A transform is a component of the world `weir:transform/weir-transform@0.1.0`
//! (`transforms/wit/weir-transform.wit`): weir calls its `process` export once per batch with the
//! records as flat buffers, and it answers with output records tagged by the input record they
//! came from, plus per-record errors.
//!
//! * [`engine`]: one wasmtime engine per stack limit (pooling allocator, epoch interruption), an
//!   epoch ticker thread, and [`engine::load`], which compiles a `.wasm` once and caches the
//!   result on disk by content hash, wasmtime version and engine settings ([`cache`]). A core
//!   module carrying the WIT in a custom section (what `cargo build --target
//!   wasm32-unknown-unknown` makes with the SDK) is turned into a component first.
//! * [`guest`]: one instance per transform per worker, rebuilt from an `InstancePre` after a
//!   trap; the batch is bisected to find the poison record, which goes to the failure sink with
//!   the trap message and the guest backtrace.
//! * [`host`]: what the guest may call: keyed state (per guest call, as one transaction),
//!   rate-limited logging, the clock. There is no WASI: no files, no network, no environment.
//! * Expiry: at each tick [`Guest::expire`] pages the state entries whose TTL ran out (the
//!   backends' time index, [`crate::state::StateStore::expired`]) to the guest's optional
//!   `expiry.expired` export, then deletes them.
//!
//! The keyed state itself lives in [`crate::state`] (in memory, or on disk checkpointed with the
//! source positions): the host only opens the store of the batch's partition and commits the
//! writes of each successful guest call.

pub mod abi;
pub mod cache;
pub mod engine;
pub mod guest;
pub mod host;

/// The WIT world weir serves, as bindings.
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../../../transforms/wit",
        world: "weir-transform",
        imports: { default: trappable },
    });
}

/// The WIT package version weir serves.
pub const WIT_VERSION: &str = "weir:transform@0.1.0";

pub use guest::{Guest, GuestOptions, Limits, Outcome};
