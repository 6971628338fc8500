//! The service a producer writes to: a Kinesis stream or a Firehose delivery
//! stream, behind one `put` that returns an outcome per entry.

pub mod api;

use std::time::Duration;

pub use api::{EntryOutcome, ErrorClass, Failure, WireEntry};

/// A client bound to its target.
#[derive(Debug, Clone)]
pub enum Service {
    /// `PutRecords` to a Kinesis data stream.
    Kinesis {
        /// The client (SDK retries off).
        client: aws_sdk_kinesis::Client,
        /// The stream name.
        stream: String,
    },
    /// `PutRecordBatch` to a Firehose delivery stream.
    Firehose {
        /// The client (SDK retries off).
        client: aws_sdk_firehose::Client,
        /// The delivery stream name.
        delivery_stream: String,
    },
}

impl Service {
    /// Sends one request, giving up after `timeout` (a retryable failure).
    pub async fn put(&self, entries: Vec<WireEntry>, timeout: Duration) -> Result<Vec<EntryOutcome>, Failure> {
        let call = async {
            match self {
                Service::Kinesis { client, stream } => api::put_records(client, stream, entries).await,
                Service::Firehose { client, delivery_stream } => {
                    api::put_record_batch(client, delivery_stream, entries).await
                }
            }
        };
        tokio::time::timeout(timeout, call).await.unwrap_or_else(|_| {
            Err(Failure {
                class: ErrorClass::Transient,
                code: "Timeout".into(),
                message: format!("no answer within {timeout:?} (request_timeout_ms)"),
            })
        })
    }
}
