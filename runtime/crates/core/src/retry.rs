//! How long to wait before trying again: the backoff policies every retry loop of weir uses.
//!
//! A [`Backoff`] doubles its delay from `first` up to `max` and spreads it with [`Jitter`], so
//! that retrying writers (several workers, several instances) do not hit a recovering service
//! at the same moment. The policies in use are the constants below; a loop keeps its own attempt
//! count (1 for the first retry) and asks [`Backoff::delay`].

use std::time::Duration;

/// An exponential backoff policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub first: Duration,
    /// The delay stops doubling here (before jitter).
    pub max: Duration,
    pub jitter: Jitter,
}

/// How a delay is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the delay.
    None,
    /// Uniformly within ±25 % of the delay.
    Quarter,
    /// Uniformly between half the delay and the delay ("equal jitter").
    UpperHalf,
}

/// A sink's failed write, retried by the pipeline (the queue in front of the sink fills
/// meanwhile), and other waits on a whole component: 100 ms, 200 ms, 400 ms, … up to 10 s, ±25 %.
pub const PIPELINE: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(10),
    jitter: Jitter::Quarter,
};

/// One request inside a component (an AWS call, items a service returned unprocessed): 100 ms
/// doubling to 5 s, each between half and all of that.
pub const REQUEST: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    jitter: Jitter::UpperHalf,
};

/// A WebAssembly transform that failed batch after batch: 10 ms doubling to 5 s before each next
/// batch (no jitter: one worker waits on itself).
pub const GUEST: Backoff = Backoff {
    first: Duration::from_millis(10),
    max: Duration::from_secs(5),
    jitter: Jitter::None,
};

impl Backoff {
    /// The wait before retry number `attempt` (1: the first retry; 0 counts as 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let base = self
            .first
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(Duration::from_millis(1));
        let ms = base.as_millis() as u64;
        let ms = match self.jitter {
            Jitter::None => ms,
            Jitter::Quarter => {
                let spread = ms / 4;
                (ms - spread + fastrand::u64(0..=2 * spread)).max(1)
            }
            Jitter::UpperHalf => ms / 2 + fastrand::u64(0..=ms - ms / 2),
        };
        Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_their_jitter() {
        let ms = |d: Duration| d.as_millis() as u64;
        for _ in 0..200 {
            assert_eq!(ms(GUEST.delay(1)), 10);
            assert_eq!(ms(GUEST.delay(4)), 80);
            assert_eq!(ms(GUEST.delay(100)), 5_000);
            let d = ms(PIPELINE.delay(1));
            assert!((75..=125).contains(&d), "{d}");
            let d = ms(PIPELINE.delay(3));
            assert!((300..=500).contains(&d), "{d}");
            let d = ms(PIPELINE.delay(u32::MAX));
            assert!((7_500..=12_500).contains(&d), "{d}");
            let d = ms(REQUEST.delay(2));
            assert!((100..=200).contains(&d), "{d}");
            let d = ms(REQUEST.delay(20));
            assert!((2_500..=5_000).contains(&d), "{d}");
        }
        assert_eq!(GUEST.delay(0), GUEST.delay(1));
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let seen: std::collections::HashSet<Duration> =
            (0..100).map(|_| PIPELINE.delay(5)).collect();
        assert!(seen.len() > 10, "{seen:?}");
    }
}
