//! Each service's own error answers (status, content type and error code
//! its SDK parses), so an injected fault looks to a client like the real one.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Response, StatusCode};

use crate::{Flavor, ProxyBody};

pub(crate) fn respond(status: StatusCode, content_type: &str, body: &'static str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never: Infallible| match never {}).boxed_unsync())
        .expect("static response")
}

/// The service's 500 answer.
pub(crate) fn server_error(flavor: Flavor) -> Response<ProxyBody> {
    match flavor {
        Flavor::Kinesis => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.1",
            r#"{"__type":"InternalFailure","message":"Internal service failure (injected by faultproxy)."}"#,
        ),
        Flavor::Glue => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.1",
            r#"{"__type":"InternalServiceException","message":"Internal service exception (injected by faultproxy)."}"#,
        ),
        Flavor::DynamoDb => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#InternalServerError","message":"Internal server error (injected by faultproxy)."}"#,
        ),
        Flavor::S3 => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>\
             <Message>We encountered an internal error. Please try again.</Message></Error>",
        ),
    }
}

/// The service's throttling answer.
pub(crate) fn throttled(flavor: Flavor) -> Response<ProxyBody> {
    match flavor {
        Flavor::Kinesis => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard (injected by faultproxy)."}"#,
        ),
        Flavor::Glue => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.1",
            r#"{"__type":"ThrottlingException","message":"Rate exceeded (injected by faultproxy)."}"#,
        ),
        Flavor::DynamoDb => respond(
            StatusCode::BAD_REQUEST,
            "application/x-amz-json-1.0",
            r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput (injected by faultproxy)."}"#,
        ),
        Flavor::S3 => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
             <Message>Please reduce your request rate.</Message></Error>",
        ),
    }
}
