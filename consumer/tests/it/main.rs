//! The consumer's integration tests: one module per file, all in one
//! binary, so the AWS SDKs, arrow and parquet are linked once, not once per
//! file. `cargo test -p shardlake-consumer --test it` runs them; one file's with
//! `cargo test -p shardlake-consumer --test it faults::`.
//!
//! Tests that need the local AWS stack skip without it, and take turns by
//! file on it: those of one file run beside each other only, as when each
//! file was a binary of its own (`shardlake::testing`).

mod bad_records;
mod catalog;
mod cli;
mod crash_safety;
mod dynamodb_store;
mod faults;
mod fleet;
mod iam_policy;
mod iceberg;
mod kinesis_to_lake;
mod poison_records;
mod preflight;
mod resharding;
mod s3_destination;
mod support;
