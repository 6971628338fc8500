//! AWS client setup: the lake's own clients (S3, Glue) are built here (the
//! consumer builds its DynamoDB client with its checkpoint store); the shared
//! parts (one credential chain, the standard endpoint variables, time limits,
//! Kinesis and Firehose clients, the one-line form of a failed call) come
//! from `shardlake-aws`, which the producer embeds alone.

use aws_config::retry::RetryConfig;
pub use shardlake_aws::call::*;
pub use shardlake_aws::client::*;

/// An S3 client with the default [`Timeouts`]. SDK retries are off because
/// [`shardlake_aws::retry::RetryPolicy`] retries whole operations (an upload part, a
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

/// A Glue client for the lake's catalog table. SDK retries stay on (standard
/// mode): every call shardlake makes is idempotent (a retried create finds
/// the table or partition already there, which counts as success). Each
/// attempt is bounded by `timeouts.call`.
pub fn glue_client(config: &aws_config::SdkConfig, timeouts: &Timeouts) -> aws_sdk_glue::Client {
    let conf = aws_sdk_glue::config::Builder::from(config).timeout_config(timeouts.call_config()).build();
    aws_sdk_glue::Client::from_conf(conf)
}
