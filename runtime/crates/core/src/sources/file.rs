//! `file`: one record per line of one or more files, given as paths or glob patterns, read in
//! order; gzip files are decompressed (by extension, or always/never with `gzip`). With
//! `framing = "length_prefixed"` each record is a 4-byte big-endian length and that many bytes
//! instead (binary records such as raw Snowplow collector payloads).

use std::path::PathBuf;

use anyhow::Context as _;
use async_trait::async_trait;
use serde::Deserialize;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, BufReader, ReadBuf};

use super::{frames, lines, Source, SourceConfig, SourceContext, SourceType};
use crate::config::{ConfigError, Origin};
use crate::setup::BuildContext;

/// ```toml
/// [source]
/// type = "file"
/// paths = ["events/*.tsv.gz", "more.tsv"]
/// gzip = true            # optional: decompress; by default, files ending in .gz are
/// framing = "lines"      # optional: or "length_prefixed" (u32 big-endian length + bytes)
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Paths or glob patterns; matches of each pattern are read in sorted order.
    pub paths: Vec<String>,
    /// Decompress gzip: `true` or `false`; when absent, by the `.gz` extension.
    pub gzip: Option<bool>,
    /// How records are delimited.
    #[serde(default)]
    pub framing: Framing,
}

/// How the `file` source splits its input into records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// One record per line (`\n`, an optional `\r` before it is dropped).
    #[default]
    Lines,
    /// A 4-byte big-endian length, then that many bytes (Thrift's framed transport).
    LengthPrefixed,
}

impl SourceType for FileConfig {
    const TYPE: &'static str = "file";
}

impl FileConfig {
    /// Every file the patterns match, in order, or an error naming a pattern that matches nothing.
    pub fn expand(&self) -> Result<Vec<PathBuf>, String> {
        let mut out = Vec::new();
        for pattern in &self.paths {
            let matches: Vec<PathBuf> = glob::glob(pattern)
                .map_err(|e| format!("`{pattern}` is not a valid glob pattern: {e}"))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if matches.is_empty() {
                return Err(format!("`{pattern}` matches no file"));
            }
            out.extend(matches);
        }
        Ok(out)
    }
}

#[async_trait]
impl SourceConfig for FileConfig {
    fn check(&self, origin: &Origin) -> Result<(), ConfigError> {
        if self.paths.is_empty() {
            return Err(origin.error(
                "paths",
                "expected at least one path or glob pattern, found an empty list",
            ));
        }
        // Missing files are reported at run time, not here: `weir validate` must pass on a config
        // whose input does not exist yet (e.g. in CI, or an image build).
        for p in &self.paths {
            if let Err(e) = glob::Pattern::new(p) {
                return Err(
                    origin.error("paths", format!("`{p}` is not a valid glob pattern: {e}"))
                );
            }
        }
        Ok(())
    }

    async fn build(&self, _ctx: &BuildContext) -> anyhow::Result<Box<dyn Source>> {
        let files = self.expand().map_err(|e| anyhow::anyhow!("paths: {e}"))?;
        Ok(Box::new(FileSource {
            files,
            gzip: self.gzip,
            framing: self.framing,
        }))
    }
}

struct FileSource {
    files: Vec<PathBuf>,
    gzip: Option<bool>,
    framing: Framing,
}

#[async_trait]
impl Source for FileSource {
    async fn run(self: Box<Self>, mut ctx: SourceContext) -> anyhow::Result<()> {
        for path in &self.files {
            let name = path.display().to_string();
            let file = std::fs::File::open(path)
                .map(BlockingFile)
                .with_context(|| format!("cannot open {name}"))?;
            let gz = self
                .gzip
                .unwrap_or_else(|| path.extension().is_some_and(|e| e == "gz"));
            tracing::info!(file = %name, gzip = gz, "reading");
            let reader: Box<dyn AsyncRead + Unpin + Send> = if gz {
                let mut dec =
                    async_compression::tokio::bufread::GzipDecoder::new(BufReader::new(file));
                dec.multiple_members(true);
                Box::new(dec)
            } else {
                Box::new(file)
            };
            let (em, stop, max) = (&mut ctx.emitter, &ctx.shutdown, ctx.max_record_bytes);
            let ended = match self.framing {
                Framing::Lines => lines::pump(reader, em, stop, max, &name).await,
                Framing::LengthPrefixed => frames::pump(reader, em, stop, max, &name).await,
            }
            .with_context(|| format!("reading {name}"))?;
            if ended == lines::Ended::Shutdown {
                break;
            }
        }
        Ok(())
    }
}

/// A local file read in place: a read of a regular file returns without waiting on anything but
/// the disk, so it runs on the current worker (inside `block_in_place`) instead of being shipped
/// to tokio's blocking pool and copied twice, as `tokio::fs::File` does.
struct BlockingFile(std::fs::File);

impl AsyncRead for BlockingFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let file = &mut self.0;
        let n = tokio::task::block_in_place(|| file.read(buf.initialize_unfilled()))?;
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}
