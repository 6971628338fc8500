//! Drives the stream: sending tasks share one rate limiter (`governor`) and
//! one embedded producer, keep many records in flight, and time each record
//! from send to acknowledgement.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use governor::{Quota, RateLimiter};
use hdrhistogram::Histogram;
use shardlake_producer::{Ack, ProduceError, Producer, Record};
use tokio_util::sync::CancellationToken;

use crate::events::EventMaker;

/// Live counts, read by the progress line and the timeline.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records handed to the producer.
    pub sent: AtomicU64,
    /// Records acknowledged by Kinesis.
    pub acked: AtomicU64,
    /// Records that failed for good (after the producer's retries).
    pub failed: AtomicU64,
}

/// What the producers did.
pub struct Driven {
    /// Sequence numbers of acknowledged events.
    pub acked: Vec<u64>,
    /// Failed events with the reason (never expected in the lake).
    pub failed: Vec<(u64, String)>,
    /// Send → acknowledgement, microseconds.
    pub latency_us: Histogram<u64>,
    /// Time from the first send to the last acknowledgement.
    pub elapsed: Duration,
}

/// An event's sequence number, when it was sent, and how it ended.
type Acked = (u64, Instant, Result<Ack, ProduceError>);

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An empty latency histogram (1 µs to 1 h, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Sends events at `rate` per second from `tasks` tasks for `duration` (or
/// until `stop`), then waits for every acknowledgement.
pub async fn drive(
    producer: &Producer,
    maker: Arc<EventMaker>,
    rate: u32,
    tasks: usize,
    duration: Duration,
    counters: Arc<Counters>,
    stop: CancellationToken,
) -> Driven {
    let rate = NonZeroU32::new(rate).expect("rate checked >= 1");
    // A burst of 1/20 s of the rate: smooth, yet not one timer per record.
    let burst = NonZeroU32::new((rate.get() / 20).max(1)).expect(">= 1");
    let limiter = Arc::new(RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)));
    let next_seq = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (producer, maker, limiter, next_seq, counters, stop) =
                (producer.clone(), maker.clone(), limiter.clone(), next_seq.clone(), counters.clone(), stop.clone());
            tokio::spawn(async move {
                let mut out =
                    Driven { acked: Vec::new(), failed: Vec::new(), latency_us: histogram(), elapsed: Duration::ZERO };
                let mut in_flight: FuturesUnordered<BoxFuture<'static, Acked>> = FuturesUnordered::new();
                let mut sending = true;
                loop {
                    tokio::select! {
                        biased;
                        Some((seq, sent, result)) = in_flight.next(), if !in_flight.is_empty() => {
                            match result {
                                Ok(_) => {
                                    out.acked.push(seq);
                                    let us = sent.elapsed().as_micros() as u64;
                                    out.latency_us.saturating_record(us.max(1));
                                    counters.acked.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => {
                                    out.failed.push((seq, e.reason.to_string()));
                                    counters.failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        _ = limiter.until_ready(), if sending => {
                            if Instant::now() >= deadline || stop.is_cancelled() {
                                sending = false;
                                continue;
                            }
                            let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                            let (key, data) = maker.event(seq, now_ms());
                            let sent = Instant::now();
                            counters.sent.fetch_add(1, Ordering::Relaxed);
                            match producer.enqueue(Record::new(key, data)).await {
                                Ok(ack) => in_flight.push(async move { (seq, sent, ack.await) }.boxed()),
                                Err(e) => {
                                    out.failed.push((seq, e.reason.to_string()));
                                    counters.failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                        else => break,
                    }
                }
                out
            })
        })
        .collect();
    let mut all = Driven { acked: Vec::new(), failed: Vec::new(), latency_us: histogram(), elapsed: Duration::ZERO };
    for h in handles {
        let part = h.await.expect("sending task panicked");
        all.acked.extend(part.acked);
        all.failed.extend(part.failed);
        all.latency_us.add(&part.latency_us).expect("same bounds");
    }
    all.elapsed = started.elapsed();
    all.acked.sort_unstable();
    all
}

/// Sums a producer counter (all label values) from its registry.
pub fn producer_counter(producer: &Producer, name: &str) -> u64 {
    producer
        .registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter().map(|m| m.get_counter().get_value() as u64).collect::<Vec<_>>())
        .sum()
}
