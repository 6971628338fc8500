//! The consumer against a network that fails: a fault proxy (`faultproxy`)
//! between the worker and S3 or Kinesis black-holes requests (accepted,
//! never answered) and then heals; the checkpoint store breaks for a while;
//! SIGTERM arrives while every read hangs. In each case the worker neither
//! exits nor stalls for ever, `/healthz` turns 503 naming what fails, and
//! the lake ends with every record exactly once (DuckDB).

use std::time::{Duration, Instant};

use crate::support::*;
use faultproxy::{FaultProxy, Flavor, Mode};

/// One fault test at a time: each judges health against windows of a few
/// seconds, which four workers and their emulator calls sharing two cores
/// can stretch (CI once saw a final /healthz 200 come late).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until `/healthz` answers 503 with a body containing `want`; returns the answer.
async fn wait_unhealthy(setup: &Setup, want: &str, limit: Duration) -> String {
    poll(&format!("/healthz 503 with `{want}`"), limit, || async {
        let answer = setup.healthz();
        (answer.starts_with("HTTP/1.1 503") && answer.contains(want)).then_some(answer)
    })
    .await
}

/// Waits until `/healthz` answers 200; on timeout, shows its last answer and the log.
async fn wait_healthy(setup: &Setup, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = setup.healthz();
        if answer.starts_with("HTTP/1.1 200") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no /healthz 200 within {limit:?}; last answer:\n{answer}\nlog:\n{}",
            setup.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The lake (local, or downloaded from S3 first) holds exactly `n` rows, one per event.
fn assert_exactly_once(setup: &Setup, n: u64) {
    let (rows, distinct, misplaced) = setup.duckdb_check();
    assert_eq!((rows, distinct, misplaced), (n, n, 0), "log:\n{}", setup.log());
}

/// A proxy in front of the emulator named by `var`.
async fn proxy(var: &str, flavor: Flavor) -> FaultProxy {
    stack_env(var);
    FaultProxy::start(&std::env::var(var).unwrap(), flavor).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_black_holed_then_healthy_every_shard_resumes() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let client = kinesis().await;
    let s3 = s3_client().await;
    let bucket = unique("faults-s3").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let s3_proxy = proxy("AWS_ENDPOINT_URL_S3", Flavor::S3).await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    setup.config_to(
        &format!("s3://{bucket}/lake/"),
        "[timeouts]\nupload = \"2s\"\ncall = \"2s\"\n[health]\nfailing_after = \"3s\"\nstall_after = \"5s\"\n",
    );
    let records = keyed(events(800, 71, 3));
    let mut landed = put_records(&client, &stream, &records[..400]).await;
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_S3", &s3_proxy.endpoint)]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    wait_healthy(&setup, Duration::from_secs(10)).await;

    s3_proxy.set(Mode::BlackHole);
    landed.extend(put_records(&client, &stream, &records[400..]).await);
    let answer = wait_unhealthy(&setup, "upload failing", Duration::from_secs(30)).await;
    assert!(answer.contains("shard shardId-"), "{answer}");
    let metrics = setup.metrics();
    assert!(metric_sum(&metrics, "shardlake_consumer_upload_failures_total") > 0.0);
    assert!(metric_sum(&metrics, "shardlake_consumer_checkpoint_age_seconds") > 0.0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(consumer.try_wait().unwrap().is_none(), "the worker exited:\n{}", setup.log());

    // Every hung attempt was seen while the outage lasted, not after.
    assert!(setup.log().contains("upload attempt failed"), "{}", setup.log());

    s3_proxy.set(Mode::Pass);
    let healed = Instant::now();
    // Uploads retry in place (hung attempts end at their 2 s limit, back-off
    // is capped at 3 s): the lake catches up within 15 s.
    setup.wait_committed(&landed, Duration::from_secs(15)).await;
    let caught_up = healed.elapsed();
    wait_healthy(&setup, Duration::from_secs(10)).await;
    eprintln!("S3 black hole healed: every record committed {caught_up:?} later");
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert!(s3_proxy.counts.hung.load(std::sync::atomic::Ordering::Relaxed) > 0);
    setup.download(&s3, &bucket, "lake/").await;
    assert_exactly_once(&setup, 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kinesis_black_holed_then_healthy_every_shard_resumes() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let client = kinesis().await;
    let kinesis_proxy = proxy("AWS_ENDPOINT_URL_KINESIS", Flavor::Kinesis).await;
    let stream = create_stream(&client, 8).await;
    let setup = Setup::new(&stream);
    setup.config("[timeouts]\ncall = \"3s\"\n[health]\nfailing_after = \"4s\"\nstall_after = \"6s\"\n");
    let records = keyed(events(800, 72, 3));
    let mut landed = put_records(&client, &stream, &records[..400]).await;
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &kinesis_proxy.endpoint)]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;

    kinesis_proxy.set(Mode::BlackHole);
    // Written straight to the emulator while the worker cannot read.
    landed.extend(put_records(&client, &stream, &records[400..]).await);
    let answer = wait_unhealthy(&setup, "shard shardId-", Duration::from_secs(30)).await;
    assert!(answer.contains("read failing") || answer.contains("no successful read"), "{answer}");
    // MillisBehindLatest grows with the clock while nothing is read.
    let lag = |m: &str| metric_by_label(m, "shardlake_consumer_millis_behind_latest", "shard");
    let before = lag(&setup.metrics());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = lag(&setup.metrics());
    assert!(before.iter().all(|(shard, ms)| after[shard] >= ms + 1000.0), "{before:?} then {after:?}");
    assert!(consumer.try_wait().unwrap().is_none(), "the worker exited:\n{}", setup.log());

    kinesis_proxy.set(Mode::Pass);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    wait_healthy(&setup, Duration::from_secs(10)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_exactly_once(&setup, 800);
}

/// More shards than the worker's channel of reader exits holds (64): the
/// shutdown once waited for ever on readers blocked sending their exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_every_read_hung_commits_every_batch_at_once() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    const SHARDS: i32 = 100;
    let client = kinesis().await;
    let kinesis_proxy = proxy("AWS_ENDPOINT_URL_KINESIS", Flavor::Kinesis).await;
    let stream = create_stream(&client, SHARDS).await;
    let setup = Setup::new(&stream);
    // Batches wait for the shutdown flush; reads would hang 60 s each.
    setup.config_with_buffer(
        &setup.lake().display().to_string(),
        "[timeouts]\ncall = \"60s\"\n",
        "max_age = \"300s\"\n",
    );
    let records = keyed(events(1000, 73, 2));
    let landed = put_records(&client, &stream, &records).await;
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &kinesis_proxy.endpoint)]);
    poll("every record read", Duration::from_secs(90), || async {
        (metric_sum(&setup.metrics(), "shardlake_consumer_records_read_total") >= 1000.0).then_some(())
    })
    .await;
    assert_eq!(setup.lake_rows(), 0, "nothing is flushed before shutdown");

    kinesis_proxy.set(Mode::BlackHole);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let hung = kinesis_proxy.counts.hung.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hung >= 32, "only {hung} reads hung");
    let stopping = Instant::now();
    let status = terminate(&mut consumer);
    let took = stopping.elapsed();
    // Within `shutdown_timeout` (30 s), which would end it with exit code 1.
    assert!(status.success(), "{status} after {took:?}:\n{}", setup.log());
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
    assert!(setup.behind(&landed).is_empty(), "uncommitted: {:?}", setup.behind(&landed));
    assert_exactly_once(&setup, 1000);
    eprintln!("SIGTERM with {hung} hung reads on {SHARDS} shards: exited 0 in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_checkpoint_store_holds_batches_without_a_reread_storm() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let client = kinesis().await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    setup.config("[health]\nfailing_after = \"3s\"\n");
    let records = keyed(events(2000, 74, 3));
    let mut landed = put_records(&client, &stream, &records[..1000]).await;
    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;

    // A file where the checkpoint folder was: every load and write fails
    // (as on a disk remounted read-only, which root would not notice).
    let store = setup.dir.path().join("checkpoints");
    let away = setup.dir.path().join("checkpoints.away");
    std::fs::rename(&store, &away).unwrap();
    std::fs::write(&store, "not a folder").unwrap();
    landed.extend(put_records(&client, &stream, &records[1000..]).await);
    let answer = wait_unhealthy(&setup, "checkpoint failing", Duration::from_secs(30)).await;
    assert!(answer.contains("shard shardId-"), "{answer}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(consumer.try_wait().unwrap().is_none(), "the worker exited:\n{}", setup.log());

    std::fs::remove_file(&store).unwrap();
    std::fs::rename(&away, &store).unwrap();
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    wait_healthy(&setup, Duration::from_secs(10)).await;
    let read = metric_sum(&setup.metrics(), "shardlake_consumer_records_read_total");
    assert!(read <= 1.2 * 2000.0, "{read} records read for 2000 written");
    assert!(metric_sum(&setup.metrics(), "shardlake_consumer_checkpoint_failures_total") > 0.0);
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_exactly_once(&setup, 2000);
}

/// An S3 link of 8 KB/s carrying a 60 KB object: with `timeouts.upload =
/// "1s"` a whole-body deadline could never be met, so nothing would land.
/// Each attempt is allowed its bytes at `upload_floor_kib_per_sec` on top,
/// so the object lands; while it crawls, `/healthz` names the upload and
/// its destination (not a stalled read), and answers 200 once it landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_a_slow_link_lands_and_is_reported_while_it_crawls() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let client = kinesis().await;
    let s3 = s3_client().await;
    let bucket = unique("faults-slow").to_lowercase();
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let s3_proxy = proxy("AWS_ENDPOINT_URL_S3", Flavor::S3).await;
    let stream = create_stream(&client, 1).await;
    let setup = Setup::new(&stream);
    setup.config_to(
        &format!("s3://{bucket}/lake/"),
        "[timeouts]\nupload = \"1s\"\nupload_floor_kib_per_sec = 4\ncall = \"2s\"\n\
         [health]\nfailing_after = \"3s\"\nstall_after = \"5s\"\n",
    );
    let records = keyed(events(1000, 75, 1));
    let landed = put_records(&client, &stream, &records).await;
    s3_proxy.set_bandwidth(Some(8_000));
    let started = Instant::now();
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_S3", &s3_proxy.endpoint)]);
    let answer = wait_unhealthy(&setup, "has not landed", Duration::from_secs(30)).await;
    assert!(answer.contains(&format!("upload to s3://{bucket}/lake/")), "{answer}");
    assert!(!answer.contains("no successful read"), "{answer}");
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    let took = started.elapsed();
    wait_healthy(&setup, Duration::from_secs(10)).await;
    setup.download(&s3, &bucket, "lake/").await;
    let bytes: u64 = parquet_files(&setup.lake()).iter().map(|f| f.metadata().unwrap().len()).sum();
    eprintln!("slow link: {bytes} bytes of Parquet over 8 KB/s landed {took:?} after the start");
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_exactly_once(&setup, 1000);
}

/// 90% of Kinesis calls throttled for 20 s: the shards keep reading (short
/// waits, not a back-off that grows to 30 s), `/healthz` names the
/// throttling while it lasts and answers 200 within 10 s of its end, and
/// every record lands once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lasting_throttling_is_paced_reported_while_it_lasts_and_recovered_from_at_once() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let client = kinesis().await;
    let kinesis_proxy = proxy("AWS_ENDPOINT_URL_KINESIS", Flavor::Kinesis).await;
    let stream = create_stream(&client, 4).await;
    let setup = Setup::new(&stream);
    setup.config("[timeouts]\ncall = \"2s\"\n[health]\nfailing_after = \"4s\"\nstall_after = \"10s\"\n");
    let records = keyed(events(1200, 76, 3));
    let mut landed = put_records(&client, &stream, &records[..400]).await;
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &kinesis_proxy.endpoint)]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;

    let throttles = |m: &str| metric_sum(m, "shardlake_consumer_throttles_total");
    let before = throttles(&setup.metrics());
    kinesis_proxy.set_random_faults(0.9, 76);
    let throttling = Instant::now();
    landed.extend(put_records(&client, &stream, &records[400..800]).await);
    let answer = wait_unhealthy(&setup, "reads throttled for", Duration::from_secs(15)).await;
    assert!(answer.contains("shard shardId-") && answer.contains("ProvisionedThroughputExceeded"), "{answer}");
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(throttling.elapsed())).await;
    let calls = throttles(&setup.metrics()) - before;
    let per_shard_per_sec = calls / 4.0 / throttling.elapsed().as_secs_f64();
    eprintln!(
        "90% throttling: {calls} throttled calls over 4 shards in {:?} ({per_shard_per_sec:.2}/s per shard)",
        throttling.elapsed()
    );
    // Paced at 0.2-1 s waits: over 1 call/s per shard (a 30 s back-off made it 0.2).
    assert!(per_shard_per_sec >= 0.8, "{per_shard_per_sec:.2} throttled calls/s per shard");
    assert!(consumer.try_wait().unwrap().is_none(), "the worker exited:\n{}", setup.log());

    kinesis_proxy.set_random_faults(0.0, 76);
    let ended = Instant::now();
    landed.extend(put_records(&client, &stream, &records[800..]).await);
    wait_healthy(&setup, Duration::from_secs(10)).await;
    setup.wait_committed(&landed, Duration::from_secs(15)).await;
    eprintln!("throttling ended: every record committed {:?} later", ended.elapsed());
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_exactly_once(&setup, 1200);
}

/// `shardlake-loadtest replay-kinesis` serving `lines` on one shard with
/// the first `trim` records gone; returns it and its endpoint.
fn replay_kinesis(dir: &std::path::Path, lines: &[Vec<u8>], trim: usize) -> (std::process::Child, String) {
    use std::io::BufRead;
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_shardlake-consumer")).with_file_name("shardlake-loadtest");
    if !bin.exists() {
        let ok = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "shardlake-loadtest"])
            .status()
            .unwrap();
        assert!(ok.success(), "building shardlake-loadtest");
    }
    let input = dir.join(format!("replay-{trim}.jsonl"));
    std::fs::write(&input, lines.join(&b'\n')).unwrap();
    let mut child = std::process::Command::new(bin)
        .args(["replay-kinesis", "--shards", "1", "--trim", &trim.to_string(), "--input"])
        .arg(&input)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let endpoint = first.trim().strip_prefix("listening on ").expect("replay-kinesis's first line").to_string();
    (child, endpoint)
}

/// Checkpoint at record 999; the stream then holds 1,000 more, of which
/// the first 500 age out before the worker starts again. Those 500 are
/// lost: the worker says so (an error line with the shard, the checkpoint
/// and the trim horizon, a counter, `/healthz` 503 until it is restarted)
/// and writes the 500 it can still read, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_trimmed_behind_the_checkpoint_are_reported_as_lost() {
    let Some(_stack) = stack() else { return };
    let _serial = SERIAL.lock().await;
    let setup = Setup::new("trimmed");
    setup.config("[health]\nfailing_after = \"3s\"\n");
    let lines = events(2000, 77, 1);
    let (mut before, endpoint) = replay_kinesis(setup.dir.path(), &lines[..1000], 0);
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &endpoint)]);
    setup.wait_rows(1000, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    before.kill().unwrap();
    before.wait().unwrap();

    let (mut after, endpoint) = replay_kinesis(setup.dir.path(), &lines, 1500);
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &endpoint)]);
    let answer = wait_unhealthy(&setup, "trimmed from the stream unread", Duration::from_secs(30)).await;
    assert!(answer.contains("shard shardId-000000000000") && answer.contains("100000000000000000999"), "{answer}");
    assert!(answer.contains("the oldest left is 100000000000000001500"), "{answer}");
    setup.wait_rows(1500, Duration::from_secs(60)).await;
    let metrics = setup.metrics();
    assert_eq!(metric_sum(&metrics, "shardlake_consumer_trimmed_unread_total"), 1.0);
    // The stand-in keeps records 24 h and the shard is read to its end.
    let headroom = metric_sum(&metrics, "shardlake_consumer_retention_headroom_seconds");
    assert!((86_300.0..=86_400.0).contains(&headroom), "{headroom}");
    let log = setup.log();
    let line = log.lines().find(|l| l.contains("no longer in the stream")).expect("an error line");
    assert!(line.contains("ERROR") && line.contains("100000000000000000999") && line.contains("1500"), "{line}");
    // Still reported after the remaining records are committed...
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(setup.healthz().starts_with("HTTP/1.1 503"), "{}", setup.healthz());
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    // ...and acknowledged by the restart: the checkpoint is past the trim horizon now.
    let mut consumer = setup.start(&[("AWS_ENDPOINT_URL_KINESIS", &endpoint)]);
    wait_healthy(&setup, Duration::from_secs(10)).await;
    assert_eq!(metric_sum(&setup.metrics(), "shardlake_consumer_trimmed_unread_total"), 0.0);
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    after.kill().unwrap();
    after.wait().unwrap();
    assert_exactly_once(&setup, 1500);
}
