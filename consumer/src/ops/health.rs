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
    /// The latest failure of the run.
    last: Instant,
    error: String,
}

/// A run of throttles ends this long after the last one: a throttled shard
/// still reads now and then, so a success alone does not end it.
const THROTTLE_QUIET: Duration = Duration::from_secs(5);

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
    /// Throttled reads, kept apart: they end only after [`THROTTLE_QUIET`].
    throttled: Option<Failing>,
    /// Since when a batch's uploads run, and to where.
    uploading: Option<(Instant, String)>,
}

impl ShardHealth {
    /// A reader starting now, with `failing` carried over.
    fn started(now: Instant, failing: BTreeMap<&'static str, Failing>) -> Self {
        ShardHealth {
            read_ok: now,
            lag_ms: None,
            committed: now,
            buffered_since: None,
            failing,
            throttled: None,
            uploading: None,
        }
    }
}

/// Records a failure of `what` in a call that started at `since`: a new run
/// starts then, or the running one keeps its first time and takes the
/// latest error. (A call that the SDK retried inside, or that hung until
/// its timeout, has been failing since it started, not since it returned.)
fn note_failure(
    failing: &mut BTreeMap<&'static str, Failing>,
    what: &'static str,
    since: Instant,
    error: &dyn std::fmt::Display,
) {
    let (error, now) = (error.to_string(), Instant::now());
    failing
        .entry(what)
        .and_modify(|f| {
            f.error.clone_from(&error);
            f.last = now;
        })
        .or_insert(Failing { since: since.min(now), last: now, error });
}

/// What a shard's gauges show now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardGauges {
    /// Seconds since the last commit.
    pub checkpoint_age_secs: u64,
    /// MillisBehindLatest at the last read plus the time since it, so lag
    /// keeps growing while reads fail.
    pub millis_behind: Option<i64>,
    /// Seconds before the shard's oldest unread record ages out of the
    /// stream (its retention less the lag); `None` until both are known.
    pub retention_headroom_secs: Option<i64>,
}

/// The health of every reader and of the worker's own loops.
pub struct Health {
    stall_after: Duration,
    failing_after: Duration,
    max_age: Duration,
    shards: Mutex<HashMap<String, ShardHealth>>,
    worker: Mutex<BTreeMap<&'static str, Failing>>,
    /// Records lost to the lake (trimmed unread), one line each: reported
    /// until the worker restarts, which is how an operator acknowledges them.
    losses: Mutex<Vec<String>>,
    /// The stream's retention and how close to it a shard's lag may come.
    retention: Mutex<Option<(Duration, Duration)>>,
}

fn fmt_secs(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

fn fmt_hours(d: Duration) -> String {
    format!("{:.1}h", d.as_secs_f64() / 3600.0)
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
            losses: Mutex::new(Vec::new()),
            retention: Mutex::new(None),
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
        note_failure(&mut s.failing, "reader", Instant::now(), error);
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
            s.uploading = None;
            s.failing.remove("upload");
            s.failing.remove("checkpoint");
        });
    }

    /// A batch's uploads to `destination` start: a flush that has not
    /// landed after `failing_after` is a problem even while no attempt has
    /// failed yet (a slow link, a hung connection).
    pub fn uploading(&self, shard: &str, destination: &str) {
        self.with_shard(shard, |s| s.uploading = Some((Instant::now(), destination.to_string())));
    }

    /// The batch's uploads landed (the commit may still fail).
    pub fn uploaded(&self, shard: &str) {
        self.with_shard(shard, |s| {
            s.uploading = None;
            s.failing.remove("upload");
        });
    }

    /// `what` (`read`, `upload`, `checkpoint`, `reader`) failed for `shard`; the run of
    /// failures keeps its first time.
    pub fn failed(&self, shard: &str, what: &'static str, error: &dyn std::fmt::Display) {
        self.failed_since(shard, what, Instant::now(), error);
    }

    /// [`Health::failed`] for a call that started at `since`.
    pub fn failed_since(&self, shard: &str, what: &'static str, since: Instant, error: &dyn std::fmt::Display) {
        self.with_shard(shard, |s| note_failure(&mut s.failing, what, since, error));
    }

    /// A read of `shard` was throttled. Throttling that lasts
    /// `failing_after` is a problem until [`THROTTLE_QUIET`] passes without
    /// one, successes in between or not.
    pub fn throttled(&self, shard: &str, error: &dyn std::fmt::Display) {
        self.with_shard(shard, |s| {
            let now = Instant::now();
            match &mut s.throttled {
                Some(t) if now - t.last < THROTTLE_QUIET => {
                    t.last = now;
                    t.error = error.to_string();
                }
                t => *t = Some(Failing { since: now, last: now, error: error.to_string() }),
            }
        });
    }

    /// A worker loop's `what` (`listing`, `checkpoint_load`, `lease_renewal`) failed.
    pub fn worker_failed(&self, what: &'static str, error: &dyn std::fmt::Display) {
        self.worker_failed_since(what, Instant::now(), error);
    }

    /// [`Health::worker_failed`] for a call that started at `since`.
    pub fn worker_failed_since(&self, what: &'static str, since: Instant, error: &dyn std::fmt::Display) {
        note_failure(&mut self.worker.lock().expect("health lock"), what, since, error);
    }

    /// A worker loop's `what` succeeded.
    pub fn worker_ok(&self, what: &'static str) {
        self.worker.lock().expect("health lock").remove(what);
    }

    /// The stream keeps records for `retention`: a shard lagging within
    /// `margin` of it (at most half of it) is a problem.
    pub fn set_retention(&self, retention: Duration, margin: Duration) {
        *self.retention.lock().expect("health lock") = Some((retention, margin.min(retention / 2)));
    }

    /// Records of `shard` were lost to the lake: a problem until restart.
    pub fn lost(&self, shard: &str, what: &str) {
        self.losses.lock().expect("health lock").push(format!("shard {shard}: {what}"));
    }

    /// Every reason the worker is unhealthy now, one line each, naming the
    /// shard or dependency; empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        let now = Instant::now();
        let mut out = self.losses.lock().expect("health lock").clone();
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
            if let Some(t) = &s.throttled
                && now - t.last < THROTTLE_QUIET
                && now - t.since >= self.failing_after
            {
                out.push(format!("shard {id}: reads throttled for {}: {}", fmt_secs(now - t.since), t.error));
                failing_reported = true;
            }
            if let Some((retention, margin)) = *self.retention.lock().expect("health lock")
                && let Some(lag) = s.lag_ms
            {
                let behind = Duration::from_millis((lag.max(0) as u64) + (now - s.read_ok).as_millis() as u64);
                if behind + margin >= retention {
                    out.push(format!(
                        "shard {id}: {} behind, within {} of the stream's {} retention: records will age out unread",
                        fmt_hours(behind),
                        fmt_hours(retention.saturating_sub(behind)),
                        fmt_hours(retention)
                    ));
                }
            }
            if failing_reported {
                continue;
            }
            if let Some((since, destination)) = &s.uploading {
                // The reader does not read while it flushes: a slow flush is
                // the upload's problem, not a stalled read.
                if now - *since >= self.failing_after {
                    out.push(format!(
                        "shard {id}: a batch's upload to {destination} has not landed after {}",
                        fmt_secs(now - *since)
                    ));
                }
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
        let retention = self.retention.lock().expect("health lock").map(|(r, _)| r.as_secs() as i64);
        let shards = self.shards.lock().expect("health lock");
        shards
            .iter()
            .map(|(id, s)| {
                let millis_behind = s.lag_ms.map(|lag| lag + (now - s.read_ok).as_millis() as i64);
                let gauges = ShardGauges {
                    checkpoint_age_secs: (now - s.committed).as_secs(),
                    millis_behind,
                    retention_headroom_secs: retention.zip(millis_behind).map(|(r, lag)| r - lag / 1000),
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
            [(
                "s-2".to_string(),
                ShardGauges { checkpoint_age_secs: 30, millis_behind: Some(31_000), retention_headroom_secs: None }
            )]
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
    async fn throttling_that_lasts_is_a_problem_while_it_lasts_successes_or_not() {
        let h = health();
        h.reader_started("s-5");
        // 90% throttled: a read gets through now and then.
        for i in 0..70 {
            if i % 10 == 9 {
                h.read_ok("s-5", Some(0), true);
            } else {
                h.throttled("s-5", &"ProvisionedThroughputExceededException");
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(h.problems(), ["shard s-5: reads throttled for 70s: ProvisionedThroughputExceededException"]);
        // The throttling ends: the problem goes within THROTTLE_QUIET.
        for _ in 0..6 {
            h.read_ok("s-5", Some(0), true);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(h.problems().is_empty());
        // A new run counts from its own start.
        h.throttled("s-5", &"again");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(h.problems().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_flush_that_does_not_land_is_reported_by_destination_not_as_a_stalled_read() {
        let h = health();
        h.reader_started("s-6");
        h.read_ok("s-6", Some(0), true);
        h.uploading("s-6", "s3://lake/events/");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(h.problems().is_empty());
        tokio::time::advance(Duration::from_secs(91)).await;
        assert_eq!(h.problems(), ["shard s-6: a batch's upload to s3://lake/events/ has not landed after 150s"]);
        h.uploaded("s-6");
        h.committed("s-6");
        h.read_ok("s-6", Some(0), false);
        assert!(h.problems().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_counts_from_when_its_call_started() {
        let h = health();
        let started = Instant::now();
        // The client retried inside for 45 s before the call failed.
        tokio::time::advance(Duration::from_secs(45)).await;
        h.worker_failed_since("lease_renewal", started, &"timeout");
        tokio::time::advance(Duration::from_secs(16)).await;
        assert_eq!(h.problems(), ["worker: lease_renewal failing for 61s: timeout"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_lagging_close_to_the_retention_is_reported_before_records_age_out() {
        let h = health();
        h.set_retention(Duration::from_secs(24 * 3600), Duration::from_secs(6 * 3600));
        h.reader_started("s-7");
        h.read_ok("s-7", Some(17 * 3600 * 1000), true);
        assert_eq!(h.gauges()[0].1.retention_headroom_secs, Some(7 * 3600));
        assert!(h.problems().is_empty());
        h.read_ok("s-7", Some(19 * 3600 * 1000), true);
        assert_eq!(
            h.problems(),
            ["shard s-7: 19.0h behind, within 5.0h of the stream's 24.0h retention: records will age out unread"]
        );
        h.read_ok("s-7", Some(0), false);
        assert!(h.problems().is_empty());
        // A margin larger than the retention allows is cut to half of it.
        h.set_retention(Duration::from_secs(4 * 3600), Duration::from_secs(6 * 3600));
        h.read_ok("s-7", Some(3600 * 1000), false);
        assert!(h.problems().is_empty());
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
