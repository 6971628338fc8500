//! The table schema: columns with Athena / Hive type names, loaded from a TOML
//! or JSON file (or inferred from sample records), so that one file drives the
//! Parquet layout and the Athena DDL.
//!
//! ```toml
//! [[columns]]
//! name = "event_id"
//! type = "string"
//! required = true
//! [[columns]]
//! name = "ts"
//! type = "timestamp"
//! ```

mod ddl;
mod evolve;
mod infer;
mod types;

use std::path::Path;
use std::sync::Arc;

use arrow_schema::{DataType, Field};
use serde::{Deserialize, Serialize};

pub use ddl::{DdlOptions, TableDefinition, create_table_ddl, table_definition};
pub use evolve::{FieldWatch, MAX_COLUMN_TYPE_CHARS, WatchCounts, valid_column_name, with_columns};
pub use infer::{DEFAULT_INFER_SAMPLE, MAX_INFERRED_FIELDS, SchemaInferrer};
pub use types::{
    FieldIds, HiveType, LIST_ITEM_NAME, MAX_DECIMAL_PRECISION, MAX_TYPE_DEPTH, StructField, TypeParseError,
    iceberg_field, map_entries_field, struct_fields,
};

use crate::error::{Error, Result};

/// Name of the column that keeps unknown fields as JSON text.
pub const EXTRA_COLUMN: &str = "_extra";

/// One top-level column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Field name in the JSON records and column name in Parquet.
    pub name: String,
    /// Athena / Hive type.
    pub ty: HiveType,
    /// A record without this field (or with `null`) goes to the error output.
    pub required: bool,
}

/// The columns of the lake table, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    /// Columns in the order they are written.
    pub columns: Vec<Column>,
}

/// What happens to record fields that the schema does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFieldPolicy {
    /// Keep them as a JSON object in the `_extra` string column (default):
    /// nothing is lost and the table schema stays stable.
    #[default]
    Keep,
    /// Send the whole record to the error output (`unknown_field`).
    Error,
    /// Drop the fields and count them.
    Drop,
    /// Like `keep`, and a top-level field seen often enough becomes a new
    /// nullable column at the end of the schema (the consumer's additive
    /// schema evolution; see `FieldWatch`).
    Evolve,
}

impl UnknownFieldPolicy {
    /// Whether files carry the `_extra` column of unknown fields.
    pub fn keeps_extra(self) -> bool {
        matches!(self, UnknownFieldPolicy::Keep | UnknownFieldPolicy::Evolve)
    }
}

/// Serde shape of a schema file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    columns: Vec<ColumnFile>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    required: bool,
}

impl Schema {
    /// Loads a schema file; `.json` files are JSON, anything else TOML.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read schema file {}: {e}", path.display())))?;
        let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::parse(&text, is_json).map_err(|e| Error::Config(format!("schema file {}: {e}", path.display())))
    }

    /// Parses schema text (TOML, or JSON when `json`).
    pub fn parse(text: &str, json: bool) -> std::result::Result<Self, String> {
        let file: SchemaFile = if json {
            serde_json::from_str(text).map_err(|e| e.to_string())?
        } else {
            toml::from_str(text).map_err(|e| e.to_string())?
        };
        let mut columns = Vec::with_capacity(file.columns.len());
        for (i, c) in file.columns.into_iter().enumerate() {
            let ty = c.ty.parse::<HiveType>().map_err(|e| format!("column {} (`{}`): {e}", i + 1, c.name))?;
            columns.push(Column { name: c.name, ty, required: c.required });
        }
        let schema = Schema { columns };
        schema.validate()?;
        Ok(schema)
    }

    /// Checks names: non-empty, unique ignoring case (Athena folds case), not `_extra`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.columns.is_empty() {
            return Err("the schema has no columns; add [[columns]] entries with name and type".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.is_empty() {
                return Err(format!("column {} has an empty name", i + 1));
            }
            if c.name == EXTRA_COLUMN {
                return Err(format!("`{EXTRA_COLUMN}` is reserved for unknown fields; rename the column"));
            }
            if self.columns[..i].iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)) {
                return Err(format!("column `{}` is listed twice (Athena ignores case in column names)", c.name));
            }
        }
        Ok(())
    }

    /// Renders the schema as a TOML schema file.
    pub fn to_toml(&self) -> String {
        let file = SchemaFile {
            columns: self
                .columns
                .iter()
                .map(|c| ColumnFile { name: c.name.clone(), ty: c.ty.to_string(), required: c.required })
                .collect(),
        };
        toml::to_string(&file).expect("schema serializes")
    }

    /// Index of the column with this exact name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The Arrow schema of the data files: every column except those stored
    /// as partition directories, plus `_extra` when unknown fields are kept.
    pub fn file_arrow_schema(&self, layout: &FileLayout) -> Arc<arrow_schema::Schema> {
        if let Some(ids) = &layout.field_ids {
            let mut fields: Vec<Field> = layout
                .stored
                .iter()
                .zip(ids.iter())
                .map(|(&i, ids)| {
                    let c = &self.columns[i];
                    iceberg_field(&c.name, &c.ty, !c.required, Some(ids))
                })
                .collect();
            if layout.extra_column {
                fields.push(iceberg_field(EXTRA_COLUMN, &HiveType::String, true, ids.get(layout.stored.len())));
            }
            return Arc::new(arrow_schema::Schema::new(fields));
        }
        let mut fields: Vec<Field> = layout
            .stored
            .iter()
            .map(|&i| {
                let c = &self.columns[i];
                Field::new(&c.name, c.ty.to_arrow(), !c.required)
            })
            .collect();
        if layout.extra_column {
            fields.push(Field::new(EXTRA_COLUMN, DataType::Utf8, true));
        }
        Arc::new(arrow_schema::Schema::new(fields))
    }
}

/// Which schema columns a data file stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// Indexes into [`Schema::columns`] of the stored columns, in order.
    pub stored: Vec<usize>,
    /// Whether the file has an `_extra` column.
    pub extra_column: bool,
    /// For an Iceberg table's data files: the field ids of each stored
    /// column, then of `_extra`. The files then carry them, and store
    /// timestamps in microseconds.
    pub field_ids: Option<Arc<Vec<FieldIds>>>,
}

impl FileLayout {
    /// Stores every column except those named like a partition key (the
    /// Athena convention: partition values live in the path only).
    pub fn new(schema: &Schema, partition_keys: &[String], policy: UnknownFieldPolicy) -> Self {
        let stored = (0..schema.columns.len())
            .filter(|&i| !partition_keys.iter().any(|k| k.eq_ignore_ascii_case(&schema.columns[i].name)))
            .collect();
        FileLayout { stored, extra_column: policy.keeps_extra(), field_ids: None }
    }

    /// Every column, with the field ids of an Iceberg table (`ids`: each
    /// column's, then `_extra`'s). Partition values are transforms of
    /// columns there, so no column is left to the path.
    pub fn iceberg(schema: &Schema, policy: UnknownFieldPolicy, ids: Arc<Vec<FieldIds>>) -> Self {
        FileLayout {
            stored: (0..schema.columns.len()).collect(),
            extra_column: policy.keeps_extra(),
            field_ids: Some(ids),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[columns]]
name = "event_id"
type = "string"
required = true
[[columns]]
name = "ts"
type = "timestamp"
[[columns]]
name = "device"
type = "struct<os:string,browser:string,version:string>"
[[columns]]
name = "tags"
type = "array<string>"
"#;

    #[test]
    fn parses_toml_and_round_trips() {
        let s = Schema::parse(EXAMPLE, false).unwrap();
        assert_eq!(s.columns.len(), 4);
        assert!(s.columns[0].required);
        assert_eq!(s.columns[2].ty.to_string(), "struct<os:string,browser:string,version:string>");
        assert_eq!(Schema::parse(&s.to_toml(), false).unwrap(), s);
    }

    #[test]
    fn parses_json() {
        let s = Schema::parse(r#"{"columns":[{"name":"a","type":"bigint"}]}"#, true).unwrap();
        assert_eq!(s.columns[0].ty, HiveType::BigInt);
    }

    #[test]
    fn rejects_bad_files_with_the_column() {
        let err = Schema::parse("[[columns]]\nname = \"x\"\ntype = \"nope\"\n", false).unwrap_err();
        assert!(err.contains("column 1 (`x`)") && err.contains("unknown type `nope`"), "{err}");
        let err = Schema::parse("[[columns]]\nname = \"x\"\ntype = \"int\"\ntyp = 1\n", false).unwrap_err();
        assert!(err.contains("unknown field `typ`"), "{err}");
        let err = Schema::parse(
            "[[columns]]\nname = \"x\"\ntype = \"int\"\n[[columns]]\nname = \"X\"\ntype = \"int\"\n",
            false,
        )
        .unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn layout_drops_partition_columns_and_adds_extra() {
        let s = Schema::parse(EXAMPLE, false).unwrap();
        let layout = FileLayout::new(&s, &["TS".to_string()], UnknownFieldPolicy::Keep);
        assert_eq!(layout.stored, vec![0, 2, 3]);
        let arrow = s.file_arrow_schema(&layout);
        let names: Vec<_> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["event_id", "device", "tags", "_extra"]);
        assert!(!arrow.field(0).is_nullable());
    }
}
