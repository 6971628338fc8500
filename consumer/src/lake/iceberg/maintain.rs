//! `catalog maintain` for an Iceberg table: expires old snapshots and
//! deletes orphan data files (files under `data/` no kept snapshot
//! references: a `convert` that failed before its append, files a
//! compaction replaced). Safe beside a running fleet:
//! - the expiry is a table commit like an append, retried on conflict;
//! - a file is an orphan only when no kept snapshot references it and it is
//!   older than `orphans_older_than`, far longer than an upload waits for
//!   its table commit.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::{Catalog, TableIdent};

use super::SpecError;
use super::table::TableError;

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
    /// Orphan data files found old enough to delete.
    pub orphans: Vec<PathBuf>,
    /// Unreferenced data files kept because they are younger than the limit.
    pub young_unreferenced: usize,
}

/// Expires snapshots and deletes orphan data files of the table `ident`.
pub async fn maintain(
    catalog: &Arc<dyn Catalog>,
    ident: &TableIdent,
    opts: MaintainOptions,
) -> Result<Maintained, TableError> {
    let fail = |what| {
        let table = ident.to_string();
        move |source| TableError::Catalog { table, what, source }
    };
    let table = catalog.load_table(ident).await.map_err(fail("loading it"))?;
    let mut done = Maintained { snapshots_before: table.metadata().snapshots().count(), ..Maintained::default() };
    let now_ms = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let table = if opts.dry_run {
        table
    } else {
        let tx = Transaction::new(&table);
        let expire = tx
            .expire_snapshots()
            .expire_older_than_ms(now_ms - opts.older_than.as_millis() as i64)
            .retain_last(opts.retain_last.max(1));
        let tx = expire.apply(tx).map_err(fail("preparing the expiry"))?;
        tx.commit(catalog.as_ref()).await.map_err(fail("expiring snapshots"))?
    };
    done.snapshots_after = table.metadata().snapshots().count();
    let mut referenced: HashSet<String> = HashSet::new();
    for snapshot in table.metadata().snapshots() {
        let list = table.manifest_list_reader(snapshot).load().await.map_err(fail("reading a manifest list"))?;
        for manifest in list.entries() {
            let manifest = manifest.load_manifest(table.file_io()).await.map_err(fail("reading a manifest"))?;
            referenced.extend(manifest.entries().iter().filter(|e| e.is_alive()).map(|e| e.file_path().to_string()));
        }
    }
    done.referenced = referenced.len();
    let data = local_folder(table.metadata().location())?.join("data");
    let cutoff = SystemTime::now() - opts.orphans_older_than;
    for file in parquet_files(&data) {
        let path = format!("file://{}", file.display());
        if referenced.contains(&path) {
            continue;
        }
        let old = std::fs::metadata(&file).and_then(|m| m.modified()).is_ok_and(|t| t < cutoff);
        if old {
            done.orphans.push(file);
        } else {
            done.young_unreferenced += 1;
        }
    }
    if !opts.dry_run {
        for file in &done.orphans {
            if let Err(e) = std::fs::remove_file(file) {
                tracing::warn!(file = %file.display(), error = %e, "could not delete an orphan data file");
            }
        }
    }
    Ok(done)
}

fn local_folder(location: &str) -> Result<PathBuf, SpecError> {
    location
        .strip_prefix("file://")
        .map(PathBuf::from)
        .ok_or_else(|| SpecError(format!("{location}: only a local table's files can be listed for now")))
}

/// Every `.parquet` file under `dir` (none when it does not exist).
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}
