//! The producer's error type: one enum for configuration, setup and per-record
//! failures, and [`ProduceError`], which hands a failed record back to the
//! caller together with the reason, so it can be dead-lettered.

use std::time::Duration;

use thiserror::Error;

/// Everything that can go wrong in the producer. Each variant names the
/// record, stream or setting involved and, where there is one, the fix.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// A setting is invalid; the message names it and the allowed range.
    #[error("invalid producer config: {0}")]
    Config(String),

    /// The record (data + partition key) exceeds the per-record limit. It is
    /// rejected at `send` and never enters a batch.
    #[error(
        "record is {size} bytes ({}), over the {limit}-byte per-record limit of {target}; {}",
        if target.starts_with("firehose") { "its data" } else { "data + partition key" },
        if target.starts_with("firehose") { "split the record (Firehose accepts at most 1,000 KiB)" }
        else { "split the record, or raise max_record_bytes (Kinesis streams with a raised limit accept up to 10 MiB)" }
    )]
    RecordTooLarge {
        /// The record's size as counted against the limit.
        size: usize,
        /// The limit in force.
        limit: usize,
        /// The target, e.g. `kinesis stream "events"`.
        target: String,
    },

    /// The partition key is empty or longer than Kinesis allows.
    #[error("partition key of {chars} characters is invalid: Kinesis partition keys have 1 to 256 characters")]
    InvalidPartitionKey {
        /// The key's length in characters.
        chars: usize,
    },

    /// The explicit hash key is not a decimal number in `0..2^128`.
    #[error("explicit hash key {key:?} is invalid: it must be a decimal number between 0 and 2^128 - 1")]
    InvalidExplicitHashKey {
        /// The key as given.
        key: String,
    },

    /// The record's time to live ran out before it was delivered.
    #[error(
        "record expired after {attempts} attempt(s) and {age:?} (record_ttl_ms = {ttl_ms}); last error: {last_error}"
    )]
    Expired {
        /// Sends attempted.
        attempts: u32,
        /// Time since `send`.
        age: Duration,
        /// The configured TTL.
        ttl_ms: u64,
        /// Why the last attempt failed (`none` when it was never sent).
        last_error: String,
    },

    /// The record was given up (at its TTL, after `retry.max_attempts` or
    /// `retry.max_resends_after_unknown`) after a request carrying it went
    /// unanswered (a timeout, a reset, a connection closed before the
    /// answer: any failure after the request may have reached the service):
    /// the service may have stored it, once or, if it was resent, more. It
    /// is neither delivered nor known to be lost: resending it may duplicate
    /// it; dropping it may lose it.
    #[error(
        "outcome unknown after {attempts} attempt(s) and {age:?}: a request carrying the record went unanswered \
         (timed out, or its connection was reset or closed before the answer), so it may have been stored; \
         given up because {given_up}; last error: {last_error}"
    )]
    UnknownOutcome {
        /// Sends attempted.
        attempts: u32,
        /// Time since `send`.
        age: Duration,
        /// Why it was given up, e.g. `record_ttl_ms = 30000 ran out`.
        given_up: String,
        /// Why the last attempt failed.
        last_error: String,
    },

    /// The service rejected the record with an error code that retrying
    /// cannot fix (KMS access, missing stream, invalid argument ...).
    #[error("{target} rejected the record with {code}: {message}")]
    Rejected {
        /// The target, e.g. `kinesis stream "events"`.
        target: String,
        /// The AWS error code.
        code: String,
        /// The AWS error message.
        message: String,
    },

    /// A retryable failure persisted through `retry.max_attempts` attempts.
    #[error("gave up after {attempts} attempts (retry.max_attempts); last error: {last_error}")]
    RetriesExhausted {
        /// Sends attempted.
        attempts: u32,
        /// Why the last attempt failed.
        last_error: String,
    },

    /// `try_send` found the buffered + in-flight budget full.
    #[error("producer buffer is full ({limit}); wait with send(), or raise max_buffered_bytes / max_buffered_records")]
    BufferFull {
        /// Which budget is exhausted, with its size.
        limit: String,
    },

    /// The producer was shut down (or aborted at a shutdown deadline)
    /// before the record was sent: it was not stored.
    #[error("the producer was shut down before the record was sent")]
    ShutDown,

    /// `ListShards` failed while learning the stream's shard map.
    #[error("listing the shards of kinesis stream {stream:?}: {message}")]
    ListShards {
        /// The stream.
        stream: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// A short, stable label for metrics and failure files (`expired`,
    /// `too_large`, or the AWS error code of a rejection).
    pub fn label(&self) -> &str {
        match self {
            Error::Config(_) => "config",
            Error::RecordTooLarge { .. } => "too_large",
            Error::InvalidPartitionKey { .. } => "invalid_partition_key",
            Error::InvalidExplicitHashKey { .. } => "invalid_explicit_hash_key",
            Error::Expired { .. } => "expired",
            Error::UnknownOutcome { .. } => "unknown_outcome",
            Error::Rejected { code, .. } => code,
            Error::RetriesExhausted { .. } => "retries_exhausted",
            Error::BufferFull { .. } => "buffer_full",
            Error::ShutDown => "shut_down",
            Error::ListShards { .. } => "list_shards",
        }
    }

    /// Sends attempted, when the error is about a record that was tried.
    pub fn attempts(&self) -> Option<u32> {
        match self {
            Error::Expired { attempts, .. }
            | Error::UnknownOutcome { attempts, .. }
            | Error::RetriesExhausted { attempts, .. } => Some(*attempts),
            _ => None,
        }
    }

    /// Whether the error says the target itself cannot take records: the
    /// stream is deleted or missing, access is denied, or its KMS key is
    /// unusable. Every later record would fail the same way, so a feeder
    /// should stop rather than fail its input one record at a time.
    pub fn is_target_unusable(&self) -> bool {
        const TARGET_CODES: [&str; 6] = [
            "ResourceNotFoundException",
            "AccessDeniedException",
            "KMSAccessDeniedException",
            "KMSDisabledException",
            "KMSNotFoundException",
            "InvalidKMSResourceException",
        ];
        matches!(self, Error::Rejected { code, .. } if TARGET_CODES.contains(&code.as_str()))
    }

    /// Whether the record may have been stored after all (see
    /// [`Error::UnknownOutcome`]).
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(self, Error::UnknownOutcome { .. })
    }
}

/// Result with the producer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ProduceError, Record};

    #[test]
    fn too_large_names_the_size_the_limit_and_the_fix() {
        let e = Error::RecordTooLarge { size: 2_000_000, limit: 1_048_576, target: "kinesis stream \"s\"".into() };
        let msg = e.to_string();
        assert!(msg.contains("2000000 bytes") && msg.contains("1048576-byte") && msg.contains("max_record_bytes"));
        assert_eq!(e.label(), "too_large");
    }

    #[test]
    fn an_unknown_outcome_does_not_claim_the_record_was_lost() {
        let e = Error::UnknownOutcome {
            attempts: 2,
            age: Duration::from_secs(30),
            given_up: "record_ttl_ms = 30000 ran out".into(),
            last_error: "Timeout: no answer within 2s".into(),
        };
        assert_eq!((e.label(), e.attempts()), ("unknown_outcome", Some(2)));
        let err = ProduceError { record: Record::new("k", "x"), reason: e };
        let msg = err.to_string();
        assert!(msg.contains("may or may not have been stored") && !msg.contains("not delivered"), "{msg}");
        assert!(msg.contains("may have been stored; given up because record_ttl_ms = 30000 ran out"), "{msg}");
    }

    #[test]
    fn rejection_label_is_the_aws_code() {
        let e = Error::Rejected { target: "t".into(), code: "KMSAccessDeniedException".into(), message: "m".into() };
        assert_eq!(e.label(), "KMSAccessDeniedException");
        let err = ProduceError { record: Record::new("k", "x"), reason: e };
        assert!(err.to_string().starts_with("record with partition key \"k\" not delivered: t rejected"));
    }
}
