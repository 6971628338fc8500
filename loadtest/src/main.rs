//! `shardlake-loadtest`: the load-test harness. Today: `gen`, the
//! deterministic reference event generator.

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
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
