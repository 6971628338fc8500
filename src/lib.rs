//! shardlake core: the record model, schema, JSON → Arrow → Snappy Parquet,
//! Firehose-compatible partition templates, the object store (`file://` and
//! `s3://`) and the lake's AWS clients, used by the consumer and the
//! load-test harness (the producer needs only `shardlake-aws`).

pub mod aws;
pub mod catalog;
pub mod columns;
pub mod config_reference;
pub mod convert;
pub mod error;
pub mod error_output;
pub mod events;
pub mod json;
pub mod metrics;
pub mod partition;
pub mod pipeline;
pub mod record;
pub mod schema;
pub mod store;
pub mod testing;
pub mod time;
pub mod writer;

pub use error::{Error, Result};
// Shared with the producer through `shardlake-aws`; kept at their old paths.
pub use shardlake_aws::{aggregation, retry};
