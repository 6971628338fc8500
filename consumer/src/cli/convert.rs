//! `shardlake-consumer convert`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shardlake::catalog::{CatalogTable, GLUE_SCHEME, PartitionMode, TableName};
use shardlake::convert::{ConvertOptions, ConvertSummary, SchemaSource, convert, error_breakdown, input_stem};
use shardlake::partition::{DEFAULT_TEMPLATE, PartitionTemplate};
use shardlake::pipeline::DEFAULT_MAX_RECORD_BYTES;
use shardlake::schema::{DEFAULT_INFER_SAMPLE, Schema, UnknownFieldPolicy, table_definition};
use shardlake::store::S3Options;
use shardlake::writer::WriterSettings;

use crate::cli::schema::PolicyArg;
use crate::lake::iceberg::{BatchFiles, BatchKey, CatalogUrl, IcebergLake, TableConfig};

/// Arguments of `convert`.
#[derive(Debug, Clone, Args)]
pub struct ConvertArgs {
    /// JSON Lines input: a file (plain or gzip), `-` for stdin, or s3://bucket/key.
    #[arg(long)]
    input: String,
    /// Lake destination: a directory, file:///dir, or s3://bucket/prefix/.
    #[arg(long)]
    destination: String,
    /// Schema file (TOML, or JSON by extension), or a Glue table whose
    /// columns to use: glue://DATABASE/TABLE.
    #[arg(long, conflicts_with = "infer_schema", required_unless_present = "infer_schema")]
    schema: Option<PathBuf>,
    /// Infer the schema from the first records instead of a schema file.
    #[arg(long)]
    infer_schema: bool,
    /// Records sampled by --infer-schema.
    #[arg(long, default_value_t = DEFAULT_INFER_SAMPLE)]
    infer_sample: usize,
    /// Partition template (Firehose syntax: !{timestamp:yyyy}, !{field:a.b}).
    #[arg(long, default_value = DEFAULT_TEMPLATE)]
    partition: String,
    /// Event-time field used by !{timestamp:...}: RFC 3339, epoch seconds or millis.
    #[arg(long)]
    time_field: Option<String>,
    /// Prefix (under the destination) for records that fail, by error type.
    #[arg(long, default_value = shardlake::error_output::DEFAULT_ERROR_PREFIX)]
    error_prefix: String,
    /// Fields not in the schema: keep (as JSON in `_extra`), error, or drop.
    #[arg(long, value_enum, default_value_t = PolicyArg::Keep)]
    unknown_fields: PolicyArg,
    /// Records larger than this many bytes go to the error output.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: usize,
    /// Memory budget for buffered and encoded data, MiB.
    #[arg(long, default_value_t = 256)]
    memory_budget_mb: usize,
    /// Target size of one Parquet file, MiB.
    #[arg(long, default_value_t = 128)]
    target_file_mb: usize,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 128 * 1024)]
    row_group_rows: usize,
    /// Encrypt S3 objects with this KMS key (SSE-KMS).
    #[arg(long)]
    sse_kms_key_id: Option<String>,
    /// Glue table of the lake (glue://DATABASE/TABLE): checked (or created
    /// with --catalog-create) and, with --catalog-partitions register, the
    /// written partitions registered. With --table-format iceberg, the
    /// Iceberg table: sqlite://PATH/NAMESPACE/TABLE (a local catalog file).
    #[arg(long)]
    catalog: Option<String>,
    /// Create the catalog's database and table when missing.
    #[arg(long, requires = "catalog")]
    catalog_create: bool,
    /// register: add each written partition to the catalog (every engine
    /// sees it); projection: Athena partition projection, nothing registered.
    #[arg(long, value_enum, default_value_t = PartitionModeArg::Register)]
    catalog_partitions: PartitionModeArg,
    /// hive: Parquet files in hive folders (and, with --catalog glue://,
    /// a Glue table's partitions); iceberg: an Apache Iceberg table in the
    /// catalog --catalog names (sqlite://PATH/NAMESPACE/TABLE).
    #[arg(long, value_enum, default_value_t = TableFormatArg::Hive)]
    table_format: TableFormatArg,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also print a table of rows, files and bytes per partition.
    #[arg(long)]
    print_partitions: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn progress_bar(input: &str, counter: Arc<AtomicU64>) -> Option<tokio::task::JoinHandle<()>> {
    let total = std::fs::metadata(input).ok().filter(|m| m.is_file()).map(|m| m.len());
    let bar = match total {
        Some(t) => indicatif::ProgressBar::new(t),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("valid template"),
    );
    Some(tokio::spawn(async move {
        loop {
            bar.set_position(counter.load(Ordering::Relaxed));
            if total.is_some_and(|t| counter.load(Ordering::Relaxed) >= t) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bar.finish_and_clear();
    }))
}

/// `--table-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TableFormatArg {
    /// Parquet files in hive folders.
    Hive,
    /// An Apache Iceberg table.
    Iceberg,
}

/// `--catalog-partitions` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PartitionModeArg {
    /// Register every written partition (BatchCreatePartition).
    Register,
    /// Athena partition projection.
    Projection,
}

impl From<PartitionModeArg> for PartitionMode {
    fn from(m: PartitionModeArg) -> Self {
        match m {
            PartitionModeArg::Register => PartitionMode::Register,
            PartitionModeArg::Projection => PartitionMode::Projection,
        }
    }
}

/// The catalog table of a lake of `schema` written with `opts`.
fn catalog_table(
    glue: &aws_sdk_glue::Client,
    url: &str,
    mode: PartitionMode,
    opts: &ConvertOptions,
    schema: &Schema,
) -> anyhow::Result<CatalogTable> {
    let name = TableName::parse(url).map_err(|e| anyhow::anyhow!("--catalog: {e}"))?;
    let template = PartitionTemplate::parse(&opts.template)?;
    let location = shardlake::catalog::table_location(&opts.destination)?;
    let def = table_definition(schema, &template, opts.unknown_fields, &location, mode.projection())?;
    Ok(CatalogTable::new(glue.clone(), name, template, def, mode))
}

async fn glue_client() -> aws_sdk_glue::Client {
    shardlake::aws::glue_client(&shardlake::aws::sdk_config().await, &Default::default())
}

/// How long `convert` retries a destination check that fails transiently
/// before it goes on (its uploads retry too).
const PREFLIGHT_PATIENCE: Duration = Duration::from_secs(10);

/// Runs `convert`.
pub async fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let given = args.clone();
    let local = !(args.input == "-" || args.input.starts_with("s3://"));
    if local && !std::path::Path::new(&args.input).exists() {
        bail!("input file {} does not exist", args.input);
    }
    if args.memory_budget_mb == 0 || args.target_file_mb == 0 || args.row_group_rows == 0 {
        bail!("--memory-budget-mb, --target-file-mb and --row-group-rows must be positive");
    }
    let mut glue = None;
    let opts = ConvertOptions {
        input: args.input.clone(),
        destination: args.destination.clone(),
        schema: match args.schema {
            Some(p) if p.to_str().is_some_and(|p| p.starts_with(GLUE_SCHEME)) => {
                let name =
                    TableName::parse(p.to_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!("--schema: {e}"))?;
                let glue = glue.get_or_insert(glue_client().await);
                SchemaSource::Given(shardlake::catalog::read_schema(glue, &name).await?)
            }
            Some(p) => SchemaSource::File(p),
            None => SchemaSource::Infer { sample: args.infer_sample.max(1) },
        },
        template: args.partition,
        time_field: args.time_field,
        error_prefix: args.error_prefix,
        unknown_fields: UnknownFieldPolicy::from(args.unknown_fields),
        max_record_bytes: args.max_record_bytes,
        writer: WriterSettings {
            memory_budget: args.memory_budget_mb << 20,
            target_file_bytes: args.target_file_mb << 20,
            row_group_rows: args.row_group_rows,
            ..WriterSettings::default()
        },
        s3: S3Options { sse_kms_key_id: args.sse_kms_key_id.clone(), ..S3Options::default() }.validate(),
        iceberg_field_ids: None,
        file_stem: None,
    };
    // A missing bucket, credential or region, or an unwritable folder, is
    // one line with the fix before any input is read.
    let checks = crate::cli::preflight::check_destination(&opts.destination, &opts.s3, PREFLIGHT_PATIENCE).await;
    crate::cli::preflight::problems(&checks)?;
    crate::cli::preflight::report_doubts(&checks, PREFLIGHT_PATIENCE);
    if args.table_format == TableFormatArg::Iceberg {
        return run_iceberg(given, opts).await;
    }
    let mode = PartitionMode::from(args.catalog_partitions);
    if args.catalog.is_some() && glue.is_none() {
        glue = Some(glue_client().await);
    }
    // A known schema is checked against the table before anything is written.
    let known = match &opts.schema {
        SchemaSource::File(p) => Some(Schema::from_file(p)?),
        SchemaSource::Given(s) => Some(s.clone()),
        SchemaSource::Infer { .. } => None,
    };
    if let (Some(url), Some(glue), Some(schema)) = (&args.catalog, &glue, &known) {
        catalog_table(glue, url, mode, &opts, schema)?.ensure(args.catalog_create).await?;
    }
    let counter = Arc::new(AtomicU64::new(0));
    let show_progress = !args.quiet && !args.json && std::io::stderr().is_terminal();
    let bar = if show_progress { progress_bar(&args.input, counter.clone()) } else { None };
    let result = convert(&opts, counter).await;
    if let Some(b) = bar {
        b.abort();
    }
    let summary = result.with_context(|| format!("converting {} into {}", args.input, args.destination))?;
    if let (Some(url), Some(glue)) = (&args.catalog, &glue) {
        let schema = summary.schema.clone().or(known).context("no schema to describe the table with")?;
        let table = catalog_table(glue, url, mode, &opts, &schema)?;
        table.ensure(args.catalog_create).await?;
        let partitions: Vec<String> = summary.partitions.keys().cloned().collect();
        let created = table.register(&partitions).await?;
        eprintln!(
            "catalog {}: {created} partitions registered, {} already there ({mode:?})",
            table.name(),
            if mode == PartitionMode::Register { partitions.len() - created } else { 0 }
        );
    }
    if args.json {
        outln!("{}", summary_json(&summary));
    } else {
        print_summary(&args.input, &args.destination, &summary);
        if args.print_partitions {
            print_partitions(&summary);
        }
    }
    Ok(())
}

/// `convert --table-format iceberg`: the table is opened (or created) first,
/// so the files carry its field ids; then one append commits them all.
async fn run_iceberg(args: ConvertArgs, mut opts: ConvertOptions) -> anyhow::Result<()> {
    let Some(url) = &args.catalog else {
        bail!(
            "--table-format iceberg: name the table with --catalog glue://DATABASE/TABLE or \
             sqlite://PATH/NAMESPACE/TABLE"
        );
    };
    let catalog = CatalogUrl::parse(url, Path::new(".")).map_err(|e| anyhow::anyhow!("--catalog: {e}"))?;
    let schema = match &opts.schema {
        SchemaSource::File(p) => Schema::from_file(p)?,
        SchemaSource::Given(s) => s.clone(),
        SchemaSource::Infer { .. } => {
            bail!("--table-format iceberg needs the schema before the table: pass --schema (`schema infer` writes one)")
        }
    };
    let lake = IcebergLake::open(TableConfig {
        catalog: &catalog,
        destination: &opts.destination,
        schema: &schema,
        unknown_fields: opts.unknown_fields,
        template: &opts.template,
        time_field: opts.time_field.as_deref(),
        create: args.catalog_create,
        s3: &opts.s3,
    })
    .await?;
    // Each run's files get their own names: a committed file is never rewritten.
    let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros();
    let stem = format!("{}-{run:x}", input_stem(&opts.input));
    opts.iceberg_field_ids = Some(lake.field_ids.clone());
    opts.file_stem = Some(stem.clone());
    let summary = convert(&opts, Arc::new(AtomicU64::new(0)))
        .await
        .with_context(|| format!("converting {} into {}", args.input, args.destination))?;
    let files = summary.data.iter().map(|f| lake.written(&f.key, &f.partition, f.bytes, f.footer.clone())).collect();
    let batch = BatchFiles { key: BatchKey(format!("convert/{stem}")), files };
    let appended = lake.table.append(vec![batch]).await?;
    let snapshot = appended.snapshot_id.map_or_else(|| "none".to_string(), |id| id.to_string());
    if args.json {
        let mut json = summary_value(&summary);
        json["iceberg_table"] = lake.table.ident().to_string().into();
        json["snapshot_id"] = appended.snapshot_id.into();
        outln!("{json}");
    } else {
        print_summary(&args.input, &args.destination, &summary);
        outln!("  iceberg   {:>12}  snapshot {snapshot} of {}", "appended", lake.table.ident());
        if args.print_partitions {
            print_partitions(&summary);
        }
    }
    Ok(())
}

fn summary_json(s: &ConvertSummary) -> String {
    summary_value(s).to_string()
}

fn summary_value(s: &ConvertSummary) -> serde_json::Value {
    let errors: serde_json::Map<String, serde_json::Value> =
        s.stats.errors.iter().map(|(k, v)| (k.as_str().to_string(), (*v).into())).collect();
    let partitions: serde_json::Map<String, serde_json::Value> = s
        .partitions
        .iter()
        .map(|(k, p)| (k.clone(), serde_json::json!({"rows": p.rows, "files": p.files, "bytes": p.bytes})))
        .collect();
    serde_json::json!({
        "records": s.stats.records,
        "rows": s.rows,
        "error_records": s.stats.error_records(),
        "errors": errors,
        "dropped_fields": s.stats.dropped_fields,
        "blank_lines": s.stats.blank_lines,
        "data_files": s.data_files,
        "error_files": s.error_files,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "seconds": s.elapsed.as_secs_f64(),
        "mb_per_s": s.mb_per_s(),
        "partitions": partitions,
    })
}

fn print_summary(input: &str, destination: &str, s: &ConvertSummary) {
    outln!("converted {input} -> {destination}");
    outln!("  records   {:>12}", s.stats.records);
    outln!("  rows      {:>12}  in {} data files, {} partitions", s.rows, s.data_files, s.partitions.len());
    let errors = s.stats.error_records();
    if errors > 0 {
        outln!("  errors    {:>12}  in {} error files ({})", errors, s.error_files, error_breakdown(&s.stats));
    } else {
        outln!("  errors    {:>12}", 0);
    }
    if s.stats.dropped_fields > 0 {
        outln!("  dropped   {:>12}  unknown fields (--unknown-fields drop)", s.stats.dropped_fields);
    }
    outln!("  bytes in  {:>12.1} MB", s.bytes_in as f64 / 1e6);
    outln!("  bytes out {:>12.1} MB", s.bytes_out as f64 / 1e6);
    outln!("  time      {:>12.2} s  ({:.1} MB/s)", s.elapsed.as_secs_f64(), s.mb_per_s());
}

fn print_partitions(s: &ConvertSummary) {
    let width = s.partitions.keys().map(String::len).max().unwrap_or(9).max(9);
    outln!("");
    outln!("{:<width$}  {:>10}  {:>5}  {:>12}", "partition", "rows", "files", "bytes");
    for (p, v) in &s.partitions {
        outln!("{p:<width$}  {:>10}  {:>5}  {:>12}", v.rows, v.files, v.bytes);
    }
    let bytes: u64 = s.partitions.values().map(|v| v.bytes).sum();
    outln!("{:<width$}  {:>10}  {:>5}  {:>12}", "total", s.rows, s.data_files, bytes);
}
