//! One task per shard: read it with GetRecords (or, with enhanced fan-out,
//! from SubscribeToShard events), feed the shard batch, and flush by the
//! exactly-once protocol (intent, upload, commit). A pending intent found at
//! start is replayed first: exactly its range is re-read and rebuilt into the
//! identical files before reading goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Commit, Intent, compare_sequences};
use futures::StreamExt;
use shardlake::pipeline::OutputKind;
use shardlake::retry::{Backoff, GaveUp, RetryClass, RetryPolicy, Retryable};
use shardlake::schema::Column;
use tokio_util::sync::CancellationToken;

use crate::config::InitialPosition;
use crate::kinesis::get_records::RecordsSlot;
use crate::kinesis::{self, Fetched, KinesisError, KinesisRecord, StartAt};
use crate::lake::batch::{FlushReason, Pushed, ShardBatch, should_flush_by_memory};
use crate::retry::{Dependency, IN_PLACE, Report, always_transient, retry};
use crate::shard::Context;

/// Objects of one batch uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Back-off of Kinesis calls that failed (other than throttles): retried
/// until they succeed or the worker stops.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(200), cap: Duration::from_secs(30) };

/// Bytes of partition paths waiting for the catalog that a shard's
/// checkpoint keeps, at most: a DynamoDB item holds 400 KB, and the rest of
/// the item (lease, checkpoint, intent) needs well under the remainder.
const MAX_PENDING_BYTES: usize = 256 * 1024;

/// Failed subscriptions in a row after which a shard is read with
/// GetRecords instead (until its reader restarts).
const FAN_OUT_FALLBACK_AFTER: u32 = 5;

/// How a shard reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardExit {
    /// The shard is closed and every record of it is committed.
    Ended,
    /// The worker is stopping; everything read is committed.
    Stopped,
    /// Fleet mode: another worker took the shard's lease. The unflushed
    /// batch was dropped uncommitted; the new owner reads it again.
    Lost,
}

/// The lease a reader works under (fleet mode).
pub struct ShardLease {
    /// The lease counter its writes are fenced on; `None` for a single
    /// worker. Never the worker's current counter: if the worker loses the
    /// shard and takes it back, this reader's batch predates the move.
    pub counter: Option<u64>,
    /// Cancelled when that lease is found lost: stop at once, commit nothing.
    pub lost: CancellationToken,
}

/// A reader's enhanced fan-out subscription.
struct FanOut {
    /// The registered stream consumer.
    consumer_arn: String,
    /// The open subscription; `None` until (re)subscribed.
    subscription: Option<kinesis::Subscription>,
    /// Where the next subscription starts: the reader's start, then after
    /// each event's continuation sequence number (no gap, no overlap).
    next_start: StartAt,
    /// Subscriptions that failed in a row.
    failures: u32,
}

struct Reader {
    ctx: Arc<Context>,
    shard: String,
    cancel: CancellationToken,
    /// The lease counter writes are fenced on (fleet mode).
    lease: Option<u64>,
    /// Cancelled when that lease is found lost.
    lost: CancellationToken,
    batch: ShardBatch,
    /// The shard iterator of the next GetRecords call (polling).
    iterator: String,
    /// Buffers reused by every GetRecords call of this reader.
    records: RecordsSlot,
    /// Enhanced fan-out state; `None` when polling.
    fan_out: Option<FanOut>,
    /// The last record read into the batch or committed: an expired iterator
    /// resumes after it.
    last_read: Option<String>,
    /// Where reading started; an iterator that expires before any record was
    /// read is renewed from here.
    start: StartAt,
    /// A pending intent being replayed, and whether its first record was seen.
    replay: Option<(Intent, bool)>,
    /// The wait after failed Kinesis calls, growing over failures in a row.
    backoff: Backoff,
    /// Partitions committed but not known to be in the catalog yet; each
    /// commit carries them until they are.
    catalog_pending: Vec<String>,
    /// How many of them the checkpoint holds (it is rewritten smaller once
    /// some are confirmed, even when no batch commits).
    stored_pending: usize,
    /// The catalog's confirmations when they were last compared with the
    /// pending list: the comparison runs only after registrations answered.
    pending_checked: u64,
}

/// Reads `shard` until it ends, `cancel` fires (final flush) or the lease is
/// lost (no flush).
pub async fn read_shard(
    ctx: Arc<Context>,
    shard: String,
    lease: ShardLease,
    cancel: CancellationToken,
) -> anyhow::Result<ShardExit> {
    let state = tokio::select! {
        state = ctx.checkpoints.load(&shard) => state?,
        _ = cancel.cancelled() => return Ok(ShardExit::Stopped),
    };
    if let Some(catalog) = &ctx.catalog {
        // Committed by an earlier reader that may have crashed before registering.
        catalog.submit(&state.catalog_pending);
    }
    if state.ended {
        return Ok(ShardExit::Ended);
    }
    let start = match (&state.intent, &state.checkpoint) {
        (Some(intent), _) => {
            tracing::info!(shard, first = intent.first, last = intent.last, "replaying a pending batch");
            StartAt::At(intent.first.clone())
        }
        (None, Some(cp)) => StartAt::After(cp.clone()),
        (None, None) => match ctx.settings.config.initial_position {
            InitialPosition::TrimHorizon => StartAt::TrimHorizon,
            InitialPosition::Latest => StartAt::Latest,
            InitialPosition::AtTimestamp => StartAt::Timestamp(ctx.settings.initial_timestamp_ms.unwrap_or(0)),
        },
    };
    // A replay is rebuilt with the schema version its files were built with.
    let version = match &state.intent {
        Some(intent) => ctx.schemas.version(intent.schema_version, &ctx.checkpoints).await?,
        None => ctx.schemas.current(),
    };
    let watch = if state.intent.is_some() { None } else { ctx.schemas.watch(&version) };
    let mut reader = Reader {
        batch: ShardBatch::new(&version, watch, &ctx.settings.config.stream, &shard),
        records: RecordsSlot::with_pool(&ctx.read_buffers),
        ctx,
        shard,
        cancel,
        lease: lease.counter,
        lost: lease.lost,
        iterator: String::new(),
        fan_out: None,
        last_read: state.checkpoint,
        start: start.clone(),
        replay: state.intent.map(|i| (i, false)),
        backoff: Backoff::new(BACKOFF),
        stored_pending: state.catalog_pending.len(),
        pending_checked: 0,
        catalog_pending: state.catalog_pending,
    };
    reader.ctx.metrics.add_shards_reading(1);
    reader.ctx.metrics.shard_started(&reader.shard);
    reader.ctx.health.reader_started(&reader.shard);
    let result = match reader.run(start).await {
        Err(e) if crate::fleet::Leases::is_lost(&e) => Ok(reader.dropped_on_lost_lease()),
        r => r,
    };
    reader.ctx.metrics.add_shards_reading(-1);
    reader.ctx.budget.remove(&reader.shard);
    result
}

impl Reader {
    async fn run(&mut self, start: StartAt) -> anyhow::Result<ShardExit> {
        let start = match &start {
            StartAt::After(checkpoint) if self.trimmed_past(checkpoint).await => StartAt::TrimHorizon,
            _ => start,
        };
        match self.ctx.fan_out.clone() {
            Some(consumer_arn) => {
                self.fan_out = Some(FanOut { consumer_arn, subscription: None, next_start: start, failures: 0 });
            }
            None => {
                let Some(iterator) = self.iterator_from(start).await? else { return self.stop().await };
                self.iterator = iterator;
            }
        }
        let polling = self.ctx.settings.config.polling.clone();
        let mut empty_polls: u32 = 0;
        loop {
            if self.lost.is_cancelled() {
                return Ok(self.dropped_on_lost_lease());
            }
            if self.cancel.is_cancelled() {
                return self.stop().await;
            }
            let called = Instant::now();
            let Some(fetched) = self.fetch(polling.max_records_per_call).await? else { return self.stop().await };
            let m = self.ctx.metrics.clone();
            m.record_read(&self.shard, fetched.records.len(), fetched.bytes, called.elapsed().as_secs_f64());
            let had_records = !fetched.records.is_empty();
            self.ctx.health.read_ok(&self.shard, fetched.millis_behind_latest, had_records);
            if !self.push(fetched.records).await? {
                // Stopped while the schema evolved; the batch before it is committed.
                return Ok(if self.lost.is_cancelled() { self.dropped_on_lost_lease() } else { ShardExit::Stopped });
            }
            self.records.settle();
            self.shrink_stored_pending().await?;
            let Some(next) = fetched.next else {
                tracing::info!(shard = self.shard, "shard ended");
                self.flush(FlushReason::ShardEnd, true).await?;
                return Ok(ShardExit::Ended);
            };
            match &mut self.fan_out {
                Some(f) => f.next_start = StartAt::After(next),
                None => self.iterator = next,
            }
            if self.replay.is_none() {
                let reason = self.batch.due(&self.ctx.thresholds).or_else(|| {
                    let (total, largest) = self.ctx.budget.update(&self.shard, self.batch.memory());
                    m.set_buffered_bytes(total);
                    should_flush_by_memory(total, self.ctx.budget.limit, self.batch.memory(), largest)
                        .then_some(FlushReason::Memory)
                });
                if let Some(reason) = reason {
                    self.flush(reason, false).await?;
                }
            }
            if self.fan_out.is_some() {
                // Events are pushed at the service's pace: no polling interval.
                continue;
            }
            let caught_up = fetched.millis_behind_latest == Some(0) || !had_records;
            // A shard that keeps answering empty with nothing buffered is
            // polled less and less often (up to `max_idle_interval`), so
            // hundreds of quiet shards cost little CPU; a batch waiting for
            // its age flush keeps the plain idle interval.
            empty_polls = if had_records || !self.batch.is_empty() { 0 } else { empty_polls.saturating_add(1) };
            let wait = if !caught_up {
                polling.interval
            } else {
                idle_wait(polling.idle_interval, polling.max_idle_interval, empty_polls)
            };
            let pause = wait.saturating_sub(called.elapsed());
            tokio::select! {
                _ = self.cancel.cancelled() => {}
                _ = self.lost.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// The next records: one GetRecords call, or the next fan-out event.
    /// Failures are backed off and retried; `None` when stopped meanwhile.
    async fn fetch(&mut self, limit: i32) -> anyhow::Result<Option<Fetched>> {
        loop {
            if self.cancel.is_cancelled() || self.lost.is_cancelled() {
                return Ok(None);
            }
            let result = match self.fan_out {
                Some(_) => self.fan_out_event().await,
                None => {
                    // A call in flight is abandoned on shutdown: nothing of it
                    // was read into the batch, and the iterator stays.
                    let call = async {
                        self.records.reserve().await;
                        let _turn = self.ctx.read_buffers.call_turn().await;
                        kinesis::get_records(&self.ctx.kinesis, &self.iterator, limit, &self.records).await
                    };
                    let result = tokio::select! {
                        result = call => result.map(Some),
                        _ = self.cancel.cancelled() => return Ok(None),
                        _ = self.lost.cancelled() => return Ok(None),
                    };
                    if result.is_err() && self.records.take_overflow() {
                        // The page outgrew the reader's share of the read
                        // buffers: wait for a full share and fetch it again.
                        tokio::select! {
                            _ = self.records.reserve_full() => {}
                            _ = self.cancel.cancelled() => return Ok(None),
                            _ = self.lost.cancelled() => return Ok(None),
                        }
                        continue;
                    }
                    result
                }
            };
            match result {
                Ok(Some(fetched)) => {
                    self.backoff.reset();
                    return Ok(Some(fetched));
                }
                // A subscription ended (they last 5 minutes): renew it at once.
                Ok(None) => {}
                Err(e) => {
                    let give_up = self.fan_out.as_ref().is_some_and(|f| {
                        f.failures >= FAN_OUT_FALLBACK_AFTER
                            || matches!(e, KinesisError::Fatal(_) | KinesisError::NotFound(_))
                    });
                    let went_on =
                        if give_up { self.fall_back_to_polling(&e).await? } else { self.handle_read_error(e).await? };
                    if !went_on {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Waits for the next event of the shard's subscription, subscribing
    /// first when there is none. `Ok(None)`: the subscription ended, or the
    /// reader is stopping.
    async fn fan_out_event(&mut self) -> Result<Option<Fetched>, KinesisError> {
        let ctx = self.ctx.clone();
        let f = self.fan_out.as_mut().expect("fan-out mode");
        if f.subscription.is_none() {
            match kinesis::subscribe(&ctx.kinesis, &f.consumer_arn, &self.shard, &f.next_start).await {
                Ok(subscription) => {
                    ctx.metrics.record_subscription("subscribed");
                    f.subscription = Some(subscription);
                }
                Err(e) => {
                    ctx.metrics.record_subscription("failed");
                    f.failures += 1;
                    return Err(e);
                }
            }
        }
        let subscription = f.subscription.as_mut().expect("subscribed above");
        let event = tokio::select! {
            event = kinesis::next_event(subscription) => event,
            _ = self.cancel.cancelled() => return Ok(None),
            _ = self.lost.cancelled() => return Ok(None),
        };
        match event {
            Ok(Some(fetched)) => {
                f.failures = 0;
                Ok(Some(fetched))
            }
            Ok(None) => {
                f.subscription = None;
                Ok(None)
            }
            Err(e) => {
                ctx.metrics.record_subscription("failed");
                f.subscription = None;
                f.failures += 1;
                Err(e)
            }
        }
    }

    /// Enhanced fan-out keeps failing for this shard: read it with
    /// GetRecords from where the subscription would have started.
    /// `Ok(false)` when stopped meanwhile.
    async fn fall_back_to_polling(&mut self, why: &KinesisError) -> anyhow::Result<bool> {
        let f = self.fan_out.take().expect("fan-out mode");
        self.ctx.metrics.record_subscription("fallback");
        tracing::warn!(
            shard = self.shard,
            failures = f.failures,
            error = %why,
            "enhanced fan-out keeps failing; reading this shard with GetRecords until its reader restarts"
        );
        Ok(match self.iterator_from(f.next_start).await? {
            Some(iterator) => {
                self.iterator = iterator;
                true
            }
            None => false,
        })
    }

    /// Whether the checkpointed record is gone from the shard (its oldest
    /// record comes after it): then records after the checkpoint may have
    /// aged out unread, which is reported (log, counter, `/healthz` until
    /// restart) and reading starts at the trim horizon. A failed check is
    /// logged and reading goes on as usual.
    async fn trimmed_past(&mut self, checkpoint: &str) -> bool {
        let ctx = self.ctx.clone();
        let stream = &ctx.settings.config.stream;
        let oldest = async {
            let mut iterator =
                kinesis::shard_iterator(&ctx.kinesis, stream, &self.shard, &StartAt::TrimHorizon).await?;
            // An old shard's first pages can be empty: look a few pages on.
            for _ in 0..5 {
                self.records.reserve().await;
                let page = kinesis::get_records(&ctx.kinesis, &iterator, 1, &self.records).await;
                self.records.settle();
                let page = page?;
                if let Some(first) = page.records.into_iter().next() {
                    return Ok(Some(first));
                }
                match page.next {
                    Some(next) if page.millis_behind_latest != Some(0) => iterator = next,
                    _ => break,
                }
            }
            Ok::<_, KinesisError>(None)
        };
        let oldest = tokio::select! {
            oldest = oldest => oldest,
            _ = self.cancel.cancelled() => return false,
            _ = self.lost.cancelled() => return false,
        };
        let first = match oldest {
            Ok(Some(first)) => first,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, "could not read the trim horizon to check for records trimmed unread");
                return false;
            }
        };
        if crate::checkpoint::compare_sequences(&first.sequence, checkpoint) != std::cmp::Ordering::Greater {
            return false;
        }
        let arrived = shardlake::time::format_rfc3339_millis(first.arrival_ms);
        tracing::error!(
            shard = self.shard,
            checkpoint,
            trim_horizon = %first.sequence,
            oldest_arrival = arrived,
            "the checkpointed record is no longer in the stream: records after it were trimmed before they were \
             read and are missing from the lake (the worker was stopped or behind for longer than the stream's \
             retention); reading resumes at the trim horizon. Restart the worker to clear /healthz"
        );
        ctx.metrics.record_trimmed_unread(&self.shard);
        ctx.health.lost(
            &self.shard,
            &format!(
                "records after checkpoint {checkpoint} were trimmed from the stream unread (the oldest left is \
                 {}, arrived {arrived}); restart to acknowledge",
                first.sequence
            ),
        );
        true
    }

    /// A shard iterator, retried with back-off; `None` when cancelled.
    async fn iterator_from(&mut self, start: StartAt) -> anyhow::Result<Option<String>> {
        let ctx = self.ctx.clone();
        let stream = &ctx.settings.config.stream;
        let mut start = start;
        loop {
            let call = async {
                let _turn = ctx.read_buffers.call_turn().await;
                kinesis::shard_iterator(&ctx.kinesis, stream, &self.shard, &start).await
            };
            let result = tokio::select! {
                result = call => result,
                _ = self.cancel.cancelled() => return Ok(None),
                _ = self.lost.cancelled() => return Ok(None),
            };
            match result {
                Ok(it) => {
                    self.backoff.reset();
                    return Ok(Some(it));
                }
                Err(KinesisError::Fatal(message)) if matches!(start, StartAt::At(_)) && self.replay.is_some() => {
                    // The pending range's first record is past the retention period.
                    tracing::error!(
                        shard = self.shard,
                        error = message,
                        "cannot replay the pending batch from its first record (aged out of the stream?); \
                         replaying what is left of it from the trim horizon"
                    );
                    ctx.metrics.record_unreplayable(&self.shard);
                    start = StartAt::TrimHorizon;
                }
                Err(e) => {
                    if !self.handle_read_error(e).await? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Backs off after a failed call, renewing an expired iterator. `Ok(false)`
    /// when cancelled during the back-off; `Err` for failures that need the user.
    async fn handle_read_error(&mut self, e: KinesisError) -> anyhow::Result<bool> {
        let m = &self.ctx.metrics;
        match &e {
            KinesisError::ExpiredIterator => {
                m.record_iterator_renewal(&self.shard);
                let start = match &self.last_read {
                    Some(seq) => StartAt::After(seq.clone()),
                    None => self.start.clone(),
                };
                tracing::info!(shard = self.shard, "shard iterator expired, renewing");
                return Ok(match Box::pin(self.iterator_from(start)).await? {
                    Some(it) => {
                        self.iterator = it;
                        true
                    }
                    None => false,
                });
            }
            KinesisError::Throttled(_) => {
                m.record_throttle(&self.shard);
                self.ctx.health.throttled(&self.shard, &e);
                tracing::debug!(shard = self.shard, error = %e, "read throttled");
            }
            KinesisError::Transient(_) => {
                m.record_read_error("transient");
                self.ctx.health.failed(&self.shard, "read", &e);
            }
            KinesisError::NotFound(_) | KinesisError::Fatal(_) => {
                m.record_read_error(if matches!(e, KinesisError::NotFound(_)) { "not_found" } else { "fatal" });
            }
        }
        let Some(delay) = self.backoff.after(e.retry_class()) else {
            return Err(anyhow::Error::new(e).context(format!("reading shard {}", self.shard)));
        };
        if matches!(e, KinesisError::Transient(_)) {
            tracing::warn!(shard = self.shard, error = %e, delay_ms = delay.as_millis() as u64, "kinesis call failed, backing off");
        }
        Ok(self.pause(delay).await)
    }

    /// Sleeps `delay`; `false` when stopped or the lease lost meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.cancel.cancelled() => false,
            _ = self.lost.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Feeds records into the batch off the async threads; while replaying,
    /// flushes exactly at the intent's last record. A record with fields
    /// that become columns ends the batch: it is committed, the schema
    /// evolves, and the record starts the next batch. `false` when the
    /// reader stopped meanwhile (records after that point are not read).
    async fn push(&mut self, mut records: Vec<KinesisRecord>) -> anyhow::Result<bool> {
        // The columns the last evolution was for: a record that asks for
        // them again is taken as it is (its fields stay in `_extra`).
        let mut evolved_for: Option<Vec<Column>> = None;
        while !records.is_empty() {
            let mut rest = Vec::new();
            let mut replay_done = false;
            if let Some((intent, seen_first)) = &mut self.replay {
                if !*seen_first {
                    *seen_first = true;
                    if *records[0].sequence != *intent.first {
                        tracing::error!(
                            shard = self.shard,
                            expected = intent.first,
                            found = &*records[0].sequence,
                            "the pending batch's first records aged out of the stream; its files cannot be rebuilt \
                             exactly and the lake may hold some of them twice"
                        );
                        self.ctx.metrics.record_unreplayable(&self.shard);
                    }
                }
                if let Some(i) = records.iter().position(|r| compare_sequences(&r.sequence, &intent.last).is_ge()) {
                    rest = records.split_off(i + 1);
                    replay_done = true;
                }
            }
            let empty = self.empty_batch();
            let mut batch = std::mem::replace(&mut self.batch, empty);
            let schemas = &self.ctx.schemas;
            batch.set_evolve_open(schemas.may_store() || schemas.current().number > batch.version());
            self.last_read = records.last().map(|r| r.sequence.to_string()).or(self.last_read.take());
            let retried = evolved_for.take();
            let (batch, records_back, stop) = tokio::task::spawn_blocking(move || {
                for (i, r) in records.iter().enumerate() {
                    match batch.push(r)? {
                        Pushed::Added => {}
                        Pushed::NeedsColumns(columns) if retried.as_ref() == Some(&columns) => {
                            batch.take_as_is(r)?;
                        }
                        Pushed::NeedsColumns(columns) => return Ok((batch, records, Some((i, columns)))),
                    }
                }
                Ok::<_, shardlake::Error>((batch, records, None))
            })
            .await
            .expect("batch task panicked")?;
            self.batch = batch;
            records = records_back;
            let counts = self.batch.take_watch_counts();
            self.ctx.metrics.record_fields_in_extra("deferred", counts.deferred);
            self.ctx.metrics.record_fields_in_extra("refused", counts.refused.len() as u64);
            if !counts.refused.is_empty() {
                tracing::warn!(
                    shard = self.shard,
                    fields = counts.refused.join(","),
                    max_type_chars = shardlake::schema::MAX_COLUMN_TYPE_CHARS,
                    "fields whose column type would be too long stay in _extra"
                );
                self.ctx.schemas.refuse(counts.refused);
            }
            if let Some((i, columns)) = stop {
                // Nothing of a replay's range reaches here: replays have no watch.
                let mut waiting = records.split_off(i);
                waiting.extend(rest);
                self.flush(FlushReason::Schema, false).await?;
                let from = self.batch.version();
                let cancels = [&self.cancel, &self.lost];
                let Some(version) =
                    crate::lake::evolve::evolve(&self.ctx.evolution(), &self.shard, from, &columns, cancels).await
                else {
                    return Ok(false);
                };
                self.batch = self.batch_of(&version);
                evolved_for = Some(columns);
                records = waiting;
                continue;
            }
            if replay_done {
                self.flush(FlushReason::Replay, false).await?;
                self.replay = None;
            }
            records = rest;
        }
        Ok(true)
    }

    /// A new batch of the current schema version.
    fn empty_batch(&self) -> ShardBatch {
        self.batch_of(&self.ctx.schemas.current())
    }

    fn batch_of(&self, version: &crate::lake::evolve::Version) -> ShardBatch {
        let watch = self.ctx.schemas.watch(version);
        ShardBatch::new(version, watch, &self.ctx.settings.config.stream, &self.shard)
    }

    /// The lease moved: the batch is dropped, never committed (the store
    /// would refuse it); the new owner reads it again from the checkpoint or
    /// replays the pending intent.
    fn dropped_on_lost_lease(&mut self) -> ShardExit {
        let dropped = self.batch.range().map_or(0, |(_, _, records)| records);
        self.batch = self.empty_batch();
        tracing::warn!(
            shard = self.shard,
            dropped_records = dropped,
            "lease lost: dropped the unflushed batch uncommitted"
        );
        ShardExit::Lost
    }

    /// Final flush on shutdown. A replay cut short is dropped: its intent
    /// stays, and the next start replays the whole range.
    async fn stop(&mut self) -> anyhow::Result<ShardExit> {
        if self.lost.is_cancelled() {
            return Ok(self.dropped_on_lost_lease());
        }
        if self.replay.is_some() {
            tracing::info!(shard = self.shard, "stopping during a replay; the next start replays it again");
        } else {
            self.flush(FlushReason::Shutdown, false).await?;
        }
        Ok(ShardExit::Stopped)
    }

    /// Intent, upload, commit. `ended` marks the shard finished in the same commit.
    async fn flush(&mut self, reason: FlushReason, ended: bool) -> anyhow::Result<()> {
        let empty = self.empty_batch();
        let batch = std::mem::replace(&mut self.batch, empty);
        let ctx = self.ctx.clone();
        let (shard, lease) = (self.shard.clone(), self.lease);
        let schema_version = batch.version();
        let Some((first, last, records)) = batch.range() else {
            if ended {
                let pending = self.catalog_pending(Vec::new());
                let commit =
                    Commit { ended: true, catalog_pending: self.stored_pending(&pending), ..Commit::default() };
                let write = || ctx.checkpoints.commit(&shard, lease, &commit);
                write_checkpoint(&ctx, &shard, &self.lost, "commit", write).await?;
                self.committed_partitions(pending);
            }
            return Ok(());
        };
        let started = Instant::now();
        let finished = tokio::task::spawn_blocking(move || batch.finish()).await.expect("finish task panicked")?;
        let intent = Intent { first, last: last.clone(), records, schema_version };
        match &self.replay {
            Some((pending, _)) if *pending != intent => tracing::error!(
                shard,
                pending = ?pending,
                rebuilt = ?intent,
                "the replayed batch differs from its intent; the stream no longer holds all of its records"
            ),
            Some(_) => {}
            None => {
                let write = || ctx.checkpoints.record_intent(&shard, lease, &intent);
                write_checkpoint(&ctx, &shard, &self.lost, "record intent", write).await?
            }
        }
        ctx.crash.hit("after_intent");
        let files: Vec<(bool, usize)> =
            finished.objects.iter().map(|o| (matches!(o.kind, OutputKind::Data { .. }), o.data.len())).collect();
        let partitions: Vec<String> = finished
            .objects
            .iter()
            .filter_map(|o| match &o.kind {
                OutputKind::Data { partition, .. } => Some(partition.clone()),
                OutputKind::Errors { .. } => None,
            })
            .collect();
        ctx.health.uploading(&shard, &ctx.lake.url(""));
        let uploads = futures::stream::iter(finished.objects.into_iter().map(|o| upload(&ctx, &shard, o)))
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        if uploads.iter().any(|ok| !ok) {
            anyhow::bail!("shard {shard}: upload abandoned at shutdown; the batch {} stays pending", intent.first);
        }
        ctx.health.uploaded(&shard);
        ctx.crash.hit("before_commit");
        let pending = self.catalog_pending(partitions);
        let commit = Commit { last: Some(&last), ended, catalog_pending: self.stored_pending(&pending) };
        let write = || ctx.checkpoints.commit(&shard, lease, &commit);
        write_checkpoint(&ctx, &shard, &self.lost, "commit", write).await?;
        ctx.crash.hit("after_commit");
        self.committed_partitions(pending);
        ctx.health.committed(&shard);
        ctx.budget.update(&shard, 0);
        ctx.metrics.record_flush(reason.as_str(), &finished.stats, &files, started.elapsed().as_secs_f64());
        tracing::info!(
            shard,
            reason = reason.as_str(),
            first = intent.first,
            last,
            records = finished.user_records,
            files = files.len(),
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }
}

impl Reader {
    /// What a commit carries as `catalog_pending`: the batch's partitions
    /// and those earlier commits carried, less what the catalog is known to
    /// have (empty without a catalog).
    fn catalog_pending(&self, batch_partitions: Vec<String>) -> Vec<String> {
        match &self.ctx.catalog {
            Some(catalog) => catalog.unconfirmed(self.catalog_pending.iter().cloned().chain(batch_partitions)),
            None => Vec::new(),
        }
    }

    /// The part of `pending` a commit stores: all of it, up to
    /// [`MAX_PENDING_BYTES`] of paths (a long catalog outage under a
    /// template with many or long values per shard would otherwise outgrow
    /// a DynamoDB item and stop every commit); beyond that a crash leaves
    /// the rest to `catalog sync`.
    fn stored_pending<'a>(&self, pending: &'a [String]) -> &'a [String] {
        let kept = pending_within(pending, MAX_PENDING_BYTES);
        if kept < pending.len() {
            tracing::warn!(
                shard = self.shard,
                pending = pending.len(),
                kept,
                max_bytes = MAX_PENDING_BYTES,
                "more partitions wait for the catalog than a checkpoint keeps; after a crash run `catalog sync`"
            );
        }
        &pending[..kept]
    }

    /// Once the catalog confirmed some of the partitions the checkpoint
    /// lists, writes the shorter list (without moving the checkpoint), so a
    /// quiet shard does not make every restart register them again.
    async fn shrink_stored_pending(&mut self) -> anyhow::Result<()> {
        let Some(catalog) = &self.ctx.catalog else { return Ok(()) };
        let confirmations = catalog.table().confirmations();
        if self.stored_pending == 0 || self.replay.is_some() || confirmations == self.pending_checked {
            return Ok(());
        }
        self.pending_checked = confirmations;
        let left = catalog.unconfirmed(self.catalog_pending.iter().cloned());
        if left.len() == self.catalog_pending.len() {
            return Ok(());
        }
        let stored = self.stored_pending(&left).to_vec();
        let (ctx, shard, lease) = (self.ctx.clone(), self.shard.clone(), self.lease);
        let write = || ctx.checkpoints.set_catalog_pending(&shard, lease, &stored);
        write_checkpoint(&ctx, &shard, &self.lost, "pending partitions", write).await?;
        self.stored_pending = stored.len();
        self.catalog_pending = left;
        Ok(())
    }

    /// After a commit: its pending partitions go to the registrar.
    fn committed_partitions(&mut self, pending: Vec<String>) {
        if let Some(catalog) = &self.ctx.catalog {
            catalog.submit(&pending);
        }
        self.stored_pending = pending_within(&pending, MAX_PENDING_BYTES);
        self.catalog_pending = pending;
    }
}

/// How many of `pending` (from the first) fit in `max_bytes` of paths.
fn pending_within(pending: &[String], max_bytes: usize) -> usize {
    let mut bytes = 0;
    pending
        .iter()
        .take_while(|p| {
            bytes += p.len();
            bytes <= max_bytes
        })
        .count()
}

/// A checkpoint write (intent or commit) retried with back-off until it
/// lands, so a checkpoint store that fails for a while (DynamoDB 5xx, a
/// read-only disk) holds the batch in memory instead of restarting the
/// reader into re-reading it. A lost lease is returned at once (the write is
/// fenced and never lands); the worker aborting gives up.
async fn write_checkpoint<F, Fut>(
    ctx: &Context,
    shard: &str,
    lost: &CancellationToken,
    what: &'static str,
    write: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = shardlake::Result<()>>,
{
    let report = Report { health: &ctx.health, metrics: &ctx.metrics, shard: Some(shard) };
    let classify = |e: &shardlake::Error| match e {
        shardlake::Error::LeaseLost { .. } => RetryClass::Fatal,
        _ => RetryClass::Transient,
    };
    let stop = async {
        tokio::select! {
            _ = ctx.abort.cancelled() => {}
            _ = lost.cancelled() => {}
        }
    };
    match retry(report, Dependency::Checkpoint, what, &IN_PLACE, write, classify, stop).await {
        Ok(()) => Ok(()),
        Err(GaveUp::Failed(e)) => Err(e.into()),
        Err(GaveUp::Stopped(_)) if lost.is_cancelled() => {
            Err(shardlake::Error::LeaseLost { shard: shard.to_string() }.into())
        }
        Err(GaveUp::Stopped(e)) => {
            let why = e.map_or_else(|| "no attempt finished".to_string(), |e| e.to_string());
            Err(anyhow::anyhow!("shard {shard}: checkpoint {what} abandoned at abort: {why}"))
        }
    }
}

/// Uploads one object, retrying with back-off until it succeeds. `false`
/// only when the process is aborting (the upload is then never committed).
/// Every failed attempt, including those the store retries inside (a put,
/// one multipart part), is counted, logged and reported to health at once.
async fn upload(ctx: &Context, shard: &str, object: shardlake::pipeline::OutputObject) -> bool {
    let report = Report { health: &ctx.health, metrics: &ctx.metrics, shard: Some(shard) };
    let retried_inside = |e: &shardlake::Error| report.retried_inside(Dependency::Upload, &object.key, e);
    let put = || ctx.lake.put_watched(&object.key, object.data.clone(), &retried_inside);
    let uploaded =
        retry(report, Dependency::Upload, &object.key, &IN_PLACE, put, always_transient, ctx.abort.cancelled()).await;
    if uploaded.is_ok() {
        ctx.crash.hit("after_upload");
    }
    uploaded.is_ok()
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

/// The pause after the `empty_polls`-th empty answer in a row: `idle`,
/// doubled per further empty answer, at most `max_idle`.
fn idle_wait(idle: Duration, max_idle: Duration, empty_polls: u32) -> Duration {
    idle.saturating_mul(1 << empty_polls.saturating_sub(1).min(16)).min(max_idle.max(idle))
}
