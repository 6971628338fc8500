//! The buffers column builders fill: validity bits, fixed-width values and
//! UTF-8 strings. Unlike Arrow's builders they can be truncated, which is
//! what rolls back a record that fails half-way.

use arrow_array::types::ArrowPrimitiveType;
use arrow_array::{PrimitiveArray, StringArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};

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
    pub(super) values: Vec<T::Native>,
    pub(super) valid: Validity,
}

impl<T: ArrowPrimitiveType> Default for Prim<T> {
    fn default() -> Self {
        Prim { values: Vec::new(), valid: Validity::default() }
    }
}

impl<T: ArrowPrimitiveType> Prim<T> {
    #[inline]
    pub(super) fn push(&mut self, v: T::Native) {
        self.values.push(v);
        self.valid.append_non_null();
    }
    pub(super) fn push_null(&mut self) {
        self.values.push(T::Native::default());
        self.valid.append_null();
    }
    pub(super) fn truncate(&mut self, len: usize) {
        self.values.truncate(len);
        self.valid.truncate(len);
    }
    pub(super) fn finish(&mut self) -> PrimitiveArray<T> {
        let nulls = self.valid.finish();
        let cap = self.values.len();
        PrimitiveArray::new(ScalarBuffer::from(std::mem::replace(&mut self.values, Vec::with_capacity(cap))), nulls)
    }
    pub(super) fn bytes(&self) -> usize {
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
    pub(super) fn len(&self) -> usize {
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
