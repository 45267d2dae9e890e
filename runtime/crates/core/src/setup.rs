//! Building the components of a pipeline: the context sources and sinks are built with, and
//! the error a failed build becomes.
//!
//! `weir run` builds every sink, then the source, before anything is read. Building is where a
//! component creates its clients and checks, once, that it can use them: that its service
//! answers and accepts its credentials, that its table, stream or topic is there. A component
//! that cannot work fails the start with a [`SetupError`] naming it by its key path in the config
//! and saying why, instead of retrying its first write forever. Building starts nothing that
//! serves others (a sink's dashboard starts with [`crate::sinks::Sink::start`], once every
//! component is built). `weir validate` builds nothing: it stays offline.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::observe::Stats;
use crate::state::Checkpointed;

/// How long a start-up check waits for a service to answer before the build fails.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a source or sink is built with.
#[derive(Clone)]
pub struct BuildContext {
    /// The component's key path in the config (`source`, `sink`, `filtered`, `failure`,
    /// `sink.sinks[1]`): names it in errors and logs.
    pub path: String,
    /// The runtime the pipeline runs on.
    pub runtime: tokio::runtime::Handle,
    /// The pipeline's running totals.
    pub stats: Arc<Stats>,
    /// Fires when the pipeline is asked to stop: long start-up work may give up.
    pub shutdown: CancellationToken,
    /// The pipeline's durable transform state (`[state]`), which a source that commits
    /// positions checkpoints with them (the Kafka source); `None` for sinks.
    pub state: Option<Arc<dyn Checkpointed>>,
    /// The pipeline's Kafka transactions when a sink asks for exactly-once delivery (made by
    /// the first such sink, committed by the Kafka source; see [`crate::kafka::txn`]).
    pub transactions: Option<Arc<crate::kafka::txn::Slot>>,
}

impl BuildContext {
    /// The context of a component at `path` outside a pipeline (tests, tools): the current
    /// runtime (call it inside one), fresh totals, no state.
    pub fn new(path: &str) -> BuildContext {
        BuildContext {
            path: path.to_string(),
            runtime: tokio::runtime::Handle::current(),
            stats: Arc::default(),
            shutdown: CancellationToken::new(),
            state: None,
            transactions: None,
        }
    }

    /// The context of a part of this component at `key` (a fan-out's `sinks[1]`).
    pub fn child(&self, key: &str) -> BuildContext {
        BuildContext {
            path: format!("{}.{key}", self.path),
            ..self.clone()
        }
    }

    /// The context of another top-level component at `path`.
    pub fn at(&self, path: &str) -> BuildContext {
        BuildContext {
            path: path.to_string(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for BuildContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildContext")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A component that could not be built: which one (its key path) and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up `{component}`: {cause:#}")]
pub struct SetupError {
    /// The component's key path in the config, e.g. `sink.sinks[1]`.
    pub component: String,
    cause: anyhow::Error,
}

impl SetupError {
    /// `cause` as the failure to set up `component`, unless it already is the setup error of a
    /// part of it (a fan-out's child), which names the part more precisely.
    pub fn of(component: &str, cause: anyhow::Error) -> SetupError {
        match cause.downcast::<SetupError>() {
            Ok(e) => e,
            Err(cause) => SetupError {
                component: component.to_string(),
                cause,
            },
        }
    }

    /// Why it failed.
    pub fn cause(&self) -> &anyhow::Error {
        &self.cause
    }
}

/// Runs a start-up check, failing it after [`CHECK_TIMEOUT`] with "no answer from `what`".
pub async fn check<T>(
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("no answer from {what} within {CHECK_TIMEOUT:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setup_error_names_the_innermost_component() {
        let plain = SetupError::of("sink", anyhow::anyhow!("cannot reach DynamoDB"));
        assert_eq!(plain.component, "sink");
        assert_eq!(
            plain.to_string(),
            "cannot set up `sink`: cannot reach DynamoDB"
        );
        let inner = SetupError::of("sink.sinks[1]", anyhow::anyhow!("cannot reach DynamoDB"));
        let outer = SetupError::of("sink", anyhow::Error::new(inner).context("fanout"));
        assert_eq!(outer.component, "sink.sinks[1]");
        assert_eq!(
            outer.to_string(),
            "cannot set up `sink.sinks[1]`: cannot reach DynamoDB"
        );
    }
}
