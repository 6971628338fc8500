//! One task per shard: read it (`fetch`: GetRecords, or SubscribeToShard
//! events with enhanced fan-out), feed the shard batch, and flush it by the
//! exactly-once protocol (`commit`: intent, upload, commit). A pending intent
//! found at start is replayed first: exactly its range is re-read and rebuilt
//! into the identical files before reading goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::checkpoint::{Intent, compare_sequences};
use shardlake::retry::{Backoff, RetryPolicy};
use shardlake::schema::Column;
use tokio_util::sync::CancellationToken;

use super::fetch::FanOut;
use super::{Context, ShardError};
use crate::config::InitialPosition;
use crate::kinesis::get_records::RecordsSlot;
use crate::kinesis::{KinesisRecord, SequenceNumber, ShardId, StartAt};
use crate::lake::batch::{FlushReason, Pushed, ShardBatch, should_flush_by_memory};
use crate::stop::{Shutdown, Stop, Stops};

/// Back-off of Kinesis calls that failed (other than throttles): retried
/// until they succeed or the worker stops.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(200), cap: Duration::from_secs(30) };

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

pub(super) struct Reader {
    pub(super) ctx: Arc<Context>,
    pub(super) shard: ShardId,
    /// The lease counter writes are fenced on (fleet mode).
    pub(super) lease: Option<u64>,
    /// Why to stop: the worker stopping or aborting, the lease lost.
    pub(super) stops: Stops,
    pub(super) batch: ShardBatch,
    /// The shard iterator of the next GetRecords call (polling).
    pub(super) iterator: String,
    /// Buffers reused by every GetRecords call of this reader.
    pub(super) records: RecordsSlot,
    /// Enhanced fan-out state; `None` when polling.
    pub(super) fan_out: Option<FanOut>,
    /// The last record read into the batch or committed: an expired iterator
    /// resumes after it.
    pub(super) last_read: Option<SequenceNumber>,
    /// Where reading started; an iterator that expires before any record was
    /// read is renewed from here.
    pub(super) start: StartAt,
    /// A pending intent being replayed, and whether its first record was seen.
    pub(super) replay: Option<(Intent, bool)>,
    /// The wait after failed Kinesis calls, growing over failures in a row.
    pub(super) backoff: Backoff,
    /// Partitions committed but not known to be in the catalog yet; each
    /// commit carries them until they are.
    pub(super) catalog_pending: Vec<String>,
    /// How many of them the checkpoint holds (it is rewritten smaller once
    /// some are confirmed, even when no batch commits).
    pub(super) stored_pending: usize,
    /// The catalog's confirmations when they were last compared with the
    /// pending list: the comparison runs only after registrations answered.
    pub(super) pending_checked: u64,
}

/// Reads `shard` until it ends, `cancel` fires (final flush) or the lease is
/// lost (no flush).
pub async fn read_shard(
    ctx: Arc<Context>,
    shard: ShardId,
    lease: ShardLease,
    shutdown: &Shutdown,
) -> Result<ShardExit, ShardError> {
    let stops = Stops::new(shutdown, lease.lost);
    let state = tokio::select! {
        state = ctx.checkpoints.load(&shard) => state.map_err(|source| ShardError::Load { shard: shard.clone(), source })?,
        _ = stops.any() => return Ok(if stops.lease_lost() { ShardExit::Lost } else { ShardExit::Stopped }),
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
            tracing::info!(%shard, first = %intent.first, last = %intent.last, "replaying a pending batch");
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
        Some(intent) => {
            let version = intent.schema_version;
            ctx.schemas.version(version, &ctx.checkpoints).await.map_err(|e| ShardError::Schema {
                shard: shard.clone(),
                version,
                source: e.into(),
            })?
        }
        None => ctx.schemas.current(),
    };
    let watch = if state.intent.is_some() { None } else { ctx.schemas.watch(&version) };
    let mut reader = Reader {
        batch: ShardBatch::new(&version, watch, &ctx.settings.config.stream, &shard),
        records: RecordsSlot::with_pool(&ctx.read_buffers),
        ctx,
        shard,
        stops,
        lease: lease.counter,
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
        Err(ShardError::LeaseLost { .. }) => Ok(reader.dropped_on_lost_lease()),
        r => r,
    };
    reader.ctx.metrics.add_shards_reading(-1);
    reader.ctx.budget.remove(&reader.shard);
    result
}

impl Reader {
    async fn run(&mut self, start: StartAt) -> Result<ShardExit, ShardError> {
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
            match self.stops.reason() {
                None => {}
                Some(Stop::LeaseLost) => return Ok(self.dropped_on_lost_lease()),
                Some(Stop::Flush | Stop::Abort) => return self.stop().await,
            }
            let called = Instant::now();
            let Some(fetched) = self.fetch(polling.max_records_per_call).await? else { return self.stop().await };
            let m = self.ctx.metrics.clone();
            m.record_read(&self.shard, fetched.records.len(), fetched.bytes, called.elapsed().as_secs_f64());
            let had_records = !fetched.records.is_empty();
            self.ctx.health.read_ok(&self.shard, fetched.millis_behind_latest, had_records);
            if !self.push(fetched.records).await? {
                // Stopped while the schema evolved; the batch before it is committed.
                return Ok(if self.stops.lease_lost() { self.dropped_on_lost_lease() } else { ShardExit::Stopped });
            }
            self.records.settle();
            self.shrink_stored_pending().await?;
            let Some(next) = fetched.next else {
                tracing::info!(shard = %self.shard, "shard ended");
                self.flush(FlushReason::ShardEnd, true).await?;
                return Ok(ShardExit::Ended);
            };
            match &mut self.fan_out {
                Some(f) => f.next_start = StartAt::After(next.into()),
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
                _ = self.stops.any() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Feeds records into the batch off the async threads; while replaying,
    /// flushes exactly at the intent's last record. A record with fields
    /// that become columns ends the batch: it is committed, the schema
    /// evolves, and the record starts the next batch. `false` when the
    /// reader stopped meanwhile (records after that point are not read).
    async fn push(&mut self, mut records: Vec<KinesisRecord>) -> Result<bool, ShardError> {
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
                            shard = %self.shard,
                            expected = %intent.first,
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
            batch.set_evolve_open(self.ctx.schemas.evolve_open(batch.version()));
            self.last_read = records.last().map(|r| SequenceNumber::from(&*r.sequence)).or(self.last_read.take());
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
            .expect("batch task panicked")
            .map_err(|source| ShardError::Batch { shard: self.shard.clone(), source })?;
            self.batch = batch;
            records = records_back;
            let counts = self.batch.take_watch_counts();
            self.ctx.metrics.record_fields_in_extra("deferred", counts.deferred);
            self.ctx.metrics.record_fields_in_extra("refused", counts.refused.len() as u64);
            if !counts.refused.is_empty() {
                tracing::warn!(
                    shard = %self.shard,
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
                let Some(version) =
                    crate::lake::evolve::evolve(&self.ctx.evolution(), &self.shard, from, &columns, self.stops.any())
                        .await
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
    pub(super) fn empty_batch(&self) -> ShardBatch {
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
            shard = %self.shard,
            dropped_records = dropped,
            "lease lost: dropped the unflushed batch uncommitted"
        );
        ShardExit::Lost
    }

    /// Final flush on shutdown. A replay cut short is dropped: its intent
    /// stays, and the next start replays the whole range.
    async fn stop(&mut self) -> Result<ShardExit, ShardError> {
        if self.stops.lease_lost() {
            return Ok(self.dropped_on_lost_lease());
        }
        if self.replay.is_some() {
            tracing::info!(shard = %self.shard, "stopping during a replay; the next start replays it again");
        } else {
            self.flush(FlushReason::Shutdown, false).await?;
        }
        Ok(ShardExit::Stopped)
    }
}

#[cfg(test)]
#[path = "reader_tests.rs"]
mod tests;

/// The pause after the `empty_polls`-th empty answer in a row: `idle`,
/// doubled per further empty answer, at most `max_idle`.
fn idle_wait(idle: Duration, max_idle: Duration, empty_polls: u32) -> Duration {
    idle.saturating_mul(1 << empty_polls.saturating_sub(1).min(16)).min(max_idle.max(idle))
}
