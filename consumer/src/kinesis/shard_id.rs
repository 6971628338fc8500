//! A shard's id, as Kinesis names it (`shardId-000000000000`).

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// A shard of the stream. A type of its own so a shard id is never mixed up
/// with the other strings beside it (a lease owner, a partition path, a
/// sequence number); it reads as `&str` where a name is printed or stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(String);

impl ShardId {
    /// The id as Kinesis gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ShardId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ShardId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Deref for ShardId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ShardId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ShardId {
    fn from(s: &str) -> Self {
        ShardId(s.to_string())
    }
}

impl From<String> for ShardId {
    fn from(s: String) -> Self {
        ShardId(s)
    }
}

impl From<&ShardId> for String {
    fn from(s: &ShardId) -> Self {
        s.0.clone()
    }
}
