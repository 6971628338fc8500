//! Helpers shared by the integration tests: the emulator environment (a
//! test that needs it starts with `let Some(_stack) = stack() else { return };`,
//! see `shardlake::testing`), the independent Python readers, and generated
//! input.

#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use shardlake::convert::{ConvertOptions, SchemaSource};
use shardlake::events::{EVENTS_SCHEMA_TOML, GenOptions, generate};
use shardlake::partition::DEFAULT_TEMPLATE;
use shardlake::pipeline::DEFAULT_MAX_RECORD_BYTES;
use shardlake::schema::{Schema, UnknownFieldPolicy};
use shardlake::store::S3Options;
pub use shardlake::testing::stack;
use shardlake::writer::WriterSettings;

/// An environment variable the test stack sets; fails loudly when missing.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the integration tests need the local AWS stack; run them with scripts/test")
    })
}

/// A name unique to this test process and call (buckets, streams).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// Runs a Python script with the stack's venv (duckdb, pyarrow) and returns stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let py = stack_env("SHARDLAKE_PYTHON");
    let out = Command::new(&py).arg("-c").arg(script).args(args).output().expect("running python");
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Writes `count` reference events to `dir/events.jsonl`.
pub fn gen_events(dir: &Path, count: u64, seed: u64) -> PathBuf {
    let path = dir.join("events.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    generate(&GenOptions { count, seed, ..GenOptions::default() }, &mut f).unwrap();
    drop(f);
    path
}

/// Convert options for the reference events with the hourly template.
pub fn event_options(input: &Path, destination: &str) -> ConvertOptions {
    ConvertOptions {
        input: input.to_string_lossy().into_owned(),
        destination: destination.to_string(),
        schema: SchemaSource::Given(Schema::parse(EVENTS_SCHEMA_TOML, false).unwrap()),
        template: DEFAULT_TEMPLATE.to_string(),
        time_field: Some("ts".into()),
        error_prefix: shardlake::error_output::DEFAULT_ERROR_PREFIX.into(),
        unknown_fields: UnknownFieldPolicy::Keep,
        max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        writer: WriterSettings::default(),
        s3: S3Options::default(),
        iceberg_field_ids: None,
        file_stem: None,
    }
}

/// All files under `root` with their bytes, keyed by relative path.
pub fn read_tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// An S3 client for the emulator (moto).
pub async fn s3_client() -> aws_sdk_s3::Client {
    stack_env("AWS_ENDPOINT_URL_S3");
    let config = shardlake::aws::sdk_config().await;
    shardlake::aws::s3_client(&config)
}

/// Creates a fresh bucket on the emulator.
pub async fn new_bucket(client: &aws_sdk_s3::Client) -> String {
    let bucket = unique("test");
    client.create_bucket().bucket(&bucket).send().await.expect("create bucket on the S3 emulator");
    bucket
}

/// The lines of the error files of one error type under the default error
/// prefix (`{lake}/_errors/`).
pub fn error_lines(lake: &Path, kind: &str) -> Vec<serde_json::Value> {
    let prefix = shardlake::error_output::DEFAULT_ERROR_PREFIX.trim_end_matches('/');
    read_tree(&lake.join(prefix).join(kind))
        .values()
        .flat_map(|b| {
            String::from_utf8(b.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>()
        })
        .collect()
}

/// The record batches of a Parquet file, read by the parquet crate.
pub fn parquet_batches(bytes: Vec<u8>) -> Vec<arrow_array::RecordBatch> {
    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .unwrap()
        .build()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
