//! The error output: records that cannot go into the lake, as JSON Lines
//! under `{error_prefix}{error_type}/`, each with the original bytes, where it
//! came from and why it failed.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Value as Json};

/// Where error files go by default, under the destination: a folder whose
/// name starts with `_`, which table readers skip (pyarrow's and Spark's
/// hive discovery, Athena and Glue crawlers treat `_`- and `.`-prefixed
/// paths as hidden), so a lake with bad records in it still opens as a table.
pub const DEFAULT_ERROR_PREFIX: &str = "_errors/";

/// Why a record went to the error output; also its folder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// Not parseable as JSON (or not UTF-8).
    InvalidJson,
    /// Valid JSON but not an object.
    NotObject,
    /// A value that cannot be coerced to its column type, a required column
    /// missing, or an unreadable time field.
    TypeMismatch,
    /// A field not in the schema, under the `error` policy.
    UnknownField,
    /// Larger than the maximum record size.
    TooLarge,
    /// Starts with the KPL aggregation magic but cannot be unpacked, or
    /// holds no user records.
    UndecodableAggregate,
    /// Arrays and objects nested deeper than [`crate::json::MAX_DEPTH`].
    TooDeep,
    /// Its partition path cannot be stored: a path segment over the 255
    /// bytes of a file name, or a key over S3's 1,024 bytes.
    PartitionTooLong,
}

impl ErrorKind {
    /// Every kind, in folder-name order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::InvalidJson,
        ErrorKind::NotObject,
        ErrorKind::TypeMismatch,
        ErrorKind::UnknownField,
        ErrorKind::TooLarge,
        ErrorKind::UndecodableAggregate,
        ErrorKind::TooDeep,
        ErrorKind::PartitionTooLong,
    ];

    /// The folder name (`type_mismatch`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::NotObject => "not_object",
            ErrorKind::TypeMismatch => "type_mismatch",
            ErrorKind::UnknownField => "unknown_field",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::UndecodableAggregate => "undecodable_aggregate",
            ErrorKind::TooDeep => "too_deep",
            ErrorKind::PartitionTooLong => "partition_too_long",
        }
    }
}

/// Where a record came from, written into its error line and used in file names.
pub trait Position: Clone {
    /// Adds this position's fields (`line`, or `shard` + `sequence_number`).
    fn describe(&self, out: &mut Map<String, Json>);
    /// The position as it appears in object keys.
    fn key_part(&self) -> String;
}

/// A line number (1-based) in an input file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line(pub u64);

impl Position for Line {
    fn describe(&self, out: &mut Map<String, Json>) {
        out.insert("line".into(), Json::from(self.0));
    }
    fn key_part(&self) -> String {
        self.0.to_string()
    }
}

/// A finished error file of one kind.
#[derive(Debug)]
pub struct ErrorFile<P> {
    /// Why its records failed.
    pub kind: ErrorKind,
    /// Position of the first record.
    pub first: P,
    /// Position of the last record.
    pub last: P,
    /// Records in the file.
    pub records: u64,
    /// JSON Lines.
    pub data: Vec<u8>,
}

struct OpenErrors<P> {
    first: P,
    last: P,
    records: u64,
    data: Vec<u8>,
}

/// Collects error records per kind and cuts them into files.
pub struct ErrorOutput<P> {
    /// Fields added to every line (`source` for `convert`, `stream` later).
    common: Map<String, Json>,
    open: BTreeMap<ErrorKind, OpenErrors<P>>,
    ready: Vec<ErrorFile<P>>,
    max_file_bytes: usize,
    counts: BTreeMap<ErrorKind, u64>,
}

impl<P: Position> ErrorOutput<P> {
    /// An error output adding `common` fields to each line, cutting files at
    /// `max_file_bytes`.
    pub fn new(common: Map<String, Json>, max_file_bytes: usize) -> Self {
        ErrorOutput { common, open: BTreeMap::new(), ready: Vec::new(), max_file_bytes, counts: BTreeMap::new() }
    }

    /// Records one failed record.
    pub fn push(&mut self, kind: ErrorKind, message: &str, field: Option<&str>, raw: &[u8], pos: &P) {
        self.push_line(kind, message, field, raw, None, pos);
    }

    /// Records one failed record of `len` bytes, of which only `kept` (its
    /// start) could be held: the line says so with `raw_length`.
    pub fn push_cut(&mut self, kind: ErrorKind, message: &str, kept: &[u8], len: usize, pos: &P) {
        self.push_line(kind, message, None, kept, Some(len), pos);
    }

    fn push_line(
        &mut self,
        kind: ErrorKind,
        message: &str,
        field: Option<&str>,
        raw: &[u8],
        cut_from: Option<usize>,
        pos: &P,
    ) {
        let mut line = self.common.clone();
        line.insert("error_type".into(), Json::from(kind.as_str()));
        line.insert("error_message".into(), Json::from(message));
        if let Some(f) = field {
            line.insert("field".into(), Json::from(f));
        }
        pos.describe(&mut line);
        match std::str::from_utf8(raw) {
            Ok(s) => line.insert("raw".into(), Json::from(s)),
            // A cut can split a character: keep the whole characters before it.
            Err(e) if cut_from.is_some() && e.error_len().is_none() => {
                line.insert("raw".into(), Json::from(std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default()))
            }
            Err(_) => {
                line.insert("raw_base64".into(), Json::from(base64::engine::general_purpose::STANDARD.encode(raw)))
            }
        };
        if let Some(len) = cut_from {
            line.insert("raw_length".into(), Json::from(len));
            line.insert("raw_truncated".into(), Json::from(true));
        }
        let open = self.open.entry(kind).or_insert_with(|| OpenErrors {
            first: pos.clone(),
            last: pos.clone(),
            records: 0,
            data: Vec::new(),
        });
        serde_json::to_writer(&mut open.data, &line).expect("writing JSON to a Vec cannot fail");
        open.data.push(b'\n');
        open.last = pos.clone();
        open.records += 1;
        *self.counts.entry(kind).or_default() += 1;
        if open.data.len() >= self.max_file_bytes {
            self.finish(kind);
        }
    }

    fn finish(&mut self, kind: ErrorKind) {
        if let Some(o) = self.open.remove(&kind) {
            self.ready.push(ErrorFile { kind, first: o.first, last: o.last, records: o.records, data: o.data });
        }
    }

    /// Finishes every open error file.
    pub fn finish_all(&mut self) {
        for kind in ErrorKind::ALL {
            self.finish(kind);
        }
    }

    /// Whether finished error files are waiting.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Takes the finished error files.
    pub fn take_ready(&mut self) -> Vec<ErrorFile<P>> {
        std::mem::take(&mut self.ready)
    }

    /// Records per kind so far.
    pub fn counts(&self) -> &BTreeMap<ErrorKind, u64> {
        &self.counts
    }

    /// Bytes buffered in open error files.
    pub fn memory(&self) -> usize {
        self.open.values().map(|o| o.data.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_raw_bytes_position_and_reason() {
        let mut common = Map::new();
        common.insert("source".into(), Json::from("in.jsonl"));
        let mut out = ErrorOutput::new(common, 1 << 20);
        out.push(ErrorKind::TypeMismatch, "amount: expected double", Some("amount"), br#"{"amount":"x"}"#, &Line(7));
        out.push(ErrorKind::InvalidJson, "bad", None, b"\xff{", &Line(9));
        out.finish_all();
        let files = out.take_ready();
        assert_eq!(files.len(), 2);
        let tm = files.iter().find(|f| f.kind == ErrorKind::TypeMismatch).unwrap();
        let v: Json = serde_json::from_slice(&tm.data).unwrap();
        assert_eq!(v["source"], "in.jsonl");
        assert_eq!(v["line"], 7);
        assert_eq!(v["field"], "amount");
        assert_eq!(v["raw"], r#"{"amount":"x"}"#);
        let ij = files.iter().find(|f| f.kind == ErrorKind::InvalidJson).unwrap();
        let v: Json = serde_json::from_slice(&ij.data).unwrap();
        assert_eq!(v["raw_base64"], "/3s=");
        assert_eq!(out.counts()[&ErrorKind::InvalidJson], 1);
    }

    #[test]
    fn cuts_files_at_the_size_limit() {
        let mut out = ErrorOutput::new(Map::new(), 100);
        for i in 1..=10 {
            out.push(ErrorKind::NotObject, "not an object", None, b"[1,2,3]", &Line(i));
        }
        out.finish_all();
        let files = out.take_ready();
        assert!(files.len() > 1);
        assert_eq!(files.iter().map(|f| f.records).sum::<u64>(), 10);
        assert_eq!(files[0].first, Line(1));
        assert!(files.windows(2).all(|w| w[0].last < w[1].first));
    }
}
