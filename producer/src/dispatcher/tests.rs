//! Deterministic fault tests of the whole producer against a fake stream
//! (`aws-smithy-mocks` behind the real SDK client), on tokio's paused clock.

use std::time::Duration;

use aws_sdk_kinesis::operation::put_records::PutRecordsError;
use aws_sdk_kinesis::types::error::ProvisionedThroughputExceededException;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardlake_aws::aggregation::deaggregate;
use tokio::time::Instant;

use crate::error::Error;
use crate::producer::{AckFuture, Producer};
use crate::record::{Record, md5_hash_key};
use crate::testing::{Entry, Inject, even_ranges, fake_kinesis};
use crate::{Ack, ProduceError, ProducerConfig};

const PTE: &str = "ProvisionedThroughputExceededException";
const SEED: u64 = 7;

fn config() -> ProducerConfig {
    let mut c = ProducerConfig::kinesis("fake");
    c.rate_limit_percent = 0;
    c.shard_map_refresh_secs = 0;
    c
}

async fn producer(config: ProducerConfig, client: aws_sdk_kinesis::Client) -> Producer {
    Producer::builder(config).kinesis_client(client).retry_seed(SEED).build().await.unwrap()
}

fn throttled() -> PutRecordsError {
    PutRecordsError::ProvisionedThroughputExceededException(
        ProvisionedThroughputExceededException::builder().message("rate exceeded for shard").build(),
    )
}

fn fail_data(entries: &[Entry], f: impl Fn(&[u8]) -> Option<&'static str>) -> Inject {
    Inject::Entries(entries.iter().map(|e| f(&e.data)).collect())
}

async fn enqueue_all(p: &Producer, records: impl IntoIterator<Item = Record>) -> Vec<AckFuture> {
    let mut acks = vec![];
    for r in records {
        acks.push(p.enqueue(r).await.unwrap());
    }
    acks
}

async fn wait_all(acks: Vec<AckFuture>) -> Vec<Result<Ack, ProduceError>> {
    let mut out = vec![];
    for a in acks {
        out.push(a.await);
    }
    out
}

fn numbered(n: usize) -> impl Iterator<Item = Record> {
    (0..n).map(|i| Record::new(format!("key-{i}"), i.to_string()))
}

#[tokio::test(start_paused = true)]
async fn partial_failures_retry_only_the_failed_entries() {
    let (client, fake) = fake_kinesis(even_ranges(2, 0), |call, entries| match call {
        0 => fail_data(entries, |d| match d {
            b"2" | b"5" => Some(PTE),
            b"7" => Some("InternalFailure"),
            _ => None,
        }),
        _ => Inject::Ok,
    });
    let p = producer(config(), client).await;
    let results = wait_all(enqueue_all(&p, numbered(10)).await).await;
    for (i, r) in results.iter().enumerate() {
        let ack = r.as_ref().unwrap();
        assert_eq!(ack.attempts, if [2, 5, 7].contains(&i) { 2 } else { 1 }, "record {i}");
    }
    let fake = fake.lock().unwrap();
    assert_eq!(fake.calls.len(), 2);
    let mut retried: Vec<&[u8]> = fake.calls[1].1.iter().map(|e| e.data.as_slice()).collect();
    retried.sort();
    assert_eq!(retried, [b"2", b"5", b"7"]);
    let mut stored: Vec<usize> =
        fake.stored.iter().map(|s| String::from_utf8_lossy(&s.entry.data).parse().unwrap()).collect();
    stored.sort();
    assert_eq!(stored, (0..10).collect::<Vec<_>>(), "each record stored exactly once");
    let m = p.metrics();
    assert_eq!(m.records_retried.with_label_values(&[PTE]).get(), 2);
    assert_eq!(m.records_retried.with_label_values(&["InternalFailure"]).get(), 1);
    assert_eq!(m.throttled.with_label_values(&["record"]).get(), 2);
    assert_eq!(m.records_sent.get(), 10);
}

#[tokio::test(start_paused = true)]
async fn non_retryable_codes_fail_only_their_records() {
    let (client, fake) = fake_kinesis(even_ranges(2, 0), |_, entries| {
        fail_data(entries, |d| (d == b"3").then_some("KMSAccessDeniedException"))
    });
    let p = producer(config(), client).await;
    let results = wait_all(enqueue_all(&p, numbered(10)).await).await;
    for (i, r) in results.into_iter().enumerate() {
        if i != 3 {
            assert_eq!(r.unwrap().attempts, 1);
            continue;
        }
        let err = r.unwrap_err();
        assert_eq!(err.record, Record::new("key-3", "3"), "the record comes back for dead-lettering");
        assert!(
            matches!(&err.reason, Error::Rejected { code, .. } if code == "KMSAccessDeniedException"),
            "{:?}",
            err.reason
        );
    }
    assert_eq!(fake.lock().unwrap().calls.len(), 1, "nothing is retried");
    assert_eq!(p.metrics().records_failed.with_label_values(&["KMSAccessDeniedException"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_request_backs_off_with_full_jitter() {
    let (client, fake) =
        fake_kinesis(even_ranges(1, 0), |call, _| if call < 4 { Inject::Request(throttled()) } else { Inject::Ok });
    let p = producer(config(), client).await;
    let ack = p.send(Record::new("k", "x")).await.unwrap();
    assert_eq!(ack.attempts, 5);
    // The same seed gives the delays the producer drew: one per failed attempt.
    let policy = p.settings().retry;
    let mut rng = StdRng::seed_from_u64(SEED);
    let expected: Vec<Duration> = (1..=4).map(|a| policy.delay(a, &mut rng)).collect();
    let fake = fake.lock().unwrap();
    let gaps: Vec<Duration> = fake.calls.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert_eq!(gaps.len(), 4);
    for (gap, want) in gaps.iter().zip(&expected) {
        // tokio timers have millisecond resolution.
        assert!(*gap >= *want && *gap <= *want + Duration::from_millis(1), "gap {gap:?}, drawn {want:?}");
    }
    assert!(gaps.iter().sum::<Duration>() > Duration::from_millis(100), "{gaps:?}");
    assert_eq!(p.metrics().throttled.with_label_values(&["request"]).get(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_permanently_throttled_record_expires_at_its_ttl_without_a_retry_spiral() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Request(throttled()));
    let p = producer(config(), client).await;
    let start = Instant::now();
    let record = Record::new("k", "payload");
    let err = p.send(record.clone()).await.unwrap_err();
    let elapsed = start.elapsed();
    assert_eq!(err.record, record);
    let calls = fake.lock().unwrap().calls.len();
    match &err.reason {
        Error::Expired { attempts, last_error, ttl_ms, .. } => {
            assert_eq!((*attempts as usize, *ttl_ms), (calls, 30_000));
            assert!(last_error.contains(PTE), "{last_error}");
        }
        other => panic!("expected an expiry, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_secs(30) && elapsed < Duration::from_secs(31), "{elapsed:?}");
    // Backoff up to 5 s over 30 s: a dozen or so attempts, not thousands.
    assert!((4..40).contains(&calls), "{calls} attempts");
    assert_eq!(p.metrics().records_expired.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn send_waits_and_try_send_fails_while_the_budget_is_full() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Request(throttled()));
    let mut c = config();
    c.max_buffered_records = 10;
    c.max_buffered_bytes = 2 << 20;
    c.record_ttl_ms = 10_000;
    let p = producer(c, client).await;
    let mut held = vec![];
    for i in 0..10 {
        held.push(p.try_send(Record::new("k", vec![b'x'; 100 + i])).unwrap());
    }
    let refused = p.try_send(Record::new("k", "eleventh")).unwrap_err();
    assert!(matches!(&refused.reason, Error::BufferFull { limit } if limit.contains("max_buffered_records = 10")));
    assert_eq!(refused.record.data, "eleventh");
    let waiter = tokio::spawn({
        let p = p.clone();
        async move { p.send(Record::new("k", "eleventh")).await }
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiter.is_finished(), "send waits while the stream is stalled");
    assert_eq!(p.buffered().1, 10);
    assert!(p.buffered().0 <= 2 << 20);
    assert!(fake.lock().unwrap().calls.len() > 1, "the stalled records keep being retried");
    // At their TTL the held records come back, and the waiting send gets in.
    for h in held {
        assert!(matches!(h.await.unwrap_err().reason, Error::Expired { .. }));
    }
    let eleventh = waiter.await.unwrap().unwrap_err();
    assert!(matches!(eleventh.reason, Error::Expired { .. }), "it too expires on the stalled stream");
    assert_eq!(p.buffered(), (0, 0));
    assert_eq!(p.metrics().buffered_records.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_byte_budget_holds_large_records_back() {
    let (client, _fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Request(throttled()));
    let mut c = config();
    c.max_buffered_bytes = 3 << 20;
    c.max_record_bytes = Some(1 << 20);
    let p = producer(c, client).await;
    for _ in 0..3 {
        p.try_send(Record::new("k", vec![0u8; 1_000_000])).unwrap();
    }
    let err = p.try_send(Record::new("k", vec![0u8; 1_000_000])).unwrap_err();
    assert!(matches!(&err.reason, Error::BufferFull { limit } if limit.contains("max_buffered_bytes")), "{err}");
    assert!(p.buffered().0 <= 3 << 20);
}

#[tokio::test(start_paused = true)]
async fn an_oversize_record_fails_at_send_and_never_enters_a_batch() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let p = producer(config(), client).await;
    let big = Record::new("k", vec![0u8; 1 << 20]);
    let err = p.enqueue(big.clone()).await.unwrap_err();
    assert_eq!(err.record, big);
    assert_eq!(
        err.reason,
        Error::RecordTooLarge { size: (1 << 20) + 1, limit: 1 << 20, target: "kinesis stream \"fake\"".into() }
    );
    let bad_key = p.send(Record::new("", "x")).await.unwrap_err();
    assert_eq!(bad_key.reason, Error::InvalidPartitionKey { chars: 0 });
    p.send(Record::new("k", "fine")).await.unwrap();
    assert_eq!(fake.lock().unwrap().stored.len(), 1);
    assert_eq!(p.metrics().records_failed.with_label_values(&["too_large"]).get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_for_linger_unless_flushed() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.linger_ms = 10_000;
    let p = producer(c, client).await;
    let start = Instant::now();
    let ack = p.send(Record::new("k", "x")).await.unwrap();
    assert!(ack.latency >= Duration::from_secs(10) && start.elapsed() < Duration::from_millis(10_010));
    let start = Instant::now();
    let acks = enqueue_all(&p, numbered(3)).await;
    p.flush().await;
    assert!(start.elapsed() < Duration::from_millis(10), "flush does not wait for linger");
    assert!(wait_all(acks).await.iter().all(Result::is_ok));
    assert_eq!(fake.lock().unwrap().calls.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_batch_goes_without_waiting_for_linger() {
    let (client, fake) = fake_kinesis(even_ranges(4, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.linger_ms = 60_000;
    let p = producer(c, client).await;
    let acks = enqueue_all(&p, numbered(1200)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let fake = fake.lock().unwrap();
        let sizes: Vec<usize> = fake.calls.iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [500, 500], "two full requests at once, the rest lingers");
    }
    let start = Instant::now();
    assert!(wait_all(acks).await.iter().all(Result::is_ok));
    assert!(start.elapsed() >= Duration::from_secs(58), "the last 200 waited for linger");
    assert_eq!(fake.lock().unwrap().calls[2].1.len(), 200);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_everything_and_later_sends_fail() {
    let (client, fake) = fake_kinesis(even_ranges(2, 0), |call, entries| {
        if call == 0 { fail_data(entries, |d| (d == b"1").then_some("InternalFailure")) } else { Inject::Ok }
    });
    let p = producer(config(), client).await;
    let acks = enqueue_all(&p, numbered(100)).await;
    p.shutdown().await;
    assert_eq!(fake.lock().unwrap().stored.len(), 100, "shutdown returned after every record was resolved");
    assert!(wait_all(acks).await.iter().all(Result::is_ok));
    let err = p.send(Record::new("k", "late")).await.unwrap_err();
    assert_eq!((err.reason, err.record.data), (Error::ShutDown, "late".into()));
}

/// 3 keys x 30 records while about 30% of the entries fail, retryably, in
/// the first 40 requests.
async fn run_with_injected_failures(ordering: bool) -> std::collections::BTreeMap<String, Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(42);
    let (client, fake) = fake_kinesis(even_ranges(2, 0), move |call, entries| {
        if call >= 40 {
            return Inject::Ok;
        }
        let codes = [PTE, "InternalFailure"];
        Inject::Entries(entries.iter().map(|_| rng.random_bool(0.3).then(|| codes[rng.random_range(0..2)])).collect())
    });
    let mut c = config();
    c.ordering = ordering;
    c.linger_ms = 5;
    let p = producer(c, client).await;
    let records = (0..30).flat_map(|i| ["a", "b", "c"].map(|k| Record::new(k, format!("{k}-{i:02}"))));
    let results = wait_all(enqueue_all(&p, records).await).await;
    assert!(results.iter().all(Result::is_ok));
    fake.lock().unwrap().data_by_key()
}

#[tokio::test(start_paused = true)]
async fn ordering_mode_keeps_per_key_order_under_injected_failures() {
    let by_key = run_with_injected_failures(true).await;
    for (key, data) in &by_key {
        let want: Vec<Vec<u8>> = (0..30).map(|i| format!("{key}-{i:02}").into_bytes()).collect();
        assert_eq!(data, &want, "key {key} out of order");
    }
}

#[tokio::test(start_paused = true)]
async fn without_ordering_the_same_failures_reorder_a_key() {
    // The check above can fail: the same script reorders records by default.
    let by_key = run_with_injected_failures(false).await;
    assert!(by_key.values().any(|data| data.windows(2).any(|w| w[0] > w[1])), "no key was reordered");
    assert!(by_key.values().all(|data| data.len() == 30));
}

#[tokio::test(start_paused = true)]
async fn ordering_with_aggregation_packs_a_key_into_one_entry() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.ordering = true;
    c.aggregation = true;
    let p = producer(c, client).await;
    let records = (0..50).map(|i| Record::new("same", format!("{i:02}")));
    let acks: Vec<Ack> = wait_all(enqueue_all(&p, records).await).await.into_iter().map(Result::unwrap).collect();
    let fake = fake.lock().unwrap();
    assert_eq!((fake.calls.len(), fake.stored.len()), (1, 1), "one request, one aggregated entry");
    let users = deaggregate(&fake.stored[0].entry.data).unwrap().unwrap();
    let data: Vec<String> = users.iter().map(|u| String::from_utf8(u.data.clone()).unwrap()).collect();
    assert_eq!(data, (0..50).map(|i| format!("{i:02}")).collect::<Vec<_>>());
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!((ack.sub_sequence_number, ack.sequence_number.as_str()), (Some(i as u64), "00000000000000000001"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_reshard_mid_run_refreshes_the_shard_map() {
    let (client, fake) = fake_kinesis(even_ranges(2, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.aggregation = true;
    let p = producer(c, client).await;
    let keys = |from: usize| (from..from + 300).map(|i| Record::new(format!("user-{i}"), format!("{i}")));
    wait_all(enqueue_all(&p, keys(0)).await).await;
    let before_reshard = fake.lock().unwrap().stored.len();
    // Split both shards: the producer's map (2 shards) is now stale.
    fake.lock().unwrap().shards = even_ranges(4, 2);
    wait_all(enqueue_all(&p, keys(1000)).await).await;
    // The refresh follows at most a second after the mismatch was seen.
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.metrics().shard_map_refreshes.with_label_values(&["ok"]).get() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stale_until = fake.lock().unwrap().stored.len();
    wait_all(enqueue_all(&p, keys(2000)).await).await;
    let fake = fake.lock().unwrap();
    assert_eq!(fake.list_calls, 2, "the initial read and one refresh");
    assert_eq!(p.metrics().shard_map_refreshes.with_label_values(&["ok"]).get(), 2);
    // After the refresh every user record sits on the shard its key hashes to
    // (what the KCL checks when it deaggregates).
    let misplaced = |from: usize| {
        fake.stored[from..]
            .iter()
            .flat_map(|s| {
                let shard = fake.shards.iter().find(|r| r.shard_id.as_ref() == s.shard_id).unwrap().clone();
                let users = deaggregate(&s.entry.data).map_or_else(
                    || vec![s.entry.partition_key.clone()],
                    |u| u.unwrap().into_iter().map(|u| u.partition_key.to_string()).collect(),
                );
                users.into_iter().map(move |k| (md5_hash_key(&k), shard.clone()))
            })
            .filter(|(h, shard)| *h < shard.start || *h > shard.end)
            .count()
    };
    // Aggregates packed before the reshard showed mix the new shards' ranges;
    // their out-of-range records (which the KCL discards) were all resent ...
    let out_of_range = misplaced(before_reshard);
    assert!(out_of_range > 0, "the stale map packed records of different new shards together");
    assert_eq!(out_of_range as u64, p.metrics().records_resent_wrong_shard.get());
    assert_eq!(misplaced(stale_until), 0);
    // ... so every record sits on the shard its key hashes to, once.
    let mut in_range = std::collections::HashMap::<String, usize>::new();
    for s in &fake.stored[before_reshard..] {
        let shard = fake.shards.iter().find(|r| r.shard_id.as_ref() == s.shard_id).unwrap();
        let users = deaggregate(&s.entry.data).map_or_else(
            || vec![s.entry.partition_key.clone()],
            |u| u.unwrap().into_iter().map(|u| u.partition_key.to_string()).collect(),
        );
        for k in users.into_iter().filter(|k| (shard.start..=shard.end).contains(&md5_hash_key(k))) {
            *in_range.entry(k).or_default() += 1;
        }
    }
    let sent: Vec<String> = (1000..1300).chain(2000..2300).map(|i| format!("user-{i}")).collect();
    assert!(sent.iter().all(|k| in_range.get(k) == Some(&1)), "each record once, in range");
}

#[tokio::test(start_paused = true)]
async fn after_a_reshard_is_seen_records_go_unaggregated_until_the_map_is_read_again() {
    let (client, fake) = fake_kinesis(even_ranges(2, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.aggregation = true;
    c.max_batch_records = 4;
    c.aggregation_max_bytes = 8 * 1024;
    let p = producer(c, client).await;
    wait_all(enqueue_all(&p, numbered(200)).await).await;
    fake.lock().unwrap().shards = even_ranges(4, 2);
    let data = "x".repeat(500);
    let acks = wait_all(enqueue_all(&p, (0..2000).map(|i| Record::new(format!("k-{i}"), data.clone()))).await).await;
    assert!(acks.iter().all(Result::is_ok));
    let fake = fake.lock().unwrap();
    // The requests packed before the first answer showed the reshard mixed
    // ranges (their out-of-range records were resent); after it, records
    // went plain until the map was read again, once.
    let resent = p.metrics().records_resent_wrong_shard.get();
    assert!(resent > 0);
    let plain_after = fake.stored.iter().filter(|s| deaggregate(&s.entry.data).is_none()).count();
    assert!(plain_after > 0, "records went plain while the map was stale");
    assert_eq!(fake.list_calls, 2, "the initial read and one refresh");
}

#[tokio::test(start_paused = true)]
async fn each_shard_is_held_to_its_rate_limit() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.rate_limit_percent = 100;
    let p = producer(c, client).await;
    let start = Instant::now();
    let results = wait_all(enqueue_all(&p, numbered(3000)).await).await;
    assert!(results.iter().all(Result::is_ok));
    // A burst of 1,000 records, then 1,000 per second.
    let elapsed = start.elapsed();
    assert!(elapsed >= Duration::from_millis(1990), "{elapsed:?}");
    let fake = fake.lock().unwrap();
    let times: Vec<Instant> = fake.stored.iter().map(|s| s.at).collect();
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(1)).count();
        assert!(in_window <= 2001, "{in_window} records within 1 s of record {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_rate_limit_the_same_records_go_at_once() {
    let (client, _fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let p = producer(config(), client).await;
    let start = Instant::now();
    let results = wait_all(enqueue_all(&p, numbered(3000)).await).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(start.elapsed() < Duration::from_millis(500), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn firehose_partial_failures_retry_only_the_failed_records() {
    let (client, stored) = crate::testing::fake_firehose(|call, data| match (call, data) {
        (0, b"1" | b"4") => Some("ServiceUnavailableException"),
        (_, b"6") => Some("KMSAccessDeniedException"),
        _ => None,
    });
    let p = Producer::builder(ProducerConfig::firehose("fh")).firehose_client(client).build().await.unwrap();
    let records = (0..8).map(|i| Record::new("", i.to_string()));
    let results = wait_all(enqueue_all(&p, records).await).await;
    for (i, r) in results.iter().enumerate() {
        match i {
            6 => assert!(
                matches!(&r.as_ref().unwrap_err().reason, Error::Rejected { code, .. } if code == "KMSAccessDeniedException")
            ),
            1 | 4 => assert_eq!(r.as_ref().unwrap().attempts, 2),
            _ => assert_eq!(r.as_ref().unwrap().attempts, 1),
        }
    }
    let mut stored: Vec<Vec<u8>> = stored.lock().unwrap().clone();
    stored.sort();
    assert_eq!(stored, ["0", "1", "2", "3", "4", "5", "7"].map(|s| s.as_bytes().to_vec()));
    assert_eq!(p.metrics().throttled.with_label_values(&["record"]).get(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_ttl_runs_from_send_by_default_and_from_the_first_attempt_on_request() {
    // 30 records on a shard limited to 10 records/s: the last ones wait in
    // the queue for about 2 s, longer than their 1 s TTL.
    let run = |ttl_start| async move {
        let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
        let mut c = config();
        c.rate_limit_percent = 1;
        c.record_ttl_ms = 1_000;
        c.ttl_start = ttl_start;
        let p = producer(c, client).await;
        let results = wait_all(enqueue_all(&p, numbered(30)).await).await;
        let stored = fake.lock().unwrap().stored.len();
        (results, stored)
    };
    let (results, stored) = run(crate::TtlStart::Send).await;
    let expired_unsent = results
        .iter()
        .filter(|r| matches!(r, Err(e) if matches!(e.reason, Error::Expired { attempts: 0, .. })))
        .count();
    assert!(expired_unsent >= 5, "{expired_unsent} expired in the queue");
    assert_eq!(stored + expired_unsent, 30);
    let (results, stored) = run(crate::TtlStart::FirstAttempt).await;
    assert!(results.iter().all(Result::is_ok), "waiting in the queue does not use the TTL");
    assert_eq!(stored, 30);
}

#[tokio::test(start_paused = true)]
async fn from_the_first_attempt_a_retried_record_still_expires_at_its_ttl() {
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Request(throttled()));
    let mut c = config();
    c.ttl_start = crate::TtlStart::FirstAttempt;
    c.record_ttl_ms = 3_000;
    let p = producer(c, client).await;
    let start = Instant::now();
    let err = p.send(Record::new("k", "x")).await.unwrap_err();
    assert!(matches!(err.reason, Error::Expired { .. }), "{}", err.reason);
    assert!(start.elapsed() >= Duration::from_secs(3) && start.elapsed() < Duration::from_secs(4));
    assert!(fake.lock().unwrap().calls.len() > 1);
}

#[tokio::test(start_paused = true)]
async fn concurrency_starts_at_one_request_and_grows_while_answers_stay_fast() {
    let (client, fake) = fake_kinesis(even_ranges(4, 0), |_, _| Inject::Ok);
    let p = producer(config(), client).await;
    let m = p.metrics().clone();
    assert_eq!(m.concurrency_limit.get(), 1);
    let results = wait_all(enqueue_all(&p, numbered(20_000)).await).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(fake.lock().unwrap().stored.len(), 20_000);
    assert!(m.concurrency_limit.get() > 1, "limit {}", m.concurrency_limit.get());
    assert!(m.concurrency_limit_changes.with_label_values(&["up"]).get() > 0);
    assert_eq!(m.concurrency_limit_changes.with_label_values(&["down"]).get(), 0);
}

#[tokio::test(start_paused = true)]
async fn throttling_cuts_the_concurrency_limit_to_one() {
    // Fast answers let the limit grow, then the stream throttles for good.
    let (client, _fake) =
        fake_kinesis(even_ranges(4, 0), |call, _| if call < 40 { Inject::Ok } else { Inject::Request(throttled()) });
    let mut c = config();
    c.record_ttl_ms = 10_000;
    let p = producer(c, client).await;
    let results = wait_all(enqueue_all(&p, numbered(40_000)).await).await;
    assert!(results.iter().any(Result::is_ok) && results.iter().any(Result::is_err));
    let m = p.metrics();
    assert!(m.concurrency_limit_changes.with_label_values(&["up"]).get() > 0);
    assert!(m.concurrency_limit_changes.with_label_values(&["down"]).get() > 0);
    assert_eq!(m.concurrency_limit.get(), 1, "throttled at every turn, the limit ends at its floor");
}

#[tokio::test(start_paused = true)]
async fn ready_holds_a_feeder_to_one_round_of_requests() {
    // 10 records/s: the queue fills, and `ready` stops the feeder at the
    // backlog target of limit 1: 2 × 500 records.
    let (client, _fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.rate_limit_percent = 1;
    let p = producer(c, client).await;
    let mut acks = vec![];
    for i in 0..5_000 {
        if tokio::time::timeout(Duration::from_millis(1), p.ready()).await.is_err() {
            break;
        }
        acks.push(p.enqueue(Record::new("k", i.to_string())).await.unwrap());
    }
    assert!((1_000..1_050).contains(&acks.len()), "{} records fed", acks.len());
}

#[tokio::test(start_paused = true)]
async fn with_aggregation_the_rate_limit_charges_kinesis_records_not_user_records() {
    // 10,000 user records of ~60 bytes: ~600 KB, packed into aggregates of
    // ~50 KB, are a dozen Kinesis records, well within one second's limits
    // of a shard. Charged per user record they would take 9 s.
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.rate_limit_percent = 100;
    c.aggregation = true;
    let p = producer(c, client).await;
    let start = Instant::now();
    let records = (0..10_000)
        .map(|i| Record::new(format!("key-{i}"), format!("{{\"n\":{i:08},\"pad\":\"{}\"}}", "x".repeat(30))));
    let results = wait_all(enqueue_all(&p, records).await).await;
    assert!(results.iter().all(Result::is_ok));
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    let fake = fake.lock().unwrap();
    assert!(fake.stored.len() <= 20, "{} Kinesis records", fake.stored.len());
    assert!(fake.calls.len() <= 5, "{} requests", fake.calls.len());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_producer_without_shutdown_counts_the_buffered_records() {
    let (client, _fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Request(throttled()));
    let registry = prometheus::Registry::new();
    let p = Producer::builder(config()).kinesis_client(client).registry(registry.clone()).build().await.unwrap();
    let acks = enqueue_all(&p, numbered(10)).await;
    let clone = p.clone();
    drop(p);
    let text = || prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(
        text().contains("shardlake_producer_records_buffered_at_drop_total{target=\"fake\"} 0"),
        "a clone lives on"
    );
    drop(clone);
    assert!(text().contains("shardlake_producer_records_buffered_at_drop_total{target=\"fake\"} 10"), "{}", text());
    // The task still resolves them: here at their TTL, on the throttled stream.
    assert!(wait_all(acks).await.iter().all(|r| matches!(r, Err(e) if matches!(e.reason, Error::Expired { .. }))));

    let (client, _fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let registry = prometheus::Registry::new();
    let p = Producer::builder(config()).kinesis_client(client).registry(registry.clone()).build().await.unwrap();
    let acks = enqueue_all(&p, numbered(10)).await;
    p.shutdown().await;
    drop(p);
    assert!(wait_all(acks).await.iter().all(Result::is_ok));
    let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
    assert!(text.contains("shardlake_producer_records_buffered_at_drop_total{target=\"fake\"} 0"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn rate_limited_batches_fill_for_linger_instead_of_going_out_with_a_few_records() {
    // 3,000 records at 1,000/s: after the burst, a batch fills for 100 ms
    // (about 100 records) rather than going with the tokens of one refill.
    let (client, fake) = fake_kinesis(even_ranges(1, 0), |_, _| Inject::Ok);
    let mut c = config();
    c.rate_limit_percent = 100;
    let p = producer(c, client).await;
    let results = wait_all(enqueue_all(&p, numbered(3000)).await).await;
    assert!(results.iter().all(Result::is_ok));
    let calls = fake.lock().unwrap().calls.len();
    assert!(calls <= 30, "{calls} requests for 3,000 records");
}
