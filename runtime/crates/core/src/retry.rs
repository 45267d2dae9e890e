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

/// What kind of failure a sink reported: decides which [`RetryConfig`] policy applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Network, timeouts, a service error that may clear.
    Transient,
    /// The service asks us to slow down (HTTP 429, AWS throttling, a full producer queue).
    Throttle,
    /// The target is misconfigured or refuses us (credentials, permissions, a missing table,
    /// stream or topic): it will not clear without an operator.
    Setup,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Transient => "transient",
            FailureClass::Throttle => "throttle",
            FailureClass::Setup => "setup",
        }
    }
}

/// One class's policy: the wait before the first retry doubles on each further retry up to
/// `max_delay` (±25 %); after `max_attempts` failed writes of one batch (0: no limit) the pipeline
/// gives up on it: the batch goes to the failure sink if `invalid_after_max`, otherwise weir
/// stops with the error and acknowledges nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassPolicy {
    pub delay: Duration,
    pub max_delay: Duration,
    pub max_attempts: u32,
    pub invalid_after_max: bool,
}

impl ClassPolicy {
    /// The backoff between this class's retries.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            first: self.delay,
            max: self.max_delay,
            jitter: Jitter::Quarter,
        }
    }

    /// Whether `attempts` failed writes of one batch exhaust this policy.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts != 0 && attempts >= self.max_attempts
    }
}

/// `[retry]`: what the pipeline does when a sink's write fails, per [`FailureClass`] (the
/// `retry` block of Snowbridge, with its names: `delay_ms` is accepted for `delay`).
///
/// ```toml
/// [retry.transient]      # defaults: 100 ms doubling to 10 s, retried until it works
/// max_attempts = 10
/// invalid_after_max = true
/// [retry.setup]          # defaults: 20 s doubling to 2 min, 5 attempts, then weir stops
/// delay = "5s"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub transient: ClassPolicy,
    pub throttle: ClassPolicy,
    pub setup: ClassPolicy,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            // weir's behaviour before `[retry]` existed: an outage holds the source back and
            // ends when the service is back, without losing or failing anything.
            transient: ClassPolicy {
                delay: PIPELINE.first,
                max_delay: PIPELINE.max,
                max_attempts: 0,
                invalid_after_max: false,
            },
            throttle: ClassPolicy {
                delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(30),
                max_attempts: 0,
                invalid_after_max: false,
            },
            // Snowbridge's defaults: a misconfigured target stops weir after five tries instead
            // of stalling it silently.
            setup: ClassPolicy {
                delay: Duration::from_secs(20),
                max_delay: Duration::from_secs(120),
                max_attempts: 5,
                invalid_after_max: false,
            },
        }
    }
}

impl RetryConfig {
    pub fn policy(&self, class: FailureClass) -> &ClassPolicy {
        match class {
            FailureClass::Transient => &self.transient,
            FailureClass::Throttle => &self.throttle,
            FailureClass::Setup => &self.setup,
        }
    }

    /// Reads `[retry]` (absent: the defaults); a class table may set any of its keys.
    pub fn from_value(
        v: Option<::config::Value>,
        origin: &crate::config::Origin,
    ) -> Result<Self, crate::config::ConfigError> {
        let mut out = RetryConfig::default();
        let Some(v) = v else { return Ok(out) };
        let settings: RetrySettings = origin.deserialize(v)?;
        for (name, given, policy) in [
            ("transient", settings.transient, &mut out.transient),
            ("throttle", settings.throttle, &mut out.throttle),
            ("setup", settings.setup, &mut out.setup),
        ] {
            let Some(g) = given else { continue };
            if let Some(d) = g.delay {
                policy.delay = d.0;
                // A longer first wait than the default cap raises the cap with it.
                policy.max_delay = policy.max_delay.max(d.0);
            }
            if let Some(d) = g.max_delay {
                policy.max_delay = d.0;
            }
            if let Some(n) = g.max_attempts {
                policy.max_attempts = n;
            }
            if let Some(b) = g.invalid_after_max {
                policy.invalid_after_max = b;
            }
            if policy.delay.is_zero() {
                return Err(origin.error(
                    &format!("{name}.delay"),
                    "expected a duration of at least 1 ms (e.g. \"500ms\" or 500), found 0",
                ));
            }
            if policy.max_delay < policy.delay {
                return Err(origin.error(
                    &format!("{name}.max_delay"),
                    format!(
                        "expected at least `delay` ({:?}), found {:?}",
                        policy.delay, policy.max_delay
                    ),
                ));
            }
        }
        Ok(out)
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrySettings {
    transient: Option<ClassSettings>,
    throttle: Option<ClassSettings>,
    setup: Option<ClassSettings>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassSettings {
    #[serde(alias = "delay_ms")]
    delay: Option<crate::config::Duration>,
    max_delay: Option<crate::config::Duration>,
    max_attempts: Option<u32>,
    invalid_after_max: Option<bool>,
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

    fn retry(toml: &str) -> Result<RetryConfig, crate::config::ConfigError> {
        let v: ::config::Value = ::config::Config::builder()
            .add_source(::config::File::from_str(toml, ::config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        let t = v.into_table().unwrap();
        RetryConfig::from_value(
            t.get("retry").cloned(),
            &crate::config::Origin::new("p.toml", "retry"),
        )
    }

    #[test]
    fn retry_section_overrides_what_it_names_and_keeps_the_rest() {
        assert_eq!(retry("x = 1").unwrap(), RetryConfig::default());
        let r = retry(
            "[retry.transient]\ndelay_ms = 5000\nmax_attempts = 10\ninvalid_after_max = true\n[retry.setup]\nmax_attempts = 3\n",
        )
        .unwrap();
        let d = RetryConfig::default();
        assert_eq!(r.transient.delay, Duration::from_secs(5));
        assert_eq!(r.transient.max_delay, Duration::from_secs(10));
        assert_eq!(r.transient.max_attempts, 10);
        assert!(r.transient.invalid_after_max);
        assert_eq!(r.setup.max_attempts, 3);
        assert_eq!(r.setup.delay, d.setup.delay);
        assert_eq!(r.throttle, d.throttle);
        assert!(r.transient.exhausted(10) && !r.transient.exhausted(9));
        assert!(!d.transient.exhausted(u32::MAX), "0: no limit");
    }

    #[test]
    fn retry_section_errors_name_the_key() {
        let e = retry("[retry.transient]\nmax_atempts = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("p.toml") && e.contains("max_atempts"), "{e}");
        let e = retry("[retry.setup]\ndelay = \"2s\"\nmax_delay = \"1s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.setup.max_delay"), "{e}");
        let e = retry("[retry.throttle]\ndelay = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.throttle.delay"), "{e}");
    }

    #[test]
    fn jitter_spreads_the_delays() {
        let seen: std::collections::HashSet<Duration> =
            (0..100).map(|_| PIPELINE.delay(5)).collect();
        assert!(seen.len() > 10, "{seen:?}");
    }
}
