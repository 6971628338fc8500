//! Hostile records (issue 16): however a record is built, it ends as a row or
//! as an error record with its reason and its bytes, at a cost in proportion
//! to its size, and never stops the conversion of the records around it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use crate::common::*;
use arrow_array::Array;
use arrow_array::cast::AsArray;
use shardlake::convert::{ConvertOptions, SchemaSource, convert};
use shardlake::error_output::ErrorKind;
use shardlake::schema::{Schema, SchemaInferrer};

const SCHEMA: &str = r#"
[[columns]]
name = "event_id"
type = "string"
[[columns]]
name = "meta"
type = "struct<t:timestamp,src:string>"
[[columns]]
name = "price"
type = "decimal(10,2)"
[[columns]]
name = "score"
type = "double"
[[columns]]
name = "country"
type = "string"
[[columns]]
name = "x"
type = "array<string>"
"#;

fn options(input: &std::path::Path, lake: &std::path::Path) -> ConvertOptions {
    let mut o = event_options(input, lake.to_str().unwrap());
    o.schema = SchemaSource::Given(Schema::parse(SCHEMA, false).unwrap());
    o.template = "country=!{field:country}/hour=!{timestamp:HH}/".into();
    o.time_field = Some("meta.t".into());
    o
}

/// Event ids by the partition they were written to, with their stored time.
fn rows_by_partition(lake: &std::path::Path) -> Vec<(String, String, Option<i64>)> {
    let mut out = Vec::new();
    for (key, bytes) in read_tree(lake).into_iter().filter(|(k, _)| k.ends_with(".parquet")) {
        let partition = key.rsplit_once('/').unwrap().0.to_string();
        for batch in parquet_batches(bytes) {
            let ids = batch.column(0).as_string::<i32>();
            let meta = batch.column(1).as_struct();
            let t = meta.column(0).as_primitive::<arrow_array::types::TimestampMillisecondType>();
            for r in 0..batch.num_rows() {
                out.push((ids.value(r).to_string(), partition.clone(), t.is_valid(r).then(|| t.value(r))));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_become_error_records_and_the_good_ones_land() {
    let dir = tempfile::tempdir().unwrap();
    let good = |id: &str, hour: u32| {
        format!(r#"{{"event_id":"{id}","meta":{{"t":"2024-03-15T{hour:02}:10:00Z"}},"country":"DE","price":1.5}}"#)
    };
    let deep_open = format!(r#"{{"event_id":"deep1","meta":{{"t":"2024-03-15T01:00:00Z"}},"x":{}"#, "[".repeat(20_000));
    let deep_closed = format!(
        r#"{{"event_id":"deep2","meta":{{"t":"2024-03-15T01:00:00Z"}},"x":{}{}}}"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let brackets = "[".repeat(40_000);
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
    let deep_meta = format!(r#"{{"event_id":"deep3","meta":{}1{}}}"#, r#"{"t":"#.repeat(20_000), "}".repeat(20_000));
    let long_value = "v".repeat(400);
    let lines: Vec<(String, Option<ErrorKind>)> = vec![
        (good("g1", 7), None),
        (deep_open, Some(ErrorKind::TooDeep)),
        (deep_closed, Some(ErrorKind::TooDeep)),
        (brackets, Some(ErrorKind::TooDeep)),
        (deep_objects, Some(ErrorKind::TooDeep)),
        (deep_meta, Some(ErrorKind::TooDeep)),
        (good("g2", 7), None),
        (
            r#"{"event_id":"exp","meta":{"t":"2024-03-15T07:00:00Z"},"price":1e2000000000}"#.into(),
            Some(ErrorKind::TypeMismatch),
        ),
        (
            r#"{"event_id":"tiny","meta":{"t":"2024-03-15T07:00:00Z"},"price":1e-2000000000}"#.into(),
            Some(ErrorKind::TypeMismatch),
        ),
        (
            r#"{"event_id":"inf","meta":{"t":"2024-03-15T07:00:00Z"},"score":1e400}"#.into(),
            Some(ErrorKind::TypeMismatch),
        ),
        (
            format!(r#"{{"event_id":"long","meta":{{"t":"2024-03-15T07:00:00Z"}},"country":"{long_value}"}}"#),
            Some(ErrorKind::PartitionTooLong),
        ),
        (
            // Escaping makes a 100-character value 300 bytes long.
            format!(r#"{{"event_id":"esc","meta":{{"t":"2024-03-15T07:00:00Z"}},"country":"{}"}}"#, "/".repeat(100)),
            Some(ErrorKind::PartitionTooLong),
        ),
        (
            r#"{"event_id":"tail","meta":{"t":"2024-03-15T07:00:00Z"},"price":"abc"} trailing"#.into(),
            Some(ErrorKind::InvalidJson),
        ),
        // Duplicate keys: the last wins, for the partition as for the stored value.
        (r#"{"event_id":"dup1","meta":{"t":"2024-03-15T08:00:00Z","t":"2024-03-15T09:00:00Z"}}"#.into(), None),
        (r#"{"event_id":"dup2","meta":{"t":"2024-03-15T08:00:00Z"},"meta":{"t":"2024-03-15T10:00:00Z"}}"#.into(), None),
        (r#"{"event_id":"dup3","meta":{"t":"2024-03-15T08:00:00Z","\u0074":"2024-03-15T11:00:00Z"}}"#.into(), None),
        (r#"{"event_id":"dup4","meta":{"t":"2024-03-15T08:00:00Z"},"meta":{"src":"x"}}"#.into(), None),
        (good("g3", 7), None),
        // Found by the fuzzer (fuzz/regressions/record_decoder/): a C1 control
        // character made a key the store refused, stalling the shard.
        (r#"{"event_id":"c1","meta":{"t":"2024-03-15T07:00:00Z"},"country":"\u0085"}"#.into(), None),
    ];
    let input = dir.path().join("hostile.jsonl");
    std::fs::write(&input, lines.iter().map(|(l, _)| l.as_str()).collect::<Vec<_>>().join("\n")).unwrap();
    let lake = dir.path().join("lake");

    let started = Instant::now();
    let s = convert(&options(&input, &lake), Arc::new(AtomicU64::new(0))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());

    // Every record is a row or an error record of the expected kind.
    assert_eq!(s.stats.records, lines.len() as u64);
    assert_eq!(s.rows + s.stats.error_records(), s.stats.records);
    for kind in [ErrorKind::TooDeep, ErrorKind::TypeMismatch, ErrorKind::PartitionTooLong, ErrorKind::InvalidJson] {
        let want = lines.iter().filter(|(_, k)| *k == Some(kind)).count() as u64;
        assert_eq!(s.stats.errors.get(&kind).copied().unwrap_or(0), want, "{kind:?}: {:?}", s.stats.errors);
    }
    // Error lines keep the record's bytes, and say why.
    for kind in ["too_deep", "type_mismatch", "partition_too_long", "invalid_json"] {
        for line in error_lines(&lake, kind) {
            let n = line["line"].as_u64().unwrap() as usize;
            assert_eq!(line["raw"].as_str().unwrap(), lines[n - 1].0, "line {n}");
        }
    }
    let deep = error_lines(&lake, "too_deep");
    assert!(deep[0]["error_message"].as_str().unwrap().contains("deeper than 128 levels"), "{}", deep[0]);
    let long = error_lines(&lake, "partition_too_long");
    assert!(long[0]["error_message"].as_str().unwrap().contains("255-byte limit"), "{}", long[0]);
    let mismatch = error_lines(&lake, "type_mismatch");
    let message = |id: &str| {
        let line = mismatch.iter().find(|l| l["raw"].as_str().unwrap().contains(id)).unwrap();
        line["error_message"].as_str().unwrap().to_string()
    };
    assert!(message("\"exp\"").contains("precision"), "{}", message("\"exp\""));
    assert!(message("\"tiny\"").contains("scale"));
    assert!(message("\"inf\"").contains("out of range for double"));

    // Good records and duplicate keys: partitioned by the time they store.
    let rows = rows_by_partition(&lake);
    let hour_of = |ms: i64| format!("{:02}", ms.div_euclid(3_600_000).rem_euclid(24));
    let ids: Vec<&str> = rows.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["c1", "dup1", "dup2", "dup3", "dup4", "g1", "g2", "g3"]);
    assert_eq!(rows[0].1, "country=%C2%85/hour=07");
    for (id, partition, t) in &rows {
        let hour = t.map_or("__HIVE_DEFAULT_PARTITION__".to_string(), hour_of);
        assert!(partition.ends_with(&format!("hour={hour}")), "{id} stored {t:?} but is in {partition}");
    }
    let hours: Vec<Option<String>> = rows[1..5].iter().map(|(_, _, t)| t.map(hour_of)).collect();
    assert_eq!(hours, [Some("09".into()), Some("10".into()), Some("11".into()), None]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_inferred_from_hostile_samples_load_and_convert() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        format!(r#"{{"id":"a","deep":{}1{}}}"#, "[".repeat(300), "]".repeat(300)),
        format!(r#"{{"id":"b","deeper":{}1{}}}"#, "[".repeat(100), "]".repeat(100)),
        r#"{"id":"c","device":{"os":"x","OS":"y"},"ID":"upper","we`ird":{"a`b":1}}"#.to_string(),
        format!(r#"{{"id":"d","x":{}"#, "[".repeat(20_000)),
    ];
    let input = dir.path().join("sample.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let mut inferrer = SchemaInferrer::new();
    for l in &lines {
        inferrer.observe_line(l.as_bytes());
    }
    let schema = inferrer.finish().unwrap();
    assert_eq!(Schema::parse(&schema.to_toml(), false).unwrap(), schema, "{}", schema.to_toml());
    let names: Vec<&str> = schema.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "deeper", "device", "we`ird"]);

    let lake = dir.path().join("lake");
    let mut o = event_options(&input, lake.to_str().unwrap());
    o.schema = SchemaSource::Infer { sample: 100 };
    o.template = String::new();
    o.time_field = None;
    let s = convert(&o, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!((s.rows, s.stats.errors.get(&ErrorKind::TooDeep).copied()), (2, Some(2)), "{:?}", s.stats.errors);
    // DuckDB reads what inference made, odd names included.
    let out = python(
        r#"
import duckdb, sys
con = duckdb.connect()
print(con.execute(f"SELECT count(*), max(\"we`ird\".\"a`b\") FROM read_parquet('{sys.argv[1]}/**/*.parquet')").fetchone())
"#,
        &[lake.to_str().unwrap()],
    );
    assert_eq!(out.trim(), "(2, 1)");
}
