//! Crash and freeze points: test hooks at exact steps of the exactly-once
//! and schema protocols, set from the environment.

use std::sync::atomic::{AtomicU64, Ordering};

/// A step of the exactly-once or schema protocol a test can stop at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The batch's intent is written; nothing uploaded.
    AfterIntent,
    /// One object of the batch is uploaded.
    AfterUpload,
    /// Every object is uploaded; the commit is next (with an Iceberg
    /// table: the table commit, then the checkpoint).
    BeforeCommit,
    /// The Iceberg table holds the batch; the checkpoint is not committed.
    AfterTableCommit,
    /// The checkpoint is committed.
    AfterCommit,
    /// A schema version is stored; the catalog table not yet updated.
    AfterSchemaVersion,
}

impl CrashPoint {
    /// Every point, as the environment names them.
    const ALL: [CrashPoint; 6] = [
        CrashPoint::AfterIntent,
        CrashPoint::AfterUpload,
        CrashPoint::BeforeCommit,
        CrashPoint::AfterTableCommit,
        CrashPoint::AfterCommit,
        CrashPoint::AfterSchemaVersion,
    ];

    /// The name in `SHARDLAKE_CRASH_AT` / `SHARDLAKE_STOP_AT`.
    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::AfterIntent => "after_intent",
            CrashPoint::AfterUpload => "after_upload",
            CrashPoint::BeforeCommit => "before_commit",
            CrashPoint::AfterTableCommit => "after_table_commit",
            CrashPoint::AfterCommit => "after_commit",
            CrashPoint::AfterSchemaVersion => "after_schema_version",
        }
    }

    fn parse(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Test hooks: `SHARDLAKE_CRASH_AT=point:n` aborts the process (like
/// SIGKILL: no flush, no cleanup) the n-th time it reaches `point`
/// (`after_intent`, `after_upload`, `before_commit`, `after_table_commit`,
/// `after_commit`, `after_schema_version`); `SHARDLAKE_STOP_AT`
/// instead freezes it there with SIGSTOP (like a long GC pause or a network
/// partition) until the test sends SIGCONT. Crash-safety and fencing tests
/// use them to stop the process at exact steps of the exactly-once protocol.
pub struct CrashPoints {
    target: Option<(CrashPoint, u64)>,
    hits: AtomicU64,
    stop: Option<(CrashPoint, u64)>,
    stop_hits: AtomicU64,
}

fn hook_from_env(var: &str) -> anyhow::Result<Option<(CrashPoint, u64)>> {
    match std::env::var(var) {
        Ok(spec) => hook(var, &spec).map(Some),
        Err(_) => Ok(None),
    }
}

/// `point:n` (or `point`, for n = 1); a misspelt point is an error, never a
/// hook that silently never fires.
fn hook(var: &str, spec: &str) -> anyhow::Result<(CrashPoint, u64)> {
    let (name, n) = spec.split_once(':').unwrap_or((spec, "1"));
    let n = n.parse().map_err(|_| anyhow::anyhow!("{var}={spec}: expected point:count"))?;
    let Some(point) = CrashPoint::parse(name) else {
        let names: Vec<&str> = CrashPoint::ALL.iter().map(|p| p.name()).collect();
        anyhow::bail!("{var}={spec}: no point `{name}`; the points are {}", names.join(", "));
    };
    Ok((point, n))
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
    pub fn hit(&self, point: CrashPoint) {
        if let Some((p, n)) = &self.target
            && *p == point
            && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_CRASH_AT: aborting at {} #{n}", point.name());
            std::process::abort();
        }
        if let Some((p, n)) = &self.stop
            && *p == point
            && self.stop_hits.fetch_add(1, Ordering::SeqCst) + 1 == *n
        {
            eprintln!("SHARDLAKE_STOP_AT: freezing at {} #{n} until SIGCONT", point.name());
            // The whole process stops, renewals included; a test hook, so a
            // blocking call on this thread is fine.
            let _ = std::process::Command::new("kill").args(["-STOP", &std::process::id().to_string()]).status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_name_a_known_point_and_a_count() {
        assert_eq!(hook("V", "before_commit:3").unwrap(), (CrashPoint::BeforeCommit, 3));
        assert_eq!(hook("V", "after_intent").unwrap(), (CrashPoint::AfterIntent, 1));
        let typo = hook("SHARDLAKE_CRASH_AT", "befor_commit:1").unwrap_err().to_string();
        assert!(typo.contains("no point `befor_commit`") && typo.contains("before_commit"), "{typo}");
        assert!(hook("V", "after_commit:x").is_err());
        for p in CrashPoint::ALL {
            assert_eq!(CrashPoint::parse(p.name()), Some(p));
        }
    }
}
