//! AWS client setup shared by every component: one credential chain and the
//! standard endpoint variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, ...),
//! so the same binary runs against AWS or the local emulators.

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;

/// Loads the shared SDK config from the environment and profile files.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Whether an endpoint override is set for `service` (e.g. `S3`), which means
/// an emulator or S3-compatible store that wants path-style addressing.
pub fn endpoint_overridden(service: &str) -> bool {
    std::env::var_os(format!("AWS_ENDPOINT_URL_{service}")).is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some()
}

/// An S3 client. SDK retries are off because [`crate::retry::RetryPolicy`]
/// retries whole operations (an upload part, a put) with full jitter.
pub fn s3_client(config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config)
        .force_path_style(endpoint_overridden("S3"))
        .retry_config(RetryConfig::disabled())
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
pub fn dynamodb_client(config: &aws_config::SdkConfig) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(config)
}
