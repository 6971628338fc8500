//! The producer against Firehose on moto: records sent with
//! `PutRecordBatch` arrive in the delivery stream's S3 bucket.

use std::time::Duration;

use crate::common::{sdk_config, stack, unique};
use aws_sdk_firehose::types::{CompressionFormat, DeliveryStreamType, ExtendedS3DestinationConfiguration};
use shardlake_producer::{Error, Producer, ProducerConfig, Record};
use tokio::time::Instant;

/// A bucket and a Direct PUT delivery stream into it.
async fn delivery_stream(sdk: &aws_config::SdkConfig) -> (String, String) {
    let s3 = shardlake::aws::s3_client(sdk);
    let bucket = unique("producer-fh");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    let name = unique("producer-fh");
    let destination = ExtendedS3DestinationConfiguration::builder()
        .role_arn("arn:aws:iam::123456789012:role/firehose")
        .bucket_arn(format!("arn:aws:s3:::{bucket}"))
        .prefix("events/")
        // moto omits CompressionFormat in DescribeDeliveryStream unless set.
        .compression_format(CompressionFormat::Uncompressed)
        .build()
        .unwrap();
    shardlake::aws::firehose_client(sdk)
        .create_delivery_stream()
        .delivery_stream_name(&name)
        .delivery_stream_type(DeliveryStreamType::DirectPut)
        .extended_s3_destination_configuration(destination)
        .send()
        .await
        .unwrap();
    (bucket, name)
}

/// Every object's bytes under the bucket, polled until `want` lines arrived
/// or the deadline.
async fn lines_in_bucket(s3: &aws_sdk_s3::Client, bucket: &str, want: usize, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut lines = vec![];
        let listed = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
        for obj in listed.contents() {
            let body = s3.get_object().bucket(bucket).key(obj.key().unwrap()).send().await.unwrap();
            let bytes = body.body.collect().await.unwrap().into_bytes();
            lines.extend(String::from_utf8(bytes.to_vec()).unwrap().lines().map(str::to_string));
        }
        if lines.len() >= want || Instant::now() >= deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn records_arrive_in_the_delivery_streams_bucket() {
    let Some(_stack) = stack() else { return };
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_FIREHOSE", "AWS_ENDPOINT_URL_S3"]).await;
    let (bucket, name) = delivery_stream(&sdk).await;
    let mut config = ProducerConfig::firehose(&name);
    config.max_batch_records = 200;
    let producer = Producer::builder(config).sdk_config(sdk.clone()).build().await.unwrap();
    let mut acks = vec![];
    for i in 0..1000 {
        acks.push(producer.enqueue(Record::new("", format!("{{\"n\":{i}}}\n"))).await.unwrap());
    }
    let oversize = producer.send(Record::new("", vec![b'x'; 1000 * 1024 + 1])).await.unwrap_err();
    assert!(
        matches!(oversize.reason, Error::RecordTooLarge { limit: 1_024_000, .. }),
        "Firehose's 1,000 KiB limit: {}",
        oversize.reason
    );
    for ack in acks {
        let ack = ack.await.unwrap();
        assert!(ack.shard_id.is_none() && !ack.sequence_number.is_empty(), "{ack:?}");
    }
    producer.shutdown().await;
    let m = producer.metrics();
    assert_eq!(m.records_sent.get(), 1000);
    assert!(m.batch_entries.get_sample_count() >= 5, "batches of at most 200");

    let s3 = shardlake::aws::s3_client(&sdk);
    let mut lines = lines_in_bucket(&s3, &bucket, 1000, Duration::from_secs(30)).await;
    lines.sort_by_key(|l| l[5..l.len() - 1].parse::<u32>().unwrap());
    let want: Vec<String> = (0..1000).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(lines, want, "each record exactly once in the bucket");
}

#[tokio::test]
async fn a_missing_delivery_stream_fails_each_record_with_the_code() {
    let Some(_stack) = stack() else { return };
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_FIREHOSE"]).await;
    let producer =
        Producer::builder(ProducerConfig::firehose(unique("missing"))).sdk_config(sdk).build().await.unwrap();
    let err = producer.send(Record::new("", "x")).await.unwrap_err();
    match &err.reason {
        Error::Rejected { code, .. } => assert_eq!(code, "ResourceNotFoundException"),
        other => panic!("expected a rejection, got {other}"),
    }
    assert_eq!(err.record.data, "x");
}

/// Runs the CLI into a new delivery stream and returns the lines of the
/// bucket's objects, and the objects' raw bytes.
async fn cli_to_firehose(extra: &[&str], records: usize) -> (Vec<String>, Vec<String>) {
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_FIREHOSE", "AWS_ENDPOINT_URL_S3"]).await;
    let (bucket, name) = delivery_stream(&sdk).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, (0..records).map(|i| format!("{{\"n\":{i}}}\n")).collect::<String>()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardlake-producer"))
        .args(["--firehose", &name, "--input", input.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let s3 = shardlake::aws::s3_client(&sdk);
    let mut raw = vec![];
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    for obj in listed.contents() {
        let body = s3.get_object().bucket(&bucket).key(obj.key().unwrap()).send().await.unwrap();
        raw.push(String::from_utf8(body.body.collect().await.unwrap().into_bytes().to_vec()).unwrap());
    }
    let lines = raw.iter().flat_map(|o| o.lines().map(str::to_string)).collect();
    (lines, raw)
}

#[tokio::test]
async fn the_cli_keeps_each_lines_newline_so_s3_objects_are_json_lines() {
    let Some(_stack) = stack() else { return };
    let (lines, raw) = cli_to_firehose(&[], 300).await;
    assert!(!raw.is_empty() && raw.iter().all(|o| o.ends_with('\n')), "{raw:?}");
    let mut ns: Vec<u64> =
        lines.iter().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["n"].as_u64().unwrap()).collect();
    ns.sort();
    assert_eq!(ns, (0..300).collect::<Vec<_>>());
}

#[tokio::test]
async fn no_newline_sends_the_lines_bare() {
    let Some(_stack) = stack() else { return };
    let (_, raw) = cli_to_firehose(&["--no-newline"], 20).await;
    let all = raw.concat();
    assert!(!all.contains('\n') && all.contains("}{"), "{all}");
}
