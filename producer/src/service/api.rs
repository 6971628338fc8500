//! One thin function per AWS call, with the API limits in its doc, and the
//! classification of failures: whole-request failures by SDK error type
//! (never by message text), per-entry failures by the documented error codes.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_firehose::operation::put_record_batch::PutRecordBatchError;
use aws_sdk_kinesis::error::ConnectorError;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, StreamStatus};

use crate::error::{Error, Result};
use shardlake_aws::call::error_chain;

/// How a failure should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The stream or shard is over its limits: back off and retry.
    Throttled,
    /// A transient service or network failure: back off and retry.
    Transient,
    /// Retrying cannot help (KMS access, missing stream, invalid input).
    Fatal,
}

impl ErrorClass {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        self != ErrorClass::Fatal
    }
}

/// One entry of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireEntry {
    /// The payload (a user record, or an aggregate).
    pub data: bytes::Bytes,
    /// Kinesis partition key (ignored by Firehose).
    pub partition_key: String,
    /// Kinesis explicit hash key.
    pub explicit_hash_key: Option<String>,
}

/// The service's answer for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// Stored.
    Stored {
        /// Where (Kinesis only).
        shard_id: Option<Arc<str>>,
        /// Kinesis sequence number, or Firehose record id.
        sequence_number: String,
    },
    /// Not stored.
    Failed(Failure),
}

/// A failure: of one entry, or of a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Retry or not.
    pub class: ErrorClass,
    /// The AWS error code, or for a failure without a service answer:
    /// `Connect` (the connection could not be made: never sent), `Timeout`,
    /// `Dispatch` (reset, broken pipe, closed mid-response), `Response` (an
    /// unreadable answer), `EntryCountMismatch`, `Construction`, `Unknown`.
    pub code: String,
    /// What the service or the SDK said.
    pub message: String,
}

/// Codes of whole-request failures after which the request may have been
/// applied: it may have reached the service and no usable answer came back.
/// When in doubt a failure is here; only a failed connect (`Connect`), a
/// request the SDK could not build (`Construction`) and a service's own error
/// answer are certain not to have stored anything.
const MAYBE_APPLIED: &[&str] = &["Timeout", "Dispatch", "Response", "EntryCountMismatch", "Unknown"];

impl Failure {
    /// Whether the request may have been applied although it failed: it may
    /// have been sent and no answer was read (a timeout, a connection reset
    /// or closed before the answer, a broken or unmatched answer). Its records
    /// then have an unknown outcome, never a failed one.
    pub fn may_have_been_applied(&self) -> bool {
        MAYBE_APPLIED.contains(&self.code.as_str())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Classifies a per-entry error code of `PutRecords` or `PutRecordBatch`.
/// Unknown codes are retried: the record's TTL bounds them, and dropping
/// data on a code we have not seen would be worse.
pub fn classify_entry_code(code: &str) -> ErrorClass {
    match code {
        "ProvisionedThroughputExceededException"
        | "ServiceUnavailableException"
        | "KMSThrottlingException"
        | "ThrottlingException"
        | "LimitExceededException" => ErrorClass::Throttled,
        "KMSAccessDeniedException"
        | "KMSDisabledException"
        | "KMSInvalidStateException"
        | "KMSNotFoundException"
        | "KMSOptInRequired"
        | "InvalidKMSResourceException"
        | "ResourceNotFoundException"
        | "AccessDeniedException"
        | "InvalidArgumentException"
        | "ValidationException" => ErrorClass::Fatal,
        _ => ErrorClass::Transient,
    }
}

/// Classifies an HTTP status the SDK could not map to a modelled error.
fn classify_status(status: u16) -> ErrorClass {
    match status {
        429 => ErrorClass::Throttled,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// Whether a dispatch failure happened while connecting (refused, DNS, TLS
/// handshake, connect timeout), so the request certainly never left. The SDK
/// reports a reset after sending and a refused connect alike (`is_io`); the
/// connector's error chain tells them apart.
fn failed_to_connect(err: &ConnectorError) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<hyper_util::client::legacy::Error>().is_some_and(|h| h.is_connect()) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Classifies the failures that happen before a service answer: timeouts,
/// connection resets, truncated responses are retried (and may have been
/// applied, see [`Failure::may_have_been_applied`]), as is a failed connect
/// (never sent); a request the SDK could not build is not.
fn classify_sdk<E, R>(err: &SdkError<E, R>) -> Option<Failure>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (class, code) = match err {
        SdkError::TimeoutError(_) => (ErrorClass::Transient, "Timeout"),
        SdkError::DispatchFailure(f) if f.is_user() => (ErrorClass::Fatal, "Construction"),
        SdkError::DispatchFailure(f) if f.as_connector_error().is_some_and(failed_to_connect) => {
            (ErrorClass::Transient, "Connect")
        }
        SdkError::DispatchFailure(_) => (ErrorClass::Transient, "Dispatch"),
        SdkError::ResponseError(_) => (ErrorClass::Transient, "Response"),
        SdkError::ConstructionFailure(_) => (ErrorClass::Fatal, "Construction"),
        SdkError::ServiceError(_) => return None,
        _ => (ErrorClass::Transient, "Unknown"),
    };
    Some(Failure { class, code: code.into(), message: error_chain(err) })
}

/// Classifies a failed `PutRecords` call by its SDK error type.
pub fn classify_put_records_error(err: &SdkError<PutRecordsError>) -> Failure {
    if let Some(f) = classify_sdk(err) {
        return f;
    }
    let SdkError::ServiceError(se) = err else { unreachable!("classify_sdk handles the rest") };
    let e = se.err();
    let (class, name) = match e {
        PutRecordsError::ProvisionedThroughputExceededException(_) => {
            (ErrorClass::Throttled, "ProvisionedThroughputExceededException")
        }
        PutRecordsError::KmsThrottlingException(_) => (ErrorClass::Throttled, "KMSThrottlingException"),
        PutRecordsError::InternalFailureException(_) => (ErrorClass::Transient, "InternalFailureException"),
        PutRecordsError::AccessDeniedException(_) => (ErrorClass::Fatal, "AccessDeniedException"),
        PutRecordsError::DryRunOperationException(_) => (ErrorClass::Fatal, "DryRunOperationException"),
        PutRecordsError::InvalidArgumentException(_) => (ErrorClass::Fatal, "InvalidArgumentException"),
        PutRecordsError::KmsAccessDeniedException(_) => (ErrorClass::Fatal, "KMSAccessDeniedException"),
        PutRecordsError::KmsDisabledException(_) => (ErrorClass::Fatal, "KMSDisabledException"),
        PutRecordsError::KmsInvalidStateException(_) => (ErrorClass::Fatal, "KMSInvalidStateException"),
        PutRecordsError::KmsNotFoundException(_) => (ErrorClass::Fatal, "KMSNotFoundException"),
        PutRecordsError::KmsOptInRequired(_) => (ErrorClass::Fatal, "KMSOptInRequired"),
        PutRecordsError::ResourceNotFoundException(_) => (ErrorClass::Fatal, "ResourceNotFoundException"),
        _ => (classify_status(se.raw().status().as_u16()), "Unhandled"),
    };
    Failure { class, code: e.code().unwrap_or(name).to_string(), message: e.to_string() }
}

/// Classifies a failed `PutRecordBatch` call by its SDK error type.
pub fn classify_put_record_batch_error(err: &SdkError<PutRecordBatchError>) -> Failure {
    if let Some(f) = classify_sdk(err) {
        return f;
    }
    let SdkError::ServiceError(se) = err else { unreachable!("classify_sdk handles the rest") };
    let e = se.err();
    let (class, name) = match e {
        // Firehose's throttling answer.
        PutRecordBatchError::ServiceUnavailableException(_) => (ErrorClass::Throttled, "ServiceUnavailableException"),
        PutRecordBatchError::InvalidArgumentException(_) => (ErrorClass::Fatal, "InvalidArgumentException"),
        PutRecordBatchError::InvalidKmsResourceException(_) => (ErrorClass::Fatal, "InvalidKMSResourceException"),
        PutRecordBatchError::InvalidSourceException(_) => (ErrorClass::Fatal, "InvalidSourceException"),
        PutRecordBatchError::ResourceNotFoundException(_) => (ErrorClass::Fatal, "ResourceNotFoundException"),
        _ => (classify_status(se.raw().status().as_u16()), "Unhandled"),
    };
    let code = aws_sdk_firehose::error::ProvideErrorMetadata::code(e).unwrap_or(name);
    Failure { class, code: code.to_string(), message: e.to_string() }
}

/// `PutRecords`: at most 500 entries and 5 MiB (data + partition keys) per
/// call; each entry at most 1 MiB unless the stream's limit was raised (up to
/// 10 MiB). Returns one outcome per entry, in order.
pub async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    entries: Vec<WireEntry>,
) -> Result<Vec<EntryOutcome>, Failure> {
    let n = entries.len();
    let records = entries
        .into_iter()
        .map(|e| {
            PutRecordsRequestEntry::builder()
                .data(Blob::new(e.data))
                .partition_key(e.partition_key)
                .set_explicit_hash_key(e.explicit_hash_key)
                .build()
                .expect("data and partition key are set")
        })
        .collect();
    let out = client
        .put_records()
        .stream_name(stream)
        .set_records(Some(records))
        .send()
        .await
        .map_err(|e| classify_put_records_error(&e))?;
    let outcomes: Vec<EntryOutcome> = out
        .records()
        .iter()
        .map(|r| match (r.error_code(), r.sequence_number()) {
            (None, Some(seq)) => {
                EntryOutcome::Stored { shard_id: r.shard_id().map(Arc::from), sequence_number: seq.to_string() }
            }
            (code, _) => {
                let code = code.unwrap_or("MissingSequenceNumber");
                EntryOutcome::Failed(Failure {
                    class: classify_entry_code(code),
                    code: code.to_string(),
                    message: r.error_message().unwrap_or_default().to_string(),
                })
            }
        })
        .collect();
    check_count(outcomes, n)
}

/// `PutRecordBatch`: at most 500 records and 4 MiB per call, each record at
/// most 1,000 KiB. Returns one outcome per entry, in order.
pub async fn put_record_batch(
    client: &aws_sdk_firehose::Client,
    delivery_stream: &str,
    entries: Vec<WireEntry>,
) -> Result<Vec<EntryOutcome>, Failure> {
    let n = entries.len();
    let records = entries
        .into_iter()
        .map(|e| {
            aws_sdk_firehose::types::Record::builder()
                .data(aws_sdk_firehose::primitives::Blob::new(e.data))
                .build()
                .expect("data is set")
        })
        .collect();
    let out = client
        .put_record_batch()
        .delivery_stream_name(delivery_stream)
        .set_records(Some(records))
        .send()
        .await
        .map_err(|e| classify_put_record_batch_error(&e))?;
    let outcomes = out
        .request_responses()
        .iter()
        .map(|r| match (r.error_code(), r.record_id()) {
            (None, Some(id)) => EntryOutcome::Stored { shard_id: None, sequence_number: id.to_string() },
            (code, _) => {
                let code = code.unwrap_or("MissingRecordId");
                EntryOutcome::Failed(Failure {
                    class: classify_entry_code(code),
                    code: code.to_string(),
                    message: r.error_message().unwrap_or_default().to_string(),
                })
            }
        })
        .collect();
    check_count(outcomes, n)
}

/// A response with another number of entries than the request cannot be
/// matched up; retry the whole request.
fn check_count(outcomes: Vec<EntryOutcome>, sent: usize) -> Result<Vec<EntryOutcome>, Failure> {
    if outcomes.len() == sent {
        return Ok(outcomes);
    }
    Err(Failure {
        class: ErrorClass::Transient,
        code: "EntryCountMismatch".into(),
        message: format!("the response has {} entries for {sent} sent", outcomes.len()),
    })
}

/// The deadline of one control-plane call when none is given: a hung
/// endpoint fails the call instead of hanging its caller.
pub const DEFAULT_CONTROL_PLANE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client sends its calls, for error messages: the region (the SDK
/// config has no getter for a custom endpoint URL; the CLI adds it).
fn kinesis_endpoint(client: &aws_sdk_kinesis::Client) -> String {
    match client.config().region() {
        Some(region) => format!("the Kinesis endpoint of {region}"),
        None => "the Kinesis endpoint".into(),
    }
}

/// Runs one control-plane call with a deadline; past it, the error names the
/// call, the stream and the endpoint.
async fn bounded<T>(
    call: &str,
    stream: &str,
    client: &aws_sdk_kinesis::Client,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{call} for kinesis stream {stream:?} got no answer from {} within {timeout:?} \
             (control_plane_timeout_ms); check the endpoint and the network",
            kinesis_endpoint(client)
        )),
    }
}

/// `ListShards`, all pages (at most 1,000 shards each, bounded at 100
/// pages), each page within 10 s (see `list_shards_within`).
pub async fn list_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<Vec<Shard>> {
    list_shards_within(client, stream, DEFAULT_CONTROL_PLANE_TIMEOUT).await
}

/// `ListShards`, all pages, each within `timeout`: a hung endpoint fails the
/// call with an error naming `ListShards` instead of hanging the caller.
pub async fn list_shards_within(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    timeout: Duration,
) -> Result<Vec<Shard>> {
    let err = |message: String| Error::ListShards { stream: stream.to_string(), message };
    let mut shards = vec![];
    let mut token: Option<String> = None;
    for _ in 0..100 {
        // A call with a next token must not name the stream.
        let req = match token.take() {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out =
            bounded("ListShards", stream, client, timeout, async { req.send().await.map_err(|e| error_chain(&e)) })
                .await
                .map_err(err)?;
        shards.extend_from_slice(out.shards());
        match out.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(shards),
        }
    }
    Err(err("more than 100 pages of shards".into()))
}

/// Creates the stream with `shards` shards unless it exists, and waits until
/// it is `ACTIVE` (polling every 100 ms up to `timeout`), each call within
/// 10 s (see `ensure_stream_within`). For demos and tests.
pub async fn ensure_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: u32,
    timeout: Duration,
) -> Result<(), String> {
    ensure_stream_within(client, stream, shards, timeout, DEFAULT_CONTROL_PLANE_TIMEOUT).await
}

/// [`ensure_stream`] with each call (`DescribeStreamSummary`,
/// `CreateStream`) bounded by `call_timeout`.
pub async fn ensure_stream_within(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shards: u32,
    timeout: Duration,
    call_timeout: Duration,
) -> Result<(), String> {
    // `Ok(None)`: the stream does not exist (yet).
    let describe = || {
        bounded("DescribeStreamSummary", stream, client, call_timeout, async {
            match client.describe_stream_summary().stream_name(stream).send().await {
                Ok(out) => Ok(Some(out)),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_not_found_exception()) => Ok(None),
                Err(e) => Err(format!("describing kinesis stream {stream:?}: {}", error_chain(&e))),
            }
        })
    };
    if describe().await?.is_none() {
        bounded("CreateStream", stream, client, call_timeout, async {
            client
                .create_stream()
                .stream_name(stream)
                .shard_count(shards as i32)
                .send()
                .await
                .map_err(|e| format!("creating kinesis stream {stream:?}: {}", error_chain(&e)))
        })
        .await?;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let active = describe().await?.is_some_and(|out| {
            out.stream_description_summary().is_some_and(|s| s.stream_status() == &StreamStatus::Active)
        });
        if active {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("kinesis stream {stream:?} not ACTIVE after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::types::error::{
        InternalFailureException, KmsAccessDeniedException, ProvisionedThroughputExceededException,
        ResourceNotFoundException,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::client::result::ServiceError;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(e: PutRecordsError, status: u16) -> SdkError<PutRecordsError> {
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::ServiceError(ServiceError::builder().source(e).raw(raw).build())
    }

    #[test]
    fn entry_codes_are_classified() {
        assert_eq!(classify_entry_code("ProvisionedThroughputExceededException"), ErrorClass::Throttled);
        assert_eq!(classify_entry_code("ServiceUnavailableException"), ErrorClass::Throttled);
        assert_eq!(classify_entry_code("InternalFailure"), ErrorClass::Transient);
        assert_eq!(classify_entry_code("SomethingNew"), ErrorClass::Transient);
        for fatal in
            ["KMSAccessDeniedException", "KMSNotFoundException", "KMSDisabledException", "ResourceNotFoundException"]
        {
            assert_eq!(classify_entry_code(fatal), ErrorClass::Fatal, "{fatal}");
        }
    }

    #[test]
    fn whole_request_errors_are_classified_by_sdk_type() {
        let pte = PutRecordsError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder().message("slow down").build(),
        );
        let f = classify_put_records_error(&service_error(pte, 400));
        assert_eq!(
            (f.class, f.code.as_str(), f.message.as_str()),
            (
                ErrorClass::Throttled,
                "ProvisionedThroughputExceededException",
                "ProvisionedThroughputExceededException: slow down"
            )
        );
        let internal = PutRecordsError::InternalFailureException(InternalFailureException::builder().build());
        assert_eq!(classify_put_records_error(&service_error(internal, 500)).class, ErrorClass::Transient);
        let kms = PutRecordsError::KmsAccessDeniedException(KmsAccessDeniedException::builder().build());
        assert_eq!(classify_put_records_error(&service_error(kms, 400)).class, ErrorClass::Fatal);
        let missing = PutRecordsError::ResourceNotFoundException(ResourceNotFoundException::builder().build());
        assert_eq!(classify_put_records_error(&service_error(missing, 400)).class, ErrorClass::Fatal);
        let unhandled = |status| {
            let raw = HttpResponse::new(status, SdkBody::empty());
            let e = PutRecordsError::generic(aws_sdk_kinesis::error::ErrorMetadata::builder().code("Boom").build());
            classify_put_records_error(&SdkError::service_error(e, raw)).class
        };
        assert_eq!(unhandled(503.try_into().unwrap()), ErrorClass::Transient);
        assert_eq!(unhandled(429.try_into().unwrap()), ErrorClass::Throttled);
        assert_eq!(unhandled(403.try_into().unwrap()), ErrorClass::Fatal);
    }

    #[test]
    fn timeouts_and_connection_resets_are_retried_as_maybe_applied() {
        let timeout: SdkError<PutRecordsError> = SdkError::timeout_error("read timed out");
        let f = classify_put_records_error(&timeout);
        assert_eq!((f.class, f.may_have_been_applied()), (ErrorClass::Transient, true));
        let reset: SdkError<PutRecordsError> =
            SdkError::dispatch_failure(ConnectorError::io("connection reset by peer".into()));
        let f = classify_put_records_error(&reset);
        assert_eq!((f.class, f.code.as_str(), f.may_have_been_applied()), (ErrorClass::Transient, "Dispatch", true));
        let user: SdkError<PutRecordsError> = SdkError::dispatch_failure(ConnectorError::user("bad endpoint".into()));
        let f = classify_put_records_error(&user);
        assert_eq!((f.class, f.may_have_been_applied()), (ErrorClass::Fatal, false));
        assert!(check_count(vec![], 1).unwrap_err().may_have_been_applied(), "an unmatched answer");
    }

    /// A client of the real SDK stack (no retries, 2 s timeouts) for `endpoint`.
    fn real_client(endpoint: &str) -> aws_sdk_kinesis::Client {
        let config = aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kinesis::config::Credentials::for_tests())
            .endpoint_url(endpoint)
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build();
        aws_sdk_kinesis::Client::from_conf(config)
    }

    async fn put_one(endpoint: &str) -> Failure {
        let entry = WireEntry { data: "x".into(), partition_key: "k".into(), explicit_hash_key: None };
        let client = real_client(endpoint);
        let call = put_records(&client, "s", vec![entry]);
        tokio::time::timeout(Duration::from_secs(5), call).await.expect("answers within 5 s").unwrap_err()
    }

    #[tokio::test]
    async fn a_refused_connect_is_never_sent_and_a_reset_after_sending_may_have_been_applied() {
        // Refused: a port with nothing listening.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let refused = put_one(&format!("http://{addr}")).await;
        assert_eq!((refused.code.as_str(), refused.may_have_been_applied()), ("Connect", false), "{refused}");

        // Reset: the server reads the whole request, then resets the connection.
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = vec![];
            while !String::from_utf8_lossy(&seen).contains("\"k\"") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client closed first");
                seen.extend_from_slice(&buf[..n]);
            }
            conn.set_zero_linger().unwrap();
            drop(conn);
        });
        let reset = put_one(&format!("http://{addr}")).await;
        assert_eq!((reset.code.as_str(), reset.may_have_been_applied()), ("Dispatch", true), "{reset}");
        assert!(reset.message.to_lowercase().contains("reset"), "{reset}");
    }

    #[test]
    fn a_response_with_the_wrong_entry_count_is_retried_whole() {
        let err = check_count(vec![], 2).unwrap_err();
        assert_eq!((err.class, err.code.as_str()), (ErrorClass::Transient, "EntryCountMismatch"));
    }
}
