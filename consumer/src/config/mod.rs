//! `consumer.toml`: every setting of `shardlake-consumer run`, with its
//! default. Endpoints and credentials come from the usual AWS variables
//! (`AWS_REGION`, `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_S3`, profiles),
//! so one file works against AWS and against the local emulators.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use shardlake::catalog::PartitionMode;
use shardlake::partition::DEFAULT_TEMPLATE;
use shardlake::pipeline::DEFAULT_MAX_RECORD_BYTES;
use shardlake::schema::UnknownFieldPolicy;

mod resolve;

pub use resolve::Settings;

/// Kinesis' limit on records per GetRecords call.
pub const MAX_GET_RECORDS: i32 = 10_000;
/// Kinesis allows 5 GetRecords calls per second per shard.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Firehose's smallest buffer interval is 0 s, but a 1 s floor keeps files
/// from shrinking to a handful of rows.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Name of the Kinesis data stream to read. Required.
    pub stream: String,
    /// Name of this consumer application; checkpoints are kept per
    /// application, so two applications can read the same stream.
    #[serde(default = "default_application")]
    pub application: String,
    /// Where a shard without a checkpoint starts: `TRIM_HORIZON` (oldest
    /// record, default), `LATEST` (only new records) or `AT_TIMESTAMP`
    /// (with `initial_timestamp`).
    #[serde(default)]
    pub initial_position: InitialPosition,
    /// RFC 3339 time for `initial_position = "AT_TIMESTAMP"`.
    #[serde(default)]
    pub initial_timestamp: Option<String>,
    /// Lake destination: a directory, `file:///dir` or `s3://bucket/prefix/`. Required.
    pub destination: String,
    /// Checkpoint store: `file:///path` for a single worker (default
    /// `file://./.shardlake/checkpoints`), or `dynamodb://TABLE` for a fleet
    /// of workers sharing the stream's shards by leases (see `[fleet]`).
    #[serde(default = "default_checkpoint_store")]
    pub checkpoint_store: String,
    /// Schema file (TOML, or JSON by extension), as written by
    /// `shardlake-consumer schema infer`, or a Glue table
    /// (`glue://DATABASE/TABLE`) whose columns are read at the first start.
    /// Without it the schema is inferred from the first `infer_sample`
    /// records of the stream. An inferred or Glue schema is stored beside
    /// the checkpoints and used from then on, so replays rebuild identical
    /// files even if the table changes.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// `hive` (default): Parquet files in hive folders, with a Glue table's
    /// partitions kept in step when `catalog` names one; `iceberg`: an
    /// Apache Iceberg table in the catalog `catalog` names
    /// (`sqlite://PATH/NAMESPACE/TABLE`, a local catalog file), its data
    /// files under the destination's `data/`.
    #[serde(default)]
    pub table_format: TableFormat,
    /// With `table_format = "iceberg"`: how often a worker appends its
    /// shards' uploaded batches to the table, all in one snapshot (default
    /// 60s). Readers wait for it before their checkpoint.
    #[serde(default = "default_commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Glue Data Catalog table of the lake, `glue://DATABASE/TABLE`: checked
    /// at start (or created, with `catalog_create`), and with
    /// `catalog_partitions = "register"` every partition is registered once
    /// its first batch commits.
    #[serde(default)]
    pub catalog: Option<String>,
    /// Create the database and table when missing (default false: the table
    /// must exist and fit the schema, template and destination).
    #[serde(default)]
    pub catalog_create: bool,
    /// How often a worker checks that the catalog table still exists
    /// (default 60s): a table deleted while it runs is reported on
    /// `/healthz` and, with `catalog_create`, created again with every
    /// partition the lake has.
    #[serde(default = "default_catalog_check_interval", with = "humantime_serde")]
    pub catalog_check_interval: Duration,
    /// `register` (default: BatchCreatePartition after each commit; every
    /// engine sees the partitions) or `projection` (Athena partition
    /// projection; nothing registered, Athena only).
    #[serde(default)]
    pub catalog_partitions: PartitionMode,
    /// Records sampled to infer the schema when `schema` is not set (default
    /// 1000), in all: an equal share from each shard.
    #[serde(default = "default_infer_sample")]
    pub infer_sample: usize,
    /// What to do with fields the schema does not list: `keep` (as JSON in
    /// `_extra`, default), `error` (record to the error prefix), `drop`, or
    /// `evolve` (like `keep`, and a new top-level field becomes a column).
    #[serde(default)]
    pub unknown_fields: UnknownFieldPolicy,
    /// With `evolve`: a new field becomes a column in the batch's
    /// N-th record that carries it (default 1); earlier ones keep it in `_extra`.
    #[serde(default = "default_evolve_min_records")]
    pub evolve_min_records: u64,
    /// With `evolve`: a worker makes at most one schema version per this
    /// interval (default 10s). Fields that come due meanwhile stay in
    /// `_extra` for those records, and those that recur join the next
    /// version together, so a stream of ever-new keys cannot become a
    /// version, a table update and a file per record.
    #[serde(default = "default_evolve_interval", with = "humantime_serde")]
    pub evolve_interval: Duration,
    /// Partition template, Firehose syntax (`!{timestamp:yyyy}`, `!{field:a.b}`).
    #[serde(default = "default_partition")]
    pub partition: String,
    /// Time used by `!{timestamp:...}`: `arrival` (the Kinesis approximate
    /// arrival timestamp, default) or an event-time field path such as `ts`.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// Prefix (under the destination) for records that fail, by error type.
    #[serde(default = "default_error_prefix")]
    pub error_prefix: String,
    /// Records larger than this many bytes go to the error prefix (default 1 MiB).
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Encrypt lake objects with this KMS key (SSE-KMS).
    #[serde(default)]
    pub sse_kms_key_id: Option<String>,
    /// When a shard's batch is flushed.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// Parquet file settings.
    #[serde(default)]
    pub writer: WriterConfig,
    /// How shards are read.
    #[serde(default)]
    pub polling: PollingConfig,
    /// Polling (GetRecords) or enhanced fan-out (SubscribeToShard).
    #[serde(default)]
    pub retrieval: RetrievalConfig,
    /// `/metrics` and `/healthz`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Leases, when `checkpoint_store` is `dynamodb://TABLE`.
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Time limits of every AWS call.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// When `/healthz` answers 503.
    #[serde(default)]
    pub health: HealthConfig,
    /// On SIGTERM/SIGINT, the time allowed for the final flush and commit
    /// before the process gives up and exits non-zero (default 60 s).
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Whether the file has a `[fleet]` table (which only a `dynamodb://`
    /// store uses).
    #[serde(skip)]
    pub fleet_given: bool,
    /// Where a relative `file://` checkpoint store was before relative paths
    /// resolved against the config's folder (the working directory), when
    /// that is elsewhere: checkpoints left there must not be silently
    /// ignored (see `run`).
    #[serde(skip)]
    pub checkpoints_before: Option<PathBuf>,
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialPosition {
    /// The oldest record still in the stream.
    #[default]
    TrimHorizon,
    /// Records put after the reader starts.
    Latest,
    /// Records at or after `initial_timestamp`.
    AtTimestamp,
}

/// Flush thresholds of one shard batch (Firehose's buffering hints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Flush when a batch holds this many MiB (buffered rows plus encoded
    /// Parquet; default 128, like Firehose's largest buffer).
    #[serde(default = "default_max_mb")]
    pub max_mb: usize,
    /// Flush when a batch holds this many records (default 1,000,000).
    #[serde(default = "default_max_records")]
    pub max_records: u64,
    /// Flush when a batch's first record is this old (default 300 s, at least 1 s).
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
    /// Memory shared by all shard batches, MiB (default 512). When it is
    /// reached, the largest batch flushes early.
    #[serde(default = "default_memory_budget_mb")]
    pub memory_budget_mb: usize,
    /// Memory for GetRecords responses, shared by all shard readers, MiB
    /// (default 64, at least 25: one 10 MiB page needs about 25). Readers
    /// wait for their share, so it bounds read memory at any shard count.
    #[serde(default = "default_read_buffer_mb")]
    pub read_buffer_mb: usize,
}

/// Parquet file settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// A partition file is finished at this size, MiB (default 128).
    #[serde(default = "default_target_file_mb")]
    pub target_file_mb: usize,
    /// Rows per Parquet row group (default 131072).
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

/// How shards are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollingConfig {
    /// Records per GetRecords call (default and maximum 10,000).
    #[serde(default = "default_max_records_per_call")]
    pub max_records_per_call: i32,
    /// Time between GetRecords calls on a busy shard (default and minimum
    /// 200 ms: Kinesis allows 5 calls per second per shard).
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Time between calls when a shard returned nothing (default 1 s).
    #[serde(default = "default_idle_interval", with = "humantime_serde")]
    pub idle_interval: Duration,
    /// The longest pause on a shard that keeps answering empty with nothing
    /// buffered: the idle interval doubles per empty answer up to this
    /// (default 5 s; equal to `idle_interval` turns the back-off off).
    #[serde(default = "default_max_idle_interval", with = "humantime_serde")]
    pub max_idle_interval: Duration,
    /// How often the shard list is refreshed to find new shards (default 30 s).
    #[serde(default = "default_shard_refresh", with = "humantime_serde")]
    pub shard_refresh: Duration,
}

/// How records are retrieved.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalConfig {
    /// `polling` (GetRecords, the default; shared 2 MiB/s per shard) or
    /// `fan-out` (enhanced fan-out: a registered stream consumer gets its
    /// own 2 MiB/s per shard, pushed over SubscribeToShard; costs extra on AWS).
    #[serde(default)]
    pub mode: RetrievalMode,
    /// The registered consumer's name in fan-out mode (default: the
    /// application name). Every worker of a fleet uses the same consumer.
    pub consumer_name: Option<String>,
}

/// `[retrieval] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RetrievalMode {
    /// GetRecords polling.
    #[default]
    Polling,
    /// Enhanced fan-out (SubscribeToShard).
    FanOut,
}

impl RetrievalConfig {
    /// The consumer name to register in fan-out mode.
    pub fn consumer_name<'a>(&'a self, application: &'a str) -> &'a str {
        self.consumer_name.as_deref().unwrap_or(application)
    }
}

/// Fleet mode: how workers share shards through DynamoDB leases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// This worker's id, the lease owner (default `hostname-pid-random`);
    /// unique per process, so a restarted worker never inherits the leases
    /// of its previous life without taking them.
    #[serde(default)]
    pub worker_id: Option<String>,
    /// A lease not renewed for this long is taken over by another worker
    /// (default 10 s, KCL's failoverTimeMillis; at least 1 s).
    #[serde(default = "default_lease_duration", with = "humantime_serde")]
    pub lease_duration: Duration,
    /// How often leases are renewed and the fleet rebalanced (default a
    /// third of `lease_duration`, so two renewals can fail before expiry).
    #[serde(default, with = "humantime_serde")]
    pub renew_interval: Option<Duration>,
    /// Create the DynamoDB table when it is missing (default false: create
    /// it with the schema in docs/fleet.md, and grant no `CreateTable` in production).
    #[serde(default)]
    pub create_table: bool,
}

impl FleetConfig {
    /// The renew interval with its default.
    pub fn renew_every(&self) -> Duration {
        self.renew_interval.unwrap_or(self.lease_duration / 3)
    }
}

/// Time limits of AWS calls. A call past its limit fails as a timeout, which
/// is retried with back-off like any transient failure, so a connection that
/// never answers cannot hold a reader, a lease or an upload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    /// Opening a connection to Kinesis, DynamoDB or S3 (default 3 s).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect: Duration,
    /// One attempt of a Kinesis or DynamoDB call, answer included (default
    /// 10 s; a GetRecords page reaches 10 MB, so allow for the link).
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    pub call: Duration,
    /// The fixed part of an S3 attempt's limit (default 10 s): a call
    /// without a body, or an upload's allowance on top of its bytes at
    /// `upload_floor_kib_per_sec`.
    #[serde(default = "default_upload_timeout", with = "humantime_serde")]
    pub upload: Duration,
    /// The slowest rate per connection, in KiB/s, at which an upload (a put
    /// or one multipart part) still completes (default 64): each attempt may
    /// take `upload` plus its bytes at this rate.
    #[serde(default = "default_upload_floor")]
    pub upload_floor_kib_per_sec: u64,
}

impl TimeoutsConfig {
    /// The timeouts as the AWS clients take them.
    pub fn aws(&self) -> shardlake::aws::Timeouts {
        shardlake::aws::Timeouts {
            connect: self.connect,
            call: self.call,
            upload: self.upload,
            upload_floor: self.upload_floor_kib_per_sec * 1024,
        }
    }
}

/// When `/healthz` answers 503 (the body names each shard or dependency and why).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// A shard is stalled when no read of it succeeded for this long, or its
    /// oldest buffered record waits this long past `buffer.max_age` without
    /// a commit (default 120 s).
    #[serde(default = "default_stall_after", with = "humantime_serde")]
    pub stall_after: Duration,
    /// A dependency failing this long without a success (uploads, checkpoint
    /// writes or loads, shard listing, lease renewals) makes the worker
    /// unhealthy (default 60 s).
    #[serde(default = "default_failing_after", with = "humantime_serde")]
    pub failing_after: Duration,
    /// A shard whose oldest unread record is closer than this to the
    /// stream's retention is unhealthy: records are about to age out unread
    /// (default 6 h; at most half the retention is used).
    #[serde(default = "default_retention_margin", with = "humantime_serde")]
    pub retention_margin: Duration,
}

/// The HTTP endpoint for Prometheus and health checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of `/metrics` and `/healthz` (default `127.0.0.1:9898`; port 0
    /// picks a free port, which is logged).
    #[serde(default = "default_metrics_address")]
    pub address: SocketAddr,
    /// Serve the endpoint at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// What the lake is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    /// Parquet files in hive folders.
    #[default]
    Hive,
    /// An Apache Iceberg table.
    Iceberg,
}

/// `commit_interval`'s default: a snapshot a minute per worker keeps a
/// fleet's commits (and catalog conflicts) few, and the table's metadata
/// small, at a minute of added latency; Firehose buffers for Iceberg
/// similarly.
pub fn default_commit_interval() -> Duration {
    Duration::from_secs(60)
}

fn default_application() -> String {
    "shardlake".into()
}
fn default_evolve_min_records() -> u64 {
    1
}
fn default_catalog_check_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_evolve_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_infer_sample() -> usize {
    shardlake::schema::DEFAULT_INFER_SAMPLE
}
fn default_checkpoint_store() -> String {
    "file://./.shardlake/checkpoints".into()
}
fn default_partition() -> String {
    DEFAULT_TEMPLATE.into()
}
fn default_time_field() -> String {
    "arrival".into()
}
fn default_error_prefix() -> String {
    shardlake::error_output::DEFAULT_ERROR_PREFIX.into()
}
fn default_max_record_bytes() -> usize {
    DEFAULT_MAX_RECORD_BYTES
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_mb() -> usize {
    128
}
fn default_max_records() -> u64 {
    1_000_000
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_memory_budget_mb() -> usize {
    512
}
fn default_read_buffer_mb() -> usize {
    64
}
fn default_target_file_mb() -> usize {
    128
}
fn default_row_group_rows() -> usize {
    128 * 1024
}
fn default_max_records_per_call() -> i32 {
    MAX_GET_RECORDS
}
fn default_poll_interval() -> Duration {
    MIN_POLL_INTERVAL
}
fn default_idle_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_max_idle_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_shard_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    shardlake::aws::Timeouts::default().connect
}
fn default_call_timeout() -> Duration {
    shardlake::aws::Timeouts::default().call
}
fn default_upload_timeout() -> Duration {
    shardlake::aws::Timeouts::default().upload
}
fn default_upload_floor() -> u64 {
    shardlake::aws::Timeouts::default().upload_floor / 1024
}
fn default_retention_margin() -> Duration {
    Duration::from_secs(6 * 3600)
}
fn default_stall_after() -> Duration {
    Duration::from_secs(120)
}
fn default_failing_after() -> Duration {
    Duration::from_secs(60)
}
fn default_metrics_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9898))
}
fn default_true() -> bool {
    true
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(10)
}
fn default_worker_id() -> Option<String> {
    None
}
fn default_create_table() -> bool {
    false
}
fn default_renew_interval() -> Option<Duration> {
    None
}

/// `hostname-pid-random`: unique per process across a fleet.
pub fn generated_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!("{host}-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

macro_rules! default_from_fields {
    ($($ty:ident { $($field:ident: $f:ident),* })*) => {$(
        impl Default for $ty {
            fn default() -> Self {
                $ty { $($field: $f()),* }
            }
        }
    )*};
}

default_from_fields! {
    BufferConfig { max_mb: default_max_mb, max_records: default_max_records, max_age: default_max_age,
                   memory_budget_mb: default_memory_budget_mb, read_buffer_mb: default_read_buffer_mb }
    WriterConfig { target_file_mb: default_target_file_mb, row_group_rows: default_row_group_rows }
    PollingConfig { max_records_per_call: default_max_records_per_call, interval: default_poll_interval,
                    idle_interval: default_idle_interval, max_idle_interval: default_max_idle_interval,
                    shard_refresh: default_shard_refresh }
    MetricsConfig { address: default_metrics_address, enabled: default_true }
    TimeoutsConfig { connect: default_connect_timeout, call: default_call_timeout, upload: default_upload_timeout,
                     upload_floor_kib_per_sec: default_upload_floor }
    HealthConfig { stall_after: default_stall_after, failing_after: default_failing_after,
                   retention_margin: default_retention_margin }
    FleetConfig { worker_id: default_worker_id, lease_duration: default_lease_duration,
                  renew_interval: default_renew_interval, create_table: default_create_table }
}

impl ConsumerConfig {
    /// Parses TOML text; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut config: Self = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
        config.fleet_given = toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("fleet"));
        Ok(config)
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests;
