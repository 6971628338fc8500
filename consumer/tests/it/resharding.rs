//! Resharding while the consumer runs: a split and a merge lose nothing, and
//! a child shard's records are committed only after its parents ended.

use std::time::Duration;

use crate::support::*;

fn keyed_cycling(events: Vec<Vec<u8>>, keys: usize) -> Vec<(String, Vec<u8>)> {
    events.into_iter().enumerate().map(|(i, e)| (format!("key-{}", i % keys), e)).collect()
}

/// Index of the first log line that contains all of `parts`.
fn first_line(log: &str, parts: &[&str]) -> Option<usize> {
    log.lines().position(|l| parts.iter().all(|p| l.contains(p)))
}

/// Index of the last log line that contains all of `parts`.
fn last_line(log: &str, parts: &[&str]) -> Option<usize> {
    log.lines().enumerate().filter(|(_, l)| parts.iter().all(|p| l.contains(p))).map(|(i, _)| i).last()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_during_consumption_lose_nothing_and_keep_parents_first() {
    let Some(_stack) = stack() else { return };
    let client = kinesis().await;
    let stream = create_stream(&client, 2).await;
    let setup = Setup::new(&stream);
    setup.config("");
    let records = keyed_cycling(events(900, 31, 6), 24);
    let mut landed = put_records(&client, &stream, &records[..300]).await;
    let mut consumer = setup.start(&[]);

    landed.extend(split_and_merge_while_putting(&client, &stream, &records[300..600], &records[600..]).await);
    let used: std::collections::BTreeSet<&str> = landed.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(used.len(), 5, "records should land on parents and children: {used:?}");

    setup.wait_committed(&landed, Duration::from_secs(90)).await;
    assert!(terminate(&mut consumer).success(), "{}", setup.log());
    assert_eq!(setup.duckdb_check(), (900, 900, 0));

    // Each child's first commit comes after its parents' final commits.
    let log = setup.log();
    for (child, parents) in [
        ("shardId-000000000002", &["shardId-000000000000"][..]),
        ("shardId-000000000004", &["shardId-000000000001", "shardId-000000000003"][..]),
    ] {
        let child_first =
            first_line(&log, &["batch committed", child]).unwrap_or_else(|| panic!("{child} never committed:\n{log}"));
        for parent in parents {
            let ended =
                first_line(&log, &["shard ended", parent]).unwrap_or_else(|| panic!("{parent} never ended:\n{log}"));
            let ended = ended.max(last_line(&log, &["batch committed", parent]).unwrap_or(0));
            assert!(ended < child_first, "{child} committed before its parent {parent} ended:\n{log}");
        }
    }
}
