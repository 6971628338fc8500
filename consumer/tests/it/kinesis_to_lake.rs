//! `shardlake-consumer run` against kinesis-local, each lake checked by our
//! own Parquet reader and by DuckDB.

use std::time::Duration;

use crate::support::*;

/// N records over 4 shards → exactly N rows, N distinct ids, every row in the
/// hour partition of its `ts`; a SIGTERM flushes and commits, and a restart
/// resumes with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_across_four_shards_land_exactly_once_and_survive_sigterm() {
    let Some(_stack) = stack() else { return };
    let log = four_shards_exactly_once_across_a_restart("").await;
    assert!(!log.contains("fan-out"), "{log}");
}

/// The same with enhanced fan-out: a registered stream consumer reads every
/// shard over SubscribeToShard, and resubscribes after a restart from its
/// checkpoints, with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_lands_every_record_exactly_once_across_a_restart() {
    let Some(_stack) = stack() else { return };
    let log = four_shards_exactly_once_across_a_restart("[retrieval]\nmode = \"fan-out\"\n").await;
    assert_eq!(log.matches("enhanced fan-out as arn:").count(), 2, "{log}");
    // The first run reads every shard over its subscriptions. After the
    // restart kinesis-local still holds those subscriptions (it ends them
    // after 5 minutes, not when the connection closes), so the readers may
    // fall back to GetRecords from the same checkpoints: no gap, no duplicate.
    let first_run = &log[..log.find("stopping: flushing").unwrap()];
    assert!(!first_run.contains("keeps failing"), "fell back to polling:\n{log}");
    assert!(first_run.contains("batch committed"), "{log}");
}

/// N records over 4 shards, a SIGTERM, more records, a restart: exactly N
/// rows (our reader and DuckDB). Returns the consumer's log.
async fn four_shards_exactly_once_across_a_restart(extra: &str) -> String {
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    setup.config(extra);
    let records = keyed(events(1200, 7, 6));
    let landed = put_records(&client, &stream, &records[..800]).await;
    let used: std::collections::BTreeSet<_> = landed.iter().map(|(shard, _)| shard).collect();
    assert_eq!(used.len(), 4, "records should spread over all 4 shards");

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert_eq!(setup.lake_rows(), 800);
    let status = terminate(&mut consumer);
    assert!(status.success(), "consumer exited with {status}; log:\n{}", setup.log());

    let landed = put_records(&client, &stream, &records[800..]).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success());

    assert_eq!(setup.lake_rows(), 1200);
    assert_eq!(setup.duckdb_check(), (1200, 1200, 0));
    assert!(setup.error_lines().is_empty());
    let log = setup.log();
    assert!(log.contains("batch committed"), "{log}");
    log
}

/// Without a schema file the consumer infers one from the stream, stores it
/// beside the checkpoints, and a restart uses the stored schema: fields that
/// appear later go to `_extra` instead of changing the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inferred_schema_is_stored_and_reused() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config("infer_sample = 100");
    let records = keyed(events(300, 9, 4));
    let landed = put_records(&client, &stream, &records).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (300, 300, 0));
    let stored = setup.dir.path().join(format!("checkpoints/shardlake/{stream}/schema.toml"));
    let schema = std::fs::read_to_string(&stored).unwrap();
    assert!(schema.contains("name = \"ts\"") && schema.contains("type = \"timestamp\""), "{schema}");
    // Issue 29: the sample is `infer_sample` records in all, not per call.
    assert!(setup.log().contains("columns from 100 records"), "{}", setup.log());

    // A new field after restart: the stored schema stays, the field goes to _extra.
    let late =
        vec![("late".to_string(), br#"{"event_id":"late-1","ts":"2024-03-15T01:00:00Z","brand_new":42}"#.to_vec())];
    let landed = put_records(&client, &stream, &late).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success());
    assert_eq!(std::fs::read_to_string(&stored).unwrap(), schema);
    let extra = python(
        "import sys, duckdb\nprint(duckdb.sql(\"select _extra from read_parquet('\" + sys.argv[1] + \"/**/*.parquet', union_by_name = true) where event_id = 'late-1'\").fetchall()[0][0])",
        &[setup.lake().to_str().unwrap()],
    );
    assert_eq!(extra.trim(), r#"{"brand_new":42}"#);
}

/// A stream that does not exist is reported at start with the fix, not retried forever.
#[test]
fn a_missing_stream_is_an_error_at_start() {
    let Some(_stack) = stack() else { return };
    stack_env("AWS_ENDPOINT_URL_KINESIS");
    let setup = Setup::new(&unique("no-such-stream"));
    setup.config("");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["run", "--config"])
        .arg(setup.dir.path().join("consumer.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-stream") && err.contains("AWS_ENDPOINT_URL_KINESIS"), "{err}");
}

/// `examples/local-lake.toml` as shipped, started from another folder: only
/// the stream name, a free metrics port and a short `max_age` are changed for
/// the test. Every record lands once, under the example's relative paths
/// (resolved against the file's folder), and a SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_lake_example_runs_as_shipped() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let conf = setup.dir.path().join("examples");
    std::fs::create_dir(&conf).unwrap();
    std::fs::copy(examples.join("schema.toml"), conf.join("schema.toml")).unwrap();
    let mut text = std::fs::read_to_string(examples.join("local-lake.toml")).unwrap();
    for (from, to) in [
        ("stream = \"events\"".to_string(), format!("stream = \"{stream}\"")),
        ("127.0.0.1:9898".into(), "127.0.0.1:0".into()),
        ("max_age = \"60s\"".into(), "max_age = \"1s\"".into()),
    ] {
        assert!(text.contains(&from), "the example no longer has {from}");
        text = text.replace(&from, &to);
    }
    std::fs::write(conf.join("local-lake.toml"), text).unwrap();
    put_records(&client, &stream, &keyed(events(400, 5, 4))).await;

    let log = std::fs::File::create(setup.dir.path().join("consumer.log")).unwrap();
    let mut consumer = std::process::Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["run", "--config"])
        .arg(conf.join("local-lake.toml"))
        .current_dir(std::env::temp_dir())
        .stderr(log)
        .spawn()
        .unwrap();
    setup.wait_rows(400, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (400, 400, 0));
    let checkpoints = setup.dir.path().join(".shardlake/checkpoints/shardlake").join(&stream);
    assert_eq!(
        std::fs::read_dir(&checkpoints)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "json"))
            .count(),
        2
    );
}
