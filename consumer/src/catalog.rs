//! Keeping the Glue catalog in step with the lake (`catalog = "glue://DB/TABLE"`).
//!
//! Registration never blocks or undoes a commit: a reader commits its batch
//! together with the partitions the catalog is not yet known to have
//! ([`shardlake::checkpoint::ShardState::catalog_pending`]), then hands them
//! to the [`Registrar`], whose one task registers them in the background,
//! retrying with back-off and reporting failures on `/healthz`. Whoever reads
//! the shard next (this worker after a crash, another after a lease moves)
//! finds the list in the checkpoint and registers it again, so a crash
//! between commit and registration loses nothing; registering a partition
//! that exists is success, so workers racing on one partition are safe.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardlake::catalog::{CatalogTable, Ensured};
use shardlake::retry::RetryPolicy;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::worker::Context;

/// Back-off between failed catalog passes.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(500), cap: Duration::from_secs(30) };

struct State {
    /// The table was created or checked.
    ensured: bool,
    /// Committed partitions not registered yet.
    pending: BTreeSet<String>,
}

/// The worker's catalog table and the partitions waiting to be registered.
pub struct Registrar {
    table: CatalogTable,
    create: bool,
    state: Mutex<State>,
    wake: Notify,
}

impl Registrar {
    /// A registrar for `table`; `ensured` when the start-up check passed
    /// (otherwise the background task creates or checks it first).
    pub fn new(table: CatalogTable, create: bool, ensured: bool) -> Self {
        Registrar { table, create, state: Mutex::new(State { ensured, pending: BTreeSet::new() }), wake: Notify::new() }
    }

    /// The partitions of `paths` not known to be registered: what a commit
    /// must carry in its checkpoint.
    pub fn unconfirmed(&self, paths: impl IntoIterator<Item = String>) -> Vec<String> {
        self.table.unconfirmed(paths)
    }

    /// Queues partitions (committed, or found pending in a checkpoint) for
    /// registration.
    pub fn submit(&self, paths: &[String]) {
        if paths.is_empty() {
            return;
        }
        self.state.lock().expect("registrar lock").pending.extend(paths.iter().cloned());
        self.wake.notify_one();
    }

    /// Schema evolution: the table gets the columns of `def` (see
    /// [`CatalogTable::evolve`]); failures are the caller's to retry.
    pub async fn evolve(&self, def: shardlake::schema::TableDefinition) -> shardlake::Result<bool> {
        let updated = self.table.evolve(def).await?;
        if updated {
            eprintln!("shardlake-consumer: catalog table {} has the new columns", self.table.name());
        }
        Ok(updated)
    }

    /// Partitions waiting.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("registrar lock").pending.len()
    }

    fn idle(&self) -> bool {
        let s = self.state.lock().expect("registrar lock");
        s.ensured && s.pending.is_empty()
    }

    /// Checks the table if not done yet, then registers what is pending;
    /// returns the partitions created.
    async fn pass(&self) -> shardlake::Result<usize> {
        if !self.state.lock().expect("registrar lock").ensured {
            let ensured = self.table.ensure(self.create).await?;
            tracing::info!(table = %self.table.name(), ?ensured, "catalog table ready");
            self.state.lock().expect("registrar lock").ensured = true;
        }
        let todo: Vec<String> = self.state.lock().expect("registrar lock").pending.iter().cloned().collect();
        let result = self.table.register(&todo).await;
        // What was registered leaves the queue even when a later chunk failed.
        let left: BTreeSet<String> = self.table.unconfirmed(todo.iter().cloned()).into_iter().collect();
        let mut state = self.state.lock().expect("registrar lock");
        for path in todo.iter().filter(|p| !left.contains(*p)) {
            state.pending.remove(path);
        }
        result
    }
}

/// The registrar's task: one pass whenever partitions are queued, retried
/// with back-off while the catalog fails. After `finish` fires it returns
/// once nothing is pending (the caller bounds that wait); `ctx.abort` ends
/// it at once.
pub async fn run(ctx: Arc<Context>, registrar: Arc<Registrar>, finish: CancellationToken) {
    let mut attempt = 0;
    loop {
        if registrar.idle() {
            if finish.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = registrar.wake.notified() => {}
                _ = finish.cancelled() => {}
                _ = ctx.abort.cancelled() => return,
            }
            continue;
        }
        let result = tokio::select! {
            r = registrar.pass() => r,
            _ = ctx.abort.cancelled() => return,
        };
        match result {
            Ok(created) => {
                attempt = 0;
                ctx.health.worker_ok("catalog");
                ctx.metrics.record_catalog(created, registrar.pending());
                if created > 0 {
                    tracing::info!(table = %registrar.table.name(), created, "registered partitions");
                }
            }
            Err(e) => {
                attempt += 1;
                ctx.health.worker_failed("catalog", &e);
                ctx.metrics.record_catalog_failure(registrar.pending());
                let delay = BACKOFF.delay(attempt, &mut rand::rng());
                tracing::error!(
                    table = %registrar.table.name(),
                    attempt,
                    error = %e,
                    pending = registrar.pending(),
                    delay_ms = delay.as_millis() as u64,
                    "catalog update failed, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.abort.cancelled() => return,
                }
            }
        }
    }
}

/// The start-up check: a table that does not fit (or is missing without
/// `create`) is a configuration error and stops the worker with every
/// difference named; a catalog that cannot be reached is retried by the
/// registrar's task, and the lake does not wait for it.
pub async fn ensure_at_start(table: &CatalogTable, create: bool) -> anyhow::Result<bool> {
    match table.ensure(create).await {
        Ok(ensured) => {
            let what = if ensured == Ensured::Created { "created" } else { "checked" };
            eprintln!("shardlake-consumer: catalog table {} {what} ({:?} partitions)", table.name(), table.mode());
            Ok(true)
        }
        Err(e @ shardlake::Error::Catalog { transient: true, .. }) => {
            tracing::warn!(error = %e, "the catalog cannot be reached; the lake goes on, registration retries");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
