//! AWS client setup shared by every component: one credential chain and the
//! standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, ...),
//! so the same binary runs against AWS or the local emulators.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
// The same types in every SDK crate (they come from aws-smithy-*), so one
// formatter serves S3, Kinesis, DynamoDB and Glue errors alike.
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Time limits of AWS calls, so a connection that accepts and never answers
/// (a black-holed route, a hung proxy, a stalled endpoint) ends in a timeout
/// error, which callers treat as transient and back off from, instead of
/// holding a reader, a lease renewal or an upload for ever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP and TLS).
    pub connect: Duration,
    /// One attempt of a Kinesis or DynamoDB call, from sending the request to
    /// the last byte of its answer (a GetRecords page reaches 10 MB).
    pub call: Duration,
    /// The fixed part of an S3 attempt's limit: a call without a body (get,
    /// list, complete), or an upload's allowance on top of its bytes at
    /// `upload_floor` (see [`Timeouts::upload_attempt`]).
    pub upload: Duration,
    /// The slowest rate, in bytes per second per connection, at which an
    /// upload attempt still completes: each put or multipart part gets
    /// `upload + bytes / upload_floor`, so a link of any speed above the
    /// floor always advances, and a stalled one is given up on in time.
    pub upload_floor: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            call: Duration::from_secs(10),
            upload: Duration::from_secs(10),
            upload_floor: 64 * 1024,
        }
    }
}

impl Timeouts {
    /// The limit of one attempt to upload `bytes` (a put or one part): the
    /// fixed allowance plus the bytes at the floor rate.
    pub fn upload_attempt(&self, bytes: usize) -> Duration {
        self.upload + Duration::from_secs_f64(bytes as f64 / self.upload_floor.max(1) as f64)
    }

    /// The SDK timeouts of one upload attempt of `bytes`.
    pub fn upload_attempt_config(&self, bytes: usize) -> TimeoutConfig {
        Self::config(self.connect, self.upload_attempt(bytes))
    }

    /// The SDK timeouts of Kinesis and DynamoDB clients.
    pub fn call_config(&self) -> TimeoutConfig {
        Self::config(self.connect, self.call)
    }

    /// The SDK timeouts of S3 clients.
    pub fn upload_config(&self) -> TimeoutConfig {
        Self::config(self.connect, self.upload)
    }

    fn config(connect: Duration, attempt: Duration) -> TimeoutConfig {
        // No separate read timeout: the attempt timeout bounds the whole
        // answer, and a body streaming slowly but steadily is fine.
        TimeoutConfig::builder().connect_timeout(connect).operation_attempt_timeout(attempt).build()
    }
}

/// Loads the shared SDK config from the environment and profile files.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Whether an endpoint override is set for `service` (e.g. `S3`), which means
/// an emulator or S3-compatible store that wants path-style addressing.
pub fn endpoint_overridden(service: &str) -> bool {
    std::env::var_os(format!("AWS_ENDPOINT_URL_{service}")).is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some()
}

/// An S3 client with the default [`Timeouts`]. SDK retries are off because
/// [`crate::retry::RetryPolicy`] retries whole operations (an upload part, a
/// put) with full jitter.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    s3_client_with(config, &Timeouts::default())
}

/// [`s3_client`] with the given timeouts.
pub fn s3_client_with(config: &aws_config::SdkConfig, timeouts: &Timeouts) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(endpoint_overridden("S3"))
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts.upload_config())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// A Kinesis client. SDK retries are off: readers and the producer classify
/// each failure (expired iterator, throttling, partial failure) themselves and
/// back off with [`crate::retry::RetryPolicy`].
pub fn kinesis_client(config: &aws_config::SdkConfig) -> aws_sdk_kinesis::Client {
    kinesis_client_at(config, None)
}

/// [`kinesis_client`] with its endpoint set in code (over any environment
/// setting): the load-test harness points it at a fault-injecting proxy.
pub fn kinesis_client_at(config: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_kinesis::Client {
    aws_sdk_kinesis::Client::from_conf(kinesis_config(config, endpoint).build())
}

/// The configuration of [`kinesis_client_at`], to extend (the consumer adds
/// its own GetRecords decoding).
pub fn kinesis_config(config: &aws_config::SdkConfig, endpoint: Option<&str>) -> aws_sdk_kinesis::config::Builder {
    let conf = aws_sdk_kinesis::config::Builder::from(config).retry_config(RetryConfig::disabled());
    match endpoint {
        Some(endpoint) => conf.endpoint_url(endpoint),
        None => conf,
    }
}

/// A Firehose client. SDK retries are off for the same reason as
/// [`kinesis_client`]: the producer retries only the failed entries of a
/// `PutRecordBatch` and classifies whole-request failures itself.
pub fn firehose_client(config: &aws_config::SdkConfig) -> aws_sdk_firehose::Client {
    let conf = aws_sdk_firehose::config::Builder::from(config).retry_config(RetryConfig::disabled()).build();
    aws_sdk_firehose::Client::from_conf(conf)
}

/// A DynamoDB client for the fleet's lease and checkpoint table. SDK retries
/// stay on (standard mode): every write is conditional, so a retried write
/// whose first attempt landed fails its condition instead of applying twice.
/// Each attempt is bounded by `timeouts.call`.
pub fn dynamodb_client(config: &aws_config::SdkConfig, timeouts: &Timeouts) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::config::Builder::from(config).timeout_config(timeouts.call_config()).build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// A Glue client for the lake's catalog table. SDK retries stay on (standard
/// mode): every call shardlake makes is idempotent (a retried create finds
/// the table or partition already there, which counts as success). Each
/// attempt is bounded by `timeouts.call`.
pub fn glue_client(config: &aws_config::SdkConfig, timeouts: &Timeouts) -> aws_sdk_glue::Client {
    let conf = aws_sdk_glue::config::Builder::from(config).timeout_config(timeouts.call_config()).build();
    aws_sdk_glue::Client::from_conf(conf)
}

/// One failed AWS call as a user reads it: one line with the service, the
/// operation, the error code and its message (never the SDK's `Debug`
/// dump), and whether the failure is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// `S3`, `Kinesis`, `DynamoDB`, `Glue`.
    pub service: &'static str,
    /// The API operation, as AWS names it (`PutObject`).
    pub operation: &'static str,
    /// The service's error code (`NoSuchBucket`, `AccessDenied`); `None`
    /// when no answer came, or an answer without a code.
    pub code: Option<String>,
    /// The service's message, or the innermost cause of a failure to send
    /// (`no credentials found in chain`, `Connection refused (os error 111)`).
    pub message: String,
    /// A throttle, a 5xx, a timeout or a connection failure: retried with
    /// back-off. Anything else (a missing bucket, access denied, no
    /// credentials, no region) needs a fix and is never retried.
    pub transient: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: ", self.service, self.operation)?;
        match &self.code {
            Some(code) if self.message.is_empty() => write!(f, "{code}"),
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for CallError {}

/// Service error codes that mean "slow down" or "try again" in any service
/// (S3, Kinesis, DynamoDB, Glue); checked besides the HTTP status, since
/// some throttles answer 400.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServiceException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "OperationTimeoutException",
];

/// Whether a failed call is worth retrying (see [`CallError::transient`]).
/// A failure to send is transient only when the connection failed or timed
/// out: the SDK reports missing credentials, a missing region and an
/// endpoint it cannot build as dispatch failures too, and those never heal.
pub fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status();
            status.is_server_error()
                || status.as_u16() == 429
                || se.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
        _ => false,
    }
}

/// The one-line form of a failed AWS call, e.g. `S3 PutObject: NoSuchBucket:
/// The specified bucket does not exist`; see [`CallError`].
pub fn call_error<E>(service: &'static str, operation: &'static str, err: &SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = is_transient(err);
    let (code, message) = match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().map(str::to_string).or_else(|| {
                // HEAD answers and some 404s have no body, so no code.
                let status = se.raw().status().as_u16();
                Some(format!("HTTP {status}"))
            });
            (code, e.message().unwrap_or_default().to_string())
        }
        SdkError::TimeoutError(_) => (None, format!("no answer in time ({})", innermost(err))),
        SdkError::DispatchFailure(d) if d.is_timeout() => (None, format!("timed out ({})", innermost(err))),
        SdkError::DispatchFailure(d) if d.is_io() => (None, format!("could not connect ({})", innermost(err))),
        _ => (None, innermost(err)),
    };
    CallError { service, operation, code, message: one_line(&message), transient }
}

/// [`call_error`] as its line.
pub fn error_line<E>(service: &'static str, operation: &'static str, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    call_error(service, operation, err).to_string()
}

/// The innermost cause of an error: the SDK wraps the useful part (`no
/// credentials found in chain`, `Connection refused`) in layers that say
/// only "dispatch failure" or "other".
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// `text` on one line: line breaks (in a service message or an I/O error)
/// become spaces.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why the SDK's credentials could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsProblem {
    /// The provider's message (its cause included).
    pub message: String,
    /// A timeout or a provider's own failure (STS answering 503, an
    /// instance metadata service that is slow): retried. No credentials
    /// anywhere, or an invalid profile, is not.
    pub transient: bool,
}

/// Resolves the credentials of `config` once, as the first call of any
/// client would, within `limit`: `Ok` with which key it found (its last
/// four characters, as the AWS console shows them).
pub async fn resolve_credentials(
    config: &aws_config::SdkConfig,
    limit: Duration,
) -> Result<String, CredentialsProblem> {
    use aws_credential_types::provider::ProvideCredentials;
    use aws_credential_types::provider::error::CredentialsError;
    let Some(provider) = config.credentials_provider() else {
        return Err(CredentialsProblem { message: "no credentials provider is configured".into(), transient: false });
    };
    let resolved = match tokio::time::timeout(limit, provider.provide_credentials()).await {
        Ok(resolved) => resolved,
        Err(_) => {
            return Err(CredentialsProblem { message: format!("no credentials within {limit:?}"), transient: true });
        }
    };
    match resolved {
        Ok(credentials) => {
            let key = credentials.access_key_id();
            let tail = &key[key.len().saturating_sub(4)..];
            let kind = if credentials.session_token().is_some() { "temporary " } else { "" };
            Ok(format!("{kind}access key ID ending in {tail}"))
        }
        Err(e) => {
            let transient = matches!(e, CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_));
            let mut message = e.to_string();
            let cause = innermost(&e);
            if cause != message {
                message = format!("{message}: {cause}");
            }
            Err(CredentialsProblem { message: one_line(&message), transient })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::put_object::PutObjectError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn answered(status: u16, code: Option<&str>, message: &str) -> SdkError<PutObjectError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(message);
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(PutObjectError::generic(meta.build()), raw)
    }

    /// A failure to send, wrapped as the orchestrator wraps identity and
    /// endpoint failures (`dispatch failure` > `other` > the cause).
    fn unsent(cause: &str) -> SdkError<PutObjectError, HttpResponse> {
        #[derive(Debug)]
        struct Layer(Box<dyn std::error::Error + Send + Sync>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("failed to resolve identity")
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }
        SdkError::dispatch_failure(ConnectorError::other(Box::new(Layer(cause.into())), None))
    }

    #[test]
    fn a_service_error_is_one_line_with_service_operation_code_and_message() {
        let e = answered(404, Some("NoSuchBucket"), "The specified bucket\ndoes not exist");
        let line = error_line("S3", "PutObject", &e);
        assert_eq!(line, "S3 PutObject: NoSuchBucket: The specified bucket does not exist");
        let call = call_error("S3", "PutObject", &e);
        assert_eq!((call.code.as_deref(), call.transient), (Some("NoSuchBucket"), false));
        // A HEAD or bodiless answer has no code: its status stands in.
        assert_eq!(error_line("S3", "HeadBucket", &answered(403, None, "")), "S3 HeadBucket: HTTP 403");
    }

    #[test]
    fn a_failure_to_send_names_its_innermost_cause_without_debug_output() {
        let line = error_line("Kinesis", "DescribeStreamSummary", &unsent("no credentials found in chain"));
        assert_eq!(line, "Kinesis DescribeStreamSummary: no credentials found in chain");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        assert_eq!(
            error_line("S3", "PutObject", &e),
            "S3 PutObject: could not connect (Connection refused (os error 111))"
        );
        let e: SdkError<PutObjectError, HttpResponse> = SdkError::timeout_error("operation attempt timeout");
        let line = error_line("S3", "PutObject", &e);
        assert_eq!(line, "S3 PutObject: no answer in time (operation attempt timeout)");
        for line in [line, error_line("S3", "PutObject", &answered(500, Some("InternalError"), "x"))] {
            assert!(!line.contains('{') && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn throttles_5xx_timeouts_and_lost_connections_are_transient_the_rest_needs_a_fix() {
        assert!(is_transient(&answered(503, None, "")));
        assert!(is_transient(&answered(500, Some("InternalError"), "")));
        assert!(is_transient(&answered(400, Some("ThrottlingException"), "Rate exceeded")));
        assert!(is_transient(&answered(400, Some("ProvisionedThroughputExceededException"), "")));
        assert!(is_transient(&answered(429, None, "")));
        assert!(is_transient(&SdkError::<PutObjectError, HttpResponse>::timeout_error("attempt timeout")));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_transient(&SdkError::<PutObjectError, HttpResponse>::dispatch_failure(ConnectorError::io(
            refused.into()
        ))));
        let timed_out = ConnectorError::timeout("connect timeout".into());
        assert!(is_transient(&SdkError::<PutObjectError, HttpResponse>::dispatch_failure(timed_out)));

        assert!(!is_transient(&answered(404, Some("NoSuchBucket"), "")));
        assert!(!is_transient(&answered(403, Some("AccessDenied"), "Access Denied")));
        assert!(!is_transient(&answered(400, Some("ResourceNotFoundException"), "")));
        // Missing credentials and regions come as dispatch failures too.
        assert!(!is_transient(&unsent("no credentials found in chain")));
        assert!(!is_transient(&unsent("missing signing region")));
        assert!(!is_transient(&SdkError::<PutObjectError, HttpResponse>::construction_failure("bad input")));
    }

    #[tokio::test]
    async fn credentials_resolve_or_say_why_not() {
        let with = aws_config::SdkConfig::builder()
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("AKIDEXAMPLE1234", "secret", None, None, "test"),
            ))
            .build();
        let found = resolve_credentials(&with, Duration::from_secs(1)).await.unwrap();
        assert_eq!(found, "access key ID ending in 1234");
        let none = aws_config::SdkConfig::builder().build();
        let problem = resolve_credentials(&none, Duration::from_secs(1)).await.unwrap_err();
        assert!(!problem.transient, "{problem:?}");
    }

    #[test]
    fn an_upload_attempt_is_allowed_its_bytes_at_the_floor_rate() {
        let t = Timeouts { upload: Duration::from_secs(10), upload_floor: 64 * 1024, ..Timeouts::default() };
        assert_eq!(t.upload_attempt(0), Duration::from_secs(10));
        // 4 MiB at 64 KiB/s is 64 s, 16 MiB is 256 s: a 100 KB/s link carries either in time.
        assert_eq!(t.upload_attempt(4 << 20), Duration::from_secs(74));
        assert_eq!(t.upload_attempt(16 << 20), Duration::from_secs(266));
    }
}
