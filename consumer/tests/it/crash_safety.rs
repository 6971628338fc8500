//! Crash safety: the consumer killed at each step of the exactly-once
//! protocol (and at random times), then restarted, leaves every record in the
//! lake exactly once.

use std::time::Duration;

use crate::support::*;
use rand::Rng;

const RECORDS: usize = 600;

/// Puts the records, runs a consumer that aborts at `crash_at`, checks it
/// died there, restarts it cleanly and checks the lake.
async fn crash_then_recover(crash_at: &str) {
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    // Small files: several per batch, so a crash can fall between two uploads.
    setup.config("");
    let records = keyed(events(RECORDS as u64, 11, 8));
    let landed = put_records(&client, &stream, &records).await;

    setup.run_until_crash(crash_at).await;
    let partial = setup.lake_rows();

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let status = terminate(&mut consumer);
    assert!(status.success(), "{status}: {}", setup.log());
    let files: Vec<_> = parquet_files(&setup.lake())
        .iter()
        .map(|p| p.strip_prefix(setup.lake()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        setup.duckdb_check(),
        (RECORDS as u64, RECORDS as u64, 0),
        "crash at {crash_at}, {partial} rows before restart; files {files:#?}\n{}",
        setup.log()
    );
    assert!(setup.log().contains("replaying a pending batch") || crash_at.starts_with("mid"), "{}", setup.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_intent_before_any_upload() {
    let Some(_stack) = stack() else { return };
    crash_then_recover("after_intent:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_two_file_uploads_of_one_batch() {
    let Some(_stack) = stack() else { return };
    crash_then_recover("after_upload:2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_after_upload_before_commit() {
    let Some(_stack) = stack() else { return };
    crash_then_recover("before_commit:2").await;
}

/// SIGKILL at random moments while records keep arriving (mid-buffer,
/// mid-flush, whatever the moment is), three times, then a clean run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_times_loses_and_duplicates_nothing() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config("");
    let records = keyed(events(RECORDS as u64, 12, 8));
    let mut rng = rand::rng();
    let mut landed = Vec::new();
    for part in records.chunks(RECORDS / 3) {
        landed.extend(put_records(&client, &stream, part).await);
        let mut consumer = setup.start(&[]);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        consumer.kill().unwrap();
        consumer.wait().unwrap();
    }
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success());
    assert_eq!(setup.duckdb_check(), (RECORDS as u64, RECORDS as u64, 0));
}

/// Issue 26, rows 3 and 4: a `file://` store serves one worker. A second
/// worker on it refuses to start and names the holder; a `kill -9` frees the
/// lock; the checkpoint folder deleted under the running worker turns
/// `/healthz` 503 naming the checkpoint store, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_store_serves_one_worker_and_its_loss_is_reported() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    setup.config("[health]\nfailing_after = \"1s\"\n");
    let mut first = setup.start(&[]);
    let started = std::time::Instant::now();
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_shardlake-consumer"))
        .args(["run", "--config"])
        .arg(setup.dir.path().join("consumer.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once");
    assert!(err.contains("in use by another worker") && err.contains(&format!("pid {}", first.id())), "{err}");

    first.kill().unwrap();
    first.wait().unwrap();
    let mut worker = setup.start(&[]);
    let landed = put_records(&client, &stream, &keyed(events(50, 61, 1))).await;
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    std::fs::remove_dir_all(setup.dir.path().join("checkpoints")).unwrap();
    let answer = poll("/healthz 503 naming the checkpoint store", Duration::from_secs(20), || async {
        let answer = setup.healthz();
        (answer.starts_with("HTTP/1.1 503") && answer.contains("checkpoint_store")).then_some(answer)
    })
    .await;
    assert!(answer.contains("deleted, moved or replaced"), "{answer}");
    assert!(setup.log().contains("the checkpoint store is gone"), "{}", setup.log());
    terminate(&mut worker);
    assert_eq!(setup.duckdb_check(), (50, 50, 0));
}
