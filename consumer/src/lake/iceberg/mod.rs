//! The lake as an Apache Iceberg table (`table_format = "iceberg"`): the
//! table made from the config (`spec`), its catalog (`catalog`), data file
//! entries from the files' footers (`data_file`), and appends whose
//! snapshots name their batches, never appending one twice (`table`).
//! Metadata, manifests and commits are iceberg-rust's; shardlake writes the
//! Parquet data files itself, under the table's location in `data/`.

pub mod catalog;
pub mod committer;
pub mod data_file;
mod evolve;
pub mod glue;
pub mod maintain;
pub mod spec;
pub mod storage;
pub mod table;

use std::sync::Arc;

use shardlake::convert::ICEBERG_DATA_FOLDER;
use shardlake::partition::PartitionTemplate;
use shardlake::schema::{FieldIds, Schema, UnknownFieldPolicy};
use shardlake::store::S3Options;

pub use catalog::CatalogUrl;
pub use data_file::WrittenFile;
pub use spec::{PartitionMapping, SpecError};
pub use table::{BatchFiles, BatchKey, IcebergTable, TableError};

/// The lake's table, open, with the field ids its data files carry.
#[derive(Debug, Clone)]
pub struct IcebergLake {
    /// The table.
    pub table: IcebergTable,
    /// Each schema column's field ids, then `_extra`'s.
    pub field_ids: Arc<Vec<FieldIds>>,
    /// The table's location (`file:///...`, `s3://...`), without a trailing `/`.
    pub location: String,
}

/// What a worker's readers put batches into the table with.
#[derive(Debug, Clone)]
pub struct TableAppender {
    /// The table and the field ids of its files.
    pub lake: IcebergLake,
    /// The worker's commits.
    pub committer: committer::Committer,
}

/// What the lake's table is made from.
#[derive(Debug, Clone, Copy)]
pub struct TableConfig<'a> {
    /// The catalog and the table's name in it.
    pub catalog: &'a CatalogUrl,
    /// The lake: a local folder or `s3://bucket/prefix/` (the table's location).
    pub destination: &'a str,
    /// Columns and types.
    pub schema: &'a Schema,
    /// Unknown fields: kept in `_extra`, or not.
    pub unknown_fields: UnknownFieldPolicy,
    /// The partition template (as configured, without `data/`).
    pub template: &'a str,
    /// The event-time column for time partitions.
    pub time_field: Option<&'a str>,
    /// Whether to create the table (and its namespace) when missing.
    pub create: bool,
    /// S3 settings, for a table on S3.
    pub s3: &'a S3Options,
}

impl IcebergLake {
    /// Opens (or creates) the table and reads back its field ids.
    pub async fn open(config: TableConfig<'_>) -> Result<Self, TableError> {
        let template = PartitionTemplate::parse(config.template).map_err(|e| SpecError(e.to_string()))?;
        let mapping = PartitionMapping::new(&template, config.time_field, config.schema)?;
        let location = table_location(config.destination)?;
        let extra = config.unknown_fields.keeps_extra();
        let schema = spec::iceberg_schema(config.schema, extra)?;
        let catalog = config.catalog.connect(&location, config.s3).await.map_err(SpecError)?;
        let table = IcebergTable::open(
            catalog,
            config.catalog.ident(),
            &location,
            &schema,
            mapping,
            config.time_field,
            config.create,
        )
        .await?;
        // `open` has just read the table: its schema is current.
        let field_ids = spec::field_ids(&table.current_schema(), config.schema, extra)?;
        Ok(IcebergLake { table, field_ids: Arc::new(field_ids), location })
    }

    /// A written data file by its key under the lake (`data/...`).
    pub fn written(
        &self,
        key: &str,
        partition: &str,
        bytes: u64,
        footer: Arc<parquet::file::metadata::ParquetMetaData>,
    ) -> WrittenFile {
        WrittenFile {
            path: format!("{}/{key}", self.location),
            folder: partition.strip_prefix(ICEBERG_DATA_FOLDER).unwrap_or(partition).to_string(),
            bytes,
            footer,
        }
    }
}

/// The table location of a lake destination (`s3://bucket/prefix`, or a
/// local folder as an absolute `file://` URL), without a trailing `/`.
pub fn table_location(destination: &str) -> Result<String, SpecError> {
    let location = shardlake::catalog::table_location(destination).map_err(|e| SpecError(e.to_string()))?;
    Ok(location.trim_end_matches('/').to_string())
}
