//! The lake's table definition in Glue's form: the columns (with the
//! `required` flag Glue has no field for), the Snappy Parquet storage
//! descriptor of the table and of each partition, and the table input.

use std::collections::BTreeMap;

use aws_sdk_glue::types::{Column as GlueColumn, SerDeInfo, StorageDescriptor, TableInput};

use super::TableName;
use crate::schema::TableDefinition;

const PARQUET_INPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat";
const PARQUET_OUTPUT: &str = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat";
const PARQUET_SERDE: &str = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe";

/// The column parameter that keeps a schema's `required` flag, which Glue
/// has no field for, so a schema read back from the table is the same.
pub(super) const REQUIRED_PARAMETER: &str = "shardlake.required";

pub(super) fn glue_column(name: &str, ty: &str, required: bool) -> GlueColumn {
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
pub(super) fn storage(def: &TableDefinition, location: &str) -> StorageDescriptor {
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
