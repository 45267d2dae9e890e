//! `file`: appends one line per record to a file.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Deserialize;

use super::{write_lines, Progress, Sink, SinkConfig, SinkError, SinkType};
use crate::config::{ConfigError, Origin};
use crate::record::Record;
use crate::setup::BuildContext;

/// ```toml
/// [sink]
/// type = "file"
/// path = "out/media-events.tsv"
/// append = false    # default: truncate at start
/// fsync = false     # true: fsync before acknowledging (survives power loss, slower)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub append: bool,
    #[serde(default)]
    pub fsync: bool,
}

impl SinkType for FileConfig {
    const TYPE: &'static str = "file";
}

#[async_trait]
impl SinkConfig for FileConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(origin.error("path", "expected a file path, found an empty string"));
        }
        Ok(())
    }

    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Sink>> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append)
            .truncate(!self.append)
            .open(&self.path)
            .with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(Box::new(FileSink {
            file,
            fsync: self.fsync,
        }))
    }
}

struct FileSink {
    file: File,
    fsync: bool,
}

#[async_trait]
impl Sink for FileSink {
    async fn write(
        &mut self,
        records: &[Record],
        _progress: &mut Progress,
    ) -> Result<(), SinkError> {
        let (file, fsync) = (&mut self.file, self.fsync);
        tokio::task::block_in_place(|| {
            write_lines(file, records)?;
            if fsync {
                sync(file)?;
            }
            Ok::<_, std::io::Error>(())
        })
        .map_err(|e| SinkError::Retriable(e.into()))
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        let file = &mut self.file;
        tokio::task::block_in_place(|| sync(file)).map_err(|e| SinkError::Retriable(e.into()))
    }
}

/// fsync, except where the file cannot be synced (a pipe or a terminal: EINVAL), which is fine.
fn sync(file: &File) -> std::io::Result<()> {
    match file.sync_data() {
        Err(e) if e.raw_os_error() == Some(22) => Ok(()),
        other => other,
    }
}
