//! Newline-delimited records from any async reader, shared by the `stdin` and `file` sources.
//!
//! Reads large chunks into one buffer and splits it into zero-copy [`Bytes`] records. A line longer
//! than the limit is never held whole: its first bytes are kept for the bad row, the rest is
//! skipped up to the next newline, and a size violation goes to the failure sink.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::Emitter;
use crate::record::{Failed, FailureKind, Record};

const CHUNK: usize = 256 * 1024;
/// How much of an oversized line is kept for its bad row.
const OVERSIZED_KEEP: usize = 64 * 1024;

/// Outcome of [`pump`].
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// The reader reached its end.
    Eof,
    /// Shutdown was requested; what was read has been handed on.
    Shutdown,
}

struct Oversized {
    head: Bytes,
    total: usize,
}

/// Reads `reader` to its end (or until `shutdown`), emitting one record per line. `source` names
/// the input in bad rows (e.g. the file path).
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    emitter: &mut Emitter,
    shutdown: &CancellationToken,
    max_record_bytes: usize,
    source: &str,
) -> anyhow::Result<Ended> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    let mut oversized: Option<Oversized> = None;
    loop {
        if buf.capacity() - buf.len() < CHUNK / 4 {
            buf.reserve(CHUNK);
        }
        let deadline = emitter.deadline();
        let n = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                emitter.flush().await?;
                return Ok(Ended::Shutdown);
            }
            _ = sleep_until(deadline) => {
                emitter.flush().await?;
                continue;
            }
            r = reader.read_buf(&mut buf) => r?,
        };
        if n == 0 {
            // End of input: a final line without a newline is still a record.
            if let Some(o) = oversized.take() {
                let total = o.total + buf.len();
                emit_oversized(emitter, o.head, total, max_record_bytes, source).await?;
            } else if !buf.is_empty() {
                let line = buf.split().freeze();
                emit_line(emitter, line, max_record_bytes, source).await?;
            }
            emitter.flush().await?;
            return Ok(Ended::Eof);
        }
        let mut scanned = buf.len() - n;
        while let Some(pos) = memchr::memchr(b'\n', &buf[scanned..]) {
            let end = scanned + pos;
            if let Some(o) = oversized.take() {
                let total = o.total + end;
                let _ = buf.split_to(end + 1);
                emit_oversized(emitter, o.head, total, max_record_bytes, source).await?;
            } else {
                let mut line = buf.split_to(end + 1);
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                emit_line(emitter, line.freeze(), max_record_bytes, source).await?;
            }
            scanned = 0;
        }
        scanned = buf.len();
        // No newline in what is left: if it is already too long, start skipping the line.
        if let Some(o) = &mut oversized {
            o.total += buf.len();
            buf.clear();
        } else if scanned > max_record_bytes {
            let keep = scanned.min(OVERSIZED_KEEP);
            let head = Bytes::copy_from_slice(&buf[..keep]);
            oversized = Some(Oversized {
                head,
                total: scanned,
            });
            buf.clear();
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[inline]
async fn emit_line(
    emitter: &mut Emitter,
    line: Bytes,
    max_record_bytes: usize,
    source: &str,
) -> anyhow::Result<()> {
    if line.len() > max_record_bytes {
        let total = line.len();
        let head = line.slice(..total.min(OVERSIZED_KEEP));
        return emit_oversized(emitter, head, total, max_record_bytes, source).await;
    }
    if emitter.push(Record::new(line)) {
        emitter.flush().await?;
    }
    Ok(())
}

async fn emit_oversized(
    emitter: &mut Emitter,
    head: Bytes,
    total: usize,
    limit: usize,
    source: &str,
) -> anyhow::Result<()> {
    let failed = Failed {
        record: Record::new(head),
        kind: FailureKind::Oversized {
            actual: total,
            limit,
        },
        component: source.to_string(),
        reason: format!(
            "record of {total} bytes exceeds the limit of {limit} bytes (limits.max_record_bytes)"
        ),
    };
    if emitter.push_failed(failed) {
        emitter.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckCounter;
    use crate::observe::Stats;
    use crate::sources::BatchLimits;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    async fn split(input: &[u8], max: usize) -> (Vec<Vec<u8>>, Vec<(usize, Vec<u8>)>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let stats = Arc::new(Stats::default());
        let limits = BatchLimits {
            max_records: 3,
            max_bytes: 1 << 20,
            flush_interval: std::time::Duration::from_secs(10),
        };
        let mut em = Emitter::new(tx, limits, AckCounter::new(stats.clone()), stats);
        let token = CancellationToken::new();
        // A reader that yields tiny pieces exercises lines split across reads.
        let reader = tokio_test_reader(input);
        pump(reader, &mut em, &token, max, "test").await.unwrap();
        drop(em);
        let (mut good, mut bad) = (vec![], vec![]);
        while let Some(b) = rx.recv().await {
            good.extend(b.records.iter().map(|r| r.value.to_vec()));
            for f in &b.failed {
                if let FailureKind::Oversized { actual, .. } = f.kind {
                    bad.push((actual, f.record.value.to_vec()));
                }
            }
        }
        (good, bad)
    }

    fn tokio_test_reader(input: &[u8]) -> impl AsyncRead + Unpin {
        let (rd, mut wr) = tokio::io::simplex(7);
        let data = input.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in data.chunks(5) {
                wr.write_all(piece).await.unwrap();
            }
            wr.shutdown().await.unwrap();
        });
        rd
    }

    #[tokio::test]
    async fn splits_lines_across_reads_and_keeps_a_final_unterminated_line() {
        let (good, bad) = split(b"a\nbb\r\n\nccc\ndddd", 100).await;
        assert_eq!(
            good,
            vec![
                b"a".to_vec(),
                b"bb".to_vec(),
                b"".to_vec(),
                b"ccc".to_vec(),
                b"dddd".to_vec()
            ]
        );
        assert!(bad.is_empty());
    }

    #[tokio::test]
    async fn a_line_over_the_limit_becomes_one_size_violation() {
        let long = vec![b'x'; 50];
        let mut input = b"ok1\n".to_vec();
        input.extend_from_slice(&long);
        input.extend_from_slice(b"\nok2\n");
        let (good, bad) = split(&input, 20).await;
        assert_eq!(good, vec![b"ok1".to_vec(), b"ok2".to_vec()]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 50);
    }
}
