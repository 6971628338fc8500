//! Whether an existing table fits the lake: every way it differs from what
//! the lake writes, which differences stop the lake, and the `UpdateTable`
//! input that adds the lake's new columns while keeping everything the
//! table's owners set (descriptions, parameters, comments, declared types).

use aws_sdk_glue::types::{StorageDescriptor, Table, TableInput};

use super::PartitionMode;
use super::table_input::glue_column;
use crate::schema::{EXTRA_COLUMN, HiveType, TableDefinition};

/// Whether a table's declared type `theirs` holds what the lake writes as
/// `ours`: the same type read the way Glue and Athena read them (parsed, so
/// case and spaces do not matter, and `varchar(n)` and `char(n)` hold
/// `string`); as text when they do not parse.
pub(super) fn type_fits(theirs: &str, ours: &str) -> bool {
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
pub(super) fn blocking(diffs: Vec<Difference>, evolving: bool) -> Vec<Difference> {
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
    table_input_keeping(table, sd, table.parameters().cloned().unwrap_or_default())
}

/// `table` as an `UpdateTable` input with `sd` and `parameters`, keeping
/// everything else its owners set (description, owner, retention,
/// partition keys, type).
pub fn table_input_keeping(
    table: &Table,
    sd: StorageDescriptor,
    parameters: std::collections::HashMap<String, String>,
) -> TableInput {
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
        .set_parameters(Some(parameters))
        .set_target_table(table.target_table().cloned())
        .build()
        .expect("name is set")
}
