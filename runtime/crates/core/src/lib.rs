//! weir: a stream transformer for event data.
//!
//! A pipeline reads records from a [source](sources), runs them through a chain of
//! [transforms](transforms) and writes them to [sinks](sinks), all described by a config file
//! ([`pipeline::PipelineConfig`]). Records travel in batches with one end-to-end
//! [acknowledgement](ack) each; failures become Snowplow [bad rows](badrow).

pub mod ack;
pub mod aws;
pub mod badrow;
pub mod config;
pub mod dashboard;
pub mod kafka;
pub mod observe;
pub mod pipeline;
pub mod record;
pub mod registry;
pub mod retry;
pub mod setup;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod transforms;
pub mod wasm;

/// Snowplow's formats ([`weir_snowplow`]), re-exported under the name the components use.
pub use weir_snowplow as snowplow;
