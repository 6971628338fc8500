//! The worker: discovers shards, runs one reader task per shard (children
//! only after all their parents ended and committed), shares the memory
//! budget between their batches, and stops them all on shutdown. In fleet
//! mode it reads only the shards it holds leases on: a renewer task keeps
//! them, each interval the worker takes its fair share, and on shutdown it
//! releases them after the final commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardlake::retry::{Backoff, RetryClass, RetryPolicy, Retryable};
use tokio::time::Instant;

use crate::checkpoint::CheckpointStore;
use shardlake::store::ObjectStore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::Thresholds;
use crate::config::Settings;
use crate::health::Health;
use crate::kinesis::{self, ShardInfo};
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::reader::{ShardExit, ShardLease, read_shard};

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

/// Everything the shard readers share.
pub struct Context {
    /// The resolved config.
    pub settings: Settings,
    /// Flush thresholds from `[buffer]`.
    pub thresholds: Thresholds,
    /// Kinesis client (SDK retries off; the readers back off themselves).
    pub kinesis: aws_sdk_kinesis::Client,
    /// Enhanced fan-out: the registered consumer's ARN; `None` when polling.
    pub fan_out: Option<String>,
    /// The lake.
    pub lake: ObjectStore,
    /// Checkpoints and intents.
    pub checkpoints: CheckpointStore,
    /// Fleet mode (`dynamodb://` store): this worker's leases; `None` for a
    /// single worker, which reads every shard.
    pub leases: Option<Leases>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The memory budget shared by all batches.
    pub budget: MemoryBudget,
    /// The memory of GetRecords responses, shared by all readers.
    pub read_buffers: crate::get_records::ReadBuffers,
    /// Test hook for crash points.
    pub crash: CrashPoints,
    /// Fired when the process gives up waiting (second signal, shutdown
    /// timeout): uploads stop retrying and nothing more is committed.
    pub abort: CancellationToken,
    /// What `/healthz` and the time-based gauges are computed from.
    pub health: Health,
    /// The Glue catalog table and its partition registrations (`catalog`).
    pub catalog: Option<Arc<crate::catalog::Registrar>>,
    /// Schema versions: the current one for new batches, older ones for replays.
    pub schemas: crate::evolve::Schemas,
}

/// Bytes held by each shard's batch, against one global budget. Every
/// reader updates it after every call, so an update costs O(log shards), not
/// a pass over all of them.
pub struct MemoryBudget {
    /// The budget in bytes.
    pub limit: usize,
    held: Mutex<Holdings>,
}

#[derive(Default)]
struct Holdings {
    by_shard: HashMap<String, usize>,
    total: usize,
    /// Non-zero holdings: size → how many shards hold that much.
    sizes: BTreeMap<usize, usize>,
}

impl Holdings {
    fn count(&mut self, bytes: usize, add: bool) {
        if bytes == 0 {
            return;
        }
        if add {
            *self.sizes.entry(bytes).or_default() += 1;
            self.total += bytes;
        } else {
            if let Some(n) = self.sizes.get_mut(&bytes) {
                *n -= 1;
                if *n == 0 {
                    self.sizes.remove(&bytes);
                }
            }
            self.total -= bytes;
        }
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget { limit, held: Mutex::new(Holdings::default()) }
    }

    /// Sets what `shard` holds; returns the total and the largest holding.
    pub fn update(&self, shard: &str, bytes: usize) -> (usize, usize) {
        let mut held = self.held.lock().expect("budget lock");
        let old = match held.by_shard.get_mut(shard) {
            Some(v) => std::mem::replace(v, bytes),
            None => {
                held.by_shard.insert(shard.to_string(), bytes);
                0
            }
        };
        if old != bytes {
            held.count(old, false);
            held.count(bytes, true);
        }
        (held.total, held.sizes.last_key_value().map_or(0, |(&size, _)| size))
    }

    /// Forgets a shard whose reader stopped.
    pub fn remove(&self, shard: &str) {
        let mut held = self.held.lock().expect("budget lock");
        if let Some(old) = held.by_shard.remove(shard) {
            held.count(old, false);
        }
    }
}

/// Test hooks: `SHARDLAKE_CRASH_AT=point:n` aborts the process (like
/// SIGKILL: no flush, no cleanup) the n-th time it reaches `point`
/// (`after_intent`, `after_upload`, `before_commit`, `after_commit`,
/// `after_schema_version`); `SHARDLAKE_STOP_AT`
/// instead freezes it there with SIGSTOP (like a long GC pause or a network
/// partition) until the test sends SIGCONT. Crash-safety and fencing tests
/// use them to stop the process at exact steps of the exactly-once protocol.
pub struct CrashPoints {
    target: Option<(String, u64)>,
    hits: AtomicU64,
    stop: Option<(String, u64)>,
    stop_hits: AtomicU64,
}

fn hook_from_env(var: &str) -> anyhow::Result<Option<(String, u64)>> {
    match std::env::var(var) {
        Ok(spec) => {
            let (point, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
            let n = n.parse().map_err(|_| anyhow::anyhow!("{var}={spec}: expected point:count"))?;
            Ok(Some((point.to_string(), n)))
        }
        Err(_) => Ok(None),
    }
}

impl CrashPoints {
    /// Reads `SHARDLAKE_CRASH_AT` and `SHARDLAKE_STOP_AT`.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(CrashPoints {
            target: hook_from_env("SHARDLAKE_CRASH_AT")?,
            hits: AtomicU64::new(0),
            stop: hook_from_env("SHARDLAKE_STOP_AT")?,
            stop_hits: AtomicU64::new(0),
        })
    }

    /// Marks `point` reached; aborts or freezes when it is the configured hit.
    pub fn hit(&self, point: &str) {
        if let Some((p, n)) = &self.target
            && p == point
            && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_CRASH_AT: aborting at {point} #{n}");
            std::process::abort();
        }
        if let Some((p, n)) = &self.stop
            && p == point
            && self.stop_hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_STOP_AT: freezing at {point} #{n} until SIGCONT");
            // The whole process stops, renewals included; a test hook, so a
            // blocking call on this thread is fine.
            let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
        }
    }
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

    #[test]
    fn budget_reports_total_and_largest() {
        let b = MemoryBudget::new(100);
        assert_eq!(b.update("a", 30), (30, 30));
        assert_eq!(b.update("b", 50), (80, 50));
        assert_eq!(b.update("a", 10), (60, 50));
        b.remove("b");
        assert_eq!(b.update("a", 10), (10, 10));
        // Equal holdings count each; the largest goes when its last holder drops.
        assert_eq!(b.update("c", 40), (50, 40));
        assert_eq!(b.update("d", 40), (90, 40));
        assert_eq!(b.update("c", 0), (50, 40));
        assert_eq!(b.update("d", 5), (15, 10));
        b.remove("a");
        b.remove("never");
        assert_eq!(b.update("d", 5), (5, 5));
    }
}
