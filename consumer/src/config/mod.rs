//! `consumer.toml`: every setting of `shardlake-consumer run`, with its
//! default. Endpoints and credentials come from the usual AWS variables
//! (`AWS_REGION`, `AWS_ENDPOINT_URL_KINESIS`, `AWS_ENDPOINT_URL_S3`, profiles),
//! so one file works against AWS and against the local emulators.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use shardlake::catalog::{CatalogTable, GLUE_SCHEME, PartitionMode, TableName};
use shardlake::partition::{DEFAULT_TEMPLATE, PartitionTemplate, TimeSource};
use shardlake::pipeline::{DEFAULT_MAX_RECORD_BYTES, TableSpec, partition_budget};
use shardlake::schema::{Schema, TableDefinition, UnknownFieldPolicy, table_definition};
use shardlake::store::folder_prefix;
use shardlake::store::{Location, S3Options};
use shardlake::writer::WriterSettings;

/// Kinesis' limit on records per GetRecords call.
pub const MAX_GET_RECORDS: i32 = 10_000;
/// Kinesis allows 5 GetRecords calls per second per shard.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Firehose's smallest buffer interval is 0 s, but a 1 s floor keeps files
/// from shrinking to a handful of rows.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(1);

/// Room for a shard id in object names: Kinesis names shards
/// `shardId-000000000000` (20 bytes); a few more for safety.
const MAX_SHARD_ID_BYTES: usize = 28;

/// Room for a position in object names: a Kinesis sequence number (56
/// digits) and, for aggregated records, `-` and a sub-sequence number.
const MAX_POSITION_BYTES: usize = 56 + 1 + 6;

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

/// The largest size in MiB a setting takes (1 TiB): more is a typo, and
/// shifting it into bytes would overflow.
const MAX_MB: usize = 1 << 20;

/// `location` (a lake or checkpoint store URL, or a plain path) with a
/// relative local path made absolute against `base`; URLs of other schemes
/// as they are.
fn against(location: &str, base: &Path) -> String {
    let (scheme, path) = match location.strip_prefix("file://") {
        Some(path) => ("file://", path),
        None if location.contains("://") => return location.to_string(),
        None => ("", location),
    };
    let path = Path::new(path);
    if path.is_absolute() {
        return location.to_string();
    }
    // Lexically, so `../lake` beside the config reads as a clean path in
    // table locations and logs.
    let mut joined = PathBuf::new();
    for part in base.join(path).components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                joined.pop();
            }
            other => joined.push(other),
        }
    }
    format!("{scheme}{}", joined.display())
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

/// A loaded config with everything parsed: the table spec, start position.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file as written (with defaults filled in).
    pub config: ConsumerConfig,
    /// Schema, template and writer settings.
    pub table: TableSpec,
    /// `initial_timestamp` parsed, for `AT_TIMESTAMP`.
    pub initial_timestamp_ms: Option<i64>,
    /// Upload settings.
    pub s3: S3Options,
    /// `schema = "glue://..."`: the table the schema is read from.
    pub schema_table: Option<TableName>,
    /// `catalog`: the lake's table in Glue.
    pub catalog: Option<TableName>,
}

impl Settings {
    /// Whether the schema is inferred from the stream (no `schema` set).
    pub fn infers_schema(&self) -> bool {
        self.config.schema.is_none()
    }

    /// The lake as a table: columns from the schema, keys from the template.
    pub fn table_definition(&self) -> anyhow::Result<TableDefinition> {
        self.table_definition_of(&self.table.schema)
    }

    /// The lake as a table when written with `schema` (a schema version).
    pub fn table_definition_of(&self, schema: &Schema) -> anyhow::Result<TableDefinition> {
        let location = shardlake::catalog::table_location(&self.config.destination)?;
        let t = &self.table;
        let projection = self.config.catalog_partitions.projection();
        Ok(table_definition(schema, &t.template, t.unknown_fields, &location, projection)?)
    }

    /// The catalog table `name` for a lake of `def`; under `evolve` it
    /// takes the columns the lake adds.
    pub fn catalog_table(&self, glue: aws_sdk_glue::Client, name: TableName, def: TableDefinition) -> CatalogTable {
        let table = CatalogTable::new(glue, name, self.table.template.clone(), def, self.config.catalog_partitions);
        if self.config.unknown_fields == UnknownFieldPolicy::Evolve { table.evolving() } else { table }
    }

    /// Sets the schema (the inferred one).
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.table.schema = Arc::new(schema);
        self
    }
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

    /// Checks every setting and combination, clamps to the API limits and
    /// builds what the worker needs. `base` resolves a relative schema path
    /// (the config file's folder).
    pub fn resolve(mut self, base: &Path) -> anyhow::Result<Settings> {
        if self.stream.trim().is_empty() {
            bail!("stream: empty; set it to the Kinesis data stream name");
        }
        // Relative local paths resolve against the config file's folder, as
        // `schema` does, so a service started from any folder writes to the
        // same places.
        let base = std::path::absolute(base).with_context(|| format!("the config's folder {}", base.display()))?;
        let destination = Location::parse(&self.destination).map_err(|e| anyhow::anyhow!("destination: {e}"))?;
        self.destination = against(&self.destination, &base);
        let fleet_store = self.checkpoint_store.starts_with("dynamodb://");
        if !fleet_store {
            crate::checkpoint::CheckpointStore::open(&self.checkpoint_store, &self.application, &self.stream)
                .map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
            let resolved = against(&self.checkpoint_store, &base);
            let cwd = std::env::current_dir().unwrap_or_default();
            let before = against(&self.checkpoint_store, &cwd);
            if before != resolved {
                self.checkpoints_before = Some(PathBuf::from(before.strip_prefix("file://").unwrap_or(&before)));
            }
            self.checkpoint_store = resolved;
        }
        if self.shutdown_timeout < Duration::from_secs(1) {
            bail!(
                "shutdown_timeout: {:?} leaves no time for the final flush and commit; use \"1s\" or more \
                 (default 60s)",
                self.shutdown_timeout
            );
        }
        let name = self.retrieval.consumer_name(&self.application);
        if !(1..=128).contains(&name.len())
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            bail!(
                "retrieval.consumer_name: `{name}` must be 1 to 128 letters, digits, `_`, `.` or `-` \
                 (the default is the application name)"
            );
        }
        let f = &mut self.fleet;
        if f.lease_duration < Duration::from_secs(1) {
            bail!("fleet.lease_duration: {:?} is below the 1s minimum; use \"1s\" or more", f.lease_duration);
        }
        if f.renew_every().is_zero() || f.renew_every() >= f.lease_duration {
            bail!("fleet.renew_interval: must be above 0 and below fleet.lease_duration (default a third of it)");
        }
        if f.worker_id.as_deref().is_some_and(|w| w.trim().is_empty()) {
            bail!("fleet.worker_id: empty; remove it to get hostname-pid-random");
        }
        if self.fleet_given && !fleet_store {
            bail!(
                "fleet: only used with checkpoint_store = \"dynamodb://TABLE\" (a file store serves one worker); \
                 remove [fleet] or use a DynamoDB store"
            );
        }
        f.worker_id.get_or_insert_with(generated_worker_id);
        let initial_timestamp_ms = match (self.initial_position, &self.initial_timestamp) {
            (InitialPosition::AtTimestamp, None) => {
                bail!(
                    "initial_timestamp: required with initial_position = \"AT_TIMESTAMP\" (e.g. \"2026-11-22T07:00:00Z\")"
                )
            }
            (InitialPosition::AtTimestamp, Some(t)) => {
                Some(shardlake::time::parse_rfc3339_millis(t).with_context(|| {
                    format!("initial_timestamp: `{t}` is not an RFC 3339 time (e.g. \"2026-11-22T07:00:00Z\")")
                })?)
            }
            (_, Some(_)) => {
                bail!("initial_timestamp: only used with initial_position = \"AT_TIMESTAMP\"; remove it or set that")
            }
            (_, None) => None,
        };
        let template = PartitionTemplate::parse(&self.partition).map_err(|e| anyhow::anyhow!("partition: {e}"))?;
        let time_source = TimeSource::parse(&self.time_field).map_err(|e| anyhow::anyhow!("time_field: {e}"))?;
        let mut schema_table = None;
        let schema = match &mut self.schema {
            Some(path) if path.to_str().is_some_and(|p| p.starts_with(GLUE_SCHEME)) => {
                let url = path.to_str().unwrap_or_default();
                schema_table = Some(TableName::parse(url).map_err(|e| anyhow::anyhow!("schema: {e}"))?);
                // Read at start-up (or taken from the stored copy); see `Settings::with_schema`.
                Schema::default()
            }
            Some(path) => {
                if !path.is_absolute() {
                    *path = base.join(&*path);
                }
                Schema::from_file(path).map_err(|e| anyhow::anyhow!("schema: {e}"))?
            }
            None if self.infer_sample == 0 => bail!("infer_sample: must be at least 1 (or set schema)"),
            // Inferred at start-up from the stream; see `Settings::with_schema`.
            None => Schema::default(),
        };
        let catalog = match &self.catalog {
            Some(url) => {
                let name = TableName::parse(url).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
                table_definition(&Schema::default(), &template, self.unknown_fields, "s3://check/", None)
                    .map_err(|e| anyhow::anyhow!("partition (with catalog): {e}"))?;
                Some(name)
            }
            None if self.catalog_create => bail!("catalog_create: set catalog = \"glue://DATABASE/TABLE\" too"),
            None => None,
        };
        if self.evolve_min_records == 0 {
            bail!("evolve_min_records: must be at least 1 (a field becomes a column in its N-th record of a batch)");
        }
        if self.evolve_min_records != 1 && self.unknown_fields != UnknownFieldPolicy::Evolve {
            bail!("evolve_min_records: only used with unknown_fields = \"evolve\"; remove it or set that");
        }
        if self.evolve_interval != default_evolve_interval() && self.unknown_fields != UnknownFieldPolicy::Evolve {
            bail!("evolve_interval: only used with unknown_fields = \"evolve\"; remove it or set that");
        }
        for (key, mb) in [
            ("buffer.max_mb", self.buffer.max_mb),
            ("buffer.memory_budget_mb", self.buffer.memory_budget_mb),
            ("buffer.read_buffer_mb", self.buffer.read_buffer_mb),
            ("writer.target_file_mb", self.writer.target_file_mb),
        ] {
            if mb > MAX_MB {
                bail!("{key}: {mb} MiB is more than any machine holds; at most {MAX_MB} (1 TiB)");
            }
        }
        let b = &mut self.buffer;
        if b.max_mb == 0 || b.max_records == 0 {
            bail!("buffer.max_mb and buffer.max_records: must be at least 1");
        }
        if b.max_age < MIN_MAX_AGE {
            bail!("buffer.max_age: {:?} is below the 1s minimum; use \"1s\" or more", b.max_age);
        }
        if b.memory_budget_mb < b.max_mb {
            bail!(
                "buffer.memory_budget_mb ({}) is smaller than buffer.max_mb ({}); raise the budget or lower max_mb",
                b.memory_budget_mb,
                b.max_mb
            );
        }
        let min_read = crate::kinesis::get_records::MAX_CALL_BYTES >> 20;
        if b.read_buffer_mb < min_read {
            bail!(
                "buffer.read_buffer_mb: {} is below {min_read}, what one 10 MiB GetRecords page needs",
                b.read_buffer_mb
            );
        }
        let t = &self.timeouts;
        for (key, value, min) in [
            ("timeouts.connect", t.connect, Duration::from_millis(100)),
            ("timeouts.call", t.call, Duration::from_millis(500)),
            ("timeouts.upload", t.upload, Duration::from_secs(1)),
            ("health.stall_after", self.health.stall_after, Duration::from_secs(1)),
            ("health.failing_after", self.health.failing_after, Duration::from_secs(1)),
        ] {
            if value < min {
                bail!("{key}: {value:?} is below the {min:?} minimum");
            }
        }
        if !(1..=MAX_MB as u64 * 1024).contains(&t.upload_floor_kib_per_sec) {
            bail!(
                "timeouts.upload_floor_kib_per_sec: {} is out of range; give the slowest upload rate per connection \
                 to wait for, in KiB/s (at least 1; default {})",
                t.upload_floor_kib_per_sec,
                default_upload_floor()
            );
        }
        // A GetRecords attempt may take `timeouts.call`; a shard whose read
        // timed out once is slow, not stalled.
        let min_stall = 2 * t.call;
        if self.health.stall_after < min_stall {
            bail!(
                "health.stall_after: {:?} is shorter than two read attempts (2 x timeouts.call = {min_stall:?}): \
                 every slow read would report the shard as stalled; raise it to at least {}s",
                self.health.stall_after,
                min_stall.as_secs_f64().ceil()
            );
        }
        let p = &mut self.polling;
        p.max_records_per_call = p.max_records_per_call.clamp(1, MAX_GET_RECORDS);
        p.interval = p.interval.max(MIN_POLL_INTERVAL);
        p.idle_interval = p.idle_interval.max(p.interval);
        // A quiet shard must be read again well within `health.stall_after`,
        // or `/healthz` would report it as stalled.
        p.max_idle_interval = p.max_idle_interval.min(self.health.stall_after / 2).max(p.idle_interval);
        p.shard_refresh = p.shard_refresh.max(Duration::from_secs(1));
        if self.writer.target_file_mb == 0 || self.writer.row_group_rows == 0 {
            bail!("writer.target_file_mb and writer.row_group_rows: must be at least 1");
        }
        let writer = WriterSettings {
            // A batch flushes at buffer.max_mb, so its own writer never needs more.
            memory_budget: self.buffer.max_mb << 20,
            target_file_bytes: self.writer.target_file_mb << 20,
            row_group_rows: self.writer.row_group_rows,
            ..WriterSettings::default()
        };
        let error_prefix = folder_prefix(&self.error_prefix);
        // Files are named `{stream}-{shard id}-{first}-{last}`.
        let stem = format!("{}-{}", self.stream, "s".repeat(MAX_SHARD_ID_BYTES));
        let max_partition_bytes =
            partition_budget(destination.key_prefix_bytes(), &stem, MAX_POSITION_BYTES, &error_prefix, &template)
                .map_err(|e| anyhow::anyhow!("stream, destination, error_prefix or partition: {e}"))?;
        let table = TableSpec {
            schema: Arc::new(schema),
            template,
            time_source,
            unknown_fields: self.unknown_fields,
            max_record_bytes: self.max_record_bytes,
            error_prefix,
            writer,
            max_partition_bytes,
        };
        let s3 = S3Options {
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            timeouts: self.timeouts.aws(),
            ..S3Options::default()
        }
        .validate();
        Ok(Settings { config: self, table, initial_timestamp_ms, s3, schema_table, catalog })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.toml"), "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
        ConsumerConfig::parse(text, "consumer.toml")?.resolve(dir.path())
    }

    const MINIMAL: &str = "stream = \"events\"\ndestination = \"./lake\"\nschema = \"schema.toml\"\n";

    #[test]
    fn minimal_file_gets_firehose_like_defaults() {
        let s = resolve(MINIMAL).unwrap();
        let c = &s.config;
        assert_eq!(c.application, "shardlake");
        assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
        assert_eq!(c.buffer.max_mb, 128);
        assert_eq!(c.buffer.max_age, Duration::from_secs(300));
        assert_eq!(c.polling.max_records_per_call, 10_000);
        assert_eq!(c.metrics.address.to_string(), "127.0.0.1:9898");
        assert_eq!(s.table.error_prefix, "_errors/");
        assert_eq!(s.table.time_source, TimeSource::Arrival);
        assert_eq!(s.table.writer.memory_budget, 128 << 20);
        assert_eq!(c.fleet.lease_duration, Duration::from_secs(10));
        assert_eq!(c.fleet.renew_every(), Duration::from_secs(10) / 3);
        assert!(!c.fleet.create_table);
        assert_eq!(s.s3.timeouts, shardlake::aws::Timeouts::default());
        assert_eq!(c.timeouts.call, Duration::from_secs(10));
        assert_eq!(c.health.failing_after, Duration::from_secs(60));
        let id = c.fleet.worker_id.as_deref().unwrap();
        assert!(id.contains(&format!("-{}-", std::process::id())), "{id}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("schema.toml"), "[[columns]]\nname = \"id\"\ntype = \"string\"\n").unwrap();
        let text = format!("{MINIMAL}checkpoint_store = \"file://./sub/../cp\"\n");
        let s = ConsumerConfig::parse(&text, "consumer.toml").unwrap().resolve(dir.path()).unwrap();
        let base = std::path::absolute(dir.path()).unwrap();
        assert_eq!(s.config.destination, base.join("lake").display().to_string());
        assert_eq!(s.config.checkpoint_store, format!("file://{}", base.join("cp").display()));
        let text = MINIMAL.replace("./lake", "s3://b/lake/");
        let s = ConsumerConfig::parse(&text, "consumer.toml").unwrap().resolve(dir.path()).unwrap();
        assert_eq!(s.config.destination, "s3://b/lake/");
        assert!(s.config.checkpoint_store.starts_with(&format!("file://{}", base.display())), "the default too");
    }

    #[test]
    fn clamps_polling_to_the_kinesis_limits() {
        let s = resolve(&format!(
            "{MINIMAL}[polling]\nmax_records_per_call = 50000\ninterval = \"10ms\"\nidle_interval = \"5ms\"\n"
        ))
        .unwrap();
        assert_eq!(s.config.polling.max_records_per_call, 10_000);
        assert_eq!(s.config.polling.interval, Duration::from_millis(200));
        assert_eq!(s.config.polling.idle_interval, Duration::from_millis(200));
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let cases = [
            (format!("{MINIMAL}strem = 1\n"), "unknown field `strem`"),
            (format!("{MINIMAL}[buffer]\nmax_age = \"500ms\"\n"), "buffer.max_age"),
            (format!("{MINIMAL}[buffer]\nmax_age = \"soon\"\n"), "max_age"),
            (format!("{MINIMAL}initial_position = \"AT_TIMESTAMP\"\n"), "initial_timestamp: required"),
            (format!("{MINIMAL}initial_position = \"OLDEST\"\n"), "TRIM_HORIZON"),
            (format!("{MINIMAL}partition = \"x=!{{nope}}\"\n"), "partition:"),
            (format!("{MINIMAL}[buffer]\nmax_mb = 600\n"), "memory_budget_mb"),
            (MINIMAL.replace("./lake", "gs://x"), "destination:"),
            (MINIMAL.replace("./lake", "s3:/bucket"), "write s3://bucket"),
            (MINIMAL.replace("./lake", "S3://bucket/lake"), "write s3://bucket/lake"),
            (format!("{MINIMAL}checkpoint_store = \"dynamodb:/leases\"\n"), "write dynamodb://leases"),
            (format!("{MINIMAL}[fleet]\nworker_id = \"a\"\n"), "fleet: only used with checkpoint_store = \"dynamodb"),
            (format!("{MINIMAL}shutdown_timeout = \"0s\"\n"), "shutdown_timeout: 0ns leaves no time"),
            (
                format!("{MINIMAL}[buffer]\nmemory_budget_mb = 17592186044416\n"),
                "buffer.memory_budget_mb: 17592186044416",
            ),
            (format!("{MINIMAL}partition = \"dt=${{timestamp:yyyy}}/\"\n"), "has a brace"),
            (format!("{MINIMAL}[fleet]\nlease_duration = \"500ms\"\n"), "fleet.lease_duration"),
            (format!("{MINIMAL}[fleet]\nrenew_interval = \"20s\"\n"), "fleet.renew_interval"),
            (format!("{MINIMAL}[fleet]\nleases = 3\n"), "unknown field `leases`"),
            (format!("{MINIMAL}[timeouts]\ncall = \"0s\"\n"), "timeouts.call: 0ns is below the 500ms minimum"),
            (format!("{MINIMAL}[health]\nstall_after = \"0s\"\n"), "health.stall_after"),
            (format!("{MINIMAL}[retrieval]\nmode = \"push\"\n"), "fan-out"),
            (format!("{MINIMAL}[retrieval]\nmode = \"fan-out\"\nconsumer_name = \"a b\"\n"), "retrieval.consumer_name"),
            (MINIMAL.replace("schema.toml", "missing.toml"), "schema:"),
            ("destination = \"./lake\"\nschema = \"s.toml\"\n".to_string(), "missing field `stream`"),
            (
                MINIMAL.replace("\"events\"", &format!("\"{}\"", "e".repeat(128))),
                "over the 255-byte limit of file names",
            ),
            (MINIMAL.replace("./lake", &format!("s3://b/{}/", "p/".repeat(400))), "S3's 1024-byte key limit"),
            (format!("{MINIMAL}partition = \"{}=!{{field:a}}\"\n", "k".repeat(240)), "partition `"),
            (format!("{MINIMAL}catalog = \"glue://Lake/events\"\n"), "catalog: `glue://Lake/events`"),
            (
                format!("{MINIMAL}catalog = \"glue://lake/events\"\npartition = \"!{{timestamp:yyyy}}/\"\n"),
                "name=!{...}",
            ),
            (format!("{MINIMAL}catalog_create = true\n"), "catalog_create: set catalog"),
            (format!("{MINIMAL}catalog_partitions = \"crawler\"\n"), "`register`"),
            (MINIMAL.replace("schema.toml", "glue://lake"), "schema: `glue://lake` has no table"),
            (format!("{MINIMAL}unknown_fields = \"grow\"\n"), "`evolve`"),
            (format!("{MINIMAL}unknown_fields = \"evolve\"\nevolve_min_records = 0\n"), "evolve_min_records: must be"),
            (format!("{MINIMAL}evolve_min_records = 5\n"), "only used with unknown_fields = \"evolve\""),
            (format!("{MINIMAL}evolve_interval = \"1m\"\n"), "evolve_interval: only used with unknown_fields"),
        ];
        for (text, want) in cases {
            let err = format!("{:#}", resolve(&text).unwrap_err());
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    use shardlake::config_reference::{assert_every_key_documented, every_key, reference_block, serde_names};

    /// docs/configuration.md, the reference this module's keys are documented in.
    const REFERENCE: &str = include_str!("../../../docs/configuration.md");

    #[test]
    fn the_configuration_reference_lists_every_key_with_its_default() {
        let block = reference_block(REFERENCE, "consumer.toml");
        let every = every_key(&block);
        // Every documented key is one the code accepts: the structs deny
        // unknown fields.
        toml::from_str::<ConsumerConfig>(&every)
            .unwrap_or_else(|e| panic!("docs/configuration.md documents a key the code refuses: {e}"));
        // Every key the code accepts is documented.
        let documented: toml::Table = toml::from_str(&every).unwrap();
        let sections: [(&str, &[&str]); 9] = [
            ("", serde_names::<ConsumerConfig>()),
            ("buffer", serde_names::<BufferConfig>()),
            ("writer", serde_names::<WriterConfig>()),
            ("polling", serde_names::<PollingConfig>()),
            ("retrieval", serde_names::<RetrievalConfig>()),
            ("metrics", serde_names::<MetricsConfig>()),
            ("timeouts", serde_names::<TimeoutsConfig>()),
            ("health", serde_names::<HealthConfig>()),
            ("fleet", serde_names::<FleetConfig>()),
        ];
        assert_every_key_documented("consumer.toml", &documented, &sections, &[]);
        // The defaults shown are the code's: the keys set in the block
        // (commented ones left out) parse the same as the required ones alone.
        let required: String = block.lines().filter(|l| l.contains("# required")).map(|l| format!("{l}\n")).collect();
        let with_defaults: ConsumerConfig = toml::from_str(&block).unwrap();
        let code_defaults: ConsumerConfig = toml::from_str(&required).unwrap();
        assert_eq!(
            format!("{with_defaults:#?}"),
            format!("{code_defaults:#?}"),
            "a default in docs/configuration.md differs from the code's"
        );
    }

    #[test]
    fn the_readme_config_passes_the_checks_of_config_check() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README.md has a ```toml block") + "```toml\n".len();
        let end = readme[start..].find("\n```").expect("its closing fence");
        let dir = tempfile::tempdir().unwrap();
        let text = &readme[start..=start + end];
        ConsumerConfig::parse(text, "README.md").and_then(|c| c.resolve(dir.path())).unwrap();
    }

    /// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
    /// as `-`.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect()
    }

    /// The anchors of a Markdown file's headings (repeats get `-1`, `-2`, ...).
    fn anchors(text: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let mut counts = std::collections::HashMap::<String, usize>::new();
        let mut in_code = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            if in_code || !line.starts_with('#') {
                continue;
            }
            let base = anchor(line.trim_start_matches('#'));
            let n = counts.entry(base.clone()).or_insert(0);
            seen.push(if *n == 0 { base } else { format!("{base}-{n}") });
            *n += 1;
        }
        seen
    }

    /// The targets of the Markdown links `[text](target)` outside code blocks.
    fn link_targets(text: &str) -> Vec<String> {
        let mut targets = Vec::new();
        let mut in_code = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if in_code {
                continue;
            }
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                if let Some(end) = rest.find(')') {
                    targets.push(rest[..end].to_string());
                    rest = &rest[end..];
                }
            }
        }
        targets
    }

    #[test]
    fn every_relative_link_in_the_readme_and_docs_resolves() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = ["README.md", "deploy/README.md", "examples/README.md"].map(|f| root.join(f)).to_vec();
        for entry in std::fs::read_dir(root.join("docs")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
        let mut broken = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for target in link_targets(&text) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, fragment) = target.split_once('#').unwrap_or((target.as_str(), ""));
                let linked = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
                if !linked.exists() {
                    broken.push(format!("{}: {target}: no such file", file.display()));
                } else if !fragment.is_empty() {
                    let text = std::fs::read_to_string(&linked).unwrap_or_default();
                    if !anchors(&text).iter().any(|a| a == fragment) {
                        broken.push(format!("{}: {target}: no such heading", file.display()));
                    }
                }
            }
        }
        assert!(files.len() > 5, "docs/ holds the pages");
        assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    }
}
