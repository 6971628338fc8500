//! Per-shard rate limits: two `governor` token buckets per shard, one for
//! records and one for bytes, refilled at the shard's write limits (1,000
//! records/s and 1 MiB/s) times `rate_limit_percent`, like KPL's `RateLimit`.
//! They charge what Kinesis counts: one record token per Kinesis record (an
//! aggregate of many user records is one) and its bytes. Retries take tokens
//! too, so a throttled stream cannot be hammered.
//!
//! The buckets run on tokio's clock, so tests with `tokio::time::pause()`
//! control them like every other timer.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::{SHARD_BYTES_PER_SEC, SHARD_RECORDS_PER_SEC};
use crate::shard_map::ShardMap;

/// governor's clock, read from tokio's (pausable) time.
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock { origin: tokio::time::Instant::now() }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The record and byte buckets of one shard.
#[derive(Debug)]
pub struct ShardLimiter {
    records: Bucket,
    bytes: Bucket,
    byte_burst: u32,
    clock: TokioClock,
}

impl ShardLimiter {
    /// Buckets for `factor` times a shard's write limits, each with a burst of
    /// one second's worth.
    pub fn new(factor: f64, clock: TokioClock) -> Self {
        let per_sec = |limit: u32| NonZeroU32::new(((limit as f64 * factor) as u32).max(1)).unwrap();
        let bytes = per_sec(SHARD_BYTES_PER_SEC);
        ShardLimiter {
            records: RateLimiter::direct_with_clock(Quota::per_second(per_sec(SHARD_RECORDS_PER_SEC)), clock.clone()),
            bytes: RateLimiter::direct_with_clock(Quota::per_second(bytes), clock.clone()),
            byte_burst: bytes.get(),
            clock,
        }
    }

    /// Takes tokens for `records` Kinesis records (0 when bytes join an
    /// aggregate already charged, else 1) of `size` bytes, or says how long
    /// until the shard has room. A record larger than the byte burst
    /// (possible with a raised record limit) takes the whole burst.
    pub fn try_take(&self, records: u32, size: usize) -> Result<(), Duration> {
        let now = self.clock.now();
        // Bytes first: the byte bucket is the one that usually binds, and a
        // denial there then costs no record token.
        let n = NonZeroU32::new((size.min(self.byte_burst as usize) as u32).max(1)).unwrap();
        match self.bytes.check_n(n) {
            Ok(Ok(())) => {}
            Ok(Err(not_until)) => return Err(not_until.wait_time_from(now)),
            Err(_) => unreachable!("n is clamped to the burst"),
        }
        let Some(records) = NonZeroU32::new(records) else { return Ok(()) };
        match self.records.check_n(records) {
            Ok(result) => result.map_err(|not_until| not_until.wait_time_from(now)),
            Err(_) => unreachable!("one record is within any burst"),
        }
    }
}

/// One [`ShardLimiter`] per open shard, by index in the current shard map.
#[derive(Debug, Default)]
pub struct RateLimits {
    factor: Option<f64>,
    clock: TokioClock,
    by_shard: Vec<Arc<ShardLimiter>>,
}

impl RateLimits {
    /// Limits at `factor` of the shard limits, or none when `factor` is `None`.
    pub fn new(factor: Option<f64>) -> Self {
        RateLimits { factor, clock: TokioClock::default(), by_shard: vec![] }
    }

    /// Follows a new shard map, keeping the buckets (and their debt) of the
    /// shards that are still open.
    pub fn update(&mut self, old: &ShardMap, new: &ShardMap) {
        let Some(factor) = self.factor else { return };
        let mut kept: HashMap<&str, Arc<ShardLimiter>> =
            old.shards().iter().zip(self.by_shard.drain(..)).map(|(s, l)| (s.shard_id.as_ref(), l)).collect();
        self.by_shard = new
            .shards()
            .iter()
            .map(|s| {
                kept.remove(s.shard_id.as_ref())
                    .unwrap_or_else(|| Arc::new(ShardLimiter::new(factor, self.clock.clone())))
            })
            .collect();
    }

    /// Takes tokens for `records` Kinesis records of `size` bytes on shard
    /// `index` (see [`ShardLimiter::try_take`]); `Ok` when limits are off or
    /// the shard is unknown.
    pub fn try_take(&self, index: usize, records: u32, size: usize) -> Result<(), Duration> {
        match self.by_shard.get(index) {
            Some(limiter) => limiter.try_take(records, size),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_map::ShardRange;

    #[tokio::test(start_paused = true)]
    async fn a_shard_takes_1000_records_a_second_at_100_percent() {
        let limiter = ShardLimiter::new(1.0, TokioClock::default());
        let taken = (0..5000).take_while(|_| limiter.try_take(1, 10).is_ok()).count();
        assert_eq!(taken, 1000);
        let wait = limiter.try_take(1, 10).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(1), "{wait:?}");
        tokio::time::advance(Duration::from_millis(100)).await;
        let taken = (0..5000).take_while(|_| limiter.try_take(1, 10).is_ok()).count();
        assert_eq!(taken, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_takes_1_mib_a_second_at_100_percent() {
        let limiter = ShardLimiter::new(1.0, TokioClock::default());
        assert_eq!((0..100).take_while(|_| limiter.try_take(1, 128 * 1024).is_ok()).count(), 8);
        let wait = limiter.try_take(1, 128 * 1024).unwrap_err();
        assert!(wait > Duration::from_millis(120) && wait <= Duration::from_millis(125), "{wait:?}");
        // A record above the burst (10 MiB streams) takes the whole bucket.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.try_take(1, 10 << 20).is_ok());
        assert!(limiter.try_take(1, 1).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_joining_an_aggregate_take_no_record_token() {
        let limiter = ShardLimiter::new(1.0, TokioClock::default());
        // 10,000 user records of 50 bytes packed 10 to an aggregate: 1,000
        // Kinesis records and 500 KB, within one second's limits.
        for i in 0..10_000 {
            limiter.try_take(u32::from(i % 10 == 0), 50).unwrap();
        }
        assert!(limiter.try_take(1, 1).is_err(), "the 1,000 record tokens are used");
        assert!(limiter.try_take(0, 1000).is_ok(), "bytes are left");
    }

    #[tokio::test(start_paused = true)]
    async fn the_factor_scales_both_buckets() {
        let limiter = ShardLimiter::new(1.5, TokioClock::default());
        assert_eq!((0..5000).take_while(|_| limiter.try_take(1, 1).is_ok()).count(), 1500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reshard_keeps_the_buckets_of_surviving_shards() {
        let range = |id: &str, start| ShardRange { shard_id: id.into(), start, end: start + 9 };
        let old = ShardMap::from_ranges(vec![range("a", 0), range("b", 10)]);
        let new = ShardMap::from_ranges(vec![range("b", 10), range("c", 20)]);
        let mut limits = RateLimits::new(Some(1.0));
        limits.update(&ShardMap::default(), &old);
        while limits.try_take(1, 1, 1).is_ok() {}
        limits.update(&old, &new);
        assert!(limits.try_take(0, 1, 1).is_err(), "shard b keeps its empty bucket at its new index");
        assert!(limits.try_take(1, 1, 1).is_ok(), "shard c starts full");
        assert!(RateLimits::new(None).try_take(0, 1, 1 << 30).is_ok());
    }
}
