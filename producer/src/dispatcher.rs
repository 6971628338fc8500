//! The producer's task: one loop that owns every buffered record. It keeps a
//! queue per shard (sorted by arrival, so a retried record goes back before
//! later records of its key), fills the open request from the queues within
//! each shard's rate limit, sends it when full, when its oldest record has
//! waited `linger` (held back by the rate limit: when it has been filling for
//! `linger`), or on flush, and sorts each answer into acknowledgements,
//! retries (only the failed entries, after a full-jitter backoff) and
//! failures. How many requests fly at once, and how long each may take, is
//! up to the adaptive [`Controller`].
//!
//! This file holds the loop and its state; the loop's work is in three parts:
//! `batching` (filling the open request from the queues and sending it),
//! `outcomes` (sorting answers into acknowledgements, retries and failures;
//! expiry) and `resharding` (keeping the shard map current).

mod batching;
mod outcomes;
mod resharding;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::batch::{Batch, Limits, Pending, Unit};
use crate::budget::Backlog;
use crate::concurrency::Controller;
use crate::config::{Settings, TtlStart};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::rate::RateLimits;
use crate::service::{EntryOutcome, Failure, Service};
use crate::shard_map::ShardMap;

/// Records looked at per queue each time the batch is filled; past them a
/// queue waits for its head to move (only records in backoff or, with
/// ordering, behind a busy key are skipped).
const SCAN_WINDOW: usize = 2048;
/// Longest sleep of the loop when nothing is due.
const MAX_IDLE: Duration = Duration::from_secs(1);
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
