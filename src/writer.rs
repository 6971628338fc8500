//! Per-partition Snappy Parquet writers under one shared memory budget.
//!
//! Records are encoded as they arrive: every `encode_rows` rows (or
//! `encode_bytes` of buffered values) a partition's builders become a record
//! batch that its `ArrowWriter` encodes and compresses in memory, so memory
//! tracks the Parquet size rather than the JSON size. When the sum over all
//! open partitions reaches the budget, the largest partition is finished
//! early; a partition whose file reaches the target size is finished too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::columns::DecodeError;
use crate::error::{Error, Result};
use crate::record::RecordDecoder;
use crate::schema::{FileLayout, Schema, UnknownFieldPolicy};
use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

/// Writer settings. Everything that shapes a file is here, so the same
/// records with the same settings give byte-identical files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    /// Bytes of buffered rows plus encoded Parquet, over all open
    /// partitions, above which the largest partition is written out early.
    pub memory_budget: usize,
    /// A partition's file is finished once its encoded size reaches this.
    pub target_file_bytes: usize,
    /// Rows per Parquet row group (DuckDB uses 122,880; Spark about 1M).
    pub row_group_rows: usize,
    /// Rows buffered per partition before they are encoded.
    pub encode_rows: usize,
    /// Buffered value bytes per partition before they are encoded.
    pub encode_bytes: usize,
}

impl Default for WriterSettings {
    fn default() -> Self {
        WriterSettings {
            memory_budget: 256 << 20,
            target_file_bytes: 128 << 20,
            row_group_rows: 128 * 1024,
            encode_rows: 8192,
            encode_bytes: 4 << 20,
        }
    }
}

impl WriterSettings {
    /// The Parquet writer properties: Snappy set explicitly (the library
    /// default is uncompressed), a fixed `created_by` so files do not change
    /// with the library patch version, page statistics for predicate pushdown.
    pub fn writer_properties(&self) -> WriterProperties {
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(self.row_group_rows))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_created_by(format!("shardlake {}", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

/// A finished Parquet file of one partition.
#[derive(Debug)]
pub struct FinishedFile<P> {
    /// Rendered partition path (`year=2024/month=03/.../`).
    pub partition: String,
    /// Position of the first record in the file.
    pub first: P,
    /// Position of the last record in the file.
    pub last: P,
    /// Rows in the file.
    pub rows: u64,
    /// The Parquet bytes.
    pub data: Vec<u8>,
    /// The file's footer: row groups and column statistics (what an
    /// Iceberg data file entry is made of).
    pub footer: Arc<ParquetMetaData>,
}

struct OpenPartition<P> {
    /// Rendered partition path.
    name: String,
    decoder: RecordDecoder,
    /// Created at the first encode, when the first batch can tune it.
    writer: Option<ArrowWriter<Vec<u8>>>,
    first: P,
    last: P,
    rows: u64,
    /// Encoded bytes (written + in progress) at the last encode.
    encoded: usize,
    /// Value bytes buffered in the decoder since the last encode (estimate).
    buffered: usize,
}

impl<P> OpenPartition<P> {
    fn memory(&self) -> usize {
        self.encoded + self.buffered
    }
}

/// Routes decoded records to per-partition Parquet writers.
pub struct LakeWriter<P> {
    schema: Arc<Schema>,
    layout: FileLayout,
    policy: UnknownFieldPolicy,
    settings: WriterSettings,
    props: WriterProperties,
    /// Open partitions; `None` marks a free slot.
    slots: Vec<Option<OpenPartition<P>>>,
    /// Slot of each open partition by name.
    index: HashMap<String, usize>,
    /// The slot of the last pushed partition: consecutive records mostly go
    /// to the same partition, so this skips hashing its name.
    last: Option<usize>,
    /// The top-level timestamp column that holds the event time, whose value
    /// the pipeline has parsed already.
    time_column: Option<usize>,
    /// Sum of `OpenPartition::memory` over the open partitions.
    memory: usize,
    ready: Vec<FinishedFile<P>>,
    dropped_fields: u64,
}

impl<P: Clone> LakeWriter<P> {
    /// A writer for `schema` (its partition-key columns already left out of
    /// `layout`). `time_column` is the schema column the event time comes
    /// from, when it is a top-level timestamp column.
    pub fn new(
        schema: Arc<Schema>,
        layout: FileLayout,
        policy: UnknownFieldPolicy,
        settings: WriterSettings,
        time_column: Option<usize>,
    ) -> Self {
        let props = settings.writer_properties();
        LakeWriter {
            schema,
            layout,
            policy,
            settings,
            props,
            slots: Vec::new(),
            index: HashMap::new(),
            last: None,
            time_column,
            memory: 0,
            ready: Vec::new(),
            dropped_fields: 0,
        }
    }

    fn slot_of(&mut self, partition: &str, pos: &P) -> usize {
        if let Some(i) = self.last
            && self.slots[i].as_ref().is_some_and(|p| p.name == partition)
        {
            return i;
        }
        if let Some(&i) = self.index.get(partition) {
            return i;
        }
        let open = OpenPartition {
            name: partition.to_string(),
            decoder: RecordDecoder::new(&self.schema, &self.layout, self.policy, self.time_column),
            writer: None,
            first: pos.clone(),
            last: pos.clone(),
            rows: 0,
            encoded: 0,
            buffered: 0,
        };
        let i = match self.slots.iter().position(Option::is_none) {
            Some(free) => {
                self.slots[free] = Some(open);
                free
            }
            None => {
                self.slots.push(Some(open));
                self.slots.len() - 1
            }
        };
        self.index.insert(partition.to_string(), i);
        i
    }

    /// Appends a record (JSON object text) to `partition`. Its size serves as
    /// the estimate of buffered memory between encodes. `event_time` is the
    /// record's time as read from the time field, if already known. On an
    /// error nothing is appended.
    pub fn push(&mut self, partition: &str, record: &str, pos: &P, event_time: Option<i64>) -> Result<(), DecodeError> {
        let slot = self.slot_of(partition, pos);
        let p = self.slots[slot].as_mut().expect("slot_of returns an open slot");
        let dropped = p.decoder.dropped_fields();
        p.decoder.push(record, event_time)?;
        self.pushed(slot, record, pos, dropped);
        Ok(())
    }

    /// Appends a record to `partition` only if `accept` takes its event
    /// time, read from the time column as it is decoded (see
    /// [`RecordDecoder::push_if_time`]); `Ok(false)` appends nothing.
    pub fn push_if_time(
        &mut self,
        partition: &str,
        record: &str,
        pos: &P,
        accept: impl Fn(Option<i64>) -> bool,
    ) -> Result<bool, DecodeError> {
        let slot = self.slot_of(partition, pos);
        let p = self.slots[slot].as_mut().expect("slot_of returns an open slot");
        let dropped = p.decoder.dropped_fields();
        let accepted = p.decoder.push_if_time(record, accept)?;
        if accepted {
            self.pushed(slot, record, pos, dropped);
        }
        Ok(accepted)
    }

    /// Whether the event time is a stored column the decoder can read.
    pub fn reads_time_column(&self) -> bool {
        self.time_column.is_some_and(|c| self.layout.stored.contains(&c))
    }

    /// Bookkeeping after a record was appended to `slot`.
    fn pushed(&mut self, slot: usize, record: &str, pos: &P, dropped_before: u64) {
        self.last = Some(slot);
        let p = self.slots[slot].as_mut().expect("pushed to an open slot");
        self.dropped_fields += p.decoder.dropped_fields() - dropped_before;
        if p.rows == 0 {
            p.first = pos.clone();
        }
        p.last = pos.clone();
        p.rows += 1;
        p.buffered += record.len();
        self.memory += record.len();
    }

    /// Encodes the last pushed partition when its buffer is full, finishes
    /// it when its file reached the target size, and finishes the largest
    /// partitions while the memory budget is exceeded. Call after each `push`
    /// (it is cheap when there is nothing to do).
    pub fn maintain(&mut self) -> Result<()> {
        if let Some(slot) = self.last
            && let Some(p) = self.slots[slot].as_mut()
            && (p.decoder.rows() >= self.settings.encode_rows || p.buffered >= self.settings.encode_bytes)
        {
            self.memory -= p.memory();
            encode(p, &self.props)?;
            self.memory += p.memory();
            if p.encoded >= self.settings.target_file_bytes {
                self.finish(slot)?;
            }
        }
        while self.memory > self.settings.memory_budget {
            // Largest first; ties by name so the choice never depends on slot order.
            let largest = (0..self.slots.len())
                .filter_map(|i| self.slots[i].as_ref().map(|p| (i, p)))
                .max_by(|(_, a), (_, b)| a.memory().cmp(&b.memory()).then(b.name.cmp(&a.name)))
                .map(|(i, _)| i);
            let Some(slot) = largest else { break };
            self.finish(slot)?;
        }
        Ok(())
    }

    fn finish(&mut self, slot: usize) -> Result<()> {
        let Some(mut p) = self.slots[slot].take() else { return Ok(()) };
        self.index.remove(&p.name);
        if self.last == Some(slot) {
            self.last = None;
        }
        self.memory -= p.memory();
        if p.rows == 0 {
            // Opened by a record that then failed to decode: no file.
            return Ok(());
        }
        encode(&mut p, &self.props)?;
        let mut writer = p.writer.expect("encode creates the writer");
        let footer = writer.finish().map_err(|error| Error::Parquet { key: p.name.clone(), error })?;
        let data = std::mem::take(writer.inner_mut());
        let footer = Arc::new(footer);
        self.ready.push(FinishedFile { partition: p.name, first: p.first, last: p.last, rows: p.rows, data, footer });
        Ok(())
    }

    /// Finishes every open partition, in partition order.
    pub fn finish_all(&mut self) -> Result<()> {
        let mut open: Vec<(String, usize)> = self.index.iter().map(|(k, &v)| (k.clone(), v)).collect();
        open.sort();
        for (_, slot) in open {
            self.finish(slot)?;
        }
        Ok(())
    }

    /// Whether finished files are waiting.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the files finished so far.
    pub fn take_ready(&mut self) -> Vec<FinishedFile<P>> {
        std::mem::take(&mut self.ready)
    }

    /// Bytes held by open partitions (buffered rows plus encoded Parquet).
    pub fn memory(&self) -> usize {
        self.memory
    }

    /// Unknown fields dropped under the `drop` policy.
    pub fn dropped_fields(&self) -> u64 {
        self.dropped_fields
    }
}

fn encode<P>(p: &mut OpenPartition<P>, props: &WriterProperties) -> Result<()> {
    let batch = p.decoder.finish();
    let parquet_err = |error| Error::Parquet { key: p.name.clone(), error };
    let writer = match &mut p.writer {
        Some(w) => w,
        None => {
            let props = without_dictionary_for_unique_values(props.clone(), &batch);
            p.writer.insert(ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props)).map_err(parquet_err)?)
        }
    };
    if batch.num_rows() > 0 {
        writer.write(&batch).map_err(parquet_err)?;
    }
    p.encoded = writer.bytes_written() + writer.memory_size();
    p.buffered = 0;
    Ok(())
}

/// Fewer non-null values than this in a file's first batch say too little
/// about a column to turn its dictionary off.
const DICTIONARY_SAMPLE_MIN: usize = 1000;
/// Values sampled per column to decide.
const DICTIONARY_SAMPLE_MAX: usize = 2000;

/// How a mostly-distinct column is written instead of with a dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undictionary {
    /// Plain values (strings, floats).
    Plain,
    /// `DELTA_BINARY_PACKED` (integers and timestamps): roughly ordered
    /// values such as event times take a fraction of their plain size.
    Delta,
}

/// Turns dictionary encoding off for the columns (top level or in structs)
/// whose values in the file's first batch are mostly distinct, such as ids
/// and event times: hashing every value into a dictionary that is as large
/// as the values themselves (or that Parquet abandons once it outgrows its
/// page) costs time and saves no space. Integer and timestamp columns are
/// delta-encoded then. Depends only on the data, so files stay reproducible.
fn without_dictionary_for_unique_values(props: WriterProperties, batch: &RecordBatch) -> WriterProperties {
    let mut unique = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        collect_unique_values(vec![field.name().clone()], column, &mut unique);
    }
    if unique.is_empty() {
        return props;
    }
    let mut builder = props.into_builder();
    for (path, how) in unique {
        let path = ColumnPath::new(path);
        builder = builder.set_column_dictionary_enabled(path.clone(), false);
        if how == Undictionary::Delta {
            builder = builder.set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
        }
    }
    builder.build()
}

/// Whether the first `DICTIONARY_SAMPLE_MAX` of a column's `non_null`
/// values are mostly distinct. Stops as soon as the answer is certain (half
/// the sample distinct, or too few values left to get there): the consumer
/// decides this for every partition file of every flush.
fn mostly_distinct<T: Eq + std::hash::Hash>(values: impl Iterator<Item = T>, non_null: usize) -> bool {
    let n = non_null.min(DICTIONARY_SAMPLE_MAX);
    if n < DICTIONARY_SAMPLE_MIN {
        return false;
    }
    // A fixed seed: the answer never depends on it, and the run stays reproducible.
    let mut distinct = HashSet::with_capacity_and_hasher(n / 2 + 1, foldhash::fast::FixedState::with_seed(0));
    for (seen, value) in values.take(n).enumerate() {
        distinct.insert(value);
        if distinct.len() * 2 > n {
            return true;
        }
        if (distinct.len() + (n - seen - 1)) * 2 <= n {
            return false;
        }
    }
    false
}

fn collect_unique_values(path: Vec<String>, column: &ArrayRef, out: &mut Vec<(Vec<String>, Undictionary)>) {
    use arrow_array::types::{Date32Type, Float32Type, Float64Type, Int32Type, Int64Type, TimestampMillisecondType};
    let plain = |distinct: bool| distinct.then_some(Undictionary::Plain);
    let delta = |distinct: bool| distinct.then_some(Undictionary::Delta);
    let non_null = column.len() - column.null_count();
    let how = if let Some(strings) = column.as_string_opt::<i32>() {
        plain(mostly_distinct(strings.iter().flatten(), non_null))
    } else if let Some(a) = column.as_primitive_opt::<TimestampMillisecondType>() {
        delta(mostly_distinct(a.iter().flatten(), non_null))
    } else if let Some(a) = column.as_primitive_opt::<Int64Type>() {
        delta(mostly_distinct(a.iter().flatten(), non_null))
    } else if let Some(a) = column.as_primitive_opt::<Int32Type>() {
        delta(mostly_distinct(a.iter().flatten(), non_null))
    } else if let Some(a) = column.as_primitive_opt::<Date32Type>() {
        delta(mostly_distinct(a.iter().flatten(), non_null))
    } else if let Some(a) = column.as_primitive_opt::<Float64Type>() {
        plain(mostly_distinct(a.iter().flatten().map(f64::to_bits), non_null))
    } else if let Some(a) = column.as_primitive_opt::<Float32Type>() {
        plain(mostly_distinct(a.iter().flatten().map(f32::to_bits), non_null))
    } else if let Some(s) = column.as_struct_opt() {
        for (field, child) in s.fields().iter().zip(s.columns()) {
            let mut p = path.clone();
            p.push(field.name().clone());
            collect_unique_values(p, child, out);
        }
        None
    } else {
        None
    };
    if let Some(how) = how {
        out.push((path, how));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::UnknownFieldPolicy;

    fn writer(budget: usize, target: usize) -> LakeWriter<u64> {
        let schema = Schema::parse(
            "[[columns]]\nname = \"id\"\ntype = \"bigint\"\n[[columns]]\nname = \"text\"\ntype = \"string\"\n",
            false,
        )
        .unwrap();
        let layout = FileLayout::new(&schema, &[], UnknownFieldPolicy::Keep);
        let settings = WriterSettings {
            memory_budget: budget,
            target_file_bytes: target,
            encode_rows: 64,
            ..WriterSettings::default()
        };
        LakeWriter::new(Arc::new(schema), layout, UnknownFieldPolicy::Keep, settings, None)
    }

    fn record(i: u64) -> String {
        format!(r#"{{"id":{i},"text":"{}"}}"#, "x".repeat((i % 97) as usize))
    }

    #[test]
    fn should_flush_largest_partition_when_memory_budget_is_reached() {
        let budget = 64 << 10;
        let mut w = writer(budget, usize::MAX);
        let mut rows = 0;
        for i in 0..20_000u64 {
            // 40 partitions written round-robin: every one stays small, together they do not.
            let partition = format!("p={}/", i % 40);
            w.push(&partition, &record(i), &i, None).unwrap();
            w.maintain().unwrap();
            assert!(w.memory() <= budget, "memory {} over the budget after record {i}", w.memory());
        }
        let early = w.take_ready();
        assert!(early.len() > 40, "the budget forced early files: {}", early.len());
        w.finish_all().unwrap();
        for f in early.iter().chain(w.take_ready().iter()) {
            assert!(f.first <= f.last);
            rows += f.rows;
        }
        assert_eq!(rows, 20_000);
    }

    #[test]
    fn should_finish_file_at_target_size() {
        let mut w = writer(usize::MAX, 16 << 10);
        for i in 0..5_000u64 {
            w.push("p/", &record(i), &i, None).unwrap();
            w.maintain().unwrap();
        }
        w.finish_all().unwrap();
        let files = w.take_ready();
        assert!(files.len() > 1, "{} files", files.len());
        // Consecutive files of one partition cover consecutive ranges.
        for pair in files.windows(2) {
            assert_eq!(pair[0].last + 1, pair[1].first);
        }
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 5_000);
    }

    #[test]
    fn should_not_write_a_file_for_a_partition_whose_only_record_failed() {
        let mut w = writer(usize::MAX, usize::MAX);
        assert!(w.push("bad/", r#"{"id":"not a number"}"#, &1, None).is_err());
        w.push("good/", &record(2), &2, None).unwrap();
        w.finish_all().unwrap();
        let files = w.take_ready();
        assert_eq!(files.iter().map(|f| f.partition.as_str()).collect::<Vec<_>>(), ["good/"]);
    }

    #[test]
    fn should_delta_encode_mostly_distinct_integers_and_keep_dictionaries_for_repeated_values() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let mut w = writer(usize::MAX, usize::MAX);
        // The decision is taken on the first encoded batch: make it large enough.
        w.settings.encode_rows = 2_000;
        for i in 0..3_000u64 {
            w.push("p/", &record(i), &i, None).unwrap();
            w.maintain().unwrap();
        }
        w.finish_all().unwrap();
        let file = w.take_ready().pop().unwrap();
        let reader = SerializedFileReader::new(bytes::Bytes::from(file.data)).unwrap();
        let row_group = reader.metadata().row_group(0);
        let (id, text) = (row_group.column(0), row_group.column(1));
        assert!(id.dictionary_page_offset().is_none(), "distinct ids get no dictionary");
        assert!(id.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED));
        assert!(text.dictionary_page_offset().is_some(), "97 distinct texts keep their dictionary");
    }

    proptest::proptest! {
        /// The early exits give the answer of counting the whole sample.
        #[test]
        fn mostly_distinct_stops_early_with_the_whole_sample_s_answer(
            values in proptest::collection::vec(proptest::option::of(0u16..3_000), 0..4_000),
            modulus in 1u16..3_000,
        ) {
            let values: Vec<Option<u16>> = values.into_iter().map(|v| v.map(|v| v % modulus)).collect();
            let sample: Vec<u16> = values.iter().flatten().copied().take(DICTIONARY_SAMPLE_MAX).collect();
            let whole = sample.len() >= DICTIONARY_SAMPLE_MIN
                && sample.iter().collect::<std::collections::HashSet<_>>().len() * 2 > sample.len();
            let non_null = values.iter().flatten().count();
            proptest::prop_assert_eq!(mostly_distinct(values.iter().flatten(), non_null), whole);
        }
    }

    #[test]
    fn writer_properties_set_snappy_explicitly() {
        let props = WriterSettings::default().writer_properties();
        assert_eq!(props.compression(&ColumnPath::from("any")), Compression::SNAPPY);
        assert_eq!(props.max_row_group_row_count(), Some(128 * 1024));
    }
}
