//! Schema versions and additive schema evolution (`unknown_fields = "evolve"`).
//!
//! Version 1 is the schema the worker starts from (the file, or the
//! inferred or Glue schema stored beside the checkpoints). Version N+1 is
//! version N with columns added at the end; it is stored beside the
//! checkpoints as a delta (only the added columns) under its number, and the
//! first worker of a fleet to store a number wins.
//!
//! The protocol ([`Evolution`]) keeps a fleet converging whatever the
//! interleaving: a worker always catches up to the newest stored version
//! before it adds one (so versions form one chain and the column cap holds
//! across workers); catching up puts the version's columns in the Glue
//! table before the version is used (so the table has every column before a
//! file that carries it is committed); and a follower task catches every
//! worker up within seconds even when its own shards meet no new field (so a
//! worker killed between storing a version and updating the table is made
//! good by the others). An intent names the version its files were built
//! with: a replay rebuilds them byte for byte whatever came since.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::checkpoint::CheckpointStore;
use futures::future::BoxFuture;
use shardlake::pipeline::TableSpec;
use shardlake::schema::{
    Column, FieldIds, FieldWatch, MAX_COLUMN_TYPE_CHARS, MAX_INFERRED_FIELDS, Schema, UnknownFieldPolicy, with_columns,
};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::crash::{CrashPoint, CrashPoints};
use crate::lake::catalog::Registrar;
use crate::lake::iceberg::IcebergTable;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::retry::{BACKGROUND, Dependency, Report, always_transient, retry};

/// How often the follower looks for versions other workers stored.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Versions probed past the last one known, at most (a guard against a
/// store that answers every key).
const MAX_VERSIONS: u32 = 100_000;

/// The largest stored version (its added columns as TOML), in bytes: a
/// DynamoDB item holds 400 KB. Columns past it wait for the next version.
pub const MAX_VERSION_BYTES: usize = 256 * 1024;

/// The most characters all column types of a schema may take together, so
/// the stored versions (deltas) and the Glue table stay bounded in size
/// whatever the records bring. A field that would pass it stays in `_extra`.
pub const MAX_SCHEMA_TYPE_CHARS: usize = 1024 * 1024;

/// Names refused a column remembered per worker, at most.
const MAX_REFUSED: usize = 10_000;

/// One schema version and the table spec batches of it are written with.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1, 2, ...
    pub number: u32,
    /// The spec with this version's schema.
    pub spec: Arc<TableSpec>,
}

/// The evolution settings: `evolve_min_records` and `evolve_interval`.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// A field becomes due in its N-th record of a batch.
    pub min_records: u64,
    /// A worker stores at most one version per interval.
    pub interval: Duration,
}

impl Rules {
    /// The rules `settings` set.
    pub fn of(settings: &Settings) -> Self {
        Rules { min_records: settings.config.evolve_min_records, interval: settings.config.evolve_interval }
    }
}

/// The worker's schema versions: the current one for new batches, and any
/// older one a replay needs.
pub struct Schemas {
    /// Version 1's spec; later versions differ only in the schema.
    base: Arc<TableSpec>,
    current: RwLock<Version>,
    loaded: Mutex<BTreeMap<u32, Arc<TableSpec>>>,
    /// One protocol step at a time per worker (never held while waiting).
    turn: tokio::sync::Mutex<()>,
    /// `None` unless evolving.
    rules: Option<Rules>,
    /// When this worker last stored a version, and its number.
    last_stored: Mutex<Option<(tokio::time::Instant, u32)>>,
    /// The newest version known to be in the catalog table.
    in_table: std::sync::atomic::AtomicU32,
    /// Fields refused a column for good (type too long, schema full).
    refused: Mutex<HashSet<String>>,
    /// For an Iceberg table: each version's field ids, by column name from
    /// the table's schema.
    ids: Option<FieldIdsOf>,
}

/// The field ids (each column's, then `_extra`'s) of a schema version's
/// data files, from the Iceberg table that holds its columns.
pub type FieldIdsOf = Arc<dyn Fn(&Schema) -> anyhow::Result<Arc<Vec<FieldIds>>> + Send + Sync>;

impl Schemas {
    /// Only `base`, as version 1; see [`Schemas::load`]. `rules` only
    /// matter under `evolve`.
    pub fn new(base: TableSpec, rules: Rules) -> Self {
        let base = Arc::new(base);
        let evolving = base.unknown_fields == UnknownFieldPolicy::Evolve;
        Schemas {
            rules: evolving.then_some(rules),
            loaded: Mutex::new(BTreeMap::from([(1, base.clone())])),
            current: RwLock::new(Version { number: 1, spec: base.clone() }),
            base,
            turn: tokio::sync::Mutex::new(()),
            last_stored: Mutex::new(None),
            in_table: Default::default(),
            refused: Mutex::new(HashSet::new()),
            ids: None,
        }
    }

    /// The versions stored beside `checkpoints` on top of `base` (version
    /// 1); the newest is current. For an Iceberg table, `ids` gives each
    /// version's field ids.
    pub async fn load(
        base: TableSpec,
        rules: Rules,
        checkpoints: &CheckpointStore,
        ids: Option<FieldIdsOf>,
    ) -> anyhow::Result<Self> {
        let mut schemas = Schemas::new(base, rules);
        schemas.ids = ids;
        let newest = schemas.newest(checkpoints).await?;
        schemas.publish(newest);
        Ok(schemas)
    }

    /// Whether columns are added (`unknown_fields = "evolve"`).
    pub fn evolving(&self) -> bool {
        self.rules.is_some()
    }

    /// The version new batches are written with.
    pub fn current(&self) -> Version {
        self.current.read().expect("schemas lock").clone()
    }

    /// Version `number` (a pending intent's), from memory or the store.
    pub async fn version(&self, number: u32, checkpoints: &CheckpointStore) -> anyhow::Result<Version> {
        if let Some(spec) = self.loaded.lock().expect("schemas lock").get(&number) {
            return Ok(Version { number, spec: spec.clone() });
        }
        self.load_after(checkpoints, Some(number)).await?;
        match self.loaded.lock().expect("schemas lock").get(&number) {
            Some(spec) => Ok(Version { number, spec: spec.clone() }),
            None => anyhow::bail!(
                "schema version {number} is not in {} although a pending batch was built with it; restore it \
                 (schema-v{number}.toml or the #schema-v{number} item)",
                checkpoints.url()
            ),
        }
    }

    /// The newest stored version (loaded, not made current).
    pub async fn newest(&self, checkpoints: &CheckpointStore) -> anyhow::Result<Version> {
        self.load_after(checkpoints, None).await
    }

    /// Loads the stored versions after the highest loaded one, up to `upto`
    /// (or all); returns the highest loaded.
    async fn load_after(&self, checkpoints: &CheckpointStore, upto: Option<u32>) -> anyhow::Result<Version> {
        let (mut number, mut spec) = {
            let loaded = self.loaded.lock().expect("schemas lock");
            let (n, s) = loaded.last_key_value().expect("version 1 is always loaded");
            (*n, s.clone())
        };
        while number < upto.unwrap_or(MAX_VERSIONS) {
            let Some(schema) = stored_after(checkpoints, &spec.schema, number).await? else { break };
            number += 1;
            spec = Arc::new(self.spec_of(schema)?);
            self.loaded.lock().expect("schemas lock").insert(number, spec.clone());
        }
        Ok(Version { number, spec })
    }

    /// The watch for a new batch of `version`: `None` unless evolving.
    pub fn watch(&self, version: &Version) -> Option<FieldWatch> {
        let rules = self.rules?;
        let keys: Vec<String> = version.spec.template.keys().iter().map(|k| k.name.clone()).collect();
        let refused = self.refused.lock().expect("schemas lock");
        Some(FieldWatch::new(&version.spec.schema, &keys, rules.min_records).refusing(refused.iter()))
    }

    /// Whether this worker may store a version now (`evolve_interval`
    /// since the last one it stored).
    pub fn may_store(&self) -> bool {
        let Some(rules) = self.rules else { return false };
        self.last_stored.lock().expect("schemas lock").is_none_or(|(t, _)| t.elapsed() >= rules.interval)
    }

    /// Whether a batch of version `batch` may ask for new columns (else
    /// its new fields wait in `_extra`): this worker may store a version, or
    /// a newer one than the batch's is current or stored. The last matters
    /// while the worker's own new version is stored but not yet current (its
    /// table update in flight or failing): its other shards then evolve to
    /// it, and wait with it, instead of putting its fields in `_extra`.
    pub fn evolve_open(&self, batch: u32) -> bool {
        let stored = self.last_stored.lock().expect("schemas lock").map_or(0, |(_, number)| number);
        self.may_store() || self.current().number.max(stored) > batch
    }

    /// Fields never to propose again.
    pub fn refuse(&self, names: impl IntoIterator<Item = String>) {
        let mut refused = self.refused.lock().expect("schemas lock");
        for name in names {
            if refused.len() < MAX_REFUSED {
                refused.insert(name);
            }
        }
    }

    /// The catalog table is known to have version `number`'s columns.
    pub fn mark_in_table(&self, number: u32) {
        self.in_table.fetch_max(number, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes `version` current unless a newer one is.
    fn publish(&self, version: Version) {
        self.loaded.lock().expect("schemas lock").insert(version.number, version.spec.clone());
        let mut current = self.current.write().expect("schemas lock");
        if version.number > current.number {
            *current = version;
        }
    }
}

impl Schemas {
    /// Version 1's spec with `schema` (and, for an Iceberg table, its
    /// columns' field ids).
    fn spec_of(&self, schema: Schema) -> anyhow::Result<TableSpec> {
        let field_ids = match &self.ids {
            Some(ids) => Some(ids(&schema)?),
            None => self.base.field_ids.clone(),
        };
        Ok(TableSpec { schema: Arc::new(schema), field_ids, ..(*self.base).clone() })
    }
}

/// The stored form of version `number`: the columns it adds to the one
/// before, so the stored versions together are no larger than the schema.
pub fn encode(number: u32, added: &[Column]) -> String {
    let delta = Schema { columns: added.to_vec() };
    format!(
        "# shardlake schema version {number}: the columns added to version {}\nadded_to = {}\n{}",
        number - 1,
        number - 1,
        delta.to_toml()
    )
}

/// Version `number` from its stored text and the version before: a delta
/// (`added_to`), or a whole schema (stored by shardlake before deltas).
fn decode(previous: &Schema, number: u32, text: &str) -> Result<Schema, String> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let Some(base) = table.remove("added_to") else { return Schema::parse(text, false) };
    if base.as_integer() != Some(i64::from(number) - 1) {
        return Err(format!("added_to = {base}, expected {}", number - 1));
    }
    let delta = Schema::parse(&toml::to_string(&table).map_err(|e| e.to_string())?, false)?;
    Ok(with_columns(previous, &delta.columns))
}

/// The newest schema version stored beside `checkpoints` on top of `base`
/// (version 1): its number and schema.
pub async fn latest(checkpoints: &CheckpointStore, base: &Schema) -> anyhow::Result<(u32, Schema)> {
    let mut newest = (1, base.clone());
    while newest.0 < MAX_VERSIONS {
        let Some(schema) = stored_after(checkpoints, &newest.1, newest.0).await? else { break };
        newest = (newest.0 + 1, schema);
    }
    Ok(newest)
}

/// Version `number + 1` as stored on top of version `number` (`previous`),
/// `None` when it is not stored.
async fn stored_after(checkpoints: &CheckpointStore, previous: &Schema, number: u32) -> anyhow::Result<Option<Schema>> {
    let next = number + 1;
    let Some(text) = checkpoints.load_schema(next).await? else { return Ok(None) };
    let schema = decode(previous, next, &text)
        .map_err(|e| anyhow::anyhow!("schema version {next} in {}: {e}", checkpoints.url()))?;
    Ok(Some(schema))
}

/// The Glue table as schema evolution sees it.
pub trait SchemaTable: Send + Sync {
    /// Appends the columns of `schema` the table lacks, changing nothing
    /// else; `true` when it was updated.
    fn add_columns<'a>(&'a self, schema: &'a Schema) -> BoxFuture<'a, anyhow::Result<bool>>;
    /// The table's columns and their declared types.
    fn declared_columns(&self) -> BoxFuture<'_, anyhow::Result<Vec<(String, String)>>>;
    /// Whether a version's columns go into the table before the version is
    /// stored (an Iceberg table, whose field ids the version's files need),
    /// rather than after (a Glue table, which readers only).
    fn table_first(&self) -> bool {
        false
    }
    /// Reads the table again, so versions another worker stored find their
    /// columns.
    fn refresh(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// What [`Evolution::add`] did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The version new batches use now.
    pub version: Version,
    /// Columns this call stored (0 when another worker was first).
    pub stored: usize,
    /// Asked-for columns that can never be added (caps, a declared type
    /// shardlake cannot write): their fields stay in `_extra`.
    pub refused: Vec<String>,
}

/// One worker's part in the fleet's version protocol.
pub struct Evolution<'a> {
    /// The worker's versions.
    pub schemas: &'a Schemas,
    /// Where versions are stored.
    pub store: &'a CheckpointStore,
    /// The catalog table, if any.
    pub table: Option<&'a dyn SchemaTable>,
    /// Test hook: a kill between storing a version and the table update.
    pub crash: Option<&'a CrashPoints>,
}

/// The worker's parts that schema evolution works with.
pub struct Parts<'a> {
    /// The worker's versions.
    pub schemas: &'a Schemas,
    /// Where versions are stored.
    pub store: &'a CheckpointStore,
    /// The Glue catalog registrar, if any.
    pub catalog: Option<&'a Registrar>,
    /// The lake's Iceberg table, if any.
    pub iceberg: Option<&'a IcebergTable>,
    /// Test hooks.
    pub crash: &'a CrashPoints,
    /// Where failures and recoveries are reported.
    pub health: &'a Health,
    /// Schema metrics.
    pub metrics: &'a Metrics,
}

impl<'a> Evolution<'a> {
    /// The protocol of the worker whose parts are `parts`.
    pub fn of(parts: &Parts<'a>) -> Self {
        Evolution {
            schemas: parts.schemas,
            store: parts.store,
            table: parts.catalog.map(|r| r as &dyn SchemaTable).or(parts.iceberg.map(|t| t as &dyn SchemaTable)),
            crash: Some(parts.crash),
        }
    }

    /// Brings the worker to the newest stored version: loads it, puts its
    /// columns in the table (unless known there), then makes it current.
    pub async fn catch_up(&self) -> anyhow::Result<Version> {
        if let Some(table) = self.table {
            table.refresh().await?;
        }
        let newest = self.schemas.newest(self.store).await?;
        let in_table = self.schemas.in_table.load(std::sync::atomic::Ordering::SeqCst);
        if let Some(table) = self.table
            && newest.number > in_table
        {
            table.add_columns(&newest.spec.schema).await?;
            self.schemas.mark_in_table(newest.number);
        }
        self.schemas.publish(newest);
        Ok(self.schemas.current())
    }

    /// A version with `columns`: the newest stored one if it has them, else
    /// a new one on top of it with those that fit (a lost race adopts the
    /// winner's and tries again on top of it). One attempt: errors are the
    /// caller's to retry.
    pub async fn add(&self, columns: &[Column]) -> anyhow::Result<Added> {
        let mut refused = Vec::new();
        loop {
            let current = self.catch_up().await?;
            let schema = &current.spec.schema;
            let mut missing: Vec<Column> = columns
                .iter()
                .filter(|c| !schema.columns.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)))
                .filter(|c| !refused.contains(&c.name))
                .cloned()
                .collect();
            if let (Some(table), false) = (self.table, missing.is_empty()) {
                // A column the table's owners declared keeps their type.
                let declared = table.declared_columns().await?;
                missing.retain_mut(|c| match declared.iter().find(|(n, _)| n.eq_ignore_ascii_case(&c.name)) {
                    None => true,
                    // `varchar(64)` is written as `string`.
                    Some((_, ty)) => match ty.parse::<shardlake::schema::HiveType>() {
                        Ok(ty) => {
                            c.ty = ty;
                            true
                        }
                        Err(_) => {
                            refused.push(c.name.clone());
                            false
                        }
                    },
                });
            }
            let (fits, never) = fit(schema, missing);
            refused.extend(never);
            // Within `evolve_interval` of this worker's last version the
            // fields wait in `_extra` (another shard of the worker stored one
            // while this one waited for its turn).
            if fits.is_empty() || !self.schemas.may_store() {
                return Ok(Added { version: current, stored: 0, refused });
            }
            let number = current.number + 1;
            if let Some(table) = self.table.filter(|t| t.table_first()) {
                // The table first: a stored version's columns always have field ids.
                let mut next = (**schema).clone();
                next.columns.extend(fits.iter().cloned());
                table.add_columns(&next).await?;
            }
            let stored = self.store.save_schema(number, &encode(number, &fits)).await?;
            if stored {
                *self.schemas.last_stored.lock().expect("schemas lock") = Some((tokio::time::Instant::now(), number));
                // A kill here leaves the table behind the stored version: the
                // next catch-up of any worker adds the columns.
                if let Some(crash) = self.crash {
                    crash.hit(CrashPoint::AfterSchemaVersion);
                }
                let version = self.catch_up().await?;
                return Ok(Added { version, stored: fits.len(), refused });
            }
        }
    }
}

/// The columns of `missing` that version after `schema` takes: within the
/// column cap, [`MAX_COLUMN_TYPE_CHARS`] per type, [`MAX_SCHEMA_TYPE_CHARS`]
/// in all and [`MAX_VERSION_BYTES`] per version; and the names that can
/// never be added (the rest wait for a later version). A name given twice
/// (in any case) or already a column is taken once.
pub fn fit(schema: &Schema, missing: Vec<Column>) -> (Vec<Column>, Vec<String>) {
    let mut room = MAX_INFERRED_FIELDS.saturating_sub(schema.columns.len());
    let mut chars: usize = schema.columns.iter().map(|c| c.ty.to_string().len()).sum();
    let (mut fits, mut never) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for c in missing {
        if fits.iter().chain(&schema.columns).any(|o: &Column| o.name.eq_ignore_ascii_case(&c.name)) {
            continue;
        }
        let ty = c.ty.to_string().len();
        // TOML of one column: name, type and a few dozen bytes of keys.
        let size = c.name.len() + ty + 48;
        if room == 0 || ty > MAX_COLUMN_TYPE_CHARS || chars + ty > MAX_SCHEMA_TYPE_CHARS {
            never.push(c.name);
        } else if bytes + size <= MAX_VERSION_BYTES {
            room -= 1;
            chars += ty;
            bytes += size;
            fits.push(c);
        }
    }
    (fits, never)
}

/// The version that has `columns` (a batch of `from` met them): the current
/// one if it has them already, else the newest stored, else a new one,
/// stored and in the table before it is returned. Failures are retried with
/// back-off (the shard waits; `/healthz` names the cause; the worker's other
/// shards go on) until they pass, or `None` once `stop` resolves
/// (shutdown, a lost lease).
pub async fn evolve(
    ctx: &Parts<'_>,
    shard: &str,
    from: u32,
    columns: &[Column],
    stop: impl Future<Output = ()>,
) -> Option<Version> {
    let schemas = ctx.schemas;
    // One evolution at a time in this worker; other workers are fenced by
    // the schema store's conditional writes.
    let add = || async {
        let _turn = schemas.turn.lock().await;
        Evolution::of(ctx).add(columns).await
    };
    // The schema store and the table are the worker's, not the shard's.
    let report = Report { health: ctx.health, metrics: ctx.metrics, shard: None };
    let about = format!("change for shard {shard} (it waits)");
    let added = retry(report, Dependency::Schema, &about, &BACKGROUND, add, always_transient, stop).await.ok()?;
    ctx.health.worker_ok("schema");
    note_table_updates(ctx);
    ctx.metrics.record_schema(added.version.number, added.stored);
    ctx.metrics.record_fields_in_extra("refused", added.refused.len() as u64);
    if !added.refused.is_empty() {
        tracing::warn!(
            shard,
            fields = added.refused.join(","),
            "fields that cannot become columns (column cap, size caps, or a declared type shardlake \
                 cannot write) stay in _extra"
        );
        schemas.refuse(added.refused);
    }
    let version = added.version;
    if version.number > from {
        let names: Vec<&str> = version.spec.schema.columns.iter().map(|c| c.name.as_str()).collect();
        tracing::info!(
            shard,
            from,
            version = version.number,
            added = added.stored,
            columns = names.join(","),
            "schema version {} in use",
            version.number
        );
    }
    Some(version)
}

fn note_table_updates(ctx: &Parts<'_>) {
    if let Some(registrar) = ctx.catalog {
        ctx.metrics.record_table_updates(registrar.table().updates());
    }
}

/// The follower: every [`FOLLOW_EVERY`], catches the worker up to versions
/// other workers stored (and their columns up in the table), so every
/// worker of a fleet is on the newest version within seconds without
/// meeting a new field itself. Returns when `finish` or `abort` fires.
pub async fn follow(ctx: Parts<'_>, abort: &CancellationToken, finish: CancellationToken) {
    if !ctx.schemas.evolving() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = finish.cancelled() => return,
            _ = abort.cancelled() => return,
        }
        let before = ctx.schemas.current().number;
        let result = {
            let _turn = ctx.schemas.turn.lock().await;
            let evolution = Evolution::of(&ctx);
            tokio::select! {
                r = evolution.catch_up() => r,
                _ = finish.cancelled() => return,
                _ = abort.cancelled() => return,
            }
        };
        match result {
            Ok(version) => {
                ctx.health.worker_ok("schema");
                note_table_updates(&ctx);
                if version.number > before {
                    ctx.metrics.record_schema(version.number, 0);
                    tracing::info!(
                        from = before,
                        version = version.number,
                        "adopted the schema version another worker stored"
                    );
                }
            }
            Err(e) => {
                ctx.health.worker_failed("schema", &e);
                tracing::error!(error = %e, "catching up with stored schema versions failed; retrying");
            }
        }
    }
}

#[cfg(test)]
#[path = "evolve_tests.rs"]
mod tests;
