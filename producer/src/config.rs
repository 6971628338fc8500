//! Producer configuration: a serde struct (loadable from TOML) whose doc
//! comments are the user docs, and [`Settings`], the validated form the
//! producer runs on. Invalid combinations fail at load time; batch limits are
//! clamped to the API limits.
//!
//! ```
//! use shardlake_producer::ProducerConfig;
//! let config = ProducerConfig::from_toml(r#"
//!     target = { kinesis_stream = "events" }
//!     linger_ms = 50
//!     aggregation = true
//! "#).unwrap();
//! assert_eq!(config.record_ttl_ms, 30_000);
//! ```

use std::time::Duration;

use serde::Deserialize;
use shardlake_aws::retry::RetryPolicy;

use crate::error::{Error, Result};

/// `PutRecords` entries per request.
pub const KINESIS_MAX_BATCH_RECORDS: usize = 500;
/// `PutRecords` bytes per request (data + partition keys).
pub const KINESIS_MAX_BATCH_BYTES: usize = 5 * 1024 * 1024;
/// Default Kinesis per-record limit (data + partition key).
pub const KINESIS_DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Largest per-record limit a Kinesis stream can be raised to.
pub const KINESIS_MAX_RECORD_BYTES: usize = 10 * 1024 * 1024;
/// `PutRecordBatch` entries per request.
pub const FIREHOSE_MAX_BATCH_RECORDS: usize = 500;
/// `PutRecordBatch` bytes per request.
pub const FIREHOSE_MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Firehose per-record limit (1,000 KiB).
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1000 * 1024;
/// Smallest `aggregation_max_bytes`: room for the framing and a few records.
pub const AGGREGATION_MIN_BYTES: usize = 1024;
/// A Kinesis shard's write limit in records per second.
pub const SHARD_RECORDS_PER_SEC: u32 = 1000;
/// A Kinesis shard's write limit in bytes per second.
pub const SHARD_BYTES_PER_SEC: u32 = 1024 * 1024;

/// Where records go.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// A Kinesis data stream, written with `PutRecords`.
    KinesisStream(String),
    /// A Firehose delivery stream (Direct PUT), written with `PutRecordBatch`.
    FirehoseDeliveryStream(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::KinesisStream(s) => write!(f, "kinesis stream {s:?}"),
            Target::FirehoseDeliveryStream(s) => write!(f, "firehose delivery stream {s:?}"),
        }
    }
}

impl Target {
    /// The stream's name.
    pub fn name(&self) -> &str {
        match self {
            Target::KinesisStream(s) | Target::FirehoseDeliveryStream(s) => s,
        }
    }
}

/// Producer settings. Every field but `target` has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProducerConfig {
    /// Where records go: `{ kinesis_stream = "name" }` or
    /// `{ firehose_delivery_stream = "name" }`.
    pub target: Target,

    /// How long a record may wait for a fuller batch before the batch is sent
    /// (KPL's `RecordMaxBufferedTime`). Higher means fewer, larger requests.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,

    /// Time to live: a record not delivered by then resolves with an expired
    /// error that carries it (KPL's `RecordTtl`). It runs from the moment
    /// `send`, `enqueue` or `try_send` is called (time spent waiting for room
    /// in the budget counts), or from the record's first attempt with
    /// `ttl_start = "first_attempt"`.
    #[serde(default = "default_record_ttl_ms")]
    pub record_ttl_ms: u64,

    /// When `record_ttl_ms` starts: `"send"` (default, as in the KPL) bounds
    /// the whole wait of a caller; `"first_attempt"` bounds only the time
    /// spent retrying, so a record never expires waiting in the producer's
    /// own queue behind a slow stream (the buffer budget still bounds memory).
    #[serde(default)]
    pub ttl_start: TtlStart,

    /// Per-record limit (data + partition key). Default 1 MiB for Kinesis (up
    /// to 10 MiB for a stream with a raised limit); Firehose is fixed at 1,000
    /// KiB. A larger record fails at `send`.
    #[serde(default)]
    pub max_record_bytes: Option<usize>,

    /// Entries per request, clamped to 500 (the limit of both APIs).
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,

    /// Bytes per request. Default and maximum: 5 MiB for Kinesis, 4 MiB for
    /// Firehose.
    #[serde(default)]
    pub max_batch_bytes: Option<usize>,

    /// Budget of buffered + in-flight bytes. `send` waits and `try_send`
    /// fails while it is used up, so memory stays bounded when the stream is
    /// slow or down. At least `max_record_bytes`.
    #[serde(default = "default_max_buffered_bytes")]
    pub max_buffered_bytes: usize,

    /// Budget of buffered + in-flight records, as above.
    #[serde(default = "default_max_buffered_records")]
    pub max_buffered_records: usize,

    /// The most requests in flight at once (KPL's `MaxConnections`). The
    /// producer starts at 1 and adapts below this ceiling: it adds one while
    /// answers come back as fast as usual, and cuts by 10% on timeouts,
    /// throttling or rising latency (docs/producer.md). Lower it to
    /// cap the load one producer may put on the stream; 1 sends one request
    /// at a time.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,

    /// The longest a request may go unanswered before it is retried (KPL's
    /// `RequestTimeout`). The timeout in force follows the observed latency
    /// (4 × the RTT baseline, doubled after each timeout) between
    /// `min_request_timeout_ms` and this ceiling; before the first answer it
    /// is this ceiling. A timed-out request may still have been stored: its
    /// records are resent (possible duplicates) and, if given up, reported
    /// with an unknown outcome.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,

    /// The shortest request timeout, however fast answers come: room for a
    /// slow answer now and then without a resend. Unset: 2,000, or
    /// `request_timeout_ms` when that is lower. Set above
    /// `request_timeout_ms`, it is a config error.
    #[serde(default)]
    pub min_request_timeout_ms: Option<u64>,

    /// Per-shard rate limit as a percentage of the shard's write limits
    /// (1,000 records/s and 1 MiB/s), like KPL's `RateLimit`; 0 turns the
    /// limiter off. Kinesis only.
    #[serde(default = "default_rate_limit_percent")]
    pub rate_limit_percent: u32,

    /// How often the shard map is re-read with `ListShards`, in seconds; 0
    /// re-reads it only when a record lands on a shard other than predicted
    /// (which is how a reshard shows). Kinesis only.
    #[serde(default = "default_shard_map_refresh_secs")]
    pub shard_map_refresh_secs: u64,

    /// The longest one control-plane call (`ListShards`, and in the CLI
    /// `DescribeStreamSummary` and `CreateStream`) may go unanswered, in
    /// milliseconds. At start, a call past it fails `build` with an error
    /// naming the call and the endpoint; a shard-map refresh past it is
    /// abandoned (the old map is kept) and retried.
    #[serde(default = "default_control_plane_timeout_ms")]
    pub control_plane_timeout_ms: u64,

    /// Strict per-partition-key order: no record overtakes an earlier one with
    /// the same key, even across retries. Costs throughput: each key has at
    /// most one request in flight, so one key gets at most one batch per round
    /// trip (with `aggregation`, that batch packs many of its records).
    /// Kinesis only.
    ///
    /// The guarantee holds for requests that get an answer. A request that
    /// times out may still be applied later, after its resend and after later
    /// records of its keys: the stream can then read A, B, A (the late copy)
    /// or A, A, B. Order of first occurrences holds only if no request of the
    /// key timed out; readers that need it exactly dedupe by a record id and
    /// keep the first copy. Adaptive timeouts make this rare.
    #[serde(default = "default_ordering")]
    pub ordering: bool,

    /// Pack records bound for the same shard into KPL-format aggregated
    /// records, readable by the KCL and shardlake's consumer. Kinesis only.
    #[serde(default = "default_aggregation")]
    pub aggregation: bool,

    /// Largest aggregated record in bytes (KPL's `AggregationMaxSize`).
    #[serde(default = "default_aggregation_max_bytes")]
    pub aggregation_max_bytes: usize,

    /// Backoff between attempts.
    #[serde(default)]
    pub retry: RetryConfig,
}

/// When a record's time to live starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TtlStart {
    /// When `send`, `enqueue` or `try_send` is called.
    #[default]
    Send,
    /// When the record is first put in a request.
    FirstAttempt,
}

/// Full-jitter exponential backoff between attempts of a record.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// The first backoff ceiling, in milliseconds.
    #[serde(default = "default_retry_base_ms")]
    pub base_ms: u64,
    /// The largest backoff ceiling, in milliseconds.
    #[serde(default = "default_retry_cap_ms")]
    pub cap_ms: u64,
    /// Attempts per record in all; the TTL usually ends retries first.
    #[serde(default = "default_retry_max_attempts")]
    pub max_attempts: u32,
    /// Sends of a record after a request carrying it went unanswered (a
    /// timeout, a reset or a connection closed before the answer: it may
    /// have been stored). Each such resend may store a duplicate, so they are
    /// few; past them the record is given up as an unknown outcome. 0 never
    /// resends such a record.
    #[serde(default = "default_retry_max_resends_after_unknown")]
    pub max_resends_after_unknown: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            base_ms: default_retry_base_ms(),
            cap_ms: default_retry_cap_ms(),
            max_attempts: default_retry_max_attempts(),
            max_resends_after_unknown: default_retry_max_resends_after_unknown(),
        }
    }
}

fn default_linger_ms() -> u64 {
    100
}
fn default_record_ttl_ms() -> u64 {
    30_000
}
fn default_max_batch_records() -> usize {
    500
}
fn default_max_buffered_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_max_buffered_records() -> usize {
    100_000
}
fn default_max_concurrent_requests() -> usize {
    24
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_min_request_timeout_ms() -> u64 {
    2_000
}
fn default_rate_limit_percent() -> u32 {
    150
}
fn default_shard_map_refresh_secs() -> u64 {
    60
}
fn default_control_plane_timeout_ms() -> u64 {
    10_000
}
fn default_ordering() -> bool {
    false
}
fn default_aggregation() -> bool {
    false
}
fn default_aggregation_max_bytes() -> usize {
    51_200
}
fn default_retry_base_ms() -> u64 {
    100
}
fn default_retry_cap_ms() -> u64 {
    5_000
}
fn default_retry_max_attempts() -> u32 {
    100
}
fn default_retry_max_resends_after_unknown() -> u32 {
    2
}

impl ProducerConfig {
    /// Defaults for a Kinesis data stream.
    pub fn kinesis(stream: impl Into<String>) -> Self {
        Self::with_target(Target::KinesisStream(stream.into()))
    }

    /// Defaults for a Firehose delivery stream.
    pub fn firehose(delivery_stream: impl Into<String>) -> Self {
        Self::with_target(Target::FirehoseDeliveryStream(delivery_stream.into()))
    }

    fn with_target(target: Target) -> Self {
        ProducerConfig {
            target,
            linger_ms: default_linger_ms(),
            record_ttl_ms: default_record_ttl_ms(),
            ttl_start: TtlStart::default(),
            max_record_bytes: None,
            max_batch_records: default_max_batch_records(),
            max_batch_bytes: None,
            max_buffered_bytes: default_max_buffered_bytes(),
            max_buffered_records: default_max_buffered_records(),
            max_concurrent_requests: default_max_concurrent_requests(),
            request_timeout_ms: default_request_timeout_ms(),
            min_request_timeout_ms: None,
            rate_limit_percent: default_rate_limit_percent(),
            shard_map_refresh_secs: default_shard_map_refresh_secs(),
            control_plane_timeout_ms: default_control_plane_timeout_ms(),
            ordering: default_ordering(),
            aggregation: default_aggregation(),
            aggregation_max_bytes: default_aggregation_max_bytes(),
            retry: RetryConfig::default(),
        }
    }

    /// Parses and validates a TOML config.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: ProducerConfig = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings and returns the form the producer runs on.
    pub fn validate(&self) -> Result<Settings> {
        let bad = |msg: String| Err(Error::Config(msg));
        let kinesis = matches!(self.target, Target::KinesisStream(_));
        if self.target.name().is_empty() {
            return bad("target: the stream name is empty".into());
        }
        let (record_limit, batch_limit) = if kinesis {
            (KINESIS_MAX_RECORD_BYTES, KINESIS_MAX_BATCH_BYTES)
        } else {
            (FIREHOSE_MAX_RECORD_BYTES, FIREHOSE_MAX_BATCH_BYTES)
        };
        let default_record = if kinesis { KINESIS_DEFAULT_MAX_RECORD_BYTES } else { FIREHOSE_MAX_RECORD_BYTES };
        let max_record_bytes = self.max_record_bytes.unwrap_or(default_record);
        if max_record_bytes == 0 || max_record_bytes > record_limit {
            return bad(format!("max_record_bytes = {max_record_bytes}: {} allows 1 to {record_limit}", self.target));
        }
        let entries_limit = if kinesis { KINESIS_MAX_BATCH_RECORDS } else { FIREHOSE_MAX_BATCH_RECORDS };
        let max_batch_records = self.max_batch_records.min(entries_limit);
        // A record larger than the request limit goes alone in its request
        // (only possible for Kinesis streams with a raised record limit).
        let max_batch_bytes = self.max_batch_bytes.unwrap_or(batch_limit).min(batch_limit);
        if max_batch_records == 0 || max_batch_bytes == 0 {
            return bad("max_batch_records and max_batch_bytes must be at least 1".into());
        }
        if self.max_buffered_bytes < max_record_bytes {
            return bad(format!(
                "max_buffered_bytes = {} is below max_record_bytes = {max_record_bytes}: the largest record could never be buffered",
                self.max_buffered_bytes
            ));
        }
        if self.max_buffered_bytes > u32::MAX as usize {
            return bad(format!("max_buffered_bytes = {} is above the 4 GiB maximum", self.max_buffered_bytes));
        }
        if self.max_buffered_records == 0 || self.max_buffered_records > u32::MAX as usize {
            return bad(format!("max_buffered_records = {} must be 1 to 2^32 - 1", self.max_buffered_records));
        }
        if self.max_concurrent_requests == 0 {
            return bad("max_concurrent_requests must be at least 1".into());
        }
        if self.record_ttl_ms == 0 || self.request_timeout_ms == 0 {
            return bad("record_ttl_ms and request_timeout_ms must be at least 1".into());
        }
        if let Some(min) = self.min_request_timeout_ms
            && min > self.request_timeout_ms
        {
            return bad(format!(
                "min_request_timeout_ms = {min} is above request_timeout_ms = {}: the floor of the request timeout \
                 must not exceed its ceiling; lower the first or raise the second",
                self.request_timeout_ms
            ));
        }
        let min_request_timeout_ms = self
            .min_request_timeout_ms
            .unwrap_or_else(|| default_min_request_timeout_ms().min(self.request_timeout_ms));
        if self.control_plane_timeout_ms == 0 {
            return bad("control_plane_timeout_ms must be at least 1".into());
        }
        if !kinesis && (self.ordering || self.aggregation) {
            return bad(format!(
                "ordering and aggregation apply to Kinesis streams only; {} neither keeps order nor deaggregates Direct PUT records",
                self.target
            ));
        }
        if self.aggregation && !(AGGREGATION_MIN_BYTES..=max_record_bytes).contains(&self.aggregation_max_bytes) {
            return bad(format!(
                "aggregation_max_bytes = {} must be {} to max_record_bytes ({max_record_bytes})",
                self.aggregation_max_bytes, AGGREGATION_MIN_BYTES
            ));
        }
        if self.retry.max_attempts == 0 || self.retry.base_ms == 0 || self.retry.cap_ms < self.retry.base_ms {
            return bad("retry: max_attempts and base_ms must be at least 1, and cap_ms at least base_ms".into());
        }
        Ok(Settings {
            target: self.target.clone(),
            linger: Duration::from_millis(self.linger_ms),
            ttl: Duration::from_millis(self.record_ttl_ms),
            ttl_start: self.ttl_start,
            max_record_bytes,
            max_batch_records,
            max_batch_bytes,
            max_buffered_bytes: self.max_buffered_bytes,
            max_buffered_records: self.max_buffered_records,
            max_concurrent_requests: self.max_concurrent_requests,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            min_request_timeout: Duration::from_millis(min_request_timeout_ms),
            rate_limit_factor: (kinesis && self.rate_limit_percent > 0).then(|| self.rate_limit_percent as f64 / 100.0),
            shard_map_refresh: (kinesis && self.shard_map_refresh_secs > 0)
                .then(|| Duration::from_secs(self.shard_map_refresh_secs)),
            control_plane_timeout: Duration::from_millis(self.control_plane_timeout_ms),
            ordering: self.ordering,
            aggregation_max_bytes: self.aggregation.then_some(self.aggregation_max_bytes),
            retry: RetryPolicy {
                max_attempts: self.retry.max_attempts,
                base: Duration::from_millis(self.retry.base_ms),
                cap: Duration::from_millis(self.retry.cap_ms),
            },
            max_resends_after_unknown: self.retry.max_resends_after_unknown,
        })
    }
}

/// Validated settings, in the units the producer uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where records go.
    pub target: Target,
    /// Longest wait for a fuller batch.
    pub linger: Duration,
    /// Per-record time to live.
    pub ttl: Duration,
    /// When the time to live starts.
    pub ttl_start: TtlStart,
    /// Per-record limit.
    pub max_record_bytes: usize,
    /// Entries per request.
    pub max_batch_records: usize,
    /// Bytes per request.
    pub max_batch_bytes: usize,
    /// Buffered + in-flight byte budget.
    pub max_buffered_bytes: usize,
    /// Buffered + in-flight record budget.
    pub max_buffered_records: usize,
    /// Ceiling of the adaptive concurrency limit.
    pub max_concurrent_requests: usize,
    /// Ceiling of the adaptive request timeout.
    pub request_timeout: Duration,
    /// Floor of the adaptive request timeout (at most the ceiling).
    pub min_request_timeout: Duration,
    /// Fraction of the shard limits to allow; `None` when off.
    pub rate_limit_factor: Option<f64>,
    /// Periodic shard-map refresh; `None` when only on mismatch.
    pub shard_map_refresh: Option<Duration>,
    /// Deadline of one control-plane call (`ListShards`).
    pub control_plane_timeout: Duration,
    /// Strict per-key ordering.
    pub ordering: bool,
    /// Largest aggregate, when aggregation is on.
    pub aggregation_max_bytes: Option<usize>,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Sends of a record allowed after an unanswered attempt.
    pub max_resends_after_unknown: u32,
}

impl Settings {
    /// Whether the target is a Kinesis stream.
    pub fn is_kinesis(&self) -> bool {
        matches!(self.target, Target::KinesisStream(_))
    }
}

#[cfg(test)]
mod tests;
