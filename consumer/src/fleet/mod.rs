//! Fleet mode: this worker's side of the DynamoDB leases. Each interval it
//! renews what it holds and takes its share by [`plan`] (`plan.rs`: which
//! leases to take or steal, a pure function of the table). A reader whose
//! lease is found lost is told through its `lost` token: it stops and drops
//! its unflushed batch without committing (the store fences the commit
//! anyway). The table access (take, renew, release, and the counters every
//! checkpoint write is fenced on) is in `checkpoint/dynamodb.rs`: a lease and
//! its shard's checkpoint are one item, as in KCL's lease table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::checkpoint::DynamoCheckpoints;
use crate::checkpoint::dynamodb::now_ms;
use futures::StreamExt;
use shardlake::Error;
use tokio_util::sync::CancellationToken;

use crate::kinesis::ShardInfo;
use crate::ops::metrics::Metrics;

mod plan;

pub use plan::plan;

/// This worker's leases and, for each held shard, the counter it holds the
/// lease at and the `lost` token of the reader working under it.
pub struct Leases {
    store: DynamoCheckpoints,
    metrics: Arc<Metrics>,
    lost: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// When each held lease was last taken or renewed: one not renewed for
    /// a lease duration may be another worker's by now.
    renewed: Mutex<HashMap<String, Instant>>,
}

/// Lease renewals in flight at once.
const RENEW_CONCURRENCY: usize = 32;

impl Leases {
    /// Leases kept in `store`.
    pub fn new(store: DynamoCheckpoints, metrics: Arc<Metrics>) -> Self {
        Leases { store, metrics, lost: Mutex::new(HashMap::new()), renewed: Mutex::new(HashMap::new()) }
    }

    /// The lease counter `shard` is held at and the token cancelled when that
    /// lease is found lost; `None` when this worker does not hold it. A
    /// reader writes under this counter only (see [`Leases::track`]).
    pub fn lease_for_reader(&self, shard: &str) -> Option<(u64, CancellationToken)> {
        let counter = self.store.lease_counter(shard)?;
        let mut lost = self.lost.lock().expect("lost lock");
        let entry = lost.entry(shard.to_string()).or_insert_with(|| (counter, CancellationToken::new()));
        (entry.0 == counter).then(|| entry.clone())
    }

    /// Starts tracking a lease just taken at `counter`. A reader still
    /// running under an older lease of the same shard (this worker lost it
    /// and took it back before that reader noticed) is stopped: its writes
    /// are fenced on the old counter and its batch predates the move.
    fn track(&self, shard: &str, counter: u64) {
        self.renewed.lock().expect("renewed lock").insert(shard.to_string(), Instant::now());
        let old = self.lost.lock().expect("lost lock").insert(shard.to_string(), (counter, CancellationToken::new()));
        if let Some((old, token)) = old {
            self.announce_lost(shard, old, token);
        }
    }

    /// Counts and announces the loss of the lease at `counter` once,
    /// whichever found it first: the renewer, the reader whose fenced write
    /// was refused, or a take of the shard at a newer counter.
    pub fn mark_lost(&self, shard: &str, counter: u64) {
        let mut lost = self.lost.lock().expect("lost lock");
        if lost.get(shard).is_some_and(|(c, _)| *c == counter) {
            let (_, token) = lost.remove(shard).expect("checked");
            drop(lost);
            self.announce_lost(shard, counter, token);
        }
    }

    fn announce_lost(&self, shard: &str, counter: u64, token: CancellationToken) {
        token.cancel();
        self.metrics.record_lease_lost();
        self.metrics.set_leases_held(self.store.held().len());
        tracing::warn!(
            shard,
            worker = self.store.worker_id(),
            counter,
            "lease lost to another worker; stopping its reader"
        );
    }

    /// Renews every held lease once, each renewal given at most `limit`
    /// (the lease duration: a renewal that takes longer is useless); marks
    /// the lost ones. A lease whose renewals kept failing for a whole lease
    /// duration has expired in the table and may be another worker's: it is
    /// given up like a lost one (its reader stops, commits nothing) and
    /// taken again, at a new counter, once renewals work. `Err` names the
    /// last failure when any renewal failed; `None` when nothing is held.
    pub async fn renew_all(&self, limit: std::time::Duration) -> Option<Result<(), String>> {
        let held = self.store.held();
        if held.is_empty() {
            return None;
        }
        let renewals = held.into_iter().map(|(shard, counter)| async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(limit, self.store.renew(&shard, counter)).await {
                Ok(result) => result.map_err(Some),
                Err(_) => Err(None),
            };
            (shard, counter, started, result)
        });
        let results: Vec<_> = futures::stream::iter(renewals).buffer_unordered(RENEW_CONCURRENCY).collect().await;
        let mut failure = None;
        for (shard, counter, started, result) in results {
            match result {
                Ok(()) => {
                    self.metrics.record_lease_renew(started.elapsed().as_secs_f64());
                    // The new expiry counts from when the renewal was sent.
                    self.renewed.lock().expect("renewed lock").insert(shard, started);
                }
                Err(Some(Error::LeaseLost { .. })) => self.mark_lost(&shard, counter),
                Err(e) => {
                    let error = e.map_or_else(|| format!("no answer within {limit:?}"), |e| e.to_string());
                    let unrenewed = self.renewed.lock().expect("renewed lock").get(&shard).map(Instant::elapsed);
                    if unrenewed.is_some_and(|d| d >= self.store.lease_duration()) {
                        tracing::warn!(shard, error, "lease expired: renewals failed for a whole lease duration");
                        self.store.forget(&shard, counter);
                        self.mark_lost(&shard, counter);
                    } else {
                        tracing::warn!(shard, error, "lease renewal failed; retrying next interval");
                    }
                    failure = Some(format!("renewing the lease of {shard}: {error}"));
                }
            }
        }
        self.metrics.set_leases_held(self.store.held().len());
        Some(failure.map_or(Ok(()), Err))
    }

    /// Takes free and expired leases up to the fair share, or steals one.
    /// Returns how many eligible shards were left without a live owner
    /// while this worker holds none (0 otherwise): a fleet reading nothing
    /// of them is a health problem when it lasts.
    pub async fn balance(&self, eligible: &[&ShardInfo]) -> shardlake::Result<usize> {
        let leases = self.store.leases().await?;
        let ids: Vec<&str> = eligible.iter().map(|s| s.id.as_str()).collect();
        let now = now_ms();
        let plan = plan(&leases, &ids, self.store.worker_id(), now);
        let parents =
            |shard: &str| eligible.iter().find(|s| s.id == shard).map(|s| s.parents.clone()).unwrap_or_default();
        for (shard, observed) in &plan.take {
            if self.store.holds(shard) {
                // Ours, but its renewal is failing: the renewer keeps at it.
                continue;
            }
            if let Some(counter) = self.store.take(shard, observed.as_ref(), &parents(shard)).await? {
                self.track(shard, counter);
                let expired_for = observed
                    .as_ref()
                    .filter(|l| l.owner.is_some())
                    .map(|l| now.saturating_sub(l.expiry_ms) as f64 / 1000.0);
                self.metrics.record_lease_taken(false, expired_for);
                tracing::info!(
                    shard,
                    worker = self.store.worker_id(),
                    previous = observed.as_ref().and_then(|l| l.owner.clone()),
                    "lease taken"
                );
            }
        }
        if let Some(victim) = &plan.steal
            && let Some(counter) = self.store.take(&victim.shard, Some(victim), &parents(&victim.shard)).await?
        {
            self.track(&victim.shard, counter);
            self.metrics.record_lease_taken(true, None);
            tracing::info!(
                shard = victim.shard,
                worker = self.store.worker_id(),
                from = victim.owner,
                "lease stolen to balance"
            );
        }
        let held = self.store.held().len();
        self.metrics.set_leases_held(held);
        if held > 0 {
            return Ok(0);
        }
        let owned: HashMap<&str, bool> = leases.iter().map(|l| (l.shard.as_str(), !l.is_free(now))).collect();
        Ok(ids.iter().filter(|s| !owned.get(*s).copied().unwrap_or(false)).count())
    }

    /// Gives up `shard` (ended, or at shutdown after its final commit).
    pub async fn release(&self, shard: &str) {
        self.lost.lock().expect("lost lock").remove(shard);
        self.renewed.lock().expect("renewed lock").remove(shard);
        match self.store.release(shard).await {
            Ok(()) => {
                self.metrics.record_lease_released();
                tracing::info!(shard, worker = self.store.worker_id(), "lease released");
            }
            Err(Error::LeaseLost { .. }) => {}
            Err(e) => tracing::warn!(shard, error = %e, "releasing the lease failed; it expires instead"),
        }
        self.metrics.set_leases_held(self.store.held().len());
    }

    /// Releases every held lease (graceful shutdown, after the final flushes).
    pub async fn release_all(&self) {
        for (shard, _) in self.store.held() {
            self.release(&shard).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bug a frozen worker showed: on waking, it stole back one of the
    /// shards it had lost before its old reader noticed, and that reader
    /// committed its stale batch under the new lease. Taking a shard back
    /// must stop the old reader, and hand the new one the new counter.
    #[tokio::test]
    async fn taking_a_shard_back_stops_the_reader_of_the_lost_lease() {
        let Some(_stack) = shardlake::testing::stack() else { return };
        let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
            .expect("AWS_ENDPOINT_URL_DYNAMODB is not set: run the tests with scripts/test");
        assert!(endpoint.starts_with("http://127.0.0.1"), "{endpoint}");
        let table = format!("lease-unit-{}", std::process::id());
        let connect = |id: &str| {
            let options = crate::checkpoint::FleetOptions {
                worker_id: id.to_string(),
                lease_duration: std::time::Duration::from_secs(30),
                create_table: true,
                timeouts: Default::default(),
            };
            let table = table.clone();
            async move {
                let store = crate::checkpoint::CheckpointStore::connect(
                    &format!("dynamodb://{table}"),
                    "app",
                    "events",
                    &options,
                )
                .await
                .unwrap();
                Leases::new(store.fleet().unwrap().clone(), Arc::new(Metrics::new()))
            }
        };
        let (a, b) = (connect("a").await, connect("b").await);
        let shard = |id: &str| ShardInfo { id: id.into(), parents: vec![] };
        let (s0, s1) = (shard("s0"), shard("s1"));
        a.balance(&[&s0, &s1]).await.unwrap();
        let (old, old_lost) = a.lease_for_reader("s1").unwrap();
        // `b` takes both while `a` sleeps.
        for lease in b.store.leases().await.unwrap() {
            assert!(b.store.take(&lease.shard, Some(&lease), &[]).await.unwrap().is_some());
        }
        // `a` wakes and balances before its renewer ran: 0 against 2, it
        // steals s1 back.
        a.balance(&[&s0, &s1]).await.unwrap();
        let (new, new_lost) = a.lease_for_reader("s1").expect("a holds s1 again");
        assert!(new > old);
        assert!(old_lost.is_cancelled(), "the reader under the old lease is stopped");
        assert!(!new_lost.is_cancelled());
        // The old reader reports its exit: the new lease is not marked lost.
        a.mark_lost("s1", old);
        assert!(!new_lost.is_cancelled());
        assert_eq!(a.lease_for_reader("s1").map(|(c, _)| c), Some(new));
    }
}
