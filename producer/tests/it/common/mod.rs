//! Helpers shared by the producer's integration tests: the emulator
//! environment (a test that needs it starts with `let Some(_stack) =
//! stack() else { return };`, see `shardlake::testing`; `scripts/test`
//! provides it, or `eval "$(scripts/emulators env)"`), unique names, and
//! reading a Kinesis stream back.

#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
pub use shardlake::testing::stack;
use shardlake_producer::stream::ShardMap;
use tokio::time::Instant;

/// An environment variable the test stack sets; fails loudly when missing.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the producer's integration tests need the local AWS stack; \
             run them with scripts/test, or after eval \"$(scripts/emulators env)\""
        )
    })
}

/// Checks the stack's variables, then loads the SDK config from them.
pub async fn sdk_config(endpoints: &[&str]) -> aws_config::SdkConfig {
    for name in endpoints.iter().chain(&["AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
        stack_env(name);
    }
    shardlake::aws::sdk_config().await
}

/// A name unique to this test process and call (streams, buckets).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// One record read back from a stream.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub shard_id: String,
    pub sequence_number: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// The stream's shard map, as `ListShards` reports it.
pub async fn shard_map(client: &aws_sdk_kinesis::Client, stream: &str) -> ShardMap {
    ShardMap::from_shards(&shardlake_producer::stream::list_shards(client, stream).await.unwrap())
}

/// A TRIM_HORIZON iterator for every shard of `stream`.
async fn iterators_from_the_start(client: &aws_sdk_kinesis::Client, stream: &str) -> BTreeMap<String, String> {
    let map = shard_map(client, stream).await;
    let mut iterators = BTreeMap::new();
    for s in map.shards() {
        let it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id.as_ref())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap();
        iterators.insert(s.shard_id.to_string(), it.shard_iterator().unwrap().to_string());
    }
    iterators
}

/// One GetRecords call per shard, appending to `out`; whether any record came.
async fn read_round(
    client: &aws_sdk_kinesis::Client,
    iterators: &mut BTreeMap<String, String>,
    out: &mut Vec<ReadRecord>,
) -> bool {
    let mut got_any = false;
    for (shard_id, it) in iterators.iter_mut() {
        let resp = client.get_records().shard_iterator(it.as_str()).limit(10_000).send().await.unwrap();
        for r in resp.records() {
            got_any = true;
            out.push(ReadRecord {
                shard_id: shard_id.clone(),
                sequence_number: r.sequence_number().to_string(),
                partition_key: r.partition_key().unwrap_or_default().to_string(),
                data: r.data().as_ref().to_vec(),
            });
        }
        if let Some(next) = resp.next_shard_iterator() {
            *it = next.to_string();
        }
    }
    got_any
}

/// Reads every shard from the start until `expected` records are read, or
/// panics at `timeout`.
pub async fn read_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<ReadRecord> {
    let deadline = Instant::now() + timeout;
    let mut iterators = iterators_from_the_start(client, stream).await;
    let mut out = vec![];
    while out.len() < expected {
        assert!(Instant::now() < deadline, "read {} of {expected} records before the deadline", out.len());
        if !read_round(client, &mut iterators, &mut out).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

/// Reads every shard from the start until two rounds in a row bring nothing
/// new (the stream is quiet), bounded by `timeout`.
pub async fn read_until_quiet(client: &aws_sdk_kinesis::Client, stream: &str, timeout: Duration) -> Vec<ReadRecord> {
    let deadline = Instant::now() + timeout;
    let mut iterators = iterators_from_the_start(client, stream).await;
    let (mut out, mut quiet_rounds) = (vec![], 0);
    while quiet_rounds < 2 {
        assert!(Instant::now() < deadline, "the stream was not quiet before the deadline ({} read)", out.len());
        if read_round(client, &mut iterators, &mut out).await {
            quiet_rounds = 0;
        } else {
            quiet_rounds += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    out
}
