//! Schema inference from sample records, widening types as samples disagree:
//! int + float -> double, any two other scalar kinds -> string, objects merge
//! their keys (first-seen order), strings that all look like RFC 3339
//! timestamps (or dates) become `timestamp` (or `date`).

use sonic_rs::{JsonContainerTrait, JsonType, JsonValueTrait, Value};

use super::{Column, HiveType, Schema, StructField};
use crate::time::{parse_date_days, parse_rfc3339_millis};

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
    Object(Vec<(String, Seen)>),
    /// Scalars of different kinds, or containers mixed with scalars.
    Text,
}

impl Seen {
    fn of(v: &Value) -> Seen {
        match v.get_type() {
            JsonType::Null => Seen::Null,
            JsonType::Boolean => Seen::Bool,
            JsonType::Number => {
                if v.is_i64() || v.is_u64() {
                    Seen::Int
                } else {
                    Seen::Float
                }
            }
            JsonType::String => {
                let s = v.as_str().unwrap_or_default();
                Seen::Str { all_timestamps: parse_rfc3339_millis(s).is_some(), all_dates: parse_date_days(s).is_some() }
            }
            JsonType::Array => {
                let mut item = Seen::Null;
                for x in v.as_array().into_iter().flat_map(|a| a.iter()) {
                    item = item.merge(Seen::of(x));
                }
                Seen::Array(Box::new(item))
            }
            JsonType::Object => {
                let mut fields = Vec::new();
                for (k, x) in v.as_object().into_iter().flat_map(|o| o.iter()) {
                    merge_field(&mut fields, k, Seen::of(x));
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
                for (k, x) in b {
                    merge_field(&mut a, &k, x);
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
            Seen::Object(fields) if fields.is_empty() => HiveType::Map(Box::new(HiveType::String)),
            Seen::Object(fields) => HiveType::Struct(
                fields.iter().map(|(name, s)| StructField { name: name.clone(), ty: s.to_hive() }).collect(),
            ),
        }
    }
}

fn merge_field(fields: &mut Vec<(String, Seen)>, key: &str, seen: Seen) {
    match fields.iter_mut().find(|(k, _)| k == key) {
        Some((_, old)) => *old = std::mem::replace(old, Seen::Null).merge(seen),
        None => fields.push((key.to_string(), seen)),
    }
}

/// Accumulates sample records and yields the widened schema.
#[derive(Debug, Default)]
pub struct SchemaInferrer {
    fields: Vec<(String, Seen)>,
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
            merge_field(&mut self.fields, k, Seen::of(v));
        }
    }

    /// Parses a JSON line and observes it; unparsable lines are skipped.
    pub fn observe_line(&mut self, line: &[u8]) {
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
        if self.fields.is_empty() {
            return None;
        }
        let columns = self
            .fields
            .iter()
            .filter(|(name, _)| name != super::EXTRA_COLUMN && !name.is_empty())
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
}
