//! Schema versions and additive schema evolution (`unknown_fields = "evolve"`).
//!
//! Version 1 is the schema the worker starts from (the file, or the
//! inferred or Glue schema stored beside the checkpoints). When a batch meets
//! a top-level field the schema lacks ([`FieldWatch`]), the reader commits
//! the batch so far and asks for the next version: the schema with the new
//! columns at the end, stored beside the checkpoints under the next number
//! (the first worker of a fleet to store a number wins; the others adopt
//! its schema), then added to the Glue table (`UpdateTable`), and only then
//! given to new batches. So the table has every column before a file that
//! carries it is committed, and an intent names the version its files were
//! built with: a replay rebuilds them byte for byte whatever came since.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shardlake::checkpoint::CheckpointStore;
use shardlake::pipeline::TableSpec;
use shardlake::retry::RetryPolicy;
use shardlake::schema::{Column, FieldWatch, Schema, UnknownFieldPolicy, with_columns};
use tokio_util::sync::CancellationToken;

use crate::worker::Context;

/// Back-off while storing a version or updating the table fails.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(500), cap: Duration::from_secs(30) };

/// Versions probed past the last one known at start, at most (a guard
/// against a store that answers every key).
const MAX_VERSIONS: u32 = 100_000;

/// One schema version and the table spec batches of it are written with.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1, 2, ...
    pub number: u32,
    /// The spec with this version's schema.
    pub spec: Arc<TableSpec>,
}

/// The worker's schema versions: the current one for new batches, and any
/// older one a replay needs.
pub struct Schemas {
    /// Version 1's spec; later versions differ only in the schema.
    base: Arc<TableSpec>,
    current: RwLock<Version>,
    loaded: Mutex<BTreeMap<u32, Arc<TableSpec>>>,
    /// Readers evolve one at a time.
    evolving: tokio::sync::Mutex<()>,
    /// `evolve_min_records` under `evolve`; `None` otherwise.
    min_records: Option<u64>,
}

impl Schemas {
    /// Only `base`, as version 1; see [`Schemas::load`].
    pub fn new(base: TableSpec, min_records: u64) -> Self {
        let base = Arc::new(base);
        let evolving = base.unknown_fields == UnknownFieldPolicy::Evolve;
        Schemas {
            min_records: evolving.then_some(min_records),
            loaded: Mutex::new(BTreeMap::from([(1, base.clone())])),
            current: RwLock::new(Version { number: 1, spec: base.clone() }),
            base,
            evolving: tokio::sync::Mutex::new(()),
        }
    }

    /// The versions stored beside `checkpoints` on top of `base` (version
    /// 1); the newest is current.
    pub async fn load(base: TableSpec, min_records: u64, checkpoints: &CheckpointStore) -> anyhow::Result<Self> {
        let schemas = Schemas::new(base, min_records);
        let (number, schema) = latest(checkpoints, &schemas.base.schema).await?;
        if number > 1 {
            schemas.publish(Version { number, spec: Arc::new(spec_of(&schemas.base, schema)) });
        }
        Ok(schemas)
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
        let Some(schema) = stored(checkpoints, number).await? else {
            anyhow::bail!(
                "schema version {number} is not in {} although a pending batch was built with it; restore it \
                 (schema-v{number}.toml or the #schema-v{number} item)",
                checkpoints.url()
            )
        };
        let spec = Arc::new(spec_of(&self.base, schema));
        self.loaded.lock().expect("schemas lock").insert(number, spec.clone());
        Ok(Version { number, spec })
    }

    /// The watch for a new batch of `version`: `None` unless evolving.
    pub fn watch(&self, version: &Version) -> Option<FieldWatch> {
        let keys: Vec<String> = version.spec.template.keys().iter().map(|k| k.name.clone()).collect();
        self.min_records.map(|n| FieldWatch::new(&version.spec.schema, &keys, n))
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

/// `base` with `schema`.
fn spec_of(base: &TableSpec, schema: Schema) -> TableSpec {
    TableSpec { schema: Arc::new(schema), ..base.clone() }
}

/// Schema version `number` as stored (version 1 is never read here: it is
/// the worker's starting schema).
async fn stored(checkpoints: &CheckpointStore, number: u32) -> anyhow::Result<Option<Schema>> {
    let Some(text) = checkpoints.load_schema(number).await? else { return Ok(None) };
    let schema = Schema::parse(&text, false)
        .map_err(|e| anyhow::anyhow!("schema version {number} in {}: {e}", checkpoints.url()))?;
    Ok(Some(schema))
}

/// The newest schema version stored beside `checkpoints` on top of `base`
/// (version 1): its number and schema.
pub async fn latest(checkpoints: &CheckpointStore, base: &Schema) -> anyhow::Result<(u32, Schema)> {
    let mut newest = (1, base.clone());
    for number in 2..MAX_VERSIONS {
        match stored(checkpoints, number).await? {
            Some(schema) => newest = (number, schema),
            None => break,
        }
    }
    Ok(newest)
}

/// The version that has `columns` (a batch of `from` met them): the current
/// one if it has them already, else a new one, stored and in the table
/// before it is returned. Failures are retried with back-off (the shard
/// waits; `/healthz` names the cause) until they pass, or `None` once
/// either of `cancels` fires (shutdown, a lost lease).
pub async fn evolve(
    ctx: &Context,
    shard: &str,
    from: u32,
    columns: &[Column],
    cancels: [&CancellationToken; 2],
) -> Option<Version> {
    let schemas = &ctx.schemas;
    let _turn = tokio::select! {
        turn = schemas.evolving.lock() => turn,
        _ = cancels[0].cancelled() => return None,
        _ = cancels[1].cancelled() => return None,
    };
    let mut attempt = 0;
    loop {
        let current = schemas.current();
        let missing: Vec<Column> = columns
            .iter()
            .filter(|c| !current.spec.schema.columns.iter().any(|o| o.name.eq_ignore_ascii_case(&c.name)))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Some(current);
        }
        match next_version(ctx, &current, &missing).await {
            Ok((version, added)) => {
                attempt = 0;
                ctx.health.worker_ok("schema");
                ctx.metrics.record_schema(version.number, added);
                let names: Vec<&str> = version.spec.schema.columns.iter().map(|c| c.name.as_str()).collect();
                tracing::info!(
                    shard,
                    from,
                    version = version.number,
                    added,
                    columns = names.join(","),
                    "schema version {} in use",
                    version.number
                );
                schemas.publish(version);
            }
            Err(e) => {
                attempt += 1;
                ctx.health.worker_failed("schema", &e);
                let delay = BACKOFF.delay(attempt, &mut rand::rng());
                tracing::error!(
                    shard,
                    attempt,
                    error = %e,
                    delay_ms = delay.as_millis() as u64,
                    "adding columns to the schema failed; the shard waits, retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancels[0].cancelled() => return None,
                    _ = cancels[1].cancelled() => return None,
                }
            }
        }
    }
}

/// Stores `current` + `missing` as the next version (or adopts the one
/// another worker stored under that number) and brings the catalog table up
/// to it. Returns the version and how many columns this call added.
async fn next_version(ctx: &Context, current: &Version, missing: &[Column]) -> anyhow::Result<(Version, usize)> {
    let number = current.number + 1;
    let ours = with_columns(&current.spec.schema, missing);
    let stored_ours = ctx.checkpoints.save_schema(number, &ours.to_toml()).await?;
    let Some(schema) = stored(&ctx.checkpoints, number).await? else {
        anyhow::bail!("schema version {number} was stored, then not found in {}", ctx.checkpoints.url());
    };
    let added = if stored_ours { missing.len() } else { 0 };
    // A crash here leaves the table behind the stored version: the next
    // start's table check adds the columns (`CatalogTable::evolving`).
    ctx.crash.hit("after_schema_version");
    if let Some(catalog) = &ctx.catalog {
        catalog.evolve(ctx.settings.table_definition_of(&schema)?).await?;
    }
    Ok((Version { number, spec: Arc::new(spec_of(&ctx.schemas.base, schema)) }, added))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_newest_stored_version_is_current_and_older_ones_load_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path().to_str().unwrap(), "app", "events").unwrap();
        let v1 = Schema::parse("[[columns]]\nname = \"id\"\ntype = \"bigint\"\n", false).unwrap();
        let add = |s: &Schema, name: &str| {
            with_columns(s, &[Column { name: name.into(), ty: "string".parse().unwrap(), required: false }])
        };
        let v2 = add(&v1, "a");
        let v3 = add(&v2, "b");
        store.save_schema(2, &v2.to_toml()).await.unwrap();
        store.save_schema(3, &v3.to_toml()).await.unwrap();
        store.save_schema(3, &add(&v2, "other").to_toml()).await.unwrap();
        let base = TableSpec {
            schema: Arc::new(v1.clone()),
            template: shardlake::partition::PartitionTemplate::parse("year=!{timestamp:yyyy}/").unwrap(),
            time_source: shardlake::partition::TimeSource::Arrival,
            unknown_fields: UnknownFieldPolicy::Evolve,
            max_record_bytes: 1 << 20,
            error_prefix: "errors/".into(),
            writer: Default::default(),
            max_partition_bytes: 512,
        };
        let schemas = Schemas::load(base, 1, &store).await.unwrap();
        let current = schemas.current();
        assert_eq!((current.number, current.spec.schema.as_ref()), (3, &v3), "the first stored v3 wins");
        assert_eq!(*schemas.version(2, &store).await.unwrap().spec.schema, v2);
        assert_eq!(*schemas.version(1, &store).await.unwrap().spec.schema, v1);
        let err = schemas.version(9, &store).await.unwrap_err().to_string();
        assert!(err.contains("schema version 9 is not in"), "{err}");
        assert!(schemas.watch(&current).is_some());
    }
}
