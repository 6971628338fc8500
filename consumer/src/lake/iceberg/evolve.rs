//! Schema evolution on an Iceberg table: a version's new columns are added
//! to the table's schema (new field ids) before the version is stored, so
//! every stored version's files can carry ids; files written before read
//! the new columns as null, by id.

use futures::future::BoxFuture;
use iceberg::spec::Type;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use shardlake::schema::{EXTRA_COLUMN, Schema};

use super::spec::iceberg_type;
use super::table::IcebergTable;
use crate::lake::evolve::SchemaTable;

impl SchemaTable for IcebergTable {
    fn add_columns<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let table = self.load().await?;
            let has = |name: &str| {
                let current = table.metadata().current_schema();
                current.as_struct().fields().iter().any(|f| f.name.eq_ignore_ascii_case(name))
            };
            let missing: Vec<_> = schema.columns.iter().filter(|c| !has(&c.name)).collect();
            if missing.is_empty() {
                return Ok(false);
            }
            let tx = Transaction::new(&table);
            let mut update = tx.update_schema();
            for c in &missing {
                // Nested ids are placeholders: the table assigns fresh ones.
                let ty = iceberg_type(&c.ty, &mut || 0);
                update = update.add_column(AddColumn::optional(&c.name, ty));
            }
            let names = missing.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ");
            let committed = match update.apply(tx) {
                Ok(tx) => tx.commit(self.catalog().as_ref()).await,
                Err(e) => Err(e),
            };
            match committed {
                Ok(_) => {
                    self.load().await?;
                    tracing::info!(table = %self.ident(), columns = names, "columns added to the Iceberg table");
                    Ok(true)
                }
                // Another worker added them first: fine if they are there now.
                Err(e) => {
                    let now = self.load().await?;
                    let current = now.metadata().current_schema();
                    let all = missing.iter().all(|c| current.field_by_name_case_insensitive(&c.name).is_some());
                    if all {
                        Ok(false)
                    } else {
                        Err(anyhow::anyhow!("adding {names} to Iceberg table {}: {e}", self.ident()))
                    }
                }
            }
        })
    }

    fn declared_columns(&self) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>> {
        Box::pin(async move {
            let table = self.load().await?;
            let schema = table.metadata().current_schema();
            Ok(schema
                .as_struct()
                .fields()
                .iter()
                .filter(|f| f.name != EXTRA_COLUMN)
                .map(|f| (f.name.clone(), hive_name(&f.field_type)))
                .collect())
        })
    }

    fn table_first(&self) -> bool {
        true
    }

    fn refresh(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.load().await?;
            Ok(())
        })
    }
}

/// The schema type name of an Iceberg type; a type shardlake cannot write
/// (`uuid`, a timestamp without zone, ...) gets a name that does not parse,
/// so its field stays in `_extra`.
fn hive_name(ty: &Type) -> String {
    super::spec::hive_type_name(ty, &|other| format!("iceberg {other} (not written by shardlake)"))
}
