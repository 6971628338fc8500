//! User records, their acknowledgements, and the Kinesis hash of a record:
//! the MD5 digest of the partition key read as a big-endian 128-bit number,
//! or the explicit hash key when one is given
//! (<https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecordsRequestEntry.html>).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use md5::{Digest, Md5};

use crate::error::{Error, Result};

/// The longest partition key Kinesis accepts, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// One record to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Decides the shard (through its MD5 hash) unless an explicit hash key is
    /// set, and the unit of ordering in strict-ordering mode. Firehose ignores it.
    pub partition_key: String,
    /// A decimal number in `0..2^128` that overrides the partition key's hash
    /// for shard selection.
    pub explicit_hash_key: Option<String>,
    /// The payload.
    pub data: Bytes,
}

impl Record {
    /// A record with a partition key and a payload.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Record { partition_key: partition_key.into(), explicit_hash_key: None, data: data.into() }
    }

    /// Sets the explicit hash key (a decimal number in `0..2^128`).
    pub fn with_explicit_hash_key(mut self, key: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(key.into());
        self
    }

    /// The bytes this record counts against the Kinesis per-record and
    /// per-request limits: the payload plus the partition key (AWS counts
    /// both), plus the explicit hash key to stay on the safe side.
    pub fn kinesis_size(&self) -> usize {
        self.data.len() + self.partition_key.len() + self.explicit_hash_key.as_ref().map_or(0, String::len)
    }

    /// The 128-bit hash key that picks the record's shard.
    pub fn hash_key(&self) -> Result<u128> {
        match &self.explicit_hash_key {
            Some(k) => parse_hash_key(k),
            None => Ok(md5_hash_key(&self.partition_key)),
        }
    }

    /// Checks the partition key and explicit hash key against the Kinesis
    /// rules and returns the hash key.
    pub(crate) fn validate_for_kinesis(&self) -> Result<u128> {
        let chars = self.partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(Error::InvalidPartitionKey { chars });
        }
        self.hash_key()
    }
}

/// The MD5 digest of a partition key as a big-endian 128-bit number: the
/// hash Kinesis uses to map the key onto a shard's hash key range.
pub fn md5_hash_key(partition_key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(partition_key.as_bytes()).into())
}

/// Parses an explicit hash key: a decimal number in `0..2^128`.
pub fn parse_hash_key(key: &str) -> Result<u128> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::InvalidExplicitHashKey { key: key.to_string() });
    }
    key.parse::<u128>().map_err(|_| Error::InvalidExplicitHashKey { key: key.to_string() })
}

/// The acknowledgement of a delivered record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The shard the record landed on (Kinesis); `None` for Firehose.
    pub shard_id: Option<Arc<str>>,
    /// The Kinesis sequence number; for Firehose, the record id it returns.
    pub sequence_number: String,
    /// With aggregation, the record's index inside its aggregated Kinesis
    /// record (the KCL's sub-sequence number); `None` for a plain record.
    pub sub_sequence_number: Option<u64>,
    /// Sends attempted, 1 when the first one succeeded.
    pub attempts: u32,
    /// Earlier attempts whose request went unanswered (timeout, reset,
    /// connection closed before the answer): each may have stored a copy
    /// too, so the record may be duplicated when this is above 0.
    pub unknown_attempts: u32,
    /// Time from `send` to the acknowledgement.
    pub latency: Duration,
}

impl Ack {
    /// Whether the stream may hold more than one copy of the record.
    pub fn may_be_duplicated(&self) -> bool {
        self.unknown_attempts > 0
    }
}

/// A record that was not delivered, or whose outcome is unknown
/// ([`Error::UnknownOutcome`]), handed back with the reason.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("record with partition key {:?} {}: {reason}", record.partition_key,
    if reason.is_unknown_outcome() { "may or may not have been stored" } else { "not delivered" })]
pub struct ProduceError {
    /// The record, unchanged, for a dead-letter queue or a later retry.
    pub record: Record,
    /// Why it was not delivered.
    pub reason: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_hash_key_is_the_big_endian_digest() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(md5_hash_key("a"), 0x0cc175b9c0f1b6a831c399e269772661);
        assert_eq!(Record::new("a", "x").hash_key().unwrap(), 0x0cc175b9c0f1b6a831c399e269772661);
    }

    #[test]
    fn explicit_hash_key_overrides_the_partition_key() {
        let r = Record::new("a", "x").with_explicit_hash_key("340282366920938463463374607431768211455");
        assert_eq!(r.hash_key().unwrap(), u128::MAX);
        for bad in ["", "-1", "1e5", "340282366920938463463374607431768211456", " 1"] {
            let r = Record::new("a", "x").with_explicit_hash_key(bad);
            assert_eq!(r.hash_key(), Err(Error::InvalidExplicitHashKey { key: bad.into() }), "{bad:?}");
        }
    }

    #[test]
    fn partition_keys_have_1_to_256_characters() {
        assert_eq!(Record::new("", "x").validate_for_kinesis(), Err(Error::InvalidPartitionKey { chars: 0 }));
        assert!(Record::new("é".repeat(256), "x").validate_for_kinesis().is_ok());
        assert_eq!(
            Record::new("k".repeat(257), "x").validate_for_kinesis(),
            Err(Error::InvalidPartitionKey { chars: 257 })
        );
    }

    #[test]
    fn kinesis_size_counts_data_and_keys() {
        assert_eq!(Record::new("key", vec![0u8; 10]).kinesis_size(), 13);
        assert_eq!(Record::new("key", vec![0u8; 10]).with_explicit_hash_key("12").kinesis_size(), 15);
    }
}
