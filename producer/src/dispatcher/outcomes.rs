//! Outcomes: what the dispatcher does with each answer and each deadline.
//! A finished request feeds the concurrency controller, and each of its
//! records is acknowledged, put back for a retry (after a full-jitter
//! backoff) or failed; records whose TTL ran out expire. The bookkeeping of
//! attempts, unanswered attempts and resends lives here in one place.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Completion, Dispatcher, SCAN_WINDOW, backlog_target, insert_sorted};
use crate::batch::{Pending, Unit};
use crate::concurrency::{Change, Signal};
use crate::config::TtlStart;
use crate::error::Error;
use crate::record::Ack;
use crate::service::{EntryOutcome, ErrorClass, Failure};

/// The error code Kinesis answers while a stream is being resharded
/// (`UpdateShardCount`, split, merge in progress): the map is about to change.
const RESHARD_IN_PROGRESS: &str = "ResourceInUseException";

impl Dispatcher {
    /// Resolves the records whose TTL ran out. With the TTL from `send`,
    /// deadlines grow with arrival and queues are sorted by arrival, so
    /// expired records are at the front. From the first attempt, a record
    /// sent (and back for a retry) may sit behind unsent ones, so the window
    /// that `fill` looks at is scanned.
    pub(super) fn expire(&mut self, now: Instant, wake: &mut Instant) {
        for q in 0..self.queues.len() {
            while let Some(front) = self.queues[q].front() {
                if front.deadline > now {
                    *wake = (*wake).min(front.deadline);
                    break;
                }
                let p = self.queues[q].pop_front().unwrap();
                self.expire_record(p, now);
            }
            if self.settings.ttl_start == TtlStart::FirstAttempt {
                let mut i = 0;
                while i < self.queues[q].len().min(SCAN_WINDOW) {
                    let deadline = self.queues[q][i].deadline;
                    if deadline > now {
                        *wake = (*wake).min(deadline);
                        i += 1;
                        continue;
                    }
                    let p = self.queues[q].remove(i).unwrap();
                    self.expire_record(p, now);
                }
            }
        }
    }

    fn expire_record(&mut self, p: Pending, now: Instant) {
        self.metrics.records_expired.inc();
        self.outstanding.remove(&p.seq);
        let ttl_ms = self.settings.ttl.as_millis() as u64;
        let last_error = p.last_error.clone().unwrap_or_else(|| "none".into());
        let reason = if p.maybe_stored() {
            self.count_maybe_duplicated_given_up(&p);
            Error::UnknownOutcome {
                attempts: p.attempts,
                age: now - p.enqueued,
                given_up: format!("record_ttl_ms = {ttl_ms} ran out"),
                last_error,
            }
        } else {
            Error::Expired { attempts: p.attempts, age: now - p.enqueued, ttl_ms, last_error }
        };
        self.metrics.record_failed(reason.label());
        tracing::debug!(partition_key = %p.record.partition_key, attempts = p.attempts, reason = reason.label(), "record expired");
        p.fail(reason);
    }

    pub(super) fn on_completion(&mut self, c: Completion) {
        let now = Instant::now();
        if self.settings.ordering {
            for p in c.units.iter().flat_map(|u| &u.records) {
                if let Some(n) = self.keys_in_flight.get_mut(&p.record.partition_key) {
                    *n -= 1;
                    if *n == 0 {
                        self.keys_in_flight.remove(&p.record.partition_key);
                    }
                }
            }
        }
        self.adapt_concurrency(&c, now);
        let mut retry = vec![];
        match c.outcome {
            Ok(outcomes) => {
                let partial = outcomes.iter().any(|o| matches!(o, EntryOutcome::Failed(_)));
                self.metrics.record_request_done(if partial { "partial" } else { "ok" }, c.elapsed);
                let mut stale_map = false;
                for (unit, outcome) in c.units.into_iter().zip(outcomes) {
                    match outcome {
                        EntryOutcome::Stored { shard_id: Some(actual), sequence_number }
                            if unit.predicted_shard.as_ref() != Some(&actual) =>
                        {
                            stale_map = true;
                            self.on_unpredicted_shard(unit, actual, sequence_number, now, &mut retry);
                        }
                        EntryOutcome::Stored { shard_id, sequence_number } => {
                            self.acknowledge(unit, shard_id, &sequence_number, now);
                        }
                        EntryOutcome::Failed(f) => {
                            stale_map |= f.code == RESHARD_IN_PROGRESS;
                            if f.class == ErrorClass::Throttled {
                                self.metrics.record_throttled("record");
                            }
                            for p in unit.records {
                                self.retry_or_fail(p, &f, now, &mut retry);
                            }
                        }
                    }
                }
                if stale_map {
                    tracing::info!("a record landed on another shard than predicted; re-reading the shard map");
                    self.on_reshard_seen(now);
                }
            }
            Err(f) => {
                let outcome = match f.class {
                    _ if f.code == "Timeout" => "timeout",
                    class if class.is_retryable() => "retry",
                    _ => "failed",
                };
                self.metrics.record_request_done(outcome, c.elapsed);
                if f.class == ErrorClass::Throttled {
                    self.metrics.record_throttled("request");
                }
                tracing::debug!(code = %f.code, message = %f.message, "request failed");
                if f.code == RESHARD_IN_PROGRESS {
                    self.on_reshard_seen(now);
                }
                let maybe_stored = f.may_have_been_applied();
                for mut p in c.units.into_iter().flat_map(|u| u.records) {
                    p.unknown_attempts += u32::from(maybe_stored);
                    self.retry_or_fail(p, &f, now, &mut retry);
                }
            }
        }
        self.requeue(retry, now);
    }

    /// Feeds a finished request to the concurrency controller: its RTT when
    /// answered, and whether it pushed back (a timeout, a whole-request
    /// retryable failure, a throttled entry).
    fn adapt_concurrency(&mut self, c: &Completion, now: Instant) {
        let signal = match &c.outcome {
            Ok(outcomes) => Signal::Answered {
                rtt: c.elapsed,
                back_pressure: outcomes
                    .iter()
                    .any(|o| matches!(o, EntryOutcome::Failed(f) if f.class == ErrorClass::Throttled)),
            },
            Err(f) if f.code == "Timeout" => Signal::TimedOut { waited: c.elapsed },
            Err(f) if f.class.is_retryable() => Signal::Failed,
            // A final rejection (a missing stream, no permission) is an
            // answer, not a sign of load.
            Err(_) => Signal::Answered { rtt: c.elapsed, back_pressure: false },
        };
        let change = self.concurrency.on_finish(now, signal);
        self.fit_batches_to_share();
        let (limit, timeout) = (self.concurrency.limit(), self.concurrency.request_timeout());
        self.metrics.record_concurrency(limit, change, timeout, self.concurrency.baseline());
        if let Some(change) = change {
            let direction = if matches!(change, Change::Increased(_)) { "up" } else { "down" };
            tracing::debug!(limit, direction, ?timeout, ?signal, "concurrency limit changed");
            self.backlog.set_target(backlog_target(self.limits.max_entries, limit));
        }
    }

    /// Requests carry the controller's share of the configured batch limits
    /// (all of them unless requests timed out at a concurrency of 1).
    fn fit_batches_to_share(&mut self) {
        let share = self.concurrency.batch_share();
        let scaled = |n: usize| ((n as f64 * share).ceil() as usize).max(1);
        let max_entries = scaled(self.settings.max_batch_records);
        if max_entries != self.limits.max_entries {
            tracing::info!(
                max_entries,
                "records per request changed: requests {} the timeout",
                if max_entries < self.limits.max_entries { "outlast" } else { "fit well within" }
            );
            self.limits.max_entries = max_entries;
            self.limits.max_bytes = scaled(self.settings.max_batch_bytes);
            self.metrics.request_max_records.set(max_entries as i64);
            self.backlog.set_target(backlog_target(max_entries, self.concurrency.limit()));
        }
    }

    pub(super) fn acknowledge(&mut self, unit: Unit, shard_id: Option<Arc<str>>, sequence_number: &str, now: Instant) {
        let aggregate = unit.is_aggregate();
        for (i, p) in unit.records.into_iter().enumerate() {
            self.acknowledge_one(p, shard_id.clone(), sequence_number, aggregate.then_some(i as u64), now);
        }
    }

    pub(super) fn acknowledge_one(
        &mut self,
        p: Pending,
        shard_id: Option<Arc<str>>,
        sequence_number: &str,
        sub_sequence_number: Option<u64>,
        now: Instant,
    ) {
        let latency = now - p.enqueued;
        self.metrics.record_sent(p.record.data.len(), latency);
        self.outstanding.remove(&p.seq);
        let ack = Ack {
            shard_id,
            sequence_number: sequence_number.to_string(),
            sub_sequence_number,
            attempts: p.attempts,
            unknown_attempts: p.unknown_attempts,
            latency,
        };
        if ack.may_be_duplicated() {
            self.metrics.records_maybe_duplicated.inc();
        }
        p.succeed(ack);
    }

    /// A record given up with an unknown outcome may be stored more than
    /// once when two or more of its attempts went unanswered.
    fn count_maybe_duplicated_given_up(&self, p: &Pending) {
        if p.unknown_attempts > 1 {
            self.metrics.records_maybe_duplicated.inc();
        }
    }

    /// Whether `p` may be sent once more: every send after an unanswered
    /// attempt may store a duplicate, so they are bounded.
    pub(super) fn may_resend(&self, p: &Pending) -> bool {
        !p.maybe_stored() || p.resends_after_unknown < self.settings.max_resends_after_unknown
    }

    /// Puts a failed record back for another attempt, or resolves it when the
    /// failure is final, its TTL ran out or its attempts are used up.
    fn retry_or_fail(&mut self, mut p: Pending, f: &Failure, now: Instant, retry: &mut Vec<Pending>) {
        if f.class.is_retryable()
            && now < p.deadline
            && p.attempts < self.settings.retry.max_attempts
            && self.may_resend(&p)
        {
            self.metrics.record_retried(&f.code);
            p.last_error = Some(f.to_string());
            retry.push(p);
            return;
        }
        // A final rejection of a resend says nothing about an earlier,
        // unanswered attempt: such a record stays of unknown outcome.
        if !f.class.is_retryable() && !p.maybe_stored() {
            self.metrics.record_failed(&f.code);
            self.outstanding.remove(&p.seq);
            // Debug, not warn: the caller gets the error with the record, and
            // a deleted stream would log one line per record.
            tracing::debug!(partition_key = %p.record.partition_key, code = %f.code, message = %f.message, "record rejected");
            let reason = Error::Rejected {
                target: self.settings.target.to_string(),
                code: f.code.clone(),
                message: f.message.clone(),
            };
            return p.fail(reason);
        }
        p.last_error = Some(f.to_string());
        if now >= p.deadline {
            return self.expire_record(p, now);
        }
        self.outstanding.remove(&p.seq);
        let attempts = p.attempts;
        let reason = if p.maybe_stored() {
            self.count_maybe_duplicated_given_up(&p);
            let given_up = if self.may_resend(&p) {
                format!("retry.max_attempts = {} were used", self.settings.retry.max_attempts)
            } else {
                format!(
                    "retry.max_resends_after_unknown = {} resends after an unanswered request were used",
                    self.settings.max_resends_after_unknown
                )
            };
            Error::UnknownOutcome { attempts, age: now - p.enqueued, given_up, last_error: f.to_string() }
        } else {
            Error::RetriesExhausted { attempts, last_error: f.to_string() }
        };
        self.metrics.record_failed(reason.label());
        p.fail(reason);
    }

    /// Back into their queues, in arrival order, after one full-jitter
    /// backoff for the lot (so they are batched together again).
    pub(super) fn requeue(&mut self, records: Vec<Pending>, now: Instant) {
        let Some(attempts) = records.iter().map(|p| p.attempts).max() else { return };
        let not_before = now + self.settings.retry.delay(attempts, &mut self.rng);
        for mut p in records {
            p.not_before = not_before;
            let q = self.queue_of(p.hash);
            insert_sorted(&mut self.queues[q], p);
        }
    }
}
