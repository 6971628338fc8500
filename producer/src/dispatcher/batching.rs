//! Batching: the dispatcher moves due records from the per-shard queues into
//! the open request (round-robin, within each shard's rate limit, with
//! aggregation unless a reshard was just seen) and sends it. Apart from the
//! loop in `dispatcher.rs` so the request's assembly reads on its own.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;

use super::{Completion, Dispatcher, SCAN_WINDOW};
use crate::batch::{InFlight, Limits, Placement, Refusal, Unit, aggregated_size};
use crate::config::TtlStart;

impl Dispatcher {
    /// Moves due records from the queues into the open batch, round-robin
    /// over the shards, taking rate-limit tokens for each.
    pub(super) fn fill(&mut self, now: Instant, wake: &mut Instant) {
        self.rate_limited = false;
        let n = self.queues.len();
        for k in 0..n {
            if self.batch.should_send_by_size(&self.limits) {
                break;
            }
            self.fill_from((self.next_queue + k) % n, now, wake);
        }
        self.next_queue = (self.next_queue + 1) % n;
    }

    fn fill_from(&mut self, q: usize, now: Instant, wake: &mut Instant) {
        let ordering = self.settings.ordering;
        let limits = self.packing_limits();
        let mut blocked: HashSet<String> = HashSet::new();
        let queue = &mut self.queues[q];
        let shard_id = self.map.shards().get(q).map(|s| s.shard_id.clone());
        let mut i = 0;
        let mut scanned = 0;
        while i < queue.len() && scanned < SCAN_WINDOW {
            scanned += 1;
            let p = &queue[i];
            if ordering
                && (blocked.contains(&p.record.partition_key)
                    || self.keys_in_flight.contains_key(&p.record.partition_key))
            {
                blocked.insert(p.record.partition_key.clone());
                i += 1;
                continue;
            }
            if p.not_before > now {
                *wake = (*wake).min(p.not_before);
                if ordering {
                    blocked.insert(p.record.partition_key.clone());
                }
                i += 1;
                continue;
            }
            let placement = match self.batch.place(p, q, &limits) {
                Ok(placement) => placement,
                Err(Refusal::Full) => {
                    self.batch.mark_full();
                    return;
                }
                Err(Refusal::KeyBusy) => {
                    blocked.insert(p.record.partition_key.clone());
                    i += 1;
                    continue;
                }
            };
            // Kinesis counts an aggregate as one record of its bytes: a record
            // joining one adds bytes only.
            let (records, bytes) = match placement {
                Placement::Aggregate(_) => (0, aggregated_size(&p.record)),
                Placement::NewUnit => (1, p.size),
            };
            if let Err(wait) = self.rate.try_take(q, records, bytes) {
                self.rate_limited = true;
                *wake = (*wake).min(now + wait.max(Duration::from_millis(1)));
                return;
            }
            let p = queue.remove(i).unwrap();
            self.batch.add(p, q, placement, shard_id.clone(), &limits);
        }
    }

    /// The limits records are packed by: no aggregation while a reshard
    /// was seen and the map not re-read yet (a plain record lands by its own
    /// hash key; an aggregate by one key for all its records).
    fn packing_limits(&self) -> Limits {
        let aggregation_max_bytes = if self.map_stale { None } else { self.limits.aggregation_max_bytes };
        Limits { aggregation_max_bytes, ..self.limits }
    }

    pub(super) fn send_batch(&mut self) {
        let now = Instant::now();
        let mut batch = std::mem::take(&mut self.batch);
        for unit in &mut batch.units {
            if unit.is_aggregate() {
                self.metrics.records_per_aggregate.observe(unit.records.len() as f64);
            }
            for p in &mut unit.records {
                if p.attempts == 0 {
                    p.unsent = None;
                    if self.settings.ttl_start == TtlStart::FirstAttempt {
                        p.deadline = now + self.settings.ttl;
                    }
                }
                p.attempts += 1;
                if p.maybe_stored() {
                    p.resends_after_unknown += 1;
                    self.metrics.records_resent_after_unknown.inc();
                }
                if self.settings.ordering {
                    *self.keys_in_flight.entry(p.record.partition_key.clone()).or_default() += 1;
                }
            }
        }
        self.metrics.record_request_sent(batch.units.len(), batch.bytes);
        self.concurrency.on_send();
        let service = self.service.clone();
        // Records whose earlier attempts went unanswered get more patience,
        // and the ceiling on their last allowed attempt: a record that met a
        // slow path is given up only if its last attempt, too, goes
        // unanswered for the whole `request_timeout_ms`.
        let records = || batch.units.iter().flat_map(|u| &u.records);
        let unanswered = records().map(|p| p.unknown_attempts).max().unwrap_or(0);
        let last_chance = records().any(|p| p.maybe_stored() && !self.may_resend(p));
        let timeout = if last_chance {
            self.concurrency.timeout_ceiling()
        } else {
            self.concurrency.request_timeout_for(unanswered)
        };
        let units = batch.units;
        self.in_flight.spawn(async move {
            let started = Instant::now();
            let units = InFlight::new(units);
            let entries = units.units().iter().map(Unit::to_wire).collect();
            let outcome = service.put(entries, timeout).await;
            Completion { units: units.finish(), outcome, elapsed: started.elapsed() }
        });
    }
}
