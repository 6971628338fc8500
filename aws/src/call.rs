//! A failed AWS call as a user reads it (one line: service, operation, code,
//! message) and whether it is worth retrying, for every SDK crate alike.

// The same types in every SDK crate (they come from aws-smithy-*), so one
// formatter serves S3, Kinesis, Firehose, DynamoDB and Glue errors alike.
use aws_sdk_kinesis::config::http::HttpResponse;
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};

/// One failed AWS call as a user reads it: one line with the service, the
/// operation, the error code and its message (never the SDK's `Debug`
/// dump), and whether the failure is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// `S3`, `Kinesis`, `DynamoDB`, `Glue`.
    pub service: &'static str,
    /// The API operation, as AWS names it (`PutObject`).
    pub operation: &'static str,
    /// The service's error code (`NoSuchBucket`, `AccessDenied`); `None`
    /// when no answer came, or an answer without a code.
    pub code: Option<String>,
    /// The service's message, or the innermost cause of a failure to send
    /// (`no credentials found in chain`, `Connection refused (os error 111)`).
    pub message: String,
    /// A throttle, a 5xx, a timeout or a connection failure: retried with
    /// back-off. Anything else (a missing bucket, access denied, no
    /// credentials, no region) needs a fix and is never retried.
    pub transient: bool,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: ", self.service, self.operation)?;
        match &self.code {
            Some(code) if self.message.is_empty() => write!(f, "{code}"),
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl std::error::Error for CallError {}

impl crate::retry::Retryable for CallError {
    fn retry_class(&self) -> crate::retry::RetryClass {
        let throttled = self.code.as_deref().is_some_and(is_throttling_code);
        match (self.transient, throttled) {
            (true, true) => crate::retry::RetryClass::Throttled,
            (true, false) => crate::retry::RetryClass::Transient,
            (false, _) => crate::retry::RetryClass::Fatal,
        }
    }
}

/// Whether a service error code means "slow down" (as opposed to a 5xx or
/// a timeout): such a call is retried after a short steady pause.
pub fn is_throttling_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "SlowDown"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "ProvisionedThroughputExceededException"
            | "LimitExceededException"
    )
}

/// Service error codes that mean "slow down" or "try again" in any service
/// (S3, Kinesis, DynamoDB, Glue); checked besides the HTTP status, since
/// some throttles answer 400.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "InternalServiceException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "OperationTimeoutException",
];

/// Whether a failed call is worth retrying (see [`CallError::transient`]).
/// A failure to send is transient only when the connection failed or timed
/// out: the SDK reports missing credentials, a missing region and an
/// endpoint it cannot build as dispatch failures too, and those never heal.
pub fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status();
            status.is_server_error()
                || status.as_u16() == 429
                || se.err().code().is_some_and(|c| TRANSIENT_CODES.contains(&c))
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
        _ => false,
    }
}

/// The one-line form of a failed AWS call, e.g. `S3 PutObject: NoSuchBucket:
/// The specified bucket does not exist`; see [`CallError`].
pub fn call_error<E>(service: &'static str, operation: &'static str, err: &SdkError<E, HttpResponse>) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let transient = is_transient(err);
    let (code, message) = match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().map(str::to_string).or_else(|| {
                // HEAD answers and some 404s have no body, so no code.
                let status = se.raw().status().as_u16();
                Some(format!("HTTP {status}"))
            });
            (code, e.message().unwrap_or_default().to_string())
        }
        SdkError::TimeoutError(_) => (None, format!("no answer in time ({})", innermost(err))),
        SdkError::DispatchFailure(d) if d.is_timeout() => (None, format!("timed out ({})", innermost(err))),
        SdkError::DispatchFailure(d) if d.is_io() => (None, format!("could not connect ({})", innermost(err))),
        _ => (None, innermost(err)),
    };
    CallError { service, operation, code, message: one_line(&message), transient }
}

/// [`call_error`] as its line.
pub fn error_line<E>(service: &'static str, operation: &'static str, err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    call_error(service, operation, err).to_string()
}

/// The innermost cause of an error: the SDK wraps the useful part (`no
/// credentials found in chain`, `Connection refused`) in layers that say
/// only "dispatch failure" or "other".
pub(crate) fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// `text` on one line: line breaks (in a service message or an I/O error)
/// become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// An error and its chain of sources, joined with `: ` (SDK errors keep the
/// useful part, such as the connection failure, in their sources).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::error::ErrorMetadata;
    // Any operation's error type serves: the classification reads only the
    // status, the code and the send failure.
    use aws_sdk_kinesis::operation::put_records::PutRecordsError;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn answered(status: u16, code: Option<&str>, message: &str) -> SdkError<PutRecordsError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(message);
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(PutRecordsError::generic(meta.build()), raw)
    }

    /// A failure to send, wrapped as the orchestrator wraps identity and
    /// endpoint failures (`dispatch failure` > `other` > the cause).
    fn unsent(cause: &str) -> SdkError<PutRecordsError, HttpResponse> {
        #[derive(Debug)]
        struct Layer(Box<dyn std::error::Error + Send + Sync>);
        impl std::fmt::Display for Layer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("failed to resolve identity")
            }
        }
        impl std::error::Error for Layer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(self.0.as_ref())
            }
        }
        SdkError::dispatch_failure(ConnectorError::other(Box::new(Layer(cause.into())), None))
    }

    #[test]
    fn a_service_error_is_one_line_with_service_operation_code_and_message() {
        let e = answered(404, Some("NoSuchBucket"), "The specified bucket\ndoes not exist");
        let line = error_line("S3", "PutObject", &e);
        assert_eq!(line, "S3 PutObject: NoSuchBucket: The specified bucket does not exist");
        let call = call_error("S3", "PutObject", &e);
        assert_eq!((call.code.as_deref(), call.transient), (Some("NoSuchBucket"), false));
        // A HEAD or bodiless answer has no code: its status stands in.
        assert_eq!(error_line("S3", "HeadBucket", &answered(403, None, "")), "S3 HeadBucket: HTTP 403");
    }

    #[test]
    fn a_failure_to_send_names_its_innermost_cause_without_debug_output() {
        let line = error_line("Kinesis", "DescribeStreamSummary", &unsent("no credentials found in chain"));
        assert_eq!(line, "Kinesis DescribeStreamSummary: no credentials found in chain");
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused (os error 111)");
        let e: SdkError<PutRecordsError, HttpResponse> = SdkError::dispatch_failure(ConnectorError::io(refused.into()));
        assert_eq!(
            error_line("S3", "PutObject", &e),
            "S3 PutObject: could not connect (Connection refused (os error 111))"
        );
        let e: SdkError<PutRecordsError, HttpResponse> = SdkError::timeout_error("operation attempt timeout");
        let line = error_line("S3", "PutObject", &e);
        assert_eq!(line, "S3 PutObject: no answer in time (operation attempt timeout)");
        for line in [line, error_line("S3", "PutObject", &answered(500, Some("InternalError"), "x"))] {
            assert!(!line.contains('{') && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn throttles_5xx_timeouts_and_lost_connections_are_transient_the_rest_needs_a_fix() {
        assert!(is_transient(&answered(503, None, "")));
        assert!(is_transient(&answered(500, Some("InternalError"), "")));
        assert!(is_transient(&answered(400, Some("ThrottlingException"), "Rate exceeded")));
        assert!(is_transient(&answered(400, Some("ProvisionedThroughputExceededException"), "")));
        assert!(is_transient(&answered(429, None, "")));
        assert!(is_transient(&SdkError::<PutRecordsError, HttpResponse>::timeout_error("attempt timeout")));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert!(is_transient(&SdkError::<PutRecordsError, HttpResponse>::dispatch_failure(ConnectorError::io(
            refused.into()
        ))));
        let timed_out = ConnectorError::timeout("connect timeout".into());
        assert!(is_transient(&SdkError::<PutRecordsError, HttpResponse>::dispatch_failure(timed_out)));

        assert!(!is_transient(&answered(404, Some("NoSuchBucket"), "")));
        assert!(!is_transient(&answered(403, Some("AccessDenied"), "Access Denied")));
        assert!(!is_transient(&answered(400, Some("ResourceNotFoundException"), "")));
        // Missing credentials and regions come as dispatch failures too.
        assert!(!is_transient(&unsent("no credentials found in chain")));
        assert!(!is_transient(&unsent("missing signing region")));
        assert!(!is_transient(&SdkError::<PutRecordsError, HttpResponse>::construction_failure("bad input")));
    }

    #[test]
    fn a_call_error_says_how_it_is_retried() {
        use crate::retry::{RetryClass, Retryable};
        let class = |e: SdkError<PutRecordsError, HttpResponse>| call_error("Kinesis", "PutRecords", &e).retry_class();
        assert_eq!(class(answered(400, Some("ProvisionedThroughputExceededException"), "")), RetryClass::Throttled);
        assert_eq!(class(answered(503, Some("ServiceUnavailable"), "")), RetryClass::Transient);
        assert_eq!(class(answered(400, Some("ResourceNotFoundException"), "")), RetryClass::Fatal);
    }
}
