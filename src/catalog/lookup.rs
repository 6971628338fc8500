//! Single reads outside a [`CatalogTable`](super::CatalogTable): whether a
//! database exists (the start-up check), a table, and the schema a table
//! declares (as Firehose's record format conversion reads it).

use aws_sdk_glue::types::Table;

use super::TableName;
use super::sdk_errors::{catalog_error, is_code};
use super::table_input::REQUIRED_PARAMETER;
use crate::error::{Error, Result};
use crate::schema::{Column, EXTRA_COLUMN, HiveType, Schema};

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
