//! The producer's integration tests: one module per file, all in one
//! binary, so the AWS SDKs, arrow and parquet are linked once, not once per
//! file. `cargo test -p shardlake-producer --test it` runs them; one file's with
//! `cargo test -p shardlake-producer --test it signals::`.
//!
//! Tests that need the local AWS stack skip without it, and take turns by
//! file on it: those of one file run beside each other only, as when each
//! file was a binary of its own (`shardlake::testing`).

mod cli;
mod common;
mod field;
mod firehose;
mod kinesis;
mod outcomes;
mod signals;
mod stalled;
