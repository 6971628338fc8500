//! `shardlake-consumer catalog sync`: for a lake written before `catalog`
//! was set (or while the catalog was unreachable for good), registers every
//! partition that has data files and the catalog lacks, and reports the
//! partitions the catalog lists that have no files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checkpoint::{CheckpointStore, FleetOptions};
use anyhow::Context;
use clap::{Args, Subcommand};
use shardlake::catalog::{CatalogTable, PartitionMode};
use shardlake::retry::{FailedAttempt, GaveUp, RetryPolicy, Retryable};
use shardlake::schema::{Schema, UnknownFieldPolicy};
use shardlake::store::ObjectStore;
use tokio::time::Instant;

use crate::config::Settings;
use crate::lake::iceberg::BatchKey;
use crate::lake::iceberg::CatalogUrl;
use crate::lake::iceberg::committer::shard_batch_key;
use crate::lake::iceberg::maintain::MaintainOptions;

/// Back-off between attempts of a catalog call that failed transiently.
const BACKOFF: RetryPolicy =
    RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(200), cap: Duration::from_secs(10) };

/// Runs the catalog call `op` until it succeeds, retrying what Glue may
/// answer under load (throttling, 5xx, timeouts) with back-off until
/// `deadline`; anything else, or the deadline, fails at once.
async fn retried<T, F, Fut>(what: &str, deadline: Instant, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = shardlake::Result<T>>,
{
    let report = |f: &FailedAttempt<'_, shardlake::Error>| {
        if let Some(delay) = f.retry_in {
            tracing::warn!(attempt = f.attempt, error = %f.error, delay_ms = delay.as_millis() as u64, "{what} failed; retrying");
        }
    };
    let stop = tokio::time::sleep_until(deadline);
    match BACKOFF.run_until(|_| op(), shardlake::Error::retry_class, report, stop).await {
        Ok(v) => Ok(v),
        Err(GaveUp::Failed(e)) => Err(e.into()),
        Err(GaveUp::Stopped(Some(e))) => {
            Err(anyhow::Error::new(e).context(format!("{what}: still failing at the deadline (--deadline)")))
        }
        Err(GaveUp::Stopped(None)) => Err(anyhow::anyhow!("{what}: no answer before the deadline (--deadline)")),
    }
}

/// `catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Register the lake's partitions that the catalog is missing.
    Sync(SyncArgs),
    /// List the lake's partitions beside the catalog's.
    Partitions(PartitionsArgs),
    /// Iceberg table: expire old snapshots and delete orphan data files
    /// (safe beside running workers).
    Maintain(MaintainArgs),
}

/// Arguments of `catalog maintain`.
#[derive(Debug, Args)]
pub struct MaintainArgs {
    /// The worker's config file (its `catalog`, with `table_format = "iceberg"`).
    #[arg(long, default_value = "consumer.toml")]
    config: PathBuf,
    /// Expire snapshots older than this. A snapshot names the batches it
    /// holds, which replays check: keep them longer than a worker may stay
    /// down with a pending batch.
    #[arg(long, default_value = "5d", value_parser = humantime::parse_duration)]
    older_than: Duration,
    /// Keep at least this many of the newest snapshots.
    #[arg(long, default_value_t = 100)]
    retain_last: usize,
    /// Delete unreferenced data files older than this (far longer than an
    /// upload waits for its table commit).
    #[arg(long, default_value = "3d", value_parser = humantime::parse_duration)]
    orphans_older_than: Duration,
    /// Report what would be expired and deleted, change nothing.
    #[arg(long)]
    dry_run: bool,
}

async fn maintain(args: MaintainArgs) -> anyhow::Result<()> {
    let settings = crate::cli::run::load(&args.config)?;
    let Some(url) = &settings.iceberg else {
        anyhow::bail!("catalog maintain: {} has no Iceberg table (table_format = \"iceberg\")", args.config.display());
    };
    let catalog = CatalogUrl::parse(url, Path::new("/")).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    let location = crate::lake::iceberg::table_location(&settings.config.destination)?;
    let connected = catalog.connect(&location, &settings.s3).await.map_err(|e| anyhow::anyhow!(e))?;
    let opts = MaintainOptions {
        older_than: args.older_than,
        retain_last: args.retain_last,
        orphans_older_than: args.orphans_older_than,
        dry_run: args.dry_run,
    };
    // Batches a shard may still replay: their snapshots must stay.
    let checkpoints = checkpoint_store(&settings, "catalog-maintain").await?;
    let pending: BTreeSet<BatchKey> = checkpoints
        .pending_intents()
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint_store: reading pending batches: {e}"))?
        .into_iter()
        .map(|(shard, i)| shard_batch_key(&settings.config.stream, &shard, &i.first.to_string(), &i.last.to_string()))
        .collect();
    let done =
        crate::lake::iceberg::maintain::maintain(&connected, &catalog.ident(), opts, &settings.s3, &pending).await?;
    let verb = if args.dry_run { "would delete" } else { "deleted" };
    outln!(
        "{}: snapshots {} -> {}{}",
        catalog.ident(),
        done.snapshots_before,
        done.snapshots_after,
        if args.dry_run { " (dry run: none expired)" } else { "" }
    );
    if done.held_for_replays > 0 {
        outln!(
            "kept {} snapshots past --older-than: they (or older ones) name batches shards still replay",
            done.held_for_replays
        );
    }
    outln!(
        "data files: {} referenced; {verb} {} orphans; {} unreferenced but younger than {}",
        done.referenced,
        done.orphans.len(),
        done.young_unreferenced,
        humantime::format_duration(args.orphans_older_than)
    );
    outln!("metadata files: {verb} {} that no kept snapshot or metadata version reads", done.old_metadata);
    for f in &done.orphans {
        outln!("  {verb} {f}");
    }
    Ok(())
}

/// The config's checkpoint store, opened by a tool (`worker`) that takes
/// no lease and creates nothing.
async fn checkpoint_store(settings: &Settings, worker: &str) -> anyhow::Result<CheckpointStore> {
    let c = &settings.config;
    let fleet = FleetOptions {
        worker_id: worker.into(),
        lease_duration: c.fleet.lease_duration,
        create_table: false,
        timeouts: c.timeouts.aws(),
    };
    CheckpointStore::connect(&c.checkpoint_store, &c.application, &c.stream, &fleet)
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))
}

/// Arguments of `catalog partitions`.
#[derive(Debug, Args)]
pub struct PartitionsArgs {
    /// The worker's config file.
    #[arg(long, default_value = "consumer.toml")]
    config: PathBuf,
    /// Give up when Glue still throttles or fails after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// Arguments of `catalog sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// The worker's config file (its `catalog`, `destination`, `partition`).
    #[arg(long, default_value = "consumer.toml")]
    config: PathBuf,
    /// Report what is missing without registering it.
    #[arg(long)]
    dry_run: bool,
    /// Give up when Glue still throttles or fails after this long (each
    /// call is retried with back-off until then; what was registered stays).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// The schema the lake is written with now: the file, or the one stored
/// beside the checkpoints (inferred or Glue mode), or the Glue table's; then
/// its newest version under `unknown_fields = "evolve"`.
async fn lake_schema(settings: &Settings, glue: &aws_sdk_glue::Client) -> anyhow::Result<Schema> {
    let c = &settings.config;
    let from_file = c.schema.is_some() && settings.schema_table.is_none();
    if from_file && c.unknown_fields != UnknownFieldPolicy::Evolve {
        return Ok(settings.table.schema.as_ref().clone());
    }
    let checkpoints = checkpoint_store(settings, "catalog-sync").await?;
    let first = match crate::lake::infer::stored_schema(&checkpoints).await? {
        _ if from_file => settings.table.schema.as_ref().clone(),
        Some(schema) => schema,
        None => match &settings.schema_table {
            Some(table) => shardlake::catalog::read_schema(glue, table).await?,
            None => anyhow::bail!(
                "no schema stored in {} yet: run the worker once, or set `schema` in the config",
                checkpoints.url()
            ),
        },
    };
    Ok(crate::lake::evolve::latest(&checkpoints, &first).await?.1)
}

/// The lake's partitions beside the catalog's.
struct Survey {
    table: CatalogTable,
    /// The table location every partition path is under.
    location: String,
    /// Partition path → data files, for partitions with data files.
    in_lake: BTreeMap<String, usize>,
    /// Partition path (under the location) → location, as the catalog lists them.
    listed: BTreeMap<String, String>,
}

/// Checks (or, with `create`, creates) the table of the config's catalog and
/// lists the partitions of the lake and of the catalog.
async fn survey(config: &Path, create: bool, deadline: Instant) -> anyhow::Result<Survey> {
    let settings = crate::cli::run::load(config)?;
    let name =
        settings.catalog.clone().context("catalog: not set in the config; add catalog = \"glue://DATABASE/TABLE\"")?;
    let sdk = shardlake::aws::sdk_config().await;
    let glue = shardlake::aws::glue_client(&sdk, &settings.config.timeouts.aws());
    let schema = lake_schema(&settings, &glue).await?;
    let settings = settings.with_schema(schema);
    let c = &settings.config;
    let template = settings.table.template.clone();
    let table = settings.catalog_table(glue, name, settings.table_definition()?);
    retried("checking the table", deadline, || table.ensure(create)).await?;

    let lake = ObjectStore::open(&c.destination, &settings.s3).await?;
    let in_lake = crate::lake::catalog::lake_partitions(&lake, &template, &settings.table.error_prefix).await?;
    let location = shardlake::catalog::table_location(&c.destination)?;
    let listed = retried("listing the catalog's partitions", deadline, || table.partitions())
        .await?
        .into_iter()
        .map(|p| (p.location.strip_prefix(&location).unwrap_or(&p.location).to_string(), p.location))
        .collect();
    Ok(Survey { table, location, in_lake, listed })
}

/// Runs a catalog subcommand.
pub async fn run(cmd: CatalogCommand) -> anyhow::Result<()> {
    match cmd {
        CatalogCommand::Sync(args) => sync(args).await,
        CatalogCommand::Partitions(args) => partitions(args).await,
        CatalogCommand::Maintain(args) => maintain(args).await,
    }
}

async fn sync(args: SyncArgs) -> anyhow::Result<()> {
    let settings = crate::cli::run::load(&args.config)?;
    let create = settings.config.catalog_create && !args.dry_run;
    let deadline = Instant::now() + args.deadline;
    let Survey { table, location, in_lake, listed } = survey(&args.config, create, deadline).await?;
    let missing: Vec<String> = in_lake.keys().filter(|p| !listed.contains_key(*p)).cloned().collect();
    let empty: Vec<&String> = listed.keys().filter(|p| !in_lake.contains_key(*p)).collect();
    outln!("lake {location}: {} partitions with data files", in_lake.len());
    outln!("catalog {}: {} partitions", table.name(), listed.len());
    if table.mode() == PartitionMode::Projection {
        outln!("catalog_partitions = \"projection\": Athena computes partitions; nothing to register");
        return Ok(());
    }
    if args.dry_run {
        outln!("missing from the catalog: {}", missing.len());
        for p in &missing {
            outln!("  {p}");
        }
    } else {
        // Each attempt skips what earlier ones registered.
        let before = table.created();
        retried("registering partitions", deadline, || table.register(&missing)).await.with_context(|| {
            let left = table.unconfirmed(missing.iter().cloned()).len();
            format!(
                "{} of {} missing partitions registered; run catalog sync again",
                missing.len() - left,
                missing.len()
            )
        })?;
        let created = (table.created() - before) as usize;
        outln!("registered {created} partitions ({} were there meanwhile)", missing.len() - created);
    }
    if !empty.is_empty() {
        outln!("in the catalog without data files: {}", empty.len());
        for p in &empty {
            outln!("  {location}{p}");
        }
    }
    Ok(())
}

/// Prints every partition with its data files in the lake and its entry in the catalog.
async fn partitions(args: PartitionsArgs) -> anyhow::Result<()> {
    let deadline = Instant::now() + args.deadline;
    let Survey { table, location, in_lake, listed } = survey(&args.config, false, deadline).await?;
    let all: BTreeSet<&String> = in_lake.keys().chain(listed.keys()).collect();
    let width = all.iter().map(|p| p.len()).max().unwrap_or(9).max(9);
    outln!("lake {location} beside catalog {}", table.name());
    outln!("{:<width$}  {:>10}  catalog location", "partition", "lake files");
    for p in &all {
        let files = in_lake.get(*p).map_or("-".to_string(), |n| n.to_string());
        outln!("{p:<width$}  {files:>10}  {}", listed.get(*p).map_or("- (not registered)", String::as_str));
    }
    let registered = in_lake.keys().filter(|p| listed.contains_key(*p)).count();
    outln!("{registered} of {} lake partitions registered; {} catalog entries", in_lake.len(), listed.len());
    Ok(())
}
