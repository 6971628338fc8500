//! Glue's SDK errors as the lake's: which failures are transient (retried)
//! and which need a fix, and matching an error code.

use aws_sdk_glue::error::{ProvideErrorMetadata, SdkError};

use super::TableName;
use crate::error::{Error, error_chain};

/// What a call failed with: `transient` failures (timeouts, 5xx,
/// throttling, a lost connection) are retried; the rest need a fix.
pub(super) fn catalog_error<E, R>(op: &'static str, table: &TableName, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let transient = match &e {
        SdkError::ServiceError(s) => matches!(
            s.err().code(),
            Some(
                "InternalServiceException"
                    | "OperationTimeoutException"
                    | "ThrottlingException"
                    | "ConcurrentModificationException"
                    | "ResourceNotReadyException"
            )
        ),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    let message = match &e {
        SdkError::ServiceError(s) => {
            format!("{}: {}", s.err().code().unwrap_or("error"), s.err().message().unwrap_or_default())
        }
        other => error_chain(other),
    };
    Error::Catalog { op, table: table.to_string(), message, transient }
}

pub(super) fn is_code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>, code: &str) -> bool {
    matches!(e, SdkError::ServiceError(s) if s.err().code() == Some(code))
}
