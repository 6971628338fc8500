//! The Glue Data Catalog as the table's Iceberg catalog
//! (`glue://DATABASE/TABLE`), the way Athena, EMR and Firehose keep Iceberg
//! tables there: the Glue table's `metadata_location` parameter names the
//! table's current metadata file, and a commit swaps it with `UpdateTable`
//! fenced on the Glue table's `VersionId`. Glue refuses a stale version, so
//! of two concurrent commits one lands and iceberg-rust retries the other
//! against the new metadata.
//!
//! Why not iceberg-rust's own Glue catalog (`iceberg-catalog-glue` 0.10):
//! - it refuses `timestamptz` columns when it writes the Glue columns, and
//!   every shardlake timestamp is one;
//! - each of its commits replaces the Glue table's whole definition, dropping
//!   what the table's owners set there (description, parameters such as tags
//!   or classification, column comments). Java's and Athena's commits keep
//!   them, and so does this one.
//!
//! Metadata, manifests and the commit itself (`TableCommit::apply`, the
//! metadata file) stay iceberg-rust's; this is only the catalog's
//! bookkeeping in Glue.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_glue::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_glue::types::{Column, DatabaseInput, StorageDescriptor, Table as GlueTable, TableInput};
use iceberg::io::{FileIO, FileIOBuilder, StorageFactory};
use iceberg::spec::{PrimitiveType, TableMetadata, TableMetadataBuilder, Type};
use iceberg::table::Table;
use iceberg::{
    Catalog, Error, ErrorKind, MetadataLocation, Namespace, NamespaceIdent, Result, TableCommit, TableCreation,
    TableIdent,
};

/// The Glue table parameters of an Iceberg table (Java's `GlueCatalog`,
/// Athena and pyiceberg use the same).
const TABLE_TYPE: &str = "table_type";
const ICEBERG: &str = "ICEBERG";
const METADATA_LOCATION: &str = "metadata_location";
const PREVIOUS_METADATA_LOCATION: &str = "previous_metadata_location";

/// Iceberg tables in the Glue Data Catalog of the account and region in use.
#[derive(Debug, Clone)]
pub struct GlueTables {
    glue: aws_sdk_glue::Client,
    file_io: FileIO,
    /// Where iceberg-rust spawns a table's tasks: the worker's runtime.
    runtime: iceberg::Runtime,
}

impl GlueTables {
    /// The catalog, with the standard AWS settings (region, credentials,
    /// `AWS_ENDPOINT_URL_GLUE`) and the table's files read and written
    /// through `files`.
    pub async fn new(files: Arc<dyn StorageFactory>) -> Result<Self> {
        let config = shardlake::aws::sdk_config().await;
        Ok(GlueTables {
            glue: shardlake::aws::glue_client(&config, &shardlake::aws::Timeouts::default()),
            file_io: FileIOBuilder::new(files).build(),
            runtime: iceberg::Runtime::try_current()?,
        })
    }

    /// The Glue table named `ident`.
    async fn glue_table(&self, ident: &TableIdent) -> Result<GlueTable> {
        let database = database(ident.namespace())?;
        let out = self.glue.get_table().database_name(database).name(ident.name()).send().await;
        match out {
            Ok(out) => out.table.ok_or_else(|| Error::new(ErrorKind::TableNotFound, format!("{ident}: no table"))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_entity_not_found_exception()) => {
                Err(Error::new(ErrorKind::TableNotFound, format!("table {ident} does not exist in Glue")))
            }
            Err(e) => Err(failed("GetTable", &e)),
        }
    }

    /// The Iceberg table whose metadata `location` names.
    async fn table_at(&self, ident: &TableIdent, location: &str) -> Result<Table> {
        let metadata = TableMetadata::read_from(&self.file_io, location).await?;
        Table::builder()
            .identifier(ident.clone())
            .metadata(metadata)
            .metadata_location(location)
            .file_io(self.file_io.clone())
            .runtime(self.runtime.clone())
            .build()
    }
}

/// The Glue database of a namespace (one level).
fn database(namespace: &NamespaceIdent) -> Result<&str> {
    match namespace.as_ref().as_slice() {
        [database] => Ok(database),
        _ => Err(Error::new(
            ErrorKind::DataInvalid,
            format!("{namespace:?}: a Glue database is one name, not a nested namespace"),
        )),
    }
}

/// A failed Glue call as iceberg-rust's error: a conflict or a transient
/// failure (throttle, 5xx, timeout) is retryable, anything else (access
/// denied, a missing database) is not.
fn failed<E>(
    operation: &'static str,
    e: &SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let call = shardlake::aws::call_error("Glue", operation, e);
    let line = shardlake::aws::error_line("Glue", operation, e);
    if call.code.as_deref() == Some("ConcurrentModificationException") {
        return Error::new(ErrorKind::CatalogCommitConflicts, line).with_retryable(true);
    }
    let kind = if call.transient { ErrorKind::Unexpected } else { ErrorKind::PreconditionFailed };
    Error::new(kind, line).with_retryable(call.transient)
}

/// The metadata file a Glue table names, refusing a table that is not an
/// Iceberg table.
fn metadata_location<'a>(ident: &TableIdent, table: &'a GlueTable) -> Result<&'a str> {
    let params = table.parameters();
    let iceberg = params.and_then(|p| p.get(TABLE_TYPE)).is_some_and(|t| t.eq_ignore_ascii_case(ICEBERG));
    let location = params.and_then(|p| p.get(METADATA_LOCATION));
    match (iceberg, location) {
        (true, Some(location)) => Ok(location),
        _ => Err(Error::new(
            ErrorKind::PreconditionFailed,
            format!(
                "Glue table {ident} is not an Iceberg table (no table_type = ICEBERG and metadata_location \
                 parameters): name another table, or use table_format = \"hive\" for it"
            ),
        )),
    }
}

/// How Glue (and Athena's DDL) writes an Iceberg type: timestamps with a
/// zone as `timestamp`, as Java's `GlueCatalog` does.
pub fn glue_type(ty: &Type) -> String {
    super::spec::hive_type_name(ty, &|other| {
        match other {
            PrimitiveType::Binary | PrimitiveType::Fixed(_) => "binary",
            PrimitiveType::Time | PrimitiveType::Uuid => "string",
            _ => "timestamp",
        }
        .to_string()
    })
}

/// The Glue columns of `metadata`'s current schema, each keeping the comment
/// an owner wrote on the column of that name in `old`.
fn glue_columns(metadata: &TableMetadata, old: &[Column]) -> Result<Vec<Column>> {
    let schema = metadata.current_schema();
    schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| {
            let comment = old.iter().find(|c| c.name() == f.name).and_then(|c| c.comment()).map(str::to_string);
            let params = HashMap::from([
                ("iceberg.field.id".to_string(), f.id.to_string()),
                ("iceberg.field.optional".to_string(), (!f.required).to_string()),
                ("iceberg.field.current".to_string(), "true".to_string()),
            ]);
            Column::builder()
                .name(&f.name)
                .r#type(glue_type(&f.field_type))
                .set_comment(comment.or_else(|| f.doc.clone()))
                .set_parameters(Some(params))
                .build()
                .map_err(|e| Error::new(ErrorKind::Unexpected, format!("Glue column {}: {e}", f.name)))
        })
        .collect()
}

/// The `UpdateTable` input that points `table` at `new_location`: its
/// columns and location from `metadata`, everything the owners set kept
/// (description, owner, parameters, column comments, the descriptor's other
/// settings).
fn swapped(table: &GlueTable, metadata: &TableMetadata, new_location: &str, old_location: &str) -> Result<TableInput> {
    let mut sd = table.storage_descriptor().cloned().unwrap_or_else(|| StorageDescriptor::builder().build());
    sd.columns = Some(glue_columns(metadata, sd.columns())?);
    sd.location = Some(metadata.location().to_string());
    let mut parameters = table.parameters().cloned().unwrap_or_default();
    parameters.insert(TABLE_TYPE.into(), ICEBERG.into());
    parameters.insert(METADATA_LOCATION.into(), new_location.into());
    parameters.insert(PREVIOUS_METADATA_LOCATION.into(), old_location.into());
    Ok(shardlake::catalog::table_input_keeping(table, sd, parameters))
}

#[async_trait]
impl Catalog for GlueTables {
    async fn list_namespaces(&self, _parent: Option<&NamespaceIdent>) -> Result<Vec<NamespaceIdent>> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not list Glue databases"))
    }

    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        let name = database(namespace)?;
        let input = DatabaseInput::builder()
            .name(name)
            .description("created by shardlake")
            .build()
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
        match self.glue.create_database().database_input(input).send().await {
            Ok(_) => Ok(Namespace::with_properties(namespace.clone(), properties)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => {
                Err(Error::new(ErrorKind::NamespaceAlreadyExists, format!("Glue database {name} exists")))
            }
            Err(e) => Err(failed("CreateDatabase", &e)),
        }
    }

    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        if self.namespace_exists(namespace).await? {
            Ok(Namespace::new(namespace.clone()))
        } else {
            Err(Error::new(ErrorKind::NamespaceNotFound, format!("Glue database {namespace:?} does not exist")))
        }
    }

    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        let name = database(namespace)?;
        match self.glue.get_database().name(name).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_entity_not_found_exception()) => Ok(false),
            Err(e) => Err(failed("GetDatabase", &e)),
        }
    }

    async fn update_namespace(&self, _namespace: &NamespaceIdent, _properties: HashMap<String, String>) -> Result<()> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not change Glue databases"))
    }

    async fn drop_namespace(&self, _namespace: &NamespaceIdent) -> Result<()> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not drop Glue databases"))
    }

    async fn list_tables(&self, _namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not list Glue tables"))
    }

    /// Writes the table's first metadata file, then creates the Glue table
    /// naming it (another worker creating it first: `TableAlreadyExists`).
    async fn create_table(&self, namespace: &NamespaceIdent, creation: TableCreation) -> Result<Table> {
        let name = database(namespace)?;
        let ident = TableIdent::new(namespace.clone(), creation.name.clone());
        let location = creation.location.clone().ok_or_else(|| {
            Error::new(ErrorKind::DataInvalid, format!("{ident}: shardlake gives every table a location"))
        })?;
        let metadata = TableMetadataBuilder::from_table_creation(creation)?.build()?.metadata;
        let metadata_location = MetadataLocation::new_with_metadata(location.clone(), &metadata);
        metadata.write_to(&self.file_io, &metadata_location).await?;
        let metadata_location = metadata_location.to_string();
        let sd =
            StorageDescriptor::builder().set_columns(Some(glue_columns(&metadata, &[])?)).location(&location).build();
        let input = TableInput::builder()
            .name(ident.name())
            .table_type("EXTERNAL_TABLE")
            .parameters(TABLE_TYPE, ICEBERG)
            .parameters(METADATA_LOCATION, &metadata_location)
            .storage_descriptor(sd)
            .build()
            .map_err(|e| Error::new(ErrorKind::Unexpected, e.to_string()))?;
        match self.glue.create_table().database_name(name).table_input(input).send().await {
            Ok(_) => self.table_at(&ident, &metadata_location).await,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_already_exists_exception()) => {
                Err(Error::new(ErrorKind::TableAlreadyExists, format!("table {ident} exists in Glue")))
            }
            Err(e) => Err(failed("CreateTable", &e)),
        }
    }

    async fn load_table(&self, ident: &TableIdent) -> Result<Table> {
        let table = self.glue_table(ident).await?;
        self.table_at(ident, metadata_location(ident, &table)?).await
    }

    async fn drop_table(&self, _table: &TableIdent) -> Result<()> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not drop Glue tables"))
    }

    async fn purge_table(&self, _table: &TableIdent) -> Result<()> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not purge Glue tables"))
    }

    async fn table_exists(&self, ident: &TableIdent) -> Result<bool> {
        match self.glue_table(ident).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::TableNotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn rename_table(&self, _src: &TableIdent, _dest: &TableIdent) -> Result<()> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not rename Glue tables"))
    }

    async fn register_table(&self, _table: &TableIdent, _metadata_location: String) -> Result<Table> {
        Err(Error::new(ErrorKind::FeatureUnsupported, "shardlake does not register Glue tables"))
    }

    /// Reads the Glue table (its version and metadata file), applies the
    /// commit to that metadata and writes the new metadata file, then swaps
    /// the Glue table to it, fenced on the version read: a commit that
    /// landed meanwhile makes Glue refuse this one (a retryable conflict).
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let ident = commit.identifier().clone();
        let name = database(ident.namespace())?;
        let glue_table = self.glue_table(&ident).await?;
        let current_location = metadata_location(&ident, &glue_table)?.to_string();
        let current = self.table_at(&ident, &current_location).await?;
        let staged = commit.apply(current)?;
        let staged_location = MetadataLocation::from_str(staged.metadata_location_result()?)?;
        staged.metadata().write_to(staged.file_io(), &staged_location).await?;
        let input = swapped(&glue_table, staged.metadata(), &staged_location.to_string(), &current_location)?;
        self.glue
            .update_table()
            .database_name(name)
            .table_input(input)
            .set_version_id(glue_table.version_id().map(str::to_string))
            .skip_archive(true)
            .send()
            .await
            .map_err(|e| failed("UpdateTable", &e))?;
        Ok(staged)
    }
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{ListType, MapType, NestedField, Schema, StructType};

    use super::*;

    #[test]
    fn glue_types_are_athenas_and_timestamps_with_a_zone_are_timestamp() {
        let s = Type::Struct(StructType::new(vec![
            NestedField::optional(2, "os", Type::Primitive(PrimitiveType::String)).into(),
            NestedField::optional(3, "at", Type::Primitive(PrimitiveType::Timestamptz)).into(),
        ]));
        assert_eq!(glue_type(&s), "struct<os:string,at:timestamp>");
        let l =
            Type::List(ListType::new(NestedField::list_element(4, Type::Primitive(PrimitiveType::Long), false).into()));
        assert_eq!(glue_type(&l), "array<bigint>");
        let m = Type::Map(MapType::new(
            NestedField::map_key_element(5, Type::Primitive(PrimitiveType::String)).into(),
            NestedField::map_value_element(6, Type::Primitive(PrimitiveType::Double), false).into(),
        ));
        assert_eq!(glue_type(&m), "map<string,double>");
        let d = Type::Primitive(PrimitiveType::Decimal { precision: 12, scale: 2 });
        assert_eq!(glue_type(&d), "decimal(12,2)");
    }

    /// A commit swaps the metadata file and the columns, and keeps what the
    /// table's owners set.
    #[test]
    fn a_commit_keeps_what_the_tables_owners_set() {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "event_id", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(2, "ts", Type::Primitive(PrimitiveType::Timestamptz)).into(),
            ])
            .build()
            .unwrap();
        let creation =
            TableCreation::builder().name("events".into()).location("s3://b/lake".into()).schema(schema).build();
        let metadata = TableMetadataBuilder::from_table_creation(creation).unwrap().build().unwrap().metadata;
        let owned = GlueTable::builder()
            .name("events")
            .description("clickstream, owned by growth")
            .owner("growth")
            .parameters(TABLE_TYPE, "iceberg")
            .parameters(METADATA_LOCATION, "s3://b/lake/metadata/1.metadata.json")
            .parameters("classification", "confidential")
            .storage_descriptor(
                StorageDescriptor::builder()
                    .columns(
                        Column::builder()
                            .name("event_id")
                            .r#type("string")
                            .comment("the event's UUID")
                            .build()
                            .unwrap(),
                    )
                    .location("s3://b/lake")
                    .parameters("owner.note", "kept")
                    .build(),
            )
            .build()
            .unwrap();
        let input =
            swapped(&owned, &metadata, "s3://b/lake/metadata/2.metadata.json", "s3://b/lake/metadata/1.metadata.json")
                .unwrap();
        assert_eq!((input.description(), input.owner()), (Some("clickstream, owned by growth"), Some("growth")));
        let params = input.parameters().unwrap();
        assert_eq!(params["classification"], "confidential");
        assert_eq!(params[TABLE_TYPE], ICEBERG);
        assert_eq!(params[METADATA_LOCATION], "s3://b/lake/metadata/2.metadata.json");
        assert_eq!(params[PREVIOUS_METADATA_LOCATION], "s3://b/lake/metadata/1.metadata.json");
        let sd = input.storage_descriptor().unwrap();
        let columns: Vec<(&str, &str, Option<&str>)> =
            sd.columns().iter().map(|c| (c.name(), c.r#type().unwrap(), c.comment())).collect();
        assert_eq!(columns, [("event_id", "string", Some("the event's UUID")), ("ts", "timestamp", None)]);
        assert_eq!(sd.parameters().unwrap()["owner.note"], "kept");
        assert_eq!(sd.location(), Some("s3://b/lake"));
    }
}
