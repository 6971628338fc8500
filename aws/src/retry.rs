//! One retry policy for every AWS call: full-jitter exponential backoff with
//! bounded attempts (the AWS Architecture Blog's "Exponential Backoff And
//! Jitter"), retrying only what the caller classifies as transient.
//!
//! Deciding is apart from waiting, as in Vector's `RetryLogic` and Quickwit's
//! `Retryable`: an error says what it is ([`Retryable`], or a caller's own
//! [`RetryClass`] function), and [`RetryPolicy::run_until`] waits one way per
//! class, shows every failed attempt to one callback (health, metrics and
//! the log in one place), and stops waiting when its stop future resolves.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

/// What a failed call asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Try again after a back-off that grows per failure (a 5xx, a timeout,
    /// a lost connection, a store that fails for a while).
    Transient,
    /// The service asks to slow down: try again after a short steady pause
    /// ([`throttle_pause`]); the back-off does not grow, since the service
    /// is up and answering.
    Throttled,
    /// Retrying cannot help (access denied, a lost lease): returned at once.
    Fatal,
}

/// An error that knows its [`RetryClass`]. A caller with its own rule (a
/// background task that retries everything) passes a function instead.
pub trait Retryable {
    /// How a call that failed with this error is retried.
    fn retry_class(&self) -> RetryClass;
}

/// A pause after a throttled call: 0.2–1 s at random, so readers throttled
/// together do not come back together, and a call is tried again within a
/// second of throttling ending (KCL waits a fixed second; the SDK's adaptive
/// mode paces to the service's rate).
pub fn throttle_pause() -> Duration {
    Duration::from_millis(rand::random_range(200..=1000))
}

/// The waiting half of retrying, for loops that are more than one call (a
/// shard's read loop): the wait after each failure by its class, growing
/// over transient failures in a row until [`Backoff::reset`] (a success).
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: RetryPolicy,
    failures: u32,
    equal_jitter: bool,
}

impl Backoff {
    /// A back-off by `policy` with full jitter, with no failures yet.
    pub const fn new(policy: RetryPolicy) -> Self {
        Backoff { policy, failures: 0, equal_jitter: false }
    }

    /// A back-off by `policy` with equal jitter
    /// ([`RetryPolicy::equal_jitter_delay`]): never near zero, for loops
    /// whose retry is costly (restarting a reader re-reads its shard).
    pub const fn equal_jitter(policy: RetryPolicy) -> Self {
        Backoff { policy, failures: 0, equal_jitter: true }
    }

    /// The wait after a failure of `class`: [`RetryPolicy::delay`] over
    /// the transient failures so far, [`throttle_pause`] after a throttle
    /// (which does not grow the back-off); `None` for a fatal one.
    pub fn after(&mut self, class: RetryClass) -> Option<Duration> {
        match class {
            RetryClass::Fatal => None,
            RetryClass::Throttled => Some(throttle_pause()),
            RetryClass::Transient => {
                self.failures += 1;
                let rng = &mut rand::rng();
                Some(if self.equal_jitter {
                    self.policy.equal_jitter_delay(self.failures, rng)
                } else {
                    self.policy.delay(self.failures, rng)
                })
            }
        }
    }

    /// A success: the next transient failure waits the shortest again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// One failed attempt, shown to [`RetryPolicy::run_until`]'s `report`
/// before the wait (or before giving up).
#[derive(Debug)]
pub struct FailedAttempt<'a, E> {
    /// The error.
    pub error: &'a E,
    /// The attempt's number (1-based).
    pub attempt: u32,
    /// How it is retried.
    pub class: RetryClass,
    /// The wait before the next attempt; `None` when this is the last.
    pub retry_in: Option<Duration>,
    /// When the attempt began: a client that retries inside one call has
    /// been failing since then.
    pub started: tokio::time::Instant,
}

/// Why [`RetryPolicy::run_until`] returned without a result.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// A [`RetryClass::Fatal`] error, or the last attempt's error.
    Failed(E),
    /// The stop future resolved; the last failed attempt's error, if any.
    Stopped(Option<E>),
}

/// Full-jitter exponential backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// The first backoff ceiling.
    pub base: Duration,
    /// The largest backoff ceiling.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 6, base: Duration::from_millis(100), cap: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// The backoff ceiling after `attempt` failed attempts (1-based):
    /// `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1 << exp).min(self.cap)
    }

    /// A random delay in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_nanos() as u64;
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }

    /// A random delay in `[ceiling(attempt) / 2, ceiling(attempt)]` ("equal
    /// jitter"): never near zero, so failures never turn into a tight loop,
    /// and workers that failed together do not retry in step.
    pub fn equal_jitter_delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        self.ceiling(attempt) / 2 + self.delay(attempt, rng) / 2
    }

    /// Runs `op` until it succeeds, fails with an error `is_transient` rejects,
    /// or runs out of attempts; returns the last error then.
    pub async fn run<T, E, F, Fut>(&self, op: F, is_transient: impl Fn(&E) -> bool) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.run_observed(op, is_transient, |_, _| {}).await
    }

    /// [`RetryPolicy::run`] that shows each failed attempt it retries to
    /// `retried` (with its 1-based number) as it happens, so a caller can
    /// count and report failures that a later attempt hides.
    pub async fn run_observed<T, E, F, Fut>(
        &self,
        op: F,
        is_transient: impl Fn(&E) -> bool,
        retried: impl Fn(&E, u32),
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let classify = |e: &E| if is_transient(e) { RetryClass::Transient } else { RetryClass::Fatal };
        let report = |f: &FailedAttempt<'_, E>| {
            if let Some(delay) = f.retry_in {
                retried(f.error, f.attempt);
                tracing::debug!(
                    attempt = f.attempt,
                    delay_ms = delay.as_millis() as u64,
                    "transient failure, retrying"
                );
            }
        };
        self.run_until(op, classify, report, std::future::pending()).await.map_err(|gave_up| match gave_up {
            GaveUp::Failed(e) | GaveUp::Stopped(Some(e)) => e,
            GaveUp::Stopped(None) => unreachable!("a pending stop never resolves"),
        })
    }

    /// The retry loop every dependency call goes through: runs `op` (given
    /// the 1-based attempt number) until it succeeds, fails with an error
    /// `classify` calls [`RetryClass::Fatal`], or runs out of attempts;
    /// shows every failed attempt to `report`; waits [`RetryPolicy::delay`]
    /// after a transient failure and [`throttle_pause`] after a throttle;
    /// and stops as soon as `stop` resolves, during a wait or an attempt
    /// (the attempt is then dropped: use it for work that may be abandoned).
    pub async fn run_until<T, E, F, Fut>(
        &self,
        mut op: F,
        classify: impl Fn(&E) -> RetryClass,
        mut report: impl FnMut(&FailedAttempt<'_, E>),
        stop: impl Future<Output = ()>,
    ) -> Result<T, GaveUp<E>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        tokio::pin!(stop);
        let mut attempt = 1;
        let mut backoff = Backoff::new(*self);
        // The previous attempt's error, for a stop during the next attempt.
        let mut last = None;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                biased;
                _ = &mut stop => return Err(GaveUp::Stopped(last)),
                result = op(attempt) => result,
            };
            let error = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let class = classify(&error);
            let retry_in = if attempt < self.max_attempts.max(1) { backoff.after(class) } else { None };
            report(&FailedAttempt { error: &error, attempt, class, retry_in, started });
            let Some(delay) = retry_in else { return Err(GaveUp::Failed(error)) };
            tokio::select! {
                biased;
                _ = &mut stop => return Err(GaveUp::Stopped(Some(error))),
                _ = tokio::time::sleep(delay) => {}
            }
            last = Some(error);
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn equal_jitter_waits_between_half_and_all_of_the_ceiling() {
        let p = RetryPolicy { max_attempts: 10, base: Duration::from_secs(1), cap: Duration::from_secs(60) };
        let mut rng = rand::rng();
        let d: Vec<Duration> = (0..200).map(|_| p.equal_jitter_delay(4, &mut rng)).collect();
        assert!(d.iter().all(|d| *d >= Duration::from_secs(4) && *d <= Duration::from_secs(8)), "{d:?}");
        let mut b = Backoff::equal_jitter(p);
        let first = b.after(RetryClass::Transient).unwrap();
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        // A throttle pauses without growing the back-off; a reset starts it over.
        assert!(b.after(RetryClass::Throttled).unwrap() <= Duration::from_secs(1));
        assert!(b.after(RetryClass::Transient).unwrap() >= Duration::from_secs(1));
        b.reset();
        assert!(b.after(RetryClass::Transient).unwrap() <= Duration::from_secs(1));
        assert_eq!(b.after(RetryClass::Fatal), None);
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = RetryPolicy { max_attempts: 10, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let c: Vec<u64> = (1..=6).map(|a| p.ceiling(a).as_millis() as u64).collect();
        assert_eq!(c, [100, 200, 400, 800, 1000, 1000]);
        let mut rng = rand::rng();
        assert!((0..100).all(|_| p.delay(3, &mut rng) <= Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn retries_transient_errors_only() {
        let p = RetryPolicy { max_attempts: 4, base: Duration::from_millis(1), cap: Duration::from_millis(2) };
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = p
            .run(
                |a| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { if a < 3 { Err("slow down") } else { Ok(a) } }
                },
                |e| *e == "slow down",
            )
            .await;
        assert_eq!(r, Ok(3));
        let calls = AtomicU32::new(0);
        let r: Result<u32, &str> = p
            .run(
                |_| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { Err("access denied") }
                },
                |e| *e == "slow down",
            )
            .await;
        assert_eq!((r, calls.load(Ordering::SeqCst)), (Err("access denied"), 1));
        let seen = std::sync::Mutex::new(Vec::new());
        let r: Result<u32, &str> =
            p.run_observed(|_| async { Err("slow down") }, |_| true, |e, a| seen.lock().unwrap().push((*e, a))).await;
        assert_eq!(r, Err("slow down"));
        // Every retried attempt is shown; the last failure is returned instead.
        assert_eq!(*seen.lock().unwrap(), [("slow down", 1), ("slow down", 2), ("slow down", 3)]);
    }

    #[derive(Debug, PartialEq)]
    enum Call {
        Busy,
        Throttled,
        Denied,
    }

    fn classify(e: &Call) -> RetryClass {
        match e {
            Call::Busy => RetryClass::Transient,
            Call::Throttled => RetryClass::Throttled,
            Call::Denied => RetryClass::Fatal,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn run_until_waits_per_class_reports_every_attempt_and_returns_fatal_errors_at_once() {
        let p = RetryPolicy { max_attempts: u32::MAX, base: Duration::from_millis(100), cap: Duration::from_secs(1) };
        let script = std::sync::Mutex::new(vec![Call::Busy, Call::Throttled, Call::Busy, Call::Denied]);
        let mut seen = Vec::new();
        let r: Result<(), _> = p
            .run_until(
                |_| {
                    let e = script.lock().unwrap().remove(0);
                    async move { Err(e) }
                },
                classify,
                |f| seen.push((f.attempt, f.class, f.retry_in)),
                std::future::pending(),
            )
            .await;
        assert_eq!(r, Err(GaveUp::Failed(Call::Denied)));
        let attempts: Vec<_> = seen.iter().map(|(a, c, r)| (*a, *c, r.is_some())).collect();
        assert_eq!(
            attempts,
            [
                (1, RetryClass::Transient, true),
                (2, RetryClass::Throttled, true),
                (3, RetryClass::Transient, true),
                (4, RetryClass::Fatal, false)
            ]
        );
        // Transient back-off grows per transient failure (ceilings 100 then
        // 200 ms); a throttle pauses 0.2-1 s and does not count.
        assert!(seen[0].2.unwrap() <= Duration::from_millis(100));
        let throttle = seen[1].2.unwrap();
        assert!(throttle >= Duration::from_millis(200) && throttle <= Duration::from_secs(1), "{throttle:?}");
        assert!(seen[2].2.unwrap() <= Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn run_until_stops_during_a_wait_or_a_hung_attempt() {
        let p = RetryPolicy { max_attempts: u32::MAX, base: Duration::from_secs(60), cap: Duration::from_secs(60) };
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        // A failing call: stopped during its back-off, with the last error.
        let waiting = {
            let stop = stop.clone();
            tokio::spawn(async move {
                p.run_until(|_| async { Err::<(), _>(Call::Busy) }, classify, |_| {}, stop.notified_owned()).await
            })
        };
        // A call that never returns: stopped during the attempt.
        let hung = {
            let stop = stop.clone();
            tokio::spawn(async move {
                p.run_until(|_| std::future::pending::<Result<(), Call>>(), classify, |_| {}, stop.notified_owned())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        stop.notify_waiters();
        assert!(matches!(waiting.await.unwrap(), Err(GaveUp::Stopped(Some(Call::Busy)))));
        assert_eq!(hung.await.unwrap(), Err(GaveUp::Stopped(None)));
        // Bounded attempts give up with the last error.
        let p = RetryPolicy { max_attempts: 3, base: Duration::from_millis(1), cap: Duration::from_millis(1) };
        let mut attempts = 0;
        let r: Result<(), _> =
            p.run_until(|_| async { Err(Call::Busy) }, classify, |_| attempts += 1, std::future::pending()).await;
        assert_eq!((r, attempts), (Err(GaveUp::Failed(Call::Busy)), 3));
    }
}
