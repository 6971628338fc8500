//! AWS client setup shared by every component: one credential chain and the
//! standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, ...),
//! so the same binary runs against AWS or the local emulators.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_attempt_is_allowed_its_bytes_at_the_floor_rate() {
        let t = Timeouts { upload: Duration::from_secs(10), upload_floor: 64 * 1024, ..Timeouts::default() };
        assert_eq!(t.upload_attempt(0), Duration::from_secs(10));
        // 4 MiB at 64 KiB/s is 64 s, 16 MiB is 256 s: a 100 KB/s link carries either in time.
        assert_eq!(t.upload_attempt(4 << 20), Duration::from_secs(74));
        assert_eq!(t.upload_attempt(16 << 20), Duration::from_secs(266));
    }
}
