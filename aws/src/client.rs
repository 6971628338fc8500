//! AWS client setup shared by every component: one credential chain and the
//! standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, ...),
//! so the same binary runs against AWS or the local emulators; the time limits
//! of every call; the Kinesis and Firehose clients. The core crate builds the
//! S3, DynamoDB and Glue clients on these.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

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

    /// The SDK timeouts of S3 clients (built by the core crate).
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
    use crate::call::{innermost, one_line};
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
