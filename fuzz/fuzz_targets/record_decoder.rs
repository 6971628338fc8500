//! One fuzzed record through `Pipeline` with a fixed schema of every column
//! kind, under `unknown_fields = keep` (field + time partitions) and `error`
//! (time-only partitions, the record pushed twice so the second push takes
//! the same-time-bucket fast path). Invariants: the record is a row or an
//! error line (never lost, never both), data files read back with their row
//! counts, partition paths are well formed, error lines keep the raw bytes,
//! both pushes of the same record end the same way, and rows are JSON that
//! serde_json accepts (invalid_json records are JSON it rejects).

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use shardlake::error_output::ErrorKind;
use shardlake::partition::TimeSource;
use shardlake::schema::{Schema, UnknownFieldPolicy};
use shardlake_fuzz::{check_outputs, is_blank, run_pipeline, spec};

const SCHEMA: &str = r#"
[[columns]]
name = "id"
type = "bigint"
required = true
[[columns]]
name = "name"
type = "string"
[[columns]]
name = "price"
type = "decimal(10,2)"
[[columns]]
name = "ts"
type = "timestamp"
[[columns]]
name = "score"
type = "double"
[[columns]]
name = "ratio"
type = "float"
[[columns]]
name = "n"
type = "int"
[[columns]]
name = "ok"
type = "boolean"
[[columns]]
name = "day"
type = "date"
[[columns]]
name = "tags"
type = "array<string>"
[[columns]]
name = "counts"
type = "map<string,bigint>"
[[columns]]
name = "meta"
type = "struct<kind:string,version:int,items:array<struct<sku:string,qty:int,price:decimal(10,2)>>,props:map<string,string>>"
[[columns]]
name = "region"
type = "string"
"#;

/// Field partitions (a top-level and a nested field) and the event time.
const FIELD_TEMPLATE: &str = "region=!{field:region}/kind=!{field:meta.kind}/dt=!{timestamp:yyyy-MM-dd}/";
/// Time only: the pipeline's same-bucket fast path applies.
const TIME_TEMPLATE: &str = "dt=!{timestamp:yyyy-MM-dd}/hour=!{timestamp:HH}/";

fn schema() -> Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| Schema::parse(SCHEMA, false).expect("fuzz schema")).clone()
}

fuzz_target!(|data: &[u8]| {
    let ts = || TimeSource::Field(vec!["ts".into()]);

    // keep, field template, one push.
    let (stats, outputs) = run_pipeline(spec(schema(), FIELD_TEMPLATE, ts(), UnknownFieldPolicy::Keep), &[data], None);
    let kept = check_outputs(&[data], &stats, &outputs, 3);
    compare_with_serde_json(data, kept.total_rows() == 1, kept.errors.get(&1).map(|e| e.0));

    // error policy, time template, the record twice.
    let twice = [data, data];
    let (stats, outputs) = run_pipeline(spec(schema(), TIME_TEMPLATE, ts(), UnknownFieldPolicy::Error), &twice, None);
    let strict = check_outputs(&twice, &stats, &outputs, 2);
    if is_blank(data) {
        return;
    }
    let first = strict.errors.get(&1).map(|e| e.0);
    let second = strict.errors.get(&2).map(|e| e.0);
    assert_eq!(first, second, "the same record ended differently when pushed again: {:?}", strict.errors);
    if first.is_none() {
        assert_eq!(strict.rows.len(), 1, "one record, two partitions: {:?}", strict.rows);
    }
    // A record that fits the schema under `error` fits it under `keep`.
    // (Only the field template can make a partition path too long.)
    let kept_error = kept.errors.get(&1).map(|e| e.0);
    if first.is_none() && kept_error != Some(ErrorKind::PartitionTooLong) {
        assert_eq!(kept.total_rows(), 1, "row under error policy, {:?} under keep", kept.errors);
    }
});

/// A row is a JSON object serde_json reads; an invalid_json record is one
/// serde_json refuses (or cannot judge: too deep).
fn compare_with_serde_json(data: &[u8], row: bool, error: Option<ErrorKind>) {
    let parsed = serde_json::from_slice::<Json>(data);
    if row {
        match parsed {
            Ok(Json::Object(_)) => {}
            Ok(other) => panic!("a row from a record that is not an object: {other}"),
            Err(e) => {
                let msg = e.to_string();
                // serde_json refuses lone surrogates and numbers beyond f64:
                // differences of opinion, not losses.
                if msg.contains("surrogate") || msg.contains("number out of range") {
                    return;
                }
                panic!("a row from a record serde_json refuses: {msg}");
            }
        }
    } else if error == Some(ErrorKind::InvalidJson)
        && let Ok(Json::Object(_)) = parsed
    {
        panic!("invalid_json for a JSON object serde_json reads");
    }
}
