//! One shard's reader (`reader`): reading (`fetch`), batching, and the
//! exactly-once flush (`commit`); why a reader fails (`error`); the memory
//! budget all batches share (`budget`); and [`Context`], what every reader
//! of the worker shares.

use std::sync::Arc;

use shardlake::store::ObjectStore;
use tokio_util::sync::CancellationToken;

use crate::checkpoint::CheckpointStore;
use crate::config::Settings;
use crate::crash::CrashPoints;
use crate::fleet::Leases;
use crate::kinesis::get_records::ReadBuffers;
use crate::lake::batch::Thresholds;
use crate::lake::catalog::Registrar;
use crate::lake::evolve::{self, Schemas};
use crate::lake::iceberg::TableAppender;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

pub mod budget;
mod commit;
pub mod error;
mod fetch;
pub mod reader;

pub use budget::MemoryBudget;
pub use error::ShardError;

/// Everything the shard readers share.
pub struct Context {
    /// The resolved config.
    pub settings: Settings,
    /// Flush thresholds from `[buffer]`.
    pub thresholds: Thresholds,
    /// Kinesis client (SDK retries off; the readers back off themselves).
    pub kinesis: aws_sdk_kinesis::Client,
    /// Enhanced fan-out: the registered consumer's ARN; `None` when polling.
    pub fan_out: Option<String>,
    /// The lake.
    pub lake: ObjectStore,
    /// Checkpoints and intents.
    pub checkpoints: CheckpointStore,
    /// Fleet mode (`dynamodb://` store): this worker's leases; `None` for a
    /// single worker, which reads every shard.
    pub leases: Option<Leases>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The memory budget shared by all batches.
    pub budget: MemoryBudget,
    /// The memory of GetRecords responses, shared by all readers.
    pub read_buffers: ReadBuffers,
    /// Test hook for crash points.
    pub crash: CrashPoints,
    /// Fired when the process gives up waiting (second signal, shutdown
    /// timeout): uploads stop retrying and nothing more is committed.
    pub abort: CancellationToken,
    /// What `/healthz` and the time-based gauges are computed from.
    pub health: Arc<Health>,
    /// The Glue catalog table and its partition registrations (`catalog`).
    pub catalog: Option<Arc<Registrar>>,
    /// `table_format = "iceberg"`: the table, and the worker's commits to it.
    pub table: Option<TableAppender>,
    /// Schema versions: the current one for new batches, older ones for replays.
    pub schemas: Schemas,
}

impl Context {
    /// The parts schema evolution works with.
    pub fn evolution(&self) -> evolve::Parts<'_> {
        evolve::Parts {
            schemas: &self.schemas,
            store: &self.checkpoints,
            catalog: self.catalog.as_deref(),
            iceberg: self.table.as_ref().map(|t| &t.lake.table),
            crash: &self.crash,
            health: &self.health,
            metrics: &self.metrics,
        }
    }
}
