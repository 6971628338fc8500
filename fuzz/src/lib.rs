//! Shared checks of the shardlake fuzz targets (`fuzz_targets/`).
//!
//! A known defect class can be skipped while it is being fixed, so that the
//! fuzzers keep looking for new ones: guard the check with [`known`] and mark
//! it `KNOWN`; `SHARDLAKE_FUZZ_KNOWN=1` fuzzes such classes anyway. None is
//! skipped now (the findings so far are fixed; reproducers in
//! fuzz/regressions/).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{Map, Value as Json};
use shardlake::error_output::{ErrorKind, Line};
use shardlake::partition::{PartitionTemplate, TimeSource};
use shardlake::pipeline::{OutputKind, OutputObject, Pipeline, PipelineStats, TableSpec};
use shardlake::schema::{Schema, UnknownFieldPolicy};
use shardlake::writer::WriterSettings;

/// 2024-03-15T07:12:01.123Z, the arrival time of fuzzed records.
pub const T0: i64 = 1_710_486_721_123;

/// Whether known defect classes are fuzzed too (`SHARDLAKE_FUZZ_KNOWN=1`).
pub fn include_known() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SHARDLAKE_FUZZ_KNOWN").is_ok_and(|v| v == "1"))
}

/// KNOWN: whether to skip an input of a known defect class (`true` when the
/// class applies and known classes are not fuzzed).
pub fn known(applies: bool) -> bool {
    applies && !include_known()
}

/// Whether `b` is JSON whitespace... as the pipeline counts blank lines
/// (`u8::is_ascii_whitespace`, which also takes form feed).
pub fn is_blank(raw: &[u8]) -> bool {
    raw.iter().all(u8::is_ascii_whitespace)
}

/// A table spec with small writer settings (several row groups and files).
pub fn spec(schema: Schema, template: &str, time_source: TimeSource, policy: UnknownFieldPolicy) -> TableSpec {
    TableSpec {
        schema: Arc::new(schema),
        template: PartitionTemplate::parse(template).expect("fuzz template parses"),
        time_source,
        unknown_fields: policy,
        max_record_bytes: 1 << 20,
        error_prefix: "errors/".into(),
        writer: WriterSettings {
            memory_budget: 8 << 20,
            target_file_bytes: 1 << 20,
            row_group_rows: 3,
            encode_rows: 2,
            encode_bytes: 64 << 10,
        },
        max_partition_bytes: 700,
        field_ids: None,
    }
}

/// Runs `records` (positions `Line(1..)`) through a fresh pipeline.
pub fn run_pipeline(spec: TableSpec, records: &[&[u8]], arrival: Option<i64>) -> (PipelineStats, Vec<OutputObject>) {
    let mut common = Map::new();
    common.insert("source".into(), Json::from("fuzz"));
    let mut pipeline = Pipeline::new(spec, "fuzz".into(), common);
    let mut outputs = Vec::new();
    for (i, raw) in records.iter().enumerate() {
        pipeline.push(raw, &Line(i as u64 + 1), arrival).expect("push fails only when the writer fails");
        outputs.extend(pipeline.take_outputs());
    }
    pipeline.finish_all().expect("finish_all");
    outputs.extend(pipeline.take_outputs());
    (pipeline.stats(), outputs)
}

/// What became of each input record (by 1-based line).
#[derive(Debug, Default)]
pub struct Fates {
    /// Rows written, per partition path.
    pub rows: BTreeMap<String, u64>,
    /// Error kind of each errored line.
    pub errors: BTreeMap<u64, (ErrorKind, String)>,
}

impl Fates {
    /// All rows written.
    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// Checks a pipeline run: every non-blank record is a row or an error line,
/// data files read back with their row counts, partition paths have
/// `levels` well-formed levels, error lines are JSON and keep the raw bytes.
pub fn check_outputs(records: &[&[u8]], stats: &PipelineStats, outputs: &[OutputObject], levels: usize) -> Fates {
    let mut fates = Fates::default();
    let non_blank = records.iter().filter(|r| !is_blank(r)).count() as u64;
    assert_eq!(stats.records, non_blank, "records counted: {stats:?}");
    for out in outputs {
        if let Err(e) = shardlake::store::check_key(&out.key) {
            panic!("the store refuses output key {:?}: {e}", out.key);
        }
        match &out.kind {
            OutputKind::Data { partition, rows, .. } => {
                assert!(out.key.starts_with(partition.as_str()), "key {} vs partition {partition}", out.key);
                check_partition_path(partition, levels);
                assert!(out.key.len() <= 1024, "key over 1,024 bytes: {} bytes", out.key.len());
                let file_name = &out.key[partition.len()..];
                assert!(!file_name.contains('/') && file_name.len() <= 255, "file name {file_name:?}");
                assert_eq!(read_parquet_rows(&out.data), *rows, "rows of {}", out.key);
                *fates.rows.entry(partition.clone()).or_default() += rows;
            }
            OutputKind::Errors { kind, records: n } => {
                let prefix = format!("errors/{}/", kind.as_str());
                assert!(out.key.starts_with(&prefix), "error key {}", out.key);
                let text = std::str::from_utf8(&out.data).expect("error file is UTF-8");
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines.len() as u64, *n, "error lines of {}", out.key);
                for line in lines {
                    let v: Json = serde_json::from_str(line).unwrap_or_else(|e| panic!("error line {line:?}: {e}"));
                    assert_eq!(v["error_type"].as_str(), Some(kind.as_str()), "{line}");
                    assert_eq!(v["source"].as_str(), Some("fuzz"), "{line}");
                    let at = v["line"].as_u64().unwrap_or_else(|| panic!("no line in {line}"));
                    assert!(at >= 1 && at as usize <= records.len(), "{line}");
                    let raw = match (v.get("raw"), v.get("raw_base64")) {
                        (Some(Json::String(s)), None) => s.as_bytes().to_vec(),
                        (None, Some(Json::String(b))) => {
                            base64::engine::general_purpose::STANDARD.decode(b).expect("raw_base64 is base64")
                        }
                        _ => panic!("error line without exactly one of raw / raw_base64: {line}"),
                    };
                    assert_eq!(raw, records[at as usize - 1], "raw bytes of line {at}: {line}");
                    let message = v["error_message"].as_str().unwrap_or_default().to_string();
                    let old = fates.errors.insert(at, (*kind, message));
                    assert!(old.is_none(), "line {at} errored twice");
                }
            }
        }
    }
    let errors = fates.errors.len() as u64;
    assert_eq!(errors, stats.error_records(), "error lines vs stats {stats:?}");
    assert_eq!(fates.total_rows() + errors, stats.records, "rows + errors != records: {stats:?}");
    fates
}

/// A rendered partition path: `levels` levels, each ending in `/`, none
/// empty, `.` or `..`, none over 255 bytes, no backslash or control character.
pub fn check_partition_path(partition: &str, levels: usize) {
    if levels == 0 {
        assert_eq!(partition, "");
        return;
    }
    assert!(partition.ends_with('/'), "partition {partition:?} does not end in /");
    let segments: Vec<&str> = partition[..partition.len() - 1].split('/').collect();
    assert_eq!(segments.len(), levels, "levels of {partition:?}");
    for seg in segments {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "segment {seg:?} of {partition:?}");
        assert!(seg.len() <= 255, "segment of {} bytes in {partition:?}", seg.len());
        assert!(!seg.contains('\\'), "segment {seg:?}");
        assert!(!seg.chars().any(char::is_control), "segment {seg:?}");
    }
}

/// Reads a Parquet file back (footer and every batch); its row count.
pub fn read_parquet_rows(data: &[u8]) -> u64 {
    let bytes = Bytes::copy_from_slice(data);
    let reader = SerializedFileReader::new(bytes.clone()).expect("Parquet footer reads");
    let footer_rows = reader.metadata().file_metadata().num_rows() as u64;
    let batches = ParquetRecordBatchReaderBuilder::try_new(bytes).expect("arrow reader").build().expect("build");
    let mut rows = 0u64;
    for batch in batches {
        rows += batch.expect("batch decodes").num_rows() as u64;
    }
    assert_eq!(rows, footer_rows, "rows read vs footer");
    rows
}
