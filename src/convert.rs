//! `convert`: JSON Lines files (plain or gzip, local, stdin or S3) into the
//! lake, what a Glue job or a Lambda ETL does in many AWS tutorials.
//!
//! Reading, parsing and encoding run on one blocking thread; finished objects
//! go through a small bounded channel to an async uploader, so memory stays
//! within the writer's budget plus a few files in flight.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parquet::file::metadata::ParquetMetaData;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::error_output::{ErrorKind, Line};
use crate::partition::{PartitionTemplate, TimeSource};
use crate::pipeline::{DEFAULT_MAX_RECORD_BYTES, OutputKind, OutputObject, Pipeline, PipelineStats, TableSpec};
use crate::schema::{FieldIds, Schema, SchemaInferrer, UnknownFieldPolicy};
use crate::store::{Location, ObjectStore, S3Options};
use crate::writer::WriterSettings;

/// Where the schema comes from.
#[derive(Debug, Clone)]
pub enum SchemaSource {
    /// A schema file (TOML, or JSON by extension).
    File(PathBuf),
    /// Inferred from the first `sample` records of the input.
    Infer {
        /// Records to sample.
        sample: usize,
    },
    /// Given directly.
    Given(Schema),
}

/// Everything `convert` needs.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// A path, `-` for stdin, or `s3://bucket/key`. `.gz` is detected by its magic bytes.
    pub input: String,
    /// `file:///dir`, a plain directory, or `s3://bucket/prefix/`.
    pub destination: String,
    /// The schema.
    pub schema: SchemaSource,
    /// Partition template.
    pub template: String,
    /// Event-time field for `!{timestamp:...}` (files have no arrival time).
    pub time_field: Option<String>,
    /// Error files go under `{destination}{error_prefix}{error_type}/`.
    pub error_prefix: String,
    /// What to do with fields the schema does not list.
    pub unknown_fields: UnknownFieldPolicy,
    /// Lines longer than this go to `too_large`.
    pub max_record_bytes: usize,
    /// Parquet and memory settings.
    pub writer: WriterSettings,
    /// S3 upload settings.
    pub s3: S3Options,
    /// `Some` to write an Iceberg table's data files: every column, with
    /// these field ids (each column's, then `_extra`'s), under `data/`; the
    /// summary then lists them in `data`. `None` for a hive lake.
    pub iceberg_field_ids: Option<Arc<Vec<FieldIds>>>,
    /// Data and error file names start with this instead of the input's
    /// name (an Iceberg append gives each run its own names, since a
    /// committed file is never overwritten).
    pub file_stem: Option<String>,
}

/// The folder of an Iceberg table's data files, under its location.
pub const ICEBERG_DATA_FOLDER: &str = "data/";

/// A data file written, with what an Iceberg commit needs of it.
#[derive(Debug, Clone)]
pub struct WrittenData {
    /// Its key under the destination.
    pub key: String,
    /// Its rendered partition folder (as the key starts).
    pub partition: String,
    /// Its size.
    pub bytes: u64,
    /// Its footer.
    pub footer: Arc<ParquetMetaData>,
}

/// Rows, files and bytes written to one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionSummary {
    /// Rows.
    pub rows: u64,
    /// Files.
    pub files: u64,
    /// Bytes.
    pub bytes: u64,
}

/// What a `convert` run did.
#[derive(Debug, Clone, Default)]
pub struct ConvertSummary {
    /// Records read, errors and dropped fields.
    pub stats: PipelineStats,
    /// Rows in data files.
    pub rows: u64,
    /// Data files written.
    pub data_files: u64,
    /// Error files written.
    pub error_files: u64,
    /// Input bytes (after decompression).
    pub bytes_in: u64,
    /// Bytes of all objects written.
    pub bytes_out: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per partition.
    pub partitions: BTreeMap<String, PartitionSummary>,
    /// Keys written, in upload order.
    pub keys: Vec<String>,
    /// The schema used (inferred or loaded).
    pub schema: Option<Schema>,
    /// The data files, for an Iceberg table's commit (only with
    /// [`ConvertOptions::iceberg_field_ids`]).
    pub data: Vec<WrittenData>,
}

impl ConvertSummary {
    /// Input MB (10^6 bytes) per wall-clock second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes_in as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The file name stem of a run's files.
fn file_stem(opts: &ConvertOptions) -> String {
    opts.file_stem.clone().unwrap_or_else(|| input_stem(&opts.input))
}

/// The longest file name stem `input_stem` gives.
const MAX_STEM_BYTES: usize = 120;

/// The most digits a line number has (`u64`).
const LINE_NUMBER_BYTES: usize = 20;

/// File name stem for output keys: the input's name without `.gz`/`.jsonl`,
/// reduced to characters that are safe in every store and reader.
pub fn input_stem(input: &str) -> String {
    if input == "-" {
        return "stdin".into();
    }
    let mut name = input.rsplit('/').next().unwrap_or(input).to_string();
    for ext in [".gz", ".jsonl", ".ndjson", ".json", ".txt"] {
        if let Some(s) = name.strip_suffix(ext) {
            name = s.to_string();
        }
    }
    // ASCII only, and short enough that `{stem}-{first line}-{last line}.snappy.parquet` is a valid file name.
    let stem: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(MAX_STEM_BYTES)
        .collect();
    if stem.is_empty() || stem.chars().all(|c| c == '.') { "input".into() } else { stem }
}

/// Counts bytes read from the underlying source (for the progress bar).
struct CountingReader<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads chunks that an async task pulls from an S3 body.
struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Opens the raw input bytes (file, stdin, or an S3 object streamed by a task).
async fn open_input(input: &str, s3: &S3Options) -> Result<Box<dyn Read + Send>> {
    if input == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    if input.starts_with("s3://") {
        let Location::S3 { bucket, prefix: key } = Location::parse(input)? else { unreachable!("s3 url") };
        let config = crate::aws::sdk_config().await;
        let store = crate::store::S3Store::new(
            crate::aws::s3_client_with(&config, &s3.timeouts),
            bucket,
            String::new(),
            s3.clone(),
        );
        let mut body = store.get_stream(&key).await?;
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(std::io::Error::other);
                let stop = chunk.is_err();
                if tx.send(chunk).await.is_err() || stop {
                    break;
                }
            }
        });
        return Ok(Box::new(ChannelReader { rx, current: bytes::Bytes::new() }));
    }
    let f = std::fs::File::open(input).map_err(|error| Error::Input { source_name: input.to_string(), error })?;
    Ok(Box::new(f))
}

/// Buffers raw input and decompresses it when it starts with the gzip magic
/// bytes. Blocking. `input` names the source in errors.
pub fn line_reader(raw: Box<dyn Read + Send>, input: &str) -> Result<Box<dyn BufRead + Send>> {
    let mut buffered = BufReader::with_capacity(1 << 20, raw);
    let head = buffered.fill_buf().map_err(|error| Error::Input { source_name: input.to_string(), error })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(1 << 20, flate2::bufread::MultiGzDecoder::new(buffered))))
    } else {
        Ok(Box::new(buffered))
    }
}

/// The table spec of a run, once the schema is known.
fn table_spec(opts: &ConvertOptions, schema: Schema) -> Result<TableSpec> {
    let template = match opts.iceberg_field_ids {
        Some(_) => PartitionTemplate::parse(&format!("{ICEBERG_DATA_FOLDER}{}", opts.template))?,
        None => PartitionTemplate::parse(&opts.template)?,
    };
    let time_source = match &opts.time_field {
        Some(f) if f.trim() == "arrival" => {
            return Err(Error::Config(
                "--time-field arrival: files have no arrival time; name the event-time field (e.g. --time-field ts)"
                    .into(),
            ));
        }
        Some(f) => TimeSource::parse(f)?,
        None if template.uses_time() => {
            return Err(Error::Config(format!(
                "the partition template `{}` uses !{{timestamp:...}}; pass --time-field with the event-time field \
                 (e.g. --time-field ts), since files have no arrival time",
                opts.template
            )));
        }
        None => TimeSource::Arrival,
    };
    let error_prefix = crate::store::folder_prefix(&opts.error_prefix);
    let prefix_bytes = Location::parse(&opts.destination)?.key_prefix_bytes();
    let max_partition_bytes =
        crate::pipeline::partition_budget(prefix_bytes, &file_stem(opts), LINE_NUMBER_BYTES, &error_prefix, &template)
            .map_err(|e| Error::Config(format!("output keys too long: {e}")))?;
    Ok(TableSpec {
        schema: Arc::new(schema),
        template,
        time_source,
        unknown_fields: opts.unknown_fields,
        max_record_bytes: opts.max_record_bytes,
        error_prefix,
        writer: opts.writer.clone(),
        max_partition_bytes,
        field_ids: opts.iceberg_field_ids.clone(),
    })
}

/// Reads one line into `buf` (without its `\n` or `\r\n`), keeping at most
/// `keep` bytes of it: the rest of a longer line is read past, not held, so
/// a 10 GB line without a newline costs `keep` bytes of memory. Returns the
/// bytes read and the line's whole length (more than `buf.len()` when cut).
pub fn read_line(reader: &mut dyn BufRead, buf: &mut Vec<u8>, input: &str, keep: usize) -> Result<(usize, usize)> {
    let io_err = |error| Error::Input { source_name: input.to_string(), error };
    buf.clear();
    let (mut consumed, mut len) = (0, 0);
    loop {
        let available = reader.fill_buf().map_err(io_err)?;
        if available.is_empty() {
            break;
        }
        let end = memchr::memchr(b'\n', available);
        let chunk = &available[..end.unwrap_or(available.len())];
        buf.extend_from_slice(&chunk[..chunk.len().min(keep - buf.len().min(keep))]);
        len += chunk.len();
        let used = chunk.len() + usize::from(end.is_some());
        reader.consume(used);
        consumed += used;
        if end.is_some() {
            break;
        }
    }
    if buf.len() == len && buf.last() == Some(&b'\r') {
        buf.pop();
        len -= 1;
    }
    Ok((consumed, len))
}

/// Calls `f` with each line (without `\n` or `\r\n`) and its whole length,
/// straight from the reader's buffer when the line is whole in it (nearly
/// always), so lines are not copied; longer lines are cut to `keep` bytes
/// (see [`read_line`]). Returns the bytes read.
fn for_each_line(
    reader: &mut dyn BufRead,
    input: &str,
    spill: &mut Vec<u8>,
    keep: usize,
    mut f: impl FnMut(&[u8], usize) -> Result<()>,
) -> Result<u64> {
    let io_err = |error| Error::Input { source_name: input.to_string(), error };
    let mut total = 0u64;
    loop {
        let available = reader.fill_buf().map_err(io_err)?;
        if available.is_empty() {
            return Ok(total);
        }
        match memchr::memchr(b'\n', available) {
            Some(n) if n <= keep => {
                let line = &available[..n];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                f(line, line.len())?;
                reader.consume(n + 1);
                total += n as u64 + 1;
            }
            _ => {
                // The line runs past the buffer (or the limit): copy what is kept.
                let (n, len) = read_line(reader, spill, input, keep)?;
                f(spill, len)?;
                total += n as u64;
            }
        }
    }
}

/// Runs a conversion. `progress` receives the raw input bytes read so far.
pub async fn convert(opts: &ConvertOptions, progress: Arc<AtomicU64>) -> Result<ConvertSummary> {
    let started = Instant::now();
    // Fail on a bad template or time field before reading anything.
    if let SchemaSource::Infer { .. } = opts.schema {
        table_spec(opts, Schema::default())?;
    }
    let store = ObjectStore::open(&opts.destination, &opts.s3).await?;
    let raw = open_input(&opts.input, &opts.s3).await?;
    let (tx, mut rx) = mpsc::channel::<OutputObject>(4);

    let opts_worker = opts.clone();
    let worker = tokio::task::spawn_blocking(move || -> Result<(PipelineStats, u64, Schema)> {
        let opts = opts_worker;
        let input = opts.input.as_str();
        let counted = Box::new(CountingReader { inner: raw, count: progress });
        let mut reader = line_reader(counted, input)?;
        let mut buf = Vec::with_capacity(64 << 10);
        let mut bytes_in = 0u64;
        // Inference samples the first records and keeps them for conversion.
        let mut sampled: Vec<(Vec<u8>, usize)> = Vec::new();
        // Longer lines are too large anyway: their error lines keep this much.
        let keep = opts.max_record_bytes.max(DEFAULT_MAX_RECORD_BYTES);
        let schema = match &opts.schema {
            SchemaSource::File(p) => Schema::from_file(p)?,
            SchemaSource::Given(s) => s.clone(),
            SchemaSource::Infer { sample } => {
                let mut inferrer = SchemaInferrer::new();
                while inferrer.records() < *sample {
                    let (n, len) = read_line(&mut *reader, &mut buf, input, keep)?;
                    if n == 0 {
                        break;
                    }
                    bytes_in += n as u64;
                    if len == buf.len() {
                        inferrer.observe_line(&buf);
                    }
                    sampled.push((buf.clone(), len));
                }
                inferrer.finish().ok_or_else(|| {
                    Error::Config(format!(
                        "cannot infer a schema: no JSON object among the first {} lines of {input}",
                        sampled.len()
                    ))
                })?
            }
        };
        let spec = table_spec(&opts, schema.clone())?;
        let mut common = Map::new();
        common.insert("source".into(), Json::from(input));
        let mut pipeline: Pipeline<Line> = Pipeline::new(spec, file_stem(&opts), common);
        let mut line_no = 0u64;
        let send = |pipeline: &mut Pipeline<Line>| -> Result<()> {
            for o in pipeline.take_outputs() {
                if tx.blocking_send(o).is_err() {
                    // The uploader stopped: its error is reported by the caller.
                    return Err(Error::Store {
                        op: "put",
                        url: opts.destination.clone(),
                        message: "upload stopped".into(),
                    });
                }
            }
            Ok(())
        };
        let mut push = |pipeline: &mut Pipeline<Line>, line: &[u8], len: usize| -> Result<()> {
            line_no += 1;
            if len > line.len() {
                pipeline.push_cut(line, len, &Line(line_no));
                return Ok(());
            }
            pipeline.push(line, &Line(line_no), None)
        };
        for (line, len) in &sampled {
            push(&mut pipeline, line, *len)?;
            send(&mut pipeline)?;
        }
        drop(sampled);
        bytes_in += for_each_line(&mut *reader, input, &mut buf, keep, |line, len| {
            push(&mut pipeline, line, len)?;
            send(&mut pipeline)
        })?;
        pipeline.finish_all()?;
        send(&mut pipeline)?;
        Ok((pipeline.stats(), bytes_in, schema))
    });

    let mut summary = ConvertSummary::default();
    let mut upload_error = None;
    while let Some(obj) = rx.recv().await {
        let len = obj.data.len() as u64;
        if let Err(e) = store.put(&obj.key, obj.data).await {
            upload_error = Some(e);
            break;
        }
        summary.bytes_out += len;
        match &obj.kind {
            OutputKind::Data { partition, rows, footer } => {
                if opts.iceberg_field_ids.is_some() {
                    let (key, partition, footer) = (obj.key.clone(), partition.clone(), footer.clone());
                    summary.data.push(WrittenData { key, partition, bytes: len, footer });
                }
                summary.rows += rows;
                summary.data_files += 1;
                let p = summary.partitions.entry(partition.clone()).or_default();
                p.rows += rows;
                p.files += 1;
                p.bytes += len;
            }
            OutputKind::Errors { .. } => summary.error_files += 1,
        }
        summary.keys.push(obj.key);
    }
    drop(rx);
    let worked = worker.await.expect("convert worker panicked");
    if let Some(e) = upload_error {
        return Err(e);
    }
    let (stats, bytes_in, schema) = worked?;
    summary.stats = stats;
    summary.bytes_in = bytes_in;
    summary.schema = Some(schema);
    summary.elapsed = started.elapsed();
    debug_assert_eq!(summary.rows + summary.stats.error_records(), summary.stats.records);
    Ok(summary)
}

/// The error kinds with records, for summaries.
pub fn error_breakdown(stats: &PipelineStats) -> String {
    ErrorKind::ALL
        .iter()
        .filter_map(|k| stats.errors.get(k).map(|n| format!("{}={n}", k.as_str())))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_are_safe() {
        assert_eq!(input_stem("/data/events-2024.jsonl.gz"), "events-2024");
        assert_eq!(input_stem("-"), "stdin");
        assert_eq!(input_stem("s3://b/k/a b?.json"), "a_b_");
        assert_eq!(input_stem("..jsonl"), "input");
        assert_eq!(input_stem(&format!("{}.jsonl", "é".repeat(300))).len(), MAX_STEM_BYTES);
    }
}
