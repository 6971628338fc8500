//! One retry policy for every AWS call: full-jitter exponential backoff with
//! bounded attempts (the AWS Architecture Blog's "Exponential Backoff And
//! Jitter"), retrying only what the caller classifies as transient.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

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
        mut op: F,
        is_transient: impl Fn(&E) -> bool,
        retried: impl Fn(&E, u32),
    ) -> Result<T, E>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 1;
        loop {
            match op(attempt).await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < self.max_attempts.max(1) && is_transient(&e) => {
                    retried(&e, attempt);
                    let d = self.delay(attempt, &mut rand::rng());
                    tracing::debug!(attempt, delay_ms = d.as_millis() as u64, "transient failure, retrying");
                    tokio::time::sleep(d).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

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
}
