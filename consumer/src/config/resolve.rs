//! From the file to [`Settings`]: every setting and combination checked
//! (naming the key and the fix), clamped to the API limits, paths resolved
//! against the config's folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use shardlake::catalog::{CatalogTable, GLUE_SCHEME, TableName};
use shardlake::convert::ICEBERG_DATA_FOLDER;
use shardlake::partition::{PartitionTemplate, TimeSource};
use shardlake::pipeline::{TableSpec, partition_budget};
use shardlake::schema::{Schema, TableDefinition, UnknownFieldPolicy, table_definition};
use shardlake::store::folder_prefix;
use shardlake::store::{Location, S3Options};
use shardlake::writer::WriterSettings;

use super::*;
use crate::checkpoint::CheckpointUrl;

/// Room for a shard id in object names: Kinesis names shards
/// `shardId-000000000000` (20 bytes); a few more for safety.
const MAX_SHARD_ID_BYTES: usize = 28;

/// Room for a position in object names: a Kinesis sequence number (56
/// digits) and, for aggregated records, `-` and a sub-sequence number.
const MAX_POSITION_BYTES: usize = 56 + 1 + 6;

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

impl ConsumerConfig {
    /// With `table_format = "iceberg"`, its catalog URL (a relative SQLite
    /// path made absolute against `base`); what Iceberg does not take yet
    /// is refused with the fix.
    fn iceberg_catalog(&self, base: &Path) -> anyhow::Result<Option<String>> {
        if self.table_format == TableFormat::Hive {
            if self.commit_interval != default_commit_interval() {
                bail!("commit_interval: only used with table_format = \"iceberg\"; remove it or set that");
            }
            return Ok(None);
        }
        if self.commit_interval < Duration::from_millis(100) {
            bail!("commit_interval: {:?} is below the 100ms minimum (default 60s)", self.commit_interval);
        }
        // A reader waits for the next commit without reading: within
        // `health.stall_after`, or every wait would report its shard stalled.
        if self.commit_interval * 2 > self.health.stall_after {
            bail!(
                "commit_interval: {:?} is more than half of health.stall_after ({:?}); readers wait for the commit, \
                 so their shards would be reported stalled: lower it or raise health.stall_after",
                self.commit_interval,
                self.health.stall_after
            );
        }
        let Some(url) = &self.catalog else {
            bail!(
                "catalog: table_format = \"iceberg\" needs the table's catalog, e.g. catalog = \
                 \"glue://analytics/events\" (the Glue Data Catalog) or \"sqlite://lake/catalog.db/analytics/events\" \
                 (a local catalog file)"
            );
        };
        if url.starts_with(GLUE_SCHEME) {
            TableName::parse(url).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
            if !self.destination.starts_with("s3://") {
                bail!(
                    "destination: an Iceberg table in the Glue Data Catalog must live on S3 (Athena and the Glue \
                     optimizer read it there): set destination = \"s3://BUCKET/PREFIX/\", or use a local catalog \
                     (catalog = \"sqlite://PATH/NAMESPACE/TABLE\") for a local folder"
                );
            }
            return Ok(Some(url.clone()));
        }
        let Some(rest) = url.strip_prefix("sqlite://") else {
            bail!(
                "catalog: `{url}` is not an Iceberg catalog; write glue://DATABASE/TABLE or \
                 sqlite://PATH/NAMESPACE/TABLE"
            );
        };
        Ok(Some(format!("sqlite://{}", against(rest, base))))
    }
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
    /// `table_format = "iceberg"`: the catalog URL of the lake's Iceberg
    /// table, a relative SQLite path made absolute.
    pub iceberg: Option<String>,
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
        let store =
            CheckpointUrl::parse(&self.checkpoint_store).map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
        let fleet_store = store.is_fleet();
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
        let iceberg = self.iceberg_catalog(&base)?;
        // An Iceberg table's data files live under its location's `data/`.
        let written_template = match iceberg {
            Some(_) => format!("{ICEBERG_DATA_FOLDER}{}", self.partition),
            None => self.partition.clone(),
        };
        let template = PartitionTemplate::parse(&written_template).map_err(|e| anyhow::anyhow!("partition: {e}"))?;
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
            Some(_) if iceberg.is_some() => None,
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
            field_ids: None,
        };
        let s3 = S3Options {
            sse_kms_key_id: self.sse_kms_key_id.clone(),
            timeouts: self.timeouts.aws(),
            ..S3Options::default()
        }
        .validate();
        Ok(Settings { config: self, table, initial_timestamp_ms, s3, schema_table, catalog, iceberg })
    }
}
