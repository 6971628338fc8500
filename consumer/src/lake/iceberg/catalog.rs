//! Which Iceberg catalog holds the lake's table, named by one URL as the
//! hive lake's Glue table is:
//! - `glue://DATABASE/TABLE`: the Glue Data Catalog, as Athena, EMR and
//!   Firehose use it for Iceberg (see [`super::glue`]);
//! - `sqlite://PATH/NAMESPACE/TABLE`: a local catalog in a SQLite file
//!   (iceberg-rust's SQL catalog, the same tables pyiceberg's `SqlCatalog`
//!   and Java's JDBC catalog use).
//!
//! Files on S3 (metadata, manifests) go through shardlake's own S3 client
//! ([`super::storage`]), local ones straight to the disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::{LocalFsStorageFactory, StorageFactory};
use iceberg::{Catalog, CatalogBuilder, TableIdent};
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle, SqlCatalogBuilder};
use shardlake::store::S3Options;

use super::glue::GlueTables;
use super::storage::{S3TableFiles, S3TableFilesFactory};

/// The scheme of a local SQLite catalog.
pub const SQLITE_SCHEME: &str = "sqlite://";

/// The scheme of the Glue Data Catalog.
pub const GLUE_SCHEME: &str = "glue://";

/// The catalog name shardlake uses in a SQL catalog (its `catalog_name`
/// column): open the same file in pyiceberg as `SqlCatalog("shardlake", ...)`.
pub const SQL_CATALOG_NAME: &str = "shardlake";

/// Where the table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUrl {
    /// A local SQL catalog in a SQLite file.
    Sqlite {
        /// The SQLite file.
        file: PathBuf,
        /// The table's namespace.
        namespace: String,
        /// The table's name.
        table: String,
    },
    /// The Glue Data Catalog of the account and region in use.
    Glue {
        /// The Glue database.
        database: String,
        /// The table's name.
        table: String,
    },
}

/// A SQLite catalog's namespace and table names: letters, digits and `_`,
/// as Athena and Glue require.
fn check_name(url: &str, what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{url}`: the {what} `{name}` must be letters, digits and `_` (as Athena and Glue require); \
             write sqlite://PATH/NAMESPACE/TABLE, e.g. sqlite://lake/catalog.db/analytics/events"
        ));
    }
    Ok(())
}

impl CatalogUrl {
    /// Parses `sqlite://PATH/NAMESPACE/TABLE`; a relative PATH is taken
    /// from `base` (the config file's folder). Errors name the fix.
    pub fn parse(url: &str, base: &Path) -> Result<Self, String> {
        if url.starts_with(GLUE_SCHEME) {
            // Glue's own rules: lower-case names, as Glue stores them.
            let name = shardlake::catalog::TableName::parse(url).map_err(|e| e.to_string())?;
            return Ok(CatalogUrl::Glue { database: name.database, table: name.table });
        }
        let Some(rest) = url.strip_prefix(SQLITE_SCHEME) else {
            return Err(format!(
                "`{url}` is not an Iceberg catalog shardlake opens; write glue://DATABASE/TABLE (the Glue Data \
                 Catalog) or sqlite://PATH/NAMESPACE/TABLE (a local catalog file)"
            ));
        };
        let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
        let [table, namespace, file] = parts[..] else {
            return Err(format!(
                "`{url}`: write sqlite://PATH/NAMESPACE/TABLE, e.g. sqlite://lake/catalog.db/demo/events"
            ));
        };
        for (what, name) in [("namespace", namespace), ("table", table)] {
            check_name(url, what, name)?;
        }
        if file.is_empty() {
            return Err(format!("`{url}`: name the SQLite file, e.g. sqlite://lake/catalog.db/{namespace}/{table}"));
        }
        let file = base.join(file);
        Ok(CatalogUrl::Sqlite { file, namespace: namespace.to_string(), table: table.to_string() })
    }

    /// The table's identifier.
    pub fn ident(&self) -> TableIdent {
        match self {
            CatalogUrl::Sqlite { namespace, table, .. } | CatalogUrl::Glue { database: namespace, table } => {
                TableIdent::from_strs([namespace.as_str(), table.as_str()]).expect("two parts")
            }
        }
    }

    /// Opens the catalog for a table at `location` (`s3://...` or
    /// `file://...`, which is also where the catalog would put tables it
    /// located itself); S3 files are read and written with `s3`.
    pub async fn connect(&self, location: &str, s3: &S3Options) -> Result<Arc<dyn Catalog>, String> {
        let files: Arc<dyn StorageFactory> = if location.starts_with("s3://") {
            Arc::new(S3TableFilesFactory::new(S3TableFiles::new(location, s3).await?))
        } else {
            Arc::new(LocalFsStorageFactory)
        };
        match self {
            CatalogUrl::Glue { .. } => {
                if !location.starts_with("s3://") {
                    return Err(format!(
                        "a table in the Glue Data Catalog must live on S3 (Athena and the Glue optimizer read it \
                         there), not at {location}: set destination = \"s3://BUCKET/PREFIX/\""
                    ));
                }
                let catalog =
                    GlueTables::new(files).await.map_err(|e| format!("cannot open the Glue Data Catalog: {e}"))?;
                Ok(Arc::new(catalog))
            }
            CatalogUrl::Sqlite { file, .. } => {
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create the catalog's folder {}: {e}", dir.display()))?;
                }
                // `mode=rwc` creates the file when missing.
                let uri = format!("sqlite:{}?mode=rwc", file.display());
                let props = HashMap::from([
                    (SQL_CATALOG_PROP_URI.to_string(), uri),
                    (SQL_CATALOG_PROP_WAREHOUSE.to_string(), location.to_string()),
                ]);
                let catalog = SqlCatalogBuilder::default()
                    .sql_bind_style(SqlBindStyle::QMark)
                    .with_storage_factory(files)
                    .load(SQL_CATALOG_NAME, props)
                    .await
                    .map_err(|e| format!("cannot open the Iceberg catalog {}: {e}", file.display()))?;
                Ok(Arc::new(catalog))
            }
        }
    }
}
