//! The commands of `shardlake-consumer` (`src/main.rs` parses them): `run`
//! starts the worker, and the checks it makes before it reads anything
//! (`preflight`) and the IAM policy it needs (`iam`) live beside it.

pub mod catalog;
pub mod convert;
mod iam;
mod preflight;
pub mod run;
pub mod schema;
