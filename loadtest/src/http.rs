//! Plain-HTTP plumbing: a GET for the workers' `/metrics`. (The fault proxy
//! in front of the emulators is the `faultproxy` crate.)

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// GETs `url` (plain HTTP) and returns the body as text.
pub async fn get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().with_context(|| format!("url {url}"))?;
    let response = tokio::time::timeout(timeout, client.get(uri)).await.context("timed out")??;
    let body = tokio::time::timeout(timeout, response.into_body().collect()).await.context("timed out")??;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}
