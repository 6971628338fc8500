//! `shardlake-consumer`: the shardlake worker binary. `run` reads a Kinesis
//! stream into the lake, exactly once; `convert` backfills JSON Lines files;
//! `schema` infers schemas and prints Athena DDL; `config check` explains a
//! config file and `config iam-policy` prints the IAM policy it needs;
//! `catalog sync` registers a lake's partitions in Glue.

use clap::{Parser, Subcommand, ValueEnum};
use shardlake_consumer::cli;
use shardlake_consumer::stop::{AbortCause, Shutdown};
use tokio::signal::unix::{SignalKind, signal};

/// Command line of `shardlake-consumer`.
#[derive(Debug, Parser)]
#[command(name = "shardlake-consumer", version, about = "Kinesis JSON events into a Snappy Parquet lake")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read a Kinesis stream into the lake until SIGTERM/SIGINT.
    Run(cli::run::RunArgs),
    /// Check a config file, or print the IAM policy it needs.
    #[command(subcommand)]
    Config(cli::run::ConfigCommand),
    /// Convert JSON Lines files (plain or .gz; local, stdin or S3) into the lake.
    Convert(cli::convert::ConvertArgs),
    /// Infer a schema, or print Athena DDL for one.
    #[command(subcommand)]
    Schema(cli::schema::SchemaCommand),
    /// Keep the Glue catalog table in step with a lake written before it was configured.
    #[command(subcommand)]
    Catalog(cli::catalog::CatalogCommand),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `run`: the first SIGTERM/SIGINT stops the worker (stop reading, flush,
/// commit, exit 0); a second one, or `shutdown_timeout` passing, aborts it
/// at once with exit status 130 / 1. Signals are handled from the start, so
/// a stop during start-up is graceful too.
async fn run_worker(args: cli::run::RunArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signals = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("shardlake-consumer: stopping: flushing and committing (signal again to abort)");
        signals.stop();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        signals.abort(AbortCause::Signal);
    });
    // An abort exits at once, whatever the worker is waiting on.
    tokio::select! {
        biased;
        cause = shutdown.aborted() => {
            eprintln!("shardlake-consumer: aborted; uncommitted batches are read again on restart");
            std::process::exit(cause.exit_code());
        }
        result = cli::run::run(args, shutdown.clone()) => result,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    // Batches decode and encode on blocking threads. More of them than
    // cores adds no speed, and each thread that allocates can get a glibc
    // malloc arena of its own whose freed memory stays there: with tokio's
    // default of 512 threads, a worker with 1,000 shards peaked 58 MiB
    // higher (see the scale benchmark in docs/benchmarks.md).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads((2 * cores).max(4))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run_worker(args).await,
            Command::Config(cmd) => cli::run::config(cmd).await,
            Command::Convert(args) => cli::convert::run(args).await,
            Command::Schema(cmd) => cli::schema::run(cmd),
            Command::Catalog(cmd) => cli::catalog::run(cmd).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
