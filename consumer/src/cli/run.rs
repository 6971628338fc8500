//! `shardlake-consumer run`, `config check` and `config iam-policy`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::checkpoint::{CheckpointStore, FleetOptions};
use clap::{Args, Subcommand};
use shardlake::schema::UnknownFieldPolicy;
use shardlake::store::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::cli::preflight::{self, Verdict};
use crate::config::{ConsumerConfig, RetrievalMode, Settings};
use crate::crash::CrashPoints;
use crate::fleet::Leases;
use crate::kinesis::KinesisError;
use crate::lake::batch::Thresholds;
use crate::lake::catalog::Registrar;
use crate::lake::iceberg::committer::{Committer, Parts as CommitterParts};
use crate::lake::iceberg::{CatalogUrl, IcebergLake, PartitionMapping, TableAppender, TableConfig};
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::retry::Report;
use crate::shard::{Context, MemoryBudget};
use crate::stop::{AbortCause, Shutdown};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file (TOML); see `config check`.
    #[arg(long, default_value = "consumer.toml")]
    config: PathBuf,
}

/// Arguments of `config check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Also check what the config needs from AWS, as `run` does at start:
    /// credentials and region, the stream, a write and delete in the
    /// destination, the DynamoDB table, the Glue database.
    #[arg(long)]
    online: bool,
}

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and check a config file; print the settings with their defaults,
    /// or explain the first error with its key and the fix. With --online,
    /// also run the start-up checks and exit non-zero on any problem.
    Check(CheckArgs),
    /// Print the least-privilege IAM policy (JSON) that `run` needs with
    /// this config: the stream, the lake's bucket and prefix, the DynamoDB
    /// table, the Glue database and table, the KMS key, as set. Notes on
    /// placeholders go to stderr, so stdout is the document alone.
    IamPolicy(IamPolicyArgs),
}

/// Arguments of `config iam-policy`.
#[derive(Debug, Args)]
pub struct IamPolicyArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The region in the ARNs (default: AWS_REGION, then AWS_DEFAULT_REGION).
    #[arg(long)]
    region: Option<String>,
    /// The account id in the ARNs (default: the placeholder ACCOUNT_ID).
    #[arg(long)]
    account: Option<String>,
    /// Also allow `convert --input` to read this S3 object (s3://bucket/key,
    /// or a prefix ending in `/`); convert writes to the config's destination.
    #[arg(long, value_name = "URL")]
    convert_input: Option<String>,
}

pub(crate) fn load(path: &Path) -> anyhow::Result<Settings> {
    let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ConsumerConfig::from_file(path)?.resolve(base)
}

/// Runs a `config` subcommand.
pub async fn config(cmd: ConfigCommand) -> anyhow::Result<()> {
    match cmd {
        ConfigCommand::Check(args) => check(args).await,
        ConfigCommand::IamPolicy(args) => iam_policy(args),
    }
}

/// Runs `config iam-policy`.
fn iam_policy(args: IamPolicyArgs) -> anyhow::Result<()> {
    let settings = load(&args.run.config)?;
    let from_env = || ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().find_map(|k| std::env::var(k).ok());
    let region = args.region.or_else(from_env).filter(|r| !r.trim().is_empty());
    if region.is_none() {
        eprintln!("# no --region, AWS_REGION or AWS_DEFAULT_REGION: replace REGION in the ARNs");
    }
    if args.account.is_none() {
        eprintln!("# replace ACCOUNT_ID with your account id (or pass --account)");
    }
    let scope = crate::cli::iam::Scope {
        region: region.unwrap_or_else(|| "REGION".into()),
        account: args.account.unwrap_or_else(|| "ACCOUNT_ID".into()),
    };
    let mut policy = crate::cli::iam::policy(&settings, &scope);
    if let Some(url) = &args.convert_input {
        policy.statements.push(crate::cli::iam::convert_input(url, &scope)?);
    }
    outln!("{}", policy.to_json());
    Ok(())
}

/// Runs `config check`.
async fn check(CheckArgs { run: args, online }: CheckArgs) -> anyhow::Result<()> {
    let s = load(&args.config)?;
    print_settings(&args.config, &s);
    if let (Some(url), false) = (&s.iceberg, s.table.schema.columns.is_empty()) {
        // The partition spec needs the schema: checked here when it is a file.
        iceberg_mapping(&s, url)?;
    }
    if !online {
        return Ok(());
    }
    outln!("online checks (transient failures retried for {})", humantime::format_duration(preflight::CHECK_PATIENCE));
    let checks = preflight::check(&s, preflight::CHECK_PATIENCE).await;
    for c in &checks {
        let (label, text) = match &c.verdict {
            Verdict::Ok(found) => ("ok", found),
            Verdict::Warning(line) => ("warning", line),
            Verdict::Problem(line) => ("PROBLEM", line),
            Verdict::Unsure(line) => ("NOT CONFIRMED", line),
            Verdict::Skipped(why) => ("skipped", why),
        };
        outln!("  {:<17} {label}: {text}", c.name);
    }
    preflight::problems(&checks)?;
    let unsure: Vec<&str> = checks.iter().filter(|c| matches!(c.verdict, Verdict::Unsure(_))).map(|c| c.name).collect();
    if !unsure.is_empty() {
        anyhow::bail!(
            "{} not confirmed within {}: failing transiently (see above); try again",
            unsure.join(", "),
            humantime::format_duration(preflight::CHECK_PATIENCE)
        );
    }
    Ok(())
}

/// The settings as `config check` prints them.
fn print_settings(path: &Path, s: &Settings) {
    let c = &s.config;
    outln!("{}: ok", path.display());
    outln!("stream            {} (application {}, start {:?})", c.stream, c.application, c.initial_position);
    outln!("destination       {}", c.destination);
    outln!("checkpoint_store  {}", c.checkpoint_store);
    if c.checkpoint_store.starts_with("dynamodb://") {
        outln!(
            "fleet             worker {}, leases of {:?} renewed every {:?}{}",
            c.fleet.worker_id.as_deref().unwrap_or("-"),
            c.fleet.lease_duration,
            c.fleet.renew_every(),
            if c.fleet.create_table { ", table created when missing" } else { "" }
        );
    }
    match &c.schema {
        Some(path) if s.schema_table.is_some() => {
            outln!("schema            {} (read at the first start, then stored beside the checkpoints)", path.display())
        }
        Some(path) => outln!(
            "schema            {} ({} columns, unknown fields: {:?})",
            path.display(),
            s.table.schema.columns.len(),
            c.unknown_fields
        ),
        None => outln!("schema            inferred from the first {} records of the stream", c.infer_sample),
    }
    if c.unknown_fields == UnknownFieldPolicy::Evolve {
        outln!(
            "evolution         new top-level fields become columns in their record #{} of a batch, at most one \
             version per {} per worker; versions stored beside the checkpoints",
            c.evolve_min_records,
            humantime::format_duration(c.evolve_interval)
        );
    }
    if let Some(table) = &s.catalog {
        outln!(
            "catalog           {table} ({:?} partitions{})",
            c.catalog_partitions,
            if c.catalog_create { ", created when missing" } else { ", must exist" }
        );
    }
    if let Some(url) = &s.iceberg {
        outln!(
            "iceberg table     {url} ({}), one commit per {} per worker",
            if c.catalog_create { "created when missing" } else { "must exist" },
            humantime::format_duration(c.commit_interval)
        );
    }
    outln!("partition         {} (time: {})", c.partition, c.time_field);
    outln!("errors            {}{}", c.destination.trim_end_matches('/'), format_args!("/{}", s.table.error_prefix));
    outln!(
        "buffer            {} MiB / {} records / {:?} per shard; {} MiB shared budget",
        c.buffer.max_mb,
        c.buffer.max_records,
        c.buffer.max_age,
        c.buffer.memory_budget_mb
    );
    outln!(
        "polling           {} records/call every {:?} ({:?} when idle, up to {:?} when quiet); shards refreshed every {:?}",
        c.polling.max_records_per_call,
        c.polling.interval,
        c.polling.idle_interval,
        c.polling.max_idle_interval,
        c.polling.shard_refresh
    );
    outln!(
        "metrics           {}",
        if c.metrics.enabled { format!("http://{}/metrics", c.metrics.address) } else { "off".into() }
    );
}

/// Back-off between attempts to open the Iceberg table at start.
const OPEN_TABLE_BACKOFF: shardlake::retry::RetryPolicy = shardlake::retry::RetryPolicy {
    max_attempts: u32::MAX,
    base: std::time::Duration::from_millis(500),
    cap: std::time::Duration::from_secs(15),
};

/// The event-time column of `time_field` (`None` for the arrival time).
fn time_column(s: &Settings) -> Option<&str> {
    Some(s.config.time_field.as_str()).filter(|f| *f != "arrival")
}

/// The Iceberg partition spec the config asks for: an error names what has
/// no Iceberg form.
fn iceberg_mapping(s: &Settings, url: &str) -> anyhow::Result<PartitionMapping> {
    CatalogUrl::parse(url, Path::new("/")).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    let template = shardlake::partition::PartitionTemplate::parse(&s.config.partition)?;
    Ok(PartitionMapping::new(&template, time_column(s), &s.table.schema)?)
}

/// Opens (or creates) the lake's Iceberg table, and gives the table spec
/// its field ids. A catalog or storage failing transiently (a throttle, a
/// 5xx, a timeout) is retried with back-off, each failure logged, until it
/// passes or the worker is stopped; anything else ends the start here.
async fn open_iceberg(settings: &mut Settings, url: &str) -> anyhow::Result<IcebergLake> {
    // `IcebergLake::open` maps the template itself.
    let catalog = CatalogUrl::parse(url, Path::new("/")).map_err(|e| anyhow::anyhow!("catalog: {e}"))?;
    let c = &settings.config;
    let config = TableConfig {
        catalog: &catalog,
        destination: &c.destination,
        schema: &settings.table.schema,
        unknown_fields: c.unknown_fields,
        template: &c.partition,
        time_field: time_column(settings),
        create: c.catalog_create,
        s3: &settings.s3,
    };
    let classify = |e: &crate::lake::iceberg::TableError| match e.transient() {
        true => shardlake::retry::RetryClass::Transient,
        false => shardlake::retry::RetryClass::Fatal,
    };
    let report = |f: &shardlake::retry::FailedAttempt<'_, crate::lake::iceberg::TableError>| {
        if let Some(wait) = f.retry_in {
            tracing::warn!(attempt = f.attempt, error = %f.error, "opening the Iceberg table failed; retrying in {wait:?}");
        }
    };
    let lake = OPEN_TABLE_BACKOFF
        .run_until(|_| IcebergLake::open(config), classify, report, std::future::pending::<()>())
        .await
        .map_err(|e| match e {
            shardlake::retry::GaveUp::Failed(e) | shardlake::retry::GaveUp::Stopped(Some(e)) => anyhow::Error::new(e),
            shardlake::retry::GaveUp::Stopped(None) => anyhow::anyhow!("opening the Iceberg table: stopped"),
        })?;
    eprintln!("shardlake-consumer: Iceberg table {} at {}", lake.table.ident(), lake.location);
    settings.table.field_ids = Some(lake.field_ids.clone());
    Ok(lake)
}

/// Runs the worker until `shutdown` stops it and its final flushes end. A
/// stop starts the `shutdown_timeout` clock: when it runs out, the worker
/// aborts ([`AbortCause::Timeout`]). Signals are the caller's (`main`), so a
/// program that embeds the worker stops it its own way.
pub async fn run(args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = load(&args.config)?;
    let timeout = settings.config.shutdown_timeout;
    tokio::select! {
        result = work(settings, &shutdown) => result,
        never = shutdown_clock(&shutdown, timeout) => match never {},
    }
}

/// After a stop, aborts the worker once `timeout` passes; never returns.
async fn shutdown_clock(shutdown: &Shutdown, timeout: Duration) -> std::convert::Infallible {
    shutdown.stopping().await;
    tokio::select! {
        _ = shutdown.aborted() => {}
        _ = tokio::time::sleep(timeout) => {
            eprintln!("shardlake-consumer: shutdown_timeout ({timeout:?}) passed");
            shutdown.abort(AbortCause::Timeout);
        }
    }
    std::future::pending().await
}

/// The worker, from its config's checks to its final flushes.
async fn work(settings: Settings, shutdown: &Shutdown) -> anyhow::Result<()> {
    let cancel = shutdown.stop_token().clone();
    // A child, so the worker's own end stops its tasks without looking
    // like an abort to whoever holds `shutdown`.
    let abort = shutdown.abort_token().child_token();
    if let Some(before) = &settings.config.checkpoints_before {
        // Local, so before the online checks: a stream that moved is no reason to miss this.
        let c = &settings.config;
        let store = CheckpointStore::open(&c.checkpoint_store, &c.application, &c.stream)
            .map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
        refuse_moved_checkpoints(&before.join(&c.application).join(&c.stream), &store)?;
    }
    // What the config needs is checked before anything is read or written:
    // a missing credential, region, bucket or permission ends the start
    // here, with its fix, instead of a worker retrying it for ever.
    let checks = tokio::select! {
        checks = preflight::check(&settings, preflight::RUN_PATIENCE) => checks,
        // A stop while the checks retry a transient failure: nothing was read.
        _ = cancel.cancelled() => return Ok(()),
    };
    preflight::problems(&checks)?;
    preflight::report_doubts(&checks, preflight::RUN_PATIENCE);
    let c = &settings.config;
    let sdk = shardlake::aws::sdk_config().await;
    let lake = ObjectStore::open(&c.destination, &settings.s3).await?;
    let fleet = FleetOptions {
        worker_id: c.fleet.worker_id.clone().unwrap_or_else(crate::config::generated_worker_id),
        lease_duration: c.fleet.lease_duration,
        create_table: c.fleet.create_table,
        timeouts: c.timeouts.aws(),
    };
    let checkpoints = CheckpointStore::connect(&c.checkpoint_store, &c.application, &c.stream, &fleet)
        .await
        .map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
    // Held until the process exits: one worker per file store.
    let store_lock = checkpoints.lock().map_err(|e| anyhow::anyhow!("checkpoint_store: {e}"))?;
    let kinesis = crate::kinesis::get_records::kinesis_client(&sdk, &c.timeouts.aws());
    // A missing stream or bad credentials are reported at once, not retried forever.
    if let Err(e @ (KinesisError::NotFound(_) | KinesisError::Fatal(_))) =
        crate::kinesis::list_shards(&kinesis, &c.stream).await
    {
        let region = sdk.region().map_or("(no region)".to_string(), |r| r.to_string());
        anyhow::bail!(
            "stream `{}` in {region}: {e}; check `stream`, AWS_REGION and AWS_ENDPOINT_URL_KINESIS (or create the stream)",
            c.stream
        );
    }
    let fan_out = match c.retrieval.mode {
        RetrievalMode::Polling => None,
        RetrievalMode::FanOut => {
            let name = c.retrieval.consumer_name(&c.application);
            let arn = crate::kinesis::register_consumer(&kinesis, &c.stream, name)
                .await
                .map_err(|e| anyhow::anyhow!("retrieval: registering fan-out consumer `{name}`: {e}"))?;
            eprintln!("shardlake-consumer: enhanced fan-out as {arn}");
            Some(arn)
        }
    };
    let glue = (settings.schema_table.is_some() || settings.catalog.is_some())
        .then(|| shardlake::aws::glue_client(&sdk, &c.timeouts.aws()));
    let settings = match (&settings.schema_table, &glue) {
        (Some(table), Some(glue)) => {
            let schema = crate::lake::infer::glue_schema(glue, table, &checkpoints).await?;
            settings.with_schema(schema)
        }
        _ if settings.infers_schema() => {
            let Some(schema) = crate::lake::infer::stream_schema(&settings, &kinesis, &checkpoints, &cancel).await?
            else {
                return Ok(());
            };
            settings.with_schema(schema)
        }
        _ => settings,
    };
    let mut settings = settings;
    let iceberg = match settings.iceberg.clone() {
        Some(url) => tokio::select! {
            lake = open_iceberg(&mut settings, &url) => Some(lake?),
            // A stop while the catalog fails transiently: nothing was read.
            _ = cancel.cancelled() => return Ok(()),
        },
        None => None,
    };
    // An Iceberg table's versions take their field ids from the table.
    let ids = iceberg.as_ref().map(|lake| {
        let (table, extra) = (lake.table.clone(), settings.config.unknown_fields.keeps_extra());
        let ids: crate::lake::evolve::FieldIdsOf = Arc::new(move |schema| {
            Ok(Arc::new(crate::lake::iceberg::spec::field_ids(&table.current_schema(), schema, extra)?))
        });
        ids
    });
    let schemas = crate::lake::evolve::Schemas::load(
        settings.table.clone(),
        crate::lake::evolve::Rules::of(&settings),
        &checkpoints,
        ids,
    )
    .await?;
    let current = schemas.current();
    if current.number > 1 {
        eprintln!(
            "shardlake-consumer: schema version {} ({} columns) from {}",
            current.number,
            current.spec.schema.columns.len(),
            checkpoints.url()
        );
    }
    let registrar = match (&settings.catalog, glue) {
        (Some(name), Some(glue)) => {
            let c = &settings.config;
            let table = settings.catalog_table(glue, name.clone(), settings.table_definition_of(&current.spec.schema)?);
            let ensured = crate::lake::catalog::ensure_at_start(&table, c.catalog_create).await?;
            if ensured.is_some() {
                schemas.mark_in_table(current.number);
            }
            let for_versions = settings.clone();
            let define: crate::lake::catalog::Define = Box::new(move |schema| for_versions.table_definition_of(schema));
            Some(Arc::new(Registrar::new(table, c.catalog_create, ensured, define)))
        }
        _ => None,
    };
    let c = &settings.config;
    let thresholds =
        Thresholds { max_bytes: c.buffer.max_mb << 20, max_records: c.buffer.max_records, max_age: c.buffer.max_age };
    let metrics = Arc::new(Metrics::new());
    let leases = checkpoints.fleet().map(|store| Leases::new(store.clone(), metrics.clone()));
    if leases.is_some() {
        eprintln!("shardlake-consumer: fleet mode, worker {}", fleet.worker_id);
    }
    let health = Arc::new(Health::new(c.health.stall_after, c.health.failing_after, c.buffer.max_age));
    let (table, committing) = match iceberg {
        Some(lake) => {
            let parts = CommitterParts { health: health.clone(), metrics: metrics.clone() };
            let stop = shutdown.stop_token().clone();
            let (committer, task) = Committer::spawn(lake.table.clone(), c.commit_interval, parts, stop, abort.clone());
            (Some(TableAppender { lake, committer }), Some(task))
        }
        None => (None, None),
    };
    let ctx = Arc::new(Context {
        leases,
        thresholds,
        kinesis,
        fan_out,
        lake,
        checkpoints,
        metrics,
        budget: MemoryBudget::new(c.buffer.memory_budget_mb << 20),
        read_buffers: crate::kinesis::get_records::ReadBuffers::new(c.buffer.read_buffer_mb << 20),
        crash: CrashPoints::from_env()?,
        abort,
        health,
        catalog: registrar.clone(),
        table,
        schemas,
        settings,
    });
    ctx.metrics.record_schema(current.number, 0);
    let c = &ctx.settings.config;
    // Lag is judged against the stream's retention, to warn before records age out unread.
    match crate::kinesis::describe_stream(&ctx.kinesis, &c.stream).await {
        Ok(Some(summary)) => ctx.health.set_retention(
            Duration::from_secs(summary.retention_hours.max(1) as u64 * 3600),
            c.health.retention_margin,
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the stream's retention; lag is not checked against it"),
    }
    if c.metrics.enabled {
        let watched = crate::ops::http::Watched {
            health: ctx.health.clone(),
            metrics: ctx.metrics.clone(),
            read_buffers: ctx.read_buffers.clone(),
        };
        let bound = crate::ops::http::serve(Arc::new(watched), c.metrics.address, ctx.abort.clone()).await?;
        eprintln!("shardlake-consumer: metrics on http://{bound}/metrics");
    }
    tracing::info!(
        stream = c.stream,
        destination = c.destination,
        checkpoints = ctx.checkpoints.url(),
        "consumer started"
    );
    let finish = CancellationToken::new();
    let registering = registrar.map(|registrar| {
        let (ctx, finish) = (ctx.clone(), finish.clone());
        tokio::spawn(async move {
            let report = Report { health: &ctx.health, metrics: &ctx.metrics, shard: None };
            let every = ctx.settings.config.catalog_check_interval;
            crate::lake::catalog::run(&registrar, &ctx.lake, &ctx.settings.table, every, report, &ctx.abort, finish)
                .await
        })
    });
    let following = {
        let (ctx, finish) = (ctx.clone(), finish.clone());
        tokio::spawn(async move { crate::lake::evolve::follow(ctx.evolution(), &ctx.abort, finish).await })
    };
    let guarding = store_lock.map(|lock| tokio::spawn(guard_store(ctx.clone(), lock, finish.clone())));
    let result = crate::scheduler::run(ctx.clone(), shutdown.clone()).await;
    if let Some(task) = registering {
        // The final flushes' partitions: registered now if the catalog
        // answers, else on the next start (they are in the checkpoints).
        finish.cancel();
        if tokio::time::timeout(FINAL_REGISTRATION, task).await.is_err() {
            let pending = ctx.catalog.as_ref().map_or(0, |r| r.pending());
            eprintln!("shardlake-consumer: {pending} partitions left to register at the next start");
        }
    }
    finish.cancel();
    let _ = following.await;
    if let Some(task) = guarding {
        let _ = task.await;
    }
    if let Some(task) = committing {
        // Every reader has ended, so nothing waits on it any more.
        task.abort();
    }
    ctx.abort.cancel();
    result
}

/// Before relative paths resolved against the config's folder, a relative
/// `file://` store was under the working directory. Checkpoints found there
/// while the store they now resolve to has none would be silently ignored,
/// and every shard read again: refused with the fix.
fn refuse_moved_checkpoints(before: &Path, checkpoints: &CheckpointStore) -> anyhow::Result<()> {
    let has_shards = |dir: &Path| {
        std::fs::read_dir(dir)
            .is_ok_and(|entries| entries.flatten().any(|e| e.path().extension().is_some_and(|x| x == "json")))
    };
    let Some(now) = checkpoints.folder() else { return Ok(()) };
    if has_shards(before) && !has_shards(now) {
        anyhow::bail!(
            "checkpoint_store: checkpoints found in {} (under the working directory), but relative paths resolve \
             against the config file's folder, to {}: move them there, or set checkpoint_store to the absolute path \
             they are in",
            before.display(),
            now.display()
        );
    }
    Ok(())
}

/// How often the `file://` store's lock is checked.
const STORE_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Watches the lock of a `file://` store (held by `lock` until this task
/// ends): a checkpoint folder deleted, moved or replaced under the running
/// worker is an error in the log and on `/healthz` while it lasts, never a
/// silent fresh start at the next restart.
async fn guard_store(ctx: Arc<Context>, lock: crate::checkpoint::StoreLock, finish: CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(STORE_CHECK_EVERY) => {}
            _ = finish.cancelled() => return,
            _ = ctx.abort.cancelled() => return,
        }
        match lock.check() {
            Ok(()) if failing => {
                failing = false;
                ctx.health.worker_ok("checkpoint_store");
            }
            Ok(()) => {}
            Err(e) => {
                if !failing {
                    tracing::error!(store = ctx.checkpoints.url(), error = e, "the checkpoint store is gone");
                }
                failing = true;
                ctx.health.worker_failed("checkpoint_store", &e);
            }
        }
    }
}

/// How long a stopping worker tries to register its last partitions.
const FINAL_REGISTRATION: Duration = Duration::from_secs(10);
