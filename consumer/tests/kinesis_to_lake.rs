//! `shardlake-consumer run` against kinesis-local, each lake checked by our
//! own Parquet reader and by DuckDB.

mod support;

use std::time::Duration;

use support::*;

/// N records over 4 shards → exactly N rows, N distinct ids, every row in the
/// hour partition of its `ts`; a SIGTERM flushes and commits, and a restart
/// resumes with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_across_four_shards_land_exactly_once_and_survive_sigterm() {
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    setup.config("");
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
}
