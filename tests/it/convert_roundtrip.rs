//! `convert` end to end on a local lake, verified by DuckDB and pyarrow (the
//! independent readers) and by the parquet crate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::common::*;
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardlake::convert::convert;
use shardlake::time::UtcFields;

/// Expected rows per `year/month/day/hour`, ids and the amount sum, from the input.
fn expected(input: &std::path::Path) -> (BTreeMap<String, u64>, usize, f64) {
    let mut per_hour = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    let mut sum = 0.0;
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let ms = shardlake::time::parse_rfc3339_millis(v["ts"].as_str().unwrap()).unwrap();
        let f = UtcFields::from_epoch_millis(ms);
        *per_hour.entry(format!("{}/{:02}/{:02}/{:02}", f.year, f.month, f.day, f.hour)).or_default() += 1;
        ids.insert(v["event_id"].as_str().unwrap().to_string());
        sum += v["amount"].as_f64().unwrap_or(0.0);
    }
    (per_hour, ids.len(), sum)
}

const DUCKDB_CHECK: &str = r#"
import duckdb, json, sys
con = duckdb.connect()
con.execute("SET TimeZone='UTC'")
src = f"read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=true)"
rows, ids, total = con.execute(f"SELECT count(*), count(DISTINCT event_id), sum(amount) FROM {src}").fetchone()
parts = con.execute(f"SELECT year, month, day, hour, count(*) FROM {src} GROUP BY ALL ORDER BY ALL").fetchall()
# The hour partition must agree with each row's own timestamp.
bad = con.execute(f"SELECT count(*) FROM {src} WHERE strftime(ts, '%Y/%m/%d/%H') <> "
                  "printf('%04d/%02d/%02d/%s', year, month::INT, day, hour)").fetchone()[0]
print(json.dumps({"rows": rows, "ids": ids, "sum": total, "bad_hours": bad,
                  "parts": {f"{y}/{int(m):02d}/{int(d):02d}/{h}": n for y, m, d, h, n in parts}}))
"#;

const PYARROW_CHECK: &str = r#"
import json, sys, pyarrow.dataset as ds
t = ds.dataset(sys.argv[1], format="parquet", partitioning="hive", exclude_invalid_files=False).to_table()
print(json.dumps({"rows": t.num_rows, "columns": t.column_names,
                  "ts_type": str(t.schema.field("ts").type), "tags_type": str(t.schema.field("tags").type)}))
"#;

#[tokio::test]
async fn convert_round_trip_matches_duckdb_and_pyarrow() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 20_000, 7);
    let lake = dir.path().join("lake");
    let summary = convert(&event_options(&input, lake.to_str().unwrap()), Arc::new(AtomicU64::new(0))).await.unwrap();
    let (per_hour, ids, sum) = expected(&input);

    assert_eq!(summary.stats.records, 20_000);
    assert_eq!(summary.rows, 20_000);
    assert_eq!(summary.stats.error_records(), 0);
    assert_eq!(summary.partitions.len(), 48);

    let duck: serde_json::Value = serde_json::from_str(&python(DUCKDB_CHECK, &[lake.to_str().unwrap()])).unwrap();
    assert_eq!(duck["rows"], 20_000);
    assert_eq!(duck["ids"].as_u64().unwrap() as usize, ids);
    assert!((duck["sum"].as_f64().unwrap() - sum).abs() < 1e-6 * sum, "sum {} vs {sum}", duck["sum"]);
    assert_eq!(duck["bad_hours"], 0, "rows in a partition that does not match their ts");
    let duck_parts: BTreeMap<String, u64> = serde_json::from_value(duck["parts"].clone()).unwrap();
    assert_eq!(duck_parts, per_hour);

    let pa: serde_json::Value = serde_json::from_str(&python(PYARROW_CHECK, &[lake.to_str().unwrap()])).unwrap();
    assert_eq!(pa["rows"], 20_000);
    assert_eq!(pa["ts_type"], "timestamp[ms, tz=UTC]");
    assert_eq!(pa["tags_type"], "list<element: string>");
    let cols: Vec<String> = serde_json::from_value(pa["columns"].clone()).unwrap();
    assert_eq!(&cols[cols.len() - 5..], ["_extra", "year", "month", "day", "hour"]);

    // Our own reader: every file is Snappy, and the rows add up.
    let mut rows = 0;
    let mut amount = 0.0;
    for (key, bytes) in read_tree(&lake) {
        assert!(key.ends_with(".snappy.parquet"), "{key}");
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
        let meta = reader.metadata().clone();
        for rg in meta.row_groups() {
            for col in rg.columns() {
                assert_eq!(col.compression(), parquet::basic::Compression::SNAPPY);
            }
        }
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            let idx = batch.schema().index_of("amount").unwrap();
            amount += batch.column(idx).as_primitive::<Float64Type>().iter().flatten().sum::<f64>();
        }
    }
    assert_eq!(rows, 20_000);
    assert!((amount - sum).abs() < 1e-6 * sum);
}

const READ_WHOLE_LAKE: &str = r#"
import json, sys, duckdb, pyarrow.dataset as ds
out = {}
try:
    out["pyarrow"] = ds.dataset(sys.argv[1], format="parquet", partitioning="hive").to_table().num_rows
except Exception as e:
    out["pyarrow_error"] = str(e)[:300]
con = duckdb.connect()
out["duckdb"] = con.execute(
    f"SELECT count(*) FROM read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning=true)").fetchone()[0]
print(json.dumps(out))
"#;

#[tokio::test]
async fn a_lake_with_error_files_opens_as_a_table_in_pyarrow_and_duckdb() {
    let Some(_stack) = stack() else { return };
    // Issue 29: with error files under `errors/` inside the table root,
    // pyarrow's hive dataset failed on the first `.jsonl`; under the default
    // `_errors/`, readers skip them as hidden.
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 2_000, 11);
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str("{not json\n[1,2]\n{\"event_id\":\"e\",\"ts\":\"not a time\"}\n");
    std::fs::write(&input, text).unwrap();
    let read = |lake: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&python(READ_WHOLE_LAKE, &[lake.to_str().unwrap()])).unwrap()
    };

    let lake = dir.path().join("lake");
    let summary = convert(&event_options(&input, lake.to_str().unwrap()), Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!((summary.rows, summary.stats.error_records()), (2_000, 3));
    assert!(lake.join("_errors/invalid_json").is_dir() && lake.join("_errors/type_mismatch").is_dir());
    let both = read(&lake);
    assert_eq!((&both["pyarrow"], &both["duckdb"]), (&2_000.into(), &2_000.into()), "{both}");

    // The old default inside the table root: pyarrow fails on the error files.
    let old = dir.path().join("old");
    let mut opts = event_options(&input, old.to_str().unwrap());
    opts.error_prefix = "errors/".into();
    convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    let both = read(&old);
    assert!(both["pyarrow_error"].as_str().is_some_and(|e| e.contains("errors")), "{both}");
}

#[tokio::test]
async fn rerun_gives_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 5_000, 3);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut opts = event_options(&input, a.to_str().unwrap());
    // A small budget makes early flushes part of what must repeat exactly.
    opts.writer.memory_budget = 256 << 10;
    convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    opts.destination = b.to_str().unwrap().to_string();
    convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    let (ta, tb) = (read_tree(&a), read_tree(&b));
    assert!(ta.len() > 48, "the budget should have split partitions into several files");
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    for (k, v) in &ta {
        assert!(v == &tb[k], "{k} differs between runs");
    }
    // Converting again into the same place overwrites the same keys: no duplicates.
    opts.destination = a.to_str().unwrap().to_string();
    convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!(read_tree(&a), ta);
}

#[tokio::test]
async fn memory_budget_flushes_early_and_loses_nothing() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 10_000, 5);
    let lake = dir.path().join("lake");
    let mut opts = event_options(&input, lake.to_str().unwrap());
    opts.writer.memory_budget = 512 << 10;
    opts.writer.encode_rows = 256;
    let small = convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    let lake2 = dir.path().join("lake2");
    let mut opts2 = event_options(&input, lake2.to_str().unwrap());
    opts2.writer.encode_rows = 256;
    let big = convert(&opts2, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!(big.data_files, 48, "with the default budget each hour is one file");
    assert!(small.data_files > big.data_files, "{} files", small.data_files);
    assert_eq!(small.rows, 10_000);
    let duck = python(
        "import duckdb,sys; print(duckdb.sql(f\"SELECT count(*), count(DISTINCT event_id) FROM \
         read_parquet('{sys.argv[1]}/**/*.parquet')\").fetchall()[0])",
        &[lake.to_str().unwrap()],
    );
    assert_eq!(duck.trim(), "(10000, 10000)");
}
