//! Bad input: every record ends up in exactly one data or error file, the
//! error lines say what failed and where, and hostile partition values stay
//! inside their partition level.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::common::*;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use shardlake::convert::{ConvertOptions, SchemaSource, convert};
use shardlake::error_output::ErrorKind;
use shardlake::schema::{Schema, UnknownFieldPolicy};

const SCHEMA: &str = r#"
[[columns]]
name = "id"
type = "string"
required = true
[[columns]]
name = "ts"
type = "timestamp"
[[columns]]
name = "amount"
type = "decimal(10,2)"
[[columns]]
name = "country"
type = "string"
[[columns]]
name = "dev"
type = "struct<os:string>"
"#;

fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    let big = format!(r#"{{"id":"big","ts":"2024-03-15T07:00:00Z","pad":"{}"}}"#, "x".repeat(3000));
    let mut lines: Vec<Vec<u8>> = vec![
        br#"{"id":"a","ts":"2024-03-15T07:00:00Z","amount":1.25,"country":"DE","dev":{"os":"iOS"}}"#.to_vec(),
        b"not json".to_vec(),
        b"[1,2]".to_vec(),
        br#"{"id":"b","ts":"2024-03-15T07:00:00Z","amount":"abc"}"#.to_vec(),
        big.into_bytes(),
        br#"{"id":"c","ts":"yesterday"}"#.to_vec(),
        br#"{"ts":"2024-03-15T07:00:00Z"}"#.to_vec(),
        br#"{"id":"d","ts":1710486000,"country":"../../etc","surprise":{"a":1},"dev":{"os":"Linux","arch":"arm"}}"#
            .to_vec(),
        b"   ".to_vec(),
        b"{\"id\":\"\xff\"}".to_vec(),
        br#"{"id":"e","ts":1710486000000,"amount":0.125}"#.to_vec(),
        br#"{"id":"f","country":"a/b=c"}"#.to_vec(),
    ];
    let path = dir.join("bad.jsonl");
    for l in &mut lines {
        l.push(b'\n');
    }
    std::fs::write(&path, lines.concat()).unwrap();
    path
}

fn options(input: &std::path::Path, lake: &std::path::Path, policy: UnknownFieldPolicy) -> ConvertOptions {
    let mut o = event_options(input, lake.to_str().unwrap());
    o.schema = SchemaSource::Given(Schema::parse(SCHEMA, false).unwrap());
    o.template = "country=!{field:country}/hour=!{timestamp:HH}/".into();
    o.unknown_fields = policy;
    o.max_record_bytes = 2000;
    o
}

#[tokio::test]
async fn every_bad_record_lands_in_the_error_output_with_its_reason() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let lake = dir.path().join("lake");
    let s = convert(&options(&input, &lake, UnknownFieldPolicy::Keep), Arc::new(AtomicU64::new(0))).await.unwrap();

    assert_eq!(s.stats.records, 11);
    assert_eq!(s.stats.blank_lines, 1);
    assert_eq!(s.rows, 3, "a, d and f are good");
    let count = |k| s.stats.errors.get(&k).copied().unwrap_or(0);
    assert_eq!(count(ErrorKind::InvalidJson), 2);
    assert_eq!(count(ErrorKind::NotObject), 1);
    assert_eq!(count(ErrorKind::TooLarge), 1);
    assert_eq!(count(ErrorKind::TypeMismatch), 4, "amount abc, ts yesterday, missing id, 3 decimals");
    assert_eq!(s.rows + s.stats.error_records(), s.stats.records);

    let mismatches = error_lines(&lake, "type_mismatch");
    let by_line = |n: u64| mismatches.iter().find(|v| v["line"] == n).unwrap_or_else(|| panic!("line {n}"));
    assert_eq!(by_line(4)["field"], "amount");
    assert!(by_line(4)["error_message"].as_str().unwrap().contains("expected decimal(10,2)"));
    assert_eq!(by_line(4)["raw"], r#"{"id":"b","ts":"2024-03-15T07:00:00Z","amount":"abc"}"#);
    assert_eq!(by_line(4)["source"], input.to_str().unwrap());
    assert_eq!(by_line(6)["field"], "ts");
    assert_eq!(by_line(7)["field"], "id");
    assert!(by_line(11)["error_message"].as_str().unwrap().contains("more decimal places"));
    let invalid = error_lines(&lake, "invalid_json");
    assert_eq!(invalid.iter().find(|v| v["line"] == 10).unwrap()["raw_base64"], "eyJpZCI6Iv8ifQ==");
    let large = error_lines(&lake, "too_large");
    assert!(large[0]["error_message"].as_str().unwrap().contains("over the 2000 byte limit"));

    // Hostile partition values are escaped into a single level.
    let files = read_tree(&lake);
    let data: Vec<&String> = files.keys().filter(|k| k.ends_with(".parquet")).collect();
    assert!(data.iter().any(|k| k.starts_with("country=..%2F..%2Fetc/hour=07/")), "{data:?}");
    assert!(data.iter().any(|k| k.starts_with("country=a%2Fb%3Dc/hour=__HIVE_DEFAULT_PARTITION__/")), "{data:?}");
    for k in &data {
        assert_eq!(k.matches('/').count(), 2, "{k}");
    }
    // One file per partition of the good rows: a record that fails to decode
    // never leaves an empty file behind in the partition it would have gone to.
    assert_eq!(data.len(), 3, "{data:?}");

    // DuckDB reads the lake, the unknown fields in _extra and the decoded partition values.
    let out = python(
        r#"
import duckdb, json, sys
con = duckdb.connect()
rows = con.execute(f"SELECT id, _extra, country, amount::VARCHAR FROM read_parquet('{sys.argv[1]}/country=*/*/*.parquet', hive_partitioning=true) ORDER BY id").fetchall()
print(json.dumps(rows))
"#,
        &[lake.to_str().unwrap()],
    );
    let rows: Vec<(String, Option<String>, String, Option<String>)> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0], ("a".into(), None, "DE".into(), Some("1.25".into())));
    assert_eq!(rows[1].1.as_deref(), Some(r#"{"surprise":{"a":1},"dev.arch":"arm"}"#));
    assert_eq!(rows[1].2, "../../etc", "DuckDB decodes the Hive escaping back");
    assert_eq!(rows[2].2, "a/b=c");
}

#[tokio::test]
async fn unknown_field_policies_error_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path());
    let lake = dir.path().join("strict");
    let s = convert(&options(&input, &lake, UnknownFieldPolicy::Error), Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!(s.stats.errors.get(&ErrorKind::UnknownField), Some(&1));
    assert_eq!(s.rows, 2);
    let unknown = error_lines(&lake, "unknown_field");
    assert_eq!(unknown[0]["line"], 8);
    assert_eq!(unknown[0]["field"], "surprise");

    let lake = dir.path().join("drop");
    let s = convert(&options(&input, &lake, UnknownFieldPolicy::Drop), Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!(s.rows, 3);
    assert_eq!(s.stats.dropped_fields, 2, "pad is in a too-large record; surprise and dev.arch are dropped");
}

#[tokio::test]
async fn inferred_schema_converts_gzip_input() {
    let dir = tempfile::tempdir().unwrap();
    let plain = gen_events(dir.path(), 2_000, 11);
    let gz = dir.path().join("events.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    std::io::copy(&mut std::fs::File::open(&plain).unwrap(), &mut enc).unwrap();
    enc.finish().unwrap();
    let lake = dir.path().join("lake");
    let mut opts = event_options(&gz, lake.to_str().unwrap());
    opts.schema = SchemaSource::Infer { sample: 500 };
    let s = convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!((s.stats.records, s.rows), (2_000, 2_000), "errors: {:?}", s.stats.errors);
    let schema = s.schema.unwrap();
    let ty = |n: &str| schema.columns[schema.index_of(n).unwrap()].ty.to_string();
    assert_eq!(ty("ts"), "timestamp");
    assert_eq!(ty("amount"), "double");
    assert_eq!(ty("tags"), "array<string>");
    assert!(ty("properties").starts_with("struct<page:string"));
    assert!(read_tree(&lake).keys().all(|k| k.contains("/events-")), "file names use the input stem");
}

/// Records in a run of one hour are decoded straight into that hour's
/// partition, reading the time on the way; this checks every way out of that
/// shortcut (another hour, epoch numbers, null or missing times, duplicate
/// time keys, a bad value in another column) against where each record must
/// go and the time it must store. Of duplicate keys the last wins, for the
/// partition as for the stored value (as for every other column).
#[tokio::test]
async fn records_land_in_the_hour_of_their_last_time_value_whatever_came_before() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"id":"a","ts":"2024-03-15T07:10:00Z"}"#,
        r#"{"id":"b","ts":"2024-03-15T07:20:00Z"}"#,
        r#"{"id":"c","ts":"2024-03-15T08:00:00Z"}"#,
        r#"{"id":"d","ts":1710489600}"#,
        r#"{"id":"e","ts":"2024-03-15T08:30:00Z","ts":"2024-03-15T09:30:00Z"}"#,
        r#"{"id":"f","ts":null}"#,
        r#"{"id":"g"}"#,
        r#"{"id":"h","ts":"2024-03-15T07:59:59.999Z"}"#,
        r#"{"id":"i","ts":"2024-03-15T07:00:00Z","n":"x"}"#,
        r#"{"id":"j","ts":"2024-03-15T07:30:00Z","ts":"2024-03-15T07:40:00Z"}"#,
        r#"{"id":"k","ts":"2024-03-15T07:45:00Z"}"#,
    ];
    let input = dir.path().join("runs.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let lake = dir.path().join("lake");
    let mut o = event_options(&input, lake.to_str().unwrap());
    o.schema = SchemaSource::Given(
        Schema::parse(
            "[[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"ts\"\ntype = \"timestamp\"\n\
             [[columns]]\nname = \"n\"\ntype = \"bigint\"\n",
            false,
        )
        .unwrap(),
    );
    o.template = "hour=!{timestamp:HH}/".into();
    let s = convert(&o, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!((s.rows, s.stats.error_records()), (10, 1));
    assert_eq!(error_lines(&lake, "type_mismatch")[0]["field"], "n");

    let mut got = std::collections::BTreeMap::new();
    for (key, bytes) in read_tree(&lake).into_iter().filter(|(k, _)| k.ends_with(".parquet")) {
        let hour = key.split('/').next().unwrap().to_string();
        for batch in parquet_batches(bytes) {
            let ids = batch.column(0).as_string::<i32>();
            let ts = batch.column(1).as_primitive::<arrow_array::types::TimestampMillisecondType>();
            for r in 0..batch.num_rows() {
                let t = ts.is_valid(r).then(|| shardlake::time::format_rfc3339_millis(ts.value(r)));
                got.insert(ids.value(r).to_string(), (hour.clone(), t));
            }
        }
    }
    let want = |h: &str, t: Option<&str>| (format!("hour={h}"), t.map(|t| format!("2024-03-15T{t}Z")));
    let none = "__HIVE_DEFAULT_PARTITION__";
    let expected: std::collections::BTreeMap<String, (String, Option<String>)> = [
        ("a", want("07", Some("07:10:00.000"))),
        ("b", want("07", Some("07:20:00.000"))),
        ("c", want("08", Some("08:00:00.000"))),
        ("d", want("08", Some("08:00:00.000"))),
        ("e", want("09", Some("09:30:00.000"))),
        ("f", want(none, None)),
        ("g", want(none, None)),
        ("h", want("07", Some("07:59:59.999"))),
        ("j", want("07", Some("07:40:00.000"))),
        ("k", want("07", Some("07:45:00.000"))),
    ]
    .into_iter()
    .map(|(id, v)| (id.to_string(), v))
    .collect();
    assert_eq!(got, expected);
}
