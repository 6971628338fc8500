//! Keeping the Glue catalog in step with the lake (`catalog = "glue://DB/TABLE"`).
//!
//! Registration never blocks or undoes a commit: a reader commits its batch
//! together with the partitions the catalog is not yet known to have
//! ([`crate::checkpoint::ShardState::catalog_pending`]), then hands them
//! to the [`Registrar`], whose one task registers them in the background,
//! retrying with back-off and reporting failures on `/healthz`. Whoever reads
//! the shard next (this worker after a crash, another after a lease moves)
//! finds the list in the checkpoint and registers it again, so a crash
//! between commit and registration loses nothing; registering a partition
//! that exists is success, so workers racing on one partition are safe.
//!
//! A table the worker creates over a lake that already holds data gets the
//! lake's partitions registered first (as `catalog sync` does), and a table
//! deleted while the worker runs is reported on `/healthz` and, with
//! `catalog_create`, created again the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use shardlake::catalog::{CatalogTable, Ensured};
use shardlake::partition::PartitionTemplate;
use shardlake::pipeline::TableSpec;
use shardlake::schema::{Schema, TableDefinition};
use shardlake::store::ObjectStore;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::retry::{BACKGROUND, Dependency, Report, always_transient, retry};

/// The table definition of the lake written with a schema version.
pub type Define = Box<dyn Fn(&Schema) -> anyhow::Result<TableDefinition> + Send + Sync>;

/// The lake's partitions with data files: partition path (under the
/// destination) → data files. Error files and paths that do not follow the
/// template are not partitions.
pub async fn lake_partitions(
    lake: &ObjectStore,
    template: &PartitionTemplate,
    error_prefix: &str,
) -> shardlake::Result<BTreeMap<String, usize>> {
    let mut in_lake = BTreeMap::new();
    for key in lake.list("").await? {
        if !key.ends_with(".parquet") || key.starts_with(error_prefix) {
            continue;
        }
        let Some((dir, _)) = key.rsplit_once('/') else { continue };
        let dir = format!("{dir}/");
        if template.key_values(&dir).is_some() {
            *in_lake.entry(dir).or_insert(0) += 1;
        }
    }
    Ok(in_lake)
}

struct State {
    /// The table was created or checked.
    ensured: bool,
    /// The table was created over a lake that may hold data: its partitions
    /// are registered before anything else.
    sync: bool,
    /// Committed partitions not registered yet.
    pending: BTreeSet<String>,
}

/// The worker's catalog table and the partitions waiting to be registered.
pub struct Registrar {
    table: CatalogTable,
    create: bool,
    define: Define,
    state: Mutex<State>,
    wake: Notify,
}

impl Registrar {
    /// A registrar for `table`, whose definition for a schema version is
    /// `define`; `ensured` is what the start-up check found (`None`: the
    /// catalog did not answer, so the background task creates or checks it
    /// first).
    pub fn new(table: CatalogTable, create: bool, ensured: Option<Ensured>, define: Define) -> Self {
        let state =
            State { ensured: ensured.is_some(), sync: ensured == Some(Ensured::Created), pending: BTreeSet::new() };
        Registrar { table, create, define, state: Mutex::new(state), wake: Notify::new() }
    }

    /// The table.
    pub fn table(&self) -> &CatalogTable {
        &self.table
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

    /// Whether the table is still there: a table deleted (with all its
    /// partitions) while the worker runs is checked, or created, again by
    /// the next pass. A catalog that does not answer is left to the next
    /// registration to report.
    async fn check_exists(&self) {
        if let Ok(None) = self.table.get().await {
            tracing::warn!(table = %self.table.name(), "the catalog table is gone");
            self.table_gone();
        }
    }

    /// The table was found missing: the next pass checks or creates it, and
    /// a new one has none of the partitions known so far.
    fn table_gone(&self) {
        self.state.lock().expect("registrar lock").ensured = false;
        self.table.forget_partitions();
    }

    /// Partitions waiting.
    pub fn pending(&self) -> usize {
        self.state.lock().expect("registrar lock").pending.len()
    }

    fn idle(&self) -> bool {
        let s = self.state.lock().expect("registrar lock");
        s.ensured && !s.sync && s.pending.is_empty()
    }

    /// Checks (or creates) the table if not done yet, registers the lake's
    /// partitions if it was just created, then registers what is pending;
    /// returns the partitions created. A table found missing is checked
    /// (or created) again on the next pass.
    async fn pass(&self, lake: &ObjectStore, spec: &TableSpec) -> shardlake::Result<usize> {
        let result = self.pass_once(lake, spec).await;
        if let Err(shardlake::Error::TableMissing { .. }) = &result {
            self.table_gone();
        }
        result
    }

    async fn pass_once(&self, lake: &ObjectStore, spec: &TableSpec) -> shardlake::Result<usize> {
        if !self.state.lock().expect("registrar lock").ensured {
            let ensured = self.table.ensure(self.create).await?;
            tracing::info!(table = %self.table.name(), ?ensured, "catalog table ready");
            let mut state = self.state.lock().expect("registrar lock");
            state.ensured = true;
            state.sync |= ensured == Ensured::Created;
        }
        if self.state.lock().expect("registrar lock").sync {
            let in_lake = lake_partitions(lake, &spec.template, &spec.error_prefix).await?;
            if !in_lake.is_empty() {
                tracing::info!(
                    table = %self.table.name(),
                    partitions = in_lake.len(),
                    "the table was created over a lake that holds data: registering the lake's partitions"
                );
                eprintln!(
                    "shardlake-consumer: catalog table {} created over a lake with {} partitions; registering them",
                    self.table.name(),
                    in_lake.len()
                );
            }
            let mut state = self.state.lock().expect("registrar lock");
            state.pending.extend(in_lake.into_keys());
            state.sync = false;
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
/// once nothing is pending (the caller bounds that wait); `abort` ends it
/// at once. Every `check_every` while idle it checks the table still exists.
pub async fn run(
    registrar: &Registrar,
    lake: &ObjectStore,
    table: &TableSpec,
    check_every: Duration,
    report: Report<'_>,
    abort: &CancellationToken,
    finish: CancellationToken,
) {
    loop {
        if registrar.idle() {
            if finish.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = registrar.wake.notified() => {}
                _ = finish.cancelled() => {}
                _ = abort.cancelled() => return,
                _ = tokio::time::sleep(check_every) => registrar.check_exists().await,
            }
            continue;
        }
        // Retried until it passes: the lake does not wait for the catalog,
        // and `/healthz` says what fails meanwhile.
        let pass = || async {
            registrar.pass(lake, table).await.map_err(|e| match (&e, registrar.create) {
                (shardlake::Error::TableMissing { table, .. }, true) => {
                    format!("catalog {table}: the table was deleted; creating it again (catalog_create = true)")
                }
                _ => e.to_string(),
            })
        };
        let pending = || registrar.pending();
        let call = Dependency::Catalog { pending: &pending };
        let about = format!("update of {}", registrar.table.name());
        let Ok(created) = retry(report, call, &about, &BACKGROUND, pass, always_transient, abort.cancelled()).await
        else {
            return;
        };
        report.health.worker_ok("catalog");
        report.metrics.record_catalog(created, registrar.pending());
        if created > 0 {
            tracing::info!(table = %registrar.table.name(), created, "registered partitions");
        }
    }
}

/// The start-up check: a table that does not fit (or is missing without
/// `create`) is a configuration error and stops the worker with every
/// difference named; a catalog that cannot be reached is retried by the
/// registrar's task, and the lake does not wait for it (`None`).
pub async fn ensure_at_start(table: &CatalogTable, create: bool) -> anyhow::Result<Option<Ensured>> {
    match table.ensure(create).await {
        Ok(ensured) => {
            let what = if ensured == Ensured::Created { "created" } else { "checked" };
            eprintln!("shardlake-consumer: catalog table {} {what} ({:?} partitions)", table.name(), table.mode());
            Ok(Some(ensured))
        }
        Err(e @ shardlake::Error::Catalog { transient: true, .. }) => {
            tracing::warn!(error = %e, "the catalog cannot be reached; the lake goes on, registration retries");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

impl crate::lake::evolve::SchemaTable for Registrar {
    fn add_columns<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(async move {
            let updated = self.table.add_columns((self.define)(schema)?).await?;
            if updated {
                eprintln!("shardlake-consumer: catalog table {} has the new columns", self.table.name());
            }
            Ok(updated)
        })
    }

    fn declared_columns(&self) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>> {
        Box::pin(async move { self.table.declared_columns().await?.ok_or_else(|| self.table.missing().into()) })
    }
}
