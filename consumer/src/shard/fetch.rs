//! How a shard reader gets its records: GetRecords calls (iterators, their
//! renewal, back-off after failures, throttles) or enhanced fan-out events
//! (with a fall-back to polling), and the check at start for records
//! trimmed behind the checkpoint.

use std::time::Duration;

use shardlake::retry::Retryable;

use super::ShardError;
use super::reader::Reader;
use crate::kinesis::{self, Fetched, KinesisError, StartAt};

/// Failed subscriptions in a row after which a shard is read with
/// GetRecords instead (until its reader restarts).
const FAN_OUT_FALLBACK_AFTER: u32 = 5;

/// A reader's enhanced fan-out subscription.
pub(super) struct FanOut {
    /// The registered stream consumer.
    pub(super) consumer_arn: String,
    /// The open subscription; `None` until (re)subscribed.
    pub(super) subscription: Option<kinesis::Subscription>,
    /// Where the next subscription starts: the reader's start, then after
    /// each event's continuation sequence number (no gap, no overlap).
    pub(super) next_start: StartAt,
    /// Subscriptions that failed in a row.
    pub(super) failures: u32,
}

impl Reader {
    /// The next records: one GetRecords call, or the next fan-out event.
    /// Failures are backed off and retried; `None` when stopped meanwhile.
    pub(super) async fn fetch(&mut self, limit: i32) -> Result<Option<Fetched>, ShardError> {
        loop {
            if self.stops.reason().is_some() {
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
                        _ = self.stops.any() => return Ok(None),
                    };
                    if result.is_err() && self.records.take_overflow() {
                        // The page outgrew the reader's share of the read
                        // buffers: wait for a full share and fetch it again.
                        tokio::select! {
                            _ = self.records.reserve_full() => {}
                            _ = self.stops.any() => return Ok(None),
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
            _ = self.stops.any() => return Ok(None),
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
    async fn fall_back_to_polling(&mut self, why: &KinesisError) -> Result<bool, ShardError> {
        let f = self.fan_out.take().expect("fan-out mode");
        self.ctx.metrics.record_subscription("fallback");
        tracing::warn!(
            shard = %self.shard,
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
    pub(super) async fn trimmed_past(&mut self, checkpoint: &str) -> bool {
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
            _ = self.stops.any() => return false,
        };
        let first = match oldest {
            Ok(Some(first)) => first,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(shard = %self.shard, error = %e, "could not read the trim horizon to check for records trimmed unread");
                return false;
            }
        };
        if crate::checkpoint::compare_sequences(&first.sequence, checkpoint) != std::cmp::Ordering::Greater {
            return false;
        }
        let arrived = shardlake::time::format_rfc3339_millis(first.arrival_ms);
        tracing::error!(
            shard = %self.shard,
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
    pub(super) async fn iterator_from(&mut self, start: StartAt) -> Result<Option<String>, ShardError> {
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
                _ = self.stops.any() => return Ok(None),
            };
            match result {
                Ok(it) => {
                    self.backoff.reset();
                    return Ok(Some(it));
                }
                Err(KinesisError::Fatal(message)) if matches!(start, StartAt::At(_)) && self.replay.is_some() => {
                    // The pending range's first record is past the retention period.
                    tracing::error!(
                        shard = %self.shard,
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
    async fn handle_read_error(&mut self, e: KinesisError) -> Result<bool, ShardError> {
        let m = &self.ctx.metrics;
        match &e {
            KinesisError::ExpiredIterator => {
                m.record_iterator_renewal(&self.shard);
                let start = match &self.last_read {
                    Some(seq) => StartAt::After(seq.clone()),
                    None => self.start.clone(),
                };
                tracing::info!(shard = %self.shard, "shard iterator expired, renewing");
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
                tracing::debug!(shard = %self.shard, error = %e, "read throttled");
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
            return Err(ShardError::Read { shard: self.shard.clone(), source: e });
        };
        if matches!(e, KinesisError::Transient(_)) {
            tracing::warn!(shard = %self.shard, error = %e, delay_ms = delay.as_millis() as u64, "kinesis call failed, backing off");
        }
        Ok(self.pause(delay).await)
    }

    /// Sleeps `delay`; `false` when stopped or the lease lost meanwhile.
    async fn pause(&mut self, delay: Duration) -> bool {
        tokio::select! {
            _ = self.stops.any() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
