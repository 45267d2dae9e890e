//! Length-prefixed records from any async reader: each record is a 4-byte big-endian length
//! followed by that many bytes (Thrift's framed transport), for binary records such as raw
//! Snowplow `CollectorPayload`s. Used by the `file` source with `framing = "length_prefixed"`.
//!
//! A frame longer than the limit is skipped without being held (its first bytes go to the
//! failure sink as a size violation); a frame cut short by the end of the input becomes an
//! invalid record. Binary payloads of failures are written base64-encoded.

use base64::Engine as _;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use super::lines::Ended;
use super::Emitter;
use crate::record::{Failed, FailureKind, Record};

const CHUNK: usize = 256 * 1024;
/// How much of an oversized frame is kept for its bad row.
const OVERSIZED_KEEP: usize = 48 * 1024;

fn b64(bytes: &[u8]) -> Bytes {
    Bytes::from(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Reads `reader` to its end (or until `shutdown`), emitting one record per frame.
pub async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    emitter: &mut Emitter,
    shutdown: &CancellationToken,
    max_record_bytes: usize,
    source: &str,
) -> anyhow::Result<Ended> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    // Bytes of an oversized frame still to skip, with what is kept of it.
    let mut skipping: Option<(usize, Vec<u8>, usize)> = None;
    loop {
        // Hand on every complete frame in the buffer.
        loop {
            if let Some((left, head, total)) = &mut skipping {
                let n = (*left).min(buf.len());
                if head.len() < OVERSIZED_KEEP {
                    let keep = n.min(OVERSIZED_KEEP - head.len());
                    head.extend_from_slice(&buf[..keep]);
                }
                buf.advance(n);
                *left -= n;
                if *left > 0 {
                    break;
                }
                let (_, head, total) = (0, std::mem::take(head), *total);
                skipping = None;
                let failed = Failed {
                    record: Record::new(b64(&head)),
                    kind: FailureKind::Oversized {
                        actual: total,
                        limit: max_record_bytes,
                    },
                    component: source.to_string(),
                    reason: format!(
                        "frame of {total} bytes exceeds the limit of {max_record_bytes} bytes (limits.max_record_bytes)"
                    ),
                };
                if emitter.push_failed(failed) {
                    emitter.flush().await?;
                }
                continue;
            }
            if buf.len() < 4 {
                break;
            }
            let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if len > max_record_bytes {
                buf.advance(4);
                skipping = Some((len, Vec::new(), len));
                continue;
            }
            if buf.len() < 4 + len {
                buf.reserve(4 + len - buf.len());
                break;
            }
            buf.advance(4);
            let record = buf.split_to(len).freeze();
            if emitter.push(Record::new(record)) {
                emitter.flush().await?;
            }
        }
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
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                emitter.flush().await?;
                continue;
            }
            r = reader.read_buf(&mut buf) => r?,
        };
        if n == 0 {
            let cut = match skipping.take() {
                Some((left, head, total)) => Some((head, total - left, total)),
                None if !buf.is_empty() => {
                    let have = buf.len().saturating_sub(4);
                    let want = if buf.len() >= 4 {
                        u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize
                    } else {
                        4
                    };
                    Some((buf.split().to_vec(), have, want))
                }
                None => None,
            };
            if let Some((head, have, want)) = cut {
                let failed = Failed::invalid(
                    Record::new(b64(&head)),
                    source,
                    format!("truncated frame at the end of the input: {have} of {want} bytes"),
                );
                emitter.push_failed(failed);
            }
            emitter.flush().await?;
            return Ok(Ended::Eof);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::AckCounter;
    use crate::observe::Stats;
    use crate::sources::BatchLimits;
    use std::sync::Arc;
    use tokio::sync::mpsc;

    fn frame(bytes: &[u8]) -> Vec<u8> {
        let mut v = (bytes.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(bytes);
        v
    }

    async fn split(input: Vec<u8>, max: usize) -> (Vec<Vec<u8>>, Vec<String>) {
        let (tx, mut rx) = mpsc::channel(1000);
        let stats = Arc::new(Stats::default());
        let limits = BatchLimits {
            max_records: 2,
            max_bytes: 1 << 20,
            flush_interval: std::time::Duration::from_secs(10),
        };
        let mut em = Emitter::new(tx, limits, AckCounter::new(stats.clone()), stats);
        // Tiny reads exercise frames split across reads.
        let (rd, mut wr) = tokio::io::simplex(3);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(5) {
                wr.write_all(piece).await.unwrap();
            }
            wr.shutdown().await.unwrap();
        });
        pump(rd, &mut em, &CancellationToken::new(), max, "test")
            .await
            .unwrap();
        drop(em);
        let (mut good, mut bad) = (vec![], vec![]);
        while let Some(b) = rx.recv().await {
            good.extend(b.records.iter().map(|r| r.value.to_vec()));
            bad.extend(b.failed.iter().map(|f| f.reason.clone()));
        }
        (good, bad)
    }

    #[tokio::test]
    async fn frames_split_across_reads_oversized_and_truncated() {
        let mut input = frame(b"\x00\x01binary\n\x00");
        input.extend(frame(&[7u8; 40]));
        input.extend(frame(b""));
        input.extend(frame(b"last"));
        input.extend_from_slice(&[0, 0, 0, 9, b'c', b'u']);
        let (good, bad) = split(input, 20).await;
        assert_eq!(
            good,
            vec![b"\x00\x01binary\n\x00".to_vec(), vec![], b"last".to_vec()]
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("frame of 40 bytes"));
        assert!(bad[1].contains("truncated frame"));
    }
}
