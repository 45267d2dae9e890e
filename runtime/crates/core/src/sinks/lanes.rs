//! A batch as requests by lane: what the sinks that write through a batch API share (`sqs`,
//! `pubsub`). Records go into requests of at most `max_n` entries and `max_bytes` bytes; each
//! record has a lane (a hash of its ordering key, or 0). Without order, every request goes at once
//! (up to `concurrency`); with order, each lane's requests go one after the other, stopping at the
//! first that fails (what follows is sent when the batch is retried, after it), and the lanes at
//! once, so that one key's records land in the order of the batch.

use std::future::Future;

use futures::stream::{self, StreamExt};

use super::{Progress, Refusal, SinkError};

/// One record ready to send: its index in the batch, its size and its entry.
pub type Entry<E> = (usize, usize, E);

/// What one request (and its retries) did: records landed, records refused for good, and the
/// error that stopped it, if any.
#[derive(Default)]
pub struct Outcome {
    pub landed: Vec<usize>,
    pub refused: Vec<(usize, Refusal)>,
    pub error: Option<SinkError>,
}

/// Groups `entries` (lane, entry) into requests per lane of ≤ `max_n` entries and ≤ `max_bytes`
/// bytes (a single entry over `max_bytes` goes alone).
pub fn plan<E>(
    lanes: usize,
    max_n: usize,
    max_bytes: usize,
    entries: impl IntoIterator<Item = (usize, Entry<E>)>,
) -> Vec<Vec<Vec<Entry<E>>>> {
    let mut requests: Vec<Vec<Vec<Entry<E>>>> = (0..lanes).map(|_| Vec::new()).collect();
    let mut current: Vec<(Vec<Entry<E>>, usize)> = (0..lanes).map(|_| (Vec::new(), 0)).collect();
    for (lane, entry) in entries {
        let (cur, bytes) = &mut current[lane];
        if cur.len() == max_n || (!cur.is_empty() && *bytes + entry.1 > max_bytes) {
            requests[lane].push(std::mem::take(cur));
            *bytes = 0;
        }
        *bytes += entry.1;
        cur.push(entry);
    }
    for (lane, (cur, _)) in current.into_iter().enumerate() {
        if !cur.is_empty() {
            requests[lane].push(cur);
        }
    }
    requests
}

/// Sends the planned requests with `send`, `concurrency` at once; `ordered`: each lane's one
/// after the other.
pub async fn send_all<E, F, Fut>(
    requests: Vec<Vec<Vec<Entry<E>>>>,
    ordered: bool,
    concurrency: usize,
    send: F,
) -> Vec<Outcome>
where
    F: Fn(Vec<Entry<E>>) -> Fut,
    Fut: Future<Output = Outcome>,
{
    if ordered {
        let send = &send;
        stream::iter(requests)
            .map(|lane| async move {
                let mut outcomes = Vec::with_capacity(lane.len());
                for req in lane {
                    let o = send(req).await;
                    let failed = o.error.is_some();
                    outcomes.push(o);
                    if failed {
                        break;
                    }
                }
                outcomes
            })
            .buffer_unordered(concurrency)
            .flat_map(stream::iter)
            .collect()
            .await
    } else {
        stream::iter(requests.into_iter().flatten())
            .map(send)
            .buffer_unordered(concurrency)
            .collect()
            .await
    }
}

/// Notes the outcomes in `progress`: the first error, else the batch is written.
pub fn settle(outcomes: Vec<Outcome>, progress: &mut Progress) -> Result<(), SinkError> {
    let mut error = None;
    for o in outcomes {
        for i in o.landed {
            progress.take(i);
        }
        for (i, why) in o.refused {
            progress.reject(i, why);
        }
        if error.is_none() {
            error = o.error;
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    progress.written()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_respect_count_and_bytes_per_lane() {
        let entries = (0..7).map(|i| (i % 2, (i, if i == 4 { 50 } else { 10 }, i)));
        let r = plan(2, 2, 30, entries);
        let idx = |lane: &Vec<Vec<Entry<usize>>>| -> Vec<Vec<usize>> {
            lane.iter()
                .map(|q| q.iter().map(|e| e.0).collect())
                .collect()
        };
        // Lane 0: 0, 2, 4 (50 bytes: alone), 6. Lane 1: 1, 3, 5.
        assert_eq!(idx(&r[0]), vec![vec![0, 2], vec![4], vec![6]]);
        assert_eq!(idx(&r[1]), vec![vec![1, 3], vec![5]]);
    }

    #[tokio::test]
    async fn an_ordered_lane_stops_at_its_first_failure() {
        let r = plan(1, 1, 100, (0..3).map(|i| (0, (i, 1, ()))));
        let outcomes = send_all(r, true, 4, |req: Vec<Entry<()>>| async move {
            let i = req[0].0;
            Outcome {
                landed: if i == 1 { vec![] } else { vec![i] },
                refused: vec![],
                error: (i == 1).then(|| SinkError::Retriable(anyhow::anyhow!("down"))),
            }
        })
        .await;
        assert_eq!(
            outcomes.len(),
            2,
            "the request after the failed one is not sent"
        );
        let mut p = Progress::default();
        assert!(settle(outcomes, &mut p).is_err());
        assert!(p.is_settled(0) && !p.is_settled(1) && !p.is_settled(2));
    }
}
