//! `stdin`: one record per line of standard input.

use async_trait::async_trait;
use serde::Deserialize;

use super::{lines, Source, SourceConfig, SourceContext, SourceType};
use crate::setup::BuildContext;

/// ```toml
/// [source]
/// type = "stdin"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinConfig {}

impl SourceType for StdinConfig {
    const TYPE: &'static str = "stdin";
}

#[async_trait]
impl SourceConfig for StdinConfig {
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(Stdin))
    }
}

struct Stdin;

#[async_trait]
impl Source for Stdin {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        let ended = lines::pump(
            tokio::io::stdin(),
            &mut ctx.emitter,
            &ctx.shutdown,
            ctx.max_record_bytes,
            "stdin",
        )
        .await?;
        tracing::debug!(?ended, "stdin source finished");
        Ok(())
    }
}
