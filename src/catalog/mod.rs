//! The lake as a table in the AWS Glue Data Catalog (`glue://DATABASE/TABLE`):
//! the table created from the schema and the partition template, or an
//! existing one checked against them; the partitions the lake's files are
//! in registered (`BatchCreatePartition`, already-exists is success, a cache
//! so steady state makes no calls); and a schema read from a table, as
//! Firehose's record format conversion does.
//!
//! The parts: [`CatalogTable`], one lake table and its partitions (`table`);
//! the lake's table definition in Glue's form (`table_input`); how an
//! existing table differs from the lake, and adding columns to it without
//! touching what its owners set (`differences`); single reads of a database,
//! a table and its schema (`lookup`); and Glue's errors as the lake's
//! (`sdk_errors`). Here: the table's name and how partitions are learned.

mod differences;
mod lookup;
mod sdk_errors;
mod table;
mod table_input;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::store::Location;

pub use differences::{Difference, differences, table_input_keeping, with_added_columns};
pub use lookup::{database_exists, get_table, read_schema, schema_of};
pub use table::{CatalogPartition, CatalogTable, Ensured};
pub use table_input::table_input;

/// The URL scheme of a Glue table.
pub const GLUE_SCHEME: &str = "glue://";

/// Partitions in one `BatchCreatePartition` call (the API's limit).
pub const MAX_PARTITIONS_PER_CALL: usize = 100;

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

#[cfg(test)]
mod tests;
