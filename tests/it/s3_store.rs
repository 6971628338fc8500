//! The S3 store against moto: single PUT, multipart, a failed multipart
//! upload that is aborted, listing, and `convert` from and to S3 giving the
//! same bytes as a local lake.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use crate::common::*;
use shardlake::convert::convert;
use shardlake::retry::RetryPolicy;
use shardlake::store::{ObjectStore, S3Options, S3Store};

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn put_get_list_single_and_multipart() {
    let Some(_stack) = stack() else { return };
    let client = s3_client().await;
    let bucket = new_bucket(&client).await;
    let opts = S3Options { multipart_threshold: 5 << 20, part_size: 5 << 20, ..S3Options::default() };
    let store = ObjectStore::S3(S3Store::new(client.clone(), bucket.clone(), "lake/".into(), opts));

    store.put("a/small.bin", payload(1000)).await.unwrap();
    let big = payload(12 << 20); // three parts: 5 + 5 + 2 MiB
    store.put("b/big.bin", big.clone()).await.unwrap();
    assert_eq!(store.get("a/small.bin").await.unwrap(), payload(1000));
    assert_eq!(store.get("b/big.bin").await.unwrap(), big);
    assert_eq!(store.list("").await.unwrap(), ["a/small.bin", "b/big.bin"]);
    assert_eq!(store.list("b/").await.unwrap(), ["b/big.bin"]);
    let head = client.head_object().bucket(&bucket).key("lake/b/big.bin").send().await.unwrap();
    assert!(head.e_tag().unwrap().contains("-3"), "multipart ETag ends in -<parts>: {:?}", head.e_tag());
    assert_eq!(store.url("x"), format!("s3://{bucket}/lake/x"));
}

#[tokio::test]
async fn failed_multipart_upload_is_aborted() {
    let Some(_stack) = stack() else { return };
    let client = s3_client().await;
    let bucket = new_bucket(&client).await;
    // Parts below S3's 5 MiB minimum: CompleteMultipartUpload fails with
    // EntityTooSmall, a permanent error, so the upload must be aborted.
    let opts = S3Options {
        multipart_threshold: 1 << 20,
        part_size: 1 << 20,
        retry: RetryPolicy { max_attempts: 2, ..RetryPolicy::default() },
        ..S3Options::default()
    };
    let store = ObjectStore::S3(S3Store::new(client.clone(), bucket.clone(), String::new(), opts));
    let err = store.put("x/y.parquet", payload(3 << 20)).await.unwrap_err().to_string();
    assert!(err.contains("multipart upload") && err.contains(&format!("s3://{bucket}/x/y.parquet")), "{err}");
    assert!(err.contains("EntityTooSmall"), "{err}");
    let uploads = client.list_multipart_uploads().bucket(&bucket).send().await.unwrap();
    assert!(uploads.uploads().is_empty(), "incomplete upload left behind: {:?}", uploads.uploads());
    assert!(store.list("").await.unwrap().is_empty(), "no object may appear");
}

#[tokio::test]
async fn missing_bucket_fails_fast_with_the_url() {
    let Some(_stack) = stack() else { return };
    let client = s3_client().await;
    let store = ObjectStore::S3(S3Store::new(client, unique("absent"), String::new(), S3Options::default()));
    let started = std::time::Instant::now();
    let err = store.put("k", b"v".to_vec()).await.unwrap_err().to_string();
    assert!(err.contains("NoSuchBucket"), "{err}");
    assert!(started.elapsed().as_secs() < 5, "a permanent error is not retried");
}

#[tokio::test]
async fn convert_from_and_to_s3_matches_the_local_lake() {
    let Some(_stack) = stack() else { return };
    let client = s3_client().await;
    let bucket = new_bucket(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let input = gen_events(dir.path(), 3_000, 21);
    client
        .put_object()
        .bucket(&bucket)
        .key("in/events.jsonl")
        .body(std::fs::read(&input).unwrap().into())
        .send()
        .await
        .unwrap();

    let local = dir.path().join("lake");
    let mut opts = event_options(&input, local.to_str().unwrap());
    convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();

    opts.input = format!("s3://{bucket}/in/events.jsonl");
    opts.destination = format!("s3://{bucket}/lake/");
    let s = convert(&opts, Arc::new(AtomicU64::new(0))).await.unwrap();
    assert_eq!(s.rows, 3_000);

    let store = ObjectStore::open(&opts.destination, &S3Options::default()).await.unwrap();
    let keys = store.list("").await.unwrap();
    let local_tree = read_tree(&local);
    assert_eq!(keys, local_tree.keys().cloned().collect::<Vec<_>>());
    for k in &keys {
        assert!(store.get(k).await.unwrap() == local_tree[k], "{k}: S3 bytes differ from the local lake");
    }
}

#[tokio::test]
async fn sse_kms_is_requested_for_single_and_multipart_uploads() {
    let Some(_stack) = stack() else { return };
    let client = s3_client().await;
    let bucket = new_bucket(&client).await;
    let opts = S3Options {
        multipart_threshold: 5 << 20,
        part_size: 5 << 20,
        sse_kms_key_id: Some("alias/shardlake-test".into()),
        ..S3Options::default()
    };
    let store = ObjectStore::S3(S3Store::new(client.clone(), bucket.clone(), String::new(), opts));
    store.put("small", payload(10)).await.unwrap();
    store.put("large", payload(6 << 20)).await.unwrap();
    for key in ["small", "large"] {
        let head = client.head_object().bucket(&bucket).key(key).send().await.unwrap();
        assert_eq!(head.server_side_encryption(), Some(&aws_sdk_s3::types::ServerSideEncryption::AwsKms), "{key}");
        assert_eq!(head.ssekms_key_id(), Some("alias/shardlake-test"), "{key}");
    }
}
