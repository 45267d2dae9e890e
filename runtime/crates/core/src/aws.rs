//! What the AWS components (DynamoDB sink, Kinesis source and sink) share: loading the SDK
//! configuration from the standard chain with an endpoint override, and sorting SDK errors into
//! what weir does about them.

use std::fmt::Debug;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::{ConfigError, Origin};

/// Region, credentials and endpoint from the standard AWS chain (environment, profile files, web
/// identity, container and instance metadata), with `region` and `endpoint_url` from the config
/// taking precedence when set (`endpoint_url` for LocalStack and emulators).
pub async fn sdk_config(region: Option<&str>, endpoint_url: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// Default `max_attempts` of the AWS sinks: tries per request before the batch is retried whole.
pub fn default_max_attempts() -> u32 {
    10
}

/// Checks the request settings every AWS sink has (`concurrency`, `max_attempts`).
pub fn check_requests(
    origin: &Origin,
    concurrency: usize,
    max_attempts: u32,
) -> Result<(), ConfigError> {
    if concurrency == 0 {
        return Err(origin.error("concurrency", "expected at least 1, found 0"));
    }
    if max_attempts == 0 {
        return Err(origin.error("max_attempts", "expected at least 1, found 0"));
    }
    Ok(())
}

/// What an SDK error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling or capacity: retry later, with backoff.
    Throttled,
    /// Network, timeouts, 5xx, setup problems that may clear (a table being created): retry.
    Transient,
    /// The request itself is invalid (item too large, bad key): retrying will not help.
    Invalid,
    /// A conditional write's condition did not hold.
    ConditionFailed,
}

const THROTTLING: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "KMSThrottlingException",
    "TooManyRequestsException",
];

/// Sorts an SDK error by its service error code.
pub fn classify<E, R>(err: &SdkError<E, R>) -> ErrorClass
where
    E: ProvideErrorMetadata + Debug,
    R: Debug,
{
    match err {
        SdkError::ServiceError(ctx) => classify_code(ctx.err().code()),
        SdkError::ConstructionFailure(_) => ErrorClass::Invalid,
        _ => ErrorClass::Transient,
    }
}

pub fn classify_code(code: Option<&str>) -> ErrorClass {
    match code {
        Some(c) if THROTTLING.contains(&c) => ErrorClass::Throttled,
        Some("ConditionalCheckFailedException") => ErrorClass::ConditionFailed,
        Some("ValidationException" | "InvalidArgumentException" | "SerializationException") => {
            ErrorClass::Invalid
        }
        _ => ErrorClass::Transient,
    }
}

/// A readable one-line description of an SDK error (code and message when the service sent them).
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    match err {
        SdkError::ServiceError(ctx) => format!(
            "{}: {}",
            ctx.err().code().unwrap_or("service error"),
            ctx.err().message().unwrap_or("no message")
        ),
        other => {
            let mut s = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(e) = source {
                s.push_str(": ");
                s.push_str(&e.to_string());
                source = e.source();
            }
            s
        }
    }
}

/// Backoff for retries inside an AWS component: 50 ms doubling to 5 s, with full jitter in the
/// upper half (so retrying writers spread out instead of hitting a hot partition together).
pub fn backoff(attempt: u32) -> std::time::Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(7)).min(5_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    std::time::Duration::from_millis(base / 2 + nanos % (base / 2 + 1))
}
