//! An embeddable Kinesis / Firehose producer: what the Kinesis Producer
//! Library does, without its native daemon.
//!
//! - **Batching**: `PutRecords` (≤ 500 entries, ≤ 5 MiB) or `PutRecordBatch`
//!   (≤ 500, ≤ 4 MiB), sent when full or after `linger_ms` (default 100 ms).
//! - **Retries of what failed only**: failed entries of a partial failure go
//!   back alone, classified by error code; throttled or failed requests are
//!   retried whole; full-jitter backoff; every record has a TTL.
//! - **Per-shard rate limits** from the `ListShards` hash-key map, refreshed
//!   on reshard.
//! - **Adaptive request concurrency**: starts at one
//!   request in flight, grows while answers stay fast, cuts on timeouts,
//!   throttles and rising latency; timeouts follow the observed latency.
//! - **Backpressure**: a bounded budget of buffered + in-flight records, and
//!   [`Producer::ready`] to feed only as fast as the stream takes records.
//! - **Honest outcomes**: a record given up after a timed-out request is
//!   reported as [`Error::UnknownOutcome`] (it may have been stored).
//! - Optional **strict per-key ordering** and **KPL aggregation**.
//! - **Prometheus metrics** in a registry the application exposes.
//!
//! ```no_run
//! use shardlake_producer::{Producer, ProducerConfig, Record};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let producer = Producer::builder(ProducerConfig::kinesis("events")).build().await?;
//! match producer.send(Record::new("user-42", r#"{"event":"click"}"#)).await {
//!     Ok(ack) => println!("stored on {:?} as {}", ack.shard_id, ack.sequence_number),
//!     // The record comes back with the reason, e.g. for a dead-letter queue.
//!     Err(failed) => eprintln!("{}: {:?}", failed.reason, failed.record),
//! }
//! // Many records in flight from one loop: enqueue, await the acks later.
//! let mut acks = Vec::new();
//! for i in 0..1000 {
//!     acks.push(producer.enqueue(Record::new(format!("user-{i}"), "{}")).await?);
//! }
//! producer.flush().await;
//! for ack in acks {
//!     ack.await?;
//! }
//! producer.shutdown().await;
//! # Ok(())
//! # }
//! ```

// A `ProduceError` hands the record back by value, by design: boxing it would
// cost an allocation per failed record and make callers unbox to dead-letter.
#![allow(clippy::result_large_err)]

// The internals are private: an application sees the API below and
// `stream`, so they can change without breaking it.
mod batch;
mod budget;
mod concurrency;
mod config;
mod dispatcher;
mod error;
mod metrics;
mod producer;
mod rate;
mod record;
mod service;
mod shard_map;
pub mod stream;
#[cfg(test)]
mod testing;

pub use config::{ProducerConfig, RetryConfig, Settings, Target, TtlStart};
pub use error::Error;
pub use metrics::Metrics;
pub use producer::{AckFuture, Producer, ProducerBuilder};
pub use record::{Ack, ProduceError, Record};
