//! KPL-compatible record aggregation: many user records packed into one
//! Kinesis record, as the Kinesis Producer Library writes them and the Kinesis
//! Client Library reads them
//! (<https://github.com/awslabs/amazon-kinesis-producer/blob/master/aggregation-format.md>).
//!
//! Layout: the 4 magic bytes `F3 89 9A C2`, a protobuf `AggregatedRecord`,
//! then the MD5 digest (16 bytes) of the protobuf bytes.
//!
//! ```
//! use shardlake_aws::aggregation::{UserRecord, aggregate, deaggregate};
//! let records = vec![
//!     UserRecord { partition_key: "a".into(), explicit_hash_key: None, data: b"{\"n\":1}".to_vec() },
//!     UserRecord { partition_key: "b".into(), explicit_hash_key: None, data: b"{\"n\":2}".to_vec() },
//! ];
//! let packed = aggregate(&records);
//! assert_eq!(deaggregate(&packed).unwrap().unwrap(), records);
//! // A plain record is not an aggregate.
//! assert!(deaggregate(b"{\"n\":1}").is_none());
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use md5::{Digest, Md5};
use prost::Message;

/// The first four bytes of every aggregated record.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

const DIGEST_LEN: usize = 16;

/// The bytes an aggregate adds around its protobuf body.
pub const FRAMING_BYTES: usize = MAGIC.len() + DIGEST_LEN;

/// One user record inside an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The record's own partition key (the aggregate's Kinesis partition key
    /// is usually the first record's). Shared with every record of the
    /// aggregate that names the same key-table entry, so that thousands of
    /// records pointing at one huge key cost one copy of it.
    pub partition_key: Arc<str>,
    /// The record's explicit hash key, if it had one (shared likewise).
    pub explicit_hash_key: Option<Arc<str>>,
    /// The payload.
    pub data: Vec<u8>,
}

/// Why a record that starts with [`MAGIC`] could not be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregationError {
    /// Shorter than magic + digest.
    #[error("aggregated record is {0} bytes, shorter than its 20 bytes of framing")]
    Truncated(usize),
    /// The MD5 trailer does not match the body.
    #[error("aggregated record's MD5 digest does not match its body")]
    Digest,
    /// The body is not a valid `AggregatedRecord` protobuf.
    #[error("aggregated record's protobuf body is invalid: {0}")]
    Protobuf(String),
    /// A user record points past the partition key or hash key table.
    #[error("user record {record} refers to {table} index {index}, but the table has {len} entries")]
    Index {
        /// Index of the user record in the aggregate.
        record: usize,
        /// `partition_key_table` or `explicit_hash_key_table`.
        table: &'static str,
        /// The index it refers to.
        index: u64,
        /// The table's length.
        len: usize,
    },
}

#[derive(Clone, PartialEq, prost::Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// Whether `data` starts with the aggregation magic.
pub fn is_aggregated(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

/// Unpacks an aggregated record: `None` when `data` does not start with the
/// magic (a plain record), `Some(Err)` when it does but cannot be decoded.
pub fn deaggregate(data: &[u8]) -> Option<Result<Vec<UserRecord>, AggregationError>> {
    if !is_aggregated(data) {
        return None;
    }
    Some(unpack(data))
}

fn unpack(data: &[u8]) -> Result<Vec<UserRecord>, AggregationError> {
    if data.len() < FRAMING_BYTES {
        return Err(AggregationError::Truncated(data.len()));
    }
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    if Md5::digest(body).as_slice() != &data[data.len() - DIGEST_LEN..] {
        return Err(AggregationError::Digest);
    }
    let agg = AggregatedRecord::decode(body).map_err(|e| AggregationError::Protobuf(e.to_string()))?;
    let shared = |table: Vec<String>| table.into_iter().map(Arc::<str>::from).collect::<Vec<_>>();
    let (partition_keys, hash_keys) = (shared(agg.partition_key_table), shared(agg.explicit_hash_key_table));
    let lookup = |record: usize, table: &'static str, entries: &[Arc<str>], index: u64| {
        let found = usize::try_from(index).ok().and_then(|i| entries.get(i));
        found.cloned().ok_or(AggregationError::Index { record, table, index, len: entries.len() })
    };
    agg.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            Ok(UserRecord {
                partition_key: lookup(i, "partition_key_table", &partition_keys, r.partition_key_index)?,
                explicit_hash_key: r
                    .explicit_hash_key_index
                    .map(|h| lookup(i, "explicit_hash_key_table", &hash_keys, h))
                    .transpose()?,
                data: r.data,
            })
        })
        .collect()
}

/// Packs user records into one aggregated record, sharing repeated partition
/// and hash keys through the key tables.
pub fn aggregate(records: &[UserRecord]) -> Vec<u8> {
    let mut agg = AggregatedRecord::default();
    // Key -> table index, so each record costs one hash of its key.
    fn index_of<'r>(table: &mut Vec<String>, index: &mut HashMap<&'r str, u64>, key: &'r str) -> u64 {
        *index.entry(key).or_insert_with(|| {
            table.push(key.to_string());
            table.len() as u64 - 1
        })
    }
    let (mut partition_index, mut hash_index) = (HashMap::new(), HashMap::new());
    for r in records {
        let partition_key_index = index_of(&mut agg.partition_key_table, &mut partition_index, &r.partition_key);
        let explicit_hash_key_index =
            r.explicit_hash_key.as_deref().map(|h| index_of(&mut agg.explicit_hash_key_table, &mut hash_index, h));
        agg.records.push(Record { partition_key_index, explicit_hash_key_index, data: r.data.clone(), tags: vec![] });
    }
    let body = agg.encode_to_vec();
    let mut out = Vec::with_capacity(FRAMING_BYTES + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn user(key: &str, hash: Option<&str>, data: &[u8]) -> UserRecord {
        UserRecord { partition_key: key.into(), explicit_hash_key: hash.map(Into::into), data: data.to_vec() }
    }

    #[test]
    fn shares_repeated_keys_in_the_tables() {
        let records = vec![user("k", None, b"1"), user("k", Some("42"), b"2"), user("j", Some("42"), b"3")];
        let packed = aggregate(&records);
        let agg = AggregatedRecord::decode(&packed[4..packed.len() - 16]).unwrap();
        assert_eq!(agg.partition_key_table, ["k", "j"]);
        assert_eq!(agg.explicit_hash_key_table, ["42"]);
        assert_eq!(deaggregate(&packed).unwrap().unwrap(), records);
    }

    #[test]
    fn rejects_a_corrupt_digest_truncation_and_bad_index() {
        let mut packed = aggregate(&[user("k", None, b"x")]);
        let last = packed.len() - 1;
        packed[last] ^= 1;
        assert_eq!(deaggregate(&packed).unwrap(), Err(AggregationError::Digest));
        assert_eq!(deaggregate(&MAGIC).unwrap(), Err(AggregationError::Truncated(4)));
        let body = AggregatedRecord {
            partition_key_table: vec![],
            explicit_hash_key_table: vec![],
            records: vec![Record { partition_key_index: 3, explicit_hash_key_index: None, data: vec![], tags: vec![] }],
        }
        .encode_to_vec();
        let bad = [&MAGIC[..], &body, &Md5::digest(&body)].concat();
        let err = deaggregate(&bad).unwrap().unwrap_err();
        assert_eq!(err.to_string(), "user record 0 refers to partition_key_table index 3, but the table has 0 entries");
    }

    #[test]
    fn records_share_one_copy_of_a_huge_partition_key() {
        // 400 KB key, 20,000 empty records: a copy per record would be 8 GB.
        let key: Arc<str> = "k".repeat(400_000).into();
        let records: Vec<UserRecord> = (0..20_000)
            .map(|_| UserRecord { partition_key: key.clone(), explicit_hash_key: None, data: vec![] })
            .collect();
        let packed = aggregate(&records);
        assert!(packed.len() < 400_000 + 20_000 * 8, "one key, a few bytes a record: {}", packed.len());
        let users = deaggregate(&packed).unwrap().unwrap();
        assert_eq!(users.len(), 20_000);
        assert!(users.iter().all(|u| Arc::ptr_eq(&u.partition_key, &users[0].partition_key)));
    }

    proptest! {
        #[test]
        fn round_trips(records in prop::collection::vec(
            ("[a-c]{1,3}", prop::option::of("[0-9]{1,38}"), prop::collection::vec(any::<u8>(), 0..64)), 0..20)
        ) {
            let records: Vec<UserRecord> = records
                .into_iter()
                .map(|(k, h, d)| UserRecord { partition_key: k.into(), explicit_hash_key: h.map(Into::into), data: d })
                .collect();
            prop_assert_eq!(deaggregate(&aggregate(&records)).unwrap().unwrap(), records);
        }
    }
}
