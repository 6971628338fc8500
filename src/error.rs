//! The core library's error type.

use thiserror::Error;

/// Errors of the shardlake core. Each variant carries the context a user needs
/// to find and fix the problem.
#[derive(Debug, Error)]
pub enum Error {
    /// A setting, template or schema is invalid; the message names it and the fix.
    #[error("{0}")]
    Config(String),
    /// Reading input failed.
    #[error("reading {source_name}: {error}")]
    Input {
        /// The file or URL being read.
        source_name: String,
        /// The underlying I/O error.
        error: std::io::Error,
    },
    /// An object store operation failed.
    #[error("{op} {url}: {message}")]
    Store {
        /// What was attempted (`put`, `get`, `list`, ...).
        op: &'static str,
        /// The object or prefix URL.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Encoding Parquet failed.
    #[error("writing parquet for {key}: {error}")]
    Parquet {
        /// The object key being written.
        key: String,
        /// The underlying error.
        error: parquet::errors::ParquetError,
    },
    /// A fenced write (intent, commit, renewal) found that this worker no
    /// longer holds the shard's lease: another worker took it over. Nothing
    /// was written; the new owner replays any pending intent.
    #[error("lease on shard {shard} lost to another worker; nothing was committed")]
    LeaseLost {
        /// The shard whose lease moved.
        shard: String,
    },
    /// A Glue Data Catalog call failed.
    #[error("catalog {op} {table}: {message}")]
    Catalog {
        /// The Glue operation (`GetTable`, `BatchCreatePartition`, ...).
        op: &'static str,
        /// The table, `glue://DATABASE/TABLE`.
        table: String,
        /// What went wrong.
        message: String,
        /// Worth retrying (timeouts, 5xx, throttling); otherwise it needs a fix
        /// (permissions, a missing database).
        transient: bool,
    },
    /// The catalog table does not exist (never created, or deleted while
    /// the lake is written).
    #[error("catalog {table}: the table does not exist; {fix}")]
    TableMissing {
        /// The table, `glue://DATABASE/TABLE`.
        table: String,
        /// How to get it back.
        fix: String,
    },
    /// Building Arrow arrays failed (a bug: coercion should prevent it).
    #[error("building arrow arrays: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

impl shardlake_aws::retry::Retryable for Error {
    /// What the error itself says: a catalog call that failed transiently
    /// (throttling, 5xx, a timeout) is worth another attempt; the rest needs
    /// a fix or the caller's decision. Callers that hold work until a
    /// dependency heals (an upload, a checkpoint write) retry store errors
    /// by their own rule.
    fn retry_class(&self) -> shardlake_aws::retry::RetryClass {
        use shardlake_aws::retry::RetryClass;
        match self {
            Error::Catalog { transient: true, .. } => RetryClass::Transient,
            _ => RetryClass::Fatal,
        }
    }
}

/// Result with the core [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use shardlake_aws::call::error_chain;
