//! Tests of `dynamodb`.

use super::*;

fn lease(owner: Option<&str>, expiry_ms: u64) -> Lease {
    Lease { shard: "s".into(), owner: owner.map(str::to_string), counter: 3, expiry_ms, ended: false, checkpoint: None }
}

#[test]
fn a_lease_is_free_when_unowned_or_expired() {
    assert!(lease(None, 5_000).is_free(1_000), "released leases need no expiry");
    assert!(!lease(Some("w"), 5_000).is_free(1_000));
    assert!(lease(Some("w"), 5_000).is_free(5_000));
}

#[test]
fn items_map_to_shard_states() {
    let item = HashMap::from([
        ("checkpoint".to_string(), s("42")),
        (
            "intent".to_string(),
            intent_value(&Intent { first: "43".into(), last: "50".into(), records: 4, schema_version: 2 }),
        ),
        ("ended".to_string(), AttributeValue::Bool(true)),
    ]);
    let state = state_from_item(&item);
    assert_eq!(state.checkpoint.as_deref(), Some("42"));
    assert_eq!(state.intent, Some(Intent { first: "43".into(), last: "50".into(), records: 4, schema_version: 2 }));
    assert!(state.ended);
    assert_eq!(state_from_item(&HashMap::new()), ShardState::default());
}
