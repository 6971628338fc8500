//! The consumer's one retry loop for calls to what it depends on (S3, the
//! checkpoint store, the schema store, the Glue catalog): how long to wait
//! and when to give up come from [`shardlake::retry`]; what a failed attempt
//! means to an operator is said here, once: `/healthz`, the failure metric
//! and the log line.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use shardlake::retry::{FailedAttempt, GaveUp, RetryClass, RetryPolicy};
use tokio::time::Instant;

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// Retried in place while the shard waits (an upload, a checkpoint write):
/// capped at 3 s, so the batch lands within seconds of the dependency
/// healing, and `/healthz` reports the failure meanwhile.
pub const IN_PLACE: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(200), cap: Duration::from_secs(3) };

/// Retried in the background (the catalog registrar) or while a shard waits
/// on a fleet-wide change (a schema evolution): capped at 30 s, since other
/// workers and shards go on meanwhile.
pub const BACKGROUND: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(500), cap: Duration::from_secs(30) };

/// What a retried call talks to: names its `/healthz` entry, its failure
/// metric and its log line.
#[derive(Clone, Copy)]
pub enum Dependency<'a> {
    /// A batch's object to the lake (`upload_failures_total`).
    Upload,
    /// A checkpoint write: intent or commit (`checkpoint_failures_total`).
    Checkpoint,
    /// Adding columns to the stored schema and the catalog table.
    Schema,
    /// Appending batches to the Iceberg table (`table_commit_failures_total`).
    Table,
    /// Registering partitions in the catalog (`catalog_failures_total`).
    Catalog {
        /// Partitions waiting to be registered, after the failed attempt.
        pending: &'a (dyn Fn() -> usize + Sync),
    },
}

impl Dependency<'_> {
    /// The `/healthz` name of the failing call.
    pub fn what(self) -> &'static str {
        match self {
            Dependency::Upload => "upload",
            Dependency::Checkpoint => "checkpoint",
            Dependency::Schema => "schema",
            Dependency::Table => "table commit",
            Dependency::Catalog { .. } => "catalog",
        }
    }
}

/// Where a retried call's failures are reported.
#[derive(Clone, Copy)]
pub struct Report<'a> {
    /// Per-shard and worker-wide health.
    pub health: &'a Health,
    /// Failure counters.
    pub metrics: &'a Metrics,
    /// The shard that waits on the call; `None` for a worker-wide task.
    pub shard: Option<&'a str>,
}

impl Report<'_> {
    /// Reports one failed attempt of `call` (`about` names the object or
    /// the step, e.g. the key or `intent`), dated from the start of its attempt.
    pub fn failed<E: Display>(&self, call: Dependency<'_>, about: &str, f: &FailedAttempt<'_, E>) {
        self.count_and_mark(call, f.started, f.error);
        let shard = self.shard.unwrap_or("");
        let delay_ms = f.retry_in.map(|d| d.as_millis() as u64);
        let what = call.what();
        match f.retry_in {
            Some(_) => tracing::error!(
                shard, attempt = f.attempt, error = %f.error, delay_ms, "{what} {about} failed, retrying"
            ),
            None => tracing::error!(shard, attempt = f.attempt, error = %f.error, "{what} {about} failed, giving up"),
        }
    }

    /// The failure metric and `/healthz`.
    fn count_and_mark(&self, call: Dependency<'_>, since: Instant, error: &dyn Display) {
        match call {
            Dependency::Upload => self.metrics.record_upload_failure(),
            Dependency::Checkpoint => self.metrics.record_checkpoint_failure(),
            Dependency::Schema => {}
            Dependency::Table => self.metrics.record_table_commit_failure(),
            Dependency::Catalog { pending } => self.metrics.record_catalog_failure(pending()),
        }
        match self.shard {
            Some(shard) => self.health.failed_since(shard, call.what(), since, error),
            None => self.health.worker_failed_since(call.what(), since, error),
        }
    }
}

impl Report<'_> {
    /// Reports an attempt that a client retried inside one call (the S3
    /// store retries a put or a part), which a later success would hide.
    pub fn retried_inside<E: Display>(&self, call: Dependency<'_>, about: &str, error: &E) {
        self.count_and_mark(call, Instant::now(), error);
        tracing::warn!(shard = self.shard.unwrap_or(""), error = %error, "{} attempt failed ({about})", call.what());
    }
}

/// Runs `op` through `policy` until it succeeds, fails in a way `classify`
/// calls fatal, or `stop` resolves (shutdown, a lost lease), reporting every
/// failed attempt as `call` (see [`Report::failed`]). A failure is dated
/// from the start of its attempt: clients that retry inside a call (DynamoDB,
/// Glue) have been failing since then.
pub async fn retry<T, E, F, Fut>(
    report: Report<'_>,
    call: Dependency<'_>,
    about: &str,
    policy: &RetryPolicy,
    mut op: F,
    classify: impl Fn(&E) -> RetryClass,
    stop: impl Future<Output = ()>,
) -> Result<T, GaveUp<E>>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    // Shared by the two closures; the future is `Send` (readers are spawned).
    policy.run_until(|_| op(), classify, |f| report.failed(call, about, f), stop).await
}

/// Every failure is worth another attempt: for a shard that holds its
/// batch until the dependency heals, and for background tasks.
pub fn always_transient<E>(_: &E) -> RetryClass {
    RetryClass::Transient
}
