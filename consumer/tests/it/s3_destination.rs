//! The consumer writing to S3 (moto): uploads that fail are retried and never
//! committed; once S3 accepts them the batch commits and the lake is exact.
//! Also `/metrics` and `/healthz`.

use std::time::Duration;

use crate::support::*;

/// Waits until the consumer at `address` has counted a failed upload.
async fn wait_for_upload_failures(address: &str) {
    poll("upload failures in /metrics", Duration::from_secs(30), || async {
        let m = http_get(address, "/metrics");
        m.lines().any(|l| l.starts_with("shardlake_consumer_upload_failures_total") && !l.ends_with(" 0")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_uploads_are_retried_and_never_committed_then_land_once() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let s3 = s3_client().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    // The bucket is there at start (a missing one stops the start: see
    // preflight.rs), then goes: every upload fails until it is back.
    let bucket = unique("late-bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    setup.config_to(&format!("s3://{bucket}/lake/"), "");
    let mut consumer = setup.start(&[]);
    s3.delete_bucket().bucket(&bucket).send().await.expect("the probe object was deleted: the bucket is empty");
    let records = keyed(events(400, 41, 4));
    let landed = put_records(&client, &stream, &records).await;

    let address = setup.metrics_address();
    wait_for_upload_failures(&address).await;
    // Pending intents, but no checkpoint: nothing was committed.
    let dir = setup.dir.path().join("checkpoints/shardlake").join(&stream);
    for entry in std::fs::read_dir(&dir).unwrap() {
        // Shard files; `.lock` is the worker's hold on the store.
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let state: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(state.get("checkpoint").is_none(), "committed without an upload: {state}");
        assert!(state["intent"]["first"].is_string(), "{state}");
    }

    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    setup.wait_committed(&landed, Duration::from_secs(90)).await;

    let metrics = http_get(&address, "/metrics");
    for want in [
        "shardlake_consumer_records_written_total 400",
        "shardlake_consumer_records_read_total{shard=\"shardId-000000000000\"}",
        "shardlake_consumer_millis_behind_latest{shard=\"shardId-000000000001\"}",
        "shardlake_consumer_flush_seconds_count",
        "shardlake_consumer_shards_reading 2",
    ] {
        assert!(metrics.contains(want), "{want} not in\n{metrics}");
    }
    assert!(http_get(&address, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    setup.download(&s3, &bucket, "lake/").await;
    assert_eq!(setup.lake_rows(), 400);
    assert_eq!(setup.duckdb_check(), (400, 400, 0));
}

/// SIGTERM while uploads keep failing: the consumer keeps retrying rather than
/// commit; a second signal aborts at once (exit 130) and nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_aborts_a_stuck_final_flush_without_committing() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let s3 = s3_client().await;
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    // There at start (preflight), gone before the first upload.
    let bucket = unique("gone-bucket");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    setup.config_to(&format!("s3://{bucket}/lake/"), "");
    let mut consumer = setup.start(&[]);
    s3.delete_bucket().bucket(&bucket).send().await.unwrap();
    put_records(&client, &stream, &keyed(events(50, 43, 1))).await;
    let address = setup.metrics_address();
    wait_for_upload_failures(&address).await;
    let signal = |c: &std::process::Child| {
        assert!(std::process::Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap().success())
    };
    signal(&consumer);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(consumer.try_wait().unwrap().is_none(), "the first SIGTERM must not give up on the pending upload");
    signal(&consumer);
    let status = terminate_wait(&mut consumer);
    assert_eq!(status.code(), Some(130), "{}", setup.log());
    let dir = setup.dir.path().join("checkpoints/shardlake").join(&stream);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("shardId-000000000000.json")).unwrap()).unwrap();
    assert!(state.get("checkpoint").is_none() && state["intent"].is_object(), "{state}");
}
