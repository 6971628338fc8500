//! shardlake producer (issue 3).
