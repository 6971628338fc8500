//! Resharding: the dispatcher's shard map, re-read when a reshard shows (a
//! record on a shard the map did not predict, `ResourceInUseException`) and
//! on a timer; aggregates that landed on an unknown shard wait for it. Apart
//! from the send path, which only asks for a refresh.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{Dispatcher, Misplaced};
use crate::batch::{Pending, Unit};
use crate::error::Error;
use crate::service::{Service, api};
use crate::shard_map::ShardMap;

/// Shortest time between two shard map reads.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);

impl Dispatcher {
    /// A reshard shows: aggregate no more until the map is read again.
    pub(super) fn on_reshard_seen(&mut self, now: Instant) {
        if !self.map_stale && self.settings.is_kinesis() {
            self.map_stale = true;
            tracing::info!("a reshard was seen; sending records unaggregated until the shard map is re-read");
        }
        self.request_refresh(now);
    }

    /// A unit stored on a shard the map did not predict (or does not hold):
    /// a plain record is where its hash key put it; an aggregate's records are
    /// range-checked against the shard it landed on, as the KCL does when it
    /// deaggregates, and those out of range are resent (the KCL would discard
    /// them). When the shard's range is unknown (a child shard), they wait
    /// for the map.
    pub(super) fn on_unpredicted_shard(
        &mut self,
        unit: Unit,
        shard_id: Arc<str>,
        sequence_number: String,
        now: Instant,
        retry: &mut Vec<Pending>,
    ) {
        if !unit.is_aggregate() {
            return self.acknowledge(unit, Some(shard_id), &sequence_number, now);
        }
        let Some(range) = self.map.range_of(&shard_id).map(|r| (r.start, r.end)) else {
            if self.settings.ordering {
                // Later records of these keys wait until these are settled.
                for p in &unit.records {
                    *self.keys_in_flight.entry(p.record.partition_key.clone()).or_default() += 1;
                }
            }
            self.misplaced.push(Misplaced { unit, shard_id, sequence_number });
            return;
        };
        for (i, p) in unit.records.into_iter().enumerate() {
            if (range.0..=range.1).contains(&p.hash) {
                self.acknowledge_one(p, Some(shard_id.clone()), &sequence_number, Some(i as u64), now);
            } else {
                self.resend_wrong_shard(p, &shard_id, retry);
            }
        }
    }

    fn resend_wrong_shard(&mut self, mut p: Pending, shard_id: &str, retry: &mut Vec<Pending>) {
        self.metrics.records_resent_wrong_shard.inc();
        tracing::debug!(partition_key = %p.record.partition_key, shard_id, "record aggregated onto a shard that does not hold its hash key; resending it");
        p.last_error = Some(format!("aggregated onto {shard_id}, whose hash key range does not hold the record"));
        retry.push(p);
    }

    /// Settles the aggregates that waited for the map: with their shard's
    /// range known, range-check them; without (the map could not be read, or
    /// does not hold the shard), resend them whole, as the KPL does.
    fn settle_misplaced(&mut self, now: Instant) {
        let mut retry = vec![];
        for m in std::mem::take(&mut self.misplaced) {
            if self.settings.ordering {
                for p in &m.unit.records {
                    if let Some(n) = self.keys_in_flight.get_mut(&p.record.partition_key) {
                        *n -= 1;
                        if *n == 0 {
                            self.keys_in_flight.remove(&p.record.partition_key);
                        }
                    }
                }
            }
            if self.map.range_of(&m.shard_id).is_some() {
                self.on_unpredicted_shard(m.unit, m.shard_id, m.sequence_number, now, &mut retry);
            } else {
                for p in m.unit.records {
                    self.resend_wrong_shard(p, &m.shard_id, &mut retry);
                }
            }
        }
        self.requeue(retry, now);
    }

    fn request_refresh(&mut self, now: Instant) {
        let at = (self.last_refresh + MIN_REFRESH_GAP).max(now);
        self.next_refresh = Some(self.next_refresh.map_or(at, |t| t.min(at)));
    }

    pub(super) fn start_refresh(&mut self) {
        self.next_refresh = None;
        let Service::Kinesis { client, stream } = &self.service else { return };
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        self.last_refresh = Instant::now();
        let (client, stream, tx) = (client.clone(), stream.clone(), self.refresh_tx.clone());
        let timeout = self.settings.control_plane_timeout;
        tokio::spawn(async move {
            // Bounded: a hung call fails at the deadline and is retried.
            let map = api::list_shards_within(&client, &stream, timeout).await.map(|s| ShardMap::from_shards(&s));
            let _ = tx.send(map).await;
        });
    }

    pub(super) fn on_shard_map(&mut self, map: Result<ShardMap, Error>) {
        self.refreshing = false;
        let now = Instant::now();
        self.next_refresh = self.settings.shard_map_refresh.map(|d| now + d);
        let map = match map {
            Ok(map) if !map.is_empty() => map,
            other => {
                let error = other.err().map_or_else(|| "no open shard".to_string(), |e| e.to_string());
                tracing::warn!(%error, "could not refresh the shard map; keeping the old one");
                self.metrics.record_shard_map_refresh("error");
                self.request_refresh(now + MIN_REFRESH_GAP);
                self.settle_misplaced(now);
                return;
            }
        };
        self.metrics.record_shard_map_refresh("ok");
        self.map_stale = false;
        if map == *self.map {
            self.settle_misplaced(now);
            return;
        }
        if map.len() != self.map.len() {
            tracing::info!(from = self.map.len(), to = map.len(), "the number of open shards changed: a reshard");
        }
        tracing::info!(shards = map.len(), "shard map changed");
        self.rate.update(&self.map, &map);
        self.map = Arc::new(map);
        let mut all: Vec<Pending> = self.queues.drain(..).flatten().collect();
        all.sort_by_key(|p| p.seq);
        self.queues = (0..=self.map.len()).map(|_| VecDeque::new()).collect();
        self.next_queue = 0;
        for p in all {
            let q = self.queue_of(p.hash);
            self.queues[q].push_back(p);
        }
        self.settle_misplaced(now);
    }
}
