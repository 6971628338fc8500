//! `catalog maintain` for an Iceberg table: expires old snapshots, deletes
//! orphan data files (files under `data/` no kept snapshot references: a
//! `convert` that failed before its append, files a compaction replaced) and
//! old metadata files (every commit writes a metadata file, a manifest list
//! and manifests; those of expired snapshots, and metadata files past the
//! table's `write.metadata.previous-versions-max`, are no longer read).
//! Safe beside a running fleet:
//! - the expiry is a table commit like an append, retried on conflict;
//! - a snapshot that names a batch some shard may still replay (its intent
//!   is pending in the checkpoint store) is kept, and so is every newer one:
//!   a replay that found its batch in no snapshot would append it again;
//! - a file is an orphan only when nothing kept references it and it is
//!   older than `orphans_older_than`, far longer than an upload waits for
//!   its table commit (or a commit's metadata files wait for the catalog).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};
use shardlake::convert::ICEBERG_DATA_FOLDER;
use shardlake::store::{ObjectStore, S3Options};

use super::SpecError;
use super::table::{BatchKey, TableError, batches_of};

/// What `catalog maintain` keeps.
#[derive(Debug, Clone, Copy)]
pub struct MaintainOptions {
    /// Snapshots older than this are expired...
    pub older_than: Duration,
    /// ...except the newest this many.
    pub retain_last: usize,
    /// Unreferenced data files older than this are deleted.
    pub orphans_older_than: Duration,
    /// Report only.
    pub dry_run: bool,
}

/// What `catalog maintain` did (or, with `dry_run`, would do).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// Snapshots before.
    pub snapshots_before: usize,
    /// Snapshots after the expiry.
    pub snapshots_after: usize,
    /// Data files the kept snapshots reference.
    pub referenced: usize,
    /// Orphan data files found old enough to delete (their URLs).
    pub orphans: Vec<String>,
    /// Unreferenced data files kept because they are younger than the limit.
    pub young_unreferenced: usize,
    /// Metadata files (table metadata, manifest lists, manifests) nothing
    /// kept references, old enough to delete.
    pub old_metadata: usize,
    /// Snapshots past `older_than` kept because they (or older ones) name a
    /// batch a shard may still replay.
    pub held_for_replays: usize,
}

/// Expires snapshots and deletes orphan data files of the table `ident`
/// (on S3, with `s3`); `pending` are the batches shards may still replay.
pub async fn maintain(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    opts: MaintainOptions,
    s3: &S3Options,
    pending: &BTreeSet<BatchKey>,
) -> Result<Maintained, TableError> {
    let fail = |what| {
        let table = ident.to_string();
        move |source| TableError::Catalog { table, what, source }
    };
    let table = catalog.load_table(ident).await.map_err(fail("loading it"))?;
    let mut done = Maintained { snapshots_before: table.metadata().snapshots().count(), ..Maintained::default() };
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let mut cutoff = now_ms - opts.older_than.as_millis() as i64;
    let oldest_pending = table
        .metadata()
        .snapshots()
        .filter(|s| batches_of(s).iter().any(|k| pending.contains(k)))
        .map(|s| s.timestamp_ms())
        .min();
    if let Some(kept) = oldest_pending.filter(|t| *t < cutoff) {
        // Those the expiry would have taken: past the cutoff, and not among
        // the newest `retain_last`.
        let mut times: Vec<i64> = table.metadata().snapshots().map(|s| s.timestamp_ms()).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        done.held_for_replays =
            times.iter().skip(opts.retain_last.max(1)).filter(|t| (kept..cutoff).contains(*t)).count();
        cutoff = kept;
    }
    let table = if opts.dry_run {
        table
    } else {
        let tx = Transaction::new(&table);
        let expire = tx.expire_snapshots().expire_older_than_ms(cutoff).retain_last(opts.retain_last.max(1));
        let tx = expire.apply(tx).map_err(fail("preparing the expiry"))?;
        tx.commit(catalog.as_ref()).await.map_err(fail("expiring snapshots"))?
    };
    done.snapshots_after = table.metadata().snapshots().count();
    let mut referenced: HashSet<String> = HashSet::new();
    // The metadata files still read: the current one, those in its log,
    // each kept snapshot's manifest list and manifests.
    let mut metadata: HashSet<String> =
        table.metadata().metadata_log().iter().map(|m| m.metadata_file.clone()).collect();
    metadata.extend(table.metadata_location().map(str::to_string));
    for snapshot in table.metadata().snapshots() {
        metadata.insert(snapshot.manifest_list().to_string());
        let list = table.manifest_list_reader(snapshot).load().await.map_err(fail("reading a manifest list"))?;
        metadata.extend(list.entries().iter().map(|m| m.manifest_path.clone()));
        for manifest in list.entries() {
            let manifest = manifest.load_manifest(table.file_io()).await.map_err(fail("reading a manifest"))?;
            referenced.extend(manifest.entries().iter().filter(|e| e.is_alive()).map(|e| e.file_path().to_string()));
        }
    }
    done.referenced = referenced.len();
    let location = table.metadata().location().trim_end_matches('/');
    let store = ObjectStore::open(location, s3).await.map_err(|e| SpecError(format!("table location: {e}")))?;
    let listing = |e: shardlake::Error| SpecError(format!("listing the table's files: {e}"));
    let cutoff = SystemTime::now() - opts.orphans_older_than;
    let mut old = Vec::new();
    for object in store.list_info(ICEBERG_DATA_FOLDER).await.map_err(listing)? {
        let url = format!("{location}/{}", object.key);
        if !object.key.ends_with(".parquet") || referenced.contains(&url) {
            continue;
        }
        if object.modified < cutoff {
            done.orphans.push(url);
            old.push(object.key);
        } else {
            done.young_unreferenced += 1;
        }
    }
    let mut old_metadata = Vec::new();
    for object in store.list_info(METADATA_FOLDER).await.map_err(listing)? {
        let url = format!("{location}/{}", object.key);
        let iceberg_file = object.key.ends_with(".metadata.json") || object.key.ends_with(".avro");
        if iceberg_file && !metadata.contains(&url) && object.modified < cutoff {
            old_metadata.push(object.key);
        }
    }
    done.old_metadata = old_metadata.len();
    if !opts.dry_run {
        for (key, url) in old.iter().zip(&done.orphans) {
            if let Err(e) = store.delete(key).await {
                tracing::warn!(file = %url, error = %e, "could not delete an orphan data file");
            }
        }
        for key in &old_metadata {
            if let Err(e) = store.delete(key).await {
                tracing::warn!(file = %store.url(key), error = %e, "could not delete an old metadata file");
            }
        }
    }
    Ok(done)
}

/// Where a table keeps its metadata files, under its location.
const METADATA_FOLDER: &str = "metadata/";
