//! The exactly-once flush of a shard's batch: record the intent (the
//! batch's sequence range), upload its files, (with an Iceberg table:
//! append them in the worker's next table commit,) commit the checkpoint; every
//! checkpoint write fenced on the shard's lease and retried in place. A
//! crash between any two steps leaves either nothing or a pending intent
//! that the next reader replays into the identical files. Commits also
//! carry the partitions still waiting for the catalog.

use std::time::Instant;

use futures::StreamExt;
use shardlake::pipeline::OutputKind;
use shardlake::retry::{GaveUp, RetryClass};

use super::reader::Reader;
use super::{Context, ShardError};
use crate::checkpoint::{Commit, Intent};
use crate::crash::CrashPoint;
use crate::kinesis::ShardId;
use crate::lake::batch::FlushReason;
use crate::lake::iceberg::committer::{CommitError, Committed, shard_batch_key};
use crate::lake::iceberg::{BatchFiles, TableAppender, WrittenFile};
use crate::retry::{Dependency, IN_PLACE, Report, always_transient, retry};
use crate::stop::Stops;

/// Objects of one batch uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Bytes of partition paths waiting for the catalog that a shard's
/// checkpoint keeps, at most: a DynamoDB item holds 400 KB, and the rest of
/// the item (lease, checkpoint, intent) needs well under the remainder.
const MAX_PENDING_BYTES: usize = 256 * 1024;

impl Reader {
    /// Intent, upload, commit. `ended` marks the shard finished in the same commit.
    pub(super) async fn flush(&mut self, reason: FlushReason, ended: bool) -> Result<(), ShardError> {
        let empty = self.empty_batch();
        let batch = std::mem::replace(&mut self.batch, empty);
        let ctx = self.ctx.clone();
        let (shard, lease) = (self.shard.clone(), self.lease);
        let schema_version = batch.version();
        let Some((first, last, records)) = batch.range() else {
            if ended {
                let pending = self.catalog_pending(Vec::new());
                let commit =
                    Commit { ended: true, catalog_pending: self.stored_pending(&pending), ..Commit::default() };
                let write = || ctx.checkpoints.commit(&shard, lease, &commit);
                write_checkpoint(&ctx, &shard, &self.stops, "commit", write).await?;
                self.committed_partitions(pending);
            }
            return Ok(());
        };
        let started = Instant::now();
        let finished = tokio::task::spawn_blocking(move || batch.finish())
            .await
            .expect("finish task panicked")
            .map_err(|source| ShardError::Batch { shard: shard.clone(), source })?;
        let intent = Intent { first, last: last.clone(), records, schema_version };
        match &self.replay {
            Some((pending, _)) if *pending != intent => tracing::error!(
                %shard,
                pending = ?pending,
                rebuilt = ?intent,
                "the replayed batch differs from its intent; the stream no longer holds all of its records"
            ),
            Some(_) => {}
            None => {
                let write = || ctx.checkpoints.record_intent(&shard, lease, &intent);
                write_checkpoint(&ctx, &shard, &self.stops, "record intent", write).await?
            }
        }
        ctx.crash.hit(CrashPoint::AfterIntent);
        let key = ctx.table.as_ref().map(|_| {
            shard_batch_key(&ctx.settings.config.stream, &shard, &intent.first.to_string(), &last.to_string())
        });
        // A replayed batch the table holds was uploaded and appended before a
        // crash: only its checkpoint is left to commit.
        let held = match (&ctx.table, &key, &self.replay) {
            (Some(table), Some(key), Some(_)) => table
                .lake
                .table
                .holds(key)
                .await
                .map_err(|e| ShardError::Table { shard: shard.clone(), message: e.to_string() })?,
            _ => false,
        };
        let mut finished = finished;
        if held {
            tracing::info!(%shard, batch = %key.as_ref().map_or("", |k| k.0.as_str()), "replayed batch already in the table");
            finished.objects.clear();
        }
        let table_files: Vec<WrittenFile> = match &ctx.table {
            Some(table) => finished
                .objects
                .iter()
                .filter_map(|o| match &o.kind {
                    OutputKind::Data { partition, footer, .. } => {
                        Some(table.lake.written(&o.key, partition, o.data.len() as u64, footer.clone()))
                    }
                    OutputKind::Errors { .. } => None,
                })
                .collect(),
            None => Vec::new(),
        };
        let files: Vec<(bool, usize)> =
            finished.objects.iter().map(|o| (matches!(o.kind, OutputKind::Data { .. }), o.data.len())).collect();
        let partitions: Vec<String> = finished
            .objects
            .iter()
            .filter_map(|o| match &o.kind {
                OutputKind::Data { partition, .. } => Some(partition.clone()),
                OutputKind::Errors { .. } => None,
            })
            .collect();
        ctx.health.uploading(&shard, &ctx.lake.url(""));
        let uploads = futures::stream::iter(finished.objects.into_iter().map(|o| upload(&ctx, &shard, o)))
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        if uploads.iter().any(|ok| !ok) {
            return Err(ShardError::Abandoned { shard, what: format!("the upload of batch {}", intent.first) });
        }
        ctx.health.uploaded(&shard);
        ctx.crash.hit(CrashPoint::BeforeCommit);
        if let (Some(table), Some(key), false) = (&ctx.table, key, held) {
            let batch = BatchFiles { key, files: table_files };
            append_to_table(table, batch, shard.clone(), self.stops.lost_token()).await?;
            ctx.crash.hit(CrashPoint::AfterTableCommit);
        }
        let pending = self.catalog_pending(partitions);
        let commit = Commit { last: Some(&last), ended, catalog_pending: self.stored_pending(&pending) };
        let write = || ctx.checkpoints.commit(&shard, lease, &commit);
        write_checkpoint(&ctx, &shard, &self.stops, "commit", write).await?;
        ctx.crash.hit(CrashPoint::AfterCommit);
        self.committed_partitions(pending);
        ctx.health.committed(&shard);
        ctx.budget.update(&shard, 0);
        ctx.metrics.record_flush(reason.as_str(), &finished.stats, &files, started.elapsed().as_secs_f64());
        tracing::info!(
            %shard,
            reason = reason.as_str(),
            first = %intent.first,
            last = %last,
            records = finished.user_records,
            files = files.len(),
            ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        Ok(())
    }
}

/// Hands a shard's batch to the worker's table commits and waits for its
/// snapshot; a lease lost meanwhile (`lost`) means it was not appended.
async fn append_to_table(
    table: &TableAppender,
    batch: BatchFiles,
    shard: ShardId,
    lost: tokio_util::sync::CancellationToken,
) -> Result<(), ShardError> {
    match table.committer.commit(batch, lost).await {
        Ok(Committed::Appended(_) | Committed::Already) => Ok(()),
        Ok(Committed::LeaseLost) => Err(ShardError::LeaseLost { shard }),
        Err(CommitError::Aborted) => Err(ShardError::Abandoned { shard, what: "the table commit".into() }),
        Err(CommitError::Table(message)) => Err(ShardError::Table { shard, message }),
    }
}

impl Reader {
    /// What a commit carries as `catalog_pending`: the batch's partitions
    /// and those earlier commits carried, less what the catalog is known to
    /// have (empty without a catalog).
    fn catalog_pending(&self, batch_partitions: Vec<String>) -> Vec<String> {
        match &self.ctx.catalog {
            Some(catalog) => catalog.unconfirmed(self.catalog_pending.iter().cloned().chain(batch_partitions)),
            None => Vec::new(),
        }
    }

    /// The part of `pending` a commit stores: all of it, up to
    /// [`MAX_PENDING_BYTES`] of paths (a long catalog outage under a
    /// template with many or long values per shard would otherwise outgrow
    /// a DynamoDB item and stop every commit); beyond that a crash leaves
    /// the rest to `catalog sync`.
    fn stored_pending<'a>(&self, pending: &'a [String]) -> &'a [String] {
        let kept = pending_within(pending, MAX_PENDING_BYTES);
        if kept < pending.len() {
            tracing::warn!(
                shard = %self.shard,
                pending = pending.len(),
                kept,
                max_bytes = MAX_PENDING_BYTES,
                "more partitions wait for the catalog than a checkpoint keeps; after a crash run `catalog sync`"
            );
        }
        &pending[..kept]
    }

    /// Once the catalog confirmed some of the partitions the checkpoint
    /// lists, writes the shorter list (without moving the checkpoint), so a
    /// quiet shard does not make every restart register them again.
    pub(super) async fn shrink_stored_pending(&mut self) -> Result<(), ShardError> {
        let Some(catalog) = &self.ctx.catalog else { return Ok(()) };
        let confirmations = catalog.table().confirmations();
        if self.stored_pending == 0 || self.replay.is_some() || confirmations == self.pending_checked {
            return Ok(());
        }
        self.pending_checked = confirmations;
        let left = catalog.unconfirmed(self.catalog_pending.iter().cloned());
        if left.len() == self.catalog_pending.len() {
            return Ok(());
        }
        let stored = self.stored_pending(&left).to_vec();
        let (ctx, shard, lease) = (self.ctx.clone(), self.shard.clone(), self.lease);
        let write = || ctx.checkpoints.set_catalog_pending(&shard, lease, &stored);
        write_checkpoint(&ctx, &shard, &self.stops, "pending partitions", write).await?;
        self.stored_pending = stored.len();
        self.catalog_pending = left;
        Ok(())
    }

    /// After a commit: its pending partitions go to the registrar.
    fn committed_partitions(&mut self, pending: Vec<String>) {
        if let Some(catalog) = &self.ctx.catalog {
            catalog.submit(&pending);
        }
        self.stored_pending = pending_within(&pending, MAX_PENDING_BYTES);
        self.catalog_pending = pending;
    }
}

/// How many of `pending` (from the first) fit in `max_bytes` of paths.
fn pending_within(pending: &[String], max_bytes: usize) -> usize {
    let mut bytes = 0;
    pending
        .iter()
        .take_while(|p| {
            bytes += p.len();
            bytes <= max_bytes
        })
        .count()
}

/// A checkpoint write (intent or commit) retried with back-off until it
/// lands, so a checkpoint store that fails for a while (DynamoDB 5xx, a
/// read-only disk) holds the batch in memory instead of restarting the
/// reader into re-reading it. A lost lease is returned at once (the write is
/// fenced and never lands); the worker aborting gives up.
async fn write_checkpoint<F, Fut>(
    ctx: &Context,
    shard: &ShardId,
    stops: &Stops,
    what: &'static str,
    write: F,
) -> Result<(), ShardError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = shardlake::Result<()>>,
{
    let report = Report { health: &ctx.health, metrics: &ctx.metrics, shard: Some(shard) };
    let classify = |e: &shardlake::Error| match e {
        shardlake::Error::LeaseLost { .. } => RetryClass::Fatal,
        _ => RetryClass::Transient,
    };
    let stop = stops.abandon();
    match retry(report, Dependency::Checkpoint, what, &IN_PLACE, write, classify, stop).await {
        Ok(()) => Ok(()),
        Err(GaveUp::Failed(shardlake::Error::LeaseLost { .. })) => Err(ShardError::LeaseLost { shard: shard.clone() }),
        Err(GaveUp::Stopped(_)) if stops.lease_lost() => Err(ShardError::LeaseLost { shard: shard.clone() }),
        Err(GaveUp::Failed(source)) => Err(ShardError::Checkpoint { shard: shard.clone(), what, source }),
        Err(GaveUp::Stopped(e)) => {
            let why = e.map_or_else(|| "no attempt finished".to_string(), |e| e.to_string());
            Err(ShardError::Abandoned {
                shard: shard.clone(),
                what: format!("checkpoint {what} (last failure: {why})"),
            })
        }
    }
}

/// Uploads one object, retrying with back-off until it succeeds. `false`
/// only when the process is aborting (the upload is then never committed).
/// Every failed attempt, including those the store retries inside (a put,
/// one multipart part), is counted, logged and reported to health at once.
async fn upload(ctx: &Context, shard: &str, object: shardlake::pipeline::OutputObject) -> bool {
    let report = Report { health: &ctx.health, metrics: &ctx.metrics, shard: Some(shard) };
    let retried_inside = |e: &shardlake::Error| report.retried_inside(Dependency::Upload, &object.key, e);
    let put = || ctx.lake.put_watched(&object.key, object.data.clone(), &retried_inside);
    let uploaded =
        retry(report, Dependency::Upload, &object.key, &IN_PLACE, put, always_transient, ctx.abort.cancelled()).await;
    if uploaded.is_ok() {
        ctx.crash.hit(CrashPoint::AfterUpload);
    }
    uploaded.is_ok()
}
