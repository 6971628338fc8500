//! Crash and freeze points: test hooks at exact steps of the exactly-once
//! and schema protocols, set from the environment.

use std::sync::atomic::{AtomicU64, Ordering};

/// Test hooks: `SHARDLAKE_CRASH_AT=point:n` aborts the process (like
/// SIGKILL: no flush, no cleanup) the n-th time it reaches `point`
/// (`after_intent`, `after_upload`, `before_commit`, `after_commit`,
/// `after_schema_version`); `SHARDLAKE_STOP_AT`
/// instead freezes it there with SIGSTOP (like a long GC pause or a network
/// partition) until the test sends SIGCONT. Crash-safety and fencing tests
/// use them to stop the process at exact steps of the exactly-once protocol.
pub struct CrashPoints {
    target: Option<(String, u64)>,
    hits: AtomicU64,
    stop: Option<(String, u64)>,
    stop_hits: AtomicU64,
}

fn hook_from_env(var: &str) -> anyhow::Result<Option<(String, u64)>> {
    match std::env::var(var) {
        Ok(spec) => {
            let (point, n) = spec.split_once(':').unwrap_or((spec.as_str(), "1"));
            let n = n.parse().map_err(|_| anyhow::anyhow!("{var}={spec}: expected point:count"))?;
            Ok(Some((point.to_string(), n)))
        }
        Err(_) => Ok(None),
    }
}

impl CrashPoints {
    /// Reads `SHARDLAKE_CRASH_AT` and `SHARDLAKE_STOP_AT`.
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(CrashPoints {
            target: hook_from_env("SHARDLAKE_CRASH_AT")?,
            hits: AtomicU64::new(0),
            stop: hook_from_env("SHARDLAKE_STOP_AT")?,
            stop_hits: AtomicU64::new(0),
        })
    }

    /// Marks `point` reached; aborts or freezes when it is the configured hit.
    pub fn hit(&self, point: &str) {
        if let Some((p, n)) = &self.target
            && p == point
            && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_CRASH_AT: aborting at {point} #{n}");
            std::process::abort();
        }
        if let Some((p, n)) = &self.stop
            && p == point
            && self.stop_hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_STOP_AT: freezing at {point} #{n} until SIGCONT");
            // The whole process stops, renewals included; a test hook, so a
            // blocking call on this thread is fine.
            let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
        }
    }
}
