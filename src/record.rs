//! Decoding one JSON record into the column builders of a batch.

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::SchemaRef;

use crate::columns::{CoerceError, ColumnBuilder, DecodeError, RecordContext, Utf8};
use crate::json::{DeclaredKey, Kind, Member, Parser, SyntaxError};
use crate::schema::{FileLayout, Schema, UnknownFieldPolicy};

/// Where a field of a record goes.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Into this builder.
    Stored(usize),
    /// Nowhere: the column is a partition key, stored in the path.
    InPath,
}

/// Builds the columns of one batch from JSON objects.
#[derive(Debug)]
pub struct RecordDecoder {
    /// The columns' names, as keys to match records' keys against.
    keys: Vec<DeclaredKey>,
    slots: Vec<Slot>,
    required: Vec<bool>,
    builders: Vec<ColumnBuilder>,
    extra: Option<Utf8>,
    arrow: SchemaRef,
    ctx: RecordContext,
    rows: usize,
    /// Per-record scratch: whether each schema column had a non-null value.
    present: Vec<bool>,
    /// Per-record scratch: whether each schema column's key appeared.
    seen: Vec<bool>,
    /// The timestamp column whose value `push` may receive already parsed.
    time_column: Option<usize>,
}

impl RecordDecoder {
    /// A decoder for the stored columns of `layout`. `time_column` is a
    /// timestamp column whose value the caller may pass already parsed.
    pub fn new(schema: &Schema, layout: &FileLayout, policy: UnknownFieldPolicy, time_column: Option<usize>) -> Self {
        let mut slots = vec![Slot::InPath; schema.columns.len()];
        for (b, &i) in layout.stored.iter().enumerate() {
            slots[i] = Slot::Stored(b);
        }
        // Builders make arrays of the file's Arrow types (with field ids and
        // microsecond timestamps for Iceberg files).
        let arrow = schema.file_arrow_schema(layout);
        RecordDecoder {
            keys: schema.columns.iter().map(|c| DeclaredKey::new(&c.name)).collect(),
            slots,
            required: schema.columns.iter().map(|c| c.required).collect(),
            builders: layout
                .stored
                .iter()
                .zip(arrow.fields())
                .map(|(&i, f)| ColumnBuilder::typed(&schema.columns[i].ty, f.data_type(), &schema.columns[i].name))
                .collect(),
            extra: layout.extra_column.then(Utf8::default),
            arrow,
            ctx: RecordContext::new(policy),
            rows: 0,
            present: vec![false; schema.columns.len()],
            seen: vec![false; schema.columns.len()],
            time_column,
        }
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Unknown fields dropped so far under the `drop` policy.
    pub fn dropped_fields(&self) -> u64 {
        self.ctx.dropped_fields
    }

    /// Appends one record (a JSON object's text), or leaves the batch
    /// unchanged and says why not. `event_time` is the value of the time
    /// column, when the caller has parsed it already.
    pub fn push(&mut self, record: &str, event_time: Option<i64>) -> Result<(), DecodeError> {
        self.push_checked(record, event_time, None).map(|_| ())
    }

    /// Appends one record whose event time is read from the time column on
    /// the way, only if `accept` takes that time (`None`: null or missing; a
    /// time key that appears twice is refused): `Ok(false)` leaves the batch
    /// unchanged, and decoding stops as soon as the time is refused. Saves the
    /// caller a separate scan for the time when the record most likely
    /// belongs here.
    pub fn push_if_time(&mut self, record: &str, accept: impl Fn(Option<i64>) -> bool) -> Result<bool, DecodeError> {
        self.push_checked(record, None, Some(&accept))
    }

    fn push_checked(
        &mut self,
        record: &str,
        event_time: Option<i64>,
        accept: Option<&dyn Fn(Option<i64>) -> bool>,
    ) -> Result<bool, DecodeError> {
        let rows = self.rows;
        let dropped = self.ctx.dropped_fields;
        let result = self.push_inner(record, event_time, accept);
        if let Ok(true) = result {
            self.rows += 1;
        } else {
            self.builders.iter_mut().for_each(|b| b.truncate(rows));
            if let Some(x) = &mut self.extra {
                x.truncate(rows);
            }
            self.ctx.dropped_fields = dropped;
        }
        result
    }

    /// `Ok(false)`: `accept` refused the record's time.
    fn push_inner(
        &mut self,
        record: &str,
        event_time: Option<i64>,
        accept: Option<&dyn Fn(Option<i64>) -> bool>,
    ) -> Result<bool, DecodeError> {
        let rows = self.rows;
        self.present.fill(false);
        self.seen.fill(false);
        self.ctx.extra.clear();
        let mut p = Parser::new(record);
        p.object_start()?;
        let mut key_buf = String::new();
        let mut first = true;
        let mut next = 0;
        // Keys usually arrive compact and in schema order (see `next_declared`).
        while let Some(member) = p.next_declared(&self.keys, next, first, &mut key_buf)? {
            first = false;
            let c = match member {
                Member::Declared(c) => c,
                Member::Unknown(key) => {
                    self.ctx.unknown(&mut p, "", key)?;
                    continue;
                }
            };
            next = c + 1;
            self.present[c] = p.peek()? != Kind::Null;
            let duplicate = std::mem::replace(&mut self.seen[c], true);
            match self.slots[c] {
                Slot::Stored(b) => {
                    let builder = &mut self.builders[b];
                    if duplicate {
                        // The last one wins, as in most JSON readers.
                        builder.truncate(rows);
                    }
                    match event_time {
                        Some(ms) if self.time_column == Some(c) && builder.accepts_timestamp(ms) => {
                            p.skip()?;
                            builder.push_timestamp(ms);
                        }
                        _ => {
                            builder.push(&mut p, &mut self.ctx).map_err(|e| e.under(self.keys[c].name()))?;
                            if let Some(accept) = accept
                                && self.time_column == Some(c)
                                && (duplicate || !accept(builder.last_timestamp()))
                            {
                                return Ok(false);
                            }
                        }
                    }
                }
                Slot::InPath => {
                    p.skip()?;
                }
            }
        }
        if !p.at_end() {
            return Err(DecodeError::Syntax(SyntaxError { offset: p.offset(), expected: "the end of the record" }));
        }
        if let (Some(accept), Some(t)) = (accept, self.time_column)
            && !self.seen[t]
            && !accept(None)
        {
            return Ok(false);
        }
        for c in 0..self.keys.len() {
            if self.required[c] && !self.present[c] {
                return Err(DecodeError::Coerce(CoerceError::Mismatch {
                    path: self.keys[c].name().to_string(),
                    expected: "a value (the column is required)".into(),
                    found: "missing or null".into(),
                }));
            }
            if let Slot::Stored(b) = self.slots[c]
                && !self.seen[c]
            {
                self.builders[b].push_null();
            }
        }
        if let Some(x) = &mut self.extra {
            if self.ctx.extra.is_empty() {
                x.push_null();
            } else {
                self.ctx.extra.push('}');
                x.push(&self.ctx.extra);
            }
        }
        Ok(true)
    }

    /// Approximate bytes buffered.
    pub fn bytes(&self) -> usize {
        self.builders.iter().map(ColumnBuilder::bytes).sum::<usize>() + self.extra.as_ref().map_or(0, Utf8::bytes)
    }

    /// The Arrow schema of the batches.
    pub fn arrow_schema(&self) -> &SchemaRef {
        &self.arrow
    }

    /// Takes the buffered rows as a record batch.
    pub fn finish(&mut self) -> RecordBatch {
        let mut columns: Vec<ArrayRef> = self.builders.iter_mut().map(ColumnBuilder::finish).collect();
        if let Some(x) = &mut self.extra {
            columns.push(std::sync::Arc::new(x.finish()));
        }
        self.rows = 0;
        RecordBatch::try_new(self.arrow.clone(), columns).expect("builders match the schema")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMillisecondType};

    fn decoder(policy: UnknownFieldPolicy) -> RecordDecoder {
        let schema = Schema::parse(
            "[[columns]]\nname=\"id\"\ntype=\"bigint\"\nrequired=true\n[[columns]]\nname=\"ts\"\ntype=\"timestamp\"\n\
             [[columns]]\nname=\"s\"\ntype=\"struct<a:int,b:string>\"\n",
            false,
        )
        .unwrap();
        let layout = FileLayout::new(&schema, &[], policy);
        RecordDecoder::new(&schema, &layout, policy, Some(1))
    }

    #[test]
    fn duplicate_keys_last_one_wins() {
        let mut d = decoder(UnknownFieldPolicy::Keep);
        d.push(r#"{"id":1,"s":{"a":1,"a":2},"id":3}"#, None).unwrap();
        let batch = d.finish();
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 3);
        let s = batch.column(2).as_struct();
        assert_eq!(s.column(0).as_primitive::<arrow_array::types::Int32Type>().value(0), 2);
        assert!(s.column(1).is_null(0));
    }

    #[test]
    fn keys_in_any_order_and_extra_fields() {
        let mut d = decoder(UnknownFieldPolicy::Keep);
        d.push(r#"{"s":{"b":"x","z":[1]},"zz":true,"id":7}"#, None).unwrap();
        let batch = d.finish();
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 7);
        assert!(batch.column(1).is_null(0));
        assert_eq!(batch.column(3).as_string::<i32>().value(0), r#"{"s.z":[1],"zz":true}"#);
    }

    #[test]
    fn a_known_event_time_fills_the_time_column() {
        let mut d = decoder(UnknownFieldPolicy::Keep);
        d.push(r#"{"id":1,"ts":"2024-03-15T07:12:01.123Z"}"#, Some(42)).unwrap();
        let batch = d.finish();
        assert_eq!(batch.column(1).as_primitive::<TimestampMillisecondType>().value(0), 42);
    }

    #[test]
    fn failures_leave_the_batch_unchanged() {
        let mut d = decoder(UnknownFieldPolicy::Error);
        d.push(r#"{"id":1}"#, None).unwrap();
        for bad in [r#"{"ts":1}"#, r#"{"id":2,"s":{"a":"x"}}"#, r#"{"id":2,"q":1}"#, r#"{"id":2} x"#, r#"{"id":2"#] {
            assert!(d.push(bad, None).is_err(), "{bad}");
        }
        let err = d.push(r#"{"id":2,"s":{"a":1,"c":1}}"#, None).unwrap_err();
        assert_eq!(err, DecodeError::Coerce(CoerceError::Unknown { path: "s.c".into() }));
        assert_eq!(d.rows(), 1);
        let batch = d.finish();
        assert_eq!(batch.num_rows(), 1);
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 1);
    }
}
