//! The consumer's own GetRecords body decoder (consumer/src/kinesis/get_records.rs)
//! on fuzzed bodies. Invariants: no panic; on success the payload count and
//! the `Records` span are consistent, and when serde_json also reads the body,
//! every record equals what the SDK's way gives: `Data` base64-decoded by
//! `aws_smithy_types::base64`, the same `SequenceNumber`, the same arrival
//! time (to the millisecond), and the body with `[]` put in place of the span
//! is the same JSON with an empty `Records`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;
use shardlake_consumer::fuzzing::decode_get_records_body;

fuzz_target!(|body: &[u8]| {
    let Ok(page) = decode_get_records_body(body) else {
        return;
    };
    let payload: usize = page.records.iter().map(|r| r.data.len()).sum();
    assert_eq!(page.bytes, payload, "payload bytes");
    let span = page.records_span.clone();
    assert!(span.start < span.end && span.end <= body.len(), "span {span:?} of {} bytes", body.len());
    assert_eq!((body[span.start], body[span.end - 1]), (b'[', b']'), "span {span:?}");

    let Ok(Json::Object(reference)) = serde_json::from_slice::<Json>(body) else {
        return;
    };
    let Some(Json::Array(records)) = reference.get("Records") else {
        panic!("decoded {} records from a body whose Records serde_json does not see as an array", page.records.len());
    };
    assert_eq!(records.len(), page.records.len(), "record count");
    for (i, (ours, theirs)) in page.records.iter().zip(records).enumerate() {
        let data = theirs["Data"].as_str().unwrap_or_else(|| panic!("record {i}: Data is not a string: {theirs}"));
        match aws_smithy_types::base64::decode(data) {
            Ok(decoded) => assert_eq!(ours.data, decoded, "record {i}: Data {data:?}"),
            Err(e) => panic!("record {i}: decoded Data {data:?} that the SDK refuses: {e}"),
        }
        assert_eq!(Some(ours.sequence.as_str()), theirs["SequenceNumber"].as_str(), "record {i}: SequenceNumber");
        let (arrival, seconds) = match &theirs.get("ApproximateArrivalTimestamp") {
            None => (0, 0.0),
            Some(t) => {
                let seconds = t.as_f64().unwrap_or_else(|| panic!("record {i}: arrival {t} is not a number"));
                (aws_smithy_types::DateTime::from_secs_f64(seconds).to_millis().unwrap_or(0), seconds)
            }
        };
        // serde_json's float parsing (without `float_roundtrip`) may be an ulp
        // off the standard library's: allow a millisecond and two ulps.
        let slack = ((seconds.abs() * f64::EPSILON * 2000.0) as u64).saturating_add(1);
        assert!(ours.arrival_ms.abs_diff(arrival) <= slack, "record {i}: arrival {} vs {arrival}", ours.arrival_ms);
    }

    // The body handed on to the SDK: the same, with no records.
    let rewritten = [&body[..span.start], b"[]", &body[span.end..]].concat();
    match serde_json::from_slice::<Json>(&rewritten) {
        Ok(Json::Object(mut rest)) => {
            assert_eq!(rest.get("Records"), Some(&Json::Array(vec![])), "Records left in the rewritten body");
            let mut expected = reference.clone();
            expected.insert("Records".into(), Json::Array(vec![]));
            rest.insert("Records".into(), Json::Array(vec![]));
            assert_eq!(rest, expected, "the rewritten body changed other fields");
        }
        other => panic!("the rewritten body does not read: {other:?}"),
    }
});
