//! The stream's shard map: the hash-key range of each open shard, as
//! `ListShards` reports it, to predict which shard a record lands on (for the
//! per-shard rate limits and for aggregation, which packs records of one
//! shard together).

use std::sync::Arc;

use aws_sdk_kinesis::types::Shard;

/// One open shard and its inclusive hash-key range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardRange {
    /// The shard id, e.g. `shardId-000000000001`.
    pub shard_id: Arc<str>,
    /// First hash key of the range.
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
}

/// Open shards sorted by hash-key range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardMap {
    shards: Vec<ShardRange>,
    /// Closed shards (parents of a reshard), to range-check records that
    /// landed on a shard which has closed since.
    closed: Vec<ShardRange>,
}

impl ShardMap {
    /// A map of the open shards among `shards` (closed parents of a reshard,
    /// which have an ending sequence number, take no new records). Shards
    /// with an unreadable range are skipped with a warning.
    pub fn from_shards(shards: &[Shard]) -> Self {
        let is_open = |s: &&Shard| s.sequence_number_range().and_then(|r| r.ending_sequence_number()).is_none();
        let ranges = |open: bool| {
            shards.iter().filter(move |s| is_open(s) == open).filter_map(|s| {
                let range = s.hash_key_range()?;
                match (range.starting_hash_key().parse::<u128>(), range.ending_hash_key().parse::<u128>()) {
                    (Ok(start), Ok(end)) => Some(ShardRange { shard_id: s.shard_id().into(), start, end }),
                    _ => {
                        tracing::warn!(shard_id = s.shard_id(), "shard has an unreadable hash key range; ignoring it");
                        None
                    }
                }
            })
        };
        let mut open: Vec<ShardRange> = ranges(true).collect();
        open.sort_by_key(|s| s.start);
        ShardMap { shards: open, closed: ranges(false).collect() }
    }

    /// A map from ranges (tests and fakes).
    pub fn from_ranges(mut shards: Vec<ShardRange>) -> Self {
        shards.sort_by_key(|s| s.start);
        ShardMap { shards, closed: vec![] }
    }

    /// The range of a shard, open or closed, by id; `None` for a shard the
    /// map has not seen (a child of a reshard after the map was read).
    pub fn range_of(&self, shard_id: &str) -> Option<&ShardRange> {
        self.shards.iter().chain(&self.closed).find(|s| s.shard_id.as_ref() == shard_id)
    }

    /// The index of the shard whose range holds `hash`, or `None` when no open
    /// shard covers it (an incomplete map, mid-reshard).
    pub fn lookup(&self, hash: u128) -> Option<usize> {
        let i = self.shards.partition_point(|s| s.start <= hash).checked_sub(1)?;
        (hash <= self.shards[i].end).then_some(i)
    }

    /// The shard at `index`.
    pub fn shard(&self, index: usize) -> &ShardRange {
        &self.shards[index]
    }

    /// The shards, by hash-key range.
    pub fn shards(&self) -> &[ShardRange] {
        &self.shards
    }

    /// Number of open shards.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    /// Whether the map has no shard.
    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use aws_sdk_kinesis::types::{HashKeyRange, SequenceNumberRange};
    use proptest::prelude::*;

    use super::*;
    use crate::record::md5_hash_key;

    /// `n` shards splitting the hash-key space evenly, as `CreateStream` does.
    pub(crate) fn even_shards(n: u128, closed: bool) -> Vec<Shard> {
        let step = u128::MAX / n;
        (0..n)
            .map(|i| {
                let end = if i == n - 1 { u128::MAX } else { step * (i + 1) - 1 };
                let seq = SequenceNumberRange::builder().starting_sequence_number("1");
                let seq = if closed { seq.ending_sequence_number("9") } else { seq };
                Shard::builder()
                    .shard_id(format!("shardId-{:012}", i + if closed { 100 } else { 0 }))
                    .hash_key_range(
                        HashKeyRange::builder()
                            .starting_hash_key((step * i).to_string())
                            .ending_hash_key(end.to_string())
                            .build()
                            .unwrap(),
                    )
                    .sequence_number_range(seq.build().unwrap())
                    .build()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn maps_hash_keys_to_the_shard_whose_range_holds_them() {
        let map = ShardMap::from_shards(&even_shards(4, false));
        assert_eq!(map.len(), 4);
        assert_eq!(map.lookup(0), Some(0));
        assert_eq!(map.lookup(u128::MAX / 4 - 1), Some(0));
        assert_eq!(map.lookup(u128::MAX / 4), Some(1));
        assert_eq!(map.lookup(u128::MAX), Some(3));
        // md5("a") = 0x0cc1..., in the first quarter; md5("shard") = 0x5d5b... in the second.
        assert_eq!(map.lookup(md5_hash_key("a")), Some(0));
        assert_eq!(map.shard(map.lookup(md5_hash_key("a")).unwrap()).shard_id.as_ref(), "shardId-000000000000");
    }

    #[test]
    fn closed_parent_shards_are_left_out() {
        let mut shards = even_shards(2, true);
        shards.extend(even_shards(4, false));
        let map = ShardMap::from_shards(&shards);
        assert_eq!(map.len(), 4);
        assert!(map.shards().iter().all(|s| !s.shard_id.ends_with("100") && !s.shard_id.ends_with("101")));
        // Their ranges stay known, to check records that landed there.
        let parent = map.range_of("shardId-000000000101").unwrap();
        assert_eq!((parent.start, parent.end), (u128::MAX / 2, u128::MAX));
        assert_eq!(map.range_of("shardId-000000000003").unwrap().end, u128::MAX);
        assert!(map.range_of("shardId-000000000009").is_none());
    }

    #[test]
    fn a_gap_in_the_map_maps_to_no_shard() {
        let map = ShardMap::from_ranges(vec![
            ShardRange { shard_id: "b".into(), start: 100, end: 200 },
            ShardRange { shard_id: "a".into(), start: 0, end: 49 },
        ]);
        assert_eq!(map.lookup(10), Some(0));
        assert_eq!(map.lookup(50), None);
        assert_eq!(map.lookup(150), Some(1));
        assert_eq!(map.lookup(201), None);
        assert_eq!(ShardMap::default().lookup(1), None);
    }

    proptest! {
        #[test]
        fn every_hash_key_has_exactly_one_shard(n in 1u128..64, hash in any::<u128>()) {
            let map = ShardMap::from_shards(&even_shards(n, false));
            let i = map.lookup(hash).unwrap();
            let s = map.shard(i);
            prop_assert!(s.start <= hash && hash <= s.end);
            prop_assert_eq!(map.shards().iter().filter(|s| s.start <= hash && hash <= s.end).count(), 1);
        }
    }
}
