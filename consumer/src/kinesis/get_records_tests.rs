//! Tests of `get_records`.

use super::*;

/// A successful GetRecords answer of about `kib` KiB with one record.
fn answer(kib: usize) -> HttpResponse {
    let data = "A".repeat(kib * 1024 / 4 * 4);
    let body = format!(
        r#"{{"Records":[{{"Data":"{data}","SequenceNumber":"1","ApproximateArrivalTimestamp":1.5}}],"NextShardIterator":"i","MillisBehindLatest":0}}"#
    );
    let mut response = HttpResponse::new(200u16.try_into().unwrap(), SdkBody::from(body.clone()));
    response.headers_mut().insert("content-length", body.len().to_string());
    response
}

#[tokio::test]
async fn readers_share_the_pool_and_a_page_that_does_not_fit_is_fetched_again() {
    const MIB: usize = 1 << 20;
    let pool = ReadBuffers::new(26 * MIB);
    let (a, b) = (RecordsSlot::with_pool(&pool), RecordsSlot::with_pool(&pool));
    b.reserve_full().await;
    assert_eq!(pool.in_use(), MAX_CALL_BYTES);
    a.reserve().await;
    assert_eq!(pool.in_use(), MAX_CALL_BYTES + MIN_CALL_BYTES);

    // 1 MiB of JSON needs 1.75 MiB; the pool has 1 MiB left: refused.
    assert!(a.decode_response(&mut answer(1024)).await.is_err());
    assert!(a.take_overflow() && !a.take_overflow());
    assert_eq!(pool.in_use(), MAX_CALL_BYTES, "a gave its share back");

    // b's page was small: it keeps a small share, and a gets a full one.
    b.decode_response(&mut answer(4)).await.unwrap();
    b.take().unwrap();
    b.settle();
    let small = pool.in_use();
    assert!(small < 16 * 1024, "{small}");
    a.reserve_full().await;
    a.decode_response(&mut answer(1024)).await.unwrap();
    let (records, bytes) = a.take().unwrap();
    assert_eq!((records.len(), bytes), (1, 768 * 1024));
    drop(records);
    a.settle();
    // a keeps what its page needed, for the next one like it.
    let kept = pool.in_use() - small;
    assert!((1700 * 1024..2 * MIB).contains(&kept), "{kept}");
    // The next reservation is twice the last page, within the pool.
    a.reserve().await;
    assert!(pool.in_use() - small >= 2 * 1700 * 1024);
}

/// Against both emulators: the records decoded here equal the SDK's,
/// and the SDK still reads the iterator and lag of the rewritten body.
#[tokio::test]
async fn get_records_from_the_emulators_decodes_the_same_records_as_the_sdk() {
    let Some(_stack) = shardlake::testing::stack() else { return };
    for var in ["AWS_ENDPOINT_URL_KINESIS", "SHARDLAKE_KINESALITE_ENDPOINT"] {
        let endpoint = std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: run scripts/test"));
        assert!(endpoint.starts_with("http://127.0.0.1"), "{endpoint}");
        let sdk = shardlake::aws::sdk_config().await;
        let plain = shardlake::aws::kinesis_client_at(&sdk, Some(&endpoint));
        let conf = shardlake::aws::kinesis_config(&sdk, Some(&endpoint))
            .http_client(decoding_http_client(sdk.http_client().unwrap_or_else(default_https_client)));
        let decoding = aws_sdk_kinesis::Client::from_conf(conf.build());

        let stream = format!("decode-{}-{}", var.len(), std::process::id());
        plain.create_stream().stream_name(&stream).shard_count(1).send().await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while plain.describe_stream_summary().stream_name(&stream).send().await.ok().and_then(|d| {
            d.stream_description_summary.map(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active)
        }) != Some(true)
        {
            assert!(std::time::Instant::now() < deadline, "{stream} never became active");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let payloads: Vec<Vec<u8>> = vec![b"{\"id\":1}".to_vec(), vec![0xff, 0xfe, 0, b'/', b'?'], vec![b'x'; 300_000]];
        for p in &payloads {
            let put = plain.put_record().stream_name(&stream).partition_key("k");
            put.data(aws_sdk_kinesis::primitives::Blob::new(p.clone())).send().await.unwrap();
        }
        let shard = crate::kinesis::list_shards(&plain, &stream).await.unwrap().remove(0).id;
        let start = crate::kinesis::StartAt::TrimHorizon;
        let iterator = crate::kinesis::shard_iterator(&plain, &stream, &shard, &start).await.unwrap();

        let slot = RecordsSlot::default();
        let ours = crate::kinesis::get_records(&decoding, &iterator, 100, &slot).await.unwrap();
        assert!(!slot.0.lock().unwrap().body.is_empty(), "{var}: the body was not read here");
        let sdk_read = crate::kinesis::get_records(&plain, &iterator, 100, &RecordsSlot::default()).await.unwrap();
        let view = |f: &crate::kinesis::Fetched| {
            f.records.iter().map(|r| (r.data.to_vec(), r.sequence.clone(), r.arrival_ms)).collect::<Vec<_>>()
        };
        assert_eq!(view(&ours), view(&sdk_read), "{var}");
        assert_eq!(ours.records.iter().map(|r| r.data.to_vec()).collect::<Vec<_>>(), payloads, "{var}");
        assert_eq!(ours.bytes, payloads.iter().map(Vec::len).sum::<usize>());
        assert!(ours.next.is_some() && ours.millis_behind_latest.is_some(), "{var}: {ours:?}");
        plain.delete_stream().stream_name(&stream).send().await.unwrap();
    }
}

fn body(records: &[(&[u8], &str)]) -> String {
    use base64::Engine;
    let records: Vec<String> = records
        .iter()
        .map(|(data, seq)| {
            format!(
                r#"{{"SequenceNumber":"{seq}","ApproximateArrivalTimestamp":1.795200000124E9,"Data":"{}","PartitionKey":"k","EncryptionType":"NONE"}}"#,
                base64::engine::general_purpose::STANDARD.encode(data)
            )
        })
        .collect();
    format!(
        r#"{{"MillisBehindLatest":0,"Records": [{}],"NextShardIterator":"AAA/x=","ChildShards":[]}}"#,
        records.join(",")
    )
}

#[test]
fn decodes_payloads_sequences_and_arrival_times_and_finds_the_records_array() {
    let text = body(&[(b"{\"a\":1}", "495"), (b"", "496"), (&[0xff, 0, 7], "497")]);
    let mut arena = Arena::default();
    let page = decode(text.as_bytes(), &mut arena).unwrap();
    let got: Vec<(&[u8], &str, i64)> = page.records.iter().map(|r| (&r.data[..], &*r.sequence, r.arrival_ms)).collect();
    assert_eq!(
        got,
        vec![
            (&b"{\"a\":1}"[..], "495", 1_795_200_000_124),
            (&b""[..], "496", 1_795_200_000_124),
            (&[0xff, 0, 7][..], "497", 1_795_200_000_124)
        ]
    );
    assert_eq!(page.bytes, 10);
    let rest = [&text[..page.records_span.start], "[]", &text[page.records_span.end..]].concat();
    assert_eq!(rest, r#"{"MillisBehindLatest":0,"Records": [],"NextShardIterator":"AAA/x=","ChildShards":[]}"#);
}

#[test]
fn escaped_slashes_in_base64_are_decoded() {
    // `/` may be written `\/` in JSON; base64 of 0xff 0xff 0xff is `////`.
    let text = r#"{"Records":[{"Data":"\/\/\/\/","SequenceNumber":"1"}]}"#;
    let page = decode(text.as_bytes(), &mut Arena::default()).unwrap();
    assert_eq!(&page.records[0].data[..], &[0xff, 0xff, 0xff]);
}

#[test]
fn the_arena_is_reused_once_the_records_are_dropped() {
    let text = body(&[(&[1; 3000], "1"), (&[2; 3000], "2")]);
    let mut arena = Arena::default();
    let page = decode(text.as_bytes(), &mut arena).unwrap();
    let first = page.records[0].data.as_ptr();
    drop(page);
    let page = decode(text.as_bytes(), &mut arena).unwrap();
    assert_eq!(page.records[0].data.as_ptr(), first, "a new allocation for the second response");
    assert_eq!(&page.records[1].data[..], &[2; 3000][..]);
}

#[test]
fn bodies_it_cannot_decode_are_refused() {
    let mut arena = Arena::default();
    for (text, why) in [
        (r#"{"Records":[{"Data":"!!","SequenceNumber":"1"}]}"#, "record 0: Data is not base64"),
        (r#"{"Records":[{"Data":"AA=="}]}"#, "record 0: SequenceNumber is missing"),
        (r#"{"NextShardIterator":"x"}"#, "no Records array"),
        (r#"{"Records":[{"Data":"AA==","#, "expected"),
    ] {
        let err = decode(text.as_bytes(), &mut arena).unwrap_err().to_string();
        assert!(err.contains(why), "{text}: {err}");
    }
    assert!(matches!(decode(b"{\"Records\":[\xff]}", &mut arena), Err(DecodeError::Utf8)));
}
