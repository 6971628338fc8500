//! A shard batch: a contiguous range of one shard's Kinesis records, decoded
//! into per-partition Parquet writers as they arrive, and the flush rules
//! that decide when it is written to the lake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};
use shardlake::aggregation::deaggregate;
use shardlake::error_output::{ErrorKind, Position};
use shardlake::pipeline::{OutputObject, Pipeline, PipelineStats};
use shardlake::schema::{Column, FieldWatch};

use crate::kinesis::{KinesisRecord, SequenceNumber};
use crate::lake::evolve::Version;

/// Where a user record came from: its Kinesis record, its index inside a KPL
/// aggregate, and the arrival time (for error lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPosition {
    /// Kinesis sequence number, shared by the user records of one aggregate.
    pub sequence: Arc<str>,
    /// Index inside an aggregate (`None` for a plain record).
    pub sub_sequence: Option<u64>,
    /// ApproximateArrivalTimestamp, epoch millis.
    pub arrival_ms: i64,
}

impl Position for RecordPosition {
    fn describe(&self, out: &mut Map<String, Json>) {
        out.insert("sequence_number".into(), Json::from(&*self.sequence));
        if let Some(sub) = self.sub_sequence {
            out.insert("sub_sequence_number".into(), Json::from(sub));
        }
        out.insert(
            "approximate_arrival_timestamp".into(),
            Json::from(shardlake::time::format_rfc3339_millis(self.arrival_ms)),
        );
    }

    fn key_part(&self) -> String {
        match self.sub_sequence {
            Some(sub) => format!("{}-{sub}", self.sequence),
            None => self.sequence.to_string(),
        }
    }
}

/// Flush thresholds of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Bytes held (buffered rows + encoded Parquet + finished files).
    pub max_bytes: usize,
    /// Kinesis user records.
    pub max_records: u64,
    /// Age of the first record.
    pub max_age: Duration,
}

// Why a batch was flushed is the label of the flush metric, so the names
// live with the metrics.
pub use crate::ops::metrics::FlushReason;

/// The batch holds `buffer.max_mb` or more.
pub fn should_flush_by_size(memory: usize, t: &Thresholds) -> bool {
    memory >= t.max_bytes
}

/// The batch holds `buffer.max_records` or more user records.
pub fn should_flush_by_records(records: u64, t: &Thresholds) -> bool {
    records >= t.max_records
}

/// The batch's first record arrived `max_age` or more ago.
pub fn should_flush_by_age(age: Duration, t: &Thresholds) -> bool {
    age >= t.max_age
}

/// The shared budget is exceeded and this batch is the largest, so flushing
/// it frees the most. A batch that alone overshoots the budget by a quarter
/// flushes whatever the others hold, so a stalled largest batch cannot block
/// the rest.
pub fn should_flush_by_memory(total: usize, budget: usize, mine: usize, largest: usize) -> bool {
    total > budget && mine > 0 && (mine >= largest || total > budget + budget / 4)
}

/// What [`ShardBatch::push`] did with a record.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    /// It is in the batch.
    Added,
    /// It is not: it carries fields that become these columns, so it
    /// belongs to a batch of the next schema version.
    NeedsColumns(Vec<Column>),
}

/// The records of one shard between two flushes.
pub struct ShardBatch {
    pipeline: Pipeline<RecordPosition>,
    /// The schema version the files are written with.
    version: u32,
    /// New top-level fields seen (`evolve`; `None` otherwise and in replays).
    watch: Option<FieldWatch>,
    /// Files finished early (a partition reached the target size).
    ready: Vec<OutputObject>,
    ready_bytes: usize,
    first: Option<Arc<str>>,
    last: Option<Arc<str>>,
    /// Kinesis records (an aggregate counts once).
    kinesis_records: u64,
    /// User records (after deaggregation).
    user_records: u64,
    started: Option<Instant>,
}

impl ShardBatch {
    /// An empty batch of schema `version` whose files are named
    /// `{stream}-{shard}-{first}-{last}`; with a `watch`, a record with new
    /// fields can end it (see [`Pushed::NeedsColumns`]).
    pub fn new(version: &Version, watch: Option<FieldWatch>, stream: &str, shard: &str) -> Self {
        let mut common = Map::new();
        common.insert("stream".into(), Json::from(stream));
        common.insert("shard_id".into(), Json::from(shard));
        ShardBatch {
            pipeline: Pipeline::new(version.spec.as_ref().clone(), format!("{stream}-{shard}"), common),
            version: version.number,
            watch,
            ready: Vec::new(),
            ready_bytes: 0,
            first: None,
            last: None,
            kinesis_records: 0,
            user_records: 0,
            started: None,
        }
    }

    /// Adds one Kinesis record, unpacking a KPL aggregate, unless it
    /// carries fields that become columns. CPU-bound: call it off the async
    /// threads.
    pub fn push(&mut self, record: &KinesisRecord) -> shardlake::Result<Pushed> {
        let sequence = record.sequence.clone();
        let mut pos = RecordPosition { sequence: sequence.clone(), sub_sequence: None, arrival_ms: record.arrival_ms };
        let unpacked = deaggregate(&record.data);
        if let Some(watch) = &mut self.watch {
            let columns = match &unpacked {
                None => watch.observe(&[&record.data]),
                Some(Ok(users)) => watch.observe(&users.iter().map(|u| &u.data[..]).collect::<Vec<_>>()),
                Some(Err(_)) => Vec::new(),
            };
            if !columns.is_empty() {
                return Ok(Pushed::NeedsColumns(columns));
            }
        }
        match unpacked {
            None => {
                self.user_records += 1;
                self.push_user_record(&record.data, &pos, record.arrival_ms)?;
            }
            Some(Ok(users)) if users.is_empty() => {
                // Valid, but nothing in it would otherwise leave a trace.
                self.user_records += 1;
                let why = "aggregated record holds no user records";
                self.pipeline.push_error(ErrorKind::UndecodableAggregate, why, &record.data, &pos);
            }
            Some(Ok(users)) => {
                for (i, user) in users.iter().enumerate() {
                    pos.sub_sequence = Some(i as u64);
                    self.user_records += 1;
                    self.push_user_record(&user.data, &pos, record.arrival_ms)?;
                }
            }
            Some(Err(e)) => {
                self.user_records += 1;
                self.pipeline.push_error(ErrorKind::UndecodableAggregate, &e.to_string(), &record.data, &pos);
            }
        }
        for out in self.pipeline.take_outputs() {
            self.ready_bytes += out.data.len();
            self.ready.push(out);
        }
        self.first.get_or_insert(sequence.clone());
        self.last = Some(sequence);
        self.kinesis_records += 1;
        self.started.get_or_insert_with(Instant::now);
        Ok(Pushed::Added)
    }

    /// Adds one Kinesis record whatever fields it has (new ones stay in
    /// `_extra`).
    pub fn take_as_is(&mut self, record: &KinesisRecord) -> shardlake::Result<()> {
        let watch = self.watch.take();
        let pushed = self.push(record);
        self.watch = watch;
        pushed.map(drop)
    }

    /// Whether a record with a due field may end the batch now (the
    /// worker may store a version, or a newer one exists); otherwise the
    /// field stays in `_extra` for it (see [`FieldWatch::set_open`]).
    pub fn set_evolve_open(&mut self, open: bool) {
        if let Some(watch) = &mut self.watch {
            watch.set_open(open);
        }
    }

    /// What the watch kept out of columns since last asked.
    pub fn take_watch_counts(&mut self) -> shardlake::schema::WatchCounts {
        self.watch.as_mut().map(FieldWatch::take_counts).unwrap_or_default()
    }

    /// The schema version its files are written with.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// One user record into the pipeline. An empty or whitespace-only record
    /// is an error here (in a file it is a blank line, skipped): a producer
    /// sent it, so it must be accounted for.
    fn push_user_record(&mut self, data: &[u8], pos: &RecordPosition, arrival_ms: i64) -> shardlake::Result<()> {
        if data.iter().all(u8::is_ascii_whitespace) {
            let why = "record is empty or only whitespace";
            self.pipeline.push_error(ErrorKind::InvalidJson, why, data, pos);
            return Ok(());
        }
        self.pipeline.push(data, pos, Some(arrival_ms))
    }

    /// No records yet.
    pub fn is_empty(&self) -> bool {
        self.kinesis_records == 0
    }

    /// Bytes held: open partitions, open error files and finished files.
    pub fn memory(&self) -> usize {
        self.pipeline.memory() + self.ready_bytes
    }

    /// The flush rule that fires now, if any.
    pub fn due(&self, t: &Thresholds) -> Option<FlushReason> {
        if self.is_empty() {
            return None;
        }
        if should_flush_by_size(self.memory(), t) {
            Some(FlushReason::Size)
        } else if should_flush_by_records(self.user_records, t) {
            Some(FlushReason::Records)
        } else if should_flush_by_age(self.started.map_or(Duration::ZERO, |s| s.elapsed()), t) {
            Some(FlushReason::Age)
        } else {
            None
        }
    }

    /// Sequence numbers of the first and last Kinesis records, and the count.
    pub fn range(&self) -> Option<(SequenceNumber, SequenceNumber, u64)> {
        Some((self.first.as_deref()?.into(), self.last.as_deref()?.into(), self.kinesis_records))
    }

    /// Finishes every file. CPU-bound: call it off the async threads.
    pub fn finish(mut self) -> shardlake::Result<FinishedBatch> {
        self.pipeline.finish_all()?;
        let mut objects = self.ready;
        objects.extend(self.pipeline.take_outputs());
        Ok(FinishedBatch { objects, stats: self.pipeline.stats(), user_records: self.user_records })
    }
}

/// The files of a batch, ready to upload.
pub struct FinishedBatch {
    /// Data and error files under deterministic keys.
    pub objects: Vec<OutputObject>,
    /// Record counters.
    pub stats: PipelineStats,
    /// User records in the batch.
    pub user_records: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { max_bytes: 1000, max_records: 10, max_age: Duration::from_secs(5) };

    #[test]
    fn flush_when_size_reached() {
        assert!(!should_flush_by_size(999, &T));
        assert!(should_flush_by_size(1000, &T));
    }

    #[test]
    fn flush_when_record_count_reached() {
        assert!(!should_flush_by_records(9, &T));
        assert!(should_flush_by_records(10, &T));
    }

    #[test]
    fn flush_when_latency_expires() {
        assert!(!should_flush_by_age(Duration::from_millis(4999), &T));
        assert!(should_flush_by_age(Duration::from_secs(5), &T));
    }

    #[test]
    fn flush_largest_batch_when_memory_budget_full() {
        // Under budget: nobody flushes.
        assert!(!should_flush_by_memory(90, 100, 60, 60));
        // Over budget: only the largest.
        assert!(should_flush_by_memory(110, 100, 60, 60));
        assert!(!should_flush_by_memory(110, 100, 50, 60));
        // Far over budget: everyone with data.
        assert!(should_flush_by_memory(130, 100, 10, 60));
        assert!(!should_flush_by_memory(130, 100, 0, 60));
    }
}
