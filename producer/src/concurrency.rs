//! Adaptive request concurrency (after Vector's ARC,
//! `src/sinks/util/adaptive_concurrency`): how many requests may be in flight
//! at once, and how long each may go unanswered.
//!
//! The limit follows AIMD. It starts at 1; once per round trip (one
//! "window", the length of the RTT baseline) it
//! - grows by 1 when the window's RTT is at or below the baseline (an
//!   EWMA of past windows), the limit was reached (there is demand for more)
//!   and nothing pushed back;
//! - shrinks to `limit × 0.9` (rounded down, at least 1 less) on back
//!   pressure (a whole-request throttle or 5xx, an entry throttled with
//!   `ProvisionedThroughputExceededException`, a timeout that no later
//!   request overtook) or when the window's RTT rose above the baseline by
//!   more than 2.5 standard deviations (and 5%): the endpoint is queueing
//!   requests, and more of them only adds latency.
//!
//! Two departures from Vector make scattered slow requests (a slow path, a
//! pause on one server: unrelated to load) cost throughput in proportion
//! rather than most of it. The window's RTT is the median of its answers,
//! not the mean, so one late answer among fast ones is not "rising latency".
//! And a timeout is back pressure only when no request sent after the
//! timed-out one has been answered yet: an overloaded endpoint serves its
//! queue in order and a stalled one answers nothing, while one that is
//! merely slow now and then answers later requests first. A request so
//! overtaken is left to its own timeout and
//! resend; the resend of a record whose request went unanswered waits twice
//! as long per earlier unanswered attempt ([`Controller::request_timeout_for`]),
//! and its last allowed attempt waits the ceiling, so a record on a slow path
//! still gets through, and one that reached the service is not sent again
//! and again.
//!
//! One addition to Vector's rules: the EWMA baseline follows the RTT up as
//! the limit grows, so against an endpoint that queues, a slow climb (each
//! step adding 1/limit to the RTT) never looks like rising latency. The
//! controller also keeps the lowest recent window RTT (the unloaded latency)
//! and cuts when a window takes 1.5 times that plus 10 ms. A window at limit
//! 1 resets it, so an endpoint that got slower for good is relearned.
//!
//! `max_concurrent_requests` is the ceiling. Against an endpoint that
//! serves one request at a time, a second concurrent request doubles the RTT
//! and the limit comes back down; against a fast one it climbs to the ceiling.
//!
//! The request timeout follows the baseline too: `4 × (mean + 2 × deviation)`,
//! clamped to `[min_request_timeout_ms, request_timeout_ms]`, doubled after
//! each timeout in a row, and the ceiling until the first answer.
//!
//! When requests time out one after another at a limit of 1, fewer requests
//! cannot help: the requests themselves are too big for the endpoint
//! (kinesis-local on a loaded machine takes over 10 s for 500 records). From
//! the second timeout in a row, each halves the batch share (the part of `max_batch_records` and `max_batch_bytes` a
//! request may carry), so requests come to fit the timeout instead of being
//! sent again whole, and every resend that the endpoint had in fact applied
//! duplicating its records. The share grows back by a quarter per window
//! while requests answer within a quarter of the ceiling timeout.
//!
//! The controller is a plain state machine fed with times, so it is tested on
//! tokio's paused clock without a network.

use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest window in the RTT baseline (Vector's `ewma_alpha`).
const EWMA_ALPHA: f64 = 0.4;
/// A window whose RTT exceeds the baseline by this many standard deviations
/// counts as back pressure (Vector's `rtt_deviation_scale`).
const RTT_DEVIATION_SCALE: f64 = 2.5;
/// Latency within this fraction of the baseline is never "rising", so a
/// perfectly steady endpoint (no deviation) is not cut for rounding noise.
const RTT_TOLERANCE: f64 = 0.05;
/// RTTs within this of the baseline (seconds) count as at the baseline.
const RTT_EPSILON: f64 = 1e-6;
/// A window whose RTT exceeds the unloaded RTT (the lowest recent window)
/// by this factor plus [`QUEUEING_SLACK`] means requests wait in a queue at
/// the endpoint about as long as they are served: cut.
const QUEUEING_FACTOR: f64 = 1.5;
/// Absolute slack over the unloaded RTT, so scheduling noise of a few
/// milliseconds on a fast endpoint does not count as queueing.
const QUEUEING_SLACK: f64 = 0.010;
/// Multiplicative decrease (Vector's `decrease_ratio`).
const DECREASE_RATIO: f64 = 0.9;
/// Requests may take this many times the baseline (plus two deviations)
/// before they time out: generous, because a timed-out request may still be
/// applied and its resend then duplicates its records.
const TIMEOUT_RTT_FACTOR: f64 = 4.0;
/// The smallest batch share: 1/512 of the configured batch (one record of
/// the default 500).
const MIN_BATCH_SHARE: f64 = 1.0 / 512.0;
/// Timeouts in a row (no answer between) at a limit of 1 before requests are
/// taken to be too big: one is as likely a scattered slow request.
const TIMEOUTS_BEFORE_SHRINKING: u32 = 2;
/// RTT samples kept per window for its median; a window rarely holds more
/// answers than the ceiling of requests in flight.
const WINDOW_SAMPLES: usize = 1024;
/// Growth of the batch share per window while requests answer fast.
const BATCH_SHARE_GROWTH: f64 = 1.25;
/// The batch share grows only while a request, grown by
/// [`BATCH_SHARE_GROWTH`], would answer within this part of the ceiling
/// timeout.
const BATCH_SHARE_RTT_PART: f64 = 0.25;

/// What a finished request tells the controller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// The endpoint answered after `rtt`; `back_pressure` when it throttled
    /// some or all of the request.
    Answered {
        /// Time from sending to the answer.
        rtt: Duration,
        /// The answer throttled the request or some of its entries.
        back_pressure: bool,
    },
    /// No answer within the request timeout.
    TimedOut {
        /// Time from sending to giving up.
        waited: Duration,
    },
    /// No usable answer for another reason (a connection error, a 5xx):
    /// back pressure without an RTT sample.
    Failed,
}

/// A change of the limit, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The limit grew to this value.
    Increased(usize),
    /// The limit shrank to this value.
    Decreased(usize),
}

/// An exponentially weighted mean and variance.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ewma {
    mean: f64,
    variance: f64,
}

impl Ewma {
    fn update(this: &mut Option<Ewma>, x: f64) {
        *this = Some(match *this {
            None => Ewma { mean: x, variance: 0.0 },
            Some(Ewma { mean, variance }) => {
                let diff = x - mean;
                let incr = EWMA_ALPHA * diff;
                Ewma { mean: mean + incr, variance: (1.0 - EWMA_ALPHA) * (variance + diff * incr) }
            }
        });
    }

    fn deviation(&self) -> f64 {
        self.variance.sqrt()
    }
}

/// The concurrency limit and request timeout of one producer.
#[derive(Debug)]
pub struct Controller {
    /// Requests allowed in flight now.
    limit: usize,
    /// `max_concurrent_requests`.
    ceiling: usize,
    /// Requests sent and not finished, to see whether the limit was reached.
    in_flight: usize,
    /// RTT baseline in seconds, from past windows; `None` before any answer.
    baseline: Option<Ewma>,
    /// The lowest recent window RTT in seconds: the endpoint's latency
    /// without queueing.
    unloaded: f64,
    /// The current window's RTTs, in seconds (answers to requests sent at
    /// the window's limit), for its median.
    window_rtts: Vec<f64>,
    /// When the latest-sent request that has been answered was sent: a
    /// timed-out request sent before it was overtaken.
    latest_answered_sent: Option<Instant>,
    /// When the current window closes.
    window_end: Instant,
    /// When the limit last changed: answers to requests sent before it
    /// measure the old limit, so they are left out of the window's RTT.
    last_change: Option<Instant>,
    /// Something pushed back during the current window.
    back_pressure: bool,
    /// `in_flight` reached `limit` during the current window.
    reached_limit: bool,
    /// Timeouts since the last answer; each doubles the request timeout.
    timeouts_in_a_row: u32,
    /// The part of the configured batch a request may carry, in
    /// `[MIN_BATCH_SHARE, 1]`.
    batch_share: f64,
    timeout_floor: Duration,
    timeout_ceiling: Duration,
}

impl Controller {
    /// A controller that allows 1 request at first and at most `ceiling`,
    /// with request timeouts between `timeout_floor` and `timeout_ceiling`
    /// (the floor is lowered to the ceiling if above it).
    pub fn new(ceiling: usize, timeout_floor: Duration, timeout_ceiling: Duration, now: Instant) -> Self {
        Controller {
            limit: 1,
            ceiling: ceiling.max(1),
            in_flight: 0,
            baseline: None,
            unloaded: f64::MAX,
            window_rtts: Vec::new(),
            latest_answered_sent: None,
            window_end: now,
            last_change: None,
            back_pressure: false,
            reached_limit: false,
            timeouts_in_a_row: 0,
            batch_share: 1.0,
            timeout_floor: timeout_floor.min(timeout_ceiling),
            timeout_ceiling,
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The RTT baseline, once an answer came.
    pub fn baseline(&self) -> Option<Duration> {
        self.baseline.map(|b| Duration::from_secs_f64(b.mean))
    }

    /// The part of `max_batch_records` and `max_batch_bytes` the next
    /// request may carry: 1 unless requests timed out at a limit of 1.
    pub fn batch_share(&self) -> f64 {
        self.batch_share
    }

    /// How long the next request may go unanswered.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout_for(0)
    }

    /// `request_timeout_ms`: the longest a request may go unanswered.
    pub fn timeout_ceiling(&self) -> Duration {
        self.timeout_ceiling
    }

    /// How long a request may go unanswered that resends records after
    /// `unanswered` earlier attempts of theirs went unanswered: doubled for
    /// each, within the ceiling. The first attempt is cut short to find a
    /// hung connection fast; a record that met a slow path gets more
    /// patience, so it is not resent (perhaps stored again) every floor.
    pub fn request_timeout_for(&self, unanswered: u32) -> Duration {
        let Some(b) = self.baseline else { return self.timeout_ceiling };
        let base = TIMEOUT_RTT_FACTOR * (b.mean + 2.0 * b.deviation());
        let base = Duration::try_from_secs_f64(base).unwrap_or(self.timeout_ceiling);
        let backed_off = base.max(self.timeout_floor).saturating_mul(1 << self.timeouts_in_a_row.min(16));
        let patient = backed_off.saturating_mul(1 << unanswered.min(16));
        patient.clamp(self.timeout_floor, self.timeout_ceiling)
    }

    /// A request was sent.
    pub fn on_send(&mut self) {
        self.in_flight += 1;
        if self.in_flight >= self.limit {
            self.reached_limit = true;
        }
    }

    /// A request finished; returns the change of the limit, if any. At most
    /// one change per window.
    pub fn on_finish(&mut self, now: Instant, signal: Signal) -> Option<Change> {
        self.in_flight = self.in_flight.saturating_sub(1);
        match signal {
            Signal::Answered { rtt, back_pressure } => {
                self.timeouts_in_a_row = 0;
                self.back_pressure |= back_pressure;
                let sent = now.checked_sub(rtt);
                self.latest_answered_sent = self.latest_answered_sent.max(sent);
                if self.last_change.is_none_or(|changed| now.checked_sub(rtt).is_none_or(|sent| sent >= changed))
                    && self.window_rtts.len() < WINDOW_SAMPLES
                {
                    self.window_rtts.push(rtt.as_secs_f64());
                }
            }
            Signal::TimedOut { waited } => {
                self.timeouts_in_a_row = self.timeouts_in_a_row.saturating_add(1);
                let sent = now.checked_sub(waited);
                let overtaken = self.latest_answered_sent.is_some_and(|answered| sent.is_some_and(|s| s < answered));
                self.back_pressure |= !overtaken;
                if self.limit == 1 && self.timeouts_in_a_row >= TIMEOUTS_BEFORE_SHRINKING {
                    self.batch_share = (self.batch_share / 2.0).max(MIN_BATCH_SHARE);
                }
            }
            Signal::Failed => self.back_pressure = true,
        }
        let window_rtt = self.window_median();
        let Some(baseline) = self.baseline else {
            // The first answer sets the baseline and opens the first window;
            // back pressure before it still cuts the limit.
            if let Some(rtt) = window_rtt {
                Ewma::update(&mut self.baseline, rtt);
                self.unloaded = rtt;
                self.start_window(now, rtt);
            }
            return None;
        };
        if now < self.window_end {
            return None;
        }
        let change = self.adjust(baseline, window_rtt);
        if change.is_some() {
            self.last_change = Some(now);
        }
        if let Some(rtt) = window_rtt {
            let grown_rtt = rtt * BATCH_SHARE_GROWTH;
            if self.batch_share < 1.0
                && !self.back_pressure
                && grown_rtt <= BATCH_SHARE_RTT_PART * self.timeout_ceiling.as_secs_f64()
            {
                self.batch_share = (self.batch_share * BATCH_SHARE_GROWTH).min(1.0);
            }
            Ewma::update(&mut self.baseline, rtt);
            // One request at a time cannot queue behind our own: that RTT is
            // the unloaded one, even if the endpoint got slower for good.
            self.unloaded = if self.limit == 1 { rtt } else { rtt.min(self.unloaded) };
        }
        let mean = self.baseline.map_or(0.0, |b| b.mean);
        self.start_window(now, mean);
        change
    }

    fn adjust(&mut self, baseline: Ewma, window_rtt: Option<f64>) -> Option<Change> {
        let allowance = (RTT_DEVIATION_SCALE * baseline.deviation()).max(RTT_TOLERANCE * baseline.mean);
        let threshold = baseline.mean + allowance;
        let queueing = self.unloaded * QUEUEING_FACTOR + QUEUEING_SLACK;
        let rising = window_rtt.is_some_and(|rtt| rtt > threshold || rtt > queueing);
        if self.limit > 1 && (self.back_pressure || rising) {
            let lower = ((self.limit as f64 * DECREASE_RATIO) as usize).clamp(1, self.limit - 1);
            self.limit = lower;
            return Some(Change::Decreased(lower));
        }
        let fast = window_rtt.is_some_and(|rtt| rtt <= baseline.mean + RTT_EPSILON);
        if self.limit < self.ceiling && self.reached_limit && !self.back_pressure && fast {
            self.limit += 1;
            return Some(Change::Increased(self.limit));
        }
        None
    }

    /// The median of the window's RTTs: slow answers among fast ones do
    /// not move it while they are fewer; a queue that slows every answer does.
    fn window_median(&mut self) -> Option<f64> {
        let n = self.window_rtts.len();
        if n == 0 {
            return None;
        }
        let (below, upper, _) = self.window_rtts.select_nth_unstable_by(n / 2, f64::total_cmp);
        let upper = *upper;
        if n % 2 == 1 {
            return Some(upper);
        }
        let lower = below.iter().copied().fold(f64::MIN, f64::max);
        Some((lower + upper) / 2.0)
    }

    fn start_window(&mut self, now: Instant, rtt_secs: f64) {
        self.window_end = now + Duration::try_from_secs_f64(rtt_secs).unwrap_or(Duration::ZERO);
        self.window_rtts.clear();
        self.back_pressure = false;
        self.reached_limit = self.in_flight >= self.limit;
    }
}

#[cfg(test)]
mod tests;
