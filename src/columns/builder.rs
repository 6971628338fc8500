//! [`ColumnBuilder`]: one column of one [`HiveType`], nested for arrays,
//! structs and maps, that reads each value from the parser and coerces it to
//! the column's type, and hands the batch over as an Arrow array.

use std::sync::Arc;

use arrow_array::types::{
    Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMicrosecondType,
    TimestampMillisecondType,
};
use arrow_array::{ArrayRef, BooleanArray, ListArray, MapArray, StructArray};
use arrow_buffer::{BooleanBufferBuilder, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, FieldRef, Fields, TimeUnit};

use super::buffers::{Prim, Utf8, Validity};
use super::context::{RecordContext, join_path};
use super::error::{DecodeError, mismatch};
use super::numbers::{float, integer, parse_decimal};
use crate::json::{DeclaredKey, Kind, Member, Parser};
use crate::schema::{HiveType, LIST_ITEM_NAME, StructField, map_entries_field, struct_fields};
use crate::time::{epoch_number_to_millis, parse_date_days, parse_rfc3339_millis, parse_timestamp_str_millis};

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
    /// `timestamp`: epoch milliseconds, written as microseconds when the
    /// flag is set (Iceberg data files).
    Timestamp(Prim<TimestampMillisecondType>, bool),
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
        Self::typed(ty, &ty.to_arrow(), path)
    }

    /// An empty builder for `ty` whose arrays have the Arrow type `arrow`
    /// (`ty`'s, possibly with field ids on nested fields and microsecond
    /// timestamps: see [`crate::schema::iceberg_field`]).
    pub fn typed(ty: &HiveType, arrow: &DataType, path: &str) -> Self {
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
            HiveType::Timestamp => ColumnBuilder::Timestamp(
                Prim::default(),
                matches!(arrow, DataType::Timestamp(TimeUnit::Microsecond, _)),
            ),
            HiveType::Array(item) => {
                let field = match arrow {
                    DataType::List(f) => f.clone(),
                    _ => Arc::new(Field::new(LIST_ITEM_NAME, item.to_arrow(), true)),
                };
                ColumnBuilder::Array {
                    ty: (**item).clone(),
                    offsets: vec![0],
                    valid: Validity::default(),
                    item: Box::new(ColumnBuilder::typed(item, field.data_type(), &format!("{path}[]"))),
                    field,
                }
            }
            HiveType::Struct(fields) => {
                let arrow_fields = match arrow {
                    DataType::Struct(f) if f.len() == fields.len() => f.clone(),
                    _ => struct_fields(fields),
                };
                ColumnBuilder::Struct {
                    path: path.to_string(),
                    ty: fields.clone(),
                    keys: fields.iter().map(|f| DeclaredKey::new(&f.name)).collect(),
                    valid: Validity::default(),
                    children: fields
                        .iter()
                        .zip(arrow_fields.iter())
                        .map(|(f, a)| ColumnBuilder::typed(&f.ty, a.data_type(), &join_path(path, &f.name)))
                        .collect(),
                    fields: arrow_fields,
                }
            }
            HiveType::Map(value) => {
                let entries = match arrow {
                    DataType::Map(e, _) => e.clone(),
                    _ => Arc::new(map_entries_field(value)),
                };
                let value_type = match entries.data_type() {
                    DataType::Struct(kv) if kv.len() == 2 => kv[1].data_type().clone(),
                    _ => value.to_arrow(),
                };
                ColumnBuilder::Map {
                    ty: (**value).clone(),
                    entries,
                    offsets: vec![0],
                    valid: Validity::default(),
                    keys: Utf8::default(),
                    values: Box::new(ColumnBuilder::typed(value, &value_type, &join_path(path, "*"))),
                }
            }
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
            ColumnBuilder::Timestamp(p, _) => p.valid.len(),
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
            ColumnBuilder::Timestamp(p, _) => p.push_null(),
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
            ColumnBuilder::Timestamp(p, _) => {
                let n = p.values.len();
                (n > 0 && p.valid.is_valid(n - 1)).then(|| p.values[n - 1])
            }
            _ => None,
        }
    }

    /// Whether a timestamp column holds `ms` as it is written (microseconds
    /// overflow beyond about 292,000 years from 1970).
    pub fn accepts_timestamp(&self, ms: i64) -> bool {
        match self {
            ColumnBuilder::Timestamp(_, micros) => !micros || ms.checked_mul(1000).is_some(),
            _ => false,
        }
    }

    /// Appends an already parsed timestamp (epoch ms) to a timestamp column.
    pub fn push_timestamp(&mut self, ms: i64) {
        match self {
            ColumnBuilder::Timestamp(p, _) => p.push(ms),
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
            ColumnBuilder::Timestamp(b, micros) => {
                let ms = match kind {
                    Kind::String => parse_timestamp_str_millis(p.string(&mut buf)?),
                    Kind::Number => p.number()?.parse::<f64>().ok().and_then(epoch_number_to_millis),
                    _ => None,
                };
                // Microseconds must fit an i64 (about 292,000 years from 1970).
                let ms = ms.filter(|ms| !*micros || ms.checked_mul(1000).is_some());
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
            ColumnBuilder::Timestamp(p, _) => p.truncate(len),
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
            ColumnBuilder::Timestamp(p, _) => p.bytes(),
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
            ColumnBuilder::Timestamp(p, false) => Arc::new(p.finish().with_timezone("UTC")),
            ColumnBuilder::Timestamp(p, true) => {
                Arc::new(p.finish().unary::<_, TimestampMicrosecondType>(|ms| ms * 1000).with_timezone("UTC"))
            }
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
