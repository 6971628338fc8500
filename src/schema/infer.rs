//! Schema inference from sample records, widening types as samples disagree:
//! int + float -> double, any two other scalar kinds -> string, objects merge
//! their keys (first-seen order), strings that all look like RFC 3339
//! timestamps (or dates) become `timestamp` (or `date`).
//!
//! Whatever the samples hold, the schema it gives loads, converts and is
//! accepted by Athena: values nested deeper than [`MAX_TYPE_DEPTH`] become
//! `string` (their JSON text), a key that differs from an earlier one only in
//! case (Athena folds case) and empty keys are left out (their values land in
//! `_extra`), as are keys past [`MAX_INFERRED_FIELDS`] in one object.

use std::collections::HashMap;

use sonic_rs::{JsonContainerTrait, JsonType, JsonValueTrait, Value};

use super::{Column, HiveType, MAX_TYPE_DEPTH, Schema, StructField};
use crate::json::Parser;
use crate::time::{parse_date_days, parse_rfc3339_millis};

/// The most fields inference gives one object (the table, or a struct);
/// later keys are left to `_extra`.
pub const MAX_INFERRED_FIELDS: usize = 1000;

/// How many records `--infer-schema` samples by default.
pub const DEFAULT_INFER_SAMPLE: usize = 1000;

/// What the samples of one field have looked like so far.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Null,
    Bool,
    Int,
    Float,
    Str {
        all_timestamps: bool,
        all_dates: bool,
    },
    Array(Box<Seen>),
    Object(Fields),
    /// Scalars of different kinds, or containers mixed with scalars.
    Text,
}

/// The keys of an object seen so far, in first-seen order, with an index by
/// lower-cased name (one lookup per key, however many keys a record has).
#[derive(Debug, Clone, Default)]
struct Fields {
    list: Vec<(String, Seen)>,
    by_folded_name: HashMap<String, usize>,
}

impl PartialEq for Fields {
    fn eq(&self, other: &Self) -> bool {
        self.list == other.list
    }
}

impl Fields {
    /// Merges what one more sample of `key` looked like. Keys that only
    /// differ in case from a known one, empty keys and keys past the limit
    /// are left out.
    fn merge(&mut self, key: &str, seen: Seen) {
        if key.is_empty() {
            return;
        }
        let folded = key.to_lowercase();
        match self.by_folded_name.get(&folded) {
            Some(&i) if self.list[i].0 == key => {
                let old = &mut self.list[i].1;
                *old = std::mem::replace(old, Seen::Null).merge(seen);
            }
            Some(_) => {}
            None if self.list.len() < MAX_INFERRED_FIELDS => {
                self.by_folded_name.insert(folded, self.list.len());
                self.list.push((key.to_string(), seen));
            }
            None => {}
        }
    }
}

impl Seen {
    /// What `v` looks like, `depth` levels of types down (the top-level
    /// column's own type is level 1); from [`MAX_TYPE_DEPTH`] on, containers
    /// are text.
    fn of(v: &Value, depth: usize) -> Seen {
        if depth >= MAX_TYPE_DEPTH && (v.is_array() || v.is_object()) {
            return Seen::Text;
        }
        match v.get_type() {
            JsonType::Null => Seen::Null,
            JsonType::Boolean => Seen::Bool,
            JsonType::Number => {
                // Integers past i64 (`9348844073709551616`) do not fit `bigint`.
                if v.is_i64() { Seen::Int } else { Seen::Float }
            }
            JsonType::String => {
                let s = v.as_str().unwrap_or_default();
                Seen::Str { all_timestamps: parse_rfc3339_millis(s).is_some(), all_dates: parse_date_days(s).is_some() }
            }
            JsonType::Array => {
                let mut item = Seen::Null;
                for x in v.as_array().into_iter().flat_map(|a| a.iter()) {
                    item = item.merge(Seen::of(x, depth + 1));
                }
                Seen::Array(Box::new(item))
            }
            JsonType::Object => {
                let mut fields = Fields::default();
                for (k, x) in v.as_object().into_iter().flat_map(|o| o.iter()) {
                    fields.merge(k, Seen::of(x, depth + 1));
                }
                Seen::Object(fields)
            }
        }
    }

    fn merge(self, other: Seen) -> Seen {
        match (self, other) {
            (Seen::Null, x) | (x, Seen::Null) => x,
            (Seen::Bool, Seen::Bool) => Seen::Bool,
            (Seen::Int, Seen::Int) => Seen::Int,
            (Seen::Int | Seen::Float, Seen::Int | Seen::Float) => Seen::Float,
            (Seen::Str { all_timestamps: a, all_dates: b }, Seen::Str { all_timestamps: c, all_dates: d }) => {
                Seen::Str { all_timestamps: a && c, all_dates: b && d }
            }
            (Seen::Array(a), Seen::Array(b)) => Seen::Array(Box::new(a.merge(*b))),
            (Seen::Object(mut a), Seen::Object(b)) => {
                for (k, x) in b.list {
                    a.merge(&k, x);
                }
                Seen::Object(a)
            }
            _ => Seen::Text,
        }
    }

    fn to_hive(&self) -> HiveType {
        match self {
            Seen::Null | Seen::Text => HiveType::String,
            Seen::Bool => HiveType::Boolean,
            Seen::Int => HiveType::BigInt,
            Seen::Float => HiveType::Double,
            Seen::Str { all_timestamps: true, .. } => HiveType::Timestamp,
            Seen::Str { all_dates: true, .. } => HiveType::Date,
            Seen::Str { .. } => HiveType::String,
            Seen::Array(item) => HiveType::Array(Box::new(item.to_hive())),
            // `{}` alone says nothing about its keys: a map keeps whatever comes.
            Seen::Object(fields) if fields.list.is_empty() => HiveType::Map(Box::new(HiveType::String)),
            Seen::Object(fields) => HiveType::Struct(
                fields.list.iter().map(|(name, s)| StructField { name: name.clone(), ty: s.to_hive() }).collect(),
            ),
        }
    }
}

/// Accumulates sample records and yields the widened schema.
#[derive(Debug, Default, Clone)]
pub struct SchemaInferrer {
    fields: Fields,
    records: usize,
}

impl SchemaInferrer {
    /// A new, empty inferrer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one sample record; values that are not JSON objects are ignored
    /// (they will go to the error output anyway).
    pub fn observe(&mut self, record: &Value) {
        let Some(obj) = record.as_object() else { return };
        self.records += 1;
        for (k, v) in obj.iter() {
            // `_extra` is the column of unknown fields, never a column of its own.
            if k != super::EXTRA_COLUMN {
                self.fields.merge(k, Seen::of(v, 1));
            }
        }
    }

    /// Parses a JSON line and observes it; lines that are not JSON, or are
    /// nested deeper than [`crate::json::MAX_DEPTH`] (they go to the error
    /// output anyway), are skipped.
    pub fn observe_line(&mut self, line: &[u8]) {
        // Our parser first: it bounds the depth before anything recurses.
        let Ok(text) = std::str::from_utf8(line) else { return };
        let mut p = Parser::new(text);
        if p.skip().is_err() || !p.at_end() {
            return;
        }
        if let Ok(v) = sonic_rs::from_slice::<Value>(line) {
            self.observe(&v);
        }
    }

    /// How many object records were observed.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The inferred schema (columns in first-seen order), or `None` when no
    /// object record was seen.
    pub fn finish(&self) -> Option<Schema> {
        if self.fields.list.is_empty() {
            return None;
        }
        let columns = self
            .fields
            .list
            .iter()
            .map(|(name, s)| Column { name: name.clone(), ty: s.to_hive(), required: false })
            .collect();
        Some(Schema { columns })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn infer(lines: &[&str]) -> String {
        let mut inf = SchemaInferrer::new();
        for l in lines {
            inf.observe_line(l.as_bytes());
        }
        inf.finish().unwrap().columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn widens_and_merges() {
        assert_eq!(
            infer(&[
                r#"{"a":1,"b":null,"c":"x","t":"2024-03-15T07:00:00Z","o":{"p":1}}"#,
                r#"{"a":2.5,"b":true,"c":7,"t":"2024-03-15T08:00:00.5Z","o":{"q":"z"},"l":[1,2]}"#,
                r#"{"d":"2024-03-15","e":{},"l":[3.5]}"#,
            ]),
            "a:double b:boolean c:string t:timestamp o:struct<p:bigint,q:string> l:array<double> \
             d:date e:map<string,string>"
        );
    }

    #[test]
    fn skips_non_objects_and_garbage() {
        assert_eq!(infer(&["[1]", "not json", r#"{"x":[]}"#]), "x:array<string>");
    }

    /// The schema inferred from `lines` loads back from its TOML, and every
    /// line then converts (into a row or an error record, never a crash).
    fn infer_and_load(lines: &[String]) -> Schema {
        let mut inf = SchemaInferrer::new();
        for l in lines {
            inf.observe_line(l.as_bytes());
        }
        let schema = inf.finish().unwrap();
        assert_eq!(Schema::parse(&schema.to_toml(), false).unwrap(), schema, "{}", schema.to_toml());
        let layout = super::super::FileLayout::new(&schema, &[], super::super::UnknownFieldPolicy::Keep);
        let mut d = crate::record::RecordDecoder::new(&schema, &layout, super::super::UnknownFieldPolicy::Keep, None);
        for l in lines {
            let _ = d.push(l, None);
        }
        let _ = d.finish();
        schema
    }

    #[test]
    fn deep_values_become_text_at_the_type_depth_limit() {
        // A few hundred levels of arrays from a 600-byte record.
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(300), "]".repeat(300));
        let deep_objects = format!(r#"{{"o":{}1{}}}"#, r#"{"x":"#.repeat(100), "}".repeat(100));
        let schema = infer_and_load(&[deep, deep_objects, r#"{"b":1}"#.into()]);
        let names: Vec<_> = schema.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["o", "b"], "records deeper than MAX_DEPTH are not sampled");
        let want = format!("{}string{}", "struct<x:".repeat(MAX_TYPE_DEPTH - 1), ">".repeat(MAX_TYPE_DEPTH - 1));
        assert_eq!(schema.columns[0].ty.to_string(), want);
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        let schema = infer_and_load(&[deep]);
        let ty = schema.columns[0].ty.to_string();
        assert_eq!(ty, format!("{}string{}", "array<".repeat(MAX_TYPE_DEPTH - 1), ">".repeat(MAX_TYPE_DEPTH - 1)));
        assert!(ty.parse::<HiveType>().is_ok());
    }

    #[test]
    fn keys_equal_but_for_case_are_left_to_extra() {
        let schema = infer_and_load(&[
            r#"{"device":{"os":"x","OS":"y","":"e"},"id":1,"ID":2,"":3,"_extra":4}"#.into(),
            r#"{"Id":"z","device":{"Os":1}}"#.into(),
        ]);
        let toml = schema.columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(" ");
        assert_eq!(toml, "device:struct<os:string> id:bigint");
    }

    /// Found by `scripts/fuzz schema_infer` (fuzz/regressions/schema_infer/):
    /// an integer past i64 was inferred as `bigint`, which it does not fit.
    #[test]
    fn integers_past_bigint_are_doubles() {
        let line = r#"{"a":9348844073709551616,"b":-9223372036854775808,"c":1}"#;
        let schema = infer_and_load(&[line.into()]);
        let types: Vec<String> = schema.columns.iter().map(|c| c.ty.to_string()).collect();
        assert_eq!(types, ["double", "bigint", "bigint"]);
        let policy = super::super::UnknownFieldPolicy::Keep;
        let layout = super::super::FileLayout::new(&schema, &[], policy);
        let mut d = crate::record::RecordDecoder::new(&schema, &layout, policy, None);
        assert_eq!(d.push(line, None), Ok(()), "the sample loads with its own schema");
    }

    #[test]
    fn odd_names_are_quoted_and_escaped() {
        let schema = infer_and_load(&[r#"{"a`b":{"c`d":1,"e f":2,"g:h":3,"i<j>":4,"k,l":5}}"#.into()]);
        assert_eq!(schema.columns[0].name, "a`b");
        assert_eq!(
            schema.columns[0].ty.to_string(),
            "struct<`c``d`:bigint,`e f`:bigint,`g:h`:bigint,`i<j>`:bigint,`k,l`:bigint>"
        );
    }

    #[test]
    fn many_keys_cost_one_lookup_each_and_stop_at_the_limit() {
        let record = format!("{{{}}}", (0..50_000).map(|i| format!(r#""k{i}":{i}"#)).collect::<Vec<_>>().join(","));
        let started = std::time::Instant::now();
        let schema = infer_and_load(&[record]);
        assert_eq!(schema.columns.len(), MAX_INFERRED_FIELDS);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
