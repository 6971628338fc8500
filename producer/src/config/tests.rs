//! Unit tests of the producer configuration: defaults, validation and
//! clamping to the API limits.

use super::*;

#[test]
fn defaults_follow_the_kpl_and_the_api_limits() {
    let s = ProducerConfig::kinesis("s").validate().unwrap();
    assert_eq!(s.linger, Duration::from_millis(100));
    assert_eq!(s.ttl, Duration::from_secs(30));
    assert_eq!((s.max_record_bytes, s.max_batch_records, s.max_batch_bytes), (1 << 20, 500, 5 << 20));
    assert_eq!(s.rate_limit_factor, Some(1.5));
    let f = ProducerConfig::firehose("f").validate().unwrap();
    assert_eq!((f.max_record_bytes, f.max_batch_bytes), (1000 * 1024, 4 << 20));
    assert_eq!((f.rate_limit_factor, f.shard_map_refresh), (None, None));
}

#[test]
fn batch_limits_are_clamped_to_the_api() {
    let mut c = ProducerConfig::kinesis("s");
    c.max_batch_records = 10_000;
    c.max_batch_bytes = Some(100 << 20);
    let s = c.validate().unwrap();
    assert_eq!((s.max_batch_records, s.max_batch_bytes), (500, 5 << 20));
}

#[test]
fn record_limit_goes_up_to_10_mib_for_kinesis_only() {
    let mut c = ProducerConfig::kinesis("s");
    c.max_record_bytes = Some(10 << 20);
    assert_eq!(c.validate().unwrap().max_record_bytes, 10 << 20);
    c.max_record_bytes = Some((10 << 20) + 1);
    assert!(c.validate().unwrap_err().to_string().contains("allows 1 to 10485760"));
    let mut f = ProducerConfig::firehose("f");
    f.max_record_bytes = Some(1 << 20);
    assert!(f.validate().is_err());
}

#[test]
fn invalid_combinations_fail_at_load_time() {
    let err = ProducerConfig::from_toml("target = { firehose_delivery_stream = \"f\" }\nordering = true").unwrap_err();
    assert!(err.to_string().contains("Kinesis streams only"), "{err}");
    let err = ProducerConfig::from_toml("target = { kinesis_stream = \"s\" }\nmax_buffered_bytes = 1000").unwrap_err();
    assert!(err.to_string().contains("below max_record_bytes"), "{err}");
    let err = ProducerConfig::from_toml("target = { kinesis_stream = \"s\" }\nlinger = 5").unwrap_err();
    assert!(err.to_string().contains("unknown field `linger`"), "{err}");
    let err = ProducerConfig::from_toml("target = { kinesis_stream = \"s\" }\n[retry]\nbase_ms = 0").unwrap_err();
    assert!(err.to_string().contains("retry"), "{err}");
}

#[test]
fn a_request_timeout_floor_above_its_ceiling_is_a_config_error() {
    let err = ProducerConfig::from_toml(
        "target = { kinesis_stream = \"s\" }\nmin_request_timeout_ms = 20000\nrequest_timeout_ms = 1000",
    )
    .unwrap_err();
    assert!(err.to_string().contains("min_request_timeout_ms = 20000 is above request_timeout_ms = 1000"), "{err}");
    // Unset, the floor follows a low ceiling instead of failing.
    let s = ProducerConfig::from_toml("target = { kinesis_stream = \"s\" }\nrequest_timeout_ms = 300")
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(s.min_request_timeout, Duration::from_millis(300));
    let err =
        ProducerConfig::from_toml("target = { kinesis_stream = \"s\" }\ncontrol_plane_timeout_ms = 0").unwrap_err();
    assert!(err.to_string().contains("control_plane_timeout_ms"), "{err}");
}

#[test]
fn toml_overrides_defaults() {
    let c = ProducerConfig::from_toml(
        "target = { kinesis_stream = \"s\" }\nrate_limit_percent = 0\nshard_map_refresh_secs = 0\n\
         aggregation = true\n[retry]\ncap_ms = 1000",
    )
    .unwrap();
    let s = c.validate().unwrap();
    assert_eq!((s.rate_limit_factor, s.shard_map_refresh), (None, None));
    assert_eq!(s.aggregation_max_bytes, Some(51_200));
    assert_eq!(s.retry.cap, Duration::from_secs(1));
    assert_eq!(c.target, Target::KinesisStream("s".into()));
}

/// docs/configuration.md, the reference the producer's keys are documented in.
const REFERENCE: &str = include_str!("../../../docs/configuration.md");

/// The producer's reference block, with every key set when `every`.
fn reference_block(every: bool) -> String {
    let block = shardlake::config_reference::reference_block(REFERENCE, "producer.toml");
    if every { shardlake::config_reference::every_key(&block) } else { block }
}

#[test]
fn the_configuration_reference_lists_every_key_with_its_default() {
    let every = reference_block(true);
    // Every documented key is one the code accepts (unknown fields are denied).
    toml::from_str::<ProducerConfig>(&every)
        .unwrap_or_else(|e| panic!("docs/configuration.md documents a producer key the code refuses: {e}"));
    // Every key the code accepts is documented.
    let documented: toml::Table = toml::from_str(&every).unwrap();
    let sections: [(&str, &[&str]); 2] = [
        ("", shardlake::config_reference::serde_names::<ProducerConfig>()),
        ("retry", shardlake::config_reference::serde_names::<RetryConfig>()),
    ];
    shardlake::config_reference::assert_every_key_documented("producer.toml", &documented, &sections, &["target"]);
    for target in shardlake::config_reference::serde_names::<Target>() {
        assert!(every.contains(target), "target `{target}` missing from docs/configuration.md");
    }
    // The defaults shown are the code's.
    let documented: ProducerConfig = toml::from_str(&reference_block(false)).unwrap();
    assert_eq!(documented, ProducerConfig::kinesis("events"), "a default in docs/configuration.md differs");
}
