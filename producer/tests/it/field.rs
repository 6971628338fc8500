//! "Producer in the field": against endpoints slower than the producer's
//! defaults assume (kinesis-local, which applies about 1,000 records/s, and
//! kinesalite behind a 1 MB/s link), every event must arrive exactly once
//! (read back and counted by `event_id`), with no record failed or of
//! unknown outcome. For comparison, the same events go through a sequential
//! `PutRecords` loop into another stream in the same run; both rates are
//! printed (figures, not assertions: the machine is shared).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, read_all, sdk_config, stack, stack_env, unique};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use faultproxy::Flavor;

use shardlake_producer::{Producer, ProducerConfig, Record};

const EVENTS: usize = 3_000;
/// The link of the bandwidth-capped proxy, in bytes/s (both ways).
const LINK_BYTES_PER_SEC: u64 = 1_000_000;
const SHARDS: u32 = 4;

fn partition_key(line: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    v["user_id"].as_str().unwrap().to_string()
}

fn events() -> Vec<String> {
    (0..EVENTS)
        .map(|i| format!("{{\"event_id\":\"e{i}\",\"user_id\":\"u{}\",\"pad\":\"{}\"}}", i % 97, "x".repeat(200)))
        .collect()
}

/// Counts each `event_id` in what was read back.
fn count_ids(read: &[common::ReadRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in read {
        let v: serde_json::Value = serde_json::from_slice(&r.data).unwrap();
        *counts.entry(v["event_id"].as_str().unwrap().to_string()).or_default() += 1;
    }
    counts
}

/// A boto3-style loop: one `PutRecords` of up to 500 at a time, failed
/// entries resent. Returns records/s.
async fn sequential_loop(client: &aws_sdk_kinesis::Client, stream: &str, lines: &[String]) -> f64 {
    let start = Instant::now();
    for chunk in lines.chunks(500) {
        let mut pending: Vec<PutRecordsRequestEntry> = chunk
            .iter()
            .map(|l| {
                PutRecordsRequestEntry::builder()
                    .partition_key(partition_key(l))
                    .data(Blob::new(l.as_bytes()))
                    .build()
                    .unwrap()
            })
            .collect();
        // Bounded: kinesis-local never throttles, so one or two rounds do.
        for _ in 0..20 {
            let out = client.put_records().stream_name(stream).set_records(Some(pending.clone())).send().await.unwrap();
            pending = pending
                .into_iter()
                .zip(out.records())
                .filter(|(_, r)| r.error_code().is_some())
                .map(|(e, _)| e)
                .collect();
            if pending.is_empty() {
                break;
            }
        }
        assert!(pending.is_empty(), "the loop could not store every record");
    }
    lines.len() as f64 / start.elapsed().as_secs_f64()
}

#[tokio::test]
async fn against_a_slow_endpoint_every_event_arrives_once_at_least_as_fast_as_a_sequential_loop() {
    let Some(_stack) = stack() else { return };
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_KINESIS"]).await;
    let client = shardlake::aws::kinesis_client(&sdk);
    let lines = events();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let baseline_stream = unique("field-loop");
    shardlake_producer::stream::ensure_stream(&client, &baseline_stream, SHARDS, Duration::from_secs(60))
        .await
        .unwrap();
    let loop_rate = sequential_loop(&client, &baseline_stream, &lines).await;

    let stream = unique("field");
    shardlake_producer::stream::ensure_stream(&client, &stream, SHARDS, Duration::from_secs(60)).await.unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--stream", &stream, "--input", input.to_str().unwrap(), "--partition-key-field", "user_id"])
        .args(["--json", "--metrics"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(summary["sent"], EVENTS, "{summary}");
    assert_eq!((summary["failed"].as_u64(), summary["unknown_outcome"].as_u64()), (Some(0), Some(0)), "{summary}");

    // Everything stored, each event once; a duplicate would come from a
    // timed-out request that was applied and resent.
    let read = read_all(&client, &stream, EVENTS, Duration::from_secs(60)).await;
    let counts = count_ids(&read);
    assert_eq!(counts.len(), EVENTS, "every event_id is in the stream");
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "{} events stored more than once, e.g. {:?}", duplicated.len(), duplicated.first());
    let timeouts = stdout
        .lines()
        .find(|l| l.starts_with("shardlake_producer_requests_total{outcome=\"timeout\""))
        .unwrap_or("none");
    println!(
        "kinesis-local, {EVENTS} events into {SHARDS} shards: sequential PutRecords loop {loop_rate:.0} records/s, \
         shardlake-producer {:.0} records/s (retries {}, timeouts: {timeouts})",
        summary["records_per_s"].as_f64().unwrap(),
        summary["retries"],
    );
}

#[tokio::test]
async fn behind_a_1_mb_s_link_every_event_arrives_once_at_least_as_fast_as_a_sequential_loop() {
    let Some(_stack) = stack() else { return };
    let sdk = sdk_config(&["SHARDLAKE_KINESALITE_ENDPOINT"]).await;
    let kinesalite = stack_env("SHARDLAKE_KINESALITE_ENDPOINT");
    let direct = shardlake::aws::kinesis_client_at(&sdk, Some(&kinesalite));
    let proxy = faultproxy::FaultProxy::start(&kinesalite, Flavor::Kinesis).await.unwrap();
    proxy.set_bandwidth(Some(LINK_BYTES_PER_SEC));
    let through_proxy = shardlake::aws::kinesis_client_at(&sdk, Some(&proxy.endpoint));
    let lines = events();

    let baseline_stream = unique("link-loop");
    shardlake_producer::stream::ensure_stream(&direct, &baseline_stream, SHARDS, Duration::from_secs(60))
        .await
        .unwrap();
    let loop_rate = sequential_loop(&through_proxy, &baseline_stream, &lines).await;

    // The producer as an application embeds it: defaults, fed through
    // `ready` so records wait on the link, not in the queue.
    let stream = unique("link");
    shardlake_producer::stream::ensure_stream(&direct, &stream, SHARDS, Duration::from_secs(60)).await.unwrap();
    let producer =
        Producer::builder(ProducerConfig::kinesis(&stream)).kinesis_client(through_proxy).build().await.unwrap();
    let start = Instant::now();
    let mut acks = Vec::with_capacity(lines.len());
    for line in &lines {
        producer.ready().await;
        acks.push(producer.enqueue(Record::new(partition_key(line), line.clone())).await.unwrap());
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let rate = lines.len() as f64 / start.elapsed().as_secs_f64();
    producer.shutdown().await;
    let m = producer.metrics();
    let timeouts = m.requests.with_label_values(&["timeout"]).get();

    let read = read_all(&direct, &stream, EVENTS, Duration::from_secs(60)).await;
    let counts = count_ids(&read);
    assert_eq!(counts.len(), EVENTS, "every event_id is in the stream");
    let duplicated = counts.values().filter(|n| **n > 1).count();
    assert_eq!(duplicated, 0, "events stored more than once ({timeouts} requests timed out)");
    println!(
        "kinesalite behind a {LINK_BYTES_PER_SEC} B/s link, {EVENTS} events into {SHARDS} shards: \
         sequential PutRecords loop {loop_rate:.0} records/s, producer {rate:.0} records/s \
         (final concurrency limit {}, timeouts {timeouts}, retries {})",
        m.concurrency_limit.get(),
        m.records_retried.with_label_values(&["Timeout"]).get(),
    );
}
