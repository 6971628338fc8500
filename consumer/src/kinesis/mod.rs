//! Thin wrappers over the Kinesis calls the reader makes, one function per
//! call with its API limits, and a failure classification by SDK error type
//! (never by message text) that the reader acts on.

pub mod get_records;
mod sequence;
mod shard_id;

pub use sequence::SequenceNumber;
pub use shard_id::ShardId;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardFilter, ShardFilterType, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use std::sync::Arc;

use bytes::Bytes;
use shardlake::error::error_chain;
use shardlake::retry::{RetryClass, Retryable};

// The record type lives with the decoder that makes it, so the calls
// depend on the decoding and not the other way round.
pub use get_records::KinesisRecord;
use get_records::RecordsSlot;

/// How a Kinesis call failed, as far as the reader cares.
#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    /// The shard iterator is older than 5 minutes: get a new one.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// Over the shard's read limits (5 calls/s, 2 MiB/s): back off.
    #[error("read throughput exceeded: {0}")]
    Throttled(String),
    /// The stream or shard does not exist (or no longer does).
    #[error("not found: {0}")]
    NotFound(String),
    /// Time-outs, connection failures, 5xx: retry.
    #[error("transient failure: {0}")]
    Transient(String),
    /// Anything else (access denied, invalid argument): the user must act.
    #[error("{0}")]
    Fatal(String),
}

impl KinesisError {
    /// Worth retrying after a back-off.
    pub fn is_transient(&self) -> bool {
        matches!(self, KinesisError::Throttled(_) | KinesisError::Transient(_))
    }
}

impl Retryable for KinesisError {
    /// An expired iterator is renewed and read again at once; callers that
    /// can renew it do so before asking.
    fn retry_class(&self) -> RetryClass {
        match self {
            KinesisError::Throttled(_) => RetryClass::Throttled,
            KinesisError::Transient(_) | KinesisError::ExpiredIterator => RetryClass::Transient,
            KinesisError::NotFound(_) | KinesisError::Fatal(_) => RetryClass::Fatal,
        }
    }
}

/// Classifies an SDK error. `expired`, `throttled` and `not_found` are the
/// operation error's own predicates.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    err: SdkError<E, HttpResponse>,
    expired: impl Fn(&E) -> bool,
    throttled: impl Fn(&E) -> bool,
    not_found: impl Fn(&E) -> bool,
) -> KinesisError {
    match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            let message = format!("{}: {}", e.code().unwrap_or("error"), e.message().unwrap_or(""));
            if expired(e) {
                KinesisError::ExpiredIterator
            } else if throttled(e) || e.code().is_some_and(shardlake::aws::is_throttling_code) {
                KinesisError::Throttled(message)
            } else if not_found(e) {
                KinesisError::NotFound(message)
            } else if service.raw().status().is_server_error() {
                KinesisError::Transient(message)
            } else {
                KinesisError::Fatal(message)
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            KinesisError::Transient(error_chain(&err))
        }
        _ => KinesisError::Fatal(error_chain(&err)),
    }
}

/// A shard as ListShards describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// `shardId-000000000000`.
    pub id: ShardId,
    /// The shard(s) this one was split or merged from.
    pub parents: Vec<ShardId>,
}

/// Every shard of the stream, open or closed (ListShards, paginated; 100
/// calls/s per stream). Closed shards are listed until they age out.
pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        // With a NextToken the stream name must be left out.
        let req = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client
                .list_shards()
                .stream_name(stream)
                .shard_filter(ShardFilter::builder().r#type(ShardFilterType::FromTrimHorizon).build().unwrap()),
        };
        let out = req.send().await.map_err(|e| {
            classify(e, |_| false, |e| e.is_limit_exceeded_exception(), |e| e.is_resource_not_found_exception())
        })?;
        for s in out.shards() {
            let parents =
                [s.parent_shard_id(), s.adjacent_parent_shard_id()].into_iter().flatten().map(ShardId::from).collect();
            shards.push(ShardInfo { id: s.shard_id().into(), parents });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(shards),
        }
    }
}

/// What DescribeStreamSummary says of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    /// `ACTIVE`, `CREATING`, `UPDATING`, `DELETING`.
    pub status: String,
    /// Open shards.
    pub open_shards: i32,
    /// How long the stream keeps records.
    pub retention_hours: i32,
}

/// The stream's status, `None` when it does not exist (DescribeStreamSummary;
/// 20 calls/s per account): the start-up check that the stream is there and
/// the credentials may read it.
pub async fn describe_stream(
    client: &Client,
    stream: &str,
) -> Result<Option<StreamSummary>, shardlake::aws::CallError> {
    match client.describe_stream_summary().stream_name(stream).send().await {
        Ok(out) => Ok(Some(out.stream_description_summary().map_or(
            StreamSummary { status: "unknown".into(), open_shards: 0, retention_hours: 24 },
            |s| StreamSummary {
                status: s.stream_status().as_str().to_string(),
                open_shards: s.open_shard_count(),
                retention_hours: s.retention_period_hours(),
            },
        ))),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => Ok(None),
        Err(e) => Err(shardlake::aws::call_error("Kinesis", "DescribeStreamSummary", &e)),
    }
}

/// Where a shard iterator starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record.
    TrimHorizon,
    /// After the newest record.
    Latest,
    /// At an arrival time (epoch millis).
    Timestamp(i64),
    /// At a sequence number (a batch replay starts here).
    At(SequenceNumber),
    /// Just after a sequence number (a checkpoint).
    After(SequenceNumber),
}

/// A shard iterator, valid for 5 minutes (GetShardIterator; 5 calls/s per shard).
pub async fn shard_iterator(
    client: &Client,
    stream: &str,
    shard: &str,
    start: &StartAt,
) -> Result<String, KinesisError> {
    let req = client.get_shard_iterator().stream_name(stream).shard_id(shard);
    let req = match start {
        StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
        StartAt::Timestamp(ms) => {
            req.shard_iterator_type(ShardIteratorType::AtTimestamp).timestamp(DateTime::from_millis(*ms))
        }
        StartAt::At(seq) => req.shard_iterator_type(ShardIteratorType::AtSequenceNumber).starting_sequence_number(seq),
        StartAt::After(seq) => {
            req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(seq)
        }
    };
    let out = req.send().await.map_err(|e| {
        classify(
            e,
            |_| false,
            |e| e.is_provisioned_throughput_exceeded_exception(),
            |e| e.is_resource_not_found_exception(),
        )
    })?;
    out.shard_iterator()
        .map(str::to_string)
        .ok_or_else(|| KinesisError::Fatal("GetShardIterator returned no iterator".into()))
}

/// Enhanced fan-out: registers the stream consumer `name` (or finds it
/// registered, by another worker of the fleet or an earlier run) and waits
/// until it is ACTIVE; returns its ARN.
pub async fn register_consumer(client: &Client, stream: &str, name: &str) -> Result<String, KinesisError> {
    let summary = client.describe_stream_summary().stream_name(stream).send().await.map_err(|e| {
        classify(e, |_| false, |e| e.is_limit_exceeded_exception(), |e| e.is_resource_not_found_exception())
    })?;
    let stream_arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_string())
        .ok_or_else(|| KinesisError::Fatal("DescribeStreamSummary returned no stream ARN".into()))?;
    match client.register_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await {
        Ok(_) => tracing::info!(stream, consumer = name, "registered the enhanced fan-out consumer"),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(e) => {
            return Err(match e.as_service_error() {
                Some(s) if s.is_limit_exceeded_exception() => {
                    KinesisError::Fatal(format!("{} (a stream has at most 20 fan-out consumers)", error_chain(&e)))
                }
                _ => {
                    classify(e, |_| false, |e| e.is_limit_exceeded_exception(), |e| e.is_resource_not_found_exception())
                }
            });
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let out = client.describe_stream_consumer().stream_arn(&stream_arn).consumer_name(name).send().await.map_err(
            |e| classify(e, |_| false, |e| e.is_limit_exceeded_exception(), |e| e.is_resource_not_found_exception()),
        )?;
        if let Some(d) = out.consumer_description()
            && d.consumer_status() == &ConsumerStatus::Active
        {
            return Ok(d.consumer_arn().to_string());
        }
        if std::time::Instant::now() > deadline {
            return Err(KinesisError::Fatal(format!("consumer `{name}` not ACTIVE after 120 s")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// One SubscribeToShard call, whose `event_stream` delivers the events
/// (it ends after 5 minutes).
pub type Subscription = aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput;

/// Subscribes the fan-out consumer `consumer_arn` to `shard` from `start`
/// (SubscribeToShard; once per 5 s per shard and consumer).
pub async fn subscribe(
    client: &Client,
    consumer_arn: &str,
    shard: &str,
    start: &StartAt,
) -> Result<Subscription, KinesisError> {
    let position = match start {
        StartAt::TrimHorizon => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon),
        StartAt::Latest => StartingPosition::builder().r#type(ShardIteratorType::Latest),
        StartAt::Timestamp(ms) => {
            StartingPosition::builder().r#type(ShardIteratorType::AtTimestamp).timestamp(DateTime::from_millis(*ms))
        }
        StartAt::At(seq) => {
            StartingPosition::builder().r#type(ShardIteratorType::AtSequenceNumber).sequence_number(seq)
        }
        StartAt::After(seq) => {
            StartingPosition::builder().r#type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq)
        }
    };
    let position = position.build().map_err(|e| KinesisError::Fatal(e.to_string()))?;
    let out = client
        .subscribe_to_shard()
        .consumer_arn(consumer_arn)
        .shard_id(shard)
        .starting_position(position)
        .send()
        .await
        .map_err(|e| {
            classify(
                e,
                |_| false,
                // Another subscription (this consumer's previous one, or the
                // previous lease holder's) is still open, or the call limit.
                |e| e.is_resource_in_use_exception() || e.is_limit_exceeded_exception(),
                |e| e.is_resource_not_found_exception(),
            )
        })?;
    Ok(out)
}

/// Waits for the next event of a subscription: `Ok(None)` when it ended (after
/// 5 minutes, or closed by the service), to be renewed from where it left off.
pub async fn next_event(subscription: &mut Subscription) -> Result<Option<Fetched>, KinesisError> {
    loop {
        let event = match subscription.event_stream.recv().await {
            Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(e))) => e,
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(None),
            Err(e) => {
                let message = format!("subscription: {}", error_chain(&e));
                return Err(match e.as_service_error() {
                    // Still held by an earlier subscription (a restarted worker,
                    // the previous lease holder): wait for it to end.
                    Some(s) if s.is_resource_in_use_exception() => KinesisError::Throttled(message),
                    Some(s) if s.is_resource_not_found_exception() => KinesisError::NotFound(message),
                    Some(s) if !s.is_internal_failure_exception() => KinesisError::Fatal(message),
                    _ => KinesisError::Transient(message),
                });
            }
        };
        let ended = event.continuation_sequence_number.is_empty()
            || event.child_shards.as_ref().is_some_and(|c| !c.is_empty()) && event.records.is_empty();
        let (records, bytes) = records_of(event.records);
        return Ok(Some(Fetched {
            records,
            bytes,
            next: (!ended).then_some(event.continuation_sequence_number),
            millis_behind_latest: Some(event.millis_behind_latest),
        }));
    }
}

/// What one GetRecords call returned.
#[derive(Debug)]
pub struct Fetched {
    /// Records in shard order.
    pub records: Vec<KinesisRecord>,
    /// Payload bytes of `records`.
    pub bytes: usize,
    /// Where reading goes on: the next shard iterator (GetRecords) or the
    /// continuation sequence number (fan-out); `None` once a closed shard is
    /// read to its end.
    pub next: Option<String>,
    /// How far behind the tip of the shard this response is.
    pub millis_behind_latest: Option<i64>,
}

/// Reads up to `limit` records (GetRecords: ≤ 10,000 records or 10 MiB per
/// call, 5 calls/s and 2 MiB/s per shard). With a client from
/// [`crate::kinesis::get_records::kinesis_client`] the records are decoded into
/// `slot`'s reused buffers rather than by the SDK.
pub async fn get_records(
    client: &Client,
    iterator: &str,
    limit: i32,
    slot: &RecordsSlot,
) -> Result<Fetched, KinesisError> {
    let attach = slot.clone();
    let request = client.get_records().shard_iterator(iterator).limit(limit).customize();
    let out = request.mutate_request(move |r| r.add_extension(attach.clone())).send().await.map_err(|e| {
        classify(
            e,
            |e| e.is_expired_iterator_exception(),
            |e| e.is_provisioned_throughput_exceeded_exception() || e.is_kms_throttling_exception(),
            |e| e.is_resource_not_found_exception(),
        )
    })?;
    let millis_behind_latest = out.millis_behind_latest();
    let next = out.next_shard_iterator().map(str::to_string);
    let (records, bytes) = slot.take().unwrap_or_else(|| records_of(out.records));
    Ok(Fetched { records, bytes, next, millis_behind_latest })
}

/// The SDK's records as ours, with their payload bytes.
fn records_of(records: Vec<aws_sdk_kinesis::types::Record>) -> (Vec<KinesisRecord>, usize) {
    let mut bytes = 0;
    let records = records
        .into_iter()
        .map(|r| {
            let data = Bytes::from(r.data.into_inner());
            bytes += data.len();
            KinesisRecord {
                arrival_ms: r.approximate_arrival_timestamp.map(|t| t.to_millis().unwrap_or(0)).unwrap_or(0),
                sequence: Arc::from(r.sequence_number),
                data,
            }
        })
        .collect();
    (records, bytes)
}
