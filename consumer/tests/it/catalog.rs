//! The lake as a Glue table (moto's Glue): the consumer creates the table
//! from the schema and template, registers exactly the partitions its files
//! are in (with their locations), catches up after a kill -9 between commit
//! and registration, refuses an existing table that does not fit with every
//! difference named, and reads its schema from a Glue table.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use faultproxy::{FaultProxy, Flavor, Mode};
use shardlake::catalog::{CatalogTable, PartitionMode, TableName};
use shardlake::partition::{DEFAULT_TEMPLATE, PartitionTemplate};
use shardlake::schema::{Schema, UnknownFieldPolicy, table_definition};

/// A database name Glue accepts, unique to this run.
fn database() -> String {
    unique("lake").replace('-', "_")
}

/// (partition values, location) of every partition the catalog holds.
async fn catalog_partitions(glue: &aws_sdk_glue::Client, db: &str, table: &str) -> BTreeSet<(Vec<String>, String)> {
    let mut out = BTreeSet::new();
    let mut token = None;
    loop {
        let page = match glue.get_partitions().database_name(db).table_name(table).set_next_token(token).send().await {
            Ok(page) => page,
            // No table (yet): no partitions.
            Err(e) if e.as_service_error().is_some_and(|e| e.is_entity_not_found_exception()) => return out,
            Err(e) => panic!("GetPartitions: {e:?}"),
        };
        for p in page.partitions() {
            let location = p.storage_descriptor().and_then(|sd| sd.location()).unwrap_or_default();
            out.insert((p.values().to_vec(), location.to_string()));
        }
        token = page.next_token().map(str::to_string);
        if token.is_none() {
            return out;
        }
    }
}

/// What the catalog must hold for a lake folder: one entry per partition
/// folder that has data files, located at `location` + its path.
fn lake_partitions(lake: &Path, location: &str) -> BTreeSet<(Vec<String>, String)> {
    parquet_files(lake)
        .iter()
        .map(|file| {
            let dir = file.parent().unwrap().strip_prefix(lake).unwrap().display().to_string();
            let values = dir.split('/').map(|seg| seg.split_once('=').unwrap().1.to_string()).collect();
            (values, format!("{location}{dir}/"))
        })
        .collect()
}

/// Waits until the catalog's partitions are exactly `want`.
async fn wait_registered(glue: &aws_sdk_glue::Client, db: &str, want: &BTreeSet<(Vec<String>, String)>, log: &str) {
    let limit = Duration::from_secs(30);
    let deadline = std::time::Instant::now() + limit;
    loop {
        let have = catalog_partitions(glue, db, "events").await;
        if &have == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "catalog {have:#?}\nlake {want:#?}\nlog:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_created_table_fits_the_lake_and_lists_exactly_its_partitions() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let s3 = s3_client().await;
    let bucket = unique("catalog").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let db = database();
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config_to(
        &format!("s3://{bucket}/lake"),
        &format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\n"),
    );
    let records = keyed(events(600, 81, 5));
    let landed = put_records(&client, &stream, &records).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;

    let table = glue.get_table().database_name(&db).name("events").send().await.unwrap().table.unwrap();
    let sd = table.storage_descriptor().unwrap();
    let columns: Vec<(&str, &str)> = sd.columns().iter().map(|c| (c.name(), c.r#type().unwrap())).collect();
    let schema = Schema::parse(&std::fs::read_to_string(setup.dir.path().join("schema.toml")).unwrap(), false).unwrap();
    let mut want: Vec<(String, String)> = schema.columns.iter().map(|c| (c.name.clone(), c.ty.to_string())).collect();
    want.push(("_extra".into(), "string".into()));
    assert_eq!(columns, want.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect::<Vec<_>>());
    let keys: Vec<(&str, &str)> =
        table.partition_keys().iter().map(|k| (k.name(), k.r#type().unwrap_or_default())).collect();
    assert_eq!(keys, [("year", "string"), ("month", "string"), ("day", "string"), ("hour", "string")]);
    assert_eq!(sd.location(), Some(format!("s3://{bucket}/lake/").as_str()));
    assert_eq!(
        sd.serde_info().and_then(|s| s.serialization_library()),
        Some("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
    );
    assert_eq!(sd.input_format(), Some("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"));
    let params = table.parameters().unwrap();
    assert_eq!(params.get("parquet.compression").map(String::as_str), Some("SNAPPY"));
    assert_eq!(params.get("classification").map(String::as_str), Some("parquet"));
    assert!(!params.contains_key("projection.enabled"), "{params:?}");
    assert_eq!(table.table_type(), Some("EXTERNAL_TABLE"));

    setup.download(&s3, &bucket, "lake/").await;
    let lake = lake_partitions(&setup.lake(), &format!("s3://{bucket}/lake/"));
    assert!(lake.len() >= 5, "{lake:?}");
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    let metrics = setup.metrics();
    assert_eq!(metric_sum(&metrics, "shardlake_consumer_catalog_partitions_registered_total"), lake.len() as f64);
    assert_eq!(metric_sum(&metrics, "shardlake_consumer_catalog_failures_total"), 0.0);
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (600, 600, 0));
}

/// The events table created from the events schema (as `catalog_create`
/// would), for tests that need it to exist first.
async fn create_events_table(glue: &aws_sdk_glue::Client, db: &str, schema: &Schema, location: &str) {
    let template = PartitionTemplate::parse(DEFAULT_TEMPLATE).unwrap();
    let def = table_definition(schema, &template, UnknownFieldPolicy::Keep, location, None).unwrap();
    let name = TableName { database: db.into(), table: "events".into() };
    CatalogTable::new(glue.clone(), name, template, def, PartitionMode::Register).ensure(true).await.unwrap();
}

/// Schema read from Glue; the worker killed right after a commit, before it
/// registered that batch's partitions: the next start registers them from
/// the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_commit_and_registration_still_registers_the_partition() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
    let schema = Schema::parse(&std::fs::read_to_string(setup.dir.path().join("schema.toml")).unwrap(), false).unwrap();
    create_events_table(&glue, &db, &schema, &location).await;
    setup.config(&format!("schema = \"glue://{db}/events\"\ncatalog = \"glue://{db}/events\"\n"));
    let records = keyed(events(300, 82, 3));
    let landed = put_records(&client, &stream, &records).await;

    setup.run_until_crash("after_commit:1").await;
    assert!(setup.log().contains(&format!("read a schema of 13 columns from glue://{db}/events")), "{}", setup.log());
    let committed = lake_partitions(&setup.lake(), &location);
    assert!(!committed.is_empty());
    assert_eq!(catalog_partitions(&glue, &db, "events").await, BTreeSet::new(), "registered before the crash");
    let state = std::fs::read_to_string(
        setup.dir.path().join(format!("checkpoints/shardlake/{stream}/shardId-000000000000.json")),
    )
    .unwrap();
    assert!(state.contains("catalog_pending"), "{state}");

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let lake = lake_partitions(&setup.lake(), &location);
    assert!(committed.is_subset(&lake));
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert!(setup.dir.path().join(format!("checkpoints/shardlake/{stream}/schema.toml")).exists());
    assert_eq!(setup.duckdb_check(), (300, 300, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_that_does_not_fit_stops_the_worker_naming_each_difference() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    let run = |setup: &Setup| {
        let out = Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
            .args(["run", "--config"])
            .arg(setup.dir.path().join("consumer.toml"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    setup.config(&format!("catalog = \"glue://{db}/events\"\n"));
    let err = run(&setup);
    assert!(err.contains(&format!("catalog glue://{db}/events: the table does not exist")), "{err}");
    assert!(err.contains("catalog_create = true"), "{err}");

    // The table of an older schema: `quantity` was an int, `country` did not exist.
    let text = std::fs::read_to_string(setup.dir.path().join("schema.toml")).unwrap();
    let mut old = Schema::parse(&text, false).unwrap();
    old.columns.retain(|c| c.name != "country");
    old.columns.iter_mut().find(|c| c.name == "quantity").unwrap().ty = "int".parse().unwrap();
    create_events_table(&glue, &db, &old, "s3://elsewhere/lake/").await;
    let err = run(&setup);
    for want in [
        "column `quantity` is int in the table but bigint in the schema",
        "column `country` (string) is missing from the table",
        "location is `s3://elsewhere/lake/` in the table but the destination is `file://",
    ] {
        assert!(err.contains(want), "{want:?} not in:\n{err}");
    }
}

/// Runs `shardlake-consumer ARGS`; panics unless it succeeds. Returns stdout and stderr.
fn cli(args: &[&str]) -> String {
    cli_with(args, &[])
}

/// `cli` with `env` added.
fn cli_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let out =
        Command::new(env!("CARGO_BIN_EXE_shardlake-consumer")).args(args).envs(env.iter().copied()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?}:\n{text}");
    text
}

/// Every file under `root`: relative path and bytes.
fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = parquet_files(root)
        .iter()
        .map(|p| (p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(p).unwrap()))
        .collect();
    out.sort();
    out
}

/// `convert --catalog` creates the table and registers what it wrote; a
/// conversion with `--schema glue://` writes the very same files as with the
/// TOML schema; `catalog sync` registers what the catalog lost and names
/// the partitions it lists without files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convert_registers_a_glue_schema_converts_the_same_and_sync_fills_the_gaps() {
    let Some(_stack) = stack() else { return };
    let glue = glue().await;
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 2000, 83);
    let schema_file = dir.path().join("schema.toml");
    std::fs::write(&schema_file, shardlake::events::EVENTS_SCHEMA_TOML).unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let table = format!("glue://{db}/events");
    let input = input.to_str().unwrap();
    let out = cli(&[
        "convert",
        "--input",
        input,
        "--destination",
        a.to_str().unwrap(),
        "--schema",
        schema_file.to_str().unwrap(),
        "--time-field",
        "ts",
        "--quiet",
        "--catalog",
        &table,
        "--catalog-create",
    ]);
    let location = shardlake::catalog::table_location(a.to_str().unwrap()).unwrap();
    let lake = lake_partitions(&a, &location);
    assert!(out.contains(&format!("catalog {table}: {} partitions registered, 0 already there", lake.len())), "{out}");
    assert_eq!(catalog_partitions(&glue, &db, "events").await, lake);

    cli(&[
        "convert",
        "--input",
        input,
        "--destination",
        b.to_str().unwrap(),
        "--schema",
        &table,
        "--time-field",
        "ts",
        "--quiet",
    ]);
    let (from_toml, from_glue) = (files(&a), files(&b));
    assert!(!from_toml.is_empty());
    assert!(from_toml == from_glue, "the files differ");

    // The catalog loses two partitions and gains one without files.
    let lost: Vec<_> = lake.iter().take(2).cloned().collect();
    let values =
        |v: &[String]| aws_sdk_glue::types::PartitionValueList::builder().set_values(Some(v.to_vec())).build().unwrap();
    let delete = glue.batch_delete_partition().database_name(&db).table_name("events");
    delete.set_partitions_to_delete(Some(lost.iter().map(|(v, _)| values(v)).collect())).send().await.unwrap();
    let ghost = ["2001", "01", "01", "00"].map(String::from).to_vec();
    let sd = aws_sdk_glue::types::StorageDescriptor::builder()
        .location(format!("{location}year=2001/month=01/day=01/hour=00/"))
        .build();
    let input = aws_sdk_glue::types::PartitionInput::builder().set_values(Some(ghost)).storage_descriptor(sd).build();
    glue.create_partition().database_name(&db).table_name("events").partition_input(input).send().await.unwrap();

    let config = dir.path().join("consumer.toml");
    std::fs::write(
        &config,
        format!(
            "stream = \"events\"\ndestination = \"{}\"\nschema = \"schema.toml\"\ntime_field = \"ts\"\ncatalog = \"{table}\"\n",
            a.display()
        ),
    )
    .unwrap();
    let dry = cli(&["catalog", "sync", "--config", config.to_str().unwrap(), "--dry-run"]);
    assert!(dry.contains("missing from the catalog: 2"), "{dry}");
    assert_eq!(catalog_partitions(&glue, &db, "events").await.len(), lake.len() - 1);
    let out = cli(&["catalog", "sync", "--config", config.to_str().unwrap()]);
    assert!(out.contains(&format!("{} partitions with data files", lake.len())), "{out}");
    assert!(out.contains("registered 2 partitions"), "{out}");
    assert!(
        out.contains("in the catalog without data files: 1") && out.contains("year=2001/month=01/day=01/hour=00/"),
        "{out}"
    );
    let now = catalog_partitions(&glue, &db, "events").await;
    assert!(lake.is_subset(&now) && now.len() == lake.len() + 1, "{now:#?}");
    let listing = cli(&["catalog", "partitions", "--config", config.to_str().unwrap()]);
    let n = lake.len();
    assert!(
        listing.contains(&format!("{n} of {n} lake partitions registered; {} catalog entries", n + 1)),
        "{listing}"
    );
    assert!(listing.contains("year=2001/month=01/day=01/hour=00/           -  file://"), "{listing}");
}

/// Glue black-holed while batches commit: commits go on, `/healthz` names
/// the failing catalog, and once Glue answers every partition is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_outage_never_holds_commits_and_is_caught_up() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_GLUE"), Flavor::Glue).await.unwrap();
    let db = database();
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
    setup.config(&format!(
        "catalog = \"glue://{db}/events\"\ncatalog_create = true\n[timeouts]\ncall = \"1s\"\n[health]\nfailing_after = \"2s\"\n"
    ));
    let records = keyed(events(400, 84, 4));
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_GLUE", &proxy.endpoint)]);
    proxy.set(Mode::BlackHole);
    let landed = put_records(&client, &stream, &records).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let answer = poll("/healthz 503 naming the catalog", Duration::from_secs(30), || async {
        let answer = setup.healthz();
        (answer.starts_with("HTTP/1.1 503") && answer.contains("worker: catalog failing")).then_some(answer)
    })
    .await;
    assert!(answer.contains(&format!("glue://{db}/events")), "{answer}");
    assert!(metric_sum(&setup.metrics(), "shardlake_consumer_catalog_failures_total") > 0.0);
    assert!(metric_sum(&setup.metrics(), "shardlake_consumer_catalog_pending_partitions") > 0.0);
    assert_eq!(catalog_partitions(&glue, &db, "events").await, BTreeSet::new());

    proxy.set(Mode::Pass);
    let lake = lake_partitions(&setup.lake(), &location);
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    poll("/healthz 200", Duration::from_secs(40), || async {
        setup.healthz().starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(proxy.counts.hung.load(std::sync::atomic::Ordering::Relaxed) > 0);
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (400, 400, 0));
}

/// Column names and types of the Glue table.
async fn table_columns(glue: &aws_sdk_glue::Client, db: &str) -> Vec<String> {
    let table = glue.get_table().database_name(db).name("events").send().await.unwrap().table.unwrap();
    let sd = table.storage_descriptor().unwrap();
    sd.columns().iter().map(|c| format!("{}:{}", c.name(), c.r#type().unwrap_or_default())).collect()
}

/// `unknown_fields = "evolve"`: records with two new fields make schema
/// version 2 with both as columns; the table has them before the first file
/// with them is committed; old and new files read together in DuckDB and
/// pyarrow, with nulls where a file lacks the columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolution_adds_new_fields_as_columns_to_the_files_and_the_table() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
    setup.config(&format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\n"));
    let schema = Schema::parse(&std::fs::read_to_string(setup.dir.path().join("schema.toml")).unwrap(), false).unwrap();
    let mut want: Vec<String> = schema.columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect();
    let mut consumer = setup.start(&[]);
    let old = put_records(&client, &stream, &keyed(events(200, 85, 2))).await;
    setup.wait_committed(&old, Duration::from_secs(60)).await;
    want.push("_extra:string".into());
    assert_eq!(table_columns(&glue, &db).await, want);

    let new = put_records(&client, &stream, &keyed(with_coupons(events(200, 86, 2)))).await;
    setup.wait_committed(&new, Duration::from_secs(60)).await;
    want.pop();
    want.extend(["coupon:string".into(), "score:double".into(), "_extra:string".into()]);
    assert_eq!(table_columns(&glue, &db).await, want, "{}", setup.log());
    let checkpoints = setup.dir.path().join(format!("checkpoints/shardlake/{stream}"));
    let v2 = std::fs::read_to_string(checkpoints.join("schema-v2.toml")).unwrap();
    assert!(v2.contains("added_to = 1") && v2.matches("[[columns]]").count() == 2, "a delta of two columns: {v2}");
    assert!(!checkpoints.join("schema-v3.toml").exists(), "both fields came in one version");
    let metrics = setup.metrics();
    assert_eq!(metric_sum(&metrics, "shardlake_consumer_schema_version"), 2.0);
    assert_eq!(metric_sum(&metrics, "shardlake_consumer_schema_columns_added_total"), 2.0);
    assert!(setup.log().contains("schema version 2 in use"), "{}", setup.log());
    let lake = lake_partitions(&setup.lake(), &location);
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    // Files of both versions, read together by name.
    let root = setup.lake().display().to_string();
    let duck = python(
        r#"
import sys, duckdb
print(*duckdb.sql(f"""
select count(*), count(distinct event_id), count(coupon), count(*) filter (where coupon is null),
       sum(score), count(*) filter (where _extra like '%coupon%')
from read_parquet('{sys.argv[1]}/**/*.parquet', hive_partitioning = true, union_by_name = true)
""").fetchall()[0])
"#,
        &[&root],
    );
    // 0.5 + 1.5 + ... + 199.5
    assert_eq!(duck.trim(), "400 400 200 200 20000.0 0", "DuckDB");
    let arrow = python(
        r#"
import sys, glob
import pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq, pyarrow.compute as pc
files = glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True)
schema = pa.unify_schemas([pq.read_schema(f) for f in files])
t = ds.dataset(files, format='parquet', schema=schema).to_table()
print(t.num_rows, t.column('coupon').null_count, pc.sum(t.column('score')).as_py(), len(files))
"#,
        &[&root],
    );
    let v: Vec<&str> = arrow.split_whitespace().collect();
    assert_eq!(&v[..3], ["400", "200", "20000.0"], "pyarrow: {arrow}");
    let old_files = parquet_files(&setup.lake()).len();
    assert!(old_files >= 2, "files of both versions");
}

/// A crash after the batch of a new schema version uploaded its files and
/// before it committed: the restart replays the intent, which names version
/// 2, and writes the very same bytes under the same keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_first_batch_of_a_new_version_replays_identical_files() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    setup.config("unknown_fields = \"evolve\"\n");
    let mut consumer = setup.start(&[]);
    let old = put_records(&client, &stream, &keyed(events(100, 87, 1))).await;
    setup.wait_committed(&old, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    let new = put_records(&client, &stream, &keyed(with_coupons(events(100, 88, 1)))).await;
    setup.run_until_crash("before_commit:1").await;
    let checkpoint = setup.dir.path().join(format!("checkpoints/shardlake/{stream}"));
    let state = std::fs::read_to_string(checkpoint.join("shardId-000000000000.json")).unwrap();
    assert!(state.contains("\"schema_version\": 2"), "{state}");
    let uploaded = files(&setup.lake());

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&new, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    let after = files(&setup.lake());
    for (name, bytes) in &uploaded {
        let again = after.iter().find(|(n, _)| n == name).map(|(_, b)| b);
        assert_eq!(again, Some(bytes), "{name} was rebuilt differently");
    }
    assert!(uploaded.iter().any(|(_, b)| b.windows(6).any(|w| w == b"coupon")), "the crashed batch had the column");
    assert_eq!(setup.duckdb_check(), (200, 200, 0));
}

/// A kill after version 2 is stored and before the table has its columns:
/// nothing with the new column was committed, and the next start's table
/// check adds them (`UpdateTable`) before the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_before_the_table_update_is_caught_up_by_the_next_start() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    setup.config(&format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\n"));
    let landed = put_records(&client, &stream, &keyed(with_coupons(events(100, 89, 1)))).await;
    setup.run_until_crash("after_schema_version:1").await;
    let checkpoints = setup.dir.path().join(format!("checkpoints/shardlake/{stream}"));
    assert!(checkpoints.join("schema-v2.toml").exists());
    let columns = table_columns(&glue, &db).await;
    assert!(!columns.iter().any(|c| c.starts_with("coupon")), "{columns:?}");
    assert!(parquet_files(&setup.lake()).is_empty(), "nothing was written before the table had the columns");

    let mut consumer = setup.start(&[]);
    let columns = table_columns(&glue, &db).await;
    assert!(columns.contains(&"coupon:string".to_string()) && columns.contains(&"score:double".to_string()));
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert!(setup.log().contains("schema version 2 ("), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (100, 100, 0));
}

/// A table as its owners see it, one line per fact (`GetTable`), for a
/// before/after diff.
async fn table_facts(glue: &aws_sdk_glue::Client, db: &str) -> Vec<String> {
    let t = glue.get_table().database_name(db).name("events").send().await.unwrap().table.unwrap();
    let mut out = vec![
        format!("description: {:?}", t.description()),
        format!("owner: {:?}", t.owner()),
        format!("retention: {}", t.retention()),
        format!("type: {:?}", t.table_type()),
    ];
    let mut params: Vec<_> = t.parameters().into_iter().flatten().collect();
    params.sort();
    out.extend(params.into_iter().map(|(k, v)| format!("parameter {k} = {v}")));
    for k in t.partition_keys() {
        out.push(format!("partition key {} {:?} {:?}", k.name(), k.r#type(), k.comment()));
    }
    let sd = t.storage_descriptor().unwrap();
    out.push(format!("location: {:?}", sd.location()));
    out.push(format!("serde: {:?}", sd.serde_info()));
    out.push(format!("formats: {:?} {:?} {}", sd.input_format(), sd.output_format(), sd.compressed()));
    for c in sd.columns() {
        out.push(format!("column {} {:?} {:?} {:?}", c.name(), c.r#type(), c.comment(), c.parameters()));
    }
    out
}

/// Issue 25, row 4: a table a governance team owns (description, owner,
/// retention, custom parameters, column comments, `event_id varchar(64)`)
/// is accepted as it is, and a new field adds its columns and changes
/// nothing else: the `GetTable` diff is the two appended columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolution_appends_columns_and_keeps_what_the_tables_owners_set() {
    let Some(_stack) = stack() else { return };
    use aws_sdk_glue::types::{Column as GlueColumn, SerDeInfo, StorageDescriptor, TableInput};
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
    let schema = Schema::parse(shardlake::events::EVENTS_SCHEMA_TOML, false).unwrap();
    let mut columns: Vec<GlueColumn> = schema
        .columns
        .iter()
        .map(|c| {
            let ty = if c.name == "event_id" { "varchar(64)".to_string() } else { c.ty.to_string() };
            let col = GlueColumn::builder().name(&c.name).r#type(ty).comment(format!("owned: {}", c.name));
            col.parameters("pii", if c.name == "user_id" { "true" } else { "false" }).build().unwrap()
        })
        .collect();
    columns.push(GlueColumn::builder().name("_extra").r#type("string").comment("unknown fields").build().unwrap());
    let keys = ["year", "month", "day", "hour"]
        .map(|k| GlueColumn::builder().name(k).r#type("string").comment(format!("the event's {k}")).build().unwrap());
    let input = TableInput::builder()
        .name("events")
        .description("Order events. Owned by data-governance; do not drop.")
        .owner("data-governance")
        .retention(400)
        .table_type("EXTERNAL_TABLE")
        .parameters("classification", "parquet")
        .parameters("EXTERNAL", "TRUE")
        .parameters("owner_team", "payments")
        .parameters("has_encrypted_data", "true")
        .parameters("lf_tag_domain", "orders")
        .set_partition_keys(Some(keys.to_vec()))
        .storage_descriptor(
            StorageDescriptor::builder()
                .set_columns(Some(columns))
                .location(&location)
                .input_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat")
                .output_format("org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat")
                .compressed(true)
                .serde_info(
                    SerDeInfo::builder()
                        .serialization_library("org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")
                        .parameters("serialization.format", "1")
                        .build(),
                )
                .build(),
        )
        .build()
        .unwrap();
    glue.create_database()
        .database_input(aws_sdk_glue::types::DatabaseInput::builder().name(&db).build().unwrap())
        .send()
        .await
        .unwrap();
    glue.create_table().database_name(&db).table_input(input).send().await.unwrap();
    let before = table_facts(&glue, &db).await;

    setup.config(&format!("catalog = \"glue://{db}/events\"\nunknown_fields = \"evolve\"\n"));
    let mut consumer = setup.start(&[]);
    let landed = put_records(&client, &stream, &keyed(with_coupons(events(100, 90, 2)))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let after = table_facts(&glue, &db).await;
    let gone: Vec<&String> = before.iter().filter(|l| !after.contains(l)).collect();
    let new: Vec<&String> = after.iter().filter(|l| !before.contains(l)).collect();
    eprintln!(
        "GetTable diff:\n{}",
        gone.iter()
            .map(|l| format!("- {l}"))
            .chain(new.iter().map(|l| format!("+ {l}")))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(gone.is_empty(), "the update removed or changed {gone:#?}");
    assert_eq!(
        new,
        ["column coupon Some(\"string\") None None", "column score Some(\"double\") None None"],
        "{}",
        setup.log()
    );
    let order: Vec<&String> = after.iter().filter(|l| l.starts_with("column ")).collect();
    assert!(
        order[order.len() - 3].starts_with("column coupon ") && order.last().unwrap().starts_with("column _extra ")
    );
    wait_registered(&glue, &db, &lake_partitions(&setup.lake(), &location), &setup.log()).await;
    assert!(setup.healthz().starts_with("HTTP/1.1 200"), "{}", setup.healthz());
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (100, 100, 0));
}

/// Issue 25, row 5: the table deleted while the worker runs is reported and,
/// with `catalog_create`, created again with every partition of the lake;
/// deleted again and the worker restarted, the new table is complete too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_created_over_a_lake_lists_every_partition_the_lake_has() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    let db = database();
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
    setup
        .config(&format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\ncatalog_check_interval = \"1s\"\n"));
    let mut consumer = setup.start(&[]);
    let mut landed = put_records(&client, &stream, &keyed(events(90, 91, 4))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    wait_registered(&glue, &db, &lake_partitions(&setup.lake(), &location), &setup.log()).await;

    // Deleted with its partitions, while the worker runs and writes more.
    glue.delete_table().database_name(&db).name("events").send().await.unwrap();
    landed.extend(put_records(&client, &stream, &keyed(events(60, 92, 3))).await);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let lake = lake_partitions(&setup.lake(), &location);
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    assert!(setup.log().contains("the catalog table is gone"), "{}", setup.log());
    assert!(setup.log().contains("created over a lake with"), "{}", setup.log());
    poll("/healthz 200", Duration::from_secs(30), || async {
        setup.healthz().starts_with("HTTP/1.1 200").then_some(())
    })
    .await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    glue.delete_table().database_name(&db).name("events").send().await.unwrap();
    let mut consumer = setup.start(&[]);
    wait_registered(&glue, &db, &lake, &setup.log()).await;
    assert!(setup.log().matches("created over a lake with").count() >= 2, "{}", setup.log());
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (150, 150, 0));
}

/// Issue 25, row 6: a new unique key in every record is a field explosion.
/// Versions are bounded by time (`evolve_interval`), not by records: a
/// few versions, table updates and files, every key kept (as a column or
/// in `_extra`), and the rate stays a consumer's. Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_in_every_record_makes_few_versions_and_loses_nothing() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let glue = glue().await;
    for count in [1_300u64, 10_000] {
        let db = database();
        let stream = create_stream(&client, 2).await;
        let setup = Setup::new(&stream);
        setup
            .config(&format!("catalog = \"glue://{db}/events\"\ncatalog_create = true\nunknown_fields = \"evolve\"\n"));
        let records: Vec<Vec<u8>> = events(count, 93, 2)
            .into_iter()
            .enumerate()
            .map(|(i, e)| with_fields(vec![e], &format!("\"u_{i}\":{i}")).remove(0))
            .collect();
        let landed = put_records(&client, &stream, &keyed(records)).await;
        let started = std::time::Instant::now();
        let mut consumer = setup.start(&[]);
        setup.wait_committed(&landed, Duration::from_secs(180)).await;
        let seconds = started.elapsed().as_secs_f64();
        let metrics = setup.metrics();
        let versions = metric_sum(&metrics, "shardlake_consumer_schema_version");
        let updates = metric_sum(&metrics, "shardlake_consumer_catalog_table_updates_total");
        let deferred = metric_sum(&metrics, "shardlake_consumer_schema_fields_in_extra_total");
        let columns = table_columns(&glue, &db).await.len();
        let location = shardlake::catalog::table_location(setup.lake().to_str().unwrap()).unwrap();
        wait_registered(&glue, &db, &lake_partitions(&setup.lake(), &location), &setup.log()).await;
        assert!(setup.healthz().starts_with("HTTP/1.1 200"), "{}", setup.healthz());
        assert!(terminate(&mut consumer).success(), "{}", setup.log());
        let files = parquet_files(&setup.lake()).len();
        eprintln!(
            "field explosion, {count} records with a unique key each: {versions} versions, {updates} UpdateTable \
             calls, {files} files, {columns} table columns, {deferred} records kept keys in _extra, \
             {:.0} records/s (start to last commit, {seconds:.1} s)",
            count as f64 / seconds
        );
        assert!(versions <= 4.0, "{versions} versions\n{}", setup.log());
        assert!(updates <= versions, "{updates} table updates");
        assert!(files <= 40, "{files} files");
        assert!(columns <= 1001, "{columns} columns: the cap is 1,000 plus _extra");
        // Every record has its key once: as a column value or in `_extra`.
        let kept = python(
            r#"
import sys, glob, json
import pyarrow.parquet as pq
kept = 0
for f in glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True):
    for r in pq.read_table(f).to_pylist():
        keys = [k for k, v in r.items() if k.startswith('u_') and v is not None]
        keys += [k for k in json.loads(r.get('_extra') or '{}') if k.startswith('u_')]
        kept += len(keys) == 1
print(kept)
"#,
            &[setup.lake().to_str().unwrap()],
        );
        assert_eq!(kept.trim(), count.to_string());
        assert_eq!(setup.duckdb_check(), (count, count, 0));
    }
}

/// Issue 25, row 7: `catalog sync` of 3,000 partitions while Glue throttles
/// 30% of calls and fails 10% with a 500: it retries with back-off and
/// registers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_sync_registers_everything_while_glue_throttles() {
    let Some(_stack) = stack() else { return };
    let glue = glue().await;
    let db = database();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    let options = shardlake::events::GenOptions { count: 12_000, seed: 94, hours: 3_000, ..Default::default() };
    shardlake::events::generate(&options, &mut out).unwrap();
    drop(out);
    std::fs::write(dir.path().join("schema.toml"), shardlake::events::EVENTS_SCHEMA_TOML).unwrap();
    let lake_dir = dir.path().join("lake");
    let (lake_arg, input) = (lake_dir.to_str().unwrap(), input.to_str().unwrap());
    let schema_arg = dir.path().join("schema.toml");
    cli(&[
        "convert",
        "--input",
        input,
        "--destination",
        lake_arg,
        "--schema",
        schema_arg.to_str().unwrap(),
        "--time-field",
        "ts",
        "--quiet",
    ]);
    let location = shardlake::catalog::table_location(lake_arg).unwrap();
    let lake = lake_partitions(&lake_dir, &location);
    assert!(lake.len() > 2_500, "{} partitions", lake.len());
    let config = dir.path().join("consumer.toml");
    std::fs::write(
        &config,
        format!(
            "stream = \"events\"\ndestination = \"{lake_arg}\"\nschema = \"schema.toml\"\ntime_field = \"ts\"\n\
             catalog = \"glue://{db}/events\"\ncatalog_create = true\n"
        ),
    )
    .unwrap();
    let proxy = FaultProxy::start(&stack_env("AWS_ENDPOINT_URL_GLUE"), Flavor::Glue).await.unwrap();
    proxy.set_random_faults(0.4, 95);
    let out = cli_with(
        &["catalog", "sync", "--config", config.to_str().unwrap()],
        &[("AWS_ENDPOINT_URL_GLUE", &proxy.endpoint)],
    );
    assert!(out.contains(&format!("registered {} partitions", lake.len())), "{out}");
    let (_, errors, _, _) = proxy.counts.snapshot();
    assert!(errors > 5, "faults were injected: {errors}");
    eprintln!(
        "catalog sync of {} partitions: {errors} calls answered with throttling or 500, all registered",
        lake.len()
    );
    assert_eq!(catalog_partitions(&glue, &db, "events").await, lake);
}
