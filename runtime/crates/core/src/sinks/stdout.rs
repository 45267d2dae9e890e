//! `stdout` and `stderr`: one line per record on the process's output streams.

use std::io::Write;

use async_trait::async_trait;
use serde::Deserialize;

use super::{write_lines, Progress, Sink, SinkConfig, SinkError, SinkType};
use crate::record::Record;
use crate::setup::BuildContext;

/// ```toml
/// [sink]
/// type = "stdout"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl SinkType for StdoutConfig {
    const TYPE: &'static str = "stdout";
}

#[async_trait]
impl SinkConfig for StdoutConfig {
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(Console { stderr: false }))
    }
}

/// ```toml
/// [failure]
/// type = "stderr"     # the failure sink's default
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StderrConfig {}

impl SinkType for StderrConfig {
    const TYPE: &'static str = "stderr";
}

#[async_trait]
impl SinkConfig for StderrConfig {
    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(Console { stderr: true }))
    }
}

struct Console {
    stderr: bool,
}

#[async_trait]
impl Sink for Console {
    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let stderr = self.stderr;
        tokio::task::block_in_place(|| {
            if stderr {
                let mut out = std::io::stderr().lock();
                write_lines(&mut out, records).and_then(|_| out.flush())
            } else {
                let mut out = std::io::stdout().lock();
                write_lines(&mut out, records).and_then(|_| out.flush())
            }
        })
        .map_err(|e| match e.kind() {
            // A closed pipe will not reopen.
            std::io::ErrorKind::BrokenPipe => SinkError::Fatal(e.into()),
            _ => SinkError::Retriable(e.into()),
        })
    }
}
