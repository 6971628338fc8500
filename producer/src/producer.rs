//! The public handle: [`Producer`], built with [`ProducerBuilder`] from a
//! [`ProducerConfig`]. `send` checks a record, waits for room in the budget,
//! hands it to the producer's task and resolves with its [`Ack`] or a
//! [`ProduceError`] that carries the record back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use prometheus::Registry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::batch::{Outcome, Pending};
use crate::budget::{Backlog, BacklogEntry, Budget};
use crate::config::{ProducerConfig, Settings, Target};
use crate::dispatcher::{Command, Dispatcher};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::record::ProduceError;
use crate::record::{Ack, Record};
use crate::service::{Service, api};
use crate::shard_map::ShardMap;

/// Commands in the channel to the producer's task; the budget bounds the
/// records behind it.
const CHANNEL_CAPACITY: usize = 1024;

/// Builds a [`Producer`].
#[derive(Debug)]
pub struct ProducerBuilder {
    config: ProducerConfig,
    sdk_config: Option<aws_config::SdkConfig>,
    kinesis_client: Option<aws_sdk_kinesis::Client>,
    firehose_client: Option<aws_sdk_firehose::Client>,
    registry: Option<Registry>,
    retry_seed: Option<u64>,
}

impl ProducerBuilder {
    /// Uses this SDK config for the client (default: the environment, through
    /// [`shardlake_aws::client::sdk_config`]).
    pub fn sdk_config(mut self, config: aws_config::SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// Uses this Kinesis client (turn its retries off: the producer retries).
    pub fn kinesis_client(mut self, client: aws_sdk_kinesis::Client) -> Self {
        self.kinesis_client = Some(client);
        self
    }

    /// Uses this Firehose client (turn its retries off: the producer retries).
    pub fn firehose_client(mut self, client: aws_sdk_firehose::Client) -> Self {
        self.firehose_client = Some(client);
        self
    }

    /// Registers the metrics in this registry (default: a new one, see
    /// [`Producer::registry`]).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Seeds the backoff jitter, for reproducible tests.
    pub fn retry_seed(mut self, seed: u64) -> Self {
        self.retry_seed = Some(seed);
        self
    }

    /// Validates the config, reads the shard map (Kinesis) and starts the
    /// producer's task. Fails when the config is invalid or the stream's
    /// shards cannot be listed (a missing stream, no permission).
    pub async fn build(self) -> Result<Producer> {
        let settings = Arc::new(self.config.validate()?);
        let sdk_config = match (&self.sdk_config, &settings.target, &self.kinesis_client, &self.firehose_client) {
            (Some(c), ..) => Some(c.clone()),
            (None, Target::KinesisStream(_), None, _) | (None, Target::FirehoseDeliveryStream(_), _, None) => {
                Some(shardlake_aws::client::sdk_config().await)
            }
            _ => None,
        };
        let registry = self.registry.unwrap_or_default();
        let metrics = Arc::new(
            Metrics::new(&registry, settings.target.name())
                .map_err(|e| Error::Config(format!("registering the producer metrics: {e}")))?,
        );
        let (service, map) = match &settings.target {
            Target::KinesisStream(stream) => {
                let client = self.kinesis_client.unwrap_or_else(|| {
                    shardlake_aws::client::kinesis_client(sdk_config.as_ref().expect("loaded without a client"))
                });
                let shards = api::list_shards_within(&client, stream, settings.control_plane_timeout).await?;
                metrics.record_shard_map_refresh("ok");
                let map = ShardMap::from_shards(&shards);
                tracing::info!(stream, shards = map.len(), "producer started");
                (Service::Kinesis { client, stream: stream.clone() }, map)
            }
            Target::FirehoseDeliveryStream(name) => {
                let client = self.firehose_client.unwrap_or_else(|| {
                    shardlake_aws::client::firehose_client(sdk_config.as_ref().expect("loaded without a client"))
                });
                (Service::Firehose { client, delivery_stream: name.clone() }, ShardMap::default())
            }
        };
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let backlog = Arc::new(Backlog::default());
        let dispatcher =
            Dispatcher::new(settings.clone(), service, map, metrics.clone(), rx, backlog.clone(), self.retry_seed);
        let task = tokio::spawn(dispatcher.run());
        Ok(Producer {
            inner: Arc::new(Inner {
                abort: task.abort_handle(),
                tx,
                budget: Budget::new(settings.max_buffered_bytes, settings.max_buffered_records, metrics.clone()),
                backlog,
                settings,
                metrics,
                registry,
                task: Mutex::new(Some(task)),
            }),
        })
    }
}

/// An embeddable Kinesis / Firehose producer. Cheap to clone; all clones feed
/// the same task. See the [crate docs](crate) for an example.
///
/// Call [`Producer::shutdown`] (or [`Producer::shutdown_within`] with a
/// deadline) before the end. Dropping the last handle without it loses
/// nothing at once: the producer's task keeps sending the buffered and
/// in-flight records and resolving their futures. But nobody waits for it:
/// when the runtime stops first (`main` returns, the process exits), those
/// records are gone without an outcome, neither acknowledged nor handed
/// back, and records in a request in flight may or may not be stored. The
/// drop logs an error and counts them in
/// `shardlake_producer_records_buffered_at_drop_total`.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: mpsc::Sender<Command>,
    budget: Budget,
    /// Records accepted and not sent yet, for `ready`.
    backlog: Arc<Backlog>,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    registry: Registry,
    task: Mutex<Option<JoinHandle<()>>>,
    /// Ends the producer's task from any handle, even while another waits
    /// on `shutdown` (which holds the `JoinHandle`).
    abort: AbortHandle,
}

impl Drop for Inner {
    /// The last handle is gone. Without `shutdown`, records may still be
    /// buffered: the task keeps sending them, but nobody waits for it, and
    /// they are lost if the runtime stops first (e.g. `main` returns).
    fn drop(&mut self) {
        let task_running = self.task.get_mut().map(|t| t.is_some()).unwrap_or(false);
        let records = self.budget.used_records();
        if task_running && records > 0 {
            self.metrics.records_buffered_at_drop.inc_by(records as u64);
            tracing::error!(
                target = self.settings.target.name(),
                records,
                "producer dropped without shutdown() while records were buffered or in flight; \
                 they are lost if the runtime stops before they are sent: call producer.shutdown().await"
            );
        }
    }
}

/// The future result of an accepted record: its [`Ack`], or a
/// [`ProduceError`] with the record.
#[derive(Debug)]
pub struct AckFuture {
    rx: oneshot::Receiver<Outcome>,
}

impl Future for AckFuture {
    type Output = Result<Ack, ProduceError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            // `Pending` resolves itself even when dropped, so the sender
            // cannot vanish silently; keep a clear answer if it ever does.
            r.unwrap_or_else(|_| Err(ProduceError { record: Record::default(), reason: Error::ShutDown }))
        })
    }
}

impl Producer {
    /// A builder for `config`.
    pub fn builder(config: ProducerConfig) -> ProducerBuilder {
        ProducerBuilder {
            config,
            sdk_config: None,
            kinesis_client: None,
            firehose_client: None,
            registry: None,
            retry_seed: None,
        }
    }

    /// Sends a record and waits for its acknowledgement. Waits first for room
    /// in the budget when it is full. An oversize or invalid record fails at
    /// once and never enters a batch.
    pub async fn send(&self, record: Record) -> Result<Ack, ProduceError> {
        self.enqueue(record).await?.await
    }

    /// Waits until the producer can take more records without them queueing:
    /// until fewer records wait for their first send than one round of
    /// requests at the current (adaptive) concurrency holds. A feeder that
    /// calls it before each [`Producer::enqueue`] goes as fast as the stream
    /// takes records, and its records spend their TTL on the stream rather
    /// than in the producer's queue.
    pub async fn ready(&self) {
        self.inner.backlog.wait_for_room().await;
    }

    /// Hands a record to the producer, waiting for room in the budget, and
    /// returns a future for its result. Use it to keep many records in flight
    /// from one loop (see [`Producer::ready`] to pace the loop). With
    /// `ordering`, it first waits for the key's turn: while one request's
    /// worth of the key's records waits to be sent (a key sends one entry
    /// per round trip), its next record stays with the caller rather than
    /// age in the queue. The record's TTL starts after that wait (unless
    /// `ttl_start = "first_attempt"`), and includes any wait for room.
    pub async fn enqueue(&self, record: Record) -> Result<AckFuture, ProduceError> {
        let (hash, size) = match self.check(&record) {
            Ok(v) => v,
            Err(reason) => return Err(self.refuse(record, reason)),
        };
        if self.inner.settings.ordering {
            let turn_bytes = self.inner.settings.aggregation_max_bytes.unwrap_or(0);
            self.inner.backlog.wait_for_key(&record.partition_key, turn_bytes).await;
        }
        let enqueued = Instant::now();
        let permit = match self.inner.budget.acquire(size).await {
            Ok(p) => p,
            Err(reason) => return Err(self.refuse(record, reason)),
        };
        let (mut pending, rx) = Pending::new(record, hash, size, enqueued, self.inner.settings.ttl, permit);
        pending.unsent = Some(self.backlog_entry(&pending.record, size));
        if let Err(mpsc::error::SendError(Command::Record(p))) = self.inner.tx.send(Command::Record(pending)).await {
            p.fail(Error::ShutDown);
        }
        Ok(AckFuture { rx })
    }

    /// Like [`Producer::enqueue`], but fails with [`Error::BufferFull`]
    /// instead of waiting when the budget is used up. It never waits for a
    /// key's turn: with `ordering`, a hot key's records queue (and their TTL
    /// runs) behind each other.
    pub fn try_send(&self, record: Record) -> Result<AckFuture, ProduceError> {
        let enqueued = Instant::now();
        let (hash, size) = match self.check(&record) {
            Ok(v) => v,
            Err(reason) => return Err(self.refuse(record, reason)),
        };
        let permit = match self.inner.budget.try_acquire(size) {
            Ok(p) => p,
            Err(reason) => return Err(self.refuse(record, reason)),
        };
        let (mut pending, rx) = Pending::new(record, hash, size, enqueued, self.inner.settings.ttl, permit);
        pending.unsent = Some(self.backlog_entry(&pending.record, size));
        match self.inner.tx.try_send(Command::Record(pending)) {
            Ok(()) => Ok(AckFuture { rx }),
            Err(mpsc::error::TrySendError::Full(Command::Record(mut p))) => {
                let record = std::mem::take(&mut p.record);
                Err(self.refuse(record, Error::BufferFull { limit: "the producer's command channel".into() }))
            }
            Err(mpsc::error::TrySendError::Closed(Command::Record(mut p))) => {
                Err(self.refuse(std::mem::take(&mut p.record), Error::ShutDown))
            }
            Err(_) => unreachable!("a record command comes back as sent"),
        }
    }

    /// The record's place in the backlog (per key with ordering).
    fn backlog_entry(&self, record: &Record, size: usize) -> BacklogEntry {
        let key = self.inner.settings.ordering.then_some((record.partition_key.as_str(), size));
        self.inner.backlog.enter(key)
    }

    fn refuse(&self, record: Record, reason: Error) -> ProduceError {
        // A full buffer is backpressure: the caller holds the record and
        // decides, so it is no failure of the producer.
        if matches!(reason, Error::BufferFull { .. }) {
            self.inner.metrics.buffer_full.inc();
        } else {
            self.inner.metrics.record_failed(reason.label());
        }
        ProduceError { record, reason }
    }

    /// Validates a record for the target: its hash key and counted size.
    fn check(&self, record: &Record) -> Result<(u128, usize)> {
        let settings = &self.inner.settings;
        let (hash, size) = match settings.target {
            Target::KinesisStream(_) => (record.validate_for_kinesis()?, record.kinesis_size()),
            Target::FirehoseDeliveryStream(_) => (0, record.data.len()),
        };
        if size > settings.max_record_bytes {
            return Err(Error::RecordTooLarge {
                size,
                limit: settings.max_record_bytes,
                target: settings.target.to_string(),
            });
        }
        Ok((hash, size))
    }

    /// Sends everything buffered now, without waiting for `linger`, and
    /// returns when every record accepted before the call is resolved.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Command::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Stops accepting records (later sends fail with [`Error::ShutDown`]),
    /// sends everything buffered and returns when every accepted record is
    /// resolved (delivered, failed, or expired at its TTL).
    pub async fn shutdown(&self) {
        self.inner.budget.close();
        let _ = self.inner.tx.send(Command::Shutdown).await;
        let task = self.inner.task.lock().unwrap().take();
        // A task ended by `abort` is no failure.
        if let Some(task) = task
            && let Err(e) = task.await
            && !e.is_cancelled()
        {
            tracing::error!(error = %e, "producer task failed");
        }
    }

    /// [`Producer::shutdown`] within `deadline`: past it, the producer
    /// [aborts](Producer::abort). Returns whether every record was resolved
    /// by the drain (`false`: the deadline ran out).
    pub async fn shutdown_within(&self, deadline: std::time::Duration) -> bool {
        if tokio::time::timeout(deadline, self.shutdown()).await.is_ok() {
            return true;
        }
        tracing::warn!(
            target = self.inner.settings.target.name(),
            ?deadline,
            "the producer did not drain within the shutdown deadline; abandoning what is left"
        );
        self.abort();
        false
    }

    /// Stops at once: no more requests are sent, and every record not
    /// resolved yet comes back to its future, without waiting for answers.
    /// A record in a request still in flight (or in one that timed out
    /// earlier) resolves with [`Error::UnknownOutcome`]: the request may
    /// have been applied. Any other resolves with [`Error::ShutDown`]: it
    /// was not stored. Later sends fail with [`Error::ShutDown`]. The futures
    /// resolve as the runtime drops the producer's tasks, within
    /// milliseconds, so await them after this call.
    pub fn abort(&self) {
        self.inner.budget.close();
        self.inner.abort.abort();
    }

    /// The registry holding the producer's metrics, for the application's
    /// `/metrics` endpoint.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// The producer's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The validated settings in force.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// Bytes and records buffered or in flight (the budget in use).
    pub fn buffered(&self) -> (usize, usize) {
        (self.inner.budget.used_bytes(), self.inner.budget.used_records())
    }
}
