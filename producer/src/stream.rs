//! Kinesis stream helpers for tools, tests and applications that set up what
//! they write to: create a stream or check it is there, list its shards, and
//! tell which shard a partition key lands on (the MD5 hash-key mapping the
//! producer itself uses).

pub use crate::record::{md5_hash_key, parse_hash_key};
pub use crate::service::api::{ensure_stream, ensure_stream_within, list_shards, list_shards_within};
pub use crate::shard_map::{ShardMap, ShardRange};
