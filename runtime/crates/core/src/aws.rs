//! What the AWS components (DynamoDB sink, Kinesis source and sink) share: loading the SDK
//! configuration from the standard chain with an endpoint override, sorting SDK errors into what
//! weir does about them, and creating DynamoDB tables (the sink's, the Kinesis source's leases).

use std::fmt::Debug;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::{ConfigError, Origin};

/// Region, credentials and endpoint from the standard AWS chain (environment, profile files, web
/// identity, container and instance metadata), with `region` and `endpoint_url` from the config
/// taking precedence when set (`endpoint_url` for LocalStack and emulators). With `role_arn`, the
/// credentials are those of that role, assumed through STS with the chain's credentials (and
/// renewed before they expire), as Snowbridge's `role_arn` does.
pub async fn sdk_config(
    region: Option<&str>,
    endpoint_url: Option<&str>,
    role_arn: Option<&str>,
) -> SdkConfig {
    let loader = || {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(Region::new(r.to_string()));
        }
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        loader
    };
    let base = loader().load().await;
    let Some(role) = role_arn else {
        return base;
    };
    let assumed = aws_config::sts::AssumeRoleProvider::builder(role)
        .session_name("weir")
        .configure(&base)
        .build()
        .await;
    loader().credentials_provider(assumed).load().await
}

/// Checks a `role_arn` setting: an IAM role ARN.
pub fn check_role_arn(origin: &Origin, role_arn: Option<&str>) -> Result<(), ConfigError> {
    match role_arn {
        Some(r) if !(r.starts_with("arn:") && r.contains(":role/")) => Err(origin.error(
            "role_arn",
            format!("expected an IAM role ARN such as \"arn:aws:iam::123456789012:role/name\", found {r:?}"),
        )),
        _ => Ok(()),
    }
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
    /// The service refuses the credentials or permissions, or does not know the table or
    /// stream: an operator must act (`[retry.setup]`).
    Setup,
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
    // SQS
    "RequestThrottled",
    "AWS.SimpleQueueService.RequestThrottled",
    "OverLimit",
];

impl ErrorClass {
    /// The `[retry]` class of a write that failed this way and is worth retrying.
    pub fn retry_class(self) -> crate::retry::FailureClass {
        use crate::retry::FailureClass;
        match self {
            ErrorClass::Throttled => FailureClass::Throttle,
            ErrorClass::Setup => FailureClass::Setup,
            _ => FailureClass::Transient,
        }
    }
}

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
        Some(c) if REFUSED.contains(&c) || NOT_FOUND.contains(&c) => ErrorClass::Setup,
        Some("ConditionalCheckFailedException") => ErrorClass::ConditionFailed,
        Some("ValidationException" | "InvalidArgumentException" | "SerializationException") => {
            ErrorClass::Invalid
        }
        _ => ErrorClass::Transient,
    }
}

/// Service error codes of a request whose credentials the service refused (unknown, expired or
/// badly signed keys; no permission).
const REFUSED: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationTokenException",
    "MissingAuthenticationToken",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
    "AccessDeniedException",
    "AccessDenied",
    "NotAuthorized",
    "UnauthorizedOperation",
    "AuthFailure",
];

/// Service error codes of a resource the service does not know (a table, a stream, a queue).
const NOT_FOUND: &[&str] = &[
    "ResourceNotFoundException",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
];

/// Whether `err` is the service answering that it does not know a resource (a table, a stream,
/// a queue).
pub fn not_found<E, R>(err: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(err, SdkError::ServiceError(ctx) if ctx.err().code().is_some_and(|c| NOT_FOUND.contains(&c)))
}

/// Why a start-up check could not use `service` (at `endpoint_url`, if the config sets one):
/// the credentials were refused, the service cannot be reached, or what it answered.
pub fn unusable<E, R>(
    service: &str,
    endpoint_url: Option<&str>,
    err: &SdkError<E, R>,
) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    let at = endpoint_url.unwrap_or("its regional endpoint");
    match err {
        SdkError::ServiceError(ctx) if ctx.err().code().is_some_and(|c| REFUSED.contains(&c)) => {
            anyhow::anyhow!(
                "{service} at {at} refused the credentials: {}",
                describe(err)
            )
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            anyhow::anyhow!("cannot reach {service} at {at}: {}", describe(err))
        }
        _ => anyhow::anyhow!("{service} at {at}: {}", describe(err)),
    }
}

/// The start-up check of a Kinesis component: `stream` exists and the credentials are accepted.
pub async fn check_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    endpoint_url: Option<&str>,
) -> anyhow::Result<()> {
    match client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => anyhow::bail!("the stream `{stream}` does not exist"),
        // Throttled: reachable, and the credentials were accepted.
        Err(e) if classify(&e) == ErrorClass::Throttled => Ok(()),
        Err(e) => Err(unusable("Kinesis", endpoint_url, &e).context(format!("stream `{stream}`"))),
    }
}

/// An SQS queue as a component found it at start-up.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    pub url: String,
    /// A FIFO queue (its name ends in `.fifo`): messages need a group id.
    pub fifo: bool,
    /// The queue deduplicates FIFO messages by a hash of their body itself.
    pub content_dedup: bool,
    /// The queue's `MaximumMessageSize`: the longest message, and the most a batch may carry.
    pub max_message_bytes: usize,
    /// The queue's `VisibilityTimeout`.
    pub visibility_timeout: std::time::Duration,
}

/// Checks a `queue` setting: a queue name, or a queue URL.
pub fn check_queue_name(origin: &Origin, key: &str, queue: &str) -> Result<(), ConfigError> {
    if queue.starts_with("https://") || queue.starts_with("http://") {
        return Ok(());
    }
    let name = queue.strip_suffix(".fifo").unwrap_or(queue);
    if name.is_empty()
        || queue.len() > 80
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(origin.error(
            key,
            format!(
                "expected a queue URL, or a queue name of 1 to 80 letters, digits, `-` or `_` \
                 (`.fifo` at the end for a FIFO queue), found {queue:?}"
            ),
        ));
    }
    Ok(())
}

/// An SQS component's client (see [`sdk_config`]) and its queue, checked at start-up
/// ([`sqs_queue`]): what the `sqs` source and sink both build.
pub async fn connect_sqs(
    queue: &str,
    region: Option<&str>,
    endpoint_url: Option<&str>,
    role_arn: Option<&str>,
) -> anyhow::Result<(aws_sdk_sqs::Client, SqsQueue)> {
    let client = aws_sdk_sqs::Client::new(&sdk_config(region, endpoint_url, role_arn).await);
    let q = crate::setup::check("SQS", sqs_queue(&client, queue, endpoint_url)).await?;
    Ok((client, q))
}

/// The start-up check of an SQS component: the queue (`queue`: a name or a URL) exists and the
/// credentials are accepted; returns its URL and the attributes that matter to weir.
pub async fn sqs_queue(
    client: &aws_sdk_sqs::Client,
    queue: &str,
    endpoint_url: Option<&str>,
) -> anyhow::Result<SqsQueue> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let url = if queue.starts_with("https://") || queue.starts_with("http://") {
        queue.to_string()
    } else {
        match client.get_queue_url().queue_name(queue).send().await {
            Ok(out) => out.queue_url.unwrap_or_default(),
            Err(e) if not_found(&e) => anyhow::bail!("the queue `{queue}` does not exist"),
            Err(e) => {
                return Err(unusable("SQS", endpoint_url, &e).context(format!("queue `{queue}`")))
            }
        }
    };
    let attrs = match client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(A::All)
        .send()
        .await
    {
        Ok(out) => out.attributes.unwrap_or_default(),
        Err(e) if not_found(&e) => anyhow::bail!("the queue `{queue}` does not exist"),
        Err(e) => return Err(unusable("SQS", endpoint_url, &e).context(format!("queue `{queue}`"))),
    };
    let flag = |a: A| attrs.get(&a).is_some_and(|v| v == "true");
    let number = |a: A| attrs.get(&a).and_then(|v| v.parse::<u64>().ok());
    Ok(SqsQueue {
        fifo: flag(A::FifoQueue) || url.ends_with(".fifo"),
        content_dedup: flag(A::ContentBasedDeduplication),
        // SQS's own default when a queue does not say.
        max_message_bytes: number(A::MaximumMessageSize).unwrap_or(262_144) as usize,
        visibility_timeout: std::time::Duration::from_secs(
            number(A::VisibilityTimeout).unwrap_or(30),
        ),
        url,
    })
}

/// The start-up check of a DynamoDB table (`what`: what it is to the component, e.g. "lease
/// table"): it exists, or the component creates it next (`create`: the setting that says so,
/// and whether it is on), and the service accepts the credentials.
pub async fn check_table(
    client: &aws_sdk_dynamodb::Client,
    what: &str,
    table: &str,
    endpoint_url: Option<&str>,
    create: (&str, bool),
) -> anyhow::Result<()> {
    match client.describe_table().table_name(table).send().await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) && create.1 => Ok(()),
        Err(e) if not_found(&e) => anyhow::bail!(
            "the {what} `{table}` does not exist (create it, or set {} = true)",
            create.0
        ),
        // Throttled: reachable, and the credentials were accepted.
        Err(e) if classify(&e) == ErrorClass::Throttled => Ok(()),
        Err(e) => Err(unusable("DynamoDB", endpoint_url, &e).context(format!("{what} `{table}`"))),
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

/// Creates a DynamoDB table if it does not exist (on-demand billing; `keys`: string attributes,
/// the partition key then an optional sort key) and waits until it is active. True if this call
/// created it.
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: &[(&str, KeyType)],
) -> anyhow::Result<bool> {
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, key_type) in keys {
        req = req
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*name)
                    .key_type(key_type.clone())
                    .build()?,
            );
    }
    let created = match req.send().await {
        Ok(_) => true,
        Err(e) if describe(&e).starts_with("ResourceInUseException") => false,
        Err(e) => anyhow::bail!("creating table {table}: {}", describe(&e)),
    };
    wait_active(client, table).await?;
    Ok(created)
}

/// Waits (up to a minute) until a DynamoDB table is ACTIVE.
pub async fn wait_active(client: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok(out) = client.describe_table().table_name(table).send().await {
            if out
                .table
                .and_then(|t| t.table_status)
                .is_some_and(|s| s == TableStatus::Active)
            {
                return Ok(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::bail!("table {table} did not become active within a minute")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arn_must_be_an_iam_role_arn() {
        let o = Origin::new("p.toml", "sink");
        assert!(check_role_arn(&o, None).is_ok());
        assert!(check_role_arn(&o, Some("arn:aws:iam::123456789012:role/writer")).is_ok());
        assert!(check_role_arn(&o, Some("arn:aws-cn:iam::123456789012:role/a/b")).is_ok());
        let e = check_role_arn(&o, Some("writer")).unwrap_err();
        assert_eq!(e.key, "sink.role_arn");
        assert!(e.message.contains("found \"writer\""), "{e}");
        assert!(check_role_arn(&o, Some("arn:aws:iam::123456789012:user/me")).is_err());
    }
}
