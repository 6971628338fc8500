//! The producer's task: one loop that owns every buffered record. It keeps a
//! queue per shard (sorted by arrival, so a retried record goes back before
//! later records of its key), fills the open request from the queues within
//! each shard's rate limit, sends it when full, when its oldest record has
//! waited `linger` (held back by the rate limit: when it has been filling for
//! `linger`), or on flush, and sorts each answer into acknowledgements,
//! retries (only the failed entries, after a full-jitter backoff) and
//! failures. How many requests fly at once, and how long each may take, is
//! up to the adaptive [`Controller`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::batch::{Batch, InFlight, Limits, Pending, Placement, Refusal, Unit, aggregated_size};
use crate::budget::Backlog;
use crate::concurrency::{Change, Controller, Signal};
use crate::config::{Settings, TtlStart};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::record::Ack;
use crate::service::{EntryOutcome, ErrorClass, Failure, Service, api};
use crate::shard_map::ShardMap;

/// The error code Kinesis answers while a stream is being resharded
/// (`UpdateShardCount`, split, merge in progress): the map is about to change.
const RESHARD_IN_PROGRESS: &str = "ResourceInUseException";
/// Records looked at per queue each time the batch is filled; past them a
/// queue waits for its head to move (only records in backoff or, with
/// ordering, behind a busy key are skipped).
const SCAN_WINDOW: usize = 2048;
/// Longest sleep of the loop when nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// Shortest time between two shard map reads.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// Commands taken from the channel per turn, between two fills.
const COMMANDS_PER_TURN: usize = 1024;
/// The deadline of a record whose TTL has not started (`ttl_start =
/// "first_attempt"` and never sent): later than any run.
const NOT_STARTED: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// What the producer handles send to the task. Nearly every command is a
/// record, so boxing `Pending` would only add an allocation per record.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// A record to send.
    Record(Pending),
    /// Send everything now; answer when every record accepted so far is
    /// resolved.
    Flush(oneshot::Sender<()>),
    /// Flush, then end the task.
    Shutdown,
}

/// A finished request.
struct Completion {
    units: Vec<Unit>,
    outcome: Result<Vec<EntryOutcome>, Failure>,
    elapsed: Duration,
}

/// An aggregate stored on a shard whose range the map does not know yet.
struct Misplaced {
    unit: Unit,
    shard_id: Arc<str>,
    sequence_number: String,
}

/// The task's state.
pub struct Dispatcher {
    settings: Arc<Settings>,
    limits: Limits,
    service: Service,
    metrics: Arc<Metrics>,
    rx: mpsc::Receiver<Command>,
    /// The open shards; records whose hash no shard covers go to the last
    /// queue, which has no rate limit.
    map: Arc<ShardMap>,
    rate: RateLimits,
    queues: Vec<VecDeque<Pending>>,
    batch: Batch,
    /// Round-robin start among the queues, so no shard starves the others.
    next_queue: usize,
    /// The last fill stopped at a shard's rate limit (see
    /// [`Batch::should_send_by_age`]).
    rate_limited: bool,
    in_flight: JoinSet<Completion>,
    /// How many requests may be in flight, and their timeout.
    concurrency: Controller,
    /// Records not sent yet, shared with the handles for `ready`.
    backlog: Arc<Backlog>,
    /// Ordering: records per key in sent requests; such keys wait.
    keys_in_flight: HashMap<String, usize>,
    /// Sequence numbers of records accepted and not resolved, for flush.
    outstanding: BTreeSet<u64>,
    next_seq: u64,
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    shutting_down: bool,
    rx_closed: bool,
    refresh_tx: mpsc::Sender<Result<ShardMap, Error>>,
    refresh_rx: mpsc::Receiver<Result<ShardMap, Error>>,
    refreshing: bool,
    /// A reshard was seen (a record on a shard the map does not hold or did
    /// not predict, `ResourceInUseException`) and the map is being re-read:
    /// until it is, records go unaggregated, so that no aggregate mixes the
    /// ranges of the new shards.
    map_stale: bool,
    /// Aggregates that landed on another shard than predicted, whose new
    /// shard's range the map does not know yet: their records wait for the
    /// refresh to be acknowledged (in range) or resent (not), as the KPL does.
    misplaced: Vec<Misplaced>,
    last_refresh: Instant,
    next_refresh: Option<Instant>,
    rng: StdRng,
}

impl Dispatcher {
    /// A task for `service` starting from `map` (empty for Firehose).
    pub fn new(
        settings: Arc<Settings>,
        service: Service,
        map: ShardMap,
        metrics: Arc<Metrics>,
        rx: mpsc::Receiver<Command>,
        backlog: Arc<Backlog>,
        seed: Option<u64>,
    ) -> Self {
        let limits = Limits {
            max_entries: settings.max_batch_records,
            max_bytes: settings.max_batch_bytes,
            aggregation_max_bytes: settings.aggregation_max_bytes,
            ordering: settings.ordering,
        };
        let mut rate = RateLimits::new(settings.rate_limit_factor);
        rate.update(&ShardMap::default(), &map);
        let (refresh_tx, refresh_rx) = mpsc::channel(1);
        let now = Instant::now();
        let concurrency = Controller::new(
            settings.max_concurrent_requests,
            settings.min_request_timeout,
            settings.request_timeout,
            now,
        );
        metrics.record_concurrency(concurrency.limit(), None, concurrency.request_timeout(), None);
        metrics.request_max_records.set(settings.max_batch_records as i64);
        backlog.set_target(backlog_target(settings.max_batch_records, concurrency.limit()));
        Dispatcher {
            concurrency,
            backlog,
            limits,
            queues: (0..=map.len()).map(|_| VecDeque::new()).collect(),
            map: Arc::new(map),
            rate,
            service,
            metrics,
            rx,
            batch: Batch::default(),
            next_queue: 0,
            rate_limited: false,
            in_flight: JoinSet::new(),
            keys_in_flight: HashMap::new(),
            outstanding: BTreeSet::new(),
            next_seq: 0,
            flush_waiters: vec![],
            shutting_down: false,
            rx_closed: false,
            refresh_tx,
            refresh_rx,
            refreshing: false,
            map_stale: false,
            misplaced: vec![],
            last_refresh: now,
            next_refresh: settings.shard_map_refresh.map(|d| now + d),
            rng: seed.map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
            settings,
        }
    }

    /// Runs until shut down (or every producer handle is dropped) and every
    /// accepted record is resolved.
    pub async fn run(mut self) {
        loop {
            let wake = self.pump(Instant::now());
            self.answer_flushes();
            if (self.shutting_down || self.rx_closed)
                && self.outstanding.is_empty()
                && self.in_flight.is_empty()
                && self.misplaced.is_empty()
            {
                break;
            }
            tokio::select! {
                biased;
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => match done {
                    Ok(c) => self.on_completion(c),
                    // The request task panicked: its records were dropped and
                    // their futures resolved by `Pending`'s drop guard.
                    Err(e) => tracing::error!(error = %e, "producer request task failed"),
                },
                Some(map) = self.refresh_rx.recv() => self.on_shard_map(map),
                cmd = self.rx.recv(), if !self.rx_closed => match cmd {
                    Some(cmd) => {
                        self.on_command(cmd);
                        for _ in 1..COMMANDS_PER_TURN {
                            match self.rx.try_recv() {
                                Ok(cmd) => self.on_command(cmd),
                                Err(_) => break,
                            }
                        }
                    }
                    None => self.rx_closed = true,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        // Records that raced the end come back to their callers.
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Command::Record(p) => p.fail(Error::ShutDown),
                Command::Flush(tx) => drop(tx.send(())),
                Command::Shutdown => {}
            }
        }
        self.answer_flushes();
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Record(mut p) => {
                if self.settings.ttl_start == TtlStart::FirstAttempt {
                    p.deadline = p.enqueued + NOT_STARTED;
                }
                p.seq = self.next_seq;
                self.next_seq += 1;
                self.outstanding.insert(p.seq);
                let q = self.queue_of(p.hash);
                self.queues[q].push_back(p);
            }
            Command::Flush(tx) => self.flush_waiters.push((self.next_seq, tx)),
            Command::Shutdown => self.shutting_down = true,
        }
    }

    /// The queue of a hash key: its shard's, or the last one when unmapped.
    fn queue_of(&self, hash: u128) -> usize {
        self.map.lookup(hash).unwrap_or(self.map.len())
    }

    /// Answers the flushes whose records (all accepted before them) are
    /// resolved.
    fn answer_flushes(&mut self) {
        let first_open = self.outstanding.first().copied().unwrap_or(u64::MAX);
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.flush_waiters).into_iter().partition(|(upto, _)| first_open >= *upto);
        self.flush_waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }

    /// Expires, fills and sends what is due; returns when to look again.
    fn pump(&mut self, now: Instant) -> Instant {
        let mut wake = now + MAX_IDLE;
        if let Some(at) = self.next_refresh {
            if at <= now {
                self.start_refresh();
            } else {
                wake = wake.min(at);
            }
        }
        self.expire(now, &mut wake);
        loop {
            self.fill(now, &mut wake);
            if self.batch.is_empty() {
                break;
            }
            let flushing = self.shutting_down || self.rx_closed || !self.flush_waiters.is_empty();
            let ready = self.batch.should_send_by_size(&self.limits)
                || self.batch.should_send_by_age(now, self.settings.linger, self.rate_limited)
                || flushing;
            if !ready {
                wake = wake.min(self.batch.send_deadline(self.settings.linger, self.rate_limited).unwrap_or(wake));
                break;
            }
            if self.in_flight.len() >= self.concurrency.limit() {
                break; // a completion wakes the loop
            }
            self.send_batch();
        }
        wake
    }

    /// Resolves the records whose TTL ran out. With the TTL from `send`,
    /// deadlines grow with arrival and queues are sorted by arrival, so
    /// expired records are at the front. From the first attempt, a record
    /// sent (and back for a retry) may sit behind unsent ones, so the window
    /// that `fill` looks at is scanned.
    fn expire(&mut self, now: Instant, wake: &mut Instant) {
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

    /// Moves due records from the queues into the open batch, round-robin
    /// over the shards, taking rate-limit tokens for each.
    fn fill(&mut self, now: Instant, wake: &mut Instant) {
        self.rate_limited = false;
        let n = self.queues.len();
        for k in 0..n {
            if self.batch.should_send_by_size(&self.limits) {
                break;
            }
            self.fill_from((self.next_queue + k) % n, now, wake);
        }
        self.next_queue = (self.next_queue + 1) % n;
    }

    fn fill_from(&mut self, q: usize, now: Instant, wake: &mut Instant) {
        let ordering = self.settings.ordering;
        let limits = self.packing_limits();
        let mut blocked: HashSet<String> = HashSet::new();
        let queue = &mut self.queues[q];
        let shard_id = self.map.shards().get(q).map(|s| s.shard_id.clone());
        let mut i = 0;
        let mut scanned = 0;
        while i < queue.len() && scanned < SCAN_WINDOW {
            scanned += 1;
            let p = &queue[i];
            if ordering
                && (blocked.contains(&p.record.partition_key)
                    || self.keys_in_flight.contains_key(&p.record.partition_key))
            {
                blocked.insert(p.record.partition_key.clone());
                i += 1;
                continue;
            }
            if p.not_before > now {
                *wake = (*wake).min(p.not_before);
                if ordering {
                    blocked.insert(p.record.partition_key.clone());
                }
                i += 1;
                continue;
            }
            let placement = match self.batch.place(p, q, &limits) {
                Ok(placement) => placement,
                Err(Refusal::Full) => {
                    self.batch.mark_full();
                    return;
                }
                Err(Refusal::KeyBusy) => {
                    blocked.insert(p.record.partition_key.clone());
                    i += 1;
                    continue;
                }
            };
            // Kinesis counts an aggregate as one record of its bytes: a record
            // joining one adds bytes only.
            let (records, bytes) = match placement {
                Placement::Aggregate(_) => (0, aggregated_size(&p.record)),
                Placement::NewUnit => (1, p.size),
            };
            if let Err(wait) = self.rate.try_take(q, records, bytes) {
                self.rate_limited = true;
                *wake = (*wake).min(now + wait.max(Duration::from_millis(1)));
                return;
            }
            let p = queue.remove(i).unwrap();
            self.batch.add(p, q, placement, shard_id.clone(), &limits);
        }
    }

    /// The limits records are packed by: no aggregation while a reshard
    /// was seen and the map not re-read yet (a plain record lands by its own
    /// hash key; an aggregate by one key for all its records).
    fn packing_limits(&self) -> Limits {
        let aggregation_max_bytes = if self.map_stale { None } else { self.limits.aggregation_max_bytes };
        Limits { aggregation_max_bytes, ..self.limits }
    }

    fn send_batch(&mut self) {
        let now = Instant::now();
        let mut batch = std::mem::take(&mut self.batch);
        for unit in &mut batch.units {
            if unit.is_aggregate() {
                self.metrics.records_per_aggregate.observe(unit.records.len() as f64);
            }
            for p in &mut unit.records {
                if p.attempts == 0 {
                    p.unsent = None;
                    if self.settings.ttl_start == TtlStart::FirstAttempt {
                        p.deadline = now + self.settings.ttl;
                    }
                }
                p.attempts += 1;
                if p.maybe_stored() {
                    p.resends_after_unknown += 1;
                    self.metrics.records_resent_after_unknown.inc();
                }
                if self.settings.ordering {
                    *self.keys_in_flight.entry(p.record.partition_key.clone()).or_default() += 1;
                }
            }
        }
        self.metrics.record_request_sent(batch.units.len(), batch.bytes);
        self.concurrency.on_send();
        let service = self.service.clone();
        // Records whose earlier attempts went unanswered get more patience,
        // and the ceiling on their last allowed attempt: a record that met a
        // slow path is given up only if its last attempt, too, goes
        // unanswered for the whole `request_timeout_ms`.
        let records = || batch.units.iter().flat_map(|u| &u.records);
        let unanswered = records().map(|p| p.unknown_attempts).max().unwrap_or(0);
        let last_chance = records().any(|p| p.maybe_stored() && !self.may_resend(p));
        let timeout = if last_chance {
            self.concurrency.timeout_ceiling()
        } else {
            self.concurrency.request_timeout_for(unanswered)
        };
        let units = batch.units;
        self.in_flight.spawn(async move {
            let started = Instant::now();
            let units = InFlight::new(units);
            let entries = units.units().iter().map(Unit::to_wire).collect();
            let outcome = service.put(entries, timeout).await;
            Completion { units: units.finish(), outcome, elapsed: started.elapsed() }
        });
    }

    fn on_completion(&mut self, c: Completion) {
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

    fn acknowledge(&mut self, unit: Unit, shard_id: Option<Arc<str>>, sequence_number: &str, now: Instant) {
        let aggregate = unit.is_aggregate();
        for (i, p) in unit.records.into_iter().enumerate() {
            self.acknowledge_one(p, shard_id.clone(), sequence_number, aggregate.then_some(i as u64), now);
        }
    }

    fn acknowledge_one(
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
    fn may_resend(&self, p: &Pending) -> bool {
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
    fn requeue(&mut self, records: Vec<Pending>, now: Instant) {
        let Some(attempts) = records.iter().map(|p| p.attempts).max() else { return };
        let not_before = now + self.settings.retry.delay(attempts, &mut self.rng);
        for mut p in records {
            p.not_before = not_before;
            let q = self.queue_of(p.hash);
            insert_sorted(&mut self.queues[q], p);
        }
    }

    /// A reshard shows: aggregate no more until the map is read again.
    fn on_reshard_seen(&mut self, now: Instant) {
        if !self.map_stale && self.settings.is_kinesis() {
            self.map_stale = true;
            tracing::info!("a reshard was seen; sending records unaggregated until the shard map is re-read");
        }
        self.request_refresh(now);
    }

    /// A unit stored on a shard the map did not predict (or does not hold):
    /// a plain record is where its hash key put it; an aggregate's records are
    /// range-checked against the shard it landed on, as the KCL does when it
    /// deaggregates, and those out of range are resent (the KCL would discard
    /// them). When the shard's range is unknown (a child shard), they wait
    /// for the map.
    fn on_unpredicted_shard(
        &mut self,
        unit: Unit,
        shard_id: Arc<str>,
        sequence_number: String,
        now: Instant,
        retry: &mut Vec<Pending>,
    ) {
        if !unit.is_aggregate() {
            return self.acknowledge(unit, Some(shard_id), &sequence_number, now);
        }
        let Some(range) = self.map.range_of(&shard_id).map(|r| (r.start, r.end)) else {
            if self.settings.ordering {
                // Later records of these keys wait until these are settled.
                for p in &unit.records {
                    *self.keys_in_flight.entry(p.record.partition_key.clone()).or_default() += 1;
                }
            }
            self.misplaced.push(Misplaced { unit, shard_id, sequence_number });
            return;
        };
        for (i, p) in unit.records.into_iter().enumerate() {
            if (range.0..=range.1).contains(&p.hash) {
                self.acknowledge_one(p, Some(shard_id.clone()), &sequence_number, Some(i as u64), now);
            } else {
                self.resend_wrong_shard(p, &shard_id, retry);
            }
        }
    }

    fn resend_wrong_shard(&mut self, mut p: Pending, shard_id: &str, retry: &mut Vec<Pending>) {
        self.metrics.records_resent_wrong_shard.inc();
        tracing::debug!(partition_key = %p.record.partition_key, shard_id, "record aggregated onto a shard that does not hold its hash key; resending it");
        p.last_error = Some(format!("aggregated onto {shard_id}, whose hash key range does not hold the record"));
        retry.push(p);
    }

    /// Settles the aggregates that waited for the map: with their shard's
    /// range known, range-check them; without (the map could not be read, or
    /// does not hold the shard), resend them whole, as the KPL does.
    fn settle_misplaced(&mut self, now: Instant) {
        let mut retry = vec![];
        for m in std::mem::take(&mut self.misplaced) {
            if self.settings.ordering {
                for p in &m.unit.records {
                    if let Some(n) = self.keys_in_flight.get_mut(&p.record.partition_key) {
                        *n -= 1;
                        if *n == 0 {
                            self.keys_in_flight.remove(&p.record.partition_key);
                        }
                    }
                }
            }
            if self.map.range_of(&m.shard_id).is_some() {
                self.on_unpredicted_shard(m.unit, m.shard_id, m.sequence_number, now, &mut retry);
            } else {
                for p in m.unit.records {
                    self.resend_wrong_shard(p, &m.shard_id, &mut retry);
                }
            }
        }
        self.requeue(retry, now);
    }

    fn request_refresh(&mut self, now: Instant) {
        let at = (self.last_refresh + MIN_REFRESH_GAP).max(now);
        self.next_refresh = Some(self.next_refresh.map_or(at, |t| t.min(at)));
    }

    fn start_refresh(&mut self) {
        self.next_refresh = None;
        let Service::Kinesis { client, stream } = &self.service else { return };
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        self.last_refresh = Instant::now();
        let (client, stream, tx) = (client.clone(), stream.clone(), self.refresh_tx.clone());
        let timeout = self.settings.control_plane_timeout;
        tokio::spawn(async move {
            // Bounded: a hung call fails at the deadline and is retried.
            let map = api::list_shards_within(&client, &stream, timeout).await.map(|s| ShardMap::from_shards(&s));
            let _ = tx.send(map).await;
        });
    }

    fn on_shard_map(&mut self, map: Result<ShardMap, Error>) {
        self.refreshing = false;
        let now = Instant::now();
        self.next_refresh = self.settings.shard_map_refresh.map(|d| now + d);
        let map = match map {
            Ok(map) if !map.is_empty() => map,
            other => {
                let error = other.err().map_or_else(|| "no open shard".to_string(), |e| e.to_string());
                tracing::warn!(%error, "could not refresh the shard map; keeping the old one");
                self.metrics.record_shard_map_refresh("error");
                self.request_refresh(now + MIN_REFRESH_GAP);
                self.settle_misplaced(now);
                return;
            }
        };
        self.metrics.record_shard_map_refresh("ok");
        self.map_stale = false;
        if map == *self.map {
            self.settle_misplaced(now);
            return;
        }
        if map.len() != self.map.len() {
            tracing::info!(from = self.map.len(), to = map.len(), "the number of open shards changed: a reshard");
        }
        tracing::info!(shards = map.len(), "shard map changed");
        self.rate.update(&self.map, &map);
        self.map = Arc::new(map);
        let mut all: Vec<Pending> = self.queues.drain(..).flatten().collect();
        all.sort_by_key(|p| p.seq);
        self.queues = (0..=self.map.len()).map(|_| VecDeque::new()).collect();
        self.next_queue = 0;
        for p in all {
            let q = self.queue_of(p.hash);
            self.queues[q].push_back(p);
        }
        self.settle_misplaced(now);
    }
}

/// Records to keep queued for `limit` requests in flight of `max_entries`
/// records each (the batch share now, not the configured maximum): one
/// round of requests plus one, so the next request can fill as soon as
/// there is room, and no record waits in the queue much longer than a round
/// trip. A record admitted beyond what the endpoint takes would wait in the
/// queue until its TTL ran out before its first attempt; it waits in the
/// caller's input instead.
fn backlog_target(max_entries: usize, limit: usize) -> usize {
    max_entries * (limit + 1)
}

/// Inserts `p` at its arrival position (retries are near the front).
fn insert_sorted(queue: &mut VecDeque<Pending>, p: Pending) {
    let at = queue.partition_point(|q| q.seq < p.seq);
    queue.insert(at, p);
}

#[cfg(test)]
mod tests;
