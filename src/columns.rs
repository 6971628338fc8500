//! Schema-driven column builders that coerce JSON values into Arrow arrays.
//!
//! Unlike Arrow's builders these can be truncated, so a record that fails
//! half-way (a bad value in its ninth column) is rolled back and sent whole to
//! the error output while the batch stays consistent.

use std::sync::Arc;

use arrow_array::types::{
    ArrowPrimitiveType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type,
    TimestampMillisecondType,
};
use arrow_array::{ArrayRef, BooleanArray, ListArray, MapArray, PrimitiveArray, StringArray, StructArray};
use arrow_buffer::{BooleanBuffer, BooleanBufferBuilder, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, FieldRef, Fields};

use crate::json::{DeclaredKey, Kind, Member, Parser, SyntaxError};
use crate::schema::{HiveType, LIST_ITEM_NAME, StructField, UnknownFieldPolicy, map_entries_field, struct_fields};
use crate::time::{epoch_number_to_millis, parse_date_days, parse_rfc3339_millis, parse_timestamp_str_millis};

/// A value that does not fit its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoerceError {
    /// The value has the wrong type or is out of range.
    Mismatch {
        /// Dotted path of the field (`device.version`, `tags[]`).
        path: String,
        /// The column type.
        expected: String,
        /// The value, shortened, and why it was rejected.
        found: String,
    },
    /// A field not in the schema under the `error` policy.
    Unknown {
        /// Dotted path of the field.
        path: String,
    },
}

impl CoerceError {
    /// Prefixes the field path with its parent's name as the error unwinds.
    pub fn under(mut self, parent: &str) -> Self {
        let path = match &mut self {
            CoerceError::Mismatch { path, .. } | CoerceError::Unknown { path } => path,
        };
        *path = if path.is_empty() {
            parent.to_string()
        } else if path.starts_with('[') {
            format!("{parent}{path}")
        } else {
            format!("{parent}.{path}")
        };
        self
    }

    /// The dotted field path.
    pub fn path(&self) -> &str {
        match self {
            CoerceError::Mismatch { path, .. } | CoerceError::Unknown { path } => path,
        }
    }
}

/// A syntax error or a coercion error while decoding a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The record is not valid JSON.
    Syntax(SyntaxError),
    /// A value does not fit its column.
    Coerce(CoerceError),
}

impl From<SyntaxError> for DecodeError {
    fn from(e: SyntaxError) -> Self {
        DecodeError::Syntax(e)
    }
}

impl From<CoerceError> for DecodeError {
    fn from(e: CoerceError) -> Self {
        DecodeError::Coerce(e)
    }
}

impl DecodeError {
    /// Prefixes a coercion error's path with its parent's name.
    pub fn under(self, parent: &str) -> Self {
        match self {
            DecodeError::Coerce(c) => DecodeError::Coerce(c.under(parent)),
            s => s,
        }
    }
}

/// A mismatch error quoting the value that starts at `start` (consumed or not).
fn mismatch(ty: &HiveType, p: &mut Parser<'_>, start: usize, why: &str) -> CoerceError {
    let text = if p.offset() > start { p.slice(start, p.offset()) } else { p.skip().unwrap_or("(invalid JSON)") };
    let mut found = text.to_string();
    if found.len() > 60 {
        found.truncate(found.floor_char_boundary(57));
        found.push_str("...");
    }
    if !why.is_empty() {
        found = format!("{found} ({why})");
    }
    CoerceError::Mismatch { path: String::new(), expected: ty.to_string(), found }
}

/// Per-record state shared by all builders: the unknown-field policy and the
/// unknown fields collected for `_extra`.
#[derive(Debug)]
pub struct RecordContext {
    /// What to do with fields the schema does not list.
    pub policy: UnknownFieldPolicy,
    /// JSON object text of the unknown fields of the current record, under
    /// their dotted paths, when the policy is `keep`.
    pub extra: String,
    /// Unknown fields dropped under the `drop` policy (running total).
    pub dropped_fields: u64,
}

impl RecordContext {
    /// A context for `policy`.
    pub fn new(policy: UnknownFieldPolicy) -> Self {
        RecordContext { policy, extra: String::new(), dropped_fields: 0 }
    }

    /// Handles a field the schema does not list, at `prefix` + `key`: reads
    /// past its value (the parser is at it) and applies the policy.
    pub fn unknown(&mut self, p: &mut Parser<'_>, prefix: &str, key: &str) -> Result<(), DecodeError> {
        let raw = p.skip()?;
        match self.policy {
            // The path grows with the parents' names as the error unwinds.
            UnknownFieldPolicy::Error => return Err(CoerceError::Unknown { path: key.to_string() }.into()),
            UnknownFieldPolicy::Drop => self.dropped_fields += 1,
            UnknownFieldPolicy::Keep | UnknownFieldPolicy::Evolve => {
                self.extra.push(if self.extra.is_empty() { '{' } else { ',' });
                self.extra.push_str(&serde_json::to_string(&join_path(prefix, key)).expect("strings serialize"));
                self.extra.push(':');
                self.extra.push_str(raw);
            }
        }
        Ok(())
    }
}

/// The validity bits of a column being built. Like Arrow's
/// `NullBufferBuilder`, but a value costs one bit operation whether it is
/// null or not (that builder grows its bitmap a byte at a time once a column
/// has a null, which sparse fields pay on every row).
#[derive(Debug, Default)]
pub struct Validity {
    words: Vec<u64>,
    len: usize,
    nulls: usize,
}

impl Validity {
    #[inline(always)]
    fn append(&mut self, valid: bool) {
        let bit = self.len % 64;
        if bit == 0 {
            self.words.push(0);
        }
        if let Some(word) = self.words.last_mut() {
            *word |= u64::from(valid) << bit;
        }
        self.nulls += usize::from(!valid);
        self.len += 1;
    }

    /// Appends a valid value's bit.
    #[inline(always)]
    pub fn append_non_null(&mut self) {
        self.append(true);
    }

    /// Appends a null's bit.
    #[inline(always)]
    pub fn append_null(&mut self) {
        self.append(false);
    }

    /// Values so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether value `i` is valid.
    pub fn is_valid(&self, i: usize) -> bool {
        i < self.len && self.words[i / 64] >> (i % 64) & 1 == 1
    }

    /// Drops values after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        self.nulls -= (len..self.len).filter(|&i| !self.is_valid(i)).count();
        self.words.truncate(len.div_ceil(64));
        if !len.is_multiple_of(64)
            && let Some(word) = self.words.last_mut()
        {
            *word &= (1u64 << (len % 64)) - 1;
        }
        self.len = len;
    }

    /// Takes the bits as a null buffer (`None` when nothing is null) and
    /// starts over with room for as many values.
    pub fn finish(&mut self) -> Option<NullBuffer> {
        let room = self.words.len();
        let words = std::mem::replace(&mut self.words, Vec::with_capacity(room));
        let (len, nulls) = (std::mem::take(&mut self.len), std::mem::take(&mut self.nulls));
        (nulls > 0).then(|| NullBuffer::new(BooleanBuffer::new(Buffer::from_vec(words), 0, len)))
    }
}

/// Values and validity of a fixed-width column.
#[derive(Debug)]
pub struct Prim<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    valid: Validity,
}

impl<T: ArrowPrimitiveType> Default for Prim<T> {
    fn default() -> Self {
        Prim { values: Vec::new(), valid: Validity::default() }
    }
}

impl<T: ArrowPrimitiveType> Prim<T> {
    #[inline]
    fn push(&mut self, v: T::Native) {
        self.values.push(v);
        self.valid.append_non_null();
    }
    fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.valid.append_null();
    }
    fn truncate(&mut self, len: usize) {
        self.values.truncate(len);
        self.valid.truncate(len);
    }
    fn finish(&mut self) -> PrimitiveArray<T> {
        let nulls = self.valid.finish();
        let cap = self.values.len();
        PrimitiveArray::new(ScalarBuffer::from(std::mem::replace(&mut self.values, Vec::with_capacity(cap))), nulls)
    }
    fn bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<T::Native>() + self.valid.len() / 8
    }
}

/// UTF-8 strings with offsets.
#[derive(Debug)]
pub struct Utf8 {
    offsets: Vec<i32>,
    data: Vec<u8>,
    valid: Validity,
}

impl Default for Utf8 {
    fn default() -> Self {
        Utf8 { offsets: vec![0], data: Vec::new(), valid: Validity::default() }
    }
}

impl Utf8 {
    /// Appends a string.
    #[inline(always)]
    pub fn push(&mut self, s: &str) {
        self.data.extend_from_slice(s.as_bytes());
        self.offsets.push(self.data.len() as i32);
        self.valid.append_non_null();
    }
    /// Appends a null.
    pub fn push_null(&mut self) {
        self.offsets.push(self.data.len() as i32);
        self.valid.append_null();
    }
    fn len(&self) -> usize {
        self.valid.len()
    }
    /// Approximate bytes buffered.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.offsets.len() * 4 + self.valid.len() / 8
    }
    /// Drops values after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        self.data.truncate(self.offsets[len] as usize);
        self.offsets.truncate(len + 1);
        self.valid.truncate(len);
    }
    /// Takes the values out as an Arrow array.
    pub fn finish(&mut self) -> StringArray {
        let nulls = self.valid.finish();
        // The next batch is likely as large: start at this one's size.
        let mut next_offsets = Vec::with_capacity(self.offsets.len());
        next_offsets.push(0);
        let offsets = std::mem::replace(&mut self.offsets, next_offsets);
        let cap = self.data.len();
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(cap));
        StringArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(data), nulls)
    }
}

/// A column builder for one [`HiveType`].
#[derive(Debug)]
pub enum ColumnBuilder {
    /// `string`
    String(Utf8),
    /// `boolean`
    Boolean {
        /// Values.
        values: BooleanBufferBuilder,
        /// Validity.
        valid: Validity,
    },
    /// `int`
    Int(Prim<Int32Type>),
    /// `bigint`
    BigInt(Prim<Int64Type>),
    /// `float`
    Float(Prim<Float32Type>),
    /// `double`
    Double(Prim<Float64Type>),
    /// `decimal(p,s)`
    Decimal(Prim<Decimal128Type>, u8, i8),
    /// `date`
    Date(Prim<Date32Type>),
    /// `timestamp`
    Timestamp(Prim<TimestampMillisecondType>),
    /// `array<T>`
    Array {
        /// Element type, for error messages.
        ty: HiveType,
        /// Arrow element field.
        field: FieldRef,
        /// End offset of each list.
        offsets: Vec<i32>,
        /// Validity.
        valid: Validity,
        /// Elements.
        item: Box<ColumnBuilder>,
    },
    /// `struct<...>`
    Struct {
        /// Dotted path of this struct, for `_extra` keys of unknown fields.
        path: String,
        /// The declared fields.
        ty: Vec<StructField>,
        /// Their names as keys to match records' keys against.
        keys: Vec<DeclaredKey>,
        /// Arrow fields.
        fields: Fields,
        /// Validity.
        valid: Validity,
        /// One builder per field.
        children: Vec<ColumnBuilder>,
    },
    /// `map<string,T>`
    Map {
        /// Value type, for error messages.
        ty: HiveType,
        /// The Arrow `key_value` entries field.
        entries: FieldRef,
        /// End offset of each map.
        offsets: Vec<i32>,
        /// Validity.
        valid: Validity,
        /// Keys.
        keys: Utf8,
        /// Values.
        values: Box<ColumnBuilder>,
    },
}

impl ColumnBuilder {
    /// An empty builder for `ty` at dotted `path` (the column name at the
    /// top level; used to name unknown nested fields in `_extra`).
    pub fn new(ty: &HiveType, path: &str) -> Self {
        match ty {
            HiveType::String => ColumnBuilder::String(Utf8::default()),
            HiveType::Boolean => {
                ColumnBuilder::Boolean { values: BooleanBufferBuilder::new(0), valid: Validity::default() }
            }
            HiveType::Int => ColumnBuilder::Int(Prim::default()),
            HiveType::BigInt => ColumnBuilder::BigInt(Prim::default()),
            HiveType::Float => ColumnBuilder::Float(Prim::default()),
            HiveType::Double => ColumnBuilder::Double(Prim::default()),
            HiveType::Decimal { precision, scale } => ColumnBuilder::Decimal(Prim::default(), *precision, *scale),
            HiveType::Date => ColumnBuilder::Date(Prim::default()),
            HiveType::Timestamp => ColumnBuilder::Timestamp(Prim::default()),
            HiveType::Array(item) => ColumnBuilder::Array {
                ty: (**item).clone(),
                field: Arc::new(Field::new(LIST_ITEM_NAME, item.to_arrow(), true)),
                offsets: vec![0],
                valid: Validity::default(),
                item: Box::new(ColumnBuilder::new(item, &format!("{path}[]"))),
            },
            HiveType::Struct(fields) => ColumnBuilder::Struct {
                path: path.to_string(),
                ty: fields.clone(),
                keys: fields.iter().map(|f| DeclaredKey::new(&f.name)).collect(),
                fields: struct_fields(fields),
                valid: Validity::default(),
                children: fields.iter().map(|f| ColumnBuilder::new(&f.ty, &join_path(path, &f.name))).collect(),
            },
            HiveType::Map(value) => ColumnBuilder::Map {
                ty: (**value).clone(),
                entries: Arc::new(map_entries_field(value)),
                offsets: vec![0],
                valid: Validity::default(),
                keys: Utf8::default(),
                values: Box::new(ColumnBuilder::new(value, &join_path(path, "*"))),
            },
        }
    }

    /// Number of values (rows at the top level).
    pub fn len(&self) -> usize {
        match self {
            ColumnBuilder::String(b) => b.len(),
            ColumnBuilder::Boolean { valid, .. }
            | ColumnBuilder::Array { valid, .. }
            | ColumnBuilder::Struct { valid, .. }
            | ColumnBuilder::Map { valid, .. } => valid.len(),
            ColumnBuilder::Int(p) => p.valid.len(),
            ColumnBuilder::BigInt(p) => p.valid.len(),
            ColumnBuilder::Float(p) => p.valid.len(),
            ColumnBuilder::Double(p) => p.valid.len(),
            ColumnBuilder::Decimal(p, ..) => p.valid.len(),
            ColumnBuilder::Date(p) => p.valid.len(),
            ColumnBuilder::Timestamp(p) => p.valid.len(),
        }
    }

    /// Whether no value was appended.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a null.
    pub fn push_null(&mut self) {
        match self {
            ColumnBuilder::String(b) => b.push_null(),
            ColumnBuilder::Boolean { values, valid } => {
                values.append(false);
                valid.append_null();
            }
            ColumnBuilder::Int(p) => p.push_null(),
            ColumnBuilder::BigInt(p) => p.push_null(),
            ColumnBuilder::Float(p) => p.push_null(),
            ColumnBuilder::Double(p) => p.push_null(),
            ColumnBuilder::Decimal(p, ..) => p.push_null(),
            ColumnBuilder::Date(p) => p.push_null(),
            ColumnBuilder::Timestamp(p) => p.push_null(),
            ColumnBuilder::Array { offsets, valid, .. } | ColumnBuilder::Map { offsets, valid, .. } => {
                offsets.push(*offsets.last().unwrap_or(&0));
                valid.append_null();
            }
            ColumnBuilder::Struct { valid, children, .. } => {
                valid.append_null();
                children.iter_mut().for_each(ColumnBuilder::push_null);
            }
        }
    }

    /// The value of the last row of a `timestamp` column (`None` when null,
    /// empty, or another type).
    pub fn last_timestamp(&self) -> Option<i64> {
        match self {
            ColumnBuilder::Timestamp(p) => {
                let n = p.values.len();
                (n > 0 && p.valid.is_valid(n - 1)).then(|| p.values[n - 1])
            }
            _ => None,
        }
    }

    /// Appends an already parsed timestamp (epoch ms) to a timestamp column.
    pub fn push_timestamp(&mut self, ms: i64) {
        match self {
            ColumnBuilder::Timestamp(p) => p.push(ms),
            _ => unreachable!("push_timestamp on a non-timestamp column"),
        }
    }

    /// Reads the next value from `p` and appends it coerced to this column's
    /// type (`null` appends a null). On error the builder may hold a partial
    /// value: the caller truncates.
    #[inline(always)]
    pub fn push(&mut self, p: &mut Parser<'_>, ctx: &mut RecordContext) -> Result<(), DecodeError> {
        // Most values are strings into string columns: inlined into the
        // caller, without the frame of the general case.
        if let ColumnBuilder::String(b) = self
            && p.peek() == Ok(Kind::String)
        {
            let mut buf = String::new();
            b.push(p.string(&mut buf)?);
            return Ok(());
        }
        self.push_any(p, ctx)
    }

    #[inline(never)]
    fn push_any(&mut self, p: &mut Parser<'_>, ctx: &mut RecordContext) -> Result<(), DecodeError> {
        let kind = p.peek()?;
        if kind == Kind::Null {
            p.null()?;
            self.push_null();
            return Ok(());
        }
        let start = p.offset();
        let mut buf = String::new();
        match self {
            ColumnBuilder::String(b) => match kind {
                Kind::String => b.push(p.string(&mut buf)?),
                // Numbers, booleans and nested values keep their JSON text (lossless).
                _ => b.push(p.skip()?),
            },
            ColumnBuilder::Boolean { values, valid } => {
                let v = match kind {
                    Kind::Bool => Some(p.boolean()?),
                    Kind::String => match p.string(&mut buf)?.trim() {
                        s if s.eq_ignore_ascii_case("true") => Some(true),
                        s if s.eq_ignore_ascii_case("false") => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                values.append(v.ok_or_else(|| mismatch(&HiveType::Boolean, p, start, ""))?);
                valid.append_non_null();
            }
            ColumnBuilder::Int(b) => {
                let n = integer(p, kind, &mut buf)?.ok_or_else(|| mismatch(&HiveType::Int, p, start, ""))?;
                b.push(i32::try_from(n).map_err(|_| mismatch(&HiveType::Int, p, start, "out of range for int"))?);
            }
            ColumnBuilder::BigInt(b) => {
                let n = integer(p, kind, &mut buf)?.ok_or_else(|| mismatch(&HiveType::BigInt, p, start, ""))?;
                b.push(n);
            }
            ColumnBuilder::Float(b) => {
                let f = float(p, kind, &mut buf)?.ok_or_else(|| mismatch(&HiveType::Float, p, start, ""))?;
                // Out of f32's range (`1e39`), or a string `"inf"`: JSON has no infinity.
                let f = Some(f as f32).filter(|f| f.is_finite());
                b.push(f.ok_or_else(|| mismatch(&HiveType::Float, p, start, "out of range for float"))?);
            }
            ColumnBuilder::Double(b) => {
                let f = float(p, kind, &mut buf)?.ok_or_else(|| mismatch(&HiveType::Double, p, start, ""))?;
                // `1e400` parses as infinity: refused rather than stored as a value nobody sent.
                let f = Some(f).filter(|f| f.is_finite());
                b.push(f.ok_or_else(|| mismatch(&HiveType::Double, p, start, "out of range for double"))?);
            }
            ColumnBuilder::Decimal(b, precision, scale) => {
                let ty = HiveType::Decimal { precision: *precision, scale: *scale };
                let text = match kind {
                    Kind::Number => p.number()?,
                    Kind::String => p.string(&mut buf)?.trim(),
                    _ => return Err(mismatch(&ty, p, start, "").into()),
                };
                let v = parse_decimal(text, *precision, *scale);
                b.push(v.map_err(|why| mismatch(&ty, p, start, why))?);
            }
            ColumnBuilder::Date(b) => {
                if kind != Kind::String {
                    return Err(mismatch(&HiveType::Date, p, start, "dates are YYYY-MM-DD strings").into());
                }
                let s = p.string(&mut buf)?;
                let days = parse_date_days(s)
                    .or_else(|| parse_rfc3339_millis(s).and_then(|ms| i32::try_from(ms.div_euclid(86_400_000)).ok()));
                b.push(days.ok_or_else(|| mismatch(&HiveType::Date, p, start, "not a YYYY-MM-DD date"))?);
            }
            ColumnBuilder::Timestamp(b) => {
                let ms = match kind {
                    Kind::String => parse_timestamp_str_millis(p.string(&mut buf)?),
                    Kind::Number => p.number()?.parse::<f64>().ok().and_then(epoch_number_to_millis),
                    _ => None,
                };
                b.push(ms.ok_or_else(|| {
                    mismatch(&HiveType::Timestamp, p, start, "expected RFC 3339, epoch seconds or epoch millis")
                })?);
            }
            ColumnBuilder::Array { ty, offsets, valid, item, .. } => {
                if kind != Kind::Array {
                    return Err(mismatch(&HiveType::Array(Box::new(ty.clone())), p, start, "").into());
                }
                p.array_start()?;
                let mut first = true;
                while p.next_element(first)? {
                    first = false;
                    item.push(p, ctx).map_err(|e| e.under("[]"))?;
                }
                offsets.push(item.len() as i32);
                valid.append_non_null();
            }
            ColumnBuilder::Struct { path, ty, keys, valid, children, .. } => {
                if kind != Kind::Object {
                    return Err(mismatch(&HiveType::Struct(ty.clone()), p, start, "").into());
                }
                p.object_start()?;
                let row = valid.len();
                // Which fields this object had, as bits (lengths beyond 64 fields).
                let few = children.len() <= 64;
                let mut seen = 0u64;
                let mut next = 0;
                let mut first = true;
                // Keys usually arrive compact and in declared order (see `next_declared`).
                while let Some(member) = p.next_declared(keys, next, first, &mut buf)? {
                    first = false;
                    let i = match member {
                        Member::Declared(i) => i,
                        Member::Unknown(key) => {
                            ctx.unknown(p, path, key)?;
                            continue;
                        }
                    };
                    next = i + 1;
                    let child = &mut children[i];
                    let duplicate = if few { seen & (1 << i) != 0 } else { child.len() > row };
                    if duplicate {
                        // The last one wins, as in most JSON readers.
                        child.truncate(row);
                    }
                    seen |= if few { 1 << i } else { 0 };
                    child.push(p, ctx).map_err(|e| e.under(&ty[i].name))?;
                }
                for (i, child) in children.iter_mut().enumerate() {
                    let missing = if few { seen & (1 << i) == 0 } else { child.len() == row };
                    if missing {
                        child.push_null();
                    }
                }
                valid.append_non_null();
            }
            ColumnBuilder::Map { ty, offsets, valid, keys, values, .. } => {
                if kind != Kind::Object {
                    return Err(mismatch(&HiveType::Map(Box::new(ty.clone())), p, start, "").into());
                }
                p.object_start()?;
                let mut first = true;
                while let Some(k) = p.next_key(first, &mut buf)? {
                    first = false;
                    keys.push(k);
                    let key = k.to_string();
                    values.push(p, ctx).map_err(|e| e.under(&key))?;
                }
                offsets.push(keys.len() as i32);
                valid.append_non_null();
            }
        }
        Ok(())
    }

    /// Drops values after the first `len`.
    pub fn truncate(&mut self, len: usize) {
        match self {
            ColumnBuilder::String(b) => b.truncate(len),
            ColumnBuilder::Boolean { values, valid } => {
                values.truncate(len);
                valid.truncate(len);
            }
            ColumnBuilder::Int(p) => p.truncate(len),
            ColumnBuilder::BigInt(p) => p.truncate(len),
            ColumnBuilder::Float(p) => p.truncate(len),
            ColumnBuilder::Double(p) => p.truncate(len),
            ColumnBuilder::Decimal(p, ..) => p.truncate(len),
            ColumnBuilder::Date(p) => p.truncate(len),
            ColumnBuilder::Timestamp(p) => p.truncate(len),
            ColumnBuilder::Array { offsets, valid, item, .. } => {
                item.truncate(offsets[len] as usize);
                offsets.truncate(len + 1);
                valid.truncate(len);
            }
            ColumnBuilder::Struct { valid, children, .. } => {
                valid.truncate(len);
                children.iter_mut().for_each(|c| c.truncate(len));
            }
            ColumnBuilder::Map { offsets, valid, keys, values, .. } => {
                let n = offsets[len] as usize;
                keys.truncate(n);
                values.truncate(n);
                offsets.truncate(len + 1);
                valid.truncate(len);
            }
        }
    }

    /// Approximate bytes buffered, for the memory budget.
    pub fn bytes(&self) -> usize {
        match self {
            ColumnBuilder::String(b) => b.bytes(),
            ColumnBuilder::Boolean { values, valid } => (values.len() + valid.len()) / 8,
            ColumnBuilder::Int(p) => p.bytes(),
            ColumnBuilder::BigInt(p) => p.bytes(),
            ColumnBuilder::Float(p) => p.bytes(),
            ColumnBuilder::Double(p) => p.bytes(),
            ColumnBuilder::Decimal(p, ..) => p.bytes(),
            ColumnBuilder::Date(p) => p.bytes(),
            ColumnBuilder::Timestamp(p) => p.bytes(),
            ColumnBuilder::Array { offsets, valid, item, .. } => offsets.len() * 4 + valid.len() / 8 + item.bytes(),
            ColumnBuilder::Struct { valid, children, .. } => {
                valid.len() / 8 + children.iter().map(ColumnBuilder::bytes).sum::<usize>()
            }
            ColumnBuilder::Map { offsets, valid, keys, values, .. } => {
                offsets.len() * 4 + valid.len() / 8 + keys.bytes() + values.bytes()
            }
        }
    }

    /// Takes the values out as an Arrow array and leaves the builder empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::String(b) => Arc::new(b.finish()),
            ColumnBuilder::Boolean { values, valid } => {
                let nulls = valid.finish();
                Arc::new(BooleanArray::new(values.finish(), nulls))
            }
            ColumnBuilder::Int(p) => Arc::new(p.finish()),
            ColumnBuilder::BigInt(p) => Arc::new(p.finish()),
            ColumnBuilder::Float(p) => Arc::new(p.finish()),
            ColumnBuilder::Double(p) => Arc::new(p.finish()),
            ColumnBuilder::Decimal(p, precision, scale) => Arc::new(
                p.finish().with_precision_and_scale(*precision, *scale).expect("precision validated by the schema"),
            ),
            ColumnBuilder::Date(p) => Arc::new(p.finish()),
            ColumnBuilder::Timestamp(p) => Arc::new(p.finish().with_timezone("UTC")),
            ColumnBuilder::Array { field, offsets, valid, item, .. } => {
                let nulls = valid.finish();
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(ListArray::new(field.clone(), offsets, item.finish(), nulls))
            }
            ColumnBuilder::Struct { fields, valid, children, .. } => {
                // Struct types always have at least one field (the parser requires it).
                let nulls = valid.finish();
                let arrays: Vec<ArrayRef> = children.iter_mut().map(ColumnBuilder::finish).collect();
                Arc::new(StructArray::new(fields.clone(), arrays, nulls))
            }
            ColumnBuilder::Map { entries, offsets, valid, keys, values, .. } => {
                let nulls = valid.finish();
                let DataType::Struct(kv_fields) = entries.data_type() else { unreachable!("map entries are a struct") };
                let kv = StructArray::new(kv_fields.clone(), vec![Arc::new(keys.finish()), values.finish()], None);
                let offsets = OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(MapArray::new(entries.clone(), offsets, kv, nulls, false))
            }
        }
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() { key.to_string() } else { format!("{parent}.{key}") }
}

/// An integer from a JSON integer, an integral float, or a digit string;
/// `None` when the value is not one.
fn integer(p: &mut Parser<'_>, kind: Kind, buf: &mut String) -> Result<Option<i64>, SyntaxError> {
    let text = match kind {
        Kind::Number => p.number()?,
        Kind::String => p.string(buf)?.trim(),
        _ => return Ok(None),
    };
    Ok(text.parse::<i64>().ok().or_else(|| {
        let f: f64 = text.parse().ok()?;
        (f.fract() == 0.0 && f.abs() < 9.2e18).then_some(f as i64)
    }))
}

/// A float from a JSON number or a numeric string.
fn float(p: &mut Parser<'_>, kind: Kind, buf: &mut String) -> Result<Option<f64>, SyntaxError> {
    let text = match kind {
        Kind::Number => p.number()?,
        Kind::String => p.string(buf)?.trim(),
        _ => return Ok(None),
    };
    Ok(text.parse().ok())
}

/// Parses decimal text (`-12.345`, `1e3`) into an unscaled i128 at `scale`,
/// refusing to round away non-zero digits or to exceed `precision`. Costs
/// time in proportion to the text, whatever its exponent (`1e2000000000`).
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
    let (mantissa, exp) = match text.find(['e', 'E']) {
        Some(i) => (&text[..i], parse_exponent(&text[i + 1..]).ok_or("not a number")?),
        None => (text, 0),
    };
    let (neg, m) = match mantissa.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = m.split_once('.').unwrap_or((m, ""));
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.bytes().chain(frac_part.bytes()).all(|c| c.is_ascii_digit())
    {
        return Err("not a number");
    }
    // The value is digits * 10^(exp - frac_len); we want it * 10^scale, as
    // significant digits (no leading or trailing zeros) * 10^zeros.
    let digits = || int_part.bytes().chain(frac_part.bytes());
    let len = int_part.len() + frac_part.len();
    let Some(first) = digits().position(|d| d != b'0') else { return Ok(0) };
    let last = len - 1 - digits().rev().position(|d| d != b'0').expect("a non-zero digit");
    let trailing = (len - 1 - last) as i64;
    let zeros = trailing + exp - frac_part.len() as i64 + i64::from(scale);
    if zeros < 0 {
        // Some non-zero digit would sit past the scale.
        return Err("more decimal places than the column's scale");
    }
    if (last + 1 - first) as i64 + zeros > i64::from(precision) {
        return Err("too many digits for the column's precision");
    }
    let mut n: i128 = 0;
    for d in digits().skip(first).take(last + 1 - first) {
        n = n * 10 + i128::from(d - b'0');
    }
    for _ in 0..zeros {
        n *= 10;
    }
    Ok(if neg { -n } else { n })
}

/// An exponent's value, saturated far beyond any decimal's range (so that
/// `1e99999999999999999999` is "too many digits", not "not a number").
fn parse_exponent(text: &str) -> Option<i64> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    const FAR: i64 = 1 << 40;
    let v = digits.bytes().fold(0i64, |v, d| (v * 10 + i64::from(d - b'0')).min(FAR));
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::cast::AsArray;

    proptest::proptest! {
        /// Appends and truncations against a `Vec<bool>`, across word
        /// boundaries, then the null buffer Arrow gets.
        #[test]
        fn validity_matches_a_vector_of_bools(ops in proptest::collection::vec((proptest::bool::ANY, 0usize..150), 1..40)) {
            let mut v = Validity::default();
            let mut model: Vec<bool> = Vec::new();
            for (valid, n) in ops {
                if n < 20 {
                    let len = model.len().saturating_sub(n);
                    v.truncate(len);
                    model.truncate(len);
                } else {
                    for i in 0..n {
                        let bit = valid ^ (i % 3 == 0);
                        if bit { v.append_non_null() } else { v.append_null() }
                        model.push(bit);
                    }
                }
                proptest::prop_assert_eq!(v.len(), model.len());
                for (i, &bit) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(v.is_valid(i), bit);
                }
            }
            let nulls = v.finish();
            proptest::prop_assert!(v.is_empty());
            match nulls {
                None => proptest::prop_assert!(model.iter().all(|&b| b)),
                Some(n) => {
                    proptest::prop_assert_eq!(n.len(), model.len());
                    proptest::prop_assert_eq!(n.null_count(), model.iter().filter(|&&b| !b).count());
                    for (i, &bit) in model.iter().enumerate() {
                        proptest::prop_assert_eq!(n.is_valid(i), bit);
                    }
                }
            }
        }
    }

    fn build(ty: &str, values: &[&str]) -> (ArrayRef, Vec<Option<CoerceError>>) {
        let ty: HiveType = ty.parse().unwrap();
        let mut b = ColumnBuilder::new(&ty, "c");
        let mut ctx = RecordContext::new(UnknownFieldPolicy::Keep);
        let mut errs = Vec::new();
        for s in values {
            let len = b.len();
            let r = b.push(&mut Parser::new(s), &mut ctx);
            if r.is_err() {
                b.truncate(len);
            }
            errs.push(r.err().map(|e| match e {
                DecodeError::Coerce(c) => c,
                DecodeError::Syntax(s) => panic!("{s}"),
            }));
        }
        (b.finish(), errs)
    }

    #[test]
    fn coerces_scalars() {
        let (a, e) = build("bigint", &["1", "2.0", "\"3\"", "null", "2.5", "true"]);
        assert_eq!(a.len(), 4);
        assert_eq!(a.as_primitive::<Int64Type>().values().as_ref(), &[1, 2, 3, 0]);
        assert!(a.is_null(3));
        assert!(e[4].is_some() && e[5].is_some());
        let (_, e) = build("int", &["3000000000"]);
        assert!(matches!(&e[0], Some(CoerceError::Mismatch { found, .. }) if found.contains("out of range")));
        let (a, _) = build("string", &["\"x\"", "12", "true", "{\"a\":1}"]);
        let s = a.as_string::<i32>();
        assert_eq!((s.value(1), s.value(2), s.value(3)), ("12", "true", "{\"a\":1}"));
        let (a, _) = build("timestamp", &["\"2024-03-15T07:12:01.123Z\"", "1710486721", "1710486721123"]);
        let t = a.as_primitive::<TimestampMillisecondType>();
        assert_eq!(t.values().as_ref(), &[1_710_486_721_123, 1_710_486_721_000, 1_710_486_721_123]);
        let (a, e) = build("boolean", &["true", "\"FALSE\"", "1"]);
        assert_eq!(a.len(), 2);
        assert!(e[2].is_some());
        // JSON has no infinity: values out of range are refused, not stored as inf.
        let (a, e) = build("double", &["1e308", "1e400", "-1e400", "\"inf\"", "\"NaN\""]);
        assert_eq!(a.len(), 1);
        assert!(
            e[1..]
                .iter()
                .all(|e| matches!(e, Some(CoerceError::Mismatch { found, .. }) if found.contains("out of range")))
        );
        let (a, e) = build("float", &["3.4e38", "1e39"]);
        assert_eq!(a.len(), 1);
        assert!(e[1].is_some());
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(parse_decimal("12.34", 10, 2), Ok(1234));
        assert_eq!(parse_decimal("-0.5", 10, 2), Ok(-50));
        assert_eq!(parse_decimal("1e3", 10, 2), Ok(100_000));
        assert_eq!(parse_decimal("12.340", 10, 2), Ok(1234));
        assert!(parse_decimal("12.345", 10, 2).is_err());
        assert!(parse_decimal("123456789", 8, 0).is_err());
        assert!(parse_decimal("abc", 8, 0).is_err());
        assert_eq!(parse_decimal("0.000e2000000000", 10, 2), Ok(0));
        assert_eq!(parse_decimal("10e-1", 10, 0), Ok(1));
        assert_eq!(parse_decimal("-1.50E+1", 10, 2), Ok(-1500));
        assert_eq!(parse_decimal("99999999999999999999999999999999999999", 38, 0), Ok(10i128.pow(38) - 1));
        // Huge exponents cost nothing: refused by counting digits, never by building them.
        for (text, why) in [
            ("1e2000000000", "precision"),
            ("1e99999999999999999999999999", "precision"),
            ("1e-2000000000", "scale"),
            ("1e-99999999999999999999999999", "scale"),
        ] {
            let started = std::time::Instant::now();
            assert!(parse_decimal(text, 10, 2).unwrap_err().contains(why), "{text}");
            assert!(started.elapsed() < std::time::Duration::from_secs(1), "{text}");
        }
        assert!(parse_decimal("1e", 10, 2).is_err() && parse_decimal("1e+", 10, 2).is_err());
        let (a, _) = build("decimal(10,2)", &["19.99", "\"0.01\""]);
        assert_eq!(a.as_primitive::<Decimal128Type>().values().as_ref(), &[1999, 1]);
    }

    #[test]
    fn nested_values_and_rollback() {
        let (a, e) = build(
            "array<struct<a:int,b:map<string,bigint>>>",
            &[r#"[{"a":1,"b":{"x":1,"y":2}},null]"#, r#"[{"a":2},{"a":"bad"}]"#, r#"[{"a":3,"b":{"z":3}}]"#],
        );
        assert_eq!(a.len(), 2, "the bad row is rolled back whole");
        let err = e[1].as_ref().unwrap();
        assert_eq!(err.path(), "[].a");
        let list = a.as_list::<i32>();
        assert_eq!(list.value_offsets(), &[0, 2, 3]);
        let items = list.values().as_struct();
        assert_eq!(items.column(0).as_primitive::<Int32Type>().values().as_ref(), &[1, 0, 3]);
        assert!(items.is_null(1));
        let maps = items.column(1).as_map();
        assert_eq!(maps.value_offsets(), &[0, 2, 2, 3]);
    }

    #[test]
    fn unknown_nested_fields_follow_the_policy() {
        let ty: HiveType = "struct<a:int>".parse().unwrap();
        let v = r#"{"a":1,"b":[true]}"#;
        let mut keep = RecordContext::new(UnknownFieldPolicy::Keep);
        ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut keep).unwrap();
        assert_eq!(keep.extra, r#"{"dev.b":[true]"#);
        let mut err = RecordContext::new(UnknownFieldPolicy::Error);
        let DecodeError::Coerce(e) = ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut err).unwrap_err()
        else {
            panic!("expected a coercion error")
        };
        assert_eq!(e.under("dev"), CoerceError::Unknown { path: "dev.b".into() });
        let mut drop = RecordContext::new(UnknownFieldPolicy::Drop);
        ColumnBuilder::new(&ty, "dev").push(&mut Parser::new(v), &mut drop).unwrap();
        assert_eq!(drop.dropped_fields, 1);
    }
}
