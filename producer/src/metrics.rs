//! Prometheus metrics of a producer, registered in a registry the embedding
//! application exposes (`Producer::registry`), with `record_*` helpers so
//! every path counts the same way. Each metric carries a `target` label (the
//! stream name), so several producers can share one registry.

use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, exponential_buckets,
};

use crate::concurrency::Change;

/// The producer's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// User records acknowledged.
    pub records_sent: IntCounter,
    /// Payload bytes of the acknowledged user records.
    pub bytes_sent: IntCounter,
    /// User records that failed for good, by reason (AWS error code,
    /// `expired`, `too_large`, `retries_exhausted` ...), and those given up
    /// with `reason="unknown_outcome"`: a request carrying them timed out, so
    /// they may have been stored.
    pub records_failed: IntCounterVec,
    /// `try_send` refusals because the budget was full: backpressure, not
    /// failures (the caller still holds the record).
    pub buffer_full: IntCounter,
    /// Records still buffered or in flight when the last producer handle
    /// was dropped without `shutdown`: they are sent in the background, and
    /// lost if the runtime stops first.
    pub records_buffered_at_drop: IntCounter,
    /// User records put back for another attempt, by error code.
    pub records_retried: IntCounterVec,
    /// User records whose TTL ran out.
    pub records_expired: IntCounter,
    /// Throttling answers: `scope="record"` for entries failed with
    /// `ProvisionedThroughputExceededException`, `scope="request"` for whole
    /// requests.
    pub throttled: IntCounterVec,
    /// Requests by outcome: `ok`, `partial` (some entries failed), `timeout`
    /// (no answer within the request timeout), `retry` (another retryable
    /// failure of the whole request), `failed`.
    pub requests: IntCounterVec,
    /// The adaptive limit of requests in flight.
    pub concurrency_limit: IntGauge,
    /// Changes of the concurrency limit, by `direction` (`up`, `down`).
    pub concurrency_limit_changes: IntCounterVec,
    /// The request timeout in force, in seconds.
    pub request_timeout: Gauge,
    /// The records a request may carry now: `max_batch_records`, shrunk
    /// while requests time out at a concurrency limit of 1.
    pub request_max_records: IntGauge,
    /// The RTT baseline the concurrency limit is judged against, in seconds.
    pub rtt_baseline: Gauge,
    /// Request latency in seconds.
    pub request_duration: Histogram,
    /// Entries per request.
    pub batch_entries: Histogram,
    /// Bytes per request.
    pub batch_bytes: Histogram,
    /// User records per aggregated Kinesis record.
    pub records_per_aggregate: Histogram,
    /// Time from `send` to the acknowledgement, in seconds.
    pub record_latency: Histogram,
    /// Bytes buffered or in flight (the memory budget in use).
    pub buffered_bytes: IntGauge,
    /// Records buffered or in flight.
    pub buffered_records: IntGauge,
    /// Requests in flight.
    pub in_flight_requests: IntGauge,
    /// Shard map reads, by outcome (`ok`, `error`).
    pub shard_map_refreshes: IntCounterVec,
    /// Sends of user records after a request carrying them went unanswered
    /// (timeout, reset, closed mid-answer): each may store another copy. At
    /// most `retry.max_resends_after_unknown` per record.
    pub records_resent_after_unknown: IntCounter,
    /// User records resolved (acknowledged, or given up as unknown) that may
    /// be stored more than once, because a request carrying them went
    /// unanswered and they were sent again.
    pub records_maybe_duplicated: IntCounter,
    /// User records sent again because their aggregate landed on a shard
    /// whose hash-key range does not hold their hash key (a reshard the map
    /// had not seen yet): the KCL discards such records, as the KPL knows.
    pub records_resent_wrong_shard: IntCounter,
}

impl Metrics {
    /// Creates the metrics for `target` and registers them in `registry`.
    pub fn new(registry: &Registry, target: &str) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| {
            Opts::new(format!("shardlake_producer_{name}"), help).const_label("target", target)
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramOpts::new(format!("shardlake_producer_{name}"), help)
                .const_label("target", target)
                .buckets(buckets)
        };
        let seconds = exponential_buckets(0.001, 2.0, 16)?;
        let m = Metrics {
            records_sent: IntCounter::with_opts(opts("records_sent_total", "User records acknowledged."))?,
            bytes_sent: IntCounter::with_opts(opts("bytes_sent_total", "Payload bytes of acknowledged records."))?,
            records_failed: IntCounterVec::new(
                opts("records_failed_total", "User records that failed for good, by reason."),
                &["reason"],
            )?,
            buffer_full: IntCounter::with_opts(opts(
                "buffer_full_total",
                "try_send refusals because the budget was full (backpressure, not failures).",
            ))?,
            records_buffered_at_drop: IntCounter::with_opts(opts(
                "records_buffered_at_drop_total",
                "Records buffered or in flight when the producer was dropped without shutdown.",
            ))?,
            records_retried: IntCounterVec::new(
                opts("records_retried_total", "User records put back for another attempt, by error code."),
                &["code"],
            )?,
            records_expired: IntCounter::with_opts(opts("records_expired_total", "User records whose TTL ran out."))?,
            throttled: IntCounterVec::new(opts("throttled_total", "Throttling answers, by scope."), &["scope"])?,
            requests: IntCounterVec::new(opts("requests_total", "Requests by outcome."), &["outcome"])?,
            concurrency_limit: IntGauge::with_opts(opts(
                "concurrency_limit",
                "The adaptive limit of requests in flight.",
            ))?,
            concurrency_limit_changes: IntCounterVec::new(
                opts("concurrency_limit_changes_total", "Changes of the concurrency limit, by direction."),
                &["direction"],
            )?,
            request_timeout: Gauge::with_opts(opts("request_timeout_seconds", "The request timeout in force."))?,
            request_max_records: IntGauge::with_opts(opts(
                "request_max_records",
                "The records a request may carry now (max_batch_records, shrunk while requests time out).",
            ))?,
            rtt_baseline: Gauge::with_opts(opts(
                "rtt_baseline_seconds",
                "The RTT baseline the concurrency limit is judged against.",
            ))?,
            request_duration: Histogram::with_opts(hist(
                "request_duration_seconds",
                "Request latency.",
                seconds.clone(),
            ))?,
            batch_entries: Histogram::with_opts(hist(
                "batch_entries",
                "Entries per request.",
                exponential_buckets(1.0, 2.0, 10)?,
            ))?,
            batch_bytes: Histogram::with_opts(hist(
                "batch_bytes",
                "Bytes per request.",
                exponential_buckets(1024.0, 4.0, 8)?,
            ))?,
            records_per_aggregate: Histogram::with_opts(hist(
                "records_per_aggregate",
                "User records per aggregated Kinesis record.",
                exponential_buckets(1.0, 2.0, 12)?,
            ))?,
            record_latency: Histogram::with_opts(hist(
                "record_latency_seconds",
                "Time from send to acknowledgement.",
                seconds,
            ))?,
            buffered_bytes: IntGauge::with_opts(opts("buffered_bytes", "Bytes buffered or in flight."))?,
            buffered_records: IntGauge::with_opts(opts("buffered_records", "Records buffered or in flight."))?,
            in_flight_requests: IntGauge::with_opts(opts("in_flight_requests", "Requests in flight."))?,
            shard_map_refreshes: IntCounterVec::new(
                opts("shard_map_refreshes_total", "Shard map reads, by outcome."),
                &["outcome"],
            )?,
            records_resent_after_unknown: IntCounter::with_opts(opts(
                "records_resent_after_unknown_total",
                "Sends of user records after a request carrying them went unanswered (each may store a copy).",
            ))?,
            records_maybe_duplicated: IntCounter::with_opts(opts(
                "records_maybe_duplicated_total",
                "User records resolved that may be stored more than once (resent after an unanswered request).",
            ))?,
            records_resent_wrong_shard: IntCounter::with_opts(opts(
                "records_resent_wrong_shard_total",
                "User records resent because their aggregate landed on a shard whose range does not hold them.",
            ))?,
        };
        registry.register(Box::new(m.records_sent.clone()))?;
        registry.register(Box::new(m.bytes_sent.clone()))?;
        registry.register(Box::new(m.records_failed.clone()))?;
        registry.register(Box::new(m.buffer_full.clone()))?;
        registry.register(Box::new(m.records_buffered_at_drop.clone()))?;
        registry.register(Box::new(m.concurrency_limit.clone()))?;
        registry.register(Box::new(m.concurrency_limit_changes.clone()))?;
        registry.register(Box::new(m.request_timeout.clone()))?;
        registry.register(Box::new(m.request_max_records.clone()))?;
        registry.register(Box::new(m.rtt_baseline.clone()))?;
        registry.register(Box::new(m.records_retried.clone()))?;
        registry.register(Box::new(m.records_expired.clone()))?;
        registry.register(Box::new(m.throttled.clone()))?;
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.batch_entries.clone()))?;
        registry.register(Box::new(m.batch_bytes.clone()))?;
        registry.register(Box::new(m.records_per_aggregate.clone()))?;
        registry.register(Box::new(m.record_latency.clone()))?;
        registry.register(Box::new(m.buffered_bytes.clone()))?;
        registry.register(Box::new(m.buffered_records.clone()))?;
        registry.register(Box::new(m.in_flight_requests.clone()))?;
        registry.register(Box::new(m.shard_map_refreshes.clone()))?;
        registry.register(Box::new(m.records_resent_after_unknown.clone()))?;
        registry.register(Box::new(m.records_maybe_duplicated.clone()))?;
        registry.register(Box::new(m.records_resent_wrong_shard.clone()))?;
        Ok(m)
    }

    /// A record was acknowledged.
    pub fn record_sent(&self, bytes: usize, latency: Duration) {
        self.records_sent.inc();
        self.bytes_sent.inc_by(bytes as u64);
        self.record_latency.observe(latency.as_secs_f64());
    }

    /// A record failed for good.
    pub fn record_failed(&self, reason: &str) {
        self.records_failed.with_label_values(&[reason]).inc();
    }

    /// The concurrency controller's state after a request finished: its
    /// limit, the change if any, the timeout and baseline in force.
    pub fn record_concurrency(
        &self,
        limit: usize,
        change: Option<Change>,
        timeout: Duration,
        baseline: Option<Duration>,
    ) {
        self.concurrency_limit.set(limit as i64);
        match change {
            Some(Change::Increased(_)) => self.concurrency_limit_changes.with_label_values(&["up"]).inc(),
            Some(Change::Decreased(_)) => self.concurrency_limit_changes.with_label_values(&["down"]).inc(),
            None => {}
        }
        self.request_timeout.set(timeout.as_secs_f64());
        if let Some(b) = baseline {
            self.rtt_baseline.set(b.as_secs_f64());
        }
    }

    /// A record goes back for another attempt after `code`.
    pub fn record_retried(&self, code: &str) {
        self.records_retried.with_label_values(&[code]).inc();
    }

    /// The service throttled an entry (`record`) or a request (`request`).
    pub fn record_throttled(&self, scope: &str) {
        self.throttled.with_label_values(&[scope]).inc();
    }

    /// A request was sent.
    pub fn record_request_sent(&self, entries: usize, bytes: usize) {
        self.batch_entries.observe(entries as f64);
        self.batch_bytes.observe(bytes as f64);
        self.in_flight_requests.inc();
    }

    /// A request finished with `outcome` after `elapsed`.
    pub fn record_request_done(&self, outcome: &str, elapsed: Duration) {
        self.in_flight_requests.dec();
        self.requests.with_label_values(&[outcome]).inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// A record entered (`+1`) or left (`-1`) the buffered + in-flight budget.
    pub fn record_buffered(&self, sign: i64, bytes: usize) {
        self.buffered_records.add(sign);
        self.buffered_bytes.add(sign * bytes as i64);
    }

    /// The shard map was read (`ok`) or could not be (`error`).
    pub fn record_shard_map_refresh(&self, outcome: &str) {
        self.shard_map_refreshes.with_label_values(&[outcome]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_for_different_targets_share_a_registry() {
        let registry = Registry::new();
        let a = Metrics::new(&registry, "a").unwrap();
        let b = Metrics::new(&registry, "b").unwrap();
        a.record_sent(10, Duration::from_millis(5));
        b.record_failed("KMSAccessDeniedException");
        b.records_expired.inc();
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(text.contains("shardlake_producer_records_sent_total{target=\"a\"} 1"), "{text}");
        assert!(text.contains("shardlake_producer_bytes_sent_total{target=\"a\"} 10"), "{text}");
        assert!(
            text.contains(
                "shardlake_producer_records_failed_total{reason=\"KMSAccessDeniedException\",target=\"b\"} 1"
            )
        );
        assert!(text.contains("shardlake_producer_records_expired_total{target=\"b\"} 1"));
        assert!(Metrics::new(&registry, "a").is_err(), "the same target twice is a registration error");
    }

    /// Every producer metric the Grafana dashboard and the alert rules in
    /// `ops/` use is one the producer exports.
    #[test]
    fn the_ops_assets_use_only_exported_metrics() {
        let registry = Registry::new();
        let m = Metrics::new(&registry, "events").unwrap();
        m.record_sent(10, Duration::from_millis(5));
        m.record_failed("expired");
        m.records_expired.inc();
        m.record_retried("InternalFailure");
        m.record_throttled("shard");
        m.record_request_sent(2, 20);
        m.record_request_done("ok", Duration::from_millis(3));
        m.record_buffered(1, 10);
        m.record_shard_map_refresh("ok");
        let exposition = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        for file in
            ["grafana/shardlake.json", "prometheus/shardlake-alerts.yml", "prometheus/shardlake-alerts_test.yml"]
        {
            let text = std::fs::read_to_string(ops.join(file)).unwrap();
            let missing = shardlake::metrics::missing_metrics(&exposition, &text, "shardlake_producer_");
            assert!(missing.is_empty(), "ops/{file} uses metrics the producer does not export: {missing:?}");
        }
    }
}
