//! The memory budget that every shard's batch counts against.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Bytes held by each shard's batch, against one global budget. Every
/// reader updates it after every call, so an update costs O(log shards), not
/// a pass over all of them.
pub struct MemoryBudget {
    /// The budget in bytes.
    pub limit: usize,
    held: Mutex<Holdings>,
}

#[derive(Default)]
struct Holdings {
    by_shard: HashMap<String, usize>,
    total: usize,
    /// Non-zero holdings: size → how many shards hold that much.
    sizes: BTreeMap<usize, usize>,
}

impl Holdings {
    fn count(&mut self, bytes: usize, add: bool) {
        if bytes == 0 {
            return;
        }
        if add {
            *self.sizes.entry(bytes).or_default() += 1;
            self.total += bytes;
        } else {
            if let Some(n) = self.sizes.get_mut(&bytes) {
                *n -= 1;
                if *n == 0 {
                    self.sizes.remove(&bytes);
                }
            }
            self.total -= bytes;
        }
    }
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        MemoryBudget { limit, held: Mutex::new(Holdings::default()) }
    }

    /// Sets what `shard` holds; returns the total and the largest holding.
    pub fn update(&self, shard: &str, bytes: usize) -> (usize, usize) {
        let mut held = self.held.lock().expect("budget lock");
        let old = match held.by_shard.get_mut(shard) {
            Some(v) => std::mem::replace(v, bytes),
            None => {
                held.by_shard.insert(shard.to_string(), bytes);
                0
            }
        };
        if old != bytes {
            held.count(old, false);
            held.count(bytes, true);
        }
        (held.total, held.sizes.last_key_value().map_or(0, |(&size, _)| size))
    }

    /// Forgets a shard whose reader stopped.
    pub fn remove(&self, shard: &str) {
        let mut held = self.held.lock().expect("budget lock");
        if let Some(old) = held.by_shard.remove(shard) {
            held.count(old, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_reports_total_and_largest() {
        let b = MemoryBudget::new(100);
        assert_eq!(b.update("a", 30), (30, 30));
        assert_eq!(b.update("b", 50), (80, 50));
        assert_eq!(b.update("a", 10), (60, 50));
        b.remove("b");
        assert_eq!(b.update("a", 10), (10, 10));
        // Equal holdings count each; the largest goes when its last holder drops.
        assert_eq!(b.update("c", 40), (50, 40));
        assert_eq!(b.update("d", 40), (90, 40));
        assert_eq!(b.update("c", 0), (50, 40));
        assert_eq!(b.update("d", 5), (15, 10));
        b.remove("a");
        b.remove("never");
        assert_eq!(b.update("d", 5), (5, 5));
    }
}
