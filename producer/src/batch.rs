//! Records on their way: [`Pending`] (a record with its deadline, attempts
//! and the sender of its result), [`Unit`] (one request entry: a record, or
//! with aggregation several records of one shard), and [`Batch`], the request
//! being filled, with the size accounting and the send rules as small named
//! predicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardlake_aws::aggregation::{self, UserRecord};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::budget::{BacklogEntry, BudgetPermit};
use crate::error::Error;
use crate::record::ProduceError;
use crate::record::{Ack, Record};
use crate::service::WireEntry;

/// What a record's future resolves to.
pub type Outcome = Result<Ack, ProduceError>;

/// A record accepted by the producer and not yet resolved.
#[derive(Debug)]
pub struct Pending {
    /// Arrival order at the dispatcher: queues are kept sorted by it, so a
    /// retried record goes back before later records of its key.
    pub seq: u64,
    /// The record.
    pub record: Record,
    /// Its 128-bit hash key (0 for Firehose).
    pub hash: u128,
    /// Bytes counted against the limits and the budget.
    pub size: usize,
    /// When `send` was called.
    pub enqueued: Instant,
    /// When the TTL runs out: `enqueued + record_ttl`, or with
    /// `ttl_start = "first_attempt"` far away until the first send.
    pub deadline: Instant,
    /// Backoff: not to be sent before this.
    pub not_before: Instant,
    /// Sends so far.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Attempts whose request went unanswered (timed out, reset, closed
    /// before the answer): each may have stored the record, so giving it up
    /// is an unknown outcome, and a later copy may be a duplicate.
    pub unknown_attempts: u32,
    /// Sends after the first unanswered attempt, bounded by
    /// `retry.max_resends_after_unknown`.
    pub resends_after_unknown: u32,
    /// Its place in the queue of records not sent yet, left on first send.
    pub unsent: Option<BacklogEntry>,
    /// Where the result goes; taken when resolved.
    tx: Option<oneshot::Sender<Outcome>>,
    /// Its share of the buffered + in-flight budget, released on drop.
    _permit: BudgetPermit,
}

impl Pending {
    /// A new record, sent at `enqueued`.
    pub fn new(
        record: Record,
        hash: u128,
        size: usize,
        enqueued: Instant,
        ttl: Duration,
        permit: BudgetPermit,
    ) -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let p = Pending {
            seq: 0,
            record,
            hash,
            size,
            enqueued,
            deadline: enqueued + ttl,
            not_before: enqueued,
            attempts: 0,
            last_error: None,
            unknown_attempts: 0,
            resends_after_unknown: 0,
            unsent: None,
            tx: Some(tx),
            _permit: permit,
        };
        (p, rx)
    }

    /// Whether an attempt may have stored the record without an answer.
    pub fn maybe_stored(&self) -> bool {
        self.unknown_attempts > 0
    }

    /// Resolves the record's future with an acknowledgement.
    pub fn succeed(mut self, ack: Ack) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Ok(ack));
        }
    }

    /// Resolves the record's future with an error that carries the record.
    pub fn fail(mut self, reason: Error) {
        self.fail_in_place(reason);
    }

    fn fail_in_place(&mut self, reason: Error) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(ProduceError { record: std::mem::take(&mut self.record), reason }));
        }
    }
}

impl Drop for Pending {
    /// A record dropped unresolved (the producer's task ended, was aborted
    /// by [`crate::Producer::abort`], or panicked) still comes back to its
    /// caller: with an unknown outcome when a request carrying it may have
    /// been stored (one timed out, or was in flight when dropped), else as
    /// not sent ([`Error::ShutDown`]).
    fn drop(&mut self) {
        if self.tx.is_none() {
            return;
        }
        let reason = if self.maybe_stored() {
            Error::UnknownOutcome {
                attempts: self.attempts,
                age: self.enqueued.elapsed(),
                given_up: "the producer was stopped before the answer came (shutdown deadline or abort)".into(),
                last_error: self.last_error.clone().unwrap_or_else(|| "none (the request was in flight)".into()),
            }
        } else {
            Error::ShutDown
        };
        self.fail_in_place(reason);
    }
}

/// The records of a request in flight. Dropped before the answer is read
/// (the producer's task aborted at a shutdown deadline), the request may
/// have been applied: each of its records counts one more unanswered attempt, so they come
/// back with an unknown outcome rather than as not sent.
#[derive(Debug)]
pub struct InFlight(Option<Vec<Unit>>);

impl InFlight {
    /// Guards `units` while their request is in flight.
    pub fn new(units: Vec<Unit>) -> Self {
        InFlight(Some(units))
    }

    /// The units.
    pub fn units(&self) -> &[Unit] {
        self.0.as_deref().unwrap_or_default()
    }

    /// The answer was read: the units go back to the dispatcher.
    pub fn finish(mut self) -> Vec<Unit> {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for p in self.0.iter_mut().flatten().flat_map(|u| u.records.iter_mut()) {
            p.unknown_attempts += 1;
        }
    }
}

/// Upper bound of the bytes a record adds to an aggregate: its data and keys
/// (counted even when shared through the key tables) plus protobuf tags and
/// lengths.
pub fn aggregated_size(record: &Record) -> usize {
    const PROTOBUF_OVERHEAD: usize = 40;
    record.data.len()
        + record.partition_key.len()
        + record.explicit_hash_key.as_ref().map_or(0, String::len)
        + PROTOBUF_OVERHEAD
}

/// Bytes an aggregate adds around its records: framing, its own partition key
/// (counted in the record) and its explicit hash key (up to 39 digits).
fn aggregate_overhead(first: &Record) -> usize {
    aggregation::FRAMING_BYTES + first.partition_key.len() + 39
}

/// One request entry.
#[derive(Debug)]
pub struct Unit {
    /// The shard predicted from the map when the unit was built.
    pub predicted_shard: Option<Arc<str>>,
    /// One record, or several bound for the same shard (an aggregate).
    pub records: Vec<Pending>,
    /// Bytes counted against the request and record limits.
    pub bytes: usize,
    /// Sum of [`aggregated_size`] of the records.
    aggregated_bytes: usize,
}

impl Unit {
    /// Whether this entry is sent as a KPL aggregate (two records or more; a
    /// single record is sent plain, as the KPL does).
    pub fn is_aggregate(&self) -> bool {
        self.records.len() > 1
    }

    /// The wire form: the record as is, or the aggregate with the first
    /// record's partition key and an explicit hash key of the first record's
    /// hash, so it lands on the shard all its records were predicted for.
    pub fn to_wire(&self) -> WireEntry {
        let first = &self.records[0];
        if !self.is_aggregate() {
            return WireEntry {
                data: first.record.data.clone(),
                partition_key: first.record.partition_key.clone(),
                explicit_hash_key: first.record.explicit_hash_key.clone(),
            };
        }
        let users: Vec<UserRecord> = self
            .records
            .iter()
            .map(|p| UserRecord {
                partition_key: p.record.partition_key.as_str().into(),
                explicit_hash_key: p.record.explicit_hash_key.as_deref().map(Into::into),
                data: p.record.data.to_vec(),
            })
            .collect();
        WireEntry {
            data: aggregation::aggregate(&users).into(),
            partition_key: first.record.partition_key.clone(),
            explicit_hash_key: Some(first.hash.to_string()),
        }
    }
}

/// Request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Entries per request.
    pub max_entries: usize,
    /// Bytes per request.
    pub max_bytes: usize,
    /// Largest aggregate, when aggregation is on.
    pub aggregation_max_bytes: Option<usize>,
    /// Strict per-key ordering: a key's records in one request must share one
    /// entry, so that they succeed or fail together.
    pub ordering: bool,
}

/// Where a record would go in the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Appended to the shard's open aggregate at this index.
    Aggregate(usize),
    /// A new entry.
    NewUnit,
}

/// Why a record cannot join the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The batch is full: send it.
    Full,
    /// Ordering: an earlier record of the key is in another entry.
    KeyBusy,
}

/// The request being filled.
#[derive(Debug, Default)]
pub struct Batch {
    /// The entries.
    pub units: Vec<Unit>,
    /// Bytes counted against the request limit.
    pub bytes: usize,
    /// User records.
    pub records: usize,
    /// When the oldest record in the batch was sent.
    pub oldest: Option<Instant>,
    /// When the first record joined the batch.
    pub opened: Option<Instant>,
    /// A record was refused for room: nothing more fits.
    full: bool,
    /// Per shard queue, the aggregate still open for more records.
    open_aggregate: HashMap<usize, usize>,
    /// Ordering: the entry holding each key's records.
    key_units: HashMap<String, usize>,
}

impl Batch {
    /// Whether the batch has no entry.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// Send rule: no more records fit.
    pub fn should_send_by_size(&self, limits: &Limits) -> bool {
        self.full || self.units.len() >= limits.max_entries || self.bytes >= limits.max_bytes
    }

    /// Send rule: the oldest record has waited `linger` (a retried record has
    /// waited long already, so it goes at once). When the rate limit held the
    /// last fill back, its records are old because they waited for tokens:
    /// the batch then also fills for `linger` from its first record, instead
    /// of going out with the few records each refill allows.
    pub fn should_send_by_age(&self, now: Instant, linger: Duration, rate_limited: bool) -> bool {
        self.send_deadline(linger, rate_limited).is_some_and(|t| t <= now)
    }

    /// When the age rule fires.
    pub fn send_deadline(&self, linger: Duration, rate_limited: bool) -> Option<Instant> {
        let by_oldest = self.oldest? + linger;
        let by_opening = self.opened? + linger;
        Some(if rate_limited { by_oldest.max(by_opening) } else { by_oldest })
    }

    /// Where `p` (bound for shard queue `queue`) would go, without changing
    /// the batch.
    pub fn place(&self, p: &Pending, queue: usize, limits: &Limits) -> Result<Placement, Refusal> {
        let keyed = limits.ordering.then(|| self.key_units.get(&p.record.partition_key)).flatten();
        if let Some(max_agg) = limits.aggregation_max_bytes
            && let Some(&u) = self.open_aggregate.get(&queue)
            && keyed.is_none_or(|&k| k == u)
        {
            let unit = &self.units[u];
            let grown =
                aggregate_overhead(&unit.records[0].record) + unit.aggregated_bytes + aggregated_size(&p.record);
            if grown <= max_agg && self.bytes - unit.bytes + grown <= limits.max_bytes {
                return Ok(Placement::Aggregate(u));
            }
        }
        if keyed.is_some() {
            return Err(Refusal::KeyBusy);
        }
        // A record above the request limit (a 10 MiB stream) goes alone.
        let fits = self.units.is_empty() || self.bytes + p.size <= limits.max_bytes;
        if self.units.len() < limits.max_entries && fits { Ok(Placement::NewUnit) } else { Err(Refusal::Full) }
    }

    /// Adds `p` where [`Batch::place`] said.
    pub fn add(
        &mut self,
        p: Pending,
        queue: usize,
        placement: Placement,
        predicted_shard: Option<Arc<str>>,
        limits: &Limits,
    ) {
        self.oldest = Some(self.oldest.map_or(p.enqueued, |t| t.min(p.enqueued)));
        self.opened.get_or_insert_with(Instant::now);
        self.records += 1;
        let key = limits.ordering.then(|| p.record.partition_key.clone());
        let index = match placement {
            Placement::Aggregate(u) => {
                let unit = &mut self.units[u];
                unit.aggregated_bytes += aggregated_size(&p.record);
                let grown = aggregate_overhead(&unit.records[0].record) + unit.aggregated_bytes;
                self.bytes = self.bytes - unit.bytes + grown;
                unit.bytes = grown;
                unit.records.push(p);
                u
            }
            Placement::NewUnit => {
                let aggregated_bytes = aggregated_size(&p.record);
                let u = self.units.len();
                if let Some(max_agg) = limits.aggregation_max_bytes
                    && aggregate_overhead(&p.record) + aggregated_bytes < max_agg
                {
                    self.open_aggregate.insert(queue, u);
                }
                self.bytes += p.size;
                self.units.push(Unit { predicted_shard, bytes: p.size, aggregated_bytes, records: vec![p] });
                u
            }
        };
        if let Some(key) = key {
            self.key_units.insert(key, index);
        }
    }

    /// Notes that a record was refused for room.
    pub fn mark_full(&mut self) {
        self.full = true;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::budget::Budget;
    use crate::metrics::Metrics;

    fn pending(budget: &Budget, key: &str, len: usize) -> Pending {
        let record = Record::new(key, vec![b'x'; len]);
        let size = record.kinesis_size();
        let permit = budget.try_acquire(size).unwrap();
        Pending::new(record, 0, size, Instant::now(), Duration::from_secs(30), permit).0
    }

    fn budget() -> Budget {
        Budget::new(1 << 30, 1 << 20, Arc::new(Metrics::new(&prometheus::Registry::new(), "t").unwrap()))
    }

    fn fill(batch: &mut Batch, budget: &Budget, sizes: &[usize], limits: &Limits) -> usize {
        let mut added = 0;
        for (i, &len) in sizes.iter().enumerate() {
            let p = pending(budget, &format!("k{}", i % 7), len);
            match batch.place(&p, i % 3, limits) {
                Ok(placement) => {
                    batch.add(p, i % 3, placement, None, limits);
                    added += 1;
                }
                Err(_) => {
                    batch.mark_full();
                    break;
                }
            }
        }
        added
    }

    const PLAIN: Limits = Limits { max_entries: 500, max_bytes: 5 << 20, aggregation_max_bytes: None, ordering: false };

    #[test]
    fn a_batch_stops_at_500_entries() {
        let budget = budget();
        let mut batch = Batch::default();
        assert_eq!(fill(&mut batch, &budget, &[10; 600], &PLAIN), 500);
        assert!(batch.should_send_by_size(&PLAIN));
    }

    #[test]
    fn a_batch_stops_before_5_mib_counting_partition_keys() {
        let budget = budget();
        let mut batch = Batch::default();
        // 5 records of 1 MiB - 2 bytes plus a 2-byte key: exactly 5 MiB.
        assert_eq!(fill(&mut batch, &budget, &[(1 << 20) - 2; 6], &PLAIN), 5);
        assert_eq!(batch.bytes, 5 << 20);
    }

    #[test]
    fn a_record_above_the_request_limit_goes_alone() {
        let budget = budget();
        let mut batch = Batch::default();
        assert_eq!(fill(&mut batch, &budget, &[6 << 20, 10], &PLAIN), 1);
    }

    #[test]
    fn the_age_rule_fires_after_linger() {
        let budget = budget();
        let mut batch = Batch::default();
        let linger = Duration::from_millis(100);
        assert!(!batch.should_send_by_age(Instant::now() + Duration::from_secs(9), linger, false));
        fill(&mut batch, &budget, &[10], &PLAIN);
        let t = batch.oldest.unwrap();
        assert!(!batch.should_send_by_age(t + Duration::from_millis(99), linger, false));
        assert!(batch.should_send_by_age(t + Duration::from_millis(100), linger, false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_batch_fills_for_linger_from_its_opening() {
        let budget = budget();
        let linger = Duration::from_millis(100);
        // A record that waited 5 s in the queue for rate-limit tokens.
        let old = pending(&budget, "k", 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut batch = Batch::default();
        let placement = batch.place(&old, 0, &PLAIN).unwrap();
        batch.add(old, 0, placement, None, &PLAIN);
        let now = Instant::now();
        assert!(batch.should_send_by_age(now, linger, false), "old records go at once");
        assert!(!batch.should_send_by_age(now, linger, true), "unless the rate limit holds the batch");
        assert!(batch.should_send_by_age(now + linger, linger, true));
    }

    #[test]
    fn aggregation_packs_records_of_a_shard_up_to_the_aggregate_limit() {
        let budget = budget();
        let limits = Limits { aggregation_max_bytes: Some(51_200), ..PLAIN };
        let mut batch = Batch::default();
        for _ in 0..200 {
            let p = pending(&budget, "k", 500);
            let placement = batch.place(&p, 0, &limits).unwrap();
            batch.add(p, 0, placement, None, &limits);
        }
        assert!(batch.units.len() >= 2 && batch.units.len() <= 3, "{}", batch.units.len());
        for unit in &batch.units {
            let wire = unit.to_wire();
            assert!(wire.data.len() <= unit.bytes && unit.bytes <= 51_200, "{} > {}", wire.data.len(), unit.bytes);
            let users = aggregation::deaggregate(&wire.data).unwrap().unwrap();
            assert_eq!(users.len(), unit.records.len());
        }
    }

    #[test]
    fn ordering_keeps_a_keys_records_in_one_entry() {
        let budget = budget();
        let limits = Limits { ordering: true, ..PLAIN };
        let mut batch = Batch::default();
        let a = pending(&budget, "a", 10);
        batch.add(a, 0, batch.place(&pending(&budget, "a", 10), 0, &limits).unwrap(), None, &limits);
        assert_eq!(batch.place(&pending(&budget, "a", 10), 0, &limits), Err(Refusal::KeyBusy));
        assert_eq!(batch.place(&pending(&budget, "b", 10), 0, &limits), Ok(Placement::NewUnit));
        let agg = Limits { aggregation_max_bytes: Some(51_200), ..limits };
        let mut batch = Batch::default();
        batch.add(pending(&budget, "a", 10), 0, Placement::NewUnit, None, &agg);
        assert_eq!(batch.place(&pending(&budget, "a", 10), 0, &agg), Ok(Placement::Aggregate(0)));
        assert_eq!(batch.place(&pending(&budget, "a", 10), 1, &agg), Err(Refusal::KeyBusy));
    }

    #[test]
    fn a_dropped_record_comes_back_to_its_caller() {
        let budget = budget();
        let record = Record::new("k", "x");
        let (p, mut rx) =
            Pending::new(record.clone(), 0, 2, Instant::now(), Duration::from_secs(1), budget.try_acquire(2).unwrap());
        drop(p);
        assert_eq!(rx.try_recv().unwrap(), Err(ProduceError { record, reason: Error::ShutDown }));
    }

    #[test]
    fn a_record_dropped_with_its_request_in_flight_comes_back_unknown() {
        let budget = budget();
        let (mut p, mut rx) = Pending::new(
            Record::new("k", "x"),
            0,
            2,
            Instant::now(),
            Duration::from_secs(1),
            budget.try_acquire(2).unwrap(),
        );
        p.attempts = 1;
        let unit = Unit { predicted_shard: None, records: vec![p], bytes: 2, aggregated_bytes: 0 };
        drop(InFlight::new(vec![unit]));
        let err = rx.try_recv().unwrap().unwrap_err();
        assert!(err.reason.is_unknown_outcome(), "{}", err.reason);
        assert_eq!(err.reason.attempts(), Some(1));
        // Finished (the answer was read), the units go back unmarked.
        let (p, _rx) = Pending::new(
            Record::new("k", "x"),
            0,
            2,
            Instant::now(),
            Duration::from_secs(1),
            budget.try_acquire(2).unwrap(),
        );
        let unit = Unit { predicted_shard: None, records: vec![p], bytes: 2, aggregated_bytes: 0 };
        let units = InFlight::new(vec![unit]).finish();
        assert!(!units[0].records[0].maybe_stored());
    }

    proptest! {
        #[test]
        fn batches_never_exceed_the_request_limits(
            sizes in prop::collection::vec(0usize..300_000, 1..700),
            max_entries in 1usize..=500,
            max_bytes in 1024usize..=(5 << 20),
            aggregate in any::<bool>(),
        ) {
            let budget = budget();
            let limits = Limits {
                max_entries, max_bytes, ordering: false,
                aggregation_max_bytes: aggregate.then_some(51_200),
            };
            let mut batch = Batch::default();
            let added = fill(&mut batch, &budget, &sizes, &limits);
            prop_assert!(batch.units.len() <= max_entries);
            prop_assert!(batch.bytes <= max_bytes || batch.units.len() == 1);
            prop_assert_eq!(batch.records, added);
            let wire: usize = batch.units.iter().map(|u| {
                let w = u.to_wire();
                w.data.len() + w.partition_key.len() + w.explicit_hash_key.map_or(0, |h| h.len())
            }).sum();
            prop_assert!(wire <= batch.bytes, "wire {} > counted {}", wire, batch.bytes);
            // Nothing was refused while there was room.
            if added < sizes.len() {
                prop_assert!(batch.should_send_by_size(&limits));
            }
        }
    }
}
