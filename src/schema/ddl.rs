//! Athena `CREATE EXTERNAL TABLE` for the lake, with partition projection
//! matching the partition template, so new partitions are queryable without
//! `MSCK REPAIR TABLE` or a Glue crawler.

use std::fmt::Write as _;

use super::{EXTRA_COLUMN, Schema, UnknownFieldPolicy};
use crate::error::{Error, Result};
use crate::partition::{KeyKind, PartitionTemplate};

/// What the DDL is for.
#[derive(Debug, Clone)]
pub struct DdlOptions {
    /// `db.table` or `table`.
    pub table: String,
    /// `s3://bucket/prefix/` of the lake.
    pub location: String,
    /// The partition template the lake is written with.
    pub template: PartitionTemplate,
    /// Adds the `_extra` column when `keep`.
    pub unknown_fields: UnknownFieldPolicy,
    /// First year of the `yyyy` projection range (last is 2099).
    pub first_year: u32,
}

fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// Projection properties of one time pattern.
fn time_projection(name: &str, pattern: &str, first_year: u32) -> Vec<(String, String)> {
    let p = |k: &str, v: String| (format!("projection.{name}.{k}"), v);
    let int = |lo: u32, hi: u32, digits: u32| {
        vec![p("type", "integer".into()), p("range", format!("{lo},{hi}")), p("digits", digits.to_string())]
    };
    match pattern {
        "yyyy" => int(first_year, 2099, 4),
        "MM" => int(1, 12, 2),
        "dd" => int(1, 31, 2),
        "HH" => int(0, 23, 2),
        "mm" => int(0, 59, 2),
        // A composite pattern (yyyy-MM-dd, yyyy-MM-dd-HH) is a date projection.
        _ => {
            let unit = if pattern.contains("mm") {
                "MINUTES"
            } else if pattern.contains("HH") {
                "HOURS"
            } else if pattern.contains("dd") {
                "DAYS"
            } else if pattern.contains("MM") {
                "MONTHS"
            } else {
                "YEARS"
            };
            vec![
                p("type", "date".into()),
                p("format", pattern.to_string()),
                p("range", format!("{first_year}-01-01,NOW")),
                p("interval", "1".into()),
                p("interval.unit", unit.into()),
            ]
        }
    }
}

/// The lake as a table: what `schema ddl` prints and what a Glue catalog
/// holds (see `crate::catalog`). Partition keys leave the column list (their
/// values live in the path only, the Athena convention).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDefinition {
    /// Data columns (name, Hive type), in file order; `_extra` last with `keep`.
    pub columns: Vec<(String, String)>,
    /// Names of the data columns records must have (`required`).
    pub required: Vec<String>,
    /// Partition columns (all `string`), in path order.
    pub partition_keys: Vec<String>,
    /// `s3://bucket/prefix/` of the lake, ending in `/`.
    pub location: String,
    /// Table properties: Snappy, and the partition projection when asked.
    pub parameters: Vec<(String, String)>,
}

/// The table of `schema` written with `template` at `location`; with
/// `projection` (its first year), Athena partition projection properties
/// that follow the template, so new partitions need no registration.
pub fn table_definition(
    schema: &Schema,
    template: &PartitionTemplate,
    unknown_fields: UnknownFieldPolicy,
    location: &str,
    projection: Option<u32>,
) -> Result<TableDefinition> {
    let keys = template.keys();
    let expressions = template.source().matches("!{").count();
    if expressions != keys.len() {
        return Err(Error::Config(format!(
            "partition template `{}`: a table needs every !{{...}} in its own `name=!{{...}}` path segment to map \
             it to a partition column",
            template.source()
        )));
    }
    let mut columns: Vec<(String, String)> = schema
        .columns
        .iter()
        .filter(|c| !keys.iter().any(|k| k.name.eq_ignore_ascii_case(&c.name)))
        .map(|c| (c.name.clone(), c.ty.to_string()))
        .collect();
    if unknown_fields.keeps_extra() {
        columns.push((EXTRA_COLUMN.to_string(), "string".to_string()));
    }
    let location = location.trim_end_matches('/').to_string() + "/";
    let mut parameters: Vec<(String, String)> = vec![("parquet.compression".into(), "SNAPPY".into())];
    if let Some(first_year) = projection.filter(|_| !keys.is_empty()) {
        parameters.push(("projection.enabled".into(), "true".into()));
        for k in keys {
            match &k.kind {
                KeyKind::Time(pattern) => parameters.extend(time_projection(&k.name, pattern, first_year)),
                // Field values are unbounded: queries must name them (WHERE key = '...').
                KeyKind::Field(_) => parameters.push((format!("projection.{}.type", k.name), "injected".into())),
            }
        }
        let mut location_template = location.clone();
        for seg in template.source().split('/').filter(|s| !s.is_empty()) {
            match keys.iter().find(|k| seg.starts_with(&format!("{}=", k.name))) {
                Some(k) => {
                    let _ = write!(location_template, "{}=${{{}}}/", k.name, k.name);
                }
                None => {
                    let _ = write!(location_template, "{seg}/");
                }
            }
        }
        parameters.push(("storage.location.template".into(), location_template));
    }
    let required = schema
        .columns
        .iter()
        .filter(|c| c.required && columns.iter().any(|(n, _)| n == &c.name))
        .map(|c| c.name.clone())
        .collect();
    let partition_keys = keys.iter().map(|k| k.name.clone()).collect();
    Ok(TableDefinition { columns, required, partition_keys, location, parameters })
}

/// The Athena DDL for `schema` stored with `opts.template`.
pub fn create_table_ddl(schema: &Schema, opts: &DdlOptions) -> Result<String> {
    let def = table_definition(schema, &opts.template, opts.unknown_fields, &opts.location, Some(opts.first_year))?;
    let table = opts.table.split('.').map(quote_ident).collect::<Vec<_>>().join(".");
    let mut out = format!("CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n");
    let cols: Vec<String> = def.columns.iter().map(|(name, ty)| format!("  {} {ty}", quote_ident(name))).collect();
    out.push_str(&cols.join(",\n"));
    out.push_str("\n)\n");
    if !def.partition_keys.is_empty() {
        let parts: Vec<String> = def.partition_keys.iter().map(|k| format!("{} string", quote_ident(k))).collect();
        let _ = writeln!(out, "PARTITIONED BY ({})", parts.join(", "));
    }
    out.push_str("STORED AS PARQUET\n");
    let _ = writeln!(out, "LOCATION '{}'", opts.location.replace('\'', "''"));
    out.push_str("TBLPROPERTIES (\n");
    let props: Vec<String> = def
        .parameters
        .iter()
        .map(|(k, v)| format!("  '{}'='{}'", k.replace('\'', "''"), v.replace('\'', "''")))
        .collect();
    out.push_str(&props.join(",\n"));
    out.push_str("\n);\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::DEFAULT_TEMPLATE;

    fn schema() -> Schema {
        Schema::parse(
            "[[columns]]\nname=\"id\"\ntype=\"string\"\n[[columns]]\nname=\"region\"\ntype=\"string\"\n\
             [[columns]]\nname=\"device\"\ntype=\"struct<os:string>\"\n",
            false,
        )
        .unwrap()
    }

    #[test]
    fn hourly_template_projects_integers() {
        let ddl = create_table_ddl(
            &schema(),
            &DdlOptions {
                table: "db.events".into(),
                location: "s3://lake/events/".into(),
                template: PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap(),
                unknown_fields: UnknownFieldPolicy::Keep,
                first_year: 2020,
            },
        )
        .unwrap();
        assert!(ddl.starts_with("CREATE EXTERNAL TABLE IF NOT EXISTS `db`.`events` (\n  `id` string,"), "{ddl}");
        assert!(ddl.contains("`device` struct<os:string>,\n  `_extra` string\n)"), "{ddl}");
        assert!(ddl.contains("PARTITIONED BY (`year` string, `month` string, `day` string, `hour` string)"));
        assert!(ddl.contains("'projection.month.range'='1,12'") && ddl.contains("'projection.hour.digits'='2'"));
        assert!(ddl.contains(
            "'storage.location.template'='s3://lake/events/year=${year}/month=${month}/day=${day}/hour=${hour}/'"
        ));
        assert!(ddl.contains("STORED AS PARQUET\nLOCATION 's3://lake/events/'"));
    }

    #[test]
    fn field_keys_are_injected_and_leave_the_column_list() {
        let ddl = create_table_ddl(
            &schema(),
            &DdlOptions {
                table: "events".into(),
                location: "s3://lake/e".into(),
                template: PartitionTemplate::parse("region=!{field:region}/dt=!{timestamp:yyyy-MM-dd}/").unwrap(),
                unknown_fields: UnknownFieldPolicy::Drop,
                first_year: 2024,
            },
        )
        .unwrap();
        assert!(!ddl.contains("  `region` string,"), "{ddl}");
        assert!(ddl.contains("'projection.region.type'='injected'"));
        assert!(ddl.contains("'projection.dt.type'='date'") && ddl.contains("'projection.dt.interval.unit'='DAYS'"));
        assert!(!ddl.contains("_extra"));
    }

    #[test]
    fn unnamed_expressions_are_refused() {
        let err = create_table_ddl(
            &schema(),
            &DdlOptions {
                table: "t".into(),
                location: "s3://b/".into(),
                template: PartitionTemplate::parse("!{timestamp:yyyy}/").unwrap(),
                unknown_fields: UnknownFieldPolicy::Keep,
                first_year: 2024,
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("name=!{...}"));
    }
}
