//! Why a shard reader failed: its scheduler restarts it with back-off, and
//! tells a lost lease (an expected end in a fleet) from a failure by the
//! variant, not by searching an error's text or chain.

use crate::kinesis::{KinesisError, ShardId};

/// A shard reader's failure.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// A fenced checkpoint write found that another worker took the lease.
    /// Nothing was committed; the new owner reads the batch again.
    #[error("lease on shard {shard} lost to another worker; nothing was committed")]
    LeaseLost {
        /// The shard.
        shard: ShardId,
    },
    /// A Kinesis call failed in a way back-off does not heal (the stream or
    /// shard is gone, access denied).
    #[error("reading shard {shard}")]
    Read {
        /// The shard.
        shard: ShardId,
        /// The call's failure.
        #[source]
        source: KinesisError,
    },
    /// Loading the shard's checkpoint failed.
    #[error("shard {shard}: loading its checkpoint")]
    Load {
        /// The shard.
        shard: ShardId,
        /// The store's failure.
        #[source]
        source: shardlake::Error,
    },
    /// A checkpoint write failed in a way retrying does not heal.
    #[error("shard {shard}: checkpoint {what}")]
    Checkpoint {
        /// The shard.
        shard: ShardId,
        /// `record intent`, `commit`, `pending partitions`.
        what: &'static str,
        /// The store's failure.
        #[source]
        source: shardlake::Error,
    },
    /// Building or finishing the batch failed.
    #[error("shard {shard}: building its batch")]
    Batch {
        /// The shard.
        shard: ShardId,
        /// The pipeline's failure.
        #[source]
        source: shardlake::Error,
    },
    /// The schema version a pending batch was built with could not be loaded.
    #[error("shard {shard}: loading schema version {version} to replay its pending batch")]
    Schema {
        /// The shard.
        shard: ShardId,
        /// The version.
        version: u32,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Iceberg table refused the batch's append (not a conflict or an
    /// outage, which are retried): the reader restarts and replays it.
    #[error("shard {shard}: Iceberg table commit: {message}")]
    Table {
        /// The shard.
        shard: ShardId,
        /// The table's error.
        message: String,
    },
    /// The worker aborted while a flush waited on `what`: nothing more is
    /// committed, and the batch is read again on restart.
    #[error("shard {shard}: {what} abandoned at abort; the batch stays pending")]
    Abandoned {
        /// The shard.
        shard: ShardId,
        /// What was waited on (an upload, a checkpoint write and its last failure).
        what: String,
    },
}
