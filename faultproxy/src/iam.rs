//! The IAM action each request needs, so a test can compare what a client
//! really calls with the policy written for it.

use crate::Flavor;

/// The IAM action a request to `flavor` needs (`kinesis:GetRecords`,
/// `s3:PutObject`, ...). JSON protocols name their operation in the
/// `X-Amz-Target` header (`Kinesis_20131202.GetRecords`); S3's REST
/// requests (path-style, as against an emulator) by method, path and query,
/// mapped as IAM authorises them: every step of a multipart upload is
/// `s3:PutObject` except its abort, and a bucket's listing or HEAD is
/// `s3:ListBucket`. A request it cannot map is `SERVICE:Unknown(...)`, so a
/// test comparing actions fails on it rather than missing it.
pub fn iam_action(flavor: Flavor, method: &str, path: &str, query: &str, target: Option<&str>) -> String {
    let service = match flavor {
        Flavor::Kinesis => "kinesis",
        Flavor::DynamoDb => "dynamodb",
        Flavor::Glue => "glue",
        Flavor::S3 => return s3_action(method, path, query),
    };
    match target.and_then(|t| t.rsplit_once('.')) {
        Some((_, operation)) if !operation.is_empty() => format!("{service}:{operation}"),
        _ => format!("{service}:Unknown({method} {path} without X-Amz-Target)"),
    }
}

fn s3_action(method: &str, path: &str, query: &str) -> String {
    let has = |key: &str| query.split('&').any(|kv| kv.split('=').next() == Some(key));
    // `/bucket` or `/bucket/` is the bucket; `/bucket/key...` an object.
    let object = path.trim_start_matches('/').split_once('/').is_some_and(|(_, key)| !key.is_empty());
    let action = match (method, object) {
        ("PUT", true) if has("tagging") => "PutObjectTagging",
        // PutObject, and UploadPart (`?partNumber&uploadId`).
        ("PUT", true) => "PutObject",
        // CreateMultipartUpload (`?uploads`), CompleteMultipartUpload (`?uploadId`).
        ("POST", true) if has("uploads") || has("uploadId") => "PutObject",
        ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true) => "DeleteObject",
        ("GET", true) if has("uploadId") => "ListMultipartUploadParts",
        ("GET" | "HEAD", true) => "GetObject",
        ("GET", false) if has("uploads") => "ListBucketMultipartUploads",
        ("GET", false) if has("location") => "GetBucketLocation",
        ("GET" | "HEAD", false) => "ListBucket",
        ("PUT", false) if query.is_empty() => "CreateBucket",
        ("DELETE", false) if query.is_empty() => "DeleteBucket",
        ("POST", false) if has("delete") => "DeleteObject",
        _ => return format!("s3:Unknown({method} {path}?{query})"),
    };
    format!("s3:{action}")
}
