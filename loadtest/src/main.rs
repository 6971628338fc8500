//! `shardlake-loadtest`: the load-test harness. `run` drives producers at a
//! rate against a stream, runs consumer workers (with chaos: kills, freezes,
//! S3 faults, Kinesis throttling, a reshard), verifies that every
//! acknowledged event is in the lake exactly once, and reports figures and
//! charts. `gen` writes the deterministic reference events.

mod drive;
mod events;
mod http;
mod lake;
mod replay;
mod report;
mod run;
mod scenario;
mod workers;

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardlake::events::{EVENTS_SCHEMA_TOML, GenOptions, generate};

/// Command line of `shardlake-loadtest`.
#[derive(Debug, Parser)]
#[command(name = "shardlake-loadtest", version, about = "shardlake load-test harness")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a load test: produce at a rate, consume with chaos, verify, report.
    /// Exits 1 when an acknowledged event is lost, duplicated or misrouted.
    Run {
        /// A scenario TOML file (same keys as the flags, in snake_case).
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[command(flatten)]
        args: Box<scenario::ScenarioArgs>,
    },
    /// Print the schema of `run`'s events (reference columns + the load-test
    /// ones), for a fleet `run` attaches to (`--workers 0`).
    Schema,
    /// Write N deterministic clickstream/sales events as JSON Lines (`-` for stdout).
    Gen {
        /// Number of events.
        count: u64,
        /// Output file, or `-`.
        out: String,
        /// Random seed: the same seed gives the same bytes.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Hours the timestamps spread over (one hourly partition each).
        #[arg(long, default_value_t = 48)]
        hours: u32,
        /// Window start (RFC 3339).
        #[arg(long, default_value = "2024-03-15T00:00:00Z")]
        start: String,
        /// Also write the matching schema TOML here.
        #[arg(long)]
        schema_out: Option<PathBuf>,
    },
    /// Put a slow link in front of a Kinesis endpoint: every request and
    /// answer shares `--bandwidth` bytes per second, after `--latency`, and
    /// a `--delay-fraction` of requests is held for a time between
    /// `--delay-min` and `--delay-max`. For benchmarks against a slow
    /// endpoint. Prints `listening on URL`.
    SlowLink {
        /// The endpoint behind the link (e.g. kinesalite's URL).
        #[arg(long)]
        upstream: String,
        /// Bytes per second through the link, both directions together
        /// (0: no cap).
        #[arg(long, default_value_t = 1_000_000)]
        bandwidth: u64,
        /// Added to every request.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        latency: std::time::Duration,
        /// The fraction of requests held before going upstream (scattered
        /// slow requests, unrelated to load).
        #[arg(long, default_value_t = 0.0)]
        delay_fraction: f64,
        /// The shortest hold of a delayed request.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        delay_min: std::time::Duration,
        /// The longest hold of a delayed request.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        delay_max: std::time::Duration,
        /// Seed of the delay draws (the same seed delays the same requests).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Serve a JSON Lines file as a Kinesis stream of N shards from memory
    /// (ListShards, GetShardIterator, GetRecords), for consumer benchmarks
    /// that must not be limited by an emulator. Prints `listening on URL`.
    ReplayKinesis {
        /// The events, one JSON object per line.
        #[arg(long)]
        input: PathBuf,
        /// Shards the lines are dealt to, round-robin.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Port on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Records of each shard already trimmed (aged past retention): the
        /// trim horizon is this position, and an iterator before it starts
        /// there, as Kinesis does.
        #[arg(long, default_value_t = 0)]
        trim: usize,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { scenario, args } => {
            let file = match scenario {
                Some(path) => scenario::ScenarioArgs::from_file(&path)?,
                None => scenario::ScenarioArgs::default(),
            };
            let scenario = scenario::Scenario::resolve((*args).over(file), run::new_run_id())?;
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(run::run(scenario))?;
            println!("{}", report.table());
            println!("  report: {}", report.scenario.out.join("report.html").display());
            if !report.passed() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::ReplayKinesis { input, shards, port, trim } => {
            tokio::runtime::Runtime::new()?.block_on(replay::serve(&input, shards, port, trim))
        }
        Command::SlowLink { upstream, bandwidth, latency, delay_fraction, delay_min, delay_max, seed } => {
            anyhow::ensure!((0.0..=1.0).contains(&delay_fraction), "--delay-fraction must be between 0 and 1");
            anyhow::ensure!(delay_min <= delay_max, "--delay-min must not be above --delay-max");
            tokio::runtime::Runtime::new()?.block_on(async {
                let proxy = faultproxy::FaultProxy::start(&upstream, faultproxy::Flavor::Kinesis).await?;
                proxy.set_bandwidth((bandwidth > 0).then_some(bandwidth));
                proxy.set_latency(latency);
                proxy.set_random_delays(delay_fraction, delay_min, delay_max, seed);
                println!("listening on {}", proxy.endpoint);
                std::future::pending::<anyhow::Result<()>>().await
            })
        }
        Command::Schema => {
            print!("{}", events::schema_toml());
            Ok(())
        }
        Command::Gen { count, out, seed, hours, start, schema_out } => {
            let start_ms = shardlake::time::parse_rfc3339_millis(&start)
                .with_context(|| format!("--start {start}: expected RFC 3339 like 2024-03-15T00:00:00Z"))?;
            anyhow::ensure!(hours > 0, "--hours must be at least 1");
            let opts = GenOptions { count, seed, hours, start_ms };
            if out == "-" {
                let mut w = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
                generate(&opts, &mut w)?;
                w.flush()?;
            } else {
                let f = std::fs::File::create(&out).with_context(|| format!("creating {out}"))?;
                let mut w = BufWriter::with_capacity(1 << 20, f);
                generate(&opts, &mut w).with_context(|| format!("writing {out}"))?;
                w.flush()?;
            }
            if let Some(p) = schema_out {
                std::fs::write(&p, EVENTS_SCHEMA_TOML).with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(())
        }
    }
}
