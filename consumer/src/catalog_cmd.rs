//! `shardlake-consumer catalog sync`: for a lake written before `catalog`
//! was set (or while the catalog was unreachable for good), registers every
//! partition that has data files and the catalog lacks, and reports the
//! partitions the catalog lists that have no files.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use shardlake::catalog::{CatalogTable, PartitionMode};
use shardlake::checkpoint::{CheckpointStore, FleetOptions};
use shardlake::schema::Schema;
use shardlake::store::ObjectStore;

use crate::config::Settings;

/// `catalog` subcommands.
#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Register the lake's partitions that the catalog is missing.
    Sync(SyncArgs),
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
}

/// The schema the lake is written with: the file, or the one stored beside
/// the checkpoints (inferred or Glue mode), or the Glue table's.
async fn lake_schema(settings: &Settings, glue: &aws_sdk_glue::Client) -> anyhow::Result<Schema> {
    let c = &settings.config;
    if c.schema.is_some() && settings.schema_table.is_none() {
        return Ok(settings.table.schema.as_ref().clone());
    }
    let fleet = FleetOptions {
        worker_id: "catalog-sync".into(),
        lease_duration: c.fleet.lease_duration,
        create_table: false,
        timeouts: c.timeouts.aws(),
    };
    let checkpoints = CheckpointStore::connect(&c.checkpoint_store, &c.application, &c.stream, &fleet)
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
    if let Some(schema) = crate::infer::stored_schema(&checkpoints).await? {
        return Ok(schema);
    }
    match &settings.schema_table {
        Some(table) => Ok(shardlake::catalog::read_schema(glue, table).await?),
        None => anyhow::bail!(
            "no schema stored in {} yet: run the worker once, or set `schema` in the config",
            checkpoints.url()
        ),
    }
}

/// Runs a catalog subcommand.
pub async fn run(cmd: CatalogCommand) -> anyhow::Result<()> {
    let CatalogCommand::Sync(args) = cmd;
    let settings = crate::run_cmd::load(&args.config)?;
    let name =
        settings.catalog.clone().context("catalog: not set in the config; add catalog = \"glue://DATABASE/TABLE\"")?;
    let sdk = shardlake::aws::sdk_config().await;
    let glue = shardlake::aws::glue_client(&sdk, &settings.config.timeouts.aws());
    let schema = lake_schema(&settings, &glue).await?;
    let settings = settings.with_schema(schema);
    let c = &settings.config;
    let template = settings.table.template.clone();
    let table = CatalogTable::new(glue, name, template.clone(), settings.table_definition()?, c.catalog_partitions);
    table.ensure(c.catalog_create && !args.dry_run).await?;

    let lake = ObjectStore::open(&c.destination, &settings.s3).await?;
    let error_prefix = &settings.table.error_prefix;
    let in_lake: BTreeSet<String> = lake
        .list("")
        .await?
        .into_iter()
        .filter(|key| key.ends_with(".parquet") && !key.starts_with(error_prefix.as_str()))
        .filter_map(|key| key.rsplit_once('/').map(|(dir, _)| format!("{dir}/")))
        .filter(|dir| template.key_values(dir).is_some())
        .collect();
    let location = shardlake::catalog::table_location(&c.destination)?;
    let listed: BTreeSet<String> = table
        .partitions()
        .await?
        .into_iter()
        .map(|p| p.location.strip_prefix(&location).unwrap_or(&p.location).to_string())
        .collect();
    let missing: Vec<String> = in_lake.difference(&listed).cloned().collect();
    let empty: Vec<&String> = listed.difference(&in_lake).collect();
    outln!("lake {}: {} partitions with data files", lake.url(""), in_lake.len());
    outln!("catalog {}: {} partitions", table.name(), listed.len());
    if c.catalog_partitions == PartitionMode::Projection {
        outln!("catalog_partitions = \"projection\": Athena computes partitions; nothing to register");
        return Ok(());
    }
    if args.dry_run {
        outln!("missing from the catalog: {}", missing.len());
        for p in &missing {
            outln!("  {p}");
        }
    } else {
        let created = table.register(&missing).await?;
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
