//! KPL de-aggregation of fuzzed bytes. The first byte picks how the rest is
//! used: as a whole Kinesis record (magic, protobuf, MD5), or as the protobuf
//! body only, framed here with the magic and a correct digest (so the fuzzer
//! gets past the MD5 check). Invariants: no panic; `deaggregate` is `Some`
//! exactly for records with the magic; what it unpacks, aggregated again,
//! unpacks to the same user records (data and keys).

#![no_main]

use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};
use shardlake::aggregation::{MAGIC, aggregate, deaggregate, is_aggregated};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let record = if mode & 1 == 0 { rest.to_vec() } else { [&MAGIC[..], rest, Md5::digest(rest).as_slice()].concat() };
    let unpacked = deaggregate(&record);
    assert_eq!(unpacked.is_some(), is_aggregated(&record));
    let Some(Ok(users)) = unpacked else {
        return;
    };
    let payload: usize = users.iter().map(|u| u.data.len()).sum();
    assert!(payload <= record.len(), "{payload} payload bytes out of a {}-byte record", record.len());
    let again = aggregate(&users);
    match deaggregate(&again) {
        Some(Ok(back)) => assert_eq!(back, users, "re-aggregated records differ"),
        other => panic!("re-aggregated records do not unpack: {other:?}"),
    }
});
