//! S3 store: single PUT below the multipart threshold, multipart above it
//! (parts uploaded concurrently), every call retried with full-jitter backoff
//! when transient, and an incomplete multipart upload aborted on failure so
//! no orphaned parts accrue storage charges. Optional SSE-KMS.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use futures::{StreamExt, TryStreamExt};

use crate::aws::is_transient;
use crate::error::{Error, Result};
use crate::retry::RetryPolicy;
use crate::store::Retried;

/// S3's smallest part (except the last).
pub const MIN_PART_BYTES: usize = 5 << 20;
/// S3's part count limit.
const MAX_PARTS: usize = 10_000;

/// S3 upload settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Options {
    /// Objects at least this large use multipart upload.
    pub multipart_threshold: usize,
    /// Part size (S3 requires at least 5 MiB; [`S3Options::validate`] clamps).
    pub part_size: usize,
    /// Parts uploaded at once.
    pub part_concurrency: usize,
    /// Encrypt with this KMS key (SSE-KMS) when set.
    pub sse_kms_key_id: Option<String>,
    /// Retries of each call.
    pub retry: RetryPolicy,
    /// Time limits of each call.
    pub timeouts: crate::aws::Timeouts,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            multipart_threshold: 32 << 20,
            part_size: 16 << 20,
            part_concurrency: 4,
            sse_kms_key_id: None,
            retry: RetryPolicy::default(),
            timeouts: crate::aws::Timeouts::default(),
        }
    }
}

impl S3Options {
    /// Clamps settings to the S3 API limits.
    pub fn validate(mut self) -> Self {
        self.part_size = self.part_size.max(MIN_PART_BYTES);
        self.multipart_threshold = self.multipart_threshold.max(self.part_size);
        self.part_concurrency = self.part_concurrency.clamp(1, 64);
        self
    }
}

/// An S3 bucket + prefix.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    options: S3Options,
}

impl S3Store {
    /// A store writing under `s3://bucket/prefix`.
    pub fn new(client: aws_sdk_s3::Client, bucket: String, prefix: String, options: S3Options) -> Self {
        S3Store { client, bucket, prefix, options }
    }

    /// A store at the root of `bucket`, with this one's client and settings.
    pub fn at_bucket(&self, bucket: &str) -> S3Store {
        S3Store { bucket: bucket.to_string(), prefix: String::new(), ..self.clone() }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// `s3://` URL of a key.
    pub fn url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.full_key(key))
    }

    /// A failed call as a store error: one line, never the SDK's `Debug`
    /// dump (`S3 PutObject: NoSuchBucket: The specified bucket does not exist`).
    fn err<E>(&self, op: &'static str, operation: &'static str, key: &str, e: &SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        Error::Store { op, url: self.url(key), message: crate::aws::error_line("S3", operation, e) }
    }

    /// Uploads `data` at `key`, with multipart above the threshold. Each
    /// attempt (of the put, or of each part) has its own time limit sized
    /// from its bytes ([`crate::aws::Timeouts::upload_attempt`]), and every
    /// failed attempt that is retried is shown to `retried` as it happens.
    pub async fn put(&self, key: &str, data: Vec<u8>, retried: Retried<'_>) -> Result<()> {
        if data.len() >= self.options.multipart_threshold && data.len() > self.options.part_size {
            return self.put_multipart(key, data, retried).await;
        }
        let full = self.full_key(key);
        let limits = self.options.timeouts.upload_attempt_config(data.len());
        let data = bytes::Bytes::from(data);
        self.options
            .retry
            .run_observed(
                |_| {
                    let mut req =
                        self.client.put_object().bucket(&self.bucket).key(&full).body(ByteStream::from(data.clone()));
                    if let Some(k) = &self.options.sse_kms_key_id {
                        req = req.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(k);
                    }
                    req.customize()
                        .config_override(aws_sdk_s3::config::Builder::new().timeout_config(limits.clone()))
                        .send()
                },
                is_transient,
                |e, attempt| retried(&self.attempt_err("put", "PutObject", key, attempt, e)),
            )
            .await
            .map_err(|e| self.err("put", "PutObject", key, &e))?;
        Ok(())
    }

    /// A failed attempt that is retried, as the error `retried` is shown.
    fn attempt_err<E>(
        &self,
        op: &'static str,
        operation: &'static str,
        key: &str,
        attempt: u32,
        e: &SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let line = crate::aws::error_line("S3", operation, e);
        Error::Store { op, url: self.url(key), message: format!("attempt {attempt} failed, retrying: {line}") }
    }

    async fn put_multipart(&self, key: &str, data: Vec<u8>, retried: Retried<'_>) -> Result<()> {
        let full = self.full_key(key);
        let part_size = self.options.part_size.max(data.len().div_ceil(MAX_PARTS));
        let mut create = self.client.create_multipart_upload().bucket(&self.bucket).key(&full);
        if let Some(k) = &self.options.sse_kms_key_id {
            create = create.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(k);
        }
        let created = self
            .options
            .retry
            .run_observed(
                |_| create.clone().send(),
                is_transient,
                |e, attempt| {
                    retried(&self.attempt_err("create multipart upload", "CreateMultipartUpload", key, attempt, e))
                },
            )
            .await
            .map_err(|e| self.err("create multipart upload", "CreateMultipartUpload", key, &e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        match self.upload_parts(key, &upload_id, bytes::Bytes::from(data), part_size, retried).await {
            Ok(()) => Ok(()),
            Err(message) => {
                // Abort so the parts do not linger (and cost) until a lifecycle rule.
                let abort = self
                    .options
                    .retry
                    .run(
                        |_| {
                            self.client
                                .abort_multipart_upload()
                                .bucket(&self.bucket)
                                .key(&full)
                                .upload_id(&upload_id)
                                .send()
                        },
                        is_transient,
                    )
                    .await;
                if let Err(e) = abort {
                    tracing::error!(url = %self.url(key), upload_id, error = %crate::aws::error_line("S3", "AbortMultipartUpload", &e),
                        "could not abort a failed multipart upload; a bucket lifecycle rule must clean it up");
                }
                Err(Error::Store { op: "multipart upload", url: self.url(key), message })
            }
        }
    }

    /// Uploads the parts, `part_concurrency` at once, each retried on its
    /// own (a failed part never sends the parts before it again), then
    /// completes the upload.
    async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        data: bytes::Bytes,
        part_size: usize,
        retried: Retried<'_>,
    ) -> Result<(), String> {
        let full = self.full_key(key);
        let chunks: Vec<bytes::Bytes> =
            (0..data.len()).step_by(part_size).map(|s| data.slice(s..(s + part_size).min(data.len()))).collect();
        let upload_part = |(i, chunk): (usize, bytes::Bytes)| {
            let full = &full;
            async move {
                let number = i as i32 + 1;
                let limits = self.options.timeouts.upload_attempt_config(chunk.len());
                let out = self
                    .options
                    .retry
                    .run_observed(
                        |_| {
                            self.client
                                .upload_part()
                                .bucket(&self.bucket)
                                .key(full)
                                .upload_id(upload_id)
                                .part_number(number)
                                .body(ByteStream::from(chunk.clone()))
                                .customize()
                                .config_override(aws_sdk_s3::config::Builder::new().timeout_config(limits.clone()))
                                .send()
                        },
                        is_transient,
                        |e, attempt| retried(&self.attempt_err("upload part", "UploadPart", key, attempt, e)),
                    )
                    .await
                    .map_err(|e| format!("part {number}: {}", crate::aws::error_line("S3", "UploadPart", &e)))?;
                Ok::<_, String>(CompletedPart::builder().part_number(number).set_e_tag(out.e_tag).build())
            }
        };
        let mut parts: Vec<CompletedPart> = futures::stream::iter(chunks.into_iter().enumerate())
            .map(upload_part)
            .buffer_unordered(self.options.part_concurrency)
            .try_collect()
            .await?;
        parts.sort_by_key(|p| p.part_number());
        let done = CompletedMultipartUpload::builder().set_parts(Some(parts)).build();
        self.options
            .retry
            .run_observed(
                |_| {
                    self.client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(&full)
                        .upload_id(upload_id)
                        .multipart_upload(done.clone())
                        .send()
                },
                is_transient,
                |e, attempt| {
                    retried(&self.attempt_err("complete multipart upload", "CompleteMultipartUpload", key, attempt, e))
                },
            )
            .await
            .map_err(|e| format!("complete: {}", crate::aws::error_line("S3", "CompleteMultipartUpload", &e)))?;
        Ok(())
    }

    /// Downloads a whole object.
    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let body = self.get_stream(key).await?.collect().await.map_err(|e| Error::Store {
            op: "get",
            url: self.url(key),
            message: crate::error::error_chain(&e),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Streams an object's body (for large inputs).
    pub async fn get_stream(&self, key: &str) -> Result<ByteStream> {
        let full = self.full_key(key);
        let out = self
            .options
            .retry
            .run(|_| self.client.get_object().bucket(&self.bucket).key(&full).send(), is_transient)
            .await
            .map_err(|e| self.err("get", "GetObject", key, &e))?;
        Ok(out.body)
    }

    /// The size of the object at `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        let full = self.full_key(key);
        let out = self
            .options
            .retry
            .run(|_| self.client.head_object().bucket(&self.bucket).key(&full).send(), is_transient)
            .await;
        match out {
            Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(self.err("head", "HeadObject", key, &e)),
        }
    }

    /// Bytes `range` of the object at `key`.
    pub async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let full = self.full_key(key);
        let bytes = format!("bytes={}-{}", range.start, range.end - 1);
        let out = self
            .options
            .retry
            .run(|_| self.client.get_object().bucket(&self.bucket).key(&full).range(&bytes).send(), is_transient)
            .await
            .map_err(|e| self.err("get", "GetObject", key, &e))?;
        let body = out.body.collect().await.map_err(|e| Error::Store {
            op: "get",
            url: self.url(key),
            message: crate::error::error_chain(&e),
        })?;
        Ok(body.into_bytes().to_vec())
    }

    /// Deletes the object at `key` (none there is no error), retrying
    /// transient failures.
    pub async fn remove(&self, key: &str) -> Result<()> {
        let full = self.full_key(key);
        self.options
            .retry
            .run(|_| self.client.delete_object().bucket(&self.bucket).key(&full).send(), is_transient)
            .await
            .map_err(|e| self.err("delete", "DeleteObject", key, &e))?;
        Ok(())
    }

    /// Deletes the object at `key` (no retries: the start-up probe's own
    /// step, whose failure is reported, not hidden).
    pub async fn delete(&self, key: &str) -> Result<(), crate::aws::CallError> {
        let full = self.full_key(key);
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| crate::aws::call_error("S3", "DeleteObject", &e))?;
        Ok(())
    }

    /// The start-up probe: one PutObject of a few bytes at `key` (with the
    /// store's encryption settings, so a KMS permission is exercised too),
    /// its DeleteObject, and a ListObjectsV2 of the prefix when `list`. One
    /// attempt each: the caller decides what to retry.
    pub async fn probe(&self, key: &str, list: bool) -> Result<(), super::ProbeError> {
        let fail = |step, e: crate::aws::CallError| super::ProbeError {
            step,
            url: self.url(key),
            code: e.code.clone(),
            message: e.to_string(),
            transient: e.transient,
        };
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(ByteStream::from_static(super::PROBE_BODY));
        if let Some(k) = &self.options.sse_kms_key_id {
            req = req.server_side_encryption(ServerSideEncryption::AwsKms).ssekms_key_id(k);
        }
        req.send().await.map_err(|e| fail("put", crate::aws::call_error("S3", "PutObject", &e)))?;
        self.delete(key).await.map_err(|e| fail("delete", e))?;
        if list {
            self.client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .max_keys(1)
                .send()
                .await
                .map_err(|e| fail("list", crate::aws::call_error("S3", "ListObjectsV2", &e)))?;
        }
        Ok(())
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Keys (relative to the prefix) starting with `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.list_info(prefix).await?.into_iter().map(|o| o.key).collect())
    }

    /// [`S3Store::list`] with each object's size and last change.
    pub async fn list_info(&self, prefix: &str) -> Result<Vec<super::ObjectInfo>> {
        let full = self.full_key(prefix);
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(&full).into_paginator().send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.err("list", "ListObjectsV2", prefix, &e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let modified = o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    let size = o.size().unwrap_or(0).max(0) as u64;
                    out.push(super::ObjectInfo { key: k[self.prefix.len()..].to_string(), size, modified });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
