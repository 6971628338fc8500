//! The reader against a scripted Kinesis (aws-smithy-mocks behind the real
//! SDK client, paused clock): throttled calls back off and are counted, an
//! expired iterator is renewed after the last record read, and the shard's
//! records are committed exactly once with the shard marked ended.

use std::sync::{Arc, Mutex};

use crate::checkpoint::CheckpointStore;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::operation::get_records::{GetRecordsError, GetRecordsOutput};
use aws_sdk_kinesis::operation::get_shard_iterator::{GetShardIteratorError, GetShardIteratorOutput};
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::error::{ExpiredIteratorException, ProvisionedThroughputExceededException};
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use aws_smithy_mocks::{MockResponse, MockResponseInterceptor, RuleMode, create_mock_http_client, mock};
use shardlake::store::ObjectStore;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::config::ConsumerConfig;
use crate::crash::CrashPoints;
use crate::lake::batch::Thresholds;
use crate::ops::metrics::Metrics;
use crate::shard::{Context, MemoryBudget};

const SHARD: &str = "shardId-000000000000";

fn record(seq: u64) -> Record {
    record_with(seq, "")
}

/// Record `seq`, with `more` fields after `id` and `ts` (`,"a":1`).
fn record_with(seq: u64, more: &str) -> Record {
    let data = format!(r#"{{"id":"r{seq}","ts":"2024-03-15T07:00:0{seq}Z"{more}}}"#);
    Record::builder()
        .sequence_number(seq.to_string())
        .data(Blob::new(data))
        .partition_key("k")
        .approximate_arrival_timestamp(DateTime::from_millis(1_710_486_000_000))
        .build()
        .unwrap()
}

/// GetShardIterator requests: iterator type and sequence number.
type IteratorLog = Arc<Mutex<Vec<(ShardIteratorType, Option<String>)>>>;

/// A Kinesis client whose GetRecords answers come from `answers` in order,
/// and which logs every GetShardIterator request (type, sequence number).
fn scripted_kinesis(
    answers: Vec<MockResponse<GetRecordsOutput, GetRecordsError>>,
) -> (aws_sdk_kinesis::Client, IteratorLog) {
    let iterators = Arc::new(Mutex::new(Vec::new()));
    let log = iterators.clone();
    let get_iterator = mock!(aws_sdk_kinesis::Client::get_shard_iterator).then_compute_response(move |input| {
        let mut log = log.lock().unwrap();
        log.push((input.shard_iterator_type().unwrap().clone(), input.starting_sequence_number().map(str::to_string)));
        MockResponse::<_, GetShardIteratorError>::Output(
            GetShardIteratorOutput::builder().shard_iterator(format!("it-{}", log.len())).build(),
        )
    });
    let answers = Mutex::new(answers.into_iter());
    let get_records = mock!(aws_sdk_kinesis::Client::get_records)
        .then_compute_response(move |_| answers.lock().unwrap().next().expect("an answer per GetRecords call"));
    let interceptor =
        MockResponseInterceptor::new().rule_mode(RuleMode::MatchAny).with_rule(&get_iterator).with_rule(&get_records);
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .http_client(create_mock_http_client())
        .interceptor(interceptor)
        .build();
    (aws_sdk_kinesis::Client::from_conf(config), iterators)
}

async fn context(dir: &std::path::Path, kinesis: aws_sdk_kinesis::Client, extra: &str) -> Arc<Context> {
    std::fs::write(
        dir.join("schema.toml"),
        "[[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"ts\"\ntype = \"timestamp\"\n",
    )
    .unwrap();
    let text = format!(
        "stream = \"s\"\ndestination = \"{}\"\ncheckpoint_store = \"file://{}\"\nschema = \"schema.toml\"\ntime_field = \"ts\"\n{extra}",
        dir.join("lake").display(),
        dir.join("cp").display()
    );
    let settings = ConsumerConfig::parse(&text, "test").unwrap().resolve(dir).unwrap();
    let checkpoints = CheckpointStore::open(&format!("file://{}", dir.join("cp").display()), "shardlake", "s").unwrap();
    let schemas = crate::lake::evolve::Schemas::load(
        settings.table.clone(),
        crate::lake::evolve::Rules::of(&settings),
        &checkpoints,
        None,
    )
    .await
    .unwrap();
    Arc::new(Context {
        thresholds: Thresholds { max_bytes: 1 << 20, max_records: 1000, max_age: Duration::from_secs(300) },
        kinesis,
        fan_out: None,
        lake: ObjectStore::File(shardlake::store::file::FileStore::new(dir.join("lake"))),
        checkpoints,
        metrics: Arc::new(Metrics::new()),
        budget: MemoryBudget::new(1 << 30),
        read_buffers: crate::kinesis::get_records::ReadBuffers::new(64 << 20),
        crash: CrashPoints::from_env().unwrap(),
        abort: CancellationToken::new(),
        health: Arc::new(crate::ops::health::Health::new(
            Duration::from_secs(120),
            Duration::from_secs(60),
            Duration::from_secs(300),
        )),
        catalog: None,
        table: None,
        leases: None,
        schemas,
        settings,
    })
}

fn output(records: Vec<Record>, next: Option<&str>) -> MockResponse<GetRecordsOutput, GetRecordsError> {
    MockResponse::Output(
        GetRecordsOutput::builder()
            .set_records(Some(records))
            .set_next_shard_iterator(next.map(str::to_string))
            .millis_behind_latest(0)
            .build()
            .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn throttling_backs_off_and_an_expired_iterator_resumes_after_the_last_record() {
    let throttled = || {
        MockResponse::Error(GetRecordsError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder().message("slow down").build(),
        ))
    };
    let expired =
        MockResponse::Error(GetRecordsError::ExpiredIteratorException(ExpiredIteratorException::builder().build()));
    let (kinesis, iterators) = scripted_kinesis(vec![
        throttled(),
        throttled(),
        output(vec![record(1), record(2), record(3)], Some("next")),
        expired,
        output(vec![record(4), record(5)], None),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), kinesis, "").await;
    let exit = read_shard(
        ctx.clone(),
        SHARD.into(),
        ShardLease { counter: None, lost: CancellationToken::new() },
        &crate::stop::Shutdown::new(),
    )
    .await
    .unwrap();
    assert_eq!(exit, ShardExit::Ended);

    assert_eq!(
        *iterators.lock().unwrap(),
        [(ShardIteratorType::TrimHorizon, None), (ShardIteratorType::AfterSequenceNumber, Some("3".to_string()))]
    );
    let metrics = ctx.metrics.render();
    assert!(metrics.contains(&format!("shardlake_consumer_throttles_total{{shard=\"{SHARD}\"}} 2")), "{metrics}");
    assert!(metrics.contains(&format!("shardlake_consumer_iterator_renewals_total{{shard=\"{SHARD}\"}} 1")));
    assert!(metrics.contains("shardlake_consumer_records_written_total 5"), "{metrics}");
    let state = ctx.checkpoints.load(SHARD).await.unwrap();
    assert_eq!((state.checkpoint.as_deref(), state.intent, state.ended), (Some("5"), None, true));
    let files = ctx.lake.list("").await.unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].ends_with("s-shardId-000000000000-1-5.snappy.parquet"), "{files:?}");
}

#[test]
fn quiet_shards_are_polled_less_and_less_often_up_to_the_maximum() {
    let (idle, max) = (Duration::from_secs(1), Duration::from_secs(5));
    let waits: Vec<u64> = (0..7).map(|n| super::idle_wait(idle, max, n).as_secs()).collect();
    assert_eq!(waits, [1, 1, 2, 4, 5, 5, 5]);
    assert_eq!(super::idle_wait(idle, max, u32::MAX), max);
    assert_eq!(super::idle_wait(idle, Duration::ZERO, 9), idle, "the maximum never undercuts the idle interval");
}

/// The lake's data files: name → (column names, rows as JSON-ish text of
/// the given column).
fn lake_files(dir: &std::path::Path, column: &str) -> Vec<(String, Vec<String>, Vec<String>)> {
    use arrow_array::Array;
    let mut out = Vec::new();
    let mut stack = vec![dir.join("lake")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap();
                let mut names = Vec::new();
                let mut values = Vec::new();
                for batch in reader {
                    let batch = batch.unwrap();
                    names = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
                    if let Some(col) = batch.column_by_name(column) {
                        let text = arrow_array::cast::AsArray::as_string::<i32>(col.as_ref());
                        values.extend(
                            (0..text.len())
                                .map(|i| if text.is_null(i) { "null".to_string() } else { text.value(i).to_string() }),
                        );
                    }
                }
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), names, values));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn a_new_field_commits_the_batch_before_it_and_later_batches_carry_the_column() {
    let (kinesis, _) = scripted_kinesis(vec![output(
        vec![
            record(1),
            record(2),
            record_with(3, r#","coupon":"A""#),
            record(4),
            record_with(5, r#","coupon":"B","dev":{"os":"x"}"#),
            record_with(6, r#","Coupon":"C""#),
        ],
        None,
    )]);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), kinesis, "unknown_fields = \"evolve\"\nevolve_interval = \"0s\"\n").await;
    let lease = ShardLease { counter: None, lost: CancellationToken::new() };
    let exit = read_shard(ctx.clone(), SHARD.into(), lease, &crate::stop::Shutdown::new()).await.unwrap();
    assert_eq!(exit, ShardExit::Ended);
    let files = lake_files(dir.path(), "coupon");
    let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "s-shardId-000000000000-1-2.snappy.parquet",
            "s-shardId-000000000000-3-4.snappy.parquet",
            "s-shardId-000000000000-5-6.snappy.parquet"
        ]
    );
    assert_eq!(files[0].1, ["id", "ts", "_extra"]);
    assert_eq!(files[1].1, ["id", "ts", "coupon", "_extra"]);
    assert_eq!(files[1].2, ["A", "null"]);
    // `dev` is new in record 5: version 3. `Coupon` is `coupon` to Athena: it stays in `_extra`.
    assert_eq!(files[2].1, ["id", "ts", "coupon", "dev", "_extra"]);
    assert_eq!(files[2].2, ["B", "null"]);
    let extra = lake_files(dir.path(), "_extra");
    assert_eq!(extra[2].2, ["null", r#"{"Coupon":"C"}"#]);
    let v3 = std::fs::read_to_string(dir.path().join("cp/shardlake/s/schema-v3.toml")).unwrap();
    assert!(v3.contains("added_to = 2") && !v3.contains("coupon"), "stored as a delta: {v3}");
    let (_, v3) = crate::lake::evolve::latest(&ctx.checkpoints, &ctx.settings.table.schema).await.unwrap();
    let v3: Vec<String> = v3.columns.iter().map(|c| format!("{}:{}", c.name, c.ty)).collect();
    assert_eq!(v3, ["id:string", "ts:timestamp", "coupon:string", "dev:struct<os:string>"]);
    let metrics = ctx.metrics.render();
    assert!(metrics.contains("shardlake_consumer_flushes_total{reason=\"schema\"} 2"), "{metrics}");
    assert!(metrics.contains("shardlake_consumer_schema_version 3"), "{metrics}");
    assert!(metrics.contains("shardlake_consumer_schema_columns_added_total 2"), "{metrics}");
}

/// Issue 25, row 6: a worker makes at most one version per
/// `evolve_interval`; fields due meanwhile stay in `_extra` for those
/// records and all join the next version.
#[tokio::test(start_paused = true)]
async fn fields_due_within_the_interval_wait_in_extra_and_join_the_next_version_together() {
    let mut answers = vec![output(
        vec![
            record(1),
            record_with(2, r#","a":1"#),
            record_with(3, r#","b":"x""#),
            record_with(4, r#","b":"y","c":true"#),
        ],
        Some("i2"),
    )];
    // Polls a second apart while a batch waits: 8 s pass.
    answers.extend((0..8).map(|_| output(vec![], Some("i3"))));
    answers.push(output(vec![record_with(5, r#","d":1.5"#), record_with(6, r#","b":"z""#)], None));
    let (kinesis, _) = scripted_kinesis(answers);
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), kinesis, "unknown_fields = \"evolve\"\nevolve_interval = \"5s\"\n").await;
    let lease = ShardLease { counter: None, lost: CancellationToken::new() };
    let exit = read_shard(ctx.clone(), SHARD.into(), lease, &crate::stop::Shutdown::new()).await.unwrap();
    assert_eq!(exit, ShardExit::Ended);
    let files = lake_files(dir.path(), "_extra");
    let names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "s-shardId-000000000000-1-1.snappy.parquet",
            "s-shardId-000000000000-2-4.snappy.parquet",
            "s-shardId-000000000000-5-6.snappy.parquet"
        ]
    );
    assert_eq!(files[1].1, ["id", "ts", "a", "_extra"]);
    assert_eq!(files[1].2, ["null", r#"{"b":"x"}"#, r#"{"b":"y","c":true}"#], "b and c waited in _extra");
    assert_eq!(files[2].1, ["id", "ts", "a", "b", "d", "_extra"], "one version took d and b, which recurred");
    assert_eq!(files[2].2, ["null", "null"]);
    let metrics = ctx.metrics.render();
    assert!(metrics.contains("shardlake_consumer_schema_version 3"), "{metrics}");
    assert!(metrics.contains("shardlake_consumer_schema_fields_in_extra_total{reason=\"deferred\"} 2"), "{metrics}");
    assert!(metrics.contains("shardlake_consumer_flushes_total{reason=\"schema\"} 2"), "{metrics}");
}

#[tokio::test(start_paused = true)]
async fn a_replay_is_rebuilt_with_the_schema_version_of_its_intent() {
    let (kinesis, _) = scripted_kinesis(vec![output(
        vec![
            record_with(3, r#","coupon":"A""#),
            record_with(4, r#","coupon":"B""#),
            record_with(5, r#","coupon":"C""#),
        ],
        None,
    )]);
    let dir = tempfile::tempdir().unwrap();
    // A fleet worker added `coupon` (version 2) after this batch of version 1 recorded its intent.
    let cp = dir.path().join("cp/shardlake/s");
    std::fs::create_dir_all(&cp).unwrap();
    let v2 = "[[columns]]\nname = \"id\"\ntype = \"string\"\n[[columns]]\nname = \"ts\"\ntype = \"timestamp\"\n\
              [[columns]]\nname = \"coupon\"\ntype = \"string\"\n";
    std::fs::write(cp.join("schema-v2.toml"), v2).unwrap();
    std::fs::write(
        cp.join(format!("{SHARD}.json")),
        r#"{"checkpoint":"2","intent":{"first":"3","last":"4","records":2}}"#,
    )
    .unwrap();
    let ctx = context(dir.path(), kinesis, "unknown_fields = \"evolve\"\n").await;
    assert_eq!(ctx.schemas.current().number, 2);
    let lease = ShardLease { counter: None, lost: CancellationToken::new() };
    let exit = read_shard(ctx.clone(), SHARD.into(), lease, &crate::stop::Shutdown::new()).await.unwrap();
    assert_eq!(exit, ShardExit::Ended);
    let files = lake_files(dir.path(), "_extra");
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[0].0.ends_with("-3-4.snappy.parquet"));
    assert_eq!(files[0].1, ["id", "ts", "_extra"], "rebuilt as version 1 built it");
    assert_eq!(files[0].2, [r#"{"coupon":"A"}"#, r#"{"coupon":"B"}"#]);
    assert_eq!(files[1].1, ["id", "ts", "coupon", "_extra"], "the next batch is version 2");
    let state = ctx.checkpoints.load(SHARD).await.unwrap();
    assert_eq!((state.checkpoint.as_deref(), state.ended), (Some("5"), true));
}
