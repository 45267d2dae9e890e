//! Transforms: what happens to records between source and sink. One file per transform, its
//! config struct beside its code; the built-in Snowplow transforms keep Snowbridge's names.

use std::fmt::Debug;

use serde::de::DeserializeOwned;

use crate::config::{ConfigError, Origin};
use crate::record::{Batch, Failed, Record};
use crate::registry::Registration;

pub mod base64_decode;
pub mod base64_encode;
mod go_time;
pub mod jq;
pub mod jq_engine;
pub mod jq_filter;
pub mod js;
pub mod sp_collector_payload;
pub mod sp_enriched_filter;
pub mod sp_enriched_filter_context;
pub mod sp_enriched_filter_unstruct;
pub mod sp_enriched_set_pk;
pub mod sp_enriched_to_json;
pub mod sp_gtmss_preview;
pub mod wasm;

/// Every transform type weir knows, by its config `type`.
pub static REGISTRY: &[Registration<dyn TransformConfig>] = &[
    transform::<base64_decode::Config>(),
    transform::<base64_encode::Config>(),
    transform::<jq::Config>(),
    transform::<jq_filter::Config>(),
    transform::<js::Config>(),
    transform::<sp_collector_payload::Config>(),
    transform::<sp_enriched_filter::Config>(),
    transform::<sp_enriched_filter_context::Config>(),
    transform::<sp_enriched_filter_unstruct::Config>(),
    transform::<sp_enriched_set_pk::Config>(),
    transform::<sp_enriched_to_json::Config>(),
    transform::<sp_gtmss_preview::Config>(),
    transform::<wasm::Config>(),
];

/// A transform's validated settings. `build` is called once per worker: each worker owns its own
/// instance, so a transform never needs a lock.
pub trait TransformConfig: Debug + Send + Sync {
    /// `label` names this transform in bad rows and metrics, e.g. `transforms[1] (spEnrichedFilter)`.
    fn build(&self, label: &str, origin: &Origin) -> Result<Box<dyn Transform>, ConfigError>;
    /// Hands a transform that keeps keyed state the pipeline's state backend (`[state]`).
    fn set_state(&mut self, _backend: std::sync::Arc<dyn crate::state::StateBackend>) {}
}

/// Implemented by each transform's config struct to register it.
pub trait TransformType: TransformConfig + DeserializeOwned + 'static {
    const TYPE: &'static str;
}

const fn transform<C: TransformType>() -> Registration<dyn TransformConfig> {
    fn parse<C: TransformType>(
        v: config::Value,
        o: &Origin,
    ) -> Result<Box<dyn TransformConfig>, ConfigError> {
        let c: C = o.deserialize(v)?;
        // Building checks everything that the types cannot (regexes, field names, paths).
        c.build("check", o)?;
        Ok(Box::new(c))
    }
    Registration {
        name: C::TYPE,
        parse: parse::<C>,
    }
}

/// A running transform. It works on a whole batch: it may rewrite `batch.records`, and moves
/// records it drops into `batch.filtered` and records it cannot handle into `batch.failed`.
pub trait Transform: Send {
    fn process(&mut self, batch: &mut Batch);
}

/// `filter_action` of the Snowplow filters: keep the records that match, or drop them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterAction {
    #[default]
    Keep,
    Drop,
}

impl FilterAction {
    /// Whether a record whose match result is `matched` stays in the stream.
    #[inline]
    pub fn keeps(self, matched: bool) -> bool {
        matched == (self == FilterAction::Keep)
    }
}

/// Runs `decide` on each record of the batch: `Ok(true)` keeps it, `Ok(false)` moves it to
/// `filtered`, `Err(reason)` to `failed`. `scratch` is the transform's own reusable vector, so a
/// batch is partitioned without allocating.
pub fn partition(
    batch: &mut Batch,
    scratch: &mut Vec<Record>,
    label: &str,
    mut decide: impl FnMut(&Record) -> Result<bool, String>,
) {
    std::mem::swap(&mut batch.records, scratch);
    batch.records.clear();
    for r in scratch.drain(..) {
        match decide(&r) {
            Ok(true) => batch.records.push(r),
            Ok(false) => batch.filtered.push(r),
            Err(reason) => batch.failed.push(Failed::invalid(r, label, reason)),
        }
    }
}
