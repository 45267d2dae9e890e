//! weir: a stream transformer for event data.
//!
//! A pipeline reads records from a [source](sources), runs them through a chain of
//! [transforms](transforms) and writes them to [sinks](sinks), all described by a config file
//! ([`pipeline::PipelineConfig`]). Records travel in batches with one end-to-end
//! [acknowledgement](ack) each; failures become Snowplow [bad rows](badrow).

#![deny(unsafe_op_in_unsafe_fn)]

// Locks: a poisoned `std::sync::Mutex` is a bug, not an error to recover from. A thread that
// panicked while holding a lock may have left what it guards (acknowledgement counts, positions
// to commit, state) half-updated, and carrying on could commit a position whose records were
// never written. So every lock is taken with `.lock().expect("<what> lock poisoned")`: the
// panic spreads to the lock's next user instead of being hidden, a source or sink task that
// panics ends the run with an error (see `pipeline::run`), and the next run resumes from the
// last committed positions. Not used: `unwrap_or_else(PoisonError::into_inner)`, and lock types
// without poisoning (parking_lot).

pub mod ack;
pub mod aws;
pub mod badrow;
pub mod config;
pub mod dashboard;
pub mod gcp;
pub mod go_template;
pub mod http_server;
pub mod kafka;
pub mod monitoring;
pub mod observe;
pub mod pipeline;
pub mod record;
pub mod registry;
pub mod retry;
pub mod setup;
pub mod sinks;
pub mod snowbridge;
pub mod sources;
pub mod state;
pub mod transforms;
pub mod wasm;

/// Snowplow's formats ([`weir_snowplow`]), re-exported under the name the components use.
pub use weir_snowplow as snowplow;
