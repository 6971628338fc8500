//! A worker's Iceberg commits: every shard's ready batches go into one
//! append per `commit_interval`, not one snapshot per shard flush.
//!
//! A reader uploads its batch's files, hands them here and waits; the
//! committer appends what has gathered once `commit_interval` has passed
//! since its last commit (at once when the worker stops), and answers each
//! reader: appended, already in the table (a replay), or not committed
//! because its lease was lost meanwhile. Only then does the reader write its
//! checkpoint, so a crash between the two replays a batch the table's
//! snapshots already name, which the append leaves out.

use std::time::Duration;

use shardlake::retry::{GaveUp, RetryClass};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::table::{BatchFiles, BatchKey, IcebergTable, TableError};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::retry::{Dependency, IN_PLACE, Report, retry};

/// Batches a committer holds at most before it commits early (a bound on
/// memory and on one snapshot's size).
const MAX_PENDING_BATCHES: usize = 4096;

/// What became of a batch handed to the committer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Appended in this snapshot.
    Appended(Option<i64>),
    /// A snapshot already held it (appended before a crash or by a worker
    /// that held the lease before).
    Already,
    /// Its lease was lost before the commit: not appended.
    LeaseLost,
}

/// Why a batch's commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The table refused it in a way retrying does not fix.
    #[error("{0}")]
    Table(String),
    /// The worker is aborting: nothing more is committed.
    #[error("the worker is aborting; the batch was not committed")]
    Aborted,
}

struct Request {
    batch: BatchFiles,
    /// Whether the shard's lease was lost (checked right before the commit).
    lost: CancellationToken,
    reply: oneshot::Sender<Result<Committed, CommitError>>,
}

/// The handle readers commit through.
#[derive(Debug, Clone)]
pub struct Committer {
    requests: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer task of `table`. It ends when every handle is
    /// dropped; `stop` makes it commit what it holds at once from then on;
    /// `abort` makes it give up.
    pub fn spawn(
        table: IcebergTable,
        interval: Duration,
        parts: Parts,
        stop: CancellationToken,
        abort: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (requests, rx) = mpsc::channel(MAX_PENDING_BATCHES);
        let task = tokio::spawn(run(table, interval, parts, rx, stop, abort));
        (Committer { requests }, task)
    }

    /// Commits `batch` in the next append, unless `lost` has fired by then.
    pub async fn commit(&self, batch: BatchFiles, lost: CancellationToken) -> Result<Committed, CommitError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Request { batch, lost, reply }).await.map_err(|_| CommitError::Aborted)?;
        answer.await.unwrap_or(Err(CommitError::Aborted))
    }
}

/// What the committer reports to.
pub struct Parts {
    /// Health, for a table that fails.
    pub health: std::sync::Arc<Health>,
    /// Metrics.
    pub metrics: std::sync::Arc<Metrics>,
}

async fn run(
    table: IcebergTable,
    interval: Duration,
    parts: Parts,
    mut rx: mpsc::Receiver<Request>,
    stop: CancellationToken,
    abort: CancellationToken,
) {
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = rx.recv().await {
        let mut pending = vec![first];
        // Gather until the interval since the last commit has passed.
        let due = last_commit.map_or_else(Instant::now, |t| t + interval);
        while pending.len() < MAX_PENDING_BATCHES && !stop.is_cancelled() {
            tokio::select! {
                more = rx.recv() => match more {
                    Some(r) => pending.push(r),
                    None => break,
                },
                _ = tokio::time::sleep_until(due) => break,
                _ = stop.cancelled() => break,
            }
        }
        // Whatever arrived meanwhile joins too.
        while let Ok(r) = rx.try_recv() {
            pending.push(r);
        }
        last_commit = Some(Instant::now());
        commit(&table, pending, &parts, &abort).await;
    }
}

/// One append of `pending`, retried while it fails transiently.
async fn commit(table: &IcebergTable, pending: Vec<Request>, parts: &Parts, abort: &CancellationToken) {
    let (lost, live): (Vec<Request>, Vec<Request>) = pending.into_iter().partition(|r| r.lost.is_cancelled());
    for r in lost {
        parts.metrics.record_table_batches("lease_lost", 1);
        let _ = r.reply.send(Ok(Committed::LeaseLost));
    }
    if live.is_empty() {
        return;
    }
    let batches: Vec<BatchFiles> = live.iter().map(|r| r.batch.clone()).collect();
    let report = Report { health: &parts.health, metrics: &parts.metrics, shard: None };
    let about = format!("of {} batches to {}", batches.len(), table.ident());
    let append = || table.append(batches.clone());
    let classify = |e: &TableError| if e.transient() { RetryClass::Transient } else { RetryClass::Fatal };
    let result = retry(report, Dependency::Table, &about, &IN_PLACE, append, classify, abort.cancelled()).await;
    match result {
        Ok(done) => {
            parts.health.worker_ok(Dependency::Table.what());
            parts.metrics.record_table_commit(done.snapshot_id.is_some());
            parts.metrics.record_table_batches("appended", done.appended.len());
            parts.metrics.record_table_batches("already", done.already.len());
            tracing::info!(
                table = %table.ident(),
                snapshot = done.snapshot_id,
                appended = done.appended.len(),
                already = done.already.len(),
                "table commit"
            );
            for r in live {
                let outcome = if done.already.contains(&r.batch.key) {
                    Committed::Already
                } else {
                    Committed::Appended(done.snapshot_id)
                };
                let _ = r.reply.send(Ok(outcome));
            }
        }
        Err(GaveUp::Failed(e)) => {
            let text = e.to_string();
            for r in live {
                let _ = r.reply.send(Err(CommitError::Table(text.clone())));
            }
        }
        Err(GaveUp::Stopped(_)) => {
            for r in live {
                let _ = r.reply.send(Err(CommitError::Aborted));
            }
        }
    }
}

/// The key of a shard's batch: `stream/shard/first-last` (sequence numbers).
pub fn shard_batch_key(stream: &str, shard: &str, first: &str, last: &str) -> BatchKey {
    BatchKey(format!("{stream}/{shard}/{first}-{last}"))
}
