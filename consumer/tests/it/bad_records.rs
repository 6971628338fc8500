//! Bad input never stops the consumer and never goes missing: every record
//! read is in a data file or, with its reason, in the error prefix. KPL
//! aggregates are unpacked, with sub-sequence numbers in the object keys.

use std::time::Duration;

use crate::support::*;
use serde_json::{Value, json};
use shardlake::aggregation::{MAGIC, UserRecord, aggregate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_go_to_the_error_prefix_and_the_totals_add_up() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config("max_record_bytes = 4096\npartition = \"country=!{field:country}/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/hour=!{timestamp:HH}\"");

    let good: Vec<Value> = events(300, 21, 4).iter().map(|e| serde_json::from_slice(e).unwrap()).collect();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let plain = |v: &Value| (v["event_id"].as_str().unwrap().to_string(), serde_json::to_vec(v).unwrap());
    // 200 plain good records, 3 of them with hostile partition values.
    for (i, v) in good[..200].iter().enumerate() {
        let mut v = v.clone();
        match i {
            10 => v["country"] = json!("../../etc"),
            11 => v["country"] = json!("a/b=c"),
            12 => v["country"] = json!(".."),
            _ => {}
        }
        records.push(plain(&v));
    }
    // 100 good records packed into 4 KPL aggregates of 25.
    for chunk in good[200..].chunks(25) {
        let users: Vec<UserRecord> = chunk
            .iter()
            .map(|v| UserRecord { partition_key: plain(v).0.into(), explicit_hash_key: None, data: plain(v).1 })
            .collect();
        records.push((users[0].partition_key.to_string(), aggregate(&users)));
    }
    let mut wrong_type = good[0].clone();
    wrong_type["event_id"] = json!("wrong-type");
    wrong_type["quantity"] = json!("seven");
    let mut oversize = good[1].clone();
    oversize["event_id"] = json!("oversize");
    oversize["properties"]["user_agent"] = json!("x".repeat(5000));
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_json", b"{\"event_id\": \"broken\", ".to_vec()),
        ("invalid_json", vec![0xff, 0xfe, b'{', b'}']),
        ("not_object", b"[1, 2, 3]".to_vec()),
        ("not_object", b"\"just a string\"".to_vec()),
        ("type_mismatch", serde_json::to_vec(&wrong_type).unwrap()),
        ("too_large", serde_json::to_vec(&oversize).unwrap()),
        ("undecodable_aggregate", [&MAGIC[..], b"not protobuf, and no digest"].concat()),
    ];
    for (i, (_, data)) in bad.iter().enumerate() {
        records.push((format!("bad-{i}"), data.clone()));
    }
    let landed = put_records(&client, &stream, &records).await;

    let mut consumer = setup.start(&[]);
    setup.wait_committed(&landed, Duration::from_secs(60)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());

    // Good records: all 300 exactly once, in the partition of their ts.
    assert_eq!(setup.duckdb_check(), (300, 300, 0));
    // Error records: each in its folder, with the reason, position and raw bytes.
    let errors = setup.error_lines();
    let mut want: std::collections::BTreeMap<String, usize> = Default::default();
    for (kind, _) in &bad {
        *want.entry(kind.to_string()).or_default() += 1;
    }
    let got: std::collections::BTreeMap<String, usize> = errors.iter().map(|(k, v)| (k.clone(), v.len())).collect();
    assert_eq!(got, want);
    for lines in errors.values() {
        for l in lines {
            assert_eq!(l["stream"], stream.as_str());
            assert!(l["shard_id"].as_str().unwrap().starts_with("shardId-"));
            assert!(l["sequence_number"].as_str().is_some_and(|s| !s.is_empty()));
            assert!(l["approximate_arrival_timestamp"].as_str().unwrap().ends_with('Z'));
            assert!(l["error_message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(l.get("raw").is_some() || l.get("raw_base64").is_some());
        }
    }
    let mismatch = &errors["type_mismatch"][0];
    assert_eq!(mismatch["field"], "quantity");
    assert!(errors["too_large"][0]["error_message"].as_str().unwrap().contains("4096"));
    assert_eq!(errors["invalid_json"].iter().filter(|l| l.get("raw_base64").is_some()).count(), 1);

    // Hostile partition values stay one escaped path segment under the lake
    // and read back as the original strings.
    let files = parquet_files(&setup.lake());
    for f in &files {
        let rel = f.strip_prefix(setup.lake()).unwrap();
        assert!(rel.components().all(|c| c.as_os_str() != ".."), "{rel:?}");
        assert!(rel.to_str().unwrap().starts_with("country="), "{rel:?}");
    }
    let countries = python(
        "import sys, duckdb\nq = \"select distinct country from read_parquet('\" + sys.argv[1] + \"/country=*/**/*.parquet', hive_partitioning = true) order by 1\"\nprint('\\n'.join(str(r[0]) for r in duckdb.sql(q).fetchall()))",
        &[setup.lake().to_str().unwrap()],
    );
    for hostile in ["../../etc", "a/b=c", ".."] {
        assert!(countries.lines().any(|c| c == hostile), "{hostile} not read back in {countries}");
    }
    // Aggregated user records carry their sub-sequence number in the keys.
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let subseq = regex_like_subsequence(&names);
    assert!(subseq > 0, "no object key with a sub-sequence number: {names:#?}");
}

/// Object keys `{stream}-{shard}-{first}[-{sub}]-{last}[-{sub}]`: counts keys
/// with more than the two plain sequence numbers.
fn regex_like_subsequence(names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| {
            let stem = n.trim_end_matches(".snappy.parquet");
            let tail = stem.split("-shardId-").nth(1).unwrap_or("");
            tail.split('-').count() > 3
        })
        .count()
}
