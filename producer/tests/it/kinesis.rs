//! The producer against kinesis-local: records read back with `GetRecords`
//! land once each, on the shard their key hashes to, with the sequence number
//! the producer acknowledged; aggregated records deaggregate to the records
//! sent.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{self, read_all, sdk_config, shard_map, stack, unique};
use shardlake::aggregation::deaggregate;
use shardlake_producer::stream::ensure_stream;
use shardlake_producer::stream::md5_hash_key;
use shardlake_producer::{Ack, Producer, ProducerConfig, Record};

async fn stream_with_shards(shards: u32) -> (aws_sdk_kinesis::Client, String, aws_config::SdkConfig) {
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_KINESIS"]).await;
    let client = shardlake::aws::kinesis_client(&sdk);
    let stream = unique("producer");
    ensure_stream(&client, &stream, shards, Duration::from_secs(30)).await.unwrap();
    (client, stream, sdk)
}

async fn send_all(producer: &Producer, records: &[Record]) -> Vec<Ack> {
    let mut futures = vec![];
    for r in records {
        futures.push(producer.enqueue(r.clone()).await.unwrap());
    }
    let mut acks = vec![];
    for f in futures {
        acks.push(f.await.unwrap());
    }
    acks
}

#[tokio::test]
async fn records_land_once_on_the_shard_their_key_hashes_to() {
    let Some(_stack) = stack() else { return };
    let (client, stream, sdk) = stream_with_shards(4).await;
    let producer = Producer::builder(ProducerConfig::kinesis(&stream)).sdk_config(sdk).build().await.unwrap();
    let records: Vec<Record> =
        (0..400).map(|i| Record::new(format!("user-{}", i % 40), format!("{{\"n\":{i}}}"))).collect();
    let acks = send_all(&producer, &records).await;
    producer.shutdown().await;

    let map = shard_map(&client, &stream).await;
    assert_eq!(map.len(), 4);
    let read = read_all(&client, &stream, records.len(), Duration::from_secs(60)).await;
    assert_eq!(read.len(), records.len(), "each record exactly once");
    let by_data: HashMap<&[u8], &common::ReadRecord> = read.iter().map(|r| (r.data.as_slice(), r)).collect();
    let mut shards_used = std::collections::BTreeSet::new();
    for (record, ack) in records.iter().zip(&acks) {
        let got = by_data[record.data.as_ref()];
        let expected_shard = map.shard(map.lookup(md5_hash_key(&record.partition_key)).unwrap());
        assert_eq!(got.shard_id, expected_shard.shard_id.as_ref(), "key {}", record.partition_key);
        assert_eq!(got.partition_key, record.partition_key);
        assert_eq!(ack.shard_id.as_deref(), Some(got.shard_id.as_str()));
        assert_eq!(ack.sequence_number, got.sequence_number);
        assert_eq!((ack.sub_sequence_number, ack.attempts), (None, 1));
        shards_used.insert(got.shard_id.clone());
    }
    assert_eq!(shards_used.len(), 4, "40 keys spread over all 4 shards");
    assert_eq!(producer.metrics().records_sent.get(), 400);
}

#[tokio::test]
async fn aggregated_records_deaggregate_to_the_records_sent() {
    let Some(_stack) = stack() else { return };
    let (client, stream, sdk) = stream_with_shards(4).await;
    let mut config = ProducerConfig::kinesis(&stream);
    config.aggregation = true;
    config.aggregation_max_bytes = 8 * 1024;
    let producer = Producer::builder(config).sdk_config(sdk).build().await.unwrap();
    let records: Vec<Record> =
        (0..600).map(|i| Record::new(format!("device-{}", i % 25), format!("{{\"reading\":{i}}}"))).collect();
    let acks = send_all(&producer, &records).await;
    producer.shutdown().await;
    let aggregates = acks.iter().filter(|a| a.sub_sequence_number.is_some()).count();
    assert!(aggregates > 500, "most records went in aggregates ({aggregates})");

    let map = shard_map(&client, &stream).await;
    let kinesis_records: std::collections::BTreeSet<&str> = acks.iter().map(|a| a.sequence_number.as_str()).collect();
    let read = read_all(&client, &stream, kinesis_records.len(), Duration::from_secs(60)).await;
    assert_eq!(read.len(), kinesis_records.len());
    assert!(read.len() < 100, "600 records in {} Kinesis records", read.len());
    // Unpack as a KCL consumer would: (sequence number, sub-sequence) -> record.
    let mut unpacked = HashMap::new();
    for r in &read {
        let users = match deaggregate(&r.data) {
            Some(users) => users.expect("a valid KPL aggregate"),
            None => vec![shardlake::aggregation::UserRecord {
                partition_key: r.partition_key.as_str().into(),
                explicit_hash_key: None,
                data: r.data.clone(),
            }],
        };
        let single = users.len() == 1 && deaggregate(&r.data).is_none();
        for (i, u) in users.into_iter().enumerate() {
            let shard = map.shard(map.lookup(md5_hash_key(&u.partition_key)).unwrap());
            assert_eq!(r.shard_id, shard.shard_id.as_ref(), "user record {:?} on the wrong shard", u.partition_key);
            let sub = (!single).then_some(i as u64);
            assert!(unpacked.insert((r.sequence_number.clone(), sub), u).is_none());
        }
    }
    assert_eq!(unpacked.len(), records.len());
    for (record, ack) in records.iter().zip(&acks) {
        let u = &unpacked[&(ack.sequence_number.clone(), ack.sub_sequence_number)];
        assert_eq!((&*u.partition_key, u.data.as_slice()), (record.partition_key.as_str(), record.data.as_ref()));
    }
}

#[tokio::test]
async fn ordering_mode_keeps_each_keys_records_in_order_on_the_stream() {
    let Some(_stack) = stack() else { return };
    let (client, stream, sdk) = stream_with_shards(2).await;
    let mut config = ProducerConfig::kinesis(&stream);
    config.ordering = true;
    config.linger_ms = 10;
    let producer = Producer::builder(config).sdk_config(sdk).build().await.unwrap();
    let records: Vec<Record> = (0..150).map(|i| Record::new(format!("k{}", i % 3), format!("{:03}", i / 3))).collect();
    send_all(&producer, &records).await;
    producer.shutdown().await;
    let read = read_all(&client, &stream, records.len(), Duration::from_secs(60)).await;
    let mut by_key: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for r in read {
        by_key.entry(r.partition_key).or_default().push(r.data);
    }
    for (key, data) in by_key {
        let want: Vec<Vec<u8>> = (0..50).map(|i| format!("{i:03}").into_bytes()).collect();
        assert_eq!(data, want, "key {key}");
    }
}

#[tokio::test]
async fn building_for_a_missing_stream_says_so() {
    let Some(_stack) = stack() else { return };
    let sdk = sdk_config(&["AWS_ENDPOINT_URL_KINESIS"]).await;
    let err = Producer::builder(ProducerConfig::kinesis(unique("missing"))).sdk_config(sdk).build().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("listing the shards of kinesis stream") && msg.contains("ResourceNotFound"), "{msg}");
}

#[tokio::test]
async fn a_reshard_mid_run_is_followed() {
    let Some(_stack) = stack() else { return };
    let (client, stream, sdk) = stream_with_shards(2).await;
    // With aggregation, a stale map packs records of different shards into
    // one aggregate, which lands on one shard: the acks below would show it.
    let mut config = ProducerConfig::kinesis(&stream);
    config.linger_ms = 20;
    config.aggregation = true;
    let producer = Producer::builder(config).sdk_config(sdk).build().await.unwrap();
    let batch = |from: usize| -> Vec<Record> {
        (from..from + 100).map(|i| Record::new(format!("user-{i}"), format!("{{\"n\":{i}}}"))).collect()
    };
    send_all(&producer, &batch(0)).await;

    client
        .update_shard_count()
        .stream_name(&stream)
        .target_shard_count(4)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .unwrap();
    ensure_stream(&client, &stream, 4, Duration::from_secs(30)).await.unwrap();
    let new_map = shard_map(&client, &stream).await;
    assert_eq!(new_map.len(), 4);

    // Records still land; the first ones on shards the old map did not
    // predict, which makes the producer re-read the map.
    let mut round = 1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while producer.metrics().shard_map_refreshes.with_label_values(&["ok"]).get() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the shard map was not refreshed");
        send_all(&producer, &batch(round * 100)).await;
        round += 1;
    }
    let records = batch(10_000);
    let acks = send_all(&producer, &records).await;
    for (record, ack) in records.iter().zip(&acks) {
        let want = new_map.shard(new_map.lookup(md5_hash_key(&record.partition_key)).unwrap());
        assert_eq!(ack.shard_id.as_deref(), Some(want.shard_id.as_ref()), "{}", record.partition_key);
    }
    assert!(acks.iter().any(|a| a.sub_sequence_number.is_some()), "records were aggregated");
    producer.shutdown().await;
    assert_eq!(producer.metrics().records_failed.get_metric_with_label_values(&["expired"]).unwrap().get(), 0);
}
