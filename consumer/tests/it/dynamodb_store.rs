//! The fleet's DynamoDB checkpoint store against dynalite: leases are taken
//! by exactly one of racing workers, and every write of a worker that lost
//! its lease fails with `LeaseLost` instead of landing.

use std::time::Duration;

use crate::support::{stack, stack_env, unique};
use shardlake::Error;
use shardlake_consumer::checkpoint::dynamodb::now_ms;
use shardlake_consumer::checkpoint::{
    CheckpointStore, Commit, DynamoCheckpoints, FleetOptions, Intent, Lease, ShardState,
};

const SHARD: &str = "shardId-000000000000";

async fn worker(table: &str, stream: &str, id: &str, lease: Duration) -> DynamoCheckpoints {
    stack_env("AWS_ENDPOINT_URL_DYNAMODB");
    let options = FleetOptions {
        worker_id: id.to_string(),
        lease_duration: lease,
        create_table: true,
        timeouts: Default::default(),
    };
    let store = CheckpointStore::connect(&format!("dynamodb://{table}"), "app", stream, &options).await.unwrap();
    store.fleet().unwrap().clone()
}

fn is_lost(e: &Error) -> bool {
    matches!(e, Error::LeaseLost { shard } if shard == SHARD)
}

#[tokio::test]
async fn intent_commit_and_schema_round_trip_under_a_held_lease() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let a = worker(&table, "events", "a", Duration::from_secs(10)).await;
    assert_eq!(a.load(SHARD).await.unwrap(), ShardState::default());
    let lease = a.take(SHARD, None, &["shardId-parent".into()]).await.unwrap().unwrap();
    let intent = Intent { first: "100".into(), last: "250".into(), records: 7, schema_version: 3 };
    a.record_intent(SHARD, lease, &intent).await.unwrap();
    assert_eq!(a.load(SHARD).await.unwrap().intent, Some(intent));
    let pending = vec!["year=2026/month=11/".to_string(), "year=2026/month=12/".to_string()];
    a.commit(SHARD, lease, &Commit { last: Some("250"), catalog_pending: &pending, ..Commit::default() })
        .await
        .unwrap();
    let state = a.load(SHARD).await.unwrap();
    assert_eq!((state.checkpoint.as_deref(), state.intent, state.ended), (Some("250"), None, false));
    let mut stored = state.catalog_pending;
    stored.sort();
    assert_eq!(stored, pending);
    a.commit(SHARD, lease, &Commit { last: Some("250"), ..Commit::default() }).await.unwrap();
    assert_eq!(a.load(SHARD).await.unwrap(), ShardState { checkpoint: Some("250".into()), ..ShardState::default() });
    a.commit(SHARD, lease, &Commit { ended: true, ..Commit::default() }).await.unwrap();
    assert!(a.load(SHARD).await.unwrap().ended);

    assert_eq!(a.load_schema(1).await.unwrap(), None);
    a.save_schema(1, "first").await.unwrap();
    a.save_schema(1, "second").await.unwrap();
    assert_eq!(a.load_schema(1).await.unwrap().as_deref(), Some("first"), "the first stored schema wins");
    assert_eq!(a.load_schema(2).await.unwrap(), None, "versions are separate items");
    assert!(a.save_schema(2, "v2 first").await.unwrap(), "stored by this call");
    assert!(!a.save_schema(2, "v2 second").await.unwrap(), "another's is kept");
    assert_eq!(a.load_schema(2).await.unwrap().as_deref(), Some("v2 first"));
    assert_eq!(a.load_schema(1).await.unwrap().as_deref(), Some("first"));
    // Another stream of the same application shares the table, not the items.
    let other = worker(&table, "other", "a", Duration::from_secs(10)).await;
    assert_eq!(other.load(SHARD).await.unwrap(), ShardState::default());
    assert_eq!(other.leases().await.unwrap(), vec![]);
    assert_eq!(a.leases().await.unwrap().len(), 1, "the schema item is not a lease");
}

#[tokio::test]
async fn a_worker_without_the_lease_cannot_write() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let a = worker(&table, "events", "a", Duration::from_secs(10)).await;
    let intent = Intent { first: "1".into(), last: "2".into(), records: 2, schema_version: 1 };
    assert!(is_lost(&a.record_intent(SHARD, 1, &intent).await.unwrap_err()), "never taken");
    assert!(is_lost(&a.commit(SHARD, 1, &Commit { last: Some("2"), ..Commit::default() }).await.unwrap_err()));
    assert_eq!(a.load(SHARD).await.unwrap(), ShardState::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_takers_of_one_lease_have_exactly_one_winner() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let mut workers = Vec::new();
    for i in 0..8 {
        workers.push(worker(&table, "events", &format!("w{i}"), Duration::from_secs(10)).await);
    }
    let wins = race(&workers, None).await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    // Again on the existing item: all racers observed the same lease.
    let lease = workers[0].leases().await.unwrap().remove(0);
    let wins = race(&workers, Some(lease)).await;
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
    let holders: Vec<_> = workers.iter().filter(|w| w.holds(SHARD)).map(|w| w.worker_id().to_string()).collect();
    // The first race's winner (if it lost the second) still believes it holds
    // the lease until one of its writes fails.
    assert!((1..=2).contains(&holders.len()), "{holders:?}");
    let leases = workers[0].leases().await.unwrap();
    assert_eq!(leases[0].counter, 2);
    assert!(holders.contains(leases[0].owner.as_ref().unwrap()));
}

/// Every worker tries to take the shard at once (as observed: `lease`).
async fn race(workers: &[DynamoCheckpoints], lease: Option<Lease>) -> Vec<bool> {
    let handles: Vec<_> = workers
        .iter()
        .map(|w| {
            let (w, lease) = (w.clone(), lease.clone());
            tokio::spawn(async move { w.take(SHARD, lease.as_ref(), &[]).await.unwrap().is_some() })
        })
        .collect();
    let mut wins = Vec::new();
    for h in handles {
        wins.push(h.await.unwrap());
    }
    wins
}

#[tokio::test]
async fn a_stale_worker_is_fenced_after_its_lease_expired_and_moved() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let a = worker(&table, "events", "a", Duration::from_millis(300)).await;
    let b = worker(&table, "events", "b", Duration::from_millis(300)).await;
    let a_lease = a.take(SHARD, None, &[]).await.unwrap().unwrap();
    let first = Intent { first: "10".into(), last: "20".into(), records: 3, schema_version: 1 };
    a.record_intent(SHARD, a_lease, &first).await.unwrap();
    // `a` pauses past its expiry; `b` sees the lease free and takes it.
    let lease = b.leases().await.unwrap().remove(0);
    assert!(!lease.is_free(now_ms()));
    assert_eq!(
        b.take(SHARD, Some(&Lease { counter: 0, ..lease.clone() }), &[]).await.unwrap(),
        None,
        "stale observation"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lease = b.leases().await.unwrap().remove(0);
    assert!(lease.is_free(now_ms()));
    let b_lease = b.take(SHARD, Some(&lease), &[]).await.unwrap().unwrap();
    // `b` finds the pending intent, replays and commits it.
    assert_eq!(b.load(SHARD).await.unwrap().intent, Some(first.clone()));
    b.commit(SHARD, b_lease, &Commit { last: Some("20"), ..Commit::default() }).await.unwrap();
    // `a` wakes up: its commit, intent and renewal are all refused.
    assert!(is_lost(&a.commit(SHARD, a_lease, &Commit { last: Some("99"), ..Commit::default() }).await.unwrap_err()));
    assert!(!a.holds(SHARD), "a lost lease is forgotten");
    assert!(is_lost(&a.record_intent(SHARD, a_lease, &first).await.unwrap_err()));
    assert!(is_lost(&a.renew(SHARD, a_lease).await.unwrap_err()));
    assert_eq!(b.load(SHARD).await.unwrap(), ShardState { checkpoint: Some("20".into()), ..ShardState::default() });
    b.renew(SHARD, b_lease).await.unwrap();
}

#[tokio::test]
async fn a_released_lease_is_free_at_once_and_a_steal_fences_the_victim() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let a = worker(&table, "events", "a", Duration::from_secs(30)).await;
    let b = worker(&table, "events", "b", Duration::from_secs(30)).await;
    assert_eq!(a.take(SHARD, None, &[]).await.unwrap(), Some(1));
    a.release(SHARD).await.unwrap();
    let lease = b.leases().await.unwrap().remove(0);
    assert_eq!(lease.owner, None);
    assert!(lease.is_free(now_ms()), "no wait for the 30 s expiry");
    let b_lease = b.take(SHARD, Some(&lease), &[]).await.unwrap().unwrap();
    // `a` steals it back while `b` holds it (not expired).
    let lease = a.leases().await.unwrap().remove(0);
    assert_eq!(lease.owner.as_deref(), Some("b"));
    assert!(a.take(SHARD, Some(&lease), &[]).await.unwrap().is_some());
    assert!(is_lost(&b.commit(SHARD, b_lease, &Commit { last: Some("5"), ..Commit::default() }).await.unwrap_err()));
    assert_eq!(a.load(SHARD).await.unwrap().checkpoint, None);
}

/// A worker that lost a lease and took it back holds it at a new counter: a
/// write made under the old one (a reader that slept through the move, with
/// a batch read before it) is refused, and the lease stays held.
#[tokio::test]
async fn a_write_under_an_old_lease_is_refused_after_the_worker_took_it_back() {
    let Some(_stack) = stack() else { return };
    let table = unique("leases");
    let a = worker(&table, "events", "a", Duration::from_secs(30)).await;
    let b = worker(&table, "events", "b", Duration::from_secs(30)).await;
    let old = a.take(SHARD, None, &[]).await.unwrap().unwrap();
    let lease = b.leases().await.unwrap().remove(0);
    let b_lease = b.take(SHARD, Some(&lease), &[]).await.unwrap().unwrap();
    b.commit(SHARD, b_lease, &Commit { last: Some("40"), ..Commit::default() }).await.unwrap();
    let lease = a.leases().await.unwrap().remove(0);
    let new = a.take(SHARD, Some(&lease), &[]).await.unwrap().unwrap();
    assert!(new > old);
    let stale = Intent { first: "10".into(), last: "20".into(), records: 3, schema_version: 1 };
    assert!(is_lost(&a.record_intent(SHARD, old, &stale).await.unwrap_err()));
    assert!(is_lost(&a.commit(SHARD, old, &Commit { last: Some("20"), ..Commit::default() }).await.unwrap_err()));
    assert_eq!(a.lease_counter(SHARD), Some(new), "the refused old write does not drop the new lease");
    assert_eq!(a.load(SHARD).await.unwrap(), ShardState { checkpoint: Some("40".into()), ..ShardState::default() });
    a.commit(SHARD, new, &Commit { last: Some("50"), ..Commit::default() }).await.unwrap();
    assert_eq!(a.load(SHARD).await.unwrap().checkpoint.as_deref(), Some("50"));
}
