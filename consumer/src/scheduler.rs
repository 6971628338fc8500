//! The worker: discovers shards, runs one reader task per shard (children
//! only after all their parents ended and committed), shares the memory
//! budget between their batches, and stops them all on shutdown. In fleet
//! mode it reads only the shards it holds leases on: a renewer task keeps
//! them, each interval the worker takes its fair share, and on shutdown it
//! releases them after the final commits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use shardlake::retry::{Backoff, RetryClass, RetryPolicy, Retryable};
use tokio::time::Instant;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::kinesis::{self, ShardId, ShardInfo};
use crate::shard::Context;
use crate::shard::reader::{ShardExit, ShardLease, read_shard};
use crate::stop::Shutdown;

/// Back-off of a shard reader that failed (and of the worker loop after a
/// failed listing or checkpoint load): exponential from 1 s to 60 s, so a
/// dependency that is down for minutes is not hammered, and a reader is not
/// restarted into the same failure (re-reading its shard) every 2 s.
const RESTART_BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_secs(1), cap: Duration::from_secs(60) };

/// A reader that ran this long before failing starts its back-off afresh.
const RESTART_RESET_AFTER: Duration = Duration::from_secs(300);

/// The wait before a reader's next start after `failures` failures in a
/// row: between half and all of the back-off ceiling (equal jitter).
fn restart_delay(failures: u32) -> Duration {
    RESTART_BACKOFF.equal_jitter_delay(failures, &mut rand::rng())
}

/// Consecutive failures of one shard's reader, and when it may start again.
#[derive(Debug, Clone, Copy)]
struct Restart {
    failures: u32,
    not_before: Instant,
}

/// How one reader task ended: its shard, the lease counter it read under
/// (fleet mode) and its exit.
type ReaderEnd = (ShardId, Option<u64>, anyhow::Result<ShardExit>);

/// Runs readers for every shard until `shutdown` stops, then waits for their
/// final flushes.
pub async fn run(ctx: Arc<Context>, shutdown: Shutdown) -> anyhow::Result<()> {
    let renewer = Renewer::start(&ctx);
    let mut scheduler = Scheduler::new(ctx.clone(), shutdown.clone());
    let mut wait = Duration::ZERO;
    // The loop's own calls are abandoned at shutdown like the readers' reads:
    // a hung listing must not hold the final flushes' exit.
    loop {
        tokio::select! {
            _ = shutdown.stopping() => break,
            _ = tokio::time::sleep(wait) => {}
            Some(joined) = scheduler.readers.join_next_with_id() => {
                if let Some(delay) = scheduler.reader_ended(joined).await {
                    wait = delay.min(scheduler.refresh);
                    continue;
                }
            }
        }
        match scheduler.pass().await {
            Some(next) => wait = next,
            None => break,
        }
    }
    let failed = scheduler.final_flushes().await;
    if let Some(renewer) = renewer {
        renewer.stop().await;
    }
    if let Some(leases) = &ctx.leases {
        // After the final commits: the next owners start from them at once,
        // without waiting for the leases to expire.
        leases.release_all().await;
    }
    if failed > 0 {
        anyhow::bail!("{failed} shard(s) could not flush at shutdown; their records are read again on restart");
    }
    Ok(())
}

/// Fleet mode: lease renewals on their own task, so a slow ListShards or
/// balance never lets a held lease expire; stopped only after the final
/// commits.
struct Renewer {
    task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
}

impl Renewer {
    /// Starts renewing `ctx.leases`; `None` for a single worker.
    fn start(ctx: &Arc<Context>) -> Option<Renewer> {
        ctx.leases.as_ref()?;
        let stop = CancellationToken::new();
        let (ctx, stopped) = (ctx.clone(), stop.clone());
        let renew_every = ctx.settings.config.fleet.renew_every();
        let lease_duration = ctx.settings.config.fleet.lease_duration;
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(renew_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = every.tick() => {}
                }
                if let Some(leases) = &ctx.leases {
                    // With nothing held, a failure run goes on until a renewal works.
                    let started = Instant::now();
                    match leases.renew_all(lease_duration).await {
                        Some(Ok(())) => ctx.health.worker_ok("lease_renewal"),
                        Some(Err(e)) => ctx.health.worker_failed_since("lease_renewal", started, &e),
                        None => {}
                    }
                }
            }
        });
        Some(Renewer { task, stop })
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The worker loop's state: the running readers, the shards that ended, and
/// the back-off of readers that failed and of the loop itself.
struct Scheduler {
    ctx: Arc<Context>,
    shutdown: Shutdown,
    /// One task per running reader; a reader that panics is joined as failed.
    readers: JoinSet<ReaderEnd>,
    /// Running readers by shard, with when they started.
    running: HashMap<ShardId, Instant>,
    /// The shard of each reader task, for the ones that panic.
    tasks: HashMap<tokio::task::Id, ShardId>,
    ended: HashSet<ShardId>,
    restarts: HashMap<ShardId, Restart>,
    /// The loop's own back-off, over failed listings and checkpoint loads.
    loop_backoff: Backoff,
    /// How often the shards are listed (and, in fleet mode, leases taken).
    refresh: Duration,
}

impl Scheduler {
    fn new(ctx: Arc<Context>, shutdown: Shutdown) -> Self {
        let config = &ctx.settings.config;
        let refresh = match &ctx.leases {
            Some(_) => config.polling.shard_refresh.min(config.fleet.renew_every()),
            None => config.polling.shard_refresh,
        };
        Scheduler {
            ctx,
            shutdown,
            readers: JoinSet::new(),
            running: HashMap::new(),
            tasks: HashMap::new(),
            ended: HashSet::new(),
            restarts: HashMap::new(),
            loop_backoff: Backoff::equal_jitter(RESTART_BACKOFF),
            refresh,
        }
    }

    /// A joined reader task's end; a reader that panicked ended in failure.
    fn end_of(&mut self, joined: Result<(tokio::task::Id, ReaderEnd), JoinError>) -> ReaderEnd {
        match joined {
            Ok((id, end)) => {
                self.tasks.remove(&id);
                end
            }
            Err(e) => {
                let shard = self.tasks.remove(&e.id()).unwrap_or_default();
                (shard, None, Err(anyhow::anyhow!("shard reader panicked: {e}")))
            }
        }
    }

    /// Books a reader's end; for a failed reader, the back-off before it
    /// restarts (the loop looks again then).
    async fn reader_ended(&mut self, joined: Result<(tokio::task::Id, ReaderEnd), JoinError>) -> Option<Duration> {
        let (shard, lease, result) = self.end_of(joined);
        let ctx = &self.ctx;
        let started = self.running.remove(&shard);
        if result.is_ok() {
            self.restarts.remove(&shard);
            ctx.health.reader_stopped(&shard);
            ctx.metrics.forget_shard(&shard);
        }
        match result {
            Ok(ShardExit::Ended) => {
                self.ended.insert(shard.clone());
                if let Some(leases) = &ctx.leases {
                    leases.release(&shard).await;
                }
                None
            }
            Ok(ShardExit::Lost) => {
                if let (Some(leases), Some(counter)) = (&ctx.leases, lease) {
                    leases.mark_lost(&shard, counter);
                }
                None
            }
            Ok(ShardExit::Stopped) => None,
            Err(e) => {
                ctx.health.reader_failed(&shard, &format!("{e:#}"));
                let ran_long = started.is_some_and(|s| s.elapsed() >= RESTART_RESET_AFTER);
                let failures = match self.restarts.get(&shard) {
                    Some(r) if !ran_long => r.failures + 1,
                    _ => 1,
                };
                let delay = restart_delay(failures);
                self.restarts.insert(shard.clone(), Restart { failures, not_before: Instant::now() + delay });
                tracing::error!(
                    %shard,
                    failures,
                    retry_in_ms = delay.as_millis() as u64,
                    error = format!("{e:#}"),
                    "shard reader failed; restarting it after a back-off"
                );
                Some(delay)
            }
        }
    }

    /// One pass: list the shards, load the checkpoints of those not seen
    /// yet, take leases (fleet mode), start the readers that may start.
    /// Returns the wait before the next pass; `None` when stopped meanwhile.
    async fn pass(&mut self) -> Option<Duration> {
        let stream = self.ctx.settings.config.stream.clone();
        let ctx = self.ctx.clone();
        let listing = tokio::select! {
            listing = kinesis::list_shards(&ctx.kinesis, &stream) => listing,
            _ = self.shutdown.stopping() => return None,
        };
        let shards = match listing {
            Ok(s) => s,
            Err(e) => {
                ctx.metrics.record_read_error(if e.is_transient() { "transient" } else { "fatal" });
                ctx.health.worker_failed("listing", &e);
                // Throttling is paced, not backed off: the listing (and
                // /healthz) recovers within a second of it ending. Anything
                // else is retried too: an outage never ends the worker.
                let class = match e.retry_class() {
                    RetryClass::Throttled => RetryClass::Throttled,
                    _ => RetryClass::Transient,
                };
                let wait = self.loop_backoff.after(class).unwrap_or(self.refresh);
                tracing::error!(stream, error = %e, retry_in_ms = wait.as_millis() as u64, "listing shards failed");
                return Some(wait);
            }
        };
        ctx.health.worker_ok("listing");
        // A checkpoint store that fails for a while (DynamoDB 5xx, a read-only
        // disk) delays the readers it concerns; it never ends the worker.
        let loading = Instant::now();
        match self.load_ended(&shards).await {
            None => return None,
            Some(Err(e)) => {
                ctx.health.worker_failed_since("checkpoint_load", loading, &e);
                let wait = self.loop_backoff.after(RetryClass::Transient).unwrap_or(self.refresh);
                tracing::error!(stream, error = %e, retry_in_ms = wait.as_millis() as u64, "loading checkpoints failed");
                return Some(wait);
            }
            Some(Ok(())) => {}
        }
        ctx.health.worker_ok("checkpoint_load");
        self.loop_backoff.reset();
        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        // A parent that aged out of the listing is long finished.
        let ended = &self.ended;
        let ready: Vec<&ShardInfo> = shards
            .iter()
            .filter(|s| {
                !ended.contains(&s.id) && s.parents.iter().all(|p| ended.contains(p) || !listed.contains(p.as_str()))
            })
            .collect();
        if ctx.leases.is_some() && !self.take_leases(&ready).await {
            return None;
        }
        Some(self.start_readers(&ready))
    }

    /// Marks the shards whose checkpoint says ended, loading the checkpoints
    /// of the shards not running nor known ended. `None` when stopped
    /// meanwhile.
    async fn load_ended(&mut self, shards: &[ShardInfo]) -> Option<shardlake::Result<()>> {
        for s in shards {
            if self.ended.contains(&s.id) || self.running.contains_key(&s.id) {
                continue;
            }
            let loaded = tokio::select! {
                loaded = self.ctx.checkpoints.load(&s.id) => loaded,
                _ = self.shutdown.stopping() => return None,
            };
            match loaded {
                Ok(c) if c.ended => {
                    self.ended.insert(s.id.clone());
                }
                Ok(_) => {}
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(()))
    }

    /// Fleet mode: takes this worker's share of the `eligible` shards'
    /// leases; a failure is reported and tried again next pass. `false`
    /// when stopped meanwhile.
    async fn take_leases(&self, eligible: &[&ShardInfo]) -> bool {
        let (ctx, Some(leases)) = (&self.ctx, &self.ctx.leases) else { return true };
        let started = Instant::now();
        let balanced = tokio::select! {
            balanced = leases.balance(eligible) => balanced,
            _ = self.shutdown.stopping() => return false,
        };
        match balanced {
            Ok(unowned) => {
                ctx.health.worker_ok("lease_balance");
                if unowned == 0 {
                    ctx.health.worker_ok("leases");
                } else {
                    let why = format!("holds no lease while {unowned} shard(s) have no live owner");
                    ctx.health.worker_failed("leases", &why);
                }
            }
            Err(e) => {
                ctx.health.worker_failed_since("lease_balance", started, &e);
                let stream = &ctx.settings.config.stream;
                tracing::error!(stream, error = %e, "taking leases failed; retrying next interval");
            }
        }
        true
    }

    /// Starts a reader for each `ready` shard not running, past its restart
    /// back-off and (fleet mode) leased to this worker. Returns the wait
    /// before the next pass: the refresh interval, or less when a back-off
    /// ends sooner.
    fn start_readers(&mut self, ready: &[&ShardInfo]) -> Duration {
        let mut wait = self.refresh;
        for s in ready {
            if self.running.contains_key(&s.id) {
                continue;
            }
            if let Some(r) = self.restarts.get(&s.id)
                && r.not_before > Instant::now()
            {
                // Look again when its back-off ends.
                wait = wait.min(r.not_before - Instant::now());
                continue;
            }
            let (lease, lost) = match &self.ctx.leases {
                Some(leases) => match leases.lease_for_reader(&s.id) {
                    Some((counter, lost)) => (Some(counter), lost),
                    None => continue,
                },
                None => (None, CancellationToken::new()),
            };
            tracing::info!(shard = %s.id, lease, "starting shard reader");
            let (ctx, shard, shutdown) = (self.ctx.clone(), s.id.clone(), self.shutdown.clone());
            let task = self.readers.spawn(async move {
                let result = read_shard(ctx, shard.clone(), ShardLease { counter: lease, lost }, &shutdown).await;
                // The log and /healthz print the cause's whole chain.
                (shard, lease, result.map_err(anyhow::Error::from))
            });
            self.tasks.insert(task.id(), s.id.clone());
            self.running.insert(s.id.clone(), Instant::now());
        }
        wait
    }

    /// After the stop: waits for every reader's final flush; returns how
    /// many failed.
    async fn final_flushes(mut self) -> usize {
        let mut failed = 0;
        while let Some(joined) = self.readers.join_next_with_id().await {
            let (shard, _, result) = self.end_of(joined);
            if let Err(e) = result {
                failed += 1;
                tracing::error!(
                    %shard,
                    error = format!("{e:#}"),
                    "final flush failed; the shard resumes from its checkpoint"
                );
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_exponentially_and_never_near_zero() {
        for failures in 1..=12 {
            let ceiling = RESTART_BACKOFF.ceiling(failures);
            for _ in 0..50 {
                let d = restart_delay(failures);
                assert!(d >= ceiling / 2 && d <= ceiling, "{failures}: {d:?} of {ceiling:?}");
            }
        }
        assert_eq!(RESTART_BACKOFF.ceiling(1), Duration::from_secs(1));
        assert_eq!(RESTART_BACKOFF.ceiling(4), Duration::from_secs(8));
        assert_eq!(RESTART_BACKOFF.ceiling(20), Duration::from_secs(60));
    }
}
