//! Structured KPL round trip: arbitrary user records, aggregated and
//! unpacked again, come back equal; the aggregate carries the magic, and a
//! flipped byte in it is never silently accepted as different records.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shardlake::aggregation::{FRAMING_BYTES, UserRecord, aggregate, deaggregate, is_aggregated};

#[derive(Debug, Arbitrary)]
struct Input {
    records: Vec<(String, Option<String>, Vec<u8>)>,
    flip: Option<(u16, u8)>,
}

fuzz_target!(|input: Input| {
    let records: Vec<UserRecord> = input
        .records
        .into_iter()
        .map(|(key, hash, data)| UserRecord {
            partition_key: key.into(),
            explicit_hash_key: hash.map(Into::into),
            data,
        })
        .collect();
    let mut packed = aggregate(&records);
    assert!(is_aggregated(&packed) && packed.len() >= FRAMING_BYTES);
    match deaggregate(&packed) {
        Some(Ok(back)) => assert_eq!(back, records),
        other => panic!("aggregate does not unpack: {other:?}"),
    }
    // One flipped bit: the digest catches it (or, within the magic, the
    // record is no aggregate at all). Never other records.
    if let Some((at, bit)) = input.flip {
        let at = at as usize % packed.len();
        packed[at] ^= 1 << (bit % 8);
        match deaggregate(&packed) {
            None | Some(Err(_)) => {}
            Some(Ok(back)) => panic!("a corrupted aggregate unpacked to {} records", back.len()),
        }
    }
});
