//! Unit tests of the Glue catalog: table names, the table input, the
//! differences that stop the lake, and adding columns.

use aws_sdk_glue::types::{Column as GlueColumn, Table, TableInput};

use super::differences::{blocking, type_fits};
use super::table_input::storage;
use super::*;
use crate::partition::{DEFAULT_TEMPLATE, PartitionTemplate};
use crate::schema::{HiveType, Schema, TableDefinition, UnknownFieldPolicy, table_definition};

#[test]
fn names_are_checked_with_the_fix() {
    assert_eq!(
        TableName::parse("glue://lake/events").unwrap(),
        TableName { database: "lake".into(), table: "events".into() }
    );
    let err = |u: &str| TableName::parse(u).unwrap_err().to_string();
    assert!(err("glue://Lake/events").contains("write `lake`"), "{}", err("glue://Lake/events"));
    assert!(err("glue://lake").contains("has no table"));
    assert!(err("s3://lake/events").contains("glue://DATABASE/TABLE"));
    assert!(err("glue://lake/ev-ents").contains("lower-case letters, digits or `_`"));
    assert!(err("glue://lake/").contains("table name ``"));
}

fn definition() -> TableDefinition {
    let schema =
        Schema::parse("[[columns]]\nname=\"id\"\ntype=\"string\"\n[[columns]]\nname=\"n\"\ntype=\"bigint\"\n", false)
            .unwrap();
    let template = PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap();
    table_definition(&schema, &template, UnknownFieldPolicy::Keep, "s3://b/lake", None).unwrap()
}

fn as_table(input: TableInput) -> Table {
    Table::builder()
        .name(input.name())
        .set_storage_descriptor(input.storage_descriptor().cloned())
        .set_partition_keys(Some(input.partition_keys().to_vec()))
        .set_parameters(input.parameters().cloned())
        .build()
        .unwrap()
}

#[test]
fn a_table_made_from_the_definition_fits_it_and_each_difference_is_named() {
    let name = TableName::parse("glue://lake/events").unwrap();
    let def = definition();
    assert_eq!(def.location, "s3://b/lake/");
    let table = as_table(table_input(&name, &def));
    assert_eq!(differences(&def, PartitionMode::Register, &table), Vec::new());
    assert_eq!(differences(&def, PartitionMode::Projection, &table).len(), 1);

    let mut other = def.clone();
    other.columns[1].1 = "int".into();
    other.columns.push(("extra_col".into(), "string".into()));
    other.partition_keys.pop();
    other.location = "s3://b/elsewhere/".into();
    let diffs = differences(&def, PartitionMode::Register, &as_table(table_input(&name, &other)));
    let text = diffs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert_eq!(diffs.len(), 4, "{text}");
    assert!(text.contains("column `n` is int in the table but bigint in the schema"), "{text}");
    assert!(text.contains("column `extra_col` (string) is in the table but not in the schema"), "{text}");
    assert!(text.contains("partition keys are (year, month, day) in the table but (year, month, day, hour)"));
    assert!(text.contains("location is `s3://b/elsewhere/`"), "{text}");
}

#[test]
fn under_evolution_only_other_differences_block() {
    let name = TableName::parse("glue://lake/events").unwrap();
    let def = definition();
    let mut newer = def.clone();
    newer.columns.insert(2, ("score".into(), "double".into()));
    let old_table = as_table(table_input(&name, &def));
    let diffs = differences(&newer, PartitionMode::Register, &old_table);
    assert_eq!(diffs, [Difference::MissingColumn { name: "score".into(), ty: "double".into() }]);
    assert!(blocking(diffs.clone(), true).is_empty());
    assert_eq!(blocking(diffs, false).len(), 1);
    // A later version's (or the owners') column is left alone.
    let new_table = as_table(table_input(&name, &newer));
    assert!(blocking(differences(&def, PartitionMode::Register, &new_table), true).is_empty());
    // Any other difference is still an error for the user to fix.
    let mut moved = newer.clone();
    moved.location = "s3://b/elsewhere/".into();
    assert_eq!(blocking(differences(&moved, PartitionMode::Register, &old_table), true).len(), 1);
    let mut retyped = newer.clone();
    retyped.columns[1].1 = "int".into();
    assert_eq!(blocking(differences(&retyped, PartitionMode::Register, &old_table), true).len(), 1);
}

#[test]
fn added_columns_keep_everything_the_owners_set() {
    let name = TableName::parse("glue://lake/events").unwrap();
    let def = definition();
    let owned = GlueColumn::builder().name("id").r#type("varchar(64)").comment("the event id").build().unwrap();
    let mut sd = storage(&def, &def.location);
    sd.columns = Some(vec![owned.clone(), sd.columns()[1].clone(), sd.columns()[2].clone()]);
    let table = Table::builder()
        .name("events")
        .description("orders, owned by the data team")
        .owner("data-team")
        .retention(30)
        .parameters("owner_team", "data")
        .parameters("classification", "parquet")
        .storage_descriptor(sd)
        .set_partition_keys(Some(table_input(&name, &def).partition_keys().to_vec()))
        .table_type("EXTERNAL_TABLE")
        .build()
        .unwrap();
    assert!(differences(&def, PartitionMode::Register, &table).is_empty(), "varchar(64) holds string");
    let input = with_added_columns(&table, &[("score".into(), "double".into())]);
    assert_eq!(input.description(), Some("orders, owned by the data team"));
    assert_eq!((input.owner(), input.retention(), input.table_type()), (Some("data-team"), 30, Some("EXTERNAL_TABLE")));
    assert_eq!(input.parameters().unwrap().get("owner_team").map(String::as_str), Some("data"));
    let columns: Vec<(&str, Option<&str>)> =
        input.storage_descriptor().unwrap().columns().iter().map(|c| (c.name(), c.r#type())).collect();
    assert_eq!(
        columns,
        [("id", Some("varchar(64)")), ("n", Some("bigint")), ("score", Some("double")), ("_extra", Some("string"))]
    );
    assert_eq!(input.storage_descriptor().unwrap().columns()[0], owned, "the comment stays");
    assert_eq!(input.partition_keys(), table.partition_keys());
}

#[test]
fn only_registered_partitions_are_ever_pending() {
    let client = aws_sdk_glue::Client::from_conf(
        aws_sdk_glue::Config::builder().behavior_version(aws_sdk_glue::config::BehaviorVersion::latest()).build(),
    );
    let name = TableName::parse("glue://lake/events").unwrap();
    let template = PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap();
    let paths = ["year=2026/month=11/day=30/hour=07/".to_string(), "year=2026/month=11/day=30/hour=07/".into()];
    let table = |mode| CatalogTable::new(client.clone(), name.clone(), template.clone(), definition(), mode);
    assert_eq!(table(PartitionMode::Register).unconfirmed(paths.clone()), ["year=2026/month=11/day=30/hour=07/"]);
    assert!(table(PartitionMode::Projection).unconfirmed(paths).is_empty());
}

#[test]
fn glue_types_compare_by_meaning() {
    assert!(type_fits("STRUCT<a: string, b:BIGINT>", "struct<a:string,b:bigint>"));
    assert!(!type_fits("int", "bigint"));
    assert!(type_fits("varchar(64)", "string") && type_fits("CHAR(8)", "string"));
    assert!(type_fits("struct<a:varchar(10),char:array<char(2)>>", "struct<a:string,char:array<string>>"));
    assert!(!type_fits("varchar(64)", "bigint") && !type_fits("uniontype<int,string>", "string"));
    assert_eq!("array<VarChar(5)>".parse::<HiveType>().unwrap().to_string(), "array<string>");
}

#[test]
fn local_destinations_become_absolute_file_locations() {
    assert_eq!(table_location("s3://b/lake").unwrap(), "s3://b/lake/");
    let loc = table_location("./lake").unwrap();
    assert!(loc.starts_with("file:///") && loc.ends_with("/lake/"), "{loc}");
}
