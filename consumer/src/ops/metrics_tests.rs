//! Tests of `metrics`.

use super::*;

/// Issue 26, item 8: alerts see every known series from the start.
#[test]
fn labelled_counters_with_known_values_are_exported_at_zero_from_the_start() {
    let text = Metrics::new().render();
    for want in [
        "shardlake_consumer_flushes_total{reason=\"shutdown\"} 0",
        "shardlake_consumer_files_flushed_total{kind=\"errors\"} 0",
        "shardlake_consumer_read_errors_total{kind=\"fatal\"} 0",
        "shardlake_consumer_records_errored_total{error_type=\"type_mismatch\"} 0",
        "shardlake_consumer_schema_fields_in_extra_total{reason=\"refused\"} 0",
        "shardlake_consumer_fan_out_subscriptions_total{outcome=\"fallback\"} 0",
        "shardlake_consumer_upload_failures_total 0",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    let m = Metrics::new();
    m.shard_started("shardId-000000000007");
    let text = m.render();
    for name in ["throttles", "trimmed_unread", "unreplayable_ranges", "iterator_renewals", "records_read"] {
        let want = format!("shardlake_consumer_{name}_total{{shard=\"shardId-000000000007\"}} 0");
        assert!(text.contains(&want), "{want} missing:\n{text}");
    }
}

#[test]
fn renders_recorded_values() {
    let m = Metrics::new();
    m.record_read("shardId-000000000001", 3, 120, 0.01);
    let gauges = crate::ops::health::ShardGauges {
        checkpoint_age_secs: 7,
        millis_behind: Some(42),
        retention_headroom_secs: Some(86_000),
    };
    m.set_shard_gauges(&[("shardId-000000000001".to_string(), gauges)]);
    let mut stats = PipelineStats { records: 5, ..Default::default() };
    stats.errors.insert(shardlake::error_output::ErrorKind::InvalidJson, 2);
    m.record_flush("age", &stats, &[(true, 100), (false, 20)], 0.2);
    m.set_leases_held(3);
    m.record_lease_taken(true, None);
    m.record_lease_taken(false, Some(1.5));
    m.record_lease_lost();
    m.record_lease_renew(0.004);
    let text = m.render();
    for want in [
        "shardlake_consumer_records_read_total{shard=\"shardId-000000000001\"} 3",
        "shardlake_consumer_millis_behind_latest{shard=\"shardId-000000000001\"} 42",
        "shardlake_consumer_checkpoint_age_seconds{shard=\"shardId-000000000001\"} 7",
        "shardlake_consumer_records_written_total 3",
        "shardlake_consumer_records_errored_total{error_type=\"invalid_json\"} 2",
        "shardlake_consumer_files_flushed_total{kind=\"data\"} 1",
        "shardlake_consumer_bytes_flushed_total 120",
        "shardlake_consumer_flushes_total{reason=\"age\"} 1",
        "shardlake_consumer_leases_held 3",
        "shardlake_consumer_leases_stolen_total 1",
        "shardlake_consumer_leases_taken_total 1",
        "shardlake_consumer_leases_lost_total 1",
        "shardlake_consumer_lease_renew_seconds_count 1",
        "shardlake_consumer_lease_takeover_seconds_sum 1.5",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
}

/// Every metric the Grafana dashboard and the alert rules in `ops/`
/// use is one this binary exports.
#[test]
fn the_ops_assets_use_only_exported_metrics() {
    let m = Metrics::new();
    let shard = "shardId-000000000000";
    m.record_read(shard, 1, 10, 0.01);
    let mut stats = PipelineStats { records: 1, ..Default::default() };
    stats.errors.insert(shardlake::error_output::ErrorKind::TypeMismatch, 1);
    m.record_flush("size", &stats, &[(true, 10), (false, 5)], 0.1);
    let gauges = crate::ops::health::ShardGauges {
        checkpoint_age_secs: 3,
        millis_behind: Some(0),
        retention_headroom_secs: Some(86_400),
    };
    m.set_shard_gauges(&[(shard.to_string(), gauges)]);
    m.record_iterator_renewal(shard);
    m.record_throttle(shard);
    m.record_read_error("transient");
    m.record_upload_failure();
    m.record_checkpoint_failure();
    m.set_health_problems(1);
    m.set_read_buffer_bytes(1);
    m.record_unreplayable(shard);
    m.record_trimmed_unread(shard);
    m.record_subscription("subscribed");
    m.set_buffered_bytes(1);
    m.add_shards_reading(1);
    m.set_leases_held(1);
    m.record_lease_taken(true, None);
    m.record_lease_taken(false, Some(2.0));
    m.record_lease_lost();
    m.record_lease_released();
    m.record_lease_renew(0.01);
    let exposition = m.render();
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
    for file in ["grafana/shardlake.json", "prometheus/shardlake-alerts.yml", "prometheus/shardlake-alerts_test.yml"] {
        let text = std::fs::read_to_string(ops.join(file)).unwrap();
        let missing = shardlake::metrics::missing_metrics(&exposition, &text, "shardlake_consumer_");
        assert!(missing.is_empty(), "ops/{file} uses metrics the consumer does not export: {missing:?}");
    }
}
