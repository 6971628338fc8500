//! Additive schema evolution (`unknown_fields = "evolve"`): which top-level
//! fields of incoming records the schema lacks, how many records of a batch
//! carry each, and the columns to add once one is seen often enough.
//!
//! The watch runs before a record is decoded, so the batch can end just
//! before the record that makes a field due: that record and every later one
//! then go into files of the next schema version, with the field as a column.
//! Records before it (with `min_records` above 1) keep the field in `_extra`.

use std::collections::{HashMap, HashSet};

use super::{Column, EXTRA_COLUMN, MAX_INFERRED_FIELDS, Schema, SchemaInferrer};
use crate::json::{Kind, Parser};

/// The longest column type a new field may get, in characters: a quarter
/// of Glue's 131,072-character limit, so a few such columns still fit a
/// stored schema version and a table update. A field whose values would
/// type it longer (an object with thousands of keys, or one huge key) stays
/// in `_extra`.
pub const MAX_COLUMN_TYPE_CHARS: usize = 32 * 1024;

/// Whether `name` can become a column: what Athena, Glue and Hive accept
/// unquoted in every engine (letters, digits and `_`, not starting with a
/// digit, at most 255 bytes) and not `_extra`.
pub fn valid_column_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && !b[0].is_ascii_digit()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && name != EXTRA_COLUMN
}

/// Counts, per batch, the records carrying top-level fields the schema
/// lacks, and says which become columns.
#[derive(Debug, Clone)]
pub struct FieldWatch {
    /// The columns' and partition keys' names, as written: most keys of
    /// most records, passed over at the cost of one lookup.
    known: HashSet<String>,
    /// The columns' names in schema order: records mostly list their keys
    /// in that order, so the next key is usually the next of these.
    order: Vec<String>,
    /// The same lower-cased: names a new column may not take (Athena folds
    /// case; partition values live in paths only).
    taken: HashSet<String>,
    /// Columns the schema may still gain ([`MAX_INFERRED_FIELDS`] in all).
    room: usize,
    min_records: u64,
    /// Records of this batch that carried each candidate field.
    counts: HashMap<String, u64>,
    /// Their values, typed as inference types them: one inferrer per
    /// field, so `Coupon` in one record and `coupon` in another never type
    /// each other.
    values: HashMap<String, SchemaInferrer>,
    /// Whether a due field may end the batch now. While it may not (the
    /// worker made a schema version less than `evolve_interval` ago), its
    /// records keep it in `_extra` and it is counted, so the next version
    /// takes it together with every other field due by then.
    open: bool,
    /// Records that kept a due field in `_extra` while closed.
    deferred: u64,
    /// Fields refused a column because their type is too long.
    refused: Vec<String>,
}

/// What a [`FieldWatch`] kept out of columns since it was last asked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchCounts {
    /// Records that kept a due field in `_extra` because the window was
    /// closed (they join the next version).
    pub deferred: u64,
    /// Fields refused a column for good: their type is longer than
    /// [`MAX_COLUMN_TYPE_CHARS`].
    pub refused: Vec<String>,
}

impl FieldWatch {
    /// A watch for a batch written with `schema` under a template with
    /// `partition_keys`; a field becomes due in its `min_records`-th record.
    pub fn new(schema: &Schema, partition_keys: &[String], min_records: u64) -> Self {
        let known: HashSet<String> = schema.columns.iter().map(|c| &c.name).chain(partition_keys).cloned().collect();
        let taken = known.iter().map(|n| n.to_ascii_lowercase()).collect();
        FieldWatch {
            known,
            taken,
            order: schema.columns.iter().map(|c| c.name.clone()).collect(),
            room: MAX_INFERRED_FIELDS.saturating_sub(schema.columns.len()),
            min_records: min_records.max(1),
            counts: HashMap::new(),
            values: HashMap::new(),
            open: true,
            deferred: 0,
            refused: Vec::new(),
        }
    }

    /// Fields never to propose (refused a column before): they are passed
    /// over like known ones.
    pub fn refusing<'a>(mut self, names: impl IntoIterator<Item = &'a String>) -> Self {
        for name in names {
            self.refuse(name);
        }
        self
    }

    fn refuse(&mut self, name: &str) {
        self.known.insert(name.to_string());
        self.taken.insert(name.to_ascii_lowercase());
        self.counts.remove(name);
        self.values.remove(name);
    }

    /// Whether a due field may end the batch now (see the `open` field).
    pub fn set_open(&mut self, open: bool) {
        self.open = open;
    }

    /// What was kept out of columns since the last call.
    pub fn take_counts(&mut self) -> WatchCounts {
        WatchCounts { deferred: std::mem::take(&mut self.deferred), refused: std::mem::take(&mut self.refused) }
    }

    /// The candidate fields of one record with their JSON values: top-level,
    /// not `null`, named validly and not taken. Nothing for a record that is
    /// not an object or not valid JSON (it goes to the error output), or
    /// when the schema is full.
    fn candidates<'t>(&self, text: &'t str) -> Vec<(String, &'t str)> {
        if !self.may_have_new_keys(text) {
            return Vec::new();
        }
        self.parse_candidates(text)
    }

    /// The candidate names of `text`, with or without the quick scan first
    /// (for the fuzz target, which checks that both agree).
    #[doc(hidden)]
    pub fn candidate_names(&self, text: &str, quick: bool) -> Vec<String> {
        let found = if quick { self.candidates(text) } else { self.parse_candidates(text) };
        found.into_iter().map(|(k, _)| k).collect()
    }

    /// [`FieldWatch::candidates`] by a full parse.
    fn parse_candidates<'t>(&self, text: &'t str) -> Vec<(String, &'t str)> {
        let mut out = Vec::new();
        if self.room == 0 {
            return out;
        }
        let mut p = Parser::new(text);
        if p.peek().ok() != Some(Kind::Object) || p.object_start().is_err() {
            return out;
        }
        let mut scratch = String::new();
        let mut first = true;
        loop {
            let key = match p.next_key(first, &mut scratch) {
                Ok(Some(k)) if self.known.contains(k) => None,
                Ok(Some(k)) => Some(k.to_string()),
                Ok(None) => break,
                Err(_) => return Vec::new(),
            };
            first = false;
            let Ok(value) = p.skip() else { return Vec::new() };
            let Some(key) = key else { continue };
            if value != "null"
                && valid_column_name(&key)
                && !self.taken.contains(&key.to_ascii_lowercase())
                // `Coupon` beside `coupon` stays in `_extra`; `coupon` twice is
                // kept twice, to type the column by both values.
                && !out.iter().any(|(k, _): &(String, &str)| *k != key && k.eq_ignore_ascii_case(&key))
            {
                out.push((key, value));
            }
        }
        if !p.at_end() {
            return Vec::new();
        }
        out
    }

    /// Whether a top-level key of `text` is not a known name, by a scan that
    /// only follows strings and brackets: most records have only known keys,
    /// and this skips their full parse. Anything it is unsure of (an escaped
    /// key, an unterminated string) answers `true`, and the full parse
    /// decides.
    fn may_have_new_keys(&self, text: &str) -> bool {
        let b = text.as_bytes();
        let (mut i, mut depth, mut expect_key, mut next) = (0, 0u32, false, 0);
        while i < b.len() {
            match b[i] {
                b'"' => {
                    let start = i + 1;
                    let mut end = start;
                    let mut escaped = false;
                    loop {
                        let Some(k) = b.get(end..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) else {
                            return true;
                        };
                        end += k;
                        if b[end] == b'"' {
                            break;
                        }
                        escaped = true;
                        end += 2;
                    }
                    if depth == 1 && expect_key {
                        if escaped {
                            return true;
                        }
                        let key = &text[start..end];
                        if self.order.get(next).is_some_and(|n| n == key) {
                            next += 1;
                        } else if !self.known.contains(key) {
                            return true;
                        }
                        expect_key = false;
                    }
                    i = end + 1;
                }
                b'{' => {
                    depth += 1;
                    expect_key = depth == 1;
                    i += 1;
                }
                b'[' => {
                    depth += 1;
                    i += 1;
                }
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    i += 1;
                }
                b',' => {
                    expect_key = depth == 1;
                    i += 1;
                }
                _ => i += 1,
            }
        }
        false
    }

    /// Observes the user records of one Kinesis record (several for a KPL
    /// aggregate, which is never split between batches). When this would
    /// make a field due, nothing is counted and the new columns are returned
    /// (nullable, at the end, typed by their values so far): the batch ends
    /// before this record, and the next one, written with those columns,
    /// takes it. Otherwise the fields are counted and the answer is empty.
    pub fn observe(&mut self, records: &[&[u8]]) -> Vec<Column> {
        // Each candidate once per user record that has it, and every value of
        // it: a key given twice in one record is decoded (and checked) twice.
        let mut names: Vec<String> = Vec::new();
        let mut samples: Vec<(String, String)> = Vec::new();
        for raw in records {
            let Ok(text) = std::str::from_utf8(raw) else { continue };
            let mut fields = self.candidates(text);
            // A value inference cannot read (a number beyond any double) types
            // nothing: its field stays in `_extra` for this record.
            let unreadable: Vec<String> = fields
                .iter()
                .filter(|(_, v)| sonic_rs::from_str::<sonic_rs::Value>(v).is_err())
                .map(|(k, _)| k.clone())
                .collect();
            fields.retain(|(k, _)| !unreadable.contains(k));
            for (i, (key, value)) in fields.iter().enumerate() {
                let sample = format!("{{{}:{value}}}", serde_json::to_string(key).expect("strings serialize"));
                samples.push((key.clone(), sample));
                if !fields[..i].iter().any(|(k, _)| k == key) {
                    names.push(key.clone());
                }
            }
        }
        if names.is_empty() {
            return Vec::new();
        }
        let mut added: HashMap<&str, u64> = HashMap::new();
        for name in &names {
            *added.entry(name).or_default() += 1;
        }
        // In the record's order: new columns are added in the order they came.
        let mut due: Vec<&str> = Vec::new();
        for name in &names {
            if !due.contains(&name.as_str())
                && self.counts.get(name).copied().unwrap_or(0) + added[name.as_str()] >= self.min_records
            {
                due.push(name);
            }
        }
        let columns = if due.is_empty() || !self.open { Vec::new() } else { self.due_columns(&due, &samples) };
        if columns.is_empty() {
            if !due.is_empty() && !self.open {
                self.deferred += 1;
            }
            for (key, n) in added {
                // Past the cap, fields not counted yet are not counted: a
                // stream of ever-new keys cannot grow the map without bound.
                if !self.known.contains(key)
                    && (self.counts.len() < MAX_INFERRED_FIELDS || self.counts.contains_key(key))
                {
                    *self.counts.entry(key.to_string()).or_default() += n;
                }
            }
            for (key, sample) in &samples {
                if self.counts.contains_key(key) {
                    self.values.entry(key.clone()).or_default().observe_line(sample.as_bytes());
                }
            }
            return Vec::new();
        }
        columns
    }

    /// The columns for `due` (this record's due fields) and every field
    /// deferred while closed that recurred (counted in at least two records,
    /// and `min_records`): a key that never comes back, the mark of keys used
    /// as data, does not ride along. Typed by every value seen; a type longer
    /// than [`MAX_COLUMN_TYPE_CHARS`] refuses its field for good. Empty when
    /// nothing is left.
    fn due_columns(&mut self, due: &[&str], samples: &[(String, String)]) -> Vec<Column> {
        // The deferred fields first (they came first; by name), then this
        // record's in its order; of `Coupon` and `coupon`, this record's.
        let recurred = self.min_records.max(2);
        let mut names: Vec<String> = self
            .counts
            .iter()
            .filter(|(k, n)| **n >= recurred && !due.iter().any(|d| d.eq_ignore_ascii_case(k)))
            .map(|(k, _)| k.clone())
            .collect();
        names.sort();
        let mut seen: HashSet<String> = HashSet::new();
        names.retain(|n| seen.insert(n.to_ascii_lowercase()));
        names.extend(due.iter().map(|d| d.to_string()));
        let mut columns = Vec::new();
        for name in names {
            let mut values = self.values.get(&name).cloned().unwrap_or_default();
            samples.iter().filter(|(k, _)| *k == name).for_each(|(_, s)| values.observe_line(s.as_bytes()));
            let Some(column) = values.finish().and_then(|s| s.columns.into_iter().find(|c| c.name == name)) else {
                continue;
            };
            if column.ty.to_string().len() > MAX_COLUMN_TYPE_CHARS {
                self.refuse(&column.name);
                self.refused.push(column.name);
                continue;
            }
            columns.push(column);
        }
        columns.truncate(self.room);
        columns
    }
}

/// `schema` with `columns` added at the end (nullable), skipping any whose
/// name it already has (ignoring case): the next schema version.
pub fn with_columns(schema: &Schema, columns: &[Column]) -> Schema {
    let mut next = schema.clone();
    for c in columns {
        if !next.columns.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)) && valid_column_name(&c.name) {
            next.columns.push(Column { name: c.name.clone(), ty: c.ty.clone(), required: false });
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::parse(
            "[[columns]]\nname = \"id\"\ntype = \"bigint\"\n[[columns]]\nname = \"Name\"\ntype = \"string\"\n",
            false,
        )
        .unwrap()
    }

    fn names(cols: &[Column]) -> String {
        cols.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn a_new_top_level_field_is_due_in_its_first_record_by_default() {
        let mut w = FieldWatch::new(&schema(), &["year".into()], 1);
        assert!(w.observe(&[br#"{"id":1,"name":"x","_extra":"{}"}"#]).is_empty(), "known, case-insensitively");
        assert!(w.observe(&[br#"{"id":1,"year":"2026","nothing":null,"bad name":1,"9lives":2}"#]).is_empty());
        assert!(w.observe(&[br#"{"id":1,"dev":{"os":"linux"}}"#, b"not json", b"[1]"]).len() == 1);
        let cols = w.observe(&[br#"{"id":2,"score":1.5,"tags":["a"],"at":"2026-11-30T10:00:00Z"}"#]);
        assert_eq!(names(&cols), "score:double tags:array<string> at:timestamp");
        // Nothing counted: the record goes to the next batch.
        assert!(w.counts.is_empty());
    }

    #[test]
    fn with_a_threshold_fields_are_counted_per_record_and_typed_by_every_value() {
        let mut w = FieldWatch::new(&schema(), &[], 3);
        assert!(w.observe(&[br#"{"n":1}"#]).is_empty());
        // An aggregate's records count one each.
        assert_eq!(names(&w.observe(&[br#"{"n":2}"#, br#"{"n":2.5}"#])), "n:double");
        assert!(w.observe(&[br#"{"n":2}"#]).is_empty());
        assert_eq!(names(&w.observe(&[br#"{"n":3}"#])), "n:bigint");
    }

    #[test]
    fn the_quick_scan_never_misses_a_new_key() {
        let w = FieldWatch::new(&schema(), &["year".into()], 1);
        let known = [
            r#"{"id":1,"Name":"x"}"#,
            r#"{"Name":"a\"b,\"c\":1","id":[{"zz":1},"q,\"r\""],"year":"2026"}"#,
            r#"{"id":{"new":{"deeper":[1,{"x":2}]}}}"#,
            "[1,2]",
            "",
        ];
        for text in known {
            assert!(!w.may_have_new_keys(text), "{text}");
        }
        let new = [
            r#"{"id":1,"coupon":"x"}"#,
            r#"{"id":{"a":[1,{"b":2}]},"coupon":1}"#,
            r#"{"Name":"a\"},{\"x","coupon":1}"#,
            r#" { "id" : 1 , "coupon" : 2 } "#,
            r#"{"co\u0075pon":1}"#,
            r#"{"id":"unterminated"#,
            r#"{"name":1}"#,
        ];
        for text in new {
            assert!(w.may_have_new_keys(text), "{text}");
        }
        for text in known.iter().chain(&new) {
            assert_eq!(w.candidate_names(text, true), w.candidate_names(text, false), "{text}");
        }
        assert_eq!(w.candidate_names(new[0], true), ["coupon"]);
    }

    /// Found by `scripts/fuzz schema_evolve`: a number beyond any double
    /// made the field due, typed by its other values, and its own record
    /// then failed the new column.
    #[test]
    fn a_value_no_type_holds_leaves_its_field_in_extra() {
        let mut w = FieldWatch::new(&schema(), &[], 2);
        assert!(w.observe(&[br#"{"a":2.5}"#]).is_empty());
        assert!(w.observe(&[br#"{"a":2.0e1291940006561404241}"#]).is_empty());
        assert!(w.observe(&[br#"{"a":[1e999],"b":1}"#]).is_empty());
        assert_eq!(names(&w.observe(&[br#"{"a":3.5}"#])), "a:double");
    }

    /// Found by `scripts/fuzz schema_evolve` (fuzz/regressions/schema_evolve/):
    /// a key given twice was typed by its first value only, and the decoder,
    /// which checks both, refused the record under the new column.
    #[test]
    fn a_key_given_twice_is_typed_by_both_values() {
        let mut w = FieldWatch::new(&schema(), &[], 1);
        assert_eq!(names(&w.observe(&[br#"{"id":1,"coupon":1,"coupon":"x"}"#])), "coupon:string");
    }

    #[test]
    fn broken_records_and_a_full_schema_add_nothing() {
        let mut w = FieldWatch::new(&schema(), &[], 1);
        assert!(w.observe(&[br#"{"a":1,"b":"#, br#"{"a":1} x"#, "{\"\u{e9}t\u{e9}\":1}".as_bytes()]).is_empty());
        let mut full = schema();
        for i in 0..MAX_INFERRED_FIELDS {
            full.columns.push(Column { name: format!("c{i}"), ty: "int".parse().unwrap(), required: false });
        }
        assert!(FieldWatch::new(&full, &[], 1).observe(&[br#"{"new":1}"#]).is_empty());
    }

    #[test]
    fn ever_new_keys_are_counted_up_to_a_cap() {
        let mut w = FieldWatch::new(&schema(), &[], 2);
        for i in 0..MAX_INFERRED_FIELDS + 500 {
            assert!(w.observe(&[format!("{{\"k{i}\":1}}").as_bytes()]).is_empty());
        }
        assert_eq!(w.counts.len(), MAX_INFERRED_FIELDS);
        assert_eq!(names(&w.observe(&[br#"{"k7":2}"#])), "k7:bigint", "counted fields still become columns");
    }

    #[test]
    fn while_closed_due_fields_are_deferred_and_those_that_recur_join_the_next_version() {
        let mut w = FieldWatch::new(&schema(), &[], 1);
        w.set_open(false);
        assert!(w.observe(&[br#"{"a":1}"#]).is_empty());
        assert!(w.observe(&[br#"{"a":2,"b":"x"}"#]).is_empty());
        assert!(w.observe(&[br#"{"id":3}"#]).is_empty());
        assert_eq!(w.take_counts(), WatchCounts { deferred: 2, refused: vec![] });
        w.set_open(true);
        // `a` recurred while waiting and joins; `b`, seen once, does not.
        assert_eq!(names(&w.observe(&[br#"{"c":true}"#])), "a:bigint c:boolean");
        assert!(w.observe(&[br#"{"id":4}"#]).is_empty(), "a record without new fields cuts nothing");
    }

    /// Found by `scripts/fuzz schema_evolve`
    /// (fuzz/regressions/schema_evolve/case-collision-across-a-closed-window):
    /// `Coupon` deferred in one record and `coupon` due in the next were
    /// typed by one shared inference, which named the column `Coupon`; the
    /// proposal lost `coupon`, and its record asked again under the new
    /// version.
    #[test]
    fn a_field_deferred_under_another_case_never_hides_a_due_one() {
        let mut w = FieldWatch::new(&schema(), &[], 1);
        w.set_open(false);
        assert!(w.observe(&[br#"{"Coupon":"y","tacs":["a"]}"#]).is_empty());
        assert!(w.observe(&[br#"{"Coupon":"z"}"#]).is_empty());
        w.set_open(true);
        let line = br#"{"hd":"c","coupon":1,"score":1.5}"#;
        let cols = w.observe(&[line]);
        assert_eq!(
            names(&cols),
            "hd:string coupon:bigint score:double",
            "this record's `coupon`, typed by its own value"
        );
        let next = with_columns(&schema(), &cols);
        assert!(FieldWatch::new(&next, &[], 1).observe(&[line]).is_empty());
    }

    #[test]
    fn a_field_whose_type_is_too_long_stays_in_extra_for_good() {
        let mut w = FieldWatch::new(&schema(), &[], 1);
        let huge = format!(r#"{{"big":{{"{}":1}},"ok":1}}"#, "k".repeat(MAX_COLUMN_TYPE_CHARS));
        assert_eq!(names(&w.observe(&[huge.as_bytes()])), "ok:bigint");
        assert_eq!(w.take_counts().refused, ["big"]);
        assert!(w.observe(&[huge.as_bytes()]).len() == 1, "`big` is never proposed again");
        let wide: String = (0..3000)
            .map(|i| format!(r#""a_rather_long_key_name_for_this_test_{i:05}":1"#))
            .collect::<Vec<_>>()
            .join(",");
        let mut w = FieldWatch::new(&schema(), &[], 1);
        assert!(w.observe(&[format!(r#"{{"wide":{{{wide}}}}}"#).as_bytes()]).is_empty());
        assert_eq!(w.take_counts().refused, ["wide"]);
        let again = FieldWatch::new(&schema(), &[], 1).refusing(&["wide".to_string()]);
        assert!(!again.may_have_new_keys(r#"{"wide":{"a":1}}"#));
    }

    #[test]
    fn new_columns_go_at_the_end_once() {
        let s = schema();
        let add = [
            Column { name: "score".into(), ty: "double".parse().unwrap(), required: true },
            Column { name: "NAME".into(), ty: "int".parse().unwrap(), required: false },
        ];
        let next = with_columns(&s, &add);
        assert_eq!(names(&next.columns), "id:bigint Name:string score:double");
        assert!(!next.columns[2].required);
        next.validate().unwrap();
        assert!(valid_column_name("_a1") && !valid_column_name("_extra") && !valid_column_name("a-b"));
    }
}
