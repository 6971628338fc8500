//! What every shardlake component needs to talk to AWS, and nothing more: the
//! SDK configuration from the standard variables and profiles, the time
//! limits of each call, Kinesis and Firehose clients, the one-line form of a
//! failed call and whether it is transient, full-jitter retries, and the KPL
//! aggregation format. The embeddable producer depends on this crate alone
//! (no arrow, parquet, S3, DynamoDB or Glue); the core crate builds the
//! lake's clients on it.

pub mod aggregation;
pub mod call;
pub mod client;
pub mod retry;
