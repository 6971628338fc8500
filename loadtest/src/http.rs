//! Plain-HTTP plumbing: a GET for `/metrics`, and the fault-injecting
//! reverse proxy that stands between the workers (and producers) and an
//! emulator. The proxy decides per request: pass it on, answer with an error
//! the service really sends, or drop the connection without an answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

/// GETs `url` (plain HTTP) and returns the body as text.
pub async fn get(url: &str, timeout: Duration) -> anyhow::Result<String> {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().with_context(|| format!("url {url}"))?;
    let response = tokio::time::timeout(timeout, client.get(uri)).await.context("timed out")??;
    let body = tokio::time::timeout(timeout, response.into_body().collect()).await.context("timed out")??;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

/// Which service a proxy fronts, so it fails the way that service does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faults {
    /// S3: half `503 SlowDown`, half connections dropped before answering.
    S3,
    /// Kinesis: `400 ProvisionedThroughputExceededException` (the JSON protocol).
    KinesisThrottle,
}

/// Counts of what a proxy did.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    /// Requests passed on.
    pub passed: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Connections dropped without an answer.
    pub dropped: AtomicU64,
}

/// A running fault proxy.
pub struct FaultProxy {
    /// Where it listens: point the clients' endpoint here.
    pub endpoint: String,
    /// What it did so far.
    pub counts: Arc<ProxyCounts>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, content_type: &str, body: &'static str) -> Response<ProxyBody> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed())
        .expect("static response")
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 in front of `upstream` (`http://host:port`)
    /// failing a `rate` fraction of requests, seeded for reproducible runs.
    pub async fn start(upstream: &str, faults: Faults, rate: f64, seed: u64) -> anyhow::Result<FaultProxy> {
        let upstream: hyper::Uri = upstream.parse().with_context(|| format!("upstream {upstream}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let counts = Arc::new(ProxyCounts::default());
        let stop = CancellationToken::new();
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let rng = Arc::new(std::sync::Mutex::new(rand_chacha::ChaCha8Rng::seed_from_u64(seed)));
        let (counts2, stop2) = (counts.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop2.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let (client, upstream, counts, rng) = (client.clone(), upstream.clone(), counts2.clone(), rng.clone());
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let (client, upstream, counts) = (client.clone(), upstream.clone(), counts.clone());
                    let roll: f64 = rng.lock().expect("rng lock").random();
                    async move {
                        if roll < rate {
                            match faults {
                                Faults::S3 if roll < rate / 2.0 => {
                                    // An error from the service fn makes hyper close the
                                    // connection without answering: a dropped connection.
                                    counts.dropped.fetch_add(1, Ordering::Relaxed);
                                    return Err(DroppedConnection);
                                }
                                Faults::S3 => {
                                    counts.errors.fetch_add(1, Ordering::Relaxed);
                                    return Ok(full(
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        "application/xml",
                                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
                                         <Message>Please reduce your request rate.</Message></Error>",
                                    ));
                                }
                                Faults::KinesisThrottle => {
                                    counts.errors.fetch_add(1, Ordering::Relaxed);
                                    return Ok(full(
                                        StatusCode::BAD_REQUEST,
                                        "application/x-amz-json-1.1",
                                        "{\"__type\":\"ProvisionedThroughputExceededException\",\
                                         \"message\":\"Rate exceeded for shard (injected by shardlake-loadtest).\"}",
                                    ));
                                }
                            }
                        }
                        let mut parts = upstream.clone().into_parts();
                        parts.path_and_query = req.uri().path_and_query().cloned();
                        *req.uri_mut() = hyper::Uri::from_parts(parts).expect("upstream uri");
                        counts.passed.fetch_add(1, Ordering::Relaxed);
                        match client.request(req).await {
                            Ok(resp) => Ok(resp.map(|b| b.boxed())),
                            Err(_) => Ok(full(StatusCode::BAD_GATEWAY, "text/plain", "upstream unreachable")),
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy { endpoint: format!("http://{addr}"), counts, stop })
    }
}

/// The "error" that makes the proxy drop a connection.
#[derive(Debug)]
pub struct DroppedConnection;

impl std::fmt::Display for DroppedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DroppedConnection {}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;

    /// A tiny upstream answering every request with its path.
    async fn upstream() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(req.uri().path().to_string()))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn passes_requests_through_and_fails_the_asked_fraction() {
        let up = upstream().await;
        let clean = FaultProxy::start(&up, Faults::S3, 0.0, 1).await.unwrap();
        assert_eq!(get(&format!("{}/a/b", clean.endpoint), Duration::from_secs(5)).await.unwrap(), "/a/b");

        let faulty = FaultProxy::start(&up, Faults::S3, 0.5, 7).await.unwrap();
        let (mut ok, mut slow_down, mut dropped) = (0, 0, 0);
        for i in 0..200 {
            match get(&format!("{}/k{i}", faulty.endpoint), Duration::from_secs(5)).await {
                Ok(body) if body == format!("/k{i}") => ok += 1,
                Ok(body) if body.contains("SlowDown") => slow_down += 1,
                Ok(body) => panic!("unexpected body {body}"),
                Err(_) => dropped += 1,
            }
        }
        assert!((60..140).contains(&ok), "{ok} {slow_down} {dropped}");
        assert!(slow_down > 20 && dropped > 20, "{ok} {slow_down} {dropped}");
        assert_eq!(faulty.counts.dropped.load(Ordering::Relaxed), dropped);

        let throttle = FaultProxy::start(&up, Faults::KinesisThrottle, 0.9, 3).await.unwrap();
        let bodies: Vec<String> =
            futures::future::join_all((0..20).map(|_| get(&throttle.endpoint, Duration::from_secs(5))))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        assert!(bodies.iter().filter(|b| b.contains("ProvisionedThroughputExceededException")).count() > 10);
    }
}
