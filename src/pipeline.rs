//! One record at a time from raw bytes to the lake: size check, JSON parse,
//! event time, partition path, column coercion; failures go to the error
//! output. The same pipeline serves `convert` (positions are line numbers) and
//! the Kinesis consumer (positions are sequence numbers).

use std::collections::BTreeMap;
use std::sync::Arc;

use parquet::file::metadata::ParquetMetaData;
use serde_json::{Map, Value as Json};

use crate::columns::{CoerceError, DecodeError};
use crate::error::Result;
use crate::error_output::{ErrorKind, ErrorOutput, Position};
use crate::json::{Kind, Parser, SyntaxError};
use crate::partition::{PartitionTemplate, TimeSource, event_time_millis};
use crate::schema::{FieldIds, FileLayout, Schema, UnknownFieldPolicy};
use crate::store::{MAX_KEY_BYTES, MAX_SEGMENT_BYTES, key_length_problem};
use crate::writer::{LakeWriter, WriterSettings};

/// Kinesis' largest record (1 MiB); also the default for files.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Error files are cut at this size.
const ERROR_FILE_BYTES: usize = 8 << 20;

/// Everything that decides what a lake file contains.
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Columns and types.
    pub schema: Arc<Schema>,
    /// Partition path template.
    pub template: PartitionTemplate,
    /// Where `!{timestamp:...}` takes the time from.
    pub time_source: TimeSource,
    /// What to do with fields the schema does not list.
    pub unknown_fields: UnknownFieldPolicy,
    /// Records larger than this go to `too_large`.
    pub max_record_bytes: usize,
    /// Error files go under `{error_prefix}{error_type}/`.
    pub error_prefix: String,
    /// Parquet and memory settings.
    pub writer: WriterSettings,
    /// For an Iceberg table's data files, the field ids of each column
    /// (then `_extra`): files keep every column, carry the ids and store
    /// timestamps in microseconds. `None` for a hive lake.
    pub field_ids: Option<Arc<Vec<FieldIds>>>,
    /// Bytes a rendered partition path may take (see [`partition_budget`]);
    /// a record whose path is longer, or has a level longer than a file
    /// name, goes to `partition_too_long`.
    pub max_partition_bytes: usize,
}

/// The suffix of data file names.
const DATA_SUFFIX: &str = ".snappy.parquet";

/// The bytes a rendered partition path may take so that every key a
/// pipeline makes stays within the stores' limits ([`MAX_KEY_BYTES`] with the
/// destination's `prefix_bytes`, [`MAX_SEGMENT_BYTES`] per level), given its
/// file name stem and positions (`{stem}-{first}-{last}`) of at most
/// `position_bytes` each. An error, naming the setting to change, when the
/// fixed parts alone cannot fit.
pub fn partition_budget(
    prefix_bytes: usize,
    stem: &str,
    position_bytes: usize,
    error_prefix: &str,
    template: &PartitionTemplate,
) -> std::result::Result<usize, String> {
    let name = stem.len() + 2 + 2 * position_bytes + DATA_SUFFIX.len();
    if name > MAX_SEGMENT_BYTES {
        return Err(format!(
            "object names `{stem}-{{first}}-{{last}}{DATA_SUFFIX}` would be up to {name} bytes, over the \
             {MAX_SEGMENT_BYTES}-byte limit of file names; use a shorter stream (or input file) name"
        ));
    }
    if let Some(why) = key_length_problem(error_prefix) {
        return Err(format!("error_prefix: {why}"));
    }
    let longest_kind = ErrorKind::ALL.iter().map(|k| k.as_str().len() + 1).max().unwrap_or(0);
    let fixed = prefix_bytes + name + error_prefix.len() + longest_kind;
    // A partition path needs room for at least a few levels of dates and values.
    const MIN_PARTITION_BYTES: usize = 128;
    let budget = MAX_KEY_BYTES.saturating_sub(prefix_bytes + name);
    if fixed > MAX_KEY_BYTES || budget < MIN_PARTITION_BYTES {
        return Err(format!(
            "keys would leave {budget} bytes for the partition path within S3's {MAX_KEY_BYTES}-byte key limit \
             (prefix {prefix_bytes} bytes, file names up to {name}); shorten the destination prefix, the \
             error_prefix or the stream name"
        ));
    }
    // The template's own text, with every value missing, must fit already.
    let mut path = String::new();
    template.render(None, "{}", &mut path);
    if let Some(why) = partition_problem(&path, budget) {
        return Err(format!("partition `{}`: {why}", template.source()));
    }
    Ok(budget)
}

/// Why a rendered partition path cannot be stored within `budget` bytes.
pub fn partition_problem(partition: &str, budget: usize) -> Option<String> {
    if let Some(why) = key_length_problem(partition) {
        return Some(format!("partition path {why}"));
    }
    (partition.len() > budget).then(|| {
        format!(
            "partition path is {} bytes; with the destination prefix and file name, keys allow {budget}",
            partition.len()
        )
    })
}

/// What kind of object an [`OutputObject`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputKind {
    /// A Parquet data file.
    Data {
        /// Rendered partition path.
        partition: String,
        /// Rows in the file.
        rows: u64,
        /// Its footer (row groups, column statistics).
        footer: Arc<ParquetMetaData>,
    },
    /// A JSON Lines error file.
    Errors {
        /// Why its records failed.
        kind: ErrorKind,
        /// Records in the file.
        records: u64,
    },
}

/// A finished object to upload, under a deterministic key.
#[derive(Debug)]
pub struct OutputObject {
    /// Key relative to the destination prefix.
    pub key: String,
    /// What it is.
    pub kind: OutputKind,
    /// The bytes.
    pub data: Vec<u8>,
}

/// Counters of one pipeline run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records seen (blank lines excluded).
    pub records: u64,
    /// Records routed to the error output, by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
    /// Unknown fields dropped under the `drop` policy.
    pub dropped_fields: u64,
    /// Blank lines skipped.
    pub blank_lines: u64,
}

impl PipelineStats {
    /// Total records in the error output.
    pub fn error_records(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Routes records of one source (a file, a shard) into data and error files.
pub struct Pipeline<P: Position> {
    spec: TableSpec,
    /// File name stem: `{stem}-{first}-{last}`.
    stem: String,
    lake: LakeWriter<P>,
    errors: ErrorOutput<P>,
    /// The partition path of the last record.
    partition: String,
    /// `PartitionTemplate::time_bucket_ms` of the template.
    time_bucket_ms: Option<i64>,
    /// The time bucket `partition` was rendered for (`Some(None)`: no time).
    last_bucket: Option<Option<i64>>,
    records: u64,
    blank_lines: u64,
}

impl<P: Position> Pipeline<P> {
    /// A pipeline whose files are named `{stem}-{first}-{last}` and whose
    /// error lines carry `common` fields.
    pub fn new(spec: TableSpec, stem: String, common: Map<String, Json>) -> Self {
        let keys: Vec<String> = spec.template.keys().iter().map(|k| k.name.clone()).collect();
        let layout = match &spec.field_ids {
            Some(ids) => FileLayout::iceberg(&spec.schema, spec.unknown_fields, ids.clone()),
            None => FileLayout::new(&spec.schema, &keys, spec.unknown_fields),
        };
        // A top-level timestamp column that is the time field gets the time the
        // pipeline parsed for the partition path instead of parsing it again.
        let time_column = match &spec.time_source {
            TimeSource::Field(path) if path.len() == 1 => spec
                .schema
                .index_of(&path[0])
                .filter(|&c| spec.schema.columns[c].ty == crate::schema::HiveType::Timestamp),
            _ => None,
        };
        let lake = LakeWriter::new(spec.schema.clone(), layout, spec.unknown_fields, spec.writer.clone(), time_column);
        let time_bucket_ms = spec.template.time_bucket_ms();
        Pipeline {
            spec,
            stem,
            lake,
            errors: ErrorOutput::new(common, ERROR_FILE_BYTES),
            partition: String::new(),
            time_bucket_ms,
            last_bucket: None,
            records: 0,
            blank_lines: 0,
        }
    }

    /// Processes one raw record. `arrival_ms` is the Kinesis arrival time
    /// (`None` for files). Only writer failures are errors; bad records go
    /// to the error output.
    pub fn push(&mut self, raw: &[u8], pos: &P, arrival_ms: Option<i64>) -> Result<()> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            self.blank_lines += 1;
            return Ok(());
        }
        self.records += 1;
        if raw.len() > self.spec.max_record_bytes {
            let msg = format!(
                "record is {} bytes, over the {} byte limit (max_record_bytes)",
                raw.len(),
                self.spec.max_record_bytes
            );
            self.errors.push(ErrorKind::TooLarge, &msg, None, raw, pos);
            return Ok(());
        }
        // SIMD validation: several times faster than `std::str::from_utf8` on
        // the long, mostly-ASCII lines seen here.
        let Ok(text) = simdutf8::basic::from_utf8(raw) else {
            self.errors.push(ErrorKind::InvalidJson, "record is not valid UTF-8", None, raw, pos);
            return Ok(());
        };
        let mut probe = Parser::new(text);
        if probe.peek().ok() != Some(Kind::Object) {
            let (kind, msg) = match probe.skip().map(|_| probe.at_end()) {
                Ok(true) => (ErrorKind::NotObject, "record is JSON but not an object".to_string()),
                Ok(false) => (ErrorKind::InvalidJson, "invalid JSON: text after the value".to_string()),
                Err(e) => (syntax_kind(&e), e.to_string()),
            };
            self.errors.push(kind, &msg, None, raw, pos);
            return Ok(());
        }
        // Records mostly arrive in runs of one time bucket: decode this one into
        // the last record's partition, reading its time on the way, which saves
        // a separate scan for the time field. Anything else (another bucket, no
        // time, a duplicate time key, an error) is undone and goes the full way.
        if let (Some(ms), Some(Some(bucket))) = (self.time_bucket_ms, self.last_bucket)
            && self.lake.reads_time_column()
            && let Ok(true) =
                self.lake.push_if_time(&self.partition, text, pos, |t| t.is_some_and(|t| t.div_euclid(ms) == bucket))
        {
            return self.lake.maintain();
        }
        let time = match &self.spec.time_source {
            _ if !self.spec.template.uses_time() => None,
            TimeSource::Arrival => arrival_ms,
            TimeSource::Field(path) => match event_time_millis(text, path) {
                Ok(t) => t,
                Err(bad) => {
                    // A record cut short before its time field is invalid JSON, not a bad time.
                    if let Some(e) = syntax_error(text) {
                        self.errors.push(syntax_kind(&e), &e.to_string(), None, raw, pos);
                        return Ok(());
                    }
                    let msg = format!(
                        "{}: {} is not a time (expected RFC 3339, epoch seconds or epoch millis)",
                        bad.field, bad.value
                    );
                    self.errors.push(ErrorKind::TypeMismatch, &msg, Some(&bad.field), raw, pos);
                    return Ok(());
                }
            },
        };
        // Time-only templates render the same path for every record of the same
        // time bucket (usually long runs of records): skip the formatting then.
        let bucket = self.time_bucket_ms.map(|ms| time.map(|t| t.div_euclid(ms)));
        if bucket.is_none() || bucket != self.last_bucket {
            self.spec.template.render(time, text, &mut self.partition);
            self.last_bucket = bucket;
            if let Some(why) = partition_problem(&self.partition, self.spec.max_partition_bytes) {
                self.last_bucket = None;
                // Broken JSON further on is the first thing to fix.
                let (kind, msg) = match syntax_error(text) {
                    Some(e) => (syntax_kind(&e), e.to_string()),
                    None => (ErrorKind::PartitionTooLong, format!("{why}; shorten the values of !{{field:...}}")),
                };
                self.errors.push(kind, &msg, None, raw, pos);
                return Ok(());
            }
        }
        match self.lake.push(&self.partition, text, pos, time) {
            Ok(()) => self.lake.maintain()?,
            Err(e) => {
                let (kind, msg, field) = classify(text, e);
                self.errors.push(kind, &msg, field.as_deref(), raw, pos);
            }
        }
        Ok(())
    }

    /// Sends a record of `len` bytes of which only the first `kept` were
    /// read (a line too long to hold) to `too_large`, with its length.
    pub fn push_cut(&mut self, kept: &[u8], len: usize, pos: &P) {
        self.records += 1;
        let msg = format!(
            "record is {len} bytes, over the {} byte limit (max_record_bytes); its first {} bytes are kept",
            self.spec.max_record_bytes,
            kept.len()
        );
        self.errors.push_cut(ErrorKind::TooLarge, &msg, kept, len, pos);
    }

    /// Sends a record that failed before JSON decoding (an undecodable
    /// aggregate) to the error output.
    pub fn push_error(&mut self, kind: ErrorKind, message: &str, raw: &[u8], pos: &P) {
        self.records += 1;
        self.errors.push(kind, message, None, raw, pos);
    }

    /// Finishes every open data and error file.
    pub fn finish_all(&mut self) -> Result<()> {
        self.lake.finish_all()?;
        self.errors.finish_all();
        Ok(())
    }

    /// Takes the finished objects, with their keys.
    pub fn take_outputs(&mut self) -> Vec<OutputObject> {
        let mut out = Vec::new();
        if !self.lake.has_ready() && !self.errors.has_ready() {
            return out;
        }
        for f in self.lake.take_ready() {
            out.push(OutputObject {
                key: format!(
                    "{}{}-{}-{}.snappy.parquet",
                    f.partition,
                    self.stem,
                    f.first.key_part(),
                    f.last.key_part()
                ),
                kind: OutputKind::Data { partition: f.partition, rows: f.rows, footer: f.footer },
                data: f.data,
            });
        }
        for f in self.errors.take_ready() {
            out.push(OutputObject {
                key: format!(
                    "{}{}/{}-{}-{}.jsonl",
                    self.spec.error_prefix,
                    f.kind.as_str(),
                    self.stem,
                    f.first.key_part(),
                    f.last.key_part()
                ),
                kind: OutputKind::Errors { kind: f.kind, records: f.records },
                data: f.data,
            });
        }
        out
    }

    /// Bytes held in open partitions and error files.
    pub fn memory(&self) -> usize {
        self.lake.memory() + self.errors.memory()
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            records: self.records,
            errors: self.errors.counts().clone(),
            dropped_fields: self.lake.dropped_fields(),
            blank_lines: self.blank_lines,
        }
    }
}

/// The first syntax error of a record, text after its value included.
fn syntax_error(text: &str) -> Option<SyntaxError> {
    let mut p = Parser::new(text);
    match p.skip() {
        Err(e) => Some(e),
        Ok(_) if !p.at_end() => Some(SyntaxError { offset: p.offset(), expected: "the end of the record" }),
        Ok(_) => None,
    }
}

/// The error kind of a record that is not JSON, or too deep to read.
fn syntax_kind(e: &SyntaxError) -> ErrorKind {
    if e.is_too_deep() { ErrorKind::TooDeep } else { ErrorKind::InvalidJson }
}

/// The error kind, message and field of a record that failed to decode. A
/// coercion error in a record that is also invalid JSON further on counts as
/// invalid JSON.
fn classify(text: &str, e: DecodeError) -> (ErrorKind, String, Option<String>) {
    let syntax = |e: SyntaxError| (syntax_kind(&e), e.to_string(), None);
    match e {
        DecodeError::Syntax(s) => syntax(s),
        DecodeError::Coerce(c) => {
            if let Some(s) = syntax_error(text) {
                return syntax(s);
            }
            match c {
                CoerceError::Mismatch { path, expected, found } => {
                    (ErrorKind::TypeMismatch, format!("{path}: expected {expected}, found {found}"), Some(path))
                }
                CoerceError::Unknown { path } => (
                    ErrorKind::UnknownField,
                    format!("{path}: field is not in the schema (unknown_fields = \"error\")"),
                    Some(path),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(t: &str) -> PartitionTemplate {
        PartitionTemplate::parse(t).unwrap()
    }

    #[test]
    fn budget_leaves_room_for_prefix_and_file_names() {
        let t = template("country=!{field:c}/");
        // 1024 - 10 (prefix) - (6 + 2 + 2 * 20 + 15) (name).
        assert_eq!(partition_budget(10, "events", 20, "errors/", &t), Ok(1024 - 10 - 63));
        let err = partition_budget(0, &"s".repeat(200), 63, "errors/", &t).unwrap_err();
        assert!(err.contains("over the 255-byte limit of file names"), "{err}");
        let err = partition_budget(950, "events", 20, "errors/", &t).unwrap_err();
        assert!(err.contains("1024-byte key limit"), "{err}");
        let err = partition_budget(0, "events", 20, &format!("{}/", "e".repeat(300)), &t).unwrap_err();
        assert!(err.starts_with("error_prefix:"), "{err}");
        let err =
            partition_budget(0, "events", 20, "errors/", &template(&format!("{}=!{{field:c}}/", "k".repeat(240))))
                .unwrap_err();
        assert!(err.starts_with("partition `"), "{err}");
    }

    #[test]
    fn partition_paths_within_limits() {
        assert_eq!(partition_problem("a=1/b=2/", 100), None);
        let level = format!("a={}/", "v".repeat(300));
        assert!(partition_problem(&level, 2000).unwrap().contains("302 bytes, over the 255-byte limit"));
        let wide = "a=1/".repeat(100);
        assert!(partition_problem(&wide, 300).unwrap().contains("keys allow 300"));
    }
}
