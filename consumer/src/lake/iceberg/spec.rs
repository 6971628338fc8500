//! The Iceberg table a lake's config describes: columns and types from the
//! schema, the partition spec from the partition template, and, back from a
//! table, the field ids the data files carry and each file's partition value.
//!
//! Template to spec: the time keys of a template (`year=!{timestamp:yyyy}/…
//! hour=!{timestamp:HH}/`) become one transform of `time_field`, the finest
//! the keys show (`hour(ts)`); `name=!{field:x}` becomes `identity(x)`. Data
//! files keep the template's hive-style folders under `data/`, so a file's
//! partition value is read back from its folder.

use std::collections::BTreeMap;
use std::sync::Arc;

use iceberg::spec::{
    ListType, Literal, MapType, NestedField, NestedFieldRef, PrimitiveType, Schema as IcebergSchema, StructType,
    Transform, Type, UnboundPartitionSpec,
};
use shardlake::partition::{HIVE_DEFAULT_PARTITION, KeyKind, PartitionTemplate};
use shardlake::schema::{EXTRA_COLUMN, FieldIds, HiveType, LIST_ITEM_NAME, Schema};

/// Why a config has no Iceberg table: names the key and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// The Iceberg schema of `schema` (plus `_extra` when unknown fields are
/// kept), with fresh field ids from 1 in depth-first order. A table created
/// from it assigns its own ids; [`field_ids`] reads them back.
pub fn iceberg_schema(schema: &Schema, extra_column: bool) -> Result<IcebergSchema, SpecError> {
    let mut next = 0;
    let mut id = || {
        next += 1;
        next
    };
    let mut fields: Vec<NestedFieldRef> = Vec::new();
    for c in &schema.columns {
        let field_id = id();
        let ty = iceberg_type(&c.ty, &mut id);
        fields.push(Arc::new(NestedField::new(field_id, &c.name, ty, c.required)));
    }
    if extra_column {
        fields.push(Arc::new(NestedField::optional(id(), EXTRA_COLUMN, Type::Primitive(PrimitiveType::String))));
    }
    IcebergSchema::builder()
        .with_fields(fields)
        .build()
        .map_err(|e| SpecError(format!("the schema has no Iceberg equivalent: {e}")))
}

/// The Iceberg type of a column type. Timestamps are `timestamptz`
/// (microseconds, UTC), as the data files store them.
pub fn iceberg_type(ty: &HiveType, id: &mut impl FnMut() -> i32) -> Type {
    let primitive = |p| Type::Primitive(p);
    match ty {
        HiveType::String => primitive(PrimitiveType::String),
        HiveType::Boolean => primitive(PrimitiveType::Boolean),
        HiveType::Int => primitive(PrimitiveType::Int),
        HiveType::BigInt => primitive(PrimitiveType::Long),
        HiveType::Float => primitive(PrimitiveType::Float),
        HiveType::Double => primitive(PrimitiveType::Double),
        HiveType::Decimal { precision, scale } => {
            primitive(PrimitiveType::Decimal { precision: u32::from(*precision), scale: (*scale).max(0) as u32 })
        }
        HiveType::Date => primitive(PrimitiveType::Date),
        HiveType::Timestamp => primitive(PrimitiveType::Timestamptz),
        HiveType::Array(item) => {
            let element_id = id();
            let element = iceberg_type(item, id);
            Type::List(ListType::new(Arc::new(NestedField::list_element(element_id, element, false))))
        }
        HiveType::Struct(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                let field_id = id();
                out.push(Arc::new(NestedField::optional(field_id, &f.name, iceberg_type(&f.ty, id))));
            }
            Type::Struct(StructType::new(out))
        }
        HiveType::Map(value) => {
            let (key_id, value_id) = (id(), id());
            let value = iceberg_type(value, id);
            Type::Map(MapType::new(
                Arc::new(NestedField::map_key_element(key_id, primitive(PrimitiveType::String))),
                Arc::new(NestedField::map_value_element(value_id, value, false)),
            ))
        }
    }
}

/// The field ids of the data file columns, read from the table's schema by
/// name: what the Parquet files carry so that readers match columns by id.
/// A column the table lacks, or whose type differs, is an error naming it.
pub fn field_ids(table: &IcebergSchema, schema: &Schema, extra_column: bool) -> Result<Vec<FieldIds>, SpecError> {
    let mut out = Vec::with_capacity(schema.columns.len() + 1);
    for c in &schema.columns {
        let Some(field) = table.field_by_name(&c.name) else {
            return err(format!(
                "the Iceberg table has no column `{}`; add it to the table (or set unknown_fields = \"evolve\")",
                c.name
            ));
        };
        out.push(ids_of(field, &c.ty, &c.name)?);
    }
    if extra_column {
        let Some(field) = table.field_by_name(EXTRA_COLUMN) else {
            return err(format!(
                "the Iceberg table has no `{EXTRA_COLUMN}` column for unknown fields (unknown_fields = \"keep\"); \
                 add it as a string column or choose another unknown_fields policy"
            ));
        };
        out.push(ids_of(field, &HiveType::String, EXTRA_COLUMN)?);
    }
    Ok(out)
}

fn ids_of(field: &NestedField, ty: &HiveType, path: &str) -> Result<FieldIds, SpecError> {
    let mismatch = || {
        let mut probe = 0;
        let ours = iceberg_type(ty, &mut || {
            probe += 1;
            probe
        });
        SpecError(format!(
            "column `{path}` is {} in the Iceberg table but `{ty}` ({}) in the schema; make them agree",
            field.field_type, ours
        ))
    };
    let children = match (ty, field.field_type.as_ref()) {
        (HiveType::Array(item), Type::List(list)) => {
            vec![(LIST_ITEM_NAME.to_string(), ids_of(&list.element_field, item, &format!("{path}[]"))?)]
        }
        (HiveType::Struct(fields), Type::Struct(st)) => {
            let mut children = Vec::with_capacity(fields.len());
            for f in fields {
                let child_path = format!("{path}.{}", f.name);
                let Some(child) = st.field_by_name(&f.name) else {
                    return err(format!("the Iceberg table's struct `{path}` has no field `{}`", f.name));
                };
                children.push((f.name.clone(), ids_of(child, &f.ty, &child_path)?));
            }
            children
        }
        (HiveType::Map(value), Type::Map(map)) => vec![
            ("key".to_string(), FieldIds { id: map.key_field.id, children: Vec::new() }),
            ("value".to_string(), ids_of(&map.value_field, value, &format!("{path}.value"))?),
        ],
        (_, Type::Primitive(p)) if Some(p) == primitive_of(ty).as_ref() => Vec::new(),
        _ => return Err(mismatch()),
    };
    Ok(FieldIds { id: field.id, children })
}

fn primitive_of(ty: &HiveType) -> Option<PrimitiveType> {
    match iceberg_type(ty, &mut || 0) {
        Type::Primitive(p) => Some(p),
        _ => None,
    }
}

/// How a time key's value is read back: the units a pattern shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimeUnit {
    /// `yyyy`
    Year,
    /// `MM`
    Month,
    /// `dd`
    Day,
    /// `HH`
    Hour,
}

/// Where each value of a template's keys goes in the partition tuple.
#[derive(Debug, Clone)]
enum KeyRole {
    /// A time key with its pattern, parsed.
    Time(Vec<PatternToken>),
    /// `identity` of the column at this index of the spec's fields.
    Identity { field: usize, ty: PrimitiveType, column: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternToken {
    Unit(TimeUnit),
    Separator(char),
}

/// The partition spec of a template, and how to turn a rendered partition
/// folder back into the spec's partition tuple.
#[derive(Debug, Clone)]
pub struct PartitionMapping {
    template: PartitionTemplate,
    roles: Vec<KeyRole>,
    /// The finest time unit, at field 0 of the spec, when the template has time keys.
    time: Option<TimeUnit>,
    fields: usize,
}

impl PartitionMapping {
    /// Maps `template` onto `schema` (time keys on `time_field`). A template
    /// Iceberg cannot express is an error naming the part and the fix.
    pub fn new(template: &PartitionTemplate, time_field: Option<&str>, schema: &Schema) -> Result<Self, SpecError> {
        let source = template.source();
        let expressions = source.matches("!{").count();
        if expressions != template.keys().len() {
            return err(format!(
                "partition template `{source}` has no Iceberg equivalent: every expression must be a whole \
                 `name=!{{...}}` folder (e.g. year=!{{timestamp:yyyy}}/, type=!{{field:type}}/)"
            ));
        }
        let mut roles = Vec::new();
        let mut units: Vec<TimeUnit> = Vec::new();
        let mut identities: Vec<(String, PrimitiveType)> = Vec::new();
        for key in template.keys() {
            match &key.kind {
                KeyKind::Time(pattern) => {
                    let tokens = parse_pattern(pattern, source)?;
                    for t in &tokens {
                        if let PatternToken::Unit(u) = t {
                            if units.contains(u) {
                                return err(format!(
                                    "partition template `{source}` shows the {u:?} twice; Iceberg needs each once"
                                ));
                            }
                            units.push(*u);
                        }
                    }
                    roles.push(KeyRole::Time(tokens));
                }
                KeyKind::Field(path) => {
                    let ty = identity_source(schema, path, source)?;
                    if identities.iter().any(|(p, _)| p == path) {
                        return err(format!("partition template `{source}` reads field `{path}` twice"));
                    }
                    identities.push((path.clone(), ty.clone()));
                    roles.push(KeyRole::Identity { field: 0, ty, column: path.clone() });
                }
            }
        }
        units.sort();
        let chain = [TimeUnit::Year, TimeUnit::Month, TimeUnit::Day, TimeUnit::Hour];
        if units.iter().zip(chain).any(|(u, c)| *u != c) {
            return err(format!(
                "partition template `{source}`: Iceberg partitions by one of year, month, day or hour of the \
                 time field, so the time keys must show yyyy, then MM, dd, HH in that chain (yyyy/MM/dd/HH, \
                 yyyy-MM-dd, ...), without gaps"
            ));
        }
        let time = units.last().copied();
        if time.is_some() {
            let Some(field) = time_field else {
                return err(format!(
                    "partition template `{source}` partitions by time, which an Iceberg table takes from a \
                     column: set time_field to the schema's timestamp column (the arrival time has no column)"
                ));
            };
            match column_type(schema, field) {
                Some(HiveType::Timestamp) => {}
                Some(other) => {
                    return err(format!(
                        "time_field `{field}` is `{other}`; an Iceberg table partitions by a `timestamp` \
                         column: declare it as timestamp in the schema"
                    ));
                }
                None => return err(format!("time_field `{field}` is not a column of the schema; add it as timestamp")),
            }
        }
        // Identity fields follow the time field in the spec.
        let offset = usize::from(time.is_some());
        let mut next = offset;
        for role in &mut roles {
            if let KeyRole::Identity { field, .. } = role {
                *field = next;
                next += 1;
            }
        }
        Ok(PartitionMapping { template: template.clone(), roles, time, fields: next })
    }

    /// The unbound partition spec, with source ids from `schema` (an
    /// Iceberg schema with the same columns).
    pub fn spec(&self, schema: &IcebergSchema, time_field: Option<&str>) -> Result<UnboundPartitionSpec, SpecError> {
        let source_id = |path: &str| {
            schema
                .field_by_name(path)
                .map(|f| f.id)
                .ok_or_else(|| SpecError(format!("the Iceberg table has no column `{path}` to partition by")))
        };
        let mut builder = UnboundPartitionSpec::builder();
        let add = |b: iceberg::spec::UnboundPartitionSpecBuilder, id, name: String, t| {
            b.add_partition_field(id, name, t).map_err(|e| SpecError(format!("partition spec: {e}")))
        };
        if let (Some(unit), Some(field)) = (self.time, time_field) {
            let (transform, suffix) = match unit {
                TimeUnit::Year => (Transform::Year, "year"),
                TimeUnit::Month => (Transform::Month, "month"),
                TimeUnit::Day => (Transform::Day, "day"),
                TimeUnit::Hour => (Transform::Hour, "hour"),
            };
            builder = add(builder, source_id(field)?, format!("{}_{suffix}", field.replace('.', "_")), transform)?;
        }
        for role in &self.roles {
            if let KeyRole::Identity { column, .. } = role {
                builder = add(builder, source_id(column)?, column.replace('.', "_"), Transform::Identity)?;
            }
        }
        Ok(builder.build())
    }

    /// The partition tuple of a data file in `folder` (a path the template
    /// rendered): the time transform's value and each identity value, `None`
    /// for the default partition (a missing value).
    pub fn partition_of(&self, folder: &str) -> Result<Vec<Option<Literal>>, SpecError> {
        let values = self
            .template
            .key_values(folder)
            .ok_or_else(|| SpecError(format!("folder `{folder}` does not follow the partition template")))?;
        let mut tuple: Vec<Option<Literal>> = vec![None; self.fields];
        let mut when = BTreeMap::new();
        let mut time_missing = false;
        for (role, value) in self.roles.iter().zip(&values) {
            let missing = value == HIVE_DEFAULT_PARTITION;
            match role {
                KeyRole::Time(tokens) if missing => time_missing = true,
                KeyRole::Time(tokens) => read_time(tokens, value, &mut when).ok_or_else(|| {
                    SpecError(format!("folder `{folder}`: `{value}` does not match its time pattern"))
                })?,
                KeyRole::Identity { .. } if missing => {}
                KeyRole::Identity { field, ty, column } => {
                    tuple[*field] = Some(identity_literal(ty, value).ok_or_else(|| {
                        SpecError(format!("folder `{folder}`: `{value}` is not a {ty} value of `{column}`"))
                    })?)
                }
            }
        }
        if let Some(unit) = self.time
            && !time_missing
        {
            tuple[0] = Some(Literal::int(
                transform_value(unit, &when)
                    .ok_or_else(|| SpecError(format!("folder `{folder}` names no valid date")))?,
            ));
        }
        Ok(tuple)
    }
}

fn parse_pattern(pattern: &str, template: &str) -> Result<Vec<PatternToken>, SpecError> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        let (token, len) = match rest {
            r if r.starts_with("yyyy") => (PatternToken::Unit(TimeUnit::Year), 4),
            r if r.starts_with("MM") => (PatternToken::Unit(TimeUnit::Month), 2),
            r if r.starts_with("dd") => (PatternToken::Unit(TimeUnit::Day), 2),
            r if r.starts_with("HH") => (PatternToken::Unit(TimeUnit::Hour), 2),
            r if r.starts_with("yy") || r.starts_with("mm") || r.starts_with("ss") => {
                return err(format!(
                    "partition template `{template}`: `{}` in !{{timestamp:{pattern}}} has no Iceberg transform; \
                     Iceberg partitions by yyyy, MM, dd or HH of the time field",
                    &r[..2]
                ));
            }
            _ => (PatternToken::Separator(c), c.len_utf8()),
        };
        out.push(token);
        rest = &rest[len..];
    }
    Ok(out)
}

/// Reads a rendered time value against its pattern into `when` (unit → number).
fn read_time(tokens: &[PatternToken], value: &str, when: &mut BTreeMap<TimeUnit, i64>) -> Option<()> {
    let mut rest = value;
    for t in tokens {
        match t {
            PatternToken::Separator(c) => rest = rest.strip_prefix(*c)?,
            PatternToken::Unit(u) => {
                let width = if *u == TimeUnit::Year { 4 } else { 2 };
                let digits = rest.get(..width)?;
                if !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                when.insert(*u, digits.parse().ok()?);
                rest = &rest[width..];
            }
        }
    }
    rest.is_empty().then_some(())
}

/// The value of Iceberg's `year`/`month`/`day`/`hour` transform for a time
/// shown down to `unit`: years, months, days or hours since 1970-01-01.
pub fn transform_value(unit: TimeUnit, when: &BTreeMap<TimeUnit, i64>) -> Option<i32> {
    let year = *when.get(&TimeUnit::Year)?;
    let month = when.get(&TimeUnit::Month).copied().unwrap_or(1);
    let day = when.get(&TimeUnit::Day).copied().unwrap_or(1);
    let hour = when.get(&TimeUnit::Hour).copied().unwrap_or(0);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || !(0..24).contains(&hour) {
        return None;
    }
    let date = chrono::NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, month as u32, day as u32)?;
    let days = (date - chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?).num_days();
    let value = match unit {
        TimeUnit::Year => year - 1970,
        TimeUnit::Month => (year - 1970) * 12 + month - 1,
        TimeUnit::Day => days,
        TimeUnit::Hour => days * 24 + hour,
    };
    i32::try_from(value).ok()
}

fn column_type<'a>(schema: &'a Schema, path: &str) -> Option<&'a HiveType> {
    let mut parts = path.split('.');
    let top = parts.next()?;
    let mut ty = &schema.columns.iter().find(|c| c.name == top)?.ty;
    for part in parts {
        let HiveType::Struct(fields) = ty else { return None };
        ty = &fields.iter().find(|f| f.name == part)?.ty;
    }
    Some(ty)
}

fn identity_source(schema: &Schema, path: &str, template: &str) -> Result<PrimitiveType, SpecError> {
    let Some(ty) = column_type(schema, path) else {
        return err(format!(
            "partition template `{template}` reads field `{path}`, which an Iceberg table partitions by as a \
             column: add `{path}` to the schema"
        ));
    };
    match primitive_of(ty) {
        Some(p @ (PrimitiveType::String | PrimitiveType::Int | PrimitiveType::Long | PrimitiveType::Boolean)) => Ok(p),
        _ => err(format!(
            "partition template `{template}` reads field `{path}` of type `{ty}`; an Iceberg identity partition \
             here must be string, int, bigint or boolean"
        )),
    }
}

fn identity_literal(ty: &PrimitiveType, value: &str) -> Option<Literal> {
    Some(match ty {
        PrimitiveType::String => Literal::string(value),
        PrimitiveType::Int => Literal::int(value.parse::<i32>().ok()?),
        PrimitiveType::Long => Literal::long(value.parse::<i64>().ok()?),
        PrimitiveType::Boolean => Literal::bool(value.parse::<bool>().ok()?),
        _ => return None,
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;

/// The Hive (Glue, Athena) name of an Iceberg type: the types shardlake
/// writes by their schema names (`timestamptz` as `timestamp`), any other
/// primitive named by `other`.
pub fn hive_type_name(ty: &Type, other: &dyn Fn(&PrimitiveType) -> String) -> String {
    match ty {
        Type::Primitive(p) => match p {
            PrimitiveType::String => "string".into(),
            PrimitiveType::Boolean => "boolean".into(),
            PrimitiveType::Int => "int".into(),
            PrimitiveType::Long => "bigint".into(),
            PrimitiveType::Float => "float".into(),
            PrimitiveType::Double => "double".into(),
            PrimitiveType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            PrimitiveType::Date => "date".into(),
            PrimitiveType::Timestamptz => "timestamp".into(),
            p => other(p),
        },
        Type::List(l) => format!("array<{}>", hive_type_name(&l.element_field.field_type, other)),
        Type::Map(m) => format!(
            "map<{},{}>",
            hive_type_name(&m.key_field.field_type, other),
            hive_type_name(&m.value_field.field_type, other)
        ),
        Type::Struct(s) => format!(
            "struct<{}>",
            s.fields()
                .iter()
                .map(|f| format!("{}:{}", f.name, hive_type_name(&f.field_type, other)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}
