//! `shardlake-consumer schema infer | ddl`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use shardlake::convert::{line_reader, read_line};
use shardlake::partition::{DEFAULT_TEMPLATE, PartitionTemplate};
use shardlake::pipeline::DEFAULT_MAX_RECORD_BYTES;
use shardlake::schema::{
    DEFAULT_INFER_SAMPLE, DdlOptions, Schema, SchemaInferrer, UnknownFieldPolicy, create_table_ddl,
};

/// `--unknown-fields` values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    /// Keep unknown fields as JSON text in the `_extra` column.
    Keep,
    /// Send records with unknown fields to the error output.
    Error,
    /// Drop unknown fields and count them.
    Drop,
}

impl From<PolicyArg> for UnknownFieldPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Keep => UnknownFieldPolicy::Keep,
            PolicyArg::Error => UnknownFieldPolicy::Error,
            PolicyArg::Drop => UnknownFieldPolicy::Drop,
        }
    }
}

/// Schema subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Print a schema TOML inferred from the first records of a JSON Lines file.
    Infer {
        /// JSON Lines file (or `-` for stdin).
        file: String,
        /// Records to sample.
        #[arg(long, default_value_t = DEFAULT_INFER_SAMPLE)]
        sample: usize,
    },
    /// Print Athena CREATE EXTERNAL TABLE with partition projection.
    Ddl {
        /// Schema file.
        #[arg(long)]
        schema: PathBuf,
        /// Table name, `db.table` or `table`.
        #[arg(long)]
        table: String,
        /// Lake location, s3://bucket/prefix/.
        #[arg(long)]
        location: String,
        /// The partition template the lake is written with.
        #[arg(long, default_value = DEFAULT_TEMPLATE)]
        partition: String,
        /// Unknown-field policy the lake is written with (keep adds `_extra`).
        #[arg(long, value_enum, default_value_t = PolicyArg::Keep)]
        unknown_fields: PolicyArg,
        /// First year of the partition projection range.
        #[arg(long, default_value_t = 2020)]
        first_year: u32,
    },
}

/// Runs a schema subcommand.
pub fn run(cmd: SchemaCommand) -> anyhow::Result<()> {
    match cmd {
        SchemaCommand::Infer { file, sample } => {
            let raw: Box<dyn std::io::Read + Send> = if file == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(&file).with_context(|| format!("opening {file}"))?)
            };
            let mut reader = line_reader(raw, &file)?;
            let mut inferrer = SchemaInferrer::new();
            let mut line = Vec::new();
            while inferrer.records() < sample {
                // Lines are held up to the largest Kinesis record; longer ones are not sampled.
                let (read, len) = read_line(&mut *reader, &mut line, &file, DEFAULT_MAX_RECORD_BYTES)?;
                if read == 0 {
                    break;
                }
                if len == line.len() {
                    inferrer.observe_line(&line);
                }
            }
            let schema =
                inferrer.finish().with_context(|| format!("no JSON object found among the first lines of {file}"))?;
            out!("# inferred by shardlake from {} records of {file}\n{}", inferrer.records(), schema.to_toml());
            Ok(())
        }
        SchemaCommand::Ddl { schema, table, location, partition, unknown_fields, first_year } => {
            let schema = Schema::from_file(&schema)?;
            let opts = DdlOptions {
                table,
                location,
                template: PartitionTemplate::parse(&partition)?,
                unknown_fields: unknown_fields.into(),
                first_year,
            };
            out!("{}", create_table_ddl(&schema, &opts)?);
            Ok(())
        }
    }
}
