//! GetRecords responses decoded by shardlake instead of the SDK.
//!
//! The SDK's generic JSON deserializer allocates a buffer and two strings for
//! every record, and the profile of the consumer benchmark (issue 4) showed
//! that churn (the deserializer, malloc, copies and the page faults of
//! short-lived 10 MB responses) costing more CPU than the JSON → Parquet work
//! itself. The SDK still does everything else for GetRecords: endpoints,
//! credentials, signing, TLS, time-outs and error responses. Only a
//! successful body is read here: an HTTP connector wrapper reads it into the
//! shard reader's reusable [`RecordsSlot`], decodes the records (base64 into
//! one arena that is reused call after call, each record a `Bytes` slice of
//! it), and hands the SDK the same response with an empty `Records` array,
//! from which it reads the next iterator, the lag and the child shards as
//! before. A body this decoder rejects goes to the SDK untouched.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http_body_util::BodyExt;
use shardlake::json::{Parser, SyntaxError};

/// One record as read.
#[derive(Debug, Clone)]
pub struct KinesisRecord {
    /// Sequence number (shared with the batch positions that name it).
    pub sequence: Arc<str>,
    /// The payload (possibly a KPL aggregate).
    pub data: Bytes,
    /// ApproximateArrivalTimestamp, epoch millis.
    pub arrival_ms: i64,
}

/// The most one GetRecords call can need: a 10 MiB page is about 14 MiB of
/// JSON (base64 and the record fields), plus its 10 MiB of decoded payloads.
pub const MAX_CALL_BYTES: usize = 25 << 20;
/// The least a call reserves (an idle reader keeps far less between calls).
const MIN_CALL_BYTES: usize = 64 << 10;
/// Pool permits are KiB.
const KIB: usize = 1024;
/// GetRecords calls in flight at once, over all readers. Each call holds an
/// HTTP/1.1 connection, and each connection costs about 50 KiB of buffers
/// and tasks whether busy or idle: without a cap a worker with 1,000 shards
/// kept 1,000 connections (some 50 MiB). 128 calls of 20-100 ms serve
/// thousands of calls per second, more than one worker converts.
pub const MAX_CALLS_IN_FLIGHT: usize = 128;

/// The memory of every reader's GetRecords responses (`[buffer]
/// read_buffer_mb`): the bodies in flight and the buffers kept between
/// calls. A reader reserves its next call's need before the call (twice its
/// last page), and a body that outgrows the reservation takes more while it
/// arrives. A reader never waits while it holds permits (it gives them back
/// first), so readers cannot deadlock on the pool; and a body that finds the
/// pool empty is dropped and fetched again with a full reservation.
#[derive(Debug, Clone)]
pub struct ReadBuffers {
    pool: Arc<Semaphore>,
    /// The pool's size.
    bytes: usize,
    /// [`MAX_CALLS_IN_FLIGHT`] permits, one per call in flight.
    calls: Arc<Semaphore>,
}

impl ReadBuffers {
    /// A pool of `bytes` (at least [`MAX_CALL_BYTES`], so any page fits).
    pub fn new(bytes: usize) -> Self {
        let bytes = bytes.max(MAX_CALL_BYTES);
        ReadBuffers {
            pool: Arc::new(Semaphore::new(bytes / KIB)),
            bytes,
            calls: Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT)),
        }
    }

    /// Waits for a turn to call GetRecords (or GetShardIterator, which a
    /// thousand readers starting at once would otherwise call together),
    /// held until the call ends. Take it
    /// after the call's buffers are reserved: a reader holding a turn then
    /// waits for nothing but the network (bounded by the call timeout).
    pub async fn call_turn(&self) -> OwnedSemaphorePermit {
        self.calls.clone().acquire_owned().await.expect("the call semaphore is never closed")
    }

    /// Bytes reserved by readers now.
    pub fn in_use(&self) -> usize {
        self.bytes - self.pool.available_permits() * KIB
    }
}

/// A shard reader's buffers for its GetRecords calls, and the records of
/// the last call. Attached to each call's request (see
/// [`crate::kinesis::get_records`]); the connector fills it.
#[derive(Debug, Clone, Default)]
pub struct RecordsSlot(Arc<Mutex<Slot>>);

#[derive(Debug, Default)]
struct Slot {
    /// The last response body; its allocation is reused.
    body: Vec<u8>,
    /// Decoded payloads; reclaimed once the last call's records are dropped.
    arena: Arena,
    /// The last call's records and their payload bytes, until taken.
    decoded: Option<(Vec<KinesisRecord>, usize)>,
    /// The pool, and this reader's share of it (covering `body`, `arena` and
    /// the call in flight); `None` without a pool (tests, `schema infer`).
    pool: Option<Arc<Semaphore>>,
    held: Option<OwnedSemaphorePermit>,
    /// What the last page needed (body and payloads).
    last_need: usize,
    /// The last call's body outgrew its share and the pool had no more.
    overflowed: bool,
}

impl Slot {
    fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits() * KIB)
    }

    /// Takes `bytes` more from the pool if it has them now.
    fn try_grow(&mut self, bytes: usize) -> bool {
        let Some(pool) = &self.pool else { return true };
        let want = bytes.div_ceil(KIB) as u32;
        match pool.clone().try_acquire_many_owned(want) {
            Ok(more) => {
                match &mut self.held {
                    Some(held) => held.merge(more),
                    None => self.held = Some(more),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// What a page of `body_len` bytes of JSON needs: the body and its decoded
/// payloads (3/4 of the base64, at most).
fn need_of(body_len: usize) -> usize {
    body_len + body_len / 4 * 3
}

impl RecordsSlot {
    /// A slot whose buffers come from `pool`.
    pub fn with_pool(pool: &ReadBuffers) -> Self {
        let slot = Slot { pool: Some(pool.pool.clone()), ..Slot::default() };
        RecordsSlot(Arc::new(Mutex::new(slot)))
    }

    /// The records the last call decoded, if it decoded them here.
    pub fn take(&self) -> Option<(Vec<KinesisRecord>, usize)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).decoded.take()
    }

    /// Whether the last call failed because its body outgrew the pool (it
    /// is then fetched again at once, with [`RecordsSlot::reserve_full`]).
    pub fn take_overflow(&self) -> bool {
        std::mem::take(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner).overflowed)
    }

    /// Reserves what the next call likely needs: twice the last page.
    pub async fn reserve(&self) {
        let need = {
            let slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            (slot.last_need * 2).clamp(MIN_CALL_BYTES, MAX_CALL_BYTES)
        };
        self.reserve_bytes(need).await;
    }

    /// Reserves what any page may need.
    pub async fn reserve_full(&self) {
        self.reserve_bytes(MAX_CALL_BYTES).await;
    }

    async fn reserve_bytes(&self, need: usize) {
        let pool = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(pool) = slot.pool.clone() else { return };
            let held = slot.held_bytes();
            if held >= need || slot.try_grow(need - held) {
                return;
            }
            // Never wait while holding permits: give them (and the buffers
            // they cover) back, then wait for the whole need.
            slot.held = None;
            slot.body = Vec::new();
            slot.arena = Arena::default();
            pool
        };
        let permit = pool.acquire_many_owned(need.div_ceil(KIB) as u32).await.expect("the pool is never closed");
        self.0.lock().unwrap_or_else(PoisonError::into_inner).held = Some(permit);
    }

    /// After the last page's records went into the batch: keeps buffers
    /// (and permits) for a page like the last one, and gives the rest back,
    /// so an idle reader holds little.
    pub fn settle(&self) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.pool.is_none() {
            return;
        }
        let keep = slot.last_need;
        slot.body.clear();
        slot.body.shrink_to(keep);
        if slot.arena.capacity() > keep {
            slot.arena = Arena::default();
        }
        let keep_permits = (slot.body.capacity() + slot.arena.capacity()).div_ceil(KIB);
        if keep_permits == 0 {
            slot.held = None;
        } else if let Some(held) = &mut slot.held
            && held.num_permits() > keep_permits
        {
            drop(held.split(held.num_permits() - keep_permits));
        }
    }

    /// Reads a successful GetRecords response body, keeps its records and
    /// leaves the response with an empty `Records` array.
    async fn decode_response(&self, response: &mut HttpResponse) -> Result<(), ConnectorError> {
        let expected = response
            .headers()
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_CALL_BYTES);
        let (mut body, mut arena) = {
            let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            slot.decoded = None;
            (std::mem::take(&mut slot.body), std::mem::take(&mut slot.arena))
        };
        body.clear();
        let mut stream = std::mem::replace(response.body_mut(), SdkBody::taken());
        let mut covered = 0;
        while let Some(frame) = stream.frame().await {
            if let Ok(data) = frame.map_err(ConnectorError::io)?.into_data() {
                let need = need_of(expected.max(body.len() + data.len()));
                if need > covered {
                    // Before the bytes are kept: the page must fit the share.
                    let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
                    let held = slot.held_bytes();
                    if need > held && !slot.try_grow(need - held) {
                        slot.overflowed = true;
                        slot.held = None;
                        return Err(ConnectorError::other("read_buffer_mb is used up by other readers".into(), None));
                    }
                    covered = slot.held_bytes().max(need);
                    if slot.pool.is_some() && body.capacity() < expected {
                        body.reserve_exact(expected - body.len());
                    }
                }
                body.extend_from_slice(&data);
            }
        }
        let decoded = decode(&body, &mut arena);
        *response.body_mut() = SdkBody::from(match &decoded {
            Ok(page) => [&body[..page.records_span.start], b"[]", &body[page.records_span.end..]].concat(),
            Err(e) => {
                tracing::debug!(error = %e, "GetRecords body left to the SDK");
                body.clone()
            }
        });
        response.headers_mut().remove("content-length");
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.last_need = need_of(body.len());
        slot.decoded = decoded.ok().map(|page| (page.records, page.bytes));
        slot.body = body;
        slot.arena = arena;
        Ok(())
    }
}

/// The consumer's Kinesis client: [`shardlake::aws::kinesis_config`] with
/// GetRecords bodies decoded here, each attempt bounded by `timeouts.call`.
pub fn kinesis_client(config: &aws_config::SdkConfig, timeouts: &shardlake::aws::Timeouts) -> aws_sdk_kinesis::Client {
    let inner = config.http_client().unwrap_or_else(default_https_client);
    let conf = shardlake::aws::kinesis_config(config, None)
        .http_client(decoding_http_client(inner))
        .timeout_config(timeouts.call_config());
    aws_sdk_kinesis::Client::from_conf(conf.build())
}

/// The SDK's default HTTPS client (rustls with aws-lc, proxies from the
/// environment), which it builds only when no client is given.
fn default_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    use aws_smithy_http_client::{Builder, ConnectorBuilder, proxy::ProxyConfig};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut builder = ConnectorBuilder::default().tls_provider(Provider::Rustls(CryptoMode::AwsLc));
        builder.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            builder.set_sleep_impl(components.sleep_impl());
        }
        builder.set_proxy_config(Some(ProxyConfig::from_env()));
        builder.build()
    })
}

/// An HTTP client for the Kinesis SDK client that decodes the bodies of
/// GetRecords calls carrying a [`RecordsSlot`]; every other call passes
/// through `inner` unchanged.
fn decoding_http_client(inner: SharedHttpClient) -> SharedHttpClient {
    http_client_fn(move |settings, components| {
        SharedHttpConnector::new(DecodingConnector { inner: inner.http_connector(settings, components) })
    })
}

#[derive(Debug)]
struct DecodingConnector {
    inner: SharedHttpConnector,
}

impl HttpConnector for DecodingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let Some(slot) = request.extension::<RecordsSlot>().cloned() else {
            return self.inner.call(request);
        };
        let response = self.inner.call(request);
        HttpConnectorFuture::new(async move {
            let mut response = response.await?;
            if response.status().is_success() {
                slot.decode_response(&mut response).await?;
            }
            Ok(response)
        })
    }
}

/// Why a body was left to the SDK.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not UTF-8")]
    Utf8,
    #[error("{0}")]
    Syntax(SyntaxError),
    #[error("record {0}: Data is not base64")]
    Base64(usize),
    #[error("record {0}: {1} is missing")]
    Missing(usize, &'static str),
    #[error("no Records array")]
    NoRecords,
}

impl From<SyntaxError> for DecodeError {
    fn from(e: SyntaxError) -> Self {
        DecodeError::Syntax(e)
    }
}

/// The records of one response.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) records: Vec<KinesisRecord>,
    /// Payload bytes of `records`.
    pub(crate) bytes: usize,
    /// Where the `Records` array is in the body, brackets included.
    pub(crate) records_span: Range<usize>,
}

/// Where a reader's decoded payloads live: one allocation per page, handed
/// out as `Bytes` slices and taken back for the next page once every record
/// of the last one is dropped (the usual case: a batch keeps no payloads).
#[derive(Debug, Default)]
pub(crate) struct Arena {
    /// A handle on the last page's payloads, to take their allocation back.
    last: Bytes,
    /// The size of that allocation.
    capacity: usize,
}

impl Arena {
    /// An empty buffer with room for `capacity` bytes, in the last page's
    /// allocation when nothing holds it any more.
    fn buffer(&mut self, capacity: usize) -> Vec<u8> {
        let mut buffer = match std::mem::take(&mut self.last).try_into_mut() {
            Ok(mut reclaimed) => {
                reclaimed.clear();
                Vec::from(reclaimed)
            }
            Err(_) => Vec::new(),
        };
        buffer.reserve(capacity);
        buffer
    }

    /// Bytes allocated for payloads.
    fn capacity(&self) -> usize {
        self.capacity
    }

    /// The page's payloads, kept for [`Arena::buffer`].
    fn freeze(&mut self, buffer: Vec<u8>) -> Bytes {
        self.capacity = buffer.capacity();
        self.last = Bytes::from(buffer);
        self.last.clone()
    }
}

/// Decodes the `Records` of a GetRecords response body, payloads into
/// `arena`.
pub(crate) fn decode(body: &[u8], arena: &mut Arena) -> Result<Page, DecodeError> {
    let text = simdutf8::basic::from_utf8(body).map_err(|_| DecodeError::Utf8)?;
    let mut p = Parser::new(text);
    let mut scratch = String::new();
    let mut page = None;
    p.object_start()?;
    let mut first = true;
    while p.next_field(first)? {
        first = false;
        if p.key_is(b"Records") {
            p.peek()?;
            let start = p.offset();
            let (records, bytes) = decode_records(&mut p, arena, &mut scratch)?;
            page = Some(Page { records, bytes, records_span: start..p.offset() });
        } else {
            p.key(&mut scratch)?;
            p.skip()?;
        }
    }
    page.ok_or(DecodeError::NoRecords)
}

/// One record's fields; the payload as a range of the arena.
struct Fields {
    data: Option<Range<usize>>,
    sequence: Option<Arc<str>>,
    arrival_ms: i64,
}

fn decode_records(
    p: &mut Parser<'_>,
    arena: &mut Arena,
    scratch: &mut String,
) -> Result<(Vec<KinesisRecord>, usize), DecodeError> {
    // Base64 decodes to 3/4 of its length: the body's 3/4 holds every payload,
    // so appending never reallocates (nor zero-fills).
    let mut buffer = arena.buffer(p.remaining() / 4 * 3 + 3);
    let mut fields = Vec::new();
    p.array_start()?;
    let mut first = true;
    while p.next_element(first)? {
        first = false;
        let index = fields.len();
        let mut f = Fields { data: None, sequence: None, arrival_ms: 0 };
        p.object_start()?;
        let mut first_key = true;
        while p.next_field(first_key)? {
            first_key = false;
            if p.key_is(b"Data") {
                let encoded = match p.unescaped_string()? {
                    Some(plain) => plain,
                    None => p.string(scratch)?,
                }
                .as_bytes();
                let start = buffer.len();
                base64_simd::STANDARD.decode_append(encoded, &mut buffer).map_err(|_| DecodeError::Base64(index))?;
                f.data = Some(start..buffer.len());
            } else if p.key_is(b"SequenceNumber") {
                f.sequence = Some(Arc::from(p.string(scratch)?));
            } else if p.key_is(b"ApproximateArrivalTimestamp") {
                // Epoch seconds with a fraction, converted as the SDK does
                // (fan-out events), so both paths agree to the millisecond.
                let seconds = p.number()?.parse::<f64>().unwrap_or(0.0);
                f.arrival_ms = aws_smithy_types::DateTime::from_secs_f64(seconds).to_millis().unwrap_or(0);
            } else {
                p.key(scratch)?;
                p.skip()?;
            }
        }
        fields.push(f);
    }
    let payloads = arena.freeze(buffer);
    let mut bytes = 0;
    let records = fields
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let data = f.data.ok_or(DecodeError::Missing(i, "Data"))?;
            bytes += data.len();
            Ok(KinesisRecord {
                sequence: f.sequence.ok_or(DecodeError::Missing(i, "SequenceNumber"))?,
                data: payloads.slice(data),
                arrival_ms: f.arrival_ms,
            })
        })
        .collect::<Result<_, DecodeError>>()?;
    Ok((records, bytes))
}

#[cfg(test)]
#[path = "get_records_tests.rs"]
mod tests;
