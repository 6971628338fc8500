//! The bounded budget of buffered + in-flight records and bytes. A record
//! holds its share from `send` until its future resolves (delivered, failed
//! or expired), retries included, so memory stays bounded however slow the
//! stream is: `send` waits for room, `try_send` fails instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::Error;
use crate::metrics::Metrics;

/// Two semaphores: bytes and records.
#[derive(Debug)]
pub struct Budget {
    bytes: Arc<Semaphore>,
    records: Arc<Semaphore>,
    max_bytes: usize,
    max_records: usize,
    metrics: Arc<Metrics>,
}

/// A record's share of the budget, given back on drop.
#[derive(Debug)]
pub struct BudgetPermit {
    _bytes: OwnedSemaphorePermit,
    _records: OwnedSemaphorePermit,
    size: usize,
    metrics: Arc<Metrics>,
}

impl Drop for BudgetPermit {
    fn drop(&mut self) {
        self.metrics.record_buffered(-1, self.size);
    }
}

impl Budget {
    /// A budget of `max_bytes` (at most `u32::MAX`) and `max_records`.
    pub fn new(max_bytes: usize, max_records: usize, metrics: Arc<Metrics>) -> Self {
        Budget {
            bytes: Arc::new(Semaphore::new(max_bytes)),
            records: Arc::new(Semaphore::new(max_records)),
            max_bytes,
            max_records,
            metrics,
        }
    }

    fn permit(&self, bytes: OwnedSemaphorePermit, records: OwnedSemaphorePermit, size: usize) -> BudgetPermit {
        self.metrics.record_buffered(1, size);
        BudgetPermit { _bytes: bytes, _records: records, size, metrics: self.metrics.clone() }
    }

    /// Waits for room for one record of `size` bytes (`size` is at most the
    /// byte budget, which config validation ensures).
    pub async fn acquire(&self, size: usize) -> Result<BudgetPermit, Error> {
        let records = self.records.clone().acquire_owned().await.map_err(|_| Error::ShutDown)?;
        let bytes = self.bytes.clone().acquire_many_owned(size as u32).await.map_err(|_| Error::ShutDown)?;
        Ok(self.permit(bytes, records, size))
    }

    /// Room for one record of `size` bytes, or [`Error::BufferFull`] now.
    pub fn try_acquire(&self, size: usize) -> Result<BudgetPermit, Error> {
        let full = |e: TryAcquireError, limit: String| match e {
            TryAcquireError::Closed => Error::ShutDown,
            TryAcquireError::NoPermits => Error::BufferFull { limit },
        };
        let records = self
            .records
            .clone()
            .try_acquire_owned()
            .map_err(|e| full(e, format!("max_buffered_records = {}", self.max_records)))?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(size as u32)
            .map_err(|e| full(e, format!("max_buffered_bytes = {}", self.max_bytes)))?;
        Ok(self.permit(bytes, records, size))
    }

    /// Refuses every later request (shutdown); permits already held stay valid.
    pub fn close(&self) {
        self.bytes.close();
        self.records.close();
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> usize {
        self.max_bytes - self.bytes.available_permits()
    }

    /// Records in use.
    pub fn used_records(&self) -> usize {
        self.max_records - self.records.available_permits()
    }
}

/// Records accepted and not sent yet (the producer's own queue), for
/// [`crate::Producer::ready`]: a feeder that waits for it keeps the queue at
/// about one round of requests, so records do not age in it. With
/// `ordering`, also per partition key: a key sends one entry per round trip,
/// so [`Backlog::wait_for_key`] holds a key's next record back (in the
/// caller's input) while one request's worth of that key already waits.
#[derive(Debug, Default)]
pub struct Backlog {
    count: AtomicUsize,
    /// Set by the producer's task: what the current concurrency limit sends
    /// in one round of requests, plus one request.
    target: AtomicUsize,
    /// With ordering: records and bytes of each key not sent yet.
    keys: Mutex<HashMap<String, KeyBacklog>>,
    notify: Notify,
}

#[derive(Debug, Default, Clone, Copy)]
struct KeyBacklog {
    records: usize,
    bytes: usize,
}

/// A record's place in the [`Backlog`], left on its first send (or when it
/// resolves unsent).
#[derive(Debug)]
pub struct BacklogEntry {
    backlog: Arc<Backlog>,
    /// The key and bytes counted per key, with ordering.
    key: Option<(String, usize)>,
}

impl Drop for BacklogEntry {
    fn drop(&mut self) {
        let before = self.backlog.count.fetch_sub(1, Ordering::AcqRel);
        let mut wake = before <= self.backlog.target.load(Ordering::Acquire);
        if let Some((key, bytes)) = self.key.take() {
            let mut keys = self.backlog.keys.lock().expect("backlog keys lock");
            if let Some(k) = keys.get_mut(&key) {
                k.records -= 1;
                k.bytes -= bytes;
                if k.records == 0 {
                    keys.remove(&key);
                }
            }
            wake = true;
        }
        if wake {
            self.backlog.notify.notify_waiters();
        }
    }
}

impl Backlog {
    /// Counts a record in until the returned entry is dropped; with
    /// `key` (ordering), also in that key's backlog.
    pub fn enter(self: &Arc<Self>, key: Option<(&str, usize)>) -> BacklogEntry {
        self.count.fetch_add(1, Ordering::AcqRel);
        let key = key.map(|(key, bytes)| {
            let mut keys = self.keys.lock().expect("backlog keys lock");
            let k = keys.entry(key.to_string()).or_default();
            k.records += 1;
            k.bytes += bytes;
            (key.to_string(), bytes)
        });
        BacklogEntry { backlog: self.clone(), key }
    }

    /// Waits until `key` has room for one more unsent record: fewer than 2
    /// wait (the next request's entry and one spare), or, with aggregation,
    /// fewer than `turn_bytes` (one aggregate's worth). With ordering a key
    /// sends one entry per round trip, so more of its records would only
    /// age in the queue, perhaps past their TTL, before their first attempt.
    pub async fn wait_for_key(&self, key: &str, turn_bytes: usize) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let k = self.keys.lock().expect("backlog keys lock").get(key).copied().unwrap_or_default();
            if k.records < 2 || k.bytes < turn_bytes {
                return;
            }
            notified.await;
        }
    }

    /// Records accepted and not sent yet.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Sets the queue length [`Backlog::wait_for_room`] waits for.
    pub fn set_target(&self, target: usize) {
        let old = self.target.swap(target, Ordering::AcqRel);
        if target > old {
            self.notify.notify_waiters();
        }
    }

    /// Waits until fewer records than the target wait for their first send.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drop in between still wakes us.
            notified.as_mut().enable();
            if self.len() < self.target.load(Ordering::Acquire).max(1) {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn budget(bytes: usize, records: usize) -> Budget {
        Budget::new(bytes, records, Arc::new(Metrics::new(&prometheus::Registry::new(), "t").unwrap()))
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_until_a_record_is_released() {
        let b = Arc::new(budget(100, 10));
        let first = b.acquire(80).await.unwrap();
        assert_eq!((b.used_bytes(), b.used_records()), (80, 1));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(30).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished(), "no room for 30 more bytes");
        drop(first);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_key_holds_a_hot_key_back_and_lets_other_keys_pass() {
        let backlog = Arc::new(Backlog::default());
        backlog.set_target(1_000);
        let first = backlog.enter(Some(("hot", 10)));
        let _second = backlog.enter(Some(("hot", 10)));
        backlog.wait_for_key("cold", 0).await;
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.wait_for_key("hot", 0).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "two records of the key wait to be sent");
        drop(first);
        waiter.await.unwrap();
        // With aggregation, a key's turn is an aggregate's worth of bytes.
        let _third = backlog.enter(Some(("hot", 10)));
        backlog.wait_for_key("hot", 31).await;
        assert_eq!(backlog.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_room_waits_until_the_backlog_is_below_its_target() {
        let backlog = Arc::new(Backlog::default());
        backlog.set_target(2);
        let first = backlog.enter(None);
        let _second = backlog.enter(None);
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished(), "two records wait for a target of two");
        drop(first);
        waiter.await.unwrap();
        let _third = backlog.enter(None);
        let waiter = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.wait_for_room().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        backlog.set_target(3);
        waiter.await.unwrap();
    }

    #[test]
    fn try_acquire_names_the_exhausted_budget() {
        let b = budget(100, 1);
        let _held = b.try_acquire(10).unwrap();
        assert_eq!(b.try_acquire(10).unwrap_err(), Error::BufferFull { limit: "max_buffered_records = 1".into() });
        let b = budget(100, 5);
        let _held = b.try_acquire(90).unwrap();
        assert_eq!(b.try_acquire(20).unwrap_err(), Error::BufferFull { limit: "max_buffered_bytes = 100".into() });
        assert_eq!(b.used_records(), 1, "the record permit of a refused request is given back");
        b.close();
        assert_eq!(b.try_acquire(1).unwrap_err(), Error::ShutDown);
    }
}
