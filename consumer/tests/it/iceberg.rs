//! The lake as an Apache Iceberg table in a local SQL catalog, read back by
//! an independent reader (pyiceberg, then DuckDB on its Arrow table).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use shardlake::convert::{ConvertOptions, convert};
use shardlake::events::EVENTS_SCHEMA_TOML;
use shardlake::schema::Schema;
use shardlake_consumer::iceberg::table::committed_batches;
use shardlake_consumer::iceberg::{BatchFiles, BatchKey, CatalogUrl, IcebergLake, TableConfig};

use std::time::Duration;

use crate::support::*;
use faultproxy::{FaultProxy, Flavor, Mode};

fn convert_cli(input: &Path, lake: &Path, schema: &Path, args: &[&str]) -> Output {
    let mut all = vec![
        "convert",
        "--input",
        input.to_str().unwrap(),
        "--destination",
        lake.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
        "--time-field",
        "ts",
        "--table-format",
        "iceberg",
        "--quiet",
    ];
    all.extend_from_slice(args);
    Command::new(env!("CARGO_BIN_EXE_shardlake-consumer")).args(&all).output().unwrap()
}

/// Rows per hour (`YYYY-MM-DDTHH`) of the generated events.
fn rows_by_hour(input: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        *out.entry(v["ts"].as_str().unwrap()[..13].to_string()).or_default() += 1;
    }
    out
}

/// pyiceberg's view of a table as JSON: rows, distinct ids, snapshots'
/// batches, the spec, field ids, and a one-hour scan.
const READ: &str = r#"
import json, duckdb, pyarrow.parquet as pq
t = load_table(sys.argv[1])
arrow = t.scan().to_arrow()
con = duckdb.connect()
con.register("t", arrow)
rows, distinct = con.sql("select count(*), count(distinct event_id) from t").fetchall()[0]
hour = sys.argv[2]
scan = t.scan(row_filter=f"ts >= '{hour}:00:00+00:00' and ts < '{hour}:59:59.999999+00:00'")
files = [f.file.file_path for f in scan.plan_files()]
first = pq.read_schema(files[0].removeprefix("file://"))
print(json.dumps({
  "rows": rows, "distinct": distinct,
  "batches": [json.loads(s.summary.additional_properties.get("shardlake.batches", "[]")) for s in t.snapshots()],
  "spec": [f"{f.transform}({t.schema().find_column_name(f.source_id)})" for f in t.spec().fields],
  "ts_id": t.schema().find_field("ts").field_id,
  "file_ts_id": int(first.field("ts").metadata[b"PARQUET:field_id"]),
  "file_ts_type": str(first.field("ts").type),
  "device_os_id": t.schema().find_field("device.os").field_id,
  "file_device_os_id": int(first.field("device").type.field("os").metadata[b"PARQUET:field_id"]),
  "hour_files": len(files), "hour_rows": scan.to_arrow().num_rows,
  "arrow_ts": str(arrow.schema.field("ts").type),
}))
"#;

#[test]
fn convert_appends_runs_to_an_iceberg_table_that_pyiceberg_reads_by_field_id() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 3000, 11);
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, EVENTS_SCHEMA_TOML).unwrap();
    let lake = dir.path().join("lake");
    let catalog_file = dir.path().join("catalog.db");
    let catalog = format!("sqlite://{}/analytics/events", catalog_file.display());

    // Without --catalog-create a missing table is an error with the fix.
    let out = convert_cli(&input, &lake, &schema, &["--catalog", &catalog]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not exist") && err.contains("--catalog-create"), "{err}");
    // A template Iceberg cannot express is refused before anything is written.
    let out = convert_cli(&input, &lake, &schema, &["--catalog", &catalog, "--partition", "!{timestamp:yyyy}/"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no Iceberg equivalent"), "{err}");

    for _ in 0..2 {
        let out = convert_cli(&input, &lake, &schema, &["--catalog", &catalog, "--catalog-create", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["rows"], 3000);
        assert!(summary["snapshot_id"].is_i64(), "{summary}");
    }

    let hours = rows_by_hour(&input);
    let (hour, hour_rows) = hours.iter().nth(5).unwrap();
    let out = python(&format!("{}{READ}", py_load_iceberg()), &[&catalog, hour]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], 6000, "{v}");
    assert_eq!(v["distinct"], 3000, "{v}");
    // One snapshot per run, each naming its one batch.
    let batches = v["batches"].as_array().unwrap();
    assert_eq!(batches.len(), 2, "{v}");
    for b in batches {
        assert_eq!(b.as_array().unwrap().len(), 1, "{v}");
        assert!(b[0].as_str().unwrap().starts_with("convert/events-"), "{v}");
    }
    assert_ne!(batches[0], batches[1]);
    // Hidden partitioning: hour(ts); a one-hour query plans one file per run.
    assert_eq!(v["spec"], serde_json::json!(["hour(ts)"]), "{v}");
    assert_eq!(v["hour_files"], 2, "{v}");
    assert_eq!(v["hour_rows"].as_u64().unwrap(), 2 * hour_rows, "{v}");
    // The files carry the table's field ids, nested ones too, and micros.
    assert_eq!(v["file_ts_id"], v["ts_id"], "{v}");
    assert_eq!(v["file_device_os_id"], v["device_os_id"], "{v}");
    assert_eq!(v["file_ts_type"], "timestamp[us, tz=UTC]", "{v}");
}

/// The table in the Glue Data Catalog, on S3: two converts append two
/// snapshots; Glue holds an Iceberg table whose metadata is under the
/// destination; pyiceberg, through Glue and S3, reads every row once per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_appends_to_an_iceberg_table_in_glue_on_s3() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 2000, 12);
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, EVENTS_SCHEMA_TOML).unwrap();
    let bucket = unique("iceberg-glue").to_lowercase();
    s3_client().await.create_bucket().bucket(&bucket).send().await.unwrap();
    let db = unique("iceberg").replace('-', "_");
    let catalog = format!("glue://{db}/events");
    let lake = format!("s3://{bucket}/lake/");

    // A Glue table on a local folder is refused with the fix.
    let out = convert_cli(&input, &dir.path().join("lake"), &schema, &["--catalog", &catalog, "--catalog-create"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must live on S3"), "{err}");

    let glue = glue().await;
    let get = || async { glue.get_table().database_name(&db).name("events").send().await.unwrap().table.unwrap() };
    let mut first_metadata = String::new();
    for run in 0..2 {
        let out =
            convert_cli(&input, Path::new(&lake), &schema, &["--catalog", &catalog, "--catalog-create", "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(summary["rows"], 2000, "{summary}");
        if run == 0 {
            // The table's owners describe it, tag it and comment a column.
            let table = get().await;
            first_metadata = table.parameters().unwrap()["metadata_location"].clone();
            let mut input = shardlake::catalog::with_added_columns(&table, &[]);
            input.description = Some("clickstream, owned by growth".into());
            input.parameters.get_or_insert_default().insert("classification".into(), "confidential".into());
            let columns = input.storage_descriptor.as_mut().unwrap().columns.as_mut().unwrap();
            columns.iter_mut().find(|c| c.name == "event_id").unwrap().comment = Some("the event's UUID".into());
            glue.update_table().database_name(&db).table_input(input).send().await.unwrap();
        }
    }
    let table = get().await;
    let params = table.parameters().unwrap();
    assert_eq!(params.get("table_type").map(String::as_str), Some("ICEBERG"), "{params:?}");
    let metadata = params.get("metadata_location").unwrap();
    assert!(metadata.starts_with(&format!("s3://{bucket}/lake/metadata/")), "{metadata}");
    // The second run's commit kept what the owners wrote.
    assert_ne!(*metadata, first_metadata);
    assert_eq!(params.get("classification").map(String::as_str), Some("confidential"), "{params:?}");
    assert_eq!(table.description(), Some("clickstream, owned by growth"));
    let columns = table.storage_descriptor().unwrap().columns();
    let event_id = columns.iter().find(|c| c.name() == "event_id").unwrap();
    assert_eq!(event_id.comment(), Some("the event's UUID"), "{columns:?}");
    let ts = columns.iter().find(|c| c.name() == "ts").unwrap();
    assert_eq!(ts.r#type(), Some("timestamp"), "{columns:?}");
    let v = iceberg_view(&catalog);
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(4000), Some(2000)), "{v}");
    assert_eq!(batches_named_once(&v).len(), 2, "{v}");
    // The data files are under the destination's data/, in hour folders.
    let keys = s3_client().await.list_objects_v2().bucket(&bucket).prefix("lake/data/").send().await.unwrap();
    let keys: Vec<&str> = keys.contents().iter().filter_map(|o| o.key()).collect();
    assert!(!keys.is_empty() && keys.iter().all(|k| k.contains("/hour=") && k.ends_with(".parquet")), "{keys:?}");
}

async fn open(lake: &str, catalog: &CatalogUrl, schema: &Schema) -> IcebergLake {
    IcebergLake::open(TableConfig {
        catalog,
        destination: lake,
        schema,
        unknown_fields: shardlake::schema::UnknownFieldPolicy::Keep,
        template: shardlake::partition::DEFAULT_TEMPLATE,
        time_field: Some("ts"),
        create: true,
        s3: &Default::default(),
    })
    .await
    .unwrap()
}

/// Writes `input`'s data files for `lake`'s table and returns them as one batch.
async fn batch(lake: &IcebergLake, input: &Path, dest: &str, name: &str) -> BatchFiles {
    let mut opts: ConvertOptions = crate::support::common::event_options(input, dest);
    opts.iceberg_field_ids = Some(lake.field_ids.clone());
    opts.file_stem = Some(name.to_string());
    let summary = convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    let files = summary.data.iter().map(|f| lake.written(&f.key, &f.partition, f.bytes, f.footer.clone())).collect();
    BatchFiles { key: BatchKey(format!("test/{name}")), files }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_never_append_a_batch_twice_and_conflicts_are_retried() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db/t", dir.path().join("c.db").display());
    two_writers(&url, dir.path().join("lake").to_str().unwrap(), dir.path()).await;
}

/// The same in the Glue Data Catalog, on S3, where Glue's `VersionId`
/// check is the fence (the test Glue enforces it as AWS does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_in_glue_never_append_a_batch_twice_and_conflicts_are_retried() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let bucket = unique("iceberg-two").to_lowercase();
    s3_client().await.create_bucket().bucket(&bucket).send().await.unwrap();
    let db = unique("two").replace('-', "_");
    two_writers(&format!("glue://{db}/t"), &format!("s3://{bucket}/lake/"), dir.path()).await;
    // Glue refuses a commit fenced on a version another commit replaced.
    let glue = glue().await;
    let table = glue.get_table().database_name(&db).name("t").send().await.unwrap().table.unwrap();
    let input = shardlake::catalog::with_added_columns(&table, &[]);
    let stale = (table.version_id().unwrap().parse::<u64>().unwrap() - 1).to_string();
    let err = glue.update_table().database_name(&db).table_input(input).version_id(stale).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("ConcurrentModificationException"), "{err:?}");
}

/// Two writers (each with its own catalog connection, as two workers) on
/// the table at catalog `url` and lake `dest`: the same batch from both at
/// once lands once, a replay appends nothing, different batches at once
/// (a conflict in the catalog) both land, and a mixed append leaves out
/// the known batch.
async fn two_writers(url: &str, dest: &str, dir: &Path) {
    let input = gen_events(dir, 500, 3);
    let catalog = CatalogUrl::parse(url, dir).unwrap();
    let schema = Schema::parse(EVENTS_SCHEMA_TOML, false).unwrap();
    let (a, b) = (open(dest, &catalog, &schema).await, open(dest, &catalog, &schema).await);
    let same = batch(&a, &input, dest, "same").await;

    // The same batch from both at once: one appends it, the other finds it.
    let (ra, rb) = tokio::join!(a.table.append(vec![same.clone()]), b.table.append(vec![same.clone()]));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.appended.len() + rb.appended.len(), 1, "{ra:?} {rb:?}");
    assert_eq!(ra.already.len() + rb.already.len(), 1, "{ra:?} {rb:?}");
    // Again later (a replay after a crash): nothing appended.
    let again = a.table.append(vec![same.clone()]).await.unwrap();
    assert!(again.appended.is_empty() && again.snapshot_id.is_none(), "{again:?}");

    // Different batches at once conflict in the catalog; both land.
    let (one, two) = (batch(&a, &input, dest, "one").await, batch(&b, &input, dest, "two").await);
    let (r1, r2) = tokio::join!(a.table.append(vec![one]), b.table.append(vec![two]));
    assert_eq!(r1.unwrap().appended.len() + r2.unwrap().appended.len(), 2);
    // A mixed append: the known batch is left out, the new one lands.
    let three = batch(&a, &input, dest, "three").await;
    let mixed = b.table.append(vec![same, three]).await.unwrap();
    assert_eq!(mixed.appended, vec![BatchKey("test/three".into())]);
    assert_eq!(mixed.already, vec![BatchKey("test/same".into())]);

    let table = a.table.load().await.unwrap();
    let names: Vec<String> = committed_batches(&table).into_iter().map(|k| k.0).collect();
    assert_eq!(names, ["test/one", "test/same", "test/three", "test/two"]);
    assert_eq!(table.metadata().snapshots().count(), 4);
    let v = iceberg_view(url);
    assert_eq!(v["rows"], 2000, "{v}");
}

/// Glue answering 500s at start for longer than the preflight's patience:
/// the worker retries opening its table, logging each failure, starts once
/// Glue answers, and every record lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glue_catalog_failing_at_start_is_retried_until_it_answers() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 1).await;
    let bucket = unique("iceberg-flaky").to_lowercase();
    s3_client().await.create_bucket().bucket(&bucket).send().await.unwrap();
    let db = unique("flaky").replace('-', "_");
    let glue = Arc::new(FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_GLUE"), Flavor::Glue).await.unwrap());
    glue.set(Mode::ServerError);
    let setup = Setup::new(&stream);
    let table = format!("glue://{db}/events");
    setup.config_to(
        &format!("s3://{bucket}/lake/"),
        &format!(
            "table_format = \"iceberg\"\ncatalog = \"{table}\"\ncatalog_create = true\ncommit_interval = \"500ms\"\n"
        ),
    );
    let healed = {
        let glue = glue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(25)).await;
            glue.set(Mode::Pass);
        })
    };
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_GLUE", &glue.endpoint)]);
    healed.await.unwrap();
    let landed = put_records(&client, &stream, &keyed(events(50, 9, 1))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    let log = setup.log();
    assert!(log.contains("opening the Iceberg table failed; retrying"), "{log}");
    assert!(glue.counts.errors.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let v = iceberg_view(&table);
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(50), Some(50)), "{v}\n{log}");
}

/// `scripts/iceberg_compact.py` on the table at `url` (the stand-in for the
/// Glue optimizer): its JSON report.
fn compact(url: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/iceberg_compact.py");
    let out = Command::new(stack_env("SHARDLAKE_PYTHON")).arg(script).arg(url).output().unwrap();
    assert!(out.status.success(), "compaction failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A second writer compacts the table's hours (each hour's files rewritten
/// as one, in overwrite commits) while a worker appends to it, and again
/// after: every record is read once, every batch is named once, the
/// compaction's commits and the worker's are each retried on the other's,
/// and each hour ends as one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_beside_a_running_worker_loses_and_repeats_nothing() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config(ICEBERG_RUN);
    let url = format!("sqlite://{}/analytics/events", setup.dir.path().join("catalog.db").display());
    let records = keyed(events(900, 17, 3));
    let hours: std::collections::BTreeSet<String> = records
        .iter()
        .map(|(_, e)| serde_json::from_slice::<serde_json::Value>(e).unwrap()["ts"].as_str().unwrap()[..13].to_string())
        .collect();
    let mut consumer = setup.start(&[]);
    let mut landed = Vec::new();
    for chunk in records[..300].chunks(50) {
        landed.extend(put_records(&client, &stream, chunk).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    setup.wait_committed(&landed, Duration::from_secs(60)).await;

    // Compaction while the worker appends.
    let during = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || compact(&url))
    };
    for chunk in records[300..600].chunks(50) {
        landed.extend(put_records(&client, &stream, chunk).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let during = during.await.unwrap();
    assert!(during["partitions"].as_u64().unwrap() > 0, "{during}");
    landed.extend(put_records(&client, &stream, &records[600..]).await);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    let after = compact(&url);
    let v = iceberg_view(&url);
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(900), Some(900)), "{v}\n{during}\n{after}");
    batches_named_once(&v);
    assert!(v["compactions"].as_u64().unwrap() >= 2, "{v}");
    assert_eq!(v["files"].as_u64().unwrap(), hours.len() as u64, "one file per hour after compaction: {v} {after}");
    // The table's properties (`write.parquet.compression-codec`) keep the
    // compacted files Snappy, as shardlake writes them.
    let codecs = python(
        &format!(
            "{}import pyarrow.parquet as pq\nt = load_table(sys.argv[1])\n\
             print(sorted({{pq.ParquetFile(f.file.file_path.removeprefix('file://')).metadata.row_group(0).column(0).compression \
             for f in t.scan().plan_files()}}))",
            py_load_iceberg()
        ),
        &[&url],
    );
    assert_eq!(codecs.trim(), "['SNAPPY']");
    eprintln!("COMPACTION: during {during}, after {after}");
}

const ICEBERG_RUN: &str = "table_format = \"iceberg\"\ncatalog = \"sqlite://catalog.db/analytics/events\"\n\
                           catalog_create = true\ncommit_interval = \"500ms\"\n";

/// Runs a worker into an Iceberg table that aborts at `crash_at`, restarts
/// it, and checks with pyiceberg that every record is in the table once and
/// every snapshot names the batches it holds, each once.
async fn iceberg_crash_then_recover(crash_at: &str) -> String {
    const RECORDS: u64 = 600;
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config(ICEBERG_RUN);
    let landed = put_records(&client, &stream, &keyed(events(RECORDS, 11, 8))).await;
    setup.run_until_crash(crash_at).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let status = terminate(&mut consumer);
    assert!(status.success(), "{status}: {}", setup.log());

    let v = iceberg_view(&format!("sqlite://{}/analytics/events", setup.dir.path().join("catalog.db").display()));
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(RECORDS), Some(RECORDS)), "{v}\n{}", setup.log());
    for name in batches_named_once(&v) {
        assert!(name.starts_with(&format!("{stream}/shardId-")), "{name}");
    }
    setup.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_after_intent_before_any_upload() {
    let Some(_stack) = stack() else { return };
    let log = iceberg_crash_then_recover("after_intent:1").await;
    assert!(log.contains("replaying a pending batch"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_between_upload_and_table_commit() {
    let Some(_stack) = stack() else { return };
    let log = iceberg_crash_then_recover("before_commit:1").await;
    assert!(log.contains("replaying a pending batch"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iceberg_crash_between_table_commit_and_checkpoint() {
    let Some(_stack) = stack() else { return };
    let log = iceberg_crash_then_recover("after_table_commit:1").await;
    assert!(log.contains("replayed batch already in the table"), "{log}");
}

/// `catalog maintain` between a crash after a table commit and the restart,
/// with a later snapshot on top (a `convert` into the table) and asked to
/// expire every snapshot but the newest: the snapshot naming the pending
/// batches stays, so the replay finds them and appends nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintain_keeps_the_snapshots_of_batches_shards_still_replay() {
    let Some(_stack) = stack() else { return };
    const RECORDS: u64 = 600;
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    let config = setup.config(ICEBERG_RUN);
    let landed = put_records(&client, &stream, &keyed(events(RECORDS, 13, 8))).await;
    setup.run_until_crash("after_table_commit:1").await;

    let other = tempfile::tempdir().unwrap();
    let input = gen_events(other.path(), 100, 14);
    let schema = other.path().join("schema.toml");
    std::fs::write(&schema, EVENTS_SCHEMA_TOML).unwrap();
    let url = format!("sqlite://{}/analytics/events", setup.dir.path().join("catalog.db").display());
    let out = convert_cli(&input, &setup.lake(), &schema, &["--catalog", &url]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["catalog", "maintain", "--config", config.to_str().unwrap(), "--older-than", "0s", "--retain-last", "1"])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    assert!(printed.contains("kept 1 snapshots past --older-than"), "{printed}");

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert!(setup.log().contains("replayed batch already in the table"), "{}", setup.log());
    let v = iceberg_view(&url);
    let want = RECORDS + 100;
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(want), Some(want)), "{v}\n{}", setup.log());
    batches_named_once(&v);
}

/// `unknown_fields = "evolve"` on an Iceberg table: a new field becomes a
/// column with a new field id, added to the table before any file carries
/// it; rows written before read it as null, by id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolution_adds_a_field_id_and_older_files_read_the_new_column_as_null() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config(&format!("{ICEBERG_RUN}unknown_fields = \"evolve\"\n"));
    let mut consumer = setup.start(&[]);
    let mut landed = put_records(&client, &stream, &keyed(events(300, 21, 4))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let later = with_fields(events(300, 22, 4), r#""loyalty_tier":"gold""#);
    landed.extend(put_records(&client, &stream, &keyed(later)).await);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let status = terminate(&mut consumer);
    assert!(status.success(), "{status}: {}", setup.log());

    let script = r#"
import json, duckdb
t = load_table(sys.argv[1])
arrow = t.scan().to_arrow()
con = duckdb.connect()
con.register("t", arrow)
rows, distinct, gold, nulls = con.sql(
    "select count(*), count(distinct event_id), count(*) filter (where loyalty_tier = 'gold'), "
    "count(*) filter (where loyalty_tier is null) from t").fetchall()[0]
# The metadata's schema list is in no particular order (iceberg-rust keeps a map).
schemas = sorted(t.metadata.schemas, key=lambda s: s.schema_id)
print(json.dumps({"rows": rows, "distinct": distinct, "gold": gold, "nulls": nulls,
  "tier_id": t.schema().find_field("loyalty_tier").field_id,
  "first_max_id": max(f.field_id for f in schemas[0].fields),
  "schemas": len(schemas)}))
"#;
    let url = format!("sqlite://{}/analytics/events", setup.dir.path().join("catalog.db").display());
    let v: serde_json::Value =
        serde_json::from_str(&python(&format!("{}{script}", py_load_iceberg()), &[&url])).unwrap();
    assert_eq!(v["rows"], 600, "{v}\n{}", setup.log());
    assert_eq!(v["distinct"], 600, "{v}");
    assert_eq!(v["gold"], 300, "{v}");
    assert_eq!(v["nulls"], 300, "{v}");
    assert!(v["tier_id"].as_i64().unwrap() > v["first_max_id"].as_i64().unwrap(), "{v}");
    assert!(v["schemas"].as_u64().unwrap() >= 2, "{v}");
    assert!(setup.log().contains("columns added to the Iceberg table"), "{}", setup.log());
}

/// `config check` refuses, with the fix, what an Iceberg table cannot take.
#[test]
fn config_check_refuses_what_an_iceberg_table_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("schema.toml"), EVENTS_SCHEMA_TOML).unwrap();
    let check = |lines: &str| {
        let path = dir.path().join("c.toml");
        let text = format!(
            "stream = \"s\"\ndestination = \"lake\"\nschema = \"schema.toml\"\ntime_field = \"ts\"\n\
             table_format = \"iceberg\"\n{lines}"
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (ok, out) = check("catalog = \"sqlite://c.db/analytics/events\"\n");
    assert!(ok, "{out}");
    assert!(out.contains("iceberg table") && out.contains("one commit per 1m"), "{out}");
    for (lines, want) in [
        ("", "needs the table's catalog"),
        ("catalog = \"glue://db/t\"\n", "must live on S3"),
        ("catalog = \"glue://db/t-1\"\n", "lower-case letters, digits or `_`"),
        ("catalog = \"sqlite://c.db/events\"\n", "PATH/NAMESPACE/TABLE"),
        (
            "catalog = \"sqlite://c.db/a/t\"\npartition = \"m=!{timestamp:yyyy-MM-dd-HH-mm}/\"\n",
            "has no Iceberg transform",
        ),
        ("catalog = \"sqlite://c.db/a/t\"\ncommit_interval = \"10ms\"\n", "100ms minimum"),
        ("catalog = \"sqlite://c.db/a/t\"\ncommit_interval = \"2m\"\n", "half of health.stall_after"),
    ] {
        let (ok, out) = check(lines);
        assert!(!ok && out.contains(want), "{lines}: {out}");
    }
}

/// `catalog maintain` expires old snapshots (keeping the newest) and
/// deletes only unreferenced data files older than its limit; the table
/// still reads every row.
#[test]
fn maintain_expires_snapshots_and_deletes_only_old_orphan_files() {
    let Some(_stack) = stack() else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 1000, 5);
    let schema = dir.path().join("schema.toml");
    std::fs::write(&schema, EVENTS_SCHEMA_TOML).unwrap();
    let lake = dir.path().join("lake");
    let catalog_file = dir.path().join("c.db");
    let catalog = format!("sqlite://{}/analytics/events", catalog_file.display());
    for _ in 0..3 {
        let out = convert_cli(&input, &lake, &schema, &["--catalog", &catalog, "--catalog-create"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Two files no snapshot references: one old (a failed run long ago), one new.
    let some = crate::support::parquet_files(&lake.join("data"))[0].clone();
    let (old, young) = (some.with_file_name("orphan-old.parquet"), some.with_file_name("orphan-young.parquet"));
    std::fs::copy(&some, &old).unwrap();
    std::fs::copy(&some, &young).unwrap();
    let week_ago = std::time::SystemTime::now() - Duration::from_secs(7 * 86_400);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(week_ago).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "stream = \"s\"\ndestination = \"lake\"\nschema = \"schema.toml\"\ntime_field = \"ts\"\n\
             table_format = \"iceberg\"\ncatalog = \"{catalog}\"\n"
        ),
    )
    .unwrap();
    let maintain = |extra: &[&str]| {
        let mut args = vec!["catalog", "maintain", "--config", config.to_str().unwrap(), "--older-than", "0s"];
        args.extend_from_slice(&["--retain-last", "1", "--orphans-older-than", "1h"]);
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer")).args(&args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let dry = maintain(&["--dry-run"]);
    assert!(dry.contains("snapshots 3 -> 3") && dry.contains("would delete 1 orphans"), "{dry}");
    assert!(old.exists());
    let out = maintain(&[]);
    assert!(out.contains("snapshots 3 -> 1"), "{out}");
    assert!(out.contains("deleted 1 orphans; 1 unreferenced but younger than 1h"), "{out}");
    assert!(!old.exists() && young.exists());
    assert!(out.contains("metadata files: deleted 0"), "the expired snapshots' files are young: {out}");
    // A week later: the expired snapshots' manifest lists and manifests, and
    // the older metadata versions past the log, go; what the table reads stays.
    let metadata_dir = lake.join("metadata");
    let files = || std::fs::read_dir(&metadata_dir).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let before = files();
    for f in &before {
        std::fs::File::options().write(true).open(f).unwrap().set_modified(week_ago).unwrap();
    }
    let out = maintain(&[]);
    let after = files();
    // (The expiry commit itself wrote a new metadata file.)
    let gone = before.iter().filter(|f| !after.contains(f)).count();
    assert!(gone > 0, "{out}\n{before:?}\n{after:?}");
    assert!(out.contains(&format!("metadata files: deleted {gone} ")), "{out}");
    let v = iceberg_view(&format!("sqlite://{}/analytics/events", catalog_file.display()));
    assert_eq!((v["rows"].as_u64(), v["distinct"].as_u64()), (Some(3000), Some(1000)), "{v}");
    assert_eq!(v["batches"].as_array().unwrap().len(), 1, "{v}");
}
