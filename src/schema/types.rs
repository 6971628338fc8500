//! Athena / Hive column types: parsing `struct<a:string,b:array<int>>`,
//! printing them back, and mapping them to Arrow.

use std::fmt;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, TimeUnit};

/// Largest decimal precision Athena accepts (and Arrow's Decimal128 holds).
pub const MAX_DECIMAL_PRECISION: u8 = 38;

/// How deeply types may nest (`array<array<...>>` is two levels). Deeper
/// types are refused in schema files and inferred as `string`: every
/// recursion over a type (Arrow, Parquet, builders, DDL) stays shallow, and
/// no realistic event nests this deep.
pub const MAX_TYPE_DEPTH: usize = 32;

/// A column type with its Athena / Hive name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HiveType {
    /// `string`: UTF-8 text.
    String,
    /// `boolean`.
    Boolean,
    /// `int`: 32-bit signed.
    Int,
    /// `bigint`: 64-bit signed.
    BigInt,
    /// `float`: 32-bit IEEE.
    Float,
    /// `double`: 64-bit IEEE.
    Double,
    /// `decimal(p,s)`: exact decimal, stored as Decimal128.
    Decimal {
        /// Total digits, 1..=38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: i8,
    },
    /// `date`: calendar date, `YYYY-MM-DD` in JSON.
    Date,
    /// `timestamp`: UTC instant in milliseconds.
    Timestamp,
    /// `array<T>`.
    Array(Box<HiveType>),
    /// `struct<name:T,...>`: fields in declared order.
    Struct(Vec<StructField>),
    /// `map<string,T>`: JSON objects with arbitrary keys.
    Map(Box<HiveType>),
}

/// One field of a `struct<...>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StructField {
    /// Field name as it appears in the JSON.
    pub name: String,
    /// Field type.
    pub ty: HiveType,
}

/// Why a type string did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeParseError {
    /// What went wrong, with the position.
    pub message: String,
}

impl fmt::Display for TypeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::str::FromStr for HiveType {
    type Err = TypeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = TypeParser { s, pos: 0, depth: 0 };
        let ty = p.parse_type()?;
        p.skip_ws();
        if p.pos != s.len() {
            return Err(p.error("unexpected text after the type"));
        }
        Ok(ty)
    }
}

struct TypeParser<'a> {
    s: &'a str,
    pos: usize,
    /// Types open at `pos`, at most [`MAX_TYPE_DEPTH`].
    depth: usize,
}

impl TypeParser<'_> {
    fn error(&self, what: &str) -> TypeParseError {
        TypeParseError {
            message: format!(
                "{what} at position {} of `{}`; expected a type such as string, bigint, double, \
                 decimal(10,2), timestamp, array<string>, struct<a:string>, map<string,int>",
                self.pos, self.s
            ),
        }
    }

    fn skip_ws(&mut self) {
        while self.s[self.pos..].starts_with(char::is_whitespace) {
            self.pos += self.s[self.pos..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), TypeParseError> {
        if self.eat(c) { Ok(()) } else { Err(self.error(&format!("expected `{c}`"))) }
    }

    /// A word: letters, digits and `_` (type names and struct field names).
    /// Struct field names may also be back-quoted to allow other characters,
    /// with a back-quote in the name doubled (as Hive writes it).
    fn word(&mut self) -> Result<String, TypeParseError> {
        self.skip_ws();
        let rest = &self.s[self.pos..];
        if let Some(quoted) = rest.strip_prefix('`') {
            let mut name = String::new();
            let mut i = 0;
            loop {
                let end = quoted[i..].find('`').ok_or_else(|| self.error("unterminated back-quote"))? + i;
                name.push_str(&quoted[i..end]);
                if quoted[end + 1..].starts_with('`') {
                    name.push('`');
                    i = end + 2;
                } else {
                    self.pos += end + 2;
                    return Ok(name);
                }
            }
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        self.pos += len;
        Ok(rest[..len].to_string())
    }

    fn number(&mut self) -> Result<u32, TypeParseError> {
        let w = self.word()?;
        w.parse().map_err(|_| self.error("expected a number"))
    }

    fn parse_type(&mut self) -> Result<HiveType, TypeParseError> {
        if self.depth == MAX_TYPE_DEPTH {
            return Err(self.error(&format!("types nest at most {MAX_TYPE_DEPTH} levels deep")));
        }
        self.depth += 1;
        let ty = self.parse_type_here();
        self.depth -= 1;
        ty
    }

    fn parse_type_here(&mut self) -> Result<HiveType, TypeParseError> {
        let name = self.word()?.to_ascii_lowercase();
        Ok(match name.as_str() {
            "string" | "varchar" | "char" => {
                // varchar(n) / char(n): the length is advisory in Parquet.
                if self.eat('(') {
                    self.number()?;
                    self.expect(')')?;
                }
                HiveType::String
            }
            "boolean" | "bool" => HiveType::Boolean,
            "int" | "integer" => HiveType::Int,
            "bigint" | "long" => HiveType::BigInt,
            "float" | "real" => HiveType::Float,
            "double" => HiveType::Double,
            "date" => HiveType::Date,
            "timestamp" => HiveType::Timestamp,
            "decimal" => {
                let (mut precision, mut scale) = (10, 0);
                if self.eat('(') {
                    precision = self.number()?;
                    if self.eat(',') {
                        scale = self.number()?;
                    }
                    self.expect(')')?;
                }
                if precision == 0 || precision > u32::from(MAX_DECIMAL_PRECISION) || scale > precision {
                    return Err(self.error("decimal needs 1 <= precision <= 38 and scale <= precision"));
                }
                HiveType::Decimal { precision: precision as u8, scale: scale as i8 }
            }
            "array" => {
                self.expect('<')?;
                let item = self.parse_type()?;
                self.expect('>')?;
                HiveType::Array(Box::new(item))
            }
            "map" => {
                self.expect('<')?;
                let key = self.parse_type()?;
                if key != HiveType::String {
                    return Err(self.error("map keys must be string (JSON object keys are text)"));
                }
                self.expect(',')?;
                let value = self.parse_type()?;
                self.expect('>')?;
                HiveType::Map(Box::new(value))
            }
            "struct" => {
                self.expect('<')?;
                let mut fields: Vec<StructField> = Vec::new();
                loop {
                    let name = self.word()?;
                    if name.is_empty() {
                        return Err(self.error("struct field names cannot be empty"));
                    }
                    self.expect(':')?;
                    let ty = self.parse_type()?;
                    if fields.iter().any(|f| f.name.eq_ignore_ascii_case(&name)) {
                        return Err(self.error(&format!("duplicate struct field `{name}`")));
                    }
                    fields.push(StructField { name, ty });
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect('>')?;
                HiveType::Struct(fields)
            }
            other => return Err(self.error(&format!("unknown type `{other}`"))),
        })
    }
}

fn needs_quotes(name: &str) -> bool {
    name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_')
}

impl fmt::Display for HiveType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HiveType::String => f.write_str("string"),
            HiveType::Boolean => f.write_str("boolean"),
            HiveType::Int => f.write_str("int"),
            HiveType::BigInt => f.write_str("bigint"),
            HiveType::Float => f.write_str("float"),
            HiveType::Double => f.write_str("double"),
            HiveType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            HiveType::Date => f.write_str("date"),
            HiveType::Timestamp => f.write_str("timestamp"),
            HiveType::Array(item) => write!(f, "array<{item}>"),
            HiveType::Map(value) => write!(f, "map<string,{value}>"),
            HiveType::Struct(fields) => {
                f.write_str("struct<")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    if needs_quotes(&field.name) {
                        write!(f, "`{}`:{}", field.name.replace('`', "``"), field.ty)?;
                    } else {
                        write!(f, "{}:{}", field.name, field.ty)?;
                    }
                }
                f.write_str(">")
            }
        }
    }
}

/// Name of the list element field in Arrow and Parquet (the Parquet spec's name).
pub const LIST_ITEM_NAME: &str = "element";

impl HiveType {
    /// The Arrow type this column is built and written as. Timestamps are
    /// `Timestamp(ms, "UTC")`, so Parquet marks them adjusted-to-UTC.
    pub fn to_arrow(&self) -> DataType {
        match self {
            HiveType::String => DataType::Utf8,
            HiveType::Boolean => DataType::Boolean,
            HiveType::Int => DataType::Int32,
            HiveType::BigInt => DataType::Int64,
            HiveType::Float => DataType::Float32,
            HiveType::Double => DataType::Float64,
            HiveType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            HiveType::Date => DataType::Date32,
            HiveType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(Arc::from("UTC"))),
            HiveType::Array(item) => DataType::List(Arc::new(Field::new(LIST_ITEM_NAME, item.to_arrow(), true))),
            HiveType::Struct(fields) => DataType::Struct(struct_fields(fields)),
            HiveType::Map(value) => DataType::Map(Arc::new(map_entries_field(value)), false),
        }
    }
}

/// The field ids of a column and of its nested fields, as an Iceberg table
/// assigned them: children by struct field name, `element` for a list's
/// items, `key` and `value` for a map's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIds {
    /// The field's own id.
    pub id: i32,
    /// Its nested fields' ids, by name.
    pub children: Vec<(String, FieldIds)>,
}

impl FieldIds {
    fn child(&self, name: &str) -> Option<&FieldIds> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, ids)| ids)
    }
}

/// An Arrow field as an Iceberg data file stores it: every level carries its
/// field id (`PARQUET:field_id`), so readers match columns by id, and
/// timestamps are microseconds, as the Iceberg spec requires.
pub fn iceberg_field(name: &str, ty: &HiveType, nullable: bool, ids: Option<&FieldIds>) -> Field {
    let data_type = match ty {
        HiveType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
        HiveType::Array(item) => DataType::List(Arc::new(iceberg_field(
            LIST_ITEM_NAME,
            item,
            true,
            ids.and_then(|i| i.child(LIST_ITEM_NAME)),
        ))),
        HiveType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| iceberg_field(&f.name, &f.ty, true, ids.and_then(|i| i.child(&f.name)))).collect(),
        ),
        HiveType::Map(value) => DataType::Map(
            Arc::new(Field::new(
                "key_value",
                DataType::Struct(Fields::from(vec![
                    iceberg_field("key", &HiveType::String, false, ids.and_then(|i| i.child("key"))),
                    iceberg_field("value", value, true, ids.and_then(|i| i.child("value"))),
                ])),
                false,
            )),
            false,
        ),
        other => other.to_arrow(),
    };
    let field = Field::new(name, data_type, nullable);
    match ids {
        Some(ids) => field.with_metadata(
            [(parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_string(), ids.id.to_string())].into_iter().collect(),
        ),
        None => field,
    }
}

/// Arrow fields of a struct: all nullable, since JSON may omit any of them.
pub fn struct_fields(fields: &[StructField]) -> Fields {
    fields.iter().map(|f| Field::new(&f.name, f.ty.to_arrow(), true)).collect()
}

/// The `key_value` entries field of a map, named as the Parquet spec does.
pub fn map_entries_field(value: &HiveType) -> Field {
    Field::new(
        "key_value",
        DataType::Struct(Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", value.to_arrow(), true),
        ])),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_type() {
        for s in [
            "string",
            "boolean",
            "int",
            "bigint",
            "float",
            "double",
            "decimal(10,2)",
            "date",
            "timestamp",
            "array<string>",
            "map<string,bigint>",
            "struct<os:string,browser:string,version:string>",
            "array<struct<a:int,b:array<map<string,double>>>>",
            "struct<`odd name`:int>",
            "struct<`a``b`:int,`c:d`:string,`e<f>`:string>",
        ] {
            let t: HiveType = s.parse().unwrap();
            assert_eq!(t.to_string(), s);
        }
    }

    #[test]
    fn types_nest_at_most_max_type_depth() {
        let nested = |n: usize| format!("{}int{}", "array<".repeat(n - 1), ">".repeat(n - 1));
        assert!(nested(MAX_TYPE_DEPTH).parse::<HiveType>().is_ok());
        let err = nested(MAX_TYPE_DEPTH + 1).parse::<HiveType>().unwrap_err().to_string();
        assert!(err.contains("at most 32 levels"), "{err}");
        // Fails fast, without recursing through the whole text.
        assert!(nested(100_000).parse::<HiveType>().is_err());
    }

    #[test]
    fn accepts_spaces_case_and_aliases() {
        let t: HiveType = " STRUCT< a : INT , b : Array<VarChar(10)> > ".parse().unwrap();
        assert_eq!(t.to_string(), "struct<a:int,b:array<string>>");
        assert_eq!("decimal".parse::<HiveType>().unwrap().to_string(), "decimal(10,0)");
    }

    #[test]
    fn explains_bad_types() {
        for (s, want) in [
            ("strin", "unknown type `strin`"),
            ("array<string", "expected `>`"),
            ("decimal(40,2)", "precision <= 38"),
            ("map<int,string>", "map keys must be string"),
            ("struct<a:int,A:int>", "duplicate struct field `A`"),
            ("int int", "unexpected text"),
            ("struct<``:int>", "cannot be empty"),
            ("struct<`a:int>", "unterminated back-quote"),
        ] {
            let err = s.parse::<HiveType>().unwrap_err().to_string();
            assert!(err.contains(want), "{s}: {err}");
        }
    }
}
