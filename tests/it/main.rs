//! The core crate's integration tests: one module per file, all in one
//! binary, so the AWS SDKs, arrow and parquet are linked once, not once per
//! file. `cargo test -p shardlake --test it` runs them; one file's with
//! `cargo test -p shardlake --test it s3_store::`.
//!
//! Tests that need the local AWS stack skip without it, and take turns by
//! file on it: those of one file run beside each other only, as when each
//! file was a binary of its own (`shardlake::testing`).

mod common;
mod convert_errors;
mod convert_roundtrip;
mod hostile_records;
mod s3_store;
