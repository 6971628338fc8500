//! Which leases a worker takes, as a pure function of the lease table: free
//! or expired leases up to its fair share (⌈shards / live workers⌉), and at
//! most one stolen from the most loaded worker while it is below that share.

use std::collections::{BTreeMap, HashMap};

use crate::checkpoint::Lease;

/// Live workers and how many of the eligible shards each holds, this worker
/// included (with 0 when it holds none). A worker whose every lease expired
/// is not counted: it is gone, or will find out it is.
pub fn live_workers<'a>(leases: &'a [Lease], eligible: &[&str], me: &'a str, now_ms: u64) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::from([(me, 0)]);
    for l in leases.iter().filter(|l| eligible.contains(&l.shard.as_str()) && !l.is_free(now_ms)) {
        if let Some(owner) = &l.owner {
            *counts.entry(owner.as_str()).or_default() += 1;
        }
    }
    counts
}

/// The most leases any worker should hold: ⌈shards / workers⌉.
pub fn fair_share(shards: usize, workers: usize) -> usize {
    shards.div_ceil(workers.max(1))
}

/// Whether to steal one lease from the most loaded worker: this worker is
/// below its share and the other is above it (so the steal cannot make the
/// victim steal back: it stays at or above the share).
pub fn should_steal(mine: usize, share: usize, most_loaded: usize) -> bool {
    mine < share && most_loaded > share
}

/// What to take this interval.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free or expired shards (with their lease as read; `None`: no item yet).
    pub take: Vec<(String, Option<Lease>)>,
    /// One live lease of the most loaded worker, when balancing needs it.
    pub steal: Option<Lease>,
}

/// Plans takes and steals from the table's leases and the eligible shards
/// (not ended, parents ended), in shard order so workers pick alike.
pub fn plan(leases: &[Lease], eligible: &[&str], me: &str, now_ms: u64) -> Plan {
    let counts = live_workers(leases, eligible, me, now_ms);
    let share = fair_share(eligible.len(), counts.len());
    let mine = counts[me];
    let by_shard: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard.as_str(), l)).collect();
    let mut plan = Plan::default();
    for shard in eligible {
        if mine + plan.take.len() >= share {
            break;
        }
        match by_shard.get(shard) {
            None => plan.take.push((shard.to_string(), None)),
            Some(l) if l.is_free(now_ms) => plan.take.push((shard.to_string(), Some((*l).clone()))),
            Some(_) => {}
        }
    }
    if plan.take.is_empty()
        && let Some((victim, &most)) = counts.iter().filter(|(w, _)| **w != me).max_by_key(|(w, n)| (**n, *w))
        && should_steal(mine, share, most)
    {
        plan.steal = eligible
            .iter()
            .rev()
            .filter_map(|s| by_shard.get(s))
            .find(|l| l.owner.as_deref() == Some(*victim) && !l.is_free(now_ms))
            .map(|l| (*l).clone());
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, expiry_ms: u64) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(str::to_string),
            counter: 1,
            expiry_ms,
            ended: false,
            checkpoint: None,
        }
    }

    const NOW: u64 = 1_000_000;
    const LIVE: u64 = NOW + 5_000;

    #[test]
    fn fair_share_rounds_up() {
        assert_eq!(fair_share(8, 3), 3);
        assert_eq!(fair_share(6, 3), 2);
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(0, 2), 0);
    }

    #[test]
    fn steal_only_from_above_the_share_while_below_it() {
        assert!(should_steal(0, 3, 8));
        assert!(should_steal(2, 3, 4));
        assert!(!should_steal(2, 3, 3), "3,3,2 of 8 is balanced");
        assert!(!should_steal(3, 3, 5), "at the share already");
    }

    #[test]
    fn a_lone_worker_takes_every_shard() {
        let shards = ["s0", "s1", "s2"];
        let p = plan(&[], &shards, "me", NOW);
        assert_eq!(p.take.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), shards);
        assert_eq!(p.steal, None);
    }

    #[test]
    fn expired_and_released_leases_are_taken_up_to_the_share() {
        let shards = ["s0", "s1", "s2", "s3"];
        let leases = [
            lease("s0", Some("a"), LIVE),
            lease("s1", Some("dead"), NOW - 1),
            lease("s2", None, 0),
            lease("s3", Some("a"), LIVE),
        ];
        // Live workers: a (2) and me (0): share 2.
        let p = plan(&leases, &shards, "me", NOW);
        assert_eq!(p.take.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(p.take[0].1.as_ref().unwrap().owner.as_deref(), Some("dead"));
    }

    #[test]
    fn a_new_worker_steals_one_lease_from_the_most_loaded() {
        let shards = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];
        let mut leases: Vec<Lease> = shards[..6].iter().map(|s| lease(s, Some("a"), LIVE)).collect();
        leases.extend(shards[6..].iter().map(|s| lease(s, Some("b"), LIVE)));
        let p = plan(&leases, &shards, "me", NOW);
        assert!(p.take.is_empty());
        assert_eq!(p.steal.as_ref().map(|l| (l.shard.as_str(), l.owner.as_deref())), Some(("s5", Some("a"))));
        // Balanced 3/3/2: nothing to do.
        let mut leases: Vec<Lease> = shards[..3].iter().map(|s| lease(s, Some("a"), LIVE)).collect();
        leases.extend(shards[3..6].iter().map(|s| lease(s, Some("b"), LIVE)));
        leases.extend(shards[6..].iter().map(|s| lease(s, Some("me"), LIVE)));
        assert_eq!(plan(&leases, &shards, "me", NOW), Plan::default());
    }

    #[test]
    fn ineligible_shards_are_neither_counted_nor_taken() {
        let leases = [lease("parent", Some("a"), LIVE), lease("child", None, 0)];
        let p = plan(&leases, &["other"], "me", NOW);
        assert_eq!(p.take.len(), 1);
        assert_eq!(live_workers(&leases, &["other"], "me", NOW).len(), 1);
    }
}
