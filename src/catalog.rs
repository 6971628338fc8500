//! The lake as a table in the AWS Glue Data Catalog (`glue://DATABASE/TABLE`):
//! the table created from the schema and the partition template, or an
//! existing one checked against them; the partitions the lake's files are
//! in registered (`BatchCreatePartition`, already-exists is success, a cache
//! so steady state makes no calls); and a schema read from a table, as
//! Firehose's record format conversion does.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use aws_sdk_glue::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{
    Column as GlueColumn, DatabaseInput, PartitionInput, SerDeInfo, StorageDescriptor, Table, TableInput,
};
use serde::Deserialize;

use crate::error::{Error, Result, error_chain};
use crate::partition::PartitionTemplate;
use crate::schema::{Column, EXTRA_COLUMN, HiveType, Schema, TableDefinition};
use crate::store::Location;

/// The URL scheme of a Glue table.
pub const GLUE_SCHEME: &str = "glue://";

/// Partitions in one `BatchCreatePartition` call (the API's limit).
pub const MAX_PARTITIONS_PER_CALL: usize = 100;

const PARQUET_INPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const PARQUET_OUTPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

/// A Glue database and table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName {
    /// Database name.
    pub database: String,
    /// Table name.
    pub table: String,
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{GLUE_SCHEME}{}/{}", self.database, self.table)
    }
}

/// Glue keeps names in lower case and Athena accepts letters, digits and `_`.
fn check_name(what: &str, name: &str, url: &str) -> Result<()> {
    let ok = (1..=255).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        return Ok(());
    }
    let lower = name.to_ascii_lowercase();
    let hint = if lower != name && lower.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        format!("; Glue stores names in lower case: write `{lower}`")
    } else {
        String::new()
    };
    Err(Error::Config(format!(
        "`{url}`: the {what} name `{name}` must be 1 to 255 lower-case letters, digits or `_`{hint}"
    )))
}

impl TableName {
    /// Parses `glue://DATABASE/TABLE`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix(GLUE_SCHEME).ok_or_else(|| {
            Error::Config(format!("`{url}` is not a catalog table; write {GLUE_SCHEME}DATABASE/TABLE"))
        })?;
        let (database, table) = rest
            .split_once('/')
            .ok_or_else(|| Error::Config(format!("`{url}` has no table; write {GLUE_SCHEME}DATABASE/TABLE")))?;
        check_name("database", database, url)?;
        check_name("table", table, url)?;
        Ok(TableName { database: database.to_string(), table: table.to_string() })
    }
}

/// How the catalog learns the lake's partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionMode {
    /// Each partition is registered once its first batch commits: every
    /// engine (Athena, Spark, Glue jobs, Trino, Hive) sees it.
    #[default]
    Register,
    /// Athena partition projection: the table computes partitions from the
    /// template, nothing is registered; Athena only.
    Projection,
}

impl PartitionMode {
    /// The first year of `yyyy` projection ranges (the end is 2099).
    pub const FIRST_YEAR: u32 = 2020;

    /// The projection argument of [`crate::schema::table_definition`].
    pub fn projection(self) -> Option<u32> {
        (self == PartitionMode::Projection).then_some(Self::FIRST_YEAR)
    }
}

/// The table location of a lake destination: `s3://bucket/prefix/`, or
/// `file:///absolute/dir/` for a local folder (Spark and DuckDB read it).
pub fn table_location(destination: &str) -> Result<String> {
    Ok(match Location::parse(destination)? {
        Location::S3 { bucket, prefix } => format!("s3://{bucket}/{}", crate::store::folder_prefix(&prefix)),
        Location::File(dir) => {
            let abs = std::path::absolute(&dir)
                .map_err(|e| Error::Config(format!("destination `{destination}`: no absolute path: {e}")))?;
            format!("file://{}/", abs.display().to_string().trim_end_matches('/'))
        }
    })
}

/// What a call failed with: `transient` failures (timeouts, 5xx,
/// throttling, a lost connection) are retried; the rest need a fix.
fn catalog_error<E, R>(op: &'static str, table: &TableName, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let transient = match &e {
        SdkError::ServiceError(s) => matches!(
            s.err().code(),
            Some(
                "InternalServiceException"
                    | "OperationTimeoutException"
                    | "ThrottlingException"
                    | "ConcurrentModificationException"
                    | "ResourceNotReadyException"
            )
        ),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    let message = match &e {
        SdkError::ServiceError(s) => {
            format!("{}: {}", s.err().code().unwrap_or("error"), s.err().message().unwrap_or_default())
        }
        other => error_chain(other),
    };
    Error::Catalog { op, table: table.to_string(), message, transient }
}

fn is_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, code: &str) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some(code))
}

/// The column parameter that keeps a schema's `required` flag, which Glue
/// has no field for, so a schema read back from the table is the same.
const REQUIRED_PARAMETER: &str = "shardlake.required";

fn glue_column(name: &str, ty: &str, required: bool) -> GlueColumn {
    let column = GlueColumn::builder().name(name).r#type(ty);
    let column = if required {
        column
            .parameters(REQUIRED_PARAMETER, "true")
            .comment("required: shardlake sends records without it to the error output")
    } else {
        column
    };
    column.build().expect("name is set")
}

/// A storage descriptor of `def`'s Snappy Parquet files at `location`.
fn storage(def: &TableDefinition, location: &str) -> StorageDescriptor {
    let columns = def.columns.iter().map(|(n, t)| glue_column(n, t, def.required.contains(n)));
    StorageDescriptor::builder()
        .set_columns(Some(columns.collect()))
        .location(location)
        .input_format(PARQUET_INPUT)
        .output_format(PARQUET_OUTPUT)
        .compressed(true)
        .serde_info(
            SerDeInfo::builder().serialization_library(PARQUET_SERDE).parameters("serialization.format", "1").build(),
        )
        .build()
}

/// The Glue form of `def`.
pub fn table_input(name: &TableName, def: &TableDefinition) -> TableInput {
    let mut parameters: BTreeMap<String, String> = def.parameters.iter().cloned().collect();
    parameters.insert("classification".into(), "parquet".into());
    parameters.insert("EXTERNAL".into(), "TRUE".into());
    TableInput::builder()
        .name(&name.table)
        .table_type("EXTERNAL_TABLE")
        .set_parameters(Some(parameters.into_iter().collect()))
        .storage_descriptor(storage(def, &def.location))
        .set_partition_keys(Some(def.partition_keys.iter().map(|k| glue_column(k, "string", false)).collect()))
        .build()
        .expect("name is set")
}

/// Whether a table's declared type `theirs` holds what the lake writes as
/// `ours`: the same type read the way Glue and Athena read them (parsed, so
/// case and spaces do not matter, and `varchar(n)` and `char(n)` hold
/// `string`); as text when they do not parse.
fn type_fits(theirs: &str, ours: &str) -> bool {
    match (theirs.parse::<HiveType>(), ours.parse::<HiveType>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => theirs.replace(' ', "").eq_ignore_ascii_case(&ours.replace(' ', "")),
    }
}

/// One way a table differs from what the lake writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Difference {
    /// A column the lake writes is not in the table.
    MissingColumn {
        /// Its name.
        name: String,
        /// Its type as the lake writes it.
        ty: String,
    },
    /// The table has a column the lake does not write (a later schema
    /// version's, or the table owners').
    ExtraColumn {
        /// Its name.
        name: String,
        /// Its type in the table.
        ty: String,
    },
    /// Anything else: a column's type, the partition keys, the location,
    /// the storage format, partition projection.
    Other(String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::MissingColumn { name, ty } => write!(f, "column `{name}` ({ty}) is missing from the table"),
            Difference::ExtraColumn { name, ty } => {
                write!(f, "column `{name}` ({ty}) is in the table but not in the schema")
            }
            Difference::Other(text) => f.write_str(text),
        }
    }
}

/// Every way `table` differs from what the lake writes (`def`, `mode`).
/// Descriptions, owners, parameters, comments and Lake Formation tags are
/// the table owners' and never count.
pub fn differences(def: &TableDefinition, mode: PartitionMode, table: &Table) -> Vec<Difference> {
    let mut out = Vec::new();
    let sd = table.storage_descriptor();
    let columns: Vec<(&str, &str)> = sd
        .map(|sd| sd.columns().iter().map(|c| (c.name(), c.r#type().unwrap_or_default())).collect())
        .unwrap_or_default();
    for (name, ty) in &def.columns {
        match columns.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            None => out.push(Difference::MissingColumn { name: name.clone(), ty: ty.clone() }),
            Some((_, theirs)) if !type_fits(theirs, ty) => {
                out.push(Difference::Other(format!("column `{name}` is {theirs} in the table but {ty} in the schema")))
            }
            Some(_) => {}
        }
    }
    for (name, ty) in &columns {
        if !def.columns.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            out.push(Difference::ExtraColumn { name: name.to_string(), ty: ty.to_string() });
        }
    }
    let keys: Vec<String> = table.partition_keys().iter().map(|k| k.name().to_ascii_lowercase()).collect();
    let want: Vec<String> = def.partition_keys.iter().map(|k| k.to_ascii_lowercase()).collect();
    if keys != want {
        out.push(Difference::Other(format!(
            "partition keys are ({}) in the table but ({}) in the template",
            keys.join(", "),
            want.join(", ")
        )));
    }
    let location = sd.and_then(|sd| sd.location()).unwrap_or_default();
    if location.trim_end_matches('/') != def.location.trim_end_matches('/') {
        out.push(Difference::Other(format!(
            "location is `{location}` in the table but the destination is `{}`",
            def.location
        )));
    }
    let serde = sd.and_then(|sd| sd.serde_info()).and_then(|s| s.serialization_library()).unwrap_or_default();
    let input = sd.and_then(|sd| sd.input_format()).unwrap_or_default();
    if !serde.to_ascii_lowercase().contains("parquet") || !input.to_ascii_lowercase().contains("parquet") {
        out.push(Difference::Other(format!("storage is `{input}` with SerDe `{serde}`, not Parquet")));
    }
    let projected = table.parameters().and_then(|p| p.get("projection.enabled")).is_some_and(|v| v == "true");
    match mode {
        PartitionMode::Register if projected && !keys.is_empty() => out.push(Difference::Other(
            "the table has partition projection on, so Athena ignores registered partitions: set \
             catalog_partitions = \"projection\" or turn projection off"
                .into(),
        )),
        PartitionMode::Projection if !projected && !keys.is_empty() => out.push(Difference::Other(
            "the table has no partition projection ('projection.enabled'='true'): set catalog_partitions = \
             \"register\", or add the projection properties `schema ddl` prints"
                .into(),
        )),
        _ => {}
    }
    out
}

/// The differences that stop the lake: under schema evolution a missing
/// column is added and a column the lake does not write is left alone (a
/// later version's, or the owners'); otherwise every difference counts.
fn blocking(diffs: Vec<Difference>, evolving: bool) -> Vec<Difference> {
    diffs.into_iter().filter(|d| !evolving || matches!(d, Difference::Other(_))).collect()
}

/// `table` as an `UpdateTable` input that changes nothing but appends
/// `added` to its columns (before `_extra` when the table has it, so the
/// lake's own order holds): descriptions, owner, retention, parameters,
/// column comments and declared types stay as the table's owners set them.
pub fn with_added_columns(table: &Table, added: &[(String, String)]) -> TableInput {
    // The table's own descriptor with only its column list changed.
    let mut sd = table.storage_descriptor().cloned().unwrap_or_else(|| StorageDescriptor::builder().build());
    let columns = sd.columns.get_or_insert_with(Vec::new);
    let at = columns.iter().position(|c| c.name() == EXTRA_COLUMN).unwrap_or(columns.len());
    for (i, (name, ty)) in added.iter().enumerate() {
        columns.insert(at + i, glue_column(name, ty, false));
    }
    TableInput::builder()
        .name(table.name())
        .set_description(table.description().map(str::to_string))
        .set_owner(table.owner().map(str::to_string))
        .set_last_access_time(table.last_access_time().cloned())
        .set_last_analyzed_time(table.last_analyzed_time().cloned())
        .retention(table.retention())
        .storage_descriptor(sd)
        .set_partition_keys(Some(table.partition_keys().to_vec()))
        .set_view_original_text(table.view_original_text().map(str::to_string))
        .set_view_expanded_text(table.view_expanded_text().map(str::to_string))
        .set_table_type(table.table_type().map(str::to_string))
        .set_parameters(table.parameters().cloned())
        .set_target_table(table.target_table().cloned())
        .build()
        .expect("name is set")
}

/// What [`CatalogTable::ensure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The table (and maybe its database) was created.
    Created,
    /// The existing table fits the lake.
    Matches,
}

/// A partition as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CatalogPartition {
    /// Values of the partition keys, in key order.
    pub values: Vec<String>,
    /// Its storage location.
    pub location: String,
}

/// Partitions a table remembers as registered, at most (about 10 MiB).
const MAX_KNOWN_PARTITIONS: usize = 100_000;

/// One lake table in Glue, and the partitions known to be registered.
#[derive(Debug)]
pub struct CatalogTable {
    client: aws_sdk_glue::Client,
    name: TableName,
    template: PartitionTemplate,
    /// What the lake writes now (schema evolution replaces it).
    def: Mutex<TableDefinition>,
    mode: PartitionMode,
    /// Columns added to the schema are added to the table (`evolve`).
    evolving: bool,
    /// Partition paths known to be in the catalog (at most
    /// [`MAX_KNOWN_PARTITIONS`]).
    known: Mutex<HashSet<String>>,
    /// `UpdateTable` calls made (a metric).
    updates: std::sync::atomic::AtomicU64,
    /// Answered registration calls: a change says partitions may have been
    /// confirmed since a caller last looked.
    confirmations: std::sync::atomic::AtomicU64,
    /// Partitions created, counted as each call answers (a call that fails
    /// after earlier ones created some still counts those).
    created: std::sync::atomic::AtomicU64,
}

impl CatalogTable {
    /// The table `name` for a lake of `def`, written with `template`.
    pub fn new(
        client: aws_sdk_glue::Client,
        name: TableName,
        template: PartitionTemplate,
        def: TableDefinition,
        mode: PartitionMode,
    ) -> Self {
        CatalogTable {
            client,
            name,
            template,
            def: Mutex::new(def),
            mode,
            evolving: false,
            known: Mutex::new(HashSet::new()),
            updates: Default::default(),
            confirmations: Default::default(),
            created: Default::default(),
        }
    }

    /// Under schema evolution a table that lacks only columns the lake has
    /// added is brought up to date (`UpdateTable`) instead of refused.
    pub fn evolving(mut self) -> Self {
        self.evolving = true;
        self
    }

    fn def(&self) -> TableDefinition {
        self.def.lock().expect("catalog lock").clone()
    }

    /// The table's name.
    pub fn name(&self) -> &TableName {
        &self.name
    }

    /// How partitions reach the catalog.
    pub fn mode(&self) -> PartitionMode {
        self.mode
    }

    /// The table as Glue holds it, `None` when it does not exist.
    pub async fn get(&self) -> Result<Option<Table>> {
        get_table(&self.client, &self.name).await
    }

    /// With `create`, creates the database and the table when missing;
    /// otherwise (or when the table exists) checks it fits the lake, with
    /// every difference named in a [`Error::Config`].
    pub async fn ensure(&self, create: bool) -> Result<Ensured> {
        let (existing, ensured) = match self.get().await? {
            Some(t) => (t, Ensured::Matches),
            None if !create => return Err(self.missing()),
            None => {
                let created = self.create().await?;
                let table = self.get().await?.ok_or_else(|| {
                    Error::Config(format!("catalog {}: created, then not found (deleted meanwhile?)", self.name))
                })?;
                (table, if created { Ensured::Created } else { Ensured::Matches })
            }
        };
        let def = self.def();
        let diffs = blocking(differences(&def, self.mode, &existing), self.evolving);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "catalog {} does not fit the lake:\n  - {}\nfix the table (or drop it and set catalog_create = true) \
                 or the consumer's schema, partition and destination",
                self.name,
                diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - ")
            )));
        }
        if self.evolving {
            // A kill between storing a schema version and the table update.
            self.append_missing(&def, &existing).await?;
        }
        Ok(ensured)
    }

    /// The error of a table that is not there, with the fix.
    pub fn missing(&self) -> Error {
        Error::TableMissing {
            table: self.name.to_string(),
            fix: "create it (`schema ddl` prints its DDL) or set catalog_create = true".into(),
        }
    }

    /// Schema evolution: the lake now writes `def` (the same table with
    /// columns added); the table gets the columns it lacks, appended, before
    /// any file that carries them is committed, and nothing else of it
    /// changes. A column the table has and the lake does not write (a later
    /// version's, or the owners') is left alone. Returns whether the table
    /// was updated (`false`: it had them already, another worker was first).
    pub async fn add_columns(&self, def: TableDefinition) -> Result<bool> {
        *self.def.lock().expect("catalog lock") = def.clone();
        let Some(existing) = self.get().await? else { return Err(self.missing()) };
        let diffs = blocking(differences(&def, self.mode, &existing), true);
        if !diffs.is_empty() {
            return Err(Error::Config(format!(
                "catalog {}: cannot add the new columns, the table no longer fits the lake:\n  - {}",
                self.name,
                diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - ")
            )));
        }
        self.append_missing(&def, &existing).await
    }

    /// The table's columns and their declared types (`None`: no table).
    pub async fn declared_columns(&self) -> Result<Option<Vec<(String, String)>>> {
        let columns = |t: Table| {
            let sd = t.storage_descriptor.unwrap_or_else(|| StorageDescriptor::builder().build());
            sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or_default().to_string())).collect()
        };
        Ok(self.get().await?.map(columns))
    }

    /// Appends the columns of `def` that `existing` lacks (`UpdateTable`,
    /// fenced on the version read, so an owner's edit made meanwhile is
    /// never overwritten: the call fails and is retried on the new version).
    async fn append_missing(&self, def: &TableDefinition, existing: &Table) -> Result<bool> {
        let added: Vec<(String, String)> = differences(def, self.mode, existing)
            .into_iter()
            .filter_map(|d| match d {
                Difference::MissingColumn { name, ty } => Some((name, ty)),
                _ => None,
            })
            .collect();
        if added.is_empty() {
            return Ok(false);
        }
        let input = with_added_columns(existing, &added);
        self.client
            .update_table()
            .database_name(&self.name.database)
            .table_input(input)
            .set_version_id(existing.version_id().map(str::to_string))
            .send()
            .await
            .map_err(|e| catalog_error("UpdateTable", &self.name, e))?;
        self.updates.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let names: Vec<&str> = added.iter().map(|(n, _)| n.as_str()).collect();
        tracing::info!(table = %self.name, added = names.join(","), "added columns to the Glue table");
        Ok(true)
    }

    /// Forgets which partitions are registered (the table was found
    /// missing: a new one has none).
    pub fn forget_partitions(&self) {
        self.known.lock().expect("catalog lock").clear();
    }

    /// A number that changes whenever registrations were answered (see
    /// [`CatalogTable::unconfirmed`]): unchanged, nothing new is confirmed.
    pub fn confirmations(&self) -> u64 {
        self.confirmations.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Partitions this table created in the catalog so far.
    pub fn created(&self) -> u64 {
        self.created.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `UpdateTable` calls this table made.
    pub fn updates(&self) -> u64 {
        self.updates.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Creates the database (unless it exists) and the table; `false` when
    /// another worker created the table first.
    async fn create(&self) -> Result<bool> {
        let db = self.client.create_database().database_input(
            DatabaseInput::builder()
                .name(&self.name.database)
                .description("created by shardlake")
                .build()
                .expect("name"),
        );
        match db.send().await {
            Ok(_) => tracing::info!(database = self.name.database, "created the Glue database"),
            Err(e) if is_code(&e, "AlreadyExistsException") => {}
            Err(e) => return Err(catalog_error("CreateDatabase", &self.name, e)),
        }
        let input = table_input(&self.name, &self.def());
        match self.client.create_table().database_name(&self.name.database).table_input(input).send().await {
            Ok(_) => {
                tracing::info!(table = %self.name, "created the Glue table");
                Ok(true)
            }
            // It is then checked like any existing table.
            Err(e) if is_code(&e, "AlreadyExistsException") => Ok(false),
            Err(e) => Err(catalog_error("CreateTable", &self.name, e)),
        }
    }

    /// The partitions of `paths` (rendered partition paths) not known to be
    /// in the catalog yet (none with projection: nothing is registered).
    pub fn unconfirmed(&self, paths: impl IntoIterator<Item = String>) -> Vec<String> {
        if self.mode == PartitionMode::Projection {
            return Vec::new();
        }
        let known = self.known.lock().expect("catalog lock");
        let mut out: Vec<String> = paths.into_iter().filter(|p| !known.contains(p)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// Registers every partition of `paths` not known to be there yet;
    /// one that already exists counts as registered. Returns how many were
    /// created. Paths that do not follow the template are skipped (logged).
    pub async fn register(&self, paths: &[String]) -> Result<usize> {
        if self.mode == PartitionMode::Projection {
            return Ok(0);
        }
        let todo = self.unconfirmed(paths.iter().cloned());
        let mut created = 0;
        let def = self.def();
        for chunk in todo.chunks(MAX_PARTITIONS_PER_CALL) {
            let mut inputs = Vec::with_capacity(chunk.len());
            let mut by_values: Vec<(Vec<String>, &String)> = Vec::with_capacity(chunk.len());
            for path in chunk {
                let Some(values) = self.template.key_values(path) else {
                    tracing::warn!(path, template = self.template.source(), "not a partition path; not registered");
                    continue;
                };
                let location = format!("{}{path}", def.location);
                let input = PartitionInput::builder()
                    .set_values(Some(values.clone()))
                    .storage_descriptor(storage(&def, &location))
                    .build();
                inputs.push(input);
                by_values.push((values, path));
            }
            if inputs.is_empty() {
                continue;
            }
            let answer = self
                .client
                .batch_create_partition()
                .database_name(&self.name.database)
                .table_name(&self.name.table)
                .set_partition_input_list(Some(inputs))
                .send()
                .await
                .map_err(|e| match is_code(&e, "EntityNotFoundException") {
                    true => self.missing(),
                    false => catalog_error("BatchCreatePartition", &self.name, e),
                })?;
            let (mut failed, mut existed) = (HashSet::new(), 0);
            let mut first_error = None;
            for err in answer.errors() {
                let code = err.error_detail().and_then(|d| d.error_code()).unwrap_or_default();
                if code == "AlreadyExistsException" {
                    existed += 1;
                    continue;
                }
                failed.insert(err.partition_values().to_vec());
                first_error.get_or_insert_with(|| {
                    let message = err.error_detail().and_then(|d| d.error_message()).unwrap_or_default();
                    let transient = code.is_empty()
                        || matches!(
                            code,
                            "InternalServiceException" | "OperationTimeoutException" | "ThrottlingException"
                        );
                    (format!("partition {:?}: {code}: {message}", err.partition_values()), transient)
                });
            }
            let mut known = self.known.lock().expect("catalog lock");
            if known.len() + by_values.len() > MAX_KNOWN_PARTITIONS {
                // Forgetting costs one more call per partition, answered
                // "already exists"; it bounds the memory of templates with
                // many `!{field:...}` values.
                known.clear();
            }
            for (values, path) in &by_values {
                if !failed.contains(values) {
                    known.insert((*path).clone());
                }
            }
            self.confirmations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let made = by_values.len().saturating_sub(failed.len() + existed);
            created += made;
            self.created.fetch_add(made as u64, std::sync::atomic::Ordering::Relaxed);
            if let Some((message, transient)) = first_error {
                return Err(Error::Catalog {
                    op: "BatchCreatePartition",
                    table: self.name.to_string(),
                    message,
                    transient,
                });
            }
        }
        Ok(created)
    }

    /// Every partition the catalog holds for the table.
    pub async fn partitions(&self) -> Result<Vec<CatalogPartition>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .get_partitions()
                .database_name(&self.name.database)
                .table_name(&self.name.table)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| catalog_error("GetPartitions", &self.name, e))?;
            for p in page.partitions() {
                let location = p.storage_descriptor().and_then(|sd| sd.location()).unwrap_or_default();
                out.push(CatalogPartition { values: p.values().to_vec(), location: location.to_string() });
            }
            token = page.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Whether the Glue database exists (GetDatabase: the start-up check that
/// the catalog answers and the credentials may read it).
pub async fn database_exists(
    client: &aws_sdk_glue::Client,
    database: &str,
) -> std::result::Result<bool, crate::aws::CallError> {
    match client.get_database().name(database).send().await {
        Ok(_) => Ok(true),
        Err(e) if is_code(&e, "EntityNotFoundException") => Ok(false),
        Err(e) => Err(crate::aws::call_error("Glue", "GetDatabase", &e)),
    }
}

/// The table `name`, `None` when it (or its database) does not exist.
pub async fn get_table(client: &aws_sdk_glue::Client, name: &TableName) -> Result<Option<Table>> {
    match client.get_table().database_name(&name.database).name(&name.table).send().await {
        Ok(out) => Ok(out.table),
        Err(e) if is_code(&e, "EntityNotFoundException") => Ok(None),
        Err(e) => Err(catalog_error("GetTable", name, e)),
    }
}

/// The schema of a Glue table: its data columns (not the partition keys,
/// whose values live in paths; not `_extra`, which the unknown-field policy
/// adds), nullable unless shardlake marked them required.
pub async fn read_schema(client: &aws_sdk_glue::Client, name: &TableName) -> Result<Schema> {
    let table = get_table(client, name)
        .await?
        .ok_or_else(|| Error::Config(format!("schema {name}: the table does not exist")))?;
    schema_of(name, &table)
}

/// [`read_schema`] of a table already fetched.
pub fn schema_of(name: &TableName, table: &Table) -> Result<Schema> {
    let mut columns = Vec::new();
    for c in table.storage_descriptor().map(|sd| sd.columns()).unwrap_or_default() {
        if c.name() == EXTRA_COLUMN {
            continue;
        }
        let text = c.r#type().unwrap_or_default();
        let ty = text.parse::<HiveType>().map_err(|e| {
            Error::Config(format!(
                "schema {name}: column `{}` has type `{text}`, which shardlake cannot write: {e}",
                c.name()
            ))
        })?;
        let required = c.parameters().and_then(|p| p.get(REQUIRED_PARAMETER)).is_some_and(|v| v == "true");
        columns.push(Column { name: c.name().to_string(), ty, required });
    }
    let schema = Schema { columns };
    schema.validate().map_err(|e| Error::Config(format!("schema {name}: {e}")))?;
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::DEFAULT_TEMPLATE;
    use crate::schema::{UnknownFieldPolicy, table_definition};

    #[test]
    fn names_are_checked_with_the_fix() {
        assert_eq!(
            TableName::parse("glue://lake/events").unwrap(),
            TableName { database: "lake".into(), table: "events".into() }
        );
        let err = |u: &str| TableName::parse(u).unwrap_err().to_string();
        assert!(err("glue://Lake/events").contains("write `lake`"), "{}", err("glue://Lake/events"));
        assert!(err("glue://lake").contains("has no table"));
        assert!(err("s3://lake/events").contains("glue://DATABASE/TABLE"));
        assert!(err("glue://lake/ev-ents").contains("lower-case letters, digits or `_`"));
        assert!(err("glue://lake/").contains("table name ``"));
    }

    fn definition() -> TableDefinition {
        let schema = Schema::parse(
            "[[columns]]\nname=\"id\"\ntype=\"string\"\n[[columns]]\nname=\"n\"\ntype=\"bigint\"\n",
            false,
        )
        .unwrap();
        let template = PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        table_definition(&schema, &template, UnknownFieldPolicy::Keep, "s3://b/lake", None).unwrap()
    }

    fn as_table(input: TableInput) -> Table {
        Table::builder()
            .name(input.name())
            .set_storage_descriptor(input.storage_descriptor().cloned())
            .set_partition_keys(Some(input.partition_keys().to_vec()))
            .set_parameters(input.parameters().cloned())
            .build()
            .unwrap()
    }

    #[test]
    fn a_table_made_from_the_definition_fits_it_and_each_difference_is_named() {
        let name = TableName::parse("glue://lake/events").unwrap();
        let def = definition();
        assert_eq!(def.location, "s3://b/lake/");
        let table = as_table(table_input(&name, &def));
        assert_eq!(differences(&def, PartitionMode::Register, &table), Vec::new());
        assert_eq!(differences(&def, PartitionMode::Projection, &table).len(), 1);

        let mut other = def.clone();
        other.columns[1].1 = "int".into();
        other.columns.push(("extra_col".into(), "string".into()));
        other.partition_keys.pop();
        other.location = "s3://b/elsewhere/".into();
        let diffs = differences(&def, PartitionMode::Register, &as_table(table_input(&name, &other)));
        let text = diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert_eq!(diffs.len(), 4, "{text}");
        assert!(text.contains("column `n` is int in the table but bigint in the schema"), "{text}");
        assert!(text.contains("column `extra_col` (string) is in the table but not in the schema"), "{text}");
        assert!(text.contains("partition keys are (year, month, day) in the table but (year, month, day, hour)"));
        assert!(text.contains("location is `s3://b/elsewhere/`"), "{text}");
    }

    #[test]
    fn under_evolution_only_other_differences_block() {
        let name = TableName::parse("glue://lake/events").unwrap();
        let def = definition();
        let mut newer = def.clone();
        newer.columns.insert(2, ("score".into(), "double".into()));
        let old_table = as_table(table_input(&name, &def));
        let diffs = differences(&newer, PartitionMode::Register, &old_table);
        assert_eq!(diffs, [Difference::MissingColumn { name: "score".into(), ty: "double".into() }]);
        assert!(blocking(diffs.clone(), true).is_empty());
        assert_eq!(blocking(diffs, false).len(), 1);
        // A later version's (or the owners') column is left alone.
        let new_table = as_table(table_input(&name, &newer));
        assert!(blocking(differences(&def, PartitionMode::Register, &new_table), true).is_empty());
        // Any other difference is still an error for the user to fix.
        let mut moved = newer.clone();
        moved.location = "s3://b/elsewhere/".into();
        assert_eq!(blocking(differences(&moved, PartitionMode::Register, &old_table), true).len(), 1);
        let mut retyped = newer.clone();
        retyped.columns[1].1 = "int".into();
        assert_eq!(blocking(differences(&retyped, PartitionMode::Register, &old_table), true).len(), 1);
    }

    #[test]
    fn added_columns_keep_everything_the_owners_set() {
        let name = TableName::parse("glue://lake/events").unwrap();
        let def = definition();
        let owned = GlueColumn::builder().name("id").r#type("varchar(64)").comment("the event id").build().unwrap();
        let mut sd = storage(&def, &def.location);
        sd.columns = Some(vec![owned.clone(), sd.columns()[1].clone(), sd.columns()[2].clone()]);
        let table = Table::builder()
            .name("events")
            .description("orders, owned by the data team")
            .owner("data-team")
            .retention(30)
            .parameters("owner_team", "data")
            .parameters("classification", "parquet")
            .storage_descriptor(sd)
            .set_partition_keys(Some(table_input(&name, &def).partition_keys().to_vec()))
            .table_type("EXTERNAL_TABLE")
            .build()
            .unwrap();
        assert!(differences(&def, PartitionMode::Register, &table).is_empty(), "varchar(64) holds string");
        let input = with_added_columns(&table, &[("score".into(), "double".into())]);
        assert_eq!(input.description(), Some("orders, owned by the data team"));
        assert_eq!(
            (input.owner(), input.retention(), input.table_type()),
            (Some("data-team"), 30, Some("EXTERNAL_TABLE"))
        );
        assert_eq!(input.parameters().unwrap().get("owner_team").map(String::as_str), Some("data"));
        let columns: Vec<(&str, Option<&str>)> =
            input.storage_descriptor().unwrap().columns().iter().map(|c| (c.name(), c.r#type())).collect();
        assert_eq!(
            columns,
            [("id", Some("varchar(64)")), ("n", Some("bigint")), ("score", Some("double")), ("_extra", Some("string"))]
        );
        assert_eq!(input.storage_descriptor().unwrap().columns()[0], owned, "the comment stays");
        assert_eq!(input.partition_keys(), table.partition_keys());
    }

    #[test]
    fn only_registered_partitions_are_ever_pending() {
        let client = aws_sdk_glue::Client::from_conf(
            aws_sdk_glue::Config::builder().behavior_version(aws_sdk_glue::config::BehaviorVersion::latest()).build(),
        );
        let name = TableName::parse("glue://lake/events").unwrap();
        let template = PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap();
        let paths = ["year=2026/month=11/day=30/hour=07/".to_string(), "year=2026/month=11/day=30/hour=07/".into()];
        let table = |mode| CatalogTable::new(client.clone(), name.clone(), template.clone(), definition(), mode);
        assert_eq!(table(PartitionMode::Register).unconfirmed(paths.clone()), ["year=2026/month=11/day=30/hour=07/"]);
        assert!(table(PartitionMode::Projection).unconfirmed(paths).is_empty());
    }

    #[test]
    fn glue_types_compare_by_meaning() {
        assert!(type_fits("STRUCT<a: string, b:BIGINT>", "struct<a:string,b:bigint>"));
        assert!(!type_fits("int", "bigint"));
        assert!(type_fits("varchar(64)", "string") && type_fits("CHAR(8)", "string"));
        assert!(type_fits("struct<a:varchar(10),char:array<char(2)>>", "struct<a:string,char:array<string>>"));
        assert!(!type_fits("varchar(64)", "bigint") && !type_fits("uniontype<int,string>", "string"));
        assert_eq!("array<VarChar(5)>".parse::<HiveType>().unwrap().to_string(), "array<string>");
    }

    #[test]
    fn local_destinations_become_absolute_file_locations() {
        assert_eq!(table_location("s3://b/lake").unwrap(), "s3://b/lake/");
        let loc = table_location("./lake").unwrap();
        assert!(loc.starts_with("file:///") && loc.ends_with("/lake/"), "{loc}");
    }
}
