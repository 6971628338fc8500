//! The consumer's Prometheus metrics, in one registry served at `/metrics`,
//! and `record_*` helpers so every call site counts the same way.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use shardlake::pipeline::PipelineStats;

/// Why a batch was flushed: the `reason` label of
/// `shardlake_consumer_flushes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// `buffer.max_mb` reached.
    Size,
    /// `buffer.max_records` reached.
    Records,
    /// `buffer.max_age` reached.
    Age,
    /// The shared memory budget is full and this is the largest batch.
    Memory,
    /// The batch replayed a pending intent.
    Replay,
    /// The shard was read to its end.
    ShardEnd,
    /// The next record has a field that becomes a column (`evolve`).
    Schema,
    /// The worker is stopping.
    Shutdown,
}

impl FlushReason {
    /// Every reason.
    pub const ALL: [FlushReason; 8] = [
        FlushReason::Size,
        FlushReason::Records,
        FlushReason::Age,
        FlushReason::Memory,
        FlushReason::Replay,
        FlushReason::ShardEnd,
        FlushReason::Schema,
        FlushReason::Shutdown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::Size => "size",
            FlushReason::Records => "records",
            FlushReason::Age => "age",
            FlushReason::Memory => "memory",
            FlushReason::Replay => "replay",
            FlushReason::ShardEnd => "shard_end",
            FlushReason::Schema => "schema",
            FlushReason::Shutdown => "shutdown",
        }
    }
}

/// Every consumer metric.
pub struct Metrics {
    registry: Registry,
    records_read: IntCounterVec,
    bytes_read: IntCounterVec,
    millis_behind_latest: IntGaugeVec,
    retention_headroom: IntGaugeVec,
    records_written: IntCounter,
    records_errored: IntCounterVec,
    files_flushed: IntCounterVec,
    bytes_flushed: IntCounter,
    flushes: IntCounterVec,
    flush_seconds: Histogram,
    buffered_bytes: IntGauge,
    checkpoint_age_seconds: IntGaugeVec,
    iterator_renewals: IntCounterVec,
    throttles: IntCounterVec,
    read_errors: IntCounterVec,
    upload_failures: IntCounter,
    checkpoint_failures: IntCounter,
    catalog_registered: IntCounter,
    catalog_failures: IntCounter,
    catalog_pending: IntGauge,
    table_commits: IntCounter,
    table_commit_failures: IntCounter,
    table_batches: IntCounterVec,
    schema_version: IntGauge,
    schema_columns_added: IntCounter,
    schema_fields_in_extra: IntCounterVec,
    catalog_table_updates: IntCounter,
    health_problems: IntGauge,
    read_buffer_bytes: IntGauge,
    unreplayable_ranges: IntCounterVec,
    trimmed_unread: IntCounterVec,
    subscriptions: IntCounterVec,
    shards_reading: IntGauge,
    get_records_seconds: HistogramVec,
    leases_held: IntGauge,
    leases_taken: IntCounter,
    leases_stolen: IntCounter,
    leases_lost: IntCounter,
    leases_released: IntCounter,
    lease_renew_seconds: Histogram,
    lease_takeover_seconds: Histogram,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("shardlake_consumer_flush_seconds", "Time to encode, upload and commit one batch.")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        )
        .expect("valid metric");
        r.register(Box::new(flush_seconds.clone())).expect("unique metric");
        let get_records_seconds = HistogramVec::new(
            HistogramOpts::new("shardlake_consumer_get_records_seconds", "GetRecords call latency.")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["shard"],
        )
        .expect("valid metric");
        r.register(Box::new(get_records_seconds.clone())).expect("unique metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let m = Metrics {
            leases_held: gauge("shardlake_consumer_leases_held", "Shard leases this worker holds (fleet mode)."),
            leases_taken: counter(
                "shardlake_consumer_leases_taken_total",
                "Free or expired shard leases this worker took.",
            ),
            leases_stolen: counter(
                "shardlake_consumer_leases_stolen_total",
                "Live leases this worker took from the most loaded worker to balance the fleet.",
            ),
            leases_lost: counter(
                "shardlake_consumer_leases_lost_total",
                "Leases this worker found taken by another (its unflushed batch dropped, uncommitted).",
            ),
            leases_released: counter(
                "shardlake_consumer_leases_released_total",
                "Leases given up: at shutdown or when the shard ended.",
            ),
            lease_renew_seconds: histogram(
                "shardlake_consumer_lease_renew_seconds",
                "Latency of one lease renewal (a conditional DynamoDB write).",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            lease_takeover_seconds: histogram(
                "shardlake_consumer_lease_takeover_seconds",
                "Time from a lease's expiry to its takeover by this worker.",
                vec![0.1, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0],
            ),
            records_read: counter_vec(&r, "shardlake_consumer_records_read_total", "Kinesis records read.", &["shard"]),
            bytes_read: counter_vec(
                &r,
                "shardlake_consumer_bytes_read_total",
                "Kinesis payload bytes read.",
                &["shard"],
            ),
            millis_behind_latest: gauge_vec(
                &r,
                "shardlake_consumer_millis_behind_latest",
                "MillisBehindLatest of the last successful read, plus the time since it (so it grows while reads fail).",
                &["shard"],
            ),
            retention_headroom: gauge_vec(
                &r,
                "shardlake_consumer_retention_headroom_seconds",
                "Seconds before a shard's oldest unread record ages out of the stream: its retention less the lag.",
                &["shard"],
            ),
            records_written: counter(
                "shardlake_consumer_records_written_total",
                "User records committed to data files.",
            ),
            records_errored: counter_vec(
                &r,
                "shardlake_consumer_records_errored_total",
                "User records committed to the error prefix.",
                &["error_type"],
            ),
            files_flushed: counter_vec(&r, "shardlake_consumer_files_flushed_total", "Objects uploaded.", &["kind"]),
            bytes_flushed: counter("shardlake_consumer_bytes_flushed_total", "Bytes uploaded."),
            flushes: counter_vec(
                &r,
                "shardlake_consumer_flushes_total",
                "Batches committed, by flush rule.",
                &["reason"],
            ),
            flush_seconds,
            buffered_bytes: gauge("shardlake_consumer_buffered_bytes", "Bytes held by all shard batches."),
            checkpoint_age_seconds: gauge_vec(
                &r,
                "shardlake_consumer_checkpoint_age_seconds",
                "Seconds since the shard's last commit (or since its reader started).",
                &["shard"],
            ),
            iterator_renewals: counter_vec(
                &r,
                "shardlake_consumer_iterator_renewals_total",
                "Expired shard iterators renewed.",
                &["shard"],
            ),
            throttles: counter_vec(&r, "shardlake_consumer_throttles_total", "Throttled Kinesis calls.", &["shard"]),
            read_errors: counter_vec(
                &r,
                "shardlake_consumer_read_errors_total",
                "Failed Kinesis calls other than throttling, by kind.",
                &["kind"],
            ),
            upload_failures: counter("shardlake_consumer_upload_failures_total", "Failed batch uploads (retried)."),
            read_buffer_bytes: gauge(
                "shardlake_consumer_read_buffer_bytes",
                "Bytes of read_buffer_mb that shard readers hold now (responses in flight and buffers kept).",
            ),
            health_problems: gauge(
                "shardlake_consumer_health_problems",
                "Stalled shards and failing dependencies now: the lines of a 503 /healthz (0 when healthy).",
            ),
            checkpoint_failures: counter(
                "shardlake_consumer_checkpoint_failures_total",
                "Failed checkpoint writes, intents and commits (retried while the batch waits in memory).",
            ),
            catalog_registered: counter(
                "shardlake_consumer_catalog_partitions_registered_total",
                "Partitions this worker created in the Glue catalog (already registered ones not counted).",
            ),
            catalog_failures: counter(
                "shardlake_consumer_catalog_failures_total",
                "Failed catalog calls (table check or partition registration; retried with back-off).",
            ),
            catalog_pending: gauge(
                "shardlake_consumer_catalog_pending_partitions",
                "Committed partitions waiting to be registered in the catalog.",
            ),
            table_commits: counter(
                "shardlake_consumer_table_commits_total",
                "Snapshots this worker appended to the Iceberg table (each holds the batches of one commit_interval).",
            ),
            table_commit_failures: counter(
                "shardlake_consumer_table_commit_failures_total",
                "Failed Iceberg table commits (retried while the batches wait; conflicts iceberg-rust resolved not \
                 counted).",
            ),
            table_batches: counter_vec(
                &r,
                "shardlake_consumer_table_batches_total",
                "Batches handed to the Iceberg table, by outcome: appended, already (a replay the table held), \
                 lease_lost (not committed).",
                &["outcome"],
            ),
            schema_version: gauge(
                "shardlake_consumer_schema_version",
                "The schema version new batches are written with (1 until unknown_fields = \"evolve\" adds columns).",
            ),
            schema_columns_added: counter(
                "shardlake_consumer_schema_columns_added_total",
                "Columns this worker added to the schema (unknown_fields = \"evolve\").",
            ),
            schema_fields_in_extra: counter_vec(
                &r,
                "shardlake_consumer_schema_fields_in_extra_total",
                "unknown_fields = \"evolve\": new fields kept in _extra instead of a column, by reason: \
                 deferred (records within evolve_interval of this worker's last version; the field joins the next \
                 one) or refused (for good: the column cap, a type over the size caps, a declared type shardlake \
                 cannot write).",
                &["reason"],
            ),
            catalog_table_updates: counter(
                "shardlake_consumer_catalog_table_updates_total",
                "UpdateTable calls this worker made to add columns to the Glue table (unknown_fields = \"evolve\").",
            ),
            unreplayable_ranges: counter_vec(
                &r,
                "shardlake_consumer_unreplayable_ranges_total",
                "Pending intents whose records aged out of the stream before they could be replayed.",
                &["shard"],
            ),
            trimmed_unread: counter_vec(
                &r,
                "shardlake_consumer_trimmed_unread_total",
                "Reader starts that found the shard's checkpointed record trimmed from the stream: records after \
                 it may have aged out unread (the worker was down or behind for longer than the retention).",
                &["shard"],
            ),
            subscriptions: counter_vec(
                &r,
                "shardlake_consumer_fan_out_subscriptions_total",
                "Enhanced fan-out SubscribeToShard calls and subscription ends, by outcome \
                 (subscribed, failed, fallback to polling).",
                &["outcome"],
            ),
            shards_reading: gauge("shardlake_consumer_shards_reading", "Shards with a running reader."),
            get_records_seconds,
            registry: r,
        };
        m.export_zeros();
        m
    }

    /// Creates every labelled counter whose label values are known, at 0,
    /// so alerts and dashboards see the series from the start, not only
    /// after the first event (shard labels come with the shards).
    fn export_zeros(&self) {
        let known: [(&IntCounterVec, &[&str]); 5] = [
            (&self.files_flushed, &["data", "errors"]),
            (&self.flushes, &FlushReason::ALL.map(FlushReason::as_str)),
            (&self.read_errors, &["transient", "not_found", "fatal"]),
            (&self.schema_fields_in_extra, &["deferred", "refused"]),
            (&self.subscriptions, &["subscribed", "failed", "fallback"]),
        ];
        for (counter, values) in known {
            for value in values {
                counter.with_label_values(&[value]);
            }
        }
        for kind in shardlake::error_output::ErrorKind::ALL {
            self.records_errored.with_label_values(&[kind.as_str()]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }

    /// One GetRecords response.
    pub fn record_read(&self, shard: &str, records: usize, bytes: usize, seconds: f64) {
        self.records_read.with_label_values(&[shard]).inc_by(records as u64);
        self.bytes_read.with_label_values(&[shard]).inc_by(bytes as u64);
        self.get_records_seconds.with_label_values(&[shard]).observe(seconds);
    }

    /// A committed batch.
    pub fn record_flush(&self, reason: &str, stats: &PipelineStats, files: &[(bool, usize)], seconds: f64) {
        self.flushes.with_label_values(&[reason]).inc();
        self.flush_seconds.observe(seconds);
        self.records_written.inc_by(stats.records - stats.error_records());
        for (kind, n) in &stats.errors {
            self.records_errored.with_label_values(&[kind.as_str()]).inc_by(*n);
        }
        for &(data, bytes) in files {
            self.files_flushed.with_label_values(&[if data { "data" } else { "errors" }]).inc();
            self.bytes_flushed.inc_by(bytes as u64);
        }
    }

    /// Bytes of the read buffers in use now.
    pub fn set_read_buffer_bytes(&self, bytes: usize) {
        self.read_buffer_bytes.set(bytes as i64);
    }

    /// The number of problems `/healthz` reports now.
    pub fn set_health_problems(&self, problems: usize) {
        self.health_problems.set(problems as i64);
    }

    /// Each reading shard's checkpoint age and lag, as of now.
    pub fn set_shard_gauges(&self, gauges: &[(String, crate::ops::health::ShardGauges)]) {
        for (shard, g) in gauges {
            self.checkpoint_age_seconds.with_label_values(&[shard]).set(g.checkpoint_age_secs as i64);
            if let Some(lag) = g.millis_behind {
                self.millis_behind_latest.with_label_values(&[shard]).set(lag);
            }
            if let Some(headroom) = g.retention_headroom_secs {
                self.retention_headroom.with_label_values(&[shard]).set(headroom);
            }
        }
    }

    /// An expired iterator renewed.
    pub fn record_iterator_renewal(&self, shard: &str) {
        self.iterator_renewals.with_label_values(&[shard]).inc();
    }

    /// A throttled call.
    pub fn record_throttle(&self, shard: &str) {
        self.throttles.with_label_values(&[shard]).inc();
    }

    /// A failed Kinesis call (`transient`, `not_found`, `fatal`).
    pub fn record_read_error(&self, kind: &str) {
        self.read_errors.with_label_values(&[kind]).inc();
    }

    /// A failed checkpoint write.
    pub fn record_checkpoint_failure(&self) {
        self.checkpoint_failures.inc();
    }

    /// A catalog pass: `created` partitions registered, `pending` left.
    pub fn record_catalog(&self, created: usize, pending: usize) {
        self.catalog_registered.inc_by(created as u64);
        self.catalog_pending.set(pending as i64);
    }

    /// An Iceberg commit: `appended` when it made a snapshot.
    pub fn record_table_commit(&self, appended: bool) {
        if appended {
            self.table_commits.inc();
        }
    }

    /// A failed Iceberg commit attempt.
    pub fn record_table_commit_failure(&self) {
        self.table_commit_failures.inc();
    }

    /// `n` batches with this commit outcome.
    pub fn record_table_batches(&self, outcome: &str, n: usize) {
        self.table_batches.with_label_values(&[outcome]).inc_by(n as u64);
    }

    /// A failed catalog call.
    pub fn record_catalog_failure(&self, pending: usize) {
        self.catalog_failures.inc();
        self.catalog_pending.set(pending as i64);
    }

    /// New batches are written with schema `version`, which this worker
    /// made by adding `added` columns (0: it adopted the version).
    pub fn record_schema(&self, version: u32, added: usize) {
        self.schema_version.set(i64::from(version));
        self.schema_columns_added.inc_by(added as u64);
    }

    /// `n` new fields kept in `_extra` for `reason` (`deferred`, `refused`).
    pub fn record_fields_in_extra(&self, reason: &str, n: u64) {
        if n > 0 {
            self.schema_fields_in_extra.with_label_values(&[reason]).inc_by(n);
        }
    }

    /// The catalog table has had `total` `UpdateTable` calls from this worker.
    pub fn record_table_updates(&self, total: u64) {
        self.catalog_table_updates.inc_by(total.saturating_sub(self.catalog_table_updates.get()));
    }

    /// A failed upload attempt.
    pub fn record_upload_failure(&self) {
        self.upload_failures.inc();
    }

    /// A pending range that could not be replayed.
    pub fn record_unreplayable(&self, shard: &str) {
        self.unreplayable_ranges.with_label_values(&[shard]).inc();
    }

    /// A reader found `shard`'s checkpointed record trimmed.
    pub fn record_trimmed_unread(&self, shard: &str) {
        self.trimmed_unread.with_label_values(&[shard]).inc();
    }

    /// A fan-out subscription `subscribed`, `failed`, or a `fallback` to polling.
    pub fn record_subscription(&self, outcome: &str) {
        self.subscriptions.with_label_values(&[outcome]).inc();
    }

    /// Total bytes held by batches.
    pub fn set_buffered_bytes(&self, bytes: usize) {
        self.buffered_bytes.set(bytes as i64);
    }

    /// A reader started (`+1`) or stopped (`-1`).
    pub fn add_shards_reading(&self, delta: i64) {
        self.shards_reading.add(delta);
    }

    /// A reader of `shard` started: its counters are exported from 0, so a
    /// rate or an alert on them works before their first event.
    pub fn shard_started(&self, shard: &str) {
        for counter in
            [&self.records_read, &self.bytes_read, &self.iterator_renewals, &self.throttles, &self.unreplayable_ranges]
        {
            counter.with_label_values(&[shard]);
        }
        self.trimmed_unread.with_label_values(&[shard]);
    }

    /// Leases held now.
    pub fn set_leases_held(&self, n: usize) {
        self.leases_held.set(n as i64);
    }

    /// A lease taken: free (`expired_for` None), expired for some seconds,
    /// or stolen from a live worker.
    pub fn record_lease_taken(&self, stolen: bool, expired_for: Option<f64>) {
        if stolen {
            self.leases_stolen.inc();
        } else {
            self.leases_taken.inc();
        }
        if let Some(s) = expired_for {
            self.lease_takeover_seconds.observe(s);
        }
    }

    /// A lease found lost.
    pub fn record_lease_lost(&self) {
        self.leases_lost.inc();
    }

    /// A lease released.
    pub fn record_lease_released(&self) {
        self.leases_released.inc();
    }

    /// One renewal's latency.
    pub fn record_lease_renew(&self, seconds: f64) {
        self.lease_renew_seconds.observe(seconds);
    }

    /// Drops the per-shard series of a finished shard.
    pub fn forget_shard(&self, shard: &str) {
        for v in [&self.millis_behind_latest, &self.checkpoint_age_seconds] {
            let _ = v.remove_label_values(&[shard]);
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
