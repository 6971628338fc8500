//! Reading the lake back: a watcher that reads each new Parquet file once,
//! to time when each event became readable, and the final verification, a
//! fresh read of every data and error file that counts each event id.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use arrow_array::{Array, Int64Array, StringArray, TimestampMillisecondArray};
use bytes::Bytes;
use hdrhistogram::Histogram;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use shardlake::store::ObjectStore;

use crate::events::EventMaker;

/// One row as the harness needs it.
struct Row {
    id: String,
    sent_ms: i64,
    ts_ms: Option<i64>,
}

/// Reads the event id, send time and event time of every row of a file.
fn read_rows(data: Vec<u8>) -> anyhow::Result<Vec<Row>> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(data))?;
    let wanted = ["event_id", "loadtest_sent_ms", "ts"];
    let mask = ProjectionMask::columns(builder.parquet_schema(), wanted);
    let mut rows = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let column = |name: &str| batch.column_by_name(name).with_context(|| format!("no column {name}"));
        let ids = column("event_id")?.as_any().downcast_ref::<StringArray>().context("event_id is not a string")?;
        let sent = column("loadtest_sent_ms")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("loadtest_sent_ms is not a bigint")?;
        let ts =
            column("ts")?.as_any().downcast_ref::<TimestampMillisecondArray>().context("ts is not a timestamp(ms)")?;
        for i in 0..batch.num_rows() {
            rows.push(Row {
                id: ids.value(i).to_string(),
                sent_ms: sent.value(i),
                ts_ms: (!ts.is_null(i)).then(|| ts.value(i)),
            });
        }
    }
    Ok(rows)
}

fn is_data_file(key: &str, error_prefix: &str) -> bool {
    key.ends_with(".parquet") && !key.starts_with(error_prefix) && !key.split('/').any(|p| p.starts_with('.'))
}

/// The hive folders the default template gives an event time.
fn partition_of(ts_ms: i64) -> String {
    let t = chrono::DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
    t.format("year=%Y/month=%m/day=%d/hour=%H/").to_string()
}

/// Watches the lake: each new data file is read once; the first time an
/// event is seen, its end-to-end latency (now − its send time) is recorded.
pub struct Watcher {
    store: ObjectStore,
    error_prefix: String,
    read: HashSet<String>,
    seen: HashSet<u64>,
    /// End-to-end latency of every event seen, ms.
    pub latency_ms: Histogram<u64>,
    /// Same, since the last [`Watcher::take_interval`].
    interval_ms: Histogram<u64>,
    /// Rows read, duplicates included.
    pub rows: u64,
}

impl Watcher {
    /// A watcher of `store`, ignoring `error_prefix`.
    pub fn new(store: ObjectStore, error_prefix: &str) -> Self {
        Watcher {
            store,
            error_prefix: error_prefix.to_string(),
            read: HashSet::new(),
            seen: HashSet::new(),
            latency_ms: ms_histogram(),
            interval_ms: ms_histogram(),
            rows: 0,
        }
    }

    /// Distinct events of this run seen so far.
    pub fn distinct(&self) -> usize {
        self.seen.len()
    }

    /// Whether event `seq` of this run was seen.
    pub fn has_seen(&self, seq: u64) -> bool {
        self.seen.contains(&seq)
    }

    /// Reads the files that appeared since the last poll.
    pub async fn poll(&mut self, maker: &EventMaker) -> anyhow::Result<()> {
        let mut keys = self.store.list("").await?;
        keys.retain(|k| is_data_file(k, &self.error_prefix) && !self.read.contains(k));
        for key in keys {
            let rows = read_rows(self.store.get(&key).await?).with_context(|| self.store.url(&key))?;
            let now = crate::drive::now_ms();
            for row in rows {
                self.rows += 1;
                if let Some(seq) = maker.seq_of(&row.id)
                    && self.seen.insert(seq)
                {
                    let ms = (now - row.sent_ms).max(1) as u64;
                    self.latency_ms.saturating_record(ms);
                    self.interval_ms.saturating_record(ms);
                }
            }
            self.read.insert(key);
        }
        Ok(())
    }

    /// The latency histogram since the last call, then resets it.
    pub fn take_interval(&mut self) -> Histogram<u64> {
        std::mem::replace(&mut self.interval_ms, ms_histogram())
    }
}

fn ms_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 24 * 3_600_000, 3).expect("valid bounds")
}

/// What the final read of the lake found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Verdict {
    /// Acknowledged events.
    pub acked: u64,
    /// Distinct acknowledged events found in the lake.
    pub found: u64,
    /// Acknowledged but in neither the lake nor the error output.
    pub lost: u64,
    /// Extra copies (an event in the lake n times counts n − 1).
    pub duplicated: u64,
    /// In the error output instead of the lake.
    pub errored: u64,
    /// In a partition its event time does not belong to.
    pub misrouted: u64,
    /// Events in the lake whose send failed (ambiguous failures such as a
    /// time-out after Kinesis stored the record; not an error).
    pub unacked_present: u64,
    /// Data files and error files read.
    pub data_files: u64,
    pub error_files: u64,
    /// A few ids of each problem.
    pub examples: HashMap<String, Vec<String>>,
}

impl Verdict {
    /// Nothing lost, duplicated, errored or misrouted.
    pub fn exactly_once(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.errored == 0 && self.misrouted == 0
    }

    fn example(&mut self, what: &str, id: String) {
        let list = self.examples.entry(what.to_string()).or_default();
        if list.len() < 5 {
            list.push(id);
        }
    }
}

/// Reads every data and error file of the lake afresh and checks each
/// acknowledged event (`acked`, sorted) is there exactly once.
pub async fn verify(
    store: &ObjectStore,
    error_prefix: &str,
    maker: &EventMaker,
    acked: &[u64],
) -> anyhow::Result<Verdict> {
    let mut v = Verdict { acked: acked.len() as u64, ..Verdict::default() };
    let mut counts: HashMap<u64, u32> = HashMap::with_capacity(acked.len());
    let mut errored: HashSet<u64> = HashSet::new();
    for key in store.list("").await? {
        if is_data_file(&key, error_prefix) {
            v.data_files += 1;
            let rows = read_rows(store.get(&key).await?).with_context(|| store.url(&key))?;
            for row in rows {
                let Some(seq) = maker.seq_of(&row.id) else { continue };
                *counts.entry(seq).or_default() += 1;
                if let Some(ts) = row.ts_ms
                    && !key.contains(&partition_of(ts))
                {
                    v.misrouted += 1;
                    v.example("misrouted", format!("{} in {key}", row.id));
                }
            }
        } else if key.starts_with(error_prefix) && !key.split('/').any(|p| p.starts_with('.')) {
            v.error_files += 1;
            let text = String::from_utf8_lossy(&store.get(&key).await?).into_owned();
            for line in text.lines() {
                let Ok(err) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                let raw = err["raw"].as_str().unwrap_or_default();
                let id = serde_json::from_str::<serde_json::Value>(raw)
                    .ok()
                    .and_then(|r| r["event_id"].as_str().map(str::to_string));
                if let Some(seq) = id.as_deref().and_then(|id| maker.seq_of(id)) {
                    errored.insert(seq);
                    v.example("errored", format!("{}: {}", id.unwrap_or_default(), err["error_message"]));
                }
            }
        }
    }
    let acked_set: HashSet<u64> = acked.iter().copied().collect();
    for &seq in acked {
        match counts.get(&seq) {
            Some(&n) => {
                v.found += 1;
                if n > 1 {
                    v.duplicated += u64::from(n - 1);
                    v.example("duplicated", format!("{} ×{n}", maker.id(seq)));
                }
            }
            None if errored.contains(&seq) => v.errored += 1,
            None => {
                v.lost += 1;
                v.example("lost", maker.id(seq));
            }
        }
    }
    for (&seq, &n) in &counts {
        if !acked_set.contains(&seq) {
            v.unacked_present += 1;
            if n > 1 {
                v.duplicated += u64::from(n - 1);
                v.example("duplicated", format!("{} ×{n} (send failed)", maker.id(seq)));
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_the_default_template_in_utc() {
        assert_eq!(partition_of(1_795_000_000_123), "year=2026/month=11/day=18/hour=11/");
        assert!(is_data_file("year=2026/month=11/day=18/hour=08/a.parquet", "errors/"));
        assert!(!is_data_file("errors/type_mismatch/a.parquet", "errors/"));
        assert!(!is_data_file("year=2026/.a.parquet.tmp", "errors/"));
        assert!(!is_data_file("year=2026/.a.parquet", "errors/"));
    }
}
