//! Test doubles: a fake Kinesis stream behind a real SDK client, built with
//! `aws-smithy-mocks`, whose answers a test script decides per call (whole
//! request errors) or per entry (error codes), and which records every call
//! and every stored entry with its (pausable) time.

use std::sync::{Arc, Mutex};

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::operation::list_shards::{ListShardsError, ListShardsOutput};
use aws_sdk_kinesis::operation::put_records::{PutRecordsError, PutRecordsOutput};
use aws_sdk_kinesis::types::{HashKeyRange, PutRecordsResultEntry, SequenceNumberRange, Shard};
use aws_smithy_mocks::{MockResponse, MockResponseInterceptor, RuleMode, create_mock_http_client, mock};
use tokio::time::Instant;

use crate::record::{md5_hash_key, parse_hash_key};
use crate::shard_map::ShardRange;

/// One entry as the fake received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
}

impl Entry {
    pub fn hash(&self) -> u128 {
        self.explicit_hash_key
            .as_deref()
            .map_or_else(|| md5_hash_key(&self.partition_key), |h| parse_hash_key(h).unwrap())
    }
}

/// What the script answers to a call.
pub enum Inject {
    /// Store every entry.
    Ok,
    /// Per entry: `None` to store it, `Some(code)` to fail it with that code.
    Entries(Vec<Option<&'static str>>),
    /// Fail the whole request.
    Request(PutRecordsError),
}

type Script = Box<dyn FnMut(usize, &[Entry]) -> Inject + Send>;

/// An entry the fake stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub shard_id: String,
    pub entry: Entry,
    pub at: Instant,
}

/// The fake stream's state.
pub struct FakeKinesis {
    /// The stream's real layout (what `ListShards` reports).
    pub shards: Vec<ShardRange>,
    /// Every `PutRecords` call: when, and its entries.
    pub calls: Vec<(Instant, Vec<Entry>)>,
    /// Every stored entry, in storage order.
    pub stored: Vec<Stored>,
    /// `ListShards` calls.
    pub list_calls: usize,
    script: Script,
}

impl FakeKinesis {
    fn shard_of(&self, hash: u128) -> &ShardRange {
        self.shards.iter().find(|s| s.start <= hash && hash <= s.end).expect("the fake covers the hash space")
    }

    fn put(&mut self, entries: Vec<Entry>) -> MockResponse<PutRecordsOutput, PutRecordsError> {
        let call = self.calls.len();
        self.calls.push((Instant::now(), entries.clone()));
        let codes = match (self.script)(call, &entries) {
            Inject::Ok => vec![None; entries.len()],
            Inject::Entries(codes) => codes,
            Inject::Request(e) => return MockResponse::Error(e),
        };
        let mut out = PutRecordsOutput::builder().failed_record_count(codes.iter().flatten().count() as i32);
        for (entry, code) in entries.into_iter().zip(codes) {
            let result = match code {
                Some(code) => {
                    PutRecordsResultEntry::builder().error_code(code).error_message(format!("injected {code}"))
                }
                None => {
                    let shard_id = self.shard_of(entry.hash()).shard_id.to_string();
                    let sequence_number = format!("{:020}", self.stored.len() + 1);
                    self.stored.push(Stored { shard_id: shard_id.clone(), entry, at: Instant::now() });
                    PutRecordsResultEntry::builder().shard_id(shard_id).sequence_number(sequence_number)
                }
            };
            out = out.records(result.build());
        }
        MockResponse::Output(out.build().unwrap())
    }

    fn list(&mut self) -> ListShardsOutput {
        self.list_calls += 1;
        let shards = self.shards.iter().map(|s| {
            Shard::builder()
                .shard_id(s.shard_id.to_string())
                .hash_key_range(
                    HashKeyRange::builder()
                        .starting_hash_key(s.start.to_string())
                        .ending_hash_key(s.end.to_string())
                        .build()
                        .unwrap(),
                )
                .sequence_number_range(SequenceNumberRange::builder().starting_sequence_number("0").build().unwrap())
                .build()
                .unwrap()
        });
        ListShardsOutput::builder().set_shards(Some(shards.collect())).build()
    }

    /// Entries stored per partition key, in storage order.
    pub fn data_by_key(&self) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
        let mut by_key = std::collections::BTreeMap::<String, Vec<Vec<u8>>>::new();
        for s in &self.stored {
            by_key.entry(s.entry.partition_key.clone()).or_default().push(s.entry.data.clone());
        }
        by_key
    }
}

/// `n` shards splitting the hash space evenly, named `shardId-{base + i}`.
pub fn even_ranges(n: u128, base: u128) -> Vec<ShardRange> {
    let step = u128::MAX / n;
    (0..n)
        .map(|i| ShardRange {
            shard_id: format!("shardId-{:012}", base + i).into(),
            start: step * i,
            end: if i == n - 1 { u128::MAX } else { step * (i + 1) - 1 },
        })
        .collect()
}

/// A Kinesis client answered by a [`FakeKinesis`] with `shards` and `script`.
pub fn fake_kinesis(
    shards: Vec<ShardRange>,
    script: impl FnMut(usize, &[Entry]) -> Inject + Send + 'static,
) -> (aws_sdk_kinesis::Client, Arc<Mutex<FakeKinesis>>) {
    let fake = Arc::new(Mutex::new(FakeKinesis {
        shards,
        calls: vec![],
        stored: vec![],
        list_calls: 0,
        script: Box::new(script),
    }));
    let f = fake.clone();
    let put = mock!(aws_sdk_kinesis::Client::put_records).then_compute_response(move |input| {
        let entries = input
            .records()
            .iter()
            .map(|r| Entry {
                partition_key: r.partition_key().unwrap_or_default().to_string(),
                explicit_hash_key: r.explicit_hash_key().map(str::to_string),
                data: r.data().as_ref().to_vec(),
            })
            .collect();
        f.lock().unwrap().put(entries)
    });
    let f = fake.clone();
    let list = mock!(aws_sdk_kinesis::Client::list_shards)
        .then_compute_response(move |_| MockResponse::<_, ListShardsError>::Output(f.lock().unwrap().list()));
    let interceptor = MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny).with_rule(&put).with_rule(&list);
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    (aws_sdk_kinesis::Client::from_conf(config), fake)
}

/// A Firehose client whose `PutRecordBatch` fails each entry with the code
/// `script(call, data)` returns, and stores the rest in `stored`.
pub fn fake_firehose(
    script: impl FnMut(usize, &[u8]) -> Option<&'static str> + Send + 'static,
) -> (aws_sdk_firehose::Client, Arc<Mutex<Vec<Vec<u8>>>>) {
    use aws_sdk_firehose::operation::put_record_batch::{PutRecordBatchError, PutRecordBatchOutput};
    use aws_sdk_firehose::types::PutRecordBatchResponseEntry;
    let stored = Arc::new(Mutex::new(vec![]));
    let calls = Arc::new(Mutex::new(0usize));
    let s = stored.clone();
    let script = Mutex::new(script);
    let put = mock!(aws_sdk_firehose::Client::put_record_batch).then_compute_response(move |input| {
        let mut call = calls.lock().unwrap();
        let mut script = script.lock().unwrap();
        let script = &mut *script;
        let mut failed = 0;
        let entries: Vec<PutRecordBatchResponseEntry> = input
            .records()
            .iter()
            .map(|r| match script(*call, r.data().as_ref()) {
                Some(code) => {
                    failed += 1;
                    PutRecordBatchResponseEntry::builder().error_code(code).error_message("injected").build()
                }
                None => {
                    let mut stored = s.lock().unwrap();
                    stored.push(r.data().as_ref().to_vec());
                    PutRecordBatchResponseEntry::builder().record_id(format!("id-{}", stored.len())).build()
                }
            })
            .collect();
        *call += 1;
        let out = PutRecordBatchOutput::builder().failed_put_count(failed).set_request_responses(Some(entries));
        MockResponse::<_, PutRecordBatchError>::Output(out.build().unwrap())
    });
    let config = aws_sdk_firehose::Config::builder()
        .behavior_version(aws_sdk_firehose::config::BehaviorVersion::latest())
        .region(aws_sdk_firehose::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_firehose::config::Credentials::new("test", "test", None, None, "test"))
        .http_client(create_mock_http_client())
        .interceptor(MockResponseInterceptor::new().with_rule(&put))
        .retry_config(aws_sdk_firehose::config::retry::RetryConfig::disabled())
        .build();
    (aws_sdk_firehose::Client::from_conf(config), stored)
}
