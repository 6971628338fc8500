//! Which Iceberg catalog holds the lake's table, named by one URL as the
//! hive lake's Glue table is: `sqlite://PATH/NAMESPACE/TABLE`, a local
//! catalog in a SQLite file (iceberg-rust's SQL catalog, the same tables
//! pyiceberg's `SqlCatalog` and Java's JDBC catalog use).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use iceberg::io::LocalFsStorageFactory;
use iceberg::{Catalog, CatalogBuilder, TableIdent};
use iceberg_catalog_sql::{SQL_CATALOG_PROP_URI, SQL_CATALOG_PROP_WAREHOUSE, SqlBindStyle, SqlCatalogBuilder};

/// The scheme of a local SQLite catalog.
pub const SQLITE_SCHEME: &str = "sqlite://";

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
}

impl CatalogUrl {
    /// Parses `sqlite://PATH/NAMESPACE/TABLE`; a relative PATH is taken
    /// from `base` (the config file's folder). Errors name the fix.
    pub fn parse(url: &str, base: &Path) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix(SQLITE_SCHEME) else {
            return Err(format!(
                "`{url}` is not an Iceberg catalog shardlake opens; write sqlite://PATH/NAMESPACE/TABLE (a local \
                 catalog file)"
            ));
        };
        let parts: Vec<&str> = rest.rsplitn(3, '/').collect();
        let [table, namespace, file] = parts[..] else {
            return Err(format!(
                "`{url}`: write sqlite://PATH/NAMESPACE/TABLE, e.g. sqlite://lake/catalog.db/demo/events"
            ));
        };
        for (what, name) in [("namespace", namespace), ("table", table)] {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`{url}`: the {what} `{name}` must be letters, digits and `_` (as Athena and Glue require); \
                     write sqlite://PATH/NAMESPACE/TABLE, e.g. sqlite://lake/catalog.db/analytics/events"
                ));
            }
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
            CatalogUrl::Sqlite { namespace, table, .. } => {
                TableIdent::from_strs([namespace.as_str(), table.as_str()]).expect("two parts")
            }
        }
    }

    /// Opens the catalog; `warehouse` is where it would put tables it
    /// locates itself (shardlake gives each table its location).
    pub async fn connect(&self, warehouse: &str) -> Result<Arc<dyn Catalog>, String> {
        match self {
            CatalogUrl::Sqlite { file, .. } => {
                if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create the catalog's folder {}: {e}", dir.display()))?;
                }
                // `mode=rwc` creates the file when missing.
                let uri = format!("sqlite:{}?mode=rwc", file.display());
                let props = HashMap::from([
                    (SQL_CATALOG_PROP_URI.to_string(), uri),
                    (SQL_CATALOG_PROP_WAREHOUSE.to_string(), warehouse.to_string()),
                ]);
                let catalog = SqlCatalogBuilder::default()
                    .sql_bind_style(SqlBindStyle::QMark)
                    .with_storage_factory(Arc::new(LocalFsStorageFactory))
                    .load(SQL_CATALOG_NAME, props)
                    .await
                    .map_err(|e| format!("cannot open the Iceberg catalog {}: {e}", file.display()))?;
                Ok(Arc::new(catalog))
            }
        }
    }
}
