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

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::kinesis::{self, ShardInfo};
use crate::shard::Context;
use crate::shard::reader::{ShardExit, ShardLease, read_shard};

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

/// Runs readers for every shard until `cancel` fires, then waits for their
/// final flushes.
pub async fn run(ctx: Arc<Context>, cancel: CancellationToken) -> anyhow::Result<()> {
    let stream = ctx.settings.config.stream.clone();
    let renew_every = ctx.settings.config.fleet.renew_every();
    let lease_duration = ctx.settings.config.fleet.lease_duration;
    let refresh = match &ctx.leases {
        Some(_) => ctx.settings.config.polling.shard_refresh.min(renew_every),
        None => ctx.settings.config.polling.shard_refresh,
    };
    // Renewals run on their own task, so a slow ListShards or balance never
    // lets a held lease expire; it stops only after the final commits.
    let renew_stop = CancellationToken::new();
    let renewer = ctx.leases.as_ref().map(|_| {
        let (ctx, stop) = (ctx.clone(), renew_stop.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(renew_every);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
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
        })
    });
    // Each reader reports its shard, the lease counter it read under (fleet)
    // and how it ended.
    let (done_tx, mut done_rx) = mpsc::channel::<(String, Option<u64>, anyhow::Result<ShardExit>)>(64);
    let mut running: HashMap<String, (tokio::task::JoinHandle<()>, Instant)> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut restarts: HashMap<String, Restart> = HashMap::new();
    // The loop's own back-off, over failed listings and checkpoint loads.
    let mut loop_backoff = Backoff::equal_jitter(RESTART_BACKOFF);
    let mut wait = Duration::ZERO;
    // The loop's own calls are abandoned at shutdown like the readers' reads:
    // a hung listing must not hold the final flushes' exit.
    'run: loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            Some((shard, lease, result)) = done_rx.recv() => {
                let started = running.remove(&shard).map(|(_, started)| started);
                if result.is_ok() {
                    restarts.remove(&shard);
                    ctx.health.reader_stopped(&shard);
                    ctx.metrics.forget_shard(&shard);
                }
                match result {
                    Ok(ShardExit::Ended) => {
                        ended.insert(shard.clone());
                        if let Some(leases) = &ctx.leases {
                            leases.release(&shard).await;
                        }
                    }
                    Ok(ShardExit::Lost) => {
                        if let (Some(leases), Some(counter)) = (&ctx.leases, lease) {
                            leases.mark_lost(&shard, counter);
                        }
                    }
                    Ok(ShardExit::Stopped) => {}
                    Err(e) => {
                        ctx.health.reader_failed(&shard, &format!("{e:#}"));
                        let ran_long = started.is_some_and(|s| s.elapsed() >= RESTART_RESET_AFTER);
                        let failures = match restarts.get(&shard) {
                            Some(r) if !ran_long => r.failures + 1,
                            _ => 1,
                        };
                        let delay = restart_delay(failures);
                        restarts.insert(shard.clone(), Restart { failures, not_before: Instant::now() + delay });
                        tracing::error!(
                            shard,
                            failures,
                            retry_in_ms = delay.as_millis() as u64,
                            error = format!("{e:#}"),
                            "shard reader failed; restarting it after a back-off"
                        );
                        wait = delay.min(refresh);
                        continue;
                    }
                }
            }
        }
        wait = refresh;
        let listing = tokio::select! {
            listing = kinesis::list_shards(&ctx.kinesis, &stream) => listing,
            _ = cancel.cancelled() => break,
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
                wait = loop_backoff.after(class).unwrap_or(refresh);
                tracing::error!(stream, error = %e, retry_in_ms = wait.as_millis() as u64, "listing shards failed");
                continue;
            }
        };
        ctx.health.worker_ok("listing");
        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        // A checkpoint store that fails for a while (DynamoDB 5xx, a read-only
        // disk) delays the readers it concerns; it never ends the worker.
        let mut load_failed = None;
        let loading = Instant::now();
        for s in &shards {
            if ended.contains(&s.id) || running.contains_key(&s.id) {
                continue;
            }
            let loaded = tokio::select! {
                loaded = ctx.checkpoints.load(&s.id) => loaded,
                _ = cancel.cancelled() => break 'run,
            };
            match loaded {
                Ok(c) if c.ended => {
                    ended.insert(s.id.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    load_failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = load_failed {
            ctx.health.worker_failed_since("checkpoint_load", loading, &e);
            wait = loop_backoff.after(RetryClass::Transient).unwrap_or(refresh);
            tracing::error!(stream, error = %e, retry_in_ms = wait.as_millis() as u64, "loading checkpoints failed");
            continue;
        }
        ctx.health.worker_ok("checkpoint_load");
        loop_backoff.reset();
        // A parent that aged out of the listing is long finished.
        let ready = |s: &ShardInfo| {
            !ended.contains(&s.id) && s.parents.iter().all(|p| ended.contains(p) || !listed.contains(p.as_str()))
        };
        if let Some(leases) = &ctx.leases {
            let eligible: Vec<&ShardInfo> = shards.iter().filter(|s| ready(s)).collect();
            let started = Instant::now();
            let balanced = tokio::select! {
                balanced = leases.balance(&eligible) => balanced,
                _ = cancel.cancelled() => break,
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
                    tracing::error!(stream, error = %e, "taking leases failed; retrying next interval");
                }
            }
        }
        for s in &shards {
            if running.contains_key(&s.id) || !ready(s) {
                continue;
            }
            if let Some(r) = restarts.get(&s.id)
                && r.not_before > Instant::now()
            {
                // Look again when its back-off ends.
                wait = wait.min(r.not_before - Instant::now());
                continue;
            }
            let (lease, lost) = match &ctx.leases {
                Some(leases) => match leases.lease_for_reader(&s.id) {
                    Some((counter, lost)) => (Some(counter), lost),
                    None => continue,
                },
                None => (None, CancellationToken::new()),
            };
            tracing::info!(shard = s.id, lease, "starting shard reader");
            let (ctx, shard, cancel, done) = (ctx.clone(), s.id.clone(), cancel.clone(), done_tx.clone());
            running.insert(
                s.id.clone(),
                (
                    tokio::spawn(async move {
                        let result = read_shard(ctx, shard.clone(), ShardLease { counter: lease, lost }, cancel).await;
                        let _ = done.send((shard, lease, result)).await;
                    }),
                    Instant::now(),
                ),
            );
        }
    }
    drop(done_tx);
    let mut failed = 0;
    // Receive before joining: a reader's last act is sending its exit, so
    // joining first would wait for ever on readers blocked on a full channel
    // (more shards than its capacity).
    while let Some((shard, _, result)) = done_rx.recv().await {
        if let Err(e) = result {
            failed += 1;
            tracing::error!(
                shard,
                error = format!("{e:#}"),
                "final flush failed; the shard resumes from its checkpoint"
            );
        }
    }
    for (_, (handle, _)) in running.drain() {
        let _ = handle.await;
    }
    if let Some(renewer) = renewer {
        renew_stop.cancel();
        let _ = renewer.await;
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
