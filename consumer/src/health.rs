//! What `/healthz` and the time-based gauges are computed from: per shard,
//! when a read last succeeded, when it last committed, since when it holds
//! uncommitted records and what has been failing since when; per worker,
//! which dependency (listing, checkpoint loads, lease renewals) has been
//! failing since when. Everything is judged against the wall clock when
//! asked, so an outage shows even when no call returns at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A run of failures of one kind, from its first to now.
#[derive(Debug, Clone)]
struct Failing {
    since: Instant,
    error: String,
}

/// One shard reader's state.
#[derive(Debug, Clone)]
struct ShardHealth {
    /// The last successful read (or the reader's start).
    read_ok: Instant,
    /// MillisBehindLatest of that read.
    lag_ms: Option<i64>,
    /// The last commit (or the reader's start).
    committed: Instant,
    /// When the oldest uncommitted record was read; `None` with no batch.
    buffered_since: Option<Instant>,
    /// Failing operations of this shard (`read`, `upload`, `checkpoint`).
    failing: BTreeMap<&'static str, Failing>,
}

impl ShardHealth {
    /// A reader starting now, with `failing` carried over.
    fn started(now: Instant, failing: BTreeMap<&'static str, Failing>) -> Self {
        ShardHealth { read_ok: now, lag_ms: None, committed: now, buffered_since: None, failing }
    }
}

/// Records a failure of `what`: a new run starts now, or the running one
/// keeps its first time and takes the latest error.
fn note_failure(failing: &mut BTreeMap<&'static str, Failing>, what: &'static str, error: &dyn std::fmt::Display) {
    let error = error.to_string();
    failing.entry(what).and_modify(|f| f.error.clone_from(&error)).or_insert(Failing { since: Instant::now(), error });
}

/// What a shard's gauges show now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardGauges {
    /// Seconds since the last commit.
    pub checkpoint_age_secs: u64,
    /// MillisBehindLatest at the last read plus the time since it, so lag
    /// keeps growing while reads fail.
    pub millis_behind: Option<i64>,
}

/// The health of every reader and of the worker's own loops.
pub struct Health {
    stall_after: Duration,
    failing_after: Duration,
    max_age: Duration,
    shards: Mutex<HashMap<String, ShardHealth>>,
    worker: Mutex<BTreeMap<&'static str, Failing>>,
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

impl Health {
    /// A shard is stalled after `stall_after` without a read, or `stall_after`
    /// past `max_age` with records and no commit; any failure lasting
    /// `failing_after` is unhealthy.
    pub fn new(stall_after: Duration, failing_after: Duration, max_age: Duration) -> Self {
        Health {
            stall_after,
            failing_after,
            max_age,
            shards: Mutex::new(HashMap::new()),
            worker: Mutex::new(BTreeMap::new()),
        }
    }

    fn with_shard(&self, shard: &str, f: impl FnOnce(&mut ShardHealth)) {
        if let Some(s) = self.shards.lock().expect("health lock").get_mut(shard) {
            f(s);
        }
    }

    /// A reader started: its clocks start now. A failure of its previous
    /// reader stays until this one reads.
    pub fn reader_started(&self, shard: &str) {
        let now = Instant::now();
        let mut shards = self.shards.lock().expect("health lock");
        let failing = shards.remove(shard).map(|s| s.failing).unwrap_or_default();
        shards.insert(shard.to_string(), ShardHealth::started(now, failing));
    }

    /// A reader ended, lost its lease or stopped: the shard is no concern.
    pub fn reader_stopped(&self, shard: &str) {
        self.shards.lock().expect("health lock").remove(shard);
    }

    /// A reader failed and waits to restart: the failure counts from the
    /// first of the run, and nothing of the shard is read meanwhile.
    pub fn reader_failed(&self, shard: &str, error: &dyn std::fmt::Display) {
        let mut shards = self.shards.lock().expect("health lock");
        let s =
            shards.entry(shard.to_string()).or_insert_with(|| ShardHealth::started(Instant::now(), BTreeMap::new()));
        note_failure(&mut s.failing, "reader", error);
    }

    /// A read succeeded; `records` read into the batch.
    pub fn read_ok(&self, shard: &str, lag_ms: Option<i64>, records: bool) {
        self.with_shard(shard, |s| {
            let now = Instant::now();
            s.read_ok = now;
            if lag_ms.is_some() {
                s.lag_ms = lag_ms;
            }
            if records && s.buffered_since.is_none() {
                s.buffered_since = Some(now);
            }
            s.failing.remove("read");
            s.failing.remove("reader");
        });
    }

    /// A batch was committed: nothing is buffered and writes work.
    pub fn committed(&self, shard: &str) {
        self.with_shard(shard, |s| {
            s.committed = Instant::now();
            s.buffered_since = None;
            s.failing.remove("upload");
            s.failing.remove("checkpoint");
        });
    }

    /// An upload succeeded (the commit may still fail).
    pub fn uploaded(&self, shard: &str) {
        self.with_shard(shard, |s| {
            s.failing.remove("upload");
        });
    }

    /// `what` (`read`, `upload`, `checkpoint`, `reader`) failed for `shard`; the run of
    /// failures keeps its first time.
    pub fn failed(&self, shard: &str, what: &'static str, error: &dyn std::fmt::Display) {
        self.with_shard(shard, |s| note_failure(&mut s.failing, what, error));
    }

    /// A worker loop's `what` (`listing`, `checkpoint_load`, `lease_renewal`) failed.
    pub fn worker_failed(&self, what: &'static str, error: &dyn std::fmt::Display) {
        note_failure(&mut self.worker.lock().expect("health lock"), what, error);
    }

    /// A worker loop's `what` succeeded.
    pub fn worker_ok(&self, what: &'static str) {
        self.worker.lock().expect("health lock").remove(what);
    }

    /// Every reason the worker is unhealthy now, one line each, naming the
    /// shard or dependency; empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (what, f) in self.worker.lock().expect("health lock").iter() {
            let for_ = now - f.since;
            if for_ >= self.failing_after {
                out.push(format!("worker: {what} failing for {}: {}", fmt_secs(for_), f.error));
            }
        }
        let shards = self.shards.lock().expect("health lock");
        let mut ids: Vec<&String> = shards.keys().collect();
        ids.sort();
        for id in ids {
            let s = &shards[id];
            let mut failing_reported = false;
            for (what, f) in &s.failing {
                let for_ = now - f.since;
                if for_ >= self.failing_after {
                    out.push(format!("shard {id}: {what} failing for {}: {}", fmt_secs(for_), f.error));
                    failing_reported = true;
                }
            }
            if failing_reported {
                continue;
            }
            let unread = now - s.read_ok;
            if unread >= self.stall_after {
                out.push(format!("shard {id}: no successful read for {}", fmt_secs(unread)));
            } else if let Some(since) = s.buffered_since
                && now - since >= self.max_age + self.stall_after
            {
                out.push(format!(
                    "shard {id}: records waiting {} without a commit (buffer.max_age is {})",
                    fmt_secs(now - since),
                    fmt_secs(self.max_age)
                ));
            }
        }
        out
    }

    /// Each reading shard's gauges now.
    pub fn gauges(&self) -> Vec<(String, ShardGauges)> {
        let now = Instant::now();
        let shards = self.shards.lock().expect("health lock");
        shards
            .iter()
            .map(|(id, s)| {
                let gauges = ShardGauges {
                    checkpoint_age_secs: (now - s.committed).as_secs(),
                    millis_behind: s.lag_ms.map(|lag| lag + (now - s.read_ok).as_millis() as i64),
                };
                (id.clone(), gauges)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(Duration::from_secs(120), Duration::from_secs(60), Duration::from_secs(300))
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upload_is_reported_after_the_threshold_and_cleared_by_a_commit() {
        let h = health();
        h.reader_started("s-1");
        h.read_ok("s-1", Some(0), true);
        h.failed("s-1", "upload", &"SlowDown");
        tokio::time::advance(Duration::from_secs(59)).await;
        h.read_ok("s-1", Some(0), true);
        assert!(h.problems().is_empty());
        h.failed("s-1", "upload", &"InternalError");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(h.problems(), ["shard s-1: upload failing for 61s: InternalError"]);
        h.committed("s-1");
        assert!(h.problems().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_read_shows_as_a_stall_and_lag_and_age_grow_with_the_clock() {
        let h = health();
        h.reader_started("s-2");
        h.read_ok("s-2", Some(1_000), false);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            h.gauges(),
            [("s-2".to_string(), ShardGauges { checkpoint_age_secs: 30, millis_behind: Some(31_000) })]
        );
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(h.problems(), ["shard s-2: no successful read for 120s"]);
        h.reader_stopped("s-2");
        assert!(h.problems().is_empty() && h.gauges().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_failing_on_every_restart_counts_from_its_first_failure() {
        let h = health();
        for _ in 0..4 {
            h.reader_started("s-4");
            h.reader_failed("s-4", &"checkpoint store is read-only");
            tokio::time::advance(Duration::from_secs(20)).await;
        }
        assert_eq!(h.problems(), ["shard s-4: reader failing for 80s: checkpoint store is read-only"]);
        h.reader_started("s-4");
        h.read_ok("s-4", None, false);
        assert!(h.problems().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn records_held_past_max_age_plus_the_window_are_a_stall() {
        let h = health();
        h.reader_started("s-3");
        h.read_ok("s-3", Some(0), true);
        for _ in 0..42 {
            tokio::time::advance(Duration::from_secs(10)).await;
            h.read_ok("s-3", Some(0), false);
        }
        assert_eq!(h.problems(), ["shard s-3: records waiting 420s without a commit (buffer.max_age is 300s)"]);
    }

    #[tokio::test(start_paused = true)]
    async fn worker_loops_report_their_own_failures() {
        let h = health();
        h.worker_failed("checkpoint_load", &"InternalServerError");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(h.problems(), ["worker: checkpoint_load failing for 61s: InternalServerError"]);
        h.worker_ok("checkpoint_load");
        assert!(h.problems().is_empty());
    }
}
